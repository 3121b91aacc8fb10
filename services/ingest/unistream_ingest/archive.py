"""Reader for Binance's public trade archive (data.binance.vision) and the project's own recordings.

Spot archive CSVs have NO header and one of two layouts, told apart by column count:

- trades (7): ``id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch``
- aggTrades (8): ``aggId,price,qty,firstId,lastId,time,isBuyerMaker,isBestMatch``

Times are µs from 2025-01-01 on and ms before; each row is converted by magnitude
(:func:`unistream_ingest.binance.parsing.epoch_to_ms`), so a file that straddles the switch reads right.
A header line, if present, is tolerated (skipped). Invalidated aggTrades rows (f = l = -1) are
dropped and counted. A malformed row never stops the read: it is counted, and its line number,
reason and text go into a bounded sample in the :class:`ArchiveReport` the caller passes in.

Speed: the text is read in blocks of whole lines (about 8,000 rows). A block whose lines all
have a plain row's shape (one possessive ``fullmatch``, no captures) is turned into one flat
JSON array (``\n`` -> ``,``, ``True`` -> ``true``) and decoded by msgspec in C; the columns are
slices of it, so no Python code runs per row. The shape check lets only digits and dots into a
number, and the JSON grammar then refuses "1.", ".5", "1..2" and leading zeros, so a block that
passes both reads exactly as the per-line path would read it. A block with anything else (a header, a malformed
row, an invalidated or bad-range aggTrade, a sign, a lone ``\r``) is halved until the odd lines
are isolated, and only those few take the per-line path: one anchored regular expression per
row (the same strict decimal syntax as the websocket parser), then the reason and line number.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import re
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from itertools import repeat
from operator import le
from pathlib import Path
from typing import IO, Literal

import msgspec

from unistream_ingest.binance.parsing import MICROSECONDS_THRESHOLD, epoch_to_ms
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
# The fast path's shape check of a block of lines (possessive, no captures: one cheap C-level pass).
# Numbers are only [0-9.]+ here; the JSON decoder that reads them (_ROWS) then refuses every
# such text that is not a strict decimal ("1.", ".5", "1..2") and those with a leading zero, so
# what it accepts is exactly what _TRADE_ROW accepts, minus rows with a sign or a leading zero.
_NUM_P = r"[0-9.]++"
_BOOL_P = r"(?:[Tt]rue|[Ff]alse)"
_TRADE_LINES = re.compile(rf"(?:[0-9]++,{_NUM_P},{_NUM_P},{_NUM_P},[0-9]++,{_BOOL_P},{_BOOL_P}\r?\n)*+")
_AGG_LINES = re.compile(rf"(?:[0-9]++,{_NUM_P},{_NUM_P},[0-9]++,[0-9]++,[0-9]++,{_BOOL_P},{_BOOL_P}\r?\n)*+")
_ROWS = msgspec.json.Decoder()  # untyped: ints stay (unbounded) ints, decimals become floats
BLOCK_CHARS = 1 << 19  # text read per block (about 8,000 rows)
MIN_SPLIT_CHARS = 4_096  # a failing block is halved down to about this, then read line by line
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


@contextmanager
def _open_text(path: Path) -> Iterator[IO[str]]:
    """Text of a .csv, or of the single .csv inside a .zip (streamed, never fully in memory).

    utf-8-sig drops a byte-order mark that a spreadsheet may have added, which would otherwise make
    the first row look like a header. ``newline=""``: lines end at \\n, \\r\\n or a lone \\r, untranslated.
    """
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(".csv")]
            if len(names) != 1:
                raise ValueError(f"{path} holds {len(names)} CSV files; an archive day holds exactly one")
            with zf.open(names[0]) as raw:
                yield io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
    else:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            yield f


def _text_blocks(f: IO[str], block_chars: int) -> Iterator[str]:
    """The text of ``f`` in blocks of whole lines (each ends with \\n, except a last unterminated line)."""
    parts: list[str] = []  # the start of a line that has not ended yet (kept as parts: a long line stays linear)
    while text := f.read(block_chars):
        cut = text.rfind("\n") + 1
        if cut == 0:
            parts.append(text)
            continue
        if parts:
            parts.append(text[:cut])
            yield "".join(parts)
            parts = []
        else:
            yield text if cut == len(text) else text[:cut]
        if cut < len(text):
            parts.append(text[cut:])
    if parts:
        yield "".join(parts)


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


class TradeColumns:
    """Parsed trades as columns (what :func:`read_archive_columns` yields): one list per field, in file order."""

    __slots__ = ("buyer_is_maker", "count", "price", "size", "trade_id", "ts_event_ms")

    def __init__(self) -> None:
        self.trade_id: list[int] = []
        self.price: list[float] = []
        self.size: list[float] = []
        self.buyer_is_maker: list[bool] = []
        self.ts_event_ms: list[int] = []
        self.count: list[int] = []

    def __len__(self) -> int:
        return len(self.trade_id)

    def append(self, trade_id: int, price: float, size: float, buyer_is_maker: bool, ts_ms: int, count: int) -> None:
        self.trade_id.append(trade_id)
        self.price.append(price)
        self.size.append(size)
        self.buyer_is_maker.append(buyer_is_maker)
        self.ts_event_ms.append(ts_ms)
        self.count.append(count)

    def trades(self, symbol: str) -> list[RawTrade]:
        """The rows as :class:`RawTrade` values."""
        return list(
            map(RawTrade, repeat(symbol), self.trade_id, self.price, self.size, self.buyer_is_maker,
                self.ts_event_ms, self.count)
        )  # fmt: skip


class _RowReader:
    """Turns blocks of lines into :class:`TradeColumns`, filling an :class:`ArchiveReport`.

    ``fast=False`` reads every line by the per-line path (the reference the fast path must equal).
    """

    def __init__(self, kind: Kind | None, report: ArchiveReport, fast: bool = True) -> None:
        self.kind: Kind | None = kind
        self.report = report
        self.fast = fast
        self.row_re: re.Pattern[str] | None = None

    def block(self, text: str, line_no: int, cols: TradeColumns) -> int:
        """Read the lines of ``text`` (the first is line ``line_no + 1``) into ``cols``; return the last line number."""
        if self.row_re is None:  # header and kind: line by line until the first data row
            pos = 0
            for line in io.StringIO(text, newline=""):
                pos += len(line)
                line_no += 1
                self.line(line_no, line, cols)
                if self.row_re is not None:
                    break
            text = text[pos:]
            if not text:
                return line_no
        if not self.fast:
            return self._lines(text, line_no, cols)
        return self._split(text, line_no, cols)

    def _split(self, text: str, line_no: int, cols: TradeColumns) -> int:
        n = self._convert(text, cols)
        if n is not None:
            return line_no + n
        if len(text) <= MIN_SPLIT_CHARS:
            return self._lines(text, line_no, cols)
        cut = text.rfind("\n", 0, len(text) // 2) + 1
        if cut == 0:
            cut = text.find("\n", len(text) // 2) + 1
            if cut == 0 or cut == len(text):
                return self._lines(text, line_no, cols)
        line_no = self._split(text[:cut], line_no, cols)
        return self._split(text[cut:], line_no, cols)

    def _lines(self, text: str, line_no: int, cols: TradeColumns) -> int:
        for line in io.StringIO(text, newline=""):
            line_no += 1
            self.line(line_no, line, cols)
        return line_no

    def _convert(self, text: str, cols: TradeColumns) -> int | None:
        """Add the rows of ``text`` to ``cols`` and return how many lines it held, if every line is a plain row.

        None (nothing added) when any line needs the per-line path: not a row of this kind, a
        minus sign (an invalidated aggTrade, or a value the validator will refuse anyway), a
        leading zero, an aggTrade with l < f.
        """
        trades = self.kind == "trades"
        body = text if text.endswith("\n") else text + "\n"
        if not (_TRADE_LINES if trades else _AGG_LINES).fullmatch(body):
            return None
        n = body.count("\n")
        # Every line is now unsigned numbers and booleans between commas: as JSON, one flat array.
        flat_text = body.replace("True", "true").replace("False", "false").replace("\n", ",")
        try:
            flat = _ROWS.decode("[" + flat_text[:-1] + "]")
        except msgspec.DecodeError:
            return None
        width = 7 if trades else 8
        if len(flat) != width * n:
            return None
        try:  # "3000" decodes as an int; one beyond float range has float("9" * 400) == inf: per line
            prices = list(map(float, flat[1::width]))
            sizes = list(map(float, flat[2::width]))
        except OverflowError:
            return None
        counts: Iterable[int]
        if trades:
            ts = flat[4::7]
            counts = repeat(1, n)
        else:
            first, last = flat[3::8], flat[4::8]
            if not all(map(le, first, last)):
                return None
            counts = [b - a + 1 for a, b in zip(first, last)]
            ts = flat[5::8]
        if max(ts) >= MICROSECONDS_THRESHOLD:
            if min(ts) >= MICROSECONDS_THRESHOLD:  # the archive from 2025 on: all µs
                self.report.microseconds += n
                ts = [t // 1000 for t in ts]  # as epoch_to_ms
            else:
                self.report.microseconds += sum(t >= MICROSECONDS_THRESHOLD for t in ts)
                ts = [epoch_to_ms(t) for t in ts]
        cols.trade_id.extend(flat[0::width])
        cols.price.extend(prices)
        cols.size.extend(sizes)
        cols.buyer_is_maker.extend(flat[width - 2 :: width])
        cols.ts_event_ms.extend(ts)
        cols.count.extend(counts)
        return n

    def line(self, line_no: int, line: str, cols: TradeColumns) -> None:
        """The per-line path: header and kind detection, and the reason of every malformed row."""
        rep = self.report
        kind = self.kind
        if self.row_re is None:
            if not line.strip():
                return
            fields = line.split(",")
            if not fields[0].strip().isdigit():
                if line_no == 1:
                    rep.header = True
                    if kind is None and len(fields) in (7, 8):
                        self.kind = "trades" if len(fields) == 7 else "aggTrades"
                else:
                    rep._bad(line_no, "bad_int", line)
                return
            if kind is None:
                if len(fields) not in (7, 8):
                    rep._bad(line_no, "columns", line)  # the next row may still tell the kind
                    return
                self.kind = kind = "trades" if len(fields) == 7 else "aggTrades"
            assert kind is not None
            rep.kind = kind
            self.row_re = _TRADE_ROW if kind == "trades" else _AGG_ROW
        assert kind is not None
        m = self.row_re.fullmatch(line)
        if m is None:
            if line.strip():
                rep._bad(line_no, _diagnose(line.split(","), kind), line)
            return
        if kind == "trades":
            tid, p, q, ts, buyer_maker, _ = m.groups()
            count = 1
        else:
            tid, p, q, first, last, ts, buyer_maker, _ = m.groups()
            f, lst = int(first), int(last)
            if f == -1 and lst == -1:
                rep.invalidated += 1
                return
            if lst < f or f < 0:
                rep._bad(line_no, "bad_range", line)
                return
            count = lst - f + 1
        t = int(ts)
        if t >= MICROSECONDS_THRESHOLD:
            rep.microseconds += 1
            t = epoch_to_ms(t)
        cols.append(int(tid), float(p), float(q), buyer_maker[0] in "Tt", t, count)


def read_archive_columns(
    path: str | Path,
    kind: Kind | None = None,
    report: ArchiveReport | None = None,
    block_chars: int = BLOCK_CHARS,
    *,
    _fast: bool = True,
) -> Iterator[TradeColumns]:
    """Read an archive file as :class:`TradeColumns`, one per block of about ``block_chars`` of text.

    The fastest form (no object per row); the rows, kind detection and report are those of
    :func:`read_archive_batches`. Blocks whose rows were all dropped are not yielded.
    """
    if block_chars < 1:
        raise ValueError("block_chars must be >= 1")
    rep = report if report is not None else ArchiveReport()
    reader = _RowReader(kind, rep, _fast)
    line_no = 0
    with _open_text(Path(path)) as f:
        for text in _text_blocks(f, block_chars):
            cols = TradeColumns()
            line_no = reader.block(text, line_no, cols)
            if len(cols):
                rep.rows += len(cols)
                yield cols


def read_archive_batches(
    path: str | Path,
    symbol: str,
    batch_size: int = 10_000,
    kind: Kind | None = None,
    report: ArchiveReport | None = None,
) -> Iterator[list[RawTrade]]:
    """Read an archive file as lists of up to ``batch_size`` trades, in file order.

    ``kind`` is detected from the first data row's column count when not given. Trades' times are
    in ms; aggTrades give ``trade_id`` = agg id and ``count`` = l - f + 1. An empty file yields
    nothing (``report.kind`` stays None). Raises ValueError only for a zip without exactly one CSV
    (OSError / zipfile.BadZipFile for files that cannot be read at all). ``report.rows`` counts
    the trades parsed so far (up to one block ahead of the batches handed out).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    pending: list[RawTrade] = []
    for cols in read_archive_columns(path, kind, report):
        pending.extend(cols.trades(symbol))
        if len(pending) >= batch_size:
            full = len(pending) - len(pending) % batch_size
            for i in range(0, full, batch_size):
                yield pending[i : i + batch_size]
            pending = pending[full:]
    if pending:
        yield pending


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


def read_columns_in_time_order(
    paths: Sequence[str | Path], reports: Mapping[str, ArchiveReport] | None = None, block_chars: int = BLOCK_CHARS
) -> Iterator[TradeColumns]:
    """The trades of archive files as :class:`TradeColumns`, merged in time order like :func:`merge_in_time_order`.

    The same order as :func:`merge_in_time_order` (by time, then trade id, ties in the order of
    ``paths``), which only ever compares the files' next trades: so the file with the smallest
    next trade releases every trade below the other files' next ones at once, a whole block when
    its latest time is below theirs (files of consecutive days: no per-row merge step at all).
    ``reports`` (by ``str(path)``) are filled as the files are read.
    """
    reports = reports if reports is not None else {str(p): ArchiveReport() for p in paths}
    sources = [read_archive_columns(p, report=reports[str(p)], block_chars=block_chars) for p in paths]
    blocks: list[TradeColumns | None] = [next(s, None) for s in sources]
    pos = [0] * len(sources)
    while True:
        heads = [(b.ts_event_ms[pos[k]], b.trade_id[pos[k]], k) for k, b in enumerate(blocks) if b is not None]
        if not heads:
            return
        heads.sort()
        k = heads[0][2]
        block = blocks[k]
        assert block is not None
        start = end = pos[k]
        if len(heads) == 1:
            end = len(block)
        else:
            bound = heads[1]  # the smallest next trade of the other files
            ts, ids = block.ts_event_ms, block.trade_id
            if max(ts[start:]) < bound[0]:
                end = len(block)
            else:
                end = start + 1  # the head is below bound
                while end < len(block) and (ts[end], ids[end], k) < bound:
                    end += 1
        if start == 0 and end == len(block):
            yield block
        else:
            part = TradeColumns()
            part.trade_id, part.price, part.size = (
                block.trade_id[start:end],
                block.price[start:end],
                block.size[start:end],
            )
            part.buyer_is_maker, part.ts_event_ms = block.buyer_is_maker[start:end], block.ts_event_ms[start:end]
            part.count = block.count[start:end]
            yield part
        if end == len(block):
            blocks[k], pos[k] = next(sources[k], None), 0
        else:
            pos[k] = end


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
