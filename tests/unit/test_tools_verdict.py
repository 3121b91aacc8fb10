"""unistream_tools.verdict: execution, returns, the shift null and the Sharpe ratios, shown able to fail.

The statistical properties are checked by simulation: on random walks the shift null rejects at
about its level (size), and a look-ahead leak smaller than the fees is found in the gross arm
(power), while a policy that only churns on noise shows no edge in either arm.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from unistream_tools.verdict import (
    Costs,
    block_paths,
    deflated_sharpe,
    expected_max_sharpe,
    fill_indices,
    format_verdict,
    held_positions,
    judge,
    path_result,
    probabilistic_sharpe,
    sharpe,
    shift_null,
    shift_offsets,
    turnover_matched,
)

T0 = 1_700_000_000_000
FEE = Costs(fee=0.001, slippage=0.0)


def seconds(n: int) -> np.ndarray:
    return T0 + 1_000 * np.arange(n, dtype=np.int64)


# --- execution -------------------------------------------------------------------------------------


def test_without_latency_a_decision_fills_at_its_own_price_with_a_second_at_the_next() -> None:
    targets = np.array([1.0, 1.0, -1.0, 0.0, 1.0])
    assert np.array_equal(held_positions(targets, fill_indices(seconds(5), 0)), targets)
    assert np.array_equal(held_positions(targets, fill_indices(seconds(5), 1_000)), [0.0, 1.0, 1.0, -1.0, 0.0])
    # prices 3 s apart, latency 1 s: the next price is already past it
    ts = T0 + np.array([0, 3_000, 3_500, 9_000])
    assert np.array_equal(fill_indices(ts, 1_000), [1, 3, 3, 4])
    # two decisions fill at index 3: the later wins; the last never fills (past the end)
    assert np.array_equal(held_positions(np.array([1.0, -1.0, 0.5, 1.0]), fill_indices(ts, 1_000)), [0, 1, 1, 0.5])


def test_times_must_rise_and_latency_be_positive() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        fill_indices(np.array([T0, T0]), 0)
    with pytest.raises(ValueError, match="latency"):
        fill_indices(seconds(3), -1)


def test_a_path_earns_the_moves_it_held_and_pays_every_change_at_its_fill() -> None:
    lp = np.log([100.0, 110.0, 99.0, 99.0])
    held = np.array([1.0, -1.0, -1.0, 0.0])  # long into 110, short into 99, flat at the end
    r = path_result(lp, held, 0.001)
    assert r.gross == pytest.approx(math.log(1.1) - math.log(99 / 110))
    assert r.turnover == 1 + 2 + 0 + 1  # entering at the start pays
    assert r.cost == pytest.approx(0.004)
    assert r.net == pytest.approx(r.gross - 0.004)


# --- the shift null ----------------------------------------------------------------------------------


def test_a_shift_keeps_the_policy_s_trades_and_costs_but_the_wrap() -> None:
    rng = np.random.default_rng(1)
    held = np.repeat(rng.choice([-1.0, 0.0, 1.0], size=50), 20)  # 50 trades of 20 steps
    lp = np.cumsum(rng.normal(0, 1e-3, size=held.size))
    offsets = shift_offsets(held.size, 200, rng)
    assert offsets.min() >= 100 and offsets.max() <= 900, "no shift near 0: the policy's own timing"
    nets, grosses, turnovers = shift_null(lp, held, 0.001, offsets)
    policy = path_result(lp, held, 0.001)
    assert np.allclose(grosses - nets, 0.001 * turnovers)
    assert np.all(np.abs(turnovers - policy.turnover) <= 3), "the same trades; only the seam differs"
    assert not np.allclose(grosses, policy.gross), "but not the same timing"


def _momentum_positions(lp: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """A policy with no edge on a random walk: the sign of the last 10-step move when it exceeds ``threshold``."""
    past = np.concatenate([np.zeros(10), lp[10:] - lp[:-10]])
    return np.where(np.abs(past) > threshold, np.sign(past), 0.0)


def test_on_random_walks_the_null_rejects_at_about_its_level() -> None:
    rng = np.random.default_rng(7)
    rejections = {"net": 0, "gross": 0}
    trials = 150
    for k in range(trials):
        blocks = []
        for _ in range(3):
            lp = np.cumsum(rng.normal(0, 1e-3, size=600))
            blocks.append(block_paths(seconds(600), np.exp(lp), {1: _momentum_positions(lp)}, 0))
        v = judge(blocks, FEE, latency_ms=0, seed=k, shifts=199)
        for arm in rejections:
            rejections[arm] += v.significant(arm, 0.05)
    # 5 % expected; with 150 tries a binomial 95 % range is about 2..9 %
    assert rejections["gross"] / trials <= 0.10 and rejections["net"] / trials <= 0.10, rejections


def test_symbols_judged_together_share_the_error_rate() -> None:
    # two symbols of pure noise with a momentum policy each: without the correction "some symbol
    # shows an edge" happens about 1 - 0.95^2 = 9.75 % of the time; with it, at most 5 %
    rng = np.random.default_rng(6)
    tries, any_alone, any_family = 150, 0, 0
    for k in range(tries):
        p_alone, p_family = [], []
        for _ in range(2):
            blocks = []
            for _ in range(3):
                lp = np.cumsum(rng.normal(0, 1e-3, size=600))
                blocks.append(block_paths(seconds(600), np.exp(lp), {1: _momentum_positions(lp)}, 0))
            alone = judge(blocks, Costs(fee=0.0, slippage=0.0), latency_ms=0, seed=k, shifts=199)
            family = judge(blocks, Costs(fee=0.0, slippage=0.0), latency_ms=0, seed=k, shifts=199, family=2)
            assert family.p_value == alone.p_value, "the same null; only the level changes"
            p_alone.append(alone.significant("net"))
            p_family.append(family.significant("net"))
        any_alone += any(p_alone)
        any_family += any(p_family)
    assert any_family < any_alone and any_family / tries <= 0.05, (any_alone, any_family)  # 4 and 10 here
    # and the intervals widen to 97.5 %, the deflated Sharpe counts the symbols as configurations
    lp = np.cumsum(rng.normal(2e-5, 1e-3, size=(4, 600)), axis=1)
    blocks = [block_paths(seconds(600), np.exp(row), {1: np.ones(600)}, 0) for row in lp]
    one, two = judge(blocks, FEE, latency_ms=0), judge(blocks, FEE, latency_ms=0, family=2)
    assert two.alpha == pytest.approx(0.025) and two.each_confidence == pytest.approx(0.975)
    wide, narrow = two.edges["net"]["flat"], one.edges["net"]["flat"]
    assert wide.value == narrow.value and wide.low < narrow.low and wide.high > narrow.high
    assert two.deflated_sharpe == pytest.approx(deflated_sharpe([b.net["policy"] for b in two.blocks], 2))
    assert "97.5%: 95% over the 2 symbols judged together" in format_verdict(two)
    assert "deflated for 2 configuration(s)" in format_verdict(two)


def test_a_look_ahead_leak_below_the_fees_is_found_in_the_gross_arm() -> None:
    # positions correlated 0.3 with the return they earn: the gross edge is real, the fees eat it
    rng = np.random.default_rng(3)
    blocks, clean = [], []
    for _ in range(4):
        moves = rng.normal(0, 5e-4, size=1_500)
        lp = np.concatenate([[0.0], np.cumsum(moves)])
        signal = 0.3 * moves / moves.std() + math.sqrt(1 - 0.09) * rng.normal(size=moves.size)
        leak = np.append(np.sign(signal), 0.0)  # held[i] earns lp[i + 1] - lp[i] = moves[i]
        blocks.append(block_paths(seconds(lp.size), np.exp(lp), {1: leak}, 0))
        clean.append(block_paths(seconds(lp.size), np.exp(lp), {1: np.roll(leak, 700)}, 0))
    v = judge(blocks, FEE, latency_ms=0, seed=1)
    assert v.p_value["gross"] < 0.01 and v.edges["gross"]["random"].low > 0, v.p_value
    assert v.edges["net"]["flat"].value < 0, "the fees eat the leak: not an edge after costs"
    without = judge(clean, FEE, latency_ms=0, seed=1)
    assert without.p_value["gross"] > 0.05, "the same positions out of time: nothing"


def test_a_fee_blind_random_baseline_is_caught_by_its_turnover() -> None:
    # the old random baseline: at the policy's change rate, a new position drawn among the other two
    rng = np.random.default_rng(5)
    lp = np.cumsum(rng.normal(0, 1e-3, size=3_000))
    policy = _momentum_positions(lp, threshold=2e-3)  # mostly in and out of flat, ~1 unit a change
    v = judge([block_paths(seconds(lp.size), np.exp(lp), {1: policy}, 0)], FEE, latency_ms=0)
    assert v.cost_matched, "the shift null trades as the policy does"
    changes = np.flatnonzero(np.diff(policy, prepend=0.0))
    uniform = np.zeros_like(policy)
    position = 0.0
    for i in range(policy.size):
        if rng.random() < changes.size / policy.size:
            position = rng.choice([p for p in (-1.0, 0.0, 1.0) if p != position])
        uniform[i] = position
    policy_turnover = path_result(lp, policy, 0.0).turnover
    uniform_turnover = path_result(lp, uniform, 0.0).turnover
    per_change = policy_turnover / changes.size
    assert per_change < 1.15 and uniform_turnover > 1.1 * policy_turnover, (per_change, uniform_turnover)
    assert not turnover_matched(policy_turnover, uniform_turnover, blocks=1)


def test_the_fee_sweep_recosts_the_same_positions() -> None:
    rng = np.random.default_rng(2)
    lp = np.cumsum(rng.normal(0, 1e-3, size=800))
    held = _momentum_positions(lp)
    v = judge([block_paths(seconds(lp.size), np.exp(lp), {1: held}, 0)], FEE, latency_ms=0)
    turnover = path_result(lp, held, 0.0).turnover
    block = v.blocks[0]
    assert block.sweep[0.0]["policy"] == pytest.approx(block.gross["policy"])
    assert block.sweep[10.0]["policy"] == pytest.approx(block.gross["policy"] - 0.001 * turnover)
    assert block.sweep[10.0]["policy"] == pytest.approx(block.net["policy"])  # 10 bps = the fee here


def test_seeds_of_one_block_are_averaged_not_counted_as_replicates() -> None:
    rng = np.random.default_rng(4)
    lp = np.cumsum(rng.normal(0, 1e-3, size=500))
    held = {s: np.sign(rng.normal(size=500)) for s in (1, 2, 3)}
    v = judge([block_paths(seconds(500), np.exp(lp), held, 0)], FEE, latency_ms=0)
    assert v.edges["net"]["flat"].n == 1, "one block: one replicate, however many seeds"
    assert v.blocks[0].net["policy"] == pytest.approx(np.mean([path_result(lp, h, 0.001).net for h in held.values()]))


# --- Sharpe ratios -----------------------------------------------------------------------------------


def test_sharpe_is_per_period_and_its_probabilistic_form_follows_the_formula() -> None:
    rng = np.random.default_rng(11)
    r = rng.normal(0.5, 1.0, size=100)
    sr = sharpe(r)
    z = (r - r.mean()) / r.std()
    skew, kurt = float((z**3).mean()), float((z**4).mean())
    expected = statistics.NormalDist().cdf(sr * math.sqrt(99) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr * sr))
    assert probabilistic_sharpe(r) == pytest.approx(expected)
    assert probabilistic_sharpe(r) > 0.99
    assert probabilistic_sharpe(rng.normal(0, 1, size=2)) == 0.5, "too few returns: no opinion"
    assert sharpe([1.0, 1.0, 1.0]) == 0.0


def test_the_deflated_sharpe_asks_more_the_more_configurations_were_tried() -> None:
    assert expected_max_sharpe(1, 0.1) == 0.0
    assert 0 < expected_max_sharpe(10, 0.1) < expected_max_sharpe(100, 0.1)
    r = np.random.default_rng(12).normal(0.2, 1.0, size=60)
    assert deflated_sharpe(r, 1) == pytest.approx(probabilistic_sharpe(r))
    assert deflated_sharpe(r, 100) < deflated_sharpe(r, 10) < deflated_sharpe(r, 1)
