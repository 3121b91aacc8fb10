"""``unistream status``: streams, consumer groups and consumers, and the bars' data quality.

Collected in one pass (:func:`collect_status`) as flat tables, formatted by a pure function
(:func:`format_status`) so the text can be tested without Redis. Whether trimming overran a group
is the library's rule (:func:`unistream_common.groups.group_overrun`), the one the dashboard and
the features service apply.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import redis

from unistream_common import keys, quality
from unistream_common.groups import group_overrun
from unistream_common.redisio import id_pair, s, safe_url
from unistream_tools.connection import (
    ToolError,
    add_redis_url_argument,
    connect,
    redis_url_from,
    report_failure,
    silence_stdout,
)

DEFAULT_SYMBOLS = "ETHUSDT,BTCUSDT"


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
    add_redis_url_argument(parser)
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
        silence_stdout()
    return 0
