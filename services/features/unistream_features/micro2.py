"""Market-microstructure features, version 2, from the tick cache (pure).

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
from collections.abc import Sequence

import numpy as np

from unistream_features.microstructure import TickCache

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
    coverage = min(1.0, max(0.0, (end_ms - float(ts[0])) / longest_ms))
    for j, h in enumerate(horizons_s):
        first = int(np.searchsorted(ts, end_ms - 1000 * h, side="left"))
        if first == ts.size:
            continue
        out[j * N_FEATURES : (j + 1) * N_FEATURES] = _horizon(price[first:], size[first:], buy[first:], h)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0), coverage
