"""The multi-timeframe 1D CNN: one conv branch per timeframe, a shared embedding, heads per timeframe.

Input ``(batch, N_TIMEFRAMES, N_CHANNELS, window_bars)`` float32: per symbol, one normalised window
for each of :data:`TIMEFRAMES` (log returns scaled by the window's own past, built upstream), all of
the same length; any ``window_bars >= MIN_WINDOW_BARS`` works. The model itself is not causal in
time: the windows already hold only the past.

Architecture:

- per timeframe (separate weights): Conv1d(5->32, k5) ReLU MaxPool2, Conv1d(32->32, k5) ReLU
  MaxPool2, Conv1d(32->64, k3) ReLU, then global average and global max over time concatenated:
  :data:`BRANCH_FEATURES` (128) values per timeframe;
- embedding: Linear(4 * 128 -> :data:`HIDDEN`) + tanh over all branches, the "hidden layer
  features" of the RL state, bounded in [-1, 1];
- per timeframe (separate weights), from the embedding concatenated with that timeframe's branch
  features: extrema logits (bottom / none / top) and direction logits (down / up).

Weights start from a seeded initialisation (version ``cnn-mtf-init-<seed>``, state ``INITIALISED``:
untrained) and are replaced when a trained checkpoint is announced: safetensors only (a pickle from
the network could run code), checked against the announced sha256, the exact tensor names, shapes
and dtype of this architecture, and finiteness, before a fresh model is swapped in whole.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from unistream_common.timeframes import TIMEFRAMES

MODEL_NAME = "cnn-mtf"
N_TIMEFRAMES = len(TIMEFRAMES)
N_CHANNELS = 5
WINDOW_BARS = 300
# Two max-pools by 2 leave W/4 steps for the last conv (kernel 3); 8 bars keep at least 2 of them.
MIN_WINDOW_BARS = 8
CONV_FILTERS = (32, 32, 64)
BRANCH_FEATURES = 2 * CONV_FILTERS[-1]  # global average + global max
HIDDEN = 160
EXTREMA_CLASSES: tuple[str, ...] = ("bottom", "none", "top")
DIRECTION_CLASSES: tuple[str, ...] = ("down", "up")
PREDICTION_NAMES: tuple[str, ...] = tuple(
    f"{tf}.p_{cls}" for tf in TIMEFRAMES for cls in EXTREMA_CLASSES + DIRECTION_CLASSES
)
# Inputs are clipped to the window builder's range: one broken value cannot dominate a layer.
INPUT_CLIP = 10.0


class ModelRejected(ValueError):
    """Announced weights that were not loaded; the message says why."""


def _branch(in_channels: int = N_CHANNELS) -> nn.Sequential:
    c1, c2, c3 = CONV_FILTERS
    return nn.Sequential(
        nn.Conv1d(in_channels, c1, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2, ceil_mode=True),
        nn.Conv1d(c1, c2, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2, ceil_mode=True),
        nn.Conv1d(c2, c3, kernel_size=3, padding=1),
        nn.ReLU(),
    )


class MultiTimeframeCNN(nn.Module):
    """Conv branch per timeframe -> shared tanh embedding -> extrema and direction heads per timeframe.

    Submodules are keyed by timeframe, so tensor names say what they are (``branches.1h.0.weight``,
    ``extrema_heads.1d.bias``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleDict({tf: _branch() for tf in TIMEFRAMES})
        self.embedding = nn.Sequential(nn.Linear(N_TIMEFRAMES * BRANCH_FEATURES, HIDDEN), nn.Tanh())
        head_in = HIDDEN + BRANCH_FEATURES
        self.extrema_heads = nn.ModuleDict({tf: nn.Linear(head_in, len(EXTREMA_CLASSES)) for tf in TIMEFRAMES})
        self.direction_heads = nn.ModuleDict({tf: nn.Linear(head_in, len(DIRECTION_CLASSES)) for tf in TIMEFRAMES})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: (B, N_TIMEFRAMES, N_CHANNELS, W) -> branch features (B, 4, 128), hidden (B, HIDDEN),
        extrema logits (B, 4, 3), direction logits (B, 4, 2)."""
        if x.dim() != 4 or x.shape[1] != N_TIMEFRAMES or x.shape[2] != N_CHANNELS:
            raise ValueError(f"input has shape {tuple(x.shape)}, this CNN needs (B, {N_TIMEFRAMES}, {N_CHANNELS}, W)")
        pooled = []
        for k, tf in enumerate(TIMEFRAMES):
            z = self.branches[tf](x[:, k])
            pooled.append(torch.cat([z.mean(dim=2), z.amax(dim=2)], dim=1))
        branch = torch.stack(pooled, dim=1)
        hidden = self.embedding(branch.flatten(1))
        extrema, direction = [], []
        for k, tf in enumerate(TIMEFRAMES):
            head_in = torch.cat([hidden, branch[:, k]], dim=1)
            extrema.append(self.extrema_heads[tf](head_in))
            direction.append(self.direction_heads[tf](head_in))
        return branch, hidden, torch.stack(extrema, dim=1), torch.stack(direction, dim=1)


def predictions_from_logits(extrema_logits: torch.Tensor, direction_logits: torch.Tensor) -> torch.Tensor:
    """(B, 4, 3) and (B, 4, 2) logits -> (B, 20) probabilities in the order of :data:`PREDICTION_NAMES`."""
    probs = torch.cat([torch.softmax(extrema_logits, dim=2), torch.softmax(direction_logits, dim=2)], dim=2)
    return probs.flatten(1)


def init_model(seed: int) -> MultiTimeframeCNN:
    """A freshly initialised model (eval mode) whose weights depend only on ``seed``; global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MultiTimeframeCNN()
    return model.eval()


def save_bytes(model: MultiTimeframeCNN) -> bytes:
    """The model's weights as a safetensors file (what the trainer publishes and :meth:`MtfCnnRunner.load` reads)."""
    return save_safetensors({name: t.detach().contiguous() for name, t in model.state_dict().items()})


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _expected_tensors() -> dict[str, tuple[int, ...]]:
    with torch.random.fork_rng(devices=[]):  # importing this module must not move the caller's RNG
        model = MultiTimeframeCNN()
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


# Name -> shape of every tensor of this architecture: what an announced file must hold, exactly.
EXPECTED_TENSORS: dict[str, tuple[int, ...]] = _expected_tensors()


@dataclass(frozen=True)
class MtfCnnStatus:
    """What the dashboard shows of the running CNN (the fields of ``packets.ModelStatus``)."""

    version: str
    state: str  # INITIALISED (seeded, untrained) | LOADED
    parameters: int
    updated_ms: int
    announced_ts_ms: int = 0  # ts_ms of the announcement the weights came from; 0 for the seeded init


@dataclass(frozen=True)
class _Active:
    """The serving model and its status, replaced together by one assignment so they never disagree."""

    model: MultiTimeframeCNN
    status: MtfCnnStatus


class MtfCnnRunner:
    """The model in eval mode: batched inference across symbols, and the swap to announced weights."""

    def __init__(self, seed: int, now_ms: int, window_bars: int = WINDOW_BARS) -> None:
        if window_bars < MIN_WINDOW_BARS:
            raise ValueError(f"window_bars was {window_bars}; the CNN needs at least {MIN_WINDOW_BARS}")
        self.window_bars = window_bars
        model = init_model(seed)
        self._active = _Active(
            model,
            MtfCnnStatus(
                version=f"cnn-mtf-init-{seed}",
                state="INITIALISED",
                parameters=parameter_count(model),
                updated_ms=now_ms,
            ),
        )
        self.nonfinite_inputs = 0  # input values that were NaN/inf and went in as 0
        self.nonfinite_outputs = 0  # output values that were NaN/inf and came out as 0

    @property
    def status(self) -> MtfCnnStatus:
        return self._active.status

    @property
    def model(self) -> MultiTimeframeCNN:
        return self._active.model

    def infer(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Branch features (n, 4 * 128), hidden (n, HIDDEN) and predictions (n, 20) for ``n`` symbols.

        ``windows``: (n, N_TIMEFRAMES, N_CHANNELS, window_bars). One forward pass for all symbols and
        timeframes; every output is float32 and finite.
        """
        return self.infer_with_version(windows)[1:]

    def infer_with_version(self, windows: np.ndarray) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`infer` plus the version of the weights that produced the outputs.

        Reads the serving model once, so the version is right even if :meth:`load` runs concurrently.
        """
        active = self._active
        expected = (N_TIMEFRAMES, N_CHANNELS, self.window_bars)
        if windows.ndim != 4 or windows.shape[1:] != expected:
            raise ValueError(f"windows have shape {windows.shape}, the CNN needs (n, {', '.join(map(str, expected))})")
        n = windows.shape[0]
        if n == 0:
            empty = np.zeros((0,), dtype=np.float32)
            return (
                active.status.version,
                empty.reshape(0, N_TIMEFRAMES * BRANCH_FEATURES),
                empty.reshape(0, HIDDEN),
                empty.reshape(0, len(PREDICTION_NAMES)),
            )
        x = np.asarray(windows, dtype=np.float32)
        finite = np.isfinite(x)
        if not finite.all():
            self.nonfinite_inputs += int(x.size - finite.sum())
            x = np.where(finite, x, np.float32(0.0))
        x = np.clip(x, -INPUT_CLIP, INPUT_CLIP)
        with torch.inference_mode():
            branch, hidden, extrema, direction = active.model(torch.from_numpy(np.ascontiguousarray(x)))
            preds = predictions_from_logits(extrema, direction)
        outputs = tuple(self._finite(t.numpy()) for t in (branch.flatten(1), hidden, preds))
        return (active.status.version, *outputs)

    def _finite(self, values: np.ndarray) -> np.ndarray:
        # Finite weights can still overflow on some input; a NaN must never reach a packet.
        values = values.astype(np.float32, copy=False)
        finite = np.isfinite(values)
        if finite.all():
            return values
        self.nonfinite_outputs += int(values.size - finite.sum())
        return np.where(finite, values, np.float32(0.0))

    def _probe(self, model: MultiTimeframeCNN) -> None:
        """Reject finite weights that still overflow on inputs at the edges of the allowed range."""
        x = torch.zeros(3, N_TIMEFRAMES, N_CHANNELS, self.window_bars)
        x[1], x[2] = INPUT_CLIP, -INPUT_CLIP
        with torch.inference_mode():
            outputs = model(x)
        for name, t in zip(("branch features", "hidden", "extrema logits", "direction logits"), outputs, strict=True):
            if not torch.isfinite(t).all():
                raise ModelRejected(f"{name} overflow to NaN or infinity on inputs of 0 and +-{INPUT_CLIP}")

    def load(self, data: bytes, sha256: str, version: str, announced_ts_ms: int, now_ms: int) -> None:
        """Swap in safetensors ``data`` after checking it; raises :class:`ModelRejected` and keeps the old model.

        The old model serves until the new one is built and checked; the swap is one assignment.
        """
        actual = sha256_hex(data)
        if actual != sha256.lower():
            raise ModelRejected(f"sha256 of the file was {actual}, the announcement said {sha256}")
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise ModelRejected(f"not a safetensors file: {exc}") from None
        missing = sorted(set(EXPECTED_TENSORS) - set(tensors))
        extra = sorted(set(tensors) - set(EXPECTED_TENSORS))
        if missing or extra:
            raise ModelRejected(f"tensor names do not match this CNN: missing {missing}, unexpected {extra}")
        for name, tensor in tensors.items():
            if tuple(tensor.shape) != EXPECTED_TENSORS[name]:
                raise ModelRejected(f"{name} has shape {tuple(tensor.shape)}, this CNN needs {EXPECTED_TENSORS[name]}")
            # float32 only: a silent cast from float16/bfloat16 would serve other numbers than the trainer measured.
            if tensor.dtype != torch.float32:
                raise ModelRejected(f"{name} has dtype {tensor.dtype}, this CNN needs torch.float32")
            if not torch.isfinite(tensor).all():
                raise ModelRejected(f"{name} holds NaN or infinite values")
        # A fresh module draws its default initialisation from the RNG; fork so loading leaves it alone.
        with torch.random.fork_rng(devices=[]):
            model = MultiTimeframeCNN()
        model.load_state_dict(tensors, strict=True)
        model.eval()
        self._probe(model)
        status = MtfCnnStatus(
            version=version,
            state="LOADED",
            parameters=parameter_count(model),
            updated_ms=now_ms,
            announced_ts_ms=announced_ts_ms,
        )
        self._active = _Active(model, status)
