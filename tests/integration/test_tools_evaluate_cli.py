"""``unistream evaluate`` as a script runs it: archive files in, the walk-forward table (or JSON) out; exit 2
with the reason for files it cannot use. No Redis: the replay, aggregator and features run in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from archives import archive_zip

pytestmark = pytest.mark.heavy

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"
T0 = 1_740_000_000_000  # 2025: the archive writes µs
# Small and quick: tiny windows and network, 2 folds x 2 seeds, every 2nd packet a decision point.
QUICK = ("--symbol", "ETHUSDT", "--window-bars", "8", "--hidden", "16", "--seeds", "2", "--folds", "2", "--stride", "2",
         "--updates-per-packet", "0.5")  # fmt: skip
# sharpe is left out: the paper trader's Sharpe needs 3 complete hours in a block, these are minutes
TABLE_METRICS = ("pnl", "max_drawdown", "win_rate", "trades_per_hour", "fee_share")
BASELINES = ("buy_and_hold", "flat", "random")


def evaluate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    cmd = [sys.executable, "-m", "unistream_tools.cli", "evaluate", *map(str, args)]
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
    assert "sharpe" not in cells and "no sharpe row: the paper trader's Sharpe needs 3 complete hours" in out
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
    assert "Extrema heads of the CNN on the test blocks" in out and "| 1s | 3 | top |" in out
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
    assert report["symbols"] == ["ETHUSDT"] and set(report["verdicts"]) == {"ETHUSDT"}
    verdict = report["verdicts"]["ETHUSDT"]
    assert set(verdict["edges"]["net"]) == set(BASELINES) and set(verdict["edges"]["gross"]) == set(BASELINES)
    assert verdict["edges"]["net"]["flat"]["n"] == 2
    assert 0 < verdict["p_value"]["net"] <= 1 and len(verdict["block_p_values"]["net"]) == 2
    assert set(verdict["sweep_bps"]) == {"0", "2", "5", "10"}
    assert verdict["costs"] == {"fee": 0.001, "slippage": 0.0002, "latency_ms": 1000}
    assert [len(r["targets"]["ETHUSDT"]) for r in runs] == [r["test_packets"] for r in runs]
    # the CNN's extrema heads, walk-forward on every 1s packet (stride 2 here: a second pass over the files)
    extrema = report["extrema"]
    assert extrema["order"] == {"1s": 3, "1m": 3, "1h": 3, "1d": 3} and len(extrema["blocks"]) == 2
    top = extrema["summary"]["1s"]["top"]
    assert top["blocks"] == 2 and top["labels"] > 300 and 0 < top["base_rate"] < top["past_rule"] <= 1


def test_evaluate_runs_every_symbol_of_the_files_through_one_engine_and_one_policy(tmp_path: Path) -> None:
    """As deployed: the symbols read from the file names, one features engine for both (a state holds
    both symbols' blocks, its own first), one DQN trained on both symbols' packets in time order,
    one paper portfolio; a verdict per symbol on its own prices."""
    eth = archive_zip(tmp_path, "2025-02-19", 1_000, 600, T0, seed=1)
    btc = archive_zip(tmp_path, "2025-02-19", 5_000, 600, T0, seed=3, symbol="BTCUSDT")
    quick = [a for a in QUICK if a not in ("--symbol", "ETHUSDT")]
    done = evaluate("--path", btc, eth, *quick, "--json", "--report", tmp_path / "report")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["symbols"] == ["ETHUSDT", "BTCUSDT"], "the deployed order, not the order given"
    assert report["files"] == {"ETHUSDT": [str(eth)], "BTCUSDT": [str(btc)]}
    one = 4 * 5 * 8 + 4 * 128 + 160 + 20 + 24 + 4  # a symbol's blocks at --window-bars 8
    assert report["data"]["state_dim"] == 2 * one + 4 + 4
    assert set(report["verdicts"]) == {"ETHUSDT", "BTCUSDT"}
    for verdict in report["verdicts"].values():
        assert verdict["edges"]["net"]["flat"]["n"] == 2
    for run in report["runs"]:
        assert set(run["targets"]) == {"ETHUSDT", "BTCUSDT"}
        assert sum(len(t) for t in run["targets"].values()) == run["test_packets"]
        # the two symbols' test blocks cover the same seconds: a block never splits a second
        assert abs(len(run["targets"]["ETHUSDT"]) - len(run["targets"]["BTCUSDT"])) <= 2
    assert report["settings"]["hyperparameters"]["n_step"] == 3, "the trainer's settings where not overridden"
    page = (tmp_path / "report" / "report.html").read_text()
    assert "ETHUSDT: Test block 1 of 2" in page and "BTCUSDT: Shift null" in page
    assert "== BTCUSDT ==" in (tmp_path / "report" / "report.html").read_text()
    assert report["data"]["seconds_per_day"] > 0


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

    unnamed = evaluate("--path", FIXTURES / "trades_us.csv", *[a for a in QUICK if a not in ("--symbol", "ETHUSDT")])
    assert unnamed.returncode == 2 and "cannot tell the symbol of trades_us.csv" in unnamed.stderr
    other = archive_zip(tmp_path, "2025-02-19", 1, 30, T0, seed=1, symbol="BTCUSDT")
    mismatch = evaluate("--path", other, *QUICK)
    assert mismatch.returncode == 2 and "holds BTCUSDT by its name, not --symbol ETHUSDT" in mismatch.stderr
