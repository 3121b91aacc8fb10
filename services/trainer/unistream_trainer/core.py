"""The trainer core: training packets in, transitions, gradient steps and metrics out (pure).

Each symbol is its own trading run. At the packet for time t the agent holds position
``pos_{t-1}`` and chooses an action (0 flat, 1 long, 2 short: target position 0, +1, -1); at the
next packet of the symbol it earns

    reward_t = pos_t * log(price_{t+1} / price_t) - fee * |pos_t - pos_{t-1}|

(a log return net of fees; going from long to short pays two sides). The observation is the
packet's state vector with a one-hot of the position held when acting appended (flat, long,
short): fees make the best action depend on the position, so the Q-network must see it.

A run is cut (no bootstrap across the cut, pending n-step transitions flushed short) when a
symbol's packets are more than ``max_gap_ms`` apart; a packet not newer than the symbol's last
one is skipped. When the state dimension changes (a new features build), the agent is
re-initialised and the change counted.

Time comes in as arguments; there is no clock, Redis or file access here.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from unistream_common import codec
from unistream_common.packets import TrainingDataPacket
from unistream_trainer.checkpoint import Checkpoint, CheckpointError, encode_checkpoint
from unistream_trainer.dqn import (
    ACTION_POSITION,
    N_ACTIONS,
    DQNAgent,
    Hyperparameters,
    NStepAccumulator,
    NStepTransition,
)

POSITION_INDEX = {p: i for i, p in enumerate(ACTION_POSITION)}


def step_reward(position: int, prev_position: int, price: float, next_price: float, fee: float) -> float:
    """Log return of holding ``position`` from ``price`` to ``next_price``, less ``fee`` per unit traded."""
    return position * math.log(next_price / price) - fee * abs(position - prev_position)


def observation(state: np.ndarray, position: int) -> np.ndarray:
    """State vector with the one-hot of ``position`` (order flat, long, short) appended; float32."""
    obs = np.zeros(state.size + N_ACTIONS, np.float32)
    obs[: state.size] = state
    obs[state.size + POSITION_INDEX[position]] = 1.0
    return obs


@dataclass
class SymbolRun:
    """Where one symbol's run stands after its latest packet."""

    obs: np.ndarray  # observation at the latest packet
    action: int  # action chosen there
    position: int  # position held when it was chosen (the one encoded in obs)
    price: float  # close price of the latest packet
    ts_ms: int  # ts_event_ms of the latest packet
    nstep: NStepAccumulator


class TrainerCore:
    """One DQN agent fed by the training packets of every symbol."""

    def __init__(self, hp: Hyperparameters, max_gap_ms: int = 5_000, resume: Checkpoint | None = None) -> None:
        self.hp = hp
        self.max_gap_ms = max_gap_ms
        self.resume = resume  # checkpoint to start from when the first packet's size fits it
        self.resumed_from = ""
        self.resume_error = ""
        self.agent: DQNAgent | None = None
        self.runs: dict[str, SymbolRun] = {}
        self.packets = 0
        self.state_dim = 0
        self.state_dim_changes = 0
        self.events: Counter[str] = Counter()
        self._update_credit = 0.0
        # Windows since the last metrics() call.
        self._losses: list[float] = []
        self._q_values: list[float] = []
        self._reward_sum = 0.0
        self._reward_n = 0
        self._updates_at_metrics = 0
        self._metrics_ms: int | None = None

    @property
    def updates(self) -> int:
        return self.agent.updates if self.agent else 0

    @property
    def transitions(self) -> int:
        return self.agent.transitions if self.agent else 0

    # --- packets to transitions ------------------------------------------------------------

    def observe(self, packet: TrainingDataPacket) -> None:
        """Take one training packet: close the symbol's previous step, store transitions, choose an action."""
        self.packets += 1
        state = codec.f32_from_bytes(packet.state)
        if not np.isfinite(state).all():
            self.events["skipped_non_finite"] += 1
            return
        agent = self._agent_for(packet.state_dim)
        run = self.runs.get(packet.symbol)
        if run is not None and packet.ts_event_ms <= run.ts_ms:
            self.events["skipped_stale"] += 1
            return
        if run is not None and packet.ts_event_ms - run.ts_ms > self.max_gap_ms:
            self._store(run.nstep.flush())
            self.events["runs_cut"] += 1
            run = None
        if run is None:
            position = 0
            obs = observation(state, position)
            nstep = NStepAccumulator(self.hp.n_step, self.hp.gamma)
        else:
            position = ACTION_POSITION[run.action]
            reward = step_reward(position, run.position, run.price, packet.price, self.hp.fee)
            obs = observation(state, position)
            self._store(run.nstep.push(run.obs, run.action, reward * self.hp.reward_scale, obs))
            agent.transitions += 1
            self._reward_sum += reward
            self._reward_n += 1
            self._update_credit = min(
                self._update_credit + self.hp.updates_per_transition, float(self.hp.max_updates_per_batch)
            )
            nstep = run.nstep
        action = agent.act(obs)
        self.runs[packet.symbol] = SymbolRun(obs, action, position, packet.price, packet.ts_event_ms, nstep)

    def _store(self, transitions: list[NStepTransition]) -> None:
        assert self.agent is not None
        for t in transitions:
            self.agent.replay.add(t.obs, t.action, t.reward, t.next_obs, t.discount)

    def _agent_for(self, state_dim: int) -> DQNAgent:
        if self.agent is not None and state_dim == self.state_dim:
            return self.agent
        if self.agent is not None:
            self.state_dim_changes += 1
            self.events["state_dim_changes"] += 1
        self.state_dim = state_dim
        self.runs.clear()
        self._update_credit = 0.0
        self.agent = DQNAgent(state_dim + N_ACTIONS, self.hp)
        if self.resume is not None:
            self._resume(self.agent)
        return self.agent

    def _resume(self, agent: DQNAgent) -> None:
        ckpt, self.resume = self.resume, None
        assert ckpt is not None
        reason = ckpt.misfit(agent.obs_dim, self.hp.hidden_sizes)
        if reason:
            self.events["resume_rejected"] += 1
            self.resume_error = f"{ckpt.version}: {reason}"
            return
        try:
            agent.load_q_network(ckpt.tensors)
        except RuntimeError as exc:  # load_state_dict names the tensors that do not fit
            self.events["resume_rejected"] += 1
            self.resume_error = f"{ckpt.version}: {exc}"
            return
        agent.updates = ckpt.updates
        agent.transitions = ckpt.transitions
        self._updates_at_metrics = agent.updates
        self.resumed_from = ckpt.version
        self.events["resumed"] += 1

    # --- learning --------------------------------------------------------------------------

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
        return len(steps)

    def process(self, packets: list[TrainingDataPacket]) -> int:
        """Observe a batch of packets, then take the gradient steps they earned; returns the steps taken."""
        for p in packets:
            self.observe(p)
        return self.train(self.updates_due())

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
        if self._losses:
            out["losses/td_loss"] = float(np.mean(self._losses))
            out["losses/q_values"] = float(np.mean(self._q_values))
        if self._reward_n:
            out["charts/mean_reward"] = self._reward_sum / self._reward_n
        if self._metrics_ms is not None and now_ms > self._metrics_ms:
            out["charts/updates_per_s"] = (
                (self.updates - self._updates_at_metrics) * 1000.0 / (now_ms - self._metrics_ms)
            )
        self._losses.clear()
        self._q_values.clear()
        self._reward_sum, self._reward_n = 0.0, 0
        self._updates_at_metrics = self.updates
        self._metrics_ms = now_ms
        return out

    def checkpoint(self, version: str, producer: str) -> tuple[bytes, int]:
        """(safetensors bytes of the online Q-network, parameter count); raises CheckpointError without an agent."""
        if self.agent is None:
            raise CheckpointError("nothing to checkpoint: no training packet seen yet")
        q = self.agent.q_network
        data = encode_checkpoint(
            q.state_dict(),
            version=version,
            producer=producer,
            obs_dim=self.agent.obs_dim,
            state_dim=self.state_dim,
            hidden_sizes=self.hp.hidden_sizes,
            updates=self.agent.updates,
            transitions=self.agent.transitions,
        )
        return data, sum(p.numel() for p in q.parameters())
