"""Process helpers for the end-to-end tests: free blocks of ports, and the process tree under a pid (/proc)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from unistream_common.redis_server import port_is_free


def pick_port_offset(ports: Iterable[int]) -> int:
    """An offset that makes every port in ``ports`` free (services listen on port + offset)."""
    ports = tuple(ports)
    for _ in range(200):
        offset = random.randrange(20_000, 50_000)
        if all(port_is_free(p + offset) for p in ports):
            return offset
    raise RuntimeError("no free block of ports")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.add(child)
            stack.append(child)
    return out


def cmdline(pid: int) -> str:
    """The command line of ``pid`` ("" once it is gone)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
