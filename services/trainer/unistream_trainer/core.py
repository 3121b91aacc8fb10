"""The trainer core: training packets in, transitions, gradient steps and metrics out (pure).

The market does not react to the agent, so a transition can be built from any run of consecutive
packets of a symbol, whoever acted on them. Replicas of the trainer share ``ml:training`` through a
consumer group, so consecutive packets of a symbol land on different replicas; each packet names its
predecessor (``prev_id``), the shell fetches the chain, and :meth:`TrainerCore.observe` gets the
packet with up to ``n_step`` predecessors (oldest first). From them it builds one n-step transition:

- a start position ``pos_0`` drawn uniformly from flat, long, short (every position context is
  learned, not only the ones a policy happened to hold);
- the first action epsilon-greedy from Q(s_0, pos_0) (the exploration), then the greedy actions of
  the current Q-network on the states that follow (the n-step return of the policy being learned);
- rewards per step ``reward = pos_new * log(price_next / price) - cost * |pos_new - pos_old|`` (a log
  return net of fee and slippage; long to short pays two sides), summed with ``gamma``, where a
  decision at packet ``i`` is credited with the move ``i + fill_lag -> i + fill_lag + 1`` (the step
  its fill holds: the chain has ``n_step + fill_lag`` predecessors); the bootstrap state is the
  packet after the last decision, with the position the actions reached, discount ``gamma ** steps``;
- with ``known_costs`` the first decision's cost is added back to the stored return: the network
  learns what holding earns, and decisions subtract the exact cost of changing (see dqn.py).

A chain is cut where two packets are more than ``max_gap_ms`` apart (fewer steps, never across the
gap); a packet without a usable predecessor gives no transition (counted). The observation is the
state with the held position written into its ``position.position`` value (layout v2) and a one-hot
of the position appended (flat, long, short). When the state dimension changes (a new layout) the
agent is re-initialised and the change counted. A packet whose ``layout_version`` (the layout's
role fingerprint: what each index means relative to the state's own symbol) differs from the one
the network was built for, at the same size, is refused and counted (``layout_mismatch``, with
:attr:`TrainerCore.layout_error` saying what differs): its values would feed the wrong inputs.
Merged weights of another layout are not adopted either.

Inputs: with ``normalize`` (off by default: see dqn.Hyperparameters) the network standardises every state value by running statistics
(:class:`~unistream_trainer.dqn.InputStatistics`), counting each packet's state once, when its
transition is stored; the position written into the state and the one-hot are left raw. Each
transition is tagged with the CNN version that built its state (``model_version``, numbered in the
order first seen), and replay samples draw only from states of the newest ``cnn_max_age`` versions
(see :class:`~unistream_trainer.dqn.ReplayBuffer`: stale states are dropped, not re-encoded).

Time comes in as arguments; there is no clock, Redis or file access here.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from unistream_common import codec
from unistream_common.packets import TrainingDataPacket
from unistream_model.layout import position_slot
from unistream_trainer.dqn import (
    ACTION_POSITION,
    N_ACTIONS,
    DQNAgent,
    Hyperparameters,
    NStepTransition,
    n_step_return,
    upgrade_state_dict,
)

POSITION_INDEX = {p: i for i, p in enumerate(ACTION_POSITION)}


def step_reward(position: int, prev_position: int, price: float, next_price: float, fee: float) -> float:
    """Log return of holding ``position`` from ``price`` to ``next_price``, less ``fee`` (per side, all
    costs) per unit traded."""
    return position * math.log(next_price / price) - fee * abs(position - prev_position)


def values_kind(hp: Hyperparameters) -> str:
    """What the network's outputs mean under ``hp`` (checkpoint metadata "values")."""
    return "market" if hp.known_costs else "q"


def published_values_kind(metadata: Mapping[str, str]) -> str:
    """What a published (merged) DQN's outputs mean, from its metadata's ``hyperparameters``: a model
    published before known costs has none, and holds Q-values ("q")."""
    try:
        hp = json.loads(metadata.get("hyperparameters", "{}"))
    except ValueError:
        return "q"
    return "market" if isinstance(hp, dict) and hp.get("known_costs") is True else "q"


def observation(state: np.ndarray, position: int, slot: int | None = None) -> np.ndarray:
    """State vector with the one-hot of ``position`` (order flat, long, short) appended; float32.

    ``slot``: where the state holds ``position.position`` (:func:`~unistream_model.layout.position_slot`),
    set to the position too; None for layouts without one.
    """
    obs = np.zeros(state.size + N_ACTIONS, np.float32)
    obs[: state.size] = state
    if slot is not None:
        obs[slot] = position
    obs[state.size + POSITION_INDEX[position]] = 1.0
    return obs


def packets_per_batch(hp: Hyperparameters, most: int = 64) -> int:
    """Packets the trainer consumes at a time: as many as earn ``max_updates_per_batch`` gradient
    steps (``updates_per_transition`` each), at most ``most``.

    Each batch's steps are capped, so a batch of more packets than that (64 at 16 steps: 0.25 per
    packet) learned a backlog at a sixteenth of the live rate (4 per packet). With batches this
    size every packet earns its steps, live or catching up; a backlog is consumed at the pace of
    learning (more replicas consume it faster) and no batch stays unacknowledged long enough to be
    claimed by another replica.
    """
    if hp.updates_per_transition <= 0:
        return most
    return max(1, min(most, int(hp.max_updates_per_batch // hp.updates_per_transition)))


def usable_chain(
    packet: TrainingDataPacket, ancestors: Sequence[TrainingDataPacket], max_gap_ms: int
) -> list[TrainingDataPacket]:
    """``ancestors + [packet]`` cut after the last link that breaks (another symbol, not older, a gap)."""
    chain = [packet]
    for prev in reversed(ancestors):
        nxt = chain[0]
        if prev.symbol != nxt.symbol or not 0 < nxt.ts_event_ms - prev.ts_event_ms <= max_gap_ms:
            break
        chain.insert(0, prev)
    return chain


class TrainerCore:
    """One DQN agent fed by chains of training packets of every symbol."""

    def __init__(self, hp: Hyperparameters, max_gap_ms: int = 5_000) -> None:
        self.hp = hp
        self.max_gap_ms = max_gap_ms
        self.agent: DQNAgent | None = None
        self.packets = 0
        self.state_dim = 0
        self.state_dim_changes = 0
        self.events: Counter[str] = Counter()
        self._rng = np.random.default_rng(hp.seed + 1)
        self._update_credit = 0.0
        self.samples_since_merge = 0  # transitions stored since the weights were last averaged
        self.pending_weights: tuple[dict[str, torch.Tensor], str, str] | None = None  # tensors, version, layout
        # The online weights at the last submission or adoption: what was learned since is this
        # replica's own, not yet in a merged model (see take_delta and adopt).
        self.mark: dict[str, torch.Tensor] | None = None
        self.origin: dict[str, torch.Tensor] | None = None  # the weights the network started from
        self.agent_layout = ""  # layout_version of the packets the network was built for ("" unknown)
        self.layout_error = ""  # the last packet refused for its layout, and why
        self.model_version = ""  # merged version the weights came from ("" before any)
        self._cnn_ordinals: dict[str, int] = {}  # CNN version -> its number, in the order first seen
        self._cnn_count = 0
        # What the data looked like, for the published model's metadata.
        self.layout_version = ""
        self.cnn_version = ""
        self.data_from_ms = 0
        self.data_to_ms = 0
        self.last_loss = float("nan")
        # Windows since the last metrics() call.
        self._losses: list[float] = []
        self._q_values: list[float] = []
        self._reward_sum = 0.0
        self._reward_n = 0
        self._updates_at_metrics = 0
        self._packets_at_metrics = 0
        self._metrics_ms: int | None = None

    @property
    def updates(self) -> int:
        return self.agent.updates if self.agent else 0

    @property
    def transitions(self) -> int:
        return self.agent.transitions if self.agent else 0

    # --- packets to transitions ------------------------------------------------------------

    def observe(self, packet: TrainingDataPacket, ancestors: Sequence[TrainingDataPacket] = ()) -> None:
        """Take one training packet with up to ``n_step`` predecessors of its symbol (oldest first)."""
        self.packets += 1
        self.layout_version, self.cnn_version = packet.layout_version, packet.model_version
        if not self.data_from_ms or packet.ts_event_ms < self.data_from_ms:
            self.data_from_ms = packet.ts_event_ms
        self.data_to_ms = max(self.data_to_ms, packet.ts_event_ms)
        lag = self.hp.fill_lag
        chain = usable_chain(packet, list(ancestors)[-(self.hp.n_step + lag) :], self.max_gap_ms)
        if len(chain) < 2 + lag:
            self.events["no_predecessor"] += 1
            return
        states = [codec.f32_from_bytes(p.state) for p in chain]
        if any(s.size != packet.state_dim or not np.isfinite(s).all() for s in states):
            self.events["skipped_bad_state"] += 1
            return
        if not self._fits_layout(chain):
            return
        agent = self._agent_for(packet.state_dim, packet.layout_version)
        slot = position_slot(packet.layout_version, packet.state_dim)
        agent.count_input(observation(states[-1], 0, slot))
        position = start = ACTION_POSITION[int(self._rng.integers(N_ACTIONS))]
        obs0 = observation(states[0], position, slot)
        action0 = agent.act(obs0)
        action, rewards = action0, []
        cost = self.hp.fee + self.hp.slippage
        steps = len(chain) - 1 - lag
        # The decision at chain[i] fills at chain[i + lag] and earns the move to chain[i + lag + 1]:
        # each decision is credited with exactly the step its own fill holds, none twice.
        for i in range(steps):
            new_position = ACTION_POSITION[action]
            rewards.append(step_reward(new_position, position, chain[i + lag].price, chain[i + lag + 1].price, cost))
            position = new_position
            if i < steps - 1:
                action = self._greedy(agent, observation(states[i + 1], position, slot))
        ret = n_step_return(rewards, self.hp.gamma) * self.hp.reward_scale
        if self.hp.known_costs:  # the first change's cost is subtracted at decision time, not learned
            ret += self.hp.switch_cost * abs(ACTION_POSITION[action0] - start)
        self._store(
            [
                NStepTransition(
                    obs=obs0,
                    action=action0,
                    reward=ret,
                    next_obs=observation(states[steps], position, slot),
                    discount=self.hp.gamma**steps,
                )
            ],
            self._cnn_ordinal(chain[0].model_version),
        )
        if steps < self.hp.n_step:
            self.events["short_chains"] += 1
        agent.transitions += 1
        self.samples_since_merge += 1
        self._reward_sum += rewards[0]
        self._reward_n += 1
        self._update_credit = min(
            self._update_credit + self.hp.updates_per_transition, float(self.hp.max_updates_per_batch)
        )

    def _fits_layout(self, chain: Sequence[TrainingDataPacket]) -> bool:
        """Whether the chain's states mean what the network's inputs do (counted and explained if not).

        A network built on packets without a layout tag, or a packet without one, is not checked;
        a chain that changes size goes to the re-initialisation of :meth:`_agent_for` instead."""
        packet = chain[-1]
        if self.agent is None or not self.agent_layout or packet.state_dim != self.state_dim:
            return True
        wrong = [p for p in chain if p.layout_version and p.layout_version != self.agent_layout]
        if not wrong:
            return True
        self.events["layout_mismatch"] += 1
        self.layout_error = (
            f"{wrong[0].symbol} at {wrong[0].ts_event_ms}: state layout {wrong[0].layout_version}, the network was "
            f"built for {self.agent_layout} (same size, other meaning): the features' configuration changed or two "
            "configurations feed ml:training; restart the trainer replicas after the change (a new network is "
            "built for the new layout) or run one configuration"
        )
        return False

    @staticmethod
    def _greedy(agent: DQNAgent, obs: np.ndarray) -> int:
        return int(agent.values(obs).argmax())

    def greedy_action(self, packet: TrainingDataPacket, position: int) -> tuple[int, np.ndarray]:
        """The current policy's action at ``packet`` holding ``position``, and its Q-values (paper trading)."""
        state = codec.f32_from_bytes(packet.state)
        other_layout = bool(self.agent_layout and packet.layout_version and packet.layout_version != self.agent_layout)
        if self.agent is None or packet.state_dim != self.state_dim or other_layout:
            return POSITION_INDEX[position], np.zeros(N_ACTIONS, np.float32)
        q = self.agent.values(observation(state, position, position_slot(packet.layout_version, packet.state_dim)))
        return int(q.argmax()), q

    def _store(self, transitions: list[NStepTransition], cnn: int = 0) -> None:
        assert self.agent is not None
        for t in transitions:
            self.agent.replay.add(t.obs, t.action, t.reward, t.next_obs, t.discount, cnn)

    def _cnn_ordinal(self, version: str) -> int:
        """The number of a CNN version: versions in the order this core first saw them (the
        features service only moves to newer ones)."""
        number = self._cnn_ordinals.get(version)
        if number is None:
            number = self._cnn_ordinals[version] = self._cnn_count
            self._cnn_count += 1
            if len(self._cnn_ordinals) > 4 * self.hp.buffer_size:  # bounded: forget the oldest names
                for old in list(self._cnn_ordinals)[: self.hp.buffer_size]:
                    del self._cnn_ordinals[old]
        return number

    def _agent_for(self, state_dim: int, layout: str = "") -> DQNAgent:
        if self.agent is not None and state_dim == self.state_dim:
            return self.agent
        if self.agent is not None:
            self.state_dim_changes += 1
            self.events["state_dim_changes"] += 1
        self.state_dim = state_dim
        self.agent_layout = layout
        self._update_credit = 0.0
        self.agent = DQNAgent(state_dim + N_ACTIONS, self.hp)
        if self.agent.q_network.input_stats is not None:  # the position inputs are not state values
            slot = position_slot(layout, state_dim)
            raw = [state_dim + k for k in range(N_ACTIONS)] + ([slot] if slot is not None else [])
            self.agent.q_network.input_stats.keep_raw(raw)
        self.origin = self.online_weights()
        self.mark = self.online_weights()
        if self.pending_weights is not None:
            self.adopt(*self.pending_weights)
        return self.agent

    def adopt(self, tensors: dict[str, torch.Tensor], version: str, layout: str = "") -> bool:
        """Take merged (or published) weights for the online network; False if they do not fit.

        ``layout``: the ``layout_version`` they were trained on ("" unknown); weights of another
        layout than the network's are not taken (counted: ``weights_other_layout``). The target
        network follows them by its Polyak rule (:meth:`DQNAgent.adopt_online`). Before the first
        packet the weights wait, and are taken when the agent is built with their shape and layout.
        """
        if self.agent is None:
            self.pending_weights = (tensors, version, layout)
            return False
        self.pending_weights = None
        if layout and self.agent_layout and layout != self.agent_layout:
            self.events["weights_other_layout"] += 1
            return False
        tensors = upgrade_state_dict(tensors)
        own = self.agent.q_network.state_dict()
        if set(own) != set(tensors) or any(tuple(own[k].shape) != tuple(tensors[k].shape) for k in own):
            self.events["weights_not_fitting"] += 1
            return False
        merged = {k: v.detach().clone() for k, v in tensors.items()}
        mark = self.mark if self.mark is not None else merged
        # The merged weights plus what this replica learned since its last submission (not in them
        # yet: it goes into its next submission), so that adopting a round loses none of it.
        self.agent.adopt_online({k: merged[k] + (own[k].detach() - mark[k]) for k in own})
        self.mark = merged
        self.model_version = version
        self.events["weights_adopted"] += 1
        return True

    def online_weights(self) -> dict[str, torch.Tensor] | None:
        """A copy of the online network's weights (None before the first packet)."""
        if self.agent is None:
            return None
        return {k: v.detach().clone() for k, v in self.agent.q_network.state_dict().items()}

    def take_delta(self) -> dict[str, torch.Tensor] | None:
        """What the online weights learned since the last submission or adoption (then marked as
        submitted); None before the first packet. Merging these deltas (rather than the weights)
        keeps every replica's learning: see :mod:`unistream_trainer.replicas`."""
        now = self.online_weights()
        if now is None or self.mark is None:
            return None
        delta = {k: now[k] - self.mark[k] for k in now}
        self.mark = now
        return delta

    def updates_due(self) -> int:
        """Gradient steps owed for the transitions seen so far (bounded per batch); takes them off the credit."""
        if self.agent is None or len(self.agent.replay) < self.hp.learning_starts:
            return 0
        n = int(self._update_credit)
        self._update_credit -= n
        return n

    def train(self, n_updates: int) -> int:
        """Take up to ``n_updates`` gradient steps (the heavy part: run it off the event loop)."""
        if self.agent is None or n_updates <= 0:
            return 0
        steps = self.agent.learn(n_updates)
        for loss, q in steps:
            self._losses.append(loss)
            self._q_values.append(q)
            self.last_loss = loss
        return len(steps)

    def process(
        self, packets: Sequence[TrainingDataPacket], ancestors: Sequence[Sequence[TrainingDataPacket]] | None = None
    ) -> int:
        """Observe packets (each with its predecessors) and take the gradient steps they earned,
        :func:`packets_per_batch` packets at a time.

        A delivery may hold more than one batch's packets: XREADGROUP's COUNT is per stream, and
        on a single Redis one read covers every symbol's training stream (2 symbols: up to 8
        packets where a batch is 4). Capping the steps of the whole delivery at
        ``max_updates_per_batch`` learned such a backlog at half the rate per packet of one read per
        slot on a cluster (measured: 488 against 944 steps for the same 300 packets)."""
        chunk = packets_per_batch(self.hp)
        steps = 0
        for start in range(0, len(packets), chunk):
            for k in range(start, min(start + chunk, len(packets))):
                self.observe(packets[k], ancestors[k] if ancestors is not None else ())
            steps += self.train(self.updates_due())
        return steps

    # --- reporting -------------------------------------------------------------------------

    @property
    def epsilon(self) -> float:
        return self.agent.epsilon if self.agent else self.hp.start_e

    def metrics(self, now_ms: int) -> dict[str, float]:
        """Metrics under fixed namespaces; averages cover the time since the previous call."""
        out: dict[str, float] = {
            "charts/epsilon": self.epsilon,
            "charts/updates": float(self.updates),
            "charts/packets": float(self.packets),
            "charts/transitions": float(self.transitions),
            "charts/replay_size": float(len(self.agent.replay) if self.agent else 0),
            "charts/state_dim": float(self.state_dim),
            "charts/state_dim_changes": float(self.state_dim_changes),
        }
        if self.agent is not None and len(self.agent.replay):
            replay = self.agent.replay
            # the share of the replay a batch may draw (states of the newest CNN versions) and the
            # batches that had to draw from all of it
            out["charts/replay_fresh"] = len(replay.fresh()) / len(replay)
            out["charts/replay_stale_batches"] = float(replay.stale_batches)
        stats = self.agent.q_network.input_stats if self.agent is not None else None
        if stats is not None:
            out["charts/input_states"] = float(stats.count.item())
        if self._losses:
            out["losses/td_loss"] = float(np.mean(self._losses))
            out["losses/q_values"] = float(np.mean(self._q_values))
        if self._reward_n:
            out["charts/mean_reward"] = self._reward_sum / self._reward_n
        if self._metrics_ms is not None and now_ms > self._metrics_ms:
            seconds = (now_ms - self._metrics_ms) / 1000.0
            out["charts/updates_per_s"] = (self.updates - self._updates_at_metrics) / seconds
            out["charts/packets_per_s"] = (self.packets - self._packets_at_metrics) / seconds
        self._packets_at_metrics = self.packets
        self._losses.clear()
        self._q_values.clear()
        self._reward_sum, self._reward_n = 0.0, 0
        self._updates_at_metrics = self.updates
        self._metrics_ms = now_ms
        return out
