"""`unistream run` with a Redis that wants a password, with compose profiles and restart policies.

Small compose files whose services are tiny Python programs; observed from outside, through
the supervisor's output and its state file, as a user would.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REDIS_PASSWORD

from unistream_common.settings import EXIT_BAD_CONFIG
from unistream_tools import supervisor
from unistream_tools.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration

PASSWORD = REDIS_PASSWORD  # the conftest password_redis fixture's
# Uses the Redis URL it was given (a PING with the password in it), then idles.
PINGER = """
import os, time, redis
redis.Redis.from_url(os.environ["UNISTREAM_REDIS_URL"]).ping()
print("pinged", flush=True)
time.sleep(600)
"""
# Exits 1 on its first start and stays up on the second (a crash that a restart cures).
CRASH_ONCE = """
import os, pathlib, sys, time
marker = pathlib.Path(os.environ["MARKER"])
if not marker.exists():
    marker.write_text("1")
    sys.exit(1)
print("second start", flush=True)
time.sleep(600)
"""


def python(code: str) -> list[str]:
    return ["python", "-c", code]


def write(path: Path, services: dict) -> Path:
    path.write_text(yaml.safe_dump({"services": services, "x-unistream-default-profiles": ["base"]}, sort_keys=False))
    return path


class Run:
    """A `unistream run` process; a thread collects its output lines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _take(self, timeout_s: float) -> bool:
        """Move one line from the reader to :attr:`lines`; False at the end of the output or on timeout."""
        try:
            line = self._queue.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return False
        if line is None:
            self._ended = True
            return False
        self.lines.append(line)
        return True

    def wait_for(self, *texts: str, timeout_s: float = 30.0) -> None:
        """Until every text has appeared in some output line."""
        deadline = time.monotonic() + timeout_s
        while not all(any(text in line for line in self.lines) for text in texts):
            if self._ended or not self._take(deadline - time.monotonic()):
                raise AssertionError(f"waited in vain for {texts!r}; output:\n" + self.text())

    def stop(self) -> str:
        """SIGINT (Ctrl-C); it must exit 0. Returns the whole output."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=30) == 0, self.text()
        while not self._ended and self._take(10):
            pass
        return self.text()

    def text(self) -> str:
        return "\n".join(self.lines)


STARTED: list[Run] = []


@pytest.fixture(autouse=True)
def _kill_leftovers() -> Iterator[None]:
    """A failed test must not leave a supervisor behind (its children die with it: PDEATHSIG)."""
    yield
    while STARTED:
        proc = STARTED.pop().proc
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run(tmp_path: Path, compose: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("UNISTREAM_", "COMPOSE_"))}
    child_env.update(env or {})
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "unistream_tools.cli", "run", "--compose", str(compose),
            "--run-dir", str(tmp_path / "run"), "--redis-port", str(free_port()), "--stop-timeout", "2", *args,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**child_env, "PYTHONUNBUFFERED": "1"},
        cwd=tmp_path,
    )  # fmt: skip
    STARTED.append(Run(proc))
    return STARTED[-1]


def test_run_hands_the_password_url_to_the_services_but_never_prints_or_stores_it(
    tmp_path: Path, password_redis: RedisServer
) -> None:
    compose = write(tmp_path / "compose.yml", {"pinger": {"command": python(PINGER), "environment": {}}})
    url = f"redis://:{PASSWORD}@127.0.0.1:{password_redis.port}/0"
    system = run(tmp_path, compose, env={"UNISTREAM_REDIS_URL": url})
    system.wait_for("[pinger-1] pinged", "unistream is running")
    assert f"[supervisor] using Redis at redis://:***@127.0.0.1:{password_redis.port}/0" in system.text()
    state = (tmp_path / "run" / "run.json").read_text()
    assert json.loads(state)["redis_url"] == f"redis://:***@127.0.0.1:{password_redis.port}/0"
    assert PASSWORD not in state
    out = system.stop()
    assert PASSWORD not in out
    assert PASSWORD not in (tmp_path / "run" / "logs" / "pinger-1.log").read_text()


def test_run_refuses_a_wrong_password_before_starting_anything(
    tmp_path: Path, password_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    compose = write(tmp_path / "compose.yml", {"pinger": {"command": python(PINGER)}})
    monkeypatch.setenv("UNISTREAM_REDIS_URL", f"redis://:not-{PASSWORD}@127.0.0.1:{password_redis.port}/0")
    code = supervisor.main(["--compose", str(compose), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_CONFIG
    assert "refused the user or password in the URL" in err and "fix UNISTREAM_REDIS_URL" in err
    assert PASSWORD not in err
    assert not (tmp_path / "run").exists(), "nothing was started"


def test_restart_policies_profiles_and_bad_configuration(tmp_path: Path) -> None:
    compose = write(
        tmp_path / "compose.yml",
        {
            # bad configuration (a service's exit status 2): never restarted, whatever the policy
            "misconfigured": {"command": python("import sys; print('bad setting'); sys.exit(2)"), "restart": "always"},
            # a finished job under on-failure stays finished
            "job": {"command": python("print('done')"), "restart": "on-failure", "profiles": ["base"]},
            # a crash is restarted
            "flaky": {"command": python(CRASH_ONCE), "environment": ["MARKER"], "restart": "unless-stopped"},
            # another profile: runs only with --profile extra
            "extra": {"command": python(PINGER), "profiles": ["extra"]},
        },
    )
    system = run(tmp_path, compose, "--profile", "base", env={"MARKER": str(tmp_path / "marker")})
    system.wait_for(
        "[supervisor] misconfigured-1: not restarted (exit status 2 means bad configuration",
        "[supervisor] job-1: not restarted (it finished; restart: on-failure)",
        "[flaky-1] second start",
    )
    out = system.stop()
    assert "restarting flaky-1" in out
    assert "restarting misconfigured-1" not in out and "restarting job-1" not in out
    assert out.count("[misconfigured-1] bad setting") == 1
    assert "extra-1" not in out, "a service of an inactive profile does not run"
    assert "[supervisor] restarts: flaky-1=1" in out


def test_a_profile_flag_adds_the_services_of_that_profile(tmp_path: Path) -> None:
    compose = write(
        tmp_path / "compose.yml",
        {
            "extra": {
                "command": python("import time; print('extra up', flush=True); time.sleep(600)"),
                "profiles": ["x"],
            }
        },
    )
    system = run(tmp_path, compose, "--profile", "x")
    system.wait_for("[extra-1] extra up")
    system.stop()
