"""The dashboard app's structure, run by Streamlit's AppTest (no browser, no Redis): four pages
under st.navigation, Overview first; the Market and Training pages delegate to their modules
and say so plainly when those are missing; the sidebar's pause toggle reaches every page.

The pages' contents against a real Redis are in tests/integration/test_dashboard_pages.py."""

from __future__ import annotations

import socket
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from unistream_dashboard import app
from unistream_dashboard.settings import DashboardSettings

APP = Path(app.__file__)


@pytest.fixture(autouse=True)
def redis_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Redis URL nobody listens on, and no heartbeat thread: the port is bound by this test and
    never listened on, so a connection is refused and nothing else can take the port meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{held.getsockname()[1]}/0"
        monkeypatch.setenv("UNISTREAM_REDIS_URL", url)
        monkeypatch.setenv("UNISTREAM_HEARTBEAT_S", "0")
        st.cache_data.clear()
        yield url


def _page(page: str) -> None:
    from unistream_dashboard import app

    app.main(start=page)


def _run(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30) if page is None else AppTest.from_function(
        _page, args=(page,), default_timeout=30
    )  # fmt: skip
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _fake_page(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """A stand-in for unistream_dashboard.<name> whose render shows the settings it was given."""
    module = types.ModuleType(f"unistream_dashboard.{name}")

    def render(settings: DashboardSettings) -> None:
        st.markdown(f"{name} page for {','.join(settings.symbols)}, run_every {settings.run_every}")

    module.render = render  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, f"unistream_dashboard.{name}", module)


def test_four_pages_in_order_with_their_renderers() -> None:
    assert [(p.key, p.title) for p in app.PAGES] == [
        ("overview", "Overview"),
        ("market", "Market"),
        ("training", "Training"),
        ("streams", "Streams"),
    ]
    assert list(app.RENDERERS) == [p.key for p in app.PAGES]


def test_the_root_url_shows_the_overview_with_a_banner_per_panel_while_redis_is_down() -> None:
    at = _run()
    assert [t.value for t in at.title] == ["Overview"]
    assert [h.value for h in at.subheader] == ["Training Data Stream", "Services"]
    banners = [e.value for e in at.error]
    assert len(banners) == 2
    assert all(b.startswith("Redis unreachable at redis://127.0.0.1:") and "Retrying every 1 s." in b for b in banners)


def test_the_streams_page_has_three_panels_each_with_its_banner() -> None:
    at = _run("streams")
    assert [h.value for h in at.subheader] == ["Stream statistics", "Dead letters", "Data quality"]
    assert len(at.error) == 3


@pytest.mark.parametrize("name", ["market", "training"])
def test_market_and_training_pages_say_plainly_when_their_module_is_missing(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setitem(sys.modules, f"unistream_dashboard.{name}", None)  # import raises ImportError
    at = _run(name)
    [info] = at.info
    assert info.value.startswith(f"The {name.title()} page is not available")
    assert [t.value for t in at.title] == [name.title()]


@pytest.mark.parametrize("name", ["market", "training"])
def test_market_and_training_pages_render_their_module_with_the_settings(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    _fake_page(monkeypatch, name)
    monkeypatch.setenv("UNISTREAM_SYMBOLS", "SOLUSDT")
    at = _run(name)
    assert [m.value for m in at.markdown] == [f"{name} page for SOLUSDT, run_every 1.0"]


def test_pausing_stops_the_refresh_on_every_page(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_page(monkeypatch, "market")
    at = _run("market")
    assert not at.button, "no refresh button while live"
    at.toggle(key="paused").set_value(True).run()
    assert [m.value for m in at.markdown] == ["market page for ETHUSDT,BTCUSDT, run_every None"]
    assert at.button(key="refresh-now").label == "Refresh now"
    assert "paused" in at.sidebar.caption[0].value

    overview = _run()
    overview.toggle(key="paused").set_value(True).run()
    assert "paused" in overview.caption[0].value
    assert all(e.value.endswith("Paused: resume to retry.") for e in overview.error)
    overview.toggle(key="paused").set_value(False).run()
    assert all(e.value.endswith("Retrying every 1 s.") for e in overview.error)


def test_the_dashboard_can_start_paused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNISTREAM_PAUSED", "true")
    at = _run()
    assert at.toggle(key="paused").value is True
    assert "paused" in at.caption[0].value


def test_bad_configuration_is_explained_on_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNISTREAM_SYMBOLS", "eth-usd")
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert [e.value for e in at.error] and "UNISTREAM_SYMBOLS" in at.error[0].value


def test_settings_thresholds_and_pause() -> None:
    settings = DashboardSettings()
    assert (settings.live_after_s, settings.stale_after_s, settings.refresh_s) == (5.0, 60.0, 1.0)
    assert settings.run_every == 1.0
    assert settings.model_copy(update={"paused": True}).run_every is None
    with pytest.raises(ValueError, match="stale_after_s"):
        DashboardSettings(stale_after_s=0)
