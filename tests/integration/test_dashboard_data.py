"""The dashboard's Redis readers against a real server: what they return, what they skip,
and how they fail when Redis is away."""

from __future__ import annotations

import time
from collections.abc import Iterator

import dashboard_samples as samples
import pytest
import redis
import streamlit as st

from unistream_common import codec, heartbeat, keys, quality
from unistream_dashboard import data, streams
from unistream_tools.redis_server import free_port

pytestmark = pytest.mark.integration

NOW = 1_700_000_000_000


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    st.cache_data.clear()
    conn = redis.Redis.from_url(redis_url)
    try:
        yield conn
    finally:
        conn.close()


def test_read_status_returns_status_packets_newest_first_and_each_symbols_last_ticks(
    client: redis.Redis, redis_url: str
) -> None:
    for i in range(3):
        samples.write(client, keys.UI, samples.ui_packet("ETHUSDT", ts_ms=NOW + i, last_price=3000.0 + i, ticks_seen=i))
    samples.write(
        client, keys.ticks("ETHUSDT"), samples.tick_batch("ETHUSDT", first_trade_id=1, prices=[1.5], ts_ms=NOW)
    )
    samples.write(
        client, keys.ticks("ETHUSDT"), samples.tick_batch("ETHUSDT", first_trade_id=2, prices=[2.5], ts_ms=NOW)
    )
    read = data.read_status(redis_url, ("ETHUSDT", "BTCUSDT"))
    assert [p.ticks_seen for p in read.ui] == [2, 1, 0]
    assert list(read.last_ticks) == ["ETHUSDT"] and read.last_ticks["ETHUSDT"].ticks[-1].price == 2.5
    assert read.skipped == []


def test_readers_skip_and_explain_entries_that_do_not_decode_or_are_the_wrong_packet(
    client: redis.Redis, redis_url: str
) -> None:
    batch = samples.tick_batch("BTCUSDT", first_trade_id=1, prices=[9e4], ts_ms=NOW)
    samples.write(client, keys.ticks("BTCUSDT"), batch)
    samples.write(
        client, keys.ticks("ETHUSDT"), samples.tick_batch("ETHUSDT", first_trade_id=1, prices=[1.5], ts_ms=NOW)
    )
    bad_id = client.xadd(keys.ticks("ETHUSDT"), {b"type": b"bar", b"v": b"1", b"data": b"\xc1"}).decode()
    metrics = samples.metrics_packet("t0", ts_ms=NOW, step=1, td_loss=0.1, updates=1)
    client.xadd(keys.UI, codec.encode(metrics), id="5-0")
    status = data.read_status(redis_url, ("ETHUSDT", "BTCUSDT"))
    assert status.last_ticks == {"BTCUSDT": batch}, "the newest ETHUSDT entry does not decode: no last tick"
    ui_skipped, tick_skipped = status.skipped
    assert ui_skipped == data.Skipped(keys.UI, "5-0", "expected a ui packet, got metrics")
    assert (tick_skipped.stream, tick_skipped.entry_id) == (keys.ticks("ETHUSDT"), bad_id)
    assert tick_skipped.reason.startswith("bar rejected:")


def test_read_training_returns_metrics_oldest_first_and_models_newest_first(
    client: redis.Redis, redis_url: str
) -> None:
    for step in (1, 2, 3):
        samples.write(
            client, keys.METRICS, samples.metrics_packet("t0", ts_ms=NOW + step, step=step, td_loss=0.1, updates=step)
        )
    for version in ("v1", "v2"):
        samples.write(
            client, keys.MODELS, samples.model_announcement("dqn", version, ts_ms=NOW, producer="t0", parameters=9)
        )
    read = data.read_training(redis_url, 2)
    assert [m.step for m in read.metrics] == [2, 3]
    assert [m.version for m in read.models] == ["v2", "v1"]


def test_read_streams_reports_groups_consumers_lag_and_trimming_overrun(client: redis.Redis, redis_url: str) -> None:
    stream = keys.ticks("ETHUSDT")
    for i in range(1, 11):
        client.xadd(stream, {b"n": str(i).encode()}, id=f"{i}-0")
    samples.ensure_group(client, stream, keys.GROUP_AGGREGATOR)
    client.xreadgroup(keys.GROUP_AGGREGATOR, "aggregator-1", {stream: ">"}, count=3)
    client.xtrim(stream, maxlen=5, approximate=False)
    read = data.read_streams(redis_url, ("ETHUSDT",))
    by_name = {s.name: s for s in read.streams}
    assert set(by_name) == {stream}
    assert keys.bars("ETHUSDT", "1s") in read.missing and keys.history("ETHUSDT", "1m") in read.missing
    assert not any(name.endswith(keys.DLQ_SUFFIX) for name in read.missing), "absent dead-letter streams are normal"
    ticks = by_name[stream]
    assert (ticks.length, ticks.first_entry_id, ticks.last_entry_id, ticks.entries_added) == (5, "6-0", "10-0", 10)
    assert ticks.last_generated_id == "10-0"
    [group] = ticks.groups
    assert (group.name, group.consumers, group.pending, group.last_delivered_id) == ("aggregator", 1, 3, "3-0")
    assert [(c.name, c.pending) for c in group.consumer_infos] == [("aggregator-1", 3)]
    assert streams.overrun_alarm(ticks, group) == "OVERRUN: 2 entries trimmed before this group read them"
    assert abs(read.time_ms - time.time() * 1000) < 5_000, "Redis's clock"
    assert read.rates == {stream: None} and read.fetch_ms > 0


def test_read_streams_returns_dead_letters_newest_first_with_their_reasons(client: redis.Redis, redis_url: str) -> None:
    stream = keys.bars("ETHUSDT", "1s")
    for i, reason in enumerate(["first", "second", "third", "fourth"]):
        samples.dead_letter(client, stream, reason, group="features", consumer="features-1", ts_ms=NOW + i)
    client.xadd(keys.dlq(keys.METRICS), {b"no": b"reason"})
    read = data.read_streams(redis_url, ("ETHUSDT",), 2)
    by_stream = {d.stream: d for d in read.dead_letters}
    assert set(by_stream) == {stream, keys.METRICS}
    bars = by_stream[stream]
    assert (bars.length, bars.entries_added) == (4, 4)
    assert [(d.reason, d.group, d.consumer, d.ts_ms) for d in bars.latest] == [
        ("fourth", "features", "features-1", NOW + 3),
        ("third", "features", "features-1", NOW + 2),
    ]
    assert [d.reason for d in by_stream[keys.METRICS].latest] == ["(no reason given)"]


def test_entries_per_second_come_from_the_counter_between_reads(client: redis.Redis, redis_url: str) -> None:
    stream = keys.UI
    client.xadd(stream, {b"n": b"0"})
    first = data.read_streams(redis_url, ("ETHUSDT",))
    assert first.rates[stream] is None
    time.sleep(0.6)
    for i in range(30):
        client.xadd(stream, {b"n": str(i).encode()}, maxlen=5, approximate=False)
    st.cache_data.clear()
    rate = data.read_streams(redis_url, ("ETHUSDT",)).rates[stream]
    assert rate is not None and 30 / 5 < rate <= 30 / 0.6, "trimmed entries count: the counter is entries-added"


def test_read_health_lists_live_heartbeats_and_the_trainer_leader(client: redis.Redis, redis_url: str) -> None:
    samples.heartbeat(client, "trainer", "trainer-b", started_ms=NOW, updated_ms=NOW + 5, ready=False)
    samples.heartbeat(client, "ingest", "ingest-a", started_ms=NOW - 10, updated_ms=NOW)
    samples.heartbeat(client, "trainer", "trainer-a", started_ms=NOW, updated_ms=NOW + 1)
    client.zadd(keys.SERVICES, {"features/features-gone": NOW})  # listed, but its hash expired
    client.set(data.TRAINER_LEADER, "trainer-a:5d1f0c9e2b7a")  # the holder process's token
    read = data.read_health(redis_url)
    assert [(b.service, b.consumer, b.ready) for b in read.beats] == [
        ("ingest", "ingest-a", True),
        ("trainer", "trainer-a", True),
        ("trainer", "trainer-b", False),
    ]
    assert read.beats[0] == data.Heartbeat("ingest", "ingest-a", NOW - 10, NOW, True, 4242, "host-a")
    assert read.leader == "trainer-a"
    st.cache_data.clear()
    client.flushall()
    empty = data.read_health(redis_url)
    assert (empty.beats, empty.leader) == ([], None)


def test_read_quality_scores_each_symbol_as_the_status_tool_does(client: redis.Redis, redis_url: str) -> None:
    counts = {"ticks_applied": 900, "ticks_late": 100, "bars_1s": 60, "bars_incomplete": 6, "updated_ms": NOW}
    samples.quality_counters(client, "ETHUSDT", counts, owner="aggregator-a")
    read = data.read_quality(redis_url, ("ETHUSDT", "BTCUSDT"))
    eth, btc = read.rows
    assert (eth["symbol"], eth["owner"], eth["ticks_late"], eth["updated_ms"]) == ("ETHUSDT", "aggregator-a", 100, NOW)
    assert eth["score"] == quality.score(counts) == 81.0
    assert (btc["symbol"], btc["owner"], btc["score"]) == ("BTCUSDT", None, None)


def test_the_dashboard_beats_its_own_heartbeat_like_the_services(client: redis.Redis, redis_url: str) -> None:
    stop = data.start_heartbeat(redis_url, "dashboard-test", 0.2)
    try:
        deadline = time.monotonic() + 5
        while not client.exists(keys.heartbeat("dashboard", "dashboard-test")) and time.monotonic() < deadline:
            time.sleep(0.05)
        [beat] = data.read_health(redis_url).beats
        assert (beat.service, beat.consumer, beat.ready) == ("dashboard", "dashboard-test", True)
        assert 0 < client.pttl(keys.heartbeat("dashboard", "dashboard-test")) <= heartbeat.HEARTBEAT_TTL_MS
        assert data.start_heartbeat(redis_url, "dashboard-test", 0.2) is stop, "one thread per server process"
    finally:
        stop.set()
        data.start_heartbeat.clear()


def test_readers_fail_fast_with_a_connection_error_when_redis_is_away() -> None:
    st.cache_data.clear()
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    readers = (
        lambda: data.read_status(url, ("ETHUSDT",)),
        lambda: data.read_training(url, 10),
        lambda: data.read_streams(url, ("ETHUSDT",)),
        lambda: data.read_health(url),
        lambda: data.read_quality(url, ("ETHUSDT",)),
    )
    for read in readers:
        with pytest.raises(redis.ConnectionError):
            read()
    assert time.monotonic() - started < len(readers) * data.CONNECT_TIMEOUT_S
