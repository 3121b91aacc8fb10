"""The features shell against a real Redis: history, bars and trades in, training and UI packets out.

Two symbols, all four timeframes, a small window (20 bars) so the test stays quick; the layout's
arithmetic is the production one.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
import torch
from helpers import eventually, running_worker

from unistream_common import codec, keys
from unistream_common.consumer import StreamRuntime
from unistream_common.packets import Bar, ModelAnnouncement, Tick, TickBatch, TrainingDataPacket, UIDataPacket
from unistream_common.redisio import command_client, s
from unistream_common.service import ServiceContext
from unistream_common.stats import Stats
from unistream_features.service import FeaturesService, worker
from unistream_features.settings import FeaturesSettings
from unistream_model.cnn import init_model, save_bytes, sha256_hex
from unistream_model.layout import make_layout
from unistream_model.micro import feature_names

pytestmark = pytest.mark.integration
torch.set_num_threads(1)

SYMBOLS = ("ETHUSDT", "BTCUSDT")
BASE = {"ETHUSDT": 3000.0, "BTCUSDT": 60000.0}
WINDOW = 20
DAY = 86_400_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % DAY + 3_600_000 * 5  # 05:00 UTC: whole hours and days before
SPAN = {"1s": 1_000, "1m": 60_000, "1h": 3_600_000, "1d": DAY}


def make_bar(symbol: str, tf: str, open_ms: int, close: float, history: bool = False, trades: int = 4) -> Bar:
    o = close * 0.9999
    return Bar(
        symbol, tf, open_ms, open_ms + SPAN[tf], o, close * 1.0002, o * 0.9998, close, 1.5, 1.5 * close,  # type: ignore[arg-type]
        trades, close, 0.9, False, "SYNTHETIC", is_history=history,
    )  # fmt: skip


def price(symbol: str, i: int) -> float:
    return float(BASE[symbol] * (1 + 0.001 * np.sin(i / 7 + len(symbol))))


async def write_history(r: aioredis.Redis, n: int = WINDOW + 1) -> None:
    """What ingest writes at start: n closed bars of each timeframe, the newest closing by T0."""
    for symbol in SYMBOLS:
        for tf in keys.TIMEFRAMES:
            end = T0 - T0 % SPAN[tf]
            for k in range(n, 0, -1):
                b = make_bar(symbol, tf, end - k * SPAN[tf], price(symbol, -k), history=True)
                await r.xadd(keys.history(symbol, tf), codec.encode(b), id=f"{b.open_time_ms}-0")


async def write_seconds(r: aioredis.Redis, first: int, last: int) -> None:
    """Trades, then the 1s bar (and a 1m bar at each minute's end), of seconds [first, last), both symbols."""
    for i in range(first, last):
        for symbol in SYMBOLS:
            p = price(symbol, i)
            start = T0 + 1000 * i
            ticks = [Tick(4 * i + k, p, 0.02 + 0.01 * k, "BUY" if k % 2 else "SELL", start + 200 * k, start + 200 * k + 3)
                     for k in range(4)]  # fmt: skip
            await r.xadd(keys.ticks(symbol), codec.encode(TickBatch(symbol, "SYNTHETIC", ticks)))
            pipe = r.pipeline(transaction=True)
            pipe.xadd(keys.bars(symbol, "1s"), codec.encode(make_bar(symbol, "1s", start, p)), id=f"{start}-0")
            if (start + 1000) % 60_000 == 0:
                m = make_bar(symbol, "1m", start + 1000 - 60_000, p, trades=240)
                pipe.xadd(keys.bars(symbol, "1m"), codec.encode(m), id=f"{m.open_time_ms}-0")
            await pipe.execute()


# Every symbol's training stream, read or counted as one.
TRAINING = tuple(keys.training(s) for s in SYMBOLS)


async def read_all(r: aioredis.Redis, stream: str | tuple[str, ...]) -> list[Any]:
    streams = (stream,) if isinstance(stream, str) else stream
    return [codec.decode(fields) for one in streams for _, fields in await r.xrange(one)]


def make_settings(redis_url: str, tmp_path: Path, **extra: Any) -> FeaturesSettings:
    return FeaturesSettings(
        redis_url=redis_url, symbols=SYMBOLS, consumer_name="features-test", model_dir=str(tmp_path),
        window_bars=WINDOW, bar_cache_size=100, tick_cache_size=200, model_poll_ms=100, history_poll_ms=100,
        tick_wait_ms=2_000, **extra,
    )  # fmt: skip


async def _count(r: aioredis.Redis, stream: str | tuple[str, ...], n: int) -> bool:
    streams = (stream,) if isinstance(stream, str) else stream
    return sum([int(await r.xlen(one)) for one in streams]) >= n


async def _stat(ctx: ServiceContext, name: str, n: float) -> bool:
    return ctx.stats.total(name) >= n


async def _ui_caught_up(r: aioredis.Redis, last_bar_ms: int) -> bool:
    newest: dict[str, int] = {}
    for _, fields in await r.xrevrange(keys.UI, count=10):
        p = codec.decode(fields)
        newest.setdefault(p.symbol, p.last_bar_ms)
    return all(newest.get(s) == last_bar_ms for s in SYMBOLS)


def per_symbol(packets: list[Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {s: [] for s in SYMBOLS}
    for p in packets:
        if isinstance(p, TrainingDataPacket):
            out[p.symbol].append(p.ts_event_ms)
    return out


def expected_ends(n: int) -> list[int]:
    return [T0 + 1000 * (i + 1) for i in range(n)]


async def test_history_bars_and_trades_become_warm_training_and_ui_packets(redis_url: str, tmp_path: Path):
    r = command_client(redis_url)
    layout = make_layout(SYMBOLS, window_bars=WINDOW, micro_names=feature_names())
    try:
        await write_seconds(r, 0, 10)  # before history and before the service: a cold start mid-stream
        async with running_worker("features", make_settings(redis_url, tmp_path), worker) as ctx:
            await eventually(lambda: _count(r, TRAINING, 2 * 10))
            await write_history(r)  # ingest's history may land after the service started
            await eventually(lambda: _stat(ctx, "features_history_bars_read", 2 * 4 * (WINDOW + 1)))
            await write_seconds(r, 10, 30)
            await eventually(lambda: _count(r, TRAINING, 2 * 30))
            await eventually(lambda: _count(r, keys.UI, 4))
            await eventually(lambda: _ui_caught_up(r, T0 + 30_000))
            assert ctx.ready()

        training = await read_all(r, TRAINING)
        assert per_symbol(training) == {s: expected_ends(30) for s in SYMBOLS}, "one packet per 1s bar, in order"
        first, last = training[0], training[-1]
        assert first.warm is False and first.warmup["1s"] == pytest.approx(1 / WINDOW)
        assert first.warmup["1h"] == 0.0, "no history yet: the packet says so"
        assert last.warm is True and last.warmup == {tf: 1.0 for tf in keys.TIMEFRAMES}
        assert last.state_dim == layout.dim and last.layout_version.startswith("v2/")
        assert last.cnn_state == "INITIALISED" and last.model_version.startswith("cnn-mtf-init-")
        assert last.tick_coverage == pytest.approx(30 / 300, abs=0.01)
        for p in training:
            state = codec.f32_from_bytes(p.state)
            assert state.size == p.state_dim and np.isfinite(state).all()
        state = codec.f32_from_bytes(last.state)
        focus = make_layout(SYMBOLS, window_bars=WINDOW, micro_names=feature_names(), focus=last.symbol)
        assert state[focus.index_of(f"{last.symbol}.micro.log1p_trades_per_s_10s")] == pytest.approx(np.log1p(4.0))
        assert state[focus.index_of(f"{last.symbol}.warmup.fill_1d")] == 1.0
        # The 1m window at 05:00:30 ends with the newest history minute (the live minute is still open).
        b = make_bar(last.symbol, "1m", T0 - 60_000, price(last.symbol, -1), history=True)
        high_rel = state[focus.index_of(f"{last.symbol}.1m.high_rel[t]")]
        assert high_rel > 0 and np.sign(high_rel) == np.sign(np.log(b.high / b.close))

        ui = [p for p in await read_all(r, keys.UI) if isinstance(p, UIDataPacket)]
        newest = {p.symbol: p for p in ui}
        assert set(newest) == set(SYMBOLS)
        eth = newest["ETHUSDT"]
        assert eth.bars_buffered == {"1s": 30 + WINDOW + 1, "1m": WINDOW + 1, "1h": WINDOW + 1, "1d": WINDOW + 1}
        assert [b.timeframe for b in eth.latest_bars] == list(keys.TIMEFRAMES)
        assert eth.latest_bars[0].close_time_ms == T0 + 30_000 and eth.last_bar_ms == T0 + 30_000
        assert eth.tick_cache_size == 120 and eth.warmup["1d"] == 1.0 and eth.rl_state_dim == layout.dim
        assert len(eth.prediction_names) == 20 and codec.f32_from_bytes(eth.cnn_predictions).size == 20
        # UI throttle: at most 10 a second overall (ui_maxlen keeps the newest 50; count their span).
        stamps = sorted(p.ts_ms for p in ui)
        assert len(stamps) < 2 or len(stamps) - 1 <= 10 * (stamps[-1] - stamps[0]) / 1000 + 2
    finally:
        await r.aclose()


async def test_in_burst_mode_the_streams_so_far_become_their_training_packets_without_waiting(
    redis_url: str, tmp_path: Path
):
    """The shell driven by the runtime's burst mode: no sleeps, no polling, the same packets."""
    r = command_client(redis_url)
    settings = make_settings(redis_url, tmp_path)
    rt = StreamRuntime(settings.redis_url, settings.consumer("features"), settings.symbols, Stats("features"))
    service = FeaturesService(settings, rt, rt.stats)
    service.register()
    try:
        await write_history(r)
        await write_seconds(r, 0, 12)
        assert await rt.run_until_drained() > 0
        assert per_symbol(await read_all(r, TRAINING)) == {s: expected_ends(12) for s in SYMBOLS}
        await write_seconds(r, 12, 20)
        await rt.run_until_drained()
        training = await read_all(r, TRAINING)
        assert per_symbol(training) == {s: expected_ends(20) for s in SYMBOLS}, "one packet per 1s bar, in order"
        assert training[-1].warm is True, "the history was read by the timer of the first burst"
        assert await rt.run_until_drained() == 0 and len(await read_all(r, TRAINING)) == 2 * 20, "nothing new: nothing"
    finally:
        await rt.close()
        await r.aclose()


async def test_restarts_and_a_lost_group_neither_lose_nor_repeat_a_packet(redis_url: str, tmp_path: Path):
    r = command_client(redis_url)
    settings = make_settings(redis_url, tmp_path)
    try:
        await write_history(r)
        await write_seconds(r, 0, 20)
        async with running_worker("features", settings, worker):
            await eventually(lambda: _count(r, TRAINING, 2 * 20))
        await write_seconds(r, 20, 70)  # written while it was down, across a minute boundary
        async with running_worker("features", settings, worker):
            await eventually(lambda: _count(r, TRAINING, 2 * 70))
            await write_seconds(r, 70, 75)
            await eventually(lambda: _count(r, TRAINING, 2 * 75))
            await asyncio.sleep(0.3)  # would a duplicate follow?
        training = await read_all(r, TRAINING)
        assert per_symbol(training) == {s: expected_ends(75) for s in SYMBOLS}
        by_key = {(p.symbol, p.ts_event_ms): p for p in training}
        # The restarted service rebuilt the same windows: a packet after the restart is as warm as before.
        assert by_key[("ETHUSDT", T0 + 21_000)].warm and by_key[("ETHUSDT", T0 + 21_000)].tick_coverage > 0.06

        # The group is lost (NOGROUP recovery recreates it from 0): nothing is emitted twice.
        for symbol in SYMBOLS:
            for stream in (keys.ticks(symbol), *(keys.bars(symbol, tf) for tf in keys.TIMEFRAMES)):
                assert await r.xgroup_destroy(stream, keys.features_group("features-test")) == 1
        async with running_worker("features", settings, worker):
            await write_seconds(r, 75, 77)
            await eventually(lambda: _count(r, TRAINING, 2 * 77))
            await asyncio.sleep(0.3)
        training = await read_all(r, TRAINING)
        assert per_symbol(training) == {s: expected_ends(77) for s in SYMBOLS}
        # Same inputs, same state: the packet for a second built after the group was lost equals a fresh build.
        assert all(np.isfinite(codec.f32_from_bytes(p.state)).all() for p in training[-4:])
    finally:
        await r.aclose()


async def test_weights_swapped_under_load_lose_and_repeat_no_packet(redis_url: str, tmp_path: Path):
    r = command_client(redis_url)
    settings = make_settings(redis_url, tmp_path)
    data = save_bytes(init_model(123))
    (tmp_path / "cnn").mkdir()
    (tmp_path / "cnn" / "cnn-2.safetensors").write_bytes(data)
    stop = asyncio.Event()
    written = 0

    async def writer() -> None:
        nonlocal written
        while not stop.is_set():
            await write_seconds(r, written, written + 1)
            written += 1
            await asyncio.sleep(0.01)

    try:
        await write_history(r)
        async with running_worker("features", settings, worker) as ctx:
            task = asyncio.create_task(writer())
            await eventually(lambda: _count(r, TRAINING, 20))
            bad = ModelAnnouncement(
                name="cnn-mtf", version="cnn-1", ts_ms=T0, uri="cnn/cnn-2.safetensors",
                sha256="0" * 64, producer="test", parameters=1,
            )  # fmt: skip
            await r.xadd(keys.MODELS, codec.encode(bad))
            await eventually(lambda: _stat(ctx, "features_model_rejected", 1))
            good = ModelAnnouncement(
                name="cnn-mtf", version="cnn-2", ts_ms=T0 + 1, uri=(tmp_path / "cnn" / "cnn-2.safetensors").as_uri(),
                sha256=sha256_hex(data), producer="test", parameters=1,
            )  # fmt: skip
            await r.xadd(keys.MODELS, codec.encode(good))
            await eventually(lambda: _stat(ctx, "features_model_loaded", 1))
            await asyncio.sleep(0.3)
            stop.set()
            await task
            await eventually(lambda: _count(r, TRAINING, 2 * written))
            await asyncio.sleep(0.3)
        training = [p for p in await read_all(r, TRAINING) if isinstance(p, TrainingDataPacket)]
        assert per_symbol(training) == {s: expected_ends(written) for s in SYMBOLS}
        for symbol in SYMBOLS:
            versions = [p.model_version for p in training if p.symbol == symbol]
            switch = versions.index("cnn-2")
            assert set(versions[:switch]) == {f"cnn-mtf-init-{settings.seed}"} and set(versions[switch:]) == {"cnn-2"}
            assert 0 < switch < len(versions)
        loaded = [p for p in training if p.model_version == "cnn-2"]
        assert all(p.cnn_state == "LOADED" for p in loaded)
    finally:
        stop.set()
        await r.aclose()


async def test_a_group_that_falls_behind_the_training_retention_is_reported(redis_url: str, tmp_path: Path):
    r = command_client(redis_url)
    settings = make_settings(redis_url, tmp_path, training_maxlen=10, overrun_check_s=1)
    try:
        for stream in TRAINING:
            await r.xgroup_create(stream, "slow", id="0", mkstream=True)
            await r.xgroup_create(stream, "keeping-up", id="0")
        await write_history(r)
        async with running_worker("features", settings, worker) as ctx:
            for first in range(0, 150, 30):
                await write_seconds(r, first, first + 30)
                await eventually(lambda n=first + 30: _stat(ctx, "features_training_packets", 2 * n))
                await r.xreadgroup("keeping-up", "c", dict.fromkeys(TRAINING, ">"), count=1_000)
            assert not await _count(r, TRAINING, 2 * 150), "retention trimmed the streams"
            await eventually(lambda: _gauge(ctx, "features_training_overrun", 1.0, group="slow"), timeout=15)
            await asyncio.sleep(1.5)  # another check runs
            assert ctx.stats.get("features_training_overrun", group="keeping-up") == 0.0
            assert ctx.stats.get("features_training_overruns", group="slow") == 1  # reported once, not every check
    finally:
        await r.aclose()


async def _gauge(ctx: ServiceContext, name: str, value: float, **labels: str) -> bool:
    return ctx.stats.get(name, **labels) == value


async def test_each_training_packet_links_its_symbols_previous_packet_also_across_a_restart(
    redis_url: str, tmp_path: Path
):
    r = command_client(redis_url)
    settings = make_settings(redis_url, tmp_path)
    try:
        await write_history(r)
        await write_seconds(r, 0, 5)
        async with running_worker("features", settings, worker):
            await eventually(lambda: _count(r, TRAINING, 2 * 5))
        await write_seconds(r, 5, 8)
        async with running_worker("features", settings, worker):
            await eventually(lambda: _count(r, TRAINING, 2 * 8))
        for symbol in SYMBOLS:
            entries = await r.xrange(keys.training(symbol))
            mine = [(s(entry_id), codec.decode(fields)) for entry_id, fields in entries]
            by_id = dict(mine)
            assert all(p.symbol == symbol for _, p in mine)
            assert mine[0][1].prev_id == "" and mine[0][1].prev_ts_event_ms == 0
            for (prev_id, prev), (_, p) in itertools.pairwise(mine):
                assert p.prev_id == prev_id and p.prev_ts_event_ms == prev.ts_event_ms
                assert by_id[p.prev_id].ts_event_ms == p.ts_event_ms - 1_000
    finally:
        await r.aclose()


async def test_cnn_weights_published_in_the_trainers_redis_registry_are_loaded(redis_url: str, tmp_path: Path):
    r = command_client(redis_url)
    settings = make_settings(redis_url, tmp_path)
    data = save_bytes(init_model(321))
    key = keys.registry("cnn-mtf", "cnn-mtf-r0000001")
    try:
        await r.set(key, data)
        await write_history(r)
        async with running_worker("features", settings, worker) as ctx:
            ann = ModelAnnouncement(
                name="cnn-mtf", version="cnn-mtf-r0000001", ts_ms=T0, uri=f"redis:{key}",
                sha256=sha256_hex(data), producer="trainer-1", parameters=1,
            )  # fmt: skip
            await r.xadd(keys.MODELS, codec.encode(ann))
            await eventually(lambda: _stat(ctx, "features_model_loaded", 1))
            await write_seconds(r, 0, 2)
            await eventually(lambda: _count(r, TRAINING, 2 * 2))
        training = await read_all(r, TRAINING)
        assert {p.model_version for p in training} == {"cnn-mtf-r0000001"} and training[-1].cnn_state == "LOADED"
    finally:
        await r.aclose()
