"""The bar aggregator's pure core: bar contents, filled bars, late ticks, deferred acks, timer, restart."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unistream_aggregator.core import AggregatorOutput, BarAggregator, EntryRef
from unistream_common.packets import Bar, Tick, TickBatch

T0 = 1_700_000_000_000  # aligned to the second
ETH = "ETHUSDT"
BTC = "BTCUSDT"
STREAM = {ETH: "md:ticks:{ETHUSDT}", BTC: "md:ticks:{BTCUSDT}"}
_ids = itertools.count(1)


def tick(ts: int, price: float = 100.0, size: float = 1.0, side: str = "BUY") -> Tick:
    return Tick(next(_ids), price, size, side, ts, ts)  # type: ignore[arg-type]


def entry(eid: str, *ticks: Tick, symbol: str = ETH) -> tuple[EntryRef, TickBatch]:
    return (STREAM[symbol], eid), TickBatch(symbol=symbol, source="SYNTHETIC", ticks=list(ticks))


def ref(eid: str, symbol: str = ETH) -> EntryRef:
    return (STREAM[symbol], eid)


def count(out: AggregatorOutput, name: str, symbol: str = ETH) -> int:
    return out.counts[name, symbol]


def test_ticks_of_one_second_make_one_bar_with_ohlcv_vwap_and_taker_buy_volume() -> None:
    agg = BarAggregator()
    out = agg.apply(
        [
            entry("1-0", tick(T0 + 10, 100.0, 1.0, "BUY"), tick(T0 + 400, 103.0, 2.0, "SELL")),
            entry("2-0", tick(T0 + 500, 99.0, 1.0, "BUY"), tick(T0 + 999, 101.0, 4.0, "SELL")),
        ]
    )
    assert out.bars == [] and out.ack == []  # the bar is still open: both entries are held
    out = agg.apply([entry("3-0", tick(T0 + 1_000, 102.0))])
    [bar] = out.bars
    assert (bar.open_time_ms, bar.close_time_ms) == (T0, T0 + 1_000)
    assert (bar.open, bar.high, bar.low, bar.close) == (100.0, 103.0, 99.0, 101.0)
    assert bar.volume == pytest.approx(8.0)
    assert bar.quote_volume == pytest.approx(100 + 206 + 99 + 404)
    assert bar.vwap == pytest.approx(809 / 8)
    assert bar.trade_count == 4
    assert bar.taker_buy_volume == pytest.approx(2.0)
    assert not bar.filled and bar.source == "SYNTHETIC" and bar.bar_type == "ETHUSDT-1s"
    assert out.ack == [ref("1-0"), ref("2-0")]
    assert count(out, "ticks_applied") == 1 and count(out, "bars_emitted") == 1


def test_bars_are_utc_aligned_and_left_closed() -> None:
    agg = BarAggregator()
    out = agg.apply([entry("1-0", tick(T0 + 999, 1.0), tick(T0 + 1_000, 2.0), tick(T0 + 2_000, 3.0))])
    out.extend(agg.close_due(T0 + 10_000))
    assert [(b.open_time_ms, b.close_time_ms, b.close) for b in out.bars] == [
        (T0, T0 + 1_000, 1.0),
        (T0 + 1_000, T0 + 2_000, 2.0),
        (T0 + 2_000, T0 + 3_000, 3.0),
    ]


def test_empty_intervals_become_flat_filled_bars_at_the_previous_close() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100, 50.0), tick(T0 + 900, 51.5))])
    out = agg.apply([entry("2-0", tick(T0 + 4_200, 60.0))])
    assert [b.open_time_ms for b in out.bars] == [T0, T0 + 1_000, T0 + 2_000, T0 + 3_000]
    for b in out.bars[1:]:
        assert b.filled and b.trade_count == 0 and b.volume == 0 and b.quote_volume == 0
        assert b.open == b.high == b.low == b.close == b.vwap == 51.5
    assert count(out, "bars_filled") == 3 and count(out, "bars_emitted") == 4


def test_a_gap_longer_than_max_fill_bars_is_left_visible_and_counted() -> None:
    agg = BarAggregator(max_fill_bars=2)
    agg.apply([entry("1-0", tick(T0))])
    out = agg.apply([entry("2-0", tick(T0 + 5_000))])
    assert [b.open_time_ms for b in out.bars] == [T0]
    assert count(out, "fill_bars_skipped") == 4 and count(out, "bars_filled") == 0
    out = agg.apply([entry("3-0", tick(T0 + 3_000))])  # inside the skipped gap: already closed
    assert count(out, "ticks_late") == 1


def test_nothing_is_filled_before_a_symbols_first_bar() -> None:
    agg = BarAggregator()
    out = agg.apply([entry("1-0", tick(T0 + 7_000))])
    out.extend(agg.close_due(T0 + 9_000))
    assert [b.open_time_ms for b in out.bars] == [T0 + 7_000]


def test_late_tick_for_a_closed_interval_is_counted_and_not_applied() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100, 10.0, 1.0))])
    first = agg.apply([entry("2-0", tick(T0 + 1_100, 11.0, 1.0))]).bars
    out = agg.apply([entry("3-0", tick(T0 + 900, 99.0, 5.0), tick(T0 + 1_200, 12.0, 2.0))])
    assert count(out, "ticks_late") == 1 and count(out, "ticks_applied") == 1
    assert count(out, "ticks_already_applied") == 0
    [bar] = agg.close_due(T0 + 10_000).bars
    assert bar.open_time_ms == T0 + 1_000 and bar.volume == pytest.approx(3.0) and bar.high == 12.0
    assert first[0].volume == 1.0  # the emitted bar is final


def test_entry_with_only_late_ticks_is_acknowledged_at_once() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100)), entry("2-0", tick(T0 + 1_100))])
    out = agg.apply([entry("3-0", tick(T0 + 200))])
    assert out.ack == [ref("3-0")] and out.bars == []


def test_entry_is_acknowledged_only_with_the_last_bar_its_ticks_went_into() -> None:
    agg = BarAggregator()
    out = agg.apply([entry("1-0", tick(T0 + 100), tick(T0 + 1_100))])  # spans two bars
    assert [b.open_time_ms for b in out.bars] == [T0]
    assert out.ack == []  # its second tick sits in the open bar
    assert agg.held() == [ref("1-0")]
    out = agg.apply([entry("2-0", tick(T0 + 1_500)), entry("3-0", tick(T0 + 2_000))])
    assert [b.open_time_ms for b in out.bars] == [T0 + 1_000]
    assert out.ack == [ref("1-0"), ref("2-0")]
    assert agg.held() == [ref("3-0")]


def test_acks_of_one_symbol_are_not_held_by_another_symbols_open_bar() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100), symbol=ETH), entry("1-0", tick(T0 + 100), symbol=BTC)])
    out = agg.apply([entry("2-0", tick(T0 + 1_100), symbol=ETH)])
    assert out.ack == [ref("1-0", ETH)]
    assert [b.symbol for b in out.bars] == [ETH]
    assert sorted(agg.held()) == sorted([ref("1-0", BTC), ref("2-0", ETH)])


def test_timer_closes_an_open_bar_only_after_its_end_plus_grace() -> None:
    agg = BarAggregator(grace_ms=250)
    agg.apply([entry("1-0", tick(T0 + 100))])
    assert agg.due_symbols(T0 + 1_249) == []
    out = agg.close_due(T0 + 1_249)
    assert out.bars == [] and out.ack == []
    out = agg.close_due(T0 + 1_250)
    assert [b.open_time_ms for b in out.bars] == [T0] and out.ack == [ref("1-0")]
    out = agg.apply([entry("2-0", tick(T0 + 999))])  # after the timer closed it: late
    assert count(out, "ticks_late") == 1 and out.ack == [ref("2-0")]


def test_timer_leaves_alone_symbols_the_caller_says_are_not_caught_up() -> None:
    agg = BarAggregator(grace_ms=0)
    agg.apply([entry("1-0", tick(T0 + 100), symbol=ETH), entry("1-0", tick(T0 + 100), symbol=BTC)])
    assert sorted(agg.due_symbols(T0 + 5_000)) == [BTC, ETH]
    out = agg.close_due(T0 + 5_000, symbols=[BTC])
    assert [b.symbol for b in out.bars] == [BTC]
    assert agg.held() == [ref("1-0", ETH)]


def test_restore_continues_after_the_last_bar_and_skips_already_applied_ticks() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100, 10.0), tick(T0 + 1_100, 11.0))])
    before_crash = agg.apply([entry("2-0", tick(T0 + 2_100, 12.0))]).bars  # bars T0, T0+1s in Redis
    assert [b.open_time_ms for b in before_crash] == [T0 + 1_000]
    last_in_redis = before_crash[-1]

    restarted = BarAggregator()
    restarted.restore({ETH: last_in_redis, BTC: None})
    # Redelivered: entry 2 was held by the open bar T0+2s; a new entry follows after a gap.
    out = restarted.apply([entry("2-0", tick(T0 + 1_900, 11.5), tick(T0 + 2_100, 12.0))])
    assert count(out, "ticks_already_applied") == 1 and count(out, "ticks_late") == 0
    assert count(out, "ticks_applied") == 1
    out = restarted.apply([entry("3-0", tick(T0 + 4_000, 13.0))])
    assert [(b.open_time_ms, b.filled, b.close) for b in out.bars] == [
        (T0 + 2_000, False, 12.0),
        (T0 + 3_000, True, 12.0),
    ]
    assert out.ack == [ref("2-0")]


def test_restore_drops_open_bars_and_held_entries() -> None:
    agg = BarAggregator()
    agg.apply([entry("1-0", tick(T0 + 100))])
    assert agg.held() == [ref("1-0")]
    agg.restore({ETH: None})
    assert agg.held() == [] and agg.close_due(T0 + 60_000).bars == []


def test_restore_refuses_a_bar_of_another_symbol_or_timeframe() -> None:
    agg = BarAggregator()
    bar = Bar(BTC, "1s", T0, T0 + 1_000, 1, 1, 1, 1, 0, 0, 0, 1, 0, True, "SYNTHETIC")
    with pytest.raises(ValueError, match="BTCUSDT-1s"):
        agg.restore({ETH: bar})


# --- properties --------------------------------------------------------------------------------


def _check_bar(bar: Bar) -> None:
    assert bar.high >= max(bar.open, bar.close) >= min(bar.open, bar.close) >= bar.low
    assert bar.low <= bar.vwap <= bar.high
    assert 0 <= bar.taker_buy_volume <= bar.volume
    assert bar.filled == (bar.trade_count == 0)


tick_lists = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=12_000),  # ms after T0
        st.sampled_from([99.5, 100.0, 100.25, 101.0, 0.01]),
        st.sampled_from([0.001, 0.5, 1.0, 2.0]),
        st.sampled_from(["BUY", "SELL"]),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ticks=tick_lists, batch_sizes=st.lists(st.integers(1, 7), min_size=1, max_size=10))
def test_every_applied_tick_lands_in_exactly_one_bar(ticks: list, batch_sizes: list[int]) -> None:
    agg = BarAggregator()
    objs = [Tick(i, p, s, side, T0 + dt, T0 + dt) for i, (dt, p, s, side) in enumerate(ticks)]
    entries, i = [], 0
    for n in itertools.cycle(batch_sizes):
        if i >= len(objs):
            break
        entries.append(entry(f"{len(entries) + 1}-0", *objs[i : i + n]))
        i += n
    out = agg.apply(entries)
    out.extend(agg.close_due(T0 + 10**6))

    # Reference: a tick is applied iff its interval is not before the newest interval seen so far.
    applied: list[Tick] = []
    newest = -1
    for t in objs:
        open_ms = t.ts_event_ms - t.ts_event_ms % 1_000
        if open_ms >= newest:
            newest = open_ms
            applied.append(t)
    assert out.counts["ticks_applied", ETH] == len(applied)
    assert out.counts["ticks_late", ETH] == len(objs) - len(applied)
    assert sum(b.trade_count for b in out.bars) == len(applied)
    assert math.isclose(sum(b.volume for b in out.bars), sum(t.size for t in applied), rel_tol=1e-9)

    opens = [b.open_time_ms for b in out.bars]
    assert opens == list(range(opens[0], opens[-1] + 1, 1_000))  # consecutive, none twice
    for bar in out.bars:
        _check_bar(bar)
        inside = [t for t in applied if bar.open_time_ms <= t.ts_event_ms < bar.close_time_ms]
        assert bar.trade_count == len(inside)
        assert math.isclose(bar.volume, sum(t.size for t in inside), rel_tol=1e-9, abs_tol=0)
        if inside:
            assert (bar.open, bar.close) == (inside[0].price, inside[-1].price)
            assert (bar.high, bar.low) == (max(t.price for t in inside), min(t.price for t in inside))
    # Every entry is acknowledged exactly once, and only after its bars were emitted.
    assert sorted(Counter(out.ack).values()) == [1] * len(entries)
    assert agg.held() == []


def _deliver_with_crash(entries: list[tuple[EntryRef, TickBatch]], chunk: int, crash_after: int) -> list[Bar]:
    """Play the runtime: deliver in chunks, commit bars+acks together, crash once, restart."""
    stream: dict[str, list[Bar]] = {}
    acked: set[EntryRef] = set()
    delivered: list[tuple[EntryRef, TickBatch]] = []

    def commit(out: AggregatorOutput) -> None:
        for bar in out.bars:
            bars = stream.setdefault(bar.symbol, [])
            if not bars or bar.open_time_ms > bars[-1].open_time_ms:  # explicit ids refuse the rest
                bars.append(bar)
        acked.update(out.ack)

    agg = BarAggregator()
    for call, i in enumerate(range(0, len(entries), chunk)):
        if call == crash_after:
            # SIGKILL: memory is gone. Restart from Redis and redeliver what was never acknowledged.
            agg = BarAggregator()
            agg.restore({sym: bars[-1] for sym, bars in stream.items()})
            pending = [e for e in delivered if e[0] not in acked]
            if pending:
                commit(agg.apply(pending))
        batch = entries[i : i + chunk]
        delivered.extend(batch)
        commit(agg.apply(batch))
    commit(agg.close_due(T0 + 10**7))
    return [b for sym in sorted(stream) for b in stream[sym]]


@settings(max_examples=60, deadline=None)
@given(chunk=st.integers(1, 9), crash_after=st.integers(0, 40), seed=st.integers(0, 3))
def test_a_crash_at_any_point_leaves_the_same_bars_as_a_run_without_it(chunk: int, crash_after: int, seed: int) -> None:
    import random

    rnd = random.Random(seed)
    entries = []
    for k in range(60):
        symbol = rnd.choice([ETH, BTC])
        base = T0 + k * 180
        ticks = [tick(base + rnd.randrange(0, 180), rnd.choice([10.0, 10.5, 11.0])) for _ in range(rnd.randrange(1, 4))]
        ticks.sort(key=lambda t: t.ts_event_ms)
        entries.append(entry(f"{k + 1}-0", *ticks, symbol=symbol))
    reference = _deliver_with_crash(entries, chunk, crash_after=-1)
    crashed = _deliver_with_crash(entries, chunk, crash_after)
    assert crashed == reference
    assert len(reference) >= 10
