"""Warm-up history builders: klines, archive trades and the simulator's past into closed history bars."""

from __future__ import annotations

import math
import random
from itertools import pairwise
from typing import Any

import httpx
import msgspec
import pytest

from unistream_aggregator.core import BarAggregator
from unistream_common import codec, keys
from unistream_common.bars import BarAccumulator, roll_up
from unistream_common.packets import Bar, Tick, TickBatch
from unistream_ingest.binance.parsing import Kline, parse_rest_klines
from unistream_ingest.history import (
    LATE_FETCH_MS,
    HistoryError,
    _replay_history,
    _ReplayBars,
    _trade_chunks,
    bars_from_klines,
    bars_from_trades,
    fetch_kline_history,
    provide_history,
    publish_history,
    synthetic_history,
)
from unistream_ingest.settings import IngestSettings
from unistream_ingest.synthetic import spec_for
from unistream_ingest.venue import RawTrade

DAY_MS = 86_400_000
T0 = 1_764_028_800_000  # 2025-11-25 00:00:00 UTC: aligned to 1m, 1h and 1d


def kline(open_ms: int, tf: str = "1m", **over: Any) -> Kline:
    span = keys.TIMEFRAME_MS[tf]
    values: dict[str, Any] = {
        "symbol": "ETHUSDT", "interval": tf, "open_time_ms": open_ms, "open": 100.0, "high": 103.0, "low": 99.0,
        "close": 101.0, "volume": 4.0, "close_time_ms": open_ms + span - 1, "quote_volume": 404.0, "trade_count": 7,
        "taker_buy_base": 1.5, "taker_buy_quote": 151.0,
    }  # fmt: skip
    values.update(over)
    return Kline(**values)


def trade(ts: int, price: float, size: float = 1.0, buyer_is_maker: bool = True, count: int = 1) -> RawTrade:
    return RawTrade("ETHUSDT", ts, price, size, buyer_is_maker, ts, count)


def assert_valid_history(bars: list[Bar], tf: str) -> None:
    """Every bar decodes (all constraints), is history, and the series is consecutive and aligned."""
    span = keys.TIMEFRAME_MS[tf]
    for prev, bar in pairwise(bars):
        assert bar.open_time_ms == prev.open_time_ms + span
    for bar in bars:
        assert codec.decode(codec.encode(bar)) == bar
        assert bar.is_history and bar.timeframe == tf
        assert bar.open_time_ms % span == 0 and bar.close_time_ms == bar.open_time_ms + span
        assert bar.low <= bar.vwap <= bar.high
        assert bar.high >= max(bar.open, bar.close) >= min(bar.open, bar.close) >= bar.low


# --- keys ----------------------------------------------------------------------------------------


def test_history_streams_are_named_apart_from_bar_streams_and_parse_back() -> None:
    assert keys.history("ETHUSDT", "1m") == "md:history:{ETHUSDT}:1m"
    assert keys.history("ETHUSDT", "1s") == "md:history:{ETHUSDT}:1s"
    assert keys.parse_history("md:history:{ETHUSDT}:1d") == ("ETHUSDT", "1d")
    assert keys.parse_history("md:history:{ETHUSDT}:1s") == ("ETHUSDT", "1s")
    assert keys.parse_history("md:history:{ETHUSDT}:5m") is None
    assert keys.parse_history(keys.bars("ETHUSDT", "1m")) is None
    assert keys.parse_bars(keys.history("ETHUSDT", "1s")) is None
    assert keys.history_streams(["BTCUSDT"]) == [f"md:history:{{BTCUSDT}}:{tf}" for tf in ("1s", "1m", "1h", "1d")]
    with pytest.raises(ValueError, match="history timeframe"):
        keys.history("ETHUSDT", "5m")
    with pytest.raises(ValueError, match="not a valid symbol"):
        keys.history("eth-usdt", "1m")


# --- klines --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tf", ["1s", "1m", "1h", "1d"])
def test_kline_becomes_a_history_bar_closing_at_open_plus_span(tf: str) -> None:
    span = keys.TIMEFRAME_MS[tf]
    [bar] = bars_from_klines([kline(T0, tf)], "ETHUSDT", tf)
    assert (bar.open_time_ms, bar.close_time_ms) == (T0, T0 + span)
    assert (bar.open, bar.high, bar.low, bar.close) == (100.0, 103.0, 99.0, 101.0)
    assert bar.vwap == 101.0 and bar.taker_buy_volume == 1.5 and bar.trade_count == 7
    assert bar.is_history and bar.source == "REAL" and not bar.filled
    assert_valid_history([bar], tf)


def test_klines_still_open_at_now_are_dropped_and_closed_ones_kept() -> None:
    klines = [kline(T0 + i * 60_000) for i in range(3)]
    bars = bars_from_klines(klines, "ETHUSDT", "1m", now_ms=T0 + 2 * 60_000 + 59_999)
    assert [b.open_time_ms for b in bars] == [T0, T0 + 60_000]
    assert len(bars_from_klines(klines, "ETHUSDT", "1m", now_ms=T0 + 3 * 60_000)) == 3


def test_klines_come_out_oldest_first_once_per_open_time() -> None:
    bars = bars_from_klines([kline(T0 + 60_000), kline(T0), kline(T0 + 60_000)], "ETHUSDT", "1m")
    assert [b.open_time_ms for b in bars] == [T0, T0 + 60_000]


def test_kline_without_trades_becomes_a_flat_filled_bar_at_its_close() -> None:
    empty = kline(T0, open=100.0, high=100.0, low=100.0, close=100.0, volume=0.0, quote_volume=0.0, trade_count=0,
                  taker_buy_base=0.0)  # fmt: skip
    [bar] = bars_from_klines([empty], "ETHUSDT", "1m")
    assert bar.filled and bar.volume == 0 and bar.trade_count == 0
    assert bar.open == bar.high == bar.low == bar.close == bar.vwap == 100.0


def test_kline_with_zero_volume_but_trades_takes_the_close_as_vwap() -> None:
    [bar] = bars_from_klines([kline(T0, volume=0.0, quote_volume=0.0, taker_buy_base=0.0)], "ETHUSDT", "1m")
    assert bar.vwap == 101.0 and not bar.filled


def test_vwap_off_by_rounding_is_kept_inside_the_bar_range() -> None:
    [bar] = bars_from_klines([kline(T0, high=101.0, low=101.0, open=101.0, quote_volume=404.0000001)], "ETHUSDT", "1m")
    assert bar.vwap == 101.0


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"close_time_ms": T0 + 60_000}, "not a 1m kline"),
        ({"open_time_ms": T0 + 1, "close_time_ms": T0 + 60_000}, "not aligned"),
        ({"high": 98.0}, "high"),
        ({"low": -1.0}, "not a valid bar"),
        ({"trade_count": 0}, "no trades"),
    ],
)
def test_a_kline_that_cannot_be_a_bar_is_refused_with_the_reason(over: dict[str, Any], match: str) -> None:
    with pytest.raises(HistoryError, match=match):
        bars_from_klines([kline(T0), kline(T0 + 60_000, **over)], "ETHUSDT", "1m")


def test_klines_of_an_unsupported_timeframe_are_refused() -> None:
    with pytest.raises(ValueError, match="history timeframe"):
        bars_from_klines([], "ETHUSDT", "5m")


def test_rest_klines_of_1s_parse_into_1s_bars_and_a_minute_kline_is_not_one() -> None:
    body = (
        b'[[1764028800000,"100.5","101.0","100.0","100.25","2.0",1764028800999,"201.0",4,"0.5","50.25","0"],'
        b'[1764028801000,"100.25","100.25","100.25","100.25","0.0",1764028801999,"0.0",0,"0.0","0.0","0"]]'
    )
    klines = parse_rest_klines(body, "ETHUSDT", "1s")
    assert [(k.interval, k.open_time_ms, k.close_time_ms) for k in klines] == [
        ("1s", T0, T0 + 999), ("1s", T0 + 1_000, T0 + 1_999)]  # fmt: skip
    real, empty = bars_from_klines(klines, "ETHUSDT", "1s")
    assert (real.open_time_ms, real.close_time_ms, real.open, real.close, real.trade_count) == (
        T0, T0 + 1_000, 100.5, 100.25, 4)  # fmt: skip
    assert real.vwap == 100.5 and not real.filled
    assert empty.filled and empty.open == empty.close == 100.25 and empty.close_time_ms == T0 + 2_000
    assert_valid_history([real, empty], "1s")
    with pytest.raises(HistoryError, match="not a 1s kline"):
        bars_from_klines([kline(T0, "1m")], "ETHUSDT", "1s")


# --- fetch (httpx mock transport, no network) ----------------------------------------------------


def kline_rows(n: int, tf: str = "1m", start: int = T0) -> list[list[Any]]:
    span = keys.TIMEFRAME_MS[tf]
    return [
        [start + i * span, "100.0", "102.0", "99.0", "101.0", "2.0", start + (i + 1) * span - 1, "201.0", 3, "1.0",
         "100.5", "0"]
        for i in range(n)
    ]  # fmt: skip


def mock_client(responses: list[httpx.Response], seen: list[httpx.Request]) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses.pop(0)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_fetch_asks_for_one_more_kline_and_drops_the_open_last_one() -> None:
    seen: list[httpx.Request] = []
    rows = kline_rows(4, "1h")
    async with mock_client([httpx.Response(200, json=rows)], seen) as http:
        bars = await fetch_kline_history("http://x", "ETHUSDT", "1h", 3, http, now_ms=T0 + 10 * 3_600_000)
    assert [b.open_time_ms for b in bars] == [T0, T0 + 3_600_000, T0 + 7_200_000]
    assert seen[0].url.path == "/api/v3/klines"
    assert dict(seen[0].url.params) == {"symbol": "ETHUSDT", "interval": "1h", "limit": "4"}


async def test_fetch_of_1s_asks_for_spare_rows_and_a_late_answer_still_ends_at_now() -> None:
    seen: list[httpx.Request] = []
    # Asked for at now = T0 + 400 s, answered 20 s later: the last 21 rows closed after now.
    rows = kline_rows(421, "1s")
    async with mock_client([httpx.Response(200, json=rows)], seen) as http:
        bars = await fetch_kline_history("http://x", "ETHUSDT", "1s", 300, http, now_ms=T0 + 400_000)
    assert dict(seen[0].url.params) == {
        "symbol": "ETHUSDT", "interval": "1s", "limit": str(300 + 1 + LATE_FETCH_MS // 1_000)}  # fmt: skip
    assert LATE_FETCH_MS // 1_000 >= 30
    assert len(bars) == 300
    assert (bars[0].open_time_ms, bars[-1].close_time_ms) == (T0 + 100_000, T0 + 400_000)
    assert_valid_history(bars, "1s")
    assert all(b.source == "REAL" for b in bars)


async def test_fetch_keeps_only_klines_closed_by_now_and_at_most_count() -> None:
    seen: list[httpx.Request] = []
    async with mock_client([httpx.Response(200, json=kline_rows(6))], seen) as http:
        bars = await fetch_kline_history("http://x", "ETHUSDT", "1m", 2, http, now_ms=T0 + 4 * 60_000)
    assert [b.open_time_ms for b in bars] == [T0 + 2 * 60_000, T0 + 3 * 60_000]


async def test_fetch_honours_one_429_retry_after_then_succeeds() -> None:
    seen: list[httpx.Request] = []
    limited = httpx.Response(429, headers={"Retry-After": "0"}, json={"code": -1003, "msg": "Too many requests"})
    async with mock_client([limited, httpx.Response(200, json=kline_rows(3))], seen) as http:
        bars = await fetch_kline_history("http://x", "ETHUSDT", "1m", 5, http, now_ms=T0 + DAY_MS)
    assert len(seen) == 2 and len(bars) == 2


@pytest.mark.parametrize(
    ("responses", "match"),
    [
        ([httpx.Response(429, headers={"Retry-After": "0"})] * 2, "429 again"),
        ([httpx.Response(429, headers={"Retry-After": "600"})], "not waiting"),
        ([httpx.Response(418, headers={"Retry-After": "120"})], "banned"),
        ([httpx.Response(400, json={"code": -1121, "msg": "Invalid symbol."})], "HTTP 400.*Invalid symbol"),
        ([httpx.Response(200, content=b"not json")], "malformed"),
    ],
)
async def test_fetch_failures_raise_history_error_with_the_reason(responses: list[httpx.Response], match: str) -> None:
    seen: list[httpx.Request] = []
    async with mock_client(list(responses), seen) as http:
        with pytest.raises(HistoryError, match=match):
            await fetch_kline_history("http://x", "ETHUSDT", "1m", 5, http, now_ms=T0 + DAY_MS)


async def test_fetch_of_an_unreachable_venue_raises_history_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(HistoryError, match="no answer"):
            await fetch_kline_history("http://x", "ETHUSDT", "1m", 5, http)


# --- archive trades ------------------------------------------------------------------------------


def test_trades_roll_up_into_utc_aligned_minutes_with_volumes_vwap_and_taker_volume() -> None:
    trades = [
        trade(T0 + 1_000, 100.0, 1.0, buyer_is_maker=False),  # taker bought
        trade(T0 + 2_000, 104.0, 3.0, buyer_is_maker=True, count=2),
        trade(T0 + 59_999, 98.0, 1.0, buyer_is_maker=False),
        trade(T0 + 60_000, 101.0, 2.0),  # first trade of the next minute
        trade(T0 + 120_500, 102.0, 1.0),  # the last bar: may be partial, dropped
    ]
    first, second = bars_from_trades(trades, "ETHUSDT", "1m")
    assert (first.open_time_ms, first.close_time_ms) == (T0, T0 + 60_000)
    assert (first.open, first.high, first.low, first.close) == (100.0, 104.0, 98.0, 98.0)
    assert first.volume == 5.0 and first.quote_volume == 100.0 + 312.0 + 98.0
    assert first.vwap == pytest.approx(510.0 / 5.0)
    assert first.taker_buy_volume == 2.0 and first.trade_count == 4
    assert first.source == "REPLAY" and first.is_history and not first.filled
    assert second.open_time_ms == T0 + 60_000 and second.close == 101.0 and second.taker_buy_volume == 0.0


def test_minutes_without_trades_inside_the_span_are_flat_filled_bars_at_the_last_close() -> None:
    trades = [
        trade(T0 + 5, 100.0),
        trade(T0 + 10, 101.0),
        trade(T0 + 3 * 60_000 + 5, 99.0),
        trade(T0 + 4 * 60_000, 1.0),
    ]
    bars = bars_from_trades(trades, "ETHUSDT", "1m")
    assert [b.filled for b in bars] == [False, True, True, False]
    assert all(b.open == b.high == b.low == b.close == 101.0 and b.volume == 0 for b in bars[1:3])
    assert_valid_history(bars, "1m")


def test_end_ms_keeps_the_last_bar_and_empty_minutes_up_to_it() -> None:
    trades = [trade(T0 + 5, 100.0), trade(T0 + 30_000, 101.0)]
    assert bars_from_trades(trades, "ETHUSDT", "1m") == []
    bars = bars_from_trades(trades, "ETHUSDT", "1m", end_ms=T0 + 3 * 60_000 + 1)
    assert [b.filled for b in bars] == [False, True, True]
    assert bars[-1].close_time_ms == T0 + 3 * 60_000


def test_late_and_non_positive_trades_are_skipped() -> None:
    trades = [trade(T0 + 61_000, 100.0), trade(T0 + 1_000, 500.0), trade(T0 + 62_000, 0.0), trade(T0 + 121_000, 1.0)]
    [bar] = bars_from_trades(trades, "ETHUSDT", "1m")
    assert bar.open_time_ms == T0 + 60_000 and bar.high == 100.0 and bar.volume == 1.0


def test_hours_are_built_only_when_every_minute_is_covered() -> None:
    # From 00:30 to 03:00:30: the half hour at the start and the bar holding the last trade are partial.
    trades = [trade(T0 + 30 * 60_000 + i * 60_000, 100.0 + (i % 7)) for i in range(151)]
    hours = bars_from_trades(trades, "ETHUSDT", "1h")
    assert [b.open_time_ms for b in hours] == [T0 + 3_600_000, T0 + 7_200_000]
    assert all(b.trade_count == 60 and b.volume == 60.0 for b in hours)
    assert_valid_history(hours, "1h")
    assert bars_from_trades(trades, "ETHUSDT", "1d") == []


def test_a_whole_day_of_trades_with_its_end_gives_one_day_bar() -> None:
    trades = [trade(T0 + i * 600_000, 100.0 + i % 5, buyer_is_maker=i % 2 == 0) for i in range(144)]
    [day] = bars_from_trades(trades, "ETHUSDT", "1d", end_ms=T0 + DAY_MS)
    assert (day.open_time_ms, day.close_time_ms) == (T0, T0 + DAY_MS)
    assert (day.open, day.high, day.low, day.close) == (100.0, 104.0, 100.0, trades[-1].price)
    assert day.trade_count == 144 and day.volume == 144.0 and day.taker_buy_volume == 72.0
    assert day.vwap == pytest.approx(sum(t.price for t in trades) / 144)


def reference_seconds(trades: list[RawTrade], end_ms: int | None = None) -> list[dict[str, Any]]:
    """1s bars the plain way: the valid trades grouped by their second, then every second from the
    first trade's to the last trade's (excluded; with ``end_ms``, to the last second ending by then),
    an empty one flat at the last close."""
    by_second: dict[int, list[RawTrade]] = {}
    for t in trades:
        if t.price > 0 and t.size > 0:
            by_second.setdefault(t.ts_event_ms // 1_000 * 1_000, []).append(t)
    stop = max(by_second) if end_ms is None else end_ms // 1_000 * 1_000
    out: list[dict[str, Any]] = []
    close = math.nan
    for open_ms in range(min(by_second), stop, 1_000):
        ts = by_second.get(open_ms, [])
        if ts:
            close = ts[-1].price
            prices = [t.price for t in ts]
            volume = sum(t.size for t in ts)
            quote = sum(t.price * t.size for t in ts)
            out.append({
                "open_time_ms": open_ms, "open": prices[0], "high": max(prices), "low": min(prices), "close": close,
                "volume": volume, "quote_volume": quote, "vwap": quote / volume, "trade_count": sum(t.count for t in ts),
                "taker_buy_volume": sum(t.size for t in ts if not t.buyer_is_maker), "filled": False,
            })  # fmt: skip
        else:
            out.append({
                "open_time_ms": open_ms, "open": close, "high": close, "low": close, "close": close, "volume": 0.0,
                "quote_volume": 0.0, "vwap": close, "trade_count": 0, "taker_buy_volume": 0.0, "filled": True,
            })  # fmt: skip
    return out


def assert_matches_reference(bars: list[Bar], ref: list[dict[str, Any]]) -> None:
    assert [b.open_time_ms for b in bars] == [r["open_time_ms"] for r in ref]
    for bar, r in zip(bars, ref, strict=True):
        assert bar.close_time_ms == r["open_time_ms"] + 1_000 and bar.timeframe == "1s", bar
        assert (bar.open, bar.high, bar.low, bar.close) == (r["open"], r["high"], r["low"], r["close"]), bar
        assert (bar.trade_count, bar.filled) == (r["trade_count"], r["filled"]), bar
        for name in ("volume", "quote_volume", "vwap", "taker_buy_volume"):
            assert getattr(bar, name) == pytest.approx(r[name], rel=1e-12, abs=1e-12), (name, bar)
        assert bar.source == "REPLAY" and bar.is_history


def random_trades(n: int, seed: int = 5, pause_at: int | None = None) -> list[RawTrade]:
    """``n`` time-ordered trades from T0: bursts within a second, empty seconds, a few 2-9 s pauses,
    one pause of 700 s before trade ``pause_at`` (default: two thirds of the way in), and some
    trades of zero price or size."""
    rng = random.Random(seed)
    ts, price = T0 + 250, 3000.0
    out = []
    for i in range(n):
        gap = rng.choice([0, 1, 3, 40, 120, 300, 700, 1_300])
        if rng.random() < 0.004:
            gap = rng.randint(2_000, 9_000)
        if i == (2 * n // 3 if pause_at is None else pause_at):
            gap = 700_000
        ts += gap
        price = round(max(price + rng.choice([-0.02, -0.01, 0.0, 0.01, 0.03]), 1.0), 2)
        size = round(rng.choice([0.001, 0.05, 0.4, 1.25]) * rng.randint(1, 9), 4)
        if rng.random() < 0.002:
            size = 0.0
        out.append(trade(ts, 0.0 if rng.random() < 0.002 else price, size, rng.random() < 0.5, rng.randint(1, 3)))
    return out


def test_1s_bars_of_trades_match_a_plain_per_second_reference_with_filled_seconds() -> None:
    trades = random_trades(20_000)  # more than two chunks of the builder's input
    bars = bars_from_trades(trades, "ETHUSDT", "1s")
    ref = reference_seconds(trades)
    assert sum(r["filled"] for r in ref) > 1_000 and sum(not r["filled"] for r in ref) > 1_000
    assert_matches_reference(bars, ref)
    assert bars[-1].close_time_ms == trades[-1].ts_event_ms // 1_000 * 1_000  # the last trade's second is left out
    assert_valid_history(bars, "1s")


def test_seconds_without_trades_are_flat_filled_bars_at_the_last_close() -> None:
    trades = [trade(T0 + 5, 100.0), trade(T0 + 10, 101.0, 2.0, buyer_is_maker=False), trade(T0 + 3_005, 99.0),
              trade(T0 + 3_999, 98.0), trade(T0 + 4_000, 1.0)]  # fmt: skip
    bars = bars_from_trades(trades, "ETHUSDT", "1s")
    assert [(b.open_time_ms - T0, b.filled) for b in bars] == [(0, False), (1_000, True), (2_000, True), (3_000, False)]
    first, *filled, last = bars
    assert (first.open, first.high, first.low, first.close, first.volume, first.taker_buy_volume) == (
        100.0, 101.0, 100.0, 101.0, 3.0, 2.0)  # fmt: skip
    assert all(b.open == b.high == b.low == b.close == b.vwap == 101.0 and b.volume == b.trade_count == 0
               for b in filled)  # fmt: skip
    assert (last.open, last.close, last.trade_count) == (99.0, 98.0, 2)
    # With the end known, the last trade's second and the empty seconds up to it are kept.
    ended = bars_from_trades(trades, "ETHUSDT", "1s", end_ms=T0 + 7_500)
    assert [(b.open_time_ms - T0, b.filled) for b in ended[4:]] == [(4_000, False), (5_000, True), (6_000, True)]
    assert ended[-1].close == 1.0


def test_1s_bars_up_to_a_known_end_match_the_reference() -> None:
    trades = random_trades(3_000, seed=9)
    end_ms = trades[-1].ts_event_ms + 12_345
    bars = bars_from_trades(trades, "ETHUSDT", "1s", end_ms=end_ms)
    assert_matches_reference(bars, reference_seconds(trades, end_ms))
    assert bars[-1].close_time_ms == end_ms // 1_000 * 1_000 and bars[-1].filled


def test_the_builder_gives_the_same_bars_however_the_trades_are_chunked_and_keeps_the_last_ones() -> None:
    trades = random_trades(5_000, seed=3, pause_at=4_700)  # the last 300 trades take about 100 s
    after_pause = trades[-1].ts_event_ms - trades[4_700].ts_event_ms
    assert 50_000 < after_pause < 250_000
    # All of them, and up to the first trade after the pause: then the last bars are all pause.
    for part in (trades, trades[:4_701]):
        whole = bars_from_trades(part, "ETHUSDT", "1s")
        for keep in (None, 1, 50, 300, 800, 3_000):  # 300 ends inside the 700 s pause, 800 before it
            builder = _ReplayBars("ETHUSDT", "REPLAY", keep=keep)
            for lo, hi in pairwise([0, 1, 8, 1_000, 4_321, len(part)]):
                builder.feed(next(_trade_chunks(part[lo:hi])))
            assert builder.finish(None)["1s"] == (whole if keep is None else whole[-keep:])
            for end_ms in (part[-1].ts_event_ms + 20_500, part[-1].ts_event_ms + 900_000):
                ended = bars_from_trades(part, "ETHUSDT", "1s", end_ms=end_ms)
                assert builder.finish(end_ms)["1s"] == (ended if keep is None else ended[-keep:])


def test_replay_history_reads_the_trades_once_for_every_timeframe_and_keeps_the_last_count() -> None:
    # From 23:00 the day before to 01:33 two days later, a trade every 7 s with a 700 s pause:
    # 50 whole hours and 2 whole days.
    trades = [trade(T0 - 3_600_000 + i * 7_000, 100.0 + (i % 11) / 10, 1.0 + i % 3, i % 2 == 0)
              for i in range(26_000) if not 20_000 <= i < 20_100]  # fmt: skip
    reads = 0

    def chunks() -> Any:
        nonlocal reads
        reads += 1
        return _trade_chunks(trades)

    history = _replay_history(chunks, "ETHUSDT", 300)
    assert reads == 1
    assert list(history) == list(keys.TIMEFRAMES)
    assert_matches_reference(history["1s"], reference_seconds(trades)[-300:])
    seconds = history["1s"]
    in_window = [t for t in trades if seconds[0].open_time_ms <= t.ts_event_ms < seconds[-1].close_time_ms]
    assert sum(not b.filled for b in seconds) == len(in_window) == 300 // 7
    for tf in ("1m", "1h", "1d"):
        assert history[tf] == bars_from_trades(trades, "ETHUSDT", tf)[-300:]
    assert [len(history[tf]) for tf in keys.TIMEFRAMES] == [300, 300, 50, 2]


def aggregator_bars(trades: list[RawTrade], seed: int) -> dict[tuple[str, int], Bar]:
    """The aggregator core's bars of ``trades`` (one tick each, in batches of random size), by (timeframe, open)."""
    rng = random.Random(seed)
    ticks = [
        Tick(k + 1, t.price, t.size, "SELL" if t.buyer_is_maker else "BUY", t.ts_event_ms, t.ts_event_ms)
        for k, t in enumerate(trades)
    ]
    aggregator = BarAggregator()
    out: dict[tuple[str, int], Bar] = {}
    entry = 0
    while ticks:
        n = rng.randint(1, 40)
        batch, ticks = ticks[:n], ticks[n:]
        entry += 1
        for bar in aggregator.apply(
            [(("md:ticks:{ETHUSDT}", f"{entry}-0"), TickBatch("ETHUSDT", "REPLAY", batch))]
        ).bars:
            out[bar.timeframe, bar.open_time_ms] = bar
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replay_history_bars_are_the_aggregator_s_bars_of_the_same_trades(seed: int) -> None:
    # 500 trades from 00:57 over about two and a half hours: minute and hour boundaries, quiet
    # stretches (filled seconds and minutes), a few late trades, and ETHBTC-like prices whose
    # notionals need truncating to 8 decimals (Binance's quoteQty).
    rng = random.Random(seed)
    ts, price, trades = T0 - 3 * 60_000 + rng.randint(0, 999), 0.05, []
    for _ in range(500):
        ts += rng.choice([0, 7, 350, 1_000, 4_000, 20_000, 60_000, 150_000])
        price = round(max(price + rng.choice([-1e-5, 0.0, 2e-5]), 0.01), 5)
        late = rng.random() < 0.02  # stamped a few seconds back: the aggregator counts it late
        trades.append(trade(ts - 5_000 if late else ts, price, round(rng.uniform(0.0001, 9.0), 4), rng.random() < 0.5))
    reference = aggregator_bars(trades, seed)
    history = _replay_history(lambda: _trade_chunks(trades), "ETHUSDT", 100_000)
    first_minute = trades[0].ts_event_ms - trades[0].ts_event_ms % 60_000
    last_second = max(t.ts_event_ms for t in trades) // 1_000 * 1_000
    for tf in keys.TIMEFRAMES:  # 1d: none, the trades cover no whole day
        for bar in history[tf]:
            assert msgspec.structs.replace(bar, is_history=False) == reference[tf, bar.open_time_ms]
        # Every aggregator bar that the trades cover in full and that closed before the last trade's
        # second is history too; the aggregator's first 1h bar started inside its hour (partial).
        whole = sorted(t for (f, t), b in reference.items()
                       if f == tf and t >= first_minute and b.close_time_ms <= last_second)  # fmt: skip
        assert [b.open_time_ms for b in history[tf]] == whole
    assert sum(b.filled for b in history["1m"]) > 10 and sum(not b.filled for b in history["1m"]) > 30
    assert len(history["1h"]) >= 2
    assert any(round(t.price * 1e5) * round(t.size * 1e4) % 10 for t in trades)  # notionals of 9 decimals


def test_rollup_does_not_make_1s_bars() -> None:
    minutes = bars_from_trades([trade(T0, 100.0), trade(T0 + 120_000, 101.0)], "ETHUSDT", "1m")
    with pytest.raises(ValueError, match="from 1m bars"):
        roll_up({}, BarAccumulator.of_bar(minutes[0]), "1m", ("1s",))


def test_rollup_ignores_filled_minutes_for_open_high_and_low() -> None:
    minutes = [
        Bar(symbol="ETHUSDT", timeframe="1m", open_time_ms=T0 + i * 60_000, close_time_ms=T0 + (i + 1) * 60_000,
            open=p, high=p, low=p, close=p, volume=0.0 if filled else 1.0, quote_volume=0.0 if filled else p,
            trade_count=0 if filled else 1, vwap=p, taker_buy_volume=0.0, filled=filled, source="REPLAY",
            is_history=True)
        for i, (p, filled) in enumerate([(50.0, True)] * 10 + [(100.0, False)] * 40 + [(100.0, True)] * 10)
    ]  # fmt: skip
    forming: dict[str, BarAccumulator] = {}
    [hour] = [
        acc.to_bar("ETHUSDT", tf)
        for m in minutes
        for tf, acc in roll_up(forming, BarAccumulator.of_bar(m), "1m", ("1h",))
    ]
    assert (hour.open, hour.high, hour.low, hour.close) == (100.0, 100.0, 100.0, 100.0)
    assert hour.volume == 40.0 and not hour.filled


def test_an_hour_of_only_empty_minutes_rolls_up_into_a_filled_flat_bar() -> None:
    trades = [trade(T0 - 1_000, 100.0), trade(T0 + 3_600_000, 101.0), trade(T0 + 3_660_000, 102.0)]
    [hour] = bars_from_trades(trades, "ETHUSDT", "1h")
    assert hour.open_time_ms == T0 and hour.filled and hour.trade_count == 0
    assert hour.open == hour.high == hour.low == hour.close == 100.0


# --- the simulator's past ------------------------------------------------------------------------


@pytest.mark.parametrize("tf", ["1s", "1m", "1h", "1d"])
def test_synthetic_history_is_300_closed_valid_bars_ending_at_the_start_price(tf: str) -> None:
    span = keys.TIMEFRAME_MS[tf]
    end_ms = T0 + 12_345_678
    bars = synthetic_history("ETHUSDT", 7, end_ms, tf)
    assert len(bars) == 300
    assert bars[-1].close_time_ms == end_ms - end_ms % span <= end_ms
    assert bars[-1].close == spec_for("ETHUSDT").start_price
    assert all(b.source == "SYNTHETIC" and not b.filled and b.trade_count > 0 for b in bars)
    assert all(b.open == prev.close for prev, b in pairwise(bars))
    assert_valid_history(bars, tf)


def test_synthetic_history_is_deterministic_per_seed_and_ends_at_a_given_price() -> None:
    a = synthetic_history("BTCUSDT", 3, T0, "1h", 50, end_price=91_234.56)
    assert a == synthetic_history("BTCUSDT", 3, T0, "1h", 50, end_price=91_234.56)
    assert a != synthetic_history("BTCUSDT", 4, T0, "1h", 50, end_price=91_234.56)
    assert a[-1].close == 91_234.56
    tick = spec_for("BTCUSDT").tick_size
    assert all(abs(b.high / tick - round(b.high / tick)) < 1e-6 for b in a)
    # A start price off the tick grid (a restarted market continues from its last trade) is met exactly.
    assert synthetic_history("BTCUSDT", 3, T0, "1h", 50, end_price=91_234.567)[-1].close == 91_234.567


def test_synthetic_history_moves_like_the_simulator_with_plausible_volumes() -> None:
    bars = synthetic_history("ETHUSDT", 11, T0, "1m", 300)
    returns = [math.log(b.close / b.open) for b in bars]
    sd = (sum(r * r for r in returns) / len(returns)) ** 0.5
    per_minute = 0.65 * math.sqrt(60 / (365 * 86_400))  # ETHUSDT's annual volatility at 1m
    assert 0.5 * per_minute < sd < 2 * per_minute
    assert all(0 < b.taker_buy_volume < b.volume for b in bars)
    assert 100 < sum(b.trade_count for b in bars) / 300 < 5_000


def test_synthetic_history_near_the_epoch_is_shortened_not_negative() -> None:
    bars = synthetic_history("ETHUSDT", 7, 10 * 60_000, "1m")
    assert len(bars) == 9 and bars[0].open_time_ms == 60_000


# --- the I/O functions' guards --------------------------------------------------------------------


async def test_publish_refuses_a_live_bar_stream() -> None:
    bars = synthetic_history("ETHUSDT", 7, T0, "1m", 3)
    with pytest.raises(ValueError, match="not a history stream"):
        await publish_history(None, {keys.bars("ETHUSDT", "1m"): bars}, 100)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not belong"):
        await publish_history(None, {keys.history("ETHUSDT", "1h"): bars}, 100)  # type: ignore[arg-type]


async def test_history_bars_zero_writes_nothing() -> None:
    settings = IngestSettings(history_bars=0)  # type: ignore[call-arg]
    assert await provide_history(settings, None, source_kind="synthetic", now_ms=T0) == {}  # type: ignore[arg-type]
