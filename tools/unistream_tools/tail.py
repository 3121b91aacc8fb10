"""``unistream tail``: the newest entries of a stream, decoded, one line per tick, bar or packet.

``tail --json`` prints one JSON object per tick, bar or packet, float32 vectors (a training
packet's state, CNN features and predictions) as lists of floats; ``tail --all`` prints every
entry. Files for pandas or polars come from ``unistream export`` (:mod:`unistream_tools.export`).
Formatting is kept in pure functions (:func:`entry_records`, :func:`format_record`) so it can be
tested without Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

import redis

from unistream_common import codec
from unistream_common.packets import Tick, TickBatch
from unistream_common.redisio import REDIS_ERRORS, s
from unistream_tools.connection import (
    ToolError,
    add_redis_url_argument,
    connect,
    redis_url_from,
    report_failure,
    silence_stdout,
)

FOLLOW_BLOCK_MS = 1000


def entry_records(stream: str, entry_id: str, fields: Mapping[Any, Any] | None) -> list[dict[str, Any]]:
    """One plain record per tick, bar or packet in an entry (a TickBatch gives one per tick).

    Raises :class:`codec.DecodeError` when the entry does not decode.
    """
    packet = codec.decode(fields)
    if isinstance(packet, TickBatch):
        return [
            {
                "id": entry_id,
                "stream": stream,
                "type": "tick",
                "symbol": packet.symbol,
                "source": packet.source,
                **{name: getattr(tick, name) for name in Tick.__struct_fields__},
            }
            for tick in packet.ticks
        ]
    return [{"id": entry_id, "stream": stream, **codec.to_builtins(packet)}]


def _value(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(x, float) for x in value):
        return f"[{len(value)} floats]" if len(value) > 4 else "[" + ",".join(repr(x) for x in value) + "]"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def format_record(record: Mapping[str, Any]) -> str:
    """``<id> <type> key=value ...`` on one line (long float vectors are summarised)."""
    rest = " ".join(f"{k}={_value(v)}" for k, v in record.items() if k not in ("id", "stream", "type"))
    return f"{record['id']} {record.get('type', '?')} {rest}"


def print_entries(
    stream: str, entries: Iterable[tuple[Any, Any]], as_json: bool, out: TextIO, err: TextIO
) -> tuple[str | None, int]:
    """Print decoded entries; report undecodable ones on ``err``. Returns (last id, bad entries)."""
    last_id: str | None = None
    bad = 0
    for raw_id, fields in entries:
        entry_id = s(raw_id)
        last_id = entry_id
        try:
            records = entry_records(stream, entry_id, fields)
        except (codec.DecodeError, ValueError) as exc:
            bad += 1
            print(f"{stream} {entry_id}: undecodable entry: {exc}", file=err, flush=True)
            continue
        for record in records:
            line = codec.to_json(record).decode() if as_json else format_record(record)
            print(line, file=out)
        out.flush()
    return last_id, bad


ALL = -1  # tail's count for every entry
ALL_CHUNK = 1_000


def _all_entries(client: redis.Redis, stream: str) -> Iterator[list[tuple[Any, Any]]]:
    """Every entry of ``stream``, oldest first, :data:`ALL_CHUNK` at a time (memory stays flat)."""
    start = "-"
    while entries := client.xrange(stream, min=start, max="+", count=ALL_CHUNK):
        yield entries
        start = "(" + s(entries[-1][0])


def tail(client: redis.Redis, stream: str, count: int, as_json: bool, follow: bool, out: TextIO, err: TextIO) -> int:
    """The last ``count`` entries of ``stream`` (:data:`ALL`: every one), then (with ``follow``)
    new ones as they arrive."""
    kind = s(client.type(stream))
    if kind not in ("stream", "none"):
        raise ToolError(f"{stream} is a Redis {kind}, not a stream")
    if kind == "none" and not follow:
        raise ToolError(f"stream {stream} does not exist (nothing written yet?); --follow waits for it")
    newest = client.xrevrange(stream, count=max(count, 1)) if kind == "stream" else []
    if count is ALL:
        for entries in _all_entries(client, stream):  # oldest first, a chunk at a time
            print_entries(stream, entries, as_json, out, err)
    else:
        shown = list(reversed(newest))[-count:] if count > 0 else []
        print_entries(stream, shown, as_json, out, err)
    if not follow:
        return 0
    # Continue after the newest entry even if it was not shown (count 0); "0-0" when there is
    # none yet, so the first entries are not missed the way "$" would between two calls.
    last = s(newest[0][0]) if newest else "0-0"
    while True:
        reply = client.xread({stream: last}, count=500, block=FOLLOW_BLOCK_MS)
        for _, entries in reply or []:
            seen, _bad = print_entries(stream, entries, as_json, out, err)
            last = seen or last


def tail_main(argv: list[str]) -> int:
    """Entry point of ``unistream tail``."""
    parser = argparse.ArgumentParser(
        prog="unistream tail",
        description="Print the newest entries of a stream, one line per tick, bar or packet "
        "(a tick batch prints one line per tick). Undecodable entries are reported on stderr.",
    )
    parser.add_argument("stream", help="stream name, e.g. 'md:ticks:{ETHUSDT}' (quote the braces)")
    parser.add_argument(
        "--count", "-n", type=int, default=10, metavar="N",
        help="newest N entries (default 10; 0: none, with --follow only new ones)",
    )  # fmt: skip
    parser.add_argument("--all", action="store_true", help="every entry, oldest first (for files: unistream export)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new entries until Ctrl-C")
    add_redis_url_argument(parser)
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("--count must be >= 0")
    if args.all:
        args.count = ALL
    url, _ = redis_url_from(args.redis_url, os.environ)
    try:
        # blocking reads need a socket timeout longer than BLOCK
        client = connect(url, timeout_s=FOLLOW_BLOCK_MS / 1000 + 5)
        return tail(client, args.stream, args.count, args.json, args.follow, sys.stdout, sys.stderr)
    except (ToolError, *REDIS_ERRORS) as exc:
        return report_failure("unistream tail", url, exc)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        silence_stdout()
        return 0
