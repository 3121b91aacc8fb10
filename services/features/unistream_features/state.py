"""Layout of the RL state vector (pure).

The state of one symbol after a 1s bar closed is the concatenation, in this order:

====================  ==================================  =====================================
block                 length (defaults)                   content
====================  ==================================  =====================================
``window``            N_CHANNELS x window_bars = 9 x 300  bar-window channels, channel-major:
                      = 2,700                             ``window[c * W + t]`` is channel ``c``
                                                          (see ``window.CHANNELS``) at column
                                                          ``t``, oldest bar first, left-padded
``cnn_hidden``        64                                  CNN hidden layer (tanh, in [-1, 1])
``cnn_predictions``   4                                   p_bottom, p_none, p_top, ret_next
``microstructure``    7 x 3 horizons = 21                 ``microstructure.feature_names()``:
                                                          7 features for 10 s, then 60 s, 300 s
``context``           2                                   window_fill, tick_coverage
====================  ==================================  =====================================

Default dim: 2,700 + 64 + 4 + 21 + 2 = **2,791** float32 values. Every value is finite and of
order one (window channels are clipped to +-10).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unistream_features import microstructure as micro
from unistream_features.cnn import HIDDEN, PREDICTION_NAMES
from unistream_features.window import N_CHANNELS

CONTEXT: tuple[str, ...] = ("window_fill", "tick_coverage")


@dataclass(frozen=True)
class StateLayout:
    """Where each block lives in the state vector: ``blocks`` is ``(name, start, length)``."""

    window_bars: int
    horizons_s: tuple[int, ...]
    blocks: tuple[tuple[str, int, int], ...]

    @property
    def dim(self) -> int:
        _, start, length = self.blocks[-1]
        return start + length

    def slice(self, name: str) -> slice:
        """Slice of block ``name`` in a state vector; KeyError if there is no such block."""
        for block, start, length in self.blocks:
            if block == name:
                return slice(start, start + length)
        raise KeyError(name)

    def describe(self) -> dict[str, object]:
        """JSON-ready description (for /stats and the docs)."""
        return {
            "dim": self.dim,
            "window_bars": self.window_bars,
            "horizons_s": list(self.horizons_s),
            "blocks": [{"name": n, "start": s, "length": ln} for n, s, ln in self.blocks],
        }


def make_layout(window_bars: int, horizons_s: Sequence[int] = micro.HORIZONS_S) -> StateLayout:
    """The layout for a window of ``window_bars`` bars and the given microstructure horizons."""
    sizes = (
        ("window", N_CHANNELS * window_bars),
        ("cnn_hidden", HIDDEN),
        ("cnn_predictions", len(PREDICTION_NAMES)),
        ("microstructure", micro.N_FEATURES * len(horizons_s)),
        ("context", len(CONTEXT)),
    )
    blocks = []
    start = 0
    for name, length in sizes:
        blocks.append((name, start, length))
        start += length
    return StateLayout(window_bars=window_bars, horizons_s=tuple(horizons_s), blocks=tuple(blocks))


def assemble(
    layout: StateLayout,
    window: np.ndarray,
    hidden: np.ndarray,
    predictions: np.ndarray,
    microstructure: np.ndarray,
    window_fill: float,
    tick_coverage: float,
) -> np.ndarray:
    """The state vector (float32, ``layout.dim``) from its blocks; raises ValueError on a wrong size."""
    parts = [
        np.asarray(window, np.float32).reshape(-1),
        np.asarray(hidden, np.float32).reshape(-1),
        np.asarray(predictions, np.float32).reshape(-1),
        np.asarray(microstructure, np.float32).reshape(-1),
        np.array([window_fill, tick_coverage], np.float32),
    ]
    for (name, _, length), part in zip(layout.blocks, parts):
        if part.size != length:
            raise ValueError(f"state block {name} has {part.size} values, the layout needs {length}")
    return np.concatenate(parts)
