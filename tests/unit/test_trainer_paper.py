"""Paper trading: hand-computed PnL, fees, trades, drawdown, Sharpe, baselines, no look-ahead, statistics.

The accounting is checked with immediate fills (``IMMEDIATE``: latency 0, no slippage), which
makes hand computation easy; execution with latency and slippage, the defaults, has tests of its own.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from unistream_trainer.paper import (
    ClosedTrade,
    Interval,
    PaperBook,
    PaperPortfolio,
    _Curve,
    bootstrap_ci,
    fold_rows,
    format_table,
    mean_ci,
    t_cdf,
    t_quantile,
)

T0 = 1_700_000_000_000
FEE = 0.001
HOUR = 3_600_000
IMMEDIATE = {"latency_ms": 0, "slippage": 0.0}


def run(prices: list[float], targets: list[float], fee: float = FEE, dt_ms: int = 1000, seed: int = 0) -> PaperBook:
    book = PaperBook(fee=fee, seed=seed, **IMMEDIATE)
    for k, (p, t) in enumerate(zip(prices, targets, strict=True)):
        book.step(T0 + k * dt_ms, p, t)
    return book


# --- PnL, fees and timing -----------------------------------------------------------------------


def test_long_on_a_rising_price_earns_the_log_return_less_one_fee():
    m = run([100.0, 110.0], [1, 1]).metrics()
    assert m["paper/pnl"] == pytest.approx(math.log(1.1) - FEE)
    assert m["paper/gross_pnl"] == pytest.approx(math.log(1.1))
    assert m["paper/fees"] == pytest.approx(FEE)
    assert m["paper/pnl_pct"] == pytest.approx(100 * (1.1 * math.exp(-FEE) - 1))
    assert m["paper/trades"] == 0  # still open: marked to market, not closed
    assert m["paper/position"] == 1
    assert m["paper/position_changes"] == 1


def test_a_round_trip_pays_two_fees_and_closes_one_trade():
    book = PaperBook(fee=FEE, **IMMEDIATE)
    assert book.step(T0, 100.0, 1, tag="ctx") == []
    (trade,) = book.step(T0 + 1000, 110.0, 0)
    assert trade == ClosedTrade(
        side=1,
        entry_ts_ms=T0,
        exit_ts_ms=T0 + 1000,
        entry_price=100.0,
        exit_price=110.0,
        net_return=pytest.approx(math.log(1.1) - 2 * FEE),
        fees=pytest.approx(2 * FEE),
        tag="ctx",
    )
    m = book.metrics()
    assert m["paper/pnl"] == pytest.approx(math.log(1.1) - 2 * FEE)
    assert m["paper/trades"] == 1 and m["paper/win_rate"] == 1.0


def test_a_flip_from_long_to_short_pays_two_fees_at_once_and_splits_them_between_the_trades():
    book = PaperBook(fee=FEE, **IMMEDIATE)
    book.step(T0, 100.0, 1)
    (closed,) = book.step(T0 + 1000, 100.0, -1, tag="short")
    assert book.last_returns()["policy"] == pytest.approx(-2 * FEE)
    assert closed.side == 1 and closed.fees == pytest.approx(2 * FEE)  # its entry and its exit
    assert closed.net_return == pytest.approx(-2 * FEE)
    (short,) = book.step(T0 + 2000, 90.0, 0)  # short earns log(100/90), pays its entry and exit
    assert short.side == -1 and short.tag == "short"
    assert short.net_return == pytest.approx(math.log(100 / 90) - 2 * FEE)
    m = book.metrics()
    assert m["paper/fees"] == pytest.approx(4 * FEE)
    assert m["paper/pnl"] == pytest.approx(closed.net_return + short.net_return)


def test_resizing_on_the_same_side_stays_in_the_trade_and_pays_the_difference():
    book = PaperBook(fee=FEE, **IMMEDIATE)
    book.step(T0, 100.0, 0.5)
    assert book.step(T0 + 1000, 100.0, 1.0) == []
    (trade,) = book.step(T0 + 2000, 110.0, 0)
    assert trade.fees == pytest.approx(FEE * (0.5 + 0.5 + 1.0))
    assert trade.net_return == pytest.approx(math.log(1.1) - 2 * FEE)


def test_a_decision_earns_only_from_the_next_price_on():
    # Going long at the price after a jump does not earn the jump.
    m = run([100.0, 200.0, 200.0], [0, 1, 1]).metrics()
    assert m["paper/pnl"] == pytest.approx(-FEE)
    # Going flat at the price after a crash still takes the crash (the long was held through it).
    m = run([100.0, 50.0], [1, 0]).metrics()
    assert m["paper/pnl"] == pytest.approx(math.log(0.5) - 2 * FEE)


def test_a_different_future_price_never_changes_the_decisions_or_costs_before_it():
    rng = np.random.default_rng(3)
    base = list(100 * np.exp(np.cumsum(rng.normal(0, 0.002, 200))))
    k = 120
    other = base[: k + 1] + [base[k + 1] * 1.05] + base[k + 2 :]

    def replay(prices: list[float]) -> tuple[list[int], list[float]]:
        """A momentum policy that sees prices up to now only; its decisions and per-step returns."""
        book = PaperBook(fee=FEE, **IMMEDIATE)
        decisions, returns = [], []
        for t, p in enumerate(prices):
            target = 0 if t == 0 else (1 if p > prices[t - 1] else -1)
            decisions.append(target)
            book.step(T0 + 1000 * t, p, target)
            returns.append(book.last_returns()["policy"])
        return decisions, returns

    d1, r1 = replay(base)
    d2, r2 = replay(other)
    assert d1[: k + 1] == d2[: k + 1]
    assert r1[: k + 1] == r2[: k + 1]  # exactly: nothing at or before step k saw price k+1
    assert r1[k + 1] != r2[k + 1]


def test_closed_trades_plus_the_open_one_add_up_to_the_pnl():
    rng = np.random.default_rng(5)
    prices = list(100 * np.exp(np.cumsum(rng.normal(0, 0.003, 500))))
    targets = list(rng.choice([0, 1, -1, 0.5], size=500, p=[0.7, 0.1, 0.1, 0.1]))
    book = PaperBook(fee=FEE, **IMMEDIATE)
    closed: list[ClosedTrade] = []
    for t, (p, a) in enumerate(zip(prices, targets)):
        closed += book.step(T0 + 1000 * t, float(p), float(a))
    open_net = book.policy.open_trade.net_return if book.policy.open_trade else 0.0
    m = book.metrics()
    assert sum(c.net_return for c in closed) + open_net == pytest.approx(m["paper/pnl"], abs=1e-12)
    assert m["paper/gross_pnl"] - m["paper/fees"] == pytest.approx(m["paper/pnl"], abs=1e-12)
    assert m["paper/trades"] == len(closed)


# --- metrics ------------------------------------------------------------------------------------


def test_max_drawdown_of_a_known_curve():
    # Long without fees: wealth follows the price, 1.0 1.2 0.9 1.08 0.8; the worst fall is 1.2 -> 0.8.
    m = run([100.0, 120.0, 90.0, 108.0, 80.0], [1] * 5, fee=0.0).metrics()
    assert m["paper/max_drawdown"] == pytest.approx(1 - 0.8 / 1.2)
    assert m["paper/buy_and_hold_max_drawdown"] == pytest.approx(1 - 0.8 / 1.2)
    assert m["paper/flat_max_drawdown"] == 0.0


def test_win_rate_counts_trades_that_beat_their_fees():
    # +10 %, -10 %, +0.1 % (less than the two fees: a loss), +5 %.
    prices = [100.0, 110.0, 110.0, 99.0, 99.0, 99.099, 99.099, 104.05395]
    targets = [1, 0, 1, 0, 1, 0, 1, 0]
    m = run(prices, targets).metrics()
    assert m["paper/trades"] == 4
    assert m["paper/win_rate"] == pytest.approx(2 / 4)


def test_trades_per_hour_use_event_time():
    prices = [100.0, 101.0, 101.0, 102.0, 102.0]
    m = run(prices, [1, 0, -1, 0, 0], dt_ms=900_000).metrics()  # 4 steps of 15 min: one hour
    assert m["paper/hours"] == pytest.approx(1.0)
    assert m["paper/trades_per_hour"] == pytest.approx(2.0)


def test_fee_share_of_fees_in_the_gross_activity():
    assert run([100.0, 100.0], [1, 0]).metrics()["paper/fee_share"] == pytest.approx(1.0)  # gross 0
    m = run([100.0, 110.0], [1, 0]).metrics()
    assert m["paper/fee_share"] == pytest.approx(2 * FEE / (math.log(1.1) + 2 * FEE))
    assert run([100.0, 110.0], [0, 0]).metrics()["paper/fee_share"] == 0.0


def test_sharpe_comes_from_completed_hours_never_from_seconds():
    # one step a minute for 5 h 30 min, starting mid-hour: hours 1..4 are complete, 0 and 5 are not
    rng = np.random.default_rng(8)
    start = T0 - T0 % HOUR + 30 * 60_000
    n = 330
    prices = list(100 * np.exp(np.cumsum(rng.normal(0.0002, 0.001, n))))
    m = run(prices, [1] * n, fee=0.0, dt_ms=60_000)
    # the same steps, placed by hand: hourly sums of the log returns
    r = np.array([0.0, *np.diff(np.log(prices))])
    book = PaperBook(fee=0.0, **IMMEDIATE)
    for k, p in enumerate(prices):
        book.step(start + 60_000 * k, p, 1)
    hours = [r[k] for k in range(n)]
    by_hour: dict[int, float] = {}
    for k in range(n):
        h = (start + 60_000 * k) // HOUR
        by_hour[h] = by_hour.get(h, 0.0) + hours[k]
    complete = np.array([by_hour[h] for h in sorted(by_hour)][1:-1])
    assert len(complete) == 4
    assert book.metrics()["paper/sharpe_hours"] == 4
    assert book.metrics()["paper/sharpe"] == pytest.approx(complete.mean() / complete.std(ddof=1) * math.sqrt(8760))
    assert m.metrics()["paper/sharpe"] != 0.0


def test_sharpe_is_zero_under_three_completed_hours_and_for_constant_returns():
    # an hour of one-second returns: the old per-step annualisation gave values in the thousands
    rng = np.random.default_rng(9)
    prices = list(100 * np.exp(np.cumsum(rng.normal(0.0001, 0.0005, 3_600))))
    assert run(prices, [1] * 3_600).metrics()["paper/sharpe"] == 0.0
    curve = _Curve()
    for k in range(10):
        curve.add(T0 - T0 % HOUR + HOUR * k, math.log(1.001))
    assert curve.sharpe() == 0.0
    m = run([100.0 * 1.001**k for k in range(50)], [0] * 50).metrics()  # flat: all returns 0
    assert m["paper/sharpe"] == 0.0 and m["paper/pnl"] == 0.0
    assert run([100.0], [1]).metrics()["paper/sharpe"] == 0.0  # one step: no std


def test_baselines_on_the_same_prices():
    prices = [100.0, 105.0, 95.0, 120.0]
    m = run(prices, [0, 0, 0, 0]).metrics()
    assert m["paper/buy_and_hold_pnl"] == pytest.approx(math.log(1.2) - FEE)
    assert m["paper/flat_pnl"] == 0.0 and m["paper/flat_sharpe"] == 0.0
    assert m["paper/random_position_changes"] == 0  # the policy never trades, so neither does random
    assert m["paper/random_pnl"] == 0.0


def test_the_random_baseline_is_the_policy_s_own_trades_out_of_time_so_it_pays_the_same_costs():
    rng = np.random.default_rng(11)
    n = 20_000  # one step a second: 5.6 h, beyond the longest lag (2 h)
    prices = list(100 * np.exp(np.cumsum(rng.normal(0, 0.001, n))))
    targets, pos = [], 0
    for _ in range(n):
        if rng.random() < 0.01:
            pos = int(rng.choice([p for p in (0, 1, -1) if p != pos]))
        targets.append(pos)
    book = PaperBook(fee=FEE, seed=1)  # the defaults: 1 s latency, 2 bps slippage
    for k, (p, a) in enumerate(zip(prices, targets, strict=True)):
        book.step(T0 + 1000 * k, p, a)
    m = book.metrics()
    assert 30 * 60_000 <= book.lag_ms <= 2 * HOUR
    lag_steps = book.lag_ms // 1000
    held = np.array(targets[: n - 1 - lag_steps], dtype=float)  # what the policy held, lag + latency later
    expected_changes = int(np.count_nonzero(np.diff(held, prepend=0.0)))
    assert m["paper/random_position_changes"] == expected_changes
    assert m["paper/random_position_changes"] <= m["paper/position_changes"]
    assert PaperBook(fee=FEE, seed=2).lag_ms != book.lag_ms, "seeded per book"


def _hourly_run(prices: np.ndarray, targets: np.ndarray, seed: int = 1) -> dict[str, float]:
    """One step a second from an hour boundary, the default execution (1 s latency, 2 bps)."""
    book = PaperBook(fee=FEE, seed=seed)
    start = T0 - T0 % HOUR
    for k, (p, a) in enumerate(zip(prices, targets, strict=True)):
        book.step(start + 1000 * k, float(p), float(a))
    return book.metrics()


def test_the_hourly_edge_over_a_baseline_is_the_mean_and_interval_of_the_hourly_differences():
    rng = np.random.default_rng(21)
    n = 6 * 3_600 + 10  # six complete hours and a few seconds of the seventh
    prices = 100 * np.exp(np.cumsum(rng.normal(0, 0.0005, n)))
    targets = np.repeat(rng.choice([0, 1, -1], size=n // 600 + 1), 600)[:n]  # a change every ten minutes
    m = _hourly_run(prices, targets)
    assert m["paper/edge_random_hours"] == 6 and m["paper/edge_flat_hours"] == 6
    # flat earns nothing, so the edge over flat is the policy's own hourly return: rebuilt from the curve
    book = PaperBook(fee=FEE, seed=1)
    for k, (p, a) in enumerate(zip(prices, targets, strict=True)):
        book.step(T0 - T0 % HOUR + 1000 * k, float(p), float(a))
    hours = book.policy.curve.completed_hours()
    iv = mean_ci(hours)
    assert (m["paper/edge_flat"], m["paper/edge_flat_low"], m["paper/edge_flat_high"]) == pytest.approx(
        (iv.value, iv.low, iv.high)
    )
    random_hours = book.baselines["random"].curve.completed_hours()
    assert m["paper/edge_random"] == pytest.approx(np.mean(np.subtract(hours, random_hours)))
    # under three completed hours: only the count
    short = _hourly_run(prices[: 2 * 3_600 + 5], targets[: 2 * 3_600 + 5])
    assert short["paper/edge_random_hours"] == 2 and "paper/edge_random" not in short


def test_the_hourly_edge_over_the_matched_random_baseline_finds_foresight_and_not_churn_on_noise():
    rng = np.random.default_rng(22)
    n = 12 * 3_600 + 1
    steps = rng.normal(0, 0.0005, n)
    prices = 100 * np.exp(np.cumsum(steps))
    # churn on noise: a new position every ~20 s, blind to the future; the random baseline pays the same costs
    blind = np.repeat(rng.choice([0, 1, -1], size=n // 20 + 1), 20)[:n]
    churn = _hourly_run(prices, blind)
    assert churn["paper/edge_random_low"] < 0 < churn["paper/edge_random_high"], churn
    assert churn["paper/edge_flat_high"] < 0, "fees make churning worse than staying flat"
    # foresight: the sign of the move ten seconds ahead, held from a decision filled a second later
    # (decided at 10 j, filled at 10 j + 1, held until the next fill at 10 j + 11)
    log_price = np.concatenate([np.log(prices), np.full(12, np.log(prices[-1]))])
    ahead = np.sign(log_price[np.arange(n) + 11] - log_price[np.arange(n) + 1])
    seeing = np.repeat(ahead[::10], 10)[:n]
    assert _hourly_run(prices, seeing)["paper/edge_random_low"] > 0


def test_a_decision_fills_after_the_latency_at_the_price_then_and_pays_the_slippage_too():
    book = PaperBook(fee=FEE, latency_ms=1_000, slippage=0.0002)
    book.step(T0, 100.0, 1)  # decided at 100: fills at the next step's price
    assert book.position == 0 and book.last_returns()["policy"] == 0.0
    book.step(T0 + 1_000, 110.0, 1)
    assert book.position == 1
    assert book.last_returns()["policy"] == pytest.approx(-(FEE + 0.0002)), "bought at 110: the jump is not earned"
    book.step(T0 + 2_000, 121.0, 0)
    assert book.last_returns()["policy"] == pytest.approx(math.log(1.1)), "the exit waits for its fill too"
    (trade,) = book.step(T0 + 3_000, 121.0, 0)
    assert trade.entry_price == 110.0 and trade.exit_price == 121.0 and trade.entry_ts_ms == T0 + 1_000
    assert trade.fees == pytest.approx(2 * (FEE + 0.0002))


def test_with_a_longer_latency_a_later_decision_due_at_the_same_step_replaces_the_earlier():
    book = PaperBook(fee=FEE, latency_ms=2_500, slippage=0.0)
    for k, target in enumerate([1, -1, 0, 0, 0]):
        book.step(T0 + 1_000 * k, 100.0, target)
        if k == 2:
            assert book.position == 0, "nothing is due before 2.5 s"
    # at 3 s the long (due 2.5 s) fills; at 4 s the short (due 3.5 s)
    assert book.policy.changes == 2 and book.position == -1


def test_steps_must_move_forward_in_time_with_valid_prices_and_positions():
    book = PaperBook()
    book.step(T0, 100.0, 1)
    with pytest.raises(ValueError, match="not after"):
        book.step(T0, 101.0, 1)
    with pytest.raises(ValueError, match="price"):
        book.step(T0 + 1, 0.0, 1)
    with pytest.raises(ValueError, match="target_position"):
        book.step(T0 + 1, 100.0, 2)
    with pytest.raises(ValueError, match="fee"):
        PaperBook(fee=-0.1)
    with pytest.raises(ValueError, match="latency"):
        PaperBook(latency_ms=-1)


# --- several symbols ----------------------------------------------------------------------------


def test_portfolio_of_identical_symbols_matches_one_book_and_pools_trades():
    rng = np.random.default_rng(2)
    prices = list(100 * np.exp(np.cumsum(rng.normal(0, 0.002, 300))))
    targets = [int(x) for x in rng.choice([0, 1, -1], size=300, p=[0.8, 0.1, 0.1])]
    book = run(prices, targets)
    pf = PaperPortfolio(fee=FEE, **IMMEDIATE)
    for k, (p, a) in enumerate(zip(prices, targets)):
        for symbol in ("ETHUSDT", "BTCUSDT"):
            pf.step(symbol, T0 + 1000 * k, p, a)
    one, both = book.metrics(), pf.metrics()
    for key in ("pnl", "sharpe", "max_drawdown", "fees", "win_rate", "buy_and_hold_pnl", "flat_pnl"):
        assert both[f"paper/{key}"] == pytest.approx(one[f"paper/{key}"], rel=1e-9, abs=1e-12), key
    assert both["paper/trades"] == 2 * one["paper/trades"]
    assert both["paper/symbols"] == 2
    assert set(pf.symbol_metrics()) == {"ETHUSDT", "BTCUSDT"}


def test_portfolio_splits_capital_equally():
    pf = PaperPortfolio(fee=0.0, **IMMEDIATE)
    for k, (eth, btc) in enumerate([(100.0, 50.0), (110.0, 40.0)]):
        pf.step("ETHUSDT", T0 + 1000 * k, eth, 1)  # long ETH
        pf.step("BTCUSDT", T0 + 1000 * k, btc, 0)  # flat BTC
    assert pf.metrics()["paper/pnl"] == pytest.approx(math.log(1.1) / 2)
    assert pf.metrics()["paper/buy_and_hold_pnl"] == pytest.approx((math.log(1.1) + math.log(0.8)) / 2)


# --- statistics ---------------------------------------------------------------------------------


def test_t_quantiles_match_the_tables():
    for p, df, ref in [(0.975, 1, 12.7062), (0.975, 4, 2.7764), (0.975, 9, 2.2622), (0.995, 3, 5.8409)]:
        assert t_quantile(p, df) == pytest.approx(ref, abs=1e-4)
    assert t_quantile(0.025, 9) == pytest.approx(-2.2622, abs=1e-4)
    assert t_cdf(t_quantile(0.9, 7), 7) == pytest.approx(0.9, abs=1e-12)


def test_mean_ci_contains_the_mean_and_shrinks_with_n():
    iv = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert iv == Interval(3.0, pytest.approx(3.0 - half), pytest.approx(3.0 + half), 5)
    rng = np.random.default_rng(0)
    widths = []
    for n in (5, 50, 500):
        x = rng.normal(1.0, 2.0, n)
        lo_hi = mean_ci(x)
        assert lo_hi.low < x.mean() < lo_hi.high
        widths.append(lo_hi.high - lo_hi.low)
    assert widths[0] > widths[1] > widths[2]
    assert mean_ci([7.0]) == Interval(7.0, -math.inf, math.inf, 1)
    assert mean_ci([2.0, 2.0]) == Interval(2.0, 2.0, 2.0, 2)
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        mean_ci([1.0, math.nan])


def test_bootstrap_ci_contains_the_statistic_shrinks_with_n_and_is_seeded():
    rng = np.random.default_rng(1)
    widths = []
    for n in (10, 100, 1000):
        x = rng.normal(0.0, 1.0, n)
        iv = bootstrap_ci(x, np.median, n_boot=500, seed=4)
        assert iv.low <= iv.value <= iv.high and iv.n == n
        widths.append(iv.high - iv.low)
    assert widths[0] > widths[1] > widths[2]
    x = [0.3, -0.1, 0.5, 0.2]
    assert bootstrap_ci(x, seed=9) == bootstrap_ci(x, seed=9)
    assert bootstrap_ci([1.5]) == Interval(1.5, -math.inf, math.inf, 1)


def test_format_table_prints_policy_and_baseline_intervals_from_folds():
    folds = [
        {"paper/pnl": 0.01, "paper/buy_and_hold_pnl": 0.02, "paper/flat_pnl": 0.0, "paper/random_pnl": -0.01},
        {"paper/pnl": 0.03, "paper/buy_and_hold_pnl": -0.02, "paper/flat_pnl": 0.0, "paper/random_pnl": -0.03},
    ]
    rows = fold_rows(folds, metrics=("pnl",))
    assert rows[0].policy.value == pytest.approx(0.02)
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0] == "| metric | policy mean [95% CI] | buy_and_hold | flat | random |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2].startswith("| pnl | 0.02 [")
    assert "| 0 [0, 0] |" in lines[2]  # flat: no spread
    one = format_table(fold_rows(folds[:1], metrics=("pnl",)))
    assert "[-inf, inf]" in one
