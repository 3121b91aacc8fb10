"""The benchmarks' Redis clients: a single Redis as before, or a Redis Cluster (``redis+cluster://``)
through the services' own cluster-aware factories, and the rows' one reader per hash slot."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from unistream_common.redisio import blocking_client, command_client, is_cluster


def client(url: str) -> Any:
    """A command client for ``url`` (its FLUSHALL empties every master of a cluster)."""
    return command_client(url, "bench") if is_cluster(url) else aioredis.Redis.from_url(url)


def reader(url: str) -> Any:
    """A client for blocking reads (no socket timeout)."""
    return (
        blocking_client(url, "bench-reader") if is_cluster(url) else aioredis.Redis.from_url(url, socket_timeout=None)
    )


def read_groups(url: str, streams: list[str]) -> list[list[str]]:
    """The streams one XREAD may cover together: all on a single Redis, one each on a cluster."""
    return [[stream] for stream in streams] if is_cluster(url) else [list(streams)]
