"""The one heartbeat writer (unistream_common.heartbeat) against a real Redis: the services' async
pipeline and the dashboard's sync one queue the same beat, and a clean stop removes it."""

from __future__ import annotations

import asyncio
import os
import socket

import redis

from unistream_common import heartbeat, keys
from unistream_common.redisio import command_client, sync_client

NOW = 1_700_000_000_000


def _beat_sync(url: str, service: str, consumer: str, now_ms: int, ready: bool = True) -> None:
    client = sync_client(url, "test-heartbeat")
    try:
        pipe = client.pipeline(transaction=True)
        fields = heartbeat.beat_fields(service, consumer, started_ms=NOW - 5_000, ready=ready)
        heartbeat.queue_beat(pipe, service, consumer, fields, now_ms)
        pipe.execute()
    finally:
        client.close()


async def _beat_async(url: str, service: str, consumer: str, now_ms: int) -> None:
    client = command_client(url, "test-heartbeat")
    try:
        pipe = client.pipeline(transaction=True)
        fields = heartbeat.beat_fields(service, consumer, started_ms=NOW - 5_000, ready=False)
        heartbeat.queue_beat(pipe, service, consumer, fields, now_ms)
        await pipe.execute()
    finally:
        await client.aclose()


def test_sync_and_async_pipelines_write_the_same_beat_with_one_ttl(redis_url: str) -> None:
    _beat_sync(redis_url, "dashboard", "dash-a", NOW)
    asyncio.run(_beat_async(redis_url, "trainer", "trainer-a", NOW))
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    for service, consumer, ready in (("dashboard", "dash-a", "1"), ("trainer", "trainer-a", "0")):
        key = keys.heartbeat(service, consumer)
        assert conn.hgetall(key) == {
            "service": service,
            "consumer": consumer,
            "started_ms": str(NOW - 5_000),
            "updated_ms": str(NOW),
            "ready": ready,
            "pid": str(os.getpid()),
            "host": socket.gethostname(),
        }
        assert 0 < conn.pttl(key) <= heartbeat.HEARTBEAT_TTL_MS
    assert conn.zrange(keys.SERVICES, 0, -1, withscores=True) == [("dashboard/dash-a", NOW), ("trainer/trainer-a", NOW)]
    conn.close()


def test_a_beat_prunes_index_members_silent_longer_than_the_index_keeps_them(redis_url: str) -> None:
    _beat_sync(redis_url, "ingest", "ingest-old", NOW)
    _beat_sync(redis_url, "ingest", "ingest-recent", NOW + 1)
    _beat_sync(redis_url, "ingest", "ingest-new", NOW + heartbeat.INDEX_KEEP_MS)
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    members = [keys.parse_service_member(m) for m in conn.zrange(keys.SERVICES, 0, -1)]
    assert members == [("ingest", "ingest-recent"), ("ingest", "ingest-new")]
    conn.close()


def test_a_goodbye_removes_the_hash_and_the_index_member_at_once(redis_url: str) -> None:
    _beat_sync(redis_url, "features", "features-a", NOW)
    _beat_sync(redis_url, "features", "features-b", NOW)
    client = sync_client(redis_url, "test-heartbeat")
    pipe = client.pipeline(transaction=True)
    heartbeat.queue_goodbye(pipe, "features", "features-a")
    pipe.execute()
    assert not client.exists(keys.heartbeat("features", "features-a"))
    assert client.exists(keys.heartbeat("features", "features-b"))
    assert client.zrange(keys.SERVICES, 0, -1) == [b"features/features-b"]
    client.close()


def test_the_ttl_outlasts_several_missed_beats() -> None:
    assert heartbeat.HEARTBEAT_TTL_MS >= 3 * heartbeat.HEARTBEAT_EVERY_S * 1000
    assert heartbeat.INDEX_KEEP_MS > heartbeat.HEARTBEAT_TTL_MS
