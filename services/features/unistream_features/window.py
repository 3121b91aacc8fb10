"""The bar window: the last ``window_bars`` closed 1s bars as normalised channels (pure).

A window is a ``(CHANNELS, window_bars)`` float32 array, oldest bar first, newest bar in the last
column. With fewer real bars than the window holds, the real bars sit at the right and the left is
zero-padded; the ``real`` channel says which columns are bars, and ``window_fill`` is the share of
real columns.

Price channels are divided by ``sigma``, the root-mean-square 1s log return of the real bars in
the window (floored at :data:`SIGMA_FLOOR`): the CNN then sees the shape of the path, the same for a
quiet and a busy market, and the level of volatility reaches the state through the tick
microstructure block. Activity channels are z-scores inside the window for the same reason.
Every channel is clipped to ``[-CLIP, CLIP]`` so one broken print cannot dominate a layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from unistream_common.packets import Bar

CHANNELS: tuple[str, ...] = (
    "ret",  # log(close_t / close_{t-1}) / sigma
    "range",  # log(high / low) / sigma
    "vwap_dev",  # log(close / vwap) / sigma
    "price_rel",  # log(close / newest close) / (sigma * sqrt(real bars))
    "log_quote_volume_z",  # z-score of log1p(quote volume) over the window's real bars
    "log_trades_z",  # z-score of log1p(trade count) over the window's real bars
    "taker_imbalance",  # 2 * taker_buy_volume / volume - 1, in [-1, 1]; 0 without volume
    "filled",  # 1: no trades in the second (a flat bar at the previous close)
    "real",  # 1: a bar; 0: padding
)
N_CHANNELS = len(CHANNELS)

SIGMA_FLOOR = 1e-5  # 0.1 basis point: below this a market is not moving, and dividing by it only adds noise
CLIP = 10.0
_STD_FLOOR = 1e-6


def _zscore(x: np.ndarray) -> np.ndarray:
    std = float(x.std())
    if std < _STD_FLOOR:
        return np.zeros_like(x)
    return (x - x.mean()) / std


def window_sigma(returns: np.ndarray) -> float:
    """RMS of 1s log returns (dimensionless), at least :data:`SIGMA_FLOOR`.

    RMS rather than standard deviation: over a few hundred seconds the mean return is noise, and
    removing it would understate how far prices actually moved.
    """
    if returns.size == 0:
        return SIGMA_FLOOR
    return max(SIGMA_FLOOR, math.sqrt(float(np.mean(returns.astype(np.float64) ** 2))))


def build_window(bars: Sequence[Bar], window_bars: int, prev_close: float | None = None) -> tuple[np.ndarray, float]:
    """Channels of the last ``window_bars`` of ``bars`` (oldest first) and the window fill.

    ``prev_close`` is the close of the bar before the first one given, when known; without it the
    first bar's return is 0. Returns ``(window, window_fill)``: ``window`` has shape
    ``(N_CHANNELS, window_bars)``, dtype float32, all values finite; ``window_fill`` in [0, 1].
    """
    if window_bars < 1:
        raise ValueError(f"window_bars must be at least 1, was {window_bars}")
    if len(bars) > window_bars:
        prev_close = bars[-window_bars - 1].close
        bars = bars[-window_bars:]
    k = len(bars)
    out = np.zeros((N_CHANNELS, window_bars), dtype=np.float32)
    if k == 0:
        return out, 0.0

    close = np.fromiter((b.close for b in bars), np.float64, k)
    high = np.fromiter((b.high for b in bars), np.float64, k)
    low = np.fromiter((b.low for b in bars), np.float64, k)
    vwap = np.fromiter((b.vwap for b in bars), np.float64, k)
    volume = np.fromiter((b.volume for b in bars), np.float64, k)
    quote_volume = np.fromiter((b.quote_volume for b in bars), np.float64, k)
    trades = np.fromiter((b.trade_count for b in bars), np.float64, k)
    taker_buy = np.fromiter((b.taker_buy_volume for b in bars), np.float64, k)
    filled = np.fromiter((b.filled for b in bars), np.float64, k)

    log_close = np.log(close)
    returns = np.empty(k)
    returns[0] = math.log(close[0] / prev_close) if prev_close else 0.0
    returns[1:] = np.diff(log_close)
    sigma = window_sigma(returns if prev_close else returns[1:])

    with np.errstate(divide="ignore", invalid="ignore"):
        imbalance = np.where(volume > 0, 2.0 * taker_buy / volume - 1.0, 0.0)
    channels = np.stack(
        [
            returns / sigma,
            np.log(high / low) / sigma,
            np.log(close / vwap) / sigma,
            (log_close - log_close[-1]) / (sigma * math.sqrt(k)),
            _zscore(np.log1p(quote_volume)),
            _zscore(np.log1p(trades)),
            np.clip(imbalance, -1.0, 1.0),
            filled,
            np.ones(k),
        ]
    )
    out[:, window_bars - k :] = np.clip(np.nan_to_num(channels, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP)
    return out, k / window_bars
