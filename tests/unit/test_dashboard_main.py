"""`unistream dashboard`: settings checked, then the process becomes the Streamlit server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from unistream_dashboard import __main__ as dashboard_main
from unistream_tools import cli


class ExecCalled(Exception):
    """Raised by the fake os.execv so the test sees what would have replaced the process."""

    def __init__(self, path: str, args: list[str]) -> None:
        super().__init__(path)
        self.path, self.argv = path, args


@pytest.fixture
def execv(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_execv(path: str, args: list[str]) -> None:
        raise ExecCalled(path, list(args))

    monkeypatch.setattr(dashboard_main.os, "execv", fake_execv)


def _flags(args: list[str]) -> dict[str, str]:
    start = args.index("run") + 2
    return dict(zip(args[start::2], args[start + 1 :: 2], strict=False))


def test_unistream_dashboard_execs_streamlit_with_defaults(execv: None) -> None:
    with pytest.raises(ExecCalled) as called:
        cli.main(["dashboard"])
    path, args = called.value.path, called.value.argv
    assert path == sys.executable
    assert args[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(args[4]) == Path(dashboard_main.__file__).with_name("app.py") and Path(args[4]).exists()
    assert _flags(args) == {
        "--server.port": "8501",
        "--server.address": "127.0.0.1",
        "--server.headless": "true",
        "--browser.gatherUsageStats": "false",
        "--server.fileWatcherType": "none",
        "--client.toolbarMode": "viewer",
        "--runner.postScriptGC": "false",  # a full gc.collect() per fragment run: most of a tab's CPU
        "--logger.level": "info",
    }


def test_port_and_address_come_from_the_environment(execv: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNISTREAM_HTTP_PORT", "9123")
    monkeypatch.setenv("UNISTREAM_HTTP_HOST", "0.0.0.0")
    with pytest.raises(ExecCalled) as called:
        dashboard_main.main([])
    flags = _flags(called.value.argv)
    assert (flags["--server.port"], flags["--server.address"]) == ("9123", "0.0.0.0")


def test_port_zero_means_the_dashboard_default(execv: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNISTREAM_HTTP_PORT", "0")
    with pytest.raises(ExecCalled) as called:
        dashboard_main.main([])
    assert _flags(called.value.argv)["--server.port"] == "8501"


def test_extra_streamlit_flags_come_last_so_they_win(execv: None) -> None:
    with pytest.raises(ExecCalled) as called:
        dashboard_main.main(["--theme.base", "dark"])
    assert called.value.argv[-2:] == ["--theme.base", "dark"]


def test_bad_configuration_exits_2_naming_the_variable_without_exec(
    execv: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UNISTREAM_SYMBOLS", "eth-usd")
    with pytest.raises(SystemExit) as exited:
        dashboard_main.main([])
    assert exited.value.code == 2
    assert "UNISTREAM_SYMBOLS" in capsys.readouterr().err


def test_help_prints_usage_without_exec(execv: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert dashboard_main.main(["--help"]) == 0
    assert "usage: unistream dashboard" in capsys.readouterr().out
