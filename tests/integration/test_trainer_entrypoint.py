"""``unistream trainer`` as a process: ready against a real Redis, publishing metrics, stopping cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import redis

from unistream_common import codec, keys
from unistream_common.packets import TrainingDataPacket
from unistream_common.redis_server import free_port

pytestmark = pytest.mark.integration


def readyz(port: int) -> tuple[int | None, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())
    except OSError:
        return None, {}


def training(t: int) -> TrainingDataPacket:
    state = np.full(8, 0.1 * (t % 5), np.float32)
    return TrainingDataPacket(
        symbol="ETHUSDT", ts_event_ms=1_700_000_000_000 + 1000 * t, price=3000.0 + t % 7, source="SYNTHETIC",
        state_dim=8, state=codec.f32_to_bytes(state), cnn_features=b"", cnn_predictions=b"", prediction_names=[],
        model_version="cnn-init-7", window_fill=1.0,
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
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unistream_common.cli", "trainer"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 60  # importing torch is slow on a busy machine
            code, body = readyz(port)
            while code != 200:
                assert proc.poll() is None, f"exited with {proc.returncode}: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"not ready within 60 s: {body}"
                time.sleep(0.2)
                code, body = readyz(port)
            r = redis.Redis.from_url(redis_url)
            for t in range(100):
                r.xadd(keys.TRAINING, codec.encode(training(t)))
            while True:  # until a metrics packet has seen every packet
                published = [codec.decode(f) for _, f in r.xrange(keys.METRICS)]
                if any(m.metrics["charts/packets"] == 100 for m in published):
                    break
                assert time.monotonic() < deadline, f"no metrics over all packets within 60 s: {published[-1:]}"
                time.sleep(0.1)
            r.close()
            last = published[-1]
            assert last.producer == "trainer-entrypoint" and last.metrics["charts/state_dim"] == 8
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=15)
            assert time.monotonic() - started < 10
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # uvicorn re-raises the SIGTERM it handled once shut down, so a clean stop reads as -SIGTERM.
    assert rc in (0, -signal.SIGTERM), log.read_text()[-2000:]
    assert "Traceback" not in log.read_text()
