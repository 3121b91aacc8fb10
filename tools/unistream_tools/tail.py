"""Operator tools: ``unistream tail`` (read a stream) and ``unistream status`` (streams and groups).

``tail --json`` prints one JSON object per tick, bar or packet, float32 vectors (a training
packet's state, CNN features and predictions) as lists of floats; ``tail --all`` prints every
entry. Files for pandas or polars come from ``unistream export`` (:mod:`unistream_tools.export`).

Both talk to Redis synchronously with the same pinned protocol as the services (RESP2, no
automatic retries). Formatting is kept in pure functions (:func:`entry_records`,
:func:`format_record`, :func:`group_overrun`, :func:`format_status`) so it can be tested without
Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from unistream_common import codec, keys, quality
from unistream_common.groups import group_overrun
from unistream_common.packets import Tick, TickBatch
from unistream_common.redisio import PROTOCOL, id_pair, s, safe_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"  # CommonSettings' default
DEFAULT_SYMBOLS = "ETHUSDT,BTCUSDT"
RUN_STATE = Path(".run") / "run.json"  # written by `unistream run`
FOLLOW_BLOCK_MS = 1000


class ToolError(RuntimeError):
    """A failure to report in one line and exit 1 with."""


# --------------------------------------------------------------------------- connection


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


def connect(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A checked connection to ``url``; raises ToolError saying why Redis cannot be reached."""
    try:
        client = redis.Redis.from_url(
            url,
            protocol=PROTOCOL,
            socket_timeout=timeout_s,
            socket_connect_timeout=min(timeout_s, 3.0),
            retry=Retry(NoBackoff(), 0),
            client_name="unistream-cli",
            health_check_interval=0,
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


def _redis_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=None,
        help="Redis to read (default: $UNISTREAM_REDIS_URL, else the one `unistream run` started here, "
        f"else {DEFAULT_REDIS_URL})",
    )


# --------------------------------------------------------------------------- tail


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
    _redis_url_argument(parser)
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
    except (ToolError, redis.RedisError) as exc:
        return report_failure("unistream tail", url, exc)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    """After the reader of our stdout went away (``| head``), let the exit-time flush succeed."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# --------------------------------------------------------------------------- status


def _stream_names(client: redis.Redis, symbols: list[str]) -> list[str]:
    names = keys.all_streams(symbols) + keys.history_streams(symbols)
    dlqs = sorted({s(k) for k in client.scan_iter(match="*" + keys.DLQ_SUFFIX, _type="stream", count=1000)})
    return names + [d for d in dlqs if d not in names]


def collect_status(client: redis.Redis, symbols: list[str]) -> dict[str, Any]:
    """Streams, groups and consumers as three flat tables (rows name their stream and group).

    Flat rows keep ``--json`` easy to query (``jq '.groups[] | select(.overrun)'``).
    """
    info = client.info("server")
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000  # Redis's clock: entry ids are stamped with it
    streams: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    consumers: list[dict[str, Any]] = []
    for name in _stream_names(client, symbols):
        if s(client.type(name)) != "stream":
            streams.append({"name": name, "exists": False})
            continue
        xs = client.xinfo_stream(name)
        length = int(xs["length"])
        first = s(xs["first-entry"][0]) if xs.get("first-entry") else None
        last = s(xs["last-entry"][0]) if xs.get("last-entry") else None
        last_generated = s(xs["last-generated-id"])
        entries_added = xs.get("entries-added")  # Redis >= 7.0
        streams.append(
            {
                "name": name,
                "exists": True,
                "length": length,
                "first_id": first,
                "last_id": last,
                "last_generated_id": last_generated,
                "entries_added": entries_added,
                "last_entry_age_ms": max(0, now_ms - id_pair(last)[0]) if last else None,
            }
        )
        for g in client.xinfo_groups(name):
            group = s(g["name"])
            delivered = s(g["last-delivered-id"])
            groups.append(
                {
                    "stream": name,
                    "name": group,
                    "consumers": int(g["consumers"]),
                    "pending": int(g["pending"]),
                    "lag": g.get("lag"),  # None: Redis could not compute it, or 6.2 which lacks it
                    "entries_read": g.get("entries-read"),
                    "last_delivered_id": delivered,
                    "overrun": group_overrun(
                        delivered, g.get("entries-read"), length, first, last_generated, entries_added
                    ),
                }
            )
            for c in client.xinfo_consumers(name, group):
                consumers.append(
                    {
                        "stream": name,
                        "group": group,
                        "name": s(c["name"]),
                        "pending": int(c["pending"]),
                        "idle_ms": int(c["idle"]),
                        "inactive_ms": int(c["inactive"]) if c.get("inactive") is not None else None,  # >= 7.2
                    }
                )
    return {
        "redis_version": s(info.get("redis_version", "?")),
        "time_ms": now_ms,
        "symbols": symbols,
        "streams": streams,
        "groups": groups,
        "consumers": consumers,
        "bar_quality": quality.collect_bar_quality(client, symbols),
    }


def format_age(ms: int | None) -> str:
    """Milliseconds as a short human age: 850 ms, 12.3 s, 4.2 min, 3.1 h, 2.0 d."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms} ms"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000)):
        if ms >= size:
            return f"{ms / size:.1f} {unit}"
    return f"{ms / 1000:.1f} s"


def _na(value: Any) -> str:
    return "n/a" if value is None else str(value)


def format_status(status: Mapping[str, Any], url: str) -> list[str]:
    """Text lines: one row per stream, its groups and their consumers indented below it."""
    lines = [f"Redis {status['redis_version']} at {safe_url(url)}  symbols {','.join(status['symbols'])}"]
    rows = [("STREAM", "LENGTH", "LAST ENTRY AGE", "FIRST ID", "LAST ID")]
    for st in status["streams"]:
        if st["exists"]:
            age = format_age(st["last_entry_age_ms"])
            rows.append((st["name"], str(st["length"]), age, st["first_id"] or "-", st["last_id"] or "-"))
        else:
            rows.append((st["name"], "-", "-", "-", "(no stream)"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append("  ".join(cell.ljust(w) for cell, w in zip(rows[0], widths, strict=True)).rstrip())
    for st, row in zip(status["streams"], rows[1:], strict=True):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        for g in (g for g in status["groups"] if g["stream"] == st["name"]):
            flag = "  OVERRUN: entries were trimmed before this group read them" if g["overrun"] else ""
            lines.append(
                f"    group {g['name']}: consumers {g['consumers']}, pending {g['pending']}, lag {_na(g['lag'])}, "
                f"last-delivered-id {g['last_delivered_id']}{flag}"
            )
            for c in status["consumers"]:
                if c["stream"] == st["name"] and c["group"] == g["name"]:
                    inactive = f", inactive {c['inactive_ms']} ms" if c["inactive_ms"] is not None else ""
                    lines.append(
                        f"      consumer {c['name']}: pending {c['pending']}, idle {c['idle_ms']} ms{inactive}"
                    )
    quality_rows = status.get("bar_quality") or []
    if quality_rows:
        lines.append("")
        header = ("BARS", "OWNER", "TICKS", "LATE", "DUPLICATE", "FILLED", "SKIPPED", "INCOMPLETE", "GAPS", "SCORE")
        table = [header]
        for q in quality_rows:
            table.append(
                (
                    q["symbol"], q["owner"] or "(none)", str(q["ticks_applied"]), str(q["ticks_late"]),
                    str(q["ticks_duplicate"]), str(q["bars_filled"]), str(q["intervals_skipped"]),
                    str(q["bars_incomplete"]), str(q["gaps"]), _na(q["score"]),
                )
            )  # fmt: skip
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)
    return lines


def status_main(argv: list[str]) -> int:
    """Entry point of ``unistream status``."""
    parser = argparse.ArgumentParser(
        prog="unistream status",
        description="Streams (length, last entry age, first/last id), consumer groups (consumers, pending, lag, "
        "last-delivered-id, OVERRUN when trimming removed unread entries) and consumers (pending, idle).",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document instead of text")
    parser.add_argument(
        "--symbols",
        default=None,
        help=f"comma-separated symbols (default: $UNISTREAM_SYMBOLS, else {DEFAULT_SYMBOLS})",
    )
    _redis_url_argument(parser)
    args = parser.parse_args(argv)
    raw = args.symbols or os.environ.get("UNISTREAM_SYMBOLS") or DEFAULT_SYMBOLS
    try:
        symbols = [keys.check_symbol(x.strip().upper()) for x in raw.split(",") if x.strip()]
    except ValueError as exc:
        print(f"unistream status: {exc}", file=sys.stderr)
        return 2
    url, _ = redis_url_from(args.redis_url, os.environ)
    try:
        client = connect(url)
        status = collect_status(client, symbols)
    except (ToolError, redis.RedisError) as exc:
        return report_failure("unistream status", url, exc)
    try:
        if args.json:
            print(json.dumps({"redis_url": safe_url(url), **status}, indent=2))
        else:
            print("\n".join(format_status(status, url)))
    except BrokenPipeError:
        _silence_stdout()
    return 0
