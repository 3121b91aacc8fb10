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

Speed: trades travel as columns (:class:`~unistream_ingest.archive.TradeColumns`) from the
reader to :meth:`Validator.check_columns <unistream_ingest.validate.Validator.check_columns>`,
which turns a clean run into Ticks without a Python step per trade; no per-trade object is made
before the Tick (see :func:`~unistream_ingest.archive.read_columns_in_time_order`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from unistream_common.packets import Tick
from unistream_ingest.archive import ArchiveReport, TradeColumns, read_columns_in_time_order
from unistream_ingest.validate import Validator

DEFAULT_CHUNK = 20_000  # trades per advance at max speed: one pipelined round trip; measured faster than 50k (cache)


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
        self._blocks: Iterator[TradeColumns] = read_columns_in_time_order(paths, self.reports)
        self._block: TradeColumns | None = None  # the block being released, from self._pos on
        self._pos = 0
        self._first_ts: int | None = None
        self.released = 0
        self.skipped_on_resume = 0
        self.done = False

    def _peek(self) -> bool:
        """True if a trade is waiting (at ``self._block[self._pos]``); sets ``done`` at the end."""
        block = self._block
        while block is None or self._pos >= len(block):
            if self.done:
                return False
            block = next(self._blocks, None)
            if block is None:
                self.done = True
                self._block = None
                return False
            self._block, self._pos = block, 0
            if self._first_ts is None:
                self._first_ts = block.ts_event_ms[0]
        return True

    def resume_after(self, trade_id: int) -> int:
        """Continue after ``trade_id`` (the tick stream's last one): skip the trades up to it at
        once and start the replay clock at the first trade after it, so a restarted paced replay
        goes on where it stopped instead of replaying the time already written. Returns how many
        trades were skipped."""
        self.validator.resume(self.symbol, trade_id)
        skipped = 0
        while self._peek():
            block = self._block
            assert block is not None
            ids, pos = block.trade_id, self._pos
            if ids[-1] <= trade_id:  # ids rise with time in an archive: the whole rest is written
                skipped += len(block) - pos
                self._pos = len(block)
                continue
            while pos < len(block) and ids[pos] <= trade_id:
                pos += 1
            skipped += pos - self._pos
            self._pos = pos
            if pos < len(block):
                break
        if self._peek():
            assert self._block is not None
            self._first_ts = self._block.ts_event_ms[self._pos]
        self.skipped_on_resume = skipped
        return skipped

    def _take(self, limit: int, horizon: float | None) -> list[tuple[TradeColumns, int, int]]:
        """Up to ``limit`` waiting trades (with a time at or before ``horizon`` if given), as block slices."""
        parts: list[tuple[TradeColumns, int, int]] = []
        taken = 0
        while self._peek():
            block, pos = self._block, self._pos
            assert block is not None
            end = min(len(block), pos + limit - taken)
            if horizon is not None:
                ts = block.ts_event_ms
                stop = pos
                while stop < end and ts[stop] <= horizon:
                    stop += 1
                end = stop
            if end == pos:
                break
            parts.append((block, pos, end))
            taken += end - pos
            self._pos = end
            if taken >= limit:
                if horizon is not None:
                    self._peek()  # paced: the end shows as soon as the last trade is out
                break
        return parts

    def advance(self, now_ms: int) -> dict[str, list[Tick]]:
        """Trades due by ``now_ms`` (wall clock): the next chunk at max speed, else those the replay clock passed."""
        if not self._peek():
            return {}
        if self.speed is None:
            parts = self._take(self.chunk, None)
        else:
            assert self._first_ts is not None
            parts = self._take(self.chunk, self._first_ts + (now_ms - self.start_ms) * self.speed)
        if len(parts) == 1 and parts[0][1] == 0 and parts[0][2] == len(parts[0][0]):
            cols = parts[0][0]  # a whole block: no copy
        else:
            cols = TradeColumns()
            for block, pos, end in parts:
                cols.trade_id.extend(block.trade_id[pos:end])
                cols.price.extend(block.price[pos:end])
                cols.size.extend(block.size[pos:end])
                cols.buyer_is_maker.extend(block.buyer_is_maker[pos:end])
                cols.ts_event_ms.extend(block.ts_event_ms[pos:end])
                cols.count.extend(block.count[pos:end])
        n = len(cols)
        if self.speed is None and n < self.chunk:
            self.done = not self._peek()
        self.released += n
        if not n:
            return {}
        ticks = self.validator.check_columns(
            self.symbol, cols.trade_id, cols.price, cols.size, cols.buyer_is_maker, cols.ts_event_ms, now_ms,
            cols.count,
        )  # fmt: skip
        return {self.symbol: ticks} if ticks else {}

    def info(self) -> dict[str, object]:
        """State for /stats: progress, the archive reports and the validator's counts."""
        return {
            "replay_symbol": self.symbol,
            "replay_speed": "max" if self.speed is None else self.speed,
            "replay_released": self.released,
            "replay_skipped_on_resume": self.skipped_on_resume,
            "replay_done": self.done,
            "replay_files": {
                path: {"rows": r.rows, "kind": r.kind, "invalidated": r.invalidated, "malformed": r.malformed}
                for path, r in self.reports.items()
            },
            "validator": self.validator.stats(),
        }
