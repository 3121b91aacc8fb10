"""The aggregator's pure core: 1s bars from trades and their roll-up into 1m, 1h and 1d bars, filled
and skipped intervals, late and duplicate trades, gap markers, deferred acknowledgements, the timer,
and restarts from a checkpoint or from the bar streams.

Scenarios first, then properties (hypothesis) checked against a reference computed here in exact
integer arithmetic (prices and sizes in units of 1e-8).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction

import msgspec
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from unistream_aggregator.core import (
    CHECKPOINT_VERSION,
    AggregatorOutput,
    BarAggregator,
    EntryRef,
    SymbolCheckpoint,
)
from unistream_common.bars import BarAccumulator
from unistream_common.keys import TIMEFRAME_MS, TIMEFRAMES
from unistream_common.packets import Bar, GapMarker, Source, Tick, TickBatch

DAY = 1_700_006_400_000  # 2023-11-15 00:00:00 UTC: a day, hour and minute boundary
T0 = DAY + 3_600_000 + 10 * 60_000  # 01:10:00 that day: a minute boundary and nothing more
ETH = "ETHUSDT"
BTC = "BTCUSDT"
FAR = DAY + 10 * 86_400_000  # a wall clock long after every test trade
_trade_ids = itertools.count(1)  # rising for every symbol, as ingest guarantees

Entry = tuple[EntryRef, TickBatch | GapMarker]


def tick(ts: int, price: float = 100.0, size: float = 1.0, side: str = "BUY") -> Tick:
    """A trade with the next trade id."""
    return Tick(next(_trade_ids), price, size, side, ts, ts)  # type: ignore[arg-type]


def ref(eid: str, symbol: str = ETH) -> EntryRef:
    return (f"md:ticks:{{{symbol}}}", eid)


def entry(eid: str, *ticks: Tick, symbol: str = ETH, source: Source = "SYNTHETIC") -> Entry:
    return ref(eid, symbol), TickBatch(symbol=symbol, source=source, ticks=list(ticks))


def gap(eid: str, ts_from_ms: int, ts_to_ms: int, missing: int = 3, symbol: str = ETH) -> Entry:
    marker = GapMarker(symbol, "SYNTHETIC", 1, missing, ts_from_ms, ts_to_ms, "test", max(ts_from_ms, ts_to_ms))
    return ref(eid, symbol), marker


def of(out: AggregatorOutput | Iterable[Bar], timeframe: str = "1s") -> list[Bar]:
    bars = out.bars if isinstance(out, AggregatorOutput) else out
    return [b for b in bars if b.timeframe == timeframe]


def opens(bars: Iterable[Bar], base: int = T0) -> list[int]:
    """Open times relative to ``base`` (readable assertions)."""
    return [b.open_time_ms - base for b in bars]


def count(out: AggregatorOutput, name: str, symbol: str = ETH) -> int:
    return out.counts[name, symbol]


# --- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"grace_ms": -1}, {"max_fill_bars": -1}])
def test_negative_grace_or_fill_limit_is_refused_with_the_value(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="was negative"):
        BarAggregator(**kwargs)


# --- one 1s bar -------------------------------------------------------------------------------


def test_trades_of_one_second_make_one_bar_with_ohlcv_vwap_and_taker_buy_volume() -> None:
    agg = BarAggregator()
    out = agg.apply(
        [
            entry("1-0", tick(T0 + 10, 100.0, 1.0, "BUY"), tick(T0 + 400, 103.0, 2.0, "SELL")),
            entry("2-0", tick(T0 + 500, 99.0, 1.0, "BUY"), tick(T0 + 999, 101.0, 4.0, "SELL")),
        ]
    )
    assert out.bars == [] and out.ack == []  # the bar is still open: both entries are held
    assert out.counts == Counter()  # nothing is final yet, so nothing is counted
    out = agg.apply([entry("3-0", tick(T0 + 1_000, 102.0))])
    [bar] = out.bars
    assert (bar.open_time_ms, bar.close_time_ms) == (T0, T0 + 1_000)
    assert (bar.open, bar.high, bar.low, bar.close) == (100.0, 103.0, 99.0, 101.0)
    assert (bar.volume, bar.quote_volume, bar.taker_buy_volume) == (8.0, 809.0, 2.0)
    assert bar.vwap == 809 / 8 and bar.trade_count == 4
    assert not bar.filled and not bar.incomplete and bar.source == "SYNTHETIC" and bar.bar_type == "ETHUSDT-1s"
    assert out.ack == [ref("1-0"), ref("2-0")]
    assert count(out, "ticks_applied") == 4 and count(out, "bars_1s") == 1
    assert agg.held() == [ref("3-0")]


def test_sums_are_the_exact_decimals_not_float_accumulations() -> None:
    agg = BarAggregator()
    # In floats, ten times 0.1 adds up to 0.9999999999999999 and ten times 0.1 * 0.1 to 0.10000000000000003.
    agg.apply([entry("1-0", *[tick(T0 + i, 0.1, 0.1, "BUY") for i in range(10)])])
    [bar] = of(agg.close_due(FAR))
    assert (bar.volume, bar.taker_buy_volume, bar.quote_volume, bar.vwap) == (1.0, 1.0, 0.1, 0.1)


def test_bars_are_utc_aligned_and_left_closed() -> None:
    agg = BarAggregator()
    out = agg.apply([entry("1-0", tick(T0 + 999, 1.0), tick(T0 + 1_000, 2.0), tick(T0 + 2_000, 3.0))])
    out.extend(agg.close_due(T0 + 3_250))
    assert [(b.open_time_ms - T0, b.close_time_ms - T0, b.close) for b in of(out)] == [
        (0, 1_000, 1.0),
        (1_000, 2_000, 2.0),
        (2_000, 3_000, 3.0),
    ]


# --- duplicates and late trades ---------------------------------------------------------------


def test_a_batch_re_sent_with_the_same_trade_ids_is_counted_duplicate_and_acknowledged_at_once() -> None:
    agg = BarAggregator()
    trades = [tick(T0 + 100, 10.0), tick(T0 + 200, 11.0)]
    agg.apply([entry("1-0", *trades)])
    out = agg.apply([entry("2-0", *trades)])  # ingest wrote it twice
    assert out.ack == [ref("2-0")] and count(out, "ticks_duplicate") == 2 and count(out, "ticks_applied") == 0
    [bar] = of(agg.close_due(FAR))
    assert bar.trade_count == 2 and bar.volume == 2.0


def test_a_trade_id_at_or_below_the_highest_seen_is_a_duplicate_whatever_its_time_and_price() -> None:
    agg = BarAggregator()
    first = tick(T0 + 100, 10.0)
    agg.apply([entry("1-0", first, tick(T0 + 200, 11.0))])
    again = Tick(first.trade_id, 50.0, 9.0, "SELL", T0 + 300, T0 + 300)
    out = agg.apply([entry("2-0", again)])
    assert count(out, "ticks_duplicate") == 1
    [bar] = of(agg.close_due(FAR))
    assert (bar.high, bar.trade_count) == (11.0, 2)


def test_late_trade_for_a_closed_interval_is_counted_and_not_applied() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100, 10.0, 1.0))])
    first = agg.apply([entry("2-0", tick(T0 + 1_100, 11.0, 1.0))]).bars
    out = agg.apply([entry("3-0", tick(T0 + 900, 99.0, 5.0), tick(T0 + 1_200, 12.0, 2.0))])
    assert out.bars == [] and out.ack == []  # 3-0 waits for the bar of its second trade
    assert count(out, "ticks_late") == 1  # counted now, with the checkpoint that records it
    assert out.checkpoints[ETH].counted_through == "3-0"
    out = agg.close_due(T0 + 10_000)
    assert count(out, "ticks_late") == 0 and count(out, "ticks_applied") == 2  # the trades of the bar it closed
    assert count(out, "ticks_already_applied") == 0
    bar = of(out)[0]
    assert bar.open_time_ms == T0 + 1_000 and bar.volume == 3.0 and bar.high == 12.0
    assert first[0].volume == 1.0  # the emitted bar is final


def test_entry_with_only_late_or_duplicate_trades_is_acknowledged_at_once() -> None:
    agg = BarAggregator()
    first = tick(T0 + 100)
    seen = tick(T0 + 1_100)
    agg.apply([entry("1-0", first), entry("2-0", seen)])
    out = agg.apply([entry("3-0", tick(T0 + 200), seen)])
    assert out.ack == [ref("3-0")] and out.bars == []
    assert count(out, "ticks_late") == 1 and count(out, "ticks_duplicate") == 1
    assert out.checkpoints[ETH].last_open_ms == T0


def test_the_same_entry_delivered_twice_is_not_acknowledged_before_its_bar_is_emitted() -> None:
    agg = BarAggregator()
    twice = entry("1-0", tick(T0 + 100))
    out = agg.apply([twice, twice])
    assert count(out, "ticks_duplicate") == 0  # a redelivery of one entry, not a duplicate trade
    assert out.ack == []  # acknowledging now would lose the trade if the process died before the bar
    out = agg.apply([entry("2-0", tick(T0 + 1_100))])
    assert out.ack == [ref("1-0")] and [b.trade_count for b in of(out)] == [1]


# --- filled and skipped intervals -------------------------------------------------------------


def test_empty_intervals_become_flat_filled_bars_at_the_previous_close() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100, 50.0), tick(T0 + 900, 51.5))])
    out = agg.apply([entry("2-0", tick(T0 + 4_200, 60.0))])
    assert opens(of(out)) == [0, 1_000, 2_000, 3_000]
    for b in of(out)[1:]:
        assert b.filled and b.trade_count == 0 and b.volume == 0 and b.quote_volume == 0
        assert b.open == b.high == b.low == b.close == b.vwap == 51.5
    assert count(out, "bars_filled") == 3 and count(out, "bars_1s") == 4


def test_a_run_of_empty_intervals_longer_than_max_fill_bars_is_skipped_and_counted() -> None:
    agg = BarAggregator(max_fill_bars=3)
    agg.apply([entry("1-0", tick(T0))])
    out = agg.apply([entry("2-0", tick(T0 + 5_000))])
    assert opens(of(out)) == [0]
    assert count(out, "intervals_skipped") == 4 and count(out, "bars_filled") == 0
    out = agg.apply([entry("3-0", tick(T0 + 3_000))])  # inside the skipped run: already closed
    assert count(out, "ticks_late") == 1
    out = agg.apply([entry("4-0", tick(T0 + 6_000))])
    assert opens(of(out)) == [5_000]


def test_a_run_of_exactly_max_fill_bars_empty_intervals_is_filled() -> None:
    agg = BarAggregator(max_fill_bars=3)
    agg.apply([entry("1-0", tick(T0))])
    out = agg.apply([entry("2-0", tick(T0 + 4_000))])
    assert opens(of(out)) == [0, 1_000, 2_000, 3_000] and count(out, "intervals_skipped") == 0


def test_nothing_is_filled_before_a_symbols_first_bar() -> None:
    agg = BarAggregator()
    out = agg.apply([entry("1-0", tick(T0 + 7_000))])
    out.extend(agg.close_due(T0 + 9_000))
    assert opens(of(out)) == [7_000]


# --- higher timeframes ------------------------------------------------------------------------


def test_a_1m_bar_is_the_roll_up_of_its_1s_bars_and_comes_right_after_the_last_of_them() -> None:
    agg = BarAggregator()
    out = agg.apply(
        [
            entry("1-0", tick(T0 + 500, 100.0, 1.0, "BUY")),
            entry("2-0", tick(T0 + 30_200, 105.0, 2.0, "SELL")),
            entry("3-0", tick(T0 + 45_000, 95.0, 0.5, "BUY")),
            entry("4-0", tick(T0 + 59_900, 99.0, 1.5, "SELL")),
        ]
    )
    assert of(out, "1m") == []
    out.extend(agg.apply([entry("5-0", tick(T0 + 60_100, 120.0))]))
    assert [(b.timeframe, b.open_time_ms - T0) for b in out.bars[-2:]] == [("1s", 59_000), ("1m", 0)]
    [minute] = of(out, "1m")
    assert (minute.open, minute.high, minute.low, minute.close) == (100.0, 105.0, 95.0, 99.0)
    assert (minute.volume, minute.taker_buy_volume, minute.trade_count) == (5.0, 1.5, 4)
    assert minute.quote_volume == 100 + 210 + 47.5 + 148.5 and minute.vwap == 506 / 5
    assert not minute.filled and minute.close_time_ms == T0 + 60_000
    assert count(out, "bars_1s") == 60 and count(out, "bars_filled") == 56


def test_a_1m_bar_of_only_filled_seconds_is_filled_at_the_previous_close() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 - 500, 42.0))])
    out = agg.apply([entry("2-0", tick(T0 + 60_500, 43.0))])
    [_, minute] = of(out, "1m")
    assert minute.open_time_ms == T0 and minute.filled and minute.trade_count == 0 and minute.volume == 0
    assert minute.open == minute.high == minute.low == minute.close == minute.vwap == 42.0


def test_the_last_second_of_a_day_closes_its_1m_1h_and_1d_bars_in_that_order() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(DAY - 1_500, 7.0))])
    out = agg.apply([entry("2-0", tick(DAY + 200, 8.0))])
    assert [(b.timeframe, b.open_time_ms - DAY) for b in out.bars] == [
        ("1s", -2_000),
        ("1s", -1_000),
        ("1m", -60_000),
        ("1h", -3_600_000),
        ("1d", -86_400_000),
    ]
    for bar in out.bars[2:]:
        assert (bar.open, bar.close, bar.trade_count, bar.volume, bar.filled) == (7.0, 7.0, 1, 1.0, False)


def test_a_higher_bar_whose_end_passed_inside_a_skipped_run_is_emitted_with_the_next_1s_bar() -> None:
    agg = BarAggregator(max_fill_bars=5)
    agg.apply([entry("1-0", tick(T0 + 58_500, 10.0))])
    out = agg.apply([entry("2-0", tick(T0 + 120_500, 11.0))])  # skips 61 s, the whole next minute
    assert opens(of(out)) == [58_000] and of(out, "1m") == [] and count(out, "intervals_skipped") == 61
    out = agg.apply([entry("3-0", tick(T0 + 121_500, 12.0))])
    assert [(b.timeframe, b.open_time_ms - T0) for b in out.bars] == [("1s", 120_000), ("1m", 0)]
    assert of(out, "1m")[0].close == 10.0  # made of the 1s bars before the run, no bar for minute 1


# --- acknowledgements -------------------------------------------------------------------------


def test_entry_is_acknowledged_only_with_the_last_bar_its_trades_went_into() -> None:
    agg = BarAggregator()
    out = agg.apply([entry("1-0", tick(T0 + 100), tick(T0 + 1_100))])  # spans two bars
    assert opens(of(out)) == [0]
    assert out.ack == []  # its second trade sits in the open bar
    assert agg.held() == [ref("1-0")]
    out = agg.apply([entry("2-0", tick(T0 + 1_500)), entry("3-0", tick(T0 + 2_000))])
    assert opens(of(out)) == [1_000]
    assert out.ack == [ref("1-0"), ref("2-0")]
    assert agg.held() == [ref("3-0")]


def test_acks_of_one_symbol_are_not_held_by_another_symbols_open_bar() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100), symbol=ETH), entry("1-0", tick(T0 + 100), symbol=BTC)])
    out = agg.apply([entry("2-0", tick(T0 + 1_100), symbol=ETH)])
    assert out.ack == [ref("1-0", ETH)]
    assert [b.symbol for b in out.bars] == [ETH]
    assert list(out.checkpoints) == [ETH]
    assert sorted(agg.held()) == sorted([ref("1-0", BTC), ref("2-0", ETH)])


def test_drop_forgets_a_symbol_and_returns_the_entries_it_held() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100), symbol=ETH), entry("1-0", tick(T0 + 100), symbol=BTC)])
    assert agg.drop(ETH) == [ref("1-0", ETH)]
    assert agg.symbols == [BTC] and agg.held() == [ref("1-0", BTC)] and agg.drop(ETH) == []


# --- timer ------------------------------------------------------------------------------------


def test_timer_closes_an_open_bar_only_after_its_end_plus_grace() -> None:
    agg = BarAggregator(grace_ms=250)
    agg.apply([entry("1-0", tick(T0 + 100))])
    assert agg.due_symbols(T0 + 1_249) == []
    out = agg.close_due(T0 + 1_249)
    assert out.bars == [] and out.ack == []
    assert agg.due_symbols(T0 + 1_250) == [ETH]
    out = agg.close_due(T0 + 1_250)
    assert opens(of(out)) == [0] and out.ack == [ref("1-0")] and count(out, "ticks_applied") == 1
    assert out.checkpoints[ETH].last_open_ms == T0
    out = agg.apply([entry("2-0", tick(T0 + 999))])  # after the timer closed it: late
    assert count(out, "ticks_late") == 1 and out.ack == [ref("2-0")]


def test_timer_fills_quiet_seconds_of_a_live_source_up_to_now_minus_grace() -> None:
    agg = BarAggregator(grace_ms=250)
    agg.apply([entry("1-0", tick(T0 + 100, 5.0))])
    out = agg.close_due(T0 + 4_300)  # intervals ending at or before T0 + 4_050 may close
    assert opens(of(out)) == [0, 1_000, 2_000, 3_000] and [b.filled for b in of(out)] == [False, True, True, True]
    assert all(b.close == 5.0 for b in of(out)) and count(out, "bars_filled") == 3
    assert agg.close_due(T0 + 4_300).bars == []
    assert opens(of(agg.close_due(T0 + 5_250))) == [4_000]
    out = agg.apply([entry("2-0", tick(T0 + 5_100, 6.0))])  # the next interval is still open: applied
    assert count(out, "ticks_late") == 0 and agg.held() == [ref("2-0")]


def test_timer_does_nothing_for_replay_sources() -> None:
    agg = BarAggregator(grace_ms=0)
    agg.apply([entry("1-0", tick(T0 + 100), source="REPLAY")])
    assert agg.due_symbols(FAR) == []
    out = agg.close_due(FAR)
    assert out.bars == [] and out.ack == [] and out.checkpoints == {}
    assert agg.held() == [ref("1-0")]
    out = agg.apply([entry("2-0", tick(T0 + 3_100), source="REPLAY")])  # event time closes replay bars
    assert opens(of(out)) == [0, 1_000, 2_000] and out.ack == [ref("1-0")]


def test_next_due_ms_is_the_end_plus_grace_of_the_open_bar_then_of_each_empty_second() -> None:
    agg = BarAggregator(grace_ms=250)
    assert agg.next_due_ms() is None
    agg.apply([entry("1-0", tick(T0 + 100))])
    assert agg.next_due_ms() == T0 + 1_250
    assert agg.close_due(T0 + 1_249).bars == []
    assert opens(of(agg.close_due(T0 + 1_250))) == [0]
    assert agg.next_due_ms() == T0 + 2_250
    assert agg.close_due(T0 + 2_249).bars == []
    assert opens(of(agg.close_due(T0 + 2_250))) == [1_000]


def test_next_due_ms_ignores_replay_sources() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100), source="REPLAY")])
    assert agg.next_due_ms() is None
    agg.apply([entry("1-0", tick(T0 + 100), symbol=BTC)])
    assert agg.next_due_ms() == T0 + 1_250


def test_timer_leaves_alone_symbols_the_caller_says_are_not_caught_up() -> None:
    agg = BarAggregator(grace_ms=0)
    agg.apply([entry("1-0", tick(T0 + 100), symbol=ETH), entry("1-0", tick(T0 + 100), symbol=BTC)])
    assert sorted(agg.due_symbols(T0 + 5_000)) == [BTC, ETH]
    out = agg.close_due(T0 + 5_000, symbols=[BTC])
    assert {b.symbol for b in out.bars} == {BTC} and list(out.checkpoints) == [BTC]
    assert agg.held() == [ref("1-0", ETH)]


def test_timer_closes_no_interval_ending_after_the_writer_s_watermark() -> None:
    # ingest buffered the trades of T0+1s.. while Redis was down: its watermark stands at T0 + 1_200
    agg = BarAggregator(grace_ms=250)
    agg.apply([entry("1-0", tick(T0 + 100, 5.0))])
    out = agg.close_due(T0 + 9_000, watermarks={ETH: T0 + 1_200})
    assert opens(of(out)) == [0], "the bar that ended before the watermark closes; no second after it is filled"
    assert agg.close_due(T0 + 9_000, watermarks={ETH: T0 + 1_999}).bars == []
    # the buffered trades arrive: they are in their bars, not late
    out = agg.apply([entry("2-0", tick(T0 + 1_500, 6.0), tick(T0 + 3_400, 7.0))])
    assert count(out, "ticks_late") == 0 and opens(of(out)) == [1_000, 2_000]
    assert [b.filled for b in of(out)] == [False, True]
    out = agg.close_due(T0 + 9_000, watermarks={ETH: T0 + 9_000 - 250})  # caught up: the wall clock again
    assert opens(of(out)) == [3_000, 4_000, 5_000, 6_000, 7_000]


def test_the_timer_closes_bars_by_the_venue_s_clock_ahead_of_or_behind_this_host_s() -> None:
    # This host's clock runs 1 s ahead of the venue's (offset +1,000): by the host's clock the
    # second [T0, T0+1s) ended + grace long ago, by the venue's it has not: its trades still come.
    agg = BarAggregator(grace_ms=250)
    agg.apply([entry("1-0", tick(T0 + 100, 5.0))])
    now = T0 + 1_000 + 250 + 500  # host
    assert agg.close_due(now, venue_offsets={ETH: 1_000}).bars == [], "by the venue's clock it is T0 + 750"
    out = agg.apply([entry("2-0", tick(T0 + 900, 6.0))])  # a trade the host's clock would have made late
    assert count(out, "ticks_late") == 0
    out = agg.close_due(now + 1_000, venue_offsets={ETH: 1_000})
    assert opens(of(out)) == [0] and of(out)[0].trade_count == 2
    # a venue ahead of this host (offset -1,000): its seconds close a second before the host's clock says
    ahead = BarAggregator(grace_ms=250)
    ahead.apply([entry("1-0", tick(T0 + 100, 5.0))])
    early = T0 + 250 + 10  # host; the venue's clock reads T0 + 1,260
    assert ahead.due_symbols(early) == [] and ahead.close_due(early).bars == [], "by the host's clock: not yet"
    assert ahead.due_symbols(early, venue_offsets={ETH: -1_000}) == [ETH]
    assert opens(of(ahead.close_due(early, venue_offsets={ETH: -1_000}))) == [0]


def test_timer_holds_only_the_symbols_that_have_a_watermark() -> None:
    agg = BarAggregator(grace_ms=0)
    agg.apply([entry("1-0", tick(T0 + 100), symbol=ETH), entry("1-0", tick(T0 + 100), symbol=BTC)])
    out = agg.close_due(T0 + 3_000, watermarks={ETH: T0 + 500})
    assert {b.symbol for b in out.bars} == {BTC}, "no watermark (another producer): the wall clock decides"
    assert agg.held() == [ref("1-0", ETH)]


def test_timer_leaves_a_run_longer_than_max_fill_bars_to_the_next_trade_which_counts_it_once() -> None:
    agg = BarAggregator(grace_ms=0, max_fill_bars=3)
    agg.apply([entry("1-0", tick(T0 + 100, 5.0))])
    out = agg.close_due(T0 + 10_000)  # emits the open bar; 8 empty seconds are more than 3
    assert opens(of(out)) == [0] and count(out, "intervals_skipped") == 0
    for now in (T0 + 11_000, T0 + 12_500, T0 + 20_000):
        later = agg.close_due(now)
        assert later.bars == [] and later.counts == Counter()
    assert agg.due_symbols(T0 + 20_000) == []
    out = agg.apply([entry("2-0", tick(T0 + 20_100, 6.0))])
    assert count(out, "intervals_skipped") == 19 and out.bars == []
    out = agg.close_due(T0 + 21_000)
    assert opens(of(out)) == [20_000] and count(out, "intervals_skipped") == 0


@pytest.mark.parametrize("now_after_t0", [4_000, 4_500, 4_999])
def test_timer_fills_a_run_of_max_fill_bars_whatever_the_millisecond_it_runs_at(now_after_t0: int) -> None:
    agg = BarAggregator(grace_ms=0, max_fill_bars=3)
    agg.apply([entry("1-0", tick(T0 + 100, 5.0))])
    agg.close_due(T0 + 1_000)
    out = agg.close_due(T0 + now_after_t0)  # seconds 1, 2 and 3 have ended, the fourth has not
    assert opens(of(out)) == [1_000, 2_000, 3_000]  # within max_fill_bars, whenever the timer runs


# --- gap markers ------------------------------------------------------------------------------


def test_gap_marker_flags_the_1s_bars_overlapping_its_range_and_the_1m_bar_containing_them() -> None:
    agg = BarAggregator()
    out = agg.apply(
        [
            entry("1-0", tick(T0 + 57_500, 10.0)),
            gap("2-0", T0 + 57_600, T0 + 58_200, missing=5),  # trades lost between these times
            entry("3-0", tick(T0 + 58_200, 11.0)),
            entry("4-0", tick(T0 + 59_500, 12.0)),
            entry("5-0", tick(T0 + 60_100, 13.0)),
        ]
    )
    assert [(b.open_time_ms - T0, b.incomplete) for b in of(out)] == [
        (57_000, True),
        (58_000, True),
        (59_000, False),
    ]
    assert [b.incomplete for b in of(out, "1m")] == [True]
    assert count(out, "gaps") == 1 and count(out, "trades_missing") == 5 and count(out, "bars_incomplete") == 2
    out = agg.close_due(FAR)
    assert [b.incomplete for b in out.bars] == [False]  # the next minute has no part of the gap


def test_gap_marker_is_acknowledged_with_the_open_bar_it_flags() -> None:
    agg = BarAggregator()
    out = agg.apply([gap("1-0", T0 - 5_000, T0 - 4_000)])  # nothing open: acknowledged at once
    assert out.ack == [ref("1-0")] and count(out, "gaps") == 1 and count(out, "trades_missing") == 3
    agg.apply([entry("2-0", tick(T0 + 100))])
    out = agg.apply([gap("3-0", T0 + 200, T0 + 300)])
    assert out.ack == [] and count(out, "gaps") == 1  # counted at once, acknowledged with the bar
    out = agg.apply([entry("4-0", tick(T0 + 1_100))])
    assert out.ack == [ref("2-0"), ref("3-0")] and count(out, "gaps") == 0
    assert [b.incomplete for b in out.bars] == [True]


def test_open_gap_marker_flags_every_bar_up_to_the_next_trade() -> None:
    agg = BarAggregator()
    out = agg.apply(
        [
            entry("1-0", tick(T0 + 100, 10.0)),
            gap("2-0", T0 + 100, 0),  # the end is not known yet
            entry("3-0", tick(T0 + 3_500, 11.0)),
            entry("4-0", tick(T0 + 4_500, 12.0)),
        ]
    )
    assert [(b.open_time_ms - T0, b.filled, b.incomplete) for b in of(out)] == [
        (0, False, True),
        (1_000, True, True),
        (2_000, True, True),
        (3_000, False, True),  # holds the first trade after the gap
    ]
    assert [b.incomplete for b in of(agg.close_due(FAR))] == [False]


def test_open_gap_marker_without_a_start_begins_at_the_open_bar() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 1_100, 10.0))])
    out = agg.apply([gap("2-0", 0, 0), entry("3-0", tick(T0 + 2_500, 11.0)), entry("4-0", tick(T0 + 3_100, 12.0))])
    assert [(b.open_time_ms - T0, b.incomplete) for b in of(out)] == [(1_000, True), (2_000, True)]


def test_open_gap_marker_is_closed_by_the_next_trade_even_in_the_same_second() -> None:
    # Ingest writes the marker in order with the trades: the next trade after it is the first after
    # the gap, so nothing is missing after that trade, wherever its second.
    agg = BarAggregator()
    out = agg.apply(
        [
            entry("1-0", tick(T0 + 100, 10.0)),
            gap("2-0", T0 + 100, 0),
            entry("3-0", tick(T0 + 500, 11.0)),  # the first trade after the gap, same second
            entry("4-0", tick(T0 + 1_500, 12.0)),
            entry("5-0", tick(T0 + 2_500, 13.0)),
        ]
    )
    assert [(b.open_time_ms - T0, b.incomplete) for b in of(out)] == [(0, True), (1_000, False)]


def test_gap_marker_for_seconds_already_emitted_flags_only_the_forming_higher_bars() -> None:
    agg = BarAggregator()
    first = agg.apply([entry("1-0", tick(T0 + 100, 10.0)), entry("2-0", tick(T0 + 1_100, 11.0))])
    assert [b.incomplete for b in of(first)] == [False]
    agg.apply([gap("3-0", T0 + 200, T0 + 300)])  # lost trades of a bar that is final already
    assert agg.forming_bars(ETH)["1m"].incomplete
    out = agg.apply([entry("4-0", tick(T0 + 59_100, 12.0)), entry("5-0", tick(T0 + 60_100, 13.0))])
    assert not any(b.incomplete for b in of(out))
    assert [b.incomplete for b in of(out, "1m")] == [True]


# --- forming bars -----------------------------------------------------------------------------


def test_forming_bars_show_the_open_1s_bar_and_the_higher_bars_including_it() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100, 10.0, 1.0)), entry("2-0", tick(T0 + 1_100, 12.0, 2.0))])
    agg.apply([entry("3-0", tick(T0 + 1_200, 9.0, 1.0))])
    before = agg.checkpoint(ETH)
    forming = agg.forming_bars(ETH)
    assert sorted(forming) == sorted(TIMEFRAMES)
    assert (forming["1s"].open_time_ms, forming["1s"].volume, forming["1s"].close) == (T0 + 1_000, 3.0, 9.0)
    for tf in ("1m", "1h", "1d"):
        bar = forming[tf]
        assert bar.open_time_ms == T0 - T0 % TIMEFRAME_MS[tf]
        assert (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trade_count) == (10.0, 12.0, 9.0, 9.0, 4.0, 3)
    assert agg.checkpoint(ETH) == before and agg.forming_bars(ETH) == forming  # a view: nothing changed


def test_forming_bars_of_a_symbol_never_seen_are_empty() -> None:
    assert BarAggregator().forming_bars(ETH) == {}


def test_forming_bars_after_the_timer_show_only_the_higher_timeframes() -> None:
    agg = BarAggregator(grace_ms=0)
    agg.apply([entry("1-0", tick(T0 + 100, 10.0))])
    agg.close_due(T0 + 1_000)
    assert sorted(agg.forming_bars(ETH)) == ["1d", "1h", "1m"]


# --- restarts ---------------------------------------------------------------------------------


def test_restore_continues_after_the_checkpoint_and_counts_redelivered_trades_already_applied() -> None:
    agg = BarAggregator()
    e1 = entry("1-0", tick(T0 + 100, 10.0), tick(T0 + 1_100, 11.0))
    e2 = entry("2-0", tick(T0 + 1_900, 11.5), tick(T0 + 2_100, 12.0))
    out = agg.apply([e1, e2])
    assert opens(of(out)) == [0, 1_000] and out.ack == [ref("1-0")]
    checkpoint = out.checkpoints[ETH]  # committed with those bars; then the process dies

    restarted = BarAggregator()
    restarted.restore(ETH, checkpoint)
    out = restarted.apply([e2])  # redelivered: never acknowledged
    assert out.bars == [] and out.ack == []
    assert count(out, "ticks_already_applied") == 1  # its first trade is in the bar at 1 s
    out = restarted.apply([entry("3-0", tick(T0 + 4_000, 13.0))])
    assert [(b.open_time_ms - T0, b.filled, b.close) for b in of(out)] == [(2_000, False, 12.0), (3_000, True, 12.0)]
    assert out.ack == [ref("2-0")]
    assert count(out, "ticks_applied") == 1


def test_restore_continues_the_forming_higher_bars_of_the_checkpoint() -> None:
    agg = BarAggregator()
    first = entry("1-0", tick(T0 + 100, 10.0))
    held = entry("2-0", tick(T0 + 30_100, 20.0))
    out = agg.apply([first, held])
    restarted = BarAggregator()
    restarted.restore(ETH, out.checkpoints[ETH])
    out = restarted.apply([held, entry("3-0", tick(T0 + 60_100, 5.0))])
    [minute] = of(out, "1m")
    assert (minute.open, minute.high, minute.low, minute.close, minute.trade_count) == (10.0, 20.0, 10.0, 20.0, 2)


def test_restore_drops_the_open_bar_and_held_entries() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100))])
    assert agg.held() == [ref("1-0")]
    agg.restore(ETH, None)
    assert agg.held() == [] and agg.close_due(FAR).bars == [] and agg.forming_bars(ETH) == {}


def test_restore_refuses_a_checkpoint_of_another_symbol_or_version() -> None:
    agg = BarAggregator()
    checkpoint = SymbolCheckpoint(CHECKPOINT_VERSION, BTC, T0, 1.0, 5, {}, [], "SYNTHETIC")
    with pytest.raises(ValueError, match="restore of ETHUSDT got the checkpoint of BTCUSDT"):
        agg.restore(ETH, checkpoint)
    newer = msgspec.structs.replace(checkpoint, symbol=ETH, version=CHECKPOINT_VERSION + 1)
    with pytest.raises(ValueError, match="version"):
        agg.restore(ETH, newer)


def test_a_version_1_checkpoint_s_forming_quote_sums_of_exact_products_become_units_of_1e_8() -> None:
    agg = BarAggregator()
    forming = BarAccumulator(T0, 100.0, 100.0, 100.0, 100.0, volume=3, quote=12_345_678_912_345_678, count=2, real=True)
    agg.restore(ETH, SymbolCheckpoint(1, ETH, T0, 100.0, 5, {"1m": forming}, [], "SYNTHETIC"))
    now = agg.checkpoint(ETH)
    assert now.version == CHECKPOINT_VERSION == 2
    assert now.forming["1m"].quote == 123_456_789  # 1.23456789123... in 1e-16 units -> 1.23456789


def test_checkpoint_is_a_copy_that_later_trades_do_not_change() -> None:
    agg = BarAggregator()
    out = agg.apply([entry("1-0", tick(T0 + 100, 10.0)), entry("2-0", tick(T0 + 1_100, 11.0))])
    checkpoint = out.checkpoints[ETH]
    frozen = msgspec.json.encode(checkpoint)
    agg.apply([entry("3-0", tick(T0 + 2_100, 12.0)), entry("4-0", tick(T0 + 3_100, 13.0))])
    assert msgspec.json.encode(checkpoint) == frozen


def test_skipped_intervals_are_not_counted_again_when_their_trade_is_redelivered_after_a_restart() -> None:
    agg = BarAggregator(max_fill_bars=2)
    agg.apply([entry("1-0", tick(T0))])
    later = entry("2-0", tick(T0 + 10_000))
    out = agg.apply([later])  # skips 9 intervals; 2-0 is held by its open bar
    committed = Counter(out.counts)
    assert committed["intervals_skipped", ETH] == 9

    restarted = BarAggregator(max_fill_bars=2)
    restarted.restore(ETH, out.checkpoints[ETH])
    committed.update(restarted.apply([later]).counts)  # redelivered: not acknowledged
    committed.update(restarted.close_due(FAR).counts)
    assert committed["intervals_skipped", ETH] == 9  # the same 9 seconds, however often their trade comes


def test_committed_ticks_applied_equal_the_trades_in_committed_bars_across_a_restart() -> None:
    agg = BarAggregator()
    spanning = entry("1-0", tick(T0 + 100), tick(T0 + 1_100))  # its first trade's bar is emitted
    out = agg.apply([spanning])
    committed = Streams()
    committed.commit(out)
    restarted = BarAggregator()
    restarted.restore(ETH, out.checkpoints[ETH])
    committed.commit(restarted.apply([spanning]))
    committed.commit(restarted.close_due(FAR))
    assert sum(b.trade_count for b in committed.bars[ETH, "1s"]) == 2
    assert committed.counts["ticks_already_applied", ETH] == 1
    assert committed.counts["ticks_applied", ETH] == 2


def test_late_and_duplicate_trades_of_a_redelivered_entry_keep_their_counts_across_a_restart() -> None:
    first = tick(T0 + 100)
    # Its second trade is late and its third a duplicate; its bar T0 + 1 s is emitted while its
    # last trade holds it in the open bar T0 + 2 s.
    spanning = entry("2-0", tick(T0 + 1_100), tick(T0 + 500), first, tick(T0 + 1_200), tick(T0 + 2_100))
    calls = [[entry("1-0", first)], [spanning]]
    reference = run(calls)
    assert (reference.counts["ticks_late", ETH], reference.counts["ticks_duplicate", ETH]) == (1, 1)

    agg = BarAggregator()
    committed = Streams()
    for call in calls:
        committed.commit(agg.apply(call))
    restarted = BarAggregator()
    restarted.restore(ETH, committed.checkpoints[ETH])
    committed.commit(restarted.apply([spanning]))  # redelivered: never acknowledged
    committed.commit(restarted.close_due(FAR))
    assert committed.all_bars() == reference.all_bars()
    # as without the restart: they were never counted, since their entry was never acknowledged
    assert (committed.counts["ticks_late", ETH], committed.counts["ticks_duplicate", ETH]) == (1, 1)


def test_restore_from_bars_continues_after_the_last_1s_bar_with_the_forming_higher_bars() -> None:
    agg = BarAggregator()
    e1 = entry("1-0", tick(T0 + 100, 10.0, 1.0), tick(T0 + 1_100, 11.0, 2.0))
    e2 = entry("2-0", tick(T0 + 1_900, 9.0, 1.0), tick(T0 + 2_100, 12.0, 1.0))
    emitted = agg.apply([e1, e2]).bars

    restarted = BarAggregator()
    restarted.restore_from_bars(ETH, {"1s": emitted[-1], "1m": None, "1h": None, "1d": None}, {"1m": emitted})
    out = restarted.apply([e2])  # redelivered: its first trade is in an emitted bar (known by its time)
    assert out.bars == [] and out.ack == []
    assert count(out, "ticks_already_applied") == 1 and count(out, "ticks_late") == 0
    out = restarted.apply([entry("3-0", tick(T0 + 60_500, 13.0))])
    [minute] = of(out, "1m")
    assert (minute.open, minute.high, minute.low, minute.close, minute.trade_count) == (10.0, 12.0, 9.0, 12.0, 4)
    assert minute.volume == 5.0


def test_restore_from_empty_bar_streams_starts_fresh() -> None:
    agg = BarAggregator()
    agg.restore_from_bars(ETH, dict.fromkeys(TIMEFRAMES), {})
    assert agg.checkpoint(ETH).last_open_ms is None and agg.forming_bars(ETH) == {}


# --- reference model --------------------------------------------------------------------------

SCALE = 10**8
PRICES = (
    "0.00000001",
    "0.29",
    "0.57",
    "4.35",
    "99.5",
    "100.25",
    "1234.56789012",
    "61234.98765432",
)  # most x 1e8 are not integers in floats
PRICE_UNITS = {float(p): int(Decimal(p) * SCALE) for p in PRICES}


def size_units(t: Tick) -> int:
    return int(Decimal(repr(t.size)) * SCALE)


def second(ts_ms: int) -> int:
    return ts_ms - ts_ms % 1_000


def classify(ticks: Iterable[Tick]) -> tuple[list[Tick], int, int]:
    """(applied trades, late, duplicate) by the stated rules: ids rise, closed intervals stay closed."""
    applied: list[Tick] = []
    late = dup = 0
    highest_id = -1
    newest: int | None = None
    for t in ticks:
        if t.trade_id <= highest_id:
            dup += 1
            continue
        highest_id = t.trade_id
        if newest is not None and second(t.ts_event_ms) < newest:
            late += 1
            continue
        newest = second(t.ts_event_ms)
        applied.append(t)
    return applied, late, dup


def exact(trades: Sequence[Tick]) -> tuple[int, int, int]:
    """(volume, taker-buy volume, quote volume) in 1e-8 units; the quote volume as Binance sums it,
    each trade's notional (price x size) truncated to 8 decimals, computed here in decimal."""
    volume = sum(size_units(t) for t in trades)
    taker = sum(size_units(t) for t in trades if t.aggressor_side == "BUY")
    quote = sum(
        int((Decimal(repr(t.price)) * Decimal(repr(t.size))).scaleb(8).to_integral_value(rounding=ROUND_DOWN))
        for t in trades
    )
    return volume, taker, quote


def correctly_rounded(x: Fraction) -> float:
    return x.numerator / x.denominator  # int / int is correctly rounded in Python


def reference_1s(applied: Sequence[Tick], max_fill_bars: int) -> tuple[list[tuple], int]:
    """Expected 1s bars as tuples (see :func:`as_tuple`) and the intervals skipped."""
    by_second: dict[int, list[Tick]] = {}
    for t in applied:
        by_second.setdefault(second(t.ts_event_ms), []).append(t)
    out: list[tuple] = []
    skipped = 0
    prev: tuple[int, float] | None = None
    for open_ms, trades in by_second.items():
        if prev is not None:
            missing = (open_ms - prev[0]) // 1_000 - 1
            if missing > max_fill_bars:
                skipped += missing
            else:
                level = prev[1]
                out += [(prev[0] + 1_000 * k, level, level, level, level, 0.0, 0.0, 0.0, 0, level, True)
                        for k in range(1, missing + 1)]  # fmt: skip
        prices = [t.price for t in trades]
        volume, taker, quote = exact(trades)
        vwap = min(max(correctly_rounded(Fraction(quote, volume)), min(prices)), max(prices))
        out.append(
            (open_ms, prices[0], max(prices), min(prices), prices[-1],
             correctly_rounded(Fraction(volume, SCALE)), correctly_rounded(Fraction(quote, SCALE)),
             correctly_rounded(Fraction(taker, SCALE)), len(trades), vwap, False)
        )  # fmt: skip
        prev = (open_ms, prices[-1])
    return out, skipped


def as_tuple(b: Bar) -> tuple:
    return (b.open_time_ms, b.open, b.high, b.low, b.close, b.volume, b.quote_volume, b.taker_buy_volume,
            b.trade_count, b.vwap, b.filled)  # fmt: skip


def check_ohlc(bar: Bar) -> None:
    assert bar.high >= max(bar.open, bar.close) >= min(bar.open, bar.close) >= bar.low, bar
    assert bar.low <= bar.vwap <= bar.high, bar
    assert 0 <= bar.taker_buy_volume <= bar.volume, bar
    assert bar.close_time_ms - bar.open_time_ms == TIMEFRAME_MS[bar.timeframe] and bar.open_time_ms % 1_000 == 0
    if bar.filled:
        assert bar.trade_count == 0 and bar.volume == bar.quote_volume == bar.taker_buy_volume == 0, bar
        assert bar.open == bar.high == bar.low == bar.close == bar.vwap, bar
    else:
        assert bar.trade_count > 0, bar


@dataclass
class Streams:
    """What Redis holds after committing outputs: bar streams (explicit ids refuse a write at or
    below the top), acknowledged entries, counter totals and the last checkpoint per symbol."""

    bars: dict[tuple[str, str], list[Bar]] = field(default_factory=dict)
    acked: list[EntryRef] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    checkpoints: dict[str, SymbolCheckpoint] = field(default_factory=dict)
    refused: int = 0

    def commit(self, out: AggregatorOutput) -> None:
        for bar in out.bars:
            stream = self.bars.setdefault((bar.symbol, bar.timeframe), [])
            if stream and bar.open_time_ms <= stream[-1].open_time_ms:
                self.refused += 1
            else:
                stream.append(bar)
        self.acked += out.ack
        self.counts.update(out.counts)
        self.checkpoints.update(out.checkpoints)

    def all_bars(self) -> list[Bar]:
        return [b for key in sorted(self.bars) for b in self.bars[key]]

    def totals(self) -> Counter[tuple[str, str]]:
        return Counter({k: n for k, n in self.counts.items() if n})


def run(calls: Iterable[Sequence[Entry]], *, max_fill_bars: int = 3_600, grace_ms: int = 250) -> Streams:
    """Apply each call's entries, then let the timer close what is open; commit every output."""
    agg = BarAggregator(grace_ms=grace_ms, max_fill_bars=max_fill_bars)
    streams = Streams()
    for call in calls:
        streams.commit(agg.apply(call))
    streams.commit(agg.close_due(FAR))
    assert agg.held() == []
    return streams


def split(items: Sequence, sizes: Sequence[int]) -> list[list]:
    """``items`` in consecutive pieces of the given sizes (cycled)."""
    out, i = [], 0
    for n in itertools.cycle(sizes):
        if i >= len(items):
            return out
        out.append(list(items[i : i + n]))
        i += n
    raise AssertionError("unreachable")


def entries_of(ticks: Sequence[Tick], sizes: Sequence[int], symbol: str = ETH, first: int = 1) -> list[Entry]:
    return [entry(f"{first + k}-0", *batch, symbol=symbol) for k, batch in enumerate(split(ticks, sizes))]


# --- strategies -------------------------------------------------------------------------------

prices = st.sampled_from(sorted(PRICE_UNITS))
sizes = st.integers(1, 3 * SCALE).map(lambda u: u / SCALE)
sides = st.sampled_from(["BUY", "SELL"])
batch_sizes = st.lists(st.integers(1, 6), min_size=1, max_size=6)


@st.composite
def trade_runs(draw: st.DrawFn, *, late: bool = True, dup: bool = True, max_size: int = 50) -> list[Tick]:
    """Trades of one symbol in delivery order, crossing a minute, an hour and a day boundary.

    Steps of up to 1.5 s with now and then a quiet spell of up to 40 s; with ``late``, trades for an
    interval already closed; with ``dup``, trades delivered again with their trade id.
    """
    n = draw(st.integers(1, max_size))
    now = DAY - 40_000 + draw(st.integers(0, 2_000))
    next_id = draw(st.integers(1, 10**6))
    kinds = ["step"] * 8 + ["quiet"] + (["late"] if late else []) + (["dup"] if dup else [])
    out: list[Tick] = []
    for _ in range(n):
        kind = draw(st.sampled_from(kinds))
        if kind == "dup" and out:
            out.append(draw(st.sampled_from(out)))
            continue
        if kind == "late" and out:
            ts = second(now) - draw(st.integers(1, 10_000))
        else:
            now += draw(st.integers(0, 1_500) if kind != "quiet" else st.integers(2_000, 40_000))
            ts = now
        out.append(Tick(next_id, draw(prices), draw(sizes), draw(sides), ts, ts))  # type: ignore[arg-type]
        next_id += draw(st.integers(1, 3))
    return out


FAST = settings(max_examples=50, deadline=None)


def run_ticks(ticks: Sequence[Tick], sizes: Sequence[int], max_fill_bars: int) -> Streams:
    return run([[e] for e in entries_of(ticks, sizes)], max_fill_bars=max_fill_bars)


# --- properties: bar contents -----------------------------------------------------------------


@FAST
@given(ticks=trade_runs(), sizes=batch_sizes, max_fill_bars=st.integers(0, 40))
def test_every_bar_of_every_timeframe_keeps_the_ohlc_invariants(
    ticks: list[Tick], sizes: list[int], max_fill_bars: int
) -> None:
    streams = run_ticks(ticks, sizes, max_fill_bars)
    assert streams.bars[ETH, "1s"]
    for bar in streams.all_bars():
        check_ohlc(bar)


@FAST
@given(ticks=trade_runs(), sizes=batch_sizes, max_fill_bars=st.integers(0, 40))
def test_1s_bars_conserve_the_applied_trades_count_volume_and_taker_volume_exactly(
    ticks: list[Tick], sizes: list[int], max_fill_bars: int
) -> None:
    streams = run_ticks(ticks, sizes, max_fill_bars)
    applied, late, dup = classify(ticks)
    bars = streams.bars[ETH, "1s"]
    volume, taker, _ = exact(applied)
    assert sum(b.trade_count for b in bars) == len(applied) == streams.counts["ticks_applied", ETH]
    assert sum(round(b.volume * SCALE) for b in bars) == volume
    assert sum(round(b.taker_buy_volume * SCALE) for b in bars) == taker
    assert (streams.counts["ticks_late", ETH], streams.counts["ticks_duplicate", ETH]) == (late, dup)
    assert streams.counts["ticks_already_applied", ETH] == 0


@FAST
@given(ticks=trade_runs(), sizes=batch_sizes, max_fill_bars=st.integers(0, 40))
def test_1s_bars_equal_an_exact_reference_built_from_the_trades(
    ticks: list[Tick], sizes: list[int], max_fill_bars: int
) -> None:
    streams = run_ticks(ticks, sizes, max_fill_bars)
    expected, skipped = reference_1s(classify(ticks)[0], max_fill_bars)
    assert [as_tuple(b) for b in streams.bars[ETH, "1s"]] == expected
    assert streams.counts["intervals_skipped", ETH] == skipped
    assert streams.counts["bars_1s", ETH] == len(expected)
    assert streams.counts["bars_filled", ETH] == sum(1 for e in expected if e[-1])
    assert streams.refused == 0


def roll_up_check(higher: Bar, parts: list[Bar], trades: list[Tick]) -> None:
    """``higher`` is the roll-up of its 1s bars ``parts`` (made of ``trades``)."""
    real = [b for b in parts if not b.filled]
    assert higher.filled == (not real)
    first = real[0] if real else parts[0]
    assert higher.open == first.open
    assert higher.high == max(b.high for b in real or parts) and higher.low == min(b.low for b in real or parts)
    assert higher.close == parts[-1].close
    assert higher.trade_count == sum(b.trade_count for b in parts) == len(trades)
    assert round(higher.volume * SCALE) == sum(round(b.volume * SCALE) for b in parts)
    assert round(higher.taker_buy_volume * SCALE) == sum(round(b.taker_buy_volume * SCALE) for b in parts)
    volume, taker, quote = exact(trades)
    assert higher.volume == correctly_rounded(Fraction(volume, SCALE))
    assert higher.taker_buy_volume == correctly_rounded(Fraction(taker, SCALE))
    assert higher.quote_volume == correctly_rounded(Fraction(quote, SCALE))
    _, _, taker_quote = exact([t for t in trades if t.aggressor_side == "BUY"])
    assert higher.taker_buy_quote_volume == correctly_rounded(Fraction(taker_quote, SCALE))
    if volume:
        assert higher.vwap == min(max(correctly_rounded(Fraction(quote, volume)), higher.low), higher.high)
    assert higher.incomplete == any(b.incomplete for b in parts)
    assert higher.source == parts[-1].source


def check_roll_ups(streams: Streams, trades: Sequence[Tick], symbol: str = ETH) -> None:
    """Every emitted higher bar is the roll-up of its 1s bars, and exactly the finished intervals have one."""
    seconds = streams.bars[symbol, "1s"]
    for tf in ("1m", "1h", "1d"):
        span = TIMEFRAME_MS[tf]
        groups: dict[int, list[Bar]] = {}
        for b in seconds:
            groups.setdefault(b.open_time_ms - b.open_time_ms % span, []).append(b)
        last_end = seconds[-1].close_time_ms
        finished = [o for o, parts in groups.items() if parts[-1].close_time_ms == o + span or last_end > o + span]
        emitted = streams.bars.get((symbol, tf), [])
        assert [b.open_time_ms for b in emitted] == finished, tf
        for bar in emitted:
            inside = [t for t in trades if bar.open_time_ms <= t.ts_event_ms < bar.close_time_ms]
            roll_up_check(bar, groups[bar.open_time_ms], inside)


@FAST
@given(ticks=trade_runs(), sizes=batch_sizes, max_fill_bars=st.integers(0, 40))
def test_every_higher_bar_is_the_roll_up_of_its_1s_bars(
    ticks: list[Tick], sizes: list[int], max_fill_bars: int
) -> None:
    streams = run_ticks(ticks, sizes, max_fill_bars)
    check_roll_ups(streams, classify(ticks)[0])


@FAST
@given(ticks=trade_runs(), a=batch_sizes, b=batch_sizes, calls=st.integers(1, 5))
def test_batching_into_entries_and_calls_does_not_change_the_bars(
    ticks: list[Tick], a: list[int], b: list[int], calls: int
) -> None:
    one = run([[e] for e in entries_of(ticks, a)])
    other = run(split(entries_of(ticks, b), [calls]))
    assert one.all_bars() == other.all_bars()
    assert one.totals() == other.totals()


@FAST
@given(ticks=trade_runs(late=False, dup=False), data=st.data())
def test_trades_of_intervals_already_closed_are_counted_late_and_leave_the_bars_unchanged(
    ticks: list[Tick], data: st.DataObject
) -> None:
    # Insert trades for earlier seconds (ids renumbered so they still rise) after some trades.
    mixed: list[tuple[int, float, float, str]] = []
    inserted = 0
    for k, t in enumerate(ticks):
        mixed.append((t.ts_event_ms, t.price, t.size, t.aggressor_side))
        if data.draw(st.booleans()):
            earlier = second(t.ts_event_ms) - data.draw(st.integers(1, 5_000))
            mixed.append((earlier, data.draw(prices), data.draw(sizes), "BUY"))
            inserted += 1
    renumbered = [Tick(i + 1, p, s, side, ts, ts) for i, (ts, p, s, side) in enumerate(mixed)]  # type: ignore[arg-type]
    sizes_ = data.draw(batch_sizes)
    clean = run_ticks(ticks, sizes_, 3_600)
    with_late = run_ticks(renumbered, sizes_, 3_600)
    assert with_late.all_bars() == clean.all_bars()
    assert with_late.counts["ticks_late", ETH] == inserted
    assert with_late.counts["ticks_applied", ETH] == clean.counts["ticks_applied", ETH] == len(ticks)


@FAST
@given(ticks=trade_runs(late=False, dup=False), sizes=batch_sizes, data=st.data())
def test_entries_delivered_twice_and_batches_re_sent_change_nothing_and_count_as_duplicates(
    ticks: list[Tick], sizes: list[int], data: st.DataObject
) -> None:
    entries = entries_of(ticks, sizes)
    clean = run([[e] for e in entries])
    calls: list[list[Entry]] = []
    duplicates = 0
    for k, e in enumerate(entries):
        calls.append([e])
        how = data.draw(st.sampled_from(["once", "same entry again", "re-sent batch"]))
        if how == "same entry again":
            calls.append([e])  # a redelivery of the entry: nothing new, nothing counted
        elif how == "re-sent batch":
            calls.append([entry(f"{len(entries) + 1 + k}-0", *e[1].ticks)])  # type: ignore[union-attr]
            duplicates += len(e[1].ticks)  # type: ignore[union-attr]  # the same trades again: duplicates
    again = run(calls)
    assert again.all_bars() == clean.all_bars()
    assert again.counts["ticks_duplicate", ETH] == duplicates
    refs_seen: set[EntryRef] = set()
    redelivered = 0
    for (call_ref, batch), *_ in calls:
        if call_ref in refs_seen:
            redelivered += len(batch.ticks)  # type: ignore[union-attr]
        refs_seen.add(call_ref)
    assert again.counts["ticks_already_applied", ETH] == redelivered  # shown, and nothing else changes
    informational = Counter({("ticks_duplicate", ETH): duplicates, ("ticks_already_applied", ETH): redelivered})
    assert again.totals() - informational == clean.totals()


# --- properties: gap markers ------------------------------------------------------------------


@FAST
@given(ticks=trade_runs(late=False, dup=False), data=st.data())
def test_gap_markers_flag_exactly_the_bars_overlapping_their_ranges(ticks: list[Tick], data: st.DataObject) -> None:
    # As ingest writes them: in order, between the last trade before the gap and the first after it.
    entries: list[Entry] = []
    ranges: list[tuple[int, int]] = []
    for k, t in enumerate(ticks):
        if k and data.draw(st.integers(0, 5)) == 0:
            ts_from, ts_to = ticks[k - 1].ts_event_ms, t.ts_event_ms
            entries.append(gap(f"{len(entries) + 1}-0", ts_from, ts_to))
            ranges.append((ts_from, ts_to))
        entries.append(entry(f"{len(entries) + 1}-0", t))
    max_fill_bars = data.draw(st.integers(0, 40))
    streams = run(split(entries, [data.draw(st.integers(1, 5))]), max_fill_bars=max_fill_bars)
    for bar in streams.bars[ETH, "1s"]:
        overlaps = any(a < bar.close_time_ms and b >= bar.open_time_ms for a, b in ranges)
        assert bar.incomplete == overlaps, (bar, ranges)
    assert streams.counts["bars_incomplete", ETH] == sum(b.incomplete for b in streams.bars[ETH, "1s"])
    assert streams.counts["gaps", ETH] == len(ranges)
    check_roll_ups(streams, ticks)


# --- properties: timer ------------------------------------------------------------------------


def with_timer(ticks: Sequence[Tick], sizes: Sequence[int], data: st.DataObject, agg: BarAggregator) -> Streams:
    """Deliver the entries with timer calls between them that never close the interval of a trade
    still to come (as the shell does: the timer acts only when nothing is left to read)."""
    batches = split(ticks, sizes)
    # The second of the first new trade (not a duplicate) after each batch: the timer must not close it.
    upcoming: list[int] = []
    highest = -1
    for batch in batches:
        upcoming.append(min((second(t.ts_event_ms) for t in batch if t.trade_id > highest), default=FAR))
        highest = max(highest, *(t.trade_id for t in batch))
    upcoming = [min(upcoming[k:]) for k in range(1, len(upcoming))]
    streams = Streams()
    now = ticks[0].ts_event_ms
    for k, batch in enumerate(batches):
        streams.commit(agg.apply([entry(f"{k + 1}-0", *batch)]))
        if k < len(upcoming) and upcoming[k] < FAR and data.draw(st.booleans()):
            bound = upcoming[k] + agg.grace_ms + 999  # later would close an interval whose trades are queued
            now = data.draw(st.integers(min(now, bound), bound))
            streams.commit(agg.close_due(now))
            # Every interval whose end + grace has passed is emitted, skipped over, or part of a run
            # too long to fill that only the next trade ends.
            state = agg.snapshot()[ETH]
            covered = state["last_bar_open_ms"]
            if state["open_bar_open_ms"] is not None:
                covered = (
                    state["open_bar_open_ms"] - 1_000
                    if covered is None
                    else max(covered, state["open_bar_open_ms"] - 1_000)
                )
            limit = second(now - agg.grace_ms - 1_000)
            if covered is not None and covered < limit:
                assert limit - covered > 1_000 * agg.max_fill_bars, (now, state)
    streams.commit(agg.close_due(FAR))
    return streams


@FAST
@given(ticks=trade_runs(late=False), sizes=batch_sizes, grace_ms=st.integers(0, 2_000), data=st.data())
def test_timer_calls_between_entries_fill_up_to_now_and_change_no_bar(
    ticks: list[Tick], sizes: list[int], grace_ms: int, data: st.DataObject
) -> None:
    timed = with_timer(ticks, sizes, data, BarAggregator(grace_ms=grace_ms, max_fill_bars=3_600))
    untimed = run_ticks(ticks, sizes, 3_600)
    assert timed.all_bars() == untimed.all_bars()
    assert timed.totals() == untimed.totals() and timed.refused == 0


@FAST
@given(ticks=trade_runs(late=False), sizes=batch_sizes, max_fill_bars=st.integers(0, 8), data=st.data())
def test_with_the_timer_every_second_from_first_to_last_bar_has_one_bar_or_is_counted_skipped_once(
    ticks: list[Tick], sizes: list[int], max_fill_bars: int, data: st.DataObject
) -> None:
    streams = with_timer(ticks, sizes, data, BarAggregator(grace_ms=250, max_fill_bars=max_fill_bars))
    seconds = streams.bars[ETH, "1s"]
    assert streams.refused == 0 and streams.counts["ticks_late", ETH] == 0
    span = (seconds[-1].open_time_ms - seconds[0].open_time_ms) // 1_000 + 1
    assert streams.counts["bars_1s", ETH] == len(seconds)
    assert len(seconds) + streams.counts["intervals_skipped", ETH] == span
    check_roll_ups(streams, classify(ticks)[0])


@FAST
@given(ticks=trade_runs(), sizes=batch_sizes, data=st.data())
def test_timer_changes_nothing_for_a_replay_source(ticks: list[Tick], sizes: list[int], data: st.DataObject) -> None:
    agg = BarAggregator(grace_ms=0)
    for k, batch in enumerate(split(ticks, sizes)):
        agg.apply([entry(f"{k + 1}-0", *batch, source="REPLAY")])
    before = (agg.checkpoint(ETH), agg.held(), agg.forming_bars(ETH))
    out = agg.close_due(data.draw(st.integers(ticks[0].ts_event_ms, FAR)))
    assert (out.bars, out.ack, out.checkpoints, out.counts) == ([], [], {}, Counter())
    assert (agg.checkpoint(ETH), agg.held(), agg.forming_bars(ETH)) == before


# --- properties: crashes ----------------------------------------------------------------------


@st.composite
def two_symbol_entries(draw: st.DrawFn, markers: bool = True) -> list[Entry]:
    """Interleaved entries of two symbols (late, duplicate and quiet spells included), and with
    ``markers`` gap markers with a time range, an open end, or no times at all."""
    queues: list[list[Entry]] = []
    for symbol in (ETH, BTC):
        ticks = draw(trade_runs(max_size=40))
        entries: list[Entry] = []
        for batch in split(ticks, draw(batch_sizes)):
            if markers and entries and draw(st.integers(0, 5)) == 0:
                ts_to = batch[0].ts_event_ms
                ts_from = ts_to - draw(st.integers(0, 3_000))
                ts_from, ts_to = draw(st.sampled_from([(ts_from, ts_to), (ts_from, 0), (0, 0)]))
                entries.append(gap(f"{len(entries) + 1}-0", ts_from, ts_to, symbol=symbol))
            entries.append(entry(f"{len(entries) + 1}-0", *batch, symbol=symbol))
        queues.append(entries[::-1])
    merged: list[Entry] = []
    while any(queues):
        q = draw(st.sampled_from([q for q in queues if q]))
        merged.append(q.pop())
    return merged


def run_with_crash(
    entries: list[Entry], chunk: int, crash_after: int, lose_next: bool, from_bars: bool, max_fill_bars: int
) -> Streams:
    """Deliver ``chunk`` entries per call, committing each output; after ``crash_after`` calls the
    process dies (with ``lose_next``, in the middle of the next call: delivered, nothing committed).
    A new process restores each symbol from its last committed checkpoint (or, ``from_bars``, from
    the bar streams), gets every delivered entry not acknowledged again in order, then the rest."""
    calls = split(entries, [chunk])
    crash_after = min(crash_after, len(calls))
    streams = Streams()
    agg = BarAggregator(max_fill_bars=max_fill_bars)
    delivered: list[Entry] = []
    for call in calls[:crash_after]:
        delivered += call
        streams.commit(agg.apply(call))
    if lose_next and crash_after < len(calls):
        delivered += calls[crash_after]
        agg.apply(calls[crash_after])
        crash_after += 1

    agg = BarAggregator(max_fill_bars=max_fill_bars)
    for symbol in sorted({packet.symbol for _, packet in entries}):
        if from_bars:
            last = {tf: (streams.bars.get((symbol, tf)) or [None])[-1] for tf in TIMEFRAMES}
            tails: dict[str, list[Bar]] = {}
            for tf, lower in zip(TIMEFRAMES[1:], TIMEFRAMES[:-1], strict=True):
                top = last[tf]
                below = streams.bars.get((symbol, lower), [])
                tails[tf] = [b for b in below if top is None or b.open_time_ms > top.open_time_ms]
            agg.restore_from_bars(symbol, last, tails)
        else:
            agg.restore(symbol, streams.checkpoints.get(symbol))
    acked = set(streams.acked)
    streams.commit(agg.apply([e for e in delivered if e[0] not in acked]))
    for call in calls[crash_after:]:
        streams.commit(agg.apply(call))
    streams.commit(agg.close_due(FAR))
    assert agg.held() == []
    return streams


crashes = {
    "entries": two_symbol_entries(),
    "chunk": st.integers(1, 6),
    "crash_after": st.integers(0, 40),
    "lose_next": st.booleans(),
    "max_fill_bars": st.integers(0, 40),
}


@settings(max_examples=80, deadline=None)
@given(**crashes)
def test_a_crash_at_any_point_leaves_the_bars_of_an_uninterrupted_run(
    entries: list[Entry], chunk: int, crash_after: int, lose_next: bool, max_fill_bars: int
) -> None:
    reference = run(split(entries, [chunk]), max_fill_bars=max_fill_bars)
    crashed = run_with_crash(entries, chunk, crash_after, lose_next, False, max_fill_bars)
    assert crashed.all_bars() == reference.all_bars()
    assert crashed.refused == 0  # nothing emitted twice
    assert sorted(set(crashed.acked)) == sorted(e[0] for e in entries)
    # The counters that come with the bars and the gap markers agree.
    for name in ("ticks_applied", "bars_1s", "bars_filled", "bars_incomplete", "gaps", "trades_missing"):
        assert [crashed.counts[name, s] for s in (ETH, BTC)] == [reference.counts[name, s] for s in (ETH, BTC)], name


@settings(max_examples=100, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(**crashes)
def test_a_crash_at_any_point_leaves_the_committed_counts_of_an_uninterrupted_run(
    entries: list[Entry], chunk: int, crash_after: int, lose_next: bool, max_fill_bars: int
) -> None:
    reference = run(split(entries, [chunk]), max_fill_bars=max_fill_bars)
    crashed = run_with_crash(entries, chunk, crash_after, lose_next, False, max_fill_bars)
    assert reference.counts[("ticks_already_applied", ETH)] == reference.counts[("ticks_already_applied", BTC)] == 0
    without_redelivered = Counter({k: n for k, n in crashed.totals().items() if k[0] != "ticks_already_applied"})
    assert without_redelivered == reference.totals()


@settings(max_examples=60, deadline=None)
@given(**{**crashes, "entries": two_symbol_entries(markers=False)})
def test_a_crash_restored_from_the_bar_streams_leaves_the_bars_of_an_uninterrupted_run(
    entries: list[Entry], chunk: int, crash_after: int, lose_next: bool, max_fill_bars: int
) -> None:
    reference = run(split(entries, [chunk]), max_fill_bars=max_fill_bars)
    crashed = run_with_crash(entries, chunk, crash_after, lose_next, True, max_fill_bars)
    # every sum has 8 decimals (quote volumes are of truncated notionals), so the floats read
    # back from the streams give the exact sums again
    assert crashed.all_bars() == reference.all_bars()
    assert crashed.refused == 0


def test_an_open_gap_marker_starting_after_the_next_trade_does_not_flag_that_trades_bar() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100))])
    agg.apply([gap("2-0", T0 + 1_000, 0)])  # missing trades from the next second on, end unknown
    agg.apply([entry("3-0", tick(T0 + 200))])  # stamped before the marker's start: ends the range there
    out = agg.apply([entry("4-0", tick(T0 + 1_500)), entry("5-0", tick(T0 + 2_500))])
    assert [(b.open_time_ms - T0, b.incomplete) for b in of(out)] == [(0, False), (1_000, True)]
