"""Sensitivity learner: context layout, counterfactual targets, prequential scoring, and what it learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unistream_common import codec
from unistream_common.packets import TrainingDataPacket
from unistream_trainer.sensitivity import (
    CONTEXT_NAMES,
    SensitivityLearner,
    packet_predictions,
    signal_context,
)

pytestmark = pytest.mark.heavy
torch.set_num_threads(1)

PREDICTIONS = {"1s.p_top": 0.1, "1s.p_bottom": 0.2, "1s.p_up": 0.7, "1s.p_down": 0.3, "1m.p_top": 0.9}


def synthetic_contexts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Contexts in the CONTEXT_NAMES layout: confidence 1/3..1, CNN outputs uniform, side +-1."""
    p = rng.uniform(1 / 3, 1, n)
    q_gap = np.log(2 * p / (1 - p)) + rng.normal(0, 0.1, n)
    cnn = rng.uniform(0, 1, (n, 4))
    side = rng.choice([-1.0, 1.0], n)
    return np.column_stack([q_gap, p, cnn, side]).astype(np.float32)


def stream(learner: SensitivityLearner, contexts: np.ndarray, outcomes: np.ndarray, every: int = 25) -> None:
    """Closed trades one by one, as they would arrive; a few gradient steps every ``every`` trades."""
    for k in range(len(outcomes)):
        learner.record(contexts[k], float(outcomes[k]))
        if (k + 1) % every == 0:
            learner.train(every)


# --- the context --------------------------------------------------------------------------------


def test_signal_context_layout():
    c = signal_context([0.0, 1.0, -1.0], 1, PREDICTIONS)
    assert c.dtype == np.float32 and c.shape == (len(CONTEXT_NAMES),)
    p_long = math.e / (1 + math.e + math.exp(-1))
    np.testing.assert_allclose(c, [1.0, p_long, 0.1, 0.2, 0.7, 0.3, 1.0], rtol=1e-6)
    short = signal_context([0.5, 0.0, 2.5], 2, PREDICTIONS)
    assert short[0] == pytest.approx(2.0) and short[-1] == -1.0
    with pytest.raises(KeyError, match="1s.p_up"):
        signal_context([0.0, 1.0, -1.0], 1, {"1s.p_top": 0.5})
    assert signal_context([0.0, 1.0, -1.0], 1, {}, fill=0.5)[2:6].tolist() == [0.5] * 4
    with pytest.raises(ValueError):
        signal_context([0.0, 1.0], 1, PREDICTIONS)


def test_packet_predictions_reads_the_names_and_values_of_a_training_packet():
    values = codec.f32_to_bytes(np.array(list(PREDICTIONS.values()), np.float32))
    packet = TrainingDataPacket(
        symbol="ETHUSDT", ts_event_ms=1_700_000_000_000, price=100.0, source="SYNTHETIC", state_dim=0,
        state=b"", cnn_features=b"", cnn_predictions=values, prediction_names=list(PREDICTIONS),
        model_version="cnn-init-7", window_fill=1.0,
    )  # fmt: skip
    assert packet_predictions(packet) == pytest.approx(PREDICTIONS)


# --- mechanics ----------------------------------------------------------------------------------


def test_targets_are_the_utility_of_every_size_from_one_outcome():
    learner = SensitivityLearner(2, risk_aversion=0.5)
    y = learner.targets(torch.tensor([0.004, -0.002]))
    # Percent outcomes 0.4 and -0.2; u = s*o - 0.5*(s*o)^2 at sizes 0.5 and 1.
    expected = [[0.2 - 0.5 * 0.04, 0.4 - 0.5 * 0.16], [-0.1 - 0.5 * 0.01, -0.2 - 0.5 * 0.04]]
    torch.testing.assert_close(y, torch.tensor(expected))
    neutral = SensitivityLearner(2, risk_aversion=0.0)
    torch.testing.assert_close(neutral.targets(torch.tensor([0.004])), torch.tensor([[0.2, 0.4]]))


def test_an_untrained_learner_skips_and_training_waits_for_min_trades():
    learner = SensitivityLearner(3, min_trades=10)
    assert learner.decide([0.9, 0.1, 0.0]) == (False, 0.0)
    for _ in range(9):
        learner.record([0.9, 0.9, 0.0], 0.01)
    assert learner.train(5) == 0
    learner.record([0.9, 0.9, 0.0], 0.01)
    assert learner.train(5) == 5 and learner.updates == 5
    with pytest.raises(ValueError, match="values"):
        learner.record([0.9, 0.1], 0.01)
    with pytest.raises(ValueError, match="NaN"):
        learner.decide([math.nan, 0.1, 0.0])
    with pytest.raises(ValueError, match="outcome"):
        learner.record([0.9, 0.1, 0.0], math.inf)


def test_each_outcome_is_scored_before_it_is_trained_on():
    rng = np.random.default_rng(0)
    contexts = synthetic_contexts(rng, 300)
    learner = SensitivityLearner(len(CONTEXT_NAMES), seed=1, block_trades=50)
    acts, thresholds = 0, []
    for k, c in enumerate(contexts):
        before = learner.decide(c)[1]
        thresholds.append(learner.threshold)
        acts += c[1] >= learner.threshold  # the threshold rule as chosen before this trade
        assert learner.record(c, 0.01 * (c[1] - 0.6)) == before
        if k % 20 == 19:
            learner.train(20)
    m = learner.metrics()
    assert m["sensitivity/trades"] == 300 and m["sensitivity/blocks"] == 6
    shares = [m[f"sensitivity/chosen_size_{s:g}"] for s in (0.0, 0.5, 1.0)]
    assert sum(shares) == pytest.approx(1.0)
    assert m["sensitivity/baseline_act_rate"] == pytest.approx(acts / 300)
    # the first block acts on every signal; each later one by a threshold chosen on the trades before it
    assert thresholds[:50] == [0.0] * 50 and len(set(thresholds[50:100])) == 1 and thresholds[50] > 0.5


def test_the_same_seed_and_trades_give_the_same_learner():
    rng = np.random.default_rng(4)
    contexts, outcomes = synthetic_contexts(rng, 200), rng.normal(0, 0.003, 200)
    a, b = SensitivityLearner(7, seed=3), SensitivityLearner(7, seed=3)
    stream(a, contexts, outcomes)
    stream(b, contexts, outcomes)
    assert a.metrics() == b.metrics()
    np.testing.assert_array_equal(a.utilities(contexts[0]), b.utilities(contexts[0]))


# --- what it learns -----------------------------------------------------------------------------


def _cnn_agreement_day(cnn: float) -> tuple[np.ndarray, np.ndarray]:
    """Net of fees a trade wins only above 70 % confidence, more so when the CNN agrees with its side."""
    rng = np.random.default_rng(0)
    n = 3000
    contexts = synthetic_contexts(rng, n)
    p_action, p_up, p_down, side = contexts[:, 1], contexts[:, 4], contexts[:, 5], contexts[:, 6]
    return contexts, 0.01 * (p_action - 0.7) + cnn * side * (p_up - p_down) + rng.normal(0, 0.003, n)


def test_it_sizes_the_trades_when_it_beats_acting_always_and_the_best_past_threshold_on_held_out_blocks():
    contexts, outcomes = _cnn_agreement_day(0.008)
    learner = SensitivityLearner(len(CONTEXT_NAMES), seed=0)
    stream(learner, contexts, outcomes)
    m = learner.metrics()
    assert m["sensitivity/threshold"] == pytest.approx(0.7, abs=0.05)  # the rule found the 70 % cut-off
    assert m["sensitivity/mean_reward"] > m["sensitivity/baseline_mean_reward"] > 0
    assert m["sensitivity/edge_t"] > 4  # measured 12.0
    assert m["sensitivity/block_edge_threshold_low"] > 0 and m["sensitivity/block_edge_always_low"] > 0
    assert learner.trading()[0] and m["sensitivity/trading"] == 1.0
    assert m["sensitivity/act_rate"] < 1 and m["sensitivity/chosen_size_0.5"] > 0


def test_it_stays_in_the_shadow_when_the_best_past_threshold_does_as_well():
    contexts, outcomes = _cnn_agreement_day(0.004)  # the CNN's part is too small to beat the threshold
    learner = SensitivityLearner(len(CONTEXT_NAMES), seed=0)
    stream(learner, contexts, outcomes)
    m = learner.metrics()
    assert m["sensitivity/block_edge_always_low"] > 0 and m["sensitivity/block_edge_threshold_low"] < 0
    trading, why = learner.trading()
    assert not trading and why.startswith("shadow, full size: over 20 held-out blocks")


def test_it_shows_no_edge_and_mostly_skips_when_outcomes_ignore_the_signal():
    rng = np.random.default_rng(1)
    n = 3000
    contexts = synthetic_contexts(rng, n)
    outcomes = rng.normal(0, 0.003, n)
    learner = SensitivityLearner(len(CONTEXT_NAMES), seed=1)
    stream(learner, contexts, outcomes)
    m = learner.metrics()
    assert abs(m["sensitivity/edge_t"]) < 2  # measured -1.1
    assert m["sensitivity/recent_act_rate"] < 0.25  # measured 0.11
    assert abs(m["sensitivity/mean_reward"]) < 3 * 0.003 / math.sqrt(n)
    assert not learner.trading()[0] and m["sensitivity/trading"] == 0.0


def test_risk_aversion_picks_half_size_for_a_noisy_edge_full_for_a_clear_one_and_skips_a_loser():
    rng = np.random.default_rng(0)
    n = 1200
    kind = rng.integers(0, 3, n)
    # noisy positive edge, clear small edge, losing
    mean, std = np.array([0.0022, 0.001, -0.0005]), np.array([0.003, 0.0005, 0.003])
    outcomes = rng.normal(mean[kind], std[kind])
    contexts = np.eye(3, dtype=np.float32)[kind]
    learner = SensitivityLearner(3, seed=0, risk_aversion=2.0, confidence_index=0)
    stream(learner, contexts, outcomes)
    assert [learner.decide(np.eye(3)[k]) for k in range(3)] == [(True, 0.5), (True, 1.0), (False, 0.0)]
