"""Sensitivity learning from trading outcomes: when, and how big, to act on the trading signal (pure).

The trading DQN (:mod:`unistream_trainer.dqn`) says long or short; this learner decides, from what
the signal looked like at entry, whether to take the trade and at which size. Every closed trade is
a one-step episode of a contextual bandit: the context is the signal at entry, the action a size in
``SIZES`` (0 = skip), the reward ``size * outcome`` with ``outcome`` the trade's net log return
(fees included, as :class:`unistream_trainer.paper.ClosedTrade.net_return`). The market does not
react to our size, so one outcome gives the reward of *every* size (counterfactual): the learner
regresses all of them at once and needs no exploration.

**Context** (:func:`signal_context` builds it; ``CONTEXT_NAMES``), float32, index: name: meaning

- 0 ``q_gap``: Q(action) - Q(flat) of the trading DQN at entry, in its reward scale;
- 1 ``p_action``: softmax of the DQN's Q-values at the chosen action, 1/3..1: the confidence;
- 2..5 ``1s.p_top``, ``1s.p_bottom``, ``1s.p_up``, ``1s.p_down``: the CNN's 1s predictions at entry
  (``TrainingDataPacket.cnn_predictions`` by ``prediction_names``; :func:`packet_predictions`);
- 6 ``side``: +1 long, -1 short (the CNN's up and down mean opposite things for the two).

Any other float vector works too: the learner only needs ``context_dim`` and, for the baseline,
the index of a confidence in [0, 1] (``confidence_index``, default 1).

**What it maximises.** Q(context, size) estimates ``E[u]`` with the quadratic (mean-variance)
utility ``u = s*o - risk_aversion * (s*o)**2`` of the outcome ``o`` in percent
(``reward_scale`` = 100). With ``risk_aversion = 0`` that is the expected reward, which is linear
in the size, so half size would never beat both skipping and full size; the penalty makes half
size the choice for a positive but noisy edge (``E[o] / E[o**2]`` between ``risk_aversion / 2``
and ``3 * risk_aversion / 2``) and full size for a clear one. Skipping is worth exactly 0 and is
not learned; the network has one output per non-zero size. The network is a bootstrapped
ensemble and each size is valued at ``mean - pessimism * std`` over its heads, so an edge the
trades have not yet shown is not acted on. Ties and an untrained learner skip.

**Judging it.** :meth:`SensitivityLearner.record` first scores the outcome *prequentially* (the
learner's decision for the context as it stands, before it trains on that outcome) against two
fixed rules that are not degenerate: ``always`` (full size on every signal: the DQN's own
trades) and ``threshold`` (full size when the confidence is at least a threshold chosen on the
trades *before* the current block: the one, among the deciles of their confidences, whose rule
earned the most on them; the first block acts on every signal). (The fixed threshold of 0.5 this
replaced was never reached by the softmax of the DQN's Q-values, so learner and baseline both
skipped every trade and their difference was 0 by construction.) The metrics compare raw rewards
``size * outcome`` (log-return units, not the utility); ``baseline`` names the threshold rule.

**Whether it trades.** Trades are scored in blocks of ``block_trades``; each block is held out
for all three (the learner trained, and the threshold chosen, on earlier trades only). The
learner sizes the paper trader's trades only when, over the last ``max_blocks`` blocks (at least
``min_blocks``), its per-block mean reward beats both fixed rules with the lower end of the 95 %
Student-t interval of the block differences above 0 (the block is the unit of replication);
otherwise it runs in the shadow and the trades are taken at full size (:meth:`trading`).
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from unistream_common import codec
from unistream_common.packets import TrainingDataPacket
from unistream_trainer.dqn import ACTION_POSITION
from unistream_trainer.paper import mean_ci

SIZES: tuple[float, ...] = (0.0, 0.5, 1.0)  # 0 is skip
CONTEXT_NAMES: tuple[str, ...] = ("q_gap", "p_action", "1s.p_top", "1s.p_bottom", "1s.p_up", "1s.p_down", "side")
CONFIDENCE_INDEX = 1  # p_action
CNN_INPUTS: tuple[str, ...] = CONTEXT_NAMES[2:6]


def packet_predictions(packet: TrainingDataPacket) -> dict[str, float]:
    """The packet's CNN predictions by name (``"1s.p_top"`` -> value)."""
    values = codec.f32_from_bytes(packet.cnn_predictions)
    return {name: float(v) for name, v in zip(packet.prediction_names, values)}


def signal_context(
    q_values: Sequence[float], action: int, predictions: Mapping[str, float], fill: float | None = None
) -> np.ndarray:
    """The ``CONTEXT_NAMES`` vector of an entry: DQN Q-values (flat, long, short), its action, CNN outputs.

    A prediction missing from ``predictions`` raises KeyError unless ``fill`` is given.
    """
    q = np.asarray(q_values, np.float64)
    if q.shape != (len(ACTION_POSITION),) or not np.isfinite(q).all():
        raise ValueError(f"q_values must be {len(ACTION_POSITION)} finite values, was {q_values!r}")
    if not 0 <= action < len(ACTION_POSITION):
        raise ValueError(f"action must be in 0..{len(ACTION_POSITION) - 1}, was {action}")
    p = np.exp(q - q.max())
    p /= p.sum()
    missing = [name for name in CNN_INPUTS if name not in predictions]
    if missing and fill is None:
        raise KeyError(f"predictions {missing} missing (have {sorted(predictions)})")
    cnn = [float(predictions[name]) if name in predictions else float(fill or 0.0) for name in CNN_INPUTS]
    values = [q[action] - q[0], p[action], *cnn, float(ACTION_POSITION[action])]
    return np.asarray(values, np.float32)


def _t_low(diffs: np.ndarray, confidence: float = 0.95) -> float:
    """The lower end of the Student-t interval of the mean of ``diffs`` (-inf for one value)."""
    return float(mean_ci(diffs, confidence).low)


class EnsembleQNetwork(nn.Module):
    """``heads`` independent ReLU MLPs evaluated as one batched matmul: (B, in) -> (heads, B, out)."""

    def __init__(self, in_dim: int, hidden_sizes: Sequence[int], out_dim: int, heads: int) -> None:
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        width = in_dim
        for h in (*hidden_sizes, out_dim):
            bound = 1.0 / math.sqrt(width)  # nn.Linear's default initialisation, per head
            self.weights.append(nn.Parameter(torch.empty(heads, width, h).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(heads, 1, h).uniform_(-bound, bound)))
            width = h
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.unsqueeze(0).expand(self.heads, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = torch.baddbmm(b, z, w)
            if i < last:
                z = torch.relu(z)
        return z


class SensitivityLearner:
    """Q(context, size) by regression on closed trades' outcomes; decides skip / half / full.

    The Q-network is a bootstrapped ensemble (Osband et al. 2016): ``heads`` MLPs, each trained on
    its own Poisson(1) resampling of the trades. Their spread measures how well the data pin the
    estimate down, and a size is valued at ``mean - pessimism * std`` over the heads, so the
    learner acts on an edge only once the trades show it, and skips noise.
    """

    def __init__(
        self,
        context_dim: int,
        seed: int = 0,
        *,
        sizes: Sequence[float] = SIZES,
        hidden_sizes: Sequence[int] = (32, 32),
        heads: int = 5,
        pessimism: float = 1.0,
        learning_rate: float = 3e-4,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        capacity: int = 10_000,
        min_trades: int = 32,
        risk_aversion: float = 0.5,
        reward_scale: float = 100.0,
        confidence_index: int = CONFIDENCE_INDEX,
        window: int = 500,
        block_trades: int = 50,
        min_blocks: int = 3,
        max_blocks: int = 20,
    ) -> None:
        if context_dim < 1:
            raise ValueError(f"context_dim must be at least 1, was {context_dim}")
        if not 0 <= confidence_index < context_dim:
            raise ValueError(f"confidence_index {confidence_index} is outside the context (dim {context_dim})")
        if len(sizes) < 2 or sizes[0] != 0.0 or any(s <= 0 for s in sizes[1:]):
            raise ValueError(f"sizes must be 0 (skip) followed by positive sizes, was {sizes}")
        if heads < 2 and pessimism:
            raise ValueError("pessimism needs at least 2 heads to measure their spread")
        if risk_aversion < 0:
            raise ValueError(f"risk_aversion must be >= 0, was {risk_aversion}")
        self.context_dim = context_dim
        self.sizes = tuple(float(s) for s in sizes)
        self.batch_size = batch_size
        self.min_trades = max(min_trades, 1)
        self.risk_aversion = risk_aversion
        self.pessimism = pessimism
        self.heads = heads
        self.reward_scale = reward_scale
        self.threshold = 0.0  # the threshold rule's, chosen on the trades before the current block
        self.block_trades = max(1, block_trades)
        self.min_blocks = max(2, min_blocks)
        self.max_blocks = max(self.min_blocks, max_blocks)
        self._block = [0.0, 0.0, 0.0]  # the current block's reward sums: learner, always, threshold
        self._block_n = 0
        self.blocks: deque[tuple[float, float, float]] = deque(maxlen=self.max_blocks)  # held-out block means
        self.confidence_index = confidence_index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.q_network = EnsembleQNetwork(context_dim, hidden_sizes, len(self.sizes) - 1, heads)
        self.optimizer = torch.optim.AdamW(self.q_network.parameters(), lr=learning_rate, weight_decay=weight_decay)
        self.rng = np.random.default_rng(seed)
        # Closed trades, a ring buffer.
        self.contexts = np.zeros((capacity, context_dim), np.float32)
        self.outcomes = np.zeros(capacity, np.float32)
        self.boot_weights = np.zeros((capacity, heads), np.float32)  # each head's Poisson(1) weight
        self.pos = 0  # next slot to write
        self.stored = 0
        # Input standardisation, refitted from the stored trades at each train().
        self.x_mean = torch.zeros(context_dim)
        self.x_std = torch.ones(context_dim)
        self.updates = 0
        self.losses: deque[float] = deque(maxlen=100)
        # Prequential scores.
        self.trades = 0
        self.size_counts = [0] * len(self.sizes)
        self.baseline_acts = 0
        self.reward_sum = 0.0
        self.baseline_sum = 0.0
        self.always_sum = 0.0
        self._edge_mean = 0.0  # Welford over learner reward - baseline reward
        self._edge_m2 = 0.0
        self.recent: deque[tuple[float, float, float]] = deque(maxlen=window)  # (size, learner, baseline)

    # --- deciding ----------------------------------------------------------------------------

    def _check(self, context: Sequence[float] | np.ndarray) -> np.ndarray:
        c = np.asarray(context, np.float32).ravel()
        if c.shape != (self.context_dim,):
            raise ValueError(f"context has {c.size} values, expected {self.context_dim}")
        if not np.isfinite(c).all():
            raise ValueError("context holds NaN or infinity")
        return c

    def heads_q(self, context: Sequence[float] | np.ndarray) -> np.ndarray:
        """Each head's estimated utility of each non-zero size, (heads, sizes - 1), scaled units."""
        c = self._check(context)
        with torch.no_grad():
            x = (torch.from_numpy(c) - self.x_mean) / self.x_std
            return self.q_network(x.unsqueeze(0))[:, 0, :].numpy().astype(np.float64)

    def utilities(self, context: Sequence[float] | np.ndarray) -> np.ndarray:
        """Pessimistic utility of each size in ``sizes``: mean - pessimism * std over the heads; skip is 0.

        All zeros while untrained.
        """
        out = np.zeros(len(self.sizes))
        if self.updates:
            q = self.heads_q(context)
            out[1:] = q.mean(axis=0) - self.pessimism * (q.std(axis=0, ddof=1) if self.heads > 1 else 0.0)
        else:
            self._check(context)
        return out

    def decide(self, context: Sequence[float] | np.ndarray) -> tuple[bool, float]:
        """(act, size) for a signal with this context: the size of highest estimated utility."""
        size = self.sizes[int(np.argmax(self.utilities(context)))]  # argmax keeps the first: ties skip
        return size > 0, size

    def baseline_size(self, context: Sequence[float] | np.ndarray) -> float:
        """The threshold rule: size 1 when the confidence is at least :attr:`threshold`, else 0."""
        return 1.0 if float(context[self.confidence_index]) >= self.threshold else 0.0

    def choose_threshold(self) -> float:
        """The threshold whose rule earned the most on the stored trades (ties: the lowest, which
        acts on more signals), among the deciles of their confidences; 0 (act always) without trades."""
        if not self.stored:
            return 0.0
        confidence = self.contexts[: self.stored, self.confidence_index].astype(np.float64)
        outcomes = self.outcomes[: self.stored].astype(np.float64)
        best, best_sum = 0.0, float(outcomes.sum())
        for q in np.unique(np.quantile(confidence, np.linspace(0.1, 0.9, 9))):
            earned = float(outcomes[confidence >= q].sum())
            if earned > best_sum + 1e-12:
                best, best_sum = float(q), earned
        return best

    def trading(self) -> tuple[bool, str]:
        """(whether the learner sizes the trades, why): see the module docstring."""
        n = len(self.blocks)
        if n < self.min_blocks:
            return False, f"shadow: {n} of {self.min_blocks} held-out blocks of {self.block_trades} trades scored"
        learner, always, threshold = (np.asarray(x) for x in zip(*self.blocks, strict=True))
        lows = {name: _t_low(learner - rule) for name, rule in (("always", always), ("threshold", threshold))}
        text = ", ".join(f"vs {name} {float(np.mean(learner - r)):+.2g} (low {lows[name]:+.2g})"
                         for name, r in (("always", always), ("threshold", threshold)))  # fmt: skip
        if all(low > 0 for low in lows.values()):
            return True, f"learner sizes the trades: over {n} held-out blocks it beats both rules ({text})"
        return False, f"shadow, full size: over {n} held-out blocks it does not beat both rules ({text})"

    # --- learning ----------------------------------------------------------------------------

    def record(self, context: Sequence[float] | np.ndarray, outcome: float) -> float:
        """Store a closed trade (entry context, net log return); returns the size scored for it.

        The outcome is scored first, with the learner as it stands, then stored for training.
        """
        c = self._check(context)
        if not math.isfinite(outcome):
            raise ValueError(f"outcome must be finite, was {outcome}")
        _, size = self.decide(c)
        base = self.baseline_size(c)
        learner_r, base_r = size * outcome, base * outcome
        for k, r in enumerate((learner_r, outcome, base_r)):
            self._block[k] += r
        self._block_n += 1
        self.trades += 1
        self.size_counts[self.sizes.index(size)] += 1
        self.baseline_acts += base > 0
        self.reward_sum += learner_r
        self.baseline_sum += base_r
        self.always_sum += outcome
        delta = (learner_r - base_r) - self._edge_mean
        self._edge_mean += delta / self.trades
        self._edge_m2 += delta * ((learner_r - base_r) - self._edge_mean)
        self.recent.append((size, learner_r, base_r))
        i = self.pos
        self.contexts[i] = c
        self.outcomes[i] = outcome
        self.boot_weights[i] = self.rng.poisson(1.0, self.heads)
        self.pos = (i + 1) % len(self.outcomes)
        self.stored = min(self.stored + 1, len(self.outcomes))
        if self._block_n == self.block_trades:  # the block ends: its means, then the next block's threshold
            self.blocks.append((self._block[0] / self._block_n, self._block[1] / self._block_n,
                                self._block[2] / self._block_n))  # fmt: skip
            self._block, self._block_n = [0.0, 0.0, 0.0], 0
            self.threshold = self.choose_threshold()
        return size

    def targets(self, outcomes: torch.Tensor) -> torch.Tensor:
        """Utility of every non-zero size for each outcome (B,) -> (B, sizes - 1), scaled."""
        sizes = torch.tensor(self.sizes[1:], dtype=outcomes.dtype)
        reward = sizes.unsqueeze(0) * (outcomes * self.reward_scale).unsqueeze(1)
        return reward - self.risk_aversion * reward.square()

    def train(self, n_updates: int) -> int:
        """Up to ``n_updates`` gradient steps on the stored trades (none before ``min_trades``); returns steps."""
        if self.stored < self.min_trades or n_updates <= 0:
            return 0
        stored = torch.from_numpy(self.contexts[: self.stored])
        self.x_mean = stored.mean(dim=0)
        self.x_std = stored.std(dim=0, correction=0).clamp_min(1e-6)
        for _ in range(n_updates):
            idx = self.rng.integers(0, self.stored, size=min(self.batch_size, self.stored))
            x = (torch.from_numpy(self.contexts[idx]) - self.x_mean) / self.x_std
            y = self.targets(torch.from_numpy(self.outcomes[idx]))  # (B, A)
            w = torch.from_numpy(self.boot_weights[idx]).T.unsqueeze(2)  # (heads, B, 1)
            loss = (w * (self.q_network(x) - y.unsqueeze(0)).square()).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.q_network.parameters(), 10.0)
            self.optimizer.step()
            self.losses.append(float(loss.detach()))
            self.updates += 1
        return n_updates

    # --- keeping ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything learned and scored (network, optimizer, random state, stored trades, scores),
        as tensors and plain values: what :meth:`load_state_dict` needs to go on exactly as this learner."""
        n = self.stored
        return {
            "context_dim": self.context_dim, "sizes": list(self.sizes), "heads": self.heads,
            "capacity": len(self.outcomes),
            "q_network": self.q_network.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "contexts": torch.from_numpy(self.contexts[:n].copy()),
            "outcomes": torch.from_numpy(self.outcomes[:n].copy()),
            "boot_weights": torch.from_numpy(self.boot_weights[:n].copy()),
            "pos": self.pos, "stored": n, "x_mean": self.x_mean.clone(), "x_std": self.x_std.clone(),
            "updates": self.updates, "losses": list(self.losses), "trades": self.trades,
            "size_counts": list(self.size_counts), "baseline_acts": self.baseline_acts,
            "reward_sum": self.reward_sum, "baseline_sum": self.baseline_sum, "always_sum": self.always_sum,
            "edge_mean": self._edge_mean, "edge_m2": self._edge_m2, "recent": [list(r) for r in self.recent],
            "threshold": self.threshold, "block": list(self._block), "block_n": self._block_n,
            "blocks": [list(b) for b in self.blocks],
        }  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take the state of :meth:`state_dict`; ValueError (nothing changed) when it was kept by a
        learner of another shape (context, sizes, heads, buffer capacity or network)."""
        shape = {"context_dim": self.context_dim, "sizes": list(self.sizes), "heads": self.heads}
        shape["capacity"] = len(self.outcomes)
        differ = [f"{k} {state.get(k)} (kept) vs {v} (now)" for k, v in shape.items() if state.get(k) != v]
        if differ:
            raise ValueError("the sensitivity learner was kept with another shape: " + ", ".join(differ))
        try:
            network = copy.deepcopy(self.q_network)
            network.load_state_dict(state["q_network"], strict=True)
            optimizer = torch.optim.AdamW(network.parameters())  # its settings come with its state
            optimizer.load_state_dict(state["optimizer"])
            rng = np.random.default_rng()
            rng.bit_generator.state = state["rng"]
            n = int(state["stored"])
            buffers = [state[k].numpy() for k in ("contexts", "outcomes", "boot_weights")]
            if any(len(b) != n for b in buffers) or not 0 <= int(state["pos"]) < len(self.outcomes):
                raise ValueError(f"{n} trades stored, buffers of {[len(b) for b in buffers]}, pos {state['pos']}")
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"the sensitivity state is incomplete or malformed: {type(exc).__name__}: {exc}") from exc
        self.q_network, self.optimizer, self.rng = network, optimizer, rng
        for name, values in zip(("contexts", "outcomes", "boot_weights"), buffers, strict=True):
            getattr(self, name)[:n] = values
        self.pos, self.stored = int(state["pos"]), n
        self.x_mean, self.x_std = state["x_mean"].clone(), state["x_std"].clone()
        self.updates, self.trades = int(state["updates"]), int(state["trades"])
        self.baseline_acts = int(state["baseline_acts"])
        self.losses = deque(state["losses"], maxlen=self.losses.maxlen)
        self.size_counts = [int(c) for c in state["size_counts"]]
        self.reward_sum, self.baseline_sum = float(state["reward_sum"]), float(state["baseline_sum"])
        self.always_sum = float(state["always_sum"])
        self._edge_mean, self._edge_m2 = float(state["edge_mean"]), float(state["edge_m2"])
        self.recent = deque((tuple(r) for r in state["recent"]), maxlen=self.recent.maxlen)
        self.threshold, self._block_n = float(state["threshold"]), int(state["block_n"])
        self._block = [float(x) for x in state["block"]]
        self.blocks = deque((tuple(float(x) for x in b) for b in state["blocks"]), maxlen=self.max_blocks)

    # --- reporting ---------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """``sensitivity/...``: prequential rewards of the learner, the baseline and acting always.

        Rewards are ``size * outcome`` per recorded trade (a skip scores 0), in log-return units.
        ``edge`` is the learner's mean reward less the baseline's on the same trades, ``edge_se``
        its standard error and ``edge_t`` their ratio; ``recent_*`` cover the last ``window``
        trades. ``chosen_size_<s>`` is the share of trades the learner scored at size ``s``.
        """
        n = self.trades
        trading, _ = self.trading()
        out: dict[str, float] = {
            "sensitivity/trades": float(n),
            "sensitivity/updates": float(self.updates),
            "sensitivity/threshold": self.threshold,
            "sensitivity/blocks": float(len(self.blocks)),
            "sensitivity/trading": float(trading),
        }
        if len(self.blocks) >= 2:
            learner, always, threshold = (np.asarray(x) for x in zip(*self.blocks, strict=True))
            for name, rule in (("always", always), ("threshold", threshold)):
                out[f"sensitivity/block_edge_{name}"] = float(np.mean(learner - rule))
                out[f"sensitivity/block_edge_{name}_low"] = _t_low(learner - rule)
        if self.losses:
            out["sensitivity/loss"] = float(np.mean(self.losses))
        for size, count in zip(self.sizes, self.size_counts):
            out[f"sensitivity/chosen_size_{size:g}"] = count / n if n else 0.0
        if not n:
            return out
        se = math.sqrt(self._edge_m2 / (n - 1) / n) if n > 1 else math.inf
        recent = np.asarray(self.recent)
        out.update(
            {
                "sensitivity/act_rate": 1.0 - self.size_counts[0] / n,
                "sensitivity/baseline_act_rate": self.baseline_acts / n,
                "sensitivity/mean_reward": self.reward_sum / n,
                "sensitivity/baseline_mean_reward": self.baseline_sum / n,
                "sensitivity/always_mean_reward": self.always_sum / n,
                "sensitivity/edge": self._edge_mean,
                "sensitivity/edge_se": se,
                "sensitivity/edge_t": self._edge_mean / se if se > 0 else 0.0,
                "sensitivity/recent_act_rate": float((recent[:, 0] > 0).mean()),
                "sensitivity/recent_mean_reward": float(recent[:, 1].mean()),
                "sensitivity/recent_baseline_mean_reward": float(recent[:, 2].mean()),
                "sensitivity/recent_edge": float((recent[:, 1] - recent[:, 2]).mean()),
            }
        )
        return out
