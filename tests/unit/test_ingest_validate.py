"""Validator: what becomes a Tick, why the rest is rejected, gaps, counts, samples and clock skew."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unistream_common.packets import Tick
from unistream_ingest import validate
from unistream_ingest.sequencer import Gap
from unistream_ingest.validate import Rejection, Validator
from unistream_ingest.venue import RawTrade

T0 = 1_700_000_000_000


def _trade(trade_id: int, ts: int = T0, symbol: str = "ETHUSDT", price: float = 2000.0, size: float = 0.5,
           buyer_is_maker: bool = False) -> RawTrade:  # fmt: skip
    return RawTrade(symbol, trade_id, price, size, buyer_is_maker, ts)


def test_accepted_trade_becomes_a_tick_with_aggressor_side_from_buyer_is_maker() -> None:
    v = Validator(["ETHUSDT"])
    assert v.check(_trade(1, buyer_is_maker=True), T0 + 40) == Tick(1, 2000.0, 0.5, "SELL", T0, T0 + 40)
    assert v.check(_trade(2, buyer_is_maker=False), T0 + 40) == Tick(2, 2000.0, 0.5, "BUY", T0, T0 + 40)
    assert v.accepted == 2 and v.counts == {}


@pytest.mark.parametrize(
    ("trade", "reason"),
    [
        (_trade(1, symbol="DOGEUSDT"), "unknown_symbol"),
        (_trade(1, price=0.0), "bad_price"),
        (_trade(1, price=-3.0), "bad_price"),
        (_trade(1, price=math.nan), "bad_price"),
        (_trade(1, price=math.inf), "bad_price"),
        (_trade(1, size=0.0), "bad_size"),
        (_trade(1, size=math.nan), "bad_size"),
        (_trade(1, ts=1_000), "bad_ts"),  # a unit error, not an old trade
        (_trade(1, ts=T0 + 5_001), "future_ts"),
        (_trade(1, ts=T0 - 7 * 86_400_000 - 1), "stale_ts"),
    ],
)
def test_implausible_trade_is_rejected_with_its_reason_and_counted(trade: RawTrade, reason: str) -> None:
    v = Validator(["ETHUSDT"])
    result = v.check(trade, T0)
    assert isinstance(result, Rejection) and result.reason == reason
    assert v.counts == {reason: 1} and v.accepted == 0
    assert v.samples[-1].reason == reason and v.samples[-1].item == trade


def test_trade_exactly_at_the_skew_limits_is_accepted_and_past_check_can_be_off() -> None:
    v = Validator(["ETHUSDT"], max_future_skew_ms=100, max_past_ms=None)
    assert isinstance(v.check(_trade(1, ts=T0 + 100), T0), Tick)
    assert isinstance(v.check(_trade(2, ts=T0 - 400 * 86_400_000), T0), Tick)


def test_repeated_id_is_a_duplicate_and_lower_id_too() -> None:
    v = Validator(["ETHUSDT"])
    v.check(_trade(10), T0)
    assert v.check(_trade(10), T0).reason == "duplicate"  # type: ignore[union-attr]
    assert v.check(_trade(9), T0).reason == "duplicate"  # type: ignore[union-attr]
    assert v.counts == {"duplicate": 2}
    assert isinstance(v.check(_trade(11), T0), Tick)


def test_skipped_ids_are_accepted_and_reported_as_a_gap_once() -> None:
    v = Validator(["ETHUSDT", "BTCUSDT"])
    v.check(_trade(10), T0)
    v.check(_trade(50, symbol="BTCUSDT"), T0)
    tick = v.check(_trade(15, ts=T0 + 7), T0 + 9)
    assert isinstance(tick, Tick) and tick.trade_id == 15
    assert v.take_gaps() == [Gap("ETHUSDT", 11, 14, T0 + 7)]
    assert v.take_gaps() == []
    assert v.stats()["gaps"] == 1 and v.stats()["missing_ids"] == 4


def test_late_trade_inside_a_known_gap_is_out_of_order_not_a_duplicate() -> None:
    v = Validator(["ETHUSDT"])
    v.check(_trade(10), T0)
    v.check(_trade(15), T0)
    assert v.check(_trade(12), T0).reason == "out_of_order"  # type: ignore[union-attr]
    assert v.check(_trade(10), T0).reason == "duplicate"  # type: ignore[union-attr]


def test_first_trade_of_a_symbol_has_no_gap_but_resume_makes_one_visible() -> None:
    v = Validator(["ETHUSDT"])
    v.check(_trade(1000), T0)
    assert v.take_gaps() == []
    v2 = Validator(["ETHUSDT"])
    v2.resume("ETHUSDT", 900)
    v2.check(_trade(1000), T0)
    assert v2.take_gaps() == [Gap("ETHUSDT", 901, 999, T0)]


def test_rejected_trades_do_not_move_the_last_id() -> None:
    v = Validator(["ETHUSDT"])
    v.check(_trade(1), T0)
    v.check(_trade(5, price=0.0), T0)
    assert v.last_ids == {"ETHUSDT": 1}
    assert isinstance(v.check(_trade(2), T0), Tick) and v.take_gaps() == []


def test_reject_raw_counts_parse_errors_beside_rejections_and_sample_is_bounded() -> None:
    v = Validator(["ETHUSDT"], sample_size=3)
    v.reject_raw("bad_json", b"{" + b"x" * 1000)
    v.reject_raw("bad_type", '{"p": 1}', "p is not a string")
    v.check(_trade(1, symbol="XRPUSDT"), T0)
    v.reject_raw("bad_json", "{")
    assert v.counts == {"bad_json": 2, "bad_type": 1, "unknown_symbol": 1}
    assert [s.reason for s in v.samples] == ["bad_type", "unknown_symbol", "bad_json"]
    stats = v.stats()
    assert stats["rejected"] == v.counts and len(stats["samples"]) == 3
    v2 = Validator(["ETHUSDT"])
    v2.reject_raw("bad_json", b"{" + b"x" * 1000)
    assert len(v2.samples[0].item) == 300


def test_clock_skew_tracks_last_min_max_ewma_and_recent_median() -> None:
    v = Validator(["ETHUSDT"])
    assert v.stats()["skew_ms"]["p50_recent"] is None
    for i, skew in enumerate([40, 10, 70, 30, -5]):
        v.check(_trade(i + 1, ts=T0), T0 + skew)
    skew = v.stats()["skew_ms"]
    assert (skew["last"], skew["min"], skew["max"], skew["p50_recent"]) == (-5, -5, 70, 30)
    assert -5 <= skew["ewma"] <= 70


def test_bad_configuration_and_bad_recv_time_are_refused() -> None:
    with pytest.raises(ValueError):
        Validator([])
    with pytest.raises(ValueError):
        Validator(["ETHUSDT"], max_future_skew_ms=-1)
    with pytest.raises(ValueError, match="recv_ms"):
        Validator(["ETHUSDT"]).check(_trade(1), -1)


_ops = st.lists(st.tuples(st.sampled_from(["ETHUSDT", "BTCUSDT"]), st.integers(0, 60)), max_size=200)


@settings(max_examples=200, deadline=None)
@given(_ops)
def test_a_trade_id_is_never_accepted_twice(ops: list[tuple[str, int]]) -> None:
    v = Validator(["ETHUSDT", "BTCUSDT"])
    seen: set[tuple[str, int]] = set()
    for symbol, tid in ops:
        result = v.check(_trade(tid, symbol=symbol), T0)
        if isinstance(result, Tick):
            assert (symbol, tid) not in seen
            seen.add((symbol, tid))
        else:
            assert result.reason in {"duplicate", "out_of_order"}
    assert v.accepted == len(seen)
    assert sum(v.counts.values()) == len(ops) - len(seen)


@settings(max_examples=200, deadline=None)
@given(_ops)
def test_accepted_ids_strictly_increase_per_symbol_and_gaps_cover_every_skipped_id(ops: list[tuple[str, int]]) -> None:
    v = Validator(["ETHUSDT", "BTCUSDT"])
    accepted: dict[str, list[int]] = {"ETHUSDT": [], "BTCUSDT": []}
    for symbol, tid in ops:
        result = v.check(_trade(tid, symbol=symbol), T0)
        if isinstance(result, Tick):
            accepted[symbol].append(tid)
    gaps = v.take_gaps()
    for symbol, ids in accepted.items():
        assert ids == sorted(set(ids))
        missing = {i for g in gaps if g.symbol == symbol for i in range(g.from_id, g.to_id + 1)}
        if ids:
            assert missing | set(ids) == set(range(ids[0], ids[-1] + 1))
            assert not missing & set(ids)


# --- check_columns: the batch form equals check on each trade --------------------------------------


def _validator_state(v: Validator) -> tuple[object, ...]:
    stats = v.stats()
    return (stats, v.take_gaps(), [(s.reason, s.item, s.detail) for s in v.samples], v.skew_ewma_ms, list(v._skews))


_ODD = [
    {"price": 0.0}, {"price": -1.0}, {"price": math.nan}, {"price": math.inf}, {"size": 0.0}, {"size": math.nan},
    {"ts": 1_000}, {"ts": T0 + 10_000_000}, {"ts": T0 - 10 * 86_400_000},
    {"id_delta": 0}, {"id_delta": -5}, {"id_delta": 3}, {"id_delta": 1_000}, {"buyer_is_maker": 1},
]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    picks=st.lists(st.integers(-len(_ODD), 60), min_size=0, max_size=400),
    resume=st.one_of(st.none(), st.integers(0, 120)),
    max_past=st.sampled_from([None, 7 * 86_400_000]),
    sample_size=st.sampled_from([3, 20]),
    skew_window=st.sampled_from([5, 1_001]),
    rounds=st.integers(1, 3),
    split=st.sampled_from([1, 4, validate.MIN_SPLIT_TRADES]),
)
def test_check_columns_equals_check_on_each_trade(
    picks: list[int], resume: int | None, max_past: int | None, sample_size: int, skew_window: int, rounds: int,
    split: int,
) -> None:  # fmt: skip
    trades = []
    tid = 100
    for i, pick in enumerate(picks):
        odd = _ODD[pick] if pick < 0 else {}
        tid += odd.get("id_delta", 1)
        trades.append(
            RawTrade("ETHUSDT", tid, odd.get("price", 2000.0 + pick), odd.get("size", 0.25 + i),
                     odd.get("buyer_is_maker", pick % 2 == 0), odd.get("ts", T0 + 3 * i - pick), count=1 + pick % 3)
        )  # fmt: skip
    one, many = (Validator(["ETHUSDT"], max_past_ms=max_past, sample_size=sample_size, skew_window=skew_window)
                 for _ in range(2))  # fmt: skip
    if resume is not None:
        one.resume("ETHUSDT", resume)
        many.resume("ETHUSDT", resume)
    step = max(1, -(-len(trades) // rounds))
    default_split, validate.MIN_SPLIT_TRADES = validate.MIN_SPLIT_TRADES, split  # isolate down to single trades
    try:
        _compare_batches(one, many, trades, step)
    finally:
        validate.MIN_SPLIT_TRADES = default_split
    assert repr(_validator_state(many)) == repr(_validator_state(one))


def _compare_batches(one: Validator, many: Validator, trades: list[RawTrade], step: int) -> None:
    for start in range(0, len(trades), step):
        part = trades[start : start + step]
        recv = T0 + 1_000 + start
        expected = [t for t in (one.check(x, recv) for x in part) if not isinstance(t, Rejection)]
        got = many.check_columns(
            "ETHUSDT", [t.trade_id for t in part], [t.price for t in part], [t.size for t in part],
            [t.buyer_is_maker for t in part], [t.ts_event_ms for t in part], recv, [t.count for t in part],
        )  # fmt: skip
        assert got == expected


def test_check_columns_of_a_clean_run_takes_no_step_per_trade(monkeypatch: pytest.MonkeyPatch) -> None:
    v = Validator(["ETHUSDT"])
    v.resume("ETHUSDT", 10)
    monkeypatch.setattr(v, "check", lambda *a: pytest.fail("the per-trade path ran"))
    n = 5_000
    ticks = v.check_columns("ETHUSDT", list(range(20, 20 + n)), [2000.0] * n, [0.5] * n, [True, False] * (n // 2),
                            [T0 + i for i in range(n)], T0 + n)  # fmt: skip
    assert len(ticks) == n and ticks[1] == Tick(21, 2000.0, 0.5, "BUY", T0 + 1, T0 + n)
    assert v.take_gaps() == [Gap("ETHUSDT", 11, 19, T0)] and v.accepted == n and v.last_ids["ETHUSDT"] == 20 + n - 1
    with pytest.raises(ValueError, match="recv_ms"):
        v.check_columns("ETHUSDT", [1], [1.0], [1.0], [True], [T0], -1)
    monkeypatch.undo()
    assert v.check_columns("BTCUSDT", [1, 2], [1.0, 1.0], [1.0, 1.0], [True, True], [T0, T0], T0) == []
    assert v.counts == {"unknown_symbol": 2}
