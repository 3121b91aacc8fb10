"""Every page of the dashboard, in a real browser, on the whole running system.

``unistream run`` (synthetic market, one trainer) on free ports; headless Chromium opens the
dashboard and walks its four pages through the sidebar navigation the way a user does:

- Overview: every symbol's Training Data Stream card shows counts that grow, LIVE, SYNTHETIC, a
  price; every service's health card has a heartbeat;
- Market: a candlestick chart per symbol; switching a chart's timeframe from 1s to 1m redraws it
  (caption, candle count and the x-axis span change, the span by about 60x);
- Training: the replica table and the DQN's learning charts fill in from the trainer's metrics;
- Streams: stream and group statistics, dead letters and data quality.

Nothing may be logged as an error in the browser's console, no script may throw, and no page
may show a Python exception or a red error banner (one list for the whole walk, checked after
the shutdown so that a failure still leaves every screenshot and no process behind). A full-page screenshot of each page goes to
``$TEST_ARTIFACTS_DIR`` (default ``<repo>/test-artifacts/``, git-ignored); with
``UNISTREAM_UPDATE_DOCS=1`` they are also copied to ``docs/dashboard-<page>.png`` for the README and docs/dashboard.md.
Ctrl-C (SIGINT) at the end stops every process that was started.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browser import (
    APP_SELECTOR,
    VIEWPORT,
    chromium,
    needs_chromium,
    number,
    page_text,
    unistream_command,
    wait_for_text,
)
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from processes import RunningSystem, unistream_run

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Error, Page

REPO = Path(__file__).resolve().parents[2]
SERVICE_PORTS = (8001, 8002, 8003, 8004, 8501)  # one trainer: 8004
SYMBOLS = ("ETHUSDT", "BTCUSDT")
SERVICES = ("ingest", "aggregator", "features", "trainer", "dashboard")
PAGES = ("overview", "market", "training", "streams")
# Read at import: tests/conftest.py removes every UNISTREAM_* variable before each test runs.
UPDATE_DOCS = os.environ.get("UNISTREAM_UPDATE_DOCS") == "1"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or REPO / "test-artifacts")
MAIN = '[data-testid="stMain"]'  # the page itself, without the sidebar
TICKS = r"Tick cache: [\d,]+ / [\d,]+ \(total ([\d,]+)\)"
BARS = r"1s bars: [\d,]+ / [\d,]+ \(total ([\d,]+)\)"

pytestmark = [
    pytest.mark.heavy,
    pytest.mark.e2e,
    needs_chromium,
]


@pytest.fixture
def system(tmp_path: Path) -> Iterator[RunningSystem]:
    """``unistream run`` (one trainer) in a scratch directory, its own Redis on a free port; a
    model announcement within the test (merges every 3 s)."""
    with unistream_run(unistream_command(), tmp_path, trainers=1, ports=SERVICE_PORTS) as running:
        yield running


def open_page(page: Page, name: str) -> None:
    """Click ``name`` in the sidebar navigation and wait until the URL and the page's title follow."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=name.capitalize()).first.click()
    path = "(overview)?" if name == "overview" else name  # the default page lives at the root
    page.wait_for_url(re.compile(rf"/{path}/?$"), timeout=10_000)
    wait_for_text(page, MAIN, rf"(?m)^{name.capitalize()}$", 20)


def wait_plot(page: Page, selector: str, timeout_s: float = 30.0) -> None:
    page.wait_for_selector(f"{selector} .js-plotly-plot .main-svg", timeout=timeout_s * 1000)


def page_errors(page: Page) -> list[str]:
    """Python exceptions and red error banners on the page (a healthy system shows neither)."""
    shown = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
    return [shown.nth(i).inner_text()[:500] for i in range(shown.count())]


def screenshot(page: Page, name: str) -> Path:
    """The whole page, not just the viewport: Streamlit scrolls inside its main container, so the
    viewport is stretched to that container's height for the shot."""
    height = page.evaluate(
        """() => {
            const main = document.querySelector('[data-testid="stMain"]')
                || document.querySelector('[data-testid="stAppViewContainer"]');
            return main ? main.scrollHeight : document.body.scrollHeight;
        }"""
    )
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], int(height) + 40)})
    page.wait_for_timeout(500)  # plotly resizes its charts to the new viewport
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)  # type: ignore[arg-type]
    if UPDATE_DOCS:
        shutil.copyfile(path, REPO / "docs" / f"dashboard-{name}.png")
    return path


def plot_state(page: Page, selector: str) -> dict[str, object]:
    """What the plotly chart under ``selector`` draws: candles (closed and forming), the x-axis
    span (ms) and the chart's ``uirevision`` (which names the symbol and timeframe)."""
    state = page.evaluate(
        """sel => {
            const gd = document.querySelector(sel + ' .js-plotly-plot');
            if (!gd || !gd._fullLayout || !gd.data) return null;
            const candles = gd.data.filter(t => t.type === 'candlestick')
                .reduce((n, t) => n + (t.x || []).length, 0);
            const range = gd._fullLayout.xaxis.range.map(v => typeof v === 'number' ? v : Date.parse(v));
            return {candles: candles, span_ms: range[1] - range[0], uirevision: String(gd.layout.uirevision)};
        }""",
        selector,
    )
    assert state is not None, f"no plotly chart under {selector}"
    return state  # type: ignore[no-any-return]


TD_LOSS_POINTS_JS = """sel => Array.from(document.querySelectorAll(sel + ' .js-plotly-plot')).some(gd =>
    gd._fullLayout && /td_loss/.test(JSON.stringify(gd.layout.title || ''))
    && (gd.data || []).some(t => (t.x || []).length >= 2))"""


def check_overview(page: Page) -> None:
    first: dict[str, tuple[float, float]] = {}
    for sym in SYMBOLS:
        card = f".st-key-tds-{sym}"
        ticks = wait_for_text(page, card, TICKS, 60, accept=lambda m: number(m[1]) > 0)
        bars = wait_for_text(page, card, BARS, 30, accept=lambda m: number(m[1]) > 0)
        wait_for_text(page, card, r"Stream: LIVE", 20)
        wait_for_text(page, card, r"Source: SYNTHETIC", 5)
        wait_for_text(page, card, r"Price: [\d,]+\.\d+", 5)
        first[sym] = (number(ticks[1]), number(bars[1]))
    for service in SERVICES:
        # every service sends heartbeats; the trainer may still be importing torch (NOT READY)
        wait_for_text(page, f".st-key-svc-{service}", rf"{service} · Status: (READY|NOT READY|DEGRADED)", 60)
        wait_for_text(page, f".st-key-svc-{service}", rf"{service} · Last beat: [\d.]+ (ms|s) ago", 10)
    wait_for_text(page, ".st-key-services", r"Services: 5 of 5 up", 10)
    # live, without a reload: the totals grow
    for sym in SYMBOLS:
        card = f".st-key-tds-{sym}"
        t0, b0 = first[sym]
        wait_for_text(page, card, TICKS, 20, accept=lambda m, t0=t0: number(m[1]) > t0)
        wait_for_text(page, card, BARS, 20, accept=lambda m, b0=b0: number(m[1]) > b0)


def check_market(page: Page) -> None:
    for sym in SYMBOLS:
        box = f".st-key-market-{sym}"
        wait_plot(page, box)
        wait_for_text(page, box, r"([\d,]+) closed 1s candles", 20, accept=lambda m: number(m[1]) >= 10)
    sym = SYMBOLS[0]
    box = f".st-key-market-{sym}"
    before = plot_state(page, box)
    assert before["uirevision"] == f"market-{sym}-1s" and before["candles"] >= 10, before  # type: ignore[operator]
    page.locator(f".st-key-market-tf-{sym}").get_by_role("radio", name="1m", exact=True).click()
    wait_for_text(page, box, rf"{sym} · 1m", 20)
    wait_for_text(page, box, r"[\d,]+ closed 1m candles", 20)
    deadline = time.monotonic() + 20
    after = plot_state(page, box)
    while after["uirevision"] != f"market-{sym}-1m" and time.monotonic() < deadline:
        page.wait_for_timeout(250)
        after = plot_state(page, box)
    assert after["uirevision"] == f"market-{sym}-1m", (before, after)
    # another timeframe, other candles: fewer of them (a fresh system has minutes, not hours, of
    # bars) or the same number over a longer span
    assert after["candles"] != before["candles"] or after["span_ms"] > before["span_ms"], (before, after)
    # the other symbol's chart keeps its own timeframe
    wait_for_text(page, f".st-key-market-{SYMBOLS[1]}", r"closed 1s candles", 5)
    # and back: the 1s candles again (the screenshot shows both charts at 1s)
    page.locator(f".st-key-market-tf-{sym}").get_by_role("radio", name="1s", exact=True).click()
    wait_for_text(page, box, r"([\d,]+) closed 1s candles", 20, accept=lambda m: number(m[1]) >= before["candles"] - 1)
    page.wait_for_function(
        "([sel, rev]) => { const gd = document.querySelector(sel + ' .js-plotly-plot');"
        " return gd && gd.layout && gd.layout.uirevision === rev; }",
        arg=[box, f"market-{sym}-1s"],
        timeout=20_000,
    )


def check_training(page: Page) -> None:
    wait_for_text(page, ".st-key-training-replicas", r"\b1 replicas\b", 60)
    page.wait_for_selector('.st-key-training-replicas [data-testid="stDataFrame"]', timeout=10_000)
    wait_for_text(page, ".st-key-training-learning", r"([\d,]+) metrics packets", 30, accept=lambda m: number(m[1]) > 0)
    # The DQN learns once its replay holds dqn_learning_starts transitions (~35 s of two symbols);
    # then td_loss is plotted, a point per metrics packet (every 5 s): wait for a line of two.
    learning = ".st-key-training-learning"
    try:
        page.wait_for_function(TD_LOSS_POINTS_JS, arg=learning, timeout=60_000)
    except PlaywrightTimeoutError:
        raise AssertionError(f"no td_loss line within 60 s:\n{page_text(page, learning)}") from None


def check_streams(page: Page) -> None:
    wait_for_text(page, ".st-key-streams", r"Streams: \d+ present", 30)
    wait_for_text(page, ".st-key-streams", r"groups (\d+)", 20, accept=lambda m: number(m[1]) >= 6)
    wait_for_text(page, ".st-key-streams", r"Consumer groups", 20)
    page.wait_for_selector('.st-key-streams [data-testid="stDataFrame"]', timeout=20_000)
    # a healthy system dead-letters nothing
    wait_for_text(page, ".st-key-dlq", r"Dead letters: none", 20)
    wait_for_text(page, ".st-key-quality", r"fetched in", 20)
    assert "No data-quality counters yet" not in page_text(page, ".st-key-quality")
    page.wait_for_selector('.st-key-quality [data-testid="stDataFrame"]', timeout=20_000)


def test_every_dashboard_page_shows_live_data_without_console_errors(system: RunningSystem) -> None:
    url = system.dashboard
    system.wait_log(f"dashboard at {url}", timeout_s=60)

    errors: list[str] = []
    on: list[str] = ["overview"]  # the page being looked at, for the error list

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"{on[0]}: console: {message.text} ({message.location.get('url', '')})")

    def on_page_error(error: Error) -> None:
        errors.append(f"{on[0]}: pageerror: {error.name}: {error.message}")

    shots: dict[str, Path] = {}
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        page.on("console", on_console)
        page.on("pageerror", on_page_error)
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
        page.wait_for_selector(APP_SELECTOR, timeout=60_000)
        checks = {"overview": check_overview, "market": check_market, "training": check_training,
                  "streams": check_streams}  # fmt: skip
        for name in ("overview", "market", "streams", "training"):  # training last: the DQN needs time to learn
            on[0] = name
            if name != "overview":
                open_page(page, name)
            checks[name](page)
            errors.extend(f"{name}: on the page: {text}" for text in page_errors(page))
            shots[name] = screenshot(page, name)
        # Back to the Overview, which now shows the agent learning: the screenshot the README wants.
        on[0] = "overview"
        open_page(page, "overview")
        for sym in SYMBOLS:
            wait_for_text(page, f".st-key-tds-{sym}", r"RL agent: training", 20)
        errors.extend(f"overview: on the page: {text}" for text in page_errors(page))
        shots["overview"] = screenshot(page, "overview")
        page.close()
    for path in shots.values():
        assert path.stat().st_size > 10_000, path

    # Ctrl-C: every process started goes away, and the supervisor exits 0.
    system.ctrl_c_stops_everything(at_least=6)  # redis + ingest + aggregator + features + trainer + dashboard
    assert not errors, "errors in the browser:\n" + "\n".join(errors)
