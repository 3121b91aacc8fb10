"""The sanity pair of the trainer, through the real walk-forward evaluation (unistream_trainer.evaluate).

Both must hold; one without the other proves nothing:

- it learns: on a market with a planted, learnable pattern (a state feature gives the sign of the
  drift of the coming returns, and the drift pays far more than the 0.1 % fee per side) the DQN's
  greedy policy, trained on earlier blocks only, beats buy-and-hold, flat and random (at the same
  trade rate) after fees, with the lower end of its interval above each baseline's mean and the
  paired difference significantly above 0;
- the evaluation is honest: on a random walk with the same volatility and the same kind of states
  the same learner shows no significant edge (its PnL minus flat's, and minus buy-and-hold's, is not
  significantly positive).

Plus the walk-forward's own promise: a fold's result is that of a fresh core trained on the blocks
before its test block and nothing later.

Small networks, one torch thread; the whole file takes about 10 s.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import msgspec
import numpy as np
import pytest
import torch

from unistream_common import codec
from unistream_common.packets import TrainingDataPacket
from unistream_trainer.core import TrainerCore
from unistream_trainer.dqn import Hyperparameters
from unistream_trainer.evaluate import (
    FoldResult,
    block_bounds,
    paper_trade,
    summarize,
    train_on,
    walk_forward,
)

T0 = 1_700_000_000_000
FEE = 0.001
N_PACKETS = 2_000  # 4 blocks of 500 one-second steps: 3 folds
FOLDS = 3
SEEDS = (1, 2, 3)
DIM = 8
DRIFT = 0.002  # per step, signed by the regime: a regime of ~25 steps earns ~5 % against 0.2 % of fees
NOISE = 0.002
SWITCH = 1 / 25  # chance per step that the regime flips

HP = Hyperparameters(
    hidden_sizes=(32, 32),
    learning_rate=1e-3,
    gamma=0.9,
    buffer_size=2_000,
    batch_size=32,
    learning_starts=64,
    updates_per_transition=1.0,
    exploration_steps=500,
    fee=FEE,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def market(planted: bool, n: int = N_PACKETS, seed: int = 0) -> list[TrainingDataPacket]:
    """One symbol's packets, one a second. ``r[k] = log(price[k+1] / price[k])`` is what a decision at k earns.

    The state at ``k`` holds a regime ``z[k]`` (+1/-1, persistent), the latest return ``r[k-1]``
    (scaled; already booked, so a timing error in the books or the rewards would show as an edge
    on it) and 6 noise values. Planted: ``r[k] = DRIFT * z[k] + NOISE * e``, so ``z`` predicts the
    sign of the coming returns. Random walk: ``r[k] = hypot(DRIFT, NOISE) * e`` (the same
    volatility), ``z`` unrelated to it.
    """
    rng = np.random.default_rng(seed)
    z = np.ones(n)
    for k in range(1, n):
        z[k] = -z[k - 1] if rng.random() < SWITCH else z[k - 1]
    noise = rng.normal(0.0, 1.0, (n, DIM - 2))
    if planted:
        r = DRIFT * z + NOISE * rng.normal(0.0, 1.0, n)
    else:
        r = math.hypot(DRIFT, NOISE) * rng.normal(0.0, 1.0, n)
    price = 100.0 * np.exp(np.concatenate([[0.0], np.cumsum(r[:-1])]))
    last_return = np.concatenate([[0.0], r[:-1]]) / math.hypot(DRIFT, NOISE)
    packets = []
    for k in range(n):
        state = np.concatenate([[z[k], last_return[k]], noise[k]]).astype(np.float32)
        packets.append(
            TrainingDataPacket(
                symbol="ETHUSDT",
                ts_event_ms=T0 + 1_000 * k,
                price=float(price[k]),
                source="SYNTHETIC",
                state_dim=DIM,
                state=codec.f32_to_bytes(state),
                cnn_features=b"",
                cnn_predictions=b"",
                prediction_names=[],
                model_version="test",
                window_fill=1.0,
            )
        )
    return packets


def describe(results: list[FoldResult]) -> str:
    rows, edges = summarize(results)
    pnl = rows[0]
    lines = [f"policy pnl {pnl.policy}"]
    lines += [f"{b} pnl {iv}" for b, iv in pnl.baselines.items()]
    lines += [f"policy - {b}: {iv}" for b, iv in edges.items()]
    return "\n".join(lines)


def test_on_a_planted_pattern_the_policy_beats_every_baseline_after_fees() -> None:
    results = walk_forward(market(planted=True, seed=11), FOLDS, SEEDS, HP)
    assert len(results) == len(SEEDS) * FOLDS
    rows, edges = summarize(results)
    pnl = rows[0]
    assert pnl.metric == "pnl"
    print(describe(results))
    for name, baseline in pnl.baselines.items():
        assert pnl.policy.low > baseline.value, f"policy {pnl.policy} vs {name} {baseline}"
        assert edges[name].low > 0, f"policy - {name}: {edges[name]}"
    assert pnl.policy.low > 0.3, "a third of the drift's worth, net of fees, on every block"
    fee_share = next(r for r in rows if r.metric == "fee_share").policy
    assert fee_share.value < 0.5, "the edge is not eaten by fees"
    for r in results:  # the random baseline traded at the policy's rate: it paid fees too
        assert r.metrics["paper/random_position_changes"] > 0


def test_on_a_random_walk_the_same_learner_shows_no_edge() -> None:
    results = walk_forward(market(planted=False, seed=12), FOLDS, SEEDS, HP)
    rows, edges = summarize(results)
    print(describe(results))
    assert not edges["flat"].low > 0, f"no significant PnL on noise: {edges['flat']}"
    assert not edges["buy_and_hold"].low > 0, f"nor over buy-and-hold: {edges['buy_and_hold']}"
    assert not rows[0].policy.low > 0


def test_a_fold_is_a_fresh_core_trained_on_the_earlier_blocks_only() -> None:
    hp = replace(HP, hidden_sizes=(8,), learning_starts=32, batch_size=16, buffer_size=200)
    packets = market(planted=True, n=160, seed=5)
    bounds = block_bounds(len(packets), folds=3)
    results = walk_forward(packets, 3, [4], hp)
    for fold, result in enumerate(results):
        end = bounds[fold][1]
        visible = packets[:end]  # nothing after the training blocks exists for the fresh core
        core = TrainerCore(replace(hp, seed=4))
        train_on(core, visible, 0, end)
        t0, t1 = bounds[fold + 1]
        assert paper_trade(core, packets[t0:t1], FEE, seed=1_000 * 4 + fold) == result.metrics
        assert (result.train_packets, result.test_packets, result.updates) == (end, t1 - t0, core.updates)
    # Changing the last block changes only the fold that trades on it.
    last = bounds[-1][0]
    changed = packets[:last] + [
        msgspec.structs.replace(p, price=p.price * (1.5 if k % 2 else 0.7), state=codec.f32_to_bytes(-np.ones(DIM)))
        for k, p in enumerate(packets[last:])
    ]
    again = walk_forward(changed, 3, [4], hp)
    assert [r.metrics for r in again[:2]] == [r.metrics for r in results[:2]]
    assert again[2].metrics != results[2].metrics


def test_too_little_data_for_the_folds_is_refused_with_the_reason() -> None:
    from unistream_trainer.evaluate import EvaluationError

    with pytest.raises(EvaluationError, match="too little data"):
        block_bounds(79, folds=3)
    assert block_bounds(80, folds=3) == [(0, 20), (20, 40), (40, 60), (60, 80)]
