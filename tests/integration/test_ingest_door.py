"""The door for other producers (POST and websocket /v1/ticks) against a real Redis, in the service's app."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.websockets import WebSocketDisconnect

from unistream_common import codec, keys
from unistream_common.packets import Tick, TickBatch
from unistream_common.redisio import command_client
from unistream_common.service import ServiceContext, create_app
from unistream_common.stats import Stats
from unistream_ingest.door import PATH, STATS_PATH, make_door_router
from unistream_ingest.settings import IngestSettings
from unistream_tools.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.integration

ETH = keys.ticks("ETHUSDT")
LIMIT = 4_096  # max_body_bytes in these tests: small, so oversized bodies are cheap to make


def now_ms() -> int:
    return int(time.time() * 1000)


def tick(trade_id: int, price: Any = "3012.55", side: str = "BUY", **extra: Any) -> dict[str, Any]:
    return {"trade_id": trade_id, "price": price, "size": "0.012", "side": side, "ts_event_ms": now_ms() - 5, **extra}


def batch(*ticks: dict[str, Any], symbol: str = "ETHUSDT", source: str = "REPLAY") -> dict[str, Any]:
    return {"symbol": symbol, "source": source, "ticks": list(ticks)}


class App:
    """The ingest app with only the door added, an idle worker, and its Stats."""

    def __init__(self, url: str, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "redis_url": url, "symbols": "ETHUSDT,BTCUSDT", "max_body_bytes": LIMIT, "source": "external",
        }  # fmt: skip
        values.update(overrides)
        self.settings = IngestSettings(**values)
        self.stats = Stats("ingest")
        self.router = make_door_router(self.settings, self.stats)
        ctx = ServiceContext(
            name="ingest",
            settings=self.settings,
            stats=self.stats,
            redis=command_client(url, timeout_s=1.0),
            routers=[self.router],
        )

        async def idle(_: ServiceContext) -> None:
            await asyncio.Event().wait()

        self.app: FastAPI = create_app(ctx, idle)


def stream(url: str, key: str = ETH) -> list[TickBatch]:
    client = redis.Redis.from_url(url)
    try:
        out = [codec.decode(fields) for _, fields in client.xrange(key)]
    finally:
        client.close()
    assert all(isinstance(p, TickBatch) for p in out)
    return out  # type: ignore[return-value]


@pytest.fixture
def url(module_redis: RedisServer) -> str:
    client = redis.Redis.from_url(module_redis.url)
    client.flushall()
    client.close()
    return module_redis.url


@pytest.fixture
def client(url: str) -> Iterator[TestClient]:
    with TestClient(App(url).app) as c:
        yield c


# --- POST ----------------------------------------------------------------------------------


def test_an_accepted_batch_lands_in_the_stream_exactly_once_and_decodes(client: TestClient, url: str) -> None:
    r = client.post(PATH, json=batch(tick(100), tick(101, price=3013.5, side="SELL")))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2 and r.json()["duplicates"] == 0 and r.json()["entry_id"]
    (written,) = stream(url)
    assert written.symbol == "ETHUSDT" and written.source == "REPLAY"
    assert [(t.trade_id, t.price, t.aggressor_side) for t in written.ticks] == [
        (100, 3012.55, "BUY"),
        (101, 3013.5, "SELL"),
    ]
    assert all(t.ts_recv_ms >= t.ts_event_ms for t in written.ticks)
    assert stream(url, keys.ticks("BTCUSDT")) == []


def test_a_batch_with_one_bad_item_is_refused_listing_it_and_nothing_is_written(client: TestClient, url: str) -> None:
    r = client.post(PATH, json=batch(tick(1), tick(2, price="-3"), tick(3)))
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_ticks"
    assert [(i["index"], i["reason"]) for i in r.json()["items"]] == [(1, "bad_price")]
    assert stream(url) == []
    # the refused request did not advance the door: the good ticks go through afterwards
    assert client.post(PATH, json=batch(tick(1), tick(3))).json()["accepted"] == 2


def test_a_resent_batch_is_answered_as_duplicates_and_the_stream_is_unchanged(client: TestClient, url: str) -> None:
    body = batch(tick(7), tick(8))
    assert client.post(PATH, json=body).json()["accepted"] == 2
    r = client.post(PATH, json=body)
    assert r.status_code == 200
    assert (r.json()["accepted"], r.json()["duplicates"], r.json()["entry_id"]) == (0, 2, None)
    # an overlapping resend writes only the new tail
    r = client.post(PATH, json=batch(tick(8), tick(9)))
    assert (r.json()["accepted"], r.json()["duplicate_indices"]) == (1, [0])
    assert [[t.trade_id for t in b.ticks] for b in stream(url)] == [[7, 8], [9]]
    counts = client.get("/stats").json()["counters"]
    assert counts["door_rejected"] == {"reason=duplicate": 3}


def test_ticks_already_in_the_stream_before_the_door_opened_are_duplicates(url: str) -> None:
    client = redis.Redis.from_url(url)
    old = TickBatch("ETHUSDT", "REAL", [Tick(50, 3000.0, 1.0, "BUY", now_ms() - 9, now_ms())])
    client.xadd(ETH, codec.encode(old))
    client.close()
    app = App(url)
    with TestClient(app.app) as c:
        r = c.post(PATH, json=batch(tick(49), tick(50), tick(51)))
    assert app.router.door._redis is None  # the router's lifespan closed the door's client
    assert (r.status_code, r.json()["accepted"], r.json()["duplicates"]) == (200, 1, 2)
    assert [[t.trade_id for t in b.ticks] for b in stream(url)] == [[50], [51]]


def test_an_unknown_symbol_or_source_is_refused(client: TestClient, url: str) -> None:
    r = client.post(PATH, json=batch(tick(1), symbol="DOGEUSDT"))
    assert (r.status_code, r.json()["error"]) == (422, "unknown_symbol")
    r = client.post(PATH, json=batch(tick(1), source="LIVE"))
    assert (r.status_code, r.json()["error"]) == (422, "bad_envelope")
    r = client.post(PATH, content=b"{oops")
    assert (r.status_code, r.json()["error"]) == (400, "bad_json")
    assert stream(url) == []


def test_a_nesting_bomb_is_refused_not_a_crash(client: TestClient) -> None:
    bomb = b'{"symbol": "ETHUSDT", "source": "REAL", "ticks": [' + b"[" * 4_000
    r = client.post(PATH, content=bomb)
    assert (r.status_code, r.json()["error"]) == (422, "too_deep")
    with client.websocket_connect(PATH) as ws:
        ws.send_bytes(bomb)
        assert ws.receive_json()["error"] == "too_deep"
        ws.send_text(json.dumps(batch(tick(1))))
        assert ws.receive_json()["accepted"] == 1


def test_an_oversized_body_is_refused_with_413_whether_declared_or_streamed(client: TestClient, url: str) -> None:
    big = json.dumps(batch(*(tick(i) for i in range(1, 200)))).encode()
    assert len(big) > LIMIT
    r = client.post(PATH, content=big)
    assert (r.status_code, r.json()["error"]) == (413, "too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the door must count what it reads
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    r = client.post(PATH, content=chunks())
    assert (r.status_code, r.json()["error"]) == (413, "too_large")
    assert stream(url) == []
    assert client.get("/stats").json()["counters"]["door_oversized"] == 2


def test_more_ticks_than_max_batch_items_is_refused_with_413(url: str) -> None:
    with TestClient(App(url, max_batch_items=2).app) as c:
        r = c.post(PATH, json=batch(tick(1), tick(2), tick(3)))
    assert (r.status_code, r.json()["error"]) == (413, "too_many_ticks")
    assert stream(url) == []


def test_with_a_token_set_requests_need_the_bearer_token(url: str) -> None:
    with TestClient(App(url, ingest_token="s3cret").app) as c:
        r = c.post(PATH, json=batch(tick(1)))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post(PATH, json=batch(tick(1)), headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get(STATS_PATH).status_code == 401
        assert stream(url) == []
        r = c.post(PATH, json=batch(tick(1)), headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["accepted"] == 1
        assert c.get("/stats").json()["counters"]["door_auth_failures"] == 3


def test_without_a_token_set_the_door_is_open(client: TestClient) -> None:
    assert client.post(PATH, json=batch(tick(1))).status_code == 200


def test_the_door_stats_show_the_rejection_sample(client: TestClient) -> None:
    client.post(PATH, json=batch(tick(1, price="abc")))
    info = client.get(STATS_PATH).json()
    assert info["validator"]["rejected"] == {"bad_price": 1}
    assert info["validator"]["samples"][0]["reason"] == "bad_price" and "abc" in info["validator"]["samples"][0]["item"]


def test_when_redis_is_down_the_door_answers_503_writes_nothing_and_a_resend_lands_once(
    redis_server: RedisServer, tmp_path: Any
) -> None:
    url = redis_server.url
    with TestClient(App(url).app) as c:
        assert c.post(PATH, json=batch(tick(1))).status_code == 200
        redis_server.stop()
        body = batch(tick(2), tick(3))
        r = c.post(PATH, json=body)
        assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (503, "redis_unavailable", "1")
        restarted = start_redis(redis_server.data_dir, port=redis_server.port, appendonly=True)
        try:
            r = c.post(PATH, json=body)
            assert (r.status_code, r.json()["accepted"]) == (200, 2), r.text
            assert c.post(PATH, json=body).json()["duplicates"] == 2
            assert [[t.trade_id for t in b.ticks] for b in stream(url)] == [[1], [2, 3]]
            assert c.get("/stats").json()["counters"]["door_write_errors"] == 1
        finally:
            restarted.stop()


def test_accepted_ticks_that_a_killed_redis_lost_are_written_again_before_the_next_batch(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url
    with TestClient(App(url).app) as c:
        assert c.post(PATH, json=batch(tick(1), tick(2))).status_code == 200
        time.sleep(1.2)  # appendfsync everysec: the first batch is in the file by now
        position = redis_server.aof_position()
        assert position is not None
        assert c.post(PATH, json=batch(tick(3), tick(4), source="REAL")).json()["accepted"] == 2
        assert redis_server.kill_losing_after(position) > 0  # Redis comes back without the second batch
        restarted = start_redis(redis_server.data_dir, port=redis_server.port, appendonly=True)
        try:
            assert [[t.trade_id for t in b.ticks] for b in stream(url)] == [[1, 2]]
            r = c.post(PATH, json=batch(tick(5)))
            assert (r.status_code, r.json()["accepted"]) == (200, 1), r.text
            written = stream(url)
            assert [[t.trade_id for t in b.ticks] for b in written] == [[1, 2], [3, 4], [5]]
            assert written[1].source == "REAL"  # written again as it was accepted
            counters = c.get("/stats").json()["counters"]
            assert counters["door_redis_rollbacks"] == {"symbol=ETHUSDT": 1}
            assert counters["door_ticks_resent"] == {"symbol=ETHUSDT": 2}
        finally:
            restarted.stop()


# --- websocket -----------------------------------------------------------------------------


def test_websocket_answers_each_message_in_order_and_writes_the_ticks(client: TestClient, url: str) -> None:
    with client.websocket_connect(PATH) as ws:
        ws.send_text(json.dumps(batch(tick(1), tick(2))))
        assert ws.receive_json() == {"seq": 1, "status": 200, "accepted": 2, "duplicates": 0, "entry_id": ws_id(url)}
        ws.send_bytes(json.dumps({"symbol": "ETHUSDT", "source": "SYNTHETIC", **tick(3)}).encode())
        answer = ws.receive_json()
        assert (answer["seq"], answer["accepted"]) == (2, 1)
    assert [([t.trade_id for t in b.ticks], b.source) for b in stream(url)] == [([1, 2], "REPLAY"), ([3], "SYNTHETIC")]


def ws_id(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        return client.xrevrange(ETH, count=1)[0][0].decode()
    finally:
        client.close()


def test_websocket_bad_messages_are_answered_and_the_connection_stays_open(client: TestClient, url: str) -> None:
    with client.websocket_connect(PATH) as ws:
        ws.send_text("not json")
        assert ws.receive_json()["error"] == "bad_json"
        ws.send_text(json.dumps(batch(tick(1), tick(2, side="HOLD"))))
        answer = ws.receive_json()
        assert (answer["seq"], answer["status"], answer["items"][0]["index"]) == (2, 422, 1)
        ws.send_text("x" * (LIMIT + 1))
        assert ws.receive_json() == {
            "seq": 3,
            "status": 413,
            "error": "too_large",
            "detail": f"{LIMIT + 1} bytes is over the limit of {LIMIT} bytes",
        }
        ws.send_text(json.dumps(batch(tick(1))))
        assert ws.receive_json()["accepted"] == 1
    assert len(stream(url)) == 1


def test_websocket_closes_with_1009_on_a_huge_message(client: TestClient) -> None:
    with client.websocket_connect(PATH) as ws:
        ws.send_bytes(b"x" * (LIMIT * 5))
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
    assert info.value.code == 1009


def test_websocket_with_a_token_set_takes_the_header_or_the_query_and_refuses_neither(url: str) -> None:
    with TestClient(App(url, ingest_token="s3cret").app) as c:
        with pytest.raises(WebSocketDisconnect) as info, c.websocket_connect(PATH):
            pass
        assert info.value.code == 1008
        with c.websocket_connect(PATH, headers={"Authorization": "Bearer s3cret"}) as ws:
            ws.send_text(json.dumps(batch(tick(1))))
            assert ws.receive_json()["accepted"] == 1
        with c.websocket_connect(f"{PATH}?token=s3cret") as ws:
            ws.send_text(json.dumps(batch(tick(2))))
            assert ws.receive_json()["accepted"] == 1
        assert c.get("/stats").json()["counters"]["door_auth_failures"] == 1


# --- fuzz: whatever arrives, the door answers (never 500) and keeps serving ---------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
ODD = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["3012.55", "0", "-1", "1e3", "nan", "BUY", "SELL", "", "9" * 40]),
    st.none(),
    st.booleans(),
)
NEAR_TICK = st.fixed_dictionaries(
    {},
    optional={
        "trade_id": st.integers(min_value=0, max_value=10**6) | ODD,
        "price": st.sampled_from(["3012.55", "0.01", 1.5]) | ODD,
        "size": st.sampled_from(["0.012", "2"]) | ODD,
        "side": st.sampled_from(["BUY", "SELL"]) | ODD,
        "ts_event_ms": st.just(None).map(lambda _: now_ms()) | ODD,
    },
)
NEAR_BATCH = st.fixed_dictionaries(
    {
        "symbol": st.sampled_from(["ETHUSDT", "BTCUSDT", "ethusdt"]) | ODD,
        "source": st.sampled_from(["REAL", "REPLAY", "SYNTHETIC"]) | ODD,
    },
    optional={"ticks": st.lists(NEAR_TICK | JSON_VALUES, max_size=4) | ODD},
)
BODIES = st.one_of(
    st.binary(max_size=300),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    NEAR_BATCH.map(lambda v: json.dumps(v).encode()),
    NEAR_TICK.map(lambda v: json.dumps({"symbol": "ETHUSDT", "source": "REAL", **v}).encode()),
)
ANSWERS = {200, 400, 413, 422}


@pytest.fixture(scope="module")
def fuzz_client(module_redis: RedisServer) -> Iterator[tuple[TestClient, App]]:
    app = App(module_redis.url, max_batch_items=3)
    with TestClient(app.app) as c:
        yield c, app


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=BODIES)
def test_fuzzed_posts_are_answered_without_a_500(fuzz_client: tuple[TestClient, App], raw: bytes) -> None:
    c, _ = fuzz_client
    r = c.post(PATH, content=raw)
    assert r.status_code in ANSWERS, (r.status_code, r.text)
    assert isinstance(r.json(), dict)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raws=st.lists(BODIES | st.text(max_size=100).map(str.encode), min_size=1, max_size=6))
def test_fuzzed_websocket_messages_are_each_answered_on_one_connection(
    fuzz_client: tuple[TestClient, App], raws: list[bytes]
) -> None:
    c, _ = fuzz_client
    with c.websocket_connect(PATH) as ws:
        for seq, raw in enumerate(raws, 1):
            ws.send_bytes(raw)
            answer = ws.receive_json()
            assert answer["seq"] == seq and answer["status"] in ANSWERS, answer


def test_after_the_fuzz_the_door_still_accepts_a_valid_batch_and_counted_every_request(
    fuzz_client: tuple[TestClient, App],
) -> None:
    c, app = fuzz_client
    r = c.post(PATH, json=batch(tick(10**7), symbol="BTCUSDT"))
    assert r.status_code == 200 and r.json()["accepted"] == 1
    counts = app.stats.as_dict()["counters"]
    assert "door_internal_errors" not in counts
    assert app.stats.total("door_requests") >= 250
    assert not any("status=500" in k for k in counts["door_requests"])


def test_symbols_the_ingests_own_source_writes_are_refused_with_what_to_do(url: str) -> None:
    app = App(url, source="replay", replay_paths="x.csv", replay_symbol="ETHUSDT")
    with TestClient(app.app) as client:
        busy = client.post(PATH, json=batch(tick(1), symbol="ETHUSDT"))
        assert busy.status_code == 422 and busy.json()["error"] == "source_conflict"
        assert "UNISTREAM_SOURCE=external" in busy.json()["detail"]
        free = client.post(PATH, json=batch(tick(1), symbol="BTCUSDT"))
        assert free.status_code == 200 and free.json()["accepted"] == 1
