"""Dashboard rows of ``make bench`` (imported by ``bench/run.py``; see its docstring for the rows).

The system under test is ``unistream dashboard`` as its own process (the Streamlit server it
execs into, with the flags it passes), its pages opened in the OS's headless Chromium through
Playwright (the helpers of ``tests/browser.py``), against the harness's Redis. What it reads is
written by a feeder thread in this process, shaped as a running system writes it (the packets of
:mod:`dashboard_samples` of ``tests/``): at the start a snapshot of :data:`SYMBOLS` (status packets,
ticks, 120 1s bars, trainer metrics, a model, consumer groups), then every second per symbol a
tick batch, a 1s bar and a status packet, a trainer metrics packet, and a heartbeat of each of the four other services
(the dashboard beats for itself), so every Overview card is LIVE and every service READY.

Rows:

- ``dashboard_overview_ready_s``: from ``page.goto`` of the Overview (a new browser context:
  a new session, nothing cached) until every panel shows data: each symbol's card its tick
  cache, 1s bars and price, each service's card READY and its last beat (polled on every
  animation frame); the median of :data:`LOADS` loads after one unmeasured load (the server's
  first script run imports the page's modules; it is in the notes). Reference:
  ``streamlit_hello_ready_s``, the same for a one-line Streamlit app (``st.write``) served with
  the same command-line flags, until its text shows. Goal: < 3 s;
- ``dashboard_cpu_idle_pct`` (reference) / ``dashboard_cpu_per_tab_pct``: CPU time of the
  server process (``/proc/<pid>/stat`` utime + stime, all its threads) over a window of
  :data:`WINDOW_S` s, in % of one core: with no tab open (after one tab has been and gone: the
  page's modules imported, the heartbeat thread running), and with one tab on the Overview at the
  default 1 s refresh, minus the idle figure of its round. :data:`WINDOWS` rounds per server, each
  one idle window and then one tab window per page: each round is one run. Goal: < 15 %;
- ``dashboard_cpu_market_pct`` / ``_training_pct`` / ``_streams_pct``: the same with the tab on
  the Market, Training or Streams page (until its charts or tables show data: :data:`PAGES`);
  pages take turns, so the windows of one page are spread over the run. Goal: < 15 % each;
- ``dashboard_redis_commands_per_refresh``: Redis commands the dashboard issues per panel
  refresh, in the same tab windows: the INFO commandstats totals' growth over the window, less
  the feeder's own commands (counted as it sends them), this harness's INFO calls and the
  dashboard's background rate with no tab (its heartbeat), divided by the panel refreshes the
  browser received (read from the page's websocket: per script run that a ``script_finished``
  message ends, the fragments whose deltas it carried; Streamlit folds fragment reruns that
  arrive while one runs into one script run). The commands by name are in the notes, with each
  page's refreshes per panel per second.

A ready run takes ~14 s (server start-up included), the CPU server ~2 min; the CPU and
commands rows share that server (the first of them to run measures, the others take the
windows it left). All eight rows: ~3 min on a 2-core machine. Without Chromium or Playwright a row raises
RuntimeError and is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import CHROMIUM, VIEWPORT, chromium, stop_process_group, wait_streamlit_ready

from unistream_common import codec, keys
from unistream_common.heartbeat import queue_beat
from unistream_tools.redis_server import free_port

SYMBOLS = ("ETHUSDT", "BTCUSDT")
PRICES = {"ETHUSDT": 3012.55, "BTCUSDT": 97_123.4}
OTHER_SERVICES = ("ingest", "aggregator", "features", "trainer")  # the dashboard beats for itself
SERVICES = (*OTHER_SERVICES, "dashboard")
LOADS = 2  # measured page loads per ready run (after one unmeasured load)
READY_TIMEOUT_S = 30.0
WINDOW_S = 6.0  # one CPU / commands window
WINDOWS = 2  # windows of each kind per page and CPU server: 2 x 6 s idle, 2 x 6 s with a tab
SETTLE_S = 2.0  # after a tab opens (ready) or closes, before a window starts
FEED_EVERY_S = 1.0
HELLO_TEXT = "Hello from a one-line Streamlit app"

GOALS: dict[str, tuple[str, float]] = {
    "dashboard_overview_ready_s": ("<", 3.0),
    "dashboard_cpu_per_tab_pct": ("<", 15.0),
    "dashboard_cpu_market_pct": ("<", 15.0),
    "dashboard_cpu_training_pct": ("<", 15.0),
    "dashboard_cpu_streams_pct": ("<", 15.0),
}
MAX_RUNS: dict[str, int] = {
    "streamlit_hello_ready_s": 2,
    "dashboard_overview_ready_s": 2,
    "dashboard_cpu_idle_pct": WINDOWS,
    "dashboard_cpu_per_tab_pct": WINDOWS,
    "dashboard_cpu_market_pct": WINDOWS,
    "dashboard_cpu_training_pct": WINDOWS,
    "dashboard_cpu_streams_pct": WINDOWS,
    "dashboard_redis_commands_per_refresh": WINDOWS,
}
NOTES: dict[str, list[str]] = {}


def _note(row: str, text: str) -> None:
    NOTES.setdefault(row, []).append(text)


def _need_browser() -> None:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is not installed")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"playwright is not installed: {exc}") from None


# --- what the dashboard reads ---------------------------------------------------------------


class Feeder:
    """Writes a running system's picture into Redis, then its progress every second (a thread).

    Every command it sends is counted (``commands``), and ``lock`` is held while a batch is sent
    and counted, so a reader holding it sees Redis and the count agree.
    """

    def __init__(self, url: str) -> None:
        import dashboard_samples as samples

        self.samples = samples
        self.client = redis.Redis.from_url(url, protocol=2)
        self.lock = threading.Lock()
        self.commands = 0
        self.stop_event = threading.Event()
        self.started_ms = int(time.time() * 1000)
        self.ticks = {s: 50_000 for s in SYMBOLS}
        self.bars = {s: 4_000 for s in SYMBOLS}
        self.thread = threading.Thread(target=self._run, name="dashboard-feeder", daemon=True)

    def __enter__(self) -> Self:
        snapshots = {s: self.samples.SymbolSnapshot(s, PRICES[s], self.ticks[s], self.bars[s], 1_000) for s in SYMBOLS}
        self.samples.write_snapshot(self.client, snapshots, now_ms=int(time.time() * 1000), bars=120, source="REAL")
        self._feed(int(time.time() * 1000))
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(10)
        self.client.close()

    def _feed(self, now_ms: int) -> None:
        s = self.samples
        pipe = self.client.pipeline(transaction=False)
        for i, sym in enumerate(SYMBOLS):
            self.ticks[sym] += 25
            self.bars[sym] += 1
            price = PRICES[sym] * (1 + 0.0005 * ((now_ms // 1000) % 7 - 3))
            batch = s.tick_batch(sym, first_trade_id=self.ticks[sym] - 24, prices=[price] * 25, ts_ms=now_ms)
            pipe.xadd(keys.ticks(sym), codec.encode(batch), maxlen=5_000, approximate=True)
            bar = s.bar_walk(sym, end_open_ms=now_ms - 1000, count=1, start_price=price, seed=now_ms + i)[0]
            pipe.xadd(keys.bars(sym, "1s"), codec.encode(bar), id=f"{bar.open_time_ms}-0")
            status = s.ui_packet(
                sym, ts_ms=now_ms, last_price=price, ticks_seen=self.ticks[sym], bars_seen=self.bars[sym],
                training_packets=self.bars[sym] - 300,
            )  # fmt: skip
            pipe.xadd(keys.UI, codec.encode(status), maxlen=50, approximate=False)
        step = now_ms // 1000 - self.started_ms // 1000
        metrics = s.metrics_packet(
            "trainer-1", ts_ms=now_ms, step=step, td_loss=1.0 / (1 + step), updates=10 * step, packets=20 * step,
            extra={"paper/pnl": 0.001 * step, "paper/buy_and_hold_pnl": 0.0005 * step, "paper/sharpe": 1.2,
                   "paper/hours": step / 3600, "losses/q_values": 0.1 * step},
        )  # fmt: skip
        pipe.xadd(keys.METRICS, codec.encode(metrics), maxlen=1_000, approximate=True)
        for service in OTHER_SERVICES:  # the services' own beat (queue_beat), from a fake pid and host
            consumer = f"{service}-1"
            fields = {"service": service, "consumer": consumer, "started_ms": self.started_ms, "ready": 1,
                      "pid": 4242, "host": "bench"}  # fmt: skip
            queue_beat(pipe, service, consumer, fields, now_ms)
        with self.lock:
            sent = len(pipe)
            try:
                pipe.execute()
            except redis.ResponseError:  # a bar id not above the last (a second skipped): the rest went in
                pass
            self.commands += sent

    def _run(self) -> None:
        while not self.stop_event.wait(FEED_EVERY_S - (time.time() % FEED_EVERY_S)):
            with contextlib.suppress(redis.RedisError):
                self._feed(int(time.time() * 1000))


# --- the server and the browser ---------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def serve(redis_url: str, app: Path | None, tmp: Path) -> Iterator[Server]:
    """``unistream dashboard`` (``app`` None), or Streamlit serving ``app`` with the same flags."""
    from unistream_dashboard.__main__ import APP, streamlit_argv
    from unistream_dashboard.settings import DashboardSettings

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    env.update({"UNISTREAM_REDIS_URL": redis_url, "UNISTREAM_SYMBOLS": ",".join(SYMBOLS),
                "UNISTREAM_HTTP_HOST": "127.0.0.1", "UNISTREAM_HTTP_PORT": str(port),
                "UNISTREAM_LOG_LEVEL": "WARNING"})  # fmt: skip
    if app is None:
        command = [sys.executable, "-m", "unistream_tools.cli", "dashboard"]
    else:
        settings = DashboardSettings(redis_url=redis_url, http_host="127.0.0.1", http_port=port, log_level="WARNING")
        command = [str(app) if arg == str(APP) else arg for arg in streamlit_argv(settings)]
    log = tmp / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        base = f"http://127.0.0.1:{port}"
        try:
            wait_streamlit_ready(base, 60, process, log)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"the server did not start: {exc}") from None
        yield Server(base, process, log)
    finally:
        stop_process_group(process)


OVERVIEW_READY_JS = """([symbols, services]) => {
    const text = key => { const e = document.querySelector('.st-key-' + key); return e ? e.innerText : ''; };
    return symbols.every(s => {
        const t = text('tds-' + s);
        return /Tick cache: [\\d,]+ \\/ [\\d,]+ \\(total [\\d,]+\\)/.test(t) && /1s bars: [\\d,]+ \\/ [\\d,]+/.test(t)
            && /Price: [\\d,]+\\.\\d+/.test(t);
    }) && services.every(v => {
        const t = text('svc-' + v);
        return /Status: READY/.test(t) && /Last beat: /.test(t);
    });
}"""
MARKET_READY_JS = """([symbols]) => symbols.every(s => {
    const e = document.querySelector('.st-key-market-' + s);
    return e && /closed 1s candles/.test(e.innerText) && e.querySelector('.js-plotly-plot .main-svg');
})"""
TRAINING_READY_JS = r"""() => {
    const e = document.querySelector('.st-key-training-learning');
    return e && /[\d,]+ metrics packets/.test(e.innerText) && e.querySelector('.js-plotly-plot .main-svg');
}"""
STREAMS_READY_JS = r"""() => {
    const e = document.querySelector('.st-key-streams'), q = document.querySelector('.st-key-quality');
    return e && q && /Streams: \d+ present/.test(e.innerText) && /fetched in/.test(q.innerText);
}"""
HELLO_READY_JS = """text => Array.from(document.querySelectorAll('[data-testid="stMarkdownContainer"]'))
    .some(e => e.innerText.includes(text))"""


def _load_s(b: Any, url: str, ready_js: str, arg: object) -> float:
    """Seconds from ``goto`` until ``ready_js(arg)`` holds, in a new context (a new session)."""
    context = b.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        start = time.perf_counter()
        page.goto(url, wait_until="commit", timeout=READY_TIMEOUT_S * 1000)
        page.wait_for_function(ready_js, arg=arg, timeout=READY_TIMEOUT_S * 1000)
        return time.perf_counter() - start
    finally:
        context.close()


def _ready_run(redis_url: str, row: str, hello: bool) -> float:
    _need_browser()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        app = None
        if hello:
            app = tmp / "hello.py"
            app.write_text(f'import streamlit as st\n\nst.write("{HELLO_TEXT}")\n')
        ready_js, arg = (HELLO_READY_JS, HELLO_TEXT) if hello else (OVERVIEW_READY_JS, [list(SYMBOLS), list(SERVICES)])
        with Feeder(redis_url), serve(redis_url, app, tmp) as server, chromium() as b:
            first = _load_s(b, server.url, ready_js, arg)
            loads = [_load_s(b, server.url, ready_js, arg) for _ in range(LOADS)]
    _note(row, f"loads {', '.join(f'{x:.2f}' for x in loads)} s; the server's first {first:.2f} s")
    return statistics.median(loads)


async def streamlit_hello_ready_s(url: str, n: int, batch: int) -> float:
    return await asyncio.to_thread(_ready_run, url, "streamlit_hello_ready_s", True)


async def dashboard_overview_ready_s(url: str, n: int, batch: int) -> float:
    return await asyncio.to_thread(_ready_run, url, "dashboard_overview_ready_s", False)


# --- CPU and Redis commands ---------------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _commandstats(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


@dataclass
class Window:
    """One measured window: the server's CPU and the dashboard's commands over ``seconds``."""

    seconds: float
    cpu_pct: float
    commands: Counter[str]  # by name, the feeder's and this harness's left out
    refreshes: int = 0  # panel (fragment) refreshes the browser saw: fragments with deltas, per script run
    panels: int = 0  # distinct fragments among them
    runs: int = 0  # fragment script runs the browser saw end (one may refresh several panels)
    relabelled: int = 0  # of those, reported as FINISHED_EARLY_FOR_RERUN (see _tab_window)


@dataclass
class CpuResults:
    idle: list[Window] = field(default_factory=list)
    tab: list[Window] = field(default_factory=list)


def _window(pid: int, client: redis.Redis, feeder: Feeder, seconds: float, wait: Callable[[float], None]) -> Window:
    with feeder.lock:
        before_stats, before_fed = _commandstats(client), feeder.commands
        cpu0, t0 = _cpu_s(pid), time.monotonic()
    wait(seconds)
    with feeder.lock:
        cpu1, t1 = _cpu_s(pid), time.monotonic()
        after_stats, after_fed = _commandstats(client), feeder.commands
    commands = after_stats - before_stats
    commands["info"] = 0  # this harness's (the dashboard sends none)
    fed = after_fed - before_fed  # xadd, hset, pexpire, zadd: take them off by name
    for name, share in _feeder_mix(feeder).items():
        commands[name] -= round(fed * share)
    commands = +commands  # drop zero and negative counts
    return Window(t1 - t0, 100 * (cpu1 - cpu0) / (t1 - t0), commands)


def _feeder_mix(feeder: Feeder) -> dict[str, float]:
    """The feeder's commands by name, as shares of one feed (the same every second)."""
    per_feed = {"xadd": 3 * len(SYMBOLS) + 1, "hset": len(OTHER_SERVICES), "pexpire": len(OTHER_SERVICES),
                "zadd": len(OTHER_SERVICES)}  # fmt: skip
    total = sum(per_feed.values())
    return {name: count / total for name, count in per_feed.items()}


# Page -> (url path, ready check, its argument, row of its CPU per tab). The Overview's row keeps
# its historical name.
PAGES: dict[str, tuple[str, str, Callable[[], object]]] = {
    "overview": ("", OVERVIEW_READY_JS, lambda: [list(SYMBOLS), list(SERVICES)]),
    "market": ("market", MARKET_READY_JS, lambda: [list(SYMBOLS)]),
    "training": ("training", TRAINING_READY_JS, lambda: None),
    "streams": ("streams", STREAMS_READY_JS, lambda: None),
}
CPU_ROWS = {
    "overview": "dashboard_cpu_per_tab_pct",
    "market": "dashboard_cpu_market_pct",
    "training": "dashboard_cpu_training_pct",
    "streams": "dashboard_cpu_streams_pct",
}
_CPU: dict[str, list[Any]] = {}


def _tab_window(b: Any, server: Server, page_key: str, client: redis.Redis, feeder: Feeder) -> Window:
    """One window with one tab open on ``page_key`` (a new browser context), once it shows data."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    path, ready_js, arg = PAGES[page_key]
    context = b.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        runs = Counter[str]()
        # One script run may carry several fragments (Streamlit folds fragment reruns requested
        # while one runs into the next run): the fragments whose deltas a run sent, per run.
        in_run: set[str] = set()
        panels = Counter[str]()

        def on_websocket(ws: Any) -> None:
            def on_frame(payload: bytes | str) -> None:
                if isinstance(payload, str):
                    return
                msg = ForwardMsg.FromString(payload)
                kind = msg.WhichOneof("type")
                if kind == "delta" and msg.delta.fragment_id:
                    in_run.add(msg.delta.fragment_id)
                elif kind == "script_finished":
                    runs[ForwardMsg.ScriptFinishedStatus.Name(msg.script_finished)] += 1
                    panels.update(in_run)
                    in_run.clear()

            ws.on("framereceived", on_frame)

        page.on("websocket", on_websocket)
        page.goto(f"{server.url}/{path}", wait_until="commit")
        page.wait_for_function(ready_js, arg=arg(), timeout=READY_TIMEOUT_S * 1000)
        page.wait_for_timeout(SETTLE_S * 1000)
        runs.clear()
        panels.clear()
        # Playwright's sync API hands over websocket frames only while it is called
        window = _window(server.process.pid, client, feeder, WINDOW_S, lambda s: page.wait_for_timeout(s * 1000))
        # A fragment run that ends while the end of the previous one is still queued for the
        # browser has that previous end relabelled FINISHED_EARLY_FOR_RERUN (streamlit's
        # forward_msg_queue): it ran to the end all the same, so both count.
        window.relabelled = runs["FINISHED_EARLY_FOR_RERUN"]
        window.runs = runs["FINISHED_FRAGMENT_RUN_SUCCESSFULLY"] + window.relabelled
        window.refreshes = panels.total()
        window.panels = len(panels)
        return window
    finally:
        context.close()


def _cpu_scenario(redis_url: str) -> dict[str, CpuResults]:
    """:data:`WINDOWS` rounds of one window with no tab, then one with a tab on each page in turn
    (each page's figure is its tab window less its round's idle window)."""
    _need_browser()
    results = {page_key: CpuResults() for page_key in PAGES}
    client = redis.Redis.from_url(redis_url, protocol=2)
    with tempfile.TemporaryDirectory() as tmp_name, Feeder(redis_url) as feeder:
        tmp = Path(tmp_name)
        with serve(redis_url, None, tmp) as server, chromium() as b:
            pid = server.process.pid
            first = _load_s(b, server.url, OVERVIEW_READY_JS, PAGES["overview"][2]())  # imports, the heartbeat thread
            time.sleep(SETTLE_S)
            for _ in range(WINDOWS):  # pages interleaved, so drift hits all alike
                idle = _window(pid, client, feeder, WINDOW_S, time.sleep)  # one idle window a round
                for page_key, out in results.items():
                    out.idle.append(idle)
                    out.tab.append(_tab_window(b, server, page_key, client, feeder))
                    time.sleep(SETTLE_S)
    client.close()
    _note("dashboard_cpu_idle_pct", f"after one tab's first load of {first:.2f} s; windows of {WINDOW_S:g} s")
    return results


def _cpu_values(redis_url: str) -> None:
    """Measure the windows and leave one value per window for each CPU and commands row."""
    for page_key, results in _cpu_scenario(redis_url).items():
        row = CPU_ROWS[page_key]
        idle, tab, per_refresh = [], [], []
        for i, (quiet, busy) in enumerate(zip(results.idle, results.tab, strict=True)):
            idle.append(quiet.cpu_pct)
            tab.append(busy.cpu_pct - quiet.cpu_pct)
            background = quiet.commands.total() / quiet.seconds  # the heartbeat, every 2 s
            own = busy.commands.total() - background * busy.seconds
            if busy.refreshes == 0:
                raise RuntimeError(f"the browser saw no panel refresh in a window of one tab on {page_key}")
            per_refresh.append(own / busy.refreshes)
            _note(
                row,
                f"window {i + 1}: {busy.cpu_pct:.1f} % with the tab, {quiet.cpu_pct:.1f} % idle; "
                f"{busy.panels} panels, {busy.refreshes / busy.seconds / max(busy.panels, 1):.2f} refreshes/s each "
                f"in {busy.runs / busy.seconds:.2f} script runs/s; {busy.commands.total() / busy.seconds:.1f} Redis commands/s "
                f"({background:.1f}/s without), {own / busy.refreshes:.1f} per refresh",
            )
            if page_key == "overview":
                top = ", ".join(f"{name} {count / busy.seconds:.1f}" for name, count in busy.commands.most_common(8))
                _note("dashboard_redis_commands_per_refresh", f"window {i + 1}: by name per s: {top}")
        _CPU[row] = tab
        if page_key == "overview":
            _CPU["idle"], _CPU["per_refresh"] = idle, per_refresh


def _take(redis_url: str, which: str) -> float:
    if not _CPU.get(which):
        _cpu_values(redis_url)
    return float(_CPU[which].pop(0))


async def dashboard_cpu_idle_pct(url: str, n: int, batch: int) -> float:
    return await asyncio.to_thread(_take, url, "idle")


async def dashboard_cpu_per_tab_pct(url: str, n: int, batch: int) -> float:
    return await asyncio.to_thread(_take, url, CPU_ROWS["overview"])


async def dashboard_cpu_market_pct(url: str, n: int, batch: int) -> float:
    return await asyncio.to_thread(_take, url, CPU_ROWS["market"])


async def dashboard_cpu_training_pct(url: str, n: int, batch: int) -> float:
    return await asyncio.to_thread(_take, url, CPU_ROWS["training"])


async def dashboard_cpu_streams_pct(url: str, n: int, batch: int) -> float:
    return await asyncio.to_thread(_take, url, CPU_ROWS["streams"])


async def dashboard_redis_commands_per_refresh(url: str, n: int, batch: int) -> float:
    return await asyncio.to_thread(_take, url, "per_refresh")
