"""Supervised training of the features service's CNN on local extrema, from the training stream (pure).

The features service (:mod:`unistream_features`) publishes one :class:`TrainingDataPacket` per symbol
and closed 1s bar. Its state follows layout v2: the state's own symbol comes first, and its first
four blocks are the windows ``{SYM}.window.1s``, ``.1m``, ``.1h``, ``.1d``, each
``N_CHANNELS x W`` values (channel-major, oldest bar first, newest bar in the last column). So
``state[: 4 * 5 * W].reshape(4, 5, W)`` is exactly the input of :class:`MultiTimeframeCNN` for that
symbol at that time. :class:`ExtremaTrainer` turns these inputs into labelled samples and trains the
CNN's extrema and direction heads on them. No I/O, no clock, no Redis: the service shell feeds it
packets, calls :meth:`ExtremaTrainer.train`, publishes :meth:`ExtremaTrainer.publish_bytes` and
:meth:`ExtremaTrainer.metrics`.

Labels (timeframe ``tf`` with span ``S`` ms and order ``k = order[tf]``)
------------------------------------------------------------------------

A ``tf`` bar closes at a packet when ``ts_event_ms % S == 0`` (1s: every packet). Call the bar of
``tf`` that closed at time ``t_j`` bar ``j``; its sample input is the CNN input of the packet at
``t_j`` (what the model would have seen right then). Bar ``j`` is

- a **top** if its close is >= the closes of bars ``j-k .. j+k``, a **bottom** if it is <= all of
  them, **none** otherwise (and none when both hold: a flat stretch is not an extremum; closes
  within :data:`TIE_TOL` sigma count as equal);
- **up** if ``log(close[j+k] / close[j]) > 0`` (beyond :data:`TIE_TOL` sigma), **down** otherwise.

**Timing rule.** The label of bar ``j`` depends on bar ``j+k``, which closes at
``t_j + k * S``. It is computed at exactly that packet (the one with ``ts_event_ms == t_j + k*S``),
and only from that packet's own ``tf`` window: the last ``2k`` columns of its ``close_ret`` channel
are the returns of bars ``j-k+1 .. j+k``, so their cumulative sums are the log closes of bars
``j-k .. j+k`` relative to bar ``j-k``, in units of that window's sigma (a positive constant: the
comparisons are exact, apart from returns clipped at ``+-CLIP`` sigma). Nothing observed after
that packet enters the label, nothing before ``t_j`` enters the input, and the label is never
formed earlier: at any packet time ``t`` the labelled samples are a function of the packets with
``ts_event_ms <= t`` alone. When that packet is missing (a gap) bar ``j`` is never labelled.

The label needs the last ``2k + 1`` bars of the window to be real (``warmup[tf] * W`` of the
packet, all of them when the packet carries no ``warmup``); otherwise the sample is dropped.
The trainer assumes that the packet at a ``tf`` boundary already holds, in its ``tf`` window, the
``tf`` bar that closed there (always true for 1s: that bar makes the packet). If a 1m/1h/1d bar
reached the features service after the 1s bar of its close, that boundary's window ends one bar
early and its label belongs to the bar before: still computed from the past only, but shifted.

Note that the label also looks ``k`` bars into the past, which the input shows: on a random walk
a bar is a top with probability ``(C(2k, k) / 4^k)^2 ~ 1 / (pi k)`` (a bottom likewise; either
extremum ``~ 2 / (pi k)``), but given that its close is >= the ``k`` closes before it, with
probability ``C(2k, k) / 4^k ~ 1 / sqrt(pi k)``. A model that only learns that part beats the
random-classifier baseline without predicting anything. :meth:`ExtremaTrainer.metrics` therefore
reports, beside the positive rate, the PR-AUC of that *past rule* (score 1 when bar ``j`` is the
extremum of bars ``j-k .. j``): an edge on the future is PR-AUC above the past rule.

Training and evaluation
-----------------------

Labelled samples go to a bounded replay buffer. Each gradient step samples a batch; a sample's loss
involves only the heads of its own timeframe: class-weighted cross-entropy on the extrema logits
(weights inversely proportional to the class frequencies of that timeframe seen so far, bounded to
``[1/max_class_weight, max_class_weight]``) plus cross-entropy on the direction logits. Gradients
are clipped to ``max_grad_norm``.

Evaluation is prequential: every sample is scored by the current model the moment it is labelled,
before it is in the buffer, so no score comes from a model that trained on that sample. Per
timeframe the last ``score_window`` scores give the average precision (PR-AUC) of "top" and of
"bottom", compared with the positive rate (the AP of a random classifier), the random-walk figure
above, and the past rule.

Memory is bounded whatever the run time: per symbol (at most ``max_symbols``, least recently seen
evicted) and timeframe at most ``max_pending`` inputs wait for their label, the replay buffer holds
``buffer_size`` samples (inputs as float16: ``buffer_size x 4 x 5 x W x 2`` bytes, 240 MB at the
defaults), and each timeframe keeps ``score_window`` scores.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from unistream_common import codec
from unistream_common.keys import TIMEFRAME_MS
from unistream_common.packets import TrainingDataPacket
from unistream_model.cnn import (
    EXTREMA_CLASSES,
    INPUT_CLIP,
    MIN_WINDOW_BARS,
    N_CHANNELS,
    TIMEFRAMES,
    MultiTimeframeCNN,
    init_model,
    save_bytes,
)
from unistream_model.layout import LAYOUT_VERSION
from unistream_model.mtf import CHANNELS

BOTTOM, NONE, TOP = 0, 1, 2  # indices of EXTREMA_CLASSES
DOWN, UP = 0, 1  # indices of DIRECTION_CLASSES
CLOSE_RET = CHANNELS.index("close_ret")
N_TIMEFRAMES = len(TIMEFRAMES)
TIE_TOL = 1e-4
"""closes closer than this (in units of the window's sigma) are equal: float32 sums are not exact"""
DEFAULT_ORDER: dict[str, int] = dict.fromkeys(TIMEFRAMES, 5)

if EXTREMA_CLASSES != ("bottom", "none", "top"):
    raise ImportError(f"extrema classes {EXTREMA_CLASSES} are not (bottom, none, top)")


# --- labels and metrics (pure functions) ----------------------------------------------------------


def label_from_returns(returns: np.ndarray, k: int) -> tuple[int, int]:
    """(extrema class, direction) of the middle bar of ``2k + 1`` bars from the ``2k`` returns after the first.

    ``returns`` are the (sigma-scaled) log returns of bars ``j-k+1 .. j+k``, oldest first: the last
    ``2k`` values of a ``close_ret`` channel whose newest column is bar ``j+k``.
    """
    r = np.asarray(returns, np.float64)
    if r.shape != (2 * k,):
        raise ValueError(f"{r.shape[0] if r.ndim == 1 else r.shape} returns given, order {k} needs {2 * k}")
    closes = np.concatenate(([0.0], np.cumsum(r)))  # bars j-k .. j+k, relative to bar j-k
    mid = closes[k]
    top = bool(np.all(mid >= closes - TIE_TOL))
    bottom = bool(np.all(mid <= closes + TIE_TOL))
    extremum = TOP if top and not bottom else BOTTOM if bottom and not top else NONE
    direction = UP if closes[-1] - mid > TIE_TOL else DOWN
    return extremum, direction


def past_rule(returns: np.ndarray, k: int) -> tuple[bool, bool]:
    """(is the max, is the min) of bars ``j-k .. j`` for bar ``j``, from its last ``k`` returns (oldest first).

    The part of the extremum condition the input at bar ``j`` already shows.
    """
    r = np.asarray(returns, np.float64)
    closes = np.concatenate(([0.0], np.cumsum(r)))
    last = closes[-1]
    return bool(np.all(last >= closes - TIE_TOL)), bool(np.all(last <= closes + TIE_TOL))


def random_walk_extremum_rate(k: int) -> float:
    """Probability that a bar is a top (likewise a bottom) of order ``k`` on a continuous symmetric random walk.

    ``(C(2k, k) / 4^k)^2``: the walk must stay below the bar for ``k`` steps on each side, each with
    probability ``C(2k, k) / 4^k`` (Sparre Andersen); about ``1 / (pi k)``, so a bar is either
    extremum with probability about ``2 / (pi k)``.
    """
    if k < 1:
        raise ValueError(f"order must be at least 1, was {k}")
    side = math.comb(2 * k, k) / 4**k
    return side * side


def average_precision(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """Average precision (area under the step precision-recall curve) of ``scores`` for binary ``labels``.

    ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds from the highest down
    (tied scores enter together), as scikit-learn's ``average_precision_score``. NaN when there is
    no positive. A random score has AP equal to the positive rate, in expectation.
    """
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or infinite values")
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each group of equal scores
    tp = np.cumsum(y)[ends]
    precision = tp / (ends + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# --- samples and buffers -------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledSample:
    """One input of the CNN and the label of one timeframe's bar that closed when the input was current."""

    symbol: str
    timeframe: str
    bar_close_ms: int  # t_j: close of the labelled bar; ``windows`` is the input at this time
    labelled_at_ms: int  # t_j + k * span: the packet whose window gave the label
    windows: np.ndarray  # (4, N_CHANNELS, W) float32, read-only
    extremum: int  # BOTTOM, NONE or TOP
    direction: int  # DOWN or UP
    p_bottom: float  # prequential scores: the model's probabilities before it trained on this sample
    p_top: float
    p_up: float
    past_top: bool  # bar j is the max of bars j-k .. j (visible in the input)
    past_bottom: bool


class SampleBuffer:
    """Fixed-capacity ring of labelled samples in preallocated arrays; the oldest is overwritten.

    Inputs are stored as float16 (values are clipped to +-INPUT_CLIP: relative error below 1e-3).
    """

    def __init__(self, capacity: int, window_bars: int) -> None:
        if capacity < 1:
            raise ValueError(f"buffer_size must be at least 1, was {capacity}")
        self.capacity = capacity
        self.windows = np.zeros((capacity, N_TIMEFRAMES, N_CHANNELS, window_bars), np.float16)
        self.timeframe = np.zeros(capacity, np.int64)
        self.extremum = np.zeros(capacity, np.int64)
        self.direction = np.zeros(capacity, np.int64)
        self.pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, windows: np.ndarray, timeframe: int, extremum: int, direction: int) -> None:
        i = self.pos
        self.windows[i] = windows
        self.timeframe[i] = timeframe
        self.extremum[i] = extremum
        self.direction[i] = direction
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(
        self, batch_size: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = rng.integers(0, self.size, size=batch_size)
        return (
            torch.from_numpy(self.windows[idx].astype(np.float32)),
            torch.from_numpy(self.timeframe[idx]),
            torch.from_numpy(self.extremum[idx]),
            torch.from_numpy(self.direction[idx]),
        )


@dataclass
class _Scores:
    """The last ``maxlen`` prequential scores of one timeframe."""

    maxlen: int
    rows: deque[tuple[float, float, float, int, int, bool, bool]] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = deque(maxlen=self.maxlen)

    def add(self, s: LabelledSample) -> None:
        self.rows.append((s.p_bottom, s.p_top, s.p_up, s.extremum, s.direction, s.past_top, s.past_bottom))


@dataclass
class _SymbolState:
    last_ts_ms: int
    # Per timeframe: (bar close ms, input) of bars whose label is not known yet, oldest first.
    pending: dict[str, deque[tuple[int, np.ndarray]]]


# --- the trainer ---------------------------------------------------------------------------------


class ExtremaTrainer:
    """Labels extrema from the training stream, trains the CNN on them, and scores it prequentially.

    See the module docstring for the label timing rule. ``order`` maps timeframe -> k (missing
    timeframes take 5). ``max_pending`` bounds the inputs waiting for a label per symbol and
    timeframe (at least ``k + 1``). ``score_window`` scores per timeframe feed the PR-AUC.
    """

    def __init__(
        self,
        window_bars: int = 300,
        order: Mapping[str, int] = DEFAULT_ORDER,
        seed: int = 7,
        learning_rate: float = 1e-3,
        batch_size: int = 64,
        buffer_size: int = 20_000,
        max_pending: int = 64,
        score_window: int = 5_000,
        max_symbols: int = 64,
        max_grad_norm: float = 1.0,
        max_class_weight: float = 10.0,
        direction_weight: float = 1.0,
    ) -> None:
        if window_bars < MIN_WINDOW_BARS:
            raise ValueError(f"window_bars was {window_bars}; the CNN needs at least {MIN_WINDOW_BARS}")
        unknown = sorted(set(order) - set(TIMEFRAMES))
        if unknown:
            raise ValueError(f"{', '.join(unknown)} are not timeframes; use {', '.join(TIMEFRAMES)}")
        self.order: dict[str, int] = {tf: int(order.get(tf, DEFAULT_ORDER[tf])) for tf in TIMEFRAMES}
        for tf, k in self.order.items():
            if k < 1:
                raise ValueError(f"the {tf} order must be at least 1, was {k}")
            if 2 * k + 1 > window_bars:
                raise ValueError(f"the {tf} order {k} needs 2k + 1 = {2 * k + 1} bars, the window has {window_bars}")
        if max_pending < max(self.order.values()) + 1:
            raise ValueError(f"max_pending ({max_pending}) must be at least the largest order + 1")
        for what, n in (("batch_size", batch_size), ("score_window", score_window), ("max_symbols", max_symbols)):
            if n < 1:
                raise ValueError(f"{what} must be at least 1, was {n}")
        for what, x in (("learning_rate", learning_rate), ("max_grad_norm", max_grad_norm)):
            if not x > 0:
                raise ValueError(f"{what} must be positive, was {x}")
        if not max_class_weight >= 1.0:
            raise ValueError(f"max_class_weight must be at least 1, was {max_class_weight}")
        if not direction_weight >= 0.0:
            raise ValueError(f"direction_weight must not be negative, was {direction_weight}")

        self.window_bars = window_bars
        self.seed = seed
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.max_symbols = max_symbols
        self.max_grad_norm = max_grad_norm
        self.max_class_weight = max_class_weight
        self.direction_weight = direction_weight
        self.model: MultiTimeframeCNN = init_model(seed)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate, fused=True)
        self.buffer = SampleBuffer(buffer_size, window_bars)
        self.rng = np.random.default_rng(seed)
        self.class_counts = np.zeros((N_TIMEFRAMES, len(EXTREMA_CLASSES)), np.int64)
        self.labelled: dict[str, int] = dict.fromkeys(TIMEFRAMES, 0)
        self.scores: dict[str, _Scores] = {tf: _Scores(score_window) for tf in TIMEFRAMES}
        self.updates = 0
        self.last_losses: dict[str, float] = {}
        self.events: Counter[str] = Counter()
        self._credit = 0.0  # gradient steps earned but not taken yet: fractions carry to the next call
        self._symbols: OrderedDict[str, _SymbolState] = OrderedDict()
        self._score_from_ms = 0  # bars closing earlier are trained on, not scored (see reset_scores)
        self._input_size = N_TIMEFRAMES * N_CHANNELS * window_bars

    # --- weights ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The CNN's weights (for averaging across replicas)."""
        return self.model.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the CNN's weights (strict names and shapes); the optimiser state is kept."""
        self.model.load_state_dict(state, strict=True)

    def publish_bytes(self) -> bytes:
        """The CNN's weights as safetensors, float32, with the exact names ``MtfCnnRunner.load`` checks."""
        return save_bytes(self.model)

    # --- observing -------------------------------------------------------------------------------

    def _windows(self, packet: TrainingDataPacket) -> np.ndarray | None:
        if packet.layout_version and not packet.layout_version.startswith(f"{LAYOUT_VERSION}/"):
            self.events["rejected_layout"] += 1
            return None
        state = codec.f32_from_bytes(packet.state)
        if state.size < self._input_size:
            self.events["rejected_state_dim"] += 1
            return None
        x = np.array(state[: self._input_size], dtype=np.float32).reshape(N_TIMEFRAMES, N_CHANNELS, self.window_bars)
        finite = np.isfinite(x)
        if not finite.all():  # as the runner serves it: NaN/inf -> 0, then clipped
            self.events["nonfinite_inputs"] += int(x.size - finite.sum())
            x = np.where(finite, x, np.float32(0.0))
        np.clip(x, -INPUT_CLIP, INPUT_CLIP, out=x)
        x.setflags(write=False)
        return x

    def _n_real(self, packet: TrainingDataPacket, tf: str) -> int:
        share = packet.warmup.get(tf, 1.0) if packet.warmup else 1.0
        return round(share * self.window_bars)

    def _symbol(self, symbol: str, ts_ms: int) -> _SymbolState:
        st = self._symbols.get(symbol)
        if st is None:
            st = _SymbolState(ts_ms, {tf: deque(maxlen=self.max_pending) for tf in TIMEFRAMES})
            self._symbols[symbol] = st
            while len(self._symbols) > self.max_symbols:
                self._symbols.popitem(last=False)
                self.events["symbols_evicted"] += 1
        self._symbols.move_to_end(symbol)
        return st

    def observe(self, packet: TrainingDataPacket) -> list[LabelledSample]:
        """Take one packet; returns the samples whose labels became known at it (scored, then buffered).

        A packet not newer than the symbol's previous one, of another layout version, or with too
        short a state is skipped and counted in :attr:`events`.
        """
        t = packet.ts_event_ms
        prev = self._symbols.get(packet.symbol)
        if prev is not None and t <= prev.last_ts_ms:
            self.events["stale_packets"] += 1
            return []
        x = self._windows(packet)
        if x is None:
            return []
        self.events["packets"] += 1
        st = self._symbol(packet.symbol, t)
        st.last_ts_ms = t
        closing = [tf for tf in TIMEFRAMES if t % TIMEFRAME_MS[tf] == 0]
        found: list[tuple[str, int, np.ndarray, int, int]] = []
        for tf in closing:
            k, ti = self.order[tf], TIMEFRAMES.index(tf)
            fifo = st.pending[tf]
            target = t - k * TIMEFRAME_MS[tf]  # close of bar j, whose label bar j+k (closing now) completes
            while fifo and fifo[0][0] < target:  # their labelling packet is gone (a gap): never labelled
                fifo.popleft()
                self.events["unlabelled_gap"] += 1
            if fifo and fifo[0][0] == target:
                bar_ms, inputs = fifo.popleft()
                if self._n_real(packet, tf) < 2 * k + 1:
                    self.events["unlabelled_warmup"] += 1
                else:
                    ext, direction = label_from_returns(x[ti, CLOSE_RET, self.window_bars - 2 * k :], k)
                    found.append((tf, bar_ms, inputs, ext, direction))
            if len(fifo) == fifo.maxlen:
                self.events["pending_overflow"] += 1
            fifo.append((t, x))
        return self._score_and_store(packet.symbol, t, found)

    def _score_and_store(
        self, symbol: str, t: int, found: list[tuple[str, int, np.ndarray, int, int]]
    ) -> list[LabelledSample]:
        if not found:
            return []
        # Prequential: scored by the current model before the samples can be trained on.
        with torch.inference_mode():
            batch = torch.from_numpy(np.stack([inputs for _, _, inputs, _, _ in found]))
            _, _, extrema, direction = self.model(batch)
            p_ext = torch.softmax(extrema, dim=2).numpy()
            p_dir = torch.softmax(direction, dim=2).numpy()
        out = []
        for n, (tf, bar_ms, inputs, ext, dirn) in enumerate(found):
            ti, k = TIMEFRAMES.index(tf), self.order[tf]
            past_top, past_bottom = past_rule(inputs[ti, CLOSE_RET, self.window_bars - k :], k)
            sample = LabelledSample(
                symbol=symbol,
                timeframe=tf,
                bar_close_ms=bar_ms,
                labelled_at_ms=t,
                windows=inputs,
                extremum=ext,
                direction=dirn,
                p_bottom=float(p_ext[n, ti, BOTTOM]),
                p_top=float(p_ext[n, ti, TOP]),
                p_up=float(p_dir[n, ti, UP]),
                past_top=past_top,
                past_bottom=past_bottom,
            )
            if bar_ms >= self._score_from_ms:
                self.scores[tf].add(sample)
            self.buffer.add(inputs, ti, ext, dirn)
            self.class_counts[ti, ext] += 1
            self.labelled[tf] += 1
            out.append(sample)
        return out

    # --- training --------------------------------------------------------------------------------

    def class_weights(self) -> np.ndarray:
        """(4, 3) extrema loss weights: ``total / (3 x count)`` per timeframe, clipped to ``[1/max, max]``."""
        counts = self.class_counts.astype(np.float64)
        total = counts.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = total / (len(EXTREMA_CLASSES) * counts)
        w = np.where(np.isfinite(w), w, self.max_class_weight)  # a class never seen: the bound
        w[total[:, 0] == 0] = 1.0
        return np.clip(w, 1.0 / self.max_class_weight, self.max_class_weight)

    def learn(self, packets: Sequence[TrainingDataPacket], updates_per_packet: float) -> int:
        """Observe ``packets`` (stream order), then take the gradient steps they earned at
        ``updates_per_packet`` each (:meth:`train_owed`); returns the labelled samples found."""
        labelled = sum(len(self.observe(p)) for p in packets)
        self.train_owed(updates_per_packet * len(packets))
        return labelled

    def train_owed(self, steps: float) -> dict[str, float]:
        """The whole gradient steps of ``steps`` plus what earlier calls left over; the fraction
        carries, so 0.2 steps a packet is one step every 5 packets however they are batched."""
        self._credit += steps
        n = int(self._credit)
        self._credit -= n
        return self.train(n)

    def train(self, n_steps: int) -> dict[str, float]:
        """``n_steps`` gradient steps on batches from the buffer; mean losses (empty if the buffer is)."""
        if n_steps < 1 or len(self.buffer) == 0:
            return {}
        weights = torch.from_numpy(self.class_weights().astype(np.float32))
        params = [p for p in self.model.parameters() if p.requires_grad]
        sums = {"extrema_ce": 0.0, "direction_ce": 0.0, "loss": 0.0, "grad_norm": 0.0}
        self.model.train()
        try:
            for _ in range(n_steps):
                x, tf, ext, dirn = self.buffer.sample(self.batch_size, self.rng)
                _, _, extrema, direction = self.model(x)
                rows = torch.arange(x.shape[0])
                extrema, direction = extrema[rows, tf], direction[rows, tf]  # each sample: its own heads only
                w = weights[tf, ext]
                extrema_ce = (w * F.cross_entropy(extrema, ext, reduction="none")).sum() / w.sum()
                direction_ce = F.cross_entropy(direction, dirn)
                loss = extrema_ce + self.direction_weight * direction_ce
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
                self.optimizer.step()
                self.updates += 1
                sums["extrema_ce"] += extrema_ce.item()
                sums["direction_ce"] += direction_ce.item()
                sums["loss"] += loss.item()
                sums["grad_norm"] += grad_norm.item()
        finally:
            self.model.eval()
        self.last_losses = {name: v / n_steps for name, v in sums.items()}
        return dict(self.last_losses)

    # --- reporting -------------------------------------------------------------------------------

    def sizes(self) -> dict[str, int]:
        """What the trainer holds now: symbols, pending inputs, buffered samples, kept scores."""
        return {
            "symbols": len(self._symbols),
            "pending": sum(len(q) for st in self._symbols.values() for q in st.pending.values()),
            "max_pending_per_queue": max(
                (len(q) for st in self._symbols.values() for q in st.pending.values()), default=0
            ),
            "buffer": len(self.buffer),
            "scores": sum(len(s.rows) for s in self.scores.values()),
        }

    def reset_scores(self, from_ms: int = 0) -> None:
        """Forget the kept scores: :meth:`metrics` then describes only the labels from here on, and
        only those of bars closing at ``from_ms`` or later (an offline evaluation scores each test
        block on its own: a bar that closed before the block, labelled inside it, is a neighbour
        of the labels trained on just before, and is trained on but not scored)."""
        self.scores = {tf: _Scores(self.scores[tf].maxlen) for tf in TIMEFRAMES}
        self._score_from_ms = from_ms

    def metrics(self) -> dict[str, float]:
        """CleanRL-style metrics; per-timeframe keys only for timeframes with labels.

        ``extrema/pr_auc_top_{tf}`` (and ``_bottom_``): average precision of the prequential scores
        over the last ``score_window`` labels (left out while no positive is among them);
        ``extrema/baseline_top_{tf}``: the positive rate there (a random classifier's AP);
        ``extrema/baseline_theory_{tf}``: the random-walk rate per class (about 1/(pi k));
        ``extrema/past_rule_top_{tf}``: AP of the past rule (see the module docstring);
        ``extrema/direction_accuracy_{tf}``, ``extrema/up_rate_{tf}``, ``extrema/labelled_{tf}``
        (all labels so far), ``extrema/scored_{tf}`` (labels in the window).
        """
        out: dict[str, float] = {}
        for tf in TIMEFRAMES:
            rows = self.scores[tf].rows
            if not self.labelled[tf]:
                continue
            out[f"extrema/labelled_{tf}"] = float(self.labelled[tf])
            out[f"extrema/scored_{tf}"] = float(len(rows))
            out[f"extrema/baseline_theory_{tf}"] = random_walk_extremum_rate(self.order[tf])
            if not rows:
                continue
            a = np.array(rows, np.float64)
            p_bottom, p_top, p_up, ext, dirn, past_top, past_bottom = a.T
            for name, score, positive, past in (
                ("top", p_top, ext == TOP, past_top),
                ("bottom", p_bottom, ext == BOTTOM, past_bottom),
            ):
                out[f"extrema/baseline_{name}_{tf}"] = float(positive.mean())
                if positive.any():
                    out[f"extrema/pr_auc_{name}_{tf}"] = average_precision(score, positive)
                    out[f"extrema/past_rule_{name}_{tf}"] = average_precision(past, positive)
            out[f"extrema/direction_accuracy_{tf}"] = float(((p_up > 0.5) == (dirn == UP)).mean())
            out[f"extrema/up_rate_{tf}"] = float((dirn == UP).mean())
        for name in ("extrema_ce", "direction_ce"):
            if name in self.last_losses:
                out[f"losses/{name}"] = self.last_losses[name]
        out["charts/extrema_updates"] = float(self.updates)
        out["charts/extrema_buffer"] = float(len(self.buffer))
        return out
