"""Live Binance through the ingest service into Redis, against the local test exchange.

Asserts on what reaches ``md:ticks:{SYMBOL}``: every trade the exchange generated from the first
one written, once, in order, labelled REAL; a dropped connection is backfilled; what cannot be
recovered is an explicit GapMarker on the stream; ``--record`` files replay to the same ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from exchange import TestExchange, past_kline_rows
from helpers import eventually

from unistream_common import codec, keys
from unistream_common.packets import GapMarker, TickBatch
from unistream_common.redisio import command_client
from unistream_common.stats import Stats
from unistream_ingest.archive import read_archive
from unistream_ingest.service import IngestService
from unistream_ingest.settings import IngestSettings

pytestmark = pytest.mark.integration
SYMBOLS = ("ETHUSDT", "BTCUSDT")


async def read_stream(client: aioredis.Redis, symbol: str) -> tuple[list[int], list[GapMarker], set[str]]:
    ids: list[int] = []
    gaps: list[GapMarker] = []
    sources: set[str] = set()
    for _, fields in await client.xrange(keys.ticks(symbol)):
        packet = codec.decode(fields)
        if isinstance(packet, TickBatch):
            ids.extend(t.trade_id for t in packet.ticks)
            sources.add(packet.source)
        else:
            assert isinstance(packet, GapMarker)
            gaps.append(packet)
    return ids, gaps, sources


@contextlib.asynccontextmanager
async def ingest(settings: IngestSettings) -> AsyncIterator[IngestService]:
    client = command_client(settings.redis_url)
    writer = IngestService(settings, Stats("ingest"), client)
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()


def live_settings(redis_url: str, ex: TestExchange, **extra: object) -> IngestSettings:
    values: dict[str, object] = {
        "redis_url": redis_url, "source": "binance", "binance_ws_url": ex.ws_url, "binance_rest_url": ex.rest_url,
        "binance_silence_s": 2.0, "symbols": SYMBOLS,
    }  # fmt: skip
    values.update(extra)
    return IngestSettings(**values)  # type: ignore[arg-type]


def expected(ex: TestExchange, symbol: str, first: int) -> list[int]:
    return [t.trade_id for t in ex.log[symbol] if t.trade_id >= first]


async def settle(client: aioredis.Redis, ex: TestExchange, symbol: str) -> list[int]:
    """Wait until the stream holds every trade the exchange logged from its first id."""

    async def caught_up() -> bool:
        ids, _, _ = await read_stream(client, symbol)
        return (
            bool(ids)
            and ids == expected(ex, symbol, ids[0])[: len(ids)]
            and len(ids) >= 50
            and (expected(ex, symbol, ids[0])[-1] - ids[-1] < 5)
        )

    await eventually(caught_up, timeout=20, what=f"{symbol} caught up with the exchange")
    return (await read_stream(client, symbol))[0]


async def test_live_trades_reach_redis_once_in_order_across_a_dropped_connection(redis_url: str) -> None:
    client = command_client(redis_url)
    async with TestExchange(SYMBOLS, rate_per_s=200) as ex:
        now = int(time.time() * 1000)
        for tf in keys.TIMEFRAMES:
            ex.add_past_klines("ETHUSDT", tf, past_kline_rows(tf, 5, now, 3000.0))
        async with ingest(live_settings(redis_url, ex)) as writer:
            await _check_dropped_connection(client, ex, writer)
    await client.aclose()


async def _check_dropped_connection(client: aioredis.Redis, ex: TestExchange, writer: IngestService) -> None:
    """Settle, drop every connection, and check Redis holds each trade once, plus history and metrics."""
    for symbol in SYMBOLS:
        await settle(client, ex, symbol)
    ex.drop_all()
    ex.refuse_connections_for(0.8)  # trades keep coming while nobody is connected: backfill owns them
    await asyncio.sleep(1.5)
    for symbol in SYMBOLS:
        ids = await settle(client, ex, symbol)
        log_ids = expected(ex, symbol, ids[0])
        assert ids == log_ids[: len(ids)], f"{symbol}: trades missing or repeated after the reconnect"
        _, gaps, sources = await read_stream(client, symbol)
        assert gaps == [] and sources == {"REAL"}
    info = writer.info()
    assert info["source"] == "REAL"
    assert keys.TIMEFRAMES == ("1s", "1m", "1h", "1d")
    for tf in keys.TIMEFRAMES:  # warm-up history from the exchange's klines
        bars = [codec.decode(f) for _, f in await client.xrange(keys.history("ETHUSDT", tf))]
        assert bars and all(b.is_history and b.source == "REAL" and b.timeframe == tf for b in bars)
    assert info["binance"]["trades_backfilled"] > 0 and info["binance"]["reconnects"] >= 1
    await asyncio.sleep(1.1)  # the source's counters reach /metrics once a second
    metrics = writer.stats.prometheus()
    for line in ("unistream_ingest_binance_trades_backfilled_total", "unistream_ingest_ticks_accepted_total",
                 'unistream_ingest_clock_skew_ms{service="ingest",stat="p50_recent"}',
                 "unistream_ingest_write_seconds_total", "unistream_ingest_binance_reconnects_total"):  # fmt: skip
        assert line in metrics, line
    assert writer.stats.total("ingest_binance_trades_backfilled") == writer.info()["binance"]["trades_backfilled"]


async def test_unrecoverable_trades_become_a_gap_marker_with_the_exact_range(redis_url: str) -> None:
    client = command_client(redis_url)
    async with (
        TestExchange(("ETHUSDT",), rate_per_s=200) as ex,
        ingest(live_settings(redis_url, ex, symbols=("ETHUSDT",))),
    ):
        await settle(client, ex, "ETHUSDT")
        ex.refuse_history(400)
        ex.drop_all()
        ex.refuse_connections_for(0.5)
        await eventually(lambda: _has_gap(client), timeout=20, what="a gap marker on md:ticks:{ETHUSDT}")
        await asyncio.sleep(0.5)
        ids, gaps, _ = await read_stream(client, "ETHUSDT")
        (gap,) = gaps
        missing = sorted(set(range(ids[0], ids[-1] + 1)) - set(ids))
        assert missing == list(range(gap.from_trade_id, gap.to_trade_id + 1))
        assert gap.reason == "http_400" and gap.source == "REAL" and gap.ts_to_ms >= gap.ts_from_ms > 0
    await client.aclose()


async def _has_gap(client: aioredis.Redis) -> bool:
    return bool((await read_stream(client, "ETHUSDT"))[1])


async def test_recorded_files_replay_to_the_trades_that_were_written(redis_url: str, tmp_path: Path) -> None:
    client = command_client(redis_url)
    async with (
        TestExchange(("ETHUSDT",), rate_per_s=100) as ex,
        ingest(live_settings(redis_url, ex, symbols=("ETHUSDT",), record_dir=str(tmp_path))),
    ):
        await settle(client, ex, "ETHUSDT")
        await asyncio.sleep(1.2)  # the recorder flushes at least every second
    written: list[tuple[int, float, float]] = []
    for _, fields in await client.xrange(keys.ticks("ETHUSDT")):
        batch = codec.decode(fields)
        written.extend((t.trade_id, t.price, t.size) for t in batch.ticks)  # type: ignore[union-attr]
    files = sorted(tmp_path.glob("ETHUSDT-trades-*.csv"))
    assert files, "no recording was written"
    replayed = [(t.trade_id, t.price, t.size) for f in files for t in read_archive(f, "ETHUSDT")]
    assert replayed == written
    await client.aclose()
