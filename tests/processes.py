"""Process helpers for the end-to-end tests: free blocks of ports, the process tree under a pid
(/proc), and ``unistream run`` started the way a user starts it (:func:`unistream_run`)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from unistream_tools.redis_server import free_port, port_is_free

REPO = Path(__file__).resolve().parents[1]


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


@dataclass
class RunningSystem:
    proc: subprocess.Popen[bytes]
    log: Path
    dashboard: str
    cwd: Path

    @property
    def redis_url(self) -> str:
        """The login `unistream run` records for the tools (the read-only dashboard user) in .run/run.json."""
        return str(json.loads((self.cwd / ".run" / "run.json").read_text())["tools_redis_url"])

    def wait_log(self, text: str, timeout_s: float) -> None:
        """Wait until ``text`` is in the run's output; fail with its tail if it exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"unistream run exited {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.3)
        raise AssertionError(f"{text!r} not in the log after {timeout_s}s:\n{self.log.read_text()[-4000:]}")

    def ctrl_c_stops_everything(self, at_least: int) -> None:
        """Ctrl-C: the supervisor exits 0 and every process under it (``at_least`` of them) goes away."""
        tree = descendants(self.proc.pid)
        assert len(tree) >= at_least, [cmdline(p) for p in tree]
        os.killpg(self.proc.pid, signal.SIGINT)
        assert self.proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(p) for p in tree):
            time.sleep(0.2)
        left = [cmdline(p) for p in tree if alive(p)]
        assert not left, f"orphans left after Ctrl-C: {left}"


@contextlib.contextmanager
def unistream_run(
    command: list[str],
    tmp_path: Path,
    trainers: int,
    ports: Iterable[int],
    merge_every_s: float = 3,
    extra_env: dict[str, str] | None = None,
    extra_args: Iterable[str] = (),
) -> Iterator[RunningSystem]:
    """``unistream run --scale trainer=N`` (``command`` is the ``unistream`` executable) in
    ``tmp_path`` with its own Redis on a free port, synthetic data and merges every
    ``merge_every_s`` (default 30 s); ``extra_env`` and ``extra_args`` (e.g. a cluster) on top. Afterwards, a test that failed midway included: Ctrl-C,
    then SIGKILL of whatever is left of the tree started here."""
    redis_port = free_port()
    offset = pick_port_offset(ports)
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    # synthetic explicitly: with internet access, auto would pick live Binance and the labels would differ
    env.update({"PYTHONUNBUFFERED": "1", "UNISTREAM_LOG_LEVEL": "INFO", "UNISTREAM_SOURCE": "synthetic"})
    env["UNISTREAM_MERGE_EVERY_S"] = f"{merge_every_s:g}"
    env.update(extra_env or {})
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                *command, "run",
                "--compose", str(REPO / "deploy" / "docker-compose.yml"),
                "--scale", f"trainer={trainers}",
                "--port-offset", str(offset),
                "--redis-port", str(redis_port),
                *extra_args,
            ],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    running = RunningSystem(proc, log_path, f"http://127.0.0.1:{8501 + offset}", tmp_path)
    try:
        yield running
    finally:
        tree = descendants(proc.pid)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in tree:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
