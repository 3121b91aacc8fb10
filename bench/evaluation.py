"""``make bench`` rows of ``unistream evaluate`` (see bench/run.py for the table they go into).

- ``evaluate_s_per_day``: seconds ``unistream evaluate`` needs per day of data at its defaults,
  the deployed configuration (two symbols through one features engine, 300-bar windows, the
  trainer's network and update rate: 256-256, 4 updates per packet), stride 1, one seed and one
  fold, on two synthetic archive files of ``MINUTES`` minutes (a random walk, ~2 trades/s per
  symbol): the build and the walk-forward measured, scaled by the data's span (what the tool's
  own ``data.seconds_per_day`` reports). Reference: ``evaluate_standin_s_per_day``, the same
  files with the network the tool evaluated before it ran the deployed one (``--hidden 64
  --updates-per-packet 1``). Each runs once (about a minute and ten seconds here).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import random
import tempfile
import zipfile
from pathlib import Path

MINUTES = 5
T0_MS = 1_740_000_000_000
MAX_RUNS: dict[str, int] = {"evaluate_s_per_day": 1, "evaluate_standin_s_per_day": 1}
NOTES: dict[str, list[str]] = {}


def _archive(directory: Path, symbol: str, price: float, seed: int) -> Path:
    """A trades .zip as data.binance.vision serves it: a random walk of ``MINUTES`` minutes."""
    rnd = random.Random(seed)
    rows, trade_id = [], 1
    for sec in range(MINUTES * 60):
        for ms in sorted(rnd.randrange(1_000) for _ in range(rnd.randrange(0, 5))):
            price *= math.exp(rnd.gauss(0.0, 0.0005))
            maker = "true" if rnd.random() < 0.5 else "false"
            rows.append(f"{trade_id},{price:.2f},{rnd.uniform(0.001, 2):.4f},1.0,{(T0_MS + sec * 1000 + ms) * 1000},"
                        f"{maker},true\n")  # fmt: skip
            trade_id += 1
    path = directory / f"{symbol}-trades-2025-02-19.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(path.with_suffix(".csv").name, "".join(rows))
    return path


def _seconds_per_day(extra: list[str]) -> tuple[float, dict[str, float]]:
    from unistream_tools.evaluate import main

    with tempfile.TemporaryDirectory() as tmp:
        files = [_archive(Path(tmp), "ETHUSDT", 2_500.0, 1), _archive(Path(tmp), "BTCUSDT", 60_000.0, 2)]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--path", *map(str, files), "--seeds", "1", "--folds", "1", "--json", *extra])
        if code != 0:
            raise RuntimeError(f"unistream evaluate exited {code}: {err.getvalue()[-2000:]}")
        data = json.loads(out.getvalue())["data"]
    return float(data["seconds_per_day"]), data


async def evaluate_s_per_day(url: str, n: int, batch: int) -> float:
    value, data = await asyncio.to_thread(_seconds_per_day, [])
    NOTES.setdefault("evaluate_s_per_day", []).append(
        f"{data['decision_points']:,} packets of {data['state_dim']:,} values over {data['hours'] * 60:.0f} min: "
        f"build {data['build_s']:.1f} s, extrema heads {data['extrema_s']:.1f} s, walk-forward "
        f"{data['walk_forward_s']:.1f} s (one seed, one fold); a day at stride 1 {value / 3_600:.1f} h"
    )
    return value


async def evaluate_standin_s_per_day(url: str, n: int, batch: int) -> float:
    value, _ = await asyncio.to_thread(_seconds_per_day, ["--hidden", "64", "--updates-per-packet", "1"])
    return value
