"""The tick cache and the market-microstructure features computed from it (pure).

:class:`TickCache` holds one symbol's most recent trades: at most ``capacity`` of them (5,000) and
none older than ``max_age_ms`` (300 s) before the newest, de-duplicated by ``(trade_id, ts_event_ms)``
so that a rebuild from Redis followed by a redelivery does not count a trade twice. Memory is fixed.

For each trailing horizon ``h`` (:data:`HORIZONS_S`) the trades with ``end_ms - h <= ts < end_ms``
are summarised in :data:`FEATURES`; only trades strictly before ``end_ms`` count, so the features of
a bar that closes at ``end_ms`` never see a trade of the next bar. Trades are taken in venue-time
order (``ts_event_ms``; trades of the same millisecond keep the cache's order, which is trade order
within a batch), whatever order their batches arrived in.

Heavy-tailed positive quantities enter as ``log1p``; the name says so and says the unit inside it.
A horizon without trades gives zeros (the ``coverage`` returned beside the values says whether the
cache reached back that far at all). Every value is finite.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from unistream_common.packets import Tick

DEFAULT_CAPACITY = 5_000
DEFAULT_MAX_AGE_MS = 300_000


class TickCache:
    """The last trades of one symbol as parallel numpy rings, bounded in count and in age.

    A trade older than ``max_age_ms`` before the anchor is dropped, and so is the oldest trade when
    ``capacity`` is reached. Trades are kept in the order they were pushed. The anchor is the newest
    cached trade, or, once :meth:`anchor` was called, the time given there: the earliest time a
    state will still be built for, so that trades arriving ahead of a lagging symbol's states
    cannot age out the trades those states need.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, max_age_ms: int = DEFAULT_MAX_AGE_MS) -> None:
        if capacity < 1:
            raise ValueError(f"tick cache capacity must be at least 1, was {capacity}")
        if max_age_ms < 1:
            raise ValueError(f"tick cache max age must be at least 1 ms, was {max_age_ms}")
        self.capacity = capacity
        self.max_age_ms = max_age_ms
        self.ts_ms = np.zeros(capacity, np.int64)
        self.price = np.zeros(capacity, np.float64)
        self.size = np.zeros(capacity, np.float64)
        self.buy = np.zeros(capacity, np.bool_)
        self.trade_id = np.zeros(capacity, np.int64)
        self._head = 0  # slot of the oldest trade
        self._len = 0
        self._newest = 0  # largest ts_event_ms pushed since the last clear
        self._anchor: int | None = None
        self._oldest_pushed: int | None = None
        self._lost_before: int | None = None  # a trade older than this may have been dropped
        self._keys: set[tuple[int, int]] = set()
        self.evicted_full = 0  # trades dropped because the cache was full
        self.evicted_old = 0  # trades dropped for age

    def __len__(self) -> int:
        return self._len

    def __contains__(self, key: object) -> bool:
        """Whether the trade ``(trade_id, ts_event_ms)`` is cached."""
        return key in self._keys

    def clear(self) -> None:
        self._head = self._len = self._newest = 0
        self._anchor = None
        self._oldest_pushed = self._lost_before = None
        self._keys.clear()

    @property
    def newest_ts_ms(self) -> int | None:
        """Largest venue time of a cached trade, ms; None when empty."""
        return self._newest if self._len else None

    @property
    def covered_from_ms(self) -> int | None:
        """Every trade pushed with a time at or after this is cached (None before the first trade).

        The oldest trade pushed, or just past the newest trade dropped if that is later: it does not
        depend on the order trades arrived in.
        """
        if self._oldest_pushed is None:
            return None
        return self._oldest_pushed if self._lost_before is None else max(self._oldest_pushed, self._lost_before)

    def _drop_oldest(self) -> None:
        i = self._head
        dropped = int(self.ts_ms[i])
        if self._lost_before is None or dropped >= self._lost_before:
            self._lost_before = dropped + 1
        self._keys.discard((int(self.trade_id[i]), dropped))
        self._head = (i + 1) % self.capacity
        self._len -= 1

    def push(self, ticks: Iterable[Tick]) -> int:
        """Append trades not already cached; returns how many were new."""
        added = 0
        for t in ticks:
            key = (t.trade_id, t.ts_event_ms)
            if key in self._keys:
                continue
            if self._len == self.capacity:
                self._drop_oldest()
                self.evicted_full += 1
            i = (self._head + self._len) % self.capacity
            self.ts_ms[i] = t.ts_event_ms
            self.price[i] = t.price
            self.size[i] = t.size
            self.buy[i] = t.aggressor_side == "BUY"
            self.trade_id[i] = t.trade_id
            self._keys.add(key)
            self._len += 1
            self._newest = max(self._newest, t.ts_event_ms)
            if self._oldest_pushed is None or t.ts_event_ms < self._oldest_pushed:
                self._oldest_pushed = t.ts_event_ms
            added += 1
        self._trim()
        return added

    def anchor(self, ms: int) -> None:
        """Age is measured from ``ms`` (it only moves forward) instead of from the newest trade."""
        if self._anchor is None or ms > self._anchor:
            self._anchor = ms
        self._trim()

    def _trim(self) -> None:
        horizon = (self._newest if self._anchor is None else self._anchor) - self.max_age_ms
        while self._len and self.ts_ms[self._head] < horizon:
            self._drop_oldest()
            self.evicted_old += 1

    def ordered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ts_ms, price, size, buy) of the cached trades in push order (copies)."""
        idx = (self._head + np.arange(self._len)) % self.capacity
        return self.ts_ms[idx], self.price[idx], self.size[idx], self.buy[idx]

    def count_between(self, start_ms: int, end_ms: int) -> int:
        """Cached trades with ``start_ms <= ts < end_ms``."""
        ts = self.ordered()[0]
        return int(np.count_nonzero((ts >= start_ms) & (ts < end_ms)))


HORIZONS_S: tuple[int, ...] = (10, 60, 300)

FEATURES: tuple[str, ...] = (
    "log1p_trades_per_s",  # log1p(trades / h)
    "volume_imbalance",  # (buy - sell) / (buy + sell) base volume by aggressor side, in [-1, 1]
    "log1p_realised_vol_bp",  # log1p(1e4 * sqrt(sum of squared tick log returns))
    "log1p_mean_notional",  # log1p(mean price * size), quote currency
    "log1p_p90_notional",  # log1p(90th percentile of price * size), quote currency
    "top10_notional_share",  # share of notional in the largest 10% of trades (at least one), in [0, 1]
    "vwap_distance_bp",  # 1e4 * log(last price / vwap), clipped to +-VWAP_CLIP_BP
    "roll_spread_bp",  # Roll's estimator 2 * sqrt(-cov(r_t, r_t-1)) of tick log returns, bp; 0 when cov >= 0
)
N_FEATURES = len(FEATURES)

VWAP_CLIP_BP = 50.0  # a last trade further than 0.5% from the horizon's vwap is a jump, not a distance
SPREAD_CLIP_BP = 50.0


def feature_names(horizons_s: Sequence[int] = HORIZONS_S) -> tuple[str, ...]:
    """Names of the values :func:`micro_features` returns, in order: every feature for 10 s, then 60 s, then 300 s."""
    return tuple(f"{f}_{h}s" for h in horizons_s for f in FEATURES)


def roll_spread_bp(log_prices: np.ndarray) -> float:
    """Roll's (1984) effective spread from consecutive tick log prices, basis points.

    Bid-ask bounce makes successive price changes negatively correlated; ``2 * sqrt(-cov)`` of
    consecutive changes estimates the spread. With fewer than three prices, or a non-negative
    covariance (the estimator is undefined), it is 0. Clipped to ``[0, SPREAD_CLIP_BP]``.
    """
    r = np.diff(log_prices)
    if r.size < 2:
        return 0.0
    a, b = r[1:], r[:-1]
    cov = float(np.mean((a - a.mean()) * (b - b.mean())))
    if not cov < 0.0:
        return 0.0
    return min(SPREAD_CLIP_BP, 2e4 * math.sqrt(-cov))


def _horizon(price: np.ndarray, size: np.ndarray, buy: np.ndarray, h: int) -> list[float]:
    n = price.size
    notional = price * size
    buy_vol = float(size[buy].sum())
    sell_vol = float(size[~buy].sum())
    total_vol = buy_vol + sell_vol
    log_p = np.log(price)
    realised_bp = 1e4 * math.sqrt(float(np.sum(np.diff(log_p) ** 2)))
    total_notional = float(notional.sum())
    top = max(1, math.ceil(0.1 * n))
    largest = np.partition(notional, n - top)[n - top :]
    vwap = total_notional / total_vol if total_vol > 0 else float(price[-1])
    dev_bp = 1e4 * (float(log_p[-1]) - math.log(vwap))
    return [
        math.log1p(n / h),
        (buy_vol - sell_vol) / total_vol if total_vol > 0 else 0.0,
        math.log1p(realised_bp),
        math.log1p(total_notional / n),
        math.log1p(float(np.percentile(notional, 90))),
        float(largest.sum()) / total_notional if total_notional > 0 else 0.0,
        max(-VWAP_CLIP_BP, min(VWAP_CLIP_BP, dev_bp)),
        roll_spread_bp(log_p),
    ]


def micro_features(cache: TickCache, end_ms: int, horizons_s: Sequence[int] = HORIZONS_S) -> tuple[np.ndarray, float]:
    """Microstructure of the trades in ``[end_ms - h, end_ms)`` for each horizon ``h`` (seconds).

    Returns ``(values, coverage)``: ``values`` is float32 of length ``N_FEATURES * len(horizons_s)``
    named by :func:`feature_names`; ``coverage`` in [0, 1] is how much of the longest horizon the
    cache reaches back to before ``end_ms`` (a cache of 5,000 trades holds less than 300 s of a busy
    market, and the state should say so).
    """
    out = np.zeros(N_FEATURES * len(horizons_s), np.float32)
    if not len(cache):
        return out, 0.0
    ts, price, size, buy = cache.ordered()
    before = ts < end_ms
    if not before.any():
        return out, 0.0
    ts, price, size, buy = ts[before], price[before], size[before], buy[before]
    order = np.argsort(ts, kind="stable")
    ts, price, size, buy = ts[order], price[order], size[order], buy[order]
    longest_ms = 1000 * max(horizons_s)
    covered = cache.covered_from_ms
    coverage = min(1.0, max(0.0, (end_ms - float(covered if covered is not None else end_ms)) / longest_ms))
    for j, h in enumerate(horizons_s):
        first = int(np.searchsorted(ts, end_ms - 1000 * h, side="left"))
        if first == ts.size:
            continue
        out[j * N_FEATURES : (j + 1) * N_FEATURES] = _horizon(price[first:], size[first:], buy[first:], h)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0), coverage
