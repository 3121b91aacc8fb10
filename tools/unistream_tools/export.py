"""``unistream export``: streams out of Redis as Parquet or CSV files, a chunk at a time.

One file per stream (``<out>/<stream name with unsafe characters as _>.parquet``), one row per
tick (a tick batch gives a row per trade, with its batch's symbol and source), bar, training
packet, metrics packet, paper fill, model announcement or UI packet, with the stream entry's id in
``entry_id``. Entries are read with XRANGE in chunks of ``--chunk`` and each chunk is written
before the next is read, so memory stays flat whatever the stream's length.

Columns are the packet's fields. Float32 vectors (a training packet's ``state``,
``cnn_features``, ``cnn_predictions``; a UI packet's predictions; a prediction packet's values)
are fixed-size list columns of float32 in Parquet (``numpy.stack(df.state)`` or polars'
``Array``) and JSON arrays in CSV. Nested values (a metrics packet's dict, a UI packet's latest
bars) are JSON text. The file's key-value metadata (Parquet: the file's, ``pyarrow.parquet.read_metadata(path).metadata``;
CSV: a ``<file>.json`` beside it) names the stream, the packet type and, for training packets, the
layout version and the name of every state value and prediction (from the features'
layout for ``--symbols`` and ``--window-bars``, when it gives the packets' layout version).

``--since``/``--until`` select entries by id time, ``[since, until)``: a bar's id is its open
time, other entries' ids are when Redis stored them. Undecodable entries are counted, reported
on stderr and left out; a change of columns mid-stream (another state size) starts a new part
file rather than failing. Entries of another packet type than the stream's first (a tick stream's gap
markers) go to a file of their own beside it, ``<stem>.<type>.<format>``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import redis

from unistream_common import codec
from unistream_common.packets import TickBatch, TrainingDataPacket
from unistream_common.redisio import s
from unistream_tools.connection import ToolError, connect, redis_url_from, report_failure

FORMATS = ("parquet", "csv")
DEFAULT_CHUNK = 1_000
META = "unistream."


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds from ``1739923200000``, ``2025-02-19`` or ``2025-02-19T12:00:00[Z|+hh:mm]``
    (UTC when no zone is given); raises ValueError naming the forms accepted."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use epoch milliseconds or ISO 8601 (2025-02-19, 2025-02-19T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _time_arg(text: str) -> int:
    try:
        return parse_time_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def file_stem(stream: str) -> str:
    """A file name for a stream: ``md:bars:{ETHUSDT}:1m`` -> ``md_bars_ETHUSDT_1m``."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.-]", "_", stream)).strip("_") or "stream"


# --------------------------------------------------------------------------- entries to columns


def records(entry_id: str, packet: Any) -> list[dict[str, Any]]:
    """Rows of one decoded entry: float32 byte fields stay bytes (made vectors per chunk); dicts
    and lists of dicts become JSON text."""
    if isinstance(packet, TickBatch):
        return [
            {"entry_id": entry_id, "symbol": packet.symbol, "source": packet.source, **msgspec.structs.asdict(t)}
            for t in packet.ticks
        ]
    row: dict[str, Any] = {"entry_id": entry_id}
    for key, value in msgspec.to_builtins(packet, builtin_types=(bytes, bytearray)).items():
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            value = json.dumps(value, separators=(",", ":"))
        row[key] = value
    return [row]


def _vector_column(values: Sequence[bytes | None]) -> pa.Array:
    """float32 vectors from raw bytes: a fixed-size list when all have one length, else a list."""
    arrays = [None if v is None else np.frombuffer(v, "<f4") for v in values]
    sizes = {a.size for a in arrays if a is not None}
    if len(sizes) == 1 and all(a is not None for a in arrays):
        (size,) = sizes
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.float32)  # type: ignore[arg-type]
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), size)
    return pa.array([None if a is None else a for a in arrays], pa.list_(pa.float32()))


def chunk_table(rows: Sequence[dict[str, Any]], csv: bool) -> pa.Table:
    """One chunk's rows as a table (vectors as lists of float32, or JSON text for CSV)."""
    names = list(dict.fromkeys(k for row in rows for k in row))
    columns: dict[str, pa.Array] = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if any(isinstance(v, (bytes, bytearray)) for v in values):
            if csv:
                columns[name] = pa.array(
                    [None if v is None else json.dumps(np.frombuffer(v, "<f4").tolist()) for v in values], pa.string()
                )
            else:
                columns[name] = _vector_column(values)
        elif csv and any(isinstance(v, list) for v in values):
            columns[name] = pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
        else:
            columns[name] = pa.array(values)
    return pa.table(columns)


# --------------------------------------------------------------------------- metadata


def _training_metadata(packet: TrainingDataPacket, symbols: Sequence[str], window_bars: int) -> dict[str, str]:
    out = {
        f"{META}layout_version": packet.layout_version,
        f"{META}prediction_names": json.dumps(list(packet.prediction_names)),
    }
    names = state_names(packet, symbols, window_bars)
    if names is not None:
        out[f"{META}state_names.{packet.symbol}"] = json.dumps(names)
    else:
        out[f"{META}state_names.{packet.symbol}"] = json.dumps(
            f"unknown: layout {packet.layout_version} ({packet.state_dim} values) is not the features' layout for "
            f"symbols {','.join(symbols)} and windows of {window_bars} bars; pass --symbols/--window-bars as the "
            "features service ran"
        )
    return out


def state_names(packet: TrainingDataPacket, symbols: Sequence[str], window_bars: int) -> list[str] | None:
    """The name of every value of the packet's state, when the features' layout for ``symbols`` and
    ``window_bars`` gives the packet's layout version and size (None otherwise)."""
    if packet.symbol not in symbols:
        return None
    # The layout module alone (the features service's sizes are its defaults; the tag check below
    # catches any other configuration): the CNN's module would load torch for nothing.
    from unistream_model.layout import make_layout

    try:
        layout = make_layout(symbols, window_bars=window_bars, focus=packet.symbol)
    except ValueError:
        return None
    if layout.tag != packet.layout_version or layout.dim != packet.state_dim:
        return None
    return list(layout.feature_names())


# --------------------------------------------------------------------------- writing


@dataclass
class StreamExport:
    """Counts of one stream's export."""

    stream: str
    files: list[Path] = field(default_factory=list)
    entries: int = 0
    rows: int = 0
    bad: int = 0
    bad_ids: list[str] = field(default_factory=list)
    packet_type: str = ""


class _Writer:
    """Chunks of one stream into a file, a new part when the columns change."""

    def __init__(self, out_dir: Path, stem: str, fmt: str) -> None:
        self.out_dir, self.stem, self.fmt = out_dir, stem, fmt
        self.schema: pa.Schema | None = None
        self.metadata: dict[str, str] = {}
        self._writer: Any = None
        self.paths: list[Path] = []

    def _open(self, schema: pa.Schema) -> None:
        self.close()
        part = f".part{len(self.paths) + 1}" if self.paths else ""
        path = self.out_dir / f"{self.stem}{part}.{self.fmt}"
        self.paths.append(path)
        self.schema = schema
        if self.fmt == "parquet":
            self._writer = pq.ParquetWriter(path, schema, compression="zstd")
        else:
            self._writer = pa_csv.CSVWriter(path, schema)

    def write(self, table: pa.Table) -> None:
        if self.schema is None or not table.schema.equals(self.schema):
            if self.schema is not None:
                try:  # a chunk without some optional value (nulls), or ints where floats were seen
                    table = table.select(self.schema.names).cast(self.schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError, ValueError):
                    self._open(table.schema)
            else:
                self._open(table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        """Finish the current file with the metadata gathered so far (a training stream's names
        are known only once every symbol's first packet was read)."""
        if self._writer is None:
            return
        if self.fmt == "parquet":
            self._writer.add_key_value_metadata(self.metadata)
        else:
            path = self.paths[-1]
            path.with_name(path.name + ".json").write_text(json.dumps(self.metadata, indent=1, sort_keys=True))
        self._writer.close()
        self._writer = None


CHUNK_BYTES = 16 * 2**20  # a chunk holds at most about this much entry data (54 KB training packets: ~300)


def entry_chunks(
    client: redis.Redis, stream: str, since: str, until: str, chunk: int
) -> Iterator[list[tuple[Any, Any]]]:
    """The entries of ``stream`` between ids ``since`` and ``until`` (inclusive), at most ``chunk``
    at a time and fewer when entries are large (:data:`CHUNK_BYTES`), so memory stays flat."""
    start, count = since, min(chunk, 16)  # a small first read measures the entries' size
    while True:
        entries = client.xrange(stream, min=start, max=until, count=count)
        if not entries:
            return
        yield entries
        if len(entries) < count:
            return
        start = "(" + s(entries[-1][0])  # exclusive: after the last one read
        size = sum(len(v) for _, fields in entries for v in fields.values()) / len(entries)
        count = max(1, min(chunk, int(CHUNK_BYTES // max(size, 1.0))))


def export_stream(
    client: redis.Redis,
    stream: str,
    out_dir: Path,
    fmt: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    symbols: Sequence[str] = ("ETHUSDT", "BTCUSDT"),
    window_bars: int = 300,
    progress: TextIO | None = None,
) -> StreamExport:
    """Write one stream's entries (ids in ``[since_ms, until_ms)``) to ``out_dir``; see the module docstring."""
    kind = s(client.type(stream))
    if kind != "stream":
        raise ToolError(f"{stream} is not a stream (Redis type {kind})" if kind != "none" else f"no stream {stream}")
    since = f"{since_ms}-0" if since_ms is not None else "-"
    until = f"{until_ms - 1}" if until_ms is not None else "+"
    total = int(client.xlen(stream))
    result = StreamExport(stream)
    # One file per packet type: a tick stream also holds gap markers, which go beside the ticks.
    writers: dict[str, _Writer] = {}
    seen_symbols: set[str] = set()
    try:
        for entries in entry_chunks(client, stream, since, until, chunk):
            rows: dict[str, list[dict[str, Any]]] = {}
            for raw_id, fields in entries:
                entry_id = s(raw_id)
                try:
                    packet = codec.decode(fields)
                except (codec.DecodeError, ValueError):
                    result.bad += 1
                    if len(result.bad_ids) < 5:
                        result.bad_ids.append(entry_id)
                    continue
                kind = type(packet).TYPE
                result.packet_type = result.packet_type or kind
                if kind not in writers:
                    stem = file_stem(stream) if not writers else f"{file_stem(stream)}.{kind}"
                    writers[kind] = _Writer(out_dir, stem, fmt)
                    writers[kind].metadata.update({f"{META}stream": stream, f"{META}type": kind})
                if isinstance(packet, TrainingDataPacket) and packet.symbol not in seen_symbols:
                    seen_symbols.add(packet.symbol)
                    writers[kind].metadata.update(_training_metadata(packet, symbols, window_bars))
                rows.setdefault(kind, []).extend(records(entry_id, packet))
            result.entries += len(entries)
            for kind, kind_rows in rows.items():
                if kind_rows:
                    writers[kind].write(chunk_table(kind_rows, csv=fmt == "csv"))
                    result.rows += len(kind_rows)
            if progress is not None:
                progress.write(f"\r{stream}: {result.entries:,} of {total:,} entries")
                progress.flush()
    finally:
        for w in writers.values():
            w.close()
        if progress is not None:
            progress.write("\n")
    result.files = [path for w in writers.values() for path in w.paths]
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``unistream export``."""
    parser = argparse.ArgumentParser(
        prog="unistream export",
        description="Write streams to Parquet or CSV files, one per stream, a chunk of entries at a time "
        "(memory stays flat). Vectors are float32 list columns (JSON arrays in CSV); the files' metadata "
        "name the stream, the packet type and, for training packets, the layout and every state value.",
    )
    parser.add_argument("streams", nargs="+", metavar="STREAM", help="stream names, e.g. 'md:bars:{ETHUSDT}:1s'")
    parser.add_argument("--out", required=True, type=Path, help="directory to write into (created)")
    parser.add_argument("--format", choices=FORMATS, default="parquet", help="file format (default parquet)")
    parser.add_argument("--since", type=_time_arg, default=None, help="from this time (epoch ms or ISO 8601)")
    parser.add_argument("--until", type=_time_arg, default=None, help="before this time (epoch ms or ISO 8601)")
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help=f"entries per read (default {DEFAULT_CHUNK})")
    parser.add_argument(
        "--symbols",
        default=os.environ.get("UNISTREAM_SYMBOLS") or "ETHUSDT,BTCUSDT",
        help="the features service's symbols, for the names of state values (default: $UNISTREAM_SYMBOLS)",
    )
    parser.add_argument(
        "--window-bars",
        type=int,
        default=int(os.environ.get("UNISTREAM_WINDOW_BARS", "300") or 300),
        help="the features service's window (default: $UNISTREAM_WINDOW_BARS, else 300)",
    )
    parser.add_argument("--redis-url", default=None, help="Redis to read (as for unistream tail)")
    args = parser.parse_args(argv)
    if args.chunk < 1:
        parser.error("--chunk must be at least 1")
    if args.since is not None and args.until is not None and args.until <= args.since:
        parser.error("--until must be after --since")
    symbols = [x.strip().upper() for x in args.symbols.split(",") if x.strip()]
    url, _ = redis_url_from(args.redis_url, os.environ)
    progress = sys.stderr if sys.stderr.isatty() else None
    try:
        client = connect(url, timeout_s=30.0)
        args.out.mkdir(parents=True, exist_ok=True)
        failed = 0
        for stream in args.streams:
            try:
                result = export_stream(
                    client, stream, args.out, args.format, args.since, args.until, args.chunk, symbols,
                    args.window_bars, progress,
                )  # fmt: skip
            except ToolError as exc:
                print(f"unistream export: {exc}", file=sys.stderr)
                failed += 1
                continue
            files = ", ".join(str(p) for p in result.files) or "no file (nothing in the range)"
            print(f"{stream}: {result.entries:,} entries, {result.rows:,} rows -> {files}")
            if result.bad:
                print(
                    f"{stream}: {result.bad} undecodable entries left out (first: {', '.join(result.bad_ids)})",
                    file=sys.stderr,
                )
        return 1 if failed else 0
    except (ToolError, redis.RedisError) as exc:
        return report_failure("unistream export", url, exc)
    except OSError as exc:
        print(f"unistream export: cannot write to {args.out}: {exc}", file=sys.stderr)
        return 1


def read_metadata(path: Path) -> Mapping[str, str]:
    """The unistream metadata of an exported file (Parquet schema metadata, or the CSV's .json)."""
    if path.suffix == ".csv":
        data: dict[str, str] = json.loads(path.with_name(path.name + ".json").read_text())
        return data
    meta = pq.read_metadata(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.decode().startswith(META)}
