"""DQN checkpoints: safetensors bytes with metadata, sha256, atomic files under ``<model_dir>/dqn``.

A checkpoint holds the online Q-network's tensors (safetensors: no code runs on load, unlike a
pickle) and string metadata that says what it fits: ``obs_dim``, ``state_dim``, ``hidden_sizes``,
plus ``updates`` and ``transitions`` so a resumed learner continues its counters and its
exploration schedule. Files are named ``<version>.safetensors`` with versions that sort by time
(``dqn-<ms since epoch, 13 digits>-u<updates>-<producer>``), so the newest is the last name.

Encoding and decoding are pure; the file helpers at the end are the only I/O.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

FORMAT = "unistream-dqn/1"
# What the network's outputs mean (metadata "values"): a network of one meaning decides wrongly under the other.
VALUES = {
    "q": "Q-values with the trading costs learned in them",
    "market": "market values W(s, a), the known costs subtracted at decision time",
}
MODEL_NAME = "dqn"
SUFFIX = ".safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or used; the message says why."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checkpoint_version(now_ms: int, updates: int, producer: str = "") -> str:
    """Version that sorts by time and names its producer: ``dqn-1700000000000-u000001234-trainer-a``.

    Replicas share the model directory, so the producer is part of the name: two replicas that
    checkpoint in the same millisecond with equal step counts must not overwrite each other.
    """
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", producer)[:64]
    return f"{MODEL_NAME}-{now_ms:013d}-u{updates:09d}" + (f"-{tag}" if tag else "")


def encode_checkpoint(
    state_dict: dict[str, torch.Tensor],
    *,
    version: str,
    producer: str,
    obs_dim: int,
    state_dim: int,
    hidden_sizes: Sequence[int],
    updates: int,
    transitions: int,
    values: str = "q",
) -> bytes:
    """safetensors bytes of ``state_dict`` with the metadata that says what it fits."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    metadata = {
        "format": FORMAT,
        "version": version,
        "producer": producer,
        "obs_dim": str(obs_dim),
        "state_dim": str(state_dim),
        "hidden_sizes": ",".join(str(h) for h in hidden_sizes),
        "updates": str(updates),
        "transitions": str(transitions),
        "actions": "flat,long,short",
        "observation": "state + one-hot(position held: flat,long,short)",
        "values": values,
    }
    return save_safetensors(tensors, metadata=metadata)


@dataclass(frozen=True)
class Checkpoint:
    """A decoded checkpoint."""

    version: str
    sha256: str
    tensors: dict[str, torch.Tensor]
    obs_dim: int
    state_dim: int
    hidden_sizes: tuple[int, ...]
    updates: int
    transitions: int
    values: str = "q"

    def misfit(self, obs_dim: int, hidden_sizes: Sequence[int], values: str = "q", normalized: bool = False) -> str:
        """Why this checkpoint does not fit a network of this shape and meaning ("" when it does).

        ``normalized``: the network standardises its inputs (``input_stats.*`` tensors)."""
        if self.values != values:
            return (
                f"its outputs are {VALUES.get(self.values, repr(self.values))}, the settings ask for {VALUES[values]}"
            )
        if self.obs_dim != obs_dim:
            return f"it was trained on observations of {self.obs_dim} values, the stream now gives {obs_dim}"
        if self.hidden_sizes != tuple(hidden_sizes):
            return f"its hidden sizes are {self.hidden_sizes}, the settings ask for {tuple(hidden_sizes)}"
        has_stats = any(k.startswith("input_stats.") for k in self.tensors)
        if normalized and not has_stats:
            return (
                "it was trained on raw inputs (no input statistics: saved before input normalisation), the "
                "settings standardise them (UNISTREAM_DQN_NORMALIZE=false to resume it)"
            )
        if has_stats and not normalized:
            return "it was trained on standardised inputs, the settings ask for raw ones (UNISTREAM_DQN_NORMALIZE)"
        return ""


def decode_checkpoint(data: bytes, expected_sha256: str | None = None) -> Checkpoint:
    """Checkpoint from safetensors bytes; raises CheckpointError on a sha256 mismatch or bad content."""
    sha = sha256_hex(data)
    if expected_sha256 is not None and sha != expected_sha256:
        raise CheckpointError(f"sha256 of the checkpoint was {sha}, expected {expected_sha256}")
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"not a safetensors file: {exc}") from None
    meta = read_metadata(data)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"format was {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        return Checkpoint(
            version=meta["version"],
            sha256=sha,
            tensors=tensors,
            obs_dim=int(meta["obs_dim"]),
            state_dim=int(meta["state_dim"]),
            hidden_sizes=tuple(int(h) for h in meta["hidden_sizes"].split(",") if h),
            updates=int(meta["updates"]),
            transitions=int(meta["transitions"]),
            values=meta.get("values", "q"),  # written before known costs: Q-values
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata is incomplete or malformed: {exc!r}") from None


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (header: u64 little-endian length, then JSON)."""
    if len(data) < 8:
        raise CheckpointError("file shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise CheckpointError("safetensors header length exceeds the file")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as exc:
        raise CheckpointError(f"safetensors header is not JSON: {exc}") from None
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


# --- files ------------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first (by name, which sorts by time)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.startswith(MODEL_NAME + "-") and p.suffix == SUFFIX)


def prune_checkpoints(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; returns the deleted paths."""
    doomed = list_checkpoints(directory)[:-keep] if keep > 0 else []
    for p in doomed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return doomed


def load_newest(directory: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint in ``directory`` that decodes, and why newer files were passed over."""
    problems = []
    for path in reversed(list_checkpoints(directory)):
        try:
            return decode_checkpoint(path.read_bytes()), problems
        except (CheckpointError, OSError) as exc:
            problems.append(f"{path.name}: {exc}")
    return None, problems
