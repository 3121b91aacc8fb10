"""``make bench`` rows of ``unistream evaluate`` (see bench/run.py for the table they go into).

- ``evaluate_s_per_day``: seconds ``unistream evaluate`` needs per day of data at its defaults,
  the deployed configuration (two symbols through one features engine, 300-bar windows, the
  trainer's network and update rate: 256-256, 4 updates per packet), stride 1, one seed and one
  fold, on two synthetic archive files of ``MINUTES`` minutes (:mod:`unistream_tools.synthetic`'s
  random walk, ~3 trades/s per symbol): the build and the walk-forward measured, scaled by the data's span (what the tool's
  own ``data.seconds_per_day`` reports). Reference: ``evaluate_standin_s_per_day``, the same
  files with the network the tool evaluated before it ran the deployed one (``--hidden 64
  --updates-per-packet 1``). Each runs once (about a minute and ten seconds here).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import tempfile
from pathlib import Path

MINUTES = 5
T0_MS = 1_739_923_200_000  # 2025-02-19 00:00 UTC
SYMBOLS = ("ETHUSDT", "BTCUSDT")
MAX_RUNS: dict[str, int] = {"evaluate_s_per_day": 1, "evaluate_standin_s_per_day": 1}
NOTES: dict[str, list[str]] = {}


def _seconds_per_day(extra: list[str]) -> tuple[float, dict[str, float]]:
    from unistream_tools.evaluate import main
    from unistream_tools.synthetic import write_archive

    with tempfile.TemporaryDirectory() as tmp:
        files = [write_archive(Path(tmp), s, T0_MS, MINUTES * 60, planted=False, seed=k) for k, s in enumerate(SYMBOLS)]
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
