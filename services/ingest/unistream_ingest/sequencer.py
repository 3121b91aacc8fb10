"""Orders one venue's trades per symbol by trade id: duplicates dropped, holes backfilled or declared gaps.

Pure (no I/O, no clock: times are passed in as ``now_ms``), so it is unit-tested on its own and
the venue shells (:mod:`unistream_ingest.binance.websocket`) only move bytes around it.

The rules, for a venue whose trade ids are consecutive per symbol (Binance spot):

- An id at or below the last delivered one is a duplicate (the overlap of an old and a new
  connection, or a trade that came both live and by REST): counted and dropped.
- An id above ``last + 1`` opens a hole: the trades above it are held back and a
  :class:`BackfillRequest` asks for the missing ids; they are delivered, in order, before the
  trades held back.
- What the venue cannot serve becomes a :class:`GapEvent` with the exact inclusive id range, in
  sequence: after the trades below the hole and before the trades above it.

A source that cannot backfill (producers at the door, an archive replay) keeps the same rules
with :class:`TradeIds`: a repeat is refused, and a jump is accepted and recorded as a :class:`Gap`
at once. These two classes are where ingest decides, by trade id, that trades are missing; the
validator checks only values (and asks :class:`TradeIds` about ids where no sequencer is before it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from unistream_ingest.venue import RawTrade

PAGE_LIMIT = 1000  # the most trades one backfill page asks for (Binance historicalTrades' maximum)
RECENT_GAPS_KEPT = 64  # per symbol, to tell a late trade (inside a known gap) from a repeat


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


# ---- sources without backfill ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gap:
    """Trade ids ``from_id``..``to_id`` (inclusive) of ``symbol`` were never seen.

    ``ts_ms`` is the venue time (ms) of the first trade after the gap: the missing trades happened
    at or before it.
    """

    symbol: str
    from_id: int
    to_id: int
    ts_ms: int

    @property
    def size(self) -> int:
        """Number of missing ids."""
        return self.to_id - self.from_id + 1


class TradeIds:
    """The last accepted trade id per symbol of a source that cannot backfill, and the gaps it jumped over.

    :meth:`repeat_reason` says whether an id may still come (it is above the last accepted one) or
    why not: ``duplicate`` (at or below it), ``out_of_order`` (inside a recent gap: late, never
    seen, but behind the stream). :meth:`accept` moves the last id on and records a :class:`Gap`
    when the accepted ids do not follow it.
    """

    def __init__(self) -> None:
        self.last_ids: dict[str, int] = {}
        self.gaps_total = 0
        self.missing_ids_total = 0
        self._pending_gaps: list[Gap] = []
        self._recent_gaps: dict[str, deque[Gap]] = {}

    def resume(self, symbol: str, last_id: int) -> None:
        """Continue after ``last_id`` (e.g. from a recording or the stream's last tick) so a restart sees gaps."""
        self.last_ids[symbol] = last_id

    def repeat_reason(self, symbol: str, trade_id: int) -> str | None:
        """None when ``trade_id`` is above the last accepted id of ``symbol`` (or there is none), else why not."""
        last = self.last_ids.get(symbol)
        if last is None or trade_id > last:
            return None
        for gap in self._recent_gaps.get(symbol, ()):
            if gap.from_id <= trade_id <= gap.to_id:
                return "out_of_order"
        return "duplicate"

    def accept(self, symbol: str, first_id: int, last_id: int, first_ts_ms: int) -> None:
        """Ids ``first_id``..``last_id`` of ``symbol`` (consecutive, above the last accepted) were accepted.

        ``first_ts_ms``: the venue time of ``first_id``, the time a gap before it is recorded with.
        """
        last = self.last_ids.get(symbol)
        if last is not None and first_id > last + 1:
            gap = Gap(symbol, last + 1, first_id - 1, first_ts_ms)
            self._pending_gaps.append(gap)
            self._recent_gaps.setdefault(symbol, deque(maxlen=RECENT_GAPS_KEPT)).append(gap)
            self.gaps_total += 1
            self.missing_ids_total += gap.size
        self.last_ids[symbol] = last_id

    def take_gaps(self) -> list[Gap]:
        """Gaps recorded since the last call, oldest first (then forgotten, except to classify late ids)."""
        gaps, self._pending_gaps = self._pending_gaps, []
        return gaps
