"""Replay of archive files as a tick source: order, pacing, validation, idempotent re-runs."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unistream_common.packets import Tick
from unistream_common.settings import ConfigError, load_settings
from unistream_ingest.archive import merge_in_time_order, read_archive
from unistream_ingest.replay import ReplaySource
from unistream_ingest.settings import IngestSettings
from unistream_ingest.validate import Rejection, Validator

T0 = 1_735_000_000_000  # ms, before 2025: the archive's ms era


def write_trades(path: Path, first_id: int, n: int, t0: int, step_ms: int = 10, micro: bool = False) -> Path:
    lines = []
    for i in range(n):
        ts = t0 + i * step_ms
        lines.append(
            f"{first_id + i},3000.{i % 100:02d},0.0{1 + i % 9},1,{ts * 1000 if micro else ts},{i % 2 == 0},True"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def drain(source: ReplaySource, now_ms: int, rounds: int = 100) -> list[int]:
    ids: list[int] = []
    for _ in range(rounds):
        ids.extend(t.trade_id for t in source.advance(now_ms).get("ETHUSDT", []))
        if source.done:
            break
    return ids


def test_max_speed_releases_every_trade_in_chunks_then_is_done(tmp_path: Path) -> None:
    f = write_trades(tmp_path / "a.csv", 1, 250, T0)
    source = ReplaySource([f], "ETHUSDT", None, start_ms=T0, chunk=100)
    sizes = [len(source.advance(T0).get("ETHUSDT", [])) for _ in range(3)]
    assert sizes == [100, 100, 50]
    assert source.done and source.advance(T0) == {}
    assert source.info()["replay_released"] == 250


def test_several_files_are_merged_in_time_order_across_ms_and_us_timestamps(tmp_path: Path) -> None:
    a = write_trades(tmp_path / "a.csv", 1, 50, T0, step_ms=20)
    b = write_trades(tmp_path / "b.csv", 51, 50, T0 + 1_000, step_ms=20, micro=True)
    source = ReplaySource([b, a], "ETHUSDT", None, start_ms=0, chunk=1_000)
    ticks = source.advance(T0 + 10_000)["ETHUSDT"]
    assert [t.trade_id for t in ticks] == list(range(1, 101))
    assert all(x.ts_event_ms <= y.ts_event_ms for x, y in itertools.pairwise(ticks))
    assert ticks[50].ts_event_ms == T0 + 1_000, "µs rows were converted to ms"


def test_a_speed_factor_releases_what_the_replay_clock_has_passed(tmp_path: Path) -> None:
    f = write_trades(tmp_path / "a.csv", 1, 100, T0, step_ms=100)  # 10 s of trades
    start = T0 + 86_400_000  # wall clock: a day after the trades
    source = ReplaySource([f], "ETHUSDT", 10.0, start_ms=start)
    assert [t.trade_id for t in source.advance(start)["ETHUSDT"]] == [1]
    # 0.5 s of wall clock at 10x = 5 s of trades: ids up to the one at T0 + 5,000 ms
    assert source.advance(start + 500)["ETHUSDT"][-1].trade_id == 51
    assert source.advance(start + 500) == {}
    assert drain(source, start + 2_000)[-1] == 100 and source.done
    for t in source.advance(start + 2_000).get("ETHUSDT", []):
        pytest.fail(f"released {t} after the end")


def test_rows_that_fail_validation_or_parsing_are_counted_not_written(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text(
        f"1,3000.00,0.01,30,{T0},true,true\n"
        f"2,0.00,0.01,0,{T0 + 1},true,true\n"  # zero price
        f"2,3000.01,0.01,30,{T0 + 2},false,true\n"
        f"2,3000.01,0.01,30,{T0 + 3},false,true\n"  # duplicate id
        "garbage,row\n"
        f"3,3000.02,0.01,30,{T0 + 4},false,true\n"
    )
    source = ReplaySource([f], "ETHUSDT", None, start_ms=T0)
    assert drain(source, T0 + 1_000) == [1, 2, 3]
    info = source.info()
    assert info["validator"]["accepted"] == 3
    assert info["validator"]["rejected"] == {"bad_price": 1, "duplicate": 1}
    assert info["replay_files"][str(f)]["malformed"] == 1


def test_replaying_after_the_streams_last_id_skips_what_is_already_written(tmp_path: Path) -> None:
    f = write_trades(tmp_path / "a.csv", 1, 100, T0)
    source = ReplaySource([f], "ETHUSDT", None, start_ms=T0)
    source.validator.resume("ETHUSDT", 60)
    assert drain(source, T0) == list(range(61, 101))


def test_a_paced_replay_resumed_mid_file_goes_on_at_once_from_the_next_trade(tmp_path: Path) -> None:
    # 100 s of trades at 10x; a restart after id 600 (60 s in) must not wait 6 s of wall clock
    f = write_trades(tmp_path / "a.csv", 1, 1_000, T0, step_ms=100)
    start = T0 + 86_400_000
    source = ReplaySource([f], "ETHUSDT", 10.0, start_ms=start, chunk=150)  # at most 150 per advance
    assert source.resume_after(600) == 600
    assert [t.trade_id for t in source.advance(start)["ETHUSDT"]] == [601]
    assert source.advance(start + 100)["ETHUSDT"][-1].trade_id == 611  # 1 s of trades in 0.1 s
    assert drain(source, start + 5_000)[-1] == 1_000 and source.done
    assert source.info()["replay_skipped_on_resume"] == 600


def test_resuming_past_the_end_releases_nothing(tmp_path: Path) -> None:
    f = write_trades(tmp_path / "a.csv", 1, 100, T0)
    source = ReplaySource([f], "ETHUSDT", 5.0, start_ms=T0)
    assert source.resume_after(100) == 100
    assert source.advance(T0 + 60_000) == {} and source.done


def test_missing_files_and_bad_speeds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        ReplaySource([tmp_path / "nope.csv"], "ETHUSDT", None, start_ms=0)
    f = write_trades(tmp_path / "a.csv", 1, 1, T0)
    with pytest.raises(ValueError, match="speed"):
        ReplaySource([f], "ETHUSDT", 0.0, start_ms=0)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"UNISTREAM_SOURCE": "replay"}, "needs files"),
        ({"UNISTREAM_REPLAY_SPEED": "fast"}, "UNISTREAM_REPLAY_SPEED: 'fast' is not a speed"),
        ({"UNISTREAM_REPLAY_SPEED": "-2"}, "is not a speed"),
        ({"UNISTREAM_REPLAY_SYMBOL": "SOLUSDT"}, "not in UNISTREAM_SYMBOLS"),
        ({"UNISTREAM_SOURCE": "kraken"}, "UNISTREAM_SOURCE: Input should be"),
    ],
)
def test_bad_replay_configuration_stops_with_what_to_change(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], says: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError):
        load_settings(IngestSettings)
    assert says in capsys.readouterr().err


def test_replay_settings_split_paths_and_read_the_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNISTREAM_SOURCE", "replay")
    monkeypatch.setenv("UNISTREAM_REPLAY_PATHS", "a.zip, b.csv")
    monkeypatch.setenv("UNISTREAM_REPLAY_SPEED", "60")
    s = load_settings(IngestSettings)
    assert s.replay_paths == ("a.zip", "b.csv")
    assert s.replay_factor == 60.0 and s.replay_target == "ETHUSDT"


def _reference(paths: list[Path], now_ms: int) -> tuple[list[Tick], dict[str, object]]:
    """What the replay releases, trade by trade: the merged RawTrades through Validator.check."""
    validator = Validator(["ETHUSDT"], max_past_ms=None)
    merged = merge_in_time_order(read_archive(p, "ETHUSDT") for p in paths)
    ticks = [t for t in (validator.check(x, now_ms) for x in merged) if not isinstance(t, Rejection)]
    return ticks, validator.stats()


@settings(max_examples=40, deadline=None)
@given(
    files=st.lists(
        st.lists(st.tuples(st.integers(1, 60), st.integers(0, 3), st.integers(0, 12)), min_size=0, max_size=60),
        min_size=1, max_size=3,
    ),
    chunk=st.sampled_from([1, 7, 50, 1_000]),
)  # fmt: skip
def test_replay_equals_merging_and_checking_trade_by_trade(
    tmp_path_factory: pytest.TempPathFactory, files: list[list[tuple[int, int, int]]], chunk: int
) -> None:
    """Overlapping files, ties on (time, id) across files, repeats, gaps and rows the validator refuses."""
    directory = tmp_path_factory.mktemp("replay")
    paths = []
    for k, rows in enumerate(files):
        lines, tid, ts = [], 0, T0
        for id_step, ts_step, odd in rows:
            tid += id_step if id_step < 50 else 0  # mostly gaps of a few ids, some repeats
            ts += ts_step
            price = "0.00" if odd == 11 else f"3000.{odd:02d}"
            lines.append(f"{tid},{price},0.5,1.0,{ts * 1000 if odd == 12 else ts},{odd % 2 == 0},True")
            if odd == 10:
                lines.append("garbage")
        paths.append(directory / f"{k}.csv")
        paths[-1].write_text("\n".join(lines) + "\n")
    now = T0 + 86_400_000
    source = ReplaySource(paths, "ETHUSDT", None, start_ms=0, chunk=chunk)
    got: list[Tick] = []
    for _ in range(10_000):
        got.extend(source.advance(now).get("ETHUSDT", []))
        if source.done:
            break
    expected, stats = _reference(paths, now)
    assert got == expected
    assert source.info()["validator"] == stats
    assert source.released == sum(r.rows for r in source.reports.values())
