"""Which Redis an operator tool talks to, a checked connection to it, and failures in one line.

``unistream tail``, ``status`` and ``export`` share these: the URL comes from ``--redis-url``,
``$UNISTREAM_REDIS_URL``, the ``unistream run`` running here, or the default, and the client is
the library's one synchronous client (:func:`unistream_common.redisio.sync_client`: RESP2, no
automatic retries), checked with a PING before any tool uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import redis

from unistream_common.redisio import safe_url, sync_client

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # CommonSettings' default
RUN_STATE = Path(".run") / "run.json"  # written by `unistream run`
CLIENT_NAME = "unistream-cli"
MAX_CONNECT_TIMEOUT_S = 3.0  # an unreachable Redis is reported within this, whatever the read timeout


class ToolError(RuntimeError):
    """A failure to report in one line and exit 1 with."""


def redis_url_from(explicit: str | None, environ: Mapping[str, str], run_state: Path = RUN_STATE) -> tuple[str, str]:
    """(URL, where it came from): --redis-url, $UNISTREAM_REDIS_URL, a running `unistream run`, the default.

    A run that started its own Redis with compose's ACL users records a login for the tools
    (``tools_redis_url``, the read-only dashboard user); otherwise its Redis needs none.
    """
    if explicit:
        return explicit, "--redis-url"
    if environ.get("UNISTREAM_REDIS_URL"):
        return environ["UNISTREAM_REDIS_URL"], "UNISTREAM_REDIS_URL"
    try:
        state = json.loads(run_state.read_text())
        url = state.get("tools_redis_url") or state.get("redis_url")
    except (OSError, ValueError, AttributeError):
        url = None
    if isinstance(url, str) and url:
        return url, str(run_state)
    return DEFAULT_REDIS_URL, "default"


def add_redis_url_argument(parser: argparse.ArgumentParser) -> None:
    """``--redis-url``, read with :func:`redis_url_from`."""
    parser.add_argument(
        "--redis-url",
        default=None,
        help="Redis to read (default: $UNISTREAM_REDIS_URL, else the one `unistream run` started here, "
        f"else {DEFAULT_REDIS_URL})",
    )


def connect(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A checked connection to ``url`` (socket timeout ``timeout_s`` seconds); raises ToolError
    saying why Redis cannot be reached."""
    try:
        client = sync_client(
            url, CLIENT_NAME, timeout_s=timeout_s, connect_timeout_s=min(timeout_s, MAX_CONNECT_TIMEOUT_S)
        )
        client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise ToolError(f"cannot reach Redis at {safe_url(url)}: {exc}") from None
    return client


def report_failure(prog: str, url: str, exc: Exception) -> int:
    """A :class:`ToolError` or a Redis failure in one line on stderr; returns the exit status, 1."""
    if isinstance(exc, redis.RedisError):
        print(f"{prog}: Redis at {safe_url(url)} failed: {exc}", file=sys.stderr)
    else:
        print(f"{prog}: {exc}", file=sys.stderr)
    return 1


def silence_stdout() -> None:
    """After the reader of our stdout went away (``| head``), let the exit-time flush succeed."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
