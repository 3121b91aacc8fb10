"""Reader for Binance's public trade archive (data.binance.vision) and the project's own recordings.

Spot archive CSVs have NO header and one of two layouts, told apart by column count:

- trades (7): ``id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch``
- aggTrades (8): ``aggId,price,qty,firstId,lastId,time,isBuyerMaker,isBestMatch``

Times are µs from 2025-01-01 on and ms before; each row is converted by magnitude
(:func:`unistream_ingest.binance.epoch_to_ms`), so a file that straddles the switch reads right.
A header line, if present, is tolerated (skipped). Invalidated aggTrades rows (f = l = -1) are
dropped and counted. A malformed row never stops the read: it is counted, and its line number,
reason and text go into a bounded sample in the :class:`ArchiveReport` the caller passes in.

A row is validated and split by one anchored regular expression: one C-level match per row checks
every field's syntax (the same strict decimal syntax as the websocket parser) and hands back the
fields, which is faster than splitting and checking field by field. Only rows that fail the match
take the slow path that names the reason.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import re
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Literal

from unistream_ingest.binance import MICROSECONDS_THRESHOLD, epoch_to_ms
from unistream_ingest.venue import RawTrade

Kind = Literal["trades", "aggTrades"]

ARCHIVE_BASE = "https://data.binance.vision/data/spot/daily"
COLUMNS: dict[str, int] = {"trades": 7, "aggTrades": 8}
SAMPLE_SIZE = 20
SAMPLE_LINE_CHARS = 200

_DEC = r"-?[0-9]+(?:\.[0-9]+)?"
_BOOL = r"([Tt]rue|[Ff]alse)"
_TRADE_ROW = re.compile(rf"([0-9]+),({_DEC}),({_DEC}),{_DEC},([0-9]+),{_BOOL},{_BOOL}\r?\n?")
_AGG_ROW = re.compile(rf"([0-9]+),({_DEC}),({_DEC}),(-?[0-9]+),(-?[0-9]+),([0-9]+),{_BOOL},{_BOOL}\r?\n?")
_DEC_RE = re.compile(_DEC)
_INT_RE = re.compile(r"-?[0-9]+")
_BOOL_RE = re.compile(_BOOL)


@dataclass
class ArchiveReport:
    """What one read saw. Pass one in to learn about dropped rows; the read fills it as it goes.

    ``samples`` holds (line number from 1, reason, line text cut to 200 chars) of the most recent
    malformed rows. Reasons: ``columns``, ``bad_int``, ``bad_number``, ``bad_bool``, ``bad_range``.
    """

    kind: str | None = None
    rows: int = 0  # trades yielded
    invalidated: int = 0  # aggTrades rows with f = l = -1, dropped
    malformed: int = 0
    header: bool = False
    microseconds: int = 0  # rows whose time was in µs
    reasons: dict[str, int] = field(default_factory=dict)
    samples: deque[tuple[int, str, str]] = field(default_factory=lambda: deque(maxlen=SAMPLE_SIZE))

    def _bad(self, line_no: int, reason: str, line: str) -> None:
        self.malformed += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.samples.append((line_no, reason, line.rstrip("\r\n")[:SAMPLE_LINE_CHARS]))


def _open_lines(path: Path) -> Iterator[str]:
    """Text lines of a .csv, or of the single .csv inside a .zip (streamed, never fully in memory).

    utf-8-sig drops a byte-order mark that a spreadsheet may have added, which would otherwise make
    the first row look like a header.
    """
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(".csv")]
            if len(names) != 1:
                raise ValueError(f"{path} holds {len(names)} CSV files; an archive day holds exactly one")
            with zf.open(names[0]) as raw:
                yield from io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
    else:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            yield from f


def _diagnose(fields: list[str], kind: str) -> str:
    """Why a row failed the fast match: the first field that is wrong, in column order."""
    if len(fields) != COLUMNS[kind]:
        return "columns"
    if kind == "trades":
        ints, decs, bools = (0, 4), (1, 2, 3), (5, 6)
    else:
        ints, decs, bools = (0, 3, 4, 5), (1, 2), (6, 7)
    for i in range(len(fields)):
        text = fields[i].rstrip("\r\n")
        if i in ints and not _INT_RE.fullmatch(text):
            return "bad_int"
        if i in decs and not _DEC_RE.fullmatch(text):
            return "bad_number"
        if i in bools and not _BOOL_RE.fullmatch(text):
            return "bad_bool"
    return "bad_int"  # an id or time with a minus sign where the venue never sends one


def read_archive_batches(
    path: str | Path,
    symbol: str,
    batch_size: int = 10_000,
    kind: Kind | None = None,
    report: ArchiveReport | None = None,
) -> Iterator[list[RawTrade]]:
    """Read an archive file as lists of up to ``batch_size`` trades, in file order (the fast path).

    ``kind`` is detected from the first data row's column count when not given. Trades' times are
    in ms; aggTrades give ``trade_id`` = agg id and ``count`` = l - f + 1. An empty file yields
    nothing (``report.kind`` stays None). Raises ValueError only for a zip without exactly one CSV
    (OSError / zipfile.BadZipFile for files that cannot be read at all).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rep = report if report is not None else ArchiveReport()
    bad = rep._bad
    batch: list[RawTrade] = []
    append = batch.append
    row_re = None
    for line_no, line in enumerate(_open_lines(Path(path)), start=1):
        if row_re is None:
            if not line.strip():
                continue
            fields = line.split(",")
            if not fields[0].strip().isdigit():
                if line_no == 1:
                    rep.header = True
                    if kind is None and len(fields) in (7, 8):
                        kind = "trades" if len(fields) == 7 else "aggTrades"
                else:
                    bad(line_no, "bad_int", line)
                continue
            if kind is None:
                if len(fields) not in (7, 8):
                    bad(line_no, "columns", line)  # the next row may still tell the kind
                    continue
                kind = "trades" if len(fields) == 7 else "aggTrades"
            rep.kind = kind
            row_re = _TRADE_ROW if kind == "trades" else _AGG_ROW
            match = row_re.fullmatch
        m = match(line)
        if m is None:
            if line.strip():
                bad(line_no, _diagnose(line.split(","), kind), line)
            continue
        if kind == "trades":
            tid, p, q, ts, buyer_maker, _ = m.groups()
            count = 1
        else:
            tid, p, q, first, last, ts, buyer_maker, _ = m.groups()
            f, lst = int(first), int(last)
            if f == -1 and lst == -1:
                rep.invalidated += 1
                continue
            if lst < f or f < 0:
                bad(line_no, "bad_range", line)
                continue
            count = lst - f + 1
        t = int(ts)
        if t >= MICROSECONDS_THRESHOLD:
            rep.microseconds += 1
            t = epoch_to_ms(t)
        append(RawTrade(symbol, int(tid), float(p), float(q), buyer_maker[0] in "Tt", t, count))
        if len(batch) >= batch_size:
            rep.rows += len(batch)
            yield batch
            batch = []
            append = batch.append
    if batch:
        rep.rows += len(batch)
        yield batch


def read_archive(
    path: str | Path, symbol: str, kind: Kind | None = None, report: ArchiveReport | None = None
) -> Iterator[RawTrade]:
    """Read an archive file (.csv or the downloaded .zip) trade by trade; see :func:`read_archive_batches`."""
    for batch in read_archive_batches(path, symbol, 4_096, kind, report):
        yield from batch


def merge_in_time_order(iterators: Iterable[Iterable[RawTrade]]) -> Iterator[RawTrade]:
    """Merge trade streams that are each in time order (files, symbols) into one, by (time, trade id).

    Lazy (heapq.merge): holds one trade per input. Ties keep the inputs' order, so it is deterministic.
    """
    return heapq.merge(*iterators, key=lambda t: (t.ts_event_ms, t.trade_id))


def archive_url(symbol: str, day: date | str, kind: Kind = "trades") -> str:
    """Download URL of one archive day, e.g. ``.../daily/trades/ETHUSDT/ETHUSDT-trades-2025-01-02.zip``.

    ``day`` is a date or ``YYYY-MM-DD`` (UTC day). Append ``.CHECKSUM`` for the SHA-256 companion
    (see :func:`checksum_url`).
    """
    if kind not in COLUMNS:
        raise ValueError(f"{kind!r} is not an archive kind; use trades or aggTrades")
    day_text = date.fromisoformat(day).isoformat() if isinstance(day, str) else day.isoformat()
    return f"{ARCHIVE_BASE}/{kind}/{symbol}/{symbol}-{kind}-{day_text}.zip"


def checksum_url(symbol: str, day: date | str, kind: Kind = "trades") -> str:
    """URL of the ``.CHECKSUM`` file (``<sha256>  <file name>``) of :func:`archive_url`."""
    return archive_url(symbol, day, kind) + ".CHECKSUM"


def verify_checksum(path: str | Path, checksum_text: str) -> bool:
    """True if the file's SHA-256 equals the hash in a ``.CHECKSUM`` file's text."""
    expected = checksum_text.split()[0].lower() if checksum_text.split() else ""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == expected
