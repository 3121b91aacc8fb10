"""TradeSequencer, the pure core of the Binance live source: order, de-duplication, backfill requests, gaps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unistream_ingest.sequencer import PAGE_LIMIT, BackfillRequest, GapEvent, TradeSequencer
from unistream_ingest.venue import RawTrade

pytestmark = pytest.mark.heavy

SYM = "ETHUSDT"


def trade(trade_id: int, symbol: str = SYM) -> RawTrade:
    return RawTrade(symbol, trade_id, 3000.0 + trade_id % 7, 0.5, trade_id % 2 == 0, 1_700_000_000_000 + trade_id)


def ids(out: list[RawTrade | GapEvent]) -> list[int]:
    return [t.trade_id for t in out if isinstance(t, RawTrade)]


def test_consecutive_live_trades_pass_straight_through_and_duplicates_are_dropped() -> None:
    seq = TradeSequencer([SYM])
    assert ids(seq.accept_live(trade(10))) == [10]
    assert ids(seq.accept_live(trade(11))) == [11]
    assert seq.accept_live(trade(11)) == [] and seq.accept_live(trade(9)) == []
    assert seq.duplicates == 2 and seq.request(SYM) is None and seq.last_id(SYM) == 11


def test_a_jump_holds_the_trade_back_and_asks_for_exactly_the_hole() -> None:
    seq = TradeSequencer([SYM])
    seq.accept_live(trade(10))
    assert seq.accept_live(trade(14)) == []
    assert seq.accept_live(trade(15)) == []
    req = seq.request(SYM)
    assert req == BackfillRequest(SYM, 11, 13, 3)
    assert seq.request(SYM) is None  # one request at a time per symbol
    out = seq.accept_backfill(req, [trade(13), trade(11), trade(12)])
    assert ids(out) == [11, 12, 13, 14, 15]
    assert seq.delivered_backfill == 3 and seq.pending_count(SYM) == 0 and seq.request(SYM) is None


def test_large_holes_are_paged_by_the_venue_limit() -> None:
    seq = TradeSequencer([SYM])
    seq.accept_live(trade(0))
    seq.accept_live(trade(2500))
    req = seq.request(SYM)
    assert (req.from_id, req.to_id, req.limit) == (1, 2499, PAGE_LIMIT)
    out = seq.accept_backfill(req, [trade(i) for i in range(1, 1001)])
    assert ids(out) == list(range(1, 1001))
    req = seq.request(SYM)
    assert (req.from_id, req.to_id, req.limit) == (1001, 2499, PAGE_LIMIT)


def test_after_a_reconnect_the_source_reads_rest_up_to_the_present() -> None:
    seq = TradeSequencer([SYM, "BTCUSDT"])
    seq.accept_live(trade(10))
    seq.mark_reconnected()
    assert seq.request("BTCUSDT") is None  # never seen: nothing to continue from
    req = seq.request(SYM)
    assert (req.from_id, req.to_id) == (11, None)
    page = [trade(i) for i in range(11, 11 + PAGE_LIMIT)]
    assert ids(seq.accept_backfill(req, page)) == list(range(11, 11 + PAGE_LIMIT))
    req = seq.request(SYM)  # a full page: there may be more
    assert ids(seq.accept_backfill(req, [trade(1011)])) == [1011]
    assert seq.request(SYM) is None  # a short page: caught up


def test_a_live_trade_that_follows_on_is_delivered_while_a_read_to_present_is_out() -> None:
    seq = TradeSequencer([SYM])
    seq.accept_live(trade(10))
    seq.mark_reconnected()
    req = seq.request(SYM)
    assert ids(seq.accept_live(trade(11))) == [11]
    # The page overlaps what was delivered meanwhile: only the new ids come out.
    assert ids(seq.accept_backfill(req, [trade(11), trade(12)])) == [12]
    assert seq.duplicates == 0


def test_ids_the_venue_skips_become_a_not_served_gap_in_sequence() -> None:
    seq = TradeSequencer([SYM])
    seq.accept_live(trade(10))
    seq.accept_live(trade(20))
    req = seq.request(SYM)
    out = seq.accept_backfill(req, [trade(11), trade(15), trade(16)], now_ms=5)
    assert ids(out) == [11, 15, 16]
    assert out[1] == GapEvent(SYM, 12, 14, "not_served", 5)
    req = seq.request(SYM)
    out = seq.accept_backfill(req, [])
    assert out[0] == GapEvent(SYM, 17, 19, "not_served", 0) and ids(out) == [20]
    assert (seq.gaps, seq.ids_lost) == (2, 6)


def test_a_failed_backfill_of_a_known_hole_is_one_gap_with_the_exact_range() -> None:
    seq = TradeSequencer([SYM])
    seq.accept_live(trade(100))
    seq.accept_live(trade(105))
    seq.accept_live(trade(106))
    out = seq.fail_backfill(seq.request(SYM), "http_400", now_ms=7)
    assert out[0] == GapEvent(SYM, 101, 104, "http_400", 7) and ids(out) == [105, 106]
    assert seq.request(SYM) is None


def test_a_failed_read_to_present_declares_nothing_until_the_hole_is_known() -> None:
    seq = TradeSequencer([SYM])
    seq.accept_live(trade(100))
    seq.mark_reconnected()
    assert seq.fail_backfill(seq.request(SYM), "rest_failed") == []
    assert seq.request(SYM) is None and seq.gaps == 0
    seq.accept_live(trade(103))
    assert seq.request(SYM) == BackfillRequest(SYM, 101, 102, 2)


def test_backlog_overflow_gives_the_hole_up_and_ignores_the_late_page() -> None:
    seq = TradeSequencer([SYM], max_pending=3)
    seq.accept_live(trade(0))
    seq.accept_live(trade(10))
    req = seq.request(SYM)
    for i in (11, 12):
        assert seq.accept_live(trade(i)) == []
    out = seq.accept_live(trade(13))
    assert out[0] == GapEvent(SYM, 1, 9, "backlog_overflow", 0) and ids(out) == [10, 11, 12, 13]
    assert ids(seq.accept_backfill(req, [trade(i) for i in range(1, 10)])) == []


def test_trades_of_unknown_symbols_are_counted_not_delivered() -> None:
    seq = TradeSequencer([SYM])
    assert seq.accept_live(trade(1, "DOGEUSDT")) == [] and seq.unknown_symbol == 1


def test_resume_backfills_from_the_last_id_of_a_previous_run() -> None:
    seq = TradeSequencer([SYM])
    seq.resume(SYM, 41)
    assert seq.request(SYM) == BackfillRequest(SYM, 42, None, PAGE_LIMIT)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_arrival_pattern_yields_each_id_once_in_order_and_every_other_id_as_a_gap(data: st.DataObject) -> None:
    """Live arrivals with drops, duplicates, late ids and reconnects; a venue that pages, loses some ids
    and sometimes fails: delivered ids ascend strictly, and delivered + gap ids tile the range exactly."""
    n = data.draw(st.integers(20, 300))
    lost_by_venue = data.draw(st.sets(st.integers(1, n - 1), max_size=5))
    seq = TradeSequencer([SYM], max_pending=data.draw(st.sampled_from([5, 50, 10_000])))
    delivered: list[int] = []
    gaps: list[GapEvent] = []

    def take(out: list[RawTrade | GapEvent]) -> None:
        for item in out:
            if isinstance(item, GapEvent):
                assert item.from_id > (delivered[-1] if delivered else -1)
                gaps.append(item)
            else:
                delivered.append(item.trade_id)

    outstanding: list[BackfillRequest] = []

    def answer(req: BackfillRequest, upto: int) -> None:
        if data.draw(st.integers(0, 9)) == 0:
            take(seq.fail_backfill(req, "rest_failed"))
            return
        avail = [i for i in range(req.from_id, upto + 1) if i not in lost_by_venue]
        take(seq.accept_backfill(req, [trade(i) for i in avail[: req.limit]]))

    def step(upto: int) -> None:
        # A request may stay out while live trades arrive: its page then overlaps what they delivered.
        if outstanding and data.draw(st.booleans()):
            answer(outstanding.pop(), upto)
        if not outstanding and (req := seq.request(SYM)) is not None:
            outstanding.append(req)

    for i in range(n):
        kind = data.draw(st.sampled_from(["ok", "ok", "ok", "drop", "dup", "late", "reconnect"]))
        if kind != "drop":
            take(seq.accept_live(trade(i)))
        if kind == "dup":
            take(seq.accept_live(trade(i)))
        elif kind == "late" and i > 3:
            take(seq.accept_live(trade(i - 3)))
        elif kind == "reconnect":
            seq.mark_reconnected()
        step(i)
    take(seq.accept_live(trade(n)))
    if outstanding:
        answer(outstanding.pop(), n)
    while (req := seq.request(SYM)) is not None:
        answer(req, n)

    assert delivered == sorted(set(delivered))
    assert delivered[-1] == n and seq.pending_count(SYM) == 0
    covered = sorted(delivered + [i for g in gaps for i in range(g.from_id, g.to_id + 1)])
    assert covered == list(range(delivered[0], n + 1))
