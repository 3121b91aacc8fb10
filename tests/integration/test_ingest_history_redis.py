"""Warm-up history into a real Redis: from the local test exchange's klines, the simulator, replay files."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from exchange import TestExchange, past_kline_rows
from helpers import eventually

from unistream_common import codec, keys
from unistream_common.packets import Bar
from unistream_common.redisio import command_client
from unistream_common.stats import Stats
from unistream_ingest.history import provide_history, publish_history, synthetic_history
from unistream_ingest.settings import IngestSettings

pytestmark = pytest.mark.integration

SYMBOLS = ("ETHUSDT", "BTCUSDT")
T0 = 1_764_028_800_000  # 2025-11-25 00:00:00 UTC


def settings(redis_url: str, **overrides: object) -> IngestSettings:
    values: dict[str, object] = {"redis_url": redis_url, "symbols": ",".join(SYMBOLS)}
    values.update(overrides)
    return IngestSettings(**values)  # type: ignore[arg-type]


async def read_history(client: aioredis.Redis, stream: str) -> list[tuple[str, Bar]]:
    out = []
    for eid, fields in await client.xrange(stream):
        bar = codec.decode(fields)
        assert isinstance(bar, Bar)
        out.append((eid.decode(), bar))
    return out


async def bar_streams(client: aioredis.Redis) -> list[bytes]:
    return [k async for k in client.scan_iter(match="md:bars:*")]


async def started_trading(ex: TestExchange) -> None:
    """Wait for every symbol's first trade: like Binance, the exchange then ends klines with the open interval."""

    async def traded() -> bool:
        return all(ex.log.values())

    await eventually(traded, 5.0, "the exchange's first trades")


async def early_in_a_second() -> int:
    """Now (ms), 100 ms into a second: every 1s kline request made in the next 900 ms has the same
    interval still open, as ``now`` has (the exchange trades every 5 ms at 200 trades/s)."""
    await asyncio.sleep((1_100 - time.time() * 1000 % 1_000) / 1000)
    return int(time.time() * 1000)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_exchange_klines_become_history_streams_with_open_time_ids_and_republishing_adds_nothing(
    redis_url: str,
) -> None:
    # 200 trades/s: the interval holding ``now`` has a trade by the time klines are asked for.
    async with TestExchange(SYMBOLS, rate_per_s=200) as ex:
        await started_trading(ex)
        now = await early_in_a_second()
        for symbol in SYMBOLS:
            for tf in keys.TIMEFRAMES:
                ex.add_past_klines(symbol, tf, past_kline_rows(tf, 8, now, 3000.0))
        cfg = settings(redis_url, binance_rest_url=ex.rest_url, history_bars=5)
        client = command_client(redis_url)
        stats = Stats("ingest")
        try:
            first = await provide_history(cfg, client, source_kind="binance", now_ms=now, stats=stats)
            again = await provide_history(cfg, client, source_kind="binance", now_ms=now, stats=stats)
            streams = {s: await read_history(client, s) for s in keys.history_streams(SYMBOLS)}
            assert await bar_streams(client) == []
        finally:
            await client.aclose()
    assert first == dict.fromkeys(keys.history_streams(SYMBOLS), 5)
    assert again == dict.fromkeys(keys.history_streams(SYMBOLS), 0)
    assert stats.total("ingest_history_bars_already_written") == 5 * len(first)
    assert len(first) == 2 * 4 and keys.history("BTCUSDT", "1s") in first
    assert stats.total("ingest_history_failures") == 0
    for stream, entries in streams.items():
        symbol, tf = keys.parse_history(stream)  # type: ignore[misc]
        span = keys.TIMEFRAME_MS[tf]
        assert len(entries) == 5
        assert [eid for eid, _ in entries] == [f"{bar.open_time_ms}-0" for _, bar in entries]
        for _, bar in entries:
            assert bar.is_history and bar.source == "REAL" and (bar.symbol, bar.timeframe) == (symbol, tf)
            assert bar.close_time_ms == bar.open_time_ms + span <= now
        # The exchange's last row is the interval still open: it never becomes history.
        assert entries[-1][1].open_time_ms == now - now % span - span


async def test_a_429_from_the_exchange_is_waited_out_once(redis_url: str) -> None:
    async with TestExchange(("ETHUSDT",), rate_per_s=20) as ex:
        await started_trading(ex)
        now = int(time.time() * 1000)
        for tf in keys.TIMEFRAMES:
            ex.add_past_klines("ETHUSDT", tf, past_kline_rows(tf, 3, now, 3000.0))
        ex.rest_rate_limit(1, retry_after_s=1)
        cfg = settings(redis_url, symbols="ETHUSDT", binance_rest_url=ex.rest_url, history_bars=3)
        client = command_client(redis_url)
        try:
            written = await provide_history(cfg, client, source_kind="binance", now_ms=now)
        finally:
            await client.aclose()
        statuses = [status for _, _, status in ex.rest_calls]
    # The 1s klines are asked for first and waited for a second: spare rows still reach back to now.
    assert statuses == [429, 200, 200, 200, 200]
    assert written == dict.fromkeys(keys.history_streams(["ETHUSDT"]), 3)


async def test_synthetic_history_publishes_300_bars_per_stream_ending_at_the_market_start_price(
    redis_url: str,
) -> None:
    cfg = settings(redis_url, history_maxlen=2_000)
    client = command_client(redis_url)
    try:
        prices = {"ETHUSDT": 3012.55}
        first = await provide_history(cfg, client, source_kind="synthetic", now_ms=T0 + 90_000, start_prices=prices)
        later = await provide_history(cfg, client, source_kind="synthetic", now_ms=T0 + 150_000, start_prices=prices)
        eth_1m = await read_history(client, keys.history("ETHUSDT", "1m"))
        eth_1s = await read_history(client, keys.history("ETHUSDT", "1s"))
        btc_1d = await read_history(client, keys.history("BTCUSDT", "1d"))
        assert await bar_streams(client) == []
    finally:
        await client.aclose()
    assert first == dict.fromkeys(keys.history_streams(SYMBOLS), 300)
    # A minute later only the minute and the 60 seconds closed since are new; the 1h and 1d
    # histories are already there.
    assert later == {**dict.fromkeys(keys.history_streams(SYMBOLS), 0), **dict.fromkeys(
        [keys.history("ETHUSDT", "1m"), keys.history("BTCUSDT", "1m")], 1), **dict.fromkeys(
        [keys.history("ETHUSDT", "1s"), keys.history("BTCUSDT", "1s")], 60)}  # fmt: skip
    assert len(eth_1s) == 360 and [eid for eid, _ in eth_1s] == [f"{b.open_time_ms}-0" for _, b in eth_1s]
    assert eth_1s[299][1].close == 3012.55 and eth_1s[299][1].close_time_ms == T0 + 90_000
    assert eth_1s[-1][1].close == 3012.55 and eth_1s[-1][1].close_time_ms == T0 + 150_000
    assert all(b.timeframe == "1s" and b.close_time_ms == b.open_time_ms + 1_000 for _, b in eth_1s)
    assert eth_1m[299][1].close == 3012.55 and eth_1m[299][1].close_time_ms == T0 + 60_000
    assert eth_1m[0][0] == f"{eth_1m[0][1].open_time_ms}-0"
    assert btc_1d[-1][1].close == 90_000.0 and btc_1d[-1][1].close_time_ms == T0
    assert all(bar.is_history and bar.source == "SYNTHETIC" for _, bar in eth_1m + eth_1s + btc_1d)


async def test_replay_history_comes_from_the_replay_files(redis_url: str, tmp_path: Path) -> None:
    # Two hours and a half of trades, one every 10 s, from 00:00: 1m and two whole 1h bars; no day.
    path = tmp_path / "ETHUSDT-trades-2025-11-25.csv"
    rows = [
        f"{i},{3000 + i % 50}.5,0.010,{30.005 + i % 50 * 0.01:.3f},{T0 + i * 10_000},{i % 3 == 0},True"
        for i in range(900)
    ]
    path.write_text("\n".join(rows) + "\n")
    cfg = settings(redis_url, source="replay", replay_paths=str(path), history_bars=100)
    client = command_client(redis_url)
    try:
        written = await provide_history(cfg, client, source_kind="replay", now_ms=int(time.time() * 1000))
        seconds = await read_history(client, keys.history("ETHUSDT", "1s"))
        minutes = await read_history(client, keys.history("ETHUSDT", "1m"))
        hours = await read_history(client, keys.history("ETHUSDT", "1h"))
        assert not await client.exists(keys.history("BTCUSDT", "1m"))
        assert not await client.exists(keys.history("BTCUSDT", "1s"))
    finally:
        await client.aclose()
    assert written == {
        keys.history("ETHUSDT", "1s"): 100,
        keys.history("ETHUSDT", "1m"): 100,
        keys.history("ETHUSDT", "1h"): 2,
        keys.history("ETHUSDT", "1d"): 0,
    }
    assert minutes[-1][1].close_time_ms == T0 + 149 * 60_000  # the minute holding the last trade is left out
    assert [bar.open_time_ms for _, bar in hours] == [T0, T0 + 3_600_000]
    assert all(bar.trade_count == 360 and bar.source == "REPLAY" and bar.is_history for _, bar in hours)
    # The last 100 seconds before the one holding the last trade (trade 899 at 02:29:50): a trade
    # opens every tenth of them, the others are flat at the trade before.
    assert [bar.open_time_ms for _, bar in seconds] == [T0 + 8_890_000 + k * 1_000 for k in range(100)]
    assert [eid for eid, _ in seconds] == [f"{bar.open_time_ms}-0" for _, bar in seconds]
    for _, bar in seconds:
        i = (bar.open_time_ms - T0) // 10_000  # the trade at or before this second
        price = 3000 + i % 50 + 0.5
        assert (bar.open, bar.high, bar.low, bar.close) == (price,) * 4, bar
        assert bar.filled == (bar.open_time_ms % 10_000 != 0), bar
        assert (bar.volume, bar.trade_count) == ((0.0, 0) if bar.filled else (0.01, 1)), bar
        assert bar.timeframe == "1s" and bar.source == "REPLAY" and bar.is_history


async def test_unreachable_redis_or_exchange_is_logged_and_counted_never_raised(redis_url: str) -> None:
    stats = Stats("ingest")
    dead = command_client(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=1.0)
    try:
        written = await provide_history(
            settings(redis_url, history_bars=10), dead, source_kind="synthetic", now_ms=T0, stats=stats
        )
    finally:
        await dead.aclose()
    assert written == {} and stats.total("ingest_history_failures") == 2 * 4

    client = command_client(redis_url)
    try:
        cfg = settings(redis_url, binance_rest_url=f"http://127.0.0.1:{closed_port()}", history_bars=10)
        written = await provide_history(cfg, client, source_kind="binance", now_ms=T0, stats=stats)
        assert await client.keys("md:*") == []
    finally:
        await client.aclose()
    assert written == {} and stats.total("ingest_history_failures") == 2 * 2 * 4


async def test_publish_counts_bars_already_written_apart_from_new_ones(redis_url: str) -> None:
    stream = keys.history("ETHUSDT", "1h")
    bars = synthetic_history("ETHUSDT", 7, T0, "1h", 10)
    client = command_client(redis_url)
    try:
        assert await publish_history(client, {stream: bars[:6]}, 100) == {stream: 6}
        dups: dict[str, int] = {}
        assert await publish_history(client, {stream: bars}, 100, duplicates=dups) == {stream: 4}
        assert dups == {stream: 6}
        assert await client.xlen(stream) == 10
    finally:
        await client.aclose()
