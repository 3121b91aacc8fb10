"""``unistream trainer`` as a process: ready against a real Redis, publishing metrics, stopping cleanly on SIGTERM."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from helpers import service_process, stop_cleanly

from unistream_common import codec, keys
from unistream_common.packets import TrainingDataPacket
from unistream_tools.redis_server import free_port

pytestmark = pytest.mark.integration


def entry_id(t: int) -> str:
    return f"{1_700_000_000_000 + 1000 * t}-1"


def training(t: int) -> TrainingDataPacket:
    """The packet of second ``t``, linked to the one before it as the features service links them."""
    state = np.full(8, 0.1 * (t % 5), np.float32)
    return TrainingDataPacket(
        symbol="ETHUSDT", ts_event_ms=1_700_000_000_000 + 1000 * t, price=3000.0 + t % 7, source="SYNTHETIC",
        state_dim=8, state=codec.f32_to_bytes(state), cnn_features=b"", cnn_predictions=b"", prediction_names=[],
        model_version="cnn-init-7", window_fill=1.0, prev_id=entry_id(t - 1) if t else "",
        prev_ts_event_ms=1_700_000_000_000 + 1000 * (t - 1) if t else 0,
    )  # fmt: skip


def test_unistream_trainer_gets_ready_publishes_metrics_and_exits_promptly_on_sigterm(redis_url: str, tmp_path: Path):
    port = free_port()
    env = {
        **os.environ,
        "UNISTREAM_REDIS_URL": redis_url,
        "UNISTREAM_HTTP_PORT": str(port),
        "UNISTREAM_SYMBOLS": "ETHUSDT",
        "UNISTREAM_MODEL_DIR": str(tmp_path),
        "UNISTREAM_CONSUMER_NAME": "trainer-entrypoint",
        "UNISTREAM_METRICS_EVERY_S": "0.5",
    }
    log = tmp_path / "trainer.log"
    with service_process("trainer", env, port, log) as proc:
        r = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 60
        for t in range(100):
            r.xadd(keys.training("ETHUSDT"), codec.encode(training(t)), id=entry_id(t))
        while True:  # until a metrics packet has seen every packet
            published = [codec.decode(f) for _, f in r.xrange(keys.METRICS)]
            if any(m.metrics["charts/packets"] == 100 for m in published):
                break
            assert time.monotonic() < deadline, f"no metrics over all packets within 60 s: {published[-1:]}"
            time.sleep(0.1)
        beat = r.hgetall(keys.heartbeat("trainer", "trainer-entrypoint"))
        assert beat[b"service"] == b"trainer" and beat[b"ready"] == b"1" and int(beat[b"started_ms"]) > 0
        assert r.zscore(keys.SERVICES, "trainer/trainer-entrypoint") is not None
        last = published[-1]
        assert last.producer == "trainer-entrypoint" and last.metrics["charts/state_dim"] == 8
        stop_cleanly(proc, log)
        assert not r.exists(keys.heartbeat("trainer", "trainer-entrypoint")), "a clean stop removes the heartbeat"
        r.close()
