"""Multi-timeframe bar windows: per symbol the last closed 1s, 1m, 1h and 1d bars as normalised channels (pure).

:class:`BarWindows` keeps, per ``(symbol, timeframe)``, a bounded buffer of CLOSED bars, sorted and
unique by ``open_time_ms``. History bars (``is_history=True``, from ``md:history:*``) and live bars
(``md:bars:*``) may arrive in any order and overlap: a duplicate open time is ignored, except that
a live bar replaces a history bar (the aggregator's bar is the source of truth). Each buffer holds
at most its capacity; the oldest bars go first, so memory does not grow with run time.

:meth:`BarWindows.window` turns the last ``bars`` bars that closed at or before ``until_ms`` into a
``(len(CHANNELS), bars)`` float32 array, oldest bar first, newest in the last column. With fewer
such bars than the window holds, the real bars sit at the right, the left is zero and the number
of real bars is returned beside the array (``n_real``): warm-up is always reported, never hidden.

Normalisation uses only the window's own (past) bars. ``sigma`` is the root-mean-square 1-bar log
return of the closes (floored at :data:`SIGMA_FLOOR`); prices are divided by it so the network sees
the shape of the path, the same in a quiet and in a busy market:

- ``close_ret = log(c_t / c_{t-1}) / sigma`` (the first column uses the close of the buffered bar
  just before the window; without one its return is 0 and is left out of ``sigma``),
- ``open_rel = log(o_t / c_t) / sigma``, ``high_rel = log(h_t / c_t) / sigma``,
  ``low_rel = log(l_t / c_t) / sigma``,
- ``volume_z``: z-score of ``log1p(quote_volume)`` over the window's real bars (0 when constant).

Every value is clipped to ``[-CLIP, CLIP]`` and is finite.

Causality: the window at ``until_ms`` is a function of the buffered bars that closed at or before
``until_ms`` and nothing else. Bars closing later never change it, as long as the buffer still
holds the bars the window needs (it keeps the newest ``capacity`` bars, so ask for recent times).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from unistream_common.packets import Bar
from unistream_common.timeframes import TIMEFRAME_MS, TIMEFRAMES

CHANNELS: tuple[str, ...] = ("open_rel", "high_rel", "low_rel", "close_ret", "volume_z")
N_CHANNELS = len(CHANNELS)

DEFAULT_WINDOW_BARS = 300
# window + 1: the extra (oldest) bar's close gives the window's first column its return. 1s keeps more
# so that a training packet for a bar that arrives a little late still finds its full window.
DEFAULT_CAPACITY: dict[str, int] = {"1s": 1_000, "1m": 301, "1h": 301, "1d": 301}

SIGMA_FLOOR = 1e-5  # 0.1 basis point per bar: below this the market is not moving and dividing adds noise
CLIP = 10.0
_STD_FLOOR = 1e-6


def window_sigma(returns: np.ndarray) -> float:
    """RMS of 1-bar log returns (dimensionless), at least :data:`SIGMA_FLOOR`.

    RMS rather than standard deviation: over a window the mean return is noise, and removing it
    would understate how far prices actually moved.
    """
    if returns.size == 0:
        return SIGMA_FLOOR
    return max(SIGMA_FLOOR, math.sqrt(float(np.mean(returns.astype(np.float64) ** 2))))


def normalise(bars: list[Bar], prev_close: float | None, width: int) -> np.ndarray:
    """Channels of ``bars`` (oldest first, at most ``width``) right-aligned in a ``(N_CHANNELS, width)`` array.

    ``prev_close`` is the close of the bar before ``bars[0]`` when known. Columns left of the real
    bars are 0. float32, finite, clipped to ``[-CLIP, CLIP]``.
    """
    k = len(bars)
    if k > width:
        raise ValueError(f"{k} bars do not fit a window of {width}")
    out = np.zeros((N_CHANNELS, width), dtype=np.float32)
    if k == 0:
        return out
    open_ = np.fromiter((b.open for b in bars), np.float64, k)
    high = np.fromiter((b.high for b in bars), np.float64, k)
    low = np.fromiter((b.low for b in bars), np.float64, k)
    close = np.fromiter((b.close for b in bars), np.float64, k)
    quote_volume = np.fromiter((b.quote_volume for b in bars), np.float64, k)

    log_close = np.log(close)
    returns = np.empty(k)
    returns[1:] = np.diff(log_close)
    if prev_close is not None:
        returns[0] = log_close[0] - math.log(prev_close)
        sigma = window_sigma(returns)
    else:
        returns[0] = 0.0
        sigma = window_sigma(returns[1:])

    log_qv = np.log1p(quote_volume)
    std = float(log_qv.std())
    volume_z = (log_qv - log_qv.mean()) / std if std >= _STD_FLOOR else np.zeros(k)

    channels = np.stack(
        [
            (np.log(open_) - log_close) / sigma,
            (np.log(high) - log_close) / sigma,
            (np.log(low) - log_close) / sigma,
            returns / sigma,
            volume_z,
        ]
    )
    channels = np.clip(np.nan_to_num(channels, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP)
    out[:, width - k :] = channels
    return out


@dataclass
class _Buffer:
    """Closed bars of one (symbol, timeframe), sorted and unique by open time."""

    capacity: int
    span_ms: int
    opens: list[int] = field(default_factory=list)  # open_time_ms of ``bars``, for bisect
    bars: list[Bar] = field(default_factory=list)
    version: int = 0  # changes whenever ``bars`` does
    # Window length -> (version, end, array, n_real) of the last window built: a 1h window is asked
    # for every second and changes once an hour.
    cache: dict[int, tuple[int, int, np.ndarray, int]] = field(default_factory=dict)

    def end(self, until_ms: int) -> int:
        """Index one past the newest bar that closed at or before ``until_ms``."""
        return bisect.bisect_right(self.opens, until_ms - self.span_ms)


class BarWindows:
    """Bounded per-(symbol, timeframe) buffers of closed bars, and their normalised windows.

    ``capacity`` maps timeframe -> bars kept (default :data:`DEFAULT_CAPACITY`; missing timeframes
    take the default). ``symbols``, when given, is the set of symbols accepted; a bar of another
    symbol is refused and counted, so memory is bounded by ``len(symbols) * sum(capacity)`` bars.
    ``events`` counts what :meth:`add` did (``bars_added``, ``bars_duplicate``,
    ``bars_history_replaced``, ``bars_too_old``, ``bars_unknown_symbol``, ``bars_evicted``).
    """

    def __init__(self, capacity: Mapping[str, int] | None = None, symbols: Collection[str] | None = None) -> None:
        caps = dict(DEFAULT_CAPACITY)
        for tf, n in (capacity or {}).items():
            if tf not in TIMEFRAMES:
                raise ValueError(f"{tf!r} is not a timeframe; use one of {', '.join(TIMEFRAMES)}")
            if n < 1:
                raise ValueError(f"the {tf} buffer capacity must be at least 1 bar, was {n}")
            caps[tf] = n
        self.capacity: dict[str, int] = caps
        self.symbols: frozenset[str] | None = frozenset(symbols) if symbols is not None else None
        self.events: Counter[str] = Counter()
        self._buffers: dict[tuple[str, str], _Buffer] = {}

    def _buffer(self, symbol: str, timeframe: str) -> _Buffer:
        key = (symbol, timeframe)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _Buffer(self.capacity[timeframe], TIMEFRAME_MS[timeframe])
        return buf

    def add(self, bar: Bar) -> bool:
        """Buffer one closed bar (history or live, any order); True when the buffer changed.

        A bar with an open time already buffered is ignored, unless it is live and the buffered one
        is history: then it replaces it. A bar older than everything in a full buffer is ignored.
        """
        if self.symbols is not None and bar.symbol not in self.symbols:
            self.events["bars_unknown_symbol"] += 1
            return False
        buf = self._buffer(bar.symbol, bar.timeframe)
        i = bisect.bisect_left(buf.opens, bar.open_time_ms)
        if i < len(buf.opens) and buf.opens[i] == bar.open_time_ms:
            if buf.bars[i].is_history and not bar.is_history:
                buf.bars[i] = bar
                buf.version += 1
                self.events["bars_history_replaced"] += 1
                return True
            self.events["bars_duplicate"] += 1
            return False
        if len(buf.bars) >= buf.capacity and i == 0:
            self.events["bars_too_old"] += 1
            return False
        buf.opens.insert(i, bar.open_time_ms)
        buf.bars.insert(i, bar)
        buf.version += 1
        self.events["bars_added"] += 1
        excess = len(buf.bars) - buf.capacity
        if excess > 0:
            del buf.opens[:excess], buf.bars[:excess]
            self.events["bars_evicted"] += excess
        return True

    def size(self, symbol: str, timeframe: str) -> int:
        """Bars buffered for ``(symbol, timeframe)``."""
        buf = self._buffers.get((symbol, timeframe))
        return len(buf.bars) if buf else 0

    def latest(self, symbol: str, timeframe: str) -> Bar | None:
        """The newest buffered bar of ``(symbol, timeframe)``; None if none."""
        buf = self._buffers.get((symbol, timeframe))
        return buf.bars[-1] if buf and buf.bars else None

    def newest_close_ms(self, symbol: str, timeframe: str, until_ms: int) -> int | None:
        """Close time of the newest buffered bar that closed at or before ``until_ms``; None if none.

        ``until_ms`` minus this is how stale the window is (history that ends before live bars start).
        """
        buf = self._buffers.get((symbol, timeframe))
        if buf is None:
            return None
        end = buf.end(until_ms)
        return buf.opens[end - 1] + buf.span_ms if end else None

    def _check_bars(self, timeframe: str, bars: int) -> None:
        if timeframe not in TIMEFRAMES:
            raise ValueError(f"{timeframe!r} is not a timeframe; use one of {', '.join(TIMEFRAMES)}")
        if not 1 <= bars <= self.capacity[timeframe]:
            raise ValueError(
                f"a {timeframe} window of {bars} bars does not fit the buffer of {self.capacity[timeframe]} bars"
            )

    def n_real(self, symbol: str, timeframe: str, until_ms: int, bars: int = DEFAULT_WINDOW_BARS) -> int:
        """Real bars in the window at ``until_ms`` (0..bars), without building it."""
        self._check_bars(timeframe, bars)
        buf = self._buffers.get((symbol, timeframe))
        return min(bars, buf.end(until_ms)) if buf else 0

    def window(
        self, symbol: str, timeframe: str, until_ms: int, bars: int = DEFAULT_WINDOW_BARS
    ) -> tuple[np.ndarray, int]:
        """The normalised window of the last ``bars`` bars closed at or before ``until_ms`` (ms).

        Returns ``(array, n_real)``: ``array`` float32 of shape ``(N_CHANNELS, bars)``, oldest column
        first, left-padded with zeros when only ``n_real < bars`` bars are available. The array is
        read-only (the same window asked for again is not built again).
        """
        self._check_bars(timeframe, bars)
        buf = self._buffers.get((symbol, timeframe))
        if buf is None:
            return np.zeros((N_CHANNELS, bars), np.float32), 0
        end = buf.end(until_ms)
        hit = buf.cache.get(bars)
        if hit is not None and hit[0] == buf.version and hit[1] == end:
            return hit[2], hit[3]
        start = max(0, end - bars)
        prev_close = buf.bars[start - 1].close if start > 0 else None
        arr = normalise(buf.bars[start:end], prev_close, bars)
        arr.setflags(write=False)  # shared with the cache: copy it to change it
        buf.cache[bars] = (buf.version, end, arr, end - start)
        return arr, end - start

    def windows(self, symbol: str, until_ms: int, bars: int = DEFAULT_WINDOW_BARS) -> tuple[np.ndarray, dict[str, int]]:
        """All four windows stacked as ``(len(TIMEFRAMES), N_CHANNELS, bars)`` float32, and n_real per timeframe."""
        out = np.zeros((len(TIMEFRAMES), N_CHANNELS, bars), np.float32)
        n_real: dict[str, int] = {}
        for j, tf in enumerate(TIMEFRAMES):
            out[j], n_real[tf] = self.window(symbol, tf, until_ms, bars)
        return out, n_real

    def fill(self, symbol: str, until_ms: int, bars: int = DEFAULT_WINDOW_BARS) -> dict[str, float]:
        """Share of each timeframe's window at ``until_ms`` that is real bars, in [0, 1]."""
        return {tf: self.n_real(symbol, tf, until_ms, bars) / bars for tf in TIMEFRAMES}

    def warm(self, symbol: str, until_ms: int, bars: int = DEFAULT_WINDOW_BARS) -> bool:
        """True when all four windows at ``until_ms`` are full of real bars."""
        return all(self.n_real(symbol, tf, until_ms, bars) == bars for tf in TIMEFRAMES)
