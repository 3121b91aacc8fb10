"""Would Redis Cluster refuse it? Every command a running system sends, recorded with MONITOR on a
single Redis, checked against the cluster's rule: the keys of one command, of one MULTI/EXEC and
of one script call must all hash to one slot.

Keys are found as Redis finds them: from COMMAND's key specs for commands with fixed key
positions, and with COMMAND GETKEYS for those whose keys move (XREADGROUP, EVAL...).
"""

from __future__ import annotations

import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field

import redis
from redis.crc import key_slot

# A MONITOR line: "<time> [<db> <client>] "ARG" "ARG" ..."; client is an address, "lua" or "unix:...".
_LINE_RE = re.compile(rb"^\d+\.\d+ \[\d+ (\S+)\] (.*)$")
_ARG_RE = re.compile(rb'"((?:[^"\\]|\\.)*)"')
# Arguments longer than this are values (packets, model weights), never keys or counts: kept as a
# placeholder rather than unescaped byte by byte (megabytes of it would starve the machine).
LARGE = 4_096
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b", b'"': b'"', b"\\": b"\\"}


def unescape(text: bytes) -> bytes:
    """A MONITOR argument as the client sent it (Redis prints it with sdscatrepr escapes)."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i : i + 1] == b"\\" and i + 1 < len(text):
            nxt = text[i + 1 : i + 2]
            if nxt == b"x" and i + 3 < len(text):
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
            out += _ESCAPES.get(nxt, nxt)
            i += 2
            continue
        out += text[i : i + 1]
        i += 1
    return bytes(out)


@dataclass
class Monitor:
    """A MONITOR connection of its own to a Redis at 127.0.0.1:``port``, recording in a thread."""

    port: int
    password: str | None = None
    lines: list[tuple[str, list[bytes]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.create_connection(("127.0.0.1", self.port))
        if self.password:
            self._sock.sendall(b"AUTH " + self.password.encode() + b"\r\n")
        self._sock.sendall(b"MONITOR\r\n")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self._sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            *complete, buf = buf.split(b"\r\n")
            for raw in complete:
                m = _LINE_RE.match(raw.lstrip(b"+"))
                if m:
                    args = [unescape(a) if len(a) <= LARGE else b"<large value>" for a in _ARG_RE.findall(m.group(2))]
                    self.lines.append((m.group(1).decode(), args))

    def stop(self) -> None:
        self._sock.close()
        self._thread.join(5)


@dataclass(frozen=True)
class Violation:
    """Commands (one, or a MULTI's, or a script's) whose keys span several slots."""

    what: str  # the command name, or "MULTI: XADD, XACK, ..."
    keys: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.what} over {', '.join(self.keys)}"


class KeyFinder:
    """Keys of a command, as the Redis at ``client`` would find them."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.specs: dict[str, tuple[int, int, int, bool]] = {}
        for name, info in client.command().items():
            flags = {f.decode() if isinstance(f, bytes) else f for f in info.get("flags", [])}
            self.specs[name.lower()] = (
                int(info["first_key_pos"]),
                int(info["last_key_pos"]),
                int(info["step_count"]),
                "movablekeys" in flags,
            )

    def keys(self, args: list[bytes]) -> list[bytes]:
        name = args[0].decode(errors="replace").lower()
        spec = self.specs.get(name)
        if spec is None or len(args) < 2:
            return []
        first, last, step, movable = spec
        if movable or (first == 0 and name in ("xgroup", "xinfo", "object", "memory")):
            try:
                got = self.client.execute_command("COMMAND GETKEYS", *args)
                return [k if isinstance(k, bytes) else str(k).encode() for k in got]
            except redis.ResponseError:
                return []
        if first <= 0 or step <= 0:
            return []
        last = len(args) + last if last < 0 else last
        return [args[i] for i in range(first, min(last, len(args) - 1) + 1, step)]


def cross_slot(lines: list[tuple[str, list[bytes]]], finder: KeyFinder) -> Counter[Violation]:
    """Every command, MULTI/EXEC block and script call in ``lines`` whose keys span slots (with how
    often it was seen). Commands a script ran (client ``lua``) are judged by the script call's keys."""
    found: Counter[Violation] = Counter()
    blocks: dict[str, list[tuple[str, list[bytes]]]] = {}
    for client, args in lines:
        if client == "lua" or not args:
            continue
        name = args[0].decode(errors="replace").upper()
        if name == "MULTI":
            blocks[client] = []
            continue
        if name in ("EXEC", "DISCARD"):
            block = blocks.pop(client, [])
            if name == "EXEC":
                keys = [k for _, ks in block for k in ks]
                if len({key_slot(k) for k in keys}) > 1:
                    what = "MULTI: " + ", ".join(dict.fromkeys(n for n, _ in block))
                    found[Violation(what, tuple(sorted({_shape(k) for k in keys})))] += 1
            continue
        keys = finder.keys(args)
        if client in blocks:
            blocks[client].append((name, keys))
        elif len({key_slot(k) for k in keys}) > 1:
            found[Violation(name, tuple(sorted({_shape(k) for k in keys})))] += 1
    return found


def _shape(key: bytes) -> str:
    """A key with its variable parts kept (symbols are few; ids and tokens are not in key names)."""
    return key.decode(errors="replace")
