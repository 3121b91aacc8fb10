"""The features shell against a real Redis: bars and trades in, training and UI packets out, weights loaded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
import torch
from helpers import eventually, running_worker
from safetensors.torch import save as save_safetensors

from unistream_common import codec, keys
from unistream_common.packets import Bar, ModelAnnouncement, Tick, TickBatch, TrainingDataPacket, UIDataPacket
from unistream_common.redisio import command_client
from unistream_common.service import ServiceContext
from unistream_features.cnn import init_model, sha256_hex
from unistream_features.service import worker
from unistream_features.settings import FeaturesSettings

pytestmark = pytest.mark.integration
torch.set_num_threads(1)

SYMBOL = "ETHUSDT"
T0 = 1_700_000_000_000
MIN_BARS = 5


def bar(i: int, close: float) -> Bar:
    open_ = close * 0.9999
    return Bar(SYMBOL, "1s", T0 + 1000 * i, T0 + 1000 * (i + 1), open_, close * 1.0002, open_ * 0.9998, close,
               1.5, 1.5 * close, 4, close, 0.9, False, "SYNTHETIC")  # fmt: skip


def tick_batch(i: int, price: float) -> TickBatch:
    """Four trades inside second ``i``."""
    ticks = [Tick(4 * i + k, price, 0.02 + 0.01 * k, "BUY" if k % 2 else "SELL",
                  T0 + 1000 * i + 200 * k, T0 + 1000 * i + 200 * k + 3) for k in range(4)]  # fmt: skip
    return TickBatch(SYMBOL, "SYNTHETIC", ticks)


async def write_seconds(r: aioredis.Redis, first: int, last: int, prices: np.ndarray) -> None:
    """Trades, then the bar, of each second in [first, last), as ingest and the aggregator would."""
    for i in range(first, last):
        await r.xadd(keys.ticks(SYMBOL), codec.encode(tick_batch(i, float(prices[i]))))
        await r.xadd(keys.bars(SYMBOL, "1s"), codec.encode(bar(i, float(prices[i]))), id=f"{T0 + 1000 * i}-0")


async def read_all(r: aioredis.Redis, stream: str) -> list[Any]:
    return [codec.decode(fields) for _, fields in await r.xrange(stream)]


def make_settings(redis_url: str, tmp_path: Path) -> FeaturesSettings:
    return FeaturesSettings(
        redis_url=redis_url, symbols=(SYMBOL,), consumer_name="features-test", model_dir=str(tmp_path),
        window_bars=60, bar_cache_size=100, tick_cache_size=200, min_bars=MIN_BARS, model_poll_ms=100,
    )  # fmt: skip


async def test_bars_and_trades_become_training_and_ui_packets_and_a_restart_neither_loses_nor_repeats(
    redis_url: str, tmp_path: Path
):
    r = command_client(redis_url)
    prices = 3000 * np.exp(np.cumsum(np.random.default_rng(5).normal(0, 2e-4, 60)))
    settings = make_settings(redis_url, tmp_path)
    try:
        await write_seconds(r, 0, 20, prices)  # history before the service starts
        async with running_worker("features", settings, worker) as ctx:
            await eventually(lambda: _count(r, keys.TRAINING, 20 - MIN_BARS + 1))
            await write_seconds(r, 20, 30, prices)  # live bars
            await eventually(lambda: _count(r, keys.TRAINING, 30 - MIN_BARS + 1))
            await eventually(lambda: _count(r, keys.UI, 3))
            assert ctx.ready()
            assert ctx.stats.total("features_training_packets") == 30 - MIN_BARS + 1

        training = await read_all(r, keys.TRAINING)
        assert all(isinstance(p, TrainingDataPacket) for p in training)
        last = training[-1]
        assert last.ts_event_ms == T0 + 30_000 and last.price == pytest.approx(prices[29])
        assert last.state_dim == 9 * 60 + 64 + 4 + 21 + 2
        state = codec.f32_from_bytes(last.state)
        assert state.size == last.state_dim and np.isfinite(state).all()
        assert last.window_fill == pytest.approx(30 / 60) and last.model_version == "cnn-init-7"
        # The state's microstructure block saw the trades: the 10 s trade rate is 4 trades/s.
        assert state[9 * 60 + 68] == pytest.approx(np.log1p(4.0), rel=1e-5)

        ui = [p for p in await read_all(r, keys.UI) if isinstance(p, UIDataPacket)]
        newest = ui[-1]
        assert newest.symbol == SYMBOL and newest.bars_1s_size == 30 and newest.bars_1s_capacity == 100
        assert newest.tick_cache_size == 120 and newest.tick_cache_capacity == 200
        assert newest.cnn.state == "INITIALISED" and newest.rl_state_dim == last.state_dim
        assert newest.last_price == pytest.approx(prices[29])

        # Restart: the buffers come back from Redis, and bars written while it was down are emitted once.
        await write_seconds(r, 30, 35, prices)
        async with running_worker("features", settings, worker) as ctx:
            await eventually(lambda: _count(r, keys.TRAINING, 35 - MIN_BARS + 1))
            await write_seconds(r, 35, 40, prices)
            await eventually(lambda: _count(r, keys.TRAINING, 40 - MIN_BARS + 1))
            await asyncio.sleep(0.3)  # would any duplicate follow?
            assert ctx.stats.total("features_rebuilt_bars") == 35
        ends = [p.ts_event_ms for p in await read_all(r, keys.TRAINING)]
        assert ends == [T0 + 1000 * (i + 1) for i in range(MIN_BARS - 1, 40)], "every bar once, in order"

        # The group is lost (NOGROUP recovery recreates it from 0): all bars come again, none is re-emitted.
        for stream in (keys.ticks(SYMBOL), keys.bars(SYMBOL, "1s")):
            await r.xgroup_destroy(stream, keys.GROUP_FEATURES)
        async with running_worker("features", settings, worker) as ctx:
            await eventually(lambda: _stat(ctx, "features_bars_duplicate", 40))
            await write_seconds(r, 40, 41, prices)
            await eventually(lambda: _count(r, keys.TRAINING, 41 - MIN_BARS + 1))
            await asyncio.sleep(0.3)
        assert await r.xlen(keys.TRAINING) == 41 - MIN_BARS + 1
    finally:
        await r.aclose()


async def test_announced_cnn_weights_are_loaded_and_used_and_a_bad_checksum_is_refused(redis_url: str, tmp_path: Path):
    r = command_client(redis_url)
    prices = np.full(40, 3000.0)
    settings = make_settings(redis_url, tmp_path)
    data = save_safetensors(init_model(123).state_dict())
    (tmp_path / "cnn").mkdir()
    (tmp_path / "cnn" / "cnn-2.safetensors").write_bytes(data)
    try:
        await write_seconds(r, 0, 10, prices)
        async with running_worker("features", settings, worker) as ctx:
            await eventually(lambda: _count(r, keys.TRAINING, 10 - MIN_BARS + 1))
            bad = ModelAnnouncement(
                name="cnn", version="cnn-1", ts_ms=T0, uri="cnn/cnn-2.safetensors",
                sha256="0" * 64, producer="test", parameters=1,
            )  # fmt: skip
            await r.xadd(keys.MODELS, codec.encode(bad))
            await eventually(lambda: _stat(ctx, "features_model_rejected", 1))
            good = ModelAnnouncement(
                name="cnn", version="cnn-2", ts_ms=T0 + 1, uri=(tmp_path / "cnn" / "cnn-2.safetensors").as_uri(),
                sha256=sha256_hex(data), producer="test", parameters=1,
            )  # fmt: skip
            await r.xadd(keys.MODELS, codec.encode(good))
            await eventually(lambda: _stat(ctx, "features_model_loaded", 1))
            await write_seconds(r, 10, 12, prices)
            await eventually(lambda: _count(r, keys.TRAINING, 12 - MIN_BARS + 1))
            await eventually(lambda: _ui_state(r, "LOADED"))
        training = await read_all(r, keys.TRAINING)
        assert [p.model_version for p in training[-2:]] == ["cnn-2", "cnn-2"]
        assert training[0].model_version == "cnn-init-7"
    finally:
        await r.aclose()


async def _count(r: aioredis.Redis, stream: str, n: int) -> bool:
    return int(await r.xlen(stream)) >= n


async def _stat(ctx: ServiceContext, name: str, n: int) -> bool:
    return ctx.stats.total(name) >= n


async def _ui_state(r: aioredis.Redis, state: str) -> bool:
    entries = await r.xrevrange(keys.UI, count=1)
    return bool(entries) and codec.decode(entries[0][1]).cnn.state == state
