"""Replay of Binance archive files (and the project's own recordings) as a tick source.

Several files are merged in time order (by trade time, then id). At ``speed=None`` ("max") each
``advance`` releases the next ``chunk`` trades as fast as the writer takes them; at a factor
``k`` the replay clock runs ``k`` times real time from the first trade, so ``k=1`` reproduces the
original pacing and ``k=60`` plays an hour in a minute.

Every trade passes the same :class:`~unistream_ingest.validate.Validator` as live trades (known
symbol, positive prices and sizes, ids strictly increasing), except for the age check: archive
trades are old by nature. ``ts_recv_ms`` is the wall-clock time the replay released the trade.
Rows the archive reader drops (malformed, invalidated aggTrades) are counted in its
:class:`~unistream_ingest.archive.ArchiveReport` per file and shown on /stats.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path

from unistream_common.packets import Tick
from unistream_ingest.archive import ArchiveReport, merge_in_time_order, read_archive
from unistream_ingest.validate import Rejection, Validator
from unistream_ingest.venue import RawTrade

DEFAULT_CHUNK = 50_000  # trades released per advance at max speed: a few pipelined round trips


class ReplaySource:
    """Releases archived trades of one symbol, in time order, at max speed or a factor of real time."""

    label = "REPLAY"

    def __init__(
        self,
        paths: Sequence[str | Path],
        symbol: str,
        speed: float | None,
        start_ms: int,
        chunk: int = DEFAULT_CHUNK,
        validator: Validator | None = None,
    ) -> None:
        if not paths:
            raise ValueError("replay needs at least one file")
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"replay files not found: {', '.join(missing)}")
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be > 0 or None (max), was {speed}")
        self.symbol = symbol
        self.speed = speed
        self.start_ms = start_ms
        self.chunk = chunk
        self.validator = validator or Validator([symbol], max_past_ms=None)
        self.reports = {str(p): ArchiveReport() for p in paths}
        self._trades: Iterator[RawTrade] = merge_in_time_order(
            read_archive(p, symbol, report=self.reports[str(p)]) for p in paths
        )
        self._next: RawTrade | None = None
        self._first_ts: int | None = None
        self.released = 0
        self.done = False

    def _peek(self) -> RawTrade | None:
        if self._next is None and not self.done:
            self._next = next(self._trades, None)
            if self._next is None:
                self.done = True
            elif self._first_ts is None:
                self._first_ts = self._next.ts_event_ms
        return self._next

    def advance(self, now_ms: int) -> dict[str, list[Tick]]:
        """Trades due by ``now_ms`` (wall clock): the next chunk at max speed, else those the replay clock passed."""
        if self._peek() is None:
            return {}
        if self.speed is None:
            raw = [self._next, *islice(self._trades, self.chunk - 1)]
            self._next = None
            if len(raw) < self.chunk:
                self.done = self._peek() is None
        else:
            assert self._first_ts is not None
            horizon = self._first_ts + (now_ms - self.start_ms) * self.speed
            raw = []
            while (t := self._peek()) is not None and t.ts_event_ms <= horizon and len(raw) < self.chunk:
                raw.append(t)
                self._next = None
        ticks: list[Tick] = []
        check = self.validator.check
        for trade in raw:
            out = check(trade, now_ms)  # type: ignore[arg-type]
            if not isinstance(out, Rejection):
                ticks.append(out)
        self.released += len(raw)
        return {self.symbol: ticks} if ticks else {}

    def info(self) -> dict[str, object]:
        """State for /stats: progress, the archive reports and the validator's counts."""
        return {
            "replay_symbol": self.symbol,
            "replay_speed": "max" if self.speed is None else self.speed,
            "replay_released": self.released,
            "replay_done": self.done,
            "replay_files": {
                path: {"rows": r.rows, "kind": r.kind, "invalidated": r.invalidated, "malformed": r.malformed}
                for path, r in self.reports.items()
            },
            "validator": self.validator.stats(),
        }
