"""Records accepted live trades as daily files in Binance's trades CSV format.

A recording is read back by :func:`unistream_ingest.archive.read_archive` exactly like a downloaded
archive day, so live data and history replay through one code path. Files are named
``SYMBOL-trades-YYYY-MM-DD.csv`` after the UTC day of the trade time (not of the wall clock, so a
trade just before midnight that arrives just after it lands in the right day), have no header, and
hold ``id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch`` with ms times.

Numbers are written as plain decimals that parse back to the same float: ``repr`` of a float is the
shortest such decimal, and the rare exponent form (``1e-05``) is expanded. ``quoteQty`` is the exact
decimal product of those two decimals, as Binance computes it.

Durability: appends, and :meth:`Recorder.flush_if_due` flushes once a second (the caller also calls
it from a timer so a quiet market still gets flushed). A crash can leave a torn last line; on
reopening, the recorder starts a new line so the tear stays one malformed row, which the reader
counts and skips.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from decimal import Context, Decimal
from pathlib import Path
from typing import Self, TextIO

from unistream_common.keys import check_symbol
from unistream_common.packets import Tick
from unistream_ingest.venue import RawTrade

DAY_MS = 86_400_000
FLUSH_INTERVAL_MS = 1_000


def format_decimal(value: float) -> str:
    """Shortest plain decimal that parses back to ``value``: 3012.55 -> "3012.55", 1e-05 -> "0.00001"."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} cannot be recorded: the reader would count it as a malformed row")
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


# Two 17-digit decimals multiply to at most 34 digits: 60 keeps every product exact (the default is 28).
_EXACT = Context(prec=60)


def _quote_qty(price: str, qty: str) -> str:
    product = _EXACT.multiply(Decimal(price), Decimal(qty))
    # normalize() drops trailing zeros; "f" keeps it out of exponent form (1E+2 -> 100).
    return format(product.normalize(_EXACT), "f")


def day_file_name(symbol: str, ts_ms: int) -> str:
    """``SYMBOL-trades-YYYY-MM-DD.csv`` for the UTC day of ``ts_ms`` (ms since the epoch)."""
    day = datetime.fromtimestamp((ts_ms // DAY_MS) * DAY_MS / 1000, tz=UTC).date()
    return f"{symbol}-trades-{day.isoformat()}.csv"


class Recorder:
    """Appends trades to one file per (symbol, UTC day) under ``directory`` (created if missing).

    Use as a context manager or call :meth:`close`. Not thread-safe: call it from one task.
    """

    def __init__(self, directory: str | Path, flush_interval_ms: int = FLUSH_INTERVAL_MS) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_interval_ms = flush_interval_ms
        self.written = 0
        self._files: dict[str, tuple[int, TextIO]] = {}  # symbol -> (UTC day number, open file)
        self._last_flush_ms: int | None = None

    def write(self, trade: RawTrade, now_ms: int | None = None) -> None:
        """Append one accepted trade; with ``now_ms`` (wall clock, ms) also flush if a second has passed."""
        price, qty = format_decimal(trade.price), format_decimal(trade.size)  # raise before a file exists
        f = self._file_for(trade.symbol, trade.ts_event_ms // DAY_MS)
        f.write(
            f"{trade.trade_id},{price},{qty},{_quote_qty(price, qty)},{trade.ts_event_ms},{trade.buyer_is_maker},True\n"
        )
        self.written += 1
        if now_ms is not None:
            self.flush_if_due(now_ms)

    def write_tick(self, symbol: str, tick: Tick, now_ms: int | None = None) -> None:
        """Append a validated :class:`Tick` of ``symbol`` (SELL aggressor = buyer was maker)."""
        trade = RawTrade(symbol, tick.trade_id, tick.price, tick.size, tick.aggressor_side == "SELL", tick.ts_event_ms)
        self.write(trade, now_ms)

    def flush_if_due(self, now_ms: int) -> bool:
        """Flush if ``flush_interval_ms`` passed since the last flush; True if it flushed."""
        if self._last_flush_ms is None or now_ms - self._last_flush_ms >= self.flush_interval_ms:
            self.flush()
            self._last_flush_ms = now_ms
            return True
        return False

    def flush(self) -> None:
        """Hand everything written so far to the OS."""
        for _, f in self._files.values():
            f.flush()

    def close(self) -> None:
        """Flush and close every open file; the recorder may be written to again afterwards."""
        files, self._files = self._files, {}
        for _, f in files.values():
            f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _file_for(self, symbol: str, day: int) -> TextIO:
        current = self._files.get(symbol)
        if current is not None and current[0] == day:
            return current[1]
        if current is not None:
            # A new day (or a late trade of the previous one): one open file per symbol is enough,
            # since trades arrive in time order apart from a few around midnight.
            current[1].close()
        check_symbol(symbol)  # the name goes into a path: no separators, no dots
        path = self.directory / day_file_name(symbol, day * DAY_MS)
        f = open(path, "a", encoding="ascii", newline="\n")  # noqa: SIM115 - kept open across writes
        if f.tell() > 0 and not _ends_with_newline(path):
            f.write("\n")  # a torn last line from a crash stays one malformed row
        self._files[symbol] = (day, f)
        return f


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
