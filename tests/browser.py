"""Browser-test helpers: run a Streamlit server under test, drive it with the OS's Chromium.

Playwright's own browser download does not work on these machines, so Chromium is the OS
package at :data:`CHROMIUM`, launched headless with flags that keep it from reaching the
network or needing a GPU or sandbox. A Streamlit server is ready when ``/_stcore/health``
answers ``ok``; the page is ready when ``[data-testid="stApp"]`` exists, and its panels fill in
as their scripts run, so assertions poll the text with :func:`wait_for_text`.

Typical use::

    with streamlit_server([*unistream_command(), "dashboard"], port, env) as url, \\
            chromium() as browser, open_app(browser, url) as page:
        match = wait_for_text(page, ".st-key-tds-ETHUSDT", r"Tick cache: ([\\d,]+)")

Every process started here is stopped on the way out (servers by process group, so nothing
is left behind when a test fails).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (make test installs it when run as root)"
)
APP_SELECTOR = '[data-testid="stApp"]'
VIEWPORT = {"width": 1600, "height": 1000}


def unistream_command() -> list[str]:
    """The ``unistream`` console script of the environment running the tests."""
    script = Path(sys.executable).with_name("unistream")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "unistream_tools.cli"]


def _log_tail(log_path: Path | None, chars: int = 3000) -> str:
    if log_path is None or not log_path.exists():
        return ""
    return log_path.read_text(errors="replace")[-chars:]


def wait_streamlit_ready(
    base_url: str,
    timeout_s: float = 60.0,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll ``{base_url}/_stcore/health`` until it answers ``ok``.

    Raises RuntimeError at once if ``process`` exits first, and TimeoutError after
    ``timeout_s``; both carry the tail of the server's log.
    """
    url = base_url.rstrip("/") + "/_stcore/health"
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"server exited with status {process.returncode} before it was ready:\n{_log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = response.read().decode(errors="replace").strip()
            if body == "ok":
                return
            last_error = f"health said {body!r}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last_error = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ok after {timeout_s:.0f} s ({last_error}):\n{_log_tail(log_path)}")


def stop_process_group(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM the process group that ``process`` leads, SIGKILL it after ``timeout_s``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def streamlit_server(
    command: Sequence[str],
    port: int,
    env: Mapping[str, str],
    log_path: Path | None = None,
    timeout_s: float = 60.0,
    host: str = "127.0.0.1",
) -> Iterator[str]:
    """Start ``command`` (a Streamlit server listening on ``host:port``) in its own process
    group, wait until it is healthy, yield its base URL, and stop it on the way out.

    Output goes to ``log_path`` (a pipe nobody reads could fill up and stall the server).
    """
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        process = subprocess.Popen(
            list(command),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            base_url = f"http://{host}:{port}"
            wait_streamlit_ready(base_url, timeout_s, process, log_path)
            yield base_url
        finally:
            stop_process_group(process)
    finally:
        if log_path:
            log.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def chromium(headless: bool = True) -> Iterator[Browser]:
    """Headless Chromium from the OS package, driven by Playwright; closed on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=headless, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_app(browser: Browser, base_url: str, timeout_s: float = 30.0) -> Iterator[Page]:
    """A new page on the Streamlit app at ``base_url``, once ``stApp`` is in the DOM."""
    page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
    try:
        page.goto(base_url, wait_until="domcontentloaded", timeout=timeout_s * 1000)
        page.wait_for_selector(APP_SELECTOR, timeout=timeout_s * 1000)
        yield page
    finally:
        page.close()


def page_text(page: Page, selector: str = APP_SELECTOR) -> str:
    """Visible text of the first element matching ``selector`` ('' while it does not exist)."""
    locator = page.locator(selector).first
    if locator.count() == 0:
        return ""
    return locator.inner_text(timeout=5000)


def wait_for_text(
    page: Page,
    selector: str,
    pattern: str,
    timeout_s: float = 20.0,
    accept: Callable[[re.Match[str]], bool] = lambda _m: True,
    poll_s: float = 0.25,
) -> re.Match[str]:
    """Poll the text of ``selector`` until regex ``pattern`` matches and ``accept(match)`` holds.

    Returns the match; raises AssertionError with the last text seen after ``timeout_s``.
    """
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout_s
    text = ""
    while True:
        text = page_text(page, selector)
        match = regex.search(text)
        if match and accept(match):
            return match
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"no text matching {pattern!r} in {selector} within {timeout_s:.0f} s; last text:\n{text[:3000]}"
            )
        time.sleep(poll_s)


def number(text: str) -> float:
    """``'45,678'`` -> 45678.0; ``'3,012.55'`` -> 3012.55 (numbers as the dashboard prints them)."""
    return float(text.replace(",", ""))
