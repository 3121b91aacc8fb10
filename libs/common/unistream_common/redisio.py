"""Redis clients configured against the redis-py pitfalls in the field notes.

- The protocol is pinned (RESP2) so reply shapes do not change under us.
- Automatic retries are off: a retried ``XADD *`` whose first reply was lost duplicates an
  entry, so callers retry at a level that knows whether a write is idempotent.
- Blocking readers get their own connection with no socket timeout; BLOCK stays short.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import urlparse, urlunparse

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

PROTOCOL = 2
# What a Redis call can raise when Redis is unreachable, restarting or refuses a command: callers
# that retry or degrade catch these, and nothing broader.
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


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


def sync_client(url: str, name: str, timeout_s: float = 5.0, connect_timeout_s: float | None = None) -> redis.Redis:
    """The synchronous client every non-asyncio caller uses (the dashboard, the operator tools,
    the start-up access check): RESP2 pinned (see PROTOCOL), bytes replies, no automatic retry
    (a caller that fails repeats at its own pace), socket timeout ``timeout_s`` seconds and
    connect timeout ``connect_timeout_s`` (default: ``timeout_s``).
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s if connect_timeout_s is None else connect_timeout_s,
        **_common(url, name),
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


_QUERY_PASSWORD_RE = re.compile(r"(?i)(?<=[?&]password=)[^&#]*")


def safe_url(url: str) -> str:
    """``url`` with its password masked, for logs, messages and pages.

    Both places a Redis URL can carry one are masked: the user-info part
    (``redis://user:***@host``) and a ``password=`` query parameter. A URL that does not parse
    is not shown at all: it may hold a password in a place this function does not know.
    """
    try:
        parsed = urlparse(url)
        password = parsed.password
    except ValueError:
        return "<a Redis URL that does not parse>"
    if password:
        userinfo, _, hostinfo = parsed.netloc.rpartition("@")
        user, _, _ = userinfo.partition(":")
        url = urlunparse(parsed._replace(netloc=f"{user}:***@{hostinfo}"))
    return _QUERY_PASSWORD_RE.sub("***", url)


def access_problem(url: str, timeout_s: float = 3.0) -> str | None:
    """Why Redis at ``url`` refuses this client's credentials, in one line; None when it does not.

    None also when Redis cannot be reached at all: a service starts anyway and waits for it (its
    ``/readyz`` says so), whereas wrong credentials never fix themselves, so they stop start-up
    with this message instead of a restart loop of tracebacks. The message never holds the
    password (:func:`safe_url`).
    """
    where = safe_url(url)
    try:
        client = sync_client(url, "unistream-access-check", timeout_s)
    except ValueError:
        return None  # the settings validate the URL's shape; nothing to add here
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        text = str(exc)
        if "without any password configured" in text:
            return f"Redis at {where} has no password set, but the URL gives one: remove it from the URL"
        if "Authentication required" in text:
            return (
                f"Redis at {where} requires a user and password and the URL has none: "
                "use redis://USER:PASSWORD@HOST:PORT/DB"
            )
        return f"Redis at {where} refused the user or password in the URL ({text.rstrip('.')}): correct them"
    except redis.exceptions.NoPermissionError as exc:
        return f"Redis at {where} accepted the login, but the user may not connect and PING ({exc}): grant it"
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    return None


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
