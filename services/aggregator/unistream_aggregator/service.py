"""I/O shell of the aggregator: group ``aggregator`` over the tick streams, bars of 1s/1m/1h/1d out.

Ownership. Each symbol is owned by one aggregator process at a time, through a lease key
``md:agg:owner:{SYMBOL}`` (value ``<consumer>:<token>``, expiring after ``owner_ttl_ms`` unless
renewed). Live aggregators heartbeat in ``md:agg:members``; each takes unowned symbols up to
its fair share (symbols / live members, rounded up) and hands one back when it holds more, so
symbols spread over the processes and a dead owner's symbols are taken over once its lease
expires. The consumer reads only the tick streams of the symbols it owns (a dynamic consumer
of the runtime), so a symbol's trades never split between two open bars.

Taking a symbol over: claim the entries still pending on other consumers of the group (the old
owner's, delivery counts kept), restore the core from the checkpoint ``md:agg:state:{SYMBOL}``
(or, when there is none, from the bar streams themselves), then read this consumer's pending
entries for it before new ones. Entries of an owned symbol found pending on another consumer
later (a former owner frozen between its lease check and its read) make this process take the
symbol again the same way, so they are applied in stream order with everything else.

Exactly once. Every callback returns bars (explicit ids ``<open_time_ms>-0``), the checkpoint
and the quality counters of the symbols it touched, and the acknowledgements, and the runtime
writes them in one MULTI, fenced on ``md:agg:fence:{SYMBOL}`` (the token of the symbol's last
taker, set with the lease at every takeover): a process whose symbol was taken over cannot write
for it any more (the runtime rewinds it; see ``FenceLost``). A re-emitted bar is refused by Redis
and counted as a duplicate write. The fence is a key of its own so that renewing the lease does
not abort a long commit's WATCH; renewals come from a task of their own (:meth:`keep_leases`).

- ``on_timer`` (every 0.1 s): membership, leases given up or taken (every ``owner_ttl_ms / 5``), bars whose end +
  grace has passed in wall-clock time for live symbols with nothing left to read (while a
  backlog is queued, event time, not the wall clock, decides when bars close), and the forming
  bars on ``md:forming:{SYMBOL}:TF`` for the dashboard.
- ``on_rewind`` (runtime start, reconnect, lost fence) drops every symbol; the next timer takes
  them back from Redis.
- If the core ever raises (a bug), the consumer is restarted in-process: its state is rebuilt
  from Redis and the pending entries come again, rather than the runtime retrying entries one
  by one against half-updated state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import redis.asyncio as aioredis

from unistream_aggregator.core import LIVE_SOURCES, AggregatorOutput, BarAggregator, SymbolCheckpoint
from unistream_aggregator.settings import AggregatorSettings
from unistream_common import codec, keys, quality
from unistream_common.bars import HIGHER_TIMEFRAMES, SECOND_MS
from unistream_common.consumer import (
    ConsumerOptions,
    GroupConsumer,
    Message,
    Result,
    SequencedFence,
    StateWrite,
    StreamRuntime,
    Write,
    raise_if_cancel_lost,
)
from unistream_common.leases import SymbolLeases, fair_share
from unistream_common.packets import Bar, GapMarker, TickBatch
from unistream_common.redisio import id_pair, s, top_packets
from unistream_common.service import ServiceContext, run_consumers
from unistream_common.stats import Stats
from unistream_common.timeframes import TIMEFRAMES

log = logging.getLogger(__name__)

SERVICE = "aggregator"
TIMER_INTERVAL_S = 0.1
BLOCK_MS = 250  # short: a symbol taken over is read from the next read on
BATCH_SIZE = 500
FORMING_TTL_MS = 10_000  # forming bars vanish when no owner refreshes them

# JSON: the exact sums outgrow msgpack's 64-bit integers, and a person can read the key.
_CHECKPOINT = msgspec.json.Decoder(SymbolCheckpoint)
_ENCODER = msgspec.json.Encoder()


async def read_last_bars(client: aioredis.Redis, symbols: Iterable[str], timeframe: str) -> dict[str, Bar | None]:
    """Newest bar of each symbol's ``timeframe`` stream (None when empty or undecodable)."""
    symbols = list(symbols)
    tops = await top_packets(client, [keys.bars(symbol, timeframe) for symbol in symbols])
    out: dict[str, Bar | None] = {}
    for symbol in symbols:
        packet = tops[keys.bars(symbol, timeframe)]
        if isinstance(packet, codec.DecodeError):
            log.error("%s: top of %s is unreadable (%s)", symbol, keys.bars(symbol, timeframe), packet)
        out[symbol] = packet if isinstance(packet, Bar) else None
    return out


class AggregatorService:
    """Callbacks of the ``aggregator`` consumer group around one :class:`BarAggregator`."""

    def __init__(self, settings: AggregatorSettings, stats: Stats, runtime: StreamRuntime) -> None:
        self.settings = settings
        self.stats = stats
        self.runtime = runtime
        self.symbols = list(settings.symbols)
        self.core = BarAggregator(settings.grace_ms, settings.max_fill_gap_s)
        self.restart_requested = asyncio.Event()
        self.core_error: BaseException | None = None
        self.leases = SymbolLeases(
            runtime.consumer, settings.owner_ttl_ms, keys.agg_owner, keys.agg_fence, keys.AGGREGATOR_MEMBERS,
            self.symbols,
        )  # fmt: skip
        self.token = self.leases.token
        self._fences: dict[str, SequencedFence] = {}  # per owned symbol, made at the take
        self.owned: dict[str, float] = {}  # symbol -> monotonic time it was taken
        self.quality: dict[str, dict[str, int]] = {}  # committed totals of owned symbols
        self.gc: GroupConsumer | None = None
        self._next_lease_s = 0.0
        self._published: dict[str, tuple[tuple[Any, ...], int]] = {}  # symbol -> (what, when) last written
        self._seen: dict[str, tuple[int, int]] = {}  # newest tick-stream entry applied, per owned symbol
        self._holding: set[str] = set()  # symbols whose bars wait for ingest's watermark (logged once)
        self.venue_offsets: dict[str, int] = {}  # symbol -> ingest host ms - venue ms, from the newest watermark
        self._retake: set[str] = set()  # owned symbols dropped to be taken again (stranded entries)
        stats.describe("aggregator_ticks_late", "trades for a 1s interval already closed: counted, not applied")
        stats.describe("aggregator_ticks_duplicate", "trades whose id was seen before: not applied again")
        stats.describe("aggregator_ticks_already_applied", "trades redelivered after a restart, already in the bars")
        stats.describe("aggregator_owned_symbols", "symbols this process owns (aggregates) now")
        stats.describe(
            "aggregator_bar_close_seconds", "live 1s bars: from the bar's end until it is handed to its commit, seconds"
        )

    def register(self) -> None:
        """Register the (dynamic) consumer group with the runtime; streams come with ownership."""
        self.gc = self.runtime.register_consumer(
            keys.GROUP_AGGREGATOR,
            self.on_messages,
            ["ticks"],
            options=ConsumerOptions(
                timer_interval_s=TIMER_INTERVAL_S,
                block_ms=BLOCK_MS,
                batch_size=BATCH_SIZE,
                claim_idle_ms=0,  # entries of a dead owner are claimed when its symbol is taken over
                commit_per_slot=True,  # symbols are independent: one MULTI per {SYMBOL} slot (Redis Cluster)
                # Held trades are redelivered after every restart; only decoding can poison an entry.
                max_deliveries=1_000_000,
            ),
            on_timer=self.on_timer,
            on_rewind=self.on_rewind,
            packet_types=[TickBatch, GapMarker],
            streams=[],
            dynamic=True,
        )
        self.gc.readable = self.readable

    @property
    def lease_ms(self) -> int:
        return self.settings.owner_ttl_ms

    def info(self) -> dict[str, Any]:
        """State for /stats."""
        return {
            "grace_ms": self.settings.grace_ms,
            "owner_token": self.token,
            "owned": sorted(self.owned),
            "symbols": self.core.snapshot(),
            "quality": {
                sym: {**counts, "score": quality.score(counts)} for sym, counts in sorted(self.quality.items())
            },
            "core_error": repr(self.core_error) if self.core_error else None,
        }

    def ready(self) -> bool:
        return self.runtime.ready and self.core_error is None

    # --- callbacks -------------------------------------------------------------------------

    async def on_rewind(self) -> None:
        """Drop every symbol (their held entries stay pending); the timer takes them back."""
        for symbol in list(self.owned):
            self._forget(symbol)
        self._retake.clear()  # the timer takes every symbol it can again anyway
        self.core_error = None
        self._next_lease_s = 0.0

    async def on_messages(self, messages: list[Message]) -> Result:
        """Apply delivered entries of owned symbols; write what closed, ack what is complete."""
        raise_if_cancel_lost()
        await self._drop_stranded_streams(messages)
        entries = []
        refused: list[tuple[str, str]] = []
        for m in messages:
            symbol = keys.parse_ticks(m.stream)
            packet = m.packet
            if isinstance(packet, (TickBatch, GapMarker)) and symbol == packet.symbol:
                if symbol in self.owned:
                    entries.append(((m.stream, m.id), packet))
                    self._see(symbol, m.id)
                # else: a symbol given up since the read; the entry stays pending for its owner
            else:
                # A batch of another symbol in this stream would build bars from the wrong trades.
                self.stats.inc("aggregator_batches_refused", stream=m.stream)
                log.warning("%s %s: packet symbol does not match the stream; not applied", m.stream, m.id)
                refused.append((m.stream, m.id))
                if symbol is not None:
                    self._see(symbol, m.id)
        # The shell's clock: when the bars handed to this commit are timed, and the quality hash's stamp.
        result = await self._guarded(lambda: self.core.apply(entries), int(time.time() * 1000))
        assert result.ack is not None
        result.ack.extend(refused)
        return result

    async def on_timer(self, now_ms: int) -> Result | None:
        """Leases, then bars past end + grace (live symbols, nothing left to read), then forming bars."""
        # The runtime calls this every 0.1 s: the place to notice a cancel lost in its Redis calls.
        raise_if_cancel_lost()
        if self.core_error is not None:
            return None
        if time.monotonic() >= self._next_lease_s:
            self._next_lease_s = time.monotonic() + self.lease_ms / 5_000
            await self._maintain_leases(now_ms)
        result = None
        owned_offsets = {s: self.venue_offsets[s] for s in self.owned if s in self.venue_offsets}
        due = [sym for sym in self.core.due_symbols(now_ms, owned_offsets) if sym in self.owned]
        if due:
            caught_up, watermarks = await self._caught_up(due, now_ms)
            if caught_up:
                offsets = {s: self.venue_offsets[s] for s in watermarks if s in self.venue_offsets}
                result = await self._guarded(
                    lambda: self.core.close_due(now_ms, caught_up, watermarks, offsets), now_ms
                )
        await self._publish_forming(now_ms)
        due = self.core.next_due_ms()
        if due is not None and self.gc is not None and due > now_ms:
            self.gc.wake_at(due)  # close the next bar right at its end + grace, not up to 0.1 s later
        return result

    def _see(self, symbol: str, entry_id: str) -> None:
        seen = id_pair(entry_id)
        if seen > self._seen.get(symbol, (0, 0)):
            self._seen[symbol] = seen

    # --- ownership -------------------------------------------------------------------------

    async def keep_leases(self) -> None:
        """Renew the owned leases every ``lease_ms / 5``, whatever the consumer is doing.

        A task of its own, apart from the consumer's lock: renewing from the timer, which waits
        for the lock, let a long batch (a backlog being caught up on a busy machine) outlast the
        lease, so the process dropped its symbols and re-read their pending trades. Core steps run
        in a worker thread (:meth:`_guarded`), so this loop gets its turn while they compute. A
        lease it cannot renew is only recorded; the timer gives the symbol up, under the lock.
        """
        while True:
            await asyncio.sleep(self.lease_ms / 5_000)
            if not await self.leases.renew(self.runtime.cmd, list(self.owned)):
                self.stats.inc("aggregator_lease_renewal_errors")  # the consumer sees the outage too

    async def _maintain_leases(self, now_ms: int) -> None:
        """Heartbeat, give up the leases the keeper lost, retake symbols with stranded entries, take or hand back."""
        cmd = self.runtime.cmd
        me = self.runtime.consumer
        for symbol, holder in list(self.leases.lost.items()):
            del self.leases.lost[symbol]
            if symbol not in self.owned:
                continue
            if holder is None:
                log.warning("%s: lease ran out and another aggregator took the symbol in between (it has let "
                            "go since); dropping it, to take it back from Redis", symbol)  # fmt: skip
            else:
                log.warning("%s: lease lost to %s; dropping it", symbol, holder.rsplit(":", 1)[0])
            self.stats.inc("aggregator_leases_lost", symbol=symbol)
            self._forget(symbol)
        members = await self.leases.heartbeat(cmd, now_ms)
        pipe = cmd.pipeline(transaction=False)
        owned = list(self.owned)
        for symbol in owned:
            pipe.xpending(keys.ticks(symbol), keys.GROUP_AGGREGATOR)
        replies = await pipe.execute() if owned else []
        for symbol, pending in zip(owned, replies, strict=True):
            if any(s(c["name"]) != me for c in pending.get("consumers") or []):
                self._drop_stranded(symbol)
        for symbol in sorted(self._retake):
            self._retake.discard(symbol)
            await self._try_take(symbol)
        fair = fair_share(len(self.symbols), members)
        if len(self.owned) > fair and members > 1:
            symbol = max(self.owned, key=lambda sym: self.owned[sym])  # the newest: least state built
            log.info("%s: handing over (own %d, fair share %d of %d members)", symbol, len(self.owned), fair, members)
            self._forget(symbol)
            assert self.gc is not None
            await self.gc.quiesce(keys.ticks(symbol))  # what a read under way takes stays pending here
            await self.leases.release(cmd, [symbol])
            self.stats.inc("aggregator_handovers", symbol=symbol)
            return
        for symbol in self.symbols:
            if len(self.owned) >= fair:
                break
            if symbol not in self.owned:
                await self._try_take(symbol)

    async def _try_take(self, symbol: str) -> bool:
        """Take ``symbol``'s lease when it is free or a former self's, and with it the symbol."""
        taken = await self.leases.take(self.runtime.cmd, symbol)
        if taken:
            self._fences[symbol] = SequencedFence(keys.agg_fence(symbol), self.token)  # what _TAKE set
            await self._take(symbol)
        return bool(taken)

    async def _take(self, symbol: str) -> None:
        """Become the symbol's aggregator: claim its pending entries, restore, read its stream."""
        started = time.monotonic()
        stream = keys.ticks(symbol)
        assert self.gc is not None
        await self.gc.ensure_group(stream)  # take_over_pending needs the group
        claimed = await self.gc.take_over_pending(stream)
        if claimed:
            self.stats.inc("aggregator_entries_taken_over", claimed, stream=stream)
            log.warning("took over %d entries of %s pending on other consumers", claimed, stream)
        await self._restore(symbol)
        # Every entry up to the group's last-delivered id was applied by a former owner or is
        # pending here now (claimed above), and add_stream below delivers those first.
        for g in await self.runtime.cmd.xinfo_groups(stream):
            if s(g["name"]) == keys.GROUP_AGGREGATOR:
                self._seen[symbol] = id_pair(s(g["last-delivered-id"]))
        self.owned[symbol] = time.monotonic()
        self.stats.set("aggregator_owned_symbols", len(self.owned))
        await self.gc.add_stream(stream)  # delivers this consumer's pending entries first
        self.stats.inc("aggregator_takeovers", symbol=symbol)
        self.stats.set("aggregator_takeover_seconds", time.monotonic() - started, symbol=symbol)
        log.info("%s: owned by %s (took %.3f s)", symbol, self.token, time.monotonic() - started)

    async def _drop_stranded_streams(self, messages: list[Message]) -> None:
        """Drop the owned symbols of this batch that have entries pending on another consumer.

        A former owner frozen (SIGSTOP, a VM pause) between its lease check and its read can
        still take entries once its lease is gone. They may be older than this batch, or newer
        (read after this batch was read, while it waited for the lock): applied apart, some
        trades would come out of order (late, or closing a bar early). The batch's entries of
        such a symbol stay pending; the next timer takes the symbol again (see :meth:`_take`),
        which applies all of them, the former owner's included, oldest first. One XPENDING
        summary per stream and batch.
        """
        streams = sorted({m.stream for m in messages if keys.parse_ticks(m.stream) in self.owned})
        if not streams:
            return
        pipe = self.runtime.cmd.pipeline(transaction=False)
        for stream in streams:
            pipe.xpending(stream, keys.GROUP_AGGREGATOR)
        me = self.runtime.consumer
        for stream, summary in zip(streams, await pipe.execute()):
            if any(s(c["name"]) != me for c in summary.get("consumers") or []):
                self._drop_stranded(keys.parse_ticks(stream) or "")
                self._next_lease_s = 0.0

    def _drop_stranded(self, symbol: str) -> None:
        """Drop an owned symbol whose stream has entries pending on another consumer, to take it again."""
        self.stats.inc("aggregator_stranded_retakes", symbol=symbol)
        log.warning("%s: entries pending on another consumer (a former owner read after losing it); "
                    "taking the symbol again from Redis to apply them in order", symbol)  # fmt: skip
        self._forget(symbol)
        self._retake.add(symbol)

    def readable(self, streams: list[str]) -> list[str]:
        """Tick streams whose lease outlasts a blocking read from now, with a margin.

        A read that took entries after the lease ran out would leave them pending on this
        consumer, unseen by the new owner: reads stop before that can happen.
        """
        # Renewals come every lease/5: a margin of lease/4 tolerates one late renewal.
        limit = time.monotonic() + (BLOCK_MS + self.lease_ms / 4) / 1000
        return [st for st in streams if self.leases.valid_until.get(keys.parse_ticks(st) or "", 0.0) > limit]

    def _fence(self, symbol: str) -> SequencedFence:
        """The symbol's fence: this taker's token and its commits since the take (``_TAKE`` set #0)."""
        if symbol not in self._fences:
            self._fences[symbol] = SequencedFence(keys.agg_fence(symbol), self.token)
        return self._fences[symbol]

    def _forget(self, symbol: str) -> None:
        self.owned.pop(symbol, None)
        self._fences.pop(symbol, None)
        self.leases.forget(symbol)
        self.quality.pop(symbol, None)
        self._published.pop(symbol, None)
        self._seen.pop(symbol, None)
        self.core.drop(symbol)
        if self.gc is not None:
            self.gc.remove_stream(keys.ticks(symbol))
        self.stats.set("aggregator_owned_symbols", len(self.owned))

    async def release_all(self) -> None:
        """On a clean stop: hand every symbol back at once and leave the members."""
        await self.leases.leave(self.runtime.cmd)

    async def _restore(self, symbol: str) -> None:
        """Core state of ``symbol`` from its checkpoint, else from its bar streams."""
        cmd = self.runtime.cmd
        raw, qraw = await cmd.pipeline(transaction=False).get(keys.agg_state(symbol)).hgetall(
            keys.quality(symbol)
        ).execute()  # fmt: skip
        parsed = quality.parse(qraw)
        self.quality[symbol] = {name: parsed[name] for name in quality.COUNTERS}
        checkpoint = None
        if raw is not None:
            try:
                checkpoint = _CHECKPOINT.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("%s: checkpoint unreadable (%s); rebuilding from the bar streams", symbol, exc)
        if checkpoint is not None:
            self.core.restore(symbol, checkpoint)
            log.info("%s: restored from checkpoint at %s", symbol, checkpoint.last_open_ms)
            return
        last = {tf: (await read_last_bars(cmd, [symbol], tf))[symbol] for tf in TIMEFRAMES}
        tails: dict[str, list[Bar]] = {}
        for tf, lower in zip(HIGHER_TIMEFRAMES, TIMEFRAMES):
            top = last[tf]
            start = f"({top.open_time_ms}-0" if top is not None else "-"
            tails[tf] = [b for _, f in await cmd.xrange(keys.bars(symbol, lower), min=start, max="+")
                         if isinstance(b := _decode_bar(f), Bar)]  # fmt: skip
        self.core.restore_from_bars(symbol, last, tails)
        if last["1s"] is None:
            log.info("%s: no checkpoint and no bars: starting fresh", symbol)
            return
        self.stats.inc("aggregator_restored_from_bars", symbol=symbol)
        log.warning("%s: no checkpoint; continued from the bar streams (last 1s bar %s)", symbol,
                    last["1s"].open_time_ms)  # fmt: skip

    # --- helpers ---------------------------------------------------------------------------

    async def _guarded(self, step: Callable[[], AggregatorOutput], now_ms: int) -> Result:
        """Run a core step; on an exception, hand over to run_with_restarts and never return.

        ``now_ms`` (ms since the epoch): the time the caller was handed, for the result's timings.
        """
        if self.core_error is not None:
            await asyncio.Event().wait()  # a restart is under way: never touch the state again
        # In a worker thread, so the event loop (and with it keep_leases) runs while a long step
        # computes; the consumer's lock keeps every other core call out meanwhile.
        running = asyncio.ensure_future(asyncio.to_thread(step))
        try:
            out = await asyncio.shield(running)
        except asyncio.CancelledError:
            await asyncio.wait({running})  # the step finishes before anything touches the core again
            raise
        except Exception as exc:
            self.core_error = exc
            self.stats.inc("aggregator_core_errors")
            log.exception("aggregator core failed; restarting the consumer from Redis")
            self.restart_requested.set()
            # Wait to be cancelled by run_with_restarts: raising instead would make the runtime
            # retry entries one by one against the broken state, then dead-letter good data.
            await asyncio.Event().wait()
            raise
        return self._result(out, now_ms)

    def _result(self, out: AggregatorOutput, now_ms: int) -> Result:
        """The commit of a core output: bars, checkpoints, quality counters (stamped ``now_ms``), acks, fences."""
        retention = self.settings.bar_retention
        writes = [
            Write(keys.bars(bar.symbol, bar.timeframe), bar, f"{bar.open_time_ms}-0", retention) for bar in out.bars
        ]
        incr: dict[str, dict[str, int]] = {}
        for (name, symbol), n in out.counts.items():
            self.stats.inc(f"aggregator_{name}", n, symbol=symbol)
            incr.setdefault(symbol, {})[name] = n
        last_1s: dict[str, Bar] = {}
        for bar in out.bars:
            if bar.timeframe == "1s":
                last_1s[bar.symbol] = bar
                if bar.source in LIVE_SOURCES:
                    self.stats.observe("aggregator_bar_close_seconds", max(0, now_ms - bar.close_time_ms) / 1000,
                                       symbol=bar.symbol)  # fmt: skip
        state: list[StateWrite] = []
        symbols = set(out.checkpoints) | set(incr) | set(last_1s)
        for symbol in sorted(symbols):
            if symbol in out.checkpoints:
                state.append(StateWrite(keys.agg_state(symbol), value=_ENCODER.encode(out.checkpoints[symbol])))
            fields: dict[str, int] = {"updated_ms": now_ms}
            bar = last_1s.get(symbol)
            if bar is not None:
                fields["last_bar_open_ms"] = bar.open_time_ms
                self.stats.set("aggregator_last_bar_open_ms", bar.open_time_ms, symbol=symbol)
                if bar.source in LIVE_SOURCES:
                    latency = max(0, now_ms - bar.close_time_ms)
                    fields["last_bar_latency_ms"] = latency
                    self.stats.set("aggregator_last_bar_latency_ms", latency, symbol=symbol)
            state.append(StateWrite(keys.quality(symbol), incr=incr.get(symbol, {}), fields=fields))
            totals = self.quality.get(symbol)
            if totals is not None:
                for name, n in incr.get(symbol, {}).items():
                    totals[name] = totals.get(name, 0) + n
        self.stats.set("aggregator_held_entries", len(self.core.held()))
        fence: dict[str, str | SequencedFence] = {keys.agg_fence(symbol): self._fence(symbol) for symbol in symbols}
        for stream, _ in out.ack:
            symbol = keys.parse_ticks(stream)
            if symbol is not None:
                fence[keys.agg_fence(symbol)] = self._fence(symbol)
        return Result(writes=writes, ack=out.ack, state=state, fence=fence)

    async def _publish_forming(self, now_ms: int) -> None:
        """Write the forming bar of each timeframe of each owned symbol that changed."""
        pipe = None
        for symbol in self.owned:
            forming = self.core.forming_bars(symbol)
            signature = tuple((tf, b.open_time_ms, b.trade_count, b.close, b.incomplete) for tf, b in forming.items())
            last = self._published.get(symbol)
            if last is not None and last[0] == signature and now_ms - last[1] < 1_000:
                continue  # unchanged; rewritten once a second so the keys outlive their TTL only when dead
            self._published[symbol] = (signature, now_ms)
            if pipe is None:
                pipe = self.runtime.cmd.pipeline(transaction=False)
            for tf in TIMEFRAMES:
                bar = forming.get(tf)
                if bar is None:
                    pipe.delete(keys.forming(symbol, tf))
                else:
                    pipe.hset(keys.forming(symbol, tf), mapping=codec.encode(bar))
                    pipe.pexpire(keys.forming(symbol, tf), FORMING_TTL_MS)
        if pipe is not None:
            await pipe.execute()

    async def _caught_up(self, symbols: list[str], now_ms: int) -> tuple[list[str], dict[str, int]]:
        """Symbols whose tick stream holds no entry beyond what this process has applied, and the
        watermarks that hold their bars (see :meth:`watermarks`).

        Compared with the last entry handed to :meth:`on_messages`, not with the group's
        last-delivered id: a read may have been delivered by Redis and still wait for the lock
        while the timer runs, and its trades must not be made late by closing their bar.
        """
        pipe = self.runtime.cmd.pipeline(transaction=False)
        for symbol in symbols:
            pipe.xrevrange(keys.ticks(symbol), count=1)
            pipe.get(keys.ticks_watermark(symbol))
        replies = await pipe.execute()
        out = []
        for symbol, top in zip(symbols, replies[::2], strict=True):
            seen = self._seen.get(symbol)
            if seen is not None and (not top or id_pair(s(top[0][0])) <= seen):
                out.append(symbol)
        return out, self.watermarks(dict(zip(symbols, replies[1::2], strict=True)), now_ms)

    def watermarks(self, raw: dict[str, Any], now_ms: int) -> dict[str, int]:
        """The ingest watermarks (``keys.ticks_watermark``) that hold bars, by symbol.

        A watermark that stood still for longer than ``watermark_hold_ms`` holds nothing: its
        writer is gone or stopped, and the bars close by the wall clock again (trades it still
        brings are then late, and counted). No watermark (another producer, an older ingest):
        the wall clock alone, as before.
        """
        held: dict[str, int] = {}
        for symbol, value in raw.items():
            watermark, written_ms = parse_watermark(value)
            if watermark is not None:
                # The venue's clock runs this far behind ingest's host (negative: ahead); bars close by it.
                self.venue_offsets[symbol] = written_ms - watermark
                self.stats.set("aggregator_venue_clock_offset_ms", written_ms - watermark, symbol=symbol)
            lag_ms = now_ms - written_ms if watermark is not None else 0
            self.stats.set("aggregator_watermark_lag_ms", lag_ms, symbol=symbol)
            if watermark is None or lag_ms > self.settings.watermark_hold_ms:
                if symbol in self._holding:
                    self._holding.discard(symbol)
                    if watermark is not None:
                        log.warning("%s: ingest's watermark stood still for %.1f s; closing bars by the wall "
                                    "clock (trades it brings later are late)", symbol, lag_ms / 1000)  # fmt: skip
                continue
            held[symbol] = watermark
            if lag_ms > self.settings.grace_ms + SECOND_MS and symbol not in self._holding:
                self._holding.add(symbol)
                self.stats.inc("aggregator_watermark_holds", symbol=symbol)
                log.info("%s: holding bars after ingest's watermark (%.1f s behind)", symbol, lag_ms / 1000)
            elif lag_ms <= self.settings.grace_ms + SECOND_MS and symbol in self._holding:
                self._holding.discard(symbol)
                log.info("%s: ingest's watermark caught up; bars close on time again", symbol)
        return held


def parse_watermark(value: Any) -> tuple[int | None, int]:
    """(venue ms, host ms) of a ``keys.ticks_watermark`` value (``<venue>:<host>``, or an older
    ingest's ``<ms>``, both); (None, 0) for none or garbage."""
    if value is None:
        return None, 0
    text = value.decode() if isinstance(value, bytes) else str(value)
    venue, _, host = text.partition(":")
    try:
        return int(venue), int(host or venue)
    except ValueError:
        return None, 0


def _decode_bar(fields: Any) -> Bar | None:
    try:
        packet = codec.decode(fields)
    except codec.DecodeError:
        return None
    return packet if isinstance(packet, Bar) else None


async def worker(ctx: ServiceContext) -> None:
    """Service worker for :func:`unistream_common.service.run_service`."""
    settings = ctx.settings
    assert isinstance(settings, AggregatorSettings)
    runtime = StreamRuntime(settings.redis_url, settings.consumer(SERVICE), settings.symbols, ctx.stats)
    shell = AggregatorService(settings, ctx.stats, runtime)
    shell.register()
    try:
        await run_consumers(ctx, runtime, shell.info, ready=shell.ready, run=lambda: run_with_restarts(runtime, shell))
    finally:
        # Held entries stay pending in Redis: the next owner redelivers them (see _take).
        log.info("stopped with %d entries held for open bars", len(shell.core.held()))
        try:
            await asyncio.wait_for(shell.release_all(), 2.0)
        except Exception as exc:  # noqa: BLE001 - best effort: the leases expire anyway
            log.info("could not hand the symbols back (%r); their leases expire in %d ms", exc, shell.lease_ms)


async def run_with_restarts(runtime: StreamRuntime, shell: AggregatorService) -> None:
    """Run the runtime; when the core fails, cancel and start it again (it rewinds from Redis)."""
    keeper = asyncio.create_task(shell.keep_leases(), name="aggregator:leases")
    try:
        await _run_until_stopped(runtime, shell)
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)


async def _run_until_stopped(runtime: StreamRuntime, shell: AggregatorService) -> None:
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
