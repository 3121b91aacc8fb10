"""Binance spot REST: backfill pages of historical trades within the request-weight budget, and the reachability probe.

Binance budgets request weight per IP per rolling minute (6,000 by default); a 429 carries
``Retry-After`` and ignoring it escalates to a 418 ban. So every request first books its weight in
a :class:`WeightBudget` (which also counts what the venue reports as used by others on the same
IP), waits out any ``Retry-After``, and gives up a page with a gap reason once waiting or retrying
would not help: the sequencer then declares the hole lost (:class:`~unistream_ingest.sequencer.GapEvent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httpx

from unistream_ingest.binance.parsing import (
    HISTORICAL_TRADES_PATH,
    TIME_PATH,
    parse_rest_trades,
    parse_server_time,
    retry_after_s,
)
from unistream_ingest.sequencer import BackfillRequest
from unistream_ingest.venue import ParseError, RawTrade

HISTORICAL_TRADES_WEIGHT = 25  # Binance request weight of one historicalTrades call
WEIGHT_WINDOW_S = 60.0  # Binance counts request weight per rolling minute
BAN_DEFAULT_S = 120.0  # a 418 without Retry-After: Binance's shortest ban


class WeightBudget:
    """Rolling-minute request-weight budget (Binance: 6,000 per IP per minute). Pure: time is passed in.

    :meth:`reserve` either books ``weight`` at ``now_s`` and returns 0, or books nothing and returns
    how many seconds to wait before asking again.
    """

    def __init__(self, per_minute: int, window_s: float = WEIGHT_WINDOW_S) -> None:
        if per_minute <= 0:
            raise ValueError(f"the weight budget must be > 0 per minute, got {per_minute}")
        self.per_minute = per_minute
        self.window_s = window_s
        self._spent: deque[tuple[float, int]] = deque()
        self._used = 0

    def used(self, now_s: float) -> int:
        """Weight booked in the window that ends at ``now_s``."""
        while self._spent and self._spent[0][0] <= now_s - self.window_s:
            self._used -= self._spent.popleft()[1]
        return self._used

    def observe(self, now_s: float, reported: int) -> None:
        """The venue says ``reported`` weight is used this minute (``X-MBX-USED-WEIGHT-1M``): book what
        others on the same IP spent beyond our own bookings, so the budget is shared, not assumed."""
        extra = reported - self.used(now_s)
        if extra > 0:
            self._spent.append((now_s, extra))
            self._used += extra

    def reserve(self, now_s: float, weight: int) -> float:
        """Book ``weight`` now (returns 0.0) or say how many seconds until it fits."""
        if weight > self.per_minute:
            raise ValueError(f"a request of weight {weight} can never fit a budget of {self.per_minute}/min")
        if self.used(now_s) + weight <= self.per_minute:
            self._spent.append((now_s, weight))
            self._used += weight
            return 0.0
        # Free the oldest bookings until it fits; wait for the last of them to leave the window.
        freed, need = 0, self._used + weight - self.per_minute
        for ts, w in self._spent:
            freed += w
            if freed >= need:
                return max(ts + self.window_s - now_s, 0.001)
        return self.window_s  # unreachable: weight <= per_minute


def backoff_delay(failures: int, min_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures (0 -> no wait).

    Exponential from ``min_s`` (doubling per failure, capped at ``max_s``) with "equal jitter": a
    uniform draw in [d/2, d], so many clients cut at once do not come back in lock-step, yet each
    still waits at least half the nominal delay.
    """
    if failures <= 0:
        return 0.0
    nominal = min(max_s, min_s * 2 ** (failures - 1))
    return nominal / 2 + (rng or random).uniform(0, nominal / 2)


class BackfillFailed(Exception):
    """A backfill page cannot be had; ``reason`` is the gap reason (see :class:`~unistream_ingest.sequencer.GapEvent`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BinanceRest:
    """Pages of historical trades from Binance REST at ``url``, honouring the weight budget, Retry-After and bans.

    Arguments as for :class:`~unistream_ingest.binance.websocket.BinanceLiveSource` (``rest_*``,
    ``backoff_*``, ``rng``). Use :meth:`session` around the calls: it owns the HTTP connection pool.
    """

    def __init__(
        self,
        url: str,
        *,
        weight_budget_per_min: int,
        attempts: int,
        timeout_s: float,
        max_wait_s: float,
        backoff_min_s: float,
        backoff_max_s: float,
        rng: random.Random,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"rest_attempts must be >= 1, got {attempts}")
        self.url = url.rstrip("/")
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.max_wait_s = max_wait_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._rng = rng
        self.budget = WeightBudget(weight_budget_per_min)
        self._blocked_until = 0.0  # loop time before which no REST call may be made (429/418)
        self._http: httpx.AsyncClient | None = None
        self.counts: dict[str, int] = dict.fromkeys(
            ("rest_requests", "rest_429", "rest_418", "rest_errors", "rest_wait_ms"), 0
        )

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """Hold one HTTP client (its connection pool) for the calls made inside."""
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s) as http:
            self._http = http
            try:
                yield
            finally:
                self._http = None

    def stats(self) -> dict[str, Any]:
        """``rest_requests`` (answered), ``rest_429``, ``rest_418``, ``rest_errors`` (network, 5xx, bad
        bodies), ``rest_wait_ms`` (time waited on Retry-After and the budget), ``rest_weight_used``
        (last minute)."""
        return {**self.counts, "rest_weight_used": self.budget.used(loop_time())}

    async def fetch_trades(self, req: BackfillRequest) -> list[RawTrade]:
        """One historicalTrades page for ``req``, honouring the weight budget, Retry-After and bans.

        Raises :class:`BackfillFailed` with the gap reason when the page cannot be had.
        """
        assert self._http is not None
        params = {"symbol": req.symbol, "fromId": str(req.from_id), "limit": str(req.limit)}
        attempts = 0
        waited = 0.0
        while True:
            waited += await self._wait_for_weight(HISTORICAL_TRADES_WEIGHT)
            try:
                resp = await self._http.get(HISTORICAL_TRADES_PATH, params=params)
            except httpx.HTTPError:
                failure = "rest_failed"
            else:
                self.counts["rest_requests"] += 1
                with contextlib.suppress(KeyError, ValueError):
                    self.budget.observe(loop_time(), int(resp.headers["X-MBX-USED-WEIGHT-1M"]))
                status = resp.status_code
                if status == 200:
                    try:
                        return parse_rest_trades(resp.content, req.symbol)
                    except ParseError:
                        failure = "rest_failed"
                elif status in (418, 429):
                    self.counts[f"rest_{status}"] += 1
                    wait = retry_after_s(resp.headers, BAN_DEFAULT_S if status == 418 else self.backoff_min_s)
                    self._blocked_until = max(self._blocked_until, loop_time() + wait)
                    if waited + wait > self.max_wait_s:
                        raise BackfillFailed("banned" if status == 418 else "rate_limited")
                    continue
                elif status >= 500:
                    failure = "rest_failed"
                else:
                    raise BackfillFailed(f"http_{status}")  # the venue refuses: retrying will not help
            self.counts["rest_errors"] += 1
            attempts += 1
            if attempts >= self.attempts:
                raise BackfillFailed(failure)
            await asyncio.sleep(backoff_delay(attempts, self.backoff_min_s, self.backoff_max_s, self._rng))

    async def _wait_for_weight(self, weight: int) -> float:
        """Sleep through any Retry-After block and until ``weight`` fits the budget; return seconds waited."""
        start = loop_time()
        while True:
            now = loop_time()
            if now < self._blocked_until:
                await asyncio.sleep(self._blocked_until - now)
                continue
            delay = self.budget.reserve(now, weight)
            if delay == 0.0:
                break
            await asyncio.sleep(delay)
        waited = loop_time() - start
        self.counts["rest_wait_ms"] += int(waited * 1000)
        return waited


def loop_time() -> float:
    # The event loop's clock (asyncio's default loop uses time.monotonic), readable outside the loop too.
    return time.monotonic()


async def reachable(rest_url: str, timeout: float = 3.0) -> bool:
    """Whether Binance REST at ``rest_url`` answers ``GET /api/v3/time`` with a server time within ``timeout`` s.

    For ``UNISTREAM_SOURCE=auto``: choose the live feed only when the venue can be reached.
    """
    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            resp = await http.get(rest_url.rstrip("/") + TIME_PATH)
        if resp.status_code != 200:
            return False
        parse_server_time(resp.content)
    except (httpx.HTTPError, ParseError):
        return False
    return True
