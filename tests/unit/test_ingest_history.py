"""Warm-up history builders: klines, archive trades and the simulator's past into closed history bars."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import httpx
import pytest

from unistream_common import codec, keys
from unistream_common.packets import Bar
from unistream_ingest.binance import Kline
from unistream_ingest.core import spec_for
from unistream_ingest.history import (
    HistoryError,
    bars_from_klines,
    bars_from_trades,
    fetch_kline_history,
    provide_history,
    publish_history,
    rollup_bars,
    synthetic_history,
)
from unistream_ingest.settings import IngestSettings
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
    assert keys.parse_history("md:history:{ETHUSDT}:1d") == ("ETHUSDT", "1d")
    assert keys.parse_history(keys.bars("ETHUSDT", "1m")) is None
    assert keys.parse_bars(keys.history("ETHUSDT", "1m")) is None
    assert keys.history_streams(["BTCUSDT"]) == [f"md:history:{{BTCUSDT}}:{tf}" for tf in ("1m", "1h", "1d")]
    with pytest.raises(ValueError, match="history timeframe"):
        keys.history("ETHUSDT", "1s")
    with pytest.raises(ValueError, match="not a valid symbol"):
        keys.history("eth-usdt", "1m")


# --- klines --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tf", ["1m", "1h", "1d"])
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
        bars_from_klines([], "ETHUSDT", "1s")


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


def test_rollup_ignores_filled_minutes_for_open_high_and_low() -> None:
    minutes = [
        Bar(symbol="ETHUSDT", timeframe="1m", open_time_ms=T0 + i * 60_000, close_time_ms=T0 + (i + 1) * 60_000,
            open=p, high=p, low=p, close=p, volume=0.0 if filled else 1.0, quote_volume=0.0 if filled else p,
            trade_count=0 if filled else 1, vwap=p, taker_buy_volume=0.0, filled=filled, source="REPLAY",
            is_history=True)
        for i, (p, filled) in enumerate([(50.0, True)] * 10 + [(100.0, False)] * 40 + [(100.0, True)] * 10)
    ]  # fmt: skip
    [hour] = rollup_bars(minutes, "1h")
    assert (hour.open, hour.high, hour.low, hour.close) == (100.0, 100.0, 100.0, 100.0)
    assert hour.volume == 40.0 and not hour.filled


def test_an_hour_of_only_empty_minutes_rolls_up_into_a_filled_flat_bar() -> None:
    trades = [trade(T0 - 1_000, 100.0), trade(T0 + 3_600_000, 101.0), trade(T0 + 3_660_000, 102.0)]
    [hour] = bars_from_trades(trades, "ETHUSDT", "1h")
    assert hour.open_time_ms == T0 and hour.filled and hour.trade_count == 0
    assert hour.open == hour.high == hour.low == hour.close == 100.0


# --- the simulator's past ------------------------------------------------------------------------


@pytest.mark.parametrize("tf", ["1m", "1h", "1d"])
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
