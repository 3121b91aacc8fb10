"""Microstructure features v2: hand-computed values, horizon edges, Roll's spread, finiteness, causality."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unistream_common.packets import Tick
from unistream_model.micro import (
    FEATURES,
    HORIZONS_S,
    N_FEATURES,
    SPREAD_CLIP_BP,
    VWAP_CLIP_BP,
    TickCache,
    feature_names,
    micro_features,
    roll_spread_bp,
)

END = 1_700_000_000_000  # ms
F = {name: i for i, name in enumerate(FEATURES)}


def tick(trade_id: int, ts_ms: int, price: float, size: float, buy: bool) -> Tick:
    return Tick(trade_id, price, size, "BUY" if buy else "SELL", ts_ms, ts_ms + 3)


def cache_of(ticks: list[Tick], capacity: int = 10_000) -> TickCache:
    c = TickCache(capacity)
    c.push(ticks)
    return c


def horizon(values: np.ndarray, h: int) -> np.ndarray:
    j = HORIZONS_S.index(h)
    return values[j * N_FEATURES : (j + 1) * N_FEATURES]


def test_names_are_eight_features_for_each_of_three_horizons():
    names = feature_names()
    assert len(names) == 24 == N_FEATURES * len(HORIZONS_S)
    assert names[0] == "log1p_trades_per_s_10s"
    assert names[8] == "log1p_trades_per_s_60s"
    assert names[-1] == "roll_spread_bp_300s"
    assert len(set(names)) == len(names)


def test_hand_made_trades_give_the_formula_values():
    trades = [  # (ts offset before END ms, price, size, buy)
        (-9_000, 100.0, 1.0, True),
        (-7_000, 100.1, 2.0, False),
        (-5_000, 100.0, 1.0, True),
        (-1_000, 100.1, 4.0, True),
    ]
    ticks = [tick(k + 1, END + dt, p, s, b) for k, (dt, p, s, b) in enumerate(trades)]

    values, coverage = micro_features(cache_of(ticks), END)

    v = horizon(values, 10)
    notional = np.array([100.0, 200.2, 100.0, 400.4])
    r = np.diff(np.log([100.0, 100.1, 100.0, 100.1]))
    vwap = notional.sum() / 8.0
    np.testing.assert_allclose(
        v,
        [
            math.log1p(4 / 10),
            (6.0 - 2.0) / 8.0,
            math.log1p(1e4 * math.sqrt(float(np.sum(r**2)))),
            math.log1p(notional.mean()),
            math.log1p(float(np.percentile(notional, 90))),
            400.4 / notional.sum(),  # ceil(10% of 4) = the single largest trade
            1e4 * math.log(100.1 / vwap),
            2e4 * math.log(100.1 / 100.0),  # pure bid-ask bounce: Roll's spread is the bounce itself
        ],
        rtol=1e-5,
    )
    assert np.array_equal(horizon(values, 60)[1:], v[1:])  # same trades, only the rate differs
    assert horizon(values, 60)[F["log1p_trades_per_s"]] == pytest.approx(math.log1p(4 / 60))
    assert coverage == pytest.approx(9 / 300)


def test_trade_at_end_ms_is_excluded_and_trade_at_the_horizon_start_included():
    ticks = [
        tick(1, END - 10_000, 100.0, 1.0, True),  # exactly h before: inside [end - h, end)
        tick(2, END - 10_001, 100.0, 1.0, True),  # just outside the 10 s horizon
        tick(3, END, 200.0, 50.0, False),  # belongs to the next bar
    ]

    values, _ = micro_features(cache_of(ticks), END)

    assert horizon(values, 10)[F["log1p_trades_per_s"]] == pytest.approx(math.log1p(1 / 10))
    assert horizon(values, 60)[F["log1p_trades_per_s"]] == pytest.approx(math.log1p(2 / 60))
    assert horizon(values, 60)[F["volume_imbalance"]] == 1.0  # the SELL at END is not seen


def test_empty_cache_and_horizons_without_trades_are_zero_with_zero_coverage():
    values, coverage = micro_features(TickCache(10), END)
    assert coverage == 0.0 and not values.any() and values.shape == (24,)

    values, coverage = micro_features(cache_of([tick(1, END - 100_000, 100.0, 1.0, True)]), END)
    assert not horizon(values, 10).any() and not horizon(values, 60).any()
    assert horizon(values, 300)[F["log1p_trades_per_s"]] > 0
    assert coverage == pytest.approx(100 / 300)

    values, coverage = micro_features(cache_of([tick(1, END + 5, 100.0, 1.0, True)]), END)
    assert coverage == 0.0 and not values.any()


def test_roll_spread_is_zero_when_undefined_or_trending_and_clipped_when_huge():
    assert roll_spread_bp(np.log([100.0, 100.1])) == 0.0  # one price change: no covariance
    assert roll_spread_bp(np.log([100.0, 100.1, 100.2, 100.3, 100.4])) == 0.0  # trend: cov >= 0
    assert roll_spread_bp(np.log([100.0, 100.0, 100.0])) == 0.0
    assert roll_spread_bp(np.log([100.0, 150.0, 100.0, 150.0])) == SPREAD_CLIP_BP
    assert roll_spread_bp(np.log([100.0, 100.01, 100.0, 100.01])) == pytest.approx(2e4 * math.log(100.01 / 100))


def test_extreme_trades_give_finite_clipped_values():
    ticks = [
        tick(1, END - 2_000, 1e-8, 1e-8, True),
        tick(2, END - 1_500, 1e9, 1e9, False),
        tick(3, END - 1_000, 1e-8, 1e-8, True),
    ]
    values, _ = micro_features(cache_of(ticks), END)
    assert np.isfinite(values).all()
    assert abs(horizon(values, 10)[F["vwap_distance_bp"]]) == VWAP_CLIP_BP
    assert 0.0 <= horizon(values, 10)[F["top10_notional_share"]] <= 1.0


# --- causality --------------------------------------------------------------------------------


@st.composite
def trades(draw: st.DrawFn, first_id: int, start_ms: int, stop_ms: int, max_n: int = 60) -> list[Tick]:
    """Up to max_n trades with distinct times in [start_ms, stop_ms), in time order."""
    times = sorted(draw(st.sets(st.integers(start_ms, stop_ms - 1), max_size=max_n)))
    return [
        tick(
            first_id + k,
            ts,
            draw(st.floats(90.0, 110.0)),
            draw(st.floats(1e-4, 10.0)),
            draw(st.booleans()),
        )
        for k, ts in enumerate(times)
    ]


def chunks(ticks: list[Tick], n: int) -> list[list[Tick]]:
    return [ticks[i : i + n] for i in range(0, len(ticks), n)]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_trades_at_or_after_end_ms_never_change_the_features(data: st.DataObject):
    past = data.draw(trades(1, END - 400_000, END), label="past")
    future_a = data.draw(trades(10_000, END, END + 400_000), label="future a")
    future_b = data.draw(trades(20_000, END, END + 400_000), label="future b")
    seed = data.draw(st.integers(0, 2**16), label="arrival order")

    batches_a = chunks(past, 7) + chunks(future_a, 5)
    batches_b = chunks(future_b, 3) + chunks(past, 7)
    random.Random(seed).shuffle(batches_b)  # batches may arrive in any order; times are distinct
    # Age trimming follows the newest trade pushed; the engine pushes only trades before the
    # state's time, so here the age bound is lifted to test micro_features alone.
    cache_a, cache_b = TickCache(10_000, max_age_ms=10**9), TickCache(10_000, max_age_ms=10**9)
    for batch in batches_a:
        cache_a.push(batch)
    for batch in batches_b:
        cache_b.push(batch)

    values_a, coverage_a = micro_features(cache_a, END)
    values_b, coverage_b = micro_features(cache_b, END)
    assert values_a.tobytes() == values_b.tobytes()
    assert coverage_a == coverage_b
    assert np.isfinite(values_a).all()


def test_the_trade_excluded_at_end_ms_is_seen_one_millisecond_later():
    ticks = [tick(1, END - 3_000, 100.0, 1.0, True), tick(2, END, 100.5, 3.0, False)]
    at_end, _ = micro_features(cache_of(ticks), END)
    later, _ = micro_features(cache_of(ticks), END + 1)
    assert horizon(at_end, 10)[F["volume_imbalance"]] == 1.0
    assert horizon(later, 10)[F["volume_imbalance"]] == pytest.approx(-0.5)


def test_the_cache_keeps_at_most_its_capacity_and_nothing_older_than_its_age_bound():
    cache = TickCache(capacity=5, max_age_ms=10_000)
    cache.push([tick(i, END + 1_000 * i, 100.0 + i, 1.0, True) for i in range(4)])
    assert len(cache) == 4
    cache.push([tick(4, END + 4_000, 104.0, 1.0, True), tick(5, END + 5_000, 105.0, 1.0, True)])
    assert len(cache) == 5 and cache.evicted_full == 1  # trade 0 made room for trade 5
    assert cache.ordered()[0].tolist() == [END + 1_000 * i for i in range(1, 6)]
    # Full again: trade 1 makes room; then trade 2 is older than END + 12,500 - 10,000.
    cache.push([tick(6, END + 12_500, 106.0, 1.0, False)])
    assert cache.ordered()[0].tolist() == [END + 3_000, END + 4_000, END + 5_000, END + 12_500]
    assert cache.evicted_full == 2 and cache.evicted_old == 1 and cache.newest_ts_ms == END + 12_500
    assert cache.push([tick(5, END + 5_000, 105.0, 1.0, True)]) == 0  # a duplicate is not cached twice
    assert cache.count_between(END + 4_000, END + 12_500) == 2
    cache.clear()
    assert len(cache) == 0 and cache.newest_ts_ms is None
    with pytest.raises(ValueError, match="capacity"):
        TickCache(0)
