"""The whole system, started the way a user starts it and observed the way a user observes it.

``unistream run`` brings up Redis and the five services; the dashboard is read in a real
headless Chromium; ``unistream status`` lists the groups; a service killed with SIGKILL comes
back by itself and the bars carry on without a doubled or missing interval; Ctrl-C (SIGINT)
stops every process that was started.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from browser import chromium, needs_chromium, number, open_app, unistream_command, wait_for_text
from processes import RunningSystem, cmdline, descendants, unistream_run

from unistream_common import codec, keys

REPO = Path(__file__).resolve().parents[2]
SERVICE_PORTS = (8001, 8002, 8003, 8004, 8104, 8501)  # two trainers: 8004 and 8104
SYMBOLS = ("ETHUSDT", "BTCUSDT")

pytestmark = [
    pytest.mark.heavy,
    pytest.mark.e2e,
    needs_chromium,
]


@pytest.fixture
def system(tmp_path: Path) -> Iterator[RunningSystem]:
    """``unistream run --scale trainer=2`` in a scratch directory, its own Redis on a free port;
    merge rounds every 3 s, within the test's minute (default 30 s)."""
    with unistream_run(unistream_command(), tmp_path, trainers=2, ports=SERVICE_PORTS) as running:
        yield running


def status_json(cwd: Path) -> dict[str, object]:
    """`unistream status --json` run where `unistream run` runs, as a user would: it finds the run's
    Redis and its tools' login (the read-only dashboard user) in .run/run.json."""
    out = subprocess.run(
        [*unistream_command(), "status", "--json"],
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")},
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def bar_open_times(client: redis.Redis, symbol: str) -> list[int]:
    return [int(eid.split(b"-")[0]) for eid, _ in client.xrange(keys.bars(symbol, "1s"))]


def test_user_starts_the_system_sees_live_numbers_and_it_recovers_and_stops_cleanly(
    system: RunningSystem,
) -> None:
    proc, log_path, url = system.proc, system.log, system.dashboard
    started = time.monotonic()
    system.wait_log(f"dashboard at {url}", timeout_s=90)

    # The dashboard, in a real browser: counts are non-zero and grow, prices are live.
    with chromium() as browser, open_app(browser, url, timeout_s=60) as page:
        first: dict[str, tuple[int, int]] = {}
        for sym in SYMBOLS:
            card = f".st-key-tds-{sym}"
            ticks = wait_for_text(page, card, r"Tick cache: [\d,]+ / [\d,]+ \(total ([\d,]+)\)", 90,
                                  accept=lambda m: number(m.group(1)) > 0)  # fmt: skip
            bars = wait_for_text(page, card, r"1s bars: [\d,]+ / [\d,]+ \(total ([\d,]+)\)", 60,
                                 accept=lambda m: number(m.group(1)) > 0)  # fmt: skip
            wait_for_text(page, card, r"Stream: LIVE", 30)
            wait_for_text(page, card, r"Source: SYNTHETIC", 10)
            wait_for_text(page, card, r"Price: [\d,]+\.\d+", 10)
            first[sym] = (number(ticks.group(1)), number(bars.group(1)))
        assert time.monotonic() - started < 60, "the dashboard must show live numbers within 60 s"
        for sym in SYMBOLS:
            card = f".st-key-tds-{sym}"
            t0, b0 = first[sym]
            wait_for_text(page, card, r"Tick cache: [\d,]+ / [\d,]+ \(total ([\d,]+)\)", 30,
                          accept=lambda m, t0=t0: number(m.group(1)) > t0)  # fmt: skip
            wait_for_text(page, card, r"1s bars: [\d,]+ / [\d,]+ \(total ([\d,]+)\)", 30,
                          accept=lambda m, b0=b0: number(m.group(1)) > b0)  # fmt: skip
        assert "REAL MARKET DATA" not in page.locator(".st-key-tds").first.inner_text()

    # Operators see every group with its consumers.
    status = status_json(system.cwd)
    groups = {(g["stream"], g["name"]): g for g in status["groups"]}  # type: ignore[index]
    for sym in SYMBOLS:
        assert groups[(keys.ticks(sym), "aggregator")]["consumers"] >= 1
        assert groups[(keys.ticks(sym), keys.features_group("features-1"))]["consumers"] >= 1
        assert groups[(keys.bars(sym, "1s"), keys.features_group("features-1"))]["consumers"] >= 1
        assert groups[(keys.training(sym), "trainer")]["consumers"] == 2

    # The trainers learn: metrics arrive from both replicas.
    client = redis.Redis.from_url(system.redis_url, protocol=2)

    # Warm-up from ingest's history: every window of every timeframe is full within 30 s of the
    # first state (here at once: the synthetic market's history covers 300 bars of each).
    for sym in SYMBOLS:
        mine = [codec.decode(fields) for _, fields in client.xrange(keys.training(sym), count=5_000)]
        assert mine, f"no training packet for {sym}"
        warm = [p for p in mine if p.warm]  # type: ignore[union-attr]
        assert warm and warm[0].ts_emit_ms - mine[0].ts_emit_ms <= 30_000, (sym, mine[0].warmup)  # type: ignore[union-attr]
        assert mine[-1].warm and mine[-1].source == "SYNTHETIC" and mine[-1].state_dim == 13_448  # type: ignore[union-attr]
    deadline = time.monotonic() + 120
    producers: set[str] = set()
    while time.monotonic() < deadline and len(producers) < 2:
        for _, fields in client.xrevrange(keys.METRICS, count=50):
            producers.add(codec.decode(fields).producer)  # type: ignore[union-attr]
        time.sleep(1)
    assert producers == {"trainer-1", "trainer-2"}

    # The two replicas converge to one model: a merged DQN of both is published and announced.
    deadline = time.monotonic() + 60
    merged: list[object] = []
    while time.monotonic() < deadline and not merged:
        anns = [codec.decode(f) for _, f in client.xrange(keys.MODELS)]
        merged = [a for a in anns if a.name == "dqn" and a.metrics.get("merge/members") == 2]  # type: ignore[union-attr]
        time.sleep(1)
    assert merged, "no merged model of both replicas within 60 s"

    # SIGKILL the aggregator: the supervisor restarts it and bars carry on, exactly once.
    sup = proc.pid
    aggregator = [p for p in descendants(sup) if "unistream-aggregator" in cmdline(p)]
    assert len(aggregator) == 1, [cmdline(p) for p in descendants(sup)]
    before = {sym: len(bar_open_times(client, sym)) for sym in SYMBOLS}
    os.kill(aggregator[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        again = [p for p in descendants(sup) if "unistream-aggregator" in cmdline(p) and p != aggregator[0]]
        if again and all(len(bar_open_times(client, s)) > before[s] + 3 for s in SYMBOLS):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"aggregator did not come back:\n{log_path.read_text()[-4000:]}")
    for sym in SYMBOLS:
        opens = bar_open_times(client, sym)
        steps = {b - a for a, b in itertools.pairwise(opens)}
        assert steps == {1000}, f"{sym}: bar intervals not consecutive after the kill: {sorted(steps)[:5]}"

    # Ctrl-C: every process started goes away, and the supervisor exits 0.
    system.ctrl_c_stops_everything(at_least=7)  # redis + ingest + aggregator + features + 2 trainers + dashboard
    client.close()
