"""Redis clients configured against the redis-py pitfalls in the field notes.

- The protocol is pinned (RESP2) so reply shapes do not change under us.
- Automatic retries are off: a retried ``XADD *`` whose first reply was lost duplicates an
  entry, so callers retry at a level that knows whether a write is idempotent.
- Blocking readers get their own connection with no socket timeout; BLOCK stays short.
- A Redis Cluster is named by a URL of its own scheme, ``redis+cluster://[user:password@]host:port[,host:port...]``
  (any reachable nodes; the client learns the rest): every factory here then returns redis-py's
  cluster client with the same settings. It follows MOVED/ASK redirections and learns a new
  topology after a failover; a command whose keys are in two hash slots fails (CROSSSLOT).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse, urlunparse

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from redis.backoff import NoBackoff
from redis.exceptions import AskError, ClusterDownError, MovedError, RedisClusterException, RedisError, TryAgainError
from redis.retry import Retry

PROTOCOL = 2
# What a Redis call can raise when Redis is unreachable, restarting or refuses a command: callers
# that retry or degrade catch these, and nothing broader. redis-py's cluster client says "no node
# of the cluster can be reached" (and a slot nobody serves, mid-failover) with an exception that is
# not a RedisError.
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError, RedisClusterException)


CLUSTER_SCHEME = "redis+cluster"


def is_cluster(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``)."""
    return url.lower().startswith(CLUSTER_SCHEME + "://")


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL: seed nodes and credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


def parse_cluster_url(url: str) -> ClusterURL:
    """Seed nodes and credentials of ``redis+cluster://[user:password@]host:port[,host:port...][/0]``.

    Raises ValueError saying what is wrong: no node, a node without a port, a database other
    than 0 (a cluster has only database 0), or query options (none are understood).
    """
    if not is_cluster(url):
        raise ValueError(f"not a {CLUSTER_SCHEME}:// URL")
    rest = url[len(CLUSTER_SCHEME) + 3 :]
    rest, _, query = rest.partition("?")
    if query:
        raise ValueError("a redis+cluster:// URL takes no ?options")
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0: end the URL with /0 or nothing")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(pw) if colon else None)
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"cluster node {item.strip()!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return ClusterURL(tuple(nodes), username, password)


def _common(url: str, name: str) -> dict[str, Any]:
    return {
        "protocol": PROTOCOL,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_error": [],
        "client_name": name,
        "health_check_interval": 0,
    }


def _cluster(module: Any, url: str, name: str, timeout_s: float | None, connect_timeout_s: float) -> Any:
    """redis-py's cluster client of ``module`` (``redis.cluster`` or ``redis.asyncio.cluster``) for a
    ``redis+cluster://`` URL, with the settings of the single-node clients."""
    parsed = parse_cluster_url(url)
    return module.RedisCluster(
        startup_nodes=[module.ClusterNode(host, port) for host, port in parsed.nodes],
        username=parsed.username,
        password=parsed.password,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        **_common(url, name),
    )


def _async(url: str, name: str, timeout_s: float | None, connect_timeout_s: float) -> Any:
    if is_cluster(url):
        return _cluster(aiocluster, url, name, timeout_s, connect_timeout_s)
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=connect_timeout_s, **_common(url, name)
    )


def command_client(url: str, name: str = "unistream", timeout_s: float = 5.0) -> Any:
    """Client for short commands and MULTI writes (socket timeout ``timeout_s``)."""
    return _async(url, name, timeout_s, timeout_s)


def blocking_client(url: str, name: str = "unistream-reader", connect_timeout_s: float = 5.0) -> Any:
    """Client for blocking XREADGROUP: no socket timeout, so BLOCK never races it."""
    return _async(url, name, None, connect_timeout_s)


def sync_client(url: str, name: str, timeout_s: float = 5.0, connect_timeout_s: float | None = None) -> Any:
    """The synchronous client every non-asyncio caller uses (the dashboard, the operator tools,
    the start-up access check): RESP2 pinned (see PROTOCOL), bytes replies, no automatic retry
    (a caller that fails repeats at its own pace), socket timeout ``timeout_s`` seconds and
    connect timeout ``connect_timeout_s`` (default: ``timeout_s``). A ``redis+cluster://`` URL
    gives the cluster client (it connects to learn the topology when made).
    """
    connect = timeout_s if connect_timeout_s is None else connect_timeout_s
    if is_cluster(url):
        return _cluster(redis.cluster, url, name, timeout_s, connect)
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=connect, **_common(url, name))


def is_cluster_client(client: Any) -> bool:
    """Whether ``client`` (sync or asyncio) talks to a Redis Cluster."""
    return isinstance(client, (aiocluster.RedisCluster, redis.cluster.RedisCluster))


def beat_pipeline(client: Any) -> Any:
    """The pipeline a heartbeat is written in: one MULTI on a single Redis; on a cluster, where a
    process's hash and the index ``svc:index`` are in different slots, a plain pipeline (the hash
    and its expiry stay in order on their node; the index is tidied by every beat)."""
    return client.pipeline(transaction=not is_cluster_client(client))


async def refresh_topology(client: Any) -> None:
    """Make a cluster client learn the cluster's slots and nodes again (nothing for one node).

    redis-py re-learns them after a MOVED reply, but after a connection error it may go on
    sending to a master that died until a command happens to take the path that refreshes:
    callers that reconnect after an outage call this first, so the promoted replica is found.
    """
    if isinstance(client, aiocluster.RedisCluster):
        await client.nodes_manager.initialize()  # picks a live master as the default node
        # Commands whose keys move (XREADGROUP's) are parsed by the default node: one that died
        # would fail them all, and that failure does not make redis-py refresh.
        await client.commands_parser.initialize(client.get_default_node())


# A cluster's answers that a slot is not (wholly) served here now: moved, being migrated (ASK; TRYAGAIN
# for keys split between the two nodes), or the cluster not serving every slot yet (a failover).
REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)


async def transaction_client(client: Any, key: str) -> Any:
    """The client a MULTI/EXEC (with WATCH) on ``key``'s slot goes through: ``client`` itself on a
    single Redis; on a cluster, a plain asyncio client of the master that serves the slot now (one
    per master, kept on ``client``), with the cluster client's credentials and timeouts.

    redis-py's own cluster transactions (8.1) run every queued command in a thread of its own with
    an event loop of its own: measured, that made the aggregator's commits on a cluster ~5x slower
    and blocked the caller's event loop meanwhile. A transaction on one slot needs none of that. A
    slot that moves meanwhile answers :data:`REDIRECTS`: the caller learns the topology again
    (:func:`refresh_topology`) and repeats the transaction, which nothing of was applied.
    """
    if not isinstance(client, aiocluster.RedisCluster):
        return client
    if client._initialize:
        await client.initialize()
    node = client.get_node_from_key(key)
    masters: dict[tuple[str, int], aioredis.Redis] = client.__dict__.setdefault("_unistream_masters", {})
    master = masters.get((node.host, node.port))
    if master is None:
        kwargs = node.connection_kwargs
        master = aioredis.Redis(
            host=node.host, port=node.port, username=kwargs.get("username"), password=kwargs.get("password"),
            socket_timeout=kwargs.get("socket_timeout"), socket_connect_timeout=kwargs.get("socket_connect_timeout"),
            **_common("", str(kwargs.get("client_name") or "unistream")),
        )  # fmt: skip
        masters[(node.host, node.port)] = master
    return master


async def xreadgroup(
    client: Any, group: str, consumer: str, streams: dict[str, str], count: int, block_ms: int | None = None
) -> Any:
    """XREADGROUP of ``streams`` (all in one hash slot on a cluster), the reply as redis-py parses it.

    On a cluster it goes straight to the master serving the slot: redis-py would first ask its
    default node COMMAND GETKEYS (XREADGROUP's keys are "movable"), a round trip per read, and
    first reads made at once over new connections failed there ("Connection closed by server",
    seen with ten symbols' reads starting together); a redirection is redis-py's as for any command.
    """
    if not isinstance(client, aiocluster.RedisCluster):
        return await client.xreadgroup(group, consumer, streams, count=count, block=block_ms)
    if client._initialize:
        await client.initialize()
    pieces: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block_ms is not None:
        pieces += ["BLOCK", block_ms]
    pieces += ["STREAMS", *streams, *streams.values()]
    return await client.execute_command(*pieces, target_nodes=client.get_node_from_key(next(iter(streams))))


async def close_transaction_clients(client: Any) -> None:
    """Close the per-master clients :func:`transaction_client` made for ``client``."""
    for master in client.__dict__.pop("_unistream_masters", {}).values():
        await master.aclose()


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
    client = None
    try:
        # A cluster client connects when made, so making it is inside the checks too.
        client = sync_client(url, "unistream-access-check", timeout_s)
        client.ping()
    except ValueError:
        return None  # the settings validate the URL's shape; nothing to add here
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
        if client is not None:
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
