"""The door's pure parts: decoding a /v1/ticks body, decimals, tokens, and all-or-nothing commits (fake Redis)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError

from unistream_common import codec
from unistream_common.packets import TickBatch
from unistream_common.stats import Stats
from unistream_ingest.door import BodyError, Door, parse_batch, parse_decimal
from unistream_ingest.settings import IngestSettings

SYMBOLS = frozenset({"ETHUSDT", "BTCUSDT"})
NOW_MS = 1_764_000_000_000


def tick(trade_id: int, price: Any = "3012.55", size: Any = "0.012", side: str = "BUY", **extra: Any) -> dict:
    return {"trade_id": trade_id, "price": price, "size": size, "side": side, "ts_event_ms": NOW_MS - 10, **extra}


def body(ticks: list[dict], symbol: str = "ETHUSDT", source: str = "REAL") -> bytes:
    return json.dumps({"symbol": symbol, "source": source, "ticks": ticks}).encode()


# --- parse_decimal -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("3012.55", 3012.55), ("0.012", 0.012), ("7", 7.0), ("0", 0.0)])
def test_a_plain_decimal_string_parses_to_the_same_float_as_its_number(text: str, value: float) -> None:
    assert parse_decimal(text) == value == parse_decimal(value)


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "+1", "1e5", " 1", "1_000", "0x10", "", "1.", ".5", "١٢"])
def test_anything_but_a_plain_decimal_string_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a decimal string"):
        parse_decimal(text)


# --- parse_batch ---------------------------------------------------------------------------


def test_a_batch_becomes_raw_trades_with_sell_meaning_the_buyer_was_maker() -> None:
    parsed = parse_batch(body([tick(1), tick(2, side="SELL", price=3013)]), SYMBOLS, 10)
    assert parsed.errors == [] and parsed.source == "REAL"
    (i0, t0), (i1, t1) = parsed.trades
    assert (i0, t0.trade_id, t0.price, t0.size, t0.buyer_is_maker) == (0, 1, 3012.55, 0.012, False)
    assert (i1, t1.trade_id, t1.price, t1.buyer_is_maker) == (1, 2, 3013.0, True)


def test_a_single_tick_with_symbol_and_source_is_a_batch_of_one() -> None:
    raw = json.dumps({"symbol": "BTCUSDT", "source": "SYNTHETIC", **tick(5)}).encode()
    parsed = parse_batch(raw, SYMBOLS, 10)
    assert [t.trade_id for _, t in parsed.trades] == [5] and parsed.symbol == "BTCUSDT"


@pytest.mark.parametrize(
    ("raw", "status", "error"),
    [
        (b"{not json", 400, "bad_json"),
        (b"\xff\xfe", 400, "bad_json"),
        (b"[]", 422, "bad_envelope"),
        (b'{"symbol": "ETHUSDT", "ticks": []}', 422, "bad_envelope"),  # no source
        (b'{"symbol": "ETHUSDT", "source": "LIVE", "ticks": []}', 422, "bad_envelope"),
        (b'{"symbol": "DOGEUSDT", "source": "REAL", "ticks": []}', 422, "unknown_symbol"),
        (b'{"symbol": "ETHUSDT", "source": "REAL", "ticks": []}', 422, "no_ticks"),
        (b'{"symbol": "ETHUSDT", "source": "REAL", "ticks": [1, 2, 3]}', 413, "too_many_ticks"),
        (b"[" * 100_000, 422, "bad_envelope"),
        (b'{"symbol": "ETHUSDT", "source": "REAL", "ticks": [' + b"[" * 100_000, 422, "too_deep"),
    ],
)
def test_an_unusable_body_is_refused_whole_with_a_reason(raw: bytes, status: int, error: str) -> None:
    with pytest.raises(BodyError) as info:
        parse_batch(raw, SYMBOLS, 2)
    assert (info.value.status, info.value.error) == (status, error) and info.value.detail


def test_each_bad_item_is_listed_by_index_with_its_reason() -> None:
    items = [
        tick(1),
        tick(2, price="abc"),
        tick(3, size=True),
        {"trade_id": 4},
        tick(5, side="HOLD"),
        tick(5),
        tick(6, trade_id_extra=1),
        "nope",
    ]
    parsed = parse_batch(body(items), SYMBOLS, 100)
    assert [(e.index, e.reason) for e in parsed.errors] == [
        (1, "bad_price"),
        (2, "bad_item"),
        (3, "bad_item"),
        (4, "bad_item"),
        (7, "bad_item"),
    ]
    assert [i for i, _ in parsed.trades] == [0, 5, 6]  # unknown fields are ignored
    assert "side" in parsed.errors[3].detail


def test_a_trade_id_that_does_not_increase_within_a_batch_is_refused_not_skipped() -> None:
    parsed = parse_batch(body([tick(5), tick(7), tick(6), tick(7)]), SYMBOLS, 100)
    assert [(e.index, e.reason) for e in parsed.errors] == [(2, "not_increasing"), (3, "not_increasing")]
    assert [t.trade_id for _, t in parsed.trades] == [5, 7]


# --- fuzz: the parser refuses, it never raises anything else --------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELD_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.sampled_from(["3012.55", "0", "-1", "1e9", "BUY", "SELL", "", "nan", "9" * 60]),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
NEAR_TICKS = st.fixed_dictionaries(
    {},
    optional={k: FIELD_VALUES for k in ("trade_id", "price", "size", "side", "ts_event_ms")},
)
NEAR_BATCHES = st.fixed_dictionaries(
    {},
    optional={
        "symbol": st.sampled_from(["ETHUSDT", "BTCUSDT", "ethusdt", "", "X" * 50]) | FIELD_VALUES,
        "source": st.sampled_from(["REAL", "REPLAY", "SYNTHETIC", "real"]) | FIELD_VALUES,
        "ticks": st.lists(NEAR_TICKS | JSON_VALUES, max_size=5) | FIELD_VALUES,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=200)
    | JSON_VALUES.map(lambda v: json.dumps(v).encode())
    | NEAR_BATCHES.map(lambda v: json.dumps(v).encode())
)
def test_any_body_parses_or_is_refused_with_a_body_error(raw: bytes) -> None:
    try:
        parsed = parse_batch(raw, SYMBOLS, 4)
    except BodyError as exc:
        assert exc.status in (400, 413, 422) and exc.error and exc.detail
        return
    assert len(parsed.trades) + len(parsed.errors) == len(parsed.raw_items) <= 4
    assert all(e.reason for e in parsed.errors)


# --- auth ----------------------------------------------------------------------------------


def door(**overrides: Any) -> Door:
    cfg = IngestSettings(symbols="ETHUSDT,BTCUSDT", source="external", **overrides)  # type: ignore[arg-type]
    return Door(cfg, Stats("ingest"))


def test_without_a_configured_token_every_request_is_authorised() -> None:
    assert door().authorized(None)


@pytest.mark.parametrize(
    ("header", "query", "ok"),
    [
        ("Bearer s3cret", None, True),
        ("bearer s3cret", None, True),
        ("Bearer wrong", None, False),
        ("Basic s3cret", None, False),
        (None, None, False),
        (None, "s3cret", True),
        (None, "wrong", False),
        ("Bearer s3crét", None, False),
    ],
)
def test_a_configured_token_must_match_exactly(header: str | None, query: str | None, ok: bool) -> None:
    assert door(ingest_token="s3cret").authorized(header, query) is ok


# --- all or nothing, against a fake Redis ---------------------------------------------------


class FakeRedis:
    """Records XADDs and the tick stream's mark; fails them while ``down`` is set."""

    def __init__(self) -> None:
        self.entries: list[dict[bytes, bytes]] = []
        self.mark: str | None = None
        self.down = False

    async def get(self, key: str) -> bytes | None:
        if self.down:
            raise RedisConnectionError("down")
        return self.mark.encode() if self.mark else None

    async def xrevrange(self, stream: str, count: int) -> list[Any]:
        if self.down:
            raise RedisConnectionError("down")
        return [(b"1-0", self.entries[-1])] if self.entries else []

    async def xadd(self, stream: str, fields: dict[bytes, bytes], mark: str | None = None, **kwargs: Any) -> bytes:
        if self.down:
            raise RedisConnectionError("down")
        self.entries.append(fields)
        self.mark = mark  # set with the entry, as the door's script does
        return f"{len(self.entries)}-0".encode()

    async def eval(self, script: str, numkeys: int, stream: str, _mark_key: str, *args: Any) -> list[Any]:
        """The door's fenced XADD script: append only while the mark is the expected one."""
        expected, mark, _min_id, *fields = args
        if expected != "*" and self.mark != expected:
            return [0, (self.mark or "").encode()]
        entry = dict(zip(fields[::2], fields[1::2], strict=True))
        return [1, await self.xadd(stream, entry, mark=mark)]


def with_fake(d: Door) -> FakeRedis:
    fake = FakeRedis()
    d._redis, d._redis_loop, d._lock = fake, asyncio.get_running_loop(), asyncio.Lock()  # type: ignore[assignment]
    return fake


async def test_a_refused_batch_leaves_the_validator_where_it_was() -> None:
    d = door()
    fake = with_fake(d)
    now = int(time.time() * 1000)
    good = [tick(10) | {"ts_event_ms": now}, tick(11) | {"ts_event_ms": now}]
    answer = await d.submit(body([*good, tick(12, price="0") | {"ts_event_ms": now}]))
    assert answer.status == 422 and answer.body["items"][0]["reason"] == "bad_price"
    assert fake.entries == [] and "ETHUSDT" not in d.validator.last_ids
    assert d.stats.get("door_ticks_refused", symbol="ETHUSDT") == 2
    answer = await d.submit(body(good))
    assert answer.status == 200 and answer.body["accepted"] == 2 and d.validator.last_ids["ETHUSDT"] == 11
    batch = codec.decode(fake.entries[0])
    assert isinstance(batch, TickBatch) and [t.trade_id for t in batch.ticks] == [10, 11]


async def test_a_failed_write_commits_nothing_and_a_resend_is_written_once() -> None:
    d = door()
    fake = with_fake(d)
    now = int(time.time() * 1000)
    raw = body([tick(1) | {"ts_event_ms": now}])
    fake.down = True
    assert (await d.submit(raw)).status == 503
    assert "ETHUSDT" not in d.validator.last_ids and d.stats.get("door_write_errors") == 1
    fake.down = False
    first = await d.submit(raw)
    again = await d.submit(raw)
    assert (first.body["accepted"], again.body["accepted"], again.body["duplicates"]) == (1, 0, 1)
    assert len(fake.entries) == 1


async def test_a_write_whose_reply_was_lost_is_not_written_again_when_resent() -> None:
    d = door()
    fake = with_fake(d)
    now = int(time.time() * 1000)
    raw = body([tick(1) | {"ts_event_ms": now}, tick(2) | {"ts_event_ms": now}])
    real_xadd = fake.xadd

    async def xadd_then_break(*args: Any, **kwargs: Any) -> bytes:
        await real_xadd(*args, **kwargs)
        raise RedisConnectionError("connection lost before the reply")

    fake.xadd = xadd_then_break  # type: ignore[method-assign]
    assert (await d.submit(raw)).status == 503
    fake.xadd = real_xadd  # type: ignore[method-assign]
    again = await d.submit(raw)
    assert (again.status, again.body["accepted"], again.body["duplicates"]) == (200, 0, 2)
    assert len(fake.entries) == 1


async def test_two_producers_sending_the_same_batch_at_once_write_it_once() -> None:
    d = door()
    fake = with_fake(d)
    now = int(time.time() * 1000)
    raw = body([tick(1) | {"ts_event_ms": now}, tick(2) | {"ts_event_ms": now}])
    real_xadd = fake.xadd

    async def slow_xadd(*args: Any, **kwargs: Any) -> bytes:
        await asyncio.sleep(0.01)  # the other request runs meanwhile
        return await real_xadd(*args, **kwargs)

    fake.xadd = slow_xadd  # type: ignore[method-assign]
    answers = await asyncio.gather(d.submit(raw), d.submit(raw))
    assert sorted((a.status, a.body["accepted"], a.body["duplicates"]) for a in answers) == [(200, 0, 2), (200, 2, 0)]
    assert len(fake.entries) == 1
