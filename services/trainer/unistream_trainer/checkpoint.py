"""Model files: the metadata of safetensors bytes, their sha256, atomic writes, what outputs mean.

Merged models (:mod:`unistream_trainer.replicas`) are safetensors files (no code runs on load,
unlike a pickle) with string metadata; this module reads that metadata without loading the
tensors and writes files so that readers never see a part of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

# What the network's outputs mean (metadata "values"): a network of one meaning decides wrongly under the other.
VALUES = {
    "q": "Q-values with the trading costs learned in them",
    "market": "market values W(s, a), the known costs subtracted at decision time",
}
MODEL_NAME = "dqn"


class CheckpointError(ValueError):
    """Model file bytes whose metadata cannot be read; the message says why."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
