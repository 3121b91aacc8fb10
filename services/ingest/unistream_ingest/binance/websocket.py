"""Binance spot live trades: one combined-stream websocket, REST backfill of what it missed, explicit gaps.

What the venue guarantees and what this module adds:

- Trade ids are consecutive per symbol. Every trade reaches ``on_trades`` at most once and in
  increasing id order per symbol: an id at or below the last delivered one is a duplicate (counted,
  dropped); an id above ``last + 1`` is a gap.
- Trades missed while disconnected are not replayed by the websocket. After an unplanned reconnect,
  or on a gap, the missing ids are fetched by REST (:mod:`unistream_ingest.binance.rest`: pages of
  1000 within a per-minute weight budget) and delivered before the live trades that arrived
  meanwhile (those are held back until the hole is filled).
- What cannot be recovered (REST refuses, keeps failing, or does not serve those ids) becomes an
  explicit :class:`~unistream_ingest.sequencer.GapEvent` with the exact inclusive id range,
  delivered in sequence: after the trades below the hole and before the trades above it.
- ``serverShutdown`` and the 24 h connection cut are crossed without loss: a NEW connection is
  opened first, both stream for a short overlap, then the old one is closed; the overlap's
  duplicates are dropped by id.
- A connection that delivers no message for ``silence_s`` is closed and replaced; failed
  connection attempts back off exponentially (capped, jittered). The websockets library answers the
  server's pings itself.
- Malformed messages are counted by :class:`~unistream_ingest.venue.ParseError` reason and skipped.

The sequencing logic is a pure core (:class:`~unistream_ingest.sequencer.TradeSequencer`: trades and
REST pages in, deliverable trades and gaps out, no I/O, no clock); :class:`BinanceLiveSource` is the
I/O shell around it: the connections here, the REST pages in :mod:`unistream_ingest.binance.rest`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from unistream_ingest.binance.parsing import combined_stream_url, parse_ws
from unistream_ingest.binance.rest import BackfillFailed, BinanceRest, backoff_delay, loop_time
from unistream_ingest.sequencer import BackfillRequest, GapEvent, TradeSequencer
from unistream_ingest.venue import ParseError, RawTrade, ShutdownEvent, TradeEvent

CLOSE_TIMEOUT_S = 2.0  # how long a close handshake may take before the TCP stream is aborted


# ---- events handed to on_event ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A change of the websocket connection.

    ``kind`` is ``connected`` (``reason``: ``initial``, ``reconnect`` or ``rotation``), ``lost``
    (``reason``: ``closed`` or ``silent``) or ``rotating`` (``reason``: ``server_shutdown`` or
    ``max_age``; the old connection keeps streaming until the new one is up). ``ts_ms``: when it
    happened (the source's clock, ms since the epoch).
    """

    kind: str
    reason: str
    ts_ms: int = 0


LiveEvent = GapEvent | ConnectionEvent


# ---- I/O shell ----------------------------------------------------------------------------------------

OnTrades = Callable[[list[RawTrade], int], Awaitable[None]]
OnEvent = Callable[[LiveEvent], Awaitable[None]]


class _Conn:
    __slots__ = ("first_message", "opened_s", "reader", "shutdown", "ws")

    def __init__(self, ws: ClientConnection, opened_s: float) -> None:
        self.ws = ws
        self.opened_s = opened_s  # loop (monotonic) time
        self.reader: asyncio.Task[str] | None = None
        self.shutdown = asyncio.Event()
        self.first_message = asyncio.Event()


@dataclass(slots=True)
class _Frame:
    conn: _Conn
    raw: str | bytes
    recv_ms: int


@dataclass(slots=True)
class _BackfillDone:
    req: BackfillRequest
    trades: list[RawTrade] | None
    reason: str = ""


class _Reconnected:
    pass


class BinanceLiveSource:
    """Live Binance spot trades for ``symbols`` over one combined-stream websocket, gaps backfilled by REST.

    Arguments:

    - ``ws_url``: websocket base, e.g. ``wss://stream.binance.com:9443`` (the ``/stream?streams=``
      part is added); ``rest_url``: REST base, e.g. ``https://api.binance.com``.
    - ``symbols``: venue symbols, e.g. ``("ETHUSDT", "BTCUSDT")``.
    - ``on_trades(trades, recv_ms)``: awaited with each batch of accepted trades, in id order per
      symbol, never the same id twice. ``recv_ms`` is when the message arrived (or the REST page, for
      backfilled trades), ms since the epoch by ``clock``. Calls never overlap; a slow callback slows
      the feed (the websocket then buffers), it never reorders it.
    - ``on_event(event)``: awaited with each :class:`GapEvent` (in sequence with the trades) and
      :class:`ConnectionEvent`. Optional.
    - ``clock``: seconds since the epoch (for ``recv_ms`` and event times only; timers use the
      event loop's monotonic clock).
    - ``silence_s``: a connection with no message for this long is replaced. Keep it well above the
      longest normal pause between trades of the most active symbol.
    - ``max_connection_age_s``: rotate (new connection first) at this age. Binance cuts at 24 h;
      the default rotates 30 min before, so the rotation is ours, not a cut.
    - ``overlap_s``: how long the old connection may keep streaming once the new one is open; it is
      closed as soon as the new one delivers its first message.
    - ``backoff_min_s``/``backoff_max_s``: reconnect backoff (see :func:`backoff_delay`); the
      first reconnect after a healthy connection is immediate.
    - ``open_timeout_s``: websocket handshake limit.
    - ``rest_weight_budget_per_min``: request weight this source may spend per rolling minute (what
      the venue reports as used, ``X-MBX-USED-WEIGHT-1M``, counts too: the limit is per IP).
    - ``rest_attempts``: tries per REST page on network errors, 5xx or undecodable bodies.
    - ``rest_timeout_s``: per REST request.
    - ``rest_max_wait_s``: the longest total 429/418 wait for one page before its hole is a gap.
    - ``max_pending``: see :class:`TradeSequencer`.
    - ``resume_from``: last delivered id per symbol from a previous run; the ids since are backfilled.
    - ``rng``: randomness for the backoff jitter (tests pass a seeded one).

    :meth:`run` runs until cancelled. :attr:`stats` counts everything (see its docstring).
    """

    def __init__(
        self,
        ws_url: str,
        rest_url: str,
        symbols: Iterable[str],
        on_trades: OnTrades,
        on_event: OnEvent | None = None,
        *,
        clock: Callable[[], float] = time.time,
        silence_s: float = 60.0,
        max_connection_age_s: float = 23.5 * 3600,
        overlap_s: float = 5.0,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 60.0,
        open_timeout_s: float = 10.0,
        rest_weight_budget_per_min: int = 6000,
        rest_attempts: int = 5,
        rest_timeout_s: float = 10.0,
        rest_max_wait_s: float = 300.0,
        max_pending: int = 200_000,
        resume_from: Mapping[str, int] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.symbols = tuple(s.upper() for s in symbols)
        if not self.symbols:
            raise ValueError("BinanceLiveSource needs at least one symbol")
        for name, value in (("silence_s", silence_s), ("max_connection_age_s", max_connection_age_s)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0 s, got {value}")
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError(f"need 0 < backoff_min_s <= backoff_max_s, got {backoff_min_s}, {backoff_max_s}")
        if not ws_url.startswith(("ws://", "wss://")) or not rest_url.startswith(("http://", "https://")):
            raise ValueError(f"ws_url must be ws(s)://..., rest_url http(s)://...; got {ws_url!r}, {rest_url!r}")
        self.stream_url = combined_stream_url(ws_url, self.symbols)
        self._on_trades = on_trades
        self._on_event = on_event
        self._clock = clock
        self.silence_s = silence_s
        self.max_connection_age_s = max_connection_age_s
        self.overlap_s = overlap_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.open_timeout_s = open_timeout_s
        self._rng = rng or random.Random()
        self.rest = BinanceRest(
            rest_url, weight_budget_per_min=rest_weight_budget_per_min, attempts=rest_attempts,
            timeout_s=rest_timeout_s, max_wait_s=rest_max_wait_s, backoff_min_s=backoff_min_s,
            backoff_max_s=backoff_max_s, rng=self._rng,
        )  # fmt: skip
        self.sequencer = TradeSequencer(self.symbols, max_pending=max_pending)
        for symbol, last_id in (resume_from or {}).items():
            self.sequencer.resume(symbol.upper(), last_id)
        self._failures = 0  # consecutive connection failures, for the backoff
        self._conn: _Conn | None = None  # the connection in service (the newer one during an overlap)
        self._open_conns: set[_Conn] = set()  # every connection not yet closed, to close them all on stop
        self._queue: asyncio.Queue[_Frame | _BackfillDone | _Reconnected] | None = None
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "messages",
                "server_shutdowns",
                "connects",
                "connect_failures",
                "reconnects",
                "rotations",
                "silent_closes",
            ),
            0,
        )
        self._parse_errors: dict[str, int] = {}
        self._parse_error_samples: dict[str, str] = {}  # reason -> the latest such message, to explain it
        self._ignored: dict[str, int] = {}

    # ---- public ---------------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters.

        Websocket: ``messages`` (frames received), ``parse_errors`` ({reason: n}),
        ``parse_error_samples`` ({reason: the latest offending message, cut to 200 chars}), ``ignored``
        ({reason: n}, well-formed non-trade messages), ``server_shutdowns``, ``connects``
        (successful handshakes), ``connect_failures``, ``reconnects`` (after a loss), ``rotations``
        (planned, overlapped), ``silent_closes``, ``connected`` (0/1), ``connection_age_s``.
        Trades: ``trades`` (delivered, live + backfilled), ``trades_live``, ``trades_backfilled``,
        ``duplicates``, ``unknown_symbol``, ``pending`` (held back behind holes now),
        ``gaps_unrecoverable`` and ``ids_unrecoverable``. REST: ``rest_requests`` (answered),
        ``rest_429``, ``rest_418``, ``rest_errors`` (network, 5xx, bad bodies), ``rest_wait_ms``
        (total time waited on Retry-After and the weight budget), ``rest_weight_used`` (last minute).
        """
        seq = self.sequencer
        loop_now = loop_time()
        conn = self._conn
        return {
            **self._counts,
            "parse_errors": dict(self._parse_errors),
            "parse_error_samples": dict(self._parse_error_samples),
            "ignored": dict(self._ignored),
            "connected": int(conn is not None),
            "connection_age_s": round(loop_now - conn.opened_s, 3) if conn is not None else 0.0,
            "trades": seq.delivered_live + seq.delivered_backfill,
            "trades_live": seq.delivered_live,
            "trades_backfilled": seq.delivered_backfill,
            "duplicates": seq.duplicates,
            "unknown_symbol": seq.unknown_symbol,
            "pending": sum(seq.pending_count(s) for s in self.symbols),
            "gaps_unrecoverable": seq.gaps,
            "ids_unrecoverable": seq.ids_lost,
            **self.rest.stats(),
        }

    async def run(self) -> None:
        """Stream until cancelled (or until a callback raises, which is re-raised)."""
        self._queue = asyncio.Queue(maxsize=10_000)
        async with self.rest.session():
            pump = asyncio.create_task(self._pump(), name="binance-live-pump")
            supervisor = asyncio.create_task(self._supervise(), name="binance-live-connections")
            try:
                done, _ = await asyncio.wait({pump, supervisor}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            finally:
                await self._stop(pump, supervisor)

    # ---- connections ------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Keep one connection streaming: replace it on loss or silence, rotate it on shutdown or age."""
        conn = await self._open("initial")
        while True:
            reason = await self._watch(conn)
            if reason in ("server_shutdown", "max_age"):
                await self._emit(ConnectionEvent("rotating", reason, self._now_ms()))
                new = await self._open("rotation")
                old_alive = await self._overlap(conn, new)
                await self._close(conn, drain=True)
                self._conn = conn = new
                self._counts["rotations"] += 1
                if not old_alive:
                    # The old one ended before the new one streamed: something may lie in between.
                    await self._put(_Reconnected())
                continue
            await self._close(conn, drain=False)
            self._conn = None
            self._counts["reconnects"] += 1
            if reason == "silent":
                self._counts["silent_closes"] += 1
            await self._emit(ConnectionEvent("lost", reason, self._now_ms()))
            conn = await self._open("reconnect")
            await self._put(_Reconnected())

    async def _open(self, why: str) -> _Conn:
        """Connect, retrying with backoff until it works; start its reader."""
        while True:
            delay = backoff_delay(self._failures, self.backoff_min_s, self.backoff_max_s, self._rng)
            if delay:
                await asyncio.sleep(delay)
            try:
                ws = await connect(self.stream_url, open_timeout=self.open_timeout_s, close_timeout=CLOSE_TIMEOUT_S)
            except (OSError, TimeoutError, InvalidHandshake):
                self._counts["connect_failures"] += 1
                self._failures += 1
                continue
            conn = _Conn(ws, loop_time())
            self._open_conns.add(conn)
            conn.reader = asyncio.create_task(self._read(conn), name="binance-live-reader")
            if self._conn is None:
                self._conn = conn
            self._counts["connects"] += 1
            # Counted as failed until it delivers a message, so a server that accepts and then drops
            # at once still meets a growing backoff.
            self._failures += 1
            await self._emit(ConnectionEvent("connected", why, self._now_ms()))
            return conn

    async def _read(self, conn: _Conn) -> str:
        """Queue every frame of ``conn``; return why it ended: ``closed`` or ``silent``."""
        ws, clock, put = conn.ws, self._clock, self._put
        try:
            while True:
                try:
                    async with asyncio.timeout(self.silence_s):
                        raw = await ws.recv()
                except TimeoutError:
                    return "silent"
                if not conn.first_message.is_set():
                    conn.first_message.set()
                    self._failures = 0
                await put(_Frame(conn, raw, int(clock() * 1000)))
        except ConnectionClosed:
            return "closed"

    async def _watch(self, conn: _Conn) -> str:
        """Wait until ``conn`` ends (``closed``/``silent``) or must be rotated (``server_shutdown``/``max_age``)."""
        assert conn.reader is not None
        shutdown = asyncio.create_task(conn.shutdown.wait())
        try:
            age_left = conn.opened_s + self.max_connection_age_s - loop_time()
            done, _ = await asyncio.wait(
                {conn.reader, shutdown}, timeout=max(age_left, 0.0), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            shutdown.cancel()
        if conn.reader in done:
            return conn.reader.result()
        return "server_shutdown" if shutdown in done else "max_age"

    async def _overlap(self, old: _Conn, new: _Conn) -> bool:
        """Let both stream until ``new`` delivers (or ``overlap_s``).

        False when ``old`` ended before ``new`` delivered anything: trades may lie between the two.
        """
        assert old.reader is not None and new.reader is not None
        first = asyncio.create_task(new.first_message.wait())
        try:
            await asyncio.wait(
                {first, old.reader, new.reader}, timeout=self.overlap_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            first.cancel()
        return new.first_message.is_set() or not old.reader.done()

    async def _close(self, conn: _Conn, *, drain: bool) -> None:
        """Close ``conn``. ``drain``: by close handshake while its reader keeps queueing what is still in
        flight (a rotation, so the overlap loses nothing); otherwise abort the TCP stream at once (a
        silent or broken peer would only make the handshake time out)."""
        self._open_conns.discard(conn)
        reader = conn.reader
        if drain:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(), CLOSE_TIMEOUT_S * 2)
            if reader is not None:
                # The reader ends by itself at the close frame; a stuck one is cancelled.
                await asyncio.wait({reader}, timeout=CLOSE_TIMEOUT_S)
        if reader is not None and not reader.done():
            reader.cancel()
        conn.ws.transport.abort()  # a no-op once closed
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    # ---- processing ---------------------------------------------------------------------------------

    async def _put(self, item: _Frame | _BackfillDone | _Reconnected) -> None:
        assert self._queue is not None
        await self._queue.put(item)

    async def _pump(self) -> None:
        """The one place that parses, sequences and delivers, so callbacks never overlap or reorder."""
        assert self._queue is not None
        queue, seq, counts = self._queue, self.sequencer, self._counts
        while True:
            item = await queue.get()
            if type(item) is _Frame:
                counts["messages"] += 1
                try:
                    event = parse_ws(item.raw)
                except ParseError as exc:
                    self._parse_errors[exc.reason] = self._parse_errors.get(exc.reason, 0) + 1
                    self._parse_error_samples[exc.reason] = f"{exc.detail} in {item.raw[:200]!r}"
                    continue
                if type(event) is TradeEvent:
                    out = seq.accept_live(event.trade, item.recv_ms)
                    if out:
                        await self._deliver(out, item.recv_ms)
                    self._schedule(event.trade.symbol)
                elif type(event) is ShutdownEvent:
                    counts["server_shutdowns"] += 1
                    item.conn.shutdown.set()
                else:
                    self._ignored[event.reason] = self._ignored.get(event.reason, 0) + 1
            elif type(item) is _BackfillDone:
                self._fetching.pop(item.req.symbol, None)
                now_ms = self._now_ms()
                if item.trades is None:
                    out = seq.fail_backfill(item.req, item.reason, now_ms)
                else:
                    out = seq.accept_backfill(item.req, item.trades, now_ms)
                if out:
                    await self._deliver(out, now_ms)
                self._schedule(item.req.symbol)
            else:
                seq.mark_reconnected()
                for symbol in self.symbols:
                    self._schedule(symbol)

    async def _deliver(self, out: list[RawTrade | GapEvent], recv_ms: int) -> None:
        """Hand trades to on_trades in runs, and each gap to on_event at its place in the sequence."""
        if len(out) == 1 and type(out[0]) is RawTrade:
            await self._on_trades(out, recv_ms)  # the common case: one live trade
            return
        run: list[RawTrade] = []
        for item in out:
            if type(item) is RawTrade:
                run.append(item)
                continue
            if run:
                await self._on_trades(run, recv_ms)
                run = []
            assert isinstance(item, GapEvent)
            await self._emit(item)
        if run:
            await self._on_trades(run, recv_ms)

    async def _emit(self, event: LiveEvent) -> None:
        if self._on_event is not None:
            await self._on_event(event)

    # ---- REST backfill ------------------------------------------------------------------------------

    def _schedule(self, symbol: str) -> None:
        """Start the REST fetch ``symbol`` needs, if any and none is running (one per symbol keeps order)."""
        if symbol in self._fetching:
            return
        req = self.sequencer.request(symbol)
        if req is not None:
            self._fetching[symbol] = asyncio.create_task(self._backfill(req), name=f"binance-backfill-{symbol}")

    async def _backfill(self, req: BackfillRequest) -> None:
        try:
            item = _BackfillDone(req, await self.rest.fetch_trades(req))
        except BackfillFailed as exc:
            item = _BackfillDone(req, None, exc.reason)
        await self._put(item)

    # ---- helpers ------------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _stop(self, *tasks: asyncio.Task[Any]) -> None:
        for task in (*tasks, *self._fetching.values()):
            task.cancel()
        await asyncio.gather(*tasks, *self._fetching.values(), return_exceptions=True)
        self._fetching.clear()
        self._conn = None
        for conn in list(self._open_conns):
            await self._close(conn, drain=False)
