"""Binance spot venue module: endpoints, websocket/REST parsers replayed from hand-written venue messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unistream_ingest.binance import parsing as binance
from unistream_ingest.binance.parsing import (
    Kline,
    combined_stream_url,
    epoch_to_ms,
    parse_rest_agg_trades,
    parse_rest_klines,
    parse_rest_trades,
    parse_server_time,
    parse_ws,
    subscribe_message,
    symbol_from_stream,
)
from unistream_ingest.venue import IgnoredEvent, ParseError, RawTrade, ShutdownEvent, TradeEvent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"


def _session() -> list[str]:
    return (FIXTURES / "ws_session.jsonl").read_text().splitlines()


def _malformed() -> list[tuple[str, str]]:
    rows = []
    for line in (FIXTURES / "ws_malformed.tsv").read_text().splitlines():
        reason, _, raw = line.partition("\t")
        rows.append((reason, raw))
    return rows


def test_combined_stream_url_lists_lower_case_streams_joined_by_slash() -> None:
    url = combined_stream_url(binance.WS_BASE, ["ETHUSDT", "BTCUSDT"])
    assert url == "wss://stream.binance.com:9443/stream?streams=ethusdt@trade/btcusdt@trade"
    micro = combined_stream_url(binance.WS_DATA_BASE + "/", ["ETHUSDT"], channel="aggTrade", microseconds=True)
    assert micro == "wss://data-stream.binance.vision/stream?streams=ethusdt@aggTrade&timeUnit=MICROSECOND"


def test_combined_stream_url_refuses_no_symbols_and_more_than_1024_streams() -> None:
    with pytest.raises(ValueError, match="at least one"):
        combined_stream_url(binance.WS_BASE, [])
    with pytest.raises(ValueError, match="1024"):
        combined_stream_url(binance.WS_BASE, [f"S{i}USDT" for i in range(1025)])


def test_symbol_mapping_round_trips_and_subscribe_message_is_binance_json() -> None:
    assert symbol_from_stream("ethusdt@trade") == "ETHUSDT"
    assert json.loads(subscribe_message(["ETHUSDT"], 7)) == {
        "method": "SUBSCRIBE",
        "params": ["ethusdt@trade"],
        "id": 7,
    }


def test_epoch_to_ms_floors_microseconds_and_keeps_milliseconds() -> None:
    assert epoch_to_ms(1_700_000_000_123) == 1_700_000_000_123
    assert epoch_to_ms(1_735_689_600_123_999) == 1_735_689_600_123  # floored, never rounded up
    assert epoch_to_ms(10**14) == 10**11


def test_recorded_session_replays_to_the_expected_events() -> None:
    events = [parse_ws(line) for line in _session()]
    assert events[0] == IgnoredEvent("subscription_reply")
    assert events[1] == TradeEvent(
        RawTrade("ETHUSDT", 1000001, 2012.55, 0.012, True, 1700000000120, 1), 1700000000123
    )  # combined wrapper, unknown fields b/a ignored
    assert events[2] == TradeEvent(RawTrade("BTCUSDT", 3000001, 37123.01, 0.00001, False, 1700000000199), 1700000000200)
    # bare event with µs times (timeUnit=MICROSECOND) and a nested unknown field
    assert events[3] == TradeEvent(RawTrade("ETHUSDT", 1000002, 3335.10, 1.5, False, 1735689600123), 1735689600123)
    # aggTrade: trade_id is the aggregate id, count = l - f + 1
    assert events[4] == TradeEvent(RawTrade("ETHUSDT", 500001, 2012.56, 0.75, True, 1700000000999, 5), 1700000001000)
    assert events[5] == IgnoredEvent("invalidated")
    assert events[6] == IgnoredEvent("other_event")
    # keys in another order take the generic path and give the same result
    assert events[7] == TradeEvent(RawTrade("ETHUSDT", 1000008, 2013.0, 2.0, False, 1700000002000), 1700000002001)
    assert events[8] == ShutdownEvent(1700000005000)
    assert events[9] == IgnoredEvent("venue_error")


def test_str_and_bytes_messages_parse_the_same_on_fast_and_generic_paths() -> None:
    for line in _session():
        fast = parse_ws(line)
        assert parse_ws(line.encode()) == fast
        assert binance._parse_ws_generic(line) == fast


def test_parsed_prices_are_the_exact_decimals_sent() -> None:
    event = parse_ws(_session()[2])
    assert isinstance(event, TradeEvent)
    assert repr(event.trade.price) == "37123.01" and repr(event.trade.size) == "1e-05"


def test_negative_price_is_well_formed_and_left_to_the_validator() -> None:
    msg = '{"e":"trade","E":1700000000123,"s":"ETHUSDT","t":1,"p":"-1.5","q":"0","T":1700000000120,"m":true}'
    event = parse_ws(msg)
    assert isinstance(event, TradeEvent) and event.trade.price == -1.5 and event.trade.size == 0.0


@pytest.mark.parametrize(("reason", "raw"), _malformed())
def test_malformed_message_raises_parse_error_with_its_reason(reason: str, raw: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_ws(raw)
    assert info.value.reason == reason, info.value
    with pytest.raises(ParseError) as info_bytes:
        parse_ws(raw.encode())
    assert info_bytes.value.reason == reason


def test_non_utf8_and_deeply_nested_input_is_bad_json_not_a_crash() -> None:
    for raw in (b"\xff\xfe{", b"[" * 100_000, b'{"e":' * 50_000):
        with pytest.raises(ParseError) as info:
            parse_ws(raw)
        assert info.value.reason == "bad_json"


def test_truncations_of_every_recorded_message_only_ever_raise_parse_error() -> None:
    for line in _session():
        data = line.encode()
        for cut in range(len(data)):
            try:
                parse_ws(data[:cut])
            except ParseError as exc:
                assert exc.reason in {"bad_json", "bad_type", "missing_field", "bad_number", "bad_range"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_input_returns_an_event_or_raises_parse_error(raw: bytes | str) -> None:
    try:
        parse_ws(raw)
    except ParseError:
        pass


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list("eEstpqTmfla")), _json_values, max_size=11), st.booleans())
def test_json_objects_with_trade_keys_of_any_type_never_raise_anything_but_parse_error(
    obj: dict[str, object], wrap: bool
) -> None:
    if wrap:
        obj = {"stream": "ethusdt@trade", "data": obj}
    raw = json.dumps(obj)
    try:
        fast = parse_ws(raw)
    except ParseError as exc:
        with pytest.raises(ParseError) as generic:
            binance._parse_ws_generic(raw)
        assert generic.value.reason == exc.reason
    else:
        assert binance._parse_ws_generic(raw) == fast


def test_rest_trades_parse_with_ms_and_us_times_and_ignore_extra_fields() -> None:
    trades = parse_rest_trades((FIXTURES / "rest_trades.json").read_bytes(), "BNBBTC")
    assert trades == [
        RawTrade("BNBBTC", 28457, 4.000001, 12.0, True, 1499865549590),
        RawTrade("BNBBTC", 28458, 4.000002, 0.5, False, 1735689600000),
    ]


def test_rest_agg_trades_drop_invalidated_items_and_count_raw_trades() -> None:
    trades = parse_rest_agg_trades((FIXTURES / "rest_agg_trades.json").read_bytes(), "ETHBTC")
    assert [(t.trade_id, t.count) for t in trades] == [(26129, 1), (26131, 4)]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[{", "bad_json"),
        (b'{"code": -1121, "msg": "Invalid symbol."}', "api_error"),
        (b'[{"id": 1, "price": 4.0, "qty": "1", "time": 1499865549590, "isBuyerMaker": true}]', "bad_type"),
        (b'[{"id": 1, "qty": "1", "time": 1499865549590, "isBuyerMaker": true}]', "missing_field"),
        (b'[{"id": 1, "price": "4e0", "qty": "1", "time": 1499865549590, "isBuyerMaker": true}]', "bad_number"),
        (b'{"id": 1}', "bad_type"),
    ],
)
def test_bad_rest_trade_bodies_raise_parse_error_with_reason(body: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_rest_trades(body, "ETHUSDT")
    assert info.value.reason == reason


def test_rest_klines_parse_all_eleven_columns() -> None:
    klines = parse_rest_klines((FIXTURES / "rest_klines.json").read_bytes(), "ETHUSDT", "1m")
    assert klines[0] == Kline(
        "ETHUSDT", "1m", 1700000040000, 2012.0, 2015.5, 2011.25, 2014.0, 12.5, 1700000099999, 25175.125, 42, 6.25,
        12587.5625,
    )  # fmt: skip
    assert klines[1].trade_count == 2 and klines[1].taker_buy_base == 0.0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[[1700000040000", "bad_json"),
        (b'{"code": -1100, "msg": "Illegal characters"}', "api_error"),
        (b'{"x": 1}', "bad_type"),
        (b'[[1700000040000, "1", "1", "1", "1", "1", 1700000099999, "1", 3, "1"]]', "bad_type"),
        (b'[[1700000040000, 1, "1", "1", "1", "1", 1700000099999, "1", 3, "1", "1"]]', "bad_type"),
        (b'[[1700000040000, "1", "1", "1", "1", "1", 1700000099999, "1", "3", "1", "1"]]', "bad_type"),
        (b'[[1700000040000, "x", "1", "1", "1", "1", 1700000099999, "1", 3, "1", "1"]]', "bad_number"),
    ],
)
def test_bad_kline_bodies_raise_parse_error_with_reason(body: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_rest_klines(body, "ETHUSDT", "1m")
    assert info.value.reason == reason


def test_kline_interval_must_be_one_binance_knows() -> None:
    with pytest.raises(ValueError, match="interval"):
        parse_rest_klines(b"[]", "ETHUSDT", "7m")


def test_server_time_parses_and_errors_are_parse_errors() -> None:
    assert parse_server_time((FIXTURES / "rest_time.json").read_bytes()) == 1700000000123
    for body, reason in [
        (b"{", "bad_json"),
        (b"{}", "missing_field"),
        ((FIXTURES / "rest_api_error.json").read_bytes(), "api_error"),
    ]:
        with pytest.raises(ParseError) as info:
            parse_server_time(body)
        assert info.value.reason == reason


def test_retry_after_adds_a_margin_and_falls_back_to_the_default() -> None:
    from unistream_ingest.binance.parsing import RETRY_AFTER_MARGIN_S, retry_after_s

    assert retry_after_s({"Retry-After": "2"}, 9.0) == 2.0 + RETRY_AFTER_MARGIN_S
    assert retry_after_s({}, 9.0) == 9.0
    assert retry_after_s({"Retry-After": "soon"}, 9.0) == 9.0
    assert retry_after_s({"Retry-After": "-5"}, 9.0) == RETRY_AFTER_MARGIN_S


@pytest.mark.parametrize("raw", [b'"\x80"', b'{"e": "trade", "s": "\xff"}', b"\xc3"])
def test_invalid_utf8_is_a_parse_error_not_a_crash(raw: bytes) -> None:
    with pytest.raises(ParseError):
        parse_ws(raw)
