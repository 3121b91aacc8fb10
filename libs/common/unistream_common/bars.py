"""The bar core: what a bar is, how trades make one and how bars roll up into longer ones.

Pure (no I/O, no clock). The aggregator builds the live bars with it, ingest its warm-up history
from the replay files, the offline tools whatever bars they need: one definition, so a bar of
the same trades is the same bar everywhere. Times are integer ms since the epoch (UTC); the
timeframes and their spans are :mod:`unistream_common.timeframes`'.

- A bar covers the UTC-aligned, left-closed interval ``[open_time_ms, open_time_ms + span)``; a
  trade at ``ts_event_ms`` belongs to the bar opening at :func:`interval_open_ms`.
- open/high/low/close are trade prices in trade order. ``volume`` (base), ``quote_volume``,
  ``taker_buy_volume``, ``taker_buy_quote_volume`` (of the trades whose aggressor bought) are
  summed EXACTLY: sizes and notionals in integer units of 1e-8 (Binance's finest step), so a bar
  does not depend on how its trades were batched or rolled up, and each float of a bar is the
  correctly rounded value of the exact decimal sum.
- A trade's notional is Binance's ``quoteQty``: price x size truncated to 8 decimals
  (:func:`notional_units`), not the exact product (summed, those differ by ~1e-7 relative an hour
  on a pair like ETHBTC), so quote volumes equal Binance's klines.
- ``vwap`` is quote volume / volume, kept within [low, high]; the close when there is no volume.
- ``trade_count`` counts trades (an aggregated trade counts as the trades it stands for, when the
  source says so).
- An interval without trades is a filled bar: flat at the previous close, volume 0, trade count
  0. Rolled up into a longer bar, a filled bar sets only the close; a longer bar made only of
  filled bars is filled itself.

Longer bars (1m, 1h, 1d) are the roll-up of 1s bars (:func:`roll_up`), with sums that are exact,
so rolling up 1m bars gives the same 1h bar as rolling up the 1s bars directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

import msgspec
import numpy as np

from unistream_common.packets import Bar, Source
from unistream_common.timeframes import TIMEFRAME_MS, TIMEFRAMES

SCALE = 100_000_000  # sizes, prices and notionals in integer units of 1e-8
SECOND_MS = TIMEFRAME_MS["1s"]
HIGHER_TIMEFRAMES: tuple[str, ...] = TIMEFRAMES[1:]  # rolled up from the 1s bars
# Below this, a size or notional in 1e-8 units and every product :func:`sum_trades` forms fit in
# a signed 64-bit integer (with room for float rounding); a trade beyond it is summed one by one.
_INT64_SAFE = float(2**62)


def interval_open_ms(ts_ms: int, span_ms: int) -> int:
    """Open time (ms) of the UTC-aligned interval of ``span_ms`` that holds ``ts_ms``."""
    return ts_ms - ts_ms % span_ms


def units(x: float) -> int:
    """``x`` in integer units of 1e-8 (exact for decimals of at most 8 places below ~2e7)."""
    return round(x * SCALE)


def notional_units(price_units: int, size_units: int) -> int:
    """A trade's notional as Binance reports it (``quoteQty``), in units of 1e-8: price x size
    truncated to 8 decimals. Both arguments in units of 1e-8 and non-negative."""
    return price_units * size_units // SCALE


class BarAccumulator(msgspec.Struct):
    """A bar being built: float prices, integer sums in 1e-8 units (quote: of truncated notionals).

    Its fields are part of the aggregator's checkpoint (JSON): rename none of them.
    """

    open_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: int = 0
    quote: int = 0
    taker: int = 0
    count: int = 0
    real: bool = False  # has trades (or, for a rolled-up bar, a part with trades)
    incomplete: bool = False
    source: Source = "SYNTHETIC"
    taker_quote: int = 0  # quote volume of the trades whose aggressor bought

    @classmethod
    def flat(cls, open_ms: int, level: float, source: Source) -> BarAccumulator:
        """An interval without trades so far, at ``level`` (the previous close): a filled bar as it
        stands, and the start of a rolled-up bar."""
        return cls(open_ms, level, level, level, level, source=source)

    @classmethod
    def opening(cls, open_ms: int, price: float, source: Source) -> BarAccumulator:
        """The bar a first trade at ``price`` opens (add the trade itself with :meth:`add_trade`)."""
        return cls(open_ms, price, price, price, price, real=True, source=source)

    @classmethod
    def of_bar(cls, bar: Bar) -> BarAccumulator:
        """The accumulator of a finished bar (read back from a stream, or given as history).

        Integer sums are recovered exactly from the floats: every sum has at most 8 decimals.
        """
        return cls(
            bar.open_time_ms, bar.open, bar.high, bar.low, bar.close,
            units(bar.volume), units(bar.quote_volume), units(bar.taker_buy_volume),
            bar.trade_count, not bar.filled, bar.incomplete, bar.source, units(bar.taker_buy_quote_volume),
        )  # fmt: skip

    def add_trade(self, price: float, size: float, taker_bought: bool, count: int = 1) -> None:
        """Add one trade of this bar's interval, after every trade added before (trade order).

        ``price`` and ``size`` (base asset) positive; ``taker_bought``: the aggressor bought
        (Binance ``m`` false); ``count``: the trades it stands for (1 but for aggregated trades).
        The bar must have been opened (:meth:`opening`) at its first trade.
        """
        if price > self.high:
            self.high = price
        elif price < self.low:
            self.low = price
        self.close = price
        size_units = round(size * SCALE)
        self.volume += size_units
        notional = round(price * SCALE) * size_units // SCALE  # notional_units, inlined: once per trade
        self.quote += notional
        if taker_bought:
            self.taker += size_units
            self.taker_quote += notional
        self.count += count

    def add_bar(self, part: BarAccumulator) -> None:
        """Roll ``part`` (a shorter bar inside this one, or the next trades of the same interval)
        into this bar, after every part added before; filled parts set only the close."""
        if part.real:
            if self.real:
                self.high = max(self.high, part.high)
                self.low = min(self.low, part.low)
            else:
                self.open, self.high, self.low = part.open, part.high, part.low
                self.real = True
            self.source = part.source
        self.close = part.close
        self.volume += part.volume
        self.quote += part.quote
        self.taker += part.taker
        self.taker_quote += part.taker_quote
        self.count += part.count
        if part.incomplete:
            self.incomplete = True

    def to_bar(self, symbol: str, timeframe: str, *, is_history: bool = False) -> Bar:
        """The :class:`Bar` packet of this bar as it stands, ``timeframe`` long."""
        span = TIMEFRAME_MS[timeframe]
        if self.real:
            vwap = min(max(self.quote / self.volume, self.low), self.high) if self.volume else self.close
        else:
            vwap = self.close
        return Bar(
            symbol=symbol,
            timeframe=timeframe,  # type: ignore[arg-type]
            open_time_ms=self.open_ms,
            close_time_ms=self.open_ms + span,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=self.volume / SCALE,
            quote_volume=self.quote / SCALE,
            trade_count=self.count,
            vwap=vwap,
            taker_buy_volume=self.taker / SCALE,
            taker_buy_quote_volume=self.taker_quote / SCALE,
            filled=not self.real,
            source=self.source,
            is_history=is_history,
            incomplete=self.incomplete,
        )


def roll_up(
    forming: dict[str, BarAccumulator],
    part: BarAccumulator,
    part_timeframe: str = "1s",
    timeframes: Iterable[str] = HIGHER_TIMEFRAMES,
) -> list[tuple[str, BarAccumulator]]:
    """Roll a finished ``part`` (a ``part_timeframe`` bar, parts in time order) into the longer
    bars being formed, ``forming`` (timeframe -> bar so far; updated in place).

    Returns the longer bars that are now finished, per timeframe in ``timeframes``' order: one
    whose interval ``part`` does not belong to (its end passed while no part came: a gap), then
    one that ``part`` ends. A longer bar starts flat at the close of its first part. Raises
    ValueError for a timeframe that is not a multiple of ``part_timeframe`` longer.
    """
    part_span = TIMEFRAME_MS[part_timeframe]
    end = part.open_ms + part_span
    done: list[tuple[str, BarAccumulator]] = []
    for tf in timeframes:
        span = TIMEFRAME_MS[tf]
        if span <= part_span or span % part_span:
            raise ValueError(f"{tf} bars are not rolled up from {part_timeframe} bars")
        open_ms = part.open_ms - part.open_ms % span
        acc = forming.get(tf)
        if acc is not None and acc.open_ms != open_ms:
            done.append((tf, acc))
            acc = None
        if acc is None:
            acc = forming[tf] = BarAccumulator.flat(open_ms, part.close, part.source)
        acc.add_bar(part)
        if end == open_ms + span:
            done.append((tf, acc))
            del forming[tf]
    return done


def sum_trades(
    ts_event_ms: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    taker_bought: np.ndarray,
    span_ms: int,
    source: Source,
    count: np.ndarray | None = None,
    last: int | None = None,
) -> list[BarAccumulator]:
    """:meth:`BarAccumulator.add_trade` of many trades at once (numpy): one bar per interval of
    ``span_ms`` that holds trades, oldest first; the last ``last`` of them only, when given.

    Trades in time order (no trade of an earlier interval after a later one) with positive prices
    and sizes; ``taker_bought`` bool; ``count`` per trade (default 1 each). The same integer
    arithmetic as :meth:`~BarAccumulator.add_trade`, so the bars are equal to adding the trades one
    by one (the sums are split into whole units and remainders so that no 64-bit sum overflows).
    """
    n = len(ts_event_ms)
    if n == 0:
        return []
    ts = np.asarray(ts_event_ms, np.int64)
    opens = ts - ts % span_ms
    starts = np.flatnonzero(np.concatenate(([True], opens[1:] != opens[:-1])))
    if last is not None:
        starts = starts[-last:] if last > 0 else starts[:0]
        if len(starts) == 0:
            return []
        first = int(starts[0])
        ts, opens, starts = ts[first:], opens[first:], starts - first
        price, size, taker_bought = price[first:], size[first:], taker_bought[first:]
        count = count[first:] if count is not None else None
    price = np.asarray(price, np.float64)
    size = np.asarray(size, np.float64)
    bought = np.asarray(taker_bought, bool)
    if float(size.max()) * SCALE >= _INT64_SAFE or float((price * size).max()) * SCALE >= _INT64_SAFE:
        return _sum_one_by_one(opens, price, size, bought, starts, source, count)
    price_units = np.rint(price * SCALE).astype(np.int64)
    size_units = np.rint(size * SCALE).astype(np.int64)
    # notional = price_units * size_units // SCALE without the 128-bit product: split both factors
    # into whole units and remainders (p = ph*S + pl, q = qh*S + ql): p*qh + ph*ql + (pl*ql)//S.
    ph, pl = np.divmod(price_units, SCALE)
    qh, ql = np.divmod(size_units, SCALE)
    notional = price_units * qh + ph * ql + (pl * ql) // SCALE
    nh, nl = np.divmod(notional, SCALE)
    sums = [
        np.add.reduceat(x, starts).tolist()
        for x in (qh, ql, nh, nl, qh * bought, ql * bought, nh * bought, nl * bought)
    ]
    counts = (
        np.add.reduceat(np.asarray(count, np.int64), starts) if count is not None else np.diff(starts, append=len(ts))
    ).tolist()
    highs = np.maximum.reduceat(price, starts).tolist()
    lows = np.minimum.reduceat(price, starts).tolist()
    first_price = price[starts].tolist()
    last_price = price[np.append(starts[1:], len(ts)) - 1].tolist()
    out = []
    for k, open_ms in enumerate(opens[starts].tolist()):
        out.append(
            BarAccumulator(
                open_ms, first_price[k], highs[k], lows[k], last_price[k],
                sums[0][k] * SCALE + sums[1][k], sums[2][k] * SCALE + sums[3][k], sums[4][k] * SCALE + sums[5][k],
                counts[k], True, False, source, sums[6][k] * SCALE + sums[7][k],
            )
        )  # fmt: skip
    return out


def _sum_one_by_one(
    opens: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    bought: np.ndarray,
    starts: np.ndarray,
    source: Source,
    count: np.ndarray | None,
) -> list[BarAccumulator]:
    """:func:`sum_trades` for trades too large for 64-bit sums: Python integers, one trade at a time."""
    counts = [1] * len(opens) if count is None else np.asarray(count, np.int64).tolist()
    out: list[BarAccumulator] = []
    bounds = [*starts.tolist(), len(opens)]
    prices, sizes, buys = price.tolist(), size.tolist(), bought.tolist()
    for lo, hi in pairwise(bounds):
        acc = BarAccumulator.opening(int(opens[lo]), prices[lo], source)
        for k in range(lo, hi):
            acc.add_trade(prices[k], sizes[k], buys[k], counts[k])
        out.append(acc)
    return out
