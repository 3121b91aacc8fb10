"""Pure core of the ingest service: what the writer holds between a source and Redis.

- :class:`TickSource`: what every source (Binance live, replay, the synthetic market) gives the
  writer: the trades released up to ``now_ms``, per symbol, in trade order;
- :class:`TickBuffer`: the bounded send buffer (the oldest ticks go first when an outage lasts);
- :class:`WrittenTicks`: the batches written and acknowledged lately, so that a Redis that rolled
  back (restarted without its last writes) can be repaired: what it lost is written again
  (:meth:`WrittenTicks.reconcile`).

No Redis, no clock, no I/O: time comes in as an argument (``now_ms``, integer milliseconds since
the Unix epoch, UTC). Trade ids and gaps are decided in :mod:`unistream_ingest.sequencer`; the
venues' messages are parsed in :mod:`unistream_ingest.binance`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Protocol

from unistream_common.packets import Source, Tick


class TickSource(Protocol):
    """What the ingest writer pulls trades from (see :mod:`unistream_ingest.service`)."""

    label: Source

    def advance(self, now_ms: int) -> dict[str, list[Tick]]:
        """Trades released up to ``now_ms`` (ms since the epoch), per symbol, in trade order."""
        ...

    def info(self) -> dict[str, object]:
        """State for /stats."""
        ...


def _drop_front(q: deque[Tick], n: int) -> None:
    """Remove the first ``n`` items of ``q`` (the fast idiom: no index or attribute lookup per item)."""
    if n >= len(q):
        q.clear()
        return
    popleft = q.popleft
    for _ in repeat(None, n):
        popleft()


class TickBuffer:
    """Ticks waiting to be written, per symbol, bounded so an outage cannot exhaust memory.

    When a symbol holds more than ``max_ticks``, the OLDEST ticks are dropped (fresh data is
    worth more to a live consumer) and the number is returned so the caller counts it.
    """

    def __init__(self, max_ticks: int) -> None:
        if max_ticks < 1:
            raise ValueError(f"max_ticks was {max_ticks}; it must be at least 1")
        self.max_ticks = max_ticks
        self._ticks: dict[str, deque[Tick]] = {}

    def extend(self, symbol: str, ticks: Iterable[Tick]) -> int:
        """Append ``ticks``; return how many old ticks were dropped to stay within the bound."""
        q = self._ticks.setdefault(symbol, deque())
        q.extend(ticks)
        dropped = max(0, len(q) - self.max_ticks)
        _drop_front(q, dropped)
        return dropped

    def chunks(self, max_batch: int) -> list[tuple[str, list[Tick]]]:
        """Buffered ticks as (symbol, up to ``max_batch`` ticks) in order, without removing them."""
        out: list[tuple[str, list[Tick]]] = []
        for symbol, q in self._ticks.items():
            items = list(q)
            out.extend((symbol, items[i : i + max_batch]) for i in range(0, len(items), max_batch))
        return out

    def discard(self, symbol: str, ticks: Sequence[Tick]) -> None:
        """Remove ``ticks`` (written) from the buffer; they need not be at the front."""
        q = self._ticks.get(symbol)
        if not q or not ticks:
            return
        if len(ticks) <= len(q) and q[0] is ticks[0]:
            _drop_front(q, len(ticks))
            return
        written = {id(t) for t in ticks}
        self._ticks[symbol] = deque(t for t in q if id(t) not in written)

    def requeue(self, symbol: str, ticks: Sequence[Tick]) -> None:
        """Put ``ticks`` (older than everything buffered: written once, lost since) in front.

        Not bounded: they were accepted and are owed; the bound applies again at the next extend."""
        q = self._ticks.setdefault(symbol, deque())
        q.extendleft(reversed(ticks))

    def discard_through(self, symbol: str, trade_id: int) -> int:
        """Remove ticks with ``trade_id`` <= ``trade_id`` (known to be written); return how many."""
        q = self._ticks.get(symbol)
        n = 0
        while q and q[0].trade_id <= trade_id:
            q.popleft()
            n += 1
        return n

    def size(self, symbol: str | None = None) -> int:
        """Buffered ticks of one symbol, or of all."""
        if symbol is not None:
            return len(self._ticks.get(symbol, ()))
        return sum(len(q) for q in self._ticks.values())


@dataclass(frozen=True)
class Reconciled:
    """What :meth:`WrittenTicks.reconcile` found when Redis's mark differed from this writer's.

    ``rolled_back``: Redis holds fewer of this writer's trades than it wrote (a Redis restart that
    lost its last writes: AOF ``everysec`` after SIGKILL, a failover to a lagging replica).
    ``resend``: the written trades Redis no longer holds that this writer still remembers, oldest
    first, to write again before anything newer. ``lost``: (first, last) trade ids of a stretch
    that was rolled back further than the writer remembers, or None.
    ``ahead``: Redis holds trades past this writer's (another writer, or this one's write whose
    reply was lost): buffered trades up to the mark are already written.
    """

    rolled_back: bool = False
    resend: list[Tick] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # the source label each of ``resend`` was written with
    lost: tuple[int, int] | None = None
    ahead: bool = False


class WrittenTicks:
    """The trades a writer put on each tick stream lately, to repair a Redis that rolled back.

    Each tick stream has a mark (``keys.ticks_mark``): the last trade id written, set in the same
    script as the XADD, so the mark and the stream roll back together. The writer remembers the
    id it last set (``through``) and the trades it wrote in the last ``keep_ms`` (at most
    ``max_ticks`` per symbol). A mark below ``through`` means Redis lost writes that it had
    acknowledged; the remembered trades after the mark go out again.
    """

    def __init__(self, keep_ms: int, max_ticks: int) -> None:
        self.keep_ms = keep_ms
        self.max_ticks = max_ticks
        self.through: dict[str, int] = {}  # last trade id this writer knows Redis has, per symbol
        # Per symbol, the batches written, oldest first: (written at ms, source, ticks); whole
        # batches are kept and forgotten, so remembering costs nothing per trade.
        self._recent: dict[str, deque[tuple[int, str, Sequence[Tick]]]] = {}
        self._count: dict[str, int] = {}  # trades in _recent
        self._complete: dict[str, bool] = {}  # nothing written was forgotten yet

    def expected(self, symbol: str) -> str:
        """The mark the next write of ``symbol`` expects to find ("*": unknown, not checked)."""
        through = self.through.get(symbol)
        return "*" if through is None else str(through)

    def start(self, symbol: str, mark: int | None) -> None:
        """Take Redis's mark as this writer's (at start: nothing of its own written yet)."""
        if mark is not None:
            self.through[symbol] = mark

    def note(self, symbol: str, ticks: Sequence[Tick], now_ms: int, source: str = "") -> None:
        """``ticks`` (a batch, not changed afterwards) were written at ``now_ms`` with their mark."""
        if not ticks:
            return
        q = self._recent.setdefault(symbol, deque())
        self._complete.setdefault(symbol, True)
        q.append((now_ms, source, ticks))
        count = self._count.get(symbol, 0) + len(ticks)
        self.through[symbol] = ticks[-1].trade_id
        horizon = now_ms - self.keep_ms
        # The newest batch stays, whatever its size: the bound is on what is kept besides it.
        while len(q) > 1 and (count - len(q[0][2]) >= self.max_ticks or q[0][0] < horizon):
            count -= len(q.popleft()[2])
            self._complete[symbol] = False
        self._count[symbol] = count

    def reconcile(self, symbol: str, mark: int | None) -> Reconciled:
        """Compare Redis's ``mark`` with what this writer wrote, and take the mark as the new truth."""
        through = self.through.get(symbol)
        if through is None or mark == through:
            self.start(symbol, mark)
            return Reconciled()
        if mark is not None and mark > through:
            self.through[symbol] = mark
            return Reconciled(ahead=True)
        q = self._recent.get(symbol, deque())
        floor = -1 if mark is None else mark
        resend: list[Tick] = []
        sources: list[str] = []
        for _, src, batch in q:
            after = [t for t in batch if t.trade_id > floor]
            resend.extend(after)
            sources.extend([src] * len(after))
        # Covered when nothing written was forgotten yet, or the oldest trade remembered is at most
        # the one after the mark (ids only grow: every trade forgotten is at or below the mark).
        covered = self._complete.get(symbol, True) or bool(q and q[0][2][0].trade_id <= floor + 1)
        lost = None if covered else (floor + 1, (resend[0].trade_id - 1) if resend else through)
        # What goes out again is noted again then: keep only what Redis still holds.
        while q and q[-1][2][0].trade_id > floor:
            self._count[symbol] -= len(q.pop()[2])
        if q and q[-1][2][-1].trade_id > floor:
            _, src, batch = q.pop()
            kept = [t for t in batch if t.trade_id <= floor]
            q.append((_, src, kept))
            self._count[symbol] -= len(batch) - len(kept)
        if mark is None:
            self.through.pop(symbol, None)
        else:
            self.through[symbol] = mark
        return Reconciled(rolled_back=True, resend=resend, sources=sources, lost=lost)
