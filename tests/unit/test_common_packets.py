"""Packets, codec, stream names and settings: the contracts every service relies on."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from unistream_common import codec, keys
from unistream_common.packets import (
    Bar,
    GapMarker,
    MetricsPacket,
    ModelStatus,
    Tick,
    TickBatch,
    TrainingDataPacket,
    UIDataPacket,
    parse_bar_type,
)
from unistream_common.settings import CommonSettings, ConfigError, load_settings


def bar(**kw: object) -> Bar:
    base = {
        "symbol": "ETHUSDT", "timeframe": "1s", "open_time_ms": 1_700_000_000_000, "close_time_ms": 1_700_000_001_000,
        "open": 3000.0, "high": 3001.0, "low": 2999.5, "close": 3000.5, "volume": 2.0, "quote_volume": 6001.0, "trade_count": 3,
        "vwap": 3000.5, "taker_buy_volume": 1.0, "filled": False, "source": "SYNTHETIC",
    }  # fmt: skip
    base.update(kw)
    return Bar(**base)  # type: ignore[arg-type]


def test_every_packet_type_round_trips_through_the_codec() -> None:
    ui = UIDataPacket(
        symbol="BTCUSDT", ts_ms=1, source="REAL", last_price=90000.5, last_tick_ms=1, tick_cache_size=10,
        tick_cache_capacity=5000, ticks_seen=10, bars_1s_size=1, bars_1s_capacity=1000, bars_seen=1,
        training_packets=0, cnn=ModelStatus("cnn", "v0", "INITIALISED", 10, 1), rl_state_dim=3,
        cnn_predictions=codec.f32_to_bytes([0.1, 0.9]), prediction_names=["a", "b"],
    )  # fmt: skip
    training = TrainingDataPacket(
        symbol="ETHUSDT", ts_event_ms=5, price=1.5, source="SYNTHETIC", state_dim=3,
        state=codec.f32_to_bytes([1, 2, 3]), cnn_features=codec.f32_to_bytes([0.5]),
        cnn_predictions=codec.f32_to_bytes([0.2]), prediction_names=["p"], model_version="v0", window_fill=0.5,
    )  # fmt: skip
    ticks = TickBatch(
        "ETHUSDT", "REAL", [Tick(1, 3012.55, 0.012, "SELL", 10, 11), Tick(2, 3012.56, 1.0, "BUY", 12, 13)]
    )
    metrics = MetricsPacket(producer="trainer-1", ts_ms=9, step=3, metrics={"losses/td_loss": 0.25})
    for packet in (bar(), ui, training, ticks, metrics):
        fields = codec.encode(packet)
        assert fields[b"type"] == packet.TYPE.encode()
        assert fields[b"v"] == b"1"
        assert codec.decode(fields) == packet


def test_float32_vectors_travel_as_raw_little_endian_bytes() -> None:
    values = np.array([1.0, -2.5, 3.25], dtype=np.float64)
    raw = codec.f32_to_bytes(values)
    assert raw == np.array(values, dtype="<f4").tobytes()
    assert len(raw) == 12
    np.testing.assert_array_equal(codec.f32_from_bytes(raw), values.astype(np.float32))
    with pytest.raises(codec.DecodeError):
        codec.f32_from_bytes(b"\x00" * 5)


@pytest.mark.parametrize(
    ("change", "fact"),
    [
        ({"high": 2990.0}, "high 2990.0 was below"),
        ({"low": 3000.7}, "low 3000.7 was above"),
        ({"close_time_ms": 1_700_000_002_000}, "spans 1000 ms"),
        ({"open_time_ms": 1_700_000_000_500, "close_time_ms": 1_700_000_001_500}, "not aligned"),
        ({"filled": True}, "filled (empty) bar had trades"),
        ({"taker_buy_volume": 3.0}, "taker_buy_volume was greater"),
    ],
)
def test_impossible_bars_are_refused_with_the_fact(change: dict[str, object], fact: str) -> None:
    with pytest.raises(ValueError, match=fact.replace("(", r"\(").replace(")", r"\)")):
        bar(**change)


def test_decoder_refuses_a_bar_that_breaks_an_invariant() -> None:
    good = msgspec.to_builtins(bar())
    good["high"] = 1.0
    fields = {b"type": b"bar", b"v": b"1", b"data": msgspec.msgpack.encode(good)}
    with pytest.raises(codec.DecodeError, match="bar rejected"):
        codec.decode(fields)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "no fields"),
        ({b"v": b"1", b"data": b""}, "no 'type'"),
        ({b"type": b"nope", b"v": b"1", b"data": b""}, "unknown packet type 'nope'"),
        ({b"type": b"bar", b"v": b"2", b"data": b""}, "schema version 2 is not supported"),
        ({b"type": b"bar", b"v": b"1"}, "no 'data'"),
        ({b"type": b"bar", b"v": b"1", b"data": b"\xc1"}, "bar rejected"),
    ],
)
def test_undecodable_entries_say_why(fields: dict[bytes, bytes], reason: str) -> None:
    with pytest.raises(codec.DecodeError, match=reason):
        codec.decode(fields)


def test_tick_with_non_positive_price_is_rejected_on_decode() -> None:
    raw = msgspec.msgpack.encode({"symbol": "ETHUSDT", "source": "REAL", "ticks": [[1, -1.0, 1.0, "BUY", 1, 1]]})
    with pytest.raises(codec.DecodeError, match="Expected `float` >= 0.0|> 0.0"):
        codec.decode({b"type": b"tick_batch", b"v": b"1", b"data": raw})


def test_empty_tick_batch_is_rejected() -> None:
    raw = msgspec.msgpack.encode({"symbol": "ETHUSDT", "source": "REAL", "ticks": []})
    with pytest.raises(codec.DecodeError, match="holds no ticks"):
        codec.decode({b"type": b"tick_batch", b"v": b"1", b"data": raw})


@given(st.integers(1, 10**6 - 1), st.integers(0, 10**8 - 1))
def test_binance_decimal_strings_survive_float64_exactly(whole: int, frac: int) -> None:
    text = f"{whole}.{frac:08d}"
    parsed = float(text)
    assert math.isclose(parsed, float(repr(parsed)))
    assert f"{parsed:.8f}" == text


def test_bar_type_string_round_trips() -> None:
    assert bar().bar_type == "ETHUSDT-1s"
    assert parse_bar_type("ETHUSDT-1s") == ("ETHUSDT", "1s")
    for bad in ("ETHUSDT", "eth-1s", "ETHUSDT-2s"):
        with pytest.raises(ValueError):
            parse_bar_type(bad)


def test_stream_names_are_the_public_ones() -> None:
    assert keys.ticks("ETHUSDT") == "md:ticks:{ETHUSDT}"
    assert keys.bars("BTCUSDT", "1h") == "md:bars:{BTCUSDT}:1h"
    assert keys.training("ETHUSDT") == "ml:training:{ETHUSDT}"
    assert keys.dlq(keys.training("ETHUSDT")) == "ml:training:{ETHUSDT}:dlq"
    assert keys.parse_training("ml:training:{BTCUSDT}") == "BTCUSDT" and keys.parse_training("ml:training") is None
    assert (keys.UI, keys.METRICS, keys.MODELS) == (
        "ui:packets",
        "ml:metrics",
        "ml:models",
    )
    assert keys.parse_ticks("md:ticks:{ETHUSDT}") == "ETHUSDT"
    assert keys.parse_bars("md:bars:{ETHUSDT}:1m") == ("ETHUSDT", "1m")
    assert keys.parse_ticks("md:ticks:ETHUSDT") is None
    with pytest.raises(ValueError, match="not a valid symbol"):
        keys.ticks("ETH-USD")
    with pytest.raises(ValueError, match="not a timeframe"):
        keys.bars("ETHUSDT", "5m")
    with pytest.raises(ValueError, match="unknown data type"):
        keys.streams_for(["candles"], ["ETHUSDT"])


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNISTREAM_SYMBOLS", " ethusdt, BTCUSDT ,SOLUSDT")
    monkeypatch.setenv("UNISTREAM_REDIS_URL", "redis://example:7000/1")
    s = load_settings(CommonSettings)
    assert s.symbols == ("ETHUSDT", "BTCUSDT", "SOLUSDT")
    assert s.redis_url == "redis://example:7000/1"
    assert s.consumer("trainer").startswith("trainer-")
    monkeypatch.setenv("UNISTREAM_CONSUMER_NAME", "trainer-2")
    assert load_settings(CommonSettings).consumer("trainer") == "trainer-2"


@pytest.mark.parametrize(
    ("var", "value", "says"),
    [
        ("UNISTREAM_SYMBOLS", "ETH/USDT", "UNISTREAM_SYMBOLS: 'ETH/USDT' is not a valid symbol"),
        ("UNISTREAM_SYMBOLS", " , ", "UNISTREAM_SYMBOLS: no symbols given"),
        ("UNISTREAM_SYMBOLS", "ETHUSDT,ETHUSDT", "listed twice"),
        ("UNISTREAM_REDIS_URL", "localhost:6379", "UNISTREAM_REDIS_URL: 'localhost:6379' is not a Redis URL"),
        ("UNISTREAM_HTTP_PORT", "99999", "UNISTREAM_HTTP_PORT"),
    ],
)
def test_bad_configuration_stops_with_what_to_change(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], var: str, value: str, says: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings(CommonSettings)
    assert err.value.code == 2
    assert says in capsys.readouterr().err


def test_gap_marker_round_trips_and_refuses_backward_ranges() -> None:
    gap = GapMarker(
        symbol="ETHUSDT", source="REAL", from_trade_id=101, to_trade_id=157, ts_from_ms=1_000,
        ts_to_ms=2_000, reason="backfill_failed", ts_recv_ms=2_100,
    )  # fmt: skip
    assert codec.decode(codec.encode(gap)) == gap and gap.missing == 57
    with pytest.raises(ValueError, match="to_trade_id 5 was below from_trade_id 9"):
        GapMarker("ETHUSDT", "REAL", 9, 5, 0, 0, "x", 0)
