"""Multi-timeframe bar windows: normalisation, warm-up counting, history/live merging, bounded memory, causality."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unistream_common.keys import TIMEFRAME_MS
from unistream_common.packets import Bar
from unistream_model.mtf import CHANNELS, CLIP, N_CHANNELS, TIMEFRAMES, BarWindows

T0 = 1_700_006_400_000  # ms, midnight UTC: aligned to every timeframe
C = {name: i for i, name in enumerate(CHANNELS)}


def bar(
    tf: str,
    i: int,
    close: float,
    open_: float | None = None,
    high: float | None = None,
    low: float | None = None,
    quote_volume: float = 1000.0,
    history: bool = False,
    symbol: str = "ETHUSDT",
) -> Bar:
    """The i-th ``tf`` bar after T0; open defaults to close, high/low to the body."""
    span = TIMEFRAME_MS[tf]
    open_ = close if open_ is None else open_
    high = max(open_, close) if high is None else high
    low = min(open_, close) if low is None else low
    volume = quote_volume / close
    return Bar(symbol, tf, T0 + span * i, T0 + span * (i + 1), open_, high, low, close,
               volume, quote_volume, 1 if volume else 0, close, volume / 2, False, "SYNTHETIC",
               is_history=history)  # fmt: skip


def close_ms(tf: str, i: int) -> int:
    return T0 + TIMEFRAME_MS[tf] * (i + 1)


# --- normalisation ----------------------------------------------------------------------------


def test_hand_made_window_matches_the_formulas_and_is_left_padded():
    bars = [
        bar("1m", 0, close=100.0, open_=99.0, high=101.0, low=98.0, quote_volume=1000.0),
        bar("1m", 1, close=101.0, open_=100.0, high=102.0, low=99.5, quote_volume=3000.0),
        bar("1m", 2, close=99.0, open_=101.0, high=101.5, low=98.5, quote_volume=2000.0),
    ]
    w = BarWindows()
    for b in bars:
        w.add(b)

    arr, n_real = w.window("ETHUSDT", "1m", close_ms("1m", 2), bars=4)

    assert n_real == 3
    assert arr.shape == (N_CHANNELS, 4) and arr.dtype == np.float32
    assert not arr[:, 0].any()  # one column of padding, counted by n_real
    r1, r2 = math.log(101 / 100), math.log(99 / 101)
    sigma = math.sqrt((r1**2 + r2**2) / 2)  # no bar before the window: its first return is not in sigma
    lq = np.log1p([1000.0, 3000.0, 2000.0])
    expected = np.array(
        [
            [math.log(99 / 100) / sigma, math.log(100 / 101) / sigma, math.log(101 / 99) / sigma],
            [math.log(101 / 100) / sigma, math.log(102 / 101) / sigma, math.log(101.5 / 99) / sigma],
            [math.log(98 / 100) / sigma, math.log(99.5 / 101) / sigma, math.log(98.5 / 99) / sigma],
            [0.0, r1 / sigma, r2 / sigma],
            (lq - lq.mean()) / lq.std(),
        ]
    )
    np.testing.assert_allclose(arr[:, 1:], expected, rtol=1e-6, atol=1e-6)


def test_first_column_return_uses_the_buffered_bar_before_the_window():
    w = BarWindows()
    for i, c in enumerate([100.0, 102.0, 101.0, 103.0]):
        w.add(bar("1h", i, close=c))

    arr, n_real = w.window("ETHUSDT", "1h", close_ms("1h", 3), bars=3)

    returns = np.log([102 / 100, 101 / 102, 103 / 101])
    sigma = math.sqrt(float(np.mean(returns**2)))
    assert n_real == 3
    np.testing.assert_allclose(arr[C["close_ret"]], returns / sigma, rtol=1e-6)


def test_flat_market_gives_zero_channels_not_a_division_by_zero():
    w = BarWindows()
    for i in range(5):
        w.add(bar("1d", i, close=100.0, quote_volume=500.0))

    arr, n_real = w.window("ETHUSDT", "1d", close_ms("1d", 4), bars=5)

    assert n_real == 5
    assert np.isfinite(arr).all()
    assert not arr.any()


def test_a_jump_far_beyond_sigma_is_clipped_and_every_value_stays_finite():
    # One return among n is at most sqrt(n) RMS: with 200 bars a lone jump reaches 14 sigma.
    w = BarWindows()
    closes = [100.0 * (1 + 1e-4 * (i % 2)) for i in range(199)] + [200.0]
    for i, c in enumerate(closes):
        w.add(bar("1m", i, close=c, high=c * 1.01, low=c / 1.01, quote_volume=0.0 if i % 3 else 1e12))

    arr, n_real = w.window("ETHUSDT", "1m", close_ms("1m", 199), bars=200)

    assert n_real == 200
    assert np.isfinite(arr).all()
    assert arr[C["close_ret"], -1] == CLIP
    assert 0 < abs(arr[C["close_ret"], -2]) < 0.01  # the small moves are tiny next to the jump
    assert np.abs(arr).max() <= CLIP


# --- warm-up counting -------------------------------------------------------------------------


def test_history_then_live_bars_fill_the_window_and_fill_counts_real_bars():
    w = BarWindows()
    for i in range(200):  # history from ingest, up to start-up
        w.add(bar("1m", i, close=100.0 + i % 7, history=True))
    assert w.fill("ETHUSDT", close_ms("1m", 199), bars=300)["1m"] == pytest.approx(200 / 300)
    for i in range(150, 350):  # live bars from the aggregator, overlapping the history by 50
        w.add(bar("1m", i, close=100.0 + i % 5))
    for i in range(10):
        w.add(bar("1s", 350 * 60 + i, close=100.0))

    until = close_ms("1m", 349)
    fill = w.fill("ETHUSDT", until, bars=300)

    assert w.size("ETHUSDT", "1m") == 301  # capacity: window + 1
    assert fill == {"1s": 0.0, "1m": 1.0, "1h": 0.0, "1d": 0.0}  # the 1s bars close after `until`
    later = close_ms("1s", 350 * 60 + 9)
    assert w.n_real("ETHUSDT", "1s", later, bars=300) == 10
    assert w.fill("ETHUSDT", later, bars=300)["1s"] == pytest.approx(10 / 300)
    assert not w.warm("ETHUSDT", later, bars=300)
    _, n_real = w.window("ETHUSDT", "1s", later, bars=300)
    assert n_real == 10


def test_warm_only_when_all_four_windows_are_full():
    w = BarWindows()
    n = 4
    end = T0 + TIMEFRAME_MS["1d"] * n  # every timeframe's n-th bar closes here or earlier
    for tf in TIMEFRAMES:
        last = (end - T0) // TIMEFRAME_MS[tf] - 1
        for i in range(last - n + 1, last + 1):
            w.add(bar(tf, i, close=100.0))
    assert w.warm("ETHUSDT", end, bars=n)
    assert not w.warm("ETHUSDT", end - 1, bars=n)  # the 1d bar (and the others) not yet closed
    assert not w.warm("BTCUSDT", end, bars=n)
    stacked, n_real = w.windows("ETHUSDT", end, bars=n)
    assert stacked.shape == (len(TIMEFRAMES), N_CHANNELS, n)
    assert n_real == dict.fromkeys(TIMEFRAMES, n)


def test_window_ends_at_the_bar_that_closes_at_until_ms():
    w = BarWindows()
    for i in range(10):
        w.add(bar("1s", i, close=100.0 + i))
    assert w.n_real("ETHUSDT", "1s", close_ms("1s", 4), bars=10) == 5
    assert w.n_real("ETHUSDT", "1s", close_ms("1s", 4) - 1, bars=10) == 4
    assert w.newest_close_ms("ETHUSDT", "1s", close_ms("1s", 4) + 999) == close_ms("1s", 4)
    assert w.newest_close_ms("ETHUSDT", "1s", T0) is None
    assert w.newest_close_ms("ETHUSDT", "1m", close_ms("1s", 9)) is None


def test_empty_buffer_gives_zero_window_and_zero_real_bars():
    arr, n_real = BarWindows().window("ETHUSDT", "1h", T0, bars=300)
    assert n_real == 0 and arr.shape == (N_CHANNELS, 300) and not arr.any()


# --- merging history and live -----------------------------------------------------------------


def test_live_bar_replaces_history_bar_with_the_same_open_time_but_not_the_reverse():
    w = BarWindows()
    assert w.add(bar("1m", 0, close=100.0, history=True))
    assert w.add(bar("1m", 1, close=101.0, history=True))
    assert w.add(bar("1m", 2, close=100.5, history=True))
    before, _ = w.window("ETHUSDT", "1m", close_ms("1m", 2), bars=3)

    assert w.add(bar("1m", 1, close=105.0))  # live wins
    after, _ = w.window("ETHUSDT", "1m", close_ms("1m", 2), bars=3)
    assert not w.add(bar("1m", 1, close=90.0, history=True))  # history never replaces live
    assert not w.add(bar("1m", 1, close=91.0))  # a second live bar is a redelivery
    assert not w.add(bar("1m", 0, close=92.0, history=True))  # duplicate history

    again, _ = w.window("ETHUSDT", "1m", close_ms("1m", 2), bars=3)
    assert not np.array_equal(before, after)
    assert np.array_equal(after, again)
    assert w.size("ETHUSDT", "1m") == 3
    assert w.events["bars_history_replaced"] == 1
    assert w.events["bars_duplicate"] == 3


def test_bar_older_than_a_full_buffer_is_refused_and_counted():
    w = BarWindows(capacity={"1h": 3})
    for i in range(5, 8):
        w.add(bar("1h", i, close=100.0))

    assert not w.add(bar("1h", 2, close=100.0))
    assert w.add(bar("1h", 9, close=100.0))  # newer: evicts the oldest
    assert w.add(bar("1h", 8, close=100.0))  # out of order but inside the buffer's span
    assert w.size("ETHUSDT", "1h") == 3
    assert w.newest_close_ms("ETHUSDT", "1h", close_ms("1h", 100)) == close_ms("1h", 9)
    assert w.n_real("ETHUSDT", "1h", close_ms("1h", 9), bars=3) == 3
    assert w.events["bars_too_old"] == 1
    assert w.events["bars_evicted"] == 2


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40))
def test_insertion_order_does_not_change_the_buffer_or_the_window(seed: int, n: int):
    rng = random.Random(seed)
    bars = [bar("1m", i, close=rng.uniform(50, 150), quote_volume=rng.uniform(0, 1e6)) for i in range(n)]
    shuffled = bars[:]
    rng.shuffle(shuffled)
    a, b = BarWindows(capacity={"1m": 64}), BarWindows(capacity={"1m": 64})
    for x in bars:
        a.add(x)
    for x in shuffled + shuffled[: n // 2]:  # and some redeliveries
        b.add(x)
    until = close_ms("1m", n - 1)
    wa, na = a.window("ETHUSDT", "1m", until, bars=50)
    wb, nb = b.window("ETHUSDT", "1m", until, bars=50)
    assert na == nb == min(n, 50)
    assert wa.tobytes() == wb.tobytes()


# --- bounded memory ---------------------------------------------------------------------------


def test_buffers_stay_at_capacity_after_100k_bars():
    w = BarWindows(symbols=["ETHUSDT"])
    for i in range(100_000):
        w.add(bar("1s", i, close=100.0))
    for i in range(2_000):
        w.add(bar("1m", i, close=100.0))
    assert w.size("ETHUSDT", "1s") == 1_000
    assert w.size("ETHUSDT", "1m") == 301
    assert w.events["bars_evicted"] == 99_000 + 1_699
    assert not w.add(bar("1s", 0, close=100.0, symbol="BTCUSDT"))  # not configured: refused, counted
    assert w.size("BTCUSDT", "1s") == 0
    assert w.events["bars_unknown_symbol"] == 1


def test_window_larger_than_the_buffer_or_unknown_timeframe_is_refused():
    w = BarWindows(capacity={"1d": 10})
    with pytest.raises(ValueError, match="does not fit the buffer of 10"):
        w.window("ETHUSDT", "1d", T0, bars=11)
    with pytest.raises(ValueError, match="not a timeframe"):
        w.window("ETHUSDT", "5m", T0, bars=10)
    with pytest.raises(ValueError, match="at least 1 bar"):
        BarWindows(capacity={"1m": 0})
    with pytest.raises(ValueError, match="not a timeframe"):
        BarWindows(capacity={"4h": 10})


# --- causality --------------------------------------------------------------------------------


@st.composite
def bar_params(draw: st.DrawFn, n: int) -> list[tuple[float, float, float, float, float]]:
    """n bars as (open, close, up, down, quote_volume)."""
    price = st.floats(10.0, 1000.0)
    frac = st.floats(0.0, 0.05)
    volume = st.floats(0.0, 1e7)
    return [(draw(price), draw(price), draw(frac), draw(frac), draw(volume)) for _ in range(n)]


def build(tf: str, i: int, p: tuple[float, float, float, float, float]) -> Bar:
    o, c, up, down, qv = p
    return bar(tf, i, close=c, open_=o, high=max(o, c) * (1 + up), low=min(o, c) * (1 - down), quote_volume=qv)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), tf=st.sampled_from(TIMEFRAMES), n=st.integers(1, 30), shuffle=st.booleans())
def test_bars_closing_after_t_never_change_the_window_at_t(data: st.DataObject, tf: str, n: int, shuffle: bool):
    past_and_future = data.draw(bar_params(n))
    k = data.draw(st.integers(-1, n - 1), label="last bar closed at t")
    span = TIMEFRAME_MS[tf]
    offset = data.draw(st.sampled_from((0, span - 1)) | st.integers(0, span - 1), label="t after that close, ms")
    n_other = data.draw(st.integers(0, 30), label="future bars in the other world")
    other_future = data.draw(bar_params(n_other))
    width = data.draw(st.integers(1, 40), label="window bars")

    until = T0 + TIMEFRAME_MS[tf] * (k + 1) + offset
    past = [build(tf, i, p) for i, p in enumerate(past_and_future[: k + 1])]
    future_a = [build(tf, i, p) for i, p in enumerate(past_and_future[k + 1 :], start=k + 1)]
    future_b = [build(tf, i, p) for i, p in enumerate(other_future, start=k + 1)]
    if shuffle:  # future bars may also arrive before past ones
        rng = random.Random(n)
        stream_a, stream_b = past + future_a, past + future_b
        rng.shuffle(stream_a)
        rng.shuffle(stream_b)
    else:
        stream_a, stream_b = past + future_a, past + future_b
    world_a, world_b = BarWindows(capacity={tf: 64}), BarWindows(capacity={tf: 64})
    for x in stream_a:
        world_a.add(x)
    for x in stream_b:
        world_b.add(x)

    wa, na = world_a.window("ETHUSDT", tf, until, bars=width)
    wb, nb = world_b.window("ETHUSDT", tf, until, bars=width)
    assert na == nb == min(k + 1, width)
    assert wa.tobytes() == wb.tobytes()
    assert world_a.fill("ETHUSDT", until, bars=width) == world_b.fill("ETHUSDT", until, bars=width)


@st.composite
def random_walk(draw: st.DrawFn, n: int) -> list[tuple[float, float, float, float, float]]:
    """n bars of a walk whose every close moves 0.1% to 1%: no flat returns, no clipping, no sigma floor."""
    out = []
    close = 100.0
    for _ in range(n):
        step = draw(st.floats(0.001, 0.01)) * draw(st.sampled_from((-1, 1)))
        prev, close = close, close * math.exp(step)
        out.append((prev, close, 0.001, 0.001, draw(st.floats(1.0, 1e6))))
    return out


@settings(max_examples=30, deadline=None)
@given(data=st.data(), n=st.integers(2, 30))
def test_perturbing_future_bars_in_an_evicting_buffer_keeps_the_window_at_t(data: st.DataObject, n: int):
    capacity = data.draw(st.integers(2, n), label="capacity")
    original = data.draw(random_walk(n))
    k = data.draw(st.integers(n - capacity, n - 2), label="last bar closed at t")
    factor = data.draw(st.floats(1.01, 2.0), label="price factor of future bars")
    perturbed = original[: k + 1] + [(o * factor, c * factor, up, dn, qv) for o, c, up, dn, qv in original[k + 1 :]]
    world_a, world_b = BarWindows(capacity={"1m": capacity}), BarWindows(capacity={"1m": capacity})
    for i in range(n):  # live order: the future bars evict the oldest past bars in both worlds alike
        world_a.add(build("1m", i, original[i]))
        world_b.add(build("1m", i, perturbed[i]))

    until = close_ms("1m", k)
    wa, na = world_a.window("ETHUSDT", "1m", until, bars=capacity)
    wb, nb = world_b.window("ETHUSDT", "1m", until, bars=capacity)
    assert na == nb
    assert wa.tobytes() == wb.tobytes()
    # The window that does include the perturbed bars sees them: the perturbation is not a no-op.
    last_a, _ = world_a.window("ETHUSDT", "1m", close_ms("1m", n - 1), bars=capacity)
    last_b, _ = world_b.window("ETHUSDT", "1m", close_ms("1m", n - 1), bars=capacity)
    assert last_a.tobytes() != last_b.tobytes()
