"""Small waiting and probing helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition") -> None:
    """Await ``check()`` every 50 ms until it is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout:.0f} s")


def probe(port: int, path: str = "/readyz") -> tuple[int | None, dict[str, object]]:
    """(status, JSON body) of a service probe on 127.0.0.1, or (None, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())
    except OSError:
        return None, {}


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Wait until the service process answers /readyz with 200; fail early if it exits."""
    deadline = time.monotonic() + timeout
    code, body = probe(port)
    while code != 200:
        assert proc.poll() is None, f"exited with {proc.returncode}: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"not ready within {timeout:.0f} s: {body}"
        time.sleep(0.2)
        code, body = probe(port)
