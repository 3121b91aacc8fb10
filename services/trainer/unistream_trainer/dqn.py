"""DQN on the training stream, in one file: double DQN, dueling head, n-step returns, Huber loss.

Read top to bottom: hyperparameters, the Q-network, the replay buffer, n-step returns, the
epsilon schedule, the TD target and the update step, then :class:`DQNAgent` which ties them
together. Names follow the papers (Mnih et al. 2015; van Hasselt et al. 2016, double DQN; Wang et
al. 2016, dueling networks; Sutton 1988 / Hessel et al. 2018 for n-step returns). Unlike a
CleanRL script there is no environment loop here: observations arrive from the stream, and
:mod:`unistream_trainer.core` turns them into transitions. The network and the update step are
importable so the unit tests can run them on hand-made batches.

The market does not react to the agent's actions, so an "episode" is just a run of consecutive
states of one symbol; it never terminates, and a run that breaks (a gap, a restart) is cut
without bootstrapping past the cut.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Le
from torch import nn

N_ACTIONS = 3
ACTION_NAMES: tuple[str, ...] = ("flat", "long", "short")
ACTION_POSITION: tuple[int, ...] = (0, 1, -1)  # target position of each action


@dataclass(frozen=True)
class Hyperparameters:
    """Hyperparameters of the DQN learner.

    The one definition of each: the trainer's ``UNISTREAM_DQN_<NAME>`` settings are generated from
    these fields (default, bounds in the ``Annotated`` metadata, and the docstring as the
    description: :mod:`unistream_trainer.settings`).
    """

    seed: int = 7
    """seed of the network initialisation, the replay sampling and the exploration"""
    learning_rate: Annotated[float, Gt(0)] = 1e-4
    """Adam learning rate"""
    gamma: Annotated[float, Gt(0), Le(1)] = 0.99
    """discount per step (one step = one 1s bar)"""
    n_step: Annotated[int, Ge(1), Le(20)] = 3
    """steps summed into one return before bootstrapping from the target network"""
    buffer_size: Annotated[int, Ge(1)] = 2_000
    """replay capacity, transitions; memory = 2 x buffer_size x obs_dim x 4 bytes (about 215 MB at 13,451)"""
    batch_size: Annotated[int, Ge(1)] = 64
    """transitions per gradient step"""
    learning_starts: Annotated[int, Ge(1)] = 64
    """transitions in the replay buffer before the first gradient step"""
    updates_per_transition: Annotated[float, Ge(0)] = 4.0
    """gradient steps owed per new transition (the replay ratio)"""
    max_updates_per_batch: Annotated[int, Ge(1)] = 16
    """at most this many gradient steps per batch: the trainer reads this over
    ``updates_per_transition`` packets at a time (``core.packets_per_batch``) and learns a delivery
    holding more (one read of several symbols' streams) batch by batch, so every packet earns its
    steps in a backlog as live, and a batch is learned in well under a second"""
    tau: Annotated[float, Gt(0), Le(1)] = 0.005
    """target network update rate: 1.0 copies the weights, smaller values are Polyak averaging"""
    target_network_frequency: Annotated[int, Ge(1)] = 1
    """gradient steps between target network updates"""
    max_grad_norm: Annotated[float, Gt(0)] = 10.0
    """global L2 norm gradients are clipped to"""
    start_e: Annotated[float, Ge(0), Le(1)] = 1.0
    """exploration epsilon at the first transition"""
    end_e: Annotated[float, Ge(0), Le(1)] = 0.05
    """exploration epsilon after ``exploration_steps`` transitions"""
    exploration_steps: Annotated[int, Ge(0)] = 20_000
    """transitions over which epsilon falls linearly from start_e to end_e"""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the Q-network's shared layers (in the environment comma-separated, e.g. 256,256);
    the first one holds nearly all the parameters"""
    fee: float = 0.001
    """fee per side as a fraction of notional (Binance spot: 0.1 %)"""
    slippage: float = 0.0002
    """spread and impact per side, beside the fee (the paper trader's default: 2 bps)"""
    fill_lag: int = 1
    """steps between a decision and its fill: a decision is credited with the move of the step after
    its fill, as the paper trader executes (1: its 1 s latency on 1s bars; 0: the deciding bar's own
    price, a fill the policy could not get)"""
    reward_scale: float = 100.0
    """rewards are stored multiplied by this (100: percent), so TD errors sit where Huber is quadratic"""
    known_costs: bool = True
    """the cost of a decision's own position change is known, so it is not learned: the network learns
    what holding each position earns (``W(s, a)``, the immediate cost added back to the stored return)
    and every decision and TD target takes ``W(s, a) - switch_cost * |a - held|``. False: the network
    learns Q(s, a) with the cost in it, and on noise its errors outweigh the cost: the policy churns"""
    normalize: bool = False
    """standardise every state value by running statistics (:class:`InputStatistics`) before the
    network (deployed states put microstructure values with standard deviations of 16-41 beside
    windows within +-10). Off by default until it is shown to help: on the sanity suite's noise
    markets (3 markets x 3 seeds, the sanity learner) it weakened the learned fall of churn, early
    -> late position changes an hour 126 -> 55 raw against 102 -> 69 standardised; the runs spread
    too widely (0 to 360) for that difference to be sure either way"""
    clip_obs: float = 10.0
    """standardised features are clipped to +-this (a feature that was constant and starts moving)"""
    cnn_max_age: Annotated[int, Ge(0)] = 20
    """replayed states built by a CNN more than this many versions older than the newest one seen
    are not sampled (:class:`ReplayBuffer`). Live, a CNN version is a merge round (30 s), and the
    CNN's owner takes about 12 of its Adam steps a round (0.2 per packet, 2 symbols a second):
    20 rounds keep the states of the last 10 minutes, about 240 CNN steps; the default replay of
    2,000 transitions spans about 33 rounds at one replica and more with several"""
    bf16: bool = False
    """run the update's matmuls in bfloat16 (autocast; weights, optimiser state and loss stay float32).
    Worth it only on CPUs with native bf16 (AVX512-BF16, AMX): see :func:`native_bf16`"""

    @property
    def switch_cost(self) -> float:
        """Cost of a one-unit position change in reward units: (fee + slippage) x reward_scale."""
        return (self.fee + self.slippage) * self.reward_scale

    def __post_init__(self) -> None:
        if self.n_step < 1:
            raise ValueError(f"n_step must be at least 1, was {self.n_step}")
        if self.fill_lag < 0:
            raise ValueError(f"fill_lag must be >= 0, was {self.fill_lag}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], was {self.tau}")
        if self.batch_size > self.buffer_size:
            raise ValueError(f"batch_size ({self.batch_size}) exceeds buffer_size ({self.buffer_size})")
        if self.learning_starts < self.batch_size:
            raise ValueError(f"learning_starts ({self.learning_starts}) is below batch_size ({self.batch_size})")
        if not self.hidden_sizes:
            raise ValueError("hidden_sizes is empty")
        if not self.clip_obs > 0:
            raise ValueError(f"clip_obs must be positive, was {self.clip_obs}")
        if self.cnn_max_age < 0:
            raise ValueError(f"cnn_max_age must be >= 0, was {self.cnn_max_age}")


# --- the Q-network ------------------------------------------------------------------------------


class InputLayer(nn.Module):
    """The first affine layer, its weight stored (in_features, out_features): ``x @ weight + bias``.

    It holds nearly all the network's parameters (13,451 x 256) and most of an update's time. Stored
    the other way round, as ``nn.Linear`` stores it, the weight's gradient is ``grad_out.T @ x``: a
    GEMM with a transposed left operand and an output 13,451 wide, which ran at half the speed of
    ``x.T @ grad_out`` here (13.4 ms against 7.4 ms, one thread, batch 64); the forward passes cost
    the same either way. :func:`upgrade_state_dict` reads weights saved in ``nn.Linear``'s layout.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        # nn.Linear's initialisation (Kaiming uniform, a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), drawn
        # in its layout and transposed, so a seed gives the same network as before.
        reference = nn.Linear(in_features, out_features)
        self.weight_in_out = nn.Parameter(reference.weight.detach().t().contiguous())
        self.bias = nn.Parameter(reference.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight_in_out)


def upgrade_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Q-network weights saved before :class:`InputLayer` (``trunk.0.weight``, out x in) in today's names
    and layout (``trunk.0.weight_in_out``, in x out); other dicts are returned as they are."""
    if "trunk.0.weight" not in tensors or "trunk.0.weight_in_out" in tensors:
        return tensors
    out = {k: v for k, v in tensors.items() if k != "trunk.0.weight"}
    out["trunk.0.weight_in_out"] = tensors["trunk.0.weight"].t().contiguous()
    return out


STATISTICS = "input_stats."  # names of the Q-network's input statistics in its state dict


def is_statistic(name: str) -> bool:
    """Whether a Q-network tensor is a sum of observations (merged by adding replicas' updates)
    rather than a weight (merged by averaging them)."""
    return name.startswith(STATISTICS)


class InputStatistics(nn.Module):
    """Per-feature standardisation by running statistics: ``clip((x - mean) / sqrt(var + eps))``.

    The statistics are kept as sums in float64 (``count``, ``total``, ``total_sq``: buffers, so
    they travel in the state dict, the checkpoint and the merged model). Sums make replicas exact:
    each replica's update since its last submission is the sums of the states it saw, and the
    merged statistics are the base plus every replica's update (:func:`is_statistic`), so every
    state counts once whichever replica learned from it. Features that are not state values (the
    position written into the state and the position one-hot) are passed through: see
    :meth:`keep_raw`. Until two states are counted the layer is the identity.

    The replay buffer keeps raw observations and every forward pass standardises with the current
    statistics, so old and new transitions are read on one scale (as SB3's VecNormalize does for
    off-policy learners); the statistics settle within the first thousands of states.
    """

    EPS = 1e-8

    def __init__(self, dim: int, clip: float = 10.0) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("count", torch.zeros(1, dtype=torch.float64))
        self.register_buffer("total", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("total_sq", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("scaled", torch.ones(dim, dtype=torch.bool), persistent=False)

    def keep_raw(self, indices: Sequence[int]) -> None:
        """Leave these features unstandardised (set by the trainer core from the layout)."""
        self.scaled[list(indices)] = False

    @torch.no_grad()
    def update(self, x: np.ndarray) -> None:
        """Count one observation (or a batch of them, rows)."""
        t = torch.from_numpy(np.atleast_2d(np.asarray(x, np.float64)))
        self.count += t.shape[0]
        self.total += t.sum(dim=0)
        self.total_sq += (t * t).sum(dim=0)

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, standard deviation) per feature, float32; 0 and 1 for raw features or too few states."""
        n = float(self.count)
        if n < 2:
            return torch.zeros_like(self.total, dtype=torch.float32), torch.ones_like(self.total, dtype=torch.float32)
        mean = self.total / n
        var = (self.total_sq / n - mean * mean).clamp_min(0.0)
        std = torch.sqrt(var + self.EPS)
        return (
            torch.where(self.scaled, mean, 0.0).float(),
            torch.where(self.scaled, std, 1.0).float(),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if float(self.count) < 2:
            return obs
        mean, std = self.mean_std()
        return torch.sub(obs, mean).div_(std).clamp_(-self.clip, self.clip)  # one new tensor, not three


class QNetwork(nn.Module):
    """Dueling MLP: shared ReLU layers, then Q(s, a) = V(s) + A(s, a) - mean_a A(s, a).

    With ``normalize`` the observation is first standardised by :class:`InputStatistics`
    (``input_stats``), which the caller updates with the states it observes.
    """

    def __init__(
        self, obs_dim: int, hidden_sizes: Sequence[int] = (256, 256), n_actions: int = N_ACTIONS,
        normalize: bool = False, clip_obs: float = 10.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.input_stats = InputStatistics(obs_dim, clip_obs) if normalize else None
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden_sizes:
            layers += [InputLayer(width, h) if not layers else nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.value = nn.Linear(width, 1)
        self.advantage = nn.Linear(width, n_actions)
        self.obs_dim = obs_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(batch, obs_dim) -> Q-values (batch, n_actions)."""
        if self.input_stats is not None:
            obs = self.input_stats(obs)
        z = self.trunk(obs)
        advantage = self.advantage(z)
        return self.value(z) + advantage - advantage.mean(dim=1, keepdim=True)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- replay buffer ------------------------------------------------------------------------------


@dataclass
class Batch:
    obs: torch.Tensor  # (B, obs_dim) float32
    actions: torch.Tensor  # (B,) int64
    rewards: torch.Tensor  # (B,) float32, n-step discounted sum (scaled)
    next_obs: torch.Tensor  # (B, obs_dim) float32, the state n steps later
    discounts: torch.Tensor  # (B,) float32, gamma ** steps; 0 would mean terminal


class ReplayBuffer:
    """Fixed-capacity ring of n-step transitions in preallocated numpy arrays; the oldest is overwritten.

    Each transition carries the version of the CNN that built its state (an ordinal: versions
    numbered in the order the trainer first saw them). The CNN's blocks of a state (branch
    features, hidden layer, predictions) mean what that version made of the windows, and the CNN
    is retrained and republished every merge round while the replay spans many rounds. Re-encoding
    a replayed state would cost a CNN pass per sampled state and step; weighting keeps stale meanings
    in every batch. The rule here is to *drop*: a sample draws only from transitions whose CNN is at
    most ``max_age`` versions older than the newest one in the buffer (the ring still overwrites
    the oldest first). When fewer than a batch qualify (right after a change of CNN with a short
    history) the batch draws from the whole buffer, counted in :attr:`stale_batches`.
    """

    def __init__(self, capacity: int, obs_dim: int, max_age: int | None = None) -> None:
        self.capacity = capacity
        self.max_age = max_age
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.discounts = np.zeros(capacity, np.float32)
        self.cnn = np.zeros(capacity, np.int64)  # ordinal of the CNN version that built the state
        self.pos = 0  # next slot to write
        self.size = 0
        self.stale_batches = 0  # batches drawn from the whole buffer: too few fresh transitions
        self._fresh: np.ndarray | None = None  # fresh() until the next add

    def __len__(self) -> int:
        return self.size

    def add(
        self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, discount: float, cnn: int = 0
    ) -> None:
        i = self.pos
        self.obs[i] = obs
        self.actions[i] = action
        self.rewards[i] = reward
        self.next_obs[i] = next_obs
        self.discounts[i] = discount
        self.cnn[i] = cnn
        self._fresh = None
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def fresh(self) -> np.ndarray:
        """Indices of the transitions a sample may draw (all of them without ``max_age``)."""
        if self._fresh is None:  # the tags change only when a transition is added
            if self.max_age is None or self.size == 0:
                self._fresh = np.arange(self.size)
            else:
                versions = self.cnn[: self.size]
                self._fresh = np.flatnonzero(versions >= versions.max() - self.max_age)
        return self._fresh

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        pool = self.fresh()
        if len(pool) == self.size:
            idx = rng.integers(0, self.size, size=batch_size)
        elif len(pool) >= batch_size:
            idx = pool[rng.integers(0, len(pool), size=batch_size)]
        else:
            self.stale_batches += 1
            idx = rng.integers(0, self.size, size=batch_size)
        return Batch(
            obs=torch.from_numpy(self.obs[idx]),
            actions=torch.from_numpy(self.actions[idx]),
            rewards=torch.from_numpy(self.rewards[idx]),
            next_obs=torch.from_numpy(self.next_obs[idx]),
            discounts=torch.from_numpy(self.discounts[idx]),
        )


# --- n-step returns -----------------------------------------------------------------------------


def n_step_return(rewards: Sequence[float], gamma: float) -> float:
    """sum_k gamma**k * rewards[k]: the discounted return of consecutive rewards."""
    g = 0.0
    for r in reversed(rewards):
        g = r + gamma * g
    return g


@dataclass
class NStepTransition:
    obs: np.ndarray
    action: int
    reward: float  # n_step_return of the rewards it spans
    next_obs: np.ndarray  # observation after the last reward it spans
    discount: float  # gamma ** (rewards spanned): what the bootstrap value is multiplied by


# --- exploration --------------------------------------------------------------------------------


def linear_schedule(start_e: float, end_e: float, duration: int, t: int) -> float:
    """Epsilon after ``t`` steps, falling linearly from start_e to end_e over ``duration`` steps."""
    if duration <= 0:
        return end_e
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e) if end_e <= start_e else min(slope * t + start_e, end_e)


# --- decisions under known costs ------------------------------------------------------------------


def cost_matrix(hp: Hyperparameters) -> torch.Tensor | None:
    """``costs[held, action]``: the reward-unit cost of moving from held's position to the action's
    (long to short pays two units); None when costs are learned (``known_costs`` False)."""
    if not hp.known_costs:
        return None
    position = torch.tensor(ACTION_POSITION, dtype=torch.float32)
    return (position.unsqueeze(0) - position.unsqueeze(1)).abs() * hp.switch_cost


def decision_values(q_network: nn.Module, obs: torch.Tensor, costs: torch.Tensor | None) -> torch.Tensor:
    """(batch, n_actions) values the greedy choice maximises: the network's output less each action's
    cost from the position held (the observation's trailing one-hot), or the output as it is."""
    values = q_network(obs)
    if costs is None:
        return values
    held = obs[:, -N_ACTIONS:].argmax(dim=1)
    return values - costs.to(values.dtype)[held]


# --- the update ---------------------------------------------------------------------------------


def double_dqn_td_target(
    next_q_online: torch.Tensor, next_q_target: torch.Tensor, rewards: torch.Tensor, discounts: torch.Tensor
) -> torch.Tensor:
    """td_target = r + discount * Q_target(s', argmax_a Q_online(s', a)).

    The online network chooses the next action and the target network values it: taking the max
    of one noisy estimate overestimates, and decoupling the two removes most of that bias.
    """
    next_actions = next_q_online.argmax(dim=1, keepdim=True)
    return rewards + discounts * next_q_target.gather(1, next_actions).squeeze(1)


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); False when torch cannot tell."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def td_loss(
    q_network: QNetwork,
    target_network: QNetwork,
    batch: Batch,
    bf16: bool = False,
    costs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Huber TD loss, Q(s, a) of the batch); gradients flow only through Q(s, a).

    With ``costs`` (see :func:`cost_matrix`) the next state's action is chosen and valued net of the
    cost of reaching it from the position held there. With ``bf16`` the three forward passes run
    under CPU autocast; the loss is taken in float32.
    """
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with torch.no_grad():
            td_target = double_dqn_td_target(
                decision_values(q_network, batch.next_obs, costs).float(),
                decision_values(target_network, batch.next_obs, costs).float(),
                batch.rewards,
                batch.discounts,
            )
        old_val = q_network(batch.obs).float().gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    return F.smooth_l1_loss(old_val, td_target), old_val


def soft_update(target_network: nn.Module, q_network: nn.Module, tau: float) -> None:
    """target <- tau * online + (1 - tau) * target (tau = 1 copies)."""
    with torch.no_grad():
        for target_param, param in zip(target_network.parameters(), q_network.parameters()):
            target_param.lerp_(param, tau)


def train_step(
    q_network: QNetwork,
    target_network: QNetwork,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    max_grad_norm: float,
    bf16: bool = False,
    costs: torch.Tensor | None = None,
) -> tuple[float, float]:
    """One gradient step on ``batch``; returns (TD loss before the step, mean Q(s, a))."""
    loss, old_val = td_loss(q_network, target_network, batch, bf16, costs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(q_network.parameters(), max_grad_norm)
    optimizer.step()
    return float(loss.detach()), float(old_val.detach().mean())


# --- the agent ----------------------------------------------------------------------------------


class DQNAgent:
    """Q-network, target network, optimiser, replay and exploration for one observation size."""

    def __init__(self, obs_dim: int, hp: Hyperparameters) -> None:
        self.hp = hp
        self.obs_dim = obs_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp.seed)
            self.q_network = QNetwork(obs_dim, hp.hidden_sizes, normalize=hp.normalize, clip_obs=hp.clip_obs)
        self.target_network = copy.deepcopy(self.q_network)
        # One set of input statistics: the target network reads observations on the online one's scale.
        self.target_network.input_stats = self.q_network.input_stats
        # Fused Adam: one kernel for the whole step instead of a Python loop of small ops (10x faster on CPU).
        self.optimizer = torch.optim.Adam(self.q_network.parameters(), lr=hp.learning_rate, fused=True)
        self.replay = ReplayBuffer(hp.buffer_size, obs_dim, hp.cnn_max_age)
        self.rng = np.random.default_rng(hp.seed)
        self.costs = cost_matrix(hp)
        self.updates = 0  # gradient steps taken
        self.transitions = 0  # 1-step transitions seen (drives epsilon)

    @property
    def epsilon(self) -> float:
        hp = self.hp
        return linear_schedule(hp.start_e, hp.end_e, hp.exploration_steps, self.transitions)

    def act(self, obs: np.ndarray) -> int:
        """Epsilon-greedy action for one observation."""
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(N_ACTIONS))
        return int(self.values(obs).argmax())

    def count_input(self, obs: np.ndarray) -> None:
        """Count an observed state in the input statistics (each state once; a no-op without them)."""
        if self.q_network.input_stats is not None:
            self.q_network.input_stats.update(obs)

    def values(self, obs: np.ndarray) -> np.ndarray:
        """The values the greedy policy maximises at one observation (net of known costs)."""
        with torch.no_grad():
            x = torch.from_numpy(np.asarray(obs, np.float32)).unsqueeze(0)
            return decision_values(self.q_network, x, self.costs)[0].numpy()

    def learn(self, n_updates: int) -> list[tuple[float, float]]:
        """Up to ``n_updates`` gradient steps (none before learning_starts); (td_loss, q_value) of each."""
        if len(self.replay) < self.hp.learning_starts:
            return []
        out = []
        for _ in range(n_updates):
            batch = self.replay.sample(self.hp.batch_size, self.rng)
            out.append(
                train_step(
                    self.q_network,
                    self.target_network,
                    self.optimizer,
                    batch,
                    self.hp.max_grad_norm,
                    self.hp.bf16,
                    self.costs,
                )
            )
            self.updates += 1
            if self.updates % self.hp.target_network_frequency == 0:
                soft_update(self.target_network, self.q_network, self.hp.tau)
        return out

    def adopt_online(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Take merged weights for the online network (either layout of the first layer).

        The target network keeps its own rule: it is not reset to the merged weights but moves
        toward them by ``tau`` per gradient step, as it follows every other change of the online
        network. (Copying them into the target at every merge round made the target a periodic
        hard copy, not the documented Polyak average.) An agent that has not taken a step yet
        has no target worth keeping: its target starts as a copy.

        Adam's moments are kept, not merged nor reset: they are running statistics of this
        replica's gradients on the same stream the merged weights were trained on, and the
        merged point is an average of nearby points, so they stay the right scale; resetting them
        would restart Adam's bias correction with a burst of large steps at every round.
        """
        state_dict = upgrade_state_dict(state_dict)
        self.q_network.load_state_dict(state_dict, strict=True)
        if self.updates == 0:
            self.target_network.load_state_dict(state_dict, strict=True)

    def load_q_network(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Resume from saved online weights (either layout of the first layer); the target network starts as a copy."""
        state_dict = upgrade_state_dict(state_dict)
        self.q_network.load_state_dict(state_dict, strict=True)
        self.target_network.load_state_dict(state_dict, strict=True)
