"""Recorder: daily Binance-format trade files that read back through the archive reader unchanged."""

from __future__ import annotations

from decimal import Decimal, localcontext
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unistream_common.packets import Tick
from unistream_ingest.archive import ArchiveReport, read_archive
from unistream_ingest.binance.parsing import parse_ws
from unistream_ingest.record import Recorder, day_file_name, format_decimal
from unistream_ingest.venue import RawTrade, TradeEvent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"
MIDNIGHT = 1_735_689_600_000  # 2025-01-01T00:00:00Z


def test_format_decimal_never_uses_exponents_and_round_trips() -> None:
    assert format_decimal(3012.55) == "3012.55"
    assert format_decimal(1e-05) == "0.00001"
    assert format_decimal(1e-08) == "0.00000001"
    assert format_decimal(2.0) == "2.0"
    assert float(format_decimal(1.2345678e-7)) == 1.2345678e-7


def test_day_file_name_uses_the_utc_day_of_the_trade_time() -> None:
    assert day_file_name("ETHUSDT", MIDNIGHT - 1) == "ETHUSDT-trades-2024-12-31.csv"
    assert day_file_name("ETHUSDT", MIDNIGHT) == "ETHUSDT-trades-2025-01-01.csv"


def test_recorded_file_is_binance_trades_csv_without_header(tmp_path: Path) -> None:
    with Recorder(tmp_path) as rec:
        rec.write(RawTrade("ETHUSDT", 1000001, 2012.55, 0.012, True, 1700000000120))
        rec.write(RawTrade("ETHUSDT", 1000003, 2012.5, 0.00001, True, 1700000000500))
    text = (tmp_path / "ETHUSDT-trades-2023-11-14.csv").read_text()
    assert text == (
        "1000001,2012.55,0.012,24.1506,1700000000120,True,True\n"
        "1000003,2012.5,0.00001,0.020125,1700000000500,True,True\n"
    )


def test_live_messages_recorded_then_read_back_give_the_same_trades(tmp_path: Path) -> None:
    trades = []
    for line in (FIXTURES / "ws_session.jsonl").read_text().splitlines():
        event = parse_ws(line)
        if isinstance(event, TradeEvent) and event.trade.count == 1 and event.trade.symbol == "ETHUSDT":
            trades.append(event.trade)
    with Recorder(tmp_path) as rec:
        for trade in trades:
            rec.write(trade)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["ETHUSDT-trades-2023-11-14.csv", "ETHUSDT-trades-2025-01-01.csv"]
    back = [t for f in files for t in read_archive(f, "ETHUSDT")]
    assert sorted(back, key=lambda t: t.trade_id) == sorted(trades, key=lambda t: t.trade_id)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 10**12),
            st.decimals(min_value="0.00000001", max_value="999999.99999999", places=8),
            st.decimals(min_value="0.00000001", max_value="99999.99999999", places=8),
            st.booleans(),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_any_binance_decimal_survives_record_and_read_back(
    tmp_path_factory: pytest.TempPathFactory, rows: list
) -> None:
    directory = tmp_path_factory.mktemp("rec")
    trades = [
        RawTrade("BTCUSDT", i + 1, float(str(p)), float(str(q)), m, MIDNIGHT + i) for i, (_, p, q, m) in enumerate(rows)
    ]
    with Recorder(directory) as rec:
        for trade in trades:
            rec.write(trade)
    report = ArchiveReport()
    assert list(read_archive(directory / "BTCUSDT-trades-2025-01-01.csv", "BTCUSDT", report=report)) == trades
    assert report.malformed == 0


def test_day_rotation_writes_each_trade_to_its_utc_day_and_appends_on_reopen(tmp_path: Path) -> None:
    before, after = MIDNIGHT - 1, MIDNIGHT
    rec = Recorder(tmp_path)
    rec.write(RawTrade("ETHUSDT", 1, 1.0, 1.0, False, before))
    rec.write(RawTrade("BTCUSDT", 7, 2.0, 1.0, False, before))
    rec.write(RawTrade("ETHUSDT", 2, 1.0, 1.0, False, after))
    rec.write(RawTrade("ETHUSDT", 3, 1.0, 1.0, False, before - 5))  # late: back to yesterday's file
    rec.close()
    rec.write_tick("ETHUSDT", Tick(4, 1.5, 2.0, "SELL", after + 1, after + 3))
    rec.close()
    ids = {f.name: [t.trade_id for t in read_archive(f, f.name[:7])] for f in tmp_path.iterdir()}
    assert ids == {
        "ETHUSDT-trades-2024-12-31.csv": [1, 3],
        "ETHUSDT-trades-2025-01-01.csv": [2, 4],
        "BTCUSDT-trades-2024-12-31.csv": [7],
    }
    last = list(read_archive(tmp_path / "ETHUSDT-trades-2025-01-01.csv", "ETHUSDT"))[-1]
    assert last == RawTrade("ETHUSDT", 4, 1.5, 2.0, True, after + 1)


def test_flush_if_due_flushes_at_most_once_per_interval(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    path = tmp_path / "ETHUSDT-trades-2025-01-01.csv"
    rec.write(RawTrade("ETHUSDT", 1, 1.0, 1.0, False, MIDNIGHT), now_ms=MIDNIGHT)
    assert path.read_text().count("\n") == 1  # the first write flushes
    rec.write(RawTrade("ETHUSDT", 2, 1.0, 1.0, False, MIDNIGHT), now_ms=MIDNIGHT + 500)
    assert path.read_text().count("\n") == 1  # buffered within the second
    assert not rec.flush_if_due(MIDNIGHT + 999)
    assert rec.flush_if_due(MIDNIGHT + 1000)
    assert path.read_text().count("\n") == 2
    rec.close()


def test_torn_last_line_after_a_crash_stays_one_malformed_row(tmp_path: Path) -> None:
    path = tmp_path / "ETHUSDT-trades-2025-01-01.csv"
    path.write_text("1,1.0,1.0,1.0,1735689600000,False,True\n2,1.0,1.0,1.0,17356")
    with Recorder(tmp_path) as rec:
        rec.write(RawTrade("ETHUSDT", 3, 1.0, 1.0, False, MIDNIGHT + 5))
    report = ArchiveReport()
    assert [t.trade_id for t in read_archive(path, "ETHUSDT", report=report)] == [1, 3]
    assert report.malformed == 1


def test_symbol_that_is_not_a_plain_venue_symbol_is_refused_before_touching_the_disk(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Recorder(tmp_path).write(RawTrade("../ETH", 1, 1.0, 1.0, False, MIDNIGHT))
    assert list(tmp_path.iterdir()) == []


def test_non_finite_numbers_are_refused_rather_than_written_as_unreadable_rows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="malformed"):
        format_decimal(float("nan"))
    with Recorder(tmp_path) as rec, pytest.raises(ValueError):
        rec.write(RawTrade("ETHUSDT", 1, float("inf"), 1.0, False, MIDNIGHT))
    assert list(tmp_path.iterdir()) == []


def test_quote_qty_is_the_exact_product_even_with_many_digits(tmp_path: Path) -> None:
    with Recorder(tmp_path) as rec:
        rec.write(RawTrade("ETHUSDT", 1, 123456.78901234567, 0.12345678901234567, False, MIDNIGHT))
    row = (tmp_path / "ETHUSDT-trades-2025-01-01.csv").read_text().split(",")
    with localcontext() as ctx:
        ctx.prec = 60
        assert Decimal(row[3]) == Decimal(row[1]) * Decimal(row[2])
    assert len(row[3].replace(".", "")) > 28  # more digits than the default decimal context keeps
