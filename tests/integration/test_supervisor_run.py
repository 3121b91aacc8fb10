"""`unistream run` as a user starts it, on a tiny compose file whose services are small Python programs.

Observed from outside: its output, its state file (<run dir>/run.json) and /proc. A process
counts as gone when its pid no longer names the same process (start time) or is a zombie.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import yaml

from unistream_tools import supervisor
from unistream_tools.redis_server import RedisServer, free_port, port_is_free

pytestmark = pytest.mark.integration

# Each program proves it can use the Redis it was given, then idles until stopped.
WORKER = """
import json, os, time, redis
env = {k: v for k, v in os.environ.items() if k.startswith("UNISTREAM_")}
print("env " + json.dumps(env, sort_keys=True), flush=True)
redis.Redis.from_url(env["UNISTREAM_REDIS_URL"]).incr("starts:" + env["UNISTREAM_CONSUMER_NAME"])
print("ready", flush=True)
time.sleep(600)
"""
# Leaves a grandchild in its process group: stopping it must take the grandchild too.
PARENT = """
import subprocess, time
child = subprocess.Popen(["sleep", "600"])
print(f"grandchild {child.pid}", flush=True)
time.sleep(600)
"""
# Serves HTTP only after a second: the "running" line must wait for its healthcheck.
WEB = """
import http.server, os, time
time.sleep(1)
port = int(os.environ["UNISTREAM_HTTP_PORT"])
http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""
# Ignores SIGTERM: only the SIGKILL after --stop-timeout ends it.
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""


def write_compose(path: Path, base_port: int, web_port: int | None = None, slow_port: int | None = None) -> Path:
    healthy = {"redis": {"condition": "service_healthy"}}
    web_port = web_port or free_port()
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{web_port}/', timeout=3)"
    doc = {
        "services": {
            "web": {
                "command": ["python", "-c", WEB],
                "environment": {"UNISTREAM_HTTP_PORT": str(web_port)},
                "healthcheck": {"test": ["CMD", "python", "-c", probe]},
                "depends_on": healthy,
            },
            "redis": {"image": "redis:7.4", "healthcheck": {"test": ["CMD", "redis-cli", "ping"]}},
            "worker": {
                "command": ["python", "-c", WORKER],
                "environment": {
                    "UNISTREAM_SYMBOLS": "${UNISTREAM_SYMBOLS:-ETHUSDT}",
                    "UNISTREAM_HTTP_HOST": "0.0.0.0",
                    "UNISTREAM_HTTP_PORT": str(base_port),
                    "UNISTREAM_MODEL_DIR": "/models",
                    "UNISTREAM_REDIS_URL": "redis://redis:6379/0",
                },
                "depends_on": healthy,
            },
            "parent": {"command": ["python", "-c", PARENT], "depends_on": healthy},
            # SIGTERM cannot end it: a supervisor that dies must leave it SIGKILL (as the dashboard's)
            "stubborn": {
                "command": ["python", "-c", STUBBORN],
                "depends_on": healthy,
                "x-unistream-orphan-signal": "SIGKILL",
            },
        }
    }
    if slow_port is not None:
        doc["services"]["slow"] = {
            "command": ["python", "-c", SLOW],
            "environment": {"UNISTREAM_HTTP_PORT": str(slow_port)},
            "depends_on": healthy,
        }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid``, or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def wait_until(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Run:
    """A `unistream run` subprocess and everything it printed so far."""

    proc: subprocess.Popen[str]
    run_dir: Path
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)
    watched: dict[int, str] = field(default_factory=dict)  # pid -> start time, to prove they end

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = 20.0, nth: int = 1) -> str:
        """The ``nth`` line so far or to come that satisfies ``predicate``."""
        seen = 0
        for line in self.lines:
            seen += predicate(line)
            if seen == nth:
                return line
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            seen += predicate(line)
            if seen == nth:
                return line
        raise AssertionError("expected line never came; output so far:\n" + "\n".join(self.lines))

    def state(self) -> dict:
        return json.loads((self.run_dir / "run.json").read_text())

    def pids(self) -> dict[str, int]:
        return {p["name"]: p["pid"] for p in self.state()["processes"]}

    def watch(self, pid: int) -> None:
        started = start_time(pid)
        assert started is not None, f"pid {pid} is not running"
        self.watched[pid] = started

    def alive(self) -> list[int]:
        return [pid for pid, started in self.watched.items() if start_time(pid) == started]


@pytest.fixture
def start_run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    compose = tmp_path / "compose.yml"

    def launch(extra: tuple[str, ...], env: dict[str, str] | None) -> subprocess.Popen[str]:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
        child_env.update(env or {})
        return subprocess.Popen(
            [
                sys.executable, "-m", "unistream_tools.cli", "run", "--compose", str(compose),
                "--run-dir", str(tmp_path / "run"), "--redis-port", str(free_port()), "--stop-timeout", "1.5",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**child_env, "PYTHONUNBUFFERED": "1"},
            cwd=tmp_path,
        )  # fmt: skip

    def start(*extra: str, env: dict[str, str] | None = None, slow: bool = False) -> Run:
        # the first run of a test writes the compose file; later ones run the same (same ports)
        if compose.exists():
            proc = launch(extra, env)
        else:
            # A free port is an ephemeral one: another worker's connection may take it before the
            # run checks it ("port(s) in use"); then new ports, at most three tries.
            for _ in range(3):
                write_compose(compose, free_port(), slow_port=free_port() if slow else None)
                proc = launch(extra, env)
                try:
                    proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    break
                output = proc.stdout.read() if proc.stdout else ""
                if "port(s) in use" not in output:
                    raise AssertionError(f"unistream run exited {proc.returncode} at start:\n{output}")
        run = Run(proc=proc, run_dir=tmp_path / "run")
        runs.append(run)
        return run

    yield start
    for run in runs:  # a failed test must not leave processes behind either
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        for pid in run.alive():
            os.kill(pid, signal.SIGKILL)


def test_run_restarts_a_killed_child_and_a_sigterm_stops_everything(start_run: Callable[..., Run]) -> None:
    run = start_run("--scale", "worker=2", "--port-offset", "5", env={"UNISTREAM_SYMBOLS": "SOLUSDT"})
    healthy = run.wait_line(lambda line: line.startswith("[supervisor] web-1 is healthy"))
    running = run.wait_line(lambda line: line.startswith("unistream is running:"))
    assert run.lines.index(healthy) < run.lines.index(running), "announced before the healthcheck passed"
    for name in ("worker-1", "worker-2", "stubborn-1"):
        run.wait_line(lambda line, name=name: line == f"[{name}] ready")
    grandchild = int(run.wait_line(lambda line: line.startswith("[parent-1] grandchild ")).split()[-1])
    state = run.state()
    pids = run.pids()
    for pid in [*pids.values(), grandchild, state["redis_pid"]]:
        run.watch(pid)
    client = redis.Redis.from_url(state["redis_url"])

    # compose's environment, with the local overrides and nothing else
    env_line = run.wait_line(lambda line: line.startswith("[worker-2] env "))
    env = json.loads(env_line.split(" ", 2)[2])
    compose = yaml.safe_load((run.run_dir.parent / "compose.yml").read_text())
    compose_port = int(compose["services"]["worker"]["environment"]["UNISTREAM_HTTP_PORT"])
    assert env == {
        "UNISTREAM_SYMBOLS": "SOLUSDT",
        "UNISTREAM_HTTP_HOST": "127.0.0.1",
        "UNISTREAM_HTTP_PORT": str(compose_port + 5 + 100),  # second replica: 100 ports up
        "UNISTREAM_MODEL_DIR": str(run.run_dir / "models"),
        "UNISTREAM_REDIS_URL": state["redis_url"],
        "UNISTREAM_CONSUMER_NAME": "worker-2",
    }

    # a crash: the slot is restarted under the same consumer name, and counted
    os.kill(pids["worker-1"], signal.SIGKILL)
    run.wait_line(lambda line: line.startswith("[supervisor] worker-1 was killed by SIGKILL after "))
    run.wait_line(lambda line: line == "[worker-1] ready", nth=2)
    restarted = next(p for p in run.state()["processes"] if p["name"] == "worker-1")
    assert restarted["restarts"] == 1 and restarted["pid"] != pids["worker-1"]
    run.watch(restarted["pid"])
    assert client.get("starts:worker-1") == b"2" and client.get("starts:worker-2") == b"1"
    client.close()

    # SIGTERM: everything stops (the stubborn one by SIGKILL), Redis too, exit 0
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(20) == 0
    run.wait_line(lambda line: line == "[supervisor] redis-server stopped")
    assert "[supervisor] stubborn-1 did not stop in time: SIGKILL" in run.lines
    assert "[supervisor] restarts: worker-1=1" in run.lines
    assert run.alive() == [], "orphans left behind"
    assert not (run.run_dir / "run.json").exists()
    assert (run.run_dir / "models").is_dir()
    log = (run.run_dir / "logs" / "worker-1.log").read_text()
    assert log.count("ready\n") == 2 and "--- restart 1 ---" in log
    redis_files = {p.name for p in (run.run_dir / "redis").iterdir()}
    assert redis_files & {"appendonlydir", "appendonly.aof"}, "Redis ran with appendonly"


def test_a_sigkilled_supervisor_takes_its_children_and_redis_with_it(start_run: Callable[..., Run]) -> None:
    # parent-1's grandchild is left out: PDEATHSIG reaches direct children only. stubborn-1
    # ignores SIGTERM; its compose entry names SIGKILL as its orphan signal.
    run = start_run("--scale", "parent=0", "--scale", "web=0")
    run.wait_line(lambda line: line.startswith("unistream is running:"))
    run.wait_line(lambda line: line == "[worker-1] ready")
    run.wait_line(lambda line: line == "[stubborn-1] ready")
    state = run.state()
    for pid in [*run.pids().values(), state["redis_pid"]]:
        run.watch(pid)
    assert len(run.watched) == 3
    run.proc.kill()
    run.proc.wait(10)
    wait_until(lambda: not run.alive(), 10, "children and Redis to die with the supervisor")


def test_run_uses_the_given_redis_and_leaves_it_running(
    start_run: Callable[..., Run], redis_server: RedisServer
) -> None:
    run = start_run(
        "--scale", "parent=0", "--scale", "stubborn=0", "--scale", "web=0",
        env={"UNISTREAM_REDIS_URL": redis_server.url},
    )  # fmt: skip
    run.wait_line(lambda line: line.startswith("unistream is running: 1 processes"))
    run.wait_line(lambda line: line == "[worker-1] ready")
    assert run.state()["redis_pid"] is None
    assert not (run.run_dir / "redis").exists()
    run.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert run.proc.wait(20) == 0
    client = redis.Redis.from_url(redis_server.url)
    assert client.get("starts:worker-1") == b"1"
    assert client.ping()
    client.close()


def test_a_bad_plan_stops_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compose = write_compose(tmp_path / "compose.yml", free_port())
    args = ["--compose", str(compose), "--run-dir", str(tmp_path / "run")]
    assert supervisor.main([*args, "--scale", "nope=2"]) == 2
    assert "--scale names unknown service(s) nope" in capsys.readouterr().err
    assert supervisor.main([*args, "--redis-port", "70000"]) == 2
    assert supervisor.main(["--compose", str(tmp_path / "missing.yml")]) == 2
    assert "cannot read compose file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "nothing was started"


def test_a_probe_port_in_use_is_reported_before_redis_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        compose = write_compose(tmp_path / "compose.yml", port)
        assert supervisor.main(["--compose", str(compose), "--run-dir", str(tmp_path / "run")]) == 1
    assert f"port(s) in use: worker-1 ({port})" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "no Redis was started"


# --------------------------------------------------------------------------- the run after


def time_wait_on(port: int) -> int:
    """Sockets in TIME_WAIT on local port ``port`` (/proc/net/tcp state 06)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        count += state == "06" and int(local.rsplit(":", 1)[1], 16) == port
    return count


def leave_time_wait(port: int) -> None:
    """A server on ``port`` that closes a connection first, as an HTTP/1.0 server does after a probe."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = server.accept()
            conn.close()  # the server's side closes first: it is the one left in TIME_WAIT
            client.recv(1)


def test_a_port_left_in_time_wait_is_free_for_a_server_but_not_one_that_listens() -> None:
    port = free_port()
    leave_time_wait(port)
    assert time_wait_on(port) >= 1
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the old check did: "in use" for a minute
    assert port_is_free(port), "uvicorn, Streamlit and Redis bind with SO_REUSEADDR: they would start"
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen()
        assert not port_is_free(port), "a server listening on any address holds it"


# Holds its port, and on SIGTERM takes two seconds to let go (a service finishing its last batch).
SLOW = """
import os, signal, socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(os.environ["UNISTREAM_HTTP_PORT"])))
server.listen()
def stop(signum, frame):
    time.sleep(2)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_ctrl_c_then_run_again_comes_up_at_once_on_the_same_ports(start_run: Callable[..., Run]) -> None:
    first = start_run("--scale", "parent=0", "--scale", "stubborn=0")
    first.wait_line(lambda line: line.startswith("unistream is running:"))
    web = next(p["http_port"] for p in first.state()["processes"] if p["name"] == "web-1")
    first.proc.send_signal(signal.SIGINT)
    assert first.proc.wait(20) == 0
    # The probes' connections to the stopped server linger in TIME_WAIT where the server closed
    # first (as uvicorn does on "Connection: close"); whether this run's few probes did is a race,
    # so one such connection is made here.
    leave_time_wait(web)
    assert time_wait_on(web) >= 1
    again = start_run("--scale", "parent=0", "--scale", "stubborn=0")
    again.wait_line(lambda line: line.startswith("unistream is running:"), timeout=30)
    assert not any("in use" in line for line in again.lines)


def test_after_a_killed_run_the_next_waits_for_its_leftovers_then_starts(start_run: Callable[..., Run]) -> None:
    first = start_run("--scale", "parent=0", "--scale", "stubborn=0", "--scale", "web=0", slow=True)
    first.wait_line(lambda line: line == "[slow-1] ready")
    first.wait_line(lambda line: line.startswith("unistream is running:"))
    leftover = first.pids()["slow-1"]
    first.watch(leftover)
    first.proc.kill()  # SIGKILL: no clean stop; its children get SIGTERM from the kernel and take their time
    first.proc.wait(10)
    again = start_run("--scale", "parent=0", "--scale", "stubborn=0", "--scale", "web=0", slow=True)
    waiting = again.wait_line(lambda line: "of the previous run to exit" in line)
    assert "slow-1" in waiting and f"pid {leftover}" in waiting
    again.wait_line(lambda line: line.startswith("[supervisor] the previous run's processes are gone"))
    again.wait_line(lambda line: line == "[slow-1] ready", timeout=30)
    again.wait_line(lambda line: line.startswith("unistream is running:"))
    assert first.alive() == [], "the leftover exited by itself"
    assert not any("in use" in line for line in again.lines)


def test_a_second_run_in_the_same_run_dir_is_refused_while_the_first_runs(start_run: Callable[..., Run]) -> None:
    first = start_run("--scale", "parent=0", "--scale", "stubborn=0", "--scale", "web=0")
    first.wait_line(lambda line: line.startswith("unistream is running:"))
    second = start_run("--scale", "parent=0", "--scale", "stubborn=0", "--scale", "web=0")
    assert second.proc.wait(20) == 1
    second.wait_line(lambda line: f"another unistream run (pid {first.proc.pid}) uses" in line)
