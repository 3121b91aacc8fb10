"""``unistream evaluate`` as a script runs it: archive files in, the walk-forward table (or JSON) out; exit 2
with the reason for files it cannot use. No Redis: the replay, aggregator and features run in process."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.heavy

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"
T0 = 1_740_000_000_000  # 2025: the archive writes µs
# Small and quick: tiny windows and network, 2 folds x 2 seeds, every 2nd packet a decision point.
QUICK = ("--symbol", "ETHUSDT", "--window-bars", "8", "--hidden", "16", "--seeds", "2", "--folds", "2", "--stride", "2",
         "--updates-per-packet", "0.5")  # fmt: skip
TABLE_METRICS = ("pnl", "sharpe", "max_drawdown", "win_rate", "trades_per_hour", "fee_share")
BASELINES = ("buy_and_hold", "flat", "random")


def archive_zip(directory: Path, day: str, first_id: int, seconds: int, t0_ms: int, seed: int) -> Path:
    """A trades .zip as data.binance.vision serves it (header-less CSV, µs times): a random walk, ~2 trades/s."""
    rnd = random.Random(seed)
    price, rows, trade_id = 2500.0, [], first_id
    for sec in range(seconds):
        for ms in sorted(rnd.randrange(1_000) for _ in range(rnd.randrange(0, 5))):
            price *= math.exp(rnd.gauss(0.0, 0.0005))
            buyer_maker = "true" if rnd.random() < 0.5 else "false"
            rows.append(f"{trade_id},{price:.2f},{rnd.uniform(0.001, 2):.4f},1.0,{(t0_ms + sec * 1000 + ms) * 1000},"
                        f"{buyer_maker},true\n")  # fmt: skip
            trade_id += 1
    path = directory / f"ETHUSDT-trades-{day}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"ETHUSDT-trades-{day}.csv", "".join(rows))
    return path


def evaluate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    cmd = [sys.executable, "-m", "unistream_common.cli", "evaluate", *map(str, args)]
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=120)


def two_files(directory: Path) -> tuple[Path, Path]:
    first = archive_zip(directory, "2025-02-19", 1_000, 300, T0, seed=1)
    second = archive_zip(directory, "2025-02-20", 10_000, 300, T0 + 300_000, seed=2)
    return first, second


def test_evaluate_prints_the_walk_forward_table_with_the_baselines(tmp_path: Path) -> None:
    first, second = two_files(tmp_path)
    done = evaluate("--path", second, first, *QUICK)  # given out of order: merged by time
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    header = next(line for line in out.splitlines() if line.startswith("| metric"))
    assert [c.strip() for c in header.strip("|").split("|")][2:] == list(BASELINES)
    cells = {
        c[0]: c[1:]
        for line in out.splitlines()
        if line.startswith("| ") and (c := [x.strip() for x in line.strip("|").split("|")])
    }
    for metric in TABLE_METRICS:
        assert metric in cells, out
    pnl = dict(zip(("policy", *BASELINES), cells["pnl"], strict=True))
    assert all(" [" in v and v.endswith("]") for v in pnl.values()), "the policy and each baseline with an interval"
    assert pnl["flat"] == "0 [0, 0]", "flat earns nothing, exactly"
    assert cells["fee_share"][1:] == ["-", "-", "-"], "trade statistics are the policy's only"
    # the verdict: blocks are the replicates, the random baseline is the policy's own positions shifted
    assert "2 test blocks (the unit of replication; seeds averaged inside each)" in out
    edges = {c[0]: c[1:] for line in out.splitlines() if (c := [x.strip() for x in line.strip("|").split("|")])}
    for name in BASELINES:
        assert name in edges and edges[name][1] in ("better", "worse", "no difference"), out
    assert "shift null" in out and "net p = " in out and "gross p = " in out
    assert "random baseline cost-matched: yes" in out
    assert "probabilistic Sharpe" in out and "deflated for 1 configuration(s)" in out
    for bps in ("0 bps", "2 bps", "5 bps", "10 bps"):
        assert f"| {bps} |" in out, "the fee sweep"
    assert out.rstrip().splitlines()[-1].startswith(("EDGE", "NO EDGE")), "one line says what it means"
    assert "fills 1000 ms after a decision" in out and "slippage 0.0002" in out
    assert "2 folds x 2 seeds" in out
    assert "seed 2 fold 1" in done.stderr, "progress goes to stderr"


def test_evaluate_json_holds_every_run_and_the_intervals(tmp_path: Path) -> None:
    first, second = two_files(tmp_path)
    done = evaluate("--path", first, second, *QUICK, "--json", "--report", tmp_path / "report")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    # --report: the same numbers beside one self-contained page with the verdict and its charts
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == report
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Test block 2 of 2: cumulative net return" in page and page.count("<svg") == 2 * 2 + 1 + 2
    assert "shift null" in page and "report written" in done.stderr
    assert set(report["rows"]) == set(TABLE_METRICS)
    assert set(report["rows"]["pnl"]) == {"policy", *BASELINES}
    assert report["rows"]["pnl"]["policy"]["n"] == 2, "one value per test block, seeds averaged"
    runs = report["runs"]
    assert [(r["seed"], r["fold"]) for r in runs] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    data = report["data"]
    assert data["bars_1s"] >= 590 and data["decision_points"] == (data["packets_built"] + 1) // 2
    for r in runs:
        assert r["train_packets"] + r["test_packets"] <= data["decision_points"]
        assert r["test_from_ms"] > T0 and r["metrics"]["paper/steps"] == r["test_packets"]
    blocks = data["decision_points"] // 3
    assert abs(runs[0]["train_packets"] - blocks) <= 1 and abs(runs[1]["train_packets"] - 2 * blocks) <= 1
    verdict = report["verdict"]
    assert set(verdict["edges"]["net"]) == set(BASELINES) and set(verdict["edges"]["gross"]) == set(BASELINES)
    assert verdict["edges"]["net"]["flat"]["n"] == 2
    assert 0 < verdict["p_value"]["net"] <= 1 and len(verdict["block_p_values"]["net"]) == 2
    assert set(verdict["sweep_bps"]) == {"0", "2", "5", "10"}
    assert verdict["costs"] == {"fee": 0.001, "slippage": 0.0002, "latency_ms": 1000}
    assert [len(r["targets"]) for r in runs] == [r["test_packets"] for r in runs]


def test_evaluate_exits_2_with_the_reason_for_files_it_cannot_use(tmp_path: Path) -> None:
    missing = evaluate("--path", tmp_path / "ETHUSDT-trades-2025-01-01.zip", *QUICK)
    assert missing.returncode == 2
    assert "not found" in missing.stderr and "ETHUSDT-trades-2025-01-01.zip" in missing.stderr
    assert not missing.stdout

    broken = tmp_path / "ETHUSDT-trades-2025-01-02.zip"
    broken.write_bytes(b"not a zip file")
    unreadable = evaluate("--path", broken, *QUICK)
    assert unreadable.returncode == 2
    assert "unreadable" in unreadable.stderr and broken.name in unreadable.stderr

    short = evaluate("--path", FIXTURES / "trades_us.csv", *QUICK)  # three trades: two 1s bars
    assert short.returncode == 2
    assert "too little data" in short.stderr
