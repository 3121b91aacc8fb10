"""The heartbeat every process writes, so the dashboard (and ``unistream status``) can tell who runs.

One beat is four commands on one pipeline, run as MULTI/EXEC by the caller so the hash, its TTL
and the index move together:

- ``svc:{service}:{consumer}`` (:func:`unistream_common.keys.heartbeat`): a hash of
  :func:`beat_fields` plus ``updated_ms``, expiring :data:`HEARTBEAT_TTL_MS` after the last beat,
  so a process that dies without a word drops off by itself;
- ``svc:index`` (:data:`unistream_common.keys.SERVICES`): member ``<service>/<consumer>``, score
  the last beat, pruned of members silent for :data:`INDEX_KEEP_MS` (readers take liveness from
  the hashes; the index only says which hashes to look at).

The services beat from an asyncio task (:func:`unistream_common.service.heartbeat`), the
dashboard from a thread: redis-py's sync and async pipelines queue commands alike and differ
only in ``execute``, so :func:`queue_beat` serves both and the caller executes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from unistream_common import keys

HEARTBEAT_EVERY_S = 2.0
# Five missed beats before a process counts as gone: a busy event loop or a slow Redis must not
# make a running process blink off the dashboard.
HEARTBEAT_TTL_MS = 10_000
INDEX_KEEP_MS = 10 * HEARTBEAT_TTL_MS


def beat_fields(service: str, consumer: str, *, started_ms: int, ready: bool) -> dict[str, str | int]:
    """The hash fields of one process's beat (``updated_ms`` is added per beat by :func:`queue_beat`):
    service, consumer, started_ms (epoch ms), ready (1 or 0), pid and host."""
    return {
        "service": service,
        "consumer": consumer,
        "started_ms": started_ms,
        "ready": int(bool(ready)),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


def queue_beat(pipe: Any, service: str, consumer: str, fields: Mapping[str, str | int], now_ms: int) -> None:
    """Queue one beat of ``service``/``consumer`` at ``now_ms`` (epoch ms) on ``pipe``, a sync or
    async redis-py pipeline (:func:`unistream_common.redisio.beat_pipeline`); the caller executes it."""
    key = keys.heartbeat(service, consumer)
    pipe.hset(key, mapping={**fields, "updated_ms": now_ms})
    pipe.pexpire(key, HEARTBEAT_TTL_MS)
    pipe.zadd(keys.SERVICES, {keys.service_member(service, consumer): now_ms})
    pipe.zremrangebyscore(keys.SERVICES, "-inf", now_ms - INDEX_KEEP_MS)


def queue_goodbye(pipe: Any, service: str, consumer: str) -> None:
    """Queue the removal of ``service``/``consumer``'s hash and index member on ``pipe``: a process
    that stops cleanly is gone from the dashboard at once rather than after the TTL."""
    pipe.delete(keys.heartbeat(service, consumer))
    pipe.zrem(keys.SERVICES, keys.service_member(service, consumer))
