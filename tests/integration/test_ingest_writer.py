"""The ingest writer against a real Redis: outages, restarts, retention, explicit accounting of every tick."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import redis.asyncio as aioredis

from unistream_common import codec, keys
from unistream_common.packets import Tick, TickBatch
from unistream_common.redisio import command_client
from unistream_common.stats import Stats
from unistream_ingest.service import IngestService
from unistream_ingest.settings import IngestSettings
from unistream_tools.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.integration

SYMBOLS = ("ETHUSDT", "BTCUSDT")


def settings(url: str, **overrides: object) -> IngestSettings:
    values: dict[str, object] = {
        "redis_url": url,
        "symbols": ",".join(SYMBOLS),
        "flush_interval_ms": 20,
        "retry_backoff_max_ms": 200,
    }
    values.update(overrides)
    return IngestSettings(**values)  # type: ignore[arg-type]


async def stream_ticks(client: aioredis.Redis, symbol: str) -> list[tuple[int, list[Tick]]]:
    """(entry id ms, ticks) of every entry of a symbol's tick stream."""
    out = []
    for eid, fields in await client.xrange(keys.ticks(symbol)):
        batch = codec.decode(fields)
        assert isinstance(batch, TickBatch) and batch.symbol == symbol and batch.source == "SYNTHETIC"
        out.append((int(eid.decode().split("-")[0]), batch.ticks))
    return out


class Running:
    """An IngestService running as a task on its own client."""

    def __init__(self, cfg: IngestSettings) -> None:
        self.stats = Stats("ingest")
        self.client = command_client(cfg.redis_url, timeout_s=1.0)
        self.writer = IngestService(cfg, self.stats, self.client)
        self.task = asyncio.create_task(self.writer.run())

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.client.aclose()

    def assert_every_tick_accounted_for(self) -> None:
        """Generated = written + dropped + still buffered, per symbol: nothing vanishes silently."""
        for s in SYMBOLS:
            generated = self.stats.get("ingest_ticks_generated", symbol=s)
            accounted = (
                self.stats.get("ingest_ticks_written", symbol=s)
                - self.stats.get("ingest_ticks_resent", symbol=s)  # written twice: Redis lost the first
                + self.stats.get("ingest_ticks_dropped", symbol=s)
                + self.stats.get("ingest_ticks_already_written", symbol=s)
                + self.writer.buffer.size(s)
            )
            assert generated > 0 and generated == accounted, s


async def stop_all(run: Running, restarted: RedisServer | None) -> None:
    """The writer, if a failed check left it running, and the Redis a test restarted."""
    if not run.task.done():
        await run.stop()
    if restarted is not None:
        restarted.stop()


async def test_writer_keeps_ticks_through_a_redis_restart_with_no_gap_and_no_duplicate(
    redis_server: RedisServer,
) -> None:
    run = Running(settings(redis_server.url))
    restarted: RedisServer | None = None
    try:
        await asyncio.sleep(0.6)
        assert run.writer.ready()
        redis_server.stop()  # SIGTERM: the AOF is flushed, the data survives
        await asyncio.sleep(0.8)
        assert run.stats.total("ingest_write_errors") > 0
        assert run.writer.buffer.size() > 0  # the outage's ticks wait in the buffer
        restarted = start_redis(redis_server.data_dir, port=redis_server.port, appendonly=True)
        deadline = time.monotonic() + 5
        while run.writer.buffer.size() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await run.stop()
        run.assert_every_tick_accounted_for()
        assert run.stats.total("ingest_ticks_dropped") == 0
        client = command_client(restarted.url)
        for symbol in SYMBOLS:
            ticks = [t for _, batch in await stream_ticks(client, symbol) for t in batch]
            ids = [t.trade_id for t in ticks]
            assert ids == list(range(ids[0], ids[0] + len(ids))), f"{symbol}: a gap or a duplicate"
            assert len(ids) == run.stats.get("ingest_ticks_written", symbol=symbol) + run.stats.get(
                "ingest_ticks_already_written", symbol=symbol
            )
            assert all(t.ts_event_ms <= t.ts_recv_ms for t in ticks)
        await client.aclose()
    finally:
        await stop_all(run, restarted)


@pytest.mark.parametrize("outage_s", [0.0, 0.5], ids=["restarted-at-once", "down-half-a-second"])
async def test_writer_writes_again_what_a_killed_redis_lost_from_its_append_only_file(
    redis_server: RedisServer, outage_s: float
) -> None:
    """Redis SIGKILLed before its last writes reached the AOF restarts without them: the writer
    notices from the stream's mark and writes those ticks again, in order, before newer ones.
    At once (the writer never sees Redis down: its next command finds the restarted one) and
    after an outage (writes fail, then the writer reconciles)."""
    run = Running(settings(redis_server.url))
    restarted: RedisServer | None = None
    try:
        await wait_written(run)
        await asyncio.sleep(0.3)
        position = redis_server.aof_position()
        assert position is not None
        await asyncio.sleep(0.5)  # writes the cut below takes away again
        written = {s: run.writer.written.through[s] for s in SYMBOLS}
        cut = redis_server.kill_losing_after(position)  # blocking: the writer does not run meanwhile
        assert cut > 0
        if outage_s:
            await asyncio.sleep(outage_s)
        restarted = start_redis(redis_server.data_dir, port=redis_server.port, appendonly=True)
        client = command_client(restarted.url)
        marks = {s: int(await client.get(keys.ticks_mark(s))) for s in SYMBOLS}
        assert all(marks[s] < written[s] for s in SYMBOLS), "nothing was rolled back: the test proves nothing"
        deadline = time.monotonic() + 10
        while not all(run.stats.get("ingest_redis_rollbacks", symbol=s) for s in SYMBOLS) or run.writer.buffer.size():
            assert time.monotonic() < deadline, "the writer did not notice the rollback"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        await run.stop()
        run.assert_every_tick_accounted_for()
        for s in SYMBOLS:
            assert run.stats.get("ingest_ticks_resent", symbol=s) >= written[s] - marks[s]
            assert run.stats.get("ingest_ticks_lost_in_rollback", symbol=s) == 0
            ids = [t.trade_id for _, batch in await stream_ticks(client, s) for t in batch]
            assert ids == list(range(ids[0], ids[0] + len(ids))), f"{s}: a gap or a duplicate after the rollback"
            assert ids[-1] >= written[s] and int(await client.get(keys.ticks_mark(s))) == ids[-1]
        await client.aclose()
    finally:
        await stop_all(run, restarted)


async def test_writer_counts_dropped_ticks_when_the_buffer_overflows_during_an_outage(
    redis_server: RedisServer,
) -> None:
    run = Running(settings(redis_server.url, max_buffer_ticks=2))
    try:
        await asyncio.sleep(0.4)
        redis_server.stop()
        await asyncio.sleep(1.5)
        assert all(run.stats.get("ingest_ticks_dropped", symbol=s) > 0 for s in SYMBOLS)
        assert run.writer.buffer.size() <= 2 * len(SYMBOLS)
        assert run.stats.total("ingest_write_errors") >= 2
    finally:
        await run.stop()
    run.assert_every_tick_accounted_for()


async def wait_written(run: Running, timeout: float = 10.0) -> None:
    """Until the writer has written at least one tick of every symbol."""
    deadline = time.monotonic() + timeout
    while not all(run.stats.get("ingest_ticks_written", symbol=s) for s in SYMBOLS):
        assert time.monotonic() < deadline, "no ticks written"
        await asyncio.sleep(0.05)


async def test_a_restarted_writer_continues_the_price_and_leaves_a_visible_trade_id_gap(redis_url: str) -> None:
    first = Running(settings(redis_url))
    await wait_written(first)
    await first.stop()
    second = Running(settings(redis_url))
    await wait_written(second)
    await second.stop()
    client = command_client(redis_url)
    try:
        for symbol in SYMBOLS:
            ticks = [t for _, batch in await stream_ticks(client, symbol) for t in batch]
            # a stop that cancels a write in flight finds its ticks in Redis afterwards: already written
            n_first = int(
                first.stats.get("ingest_ticks_written", symbol=symbol)
                + first.stats.get("ingest_ticks_already_written", symbol=symbol)
            )
            before, after = ticks[n_first - 1], ticks[n_first]
            assert after.trade_id > before.trade_id + 1
            assert after.price == pytest.approx(before.price, rel=0.005)
    finally:
        await client.aclose()


async def test_writer_trims_ticks_older_than_the_retention(redis_url: str) -> None:
    client = command_client(redis_url)
    # Approximate trimming (MINID ~) removes whole radix-tree nodes only, and only when the stream
    # is written: with nodes of 2 entries, at most 2 entries may be older than the newest - retention.
    await client.config_set("stream-node-max-entries", 2)
    run = Running(settings(redis_url, tick_retention_s=1, flush_interval_ms=10))
    try:
        await asyncio.sleep(2.5)
        for symbol in SYMBOLS:
            entry_ms = [ms for ms, _ in await stream_ticks(client, symbol)]
            too_old = [ms for ms in entry_ms if ms < entry_ms[-1] - 1_000]
            assert len(too_old) <= 2, f"{symbol}: {len(too_old)} entries older than the retention were kept"
            assert len(entry_ms) < run.stats.get("ingest_batches_written", symbol=symbol)
    finally:
        await run.stop()
        await client.aclose()


async def test_every_batch_holds_at_most_max_batch_ticks(redis_url: str) -> None:
    run = Running(settings(redis_url, max_batch_ticks=1, flush_interval_ms=400))
    await asyncio.sleep(1.5)
    await run.stop()
    client = command_client(redis_url)
    try:
        batches = [batch for s in SYMBOLS for _, batch in await stream_ticks(client, s)]
        assert [len(b) for b in batches] == [1] * len(batches) and len(batches) >= 4
        # Ticks released in the same cycle share ts_recv_ms: a cycle's ticks were split, not merged.
        recv = [b[0].ts_recv_ms for b in batches]
        assert len(set(recv)) < len(recv)
    finally:
        await client.aclose()
