"""Binance spot live trades: one combined-stream websocket, REST backfill of what it missed, explicit gaps.

What the venue guarantees and what this module adds:

- Trade ids are consecutive per symbol. Every trade reaches ``on_trades`` at most once and in
  increasing id order per symbol: an id at or below the last delivered one is a duplicate (counted,
  dropped); an id above ``last + 1`` is a gap.
- Trades missed while disconnected are not replayed by the websocket. After an unplanned reconnect,
  or on a gap, the missing ids are fetched with ``GET /api/v3/historicalTrades?fromId=`` (pages of
  1000, weight 25 each, within a per-minute weight budget) and delivered before the live trades that
  arrived meanwhile (those are held back until the hole is filled).
- What cannot be recovered (REST refuses, keeps failing, or does not serve those ids) becomes an
  explicit :class:`GapEvent` with the exact inclusive id range, delivered in sequence: after the
  trades below the hole and before the trades above it.
- ``serverShutdown`` and the 24 h connection cut are crossed without loss: a NEW connection is
  opened first, both stream for a short overlap, then the old one is closed; the overlap's
  duplicates are dropped by id.
- A connection that delivers no message for ``silence_s`` is closed and replaced; failed
  connection attempts back off exponentially (capped, jittered). The websockets library answers the
  server's pings itself.
- Malformed messages are counted by :class:`~unistream_ingest.venue.ParseError` reason and skipped.

The sequencing logic is a pure core (:class:`TradeSequencer`: trades and REST pages in, deliverable
trades and gaps out, no I/O, no clock); :class:`BinanceLiveSource` is the I/O shell around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from unistream_ingest.binance.parsing import (
    HISTORICAL_TRADES_PATH,
    TIME_PATH,
    combined_stream_url,
    parse_rest_trades,
    parse_server_time,
    parse_ws,
    retry_after_s,
)
from unistream_ingest.venue import ParseError, RawTrade, ShutdownEvent, TradeEvent

HISTORICAL_TRADES_WEIGHT = 25  # Binance request weight of one historicalTrades call
PAGE_LIMIT = 1000  # the most trades one historicalTrades call returns
WEIGHT_WINDOW_S = 60.0  # Binance counts request weight per rolling minute
BAN_DEFAULT_S = 120.0  # a 418 without Retry-After: Binance's shortest ban
CLOSE_TIMEOUT_S = 2.0  # how long a close handshake may take before the TCP stream is aborted


# ---- events handed to on_event ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GapEvent:
    """Trade ids ``from_id``..``to_id`` (inclusive) of ``symbol`` are lost for good; ``reason`` says why.

    Reasons: ``not_served`` (REST answered but without those ids), ``http_<status>`` (REST refused),
    ``rest_failed`` (network errors / 5xx / bad bodies ``rest_attempts`` times), ``rate_limited`` and
    ``banned`` (429/418 waits beyond ``rest_max_wait_s``), ``backlog_overflow`` (more than
    ``max_pending`` live trades held back while a backfill ran). ``ts_ms``: when it was decided
    (the source's clock, ms since the epoch).
    """

    symbol: str
    from_id: int
    to_id: int
    reason: str
    ts_ms: int = 0

    @property
    def size(self) -> int:
        """How many trade ids the gap covers."""
        return self.to_id - self.from_id + 1


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A change of the websocket connection.

    ``kind`` is ``connected`` (``reason``: ``initial``, ``reconnect`` or ``rotation``), ``lost``
    (``reason``: ``closed`` or ``silent``) or ``rotating`` (``reason``: ``server_shutdown`` or
    ``max_age``; the old connection keeps streaming until the new one is up). ``ts_ms`` as in
    :class:`GapEvent`.
    """

    kind: str
    reason: str
    ts_ms: int = 0


LiveEvent = GapEvent | ConnectionEvent


# ---- pure core ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackfillRequest:
    """Fetch ``symbol``'s trades from ``from_id`` on, at most ``limit`` of them.

    ``to_id`` is the last id of the hole (inclusive), or None to read up to the present (after a
    reconnect, when it is not yet known what was missed).
    """

    symbol: str
    from_id: int
    to_id: int | None
    limit: int


class _SymbolState:
    __slots__ = ("in_flight", "last_id", "pending", "to_present")

    def __init__(self) -> None:
        self.last_id: int | None = None  # last id delivered
        self.pending: dict[int, RawTrade] = {}  # live trades held back behind a hole, by id
        self.to_present = False  # a reconnect happened: read REST up to the present
        self.in_flight = False  # a BackfillRequest is out and its answer not yet accepted


class TradeSequencer:
    """Orders one venue's trades per symbol by id, drops duplicates, asks for backfills, declares gaps.

    Every method returns what may now be delivered, in order: trades and :class:`GapEvent` values
    interleaved (a gap sits between the trades below and above it). The caller asks
    :meth:`request` after each call and answers a request with :meth:`accept_backfill` or
    :meth:`fail_backfill`. Times (``now_ms``) are passed in; nothing here reads a clock or does I/O.

    ``max_pending`` bounds the live trades held back per symbol while a hole is being filled; past it,
    the hole is declared lost (``backlog_overflow``) so memory stays bounded during a long REST ban.
    """

    def __init__(self, symbols: Iterable[str], *, max_pending: int = 200_000) -> None:
        self._states = {s: _SymbolState() for s in symbols}
        self.max_pending = max_pending
        self.delivered_live = 0
        self.delivered_backfill = 0
        self.duplicates = 0
        self.unknown_symbol = 0
        self.gaps = 0
        self.ids_lost = 0

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self._states)

    def last_id(self, symbol: str) -> int | None:
        """Last trade id delivered for ``symbol`` (None before the first)."""
        return self._states[symbol].last_id

    def pending_count(self, symbol: str) -> int:
        """Live trades of ``symbol`` held back behind a hole."""
        return len(self._states[symbol].pending)

    def resume(self, symbol: str, last_id: int) -> None:
        """Continue after ``last_id`` (delivered before a restart): the ids since are backfilled."""
        state = self._states[symbol]
        state.last_id = last_id
        state.to_present = True

    def mark_reconnected(self) -> None:
        """The live feed was interrupted: every symbol seen so far reads REST up to the present."""
        for state in self._states.values():
            if state.last_id is not None:
                state.to_present = True

    def accept_live(self, trade: RawTrade, now_ms: int = 0) -> list[RawTrade | GapEvent]:
        """A trade from the websocket; returns it when it is the next id, else holds or drops it."""
        state = self._states.get(trade.symbol)
        if state is None:
            self.unknown_symbol += 1
            return []
        trade_id = trade.trade_id
        last = state.last_id
        if last is None:
            state.last_id = trade_id
            self.delivered_live += 1
            return [trade]
        if trade_id <= last or trade_id in state.pending:
            self.duplicates += 1
            return []
        if trade_id == last + 1 and not state.pending:
            # Consecutive: deliverable even while a read-to-present is out (its page then overlaps
            # what was delivered, and the overlap is dropped).
            state.last_id = trade_id
            self.delivered_live += 1
            return [trade]
        state.pending[trade_id] = trade
        out = self._flush(state)
        if len(state.pending) > self.max_pending:
            out += self._give_up_hole(trade.symbol, state, "backlog_overflow", now_ms)
        return out

    def request(self, symbol: str) -> BackfillRequest | None:
        """The next REST fetch ``symbol`` needs, or None (nothing missing, or one is already out)."""
        state = self._states[symbol]
        if state.in_flight or state.last_id is None or not (state.pending or state.to_present):
            return None
        from_id = state.last_id + 1
        if state.pending:
            # Live trades show where the present is, so the hole has a known end.
            state.to_present = False
            to_id = min(state.pending) - 1
            limit = min(PAGE_LIMIT, to_id - from_id + 1)
        else:
            to_id, limit = None, PAGE_LIMIT
        state.in_flight = True
        return BackfillRequest(symbol, from_id, to_id, limit)

    def accept_backfill(
        self, req: BackfillRequest, trades: list[RawTrade], now_ms: int = 0
    ) -> list[RawTrade | GapEvent]:
        """The REST answer to ``req``: ids from ``req.from_id`` on, in any order, possibly past the hole.

        Ids delivered since the request went out are skipped. Ids the venue skipped over (the page
        jumps, or has nothing where a known hole is) are declared ``not_served``.
        """
        state = self._states[req.symbol]
        state.in_flight = False
        last = state.last_id
        if last is None:
            return []
        # Held-back live trades are the truth above the hole: never let a page declare them lost.
        upper = req.to_id if req.to_id is not None else (min(state.pending) - 1 if state.pending else None)
        page = {
            t.trade_id: t
            for t in trades
            if t.symbol == req.symbol and t.trade_id > last and (upper is None or t.trade_id <= upper)
        }
        out: list[RawTrade | GapEvent] = []
        expected = last + 1
        for trade_id in sorted(page):
            if trade_id > expected:
                out.append(self._gap(req.symbol, expected, trade_id - 1, "not_served", now_ms))
            out.append(page[trade_id])
            expected = trade_id + 1
        self.delivered_backfill += len(page)
        state.last_id = expected - 1
        if not page and req.to_id is not None and req.to_id > last:
            # The venue answered and has nothing in the hole: it will never serve those ids.
            out.append(self._gap(req.symbol, last + 1, req.to_id, "not_served", now_ms))
            state.last_id = req.to_id
        if req.to_id is None and len(trades) < req.limit:
            state.to_present = False  # a short page: nothing newer existed when it was served
        return out + self._flush(state)

    def fail_backfill(self, req: BackfillRequest, reason: str, now_ms: int = 0) -> list[RawTrade | GapEvent]:
        """REST could not answer ``req``: a known hole becomes a gap; an open-ended read is dropped
        (the next live trade shows whether anything was missed, and that hole is tried once more)."""
        state = self._states[req.symbol]
        state.in_flight = False
        state.to_present = False
        last = state.last_id
        if last is None or req.to_id is None or last >= req.to_id:
            return self._flush(state)
        return self._give_up_hole(req.symbol, state, reason, now_ms)

    def _give_up_hole(self, symbol: str, state: _SymbolState, reason: str, now_ms: int) -> list[RawTrade | GapEvent]:
        if state.last_id is None or not state.pending:
            return []
        to_id = min(state.pending) - 1
        gap = self._gap(symbol, state.last_id + 1, to_id, reason, now_ms)
        state.last_id = to_id
        return [gap, *self._flush(state)]

    def _flush(self, state: _SymbolState) -> list[RawTrade | GapEvent]:
        """Pop held-back trades that now follow ``last_id`` without a hole."""
        out: list[RawTrade | GapEvent] = []
        pending = state.pending
        if not pending or state.last_id is None:
            return out
        for stale in [i for i in pending if i <= state.last_id]:
            del pending[stale]  # arrived live and also by REST
            self.duplicates += 1
        while state.last_id + 1 in pending:
            state.last_id += 1
            out.append(pending.pop(state.last_id))
        self.delivered_live += len(out)
        return out

    def _gap(self, symbol: str, from_id: int, to_id: int, reason: str, now_ms: int) -> GapEvent:
        gap = GapEvent(symbol, from_id, to_id, reason, now_ms)
        self.gaps += 1
        self.ids_lost += gap.size
        return gap


class WeightBudget:
    """Rolling-minute request-weight budget (Binance: 6,000 per IP per minute). Pure: time is passed in.

    :meth:`reserve` either books ``weight`` at ``now_s`` and returns 0, or books nothing and returns
    how many seconds to wait before asking again.
    """

    def __init__(self, per_minute: int, window_s: float = WEIGHT_WINDOW_S) -> None:
        if per_minute <= 0:
            raise ValueError(f"the weight budget must be > 0 per minute, got {per_minute}")
        self.per_minute = per_minute
        self.window_s = window_s
        self._spent: deque[tuple[float, int]] = deque()
        self._used = 0

    def used(self, now_s: float) -> int:
        """Weight booked in the window that ends at ``now_s``."""
        while self._spent and self._spent[0][0] <= now_s - self.window_s:
            self._used -= self._spent.popleft()[1]
        return self._used

    def observe(self, now_s: float, reported: int) -> None:
        """The venue says ``reported`` weight is used this minute (``X-MBX-USED-WEIGHT-1M``): book what
        others on the same IP spent beyond our own bookings, so the budget is shared, not assumed."""
        extra = reported - self.used(now_s)
        if extra > 0:
            self._spent.append((now_s, extra))
            self._used += extra

    def reserve(self, now_s: float, weight: int) -> float:
        """Book ``weight`` now (returns 0.0) or say how many seconds until it fits."""
        if weight > self.per_minute:
            raise ValueError(f"a request of weight {weight} can never fit a budget of {self.per_minute}/min")
        if self.used(now_s) + weight <= self.per_minute:
            self._spent.append((now_s, weight))
            self._used += weight
            return 0.0
        # Free the oldest bookings until it fits; wait for the last of them to leave the window.
        freed, need = 0, self._used + weight - self.per_minute
        for ts, w in self._spent:
            freed += w
            if freed >= need:
                return max(ts + self.window_s - now_s, 0.001)
        return self.window_s  # unreachable: weight <= per_minute


def backoff_delay(failures: int, min_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures (0 -> no wait).

    Exponential from ``min_s`` (doubling per failure, capped at ``max_s``) with "equal jitter": a
    uniform draw in [d/2, d], so many clients cut at once do not come back in lock-step, yet each
    still waits at least half the nominal delay.
    """
    if failures <= 0:
        return 0.0
    nominal = min(max_s, min_s * 2 ** (failures - 1))
    return nominal / 2 + (rng or random).uniform(0, nominal / 2)


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


class _BackfillFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
        if rest_attempts < 1:
            raise ValueError(f"rest_attempts must be >= 1, got {rest_attempts}")
        self.stream_url = combined_stream_url(ws_url, self.symbols)
        self.rest_url = rest_url.rstrip("/")
        self._on_trades = on_trades
        self._on_event = on_event
        self._clock = clock
        self.silence_s = silence_s
        self.max_connection_age_s = max_connection_age_s
        self.overlap_s = overlap_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.open_timeout_s = open_timeout_s
        self.rest_attempts = rest_attempts
        self.rest_timeout_s = rest_timeout_s
        self.rest_max_wait_s = rest_max_wait_s
        self._rng = rng or random.Random()
        self.sequencer = TradeSequencer(self.symbols, max_pending=max_pending)
        for symbol, last_id in (resume_from or {}).items():
            self.sequencer.resume(symbol.upper(), last_id)
        self._budget = WeightBudget(rest_weight_budget_per_min)
        self._rest_blocked_until = 0.0  # loop time before which no REST call may be made (429/418)
        self._failures = 0  # consecutive connection failures, for the backoff
        self._conn: _Conn | None = None  # the connection in service (the newer one during an overlap)
        self._open_conns: set[_Conn] = set()  # every connection not yet closed, to close them all on stop
        self._queue: asyncio.Queue[_Frame | _BackfillDone | _Reconnected] | None = None
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._http: httpx.AsyncClient | None = None
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "messages",
                "server_shutdowns",
                "connects",
                "connect_failures",
                "reconnects",
                "rotations",
                "silent_closes",
                "rest_requests",
                "rest_429",
                "rest_418",
                "rest_errors",
                "rest_wait_ms",
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
        loop_now = _loop_time()
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
            "rest_weight_used": self._budget.used(loop_now),
        }

    async def run(self) -> None:
        """Stream until cancelled (or until a callback raises, which is re-raised)."""
        self._queue = asyncio.Queue(maxsize=10_000)
        async with httpx.AsyncClient(base_url=self.rest_url, timeout=self.rest_timeout_s) as http:
            self._http = http
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
            conn = _Conn(ws, _loop_time())
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
            age_left = conn.opened_s + self.max_connection_age_s - _loop_time()
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
            item = _BackfillDone(req, await self._fetch_trades(req))
        except _BackfillFailed as exc:
            item = _BackfillDone(req, None, exc.reason)
        await self._put(item)

    async def _fetch_trades(self, req: BackfillRequest) -> list[RawTrade]:
        """One historicalTrades page for ``req``, honouring the weight budget, Retry-After and bans.

        Raises _BackfillFailed with the gap reason when the page cannot be had.
        """
        assert self._http is not None
        params = {"symbol": req.symbol, "fromId": str(req.from_id), "limit": str(req.limit)}
        attempts = 0
        waited = 0.0
        while True:
            waited += await self._wait_for_rest(HISTORICAL_TRADES_WEIGHT)
            try:
                resp = await self._http.get(HISTORICAL_TRADES_PATH, params=params)
            except httpx.HTTPError:
                failure = "rest_failed"
            else:
                self._counts["rest_requests"] += 1
                with contextlib.suppress(KeyError, ValueError):
                    self._budget.observe(_loop_time(), int(resp.headers["X-MBX-USED-WEIGHT-1M"]))
                status = resp.status_code
                if status == 200:
                    try:
                        return parse_rest_trades(resp.content, req.symbol)
                    except ParseError:
                        failure = "rest_failed"
                elif status in (418, 429):
                    self._counts[f"rest_{status}"] += 1
                    wait = retry_after_s(resp.headers, BAN_DEFAULT_S if status == 418 else self.backoff_min_s)
                    self._rest_blocked_until = max(self._rest_blocked_until, _loop_time() + wait)
                    if waited + wait > self.rest_max_wait_s:
                        raise _BackfillFailed("banned" if status == 418 else "rate_limited")
                    continue
                elif status >= 500:
                    failure = "rest_failed"
                else:
                    raise _BackfillFailed(f"http_{status}")  # the venue refuses: retrying will not help
            self._counts["rest_errors"] += 1
            attempts += 1
            if attempts >= self.rest_attempts:
                raise _BackfillFailed(failure)
            await asyncio.sleep(backoff_delay(attempts, self.backoff_min_s, self.backoff_max_s, self._rng))

    async def _wait_for_rest(self, weight: int) -> float:
        """Sleep through any Retry-After block and until ``weight`` fits the budget; return seconds waited."""
        start = _loop_time()
        while True:
            now = _loop_time()
            if now < self._rest_blocked_until:
                await asyncio.sleep(self._rest_blocked_until - now)
                continue
            delay = self._budget.reserve(now, weight)
            if delay == 0.0:
                break
            await asyncio.sleep(delay)
        waited = _loop_time() - start
        self._counts["rest_wait_ms"] += int(waited * 1000)
        return waited

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


def _loop_time() -> float:
    # The event loop's clock (asyncio's default loop uses time.monotonic), readable outside the loop too.
    return time.monotonic()


async def reachable(rest_url: str, timeout: float = 3.0) -> bool:
    """Whether Binance REST at ``rest_url`` answers ``GET /api/v3/time`` with a server time within ``timeout`` s.

    For ``UNISTREAM_SOURCE=auto``: choose the live feed only when the venue can be reached.
    """
    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            resp = await http.get(rest_url.rstrip("/") + TIME_PATH)
        if resp.status_code != 200:
            return False
        parse_server_time(resp.content)
    except (httpx.HTTPError, ParseError):
        return False
    return True
