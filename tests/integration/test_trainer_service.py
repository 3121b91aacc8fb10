"""The trainer shell against a real Redis: training packets in, metrics, checkpoints and announcements out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import redis.asyncio as aioredis
import torch
from helpers import eventually, running_worker

from unistream_common import codec, keys
from unistream_common.packets import MetricsPacket, ModelAnnouncement, TrainingDataPacket
from unistream_common.redisio import command_client
from unistream_common.service import ServiceContext
from unistream_trainer.checkpoint import decode_checkpoint, list_checkpoints
from unistream_trainer.service import worker
from unistream_trainer.settings import TrainerSettings

pytestmark = pytest.mark.integration
torch.set_num_threads(1)

T0 = 1_700_000_000_000
DIM = 24
SYMBOLS = ("ETHUSDT", "BTCUSDT")


def training_packet(symbol: str, t: int, rng: np.random.Generator) -> TrainingDataPacket:
    state = rng.normal(0, 1, DIM).astype(np.float32)
    price = 3000.0 * (1 + 0.001 * np.sin(t / 5)) if symbol == "ETHUSDT" else 60_000.0 * (1 + 0.001 * np.cos(t / 7))
    return TrainingDataPacket(
        symbol=symbol, ts_event_ms=T0 + 1000 * t, price=float(price), source="SYNTHETIC", state_dim=DIM,
        state=codec.f32_to_bytes(state), cnn_features=b"", cnn_predictions=codec.f32_to_bytes([0.2, 0.6, 0.2, 0.0]),
        prediction_names=["p_bottom", "p_none", "p_top", "ret_next"], model_version="cnn-init-7", window_fill=1.0,
    )  # fmt: skip


async def write_training(r: aioredis.Redis, first: int, last: int, rng: np.random.Generator) -> None:
    pipe = r.pipeline(transaction=False)
    for t in range(first, last):
        for symbol in SYMBOLS:
            pipe.xadd(keys.TRAINING, codec.encode(training_packet(symbol, t, rng)))
    await pipe.execute()


async def metrics_packets(r: aioredis.Redis) -> list[MetricsPacket]:
    return [codec.decode(f) for _, f in await r.xrange(keys.METRICS)]  # type: ignore[misc]


async def announcements(r: aioredis.Redis) -> list[ModelAnnouncement]:
    return [codec.decode(f) for _, f in await r.xrange(keys.MODELS)]  # type: ignore[misc]


async def test_trainer_publishes_growing_updates_checkpoints_announces_and_resumes(redis_url: str, tmp_path: Path):
    settings = TrainerSettings(
        redis_url=redis_url, symbols=SYMBOLS, consumer_name="trainer-test", model_dir=str(tmp_path),
        dqn_hidden_sizes=(32,), dqn_batch_size=16, dqn_learning_starts=16, dqn_buffer_size=500,
        dqn_updates_per_transition=2.0, dqn_max_updates_per_batch=8, dqn_exploration_steps=200,
        metrics_every_s=0.3, checkpoint_every_updates=20, checkpoint_every_s=600,
    )  # fmt: skip
    r = command_client(redis_url)
    rng = np.random.default_rng(0)
    try:
        async with running_worker("trainer", settings, worker) as ctx:
            t = 0
            deadline = time.monotonic() + 30
            # Feed a few seconds of packets at a time, as features would, until two checkpoints exist.
            while len(await announcements(r)) < 2:
                assert time.monotonic() < deadline, "no two checkpoints within 30 s"
                await write_training(r, t, t + 10, rng)
                t += 10
                await asyncio.sleep(0.2)
            await eventually(lambda: _metrics_with_loss(r))
            assert ctx.ready()
            info = ctx.info()
            assert info["state_dim"] == DIM and info["updates"] >= 40

        packets = await metrics_packets(r)
        assert {p.producer for p in packets} == {"trainer-test"}
        updates = [p.metrics["charts/updates"] for p in packets]
        assert updates == sorted(updates) and updates[-1] > updates[0]
        assert [p.step for p in packets] == [int(u) for u in updates]
        last = packets[-1].metrics
        for name in (
            "charts/epsilon",
            "charts/packets",
            "charts/replay_size",
            "charts/updates_per_s",
            "charts/state_dim",
        ):
            assert name in last, name
        assert last["charts/state_dim"] == DIM and last["charts/packets"] >= 2 * 20
        with_loss = [p.metrics for p in packets if "losses/td_loss" in p.metrics]
        assert with_loss and all(np.isfinite(m["losses/td_loss"]) and "charts/mean_reward" in m for m in with_loss)

        anns = await announcements(r)
        assert [a.name for a in anns] == ["dqn"] * len(anns) and anns[0].producer == "trainer-test"
        newest = anns[-1]
        path = Path(urlparse(newest.uri).path)
        assert path.parent == tmp_path.resolve() / "dqn" and path in list_checkpoints(path.parent)
        ckpt = decode_checkpoint(path.read_bytes(), expected_sha256=newest.sha256)
        assert ckpt.version == newest.version and ckpt.obs_dim == DIM + 3 and ckpt.updates >= 40
        assert newest.parameters == sum(x.numel() for x in ckpt.tensors.values())

        # A restart resumes from the newest checkpoint once a packet shows the state size fits.
        async with running_worker("trainer", settings, worker) as ctx:
            await write_training(r, t, t + 3, rng)
            await eventually(lambda: _info(ctx, "resumed_from", newest.version))
            assert ctx.info()["updates"] >= ckpt.updates
    finally:
        await r.aclose()


async def _metrics_with_loss(r: aioredis.Redis) -> bool:
    return any("losses/td_loss" in p.metrics for p in await metrics_packets(r))


async def _info(ctx: ServiceContext, key: str, value: object) -> bool:
    return ctx.info().get(key) == value
