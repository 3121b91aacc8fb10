"""deploy/check.py (`make compose-check`) where it cannot run the stack: one line, and the right status.

The check itself needs a Docker engine and minutes; it is run by hand (docs/operations.md). Here: what a
machine without an engine gets, and how versions are read.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "deploy" / "check.py"

sys.path.insert(0, str(REPO / "deploy"))
from check import CheckFailed, Report, Stack, version_tuple


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    """deploy/check.py against a Docker endpoint where no engine answers."""
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    return subprocess.run(
        [sys.executable, str(CHECK), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.mark.parametrize(
    ("text", "version"),
    [("26.1.5+dfsg1", (26, 1)), ("v2.26.1", (2, 26)), ("2.26.1-4", (2, 26)), ("24.0.7\n", (24, 0))],
)
def test_versions_are_read_from_what_docker_prints(text: str, version: tuple[int, int]) -> None:
    assert version_tuple(text) == version


def test_without_an_engine_the_check_is_skipped_in_one_line_and_passes() -> None:
    result = run_check()
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 0
    assert len(lines) == 1 and lines[0].startswith("compose-check: skipped: no "), lines


def test_without_an_engine_make_up_is_stopped_with_the_requirements() -> None:
    result = run_check("--engine-only")
    assert result.returncode == 1
    assert "needs Docker Engine >= 25 with Compose >= 2.20" in result.stderr


def test_the_summary_fails_when_any_check_failed() -> None:
    report = Report()
    with report.check("passes") as out:
        out["detail"] = "measured"
    assert report.ok
    with report.check("fails"):
        raise CheckFailed("3 consumers, expected 2")
    assert not report.ok
    with report.check("breaks"):
        {}["missing"]  # any exception is the row's failure, and the next checks still run
    table = report.table()
    assert "| breaks | FAILED | KeyError: 'missing' |" in table
    assert "| passes | ok | measured |" in table and "| fails | FAILED | 3 consumers, expected 2 |" in table


def test_the_tools_are_copied_into_the_dashboard_container_and_run_there(monkeypatch: pytest.MonkeyPatch) -> None:
    # no image carries the tools: status and tail must come from the checkout each time
    calls: list[tuple[str, ...]] = []

    def compose(self: Stack, *args: str, **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, stdout='{"streams": []}')

    monkeypatch.setattr(Stack, "compose", compose)
    assert Stack(env_file=Path("env"), env={}, port=0).status() == {"streams": []}
    assert calls == [
        ("cp", f"{REPO / 'tools' / 'unistream_tools'}/.", "dashboard:/tmp/unistream_tools"),
        ("exec", "-T", "-e", "PYTHONPATH=/tmp", "dashboard", "python", "-m", "unistream_tools.cli", "status", "--json"),
    ]
