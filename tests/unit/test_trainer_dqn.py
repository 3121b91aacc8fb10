"""DQN pieces and the trainer core: returns, targets, updates, replay, rewards, checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from torch import nn

from unistream_common import codec
from unistream_common.packets import TrainingDataPacket
from unistream_model.layout import position_slot
from unistream_trainer import checkpoint as ck
from unistream_trainer.core import TrainerCore, observation, packets_per_batch, step_reward
from unistream_trainer.dqn import (
    Batch,
    Hyperparameters,
    InputStatistics,
    QNetwork,
    ReplayBuffer,
    cost_matrix,
    double_dqn_td_target,
    is_statistic,
    linear_schedule,
    n_step_return,
    soft_update,
    td_loss,
    train_step,
    upgrade_state_dict,
)
from unistream_trainer.replicas import Submission, merge_model

torch.set_num_threads(1)

T0 = 1_700_000_000_000


def small_hp(**kw: object) -> Hyperparameters:
    base: dict[str, object] = {
        "buffer_size": 200,
        "batch_size": 8,
        "learning_starts": 8,
        "hidden_sizes": (16,),
        "exploration_steps": 100,
        "updates_per_transition": 1.0,
        "max_updates_per_batch": 4,
        "learning_rate": 1e-3,
        # a decision credited with the step it decides on, no slippage, costs learned: the
        # transition mechanics alone (the fill a step later and known costs are tested by themselves)
        "fill_lag": 0,
        "slippage": 0.0,
        "known_costs": False,
    }
    base.update(kw)
    return Hyperparameters(**base)  # type: ignore[arg-type]


def packet(
    t: int, price: float, dim: int = 6, symbol: str = "ETHUSDT", value: float = 0.1, state: np.ndarray | None = None,
    layout: str = "", cnn: str = "cnn-init-7",
) -> TrainingDataPacket:  # fmt: skip
    values = np.full(dim, value, np.float32) if state is None else np.asarray(state, np.float32)
    return TrainingDataPacket(
        symbol=symbol, ts_event_ms=T0 + 1000 * t, price=price, source="SYNTHETIC", state_dim=values.size,
        state=codec.f32_to_bytes(values), cnn_features=b"", cnn_predictions=b"", prediction_names=[],
        model_version=cnn, window_fill=1.0, layout_version=layout,
    )  # fmt: skip


# --- returns and targets ----------------------------------------------------------------------


def test_n_step_return_discounts_each_later_reward_by_one_more_gamma():
    assert n_step_return([1.0, 2.0, 3.0], 0.5) == pytest.approx(1 + 0.5 * 2 + 0.25 * 3)
    assert n_step_return([], 0.9) == 0.0


def test_double_dqn_target_takes_the_online_argmax_valued_by_the_target_network():
    next_q_online = torch.tensor([[1.0, 5.0, 2.0], [0.0, -1.0, 3.0]])
    next_q_target = torch.tensor([[10.0, 20.0, 30.0], [7.0, 8.0, 9.0]])
    rewards = torch.tensor([1.0, -1.0])
    discounts = torch.tensor([0.5, 0.0])
    td_target = double_dqn_td_target(next_q_online, next_q_target, rewards, discounts)
    # Row 0: online picks action 1 -> target value 20 (not the target's own max 30): 1 + 0.5 * 20.
    # Row 1: discount 0 (terminal) -> just the reward.
    assert td_target.tolist() == [11.0, -1.0]


def test_linear_schedule_falls_from_start_to_end_and_stays():
    assert linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert linear_schedule(1.0, 0.1, 100, 10_000) == pytest.approx(0.1)


def test_dueling_q_network_advantages_average_to_the_state_value():
    torch.manual_seed(0)
    net = QNetwork(5, (8, 8))
    obs = torch.randn(4, 5)
    q = net(obs)
    v = net.value(net.trunk(obs))
    assert q.shape == (4, 3)
    torch.testing.assert_close(q.mean(dim=1, keepdim=True), v)


def linear_layout(net: QNetwork) -> dict[str, torch.Tensor]:
    """``net``'s weights as saved before the first layer kept its weight (in, out): nn.Linear's names and layout."""
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["trunk.0.weight"] = state.pop("trunk.0.weight_in_out").t().contiguous()
    return state


def test_the_first_layer_computes_what_nn_linear_computes_and_weights_saved_in_its_layout_load():
    torch.manual_seed(3)
    net = QNetwork(7, (5, 4))
    torch.manual_seed(3)
    as_before = nn.Sequential(nn.Linear(7, 5))  # the same draws, in the order QNetwork makes them
    first = net.trunk[0]
    torch.testing.assert_close(first.weight_in_out, as_before[0].weight.t())
    torch.testing.assert_close(first.bias, as_before[0].bias)
    obs = torch.randn(6, 7)
    torch.testing.assert_close(first(obs), as_before(obs))
    old = linear_layout(net)
    assert set(upgrade_state_dict(old)) == set(net.state_dict())
    other = QNetwork(7, (5, 4))
    other.load_state_dict(upgrade_state_dict(old), strict=True)
    torch.testing.assert_close(other(obs), net(obs))
    current = net.state_dict()
    assert upgrade_state_dict(current) is current


def test_one_gradient_step_reduces_the_td_loss_on_a_fixed_batch():
    torch.manual_seed(1)
    q_network, target_network = QNetwork(6, (32,)), QNetwork(6, (32,))
    target_network.load_state_dict(q_network.state_dict())
    g = torch.Generator().manual_seed(2)
    batch = Batch(
        obs=torch.randn(32, 6, generator=g),
        actions=torch.randint(0, 3, (32,), generator=g),
        rewards=torch.randn(32, generator=g),
        next_obs=torch.randn(32, 6, generator=g),
        discounts=torch.full((32,), 0.97),
    )
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-2)
    before = td_loss(q_network, target_network, batch)[0].item()
    reported, _ = train_step(q_network, target_network, optimizer, batch, max_grad_norm=10.0)
    after = td_loss(q_network, target_network, batch)[0].item()
    assert reported == pytest.approx(before)
    assert after < 0.95 * before


def test_soft_update_moves_the_target_a_tau_fraction_and_tau_one_copies():
    a, b = QNetwork(3, (4,)), QNetwork(3, (4,))
    wa, wb = a.value.weight.detach().clone(), b.value.weight.detach().clone()
    soft_update(b, a, 0.25)
    torch.testing.assert_close(b.value.weight, wb + 0.25 * (wa - wb))
    soft_update(b, a, 1.0)
    torch.testing.assert_close(b.value.weight, wa)


def test_replay_ring_overwrites_the_oldest_after_wrapping_around():
    rb = ReplayBuffer(capacity=4, obs_dim=2)
    for k in range(6):
        rb.add(np.full(2, k, np.float32), k % 3, float(k), np.full(2, k + 1, np.float32), 0.9)
    assert len(rb) == 4 and rb.pos == 2
    assert sorted(rb.rewards.tolist()) == [2.0, 3.0, 4.0, 5.0]
    assert rb.obs[0, 0] == 4 and rb.obs[1, 0] == 5 and rb.obs[2, 0] == 2
    batch = rb.sample(64, np.random.default_rng(0))
    assert set(batch.rewards.tolist()) <= {2.0, 3.0, 4.0, 5.0}
    assert batch.obs.shape == (64, 2) and batch.actions.dtype == torch.int64


# --- rewards and the core ---------------------------------------------------------------------


def test_reward_is_position_times_log_return_less_fee_per_unit_traded():
    assert step_reward(1, 0, 100.0, 101.0, 0.001) == pytest.approx(math.log(1.01) - 0.001)
    assert step_reward(-1, 1, 100.0, 99.0, 0.001) == pytest.approx(-math.log(0.99) - 0.002)
    assert step_reward(0, 0, 100.0, 150.0, 0.001) == 0.0
    assert step_reward(1, 1, 100.0, 100.0, 0.001) == 0.0


def test_observation_appends_a_one_hot_of_the_position():
    obs = observation(np.array([0.5, -0.5], np.float32), -1)
    assert obs.tolist() == [0.5, -0.5, 0.0, 0.0, 1.0]


def feed(core: TrainerCore, packets: list[TrainingDataPacket]) -> int:
    """What the shell does: each packet with its symbol's predecessors (up to n_step + fill_lag, oldest first)."""
    seen: dict[str, list[TrainingDataPacket]] = {}
    ancestors = []
    for p in packets:
        mine = seen.setdefault(p.symbol, [])
        ancestors.append(list(mine[-(core.hp.n_step + core.hp.fill_lag) :]))
        mine.append(p)
    return core.process(packets, ancestors)


def test_core_builds_a_transition_from_a_packet_and_its_predecessor_with_the_reward_of_the_action():
    core = TrainerCore(small_hp(n_step=1, start_e=0.0, end_e=0.0, reward_scale=1.0, fee=0.001))
    prices = [100.0, 101.0, 100.0, 102.0]
    feed(core, [packet(t, p) for t, p in enumerate(prices)])
    agent = core.agent
    assert agent is not None and len(agent.replay) == 3 and core.transitions == 3
    assert core.events["no_predecessor"] == 1, "the first packet has none"
    held_seen = set()
    for k in range(3):
        obs, action, next_obs = agent.replay.obs[k], int(agent.replay.actions[k]), agent.replay.next_obs[k]
        held = [0, 1, -1][int(np.argmax(obs[6:]))]
        held_seen.add(held)
        pos = [0, 1, -1][action]
        assert [0, 1, -1][int(np.argmax(next_obs[6:]))] == pos, "the next observation holds the action's position"
        expected = step_reward(pos, held, prices[k], prices[k + 1], 0.001)
        assert agent.replay.rewards[k] == pytest.approx(expected, rel=1e-5, abs=1e-7)
        assert agent.replay.discounts[k] == pytest.approx(0.99)


def test_a_decision_is_credited_with_the_step_after_its_fill_at_the_fee_plus_slippage():
    """fill_lag 1: the paper trader fills a decision one packet later, so that is the move it earns.

    Crediting the move from the deciding packet's own price (fill_lag 0) pays the policy for a
    fill it cannot get, and teaches it nothing about the step it does hold.
    """
    hp = small_hp(n_step=1, fill_lag=1, start_e=0.0, end_e=0.0, reward_scale=1.0, fee=0.001, slippage=0.0002)
    core = TrainerCore(hp)
    prices = [100.0, 101.0, 100.0, 102.0, 99.0]
    feed(core, [packet(t, p) for t, p in enumerate(prices)])
    agent = core.agent
    assert agent is not None and core.events["no_predecessor"] == 2, "the first two packets cannot be filled"
    assert len(agent.replay) == 3 and core.transitions == 3
    for k in range(3):  # decided at packet k, filled at k + 1, holds the move k + 1 -> k + 2
        obs, action, next_obs = agent.replay.obs[k], int(agent.replay.actions[k]), agent.replay.next_obs[k]
        held = [0, 1, -1][int(np.argmax(obs[6:]))]
        pos = [0, 1, -1][action]
        expected = step_reward(pos, held, prices[k + 1], prices[k + 2], 0.0012)
        assert agent.replay.rewards[k] == pytest.approx(expected, rel=1e-5, abs=1e-7)
        assert [0, 1, -1][int(np.argmax(next_obs[6:]))] == pos
        assert agent.replay.discounts[k] == pytest.approx(0.99)
    with pytest.raises(ValueError, match="fill_lag"):
        small_hp(fill_lag=-1)


def test_n_step_transitions_follow_the_greedy_policy_after_the_first_action():
    core = TrainerCore(small_hp(n_step=3, start_e=0.0, end_e=0.0, reward_scale=1.0, fee=0.0))
    prices = [100.0, 101.0, 103.0, 102.0]
    chain = [packet(t, p) for t, p in enumerate(prices)]
    core.observe(chain[3], chain[:3])
    agent = core.agent
    assert agent is not None and len(agent.replay) == 1
    assert agent.replay.discounts[0] == pytest.approx(0.99**3)
    # Without fees and with a state that is the same everywhere, the greedy action does not change
    # after the first step (the position one-hot changes it only through the network): recompute it.
    obs0 = agent.replay.obs[0]
    held = [0, 1, -1][int(np.argmax(obs0[6:]))]
    pos = [0, 1, -1][int(agent.replay.actions[0])]
    rewards = [step_reward(pos, held, prices[0], prices[1], 0.0)]
    for i in (1, 2):
        with torch.no_grad():
            q = agent.q_network(torch.from_numpy(observation(np.full(6, 0.1, np.float32), pos)).unsqueeze(0))
        new = [0, 1, -1][int(q.argmax())]
        rewards.append(step_reward(new, pos, prices[i], prices[i + 1], 0.0))
        pos = new
    assert agent.replay.rewards[0] == pytest.approx(n_step_return(rewards, 0.99), rel=1e-5, abs=1e-7)
    assert [0, 1, -1][int(np.argmax(agent.replay.next_obs[0][6:]))] == pos


def test_a_chain_is_cut_at_a_gap_and_at_a_predecessor_that_is_not_older():
    core = TrainerCore(small_hp(n_step=3), max_gap_ms=5_000)
    core.observe(packet(60, 100.0), [packet(0, 100.0), packet(1, 101.0)])  # a minute after its predecessors
    core.observe(packet(3, 100.0), [packet(3, 100.0)])  # the "predecessor" is not older
    assert core.events["no_predecessor"] == 2 and core.agent is None
    core.observe(packet(62, 100.0), [packet(0, 100.0), packet(61, 101.0)])  # the gap is before 61: one step
    assert core.agent is not None and len(core.agent.replay) == 1 and core.events["short_chains"] == 1
    assert core.agent.replay.discounts[0] == pytest.approx(0.99)


def test_core_reinitialises_when_the_state_dim_changes_and_counts_it():
    core = TrainerCore(small_hp())
    feed(core, [packet(t, 100.0) for t in range(5)])
    first = core.agent
    core.observe(packet(6, 100.0, dim=9), [packet(5, 100.0, dim=9)])
    assert core.agent is not first and core.agent is not None and core.agent.obs_dim == 12
    assert core.state_dim == 9 and core.state_dim_changes == 1 and len(core.agent.replay) == 1


def test_core_refuses_states_of_another_layout_of_the_same_size_and_weights_trained_on_one():
    def tagged(t: int, layout: str, symbol: str = "ETHUSDT") -> TrainingDataPacket:
        return msgspec.structs.replace(packet(t, 100.0 + t % 2, symbol=symbol), layout_version=layout)

    core = TrainerCore(small_hp())
    for t in range(1, 5):
        core.observe(tagged(t, "v2/aaaa"), [tagged(t - 1, "v2/aaaa")])
    core.observe(tagged(5, "v2/aaaa", "BTCUSDT"), [tagged(4, "v2/aaaa", "BTCUSDT")])  # every symbol: one tag
    first, stored = core.agent, len(core.agent.replay)
    assert stored == 5 and core.agent_layout == "v2/aaaa" and not core.events["layout_mismatch"]
    core.observe(tagged(6, "v2/bbbb"), [tagged(5, "v2/bbbb")])
    core.observe(tagged(7, "v2/aaaa"), [tagged(6, "v2/bbbb")])  # a predecessor of the other layout
    assert core.events["layout_mismatch"] == 2 and len(core.agent.replay) == stored and core.agent is first
    assert "v2/bbbb" in core.layout_error and "built for v2/aaaa" in core.layout_error
    assert core.greedy_action(tagged(8, "v2/bbbb"), 1) == (1, pytest.approx(np.zeros(3)))  # holds, no decision
    core.observe(tagged(8, ""), [tagged(7, "v2/aaaa")])  # a packet of an older release names none: not checked
    assert len(core.agent.replay) == stored + 1

    weights = {k: v.clone() + 1 for k, v in first.q_network.state_dict().items()}
    assert not core.adopt(weights, "dqn-r0000002", "v2/bbbb") and core.events["weights_other_layout"] == 1
    assert core.adopt(weights, "dqn-r0000003", "v2/aaaa") and core.model_version == "dqn-r0000003"
    waiting = TrainerCore(small_hp())
    assert not waiting.adopt(weights, "dqn-r0000003", "v2/bbbb")  # no network yet: waits for the first packet
    waiting.observe(tagged(2, "v2/aaaa"), [tagged(1, "v2/aaaa")])
    assert waiting.model_version == "" and waiting.events["weights_other_layout"] == 1


def test_adopting_merged_weights_keeps_what_the_replica_learned_since_it_submitted():
    core = TrainerCore(small_hp(learning_starts=8, updates_per_transition=1.0, max_updates_per_batch=64))
    packets = [packet(t, 100.0 + (t % 3)) for t in range(60)]
    feed(core, packets[:30])
    assert core.origin is not None
    submitted = core.take_delta()
    assert submitted is not None and any(v.abs().sum() > 0 for v in submitted.values())
    feed(core, packets[30:])  # learned between its submission and the merged round's adoption
    before = core.online_weights()
    assert before is not None and core.mark is not None
    local = {k: before[k] - core.mark[k] for k in before}
    assert any(v.abs().sum() > 0 for v in local.values())
    merged = {k: core.origin[k] + 2 * submitted[k] + 0.01 for k in before}  # anything the leader published
    assert core.adopt(merged, "dqn-r0000001")
    after = core.online_weights()
    assert after is not None
    for k in after:  # the merged weights plus the local learning, not the merged weights alone
        torch.testing.assert_close(after[k], merged[k] + local[k])
    again = core.take_delta()  # ... which goes into the next submission, once
    assert again is not None
    for k in again:
        torch.testing.assert_close(again[k], local[k])
    assert all(float(v.abs().sum()) == 0 for v in (core.take_delta() or {}).values())


def test_core_takes_gradient_steps_after_learning_starts_bounded_per_batch():
    core = TrainerCore(small_hp(learning_starts=8, updates_per_transition=2.0, max_updates_per_batch=4))
    packets = [packet(t, 100.0 + (t % 3)) for t in range(42)]
    assert feed(core, packets[:6]) == 0, "replay below learning_starts"
    steps = feed(core, packets[6:40])
    assert core.transitions == 38
    # what was owed below learning_starts is capped at max_updates_per_batch (4, not 2 x 8), then
    # each of the 30 transitions after earns its 2, batch by batch (2 packets a batch)
    assert steps == 4 + 2 * (38 - 8)
    m = core.metrics(T0)
    assert m["charts/updates"] == steps and "losses/td_loss" in m and math.isfinite(m["losses/td_loss"])
    assert m["charts/packets"] == 40 and m["charts/replay_size"] == len(core.agent.replay)  # type: ignore[union-attr]
    assert 0 < m["charts/epsilon"] < 1
    feed(core, packets[39:42])
    later = core.metrics(T0 + 2000)
    assert later["charts/updates_per_s"] == pytest.approx(4 / 2) and later["charts/packets_per_s"] == pytest.approx(
        3 / 2
    )


def test_merged_weights_are_adopted_when_they_fit_and_wait_for_the_first_packet():
    donor = TrainerCore(small_hp(normalize=True))
    feed(donor, [packet(t, 100.0 + (t % 4)) for t in range(30)])
    weights = {k: v.clone() for k, v in donor.agent.q_network.state_dict().items()}  # type: ignore[union-attr]
    fresh = TrainerCore(small_hp(normalize=True))
    assert fresh.adopt(weights, "dqn-r0000001") is False, "no agent yet: waits"
    fresh.observe(packet(1, 100.0), [packet(0, 100.0)])
    assert fresh.model_version == "dqn-r0000001"
    own = fresh.agent.q_network.state_dict()  # type: ignore[union-attr]
    assert own["input_stats.count"].item() == weights["input_stats.count"].item() + 1, "its own first state counted"
    for name, tensor in weights.items():
        if is_statistic(name):
            continue
        assert torch.equal(own[name], tensor), name
        assert torch.equal(fresh.agent.target_network.state_dict()[name], tensor), name  # type: ignore[union-attr]
    other = TrainerCore(small_hp(normalize=True))
    other.observe(packet(1, 100.0, dim=7), [packet(0, 100.0, dim=7)])
    assert other.adopt(weights, "x") is False and other.events["weights_not_fitting"] == 1
    # weights a replica of the previous release publishes (nn.Linear's layout of the first layer) fit too
    older = TrainerCore(small_hp(normalize=True))
    older.observe(packet(1, 100.0), [packet(0, 100.0)])
    assert older.adopt(linear_layout(donor.agent.q_network), "dqn-r0000002") is True  # type: ignore[union-attr]
    for name, tensor in weights.items():
        if not is_statistic(name):  # the statistics: the merged ones plus its own state since
            assert torch.equal(older.agent.q_network.state_dict()[name], tensor), name  # type: ignore[union-attr]


def trained_core(**kw: object) -> TrainerCore:
    core = TrainerCore(small_hp(**kw))
    feed(core, [packet(t, 100.0 + (t % 4)) for t in range(30)])
    assert core.updates > 0
    return core


def test_adopted_weights_leave_a_learning_agent_s_target_to_its_polyak_rule():
    core = trained_core()
    agent = core.agent
    assert agent is not None and agent.updates > 0
    target_before = {k: v.clone() for k, v in agent.target_network.state_dict().items()}
    merged = {k: v + 0.5 for k, v in agent.q_network.state_dict().items()}
    assert core.adopt(merged, "dqn-r0000003")
    online = agent.q_network.state_dict()
    for name, tensor in agent.target_network.state_dict().items():
        if is_statistic(name):  # one set of input statistics, the online network's
            assert torch.equal(tensor, online[name]), name
            continue
        assert torch.equal(tensor, target_before[name]), f"{name}: the target was reset to the merged weights"
    agent.learn(1)
    tau = core.hp.tau
    online = agent.q_network.state_dict()
    for name, tensor in agent.target_network.state_dict().items():
        if is_statistic(name):
            continue
        expected = target_before[name] + tau * (online[name] - target_before[name])
        torch.testing.assert_close(tensor, expected, msg=name)


# --- input statistics and stale CNN states ------------------------------------------------------


def test_input_statistics_standardise_each_state_value_and_leave_the_position_raw():
    rng = np.random.default_rng(3)
    core = TrainerCore(small_hp(normalize=True))
    scales = np.array([0.001, 1.0, 40.0, 1_000.0, 5.0, 0.0], np.float32)  # the last one constant
    offsets = np.array([0.0, 3.0, -100.0, 30_000.0, 0.0, 7.0], np.float32)
    states = [offsets + scales * rng.standard_normal(6).astype(np.float32) for _ in range(400)]
    chain = [packet(t, 100.0, state=states[t]) for t in range(400)]
    for t in range(1, 400):
        core.observe(chain[t], chain[max(0, t - 4) : t])
    stats = core.agent.q_network.input_stats  # type: ignore[union-attr]
    assert stats.count.item() == 399, "each packet's state counted once, when its transition is stored"
    mean, std = stats.mean_std()
    counted = np.stack(states[1:])
    np.testing.assert_allclose(mean[:6].numpy(), counted.mean(axis=0), rtol=1e-5, atol=1e-6)
    expected = np.sqrt(counted.astype(np.float64).var(axis=0) + InputStatistics.EPS)
    np.testing.assert_allclose(std[:5].numpy(), expected[:5], rtol=1e-4)
    assert std[5].item() == pytest.approx(1e-4), "a constant feature: sqrt(eps), and it standardises to 0"
    # the position one-hot is passed through as it is
    assert mean[6:].tolist() == [0.0, 0.0, 0.0] and std[6:].tolist() == [1.0, 1.0, 1.0]
    x = torch.from_numpy(observation(states[7], 1)).unsqueeze(0)
    z = stats(x)[0].numpy()
    assert np.all(np.abs(z[:5]) < 6) and z[5] == 0.0 and z[6:].tolist() == [0.0, 1.0, 0.0]
    wild = x.clone()
    wild[0, 3] = 1e9
    assert stats(wild)[0, 3].item() == core.hp.clip_obs, "clipped"
    # the target network reads observations on the same scale (one set of statistics)
    assert core.agent.target_network.input_stats is stats  # type: ignore[union-attr]


def test_the_position_written_into_a_v2_state_is_not_standardised():
    dim = 8
    core = TrainerCore(small_hp(normalize=True))
    layout = "v2/abc"
    slot = position_slot(layout, dim)
    assert slot is not None
    ps = [packet(t, 100.0, dim=dim, layout=layout) for t in range(5)]
    for t in range(1, 5):
        core.observe(ps[t], ps[:t])
    mean, std = core.agent.q_network.input_stats.mean_std()  # type: ignore[union-attr]
    assert (mean[slot].item(), std[slot].item()) == (0.0, 1.0)


def test_by_default_the_network_reads_raw_states_and_keeps_no_statistics():
    core = trained_core()
    assert core.agent.q_network.input_stats is None  # type: ignore[union-attr]
    assert not any(is_statistic(k) for k in core.agent.q_network.state_dict())  # type: ignore[union-attr]
    assert "charts/input_states" not in core.metrics(T0)


def test_merged_input_statistics_count_every_replica_s_states_once():
    base = {"input_stats.count": torch.tensor([10.0], dtype=torch.float64),
            "input_stats.total": torch.tensor([5.0, 1.0], dtype=torch.float64),
            "w": torch.tensor([1.0, 1.0])}  # fmt: skip

    def sub(member: str, count: float, total: list[float], w: list[float], samples: float) -> Submission:
        groups = {"dqn": {"input_stats.count": torch.tensor([count], dtype=torch.float64),
                          "input_stats.total": torch.tensor(total, dtype=torch.float64), "w": torch.tensor(w)}}  # fmt: skip
        return Submission(member, groups, samples, {"delta_models": "dqn"})

    merged = merge_model("dqn", [sub("a", 3, [1, 2], [1, 0], 3), sub("b", 1, [0, 4], [0, 4], 1)], base)
    assert merged["input_stats.count"].tolist() == [14.0], "summed: 10 + 3 + 1"
    assert merged["input_stats.total"].tolist() == [6.0, 7.0]
    assert merged["w"].tolist() == pytest.approx([1.75, 2.0]), "weights: the samples-weighted mean of the deltas"


def test_replay_draws_only_states_of_recent_cnn_versions_and_falls_back_when_too_few():
    buf = ReplayBuffer(100, 2, max_age=1)
    for k in range(60):
        buf.add(np.full(2, k, np.float32), 0, 0.0, np.zeros(2, np.float32), 0.9, cnn=k // 20)  # versions 0, 1, 2
    rng = np.random.default_rng(0)
    drawn = np.concatenate([buf.sample(32, rng).obs[:, 0].numpy() for _ in range(30)])
    assert drawn.min() >= 20, "version 0 is two versions older than the newest: not sampled"
    assert set(np.unique(drawn).astype(int)) == set(range(20, 60))
    assert buf.stale_batches == 0
    buf.add(np.full(2, 99, np.float32), 0, 0.0, np.zeros(2, np.float32), 0.9, cnn=5)  # a jump: one fresh state
    drawn = buf.sample(64, rng).obs[:, 0].numpy()
    assert buf.stale_batches == 1 and drawn.min() < 20, "too few fresh ones: the whole buffer"
    everything = ReplayBuffer(100, 2)
    for k in range(10):
        everything.add(np.full(2, k, np.float32), 0, 0.0, np.zeros(2, np.float32), 0.9, cnn=k)
    assert len(everything.fresh()) == 10, "no age limit"


def test_the_core_numbers_cnn_versions_as_first_seen_and_tags_each_transition():
    core = TrainerCore(small_hp(cnn_max_age=0))
    ps = [packet(t, 100.0 + t % 3, cnn=("cnn-r0000001" if t < 40 else "cnn-r0000002")) for t in range(80)]
    for t in range(1, 80):
        core.observe(ps[t], ps[max(0, t - 4) : t])
    replay = core.agent.replay  # type: ignore[union-attr]
    tags = replay.cnn[: len(replay)]
    # a transition is tagged with the CNN of its first state (the one its action was chosen on)
    assert sorted(set(tags.tolist())) == [0, 1] and (tags == 1).sum() == 80 - 43, "chains from packet 43 on"
    assert set(replay.fresh().tolist()) == set(np.flatnonzero(tags == 1).tolist())


def test_model_files_are_written_whole_and_their_metadata_read_without_the_tensors(tmp_path: Path):
    from safetensors.torch import save

    data = save({"w": torch.zeros(2)}, metadata={"values": "market", "n": "3"})
    ck.write_atomic(tmp_path / "dqn" / "dqn-r1.safetensors", data)
    assert (tmp_path / "dqn" / "dqn-r1.safetensors").read_bytes() == data
    assert not list((tmp_path / "dqn").glob("*.tmp")), "atomic writes leave no temporary files"
    assert ck.read_metadata(data) == {"values": "market", "n": "3"}
    with pytest.raises(ck.CheckpointError, match="header length exceeds"):
        ck.read_metadata(b"\x80\x04 a pickle, not safetensors")
    with pytest.raises(ck.CheckpointError, match="shorter"):
        ck.read_metadata(b"\x01")


def test_trainer_settings_parse_hidden_sizes_and_refuse_learning_before_one_batch(monkeypatch: pytest.MonkeyPatch):
    from pydantic import ValidationError

    from unistream_trainer.settings import TrainerSettings

    monkeypatch.setenv("UNISTREAM_DQN_HIDDEN_SIZES", "128, 64")
    monkeypatch.setenv("UNISTREAM_MODEL_DIR", "/tmp/m")
    settings = TrainerSettings()
    assert settings.hyperparameters().hidden_sizes == (128, 64) and settings.model_dir == "/tmp/m"
    assert settings.hyperparameters().buffer_size == 2_000 and settings.hyperparameters().n_step == 3
    with pytest.raises(ValidationError, match="UNISTREAM_DQN_BATCH_SIZE"):
        TrainerSettings(dqn_batch_size=64, dqn_learning_starts=10)
    with pytest.raises(ValidationError, match="positive integers"):
        TrainerSettings(dqn_hidden_sizes="256,0")
    with pytest.raises(ValidationError, match="at least UNISTREAM_DQN_UPDATES_PER_TRANSITION \\(4\\)"):
        TrainerSettings(dqn_max_updates_per_batch=3)


def test_dqn_settings_are_the_dataclass_fields_with_its_defaults_bounds_and_docstrings(monkeypatch: pytest.MonkeyPatch):
    from pydantic import ValidationError

    from unistream_trainer.settings import DQN_SETTINGS, TrainerSettings

    defaults = Hyperparameters()
    fields = TrainerSettings.model_fields
    for name in DQN_SETTINGS:
        assert fields[f"dqn_{name}"].default == getattr(defaults, name), name
        assert fields[f"dqn_{name}"].description, name
    assert fields["dqn_gamma"].description == "Discount per step (one step = one 1s bar)"
    with pytest.raises(ValidationError, match="UNISTREAM_DQN_GAMMA|dqn_gamma"):
        TrainerSettings(dqn_gamma=1.5)
    with pytest.raises(ValidationError, match="dqn_n_step"):
        TrainerSettings(dqn_n_step=0)
    monkeypatch.setenv("UNISTREAM_DQN_LEARNING_RATE", "0.01")
    monkeypatch.setenv("UNISTREAM_DQN_CNN_MAX_AGE", "5")
    hp = TrainerSettings().hyperparameters()
    assert (hp.learning_rate, hp.cnn_max_age, hp.tau) == (0.01, 5, defaults.tau)


def test_a_consumed_batch_holds_the_packets_whose_updates_fit_in_one_batch_so_a_backlog_learns_at_the_live_rate():
    assert packets_per_batch(small_hp(updates_per_transition=4.0, max_updates_per_batch=16)) == 4
    assert packets_per_batch(small_hp(updates_per_transition=0.5, max_updates_per_batch=16)) == 32
    assert packets_per_batch(small_hp(updates_per_transition=0.1, max_updates_per_batch=16)) == 64  # at most 64
    assert packets_per_batch(small_hp(updates_per_transition=0.0)) == 64
    # a backlog fed batch by batch learns as many steps per packet as live, one packet at a time
    hp = small_hp(learning_starts=8, updates_per_transition=2.0, max_updates_per_batch=8)
    packets = [packet(t, 100.0 + (t % 3)) for t in range(81)]
    live, backlog = TrainerCore(hp), TrainerCore(hp)
    for t in range(1, 81):
        live.process([packets[t]], [[packets[t - 1]]])
    n = packets_per_batch(hp)
    for first in range(1, 81, n):
        batch = packets[first : first + n]
        backlog.process(batch, [[packets[first + k - 1]] for k in range(len(batch))])
    assert n == 4 and backlog.updates == live.updates > 100
    # one delivery may hold several batches' packets (COUNT is per stream: one read of two symbols'
    # streams on a single Redis gives up to 2 x n): each packet still earns its steps
    wide = TrainerCore(hp)
    for first in range(1, 81, 2 * n):
        batch = packets[first : first + 2 * n]
        wide.process(batch, [[packets[first + k - 1]] for k in range(len(batch))])
    assert wide.updates == live.updates


def test_a_bf16_update_keeps_float32_weights_and_agrees_with_float32_to_bf16_precision():
    torch.manual_seed(0)
    q = QNetwork(32, (64, 64))
    target = QNetwork(32, (64, 64))
    target.load_state_dict(q.state_dict())
    batch = Batch(
        obs=torch.randn(16, 32), actions=torch.randint(0, 3, (16,)), rewards=torch.randn(16),
        next_obs=torch.randn(16, 32), discounts=torch.full((16,), 0.97),
    )  # fmt: skip
    loss32, q32 = td_loss(q, target, batch, bf16=False)
    loss16, q16 = td_loss(q, target, batch, bf16=True)
    assert loss16.dtype == torch.float32 and q16.dtype == torch.float32
    assert float(loss16.detach()) == pytest.approx(float(loss32.detach()), rel=0.05)
    assert torch.allclose(q16, q32, atol=0.05)
    opt = torch.optim.Adam(q.parameters(), lr=1e-3, fused=True)
    train_step(q, target, opt, batch, 10.0, bf16=True)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in q.parameters())


# --- known costs ------------------------------------------------------------------------------


def test_with_known_costs_a_decision_pays_the_exact_cost_of_its_change_and_the_network_learns_without_it():
    hp = small_hp(known_costs=True, n_step=1, fill_lag=0, start_e=0.0, end_e=0.0, reward_scale=100.0, fee=0.001,
                  slippage=0.0002)  # fmt: skip
    assert hp.switch_cost == pytest.approx(0.12)
    costs = cost_matrix(hp)
    assert costs is not None and cost_matrix(small_hp(known_costs=False)) is None
    # held flat -> long or short: one unit; long <-> short: two units; staying: nothing
    assert torch.allclose(costs, 0.12 * torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 2.0], [1.0, 2.0, 0.0]]))
    core = TrainerCore(hp)
    prices = [100.0, 101.0, 100.0, 102.0, 99.0]
    feed(core, [packet(t, p) for t, p in enumerate(prices)])
    agent = core.agent
    assert agent is not None and len(agent.replay) == 4
    for k in range(4):
        pos = [0, 1, -1][int(agent.replay.actions[k])]
        # stored: what holding the position earned, the change's cost added back (it is paid at decision time)
        assert agent.replay.rewards[k] == pytest.approx(100.0 * pos * math.log(prices[k + 1] / prices[k]), rel=1e-5)
    # Decisions: the network's values less the cost of each change from the position held.
    for held in (0, 1, -1):
        obs = observation(np.full(6, 0.1, np.float32), held)
        with torch.no_grad():
            raw = agent.q_network(torch.from_numpy(obs).unsqueeze(0))[0].numpy()
        expected = raw - costs.numpy()[[0, 1, -1].index(held)]
        assert np.allclose(agent.values(obs), expected, atol=1e-6)
        action, q = core.greedy_action(packet(9, 100.0), held)
        assert action == int(np.argmax(expected)) and np.allclose(q, expected, atol=1e-6)


def test_a_network_holds_while_its_edge_is_below_the_cost_of_changing_and_changes_above_it():
    core = TrainerCore(small_hp(known_costs=True, start_e=0.0, end_e=0.0))
    core.observe(packet(1, 100.0), [packet(0, 100.0)])
    assert core.agent is not None
    net = core.agent.q_network
    with torch.no_grad():  # a network that values long above flat by `edge`, whatever it sees
        for p in net.parameters():
            p.zero_()
        cost = small_hp().switch_cost
        for edge, from_flat in ((0.9 * cost, 0), (1.1 * cost, 1)):
            net.advantage.bias.copy_(torch.tensor([0.0, edge, -10.0]))
            assert core.greedy_action(packet(9, 100.0), 0)[0] == from_flat, edge
            assert core.greedy_action(packet(9, 100.0), 1)[0] == 1, "long stays long"


def test_a_published_model_says_what_its_outputs_mean_through_its_hyperparameters():
    from unistream_trainer.core import published_values_kind, values_kind

    assert published_values_kind({}) == "q", "published before known costs"
    assert published_values_kind({"hyperparameters": "not json"}) == "q"
    for hp in (small_hp(known_costs=True), small_hp(known_costs=False)):
        # what the leader writes into a merged model's metadata (service.py: describe(vars(hp)))
        meta = {"hyperparameters": json.dumps({k: v for k, v in vars(hp).items()}, sort_keys=True)}
        assert published_values_kind(meta) == values_kind(hp)
