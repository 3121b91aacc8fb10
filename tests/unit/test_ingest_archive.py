"""Binance public-archive reader: trades and aggTrades, csv and zip, ms and µs, headers, malformed rows."""

from __future__ import annotations

import hashlib
import zipfile
from datetime import date
from pathlib import Path

import pytest

from unistream_ingest.archive import (
    ArchiveReport,
    archive_url,
    checksum_url,
    merge_in_time_order,
    read_archive,
    read_archive_batches,
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
