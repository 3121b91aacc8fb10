"""Redis clients configured against the redis-py pitfalls in the field notes.

- The protocol is pinned (RESP2) so reply shapes do not change under us.
- Automatic retries are off: a retried ``XADD *`` whose first reply was lost duplicates an
  entry, so callers retry at a level that knows whether a write is idempotent.
- Blocking readers get their own connection with no socket timeout; BLOCK stays short.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse, urlunparse

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

PROTOCOL = 2


def _common(url: str, name: str) -> dict[str, Any]:
    return {
        "protocol": PROTOCOL,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_error": [],
        "client_name": name,
        "health_check_interval": 0,
    }


def command_client(url: str, name: str = "unistream", timeout_s: float = 5.0) -> aioredis.Redis:
    """Client for short commands and MULTI writes (socket timeout ``timeout_s``)."""
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **_common(url, name)
    )


def blocking_client(url: str, name: str = "unistream-reader", connect_timeout_s: float = 5.0) -> aioredis.Redis:
    """Client for blocking XREADGROUP: no socket timeout, so BLOCK never races it."""
    return aioredis.Redis.from_url(
        url, socket_timeout=None, socket_connect_timeout=connect_timeout_s, **_common(url, name)
    )


def s(value: Any) -> str:
    """bytes or str to str."""
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


Entry = tuple[str, dict[bytes, bytes] | None]


def read_reply(reply: Any) -> list[tuple[str, list[Entry]]]:
    """Normalise an XREAD/XREADGROUP reply (RESP2, see PROTOCOL) to [(stream, entries)].

    Entries read from a consumer's history whose data was trimmed come back as (id, None).
    """
    if not reply:
        return []
    return [(s(stream), [(s(eid), fields) for eid, fields in entries]) for stream, entries in reply]


def autoclaim_reply(reply: Any) -> tuple[str, list[Entry], list[str]]:
    """Normalise XAUTOCLAIM: (next cursor, claimed entries, ids that no longer exist).

    Redis 7 returns a third element with deleted ids; 6.2 does not.
    """
    cursor = s(reply[0])
    entries = [(s(eid), fields) for eid, fields in reply[1]]
    deleted = [s(x) for x in reply[2]] if len(reply) > 2 else []
    return cursor, entries, deleted


def id_pair(entry_id: Any) -> tuple[int, int]:
    """A stream entry id (str or bytes) as a comparable (ms, sequence) pair."""
    ms, _, seq = s(entry_id).partition("-")
    return int(ms), int(seq or 0)


def id_ms(entry_id: str) -> int:
    """Millisecond part of a stream entry id."""
    return int(entry_id.split("-", 1)[0])


def is_id_too_small(exc: BaseException) -> bool:
    """True when XADD refused an explicit id not above the stream's top: already written."""
    return "equal or smaller than the target stream top item" in str(exc)


async def server_version(client: aioredis.Redis) -> tuple[int, ...]:
    """Redis server version as a tuple of ints."""
    info = await client.info("server")
    return tuple(int(x) for x in str(info["redis_version"]).split(".")[:3])


def safe_url(url: str) -> str:
    """``url`` with its password masked, for logs, messages and pages."""
    parsed = urlparse(url)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
        return urlunparse(parsed._replace(netloc=netloc))
    return url


async def top_packets(client: aioredis.Redis, streams: list[str]) -> dict[str, Any]:
    """The newest entry of each stream, decoded, in one round trip.

    Values: the packet; None for an empty or missing stream; a :class:`codec.DecodeError` for
    an entry that does not decode (the caller decides how loudly to say so).
    """
    from unistream_common import codec  # codec is pure; imported here to keep this module's imports minimal

    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xrevrange(stream, count=1)
    out: dict[str, Any] = {}
    for stream, reply in zip(streams, await pipe.execute(), strict=True):
        if not reply:
            out[stream] = None
            continue
        try:
            out[stream] = codec.decode(reply[0][1])
        except codec.DecodeError as exc:
            out[stream] = exc
    return out
