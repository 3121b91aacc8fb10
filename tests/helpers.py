"""Small waiting and probing helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

from unistream_common.redisio import command_client
from unistream_common.service import ServiceContext, Worker
from unistream_common.settings import CommonSettings
from unistream_common.stats import Stats


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


@contextlib.asynccontextmanager
async def running_worker(name: str, settings: CommonSettings, worker: Worker) -> AsyncIterator[ServiceContext]:
    """A service's worker running in this event loop (no HTTP server), cancelled on the way out."""
    ctx = ServiceContext(name=name, settings=settings, stats=Stats(name), redis=command_client(settings.redis_url))
    task = asyncio.create_task(worker(ctx))
    try:
        yield ctx
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await ctx.redis.aclose()


@contextlib.contextmanager
def service_process(service: str, env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``unistream <service>`` as a process, ready on ``port``; killed on the way out if still running.

    The caller stops it (SIGTERM) to check a clean exit; its output goes to ``log``.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unistream_tools.cli", service], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            wait_ready(port, proc, log)  # importing torch is slow on a busy machine
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def stop_cleanly(proc: subprocess.Popen[bytes], log: Path, within_s: float = 10.0) -> None:
    """SIGTERM ``proc``; it must exit 0 within ``within_s`` seconds, without a traceback."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=within_s + 5)
    assert time.monotonic() - started < within_s
    assert rc == 0, log.read_text()[-2000:]
    assert "Traceback" not in log.read_text()
