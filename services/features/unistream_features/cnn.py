"""The 1D CNN over the bar window: hidden features for the RL state, and two prediction heads.

Architecture (input ``(batch, N_CHANNELS, window_bars)``; any window length works):

- three conv blocks, 32 filters each (kernels 5, 5, 3; ReLU; max-pool by 2 after the first two),
- global average and global max pooling over time, concatenated (64 values),
- a hidden layer of :data:`HIDDEN` features (tanh, so the state block is bounded in [-1, 1]),
- heads: extrema class logits (bottom / none / top, softmax) and the next bar's return (in units
  of the window's sigma, like the ``ret`` channel).

Weights start from a seeded initialisation (version ``cnn-init-<seed>``, state ``INITIALISED``)
and are replaced when a trained checkpoint is announced on the model registry: safetensors only
(a pickle from the network could run code), checked against the announced sha256 and the exact
tensor names and shapes of this architecture before anything is swapped in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from unistream_features.window import N_CHANNELS

HIDDEN = 64
FILTERS = 32
PREDICTION_NAMES: tuple[str, ...] = ("p_bottom", "p_none", "p_top", "ret_next")
MODEL_NAME = "cnn"


class ModelRejected(ValueError):
    """Announced weights that were not loaded; the message says why."""


class ExtremaCNN(nn.Module):
    """Conv blocks -> pooling -> hidden layer -> extrema-class and next-return heads."""

    def __init__(self, in_channels: int = N_CHANNELS, filters: int = FILTERS, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(in_channels, filters, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2, ceil_mode=True),
            nn.Conv1d(filters, filters, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2, ceil_mode=True),
            nn.Conv1d(filters, filters, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.hidden = nn.Sequential(nn.Linear(2 * filters, hidden), nn.Tanh())
        self.extrema_head = nn.Linear(hidden, 3)
        self.return_head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: (batch, channels, time) -> (hidden (batch, HIDDEN), extrema logits (batch, 3), return (batch,))."""
        z = self.conv(x)
        pooled = torch.cat([z.mean(dim=2), z.amax(dim=2)], dim=1)
        h = self.hidden(pooled)
        return h, self.extrema_head(h), self.return_head(h).squeeze(1)


def init_model(seed: int) -> ExtremaCNN:
    """A freshly initialised CNN whose weights depend only on ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ExtremaCNN()
    return model.eval()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class CnnStatus:
    """What the dashboard shows of the running CNN (see ``packets.ModelStatus``)."""

    version: str
    state: str  # INITIALISED | LOADED
    parameters: int
    updated_ms: int
    announced_ts_ms: int = 0  # ts_ms of the announcement the weights came from; 0 for the seeded init


class CnnRunner:
    """The CNN in inference mode, and the swap to announced weights."""

    def __init__(self, seed: int, now_ms: int) -> None:
        self.model = init_model(seed)
        self.status = CnnStatus(
            version=f"cnn-init-{seed}", state="INITIALISED", parameters=parameter_count(self.model), updated_ms=now_ms
        )

    def infer(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hidden features (HIDDEN,) and predictions (len(PREDICTION_NAMES),) for one window, float32."""
        x = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32)).unsqueeze(0)
        with torch.inference_mode():
            h, logits, ret = self.model(x)
            probs = torch.softmax(logits, dim=1)
        preds = torch.cat([probs[0], ret]).numpy()
        return h[0].numpy().astype(np.float32), preds.astype(np.float32)

    def load(self, data: bytes, sha256: str, version: str, announced_ts_ms: int, now_ms: int) -> None:
        """Swap in safetensors ``data`` after checking its sha256 and its tensors; raises ModelRejected."""
        actual = sha256_hex(data)
        if actual != sha256:
            raise ModelRejected(f"sha256 of the file was {actual}, the announcement said {sha256}")
        try:
            tensors = load_safetensors(data)
        except (SafetensorError, ValueError) as exc:
            raise ModelRejected(f"not a safetensors file: {exc}") from None
        expected = self.model.state_dict()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise ModelRejected(f"tensor names do not match this CNN: missing {missing}, unexpected {extra}")
        for name, tensor in tensors.items():
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise ModelRejected(
                    f"{name} has shape {tuple(tensor.shape)}, this CNN needs {tuple(expected[name].shape)}"
                )
            if not torch.isfinite(tensor).all():
                raise ModelRejected(f"{name} holds NaN or infinite values")
        model = ExtremaCNN()
        model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
        self.model = model.eval()
        self.status = CnnStatus(
            version=version,
            state="LOADED",
            parameters=parameter_count(model),
            updated_ms=now_ms,
            announced_ts_ms=announced_ts_ms,
        )
