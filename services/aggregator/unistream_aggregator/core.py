"""Pure core of the aggregator: trades into 1s, 1m, 1h and 1d bars, exactly once.

No Redis, no clock, no I/O: entries come in as ``(ref, packet)`` where ``ref`` is the
``(stream, entry id)`` to acknowledge and ``packet`` a :class:`TickBatch` or a
:class:`GapMarker`; time comes in as ``now_ms`` (ms since the epoch, UTC).

Bar semantics (per symbol):

- A bar covers the UTC-aligned, left-closed interval ``[open_time_ms, open_time_ms + span)``;
  a trade at ``ts_event_ms`` belongs to the 1s bar opening at ``ts_event_ms - ts_event_ms % 1000``.
- What a bar is (the interval, the exact sums, the notional, vwap, filled bars, the roll-up) is
  defined by :mod:`unistream_common.bars`, the bar core that the history and the tools use too:
- open/high/low/close are trade prices in trade order; ``volume`` (base), ``quote_volume``,
  ``taker_buy_volume`` (trades whose aggressor bought) and ``vwap`` (quote volume / volume) are
  computed EXACTLY: prices and sizes are taken in units of 1e-8 (Binance's finest step), summed
  as integers, and each float in a bar is the correctly rounded value of the exact decimal. So
  a bar does not depend on how its trades were batched, and a reference computation in exact
  decimal arithmetic agrees to the last digit.
- ``quote_volume`` (and ``taker_buy_quote_volume``, of the trades whose aggressor bought) is
  Binance's: the sum of each trade's notional as the venue reports it (``quoteQty`` in its
  archives), which is price x size truncated to 8 decimals
  (:func:`~unistream_common.bars.notional_units`), not the exact sum of the products (those
  differ by ~1e-7 relative an hour on a pair like ETHBTC). Websocket trades carry no notional;
  the same rule gives it.
- A 1s bar closes when a trade of a later interval arrives (event time passed its end), or from
  the timer once the wall clock reaches its end + ``grace_ms`` (live sources only: see
  :meth:`BarAggregator.close_due`).
- Empty 1s intervals are emitted as flat bars at the previous close (volume 0, trade_count 0,
  ``filled=True``): when the next trade proves them over, or from the timer in live mode. A run
  of more than ``max_fill_bars`` empty intervals (an outage, most likely) is left visible and
  counted as ``intervals_skipped``. Nothing is filled before a symbol's first bar.
- 1m, 1h and 1d bars are the roll-up of their 1s bars: open of the first 1s bar with trades,
  high/low over 1s bars with trades, close of the last 1s bar, sums of the rest. Filled 1s bars
  do not set open/high/low; a higher bar made only of filled 1s bars is filled itself. A higher
  bar is emitted with its last 1s bar, or when a 1s bar of a later interval is emitted (after a
  skipped gap); intervals with no 1s bar at all (inside a skipped gap) have no higher bar either.
- ``incomplete`` marks bars whose interval overlaps a :class:`GapMarker`'s time range (trades
  ingest knows it lost); a higher bar is incomplete when one of its 1s bars is. A bar already
  emitted when its marker arrives cannot change; the higher bars that contain it still show it.

Late policy: a trade for a 1s interval that already closed (emitted, filled or skipped over) is
LATE: counted (``ticks_late``) and not applied, because an emitted bar is final and the bar
stream's explicit ids refuse an insertion behind the top.

Duplicates: trade ids rise per symbol (ingest guarantees it), so a trade whose id is at or below
the highest id seen is a duplicate (``ticks_duplicate``), whichever way it came twice.

Exactly once: an entry is acknowledged in the same output that emits the last 1s bar its trades
went into (or at once when none of its trades is in the open bar); every output also carries
the symbol's :class:`SymbolCheckpoint` (emitted position, forming higher bars, and the newest
entry whose counts went out) and the counter increments: those of bars with the bars, those of
an entry (late, duplicate, skipped, gaps) the first time it is applied. The runtime writes
bars, checkpoint, counters and acknowledgements in one MULTI, so after a crash at any point
:meth:`BarAggregator.restore` continues from a checkpoint that matches the bar streams and the
counters; a redelivered entry counts nothing again, and its trades are either in emitted bars
(``ticks_already_applied``: ids at or below the checkpoint's) or applied again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from unistream_common import quality
from unistream_common.bars import HIGHER_TIMEFRAMES, SCALE, SECOND_MS, BarAccumulator, interval_open_ms, roll_up
from unistream_common.packets import Bar, GapMarker, Source, TickBatch
from unistream_common.timeframes import TIMEFRAME_MS

EntryRef = tuple[str, str]  # (stream, entry id)

LIVE_SOURCES: frozenset[str] = frozenset({"REAL", "SYNTHETIC"})  # the timer closes only these
CHECKPOINT_VERSION = 2  # 2: quote sums in 1e-8 units of truncated notionals (1: exact products, 1e-16)

COUNTERS = quality.COUNTERS
"""Counters of the core, per symbol; every increment goes out with the bar or the checkpoint it
belongs to, so their committed totals are exact across crashes (``ticks_already_applied``
aside: it counts what redeliveries skipped)."""


def _entry_pair(entry_id: str) -> tuple[int, int]:
    """A stream entry id ``ms-seq`` as a comparable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class SymbolCheckpoint(msgspec.Struct):
    """What a restart needs of one symbol: its position in the bar streams, nothing open.

    Written with every output that touches the symbol, in the same MULTI as its bars and
    acknowledgements, so it always matches the bar streams.
    """

    version: int
    symbol: str
    last_open_ms: int | None  # open time of the last emitted 1s bar
    prev_close: float | None  # its close: the level of filled bars
    last_trade_id: int  # highest trade id in emitted bars (-1: none)
    forming: dict[str, BarAccumulator]  # higher timeframe -> its bar so far, from emitted 1s bars
    gaps: list[tuple[int, int]]  # [from_ms, to_ms] time ranges of gap markers still to flag (to 0: open)
    source: Source | None
    counted_through: str = "0-0"  # newest tick-stream entry whose counts went out: redeliveries count nothing


@dataclass
class AggregatorOutput:
    """What one call produced.

    Attributes:
        bars: bars that are now final, per symbol in time order, each 1s bar before the higher
            bars it completed (write them).
        ack: entries whose every trade is in ``bars`` or was emitted before (acknowledge them
            together with ``bars``).
        counts: increments of :data:`COUNTERS`, keyed ``(counter, symbol)``: of the emitted
            bars, and of the entries applied for the first time.
        checkpoints: the new checkpoint of every symbol this output touched.
    """

    bars: list[Bar] = field(default_factory=list)
    ack: list[EntryRef] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    checkpoints: dict[str, SymbolCheckpoint] = field(default_factory=dict)

    def extend(self, other: AggregatorOutput) -> None:
        self.bars.extend(other.bars)
        self.ack.extend(other.ack)
        self.counts.update(other.counts)
        self.checkpoints.update(other.checkpoints)


class _SymbolState:
    """One symbol: emitted position, the open 1s bar, forming higher bars, held entries."""

    __slots__ = (
        "bar",
        "counted_through",
        "forming",
        "gaps",
        "held",
        "horizon_ms",
        "last_open_ms",
        "last_trade_id",
        "open_max_id",
        "prev_close",
        "seen_id",
        "source",
    )

    def __init__(self) -> None:
        self.last_open_ms: int | None = None
        self.prev_close: float | None = None
        self.last_trade_id = -1  # highest id in emitted bars
        self.seen_id = -1  # highest id seen (applied, late or in the open bar)
        self.horizon_ms = -1  # fallback restore only: trades of 1s intervals up to this one are in the stream
        self.open_max_id = -1  # highest id in the open bar
        self.bar: BarAccumulator | None = None
        self.forming: dict[str, BarAccumulator] = {}
        self.gaps: list[list[int]] = []
        self.held: dict[EntryRef, None] = {}  # entries waiting for the open bar (an ordered set)
        self.counted_through = (-1, -1)  # newest entry (id as (ms, seq)) whose counts went out
        self.source: Source | None = None


class BarAggregator:
    """Builds 1s, 1m, 1h and 1d bars for any number of symbols (module docstring: the policies).

    Args:
        grace_ms: after a 1s bar's end, how long the timer waits for stragglers before closing it.
        max_fill_bars: longest run of empty 1s intervals that is filled with flat bars.
    """

    def __init__(self, grace_ms: int = 250, max_fill_bars: int = 3_600) -> None:
        if grace_ms < 0:
            raise ValueError(f"grace_ms was negative ({grace_ms})")
        if max_fill_bars < 0:
            raise ValueError(f"max_fill_bars was negative ({max_fill_bars})")
        self.grace_ms = grace_ms
        self.max_fill_bars = max_fill_bars
        self._symbols: dict[str, _SymbolState] = {}

    # --- state -----------------------------------------------------------------------------

    @property
    def symbols(self) -> list[str]:
        return list(self._symbols)

    def restore(self, symbol: str, checkpoint: SymbolCheckpoint | None) -> None:
        """Forget ``symbol``'s state and continue from ``checkpoint`` (None: from nothing).

        The open bar and held entries are dropped: the runtime redelivers those entries, and
        their trades are applied again.
        """
        st = self._symbols[symbol] = _SymbolState()
        if checkpoint is None:
            return
        if checkpoint.symbol != symbol:
            raise ValueError(f"restore of {symbol} got the checkpoint of {checkpoint.symbol}")
        if checkpoint.version not in (1, CHECKPOINT_VERSION):
            raise ValueError(f"checkpoint version {checkpoint.version} is not {CHECKPOINT_VERSION}")
        forming = checkpoint.forming
        if checkpoint.version == 1:  # quote sums of exact products in 1e-16: the forming bars' become
            # 1e-8 units (truncated once, not per trade: those bars may differ from Binance's quote
            # volume by under a unit per trade; every bar opened after the upgrade is exact)
            forming = {tf: msgspec.structs.replace(acc, quote=acc.quote // SCALE) for tf, acc in forming.items()}
        st.last_open_ms = checkpoint.last_open_ms
        st.prev_close = checkpoint.prev_close
        st.last_trade_id = st.seen_id = checkpoint.last_trade_id
        st.forming = {tf: msgspec.structs.replace(acc) for tf, acc in forming.items()}
        st.gaps = [list(g) for g in checkpoint.gaps]
        st.source = checkpoint.source
        st.counted_through = _entry_pair(checkpoint.counted_through)

    def restore_from_bars(self, symbol: str, last: Mapping[str, Bar | None], tails: Mapping[str, list[Bar]]) -> None:
        """Fallback when no checkpoint exists: continue from the bar streams themselves.

        ``last`` maps each timeframe to its newest bar (or None); ``tails`` maps each higher
        timeframe to the bars of the next lower timeframe emitted after that timeframe's newest
        bar (1m: 1s bars, 1h: 1m bars, 1d: 1h bars), oldest first. Trades are recognised as
        already applied by time (their 1s interval is at or before the last 1s bar), since
        trade ids are not in the bars.
        """
        st = self._symbols[symbol] = _SymbolState()
        last_1s = last.get("1s")
        if last_1s is None:
            return
        st.last_open_ms = last_1s.open_time_ms
        st.prev_close = last_1s.close
        st.source = last_1s.source
        st.horizon_ms = last_1s.open_time_ms
        lower: BarAccumulator | None = None
        for tf in HIGHER_TIMEFRAMES:
            span = TIMEFRAME_MS[tf]
            open_ms = interval_open_ms(last_1s.open_time_ms, span)
            acc: BarAccumulator | None = None
            for bar in tails.get(tf, []):
                if bar.open_time_ms >= open_ms:
                    part = BarAccumulator.of_bar(bar)
                    if acc is None:
                        acc = BarAccumulator.flat(open_ms, part.close, part.source)
                    acc.add_bar(part)
            if lower is not None and lower.open_ms >= open_ms:
                if acc is None:
                    acc = BarAccumulator.flat(open_ms, lower.close, lower.source)
                acc.add_bar(lower)
            if acc is not None and last_1s.close_time_ms < open_ms + span:
                st.forming[tf] = acc
            lower = st.forming.get(tf)

    def checkpoint(self, symbol: str) -> SymbolCheckpoint:
        """The symbol's emitted position, for the state key (see :class:`SymbolCheckpoint`)."""
        st = self._symbols[symbol]
        return SymbolCheckpoint(
            CHECKPOINT_VERSION, symbol, st.last_open_ms, st.prev_close, st.last_trade_id,
            {tf: msgspec.structs.replace(acc) for tf, acc in st.forming.items()},
            [(a, b) for a, b in st.gaps], st.source, "{}-{}".format(*st.counted_through),
        )  # fmt: skip

    def drop(self, symbol: str) -> list[EntryRef]:
        """Forget ``symbol`` (another process owns it now); returns the entries it held."""
        st = self._symbols.pop(symbol, None)
        return list(st.held) if st else []

    def held(self) -> list[EntryRef]:
        """Entries delivered but not yet acknowledgeable (their trades sit in open bars)."""
        return [ref for st in self._symbols.values() for ref in st.held]

    def forming_bars(self, symbol: str) -> dict[str, Bar]:
        """The bars not yet closed, per timeframe, open 1s trades included (for display)."""
        st = self._symbols.get(symbol)
        if st is None:
            return {}
        part = st.bar
        out: dict[str, Bar] = {}
        if part is not None:
            out["1s"] = part.to_bar(symbol, "1s")
        for tf in HIGHER_TIMEFRAMES:
            acc = st.forming.get(tf)
            view = msgspec.structs.replace(acc) if acc is not None else None
            if part is not None:
                open_ms = interval_open_ms(part.open_ms, TIMEFRAME_MS[tf])
                if view is None or view.open_ms != open_ms:  # the open bar starts a newer interval
                    view = BarAccumulator.flat(open_ms, part.close, part.source)
                view.add_bar(part)
            if view is not None:
                out[tf] = view.to_bar(symbol, tf)
        return out

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-symbol position, for /stats."""
        return {
            symbol: {
                "last_bar_open_ms": st.last_open_ms,
                "last_trade_id": st.last_trade_id,
                "open_bar_open_ms": st.bar.open_ms if st.bar else None,
                "open_bar_trades": st.bar.count if st.bar else 0,
                "held_entries": len(st.held),
                "forming": {tf: acc.open_ms for tf, acc in st.forming.items()},
                "open_gap_ranges": len(st.gaps),
                "source": st.source,
            }
            for symbol, st in sorted(self._symbols.items())
        }

    # --- input -----------------------------------------------------------------------------

    def apply(self, entries: Iterable[tuple[EntryRef, TickBatch | GapMarker]]) -> AggregatorOutput:
        """Apply entries in delivery order; return closed bars and acknowledgeable entries."""
        out = AggregatorOutput()
        changed: set[str] = set()
        for ref, packet in entries:
            symbol = packet.symbol
            st = self._symbols.get(symbol)
            if st is None:
                st = self._symbols[symbol] = _SymbolState()
            n_bars = len(out.bars)
            # An entry's late, duplicate, skip and gap counts go out (with the checkpoint that
            # records it was counted) the first time it is applied; a redelivery counts nothing.
            entry = _entry_pair(ref[1])
            first_time = entry > st.counted_through
            counts: Counter[str] = Counter()
            if isinstance(packet, GapMarker):
                self._on_gap(st, packet, counts)
                hold = st.bar is not None  # its flag is on the open bar until that is emitted
            else:
                hold = self._apply_batch(symbol, st, packet, counts, out, redelivered=not first_time)
            if first_time:
                st.counted_through = entry
                for name, n in counts.items():
                    out.counts[name, symbol] += n
            elif counts["ticks_already_applied"]:  # what redeliveries skipped: shown, not exact
                out.counts["ticks_already_applied", symbol] += counts["ticks_already_applied"]
            if hold or ref in st.held:  # a second delivery of a held entry stays held
                st.held[ref] = None
            else:
                out.ack.append(ref)
            if not hold or counts or len(out.bars) > n_bars:
                changed.add(symbol)
        for symbol in changed:
            out.checkpoints[symbol] = self.checkpoint(symbol)
        out.ack = list(dict.fromkeys(out.ack))
        return out

    def _apply_batch(
        self,
        symbol: str,
        st: _SymbolState,
        batch: TickBatch,
        counts: Counter[str],
        out: AggregatorOutput,
        redelivered: bool,
    ) -> bool:
        """Apply one batch; True when one of its trades is in the open bar (hold the entry).

        In a ``redelivered`` entry, a trade id at or below the highest seen (after a restart: the
        checkpoint's) was dealt with before: already applied; in an entry seen for the first time
        it is a duplicate.
        """
        source = batch.source
        st.source = source
        bar = st.bar
        seen = st.seen_id
        horizon_ms = st.horizon_ms
        last_open = st.last_open_ms if st.last_open_ms is not None else -1
        gap_open = any(g[1] == 0 for g in st.gaps)  # a gap marker waiting for the next trade
        applied = late = dup = already = 0
        for tick in batch.ticks:
            tid = tick.trade_id
            if tid <= seen:
                if redelivered:  # every trade of an entry seen before was dealt with then
                    already += 1
                else:
                    dup += 1
                continue
            seen = tid
            ts = tick.ts_event_ms
            open_ms = ts - ts % SECOND_MS  # interval_open_ms, inlined: once per trade
            if bar is None or open_ms != bar.open_ms:
                if (bar is not None and open_ms < bar.open_ms) or open_ms <= last_open:
                    if open_ms <= horizon_ms:
                        already += 1
                    else:
                        late += 1
                    continue
                if bar is not None:
                    self._emit(symbol, st, out)
                skipped = self._fill_until(symbol, st, open_ms, source, out)
                if skipped:
                    counts["intervals_skipped"] += skipped
                last_open = st.last_open_ms if st.last_open_ms is not None else -1
                bar = st.bar = BarAccumulator.opening(open_ms, tick.price, source)
                if st.gaps:
                    bar.incomplete = self._in_gap(st, open_ms, open_ms + SECOND_MS)
            if gap_open:  # the missing trades lie between the marker's start and this trade
                self._close_open_gaps(st, ts)
                if self._in_gap(st, bar.open_ms, bar.open_ms + SECOND_MS):
                    bar.incomplete = True
                gap_open = False
            bar.add_trade(tick.price, tick.size, tick.aggressor_side == "BUY")
            st.open_max_id = tid
            applied += 1
        st.seen_id = seen
        if late:
            counts["ticks_late"] += late
        if dup:
            counts["ticks_duplicate"] += dup
        if already:
            counts["ticks_already_applied"] += already
        return applied > 0

    def _on_gap(self, st: _SymbolState, gap: GapMarker, counts: Counter[str]) -> None:
        """Remember the gap's time range; bars overlapping it are flagged incomplete."""
        counts["gaps"] += 1
        counts["trades_missing"] += gap.missing
        start = gap.ts_from_ms
        if not start:
            start = st.bar.open_ms if st.bar is not None else (st.last_open_ms or 0) + SECOND_MS
        rng = [start, gap.ts_to_ms]  # to 0: open until the next trade
        if rng not in st.gaps:
            st.gaps.append(rng)
        if st.bar is not None and self._in_gap(st, st.bar.open_ms, st.bar.open_ms + SECOND_MS):
            st.bar.incomplete = True
        for acc in st.forming.values():
            if self._in_gap(st, acc.open_ms, st.last_open_ms + SECOND_MS if st.last_open_ms is not None else 0):
                acc.incomplete = True

    @staticmethod
    def _in_gap(st: _SymbolState, start_ms: int, end_ms: int) -> bool:
        """Whether [start_ms, end_ms) overlaps a remembered gap range."""
        for a, b in st.gaps:
            if a < end_ms and (b == 0 or b >= start_ms):
                return True
        return False

    @staticmethod
    def _close_open_gaps(st: _SymbolState, ts_ms: int) -> None:
        for g in st.gaps:
            if g[1] == 0:
                g[1] = max(ts_ms, g[0])  # a trade stamped before the marker's start ends it at the start

    def _timer_target(self, now_ms: int) -> int:
        """Open time of the first 1s interval the timer may not close yet at ``now_ms``."""
        limit = now_ms - self.grace_ms - SECOND_MS  # an interval opening at or before this has ended + grace
        return limit - limit % SECOND_MS + SECOND_MS

    def _timer_fill(self, st: _SymbolState, target: int) -> int:
        """Empty intervals the timer would fill up to ``target`` (0 when none, or too many)."""
        if st.last_open_ms is None:
            return 0
        missing = (target - st.last_open_ms) // SECOND_MS - 1
        return missing if missing <= self.max_fill_bars else 0  # a longer run waits for a trade to count it

    def due_symbols(self, now_ms: int, venue_offsets: Mapping[str, int] | None = None) -> list[str]:
        """Live symbols whose 1s bars the timer may close or fill at ``now_ms`` (ms since the epoch).

        ``venue_offsets`` as in :meth:`close_due`: a venue's clock running ahead of ``now_ms``
        makes bars due that much earlier.
        """
        ahead = max(0, -min((venue_offsets or {}).values(), default=0))
        target = self._timer_target(now_ms + ahead)
        out = []
        for symbol, st in self._symbols.items():
            if st.source not in LIVE_SOURCES:
                continue
            if (st.bar is not None and st.bar.open_ms < target) or (st.bar is None and self._timer_fill(st, target)):
                out.append(symbol)
        return out

    def next_due_ms(self) -> int | None:
        """Wall-clock ms at which the timer next has a 1s interval of a live symbol to close."""
        best = None
        for st in self._symbols.values():
            if st.source not in LIVE_SOURCES:
                continue
            if st.bar is not None:
                due = st.bar.open_ms + SECOND_MS + self.grace_ms
            elif st.last_open_ms is not None:
                due = st.last_open_ms + 2 * SECOND_MS + self.grace_ms
            else:
                continue
            if best is None or due < best:
                best = due
        return best

    def close_due(
        self,
        now_ms: int,
        symbols: Iterable[str] | None = None,
        watermarks: Mapping[str, int] | None = None,
        venue_offsets: Mapping[str, int] | None = None,
    ) -> AggregatorOutput:
        """Timer (live sources): close 1s intervals whose end + grace is at or before the venue's time.

        The open bar is emitted and the empty intervals after it are filled up to the newest
        interval that may close, so a quiet market still gets its bars on time. ``symbols``
        restricts this to symbols the caller knows have no undelivered trades (closing a bar
        while its trades are still queued would make them late). ``watermarks`` (epoch ms of the
        venue's clock, per symbol) say up to when the writer has written every trade it
        received: no interval ending after a symbol's watermark is closed (its trades may still
        be on their way). ``venue_offsets`` (ms, per symbol): how far ``now_ms`` runs ahead of the
        venue's clock that stamps the trades (negative: behind); the venue's time is ``now_ms``
        less it, and bars close when it passes their end + grace, whatever this host's clock says.
        """
        out = AggregatorOutput()
        allowed = set(self._symbols) if symbols is None else set(symbols)
        offsets = venue_offsets or {}
        for symbol in self.due_symbols(now_ms, offsets):
            if symbol not in allowed:
                continue
            venue_now = now_ms - offsets.get(symbol, 0)
            held_to = (
                venue_now if watermarks is None or symbol not in watermarks else watermarks[symbol] + self.grace_ms
            )
            target = self._timer_target(min(venue_now, held_to))
            st = self._symbols[symbol]
            if st.bar is not None and st.bar.open_ms >= target:
                continue  # its end is past the watermark
            if st.bar is None and not self._timer_fill(st, target):
                continue
            if st.bar is not None:
                self._emit(symbol, st, out)
            assert st.source is not None
            if self._timer_fill(st, target):
                self._fill_until(symbol, st, target, st.source, out)
            out.checkpoints[symbol] = self.checkpoint(symbol)
        return out

    # --- output ----------------------------------------------------------------------------

    def _emit(self, symbol: str, st: _SymbolState, out: AggregatorOutput) -> None:
        """Close the open 1s bar: append it (and the higher bars it completes), release entries."""
        bar = st.bar
        assert bar is not None
        if st.gaps and self._in_gap(st, bar.open_ms, bar.open_ms + SECOND_MS):
            bar.incomplete = True
        st.bar = None
        st.last_trade_id = st.open_max_id
        out.ack.extend(st.held)
        st.held = {}
        self._close_1s(symbol, st, bar, out)

    def _close_1s(self, symbol: str, st: _SymbolState, bar: BarAccumulator, out: AggregatorOutput) -> None:
        """Append a final 1s bar and roll it into the higher timeframes."""
        out.bars.append(bar.to_bar(symbol, "1s"))
        out.counts["bars_1s", symbol] += 1
        # Counted with the bar, not with the entries: an entry whose trades span an emitted bar
        # and the open one is acknowledged later, and after a crash its trades in the emitted
        # bar come back as already applied.
        out.counts["ticks_applied", symbol] += bar.count
        if not bar.real:
            out.counts["bars_filled", symbol] += 1
        if bar.incomplete:
            out.counts["bars_incomplete", symbol] += 1
        st.last_open_ms = bar.open_ms
        st.prev_close = bar.close
        end = bar.open_ms + SECOND_MS
        if st.gaps:
            st.gaps = [g for g in st.gaps if g[1] == 0 or g[1] >= end]
        # A higher bar goes out with its last 1s bar, or when a 1s bar of a later interval proves
        # its end passed inside a skipped gap.
        out.bars.extend(acc.to_bar(symbol, tf) for tf, acc in roll_up(st.forming, bar))

    def _fill_until(self, symbol: str, st: _SymbolState, open_ms: int, source: Source, out: AggregatorOutput) -> int:
        """Emit flat bars for the empty 1s intervals between the last emitted bar and ``open_ms``.

        Returns how many intervals were skipped instead (a run longer than ``max_fill_bars``).
        """
        if st.last_open_ms is None or st.prev_close is None:
            return 0
        missing = (open_ms - st.last_open_ms) // SECOND_MS - 1
        if missing <= 0:
            return 0
        if missing > self.max_fill_bars:
            return missing
        level = st.prev_close
        for _ in range(missing):
            t = st.last_open_ms + SECOND_MS
            flat = BarAccumulator.flat(t, level, source)
            if st.gaps and self._in_gap(st, t, t + SECOND_MS):
                flat.incomplete = True
            self._close_1s(symbol, st, flat, out)
        return 0
