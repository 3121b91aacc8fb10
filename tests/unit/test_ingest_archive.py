"""Binance public-archive reader: trades and aggTrades, csv and zip, ms and µs, headers, malformed rows."""

from __future__ import annotations

import hashlib
import io
import zipfile
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unistream_ingest import archive
from unistream_ingest.archive import (
    ArchiveReport,
    archive_url,
    checksum_url,
    merge_in_time_order,
    read_archive,
    read_archive_batches,
    read_archive_columns,
    verify_checksum,
)
from unistream_ingest.venue import RawTrade

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"

TRADES_MS = [
    RawTrade("ETHUSDT", 1000001, 2012.55, 0.012, True, 1700000000120),
    RawTrade("ETHUSDT", 1000002, 2012.56, 1.0, False, 1700000000120),
    RawTrade("ETHUSDT", 1000003, 2012.5, 0.00001, True, 1700000000500),
]


def _zip(tmp_path: Path, source: Path, members: dict[str, bytes] | None = None) -> Path:
    path = tmp_path / (source.stem + ".zip")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in (members or {source.name: source.read_bytes()}).items():
            zf.writestr(name, data)
    return path


def test_trades_csv_with_ms_times_reads_every_row() -> None:
    report = ArchiveReport()
    assert list(read_archive(FIXTURES / "trades_ms.csv", "ETHUSDT", report=report)) == TRADES_MS
    assert (report.kind, report.rows, report.malformed, report.header, report.microseconds) == (
        "trades",
        3,
        0,
        False,
        0,
    )


def test_trades_csv_with_us_times_is_converted_to_ms() -> None:
    report = ArchiveReport()
    trades = list(read_archive(FIXTURES / "trades_us.csv", "ETHUSDT", report=report))
    assert [t.ts_event_ms for t in trades] == [1735689600123, 1735689600123, 1735689601000]
    assert [t.buyer_is_maker for t in trades] == [False, True, True]
    assert report.microseconds == 3


def test_agg_trades_are_detected_by_column_count_and_invalidated_rows_dropped() -> None:
    report = ArchiveReport()
    trades = list(read_archive(FIXTURES / "aggtrades_us.csv", "ETHUSDT", report=report))
    assert trades == [
        RawTrade("ETHUSDT", 900001, 3335.1, 1.5, False, 1735689600123, 3),
        RawTrade("ETHUSDT", 900003, 3335.0, 2.0, True, 1735689601000, 1),
    ]
    assert (report.kind, report.invalidated, report.malformed) == ("aggTrades", 1, 0)


def test_zip_as_downloaded_reads_like_the_csv_inside(tmp_path: Path) -> None:
    for name in ("trades_ms.csv", "aggtrades_us.csv"):
        source = FIXTURES / name
        assert list(read_archive(_zip(tmp_path, source), "ETHUSDT")) == list(read_archive(source, "ETHUSDT"))


def test_zip_without_exactly_one_csv_is_refused(tmp_path: Path) -> None:
    two = _zip(tmp_path, FIXTURES / "trades_ms.csv", {"a.csv": b"", "b.csv": b""})
    with pytest.raises(ValueError, match="2 CSV"):
        list(read_archive(two, "ETHUSDT"))


def test_header_line_is_tolerated_and_gives_the_kind(tmp_path: Path) -> None:
    path = tmp_path / "with_header.csv"
    header = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\r\n"
    path.write_text(header + (FIXTURES / "trades_ms.csv").read_text().replace("\n", "\r\n"), newline="")
    report = ArchiveReport()
    assert list(read_archive(path, "ETHUSDT", report=report)) == TRADES_MS
    assert report.header and report.kind == "trades" and report.malformed == 0


def test_malformed_rows_are_counted_with_line_numbers_and_the_read_goes_on(tmp_path: Path) -> None:
    good = (FIXTURES / "trades_ms.csv").read_text().splitlines()
    lines = [
        good[0],
        "1000002,2012.56,1.0,2012.56,1700000000120,False",  # 6 columns
        "1000002,2012.5x,1.0,2012.56,1700000000120,False,True",
        "1000002,2012.56,1.0,2012.56,17000000001e3,False,True",
        "1000002,2012.56,1.0,2012.56,1700000000120,yes,True",
        "",
        "x" * 500,
        good[1],
        "1000003,1e-05,1.0,2012.56,1700000000120,False,True",
        good[2],
        "1000004,2012.5,0.1,201.25,1700000000",  # torn last line, as a crash leaves it
    ]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines))
    report = ArchiveReport()
    assert [t.trade_id for t in read_archive(path, "ETHUSDT", report=report)] == [1000001, 1000002, 1000003]
    assert report.malformed == 7
    assert report.reasons == {"columns": 3, "bad_number": 2, "bad_int": 1, "bad_bool": 1}
    assert [s[0] for s in report.samples] == [2, 3, 4, 5, 7, 9, 11]
    assert len(report.samples[4][2]) == 200


def test_agg_trade_row_with_last_id_before_first_is_bad_range(tmp_path: Path) -> None:
    path = tmp_path / "agg.csv"
    path.write_text("1,2.5,1.0,10,9,1700000000000,True,True\n2,2.5,1.0,11,11,1700000000000,True,True\n")
    report = ArchiveReport()
    assert [t.trade_id for t in read_archive(path, "ETHUSDT", report=report)] == [2]
    assert report.reasons == {"bad_range": 1}


def test_explicit_kind_treats_rows_of_the_other_kind_as_malformed() -> None:
    report = ArchiveReport()
    assert list(read_archive(FIXTURES / "aggtrades_us.csv", "ETHUSDT", kind="trades", report=report)) == []
    assert report.reasons == {"columns": 3}


def test_empty_file_yields_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    report = ArchiveReport()
    assert list(read_archive(path, "ETHUSDT", report=report)) == [] and report.kind is None


def test_batches_hold_at_most_batch_size_and_concatenate_to_the_full_read(tmp_path: Path) -> None:
    path = tmp_path / "many.csv"
    path.write_text("".join(f"{i},1.5,2.0,3.0,{1700000000000 + i},True,True\n" for i in range(1, 26)))
    batches = list(read_archive_batches(path, "ETHUSDT", batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [t for b in batches for t in b] == list(read_archive(path, "ETHUSDT"))
    with pytest.raises(ValueError):
        list(read_archive_batches(path, "ETHUSDT", batch_size=0))


def test_merge_replays_several_files_in_time_then_id_order() -> None:
    eth = list(read_archive(FIXTURES / "trades_ms.csv", "ETHUSDT"))
    btc = [
        RawTrade("BTCUSDT", 7, 37000.0, 0.1, False, 1700000000119),
        RawTrade("BTCUSDT", 8, 37000.0, 0.1, False, 1700000000300),
    ]
    merged = list(merge_in_time_order([iter(eth), iter(btc)]))
    assert [(t.symbol, t.trade_id) for t in merged] == [
        ("BTCUSDT", 7), ("ETHUSDT", 1000001), ("ETHUSDT", 1000002), ("BTCUSDT", 8), ("ETHUSDT", 1000003),
    ]  # fmt: skip
    assert [t.ts_event_ms for t in merged] == sorted(t.ts_event_ms for t in merged)


def test_archive_urls_follow_the_data_binance_vision_layout() -> None:
    assert archive_url("ETHUSDT", date(2025, 1, 2)) == (
        "https://data.binance.vision/data/spot/daily/trades/ETHUSDT/ETHUSDT-trades-2025-01-02.zip"
    )
    assert checksum_url("BTCUSDT", "2024-12-31", kind="aggTrades") == (
        "https://data.binance.vision/data/spot/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-12-31.zip.CHECKSUM"
    )
    with pytest.raises(ValueError):
        archive_url("ETHUSDT", "2025-01-02", kind="klines")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        archive_url("ETHUSDT", "02/01/2025")


def test_checksum_verification_matches_sha256_file_format(tmp_path: Path) -> None:
    path = _zip(tmp_path, FIXTURES / "trades_ms.csv")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert verify_checksum(path, f"{digest}  {path.name}\n")
    assert not verify_checksum(path, f"{'0' * 64}  {path.name}\n")
    assert not verify_checksum(path, "")


def test_byte_order_mark_does_not_turn_the_first_row_into_a_header(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "trades_ms.csv").read_bytes())
    report = ArchiveReport()
    assert list(read_archive(path, "ETHUSDT", report=report)) == TRADES_MS and not report.header


# --- the block fast path equals the per-line path -------------------------------------------------

_CLEAN_TRADE = "{id},{p},0.0{q},1.5,{ts},{m},True"
_DIRTY_ROWS = [
    "",  # blank line
    "   ",
    "1,2.5,1.0,3.0,1700000000000,True",  # 6 columns
    "1,2.5,1.0,3.0,1700000000000,True,True,9",  # 8 columns in a trades file
    "01,2.5,1.0,3.0,1700000000000,True,True",  # leading zero: the fast path's JSON refuses it
    "1,02.5,1.0,3.0,1700000000000,true,false",
    "1,-2.5,1.0,3.0,1700000000000,True,True",  # a sign: syntax ok, the validator refuses it
    "1,2.5,-0,3.0,1700000000000,True,True",
    "1,1e-05,1.0,3.0,1700000000000,True,True",  # exponent
    "1,2.,1.0,3.0,1700000000000,True,True",
    "1,.5,1.0,3.0,1700000000000,True,True",
    "1,2..5,1.0,3.0,1700000000000,True,True",
    "1,2.5,1.0,3.0,1700000000000,yes,True",
    "1,2.5,1.0,3.0,1700000000000,TRUE,True",
    "1,2.5,1.0,3.0,-1700000000000,True,True",
    "1, 2.5,1.0,3.0,1700000000000,True,True",  # a space
    "1,2.5,1.0,3.0,1700000000000,True,True\r",  # \r\n line end (well-formed)
    "1,2.5,1.0,3.0,1700000000000,True\rTrue",  # a lone \r ends a line
    "1,2.5,1.0,3.0,1735689600000000,False,True",  # µs
    "123456789012345678901234567890,2.5,1.0,3.0,1700000000000,True,True",  # beyond 64 bits
    "1," + "9" * 400 + ",1.0,3.0,1700000000000,True,True",  # float out of range
    "x" * 300,
    "id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch",
]
_CLEAN_AGG = "{id},{p},0.0{q},{f},{l},{ts},{m},True"
_DIRTY_AGG_ROWS = [
    "5,0,0,-1,-1,1700000000000,True,True",  # invalidated
    "5,1.5,1.0,10,9,1700000000000,True,True",  # bad range
    "5,1.5,1.0,-3,9,1700000000000,True,True",
    "5,1.5,1.0,3,9,1735689600000000,false,true",
    "5,1.5,1.0,3,9,1700000000000,True",
    "",
]


def _report_state(r: ArchiveReport) -> tuple[object, ...]:
    return (r.kind, r.rows, r.invalidated, r.malformed, r.header, r.microseconds, r.reasons, list(r.samples))


def _columns(path: Path, fast: bool, block_chars: int, kind: str | None = None) -> tuple[object, ...]:
    report = ArchiveReport()
    cols = list(read_archive_columns(path, kind, report, block_chars, _fast=fast))  # type: ignore[arg-type]
    flat = [(t.trade_id, t.price, t.size, t.buyer_is_maker, t.ts_event_ms, t.count) for c in cols
            for t in c.trades("ETHUSDT")]  # fmt: skip
    reprs = [repr(t[1]) + repr(t[2]) for t in flat]  # -0.0 and 0.0 are ==, not the same
    return flat, reprs, _report_state(report)


@settings(max_examples=150, deadline=None)
@given(
    agg=st.booleans(),
    picks=st.lists(st.one_of(st.integers(0, 40), st.sampled_from(range(-40, 0))), min_size=1, max_size=120),
    block_chars=st.sampled_from([1, 7, 64, 300, 5_000, 1 << 19]),
    trailing_newline=st.booleans(),
    header=st.booleans(),
    micro=st.booleans(),
)
def test_block_fast_path_equals_the_per_line_path_on_mixed_clean_and_dirty_rows(
    tmp_path_factory: pytest.TempPathFactory, agg: bool, picks: list[int], block_chars: int,
    trailing_newline: bool, header: bool, micro: bool,
) -> None:  # fmt: skip
    dirty = _DIRTY_AGG_ROWS + _DIRTY_ROWS[:3] if agg else _DIRTY_ROWS
    lines = ["aggId,p,q,f,l,T,m,M" if agg else "id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch"] if header else []
    for i, pick in enumerate(picks):
        if pick < 0:
            lines.append(dirty[pick % len(dirty)])
            continue
        ts = 1_735_000_000_000 + i
        fields = {"id": 100 + i, "p": f"{2000 + pick}.{pick:02d}" if pick % 3 else str(2000 + pick), "q": 1 + pick % 9,
                  "ts": ts * 1000 if micro and pick % 2 else ts, "m": ["True", "false", "False", "true"][pick % 4],
                  "f": 10 * i, "l": 10 * i + pick % 3}  # fmt: skip
        lines.append((_CLEAN_AGG if agg else _CLEAN_TRADE).format(**fields))
    path = tmp_path_factory.mktemp("fast") / "rows.csv"
    path.write_bytes(("\n".join(lines) + ("\n" if trailing_newline else "")).encode())
    slow = _columns(path, fast=False, block_chars=1 << 19)
    assert _columns(path, fast=True, block_chars=block_chars) == slow
    assert _columns(path, fast=True, block_chars=block_chars, kind="trades") == _columns(
        path, fast=False, block_chars=1 << 19, kind="trades"
    )


def test_one_bad_row_in_a_large_clean_file_keeps_its_line_number_and_every_other_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    per_line = []
    line = archive._RowReader.line
    monkeypatch.setattr(
        archive._RowReader, "line", lambda self, no, text, cols: per_line.append(no) or line(self, no, text, cols)
    )
    n = 50_000
    rows = [f"{i},3000.{i % 100:02d},0.5,1.0,{1_735_000_000_000 + i},{i % 2 == 0},True" for i in range(1, n + 1)]
    rows[31_337] = "31338,3000.00,0.5,1.0,1735000031338,maybe,True"
    path = tmp_path / "big.csv"
    path.write_text("\r\n".join(rows) + "\r\n")
    report = ArchiveReport()
    cols = list(read_archive_columns(path, report=report, block_chars=65_536))
    ids = [i for c in cols for i in c.trade_id]
    assert ids == [i for i in range(1, n + 1) if i != 31_338]
    assert report.rows == n - 1 and report.malformed == 1
    assert list(report.samples) == [(31_338, "bad_bool", rows[31_337])]
    assert cols[0].price[:3] == [3000.01, 3000.02, 3000.03]
    assert len(per_line) < 200 and 31_338 in per_line, "only the lines around the bad one take the slow path"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.decimals(min_value=0, max_value=10**12, allow_nan=False, places=8), min_size=1, max_size=50))
def test_fast_path_prices_are_the_floats_float_would_give(
    tmp_path_factory: pytest.TempPathFactory, values: list
) -> None:
    texts = [format(v, "f") for v in values]
    path = tmp_path_factory.mktemp("dec") / "p.csv"
    path.write_text("".join(f"{i + 1},{t},{t},1.0,1700000000000,True,True\n" for i, t in enumerate(texts)))
    report = ArchiveReport()
    got = [p for c in read_archive_columns(path, report=report) for p in c.price]
    kept = [t for t in texts if not (len(t.split(".")[0]) > 1 and t.startswith("0"))]
    assert [repr(p) for p in got] == [repr(float(t)) for t in kept] and report.malformed == 0


@given(st.text(alphabet="ab,\r\n", max_size=200), st.integers(1, 50))
def test_text_blocks_are_whole_lines_that_concatenate_to_the_text(text: str, block_chars: int) -> None:
    blocks = list(archive._text_blocks(io.StringIO(text, newline=""), block_chars))
    assert "".join(blocks) == text
    assert all(blocks) and all(b.endswith("\n") for b in blocks[:-1])


@settings(max_examples=100, deadline=None)
@given(
    files=st.lists(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), max_size=40), min_size=1, max_size=4),
    block_chars=st.sampled_from([1, 50, 200, 1 << 19]),
)
def test_columns_in_time_order_equal_merging_the_trades(
    tmp_path_factory: pytest.TempPathFactory, files: list[list[tuple[int, int]]], block_chars: int
) -> None:
    """Overlapping files, equal (time, id) across files (the files' order decides), several blocks per file."""
    directory = tmp_path_factory.mktemp("merge")
    paths = []
    for k, rows in enumerate(files):
        ts, tid, lines = 1_700_000_000_000 + k, 0, []
        for ts_step, id_step in rows:
            ts, tid = ts + ts_step, tid + id_step
            lines.append(f"{tid},{k + 1}.5,0.25,1.0,{ts},True,True")
        paths.append(directory / f"{k}.csv")
        paths[-1].write_text("".join(line + "\n" for line in lines))
    merged = [t for c in archive.read_columns_in_time_order(paths, block_chars=block_chars) for t in c.trades("X")]
    assert merged == list(merge_in_time_order(read_archive(p, "X") for p in paths))
    assert all(len(c) for c in archive.read_columns_in_time_order(paths, block_chars=block_chars))
