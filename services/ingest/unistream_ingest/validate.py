"""Decides which parsed trades become ticks: pure, with time passed in (``recv_ms``, integer ms, UTC).

:class:`Validator` is the one place where ingest counts what it refused and why: rejected trades
(:meth:`Validator.check`) and unparseable messages (:meth:`Validator.reject_raw`) land in the same
``counts`` and the same bounded sample, so /stats shows one picture.

Trade ids are not decided here. Where a :class:`~unistream_ingest.sequencer.TradeSequencer`
stands before the validator (the live feed), it has already dropped repeats and declared gaps, and
the validator checks values only (``check_ids=False``). Elsewhere (the door, archive replay) the
validator asks :class:`~unistream_ingest.sequencer.TradeIds`: an id at or below the last accepted
one is refused as a repeat, and an id more than one above it is accepted and records a
:class:`~unistream_ingest.sequencer.Gap`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import sub
from statistics import median
from typing import Any

from unistream_common.packets import Tick
from unistream_ingest.sequencer import Gap, TradeIds
from unistream_ingest.venue import RawTrade

# Binance opened in July 2017: an earlier trade time is a unit error, not an old trade.
EARLIEST_TRADE_MS = 1_498_867_200_000  # 2017-07-01T00:00:00Z
LATEST_EPOCH_MS = 10**14  # the packets' EpochMs bound
SAMPLE_ITEM_CHARS = 300  # raw messages are cut to this in the sample
MIN_SPLIT_TRADES = 64  # check_columns halves a batch that is not all clean down to this, then goes trade by trade
_SIDE = {True: "SELL", False: "BUY"}  # buyer_is_maker -> aggressor side


def _as_list(values: Sequence[Any]) -> list[Any]:
    """``values`` itself if it is a list (never modified), else a list of them."""
    return values if type(values) is list else list(values)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A trade that was not accepted; ``reason`` is a short, countable label."""

    reason: str
    trade: RawTrade
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RejectedSample:
    """One rejected item kept for inspection: a :class:`RawTrade`, or a raw message cut to 300 chars."""

    reason: str
    item: RawTrade | str
    detail: str = ""


class Validator:
    """Accepts well-formed, new, plausible trades of known symbols and converts them to :class:`Tick`.

    Args:
        symbols: the symbols to accept (``ETHUSDT``...); others are rejected as ``unknown_symbol``.
        max_future_skew_ms: a trade time more than this ahead of ``recv_ms`` is ``future_ts``
            (our clock or theirs is wrong).
        max_past_ms: a trade time more than this before ``recv_ms`` is ``stale_ts``; ``None``
            disables the check (archive replay, where recv time is replay time). The default of
            7 days leaves room for REST backfill after a long outage.
        sample_size: how many recent rejected items to keep.
        skew_window: how many recent skews the running median is taken over.
        check_ids: refuse repeated trade ids and record gaps (:class:`TradeIds`); False where a
            :class:`~unistream_ingest.sequencer.TradeSequencer` before the validator owns ids.

    Rejection reasons: ``unknown_symbol``, ``bad_price``, ``bad_size``, ``bad_ts``, ``future_ts``,
    ``stale_ts``, ``duplicate`` and ``out_of_order`` (see :meth:`TradeIds.repeat_reason`, only with
    ``check_ids``), plus whatever :meth:`reject_raw` is called with.
    """

    def __init__(
        self,
        symbols: Iterable[str],
        max_future_skew_ms: int = 5_000,
        max_past_ms: int | None = 7 * 86_400_000,
        sample_size: int = 20,
        skew_window: int = 1_001,
        check_ids: bool = True,
    ) -> None:
        self.symbols = frozenset(symbols)
        if not self.symbols:
            raise ValueError("the validator needs at least one symbol")
        if max_future_skew_ms < 0 or (max_past_ms is not None and max_past_ms <= 0):
            raise ValueError("max_future_skew_ms must be >= 0 and max_past_ms > 0 (or None)")
        self.max_future_skew_ms = max_future_skew_ms
        self.max_past_ms = max_past_ms
        self.counts: dict[str, int] = {}
        self.accepted = 0
        self.samples: deque[RejectedSample] = deque(maxlen=sample_size)
        self.ids = TradeIds() if check_ids else None
        self._skews: deque[int] = deque(maxlen=skew_window)
        self.skew_last_ms: int | None = None
        self.skew_min_ms: int | None = None
        self.skew_max_ms: int | None = None
        self.skew_ewma_ms: float | None = None

    @property
    def last_ids(self) -> dict[str, int]:
        """The last accepted trade id per symbol (empty without ``check_ids``)."""
        return self.ids.last_ids if self.ids is not None else {}

    def resume(self, symbol: str, last_id: int) -> None:
        """Continue after ``last_id`` (e.g. from a recording or the stream's last tick) so a restart sees gaps."""
        if self.ids is not None:
            self.ids.resume(symbol, last_id)

    def check(self, trade: RawTrade, recv_ms: int) -> Tick | Rejection:
        """Accept ``trade`` (received at ``recv_ms``) as a Tick, or say why not.

        With ``check_ids``, an accepted trade whose id skips ahead also records a :class:`Gap` (see
        :meth:`take_gaps`).
        """
        if not 0 <= recv_ms <= LATEST_EPOCH_MS:
            raise ValueError(f"recv_ms {recv_ms} is not epoch milliseconds")
        symbol = trade.symbol
        if symbol not in self.symbols:
            return self._reject("unknown_symbol", trade)
        if not (trade.price > 0 and math.isfinite(trade.price)):
            return self._reject("bad_price", trade, repr(trade.price))
        if not (trade.size > 0 and math.isfinite(trade.size)):
            return self._reject("bad_size", trade, repr(trade.size))
        ts = trade.ts_event_ms
        if not EARLIEST_TRADE_MS <= ts <= LATEST_EPOCH_MS:
            return self._reject("bad_ts", trade, str(ts))
        if ts - recv_ms > self.max_future_skew_ms:
            return self._reject("future_ts", trade, f"{ts - recv_ms} ms ahead")
        if self.max_past_ms is not None and recv_ms - ts > self.max_past_ms:
            return self._reject("stale_ts", trade, f"{recv_ms - ts} ms old")
        tid = trade.trade_id
        ids = self.ids
        if ids is not None:
            repeat = ids.repeat_reason(symbol, tid)
            if repeat is not None:
                return self._reject(repeat, trade, f"last accepted id {ids.last_ids[symbol]}")
            ids.accept(symbol, tid, tid, ts)
        self.accepted += 1
        self._observe_skew(recv_ms - ts)
        return Tick(tid, trade.price, trade.size, "SELL" if trade.buyer_is_maker else "BUY", ts, recv_ms)

    def check_columns(
        self,
        symbol: str,
        trade_ids: Sequence[int],
        prices: Sequence[float],
        sizes: Sequence[float],
        buyer_is_maker: Sequence[bool],
        ts_event_ms: Sequence[int],
        recv_ms: int,
        counts: Sequence[int] | None = None,
    ) -> list[Tick]:
        """:meth:`check` for many trades of one symbol given as columns: the accepted ones as Ticks, in order.

        The same outcome as calling :meth:`check` on each trade in turn (ticks, counts, samples,
        gaps, skew statistics), only faster: a run of clean trades (consecutive ids, plausible
        values) is checked with a few whole-column conditions and converted without a Python
        step per trade. A run with anything unusual is halved until the unusual trades are
        isolated, and those go through :meth:`check` one by one. ``counts`` (raw trades per
        trade, aggTrades) only shows in rejected samples; 1 when not given.
        """
        if not 0 <= recv_ms <= LATEST_EPOCH_MS:
            raise ValueError(f"recv_ms {recv_ms} is not epoch milliseconds")
        if not (len(trade_ids) == len(prices) == len(sizes) == len(buyer_is_maker) == len(ts_event_ms)):
            raise ValueError("check_columns needs columns of one length")
        out: list[Tick] = []
        cols = (_as_list(trade_ids), _as_list(prices), _as_list(sizes), _as_list(buyer_is_maker), _as_list(ts_event_ms))
        self._check_run(symbol, cols, _as_list(counts) if counts is not None else None, recv_ms, out)
        return out

    def _check_run(
        self,
        symbol: str,
        cols: tuple[list[int], list[float], list[float], list[bool], list[int]],
        counts: list[int] | None,
        recv_ms: int,
        out: list[Tick],
    ) -> None:
        n = len(cols[0])
        if not n:
            return
        ticks = self._check_clean(symbol, *cols, recv_ms)
        if ticks is not None:
            out.extend(ticks)
            return
        if n <= MIN_SPLIT_TRADES:
            check = self.check
            for i, (tid, price, size, maker, ts) in enumerate(zip(*cols)):
                trade = RawTrade(symbol, tid, price, size, maker, ts, counts[i] if counts is not None else 1)
                tick = check(trade, recv_ms)
                if not isinstance(tick, Rejection):
                    out.append(tick)
            return
        h = n // 2
        head = (cols[0][:h], cols[1][:h], cols[2][:h], cols[3][:h], cols[4][:h])
        tail = (cols[0][h:], cols[1][h:], cols[2][h:], cols[3][h:], cols[4][h:])
        self._check_run(symbol, head, counts[:h] if counts is not None else None, recv_ms, out)
        self._check_run(symbol, tail, counts[h:] if counts is not None else None, recv_ms, out)

    def _check_clean(
        self,
        symbol: str,
        ids: list[int],
        prices: list[float],
        sizes: list[float],
        makers: list[bool],
        ts: list[int],
        recv_ms: int,
    ) -> list[Tick] | None:
        """Ticks of a run in which :meth:`check` would accept every trade; None (nothing changed) otherwise.

        Clean: a known symbol; every price and size finite and > 0 (a finite sum of values that
        are all > 0 means every one is finite); times in range, not too far ahead or behind; ids
        consecutive, starting above the last accepted one with ``check_ids`` (one gap before the
        first is recorded as :meth:`check` would); buyer_is_maker all bools.
        """
        n = len(ids)
        if symbol not in self.symbols:
            return None
        try:
            for col in (prices, sizes):
                if not (min(col) > 0 and math.isfinite(sum(col))):
                    return None
        except (OverflowError, TypeError):  # not floats: check says what it makes of them
            return None
        ts_min, ts_max = min(ts), max(ts)
        if not (EARLIEST_TRADE_MS <= ts_min and ts_max <= LATEST_EPOCH_MS):
            return None
        if ts_max - recv_ms > self.max_future_skew_ms:
            return None
        if self.max_past_ms is not None and recv_ms - ts_min > self.max_past_ms:
            return None
        first = ids[0]
        if type(first) is not int or ids != list(range(first, first + n)):
            return None
        try:
            sides = list(map(_SIDE.__getitem__, makers))
        except (KeyError, TypeError):  # not bools (or 0 / 1)
            return None
        order = self.ids
        if order is not None:
            if order.repeat_reason(symbol, first) is not None:
                return None
            order.accept(symbol, first, ids[-1], ts[0])
        self.accepted += n
        self._observe_skews(recv_ms, ts, ts_min, ts_max)
        return list(map(Tick, ids, prices, sizes, sides, ts, repeat(recv_ms, n)))

    def reject_raw(self, reason: str, raw: str | bytes, detail: str = "") -> None:
        """Count an item that never became a trade (a ParseError's reason and the message)."""
        if isinstance(raw, bytes):
            raw = raw[:SAMPLE_ITEM_CHARS].decode("utf-8", "replace")
        self._count(reason)
        self.samples.append(RejectedSample(reason, raw[:SAMPLE_ITEM_CHARS], detail))

    def take_gaps(self) -> list[Gap]:
        """Gaps recorded since the last call, oldest first (the validator forgets them)."""
        return self.ids.take_gaps() if self.ids is not None else []

    def stats(self) -> dict[str, Any]:
        """Counters and clock skew (recv - trade time, ms) for /stats; plain JSON-able values."""
        return {
            "accepted": self.accepted,
            "rejected": dict(self.counts),
            "gaps": self.ids.gaps_total if self.ids is not None else 0,
            "missing_ids": self.ids.missing_ids_total if self.ids is not None else 0,
            "last_ids": dict(self.last_ids),
            "skew_ms": {
                "last": self.skew_last_ms,
                "min": self.skew_min_ms,
                "max": self.skew_max_ms,
                "ewma": None if self.skew_ewma_ms is None else round(self.skew_ewma_ms, 1),
                "p50_recent": median(self._skews) if self._skews else None,
            },
            "samples": [
                {
                    "reason": s.reason,
                    "item": repr(s.item) if isinstance(s.item, RawTrade) else s.item,
                    "detail": s.detail,
                }
                for s in self.samples
            ],
        }

    def _reject(self, reason: str, trade: RawTrade, detail: str = "") -> Rejection:
        self._count(reason)
        self.samples.append(RejectedSample(reason, trade, detail))
        return Rejection(reason, trade, detail)

    def _count(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def _observe_skews(self, recv_ms: int, ts: list[int], ts_min: int, ts_max: int) -> None:
        """:meth:`_observe_skew` of ``recv_ms - t`` for each ``t`` of ``ts`` in turn (the same floating-point steps)."""
        self.skew_last_ms = recv_ms - ts[-1]
        maxlen = self._skews.maxlen
        tail = ts if maxlen is None or len(ts) <= maxlen else ts[-maxlen:]
        self._skews.extend(map(sub, repeat(recv_ms, len(tail)), tail))
        lo, hi = recv_ms - ts_max, recv_ms - ts_min
        if self.skew_min_ms is None or lo < self.skew_min_ms:
            self.skew_min_ms = lo
        if self.skew_max_ms is None or hi > self.skew_max_ms:
            self.skew_max_ms = hi
        ewma = self.skew_ewma_ms
        rest = iter(ts)
        if ewma is None:
            ewma = recv_ms - next(rest)
        for t in rest:
            ewma = ewma + 0.01 * ((recv_ms - t) - ewma)
        self.skew_ewma_ms = ewma

    def _observe_skew(self, skew_ms: int) -> None:
        self.skew_last_ms = skew_ms
        self._skews.append(skew_ms)
        if self.skew_min_ms is None or skew_ms < self.skew_min_ms:
            self.skew_min_ms = skew_ms
        if self.skew_max_ms is None or skew_ms > self.skew_max_ms:
            self.skew_max_ms = skew_ms
        # alpha 0.01: about the last 100 trades, smooth enough to read, quick enough to show a drift.
        self.skew_ewma_ms = (
            skew_ms if self.skew_ewma_ms is None else self.skew_ewma_ms + 0.01 * (skew_ms - self.skew_ewma_ms)
        )
