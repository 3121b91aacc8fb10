"""The one codec: packets to stream-entry fields and back (msgpack via msgspec, strict).

An entry has three fields: ``type`` (the packet's wire name), ``v`` (schema version) and
``data`` (the msgpack body). Keeping type and version outside the body lets a consumer route or
refuse an entry without decoding it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np

from unistream_common.packets import PACKET_TYPES, SCHEMA_VERSION, Packet

F_TYPE = b"type"
F_VERSION = b"v"
F_DATA = b"data"

_BY_TYPE: dict[bytes, type] = {cls.TYPE.encode(): cls for cls in PACKET_TYPES}
_DECODERS = {name: msgspec.msgpack.Decoder(cls) for name, cls in _BY_TYPE.items()}
_ENCODER = msgspec.msgpack.Encoder()
_VERSION = str(SCHEMA_VERSION).encode()
_JSON = msgspec.json.Encoder()


class DecodeError(ValueError):
    """An entry could not be turned into a packet; ``str(err)`` says why."""


def encode(packet: Packet) -> dict[bytes, bytes]:
    """Stream-entry fields for ``packet``."""
    return {F_TYPE: packet.TYPE.encode(), F_VERSION: _VERSION, F_DATA: _ENCODER.encode(packet)}


def _field(fields: Mapping[Any, Any], name: bytes) -> bytes | None:
    value = fields.get(name)
    if value is None:
        value = fields.get(name.decode())
    if isinstance(value, str):
        value = value.encode()
    return value


def decode(fields: Mapping[Any, Any] | None) -> Packet:
    """Packet held by stream-entry ``fields``; raises :class:`DecodeError` with the reason."""
    if not fields:
        raise DecodeError("entry has no fields (deleted or trimmed)")
    ptype = _field(fields, F_TYPE)
    if ptype is None:
        raise DecodeError("entry has no 'type' field")
    decoder = _DECODERS.get(ptype)
    if decoder is None:
        raise DecodeError(f"unknown packet type {ptype.decode(errors='replace')!r}")
    version = _field(fields, F_VERSION)
    if version != _VERSION:
        shown = version.decode(errors="replace") if version is not None else "missing"
        raise DecodeError(f"schema version {shown} is not supported (this build reads {SCHEMA_VERSION})")
    data = _field(fields, F_DATA)
    if data is None:
        raise DecodeError("entry has no 'data' field")
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"{ptype.decode()} rejected: {exc}") from None


def to_builtins(packet: Packet) -> dict[str, Any]:
    """Plain dict of a packet: float32 byte fields become lists of floats (each the float32's
    exact value; msgspec alone would give base64 text)."""
    out = msgspec.to_builtins(packet, builtin_types=(bytes, bytearray))
    out = {"type": packet.TYPE, **out}
    for key, value in list(out.items()):
        if isinstance(value, (bytes, bytearray)):
            out[key] = f32_from_bytes(value).tolist()
    return out


def to_json(obj: Any) -> bytes:
    """Compact JSON of builtins (used by the CLI and /stats)."""
    return _JSON.encode(obj)


def f32_to_bytes(values: Any) -> bytes:
    """Raw little-endian float32 bytes of an array-like of numbers."""
    return np.ascontiguousarray(values, dtype="<f4").tobytes()


def f32_from_bytes(data: bytes) -> np.ndarray:
    """Read-only float32 array over raw little-endian bytes (no copy)."""
    if len(data) % 4:
        raise DecodeError(f"{len(data)} bytes is not a whole number of float32 values")
    return np.frombuffer(data, dtype="<f4")
