"""The synthetic archives ``unistream evaluate`` is checked on: the planted regime is there to learn,
the random walk has nothing, and the files read as Binance's archives do."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unistream_ingest.archive import read_archive_columns
from unistream_tools.synthetic import DRIFT, NOISE, main, second_returns, write_archive


def _predictability(r: np.ndarray) -> float:
    """Correlation of the last minute's return with the next 10 seconds'."""
    past = np.convolve(r, np.ones(60), "valid")[:-10]
    future = np.convolve(r, np.ones(10), "valid")[60:]
    return float(np.corrcoef(past, future[: past.size])[0, 1])


def test_the_planted_regime_is_predictable_from_the_last_minute_and_the_walk_is_not() -> None:
    planted = second_returns(200_000, True, np.random.default_rng(1))
    walk = second_returns(200_000, False, np.random.default_rng(1))
    assert _predictability(planted) > 0.1
    assert abs(_predictability(walk)) < 0.02
    assert abs(np.std(planted) / np.std(walk) - 1) < 0.02, "the same volatility"
    assert abs(np.std(walk) - np.hypot(DRIFT, NOISE)) < 0.02 * NOISE


def test_the_files_read_as_binance_archives(tmp_path: Path) -> None:
    path = write_archive(tmp_path, "ETHUSDT", 1_739_923_200_000, 120, True, seed=3)
    assert path.name == "ETHUSDT-trades-2025-02-19.zip"
    blocks = list(read_archive_columns(path))
    assert sum(len(b) for b in blocks) > 200
    ts = np.concatenate([np.asarray(b.ts_event_ms) for b in blocks])
    assert ts.min() >= 1_739_923_200_000 and ts.max() < 1_739_923_200_000 + 120_000
    assert np.all(np.diff(np.concatenate([np.asarray(b.trade_id) for b in blocks])) == 1)


def test_the_command_writes_one_file_per_symbol(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--pattern", "walk", "--hours", "0.01", "--out", str(tmp_path), "--date", "2025-02-20"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "BTCUSDT-trades-2025-02-20.zip",
        "ETHUSDT-trades-2025-02-20.zip",
    ]
    assert len(capsys.readouterr().out.splitlines()) == 2
