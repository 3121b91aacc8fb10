"""Pure core of the aggregator: trades into time bars, with deferred acknowledgement.

No Redis, no clock, no I/O: entries come in as ``(ref, TickBatch)`` where ``ref`` is the
``(stream, entry id)`` to acknowledge, and time comes in as ``now_ms`` (ms since the epoch, UTC).

Bar semantics (per symbol, one timeframe, 1 s in this build):

- A bar covers the UTC-aligned, left-closed interval ``[open_time_ms, open_time_ms + span)``.
  A trade at ``ts_event_ms`` belongs to the bar opening at ``ts_event_ms - ts_event_ms % span``.
- Fields: open/high/low/close from trade prices in arrival order, ``volume`` (base) and
  ``quote_volume`` (sum of price x size), ``trade_count``, ``vwap`` = quote_volume / volume
  (clamped into [low, high] against float rounding),
  ``taker_buy_volume`` = volume of trades whose aggressor bought.
- A bar closes (is emitted, final) when a trade for a LATER interval arrives (event time passed
  its end), or from the timer once wall-clock ``now_ms >= close_time_ms + grace_ms``.
- Empty intervals between the last emitted bar and a new bar are emitted as flat bars at the
  previous close: volume 0, trade_count 0, vwap = previous close, ``filled=True``. They are
  emitted when the new bar STARTS (its first trade proves the empty intervals are over), and
  only when the gap is at most ``max_fill_bars`` intervals; a longer gap (an outage, most
  likely) is left visible and counted as ``fill_bars_skipped``. Nothing is filled before the
  first bar of a symbol is known.

Late policy: a trade for an interval that has already closed (emitted, filled, or skipped
over) is LATE: it is counted (``ticks_late``) and NOT applied, because an emitted bar is final
and the bar stream's explicit ids cannot take an insertion behind the top.

Restart policy: :meth:`BarAggregator.restore` drops all state and starts again from the last
bar of each symbol read back from Redis. Redelivered trades whose interval is at or before that
restored bar are ``ticks_already_applied`` (they are in the stream already), distinct from
late. A genuinely late trade that arrives for an interval before the restored bar is counted as
already applied too: after a restart the two cannot be told apart, and neither is applied.

Deferred acknowledgement: an entry is acknowledged in the same output that emits the last bar
any of its trades went into. While one of its trades sits in an open bar, the entry is held;
the runtime writes an output's bars and acknowledgements in one MULTI, so after a crash at any
point each trade of an unacknowledged entry is either in an emitted bar (skipped as already
applied when the entry is redelivered) or in none (applied again): exactly once either way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from unistream_common.keys import TIMEFRAME_MS, check_timeframe
from unistream_common.packets import Bar, Source, TickBatch

EntryRef = tuple[str, str]  # (stream, entry id)


@dataclass
class AggregatorOutput:
    """What one call produced.

    Attributes:
        bars: bars that are now final, in order per symbol (write them).
        ack: entries whose every bar is in ``bars`` or was emitted before (acknowledge them
            together with ``bars``).
        counts: increments of the core's counters, keyed ``(counter, symbol)``; counters are
            ticks_applied, ticks_late, ticks_already_applied, bars_emitted, bars_filled,
            fill_bars_skipped.
    """

    bars: list[Bar] = field(default_factory=list)
    ack: list[EntryRef] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def extend(self, other: AggregatorOutput) -> None:
        self.bars.extend(other.bars)
        self.ack.extend(other.ack)
        self.counts.update(other.counts)


class _OpenBar:
    """The bar being built: accumulators and the entries that contributed to it."""

    __slots__ = (
        "close",
        "high",
        "low",
        "open",
        "open_ms",
        "quote_volume",
        "refs",
        "source",
        "taker_buy_volume",
        "trade_count",
        "volume",
    )

    def __init__(self, open_ms: int, price: float, source: Source) -> None:
        self.open_ms = open_ms
        self.open = self.high = self.low = self.close = price
        self.volume = 0.0
        self.quote_volume = 0.0
        self.trade_count = 0
        self.taker_buy_volume = 0.0
        self.source: Source = source
        self.refs: dict[EntryRef, None] = {}  # ordered set


class _SymbolState:
    """One symbol's position in its bar stream."""

    __slots__ = ("bar", "horizon_ms", "last_open_ms", "prev_close")

    def __init__(self, last_open_ms: int | None = None, prev_close: float | None = None) -> None:
        self.last_open_ms = last_open_ms  # open time of the last emitted bar
        self.prev_close = prev_close  # its close: the level of filled bars
        self.horizon_ms = last_open_ms  # last bar found in Redis at restore: older is "already applied"
        self.bar: _OpenBar | None = None


class BarAggregator:
    """Builds time bars for any number of symbols (see the module docstring for the policies).

    Args:
        timeframe: bar length, one of the :data:`unistream_common.keys.TIMEFRAMES`.
        grace_ms: after a bar's end, how long the timer waits for stragglers before closing it.
        max_fill_bars: longest run of empty intervals that is filled with flat bars.
    """

    def __init__(self, timeframe: str = "1s", grace_ms: int = 250, max_fill_bars: int = 3_600) -> None:
        self.timeframe = check_timeframe(timeframe)
        self.span_ms = TIMEFRAME_MS[timeframe]
        if grace_ms < 0:
            raise ValueError(f"grace_ms was negative ({grace_ms})")
        if max_fill_bars < 0:
            raise ValueError(f"max_fill_bars was negative ({max_fill_bars})")
        self.grace_ms = grace_ms
        self.max_fill_bars = max_fill_bars
        self._symbols: dict[str, _SymbolState] = {}

    # --- state -----------------------------------------------------------------------------

    def restore(self, last_bars: Mapping[str, Bar | None]) -> None:
        """Forget everything, then continue each symbol after its last bar in the stream.

        ``last_bars`` maps symbol -> its newest emitted bar of this timeframe, or None for an
        empty stream. Open bars and held entries are dropped: the runtime redelivers those
        entries, and their trades are applied again.
        """
        self._symbols = {}
        for symbol, bar in last_bars.items():
            if bar is None:
                continue
            if bar.timeframe != self.timeframe or bar.symbol != symbol:
                raise ValueError(f"restore got a {bar.bar_type} bar for {symbol}-{self.timeframe}")
            self._symbols[symbol] = _SymbolState(bar.open_time_ms, bar.close)

    def held(self) -> list[EntryRef]:
        """Entries delivered but not yet acknowledgeable (their trades sit in open bars)."""
        return [ref for st in self._symbols.values() if st.bar for ref in st.bar.refs]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-symbol position, for /stats."""
        return {
            symbol: {
                "last_bar_open_ms": st.last_open_ms,
                "open_bar_open_ms": st.bar.open_ms if st.bar else None,
                "open_bar_trades": st.bar.trade_count if st.bar else 0,
                "held_entries": len(st.bar.refs) if st.bar else 0,
                "restored_from_ms": st.horizon_ms,
            }
            for symbol, st in sorted(self._symbols.items())
        }

    # --- input -----------------------------------------------------------------------------

    def apply(self, entries: Iterable[tuple[EntryRef, TickBatch]]) -> AggregatorOutput:
        """Apply tick batches in delivery order; return closed bars and acknowledgeable entries."""
        out = AggregatorOutput()
        span = self.span_ms
        for ref, batch in entries:
            symbol = batch.symbol
            st = self._symbols.get(symbol)
            if st is None:
                st = self._symbols[symbol] = _SymbolState()
            contributed = False
            for tick in batch.ticks:
                ts = tick.ts_event_ms
                open_ms = ts - ts % span
                bar = st.bar
                if bar is None or open_ms != bar.open_ms:
                    closed_before = (bar is not None and open_ms < bar.open_ms) or (
                        st.last_open_ms is not None and open_ms <= st.last_open_ms
                    )
                    if closed_before:
                        if st.horizon_ms is not None and open_ms <= st.horizon_ms:
                            out.counts["ticks_already_applied", symbol] += 1
                        else:
                            out.counts["ticks_late", symbol] += 1
                        continue
                    # A later interval: event time has passed the open bar's end.
                    if bar is not None:
                        self._emit(symbol, st, out)
                    self._fill_until(symbol, st, open_ms, batch.source, out)
                    bar = st.bar = _OpenBar(open_ms, tick.price, batch.source)
                price, size = tick.price, tick.size
                if price > bar.high:
                    bar.high = price
                elif price < bar.low:
                    bar.low = price
                bar.close = price
                bar.volume += size
                bar.quote_volume += price * size
                bar.trade_count += 1
                if tick.aggressor_side == "BUY":
                    bar.taker_buy_volume += size
                contributed = True
                out.counts["ticks_applied", symbol] += 1
            if contributed:
                assert st.bar is not None
                st.bar.refs[ref] = None
            else:
                out.ack.append(ref)
        out.ack = list(dict.fromkeys(out.ack))
        return out

    def due_symbols(self, now_ms: int) -> list[str]:
        """Symbols whose open bar the timer may close at ``now_ms`` (end + grace has passed)."""
        return [
            symbol
            for symbol, st in self._symbols.items()
            if st.bar is not None and now_ms >= st.bar.open_ms + self.span_ms + self.grace_ms
        ]

    def close_due(self, now_ms: int, symbols: Iterable[str] | None = None) -> AggregatorOutput:
        """Timer: close open bars whose end + grace is at or before ``now_ms``.

        ``symbols`` restricts this to symbols the caller knows have no undelivered trades
        (closing a bar while its trades are still queued would make them late).
        """
        out = AggregatorOutput()
        allowed = set(self._symbols) if symbols is None else set(symbols)
        for symbol in self.due_symbols(now_ms):
            if symbol in allowed:
                self._emit(symbol, self._symbols[symbol], out)
        return out

    # --- output ----------------------------------------------------------------------------

    def _emit(self, symbol: str, st: _SymbolState, out: AggregatorOutput) -> None:
        """Close the open bar: append it to ``out`` and release the entries it held."""
        bar = st.bar
        assert bar is not None
        vwap = min(max(bar.quote_volume / bar.volume, bar.low), bar.high)  # float sums can stray a ulp
        out.bars.append(
            Bar(
                symbol=symbol,
                timeframe=self.timeframe,  # type: ignore[arg-type]
                open_time_ms=bar.open_ms,
                close_time_ms=bar.open_ms + self.span_ms,
                open=bar.open,
                high=bar.high,
                low=bar.low,
                close=bar.close,
                volume=bar.volume,
                quote_volume=bar.quote_volume,
                trade_count=bar.trade_count,
                vwap=vwap,
                taker_buy_volume=min(bar.taker_buy_volume, bar.volume),
                filled=False,
                source=bar.source,
            )
        )
        out.counts["bars_emitted", symbol] += 1
        out.ack.extend(bar.refs)
        st.last_open_ms = bar.open_ms
        st.prev_close = bar.close
        st.bar = None

    def _fill_until(self, symbol: str, st: _SymbolState, open_ms: int, source: Source, out: AggregatorOutput) -> None:
        """Emit flat bars for the empty intervals between the last emitted bar and ``open_ms``."""
        if st.last_open_ms is None or st.prev_close is None:
            return
        missing = (open_ms - st.last_open_ms) // self.span_ms - 1
        if missing <= 0:
            return
        if missing > self.max_fill_bars:
            out.counts["fill_bars_skipped", symbol] += missing
            return
        level = st.prev_close
        for k in range(1, missing + 1):
            t = st.last_open_ms + k * self.span_ms
            out.bars.append(
                Bar(
                    symbol=symbol,
                    timeframe=self.timeframe,  # type: ignore[arg-type]
                    open_time_ms=t,
                    close_time_ms=t + self.span_ms,
                    open=level,
                    high=level,
                    low=level,
                    close=level,
                    volume=0.0,
                    quote_volume=0.0,
                    trade_count=0,
                    vwap=level,
                    taker_buy_volume=0.0,
                    filled=True,
                    source=source,
                )
            )
        out.counts["bars_emitted", symbol] += missing
        out.counts["bars_filled", symbol] += missing
        st.last_open_ms = open_ms - self.span_ms
