"""I/O shell of the aggregator: group ``aggregator`` over the tick streams, 1 s bars out.

The consumer runtime delivers tick-batch entries; :class:`~unistream_aggregator.core.BarAggregator`
turns them into bars; each callback returns ``Result(writes=bars, ack=entries)`` and the runtime
writes the bars (explicit ids ``<open_time_ms>-0``) and acknowledges the entries in one MULTI.
A re-emitted bar is refused by Redis and counted by the runtime as a duplicate write: that, with
deferred acknowledgement, makes a crash at any point leave the bar stream as if it never happened.

- ``on_rewind`` (before the runtime redelivers this consumer's pending entries, at start and
  after every reconnect) restores the core from the last bar of each symbol's stream, and first
  takes over entries still pending on other consumers of the group. The aggregator runs as ONE
  instance (two would split a symbol's trades between two open bars), so any other consumer is
  a dead predecessor under another name (a new hostname, say); leaving its entries to the
  runtime's idle claim would redeliver them after the bars they belong to were already closed.
- ``on_timer`` (every 0.1 s) closes bars whose end + grace has passed in wall-clock time, but
  only for symbols whose tick stream has no undelivered entries: while a backlog is queued
  (catching up after a restart, say) event time, not the wall clock, decides when bars close,
  so the result does not depend on how fast the backlog is read.
- If the core ever raises (a bug), the consumer is restarted in-process: its state is rebuilt
  from Redis and the pending entries come again, rather than the runtime retrying entries one
  by one against half-updated state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis

from unistream_aggregator.core import AggregatorOutput, BarAggregator
from unistream_aggregator.settings import AggregatorSettings
from unistream_common import codec, keys
from unistream_common.consumer import ConsumerOptions, Message, Result, StreamRuntime, Write, raise_if_cancel_lost
from unistream_common.packets import Bar, TickBatch
from unistream_common.redisio import s, top_packets
from unistream_common.service import ServiceContext, run_consumers
from unistream_common.stats import Stats

log = logging.getLogger(__name__)

SERVICE = "aggregator"
TIMEFRAME = "1s"
TIMER_INTERVAL_S = 0.1
BLOCK_MS = 1_000
BATCH_SIZE = 500


async def read_last_bars(client: aioredis.Redis, symbols: Iterable[str], timeframe: str) -> dict[str, Bar | None]:
    """Newest bar of each symbol's ``timeframe`` stream (None when empty or undecodable)."""
    symbols = list(symbols)
    tops = await top_packets(client, [keys.bars(symbol, timeframe) for symbol in symbols])
    out: dict[str, Bar | None] = {}
    for symbol in symbols:
        packet = tops[keys.bars(symbol, timeframe)]
        if isinstance(packet, codec.DecodeError):
            # Re-emitted bars are refused by their explicit ids, so starting blind is safe.
            log.error("%s: top of %s is unreadable (%s); starting without it", symbol, keys.bars(symbol, timeframe),
                      packet)  # fmt: skip
        out[symbol] = packet if isinstance(packet, Bar) else None
    return out


class AggregatorShell:
    """Callbacks of the ``aggregator`` consumer group around one :class:`BarAggregator`."""

    def __init__(self, settings: AggregatorSettings, stats: Stats, runtime: StreamRuntime) -> None:
        self.settings = settings
        self.stats = stats
        self.runtime = runtime
        self.symbols = list(settings.symbols)
        self.core = BarAggregator(TIMEFRAME, settings.grace_ms, settings.max_fill_gap_s)
        self.restart_requested = asyncio.Event()
        self.core_error: BaseException | None = None
        stats.describe("aggregator_ticks_late", "trades for an interval already closed: counted, not applied")
        stats.describe(
            "aggregator_ticks_already_applied", "redelivered trades whose bar was already in the stream at restart"
        )

    def register(self) -> None:
        """Register the consumer group with the runtime."""
        self.runtime.register_consumer(
            keys.GROUP_AGGREGATOR,
            self.on_messages,
            ["ticks"],
            options=ConsumerOptions(timer_interval_s=TIMER_INTERVAL_S, block_ms=BLOCK_MS, batch_size=BATCH_SIZE),
            on_timer=self.on_timer,
            on_rewind=self.on_rewind,
            packet_types=[TickBatch],
        )

    def info(self) -> dict[str, Any]:
        """State for /stats."""
        return {
            "timeframe": TIMEFRAME,
            "grace_ms": self.settings.grace_ms,
            "symbols": self.core.snapshot(),
            "core_error": repr(self.core_error) if self.core_error else None,
        }

    # --- callbacks -------------------------------------------------------------------------

    async def on_rewind(self) -> None:
        """Forget all state; continue each symbol after the last bar in its stream."""
        await self._take_over_pending()
        last = await read_last_bars(self.runtime.cmd, self.symbols, TIMEFRAME)
        self.core.restore(last)
        self.core_error = None
        for symbol, bar in last.items():
            if bar is not None:
                self.stats.set("aggregator_last_bar_open_ms", bar.open_time_ms, symbol=symbol)
        log.info(
            "restored from the bar streams: %s",
            {sym: (bar.open_time_ms if bar else None) for sym, bar in last.items()},
        )

    async def on_messages(self, messages: list[Message]) -> Result:
        """Apply delivered tick batches; write the bars they closed, ack what is complete."""
        raise_if_cancel_lost()
        entries = []
        refused: list[tuple[str, str]] = []
        for m in messages:
            if isinstance(m.packet, TickBatch) and keys.parse_ticks(m.stream) == m.packet.symbol:
                entries.append(((m.stream, m.id), m.packet))
            else:
                # A batch of another symbol in this stream would build bars from the wrong trades.
                self.stats.inc("aggregator_batches_refused", stream=m.stream)
                log.warning("%s %s: batch symbol does not match the stream; not applied", m.stream, m.id)
                refused.append((m.stream, m.id))
        result = await self._guarded(lambda: self.core.apply(entries))
        assert result.ack is not None
        result.ack.extend(refused)
        return result

    async def on_timer(self, now_ms: int) -> Result | None:
        """Close bars past end + grace (wall clock), for symbols with nothing left to read."""
        # The runtime calls this every 0.1 s: the place to notice a cancel lost in its Redis calls.
        raise_if_cancel_lost()
        due = self.core.due_symbols(now_ms)
        if not due:
            return None
        caught_up = await self._caught_up(due)
        if not caught_up:
            return None
        return await self._guarded(lambda: self.core.close_due(now_ms, caught_up))

    # --- helpers ---------------------------------------------------------------------------

    async def _guarded(self, step: Callable[[], AggregatorOutput]) -> Result:
        """Run a core step; on an exception, hand over to run_with_restarts and never return."""
        if self.core_error is not None:
            await asyncio.Event().wait()  # a restart is under way: never touch the state again
        try:
            out = step()
        except Exception as exc:
            self.core_error = exc
            self.stats.inc("aggregator_core_errors")
            log.exception("aggregator core failed; restarting the consumer from the bar streams")
            self.restart_requested.set()
            # Wait to be cancelled by run_with_restarts: raising instead would make the runtime
            # retry entries one by one against the broken state, then dead-letter good data.
            await asyncio.Event().wait()
            raise
        return self._result(out)

    def _result(self, out: AggregatorOutput) -> Result:
        for (name, symbol), n in out.counts.items():
            self.stats.inc(f"aggregator_{name}", n, symbol=symbol)
        last_open: dict[str, int] = {}
        for bar in out.bars:
            last_open[bar.symbol] = bar.open_time_ms
        for symbol, open_ms in last_open.items():
            self.stats.set("aggregator_last_bar_open_ms", open_ms, symbol=symbol)
        self.stats.set("aggregator_held_entries", len(self.core.held()))
        writes = [
            Write(
                stream=keys.bars(bar.symbol, TIMEFRAME),
                packet=bar,
                id=f"{bar.open_time_ms}-0",
                maxlen=self.settings.bar_retention,
            )
            for bar in out.bars
        ]
        return Result(writes=writes, ack=out.ack)

    async def _take_over_pending(self) -> None:
        """Move entries pending on other consumers of the group to this one (delivery counts kept)."""
        cmd, me = self.runtime.cmd, self.runtime.consumer
        for stream in keys.streams_for(["ticks"], self.symbols):
            start = "-"
            while True:
                rows = await cmd.xpending_range(stream, keys.GROUP_AGGREGATOR, min=start, max="+", count=1_000)
                ids = [s(r["message_id"]) for r in rows if s(r["consumer"]) != me]
                if ids:
                    # JUSTID: no delivery-count increment; the runtime's pending read counts this delivery.
                    await cmd.xclaim(stream, keys.GROUP_AGGREGATOR, me, 0, ids, justid=True)
                    self.stats.inc("aggregator_entries_taken_over", len(ids), stream=stream)
                    log.warning("took over %d entries of %s pending on other consumers", len(ids), stream)
                if len(rows) < 1_000:
                    break
                start = "(" + s(rows[-1]["message_id"])

    async def _caught_up(self, symbols: list[str]) -> list[str]:
        """Symbols whose tick stream holds no entry beyond what this group has been delivered."""
        cmd = self.runtime.cmd
        pipe = cmd.pipeline(transaction=False)
        for symbol in symbols:
            pipe.xinfo_groups(keys.ticks(symbol))
        groups = await pipe.execute(raise_on_error=False)
        delivered: dict[str, str] = {}
        for symbol, reply in zip(symbols, groups):
            if isinstance(reply, Exception):
                continue  # no stream or group yet: the runtime will create it; decide next tick
            for g in reply:
                if s(g["name"]) == keys.GROUP_AGGREGATOR:
                    delivered[symbol] = s(g["last-delivered-id"])
        if not delivered:
            return []
        pipe = cmd.pipeline(transaction=False)
        for symbol, last in delivered.items():
            pipe.xrange(keys.ticks(symbol), min=f"({last}", max="+", count=1)
        nexts = await pipe.execute()
        return [symbol for symbol, nxt in zip(delivered, nexts) if not nxt]


async def worker(ctx: ServiceContext) -> None:
    """Service worker for :func:`unistream_common.service.run_service`."""
    settings = ctx.settings
    assert isinstance(settings, AggregatorSettings)
    runtime = StreamRuntime(settings.redis_url, settings.consumer(SERVICE), settings.symbols, ctx.stats)
    shell = AggregatorShell(settings, ctx.stats, runtime)
    shell.register()
    try:
        await run_consumers(
            ctx, runtime, shell.info,
            ready=lambda: runtime.ready and shell.core_error is None,
            run=lambda: run_with_restarts(runtime, shell),
        )  # fmt: skip
    finally:
        # Held entries stay pending in Redis: the next start redelivers them (see on_rewind).
        log.info("stopped with %d entries held for open bars", len(shell.core.held()))


async def run_with_restarts(runtime: StreamRuntime, shell: AggregatorShell) -> None:
    """Run the runtime; when the core fails, cancel and start it again (it rewinds from Redis)."""
    while True:
        run_task = asyncio.create_task(runtime.run(), name="aggregator:runtime")
        restart_task = asyncio.create_task(shell.restart_requested.wait(), name="aggregator:restart")
        try:
            await asyncio.wait({run_task, restart_task}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            run_task.cancel()
            restart_task.cancel()
            await asyncio.gather(run_task, restart_task, return_exceptions=True)
            raise
        restart_task.cancel()
        if run_task.done():
            await asyncio.gather(restart_task, return_exceptions=True)
            run_task.result()  # the runtime stopped on its own: raise what stopped it
            return
        run_task.cancel()
        await asyncio.gather(run_task, restart_task, return_exceptions=True)
        shell.restart_requested.clear()
        shell.stats.inc("aggregator_consumer_restarts")
        log.warning("consumer restarted after a core error")
