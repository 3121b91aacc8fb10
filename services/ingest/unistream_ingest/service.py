"""I/O shell of the ingest service: a tick source's trades into ``md:ticks:{SYMBOL}``.

A source is anything with a ``label`` (REAL, REPLAY or SYNTHETIC, recorded on every batch), an
``advance(now_ms) -> {symbol: [Tick]}`` that releases what it has up to ``now_ms``, and an
``info()`` for /stats. Every ``flush_interval_ms`` the writer advances the source, buffers the new
trades, and writes one :class:`~unistream_common.packets.TickBatch` entry per symbol (split at
``max_batch_ticks``) with ``XADD * MINID ~ now-retention`` in one pipelined round trip.

Failure policy (never silent):

- A Redis error keeps the unsent ticks in a bounded :class:`~unistream_ingest.core.TickBuffer`
  and retries with capped exponential backoff; each failed attempt counts ``ingest_write_errors``.
  Ticks pushed out of a full buffer count ``ingest_ticks_dropped``.
- When a write's outcome is unknown (the connection broke mid-pipeline), the writer reads each
  symbol's top entry before retrying and discards buffered ticks whose trade id is already
  there (``ingest_ticks_already_written``), so a retry never writes a trade twice. This relies
  on one writer per tick stream and on Redis executing a pipeline's commands in order.
- Redis that rolls back (killed with the last second of its append-only file unwritten, or a
  failover to a replica that lagged) loses ticks it had acknowledged. Each batch goes out in a
  script that appends it only if the stream's mark (``keys.ticks_mark``: the last trade id
  written, set by the same script) is the one this writer last set. A mark found lower means
  a rollback: the trades after it that the writer still remembers (:class:`WrittenTicks`, the
  last ``ROLLBACK_KEEP_MS``) are written again, in order, before anything newer
  (``ingest_redis_rollbacks``, ``ingest_ticks_resent``); a stretch rolled back further than that
  gets a gap marker (``ingest_ticks_lost_in_rollback``), as for trades the venue cannot resend.

Sources (``UNISTREAM_SOURCE``): live Binance (:class:`~unistream_ingest.livefeed.LiveFeed` over
:mod:`unistream_ingest.binance`), an archive replay, the seeded synthetic market, or none
(``external``: producers write through the door). ``auto`` takes Binance when its REST answers and
otherwise the synthetic market, says so in the log, and marks every batch ``SYNTHETIC``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Literal

import redis.asyncio as aioredis

from unistream_common import codec, keys
from unistream_common.consumer import raise_if_cancel_lost
from unistream_common.packets import GapMarker, Tick, TickBatch
from unistream_common.redisio import REDIS_ERRORS, command_client, refresh_topology, top_packets
from unistream_common.service import ServiceContext
from unistream_common.stats import Stats
from unistream_ingest.binance.rest import reachable
from unistream_ingest.binance.websocket import BinanceLiveSource
from unistream_ingest.core import TickBuffer, TickSource, WrittenTicks
from unistream_ingest.history import provide_history
from unistream_ingest.livefeed import LiveFeed
from unistream_ingest.record import Recorder
from unistream_ingest.replay import ReplaySource
from unistream_ingest.settings import IngestSettings
from unistream_ingest.synthetic import SyntheticMarket
from unistream_ingest.tickwrite import ROLLBACK_KEEP_MS, queue_batch, written

log = logging.getLogger(__name__)

SERVICE = "ingest"
READY_WINDOW_S = 5.0  # ready while the last successful Redis round trip is this recent
IDLE_PING_S = 1.0  # with nothing to write, PING this often so readiness still means "Redis answers"
WATERMARK_EVERY_MS = 100  # well inside the aggregator's grace (250 ms): bars close on time
BACKOFF_MIN_S = 0.1
SHUTDOWN_FLUSH_S = 1.0
HISTORY_WAIT_S = 120.0  # a finished replay waits this long for its warm-up history before exiting


def wall_ms() -> int:
    """Wall-clock time, ms since the epoch."""
    return int(time.time() * 1000)


class ExternalProducers:
    """UNISTREAM_SOURCE=external: no built-in source; producers write through /v1/ticks (the door)."""

    label = "REAL"  # never written: this source releases nothing; the door records each batch's own

    def advance(self, now_ms: int) -> dict[str, list[Tick]]:
        return {}

    def info(self) -> dict[str, object]:
        return {"source": "external producers (POST or websocket /v1/ticks)"}


class IngestService:
    """Advances the tick source on a fixed cadence and writes its trades to Redis."""

    def __init__(self, settings: IngestSettings, stats: Stats, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.stats = stats
        self.redis = redis
        self.symbols = list(settings.symbols)
        self.buffer = TickBuffer(settings.max_buffer_ticks)
        self.written = WrittenTicks(ROLLBACK_KEEP_MS, settings.max_buffer_ticks)
        self.source: TickSource | None = None
        self._last_ok = -float("inf")  # monotonic time of the last successful round trip
        self._uncertain = True  # unknown what the stream holds: resolve before the first write
        self._retry_at = 0.0
        self._watermark_ms = -WATERMARK_EVERY_MS  # event time of the last watermark written
        self._backoff = BACKOFF_MIN_S
        self._last_error = ""  # last Redis error, "" once writes succeed again
        self._dropping: set[str] = set()  # symbols whose buffer overflowed since the last good write
        self._top_sources: dict[str, str] = {}  # source label of each tick stream's newest batch
        self._top_markers: dict[str, GapMarker] = {}  # a gap marker at a stream's top (uncertain writes)
        self._markers: list[GapMarker] = []  # gap markers not yet written
        self._next_export = 0.0  # monotonic time of the next copy of the source's counters
        self._history_kind: Literal["binance", "replay", "synthetic"] | None = None  # warm-up bars from where
        self._history_prices: dict[str, float] | None = None
        self._history_task: asyncio.Task[dict[str, int]] | None = None
        stats.describe("ingest_ticks_written", "trades written to md:ticks:{SYMBOL}")
        stats.describe(
            "ingest_tick_write_seconds", "live trades: from the receipt of a batch's first trade until Redis took it"
        )
        stats.describe("ingest_write_errors", "failed write attempts (ticks kept and retried)")
        stats.describe("ingest_redis_rollbacks", "times a tick stream's mark was found below what was written")
        stats.describe("ingest_ticks_resent", "trades written again after Redis lost them in a rollback")
        stats.describe("ingest_ticks_lost_in_rollback", "trades Redis lost further back than remembered (gap marker)")
        stats.describe("ingest_ticks_dropped", "buffered trades dropped because the buffer was full")
        stats.describe("ingest_ticks_accepted", "trades the validator accepted")
        stats.describe("ingest_ticks_rejected", "trades the validator refused, by reason")
        stats.describe("ingest_clock_skew_ms", "receive time minus venue trade time, ms (last, min, max, ewma, p50)")
        stats.describe("ingest_write_seconds", "time spent in tick write round trips, s (divide by ingest_writes)")
        stats.describe("ingest_write_latency_ms", "duration of the last tick write round trip, ms")

    # --- probes ----------------------------------------------------------------------------

    def ready(self) -> bool:
        """True while the last successful Redis round trip was less than READY_WINDOW_S ago."""
        return time.monotonic() - self._last_ok < READY_WINDOW_S

    def info(self) -> dict[str, Any]:
        """State for /stats."""
        src = self.source
        return {
            "source": src.label if src else None,
            "configured_source": self.settings.source,
            "seed": self.settings.seed,
            **(src.info() if src else {}),
            "buffered_ticks": self.buffer.size(),
            "last_error": self._last_error,
        }

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the source, continuing from what the tick streams already hold.

        Waits (with backoff) until Redis answers: there is nothing to do without it.
        """
        delay = BACKOFF_MIN_S
        while True:
            try:
                tops = await self._read_tops()
                marks = await self._read_marks()
                break
            except REDIS_ERRORS as exc:
                self._note_error(exc)
                raise_if_cancel_lost()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_backoff_max_ms / 1000)
        self._uncertain = False
        for symbol, mark in marks.items():
            self.written.start(symbol, mark)
        self._last_ok = time.monotonic()
        start_ms = wall_ms()
        self.source = await self._make_source(tops, start_ms)
        if self._history_kind is not None and self.settings.history_bars:
            # Beside the ticks, never in their way: a slow venue or a large file only delays history.
            self._history_task = asyncio.create_task(
                provide_history(
                    self.settings, self.redis, source_kind=self._history_kind, now_ms=start_ms,
                    start_prices=self._history_prices, stats=self.stats,
                )
            )  # fmt: skip

    async def _make_source(self, tops: dict[str, Tick | None], start_ms: int) -> TickSource:
        settings = self.settings
        if settings.source == "binance" or settings.source == "auto":
            if settings.source == "binance" or await reachable(settings.binance_rest_url, timeout=3.0):
                self._history_kind = "binance"
                return self._live_source(tops)
            log.warning(
                "UNISTREAM_SOURCE=auto: Binance REST at %s is not reachable; using the seeded synthetic market "
                "(every batch is marked SYNTHETIC)", settings.binance_rest_url,
            )  # fmt: skip
        if settings.source == "external":
            log.info("UNISTREAM_SOURCE=external: ticks come only from producers at /v1/ticks")
            return ExternalProducers()
        if settings.source == "replay":
            symbol = settings.replay_target
            source = ReplaySource(settings.replay_paths, symbol, settings.replay_factor, start_ms)
            top = tops.get(symbol)
            if top is not None and self._top_sources.get(symbol) != "SYNTHETIC":
                # A restart goes on after the stream's last trade: what is written is skipped at
                # once and a paced replay's clock starts at the next trade.
                skipped = source.resume_after(top.trade_id)
                log.info("%d trade(s) of the files are already on %s: skipped", skipped, keys.ticks(symbol))
            log.info(
                "replaying %d file(s) into %s at %s speed%s", len(settings.replay_paths), keys.ticks(symbol),
                settings.replay_speed, f", after trade id {top.trade_id}" if top is not None else "",
            )  # fmt: skip
            self._history_kind = "replay"
            return source
        prices = {s: t.price for s, t in tops.items() if t is not None}
        self._history_kind, self._history_prices = "synthetic", prices
        # ids continue upwards with a visible gap: the market was not observed while we were down
        first_ids = {s: max(start_ms, t.trade_id + 2) for s, t in tops.items() if t is not None}
        log.info(
            "synthetic market for %s, seed %d, start %d, continuing from %s",
            ",".join(self.symbols), settings.seed, start_ms, prices or "the default prices",
        )  # fmt: skip
        return SyntheticMarket(self.symbols, settings.seed, start_ms, prices, first_ids)

    def _live_source(self, tops: dict[str, Tick | None]) -> LiveFeed:
        settings = self.settings
        # Continue after the last live trade written: the ids since are backfilled by REST.
        resume = {s: t.trade_id for s, t in tops.items() if t is not None and self._top_sources.get(s) == "REAL"}
        recorder = Recorder(settings.record_dir) if settings.record_dir else None

        def client(on_trades: Any, on_event: Any, resume_from: Any) -> BinanceLiveSource:
            return BinanceLiveSource(
                settings.binance_ws_url, settings.binance_rest_url, settings.symbols, on_trades, on_event,
                silence_s=settings.binance_silence_s, resume_from=resume_from,
            )  # fmt: skip

        log.info(
            "live Binance trades for %s from %s (REST %s)%s%s", ",".join(settings.symbols), settings.binance_ws_url,
            settings.binance_rest_url, f", resuming after {resume}" if resume else "",
            f", recording to {settings.record_dir}" if recorder else "",
        )  # fmt: skip
        return LiveFeed(client, settings.symbols, resume, recorder)

    async def run(self) -> None:
        """Start, then advance and write every flush interval until cancelled or a finite source is written.

        A live source wakes the loop when trades arrive; they wait ``live_batch_ms`` for company
        (a micro-batch) and are written at once.
        """
        await self.start()
        assert self.source is not None
        interval = self.settings.flush_interval_ms / 1000
        wake: asyncio.Event | None = getattr(self.source, "wake", None)
        feed = asyncio.create_task(self.source.run()) if hasattr(self.source, "run") else None
        next_at = time.monotonic()
        try:
            while True:
                if self._finished():
                    log.info("source exhausted and every tick written: %s", self.source.info())
                    if self._history_task is not None:  # a chained script expects the history too
                        await asyncio.wait({self._history_task}, timeout=HISTORY_WAIT_S)
                    return
                if feed is not None and feed.done():
                    feed.result()  # a live feed that stopped is an error: raise it
                    raise RuntimeError("the live feed stopped")
                next_at += interval
                delay = next_at - time.monotonic()
                if delay < -interval or self._eager():
                    # behind (a slow write), or a replay at max speed: no catching up in a burst, no pacing
                    next_at = time.monotonic()
                    delay = 0.0
                if wake is not None and time.monotonic() >= self._retry_at:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), max(0.0, delay))
                    if wake.is_set():
                        wake.clear()
                        await asyncio.sleep(self.settings.live_batch_ms / 1000)
                else:
                    await asyncio.sleep(max(0.0, delay))
                await self.on_timer(wall_ms())
                raise_if_cancel_lost()
        except asyncio.CancelledError:
            if feed is not None:  # stop the feed, then keep what it already handed over
                feed.cancel()
                await asyncio.wait({feed}, timeout=5)
                for symbol, ticks in self.source.advance(wall_ms()).items():
                    self.buffer.extend(symbol, ticks)
            with contextlib.suppress(*REDIS_ERRORS):
                if self.buffer.size():
                    await asyncio.wait_for(self._write(wall_ms()), SHUTDOWN_FLUSH_S)
            if self.buffer.size():
                log.warning("stopping with %d unwritten ticks", self.buffer.size())
            else:
                log.info("stopped; every generated tick was written")
            raise
        finally:
            for task in (feed, self._history_task):
                if task is not None and not task.done():
                    task.cancel()
                    await asyncio.wait({task}, timeout=5)

    def _finite(self) -> bool:
        return getattr(self.source, "done", None) is not None

    def _finished(self) -> bool:
        return bool(getattr(self.source, "done", False)) and self.buffer.size() == 0

    def _eager(self) -> bool:
        """A finite source at max speed that still has trades, while writes succeed."""
        return (
            self._finite()
            and getattr(self.source, "speed", 0) is None
            and not getattr(self.source, "done", True)
            and time.monotonic() >= self._retry_at
        )

    async def on_timer(self, now_ms: int) -> None:
        """One tick of the shell's timer: release the source's trades up to ``now_ms`` (ms since the
        epoch), then write if not backing off."""
        assert self.source is not None, "start() first"
        # A finite source can wait: while Redis is slow or down it is not advanced past half the
        # buffer, so nothing it yields is ever dropped. A live source cannot wait.
        held_back = self._finite() and self.buffer.size() >= self.settings.max_buffer_ticks // 2
        released = {} if held_back else self.source.advance(now_ms)
        for symbol, ticks in released.items():
            if not ticks:
                continue
            self.stats.inc("ingest_ticks_generated", len(ticks), symbol=symbol)
            dropped = self.buffer.extend(symbol, ticks)
            if dropped:
                self.stats.inc("ingest_ticks_dropped", dropped, symbol=symbol)
                if symbol not in self._dropping:  # once per outage, not every cycle
                    self._dropping.add(symbol)
                    log.warning("%s: send buffer full; dropping the oldest unsent ticks (ingest_ticks_dropped)", symbol)
        self.stats.set("ingest_buffered_ticks", self.buffer.size())
        self._export_source_stats()
        if time.monotonic() < self._retry_at:
            return
        try:
            if self._last_error:
                # After a failed write: on a cluster the failover may have moved the slots to a replica.
                await refresh_topology(self.redis)
            await self._write(now_ms)
            await self._write_watermarks(now_ms)
        except REDIS_ERRORS as exc:
            self._note_error(exc)
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.settings.retry_backoff_max_ms / 1000)
            return
        self._backoff = BACKOFF_MIN_S

    # --- Redis -----------------------------------------------------------------------------

    def _venue_offset_ms(self) -> int:
        """How far this host's clock runs ahead of the venue's trade times (ms; negative: behind):
        the median of ``receipt - trade time`` over recent trades (transit included); 0 before any."""
        validator = getattr(self.source, "validator", None)
        skew = validator.stats()["skew_ms"]["p50_recent"] if validator is not None else None
        return int(skew) if skew is not None else 0

    async def _write_watermarks(self, now_ms: int) -> None:
        """Say, per symbol of a live source with nothing left unwritten, that every trade received
        by ``now_ms`` is in its tick stream (``keys.ticks_watermark``: ``<venue ms>:<host ms>``, the
        venue's time by the recent clock offset and this host's; at most every WATERMARK_EVERY_MS).
        The aggregator closes live bars by the venue's clock from it, so a host clock ahead of the
        venue's does not make real trades late, and one behind it does not hold bars back.

        Set only after the writes succeeded, in a round trip of its own, so the watermark never
        runs ahead of the ticks. While Redis is down it stands still, and the aggregator holds the
        bars after it open instead of closing them by the wall clock before the buffered trades
        arrive (they would be late, and missing from their bars).
        """
        if self._finite() or isinstance(self.source, ExternalProducers):
            return  # a replay's bars close on event time; the door's producers speak for themselves
        if now_ms - self._watermark_ms < WATERMARK_EVERY_MS:
            return
        written = [symbol for symbol in self.symbols if self.buffer.size(symbol) == 0]
        if not written:
            return
        venue_ms = now_ms - self._venue_offset_ms()
        pipe = self.redis.pipeline(transaction=False)
        for symbol in written:
            pipe.set(keys.ticks_watermark(symbol), f"{venue_ms}:{now_ms}")
        await pipe.execute()
        self._watermark_ms = now_ms
        self._last_ok = time.monotonic()

    def _note_error(self, exc: BaseException) -> None:
        self.stats.inc("ingest_write_errors")
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_error:
            log.warning("Redis write failed (%s); ticks kept for retry", text)
        self._last_error = text

    async def _read_tops(self) -> dict[str, Tick | None]:
        """Last trade written to each symbol's tick stream (None if empty or unreadable)."""
        tops = await top_packets(self.redis, [keys.ticks(symbol) for symbol in self.symbols])
        out: dict[str, Tick | None] = {}
        for symbol in self.symbols:
            packet = tops[keys.ticks(symbol)]
            out[symbol] = None
            if isinstance(packet, codec.DecodeError):
                log.warning("%s: top entry of %s is unreadable (%s); not continuing from it", symbol,
                            keys.ticks(symbol), packet)  # fmt: skip
            elif isinstance(packet, TickBatch):
                out[symbol] = packet.ticks[-1]
                self._top_sources[symbol] = packet.source
            elif isinstance(packet, GapMarker):
                self._top_markers[symbol] = packet
        return out

    async def _read_marks(self) -> dict[str, int | None]:
        """Each tick stream's mark (the last trade id written; None where there is none)."""
        pipe = self.redis.pipeline(transaction=False)  # one GET each: the marks are in their symbols' slots
        for symbol in self.symbols:
            pipe.get(keys.ticks_mark(symbol))
        values = await pipe.execute()
        return {symbol: int(v) if v else None for symbol, v in zip(self.symbols, values)}

    def _reconcile(self, symbol: str, mark: int | None) -> None:
        """Bring the buffer in line with Redis's ``mark`` for ``symbol`` (see the module docstring)."""
        found = self.written.reconcile(symbol, mark)
        if found.ahead and mark is not None:
            n = self.buffer.discard_through(symbol, mark)
            if n:
                self.stats.inc("ingest_ticks_already_written", n, symbol=symbol)
        if not found.rolled_back:
            return
        self.stats.inc("ingest_redis_rollbacks", symbol=symbol)
        self.buffer.requeue(symbol, found.resend)
        self.stats.inc("ingest_ticks_resent", len(found.resend), symbol=symbol)
        log.warning(
            "%s: Redis rolled back (the stream's mark is trade %s): %d written trade(s) it lost are written again",
            symbol, mark, len(found.resend),
        )  # fmt: skip
        if found.lost is not None:
            first, last = found.lost
            label = self.source.label if self.source is not None else "REAL"
            after = found.resend[0].ts_event_ms if found.resend else 0
            self._markers.append(GapMarker(symbol, label, first, last, 0, after))  # type: ignore[arg-type]
            self.stats.inc("ingest_ticks_lost_in_rollback", last - first + 1, symbol=symbol)
            log.error(
                "%s: Redis rolled back further than the trades remembered (%d ms): trades %d..%d are lost "
                "(a gap marker says so)", symbol, ROLLBACK_KEEP_MS, first, last,
            )  # fmt: skip

    async def _write(self, now_ms: int) -> None:
        """Write everything buffered; raise a Redis error if any part failed (kept for retry)."""
        if self._uncertain:
            tops = await self._read_tops()
            marks = await self._read_marks()
            self._markers = [m for m in self._markers if self._top_markers.get(m.symbol) != m]
            for symbol, top in tops.items():
                if marks[symbol] is not None or symbol in self.written.through:  # no mark left: all rolled back
                    self._reconcile(symbol, marks[symbol])
                elif top is not None:  # a stream written before marks existed
                    n = self.buffer.discard_through(symbol, top.trade_id)
                    if n:
                        self.stats.inc("ingest_ticks_already_written", n, symbol=symbol)
            self._uncertain = False
        take = getattr(self.source, "take_markers", None)
        if take is not None:
            self._markers.extend(take())
        if self._markers:
            await self._write_markers(now_ms)
        chunks = self.buffer.chunks(self.settings.max_batch_ticks)
        if not chunks:
            if time.monotonic() - self._last_ok >= IDLE_PING_S:
                await self.redis.ping()
                self._last_ok = time.monotonic()
            return
        min_id = max(0, now_ms - self.settings.tick_retention_s * 1000)
        pipe = self.redis.pipeline(transaction=False)
        expect: dict[str, str] = {}
        for symbol, ticks in chunks:
            batch = TickBatch(symbol=symbol, source=self.source.label, ticks=ticks)
            queue_batch(pipe, batch, expect.get(symbol) or self.written.expected(symbol), min_id)
            expect[symbol] = str(ticks[-1].trade_id)
        started = time.perf_counter()
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException:
            self._uncertain = True  # some commands may have run before the connection broke
            raise
        elapsed = time.perf_counter() - started
        self.stats.inc("ingest_write_seconds", elapsed)
        self.stats.inc("ingest_writes")
        self.stats.set("ingest_write_latency_ms", elapsed * 1000)
        failure: BaseException | None = None
        fenced: dict[str, int | None] = {}
        for (symbol, ticks), reply in zip(chunks, replies):
            if isinstance(reply, Exception):
                # The symbol's later chunks expected this one's mark: they are refused too.
                failure = reply
                continue
            ok, value = written(reply)
            if not ok:  # the mark was not the one expected: nothing of the symbol went out
                fenced.setdefault(symbol, value)  # type: ignore[arg-type]
                continue
            self.buffer.discard(symbol, ticks)
            self.written.note(symbol, ticks, now_ms)
            if self.source.label != "REPLAY":  # a replay's receipt times are its file's
                written_ms = time.time() * 1000
                self.stats.observe("ingest_tick_write_seconds", max(0.0, written_ms - ticks[0].ts_recv_ms) / 1000,
                                   symbol=symbol)  # fmt: skip
            self.stats.inc("ingest_ticks_written", len(ticks), symbol=symbol)
            self.stats.inc("ingest_batches_written", symbol=symbol)
            self.stats.set("ingest_last_price", ticks[-1].price, symbol=symbol)
            self.stats.set("ingest_last_trade_ms", ticks[-1].ts_event_ms, symbol=symbol)
        for symbol, mark in fenced.items():
            self._reconcile(symbol, mark)
        self.stats.set("ingest_buffered_ticks", self.buffer.size())
        if failure is not None:
            raise failure
        self._last_ok = time.monotonic()
        if self._last_error:
            log.info("Redis writes succeed again")
            self._last_error = ""
        self._dropping.clear()

    def _export_source_stats(self) -> None:
        """Copy the source's own counters into /metrics, at most once a second."""
        now = time.monotonic()
        if now < self._next_export:
            return
        self._next_export = now + 1.0
        validator = getattr(self.source, "validator", None)
        if validator is not None:
            st = validator.stats()
            self.stats.count_to("ingest_ticks_accepted", st["accepted"])
            for reason, n in st["rejected"].items():
                self.stats.count_to("ingest_ticks_rejected", n, reason=reason)
            for key, value in st["skew_ms"].items():
                if value is not None:  # receive time minus trade time: our clock vs the venue's, plus transit
                    self.stats.set("ingest_clock_skew_ms", value, stat=key)
        client = getattr(self.source, "client", None)
        if client is not None:
            live = client.stats
            for key in (
                "messages", "trades_live", "trades_backfilled", "duplicates", "reconnects", "rotations",
                "silent_closes", "server_shutdowns", "connect_failures", "gaps_unrecoverable", "ids_unrecoverable",
                "rest_requests", "rest_429", "rest_418", "rest_errors",
            ):  # fmt: skip
                self.stats.count_to(f"ingest_binance_{key}", live[key])
            for reason, n in live["parse_errors"].items():
                self.stats.count_to("ingest_binance_parse_errors", n, reason=reason)
            self.stats.set("ingest_binance_connected", live["connected"])
            self.stats.set("ingest_binance_pending_trades", live["pending"])

    async def _write_markers(self, now_ms: int) -> None:
        """Write pending gap markers (before the ticks buffered with them); kept for retry on failure."""
        min_id = max(0, now_ms - self.settings.tick_retention_s * 1000)
        pipe = self.redis.pipeline(transaction=False)
        for marker in self._markers:
            pipe.xadd(keys.ticks(marker.symbol), codec.encode(marker), id="*", minid=min_id, approximate=True)
        try:
            await pipe.execute()
        except BaseException:
            self._uncertain = True
            raise
        for marker in self._markers:
            self.stats.inc("ingest_gap_markers", symbol=marker.symbol)
            self.stats.inc("ingest_trades_unrecoverable", marker.missing, symbol=marker.symbol)
        self._markers.clear()


async def worker(ctx: ServiceContext) -> None:
    """Service worker for :func:`unistream_common.service.run_service`."""
    settings = ctx.settings
    assert isinstance(settings, IngestSettings)
    redis = command_client(settings.redis_url, name=f"{SERVICE}:writer", timeout_s=2.0)
    service = IngestService(settings, ctx.stats, redis)
    ctx.ready = service.ready
    ctx.info = service.info
    try:
        await service.run()
    finally:
        await redis.aclose()
