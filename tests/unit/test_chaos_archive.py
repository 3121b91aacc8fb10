"""The chaos suite's replayed file has the content it claims (chaos/run.py): ingest's own replay
reads exactly its valid trades, and the reference bars hold every one of them once."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

from unistream_ingest.replay import ReplaySource

REPO = Path(__file__).resolve().parents[2]


def _chaos():
    spec = importlib.util.spec_from_file_location("chaos_run", REPO / "chaos" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos_run"] = module
    spec.loader.exec_module(module)
    return module


def test_the_replay_reads_exactly_the_valid_trades_and_refuses_the_rest(tmp_path: Path) -> None:
    chaos = _chaos()
    archive = chaos.write_archive(tmp_path / "a.csv", seed=3, minutes=40)
    assert archive.malformed > 0 and archive.repeated > 0, "the file must hold rows to refuse"
    source = ReplaySource([archive.path], chaos.SYMBOL, None, start_ms=0, chunk=5_000)
    got = []
    while not source.done:
        got.extend(source.advance(chaos.MIDNIGHT_MS + 86_400_000).get(chaos.SYMBOL, []))
    assert [(t.trade_id, t.price, t.size, t.aggressor_side, t.ts_event_ms) for t in got] == [
        (t.trade_id, t.price, t.size, t.aggressor_side, t.ts_event_ms) for t in archive.valid
    ]
    info = source.info()
    assert info["validator"]["rejected"] == {"duplicate": archive.repeated}
    assert next(iter(info["replay_files"].values()))["malformed"] == archive.malformed


def test_reference_bars_hold_every_trade_once_and_cross_midnight(tmp_path: Path) -> None:
    chaos = _chaos()
    archive = chaos.write_archive(tmp_path / "a.csv", seed=5, minutes=40)
    bars = chaos.reference_bars(archive.valid)
    per_second = Counter(t.ts_event_ms // 1000 * 1000 for t in archive.valid)
    last = max(per_second)  # REPLAY: the last trade's second stays open
    assert sum(b.trade_count for b in bars["1s"]) == len(archive.valid) - per_second[last]
    assert all(b.trade_count == per_second.get(b.open_time_ms, 0) for b in bars["1s"])
    assert [b.open_time_ms for b in bars["1d"]] == [chaos.MIDNIGHT_MS - 86_400_000]
    assert bars["1h"][-1].close_time_ms == chaos.MIDNIGHT_MS
    assert len(bars["1m"]) >= 39
