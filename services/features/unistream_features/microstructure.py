"""The tick cache and the market-microstructure features computed from it (pure).

:class:`TickCache` is a fixed-capacity ring of the most recent trades of one symbol, in arrival
(trade) order, with de-duplication by ``(trade_id, ts_event_ms)`` so that a rebuild from Redis
followed by a redelivery of the same batches does not count a trade twice.

:func:`microstructure` summarises the trades in a few trailing horizons before a bar's close time.
Only trades strictly before that time are used: the state of a bar never sees the future.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from unistream_common.packets import Tick

HORIZONS_S: tuple[int, ...] = (10, 60, 300)

FEATURES: tuple[str, ...] = (
    "trade_rate",  # log1p(trades per second)
    "volume_imbalance",  # (buy - sell) / (buy + sell) base volume, in [-1, 1]
    "mean_trade_notional",  # log1p(mean price * size), quote currency
    "max_trade_notional",  # log1p(max price * size), quote currency
    "realised_vol",  # log1p(sqrt(sum of squared tick log returns) in basis points)
    "signed_notional",  # sign(x) * log1p(|x|), x = buy minus sell notional, quote currency
    "vwap_dev",  # log(last price / vwap) in basis points, clipped to +-50, divided by 10
)
N_FEATURES = len(FEATURES)


def feature_names(horizons_s: Sequence[int] = HORIZONS_S) -> list[str]:
    """Names of the values :func:`microstructure` returns, in order (``trade_rate_10s``...)."""
    return [f"{f}_{h}s" for h in horizons_s for f in FEATURES]


class TickCache:
    """The last ``capacity`` trades of one symbol as parallel numpy rings."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"tick cache capacity must be at least 1, was {capacity}")
        self.capacity = capacity
        self.ts_ms = np.zeros(capacity, np.int64)
        self.price = np.zeros(capacity, np.float64)
        self.size = np.zeros(capacity, np.float64)
        self.buy = np.zeros(capacity, np.bool_)
        self.trade_id = np.zeros(capacity, np.int64)
        self._next = 0  # slot the next trade goes to
        self._len = 0
        self._keys: set[tuple[int, int]] = set()

    def __len__(self) -> int:
        return self._len

    def clear(self) -> None:
        self._next = 0
        self._len = 0
        self._keys.clear()

    @property
    def newest_ts_ms(self) -> int | None:
        """Venue time of the newest cached trade, ms; None when empty."""
        return int(self.ts_ms[(self._next - 1) % self.capacity]) if self._len else None

    def push(self, ticks: Sequence[Tick]) -> int:
        """Append trades not already cached; returns how many were new."""
        added = 0
        for t in ticks:
            key = (t.trade_id, t.ts_event_ms)
            if key in self._keys:
                continue
            i = self._next
            if self._len == self.capacity:
                self._keys.discard((int(self.trade_id[i]), int(self.ts_ms[i])))
            else:
                self._len += 1
            self.ts_ms[i] = t.ts_event_ms
            self.price[i] = t.price
            self.size[i] = t.size
            self.buy[i] = t.aggressor_side == "BUY"
            self.trade_id[i] = t.trade_id
            self._keys.add(key)
            self._next = (i + 1) % self.capacity
            added += 1
        return added

    def ordered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ts_ms, price, size, buy) of the cached trades, oldest first (copies)."""
        if self._len < self.capacity:
            sl = slice(0, self._len)
            return self.ts_ms[sl].copy(), self.price[sl].copy(), self.size[sl].copy(), self.buy[sl].copy()
        order = np.r_[self._next : self.capacity, 0 : self._next]
        return self.ts_ms[order], self.price[order], self.size[order], self.buy[order]


def microstructure(cache: TickCache, end_ms: int, horizons_s: Sequence[int] = HORIZONS_S) -> tuple[np.ndarray, float]:
    """Microstructure of the trades in ``[end_ms - h, end_ms)`` for each horizon ``h``.

    Returns ``(values, coverage)``: ``values`` is float32 of length ``N_FEATURES * len(horizons_s)``
    (see :func:`feature_names`), 0 for a horizon without trades; ``coverage`` in [0, 1] is how much
    of the longest horizon the cache reaches back to (a cache of 5,000 trades holds less than 300 s
    of a busy market, and the state should say so).
    """
    out = np.zeros(N_FEATURES * len(horizons_s), np.float32)
    if not len(cache):
        return out, 0.0
    ts, price, size, buy = cache.ordered()
    before = ts < end_ms
    longest_ms = 1000 * max(horizons_s)
    coverage = min(1.0, max(0.0, (end_ms - float(ts[0])) / longest_ms)) if before.any() else 0.0
    notional = price * size
    for j, h in enumerate(horizons_s):
        m = before & (ts >= end_ms - 1000 * h)
        n = int(m.sum())
        if n == 0:
            continue
        p, sz, nt, b = price[m], size[m], notional[m], buy[m]
        buy_vol = float(sz[b].sum())
        sell_vol = float(sz[~b].sum())
        tick_returns = np.diff(np.log(p))
        realised_bp = 1e4 * math.sqrt(float(np.sum(tick_returns**2)))
        signed = float(nt[b].sum() - nt[~b].sum())
        vwap = float(nt.sum() / sz.sum())
        dev_bp = 1e4 * math.log(float(p[-1]) / vwap)
        out[j * N_FEATURES : (j + 1) * N_FEATURES] = (
            math.log1p(n / h),
            (buy_vol - sell_vol) / (buy_vol + sell_vol),
            math.log1p(float(nt.mean())),
            math.log1p(float(nt.max())),
            math.log1p(realised_bp),
            math.copysign(math.log1p(abs(signed)), signed),
            max(-50.0, min(50.0, dev_bp)) / 10.0,
        )
    return out, coverage
