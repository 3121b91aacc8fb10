"""The dashboard's Redis readers against a real server: what they return, what they skip,
and how they fail when Redis is away."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
import streamlit as st

from unistream_common import codec, keys
from unistream_common.redis_server import free_port
from unistream_dashboard import data, samples, view

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
    bars = samples.bar_walk("ETHUSDT", end_open_ms=NOW, count=3, start_price=3000.0)
    for bar in bars[:2]:
        samples.write(client, keys.bars("ETHUSDT", "1s"), bar, entry_id=f"{bar.open_time_ms}-0")
    client.xadd(
        keys.bars("ETHUSDT", "1s"), {b"type": b"bar", b"v": b"1", b"data": b"\xc1"}, id=f"{bars[2].open_time_ms}-0"
    )
    metrics = samples.metrics_packet("t0", ts_ms=NOW, step=1, td_loss=0.1, updates=1)
    client.xadd(keys.UI, codec.encode(metrics), id="5-0")
    read = data.read_bars(redis_url, ("ETHUSDT",), 300)
    assert read.bars["ETHUSDT"] == bars[:2]
    [skipped] = read.skipped
    assert (skipped.stream, skipped.entry_id) == (keys.bars("ETHUSDT", "1s"), f"{bars[2].open_time_ms}-0")
    assert skipped.reason.startswith("bar rejected:")
    status = data.read_status(redis_url, ("ETHUSDT",))
    assert status.skipped == [view.Skipped(keys.UI, "5-0", "expected a ui packet, got metrics")]


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
    client.xadd(keys.dlq(stream), {b"n": b"x"})
    read = data.read_streams(redis_url, ("ETHUSDT",))
    by_name = {s.name: s for s in read.streams}
    assert set(by_name) == {stream, keys.dlq(stream)}
    assert keys.bars("ETHUSDT", "1s") in read.missing and keys.dlq(stream) not in read.missing
    ticks = by_name[stream]
    assert (ticks.length, ticks.first_entry_id, ticks.last_entry_id, ticks.entries_added) == (5, "6-0", "10-0", 10)
    [group] = ticks.groups
    assert (group.name, group.consumers, group.pending, group.last_delivered_id) == ("aggregator", 1, 3, "3-0")
    assert [(c.name, c.pending) for c in group.consumer_infos] == [("aggregator-1", 3)]
    assert view.overrun(ticks, group) == 2
    assert view.group_rows([ticks])[0]["trimmed"] == "OVERRUN (2 trimmed before read)"


def test_readers_fail_fast_with_a_connection_error_when_redis_is_away() -> None:
    st.cache_data.clear()
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    for read in (
        lambda: data.read_status(url, ("ETHUSDT",)),
        lambda: data.read_bars(url, ("ETHUSDT",), 10),
        lambda: data.read_training(url, 10),
        lambda: data.read_streams(url, ("ETHUSDT",)),
    ):
        with pytest.raises(redis.ConnectionError):
            read()
    assert time.monotonic() - started < 4 * data.CONNECT_TIMEOUT_S
