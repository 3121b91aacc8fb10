"""WrittenTicks: what a tick writer remembers to repair a Redis that rolled back (pure)."""

from __future__ import annotations

from unistream_common.packets import Tick
from unistream_ingest.core import WrittenTicks


def ticks(*ids: int) -> list[Tick]:
    return [Tick(i, 100.0, 1.0, "BUY", 1_000 + i, 1_000 + i) for i in ids]


def test_a_mark_below_what_was_written_gives_back_the_lost_trades_in_order() -> None:
    w = WrittenTicks(keep_ms=10_000, max_ticks=100)
    w.note("ETHUSDT", ticks(1, 2, 3), now_ms=0, source="REAL")
    w.note("ETHUSDT", ticks(4, 5), now_ms=10, source="REPLAY")
    assert w.expected("ETHUSDT") == "5"
    found = w.reconcile("ETHUSDT", 2)
    assert found.rolled_back and found.lost is None
    assert [t.trade_id for t in found.resend] == [3, 4, 5]
    assert found.sources == ["REAL", "REPLAY", "REPLAY"]
    assert w.expected("ETHUSDT") == "2"  # the next write expects what Redis holds
    w.note("ETHUSDT", found.resend, now_ms=20)  # written again: remembered once, not twice
    again = w.reconcile("ETHUSDT", 2)
    assert [t.trade_id for t in again.resend] == [3, 4, 5]


def test_a_mark_inside_a_batch_gives_back_only_the_batch_s_later_trades() -> None:
    w = WrittenTicks(keep_ms=10_000, max_ticks=100)
    w.note("ETHUSDT", ticks(1, 2, 3, 4), now_ms=0)
    found = w.reconcile("ETHUSDT", 2)
    assert [t.trade_id for t in found.resend] == [3, 4] and found.lost is None
    w.note("ETHUSDT", found.resend, now_ms=5)
    assert [t.trade_id for t in w.reconcile("ETHUSDT", 1).resend] == [2, 3, 4]


def test_a_rollback_further_back_than_remembered_names_the_lost_stretch() -> None:
    w = WrittenTicks(keep_ms=100, max_ticks=100)
    w.note("ETHUSDT", ticks(1, 2, 3), now_ms=0)
    w.note("ETHUSDT", ticks(4, 5), now_ms=1_000)  # 1..3 are forgotten: older than keep_ms
    found = w.reconcile("ETHUSDT", 1)
    assert [t.trade_id for t in found.resend] == [4, 5]
    assert found.lost == (2, 3)


def test_the_count_bound_forgets_too_and_a_lost_mark_loses_everything_forgotten() -> None:
    w = WrittenTicks(keep_ms=10_000, max_ticks=2)
    w.note("ETHUSDT", ticks(1, 2), now_ms=0)
    w.note("ETHUSDT", ticks(3, 4), now_ms=0)  # whole batches are forgotten: 1, 2 go
    found = w.reconcile("ETHUSDT", None)  # the mark itself is gone: Redis lost all of it
    assert [t.trade_id for t in found.resend] == [3, 4] and found.lost == (0, 2)
    assert w.expected("ETHUSDT") == "*"


def test_equal_and_ahead_marks_are_not_rollbacks() -> None:
    w = WrittenTicks(keep_ms=10_000, max_ticks=100)
    assert not w.reconcile("ETHUSDT", 7).rolled_back  # a writer that wrote nothing takes the mark
    assert w.expected("ETHUSDT") == "7"
    w.note("ETHUSDT", ticks(8, 9), now_ms=0)
    assert w.reconcile("ETHUSDT", 9) == w.reconcile("ETHUSDT", 9) and not w.reconcile("ETHUSDT", 9).rolled_back
    ahead = w.reconcile("ETHUSDT", 12)  # a write whose reply was lost went through
    assert ahead.ahead and not ahead.rolled_back and w.expected("ETHUSDT") == "12"
