"""The heartbeat's keys and the commands of one beat, without Redis (tests/integration/
test_common_heartbeat_redis.py runs them against a real server)."""

from __future__ import annotations

from typing import Any

from unistream_common import heartbeat, keys


class RecordingPipe:
    """Records the commands queued on it, as a redis-py pipeline queues them."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.commands.append((name, args, kwargs))


def test_a_service_member_round_trips_through_its_parser() -> None:
    assert keys.service_member("trainer", "trainer-a") == "trainer/trainer-a"
    assert keys.parse_service_member(b"trainer/trainer-a") == ("trainer", "trainer-a")
    assert keys.parse_service_member("ingest/host-1/x") == ("ingest", "host-1/x")
    assert keys.parse_service_member("lonely") == ("lonely", "")


def test_one_beat_writes_the_hash_its_ttl_and_the_index_then_prunes_the_index() -> None:
    pipe = RecordingPipe()
    fields = {"service": "ingest", "consumer": "ingest-a", "ready": 1}
    heartbeat.queue_beat(pipe, "ingest", "ingest-a", fields, 5_000_000)
    assert pipe.commands == [
        ("hset", ("svc:ingest:ingest-a",), {"mapping": {**fields, "updated_ms": 5_000_000}}),
        ("pexpire", ("svc:ingest:ingest-a", heartbeat.HEARTBEAT_TTL_MS), {}),
        ("zadd", (keys.SERVICES, {"ingest/ingest-a": 5_000_000}), {}),
        ("zremrangebyscore", (keys.SERVICES, "-inf", 5_000_000 - heartbeat.INDEX_KEEP_MS), {}),
    ]


def test_beat_fields_name_the_process_and_its_readiness_as_a_number() -> None:
    fields = heartbeat.beat_fields("trainer", "trainer-a", started_ms=123, ready=False)
    assert {k: fields[k] for k in ("service", "consumer", "started_ms", "ready")} == {
        "service": "trainer",
        "consumer": "trainer-a",
        "started_ms": 123,
        "ready": 0,
    }
    assert isinstance(fields["pid"], int) and fields["host"]
