"""A catch-up through the running service builds the same states, bit for bit, as the pure engine fed live.

Twenty minutes of trades and bars of two symbols are on Redis before the service starts. Its
reads then return hundreds of 1s bars and whole runs of 1m bars ahead of the trades they need;
the pacing (paused streams, queued trades and bars ahead) must make that irrelevant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import eventually, running_worker

from unistream_common import codec, keys
from unistream_common.packets import Bar, Tick, TickBatch, TrainingDataPacket
from unistream_common.redisio import command_client
from unistream_features.core import FeatureConfig, FeatureEngine
from unistream_features.service import worker
from unistream_features.settings import FeaturesSettings
from unistream_model.layout import make_layout

pytestmark = [pytest.mark.heavy, pytest.mark.integration]
torch.set_num_threads(1)

SYMBOLS = ("ETHUSDT", "BTCUSDT")
WINDOW = 20
SECONDS = 1_200
DAY = 86_400_000
T0 = 1_700_000_000_000 - 1_700_000_000_000 % DAY + 3_600_000 * 7
SPAN = {"1s": 1_000, "1m": 60_000, "1h": 3_600_000, "1d": DAY}


def inputs() -> tuple[list[Bar], list[list[tuple[str, object]]]]:
    """History bars, and per second the entries (stream, packet) in the order a live system writes them."""
    rng = np.random.default_rng(11)
    history: list[Bar] = []
    price = {"ETHUSDT": 3000.0, "BTCUSDT": 60000.0}
    for symbol in SYMBOLS:
        for tf in keys.TIMEFRAMES:
            end = T0 - T0 % SPAN[tf]
            for k in range(WINDOW + 1, 0, -1):
                c = price[symbol] * float(np.exp(rng.normal(0, 1e-3)))
                history.append(bar(symbol, tf, end - k * SPAN[tf], c, c * 1.0004, c * 0.9995, c, 7, True))  # fmt: skip
    seconds: list[list[tuple[str, object]]] = []
    minute: dict[str, list[Tick]] = {s: [] for s in SYMBOLS}
    trade_id = dict.fromkeys(SYMBOLS, 0)
    for i in range(SECONDS):
        start = T0 + 1000 * i
        entries: list[tuple[str, object]] = []
        for symbol in SYMBOLS:
            n = int(rng.integers(0, 6))  # quiet seconds too: bars without trades
            ticks = []
            for k in range(n):
                price[symbol] *= float(np.exp(rng.normal(0, 2e-4)))
                trade_id[symbol] += 1
                ts = start + int(rng.integers(0, 1000)) if k == 0 else ticks[-1].ts_event_ms + 1
                ts = min(ts, start + 999)
                side = "BUY" if rng.random() < 0.5 else "SELL"
                ticks.append(
                    Tick(trade_id[symbol], round(price[symbol], 2), float(rng.uniform(0.01, 2)), side, ts, ts + 2)
                )
            ticks.sort(key=lambda t: t.ts_event_ms)
            if ticks:
                entries.append((keys.ticks(symbol), TickBatch(symbol, "SYNTHETIC", ticks)))
            minute[symbol].extend(ticks)
            entries.append((keys.bars(symbol, "1s"), bar_of(symbol, "1s", start, ticks, round(price[symbol], 2))))
            if (start + 1000) % 60_000 == 0:
                m_open = start + 1000 - 60_000
                entries.append(
                    (keys.bars(symbol, "1m"), bar_of(symbol, "1m", m_open, minute[symbol], round(price[symbol], 2)))
                )
                minute[symbol] = []
        seconds.append(entries)
    return history, seconds


def bar(symbol: str, tf: str, open_ms: int, o: float, h: float, lo: float, c: float, n: int, history: bool) -> Bar:
    volume = 1.0 if n else 0.0
    return Bar(symbol, tf, open_ms, open_ms + SPAN[tf], o, h, lo, c, volume, volume * c, n, c, volume / 2, n == 0,  # type: ignore[arg-type]
               "SYNTHETIC", is_history=history)  # fmt: skip


def bar_of(symbol: str, tf: str, open_ms: int, ticks: list[Tick], last: float) -> Bar:
    if not ticks:
        return bar(symbol, tf, open_ms, last, last, last, last, 0, False)
    prices = [t.price for t in ticks]
    return bar(symbol, tf, open_ms, prices[0], max(prices), min(prices), prices[-1], len(ticks), False)


def settings_for(redis_url: str, tmp_path: Path) -> FeaturesSettings:
    return FeaturesSettings(
        redis_url=redis_url, symbols=SYMBOLS, consumer_name="features-catchup", model_dir=str(tmp_path),
        window_bars=WINDOW, bar_cache_size=100, tick_cache_size=200, tick_wait_ms=60_000,
    )  # fmt: skip


def reference(history: list[Bar], seconds: list[list[tuple[str, object]]], seed: int) -> dict[tuple[str, int], bytes]:
    """The pure engine fed second by second, both symbols' entries of a second before its states are built."""
    engine = FeatureEngine(
        FeatureConfig(symbols=SYMBOLS, window_bars=WINDOW, bar_capacity=100, tick_capacity=200), seed=seed, now_ms=0
    )
    for b in history:
        engine.on_bar(b, 0)
    out: dict[tuple[str, int], bytes] = {}
    for entries in seconds:
        for _, packet in entries:
            if isinstance(packet, TickBatch):
                engine.on_ticks(packet)
            else:
                engine.on_bar(packet, 0)  # type: ignore[arg-type]
        for p in engine.emit(0):
            out[(p.symbol, p.ts_event_ms)] = p.state
    return out


async def test_a_twenty_minute_catch_up_builds_the_states_the_live_engine_builds(redis_url: str, tmp_path: Path):
    history, seconds = inputs()
    r = command_client(redis_url)
    settings = settings_for(redis_url, tmp_path)
    try:
        pipe = r.pipeline(transaction=False)
        for b in history:
            pipe.xadd(keys.history(b.symbol, b.timeframe), codec.encode(b), id=f"{b.open_time_ms}-0")
        for entries in seconds:
            for stream, packet in entries:
                entry_id = f"{packet.open_time_ms}-0" if isinstance(packet, Bar) else "*"  # type: ignore[union-attr]
                pipe.xadd(stream, codec.encode(packet), id=entry_id)  # type: ignore[arg-type]
        await pipe.execute()

        async with running_worker("features", settings, worker) as ctx:
            await eventually(lambda: _count(r, 2 * SECONDS), timeout=120, what="every packet of the catch-up")
            assert ctx.stats.get("features_bars_without_all_trades") == 0
        got = {}
        for _, fields in [e for symbol in SYMBOLS for e in await r.xrange(keys.training(symbol))]:
            p = codec.decode(fields)
            assert isinstance(p, TrainingDataPacket)
            assert (p.symbol, p.ts_event_ms) not in got, "a packet was written twice"
            got[(p.symbol, p.ts_event_ms)] = p.state
        want = reference(history, seconds, settings.seed)
        assert set(got) == set(want)
        differ = sorted(k for k in want if got[k] != want[k])
        assert not differ, f"{len(differ)} states differ from the live engine's: {explain(differ[0], got, want)}"
    finally:
        await r.aclose()


def explain(key: tuple[str, int], got: dict[tuple[str, int], bytes], want: dict[tuple[str, int], bytes]) -> str:
    layout = make_layout(SYMBOLS, window_bars=WINDOW, focus=key[0])
    a, b = codec.f32_from_bytes(got[key]), codec.f32_from_bytes(want[key])
    idx = np.flatnonzero(a != b)
    blocks = sorted({layout.block_at(int(i)).name for i in idx})
    return f"{key}: blocks {blocks}, first {layout.feature_name(int(idx[0]))} {a[idx[0]]} != {b[idx[0]]}"


async def _count(r, n: int) -> bool:  # type: ignore[no-untyped-def]
    return sum([int(await r.xlen(keys.training(symbol))) for symbol in SYMBOLS]) >= n
