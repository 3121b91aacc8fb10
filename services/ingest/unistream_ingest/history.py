"""Warm-up history: closed 1s, 1m, 1h and 1d bars from before the system started, per symbol.

The features service needs a few hundred bars of each timeframe before its windows are full.
Ingest provides them once at start, from the same source as its ticks:

- ``binance``: the venue's klines (``GET /api/v3/klines``), source ``REAL``;
- ``replay``: bars built from the replay files themselves with the bar core
  (:mod:`unistream_common.bars`, the aggregator's arithmetic: the aggregator makes the same bars
  of the same trades; 1s and 1m from the trades, in one read of the files; 1h and 1d rolled up
  from the minutes), source ``REPLAY``. They cover only the
  files' span, and it is the same span the replay then plays as ticks: the history is not
  "before" the replayed trades but beside them (a consumer that trains on the replay sees those
  bars twice, once as history and once rebuilt live by the aggregator);
- ``synthetic``: the simulator's own past, a seeded bar-level process that ends at the price the
  simulated market starts from, source ``SYNTHETIC``.

Where it goes: ``md:history:{SYMBOL}:TF`` (:func:`unistream_common.keys.history`), never
``md:bars:*``, which the aggregator owns: a history bar and a live bar of the same interval would
want the same entry id. Every entry is a :class:`~unistream_common.packets.Bar` with
``is_history=True`` under the id ``<open_time_ms>-0``, oldest first, closed bars only. Writing the
same history twice is therefore a no-op: Redis refuses an explicit id at or below the stream's top,
and that refusal is counted as "already written". A restart appends only the bars closed since.

Failure policy: history is an aid, not a requirement. A failure (venue unreachable, rate limited,
malformed response, unreadable file, Redis error) is logged and counted, and the service runs on
without it; consumers must cope with a short or empty history stream.

The builders (:func:`bars_from_klines`, :func:`bars_from_trades`, :func:`synthetic_history`) are
pure: time comes in as an argument. Only :func:`fetch_kline_history`, :func:`publish_history` and
:func:`provide_history` do I/O. Times are integer ms since the epoch (UTC).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Literal

import httpx
import msgspec
import numpy as np
import redis.asyncio as aioredis

from unistream_common import codec, keys
from unistream_common.bars import SECOND_MS, BarAccumulator, roll_up, sum_trades
from unistream_common.packets import Bar, Source
from unistream_common.redisio import REDIS_ERRORS, is_id_too_small
from unistream_common.stats import Stats
from unistream_ingest.archive import TradeColumns, read_columns_in_time_order
from unistream_ingest.binance.parsing import KLINES_PATH, Kline, parse_rest_klines, retry_after_s
from unistream_ingest.settings import IngestSettings
from unistream_ingest.synthetic import (
    GARCH_ALPHA,
    GARCH_BETA,
    GARCH_OMEGA,
    HAWKES_BRANCHING,
    SECONDS_PER_YEAR,
    SIDE_SHOCK_K,
    SIZE_LOG_SD,
    T_DF,
    spec_for,
)
from unistream_ingest.venue import ParseError, RawTrade

log = logging.getLogger(__name__)

MAX_KLINES_LIMIT = 1_000  # Binance's largest ``limit`` for /api/v3/klines
# Klines asked for beyond count + 1, one per interval of this: a fetch made up to this long after
# ``now_ms`` (a 429 waited out, several symbols in turn) still ends at ``now_ms`` with ``count`` bars.
# 60 more rows for 1s, 1 for 1m, none for 1h and 1d (the request's weight does not depend on ``limit``).
LATE_FETCH_MS = 60_000
HTTP_TIMEOUT_S = 10.0
RETRY_AFTER_DEFAULT_S = 1.0  # a 429 without Retry-After (Binance always sends one)
MAX_RETRY_WAIT_S = 30.0  # a longer Retry-After is not worth holding start-up for
_BAR_DECODER = msgspec.msgpack.Decoder(Bar)


class HistoryError(RuntimeError):
    """History could not be had from its source; the message says which and why."""


def _span_ms(timeframe: str) -> int:
    if timeframe not in keys.TIMEFRAMES:
        raise ValueError(f"{timeframe!r} is not a history timeframe; use one of {', '.join(keys.TIMEFRAMES)}")
    return keys.TIMEFRAME_MS[timeframe]


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


# --- exchange klines -----------------------------------------------------------------------------


def bars_from_klines(
    klines: Iterable[Kline],
    symbol: str,
    timeframe: str,
    source: Source = "REAL",
    now_ms: int | None = None,
) -> list[Bar]:
    """Binance klines -> history bars, oldest first, one per open time.

    Binance's close time is the last millisecond inside the candle (open + span - 1); a
    :class:`Bar` closes at open + span (left-closed interval), so ``close_time_ms`` is recomputed
    and a kline whose close time is not open + span - 1 is refused (it is not a ``timeframe``
    kline). With ``now_ms`` given, klines whose interval has not ended by then (open + span >
    ``now_ms``) are left out: only closed bars are history.

    - ``vwap`` = quote volume / volume, kept within [low, high] against rounding; the close when
      the volume is 0.
    - ``taker_buy_volume`` = the kline's taker buy base volume (base asset).
    - A kline with no trades becomes a filled bar: open = high = low = close = the kline's close
      (Binance fills an empty kline at the previous close; making it exactly flat means a roll-up
      that ignores filled bars loses nothing) and volumes 0. Such a kline with a volume is refused.

    Raises :class:`HistoryError` for a kline that cannot be a valid bar (the whole response is one
    unit: refetch rather than keep a part).
    """
    span = _span_ms(timeframe)
    keys.check_symbol(symbol)
    by_open: dict[int, Bar] = {}
    for k in klines:
        if k.close_time_ms != k.open_time_ms + span - 1:
            raise HistoryError(
                f"{symbol} kline opening at {k.open_time_ms} closes at {k.close_time_ms}, "
                f"not open + {span} - 1 ms: it is not a {timeframe} kline"
            )
        close_ms = k.open_time_ms + span
        if now_ms is not None and close_ms > now_ms:
            continue
        if k.trade_count == 0:
            if k.volume:
                raise HistoryError(f"{symbol} kline opening at {k.open_time_ms} had volume {k.volume} but no trades")
            o = h = lo = c = vwap = k.close
            volume = quote_volume = taker = taker_quote = 0.0
            filled = True
        else:
            o, h, lo, c = k.open, k.high, k.low, k.close
            volume, quote_volume = k.volume, k.quote_volume
            vwap = _clamp(quote_volume / volume, lo, h) if volume > 0 else c
            taker = min(k.taker_buy_base, volume)  # float noise must not break taker <= volume
            taker_quote = min(k.taker_buy_quote, quote_volume)
            filled = False
        try:
            bar = Bar(
                symbol=symbol, timeframe=timeframe, open_time_ms=k.open_time_ms, close_time_ms=close_ms,  # type: ignore[arg-type]
                open=o, high=h, low=lo, close=c, volume=volume, quote_volume=quote_volume,
                trade_count=k.trade_count, vwap=vwap, taker_buy_volume=taker, filled=filled, source=source,
                is_history=True, taker_buy_quote_volume=taker_quote,
            )  # fmt: skip
            # Constructors check only __post_init__; decoding also checks the field constraints
            # (prices > 0, volumes >= 0) that every consumer will apply.
            _BAR_DECODER.decode(msgspec.msgpack.encode(bar))
        except (ValueError, msgspec.ValidationError) as exc:
            raise HistoryError(f"{symbol} kline opening at {k.open_time_ms} is not a valid bar: {exc}") from None
        by_open[k.open_time_ms] = bar
    return [by_open[t] for t in sorted(by_open)]


async def fetch_kline_history(
    rest_url: str,
    symbol: str,
    timeframe: str,
    count: int = 300,
    http: httpx.AsyncClient | None = None,
    *,
    now_ms: int | None = None,
    max_retry_wait_s: float = MAX_RETRY_WAIT_S,
) -> list[Bar]:
    """The last ``count`` closed ``timeframe`` bars of ``symbol`` from Binance REST (source REAL).

    Asks ``GET {rest_url}/api/v3/klines?symbol=&interval=&limit=`` for count + 1 rows, plus one
    per interval of :data:`LATE_FETCH_MS` (60 for 1s, 1 for 1m), at most 1,000 (so at most 999
    bars), and drops the last row: without ``endTime`` Binance always ends with the interval still
    open. Rows whose interval has not ended by ``now_ms`` (default: the wall clock) are dropped too,
    in case the clocks disagree or the fetch is late (1s intervals end while it waits); of the
    rest, the last ``count`` are kept. ``http`` is reused when given (its timeouts apply), else a
    client with a 10 s timeout is made and closed.

    A 429 is honoured once: wait its Retry-After (seconds; at most ``max_retry_wait_s``) and ask
    again. Raises :class:`HistoryError` on anything else: no answer, a 418 ban, another HTTP
    status, a second 429, a malformed body or kline.
    """
    span = _span_ms(timeframe)
    keys.check_symbol(symbol)
    if count <= 0:
        return []
    url = rest_url.rstrip("/") + KLINES_PATH
    limit = min(count + 1 + LATE_FETCH_MS // span, MAX_KLINES_LIMIT)
    params = {"symbol": symbol, "interval": timeframe, "limit": str(limit)}
    what = f"{symbol} {timeframe} klines from {url}"
    client = http if http is not None else httpx.AsyncClient(timeout=HTTP_TIMEOUT_S)
    try:
        for attempt in (1, 2):
            try:
                resp = await client.get(url, params=params)
            except httpx.HTTPError as exc:
                raise HistoryError(f"{what}: no answer ({type(exc).__name__}: {exc})") from None
            if resp.status_code != 429 or attempt == 2:
                break
            wait = retry_after_s(resp.headers, RETRY_AFTER_DEFAULT_S)
            if wait > max_retry_wait_s:
                raise HistoryError(f"{what}: rate limited (429) with Retry-After {wait:g} s; not waiting that long")
            log.info("%s: rate limited (429); asking again in %g s as Retry-After says", what, wait)
            await asyncio.sleep(wait)
    finally:
        if http is None:
            await client.aclose()
    status = resp.status_code
    if status == 418:
        raise HistoryError(
            f"{what}: this IP is banned (418) for {retry_after_s(resp.headers, RETRY_AFTER_DEFAULT_S):g} s"
        )
    if status != 200:
        extra = " again after waiting Retry-After" if status == 429 else ""
        raise HistoryError(f"{what}: HTTP {status}{extra}: {resp.text[:200]}")
    try:
        klines = parse_rest_klines(resp.content, symbol, timeframe)
    except ParseError as exc:
        raise HistoryError(f"{what}: malformed response ({exc})") from None
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    bars = bars_from_klines(klines[:-1], symbol, timeframe, "REAL", now_ms=now)
    return bars[-count:]


# --- replay files --------------------------------------------------------------------------------


ROWS_PER_CHUNK = 8_192  # rows per chunk of RawTrade input (the files come in their own blocks of ~8,000)
_HIGHER_FROM_MINUTES = ("1h", "1d")  # rolled up from the closed minutes; 1s and 1m are summed from the trades


def _trade_chunks(trades: Iterable[RawTrade]) -> Iterator[TradeColumns]:
    """Trades as column chunks, at most :data:`ROWS_PER_CHUNK` rows to a chunk."""
    it = iter(trades)
    while rows := list(islice(it, ROWS_PER_CHUNK)):
        chunk = TradeColumns()
        chunk.trade_id = [t.trade_id for t in rows]
        chunk.price = [t.price for t in rows]
        chunk.size = [t.size for t in rows]
        chunk.buyer_is_maker = [t.buyer_is_maker for t in rows]
        chunk.ts_event_ms = [t.ts_event_ms for t in rows]
        chunk.count = [t.count for t in rows]
        yield chunk


class _Series:
    """Closed bars of one timeframe, oldest first, the intervals between them filled with flat bars
    at the last close; with ``keep``, only the last ``keep`` (a run of empty intervals longer than
    that is filled only in its last ``keep``)."""

    __slots__ = ("bars", "keep", "last", "span")

    def __init__(self, span_ms: int, keep: int | None) -> None:
        self.span, self.keep = span_ms, keep
        self.bars: deque[BarAccumulator] = deque(maxlen=keep)
        self.last: BarAccumulator | None = None  # the newest bar, kept or not: where filling starts

    def copy(self) -> _Series:
        other = _Series(self.span, self.keep)
        other.bars = self.bars.copy()
        other.last = self.last
        return other

    def add(self, bar: BarAccumulator, partial: bool = False) -> None:
        """Append ``bar`` after filling the intervals before it; a ``partial`` bar (the trades start
        inside it) is left out, but the empty intervals after it are filled at its close."""
        self.fill_to(bar.open_ms)
        if not partial:
            self.bars.append(bar)
        self.last = bar

    def fill_to(self, stop_ms: int) -> None:
        """Flat bars for the empty intervals after the last bar that open before ``stop_ms`` (aligned)."""
        last = self.last
        if last is None:
            return
        first = last.open_ms + self.span
        if self.keep is not None:
            first = max(first, stop_ms - self.keep * self.span)
        flats = [BarAccumulator.flat(t, last.close, last.source) for t in range(first, stop_ms, self.span)]
        if flats:
            self.bars.extend(flats)
            self.last = flats[-1]


class _ReplayBars:
    """Closed 1s, 1m, 1h and 1d bars from time-ordered trade columns, fed a chunk at a time.

    Chunks, so that one read of the replay files feeds every timeframe. The bars are the bar core's
    (:mod:`unistream_common.bars`), made as the aggregator makes them: 1s and 1m bars summed from
    the trades in one vectorised step per chunk (:func:`~unistream_common.bars.sum_trades`; a 1m
    bar of the trades is the roll-up of their 1s bars: sums are exact), 1h and 1d rolled up from
    the closed minutes (:func:`~unistream_common.bars.roll_up`). The conventions are
    :func:`bars_from_trades`'. With ``keep``, only the last ``keep`` bars of each timeframe are held
    and made (a day of 1s bars is 86,400; history wants a few hundred).
    """

    def __init__(self, symbol: str, source: Source, keep: int | None = None) -> None:
        if keep is not None and keep <= 0:
            raise ValueError(f"keep must be positive or None, not {keep}")
        self.symbol, self.source, self.keep = symbol, source, keep
        self._series = {tf: _Series(keys.TIMEFRAME_MS[tf], keep) for tf in keys.TIMEFRAMES}
        self._open: dict[str, BarAccumulator] = {}  # the 1s and the 1m bar holding the newest trade
        self._forming: dict[str, BarAccumulator] = {}  # 1h and 1d bars rolled up from the closed minutes so far
        self._first_minute_ms = -1  # open of the first minute: a longer bar opening before it is partial

    def feed(self, chunk: TradeColumns) -> None:
        """Take the next trades (time ordered, after those fed before)."""
        ts = np.asarray(chunk.ts_event_ms, np.int64)
        price = np.asarray(chunk.price, np.float64)
        size = np.asarray(chunk.size, np.float64)
        # The replay's validator rejects these too; a bar must not rest on them.
        valid = (price > 0) & (size > 0)
        second = ts - ts % SECOND_MS
        newest = self._open["1s"].open_ms if "1s" in self._open else -1
        # Late: a trade of an earlier second than a trade before it, dropped as the aggregator drops it.
        reached = np.maximum(np.maximum.accumulate(np.where(valid, second, -1)), newest)
        keep = valid & (second >= reached)
        bought = ~np.asarray(chunk.buyer_is_maker, bool)  # Binance m=false: the taker bought
        count = np.asarray(chunk.count, np.int64)
        if not keep.all():
            ts, price, size, bought, count = ts[keep], price[keep], size[keep], bought[keep], count[keep]
        for tf in ("1s", "1m"):
            # The last keep + 1 seconds hold every 1s bar that can be kept: older ones are summed only
            # to be dropped. Minutes are all summed: the hours and days are made of them.
            last = self.keep + 1 if tf == "1s" and self.keep is not None else None
            parts = sum_trades(ts, price, size, bought, keys.TIMEFRAME_MS[tf], self.source, count, last)
            if not parts:
                continue
            if self._first_minute_ms < 0 and tf == "1m":
                self._first_minute_ms = parts[0].open_ms
            current = self._open.get(tf)
            if current is not None and parts[0].open_ms == current.open_ms:
                current.add_bar(parts.pop(0))  # the chunk goes on with the bar the last one ended in
            if parts:
                if current is not None:
                    self._close(tf, current)
                for part in parts[:-1]:
                    self._close(tf, part)
                self._open[tf] = parts[-1]

    def _close(self, timeframe: str, bar: BarAccumulator) -> None:
        self._series[timeframe].add(bar)
        if timeframe == "1m":
            for tf, done in roll_up(self._forming, bar, "1m", _HIGHER_FROM_MINUTES):
                self._close_higher(tf, done)

    def _close_higher(self, timeframe: str, bar: BarAccumulator) -> None:
        # A bar opening before the first trade's minute is partial (the trades start inside it).
        self._series[timeframe].add(bar, partial=bar.open_ms < self._first_minute_ms)

    def _copy(self) -> _ReplayBars:
        other = _ReplayBars(self.symbol, self.source, self.keep)
        other._series = {tf: s.copy() for tf, s in self._series.items()}
        other._open = {tf: msgspec.structs.replace(b) for tf, b in self._open.items()}
        other._forming = {tf: msgspec.structs.replace(b) for tf, b in self._forming.items()}
        other._first_minute_ms = self._first_minute_ms
        return other

    def finish(self, end_ms: int | None) -> dict[str, list[Bar]]:
        """The closed bars of every timeframe, oldest first (the builder can go on being fed).

        Without ``end_ms``, the bars up to the second holding the last trade, which is left out;
        with it, the trades are complete up to then and every bar closing by ``end_ms`` is kept
        (see :func:`bars_from_trades`).
        """
        if "1s" not in self._open:
            return {tf: [] for tf in keys.TIMEFRAMES}
        done = self._copy()
        stop = done._open["1s"].open_ms  # the last trade's second proves every earlier interval over
        if end_ms is not None:
            stop = max(stop, end_ms)
            for tf in ("1s", "1m"):
                bar = done._open[tf]
                if bar.open_ms + keys.TIMEFRAME_MS[tf] <= end_ms:
                    done._close(tf, bar)
        for tf in _HIGHER_FROM_MINUTES:
            bar = done._forming.get(tf)
            if bar is not None and bar.open_ms + keys.TIMEFRAME_MS[tf] <= stop:  # its last minutes had no trades
                done._close_higher(tf, bar)
        out: dict[str, list[Bar]] = {}
        for tf, series in done._series.items():
            series.fill_to(stop - stop % series.span)
            out[tf] = [b.to_bar(self.symbol, tf, is_history=True) for b in series.bars]
        return out


def bars_from_trades(
    trades: Iterable[RawTrade],
    symbol: str,
    timeframe: str,
    source: Source = "REPLAY",
    end_ms: int | None = None,
) -> list[Bar]:
    """Archive trades (time ordered, one symbol) -> closed ``timeframe`` bars, oldest first.

    The bars are the bar core's (:mod:`unistream_common.bars`): the aggregator's bars of the same
    trades. Left-closed UTC-aligned intervals [open, open + span); within the trades' span an
    interval without trades is a filled bar at the last close, so the series is regular. The bar
    holding the last trade is dropped (the data may stop inside it) unless ``end_ms`` says the
    trades are complete up to then: then every bar closing at or before ``end_ms`` is kept, empty
    intervals after the last trade included. 1h and 1d bars are rolled up from the 1m bars, and
    exist only for intervals the trades cover in full (from the first trade's minute on).

    Trades with a non-positive price or size, and trades of an earlier second than a trade before
    them (late), are skipped. ``trade_count`` sums each trade's ``count`` (aggTrades stand for
    several); ``taker_buy_volume`` sums the sizes where the buyer was the taker (``buyer_is_maker``
    false); quote volumes sum each trade's notional as Binance reports it (price x size truncated
    to 8 decimals).
    """
    _span_ms(timeframe)
    keys.check_symbol(symbol)
    builder = _ReplayBars(symbol, source)
    for chunk in _trade_chunks(trades):
        builder.feed(chunk)
    return builder.finish(end_ms)[timeframe]


# --- the simulator's past ------------------------------------------------------------------------

_VOLUME_NOISE_SD = 0.25  # log-normal spread of a bar's volume around its expectation
_RANGE_SCALE = 0.5  # how far high/low reach beyond open/close, in the bar's return sd


def synthetic_history(
    symbol: str,
    seed: int,
    end_ms: int,
    timeframe: str,
    count: int = 300,
    end_price: float | None = None,
) -> list[Bar]:
    """The simulator's own past: ``count`` closed ``timeframe`` bars ending at ``end_price``.

    The last bar closes at ``end_ms`` rounded down to the timeframe (so every bar is closed by
    ``end_ms``), and its close is ``end_price`` (default: the symbol's simulator start price,
    :func:`~unistream_ingest.synthetic.spec_for`): the simulated market starting at ``end_ms`` from that
    price continues the history without a jump. Bars are oldest first, ``source="SYNTHETIC"``.

    The process is bar-level, with the simulator's parameters: log returns with a GARCH(1,1)
    variance (volatility clustering) and Student-t shocks (fat tails), scaled so that the
    symbol's annual volatility holds at every timeframe. High and low reach beyond open and close
    by a random share of the bar's sd; prices are multiples of the tick size. Trade counts follow
    the simulator's mean trade rate (higher in volatile bars), volume = trades x mean notional /
    price, and the taker-buy share leans with the bar's return, as the simulator's order flow does.

    Deterministic: seeded by (``seed``, ``symbol``, ``timeframe``, the last close time). Each
    timeframe is its own path: 1m bars do not roll up exactly into the 1h bars.
    """
    span = _span_ms(timeframe)
    keys.check_symbol(symbol)
    spec = spec_for(symbol)
    price = spec.start_price if end_price is None else float(end_price)
    if not price > 0:
        raise ValueError(f"end price of {symbol} was not positive ({price})")
    last_close = end_ms - end_ms % span
    count = min(count, last_close // span - 1)  # the first bar must open after the epoch (id 0-0 is refused)
    if count <= 0:
        return []
    rng = np.random.default_rng([seed % 2**64, zlib.crc32(symbol.encode()), span, last_close])
    bar_s = span / 1000
    sigma = spec.annual_vol * math.sqrt(bar_s / SECONDS_PER_YEAR)

    shocks = rng.standard_t(T_DF, count) * math.sqrt((T_DF - 2.0) / T_DF)  # unit variance
    h = np.empty(count)
    var = 1.0
    for i in range(count):
        h[i] = var
        var = GARCH_OMEGA + GARCH_ALPHA * shocks[i] ** 2 * var + GARCH_BETA * var
    sd = sigma * np.sqrt(h)
    returns = sd * shocks
    # Close i = end price / exp(returns after bar i): the path is anchored at its end.
    after = np.concatenate((np.cumsum(returns[::-1])[::-1][1:], [0.0]))
    closes = price * np.exp(-after)
    opens = np.concatenate(([closes[0] * math.exp(-returns[0])], closes[:-1]))
    up = np.abs(rng.standard_normal(count)) * _RANGE_SCALE * sd
    down = np.abs(rng.standard_normal(count)) * _RANGE_SCALE * sd

    tick = spec.tick_size
    decimals = max(0, -math.floor(math.log10(tick) + 1e-9))

    def on_tick(x: float) -> float:
        return round(max(round(x / tick), 1) * tick, decimals)

    rate = spec.base_rate / (1.0 - HAWKES_BRANCHING)  # trades/s including self-excitation
    mean_notional = spec.median_notional * math.exp(SIZE_LOG_SD**2 / 2)
    activity = np.sqrt(h) * np.exp(rng.normal(-(_VOLUME_NOISE_SD**2) / 2, _VOLUME_NOISE_SD, count))
    # A simulated market always trades: at least one trade per bar keeps every bar unfilled.
    counts = np.maximum(rng.poisson(rate * bar_s * activity), 1)
    buy_share = 1.0 / (1.0 + np.exp(-SIDE_SHOCK_K * shocks))

    out: list[Bar] = []
    first_open = last_close - count * span
    for i in range(count):
        o, c = on_tick(float(opens[i])), on_tick(float(closes[i]))
        if i == count - 1:
            c = price  # exactly where the simulated market starts, even off the tick grid
        hi = max(on_tick(max(o, c) * math.exp(float(up[i]))), o, c)
        lo = min(on_tick(min(o, c) * math.exp(-float(down[i]))), o, c)
        vwap = (o + hi + lo + c) / 4
        volume = float(counts[i]) * mean_notional / vwap
        out.append(
            Bar(
                symbol=symbol, timeframe=timeframe, open_time_ms=first_open + i * span,  # type: ignore[arg-type]
                close_time_ms=first_open + (i + 1) * span, open=o, high=hi, low=lo, close=c, volume=volume,
                quote_volume=volume * vwap, trade_count=int(counts[i]), vwap=vwap,
                taker_buy_volume=volume * float(buy_share[i]), filled=False, source="SYNTHETIC", is_history=True,
            )
        )  # fmt: skip
    return out


# --- Redis ---------------------------------------------------------------------------------------


async def publish_history(
    redis: aioredis.Redis,
    bars_by_stream: Mapping[str, Sequence[Bar]],
    maxlen: int,
    *,
    duplicates: dict[str, int] | None = None,
) -> dict[str, int]:
    """Write history bars with explicit ids ``<open_time_ms>-0``; return how many were new per stream.

    Each stream must be a history stream (``md:history:{SYMBOL}:TF``; anything else, ``md:bars:*``
    above all, is refused with ValueError) and its bars that symbol's and timeframe's, with
    ``is_history`` set and distinct open times. They are written oldest first in one
    (non-transactional) pipeline per stream with ``MAXLEN ~ maxlen``. A bar whose id is at or below
    the stream's top is already written (or older than what the stream holds: history only grows
    forward): Redis refuses it, and it is counted in ``duplicates`` (filled in per stream when
    given) instead. Any other refusal raises :class:`HistoryError` after the stream's other bars
    were tried; Redis connection errors propagate.
    """
    written: dict[str, int] = {}
    for stream, bars in bars_by_stream.items():
        parsed = keys.parse_history(stream)
        if parsed is None:
            raise ValueError(
                f"{stream!r} is not a history stream (md:history:{{SYMBOL}}:TF); history never goes elsewhere"
            )
        symbol, timeframe = parsed
        ordered = sorted(bars, key=lambda b: b.open_time_ms)
        for prev, bar in zip([None, *ordered], ordered):
            if bar.symbol != symbol or bar.timeframe != timeframe:
                raise ValueError(f"a {bar.bar_type} bar does not belong in {stream}")
            if not bar.is_history:
                raise ValueError(f"a bar opening at {bar.open_time_ms} for {stream} is not marked is_history")
            if prev is not None and prev.open_time_ms == bar.open_time_ms:
                raise ValueError(f"two bars for {stream} open at {bar.open_time_ms}")
        new = dup = 0
        failure: BaseException | None = None
        if ordered:
            pipe = redis.pipeline(transaction=False)
            for bar in ordered:
                pipe.xadd(stream, codec.encode(bar), id=f"{bar.open_time_ms}-0", maxlen=maxlen, approximate=True)
            for reply in await pipe.execute(raise_on_error=False):
                if not isinstance(reply, BaseException):
                    new += 1
                elif is_id_too_small(reply):
                    dup += 1
                else:
                    failure = reply
        written[stream] = new
        if duplicates is not None:
            duplicates[stream] = dup
        if failure is not None:
            raise HistoryError(f"{stream}: Redis refused a history bar ({failure})")
    return written


SourceKind = Literal["binance", "replay", "synthetic"]


def _replay_history(chunks: Callable[[], Iterable[TradeColumns]], symbol: str, count: int) -> dict[str, list[Bar]]:
    """The last ``count`` bars of every timeframe from one read of the trades (``chunks()``)."""
    builder = _ReplayBars(symbol, "REPLAY", keep=count)
    for chunk in chunks():
        builder.feed(chunk)
    return builder.finish(None)


async def provide_history(
    settings: IngestSettings,
    redis: aioredis.Redis,
    *,
    source_kind: SourceKind,
    now_ms: int,
    start_prices: Mapping[str, float] | None = None,
    replay_trades_factory: Callable[[], Iterable[RawTrade]] | None = None,
    http: httpx.AsyncClient | None = None,
    stats: Stats | None = None,
) -> dict[str, int]:
    """Build ``settings.history_bars`` closed 1s, 1m, 1h and 1d bars per symbol and publish them.

    The one call the service makes at start, before or beside its tick source (it does not touch
    the tick streams). Per ``source_kind``:

    - ``binance``: klines from ``settings.binance_rest_url`` for every configured symbol (``http``
      reused when given), closed by ``now_ms``;
    - ``replay``: bars of the replay files for ``settings.replay_target`` only (the other symbols
      come from other producers). ``replay_trades_factory()`` returns the trades, time ordered;
      default: ``settings.replay_paths`` read and merged as the replay reads them. The files are
      read in a worker thread (millions of trades take seconds) and the bar holding the last trade
      is left out;
    - ``synthetic``: :func:`synthetic_history` for every symbol with ``settings.seed``, ending at
      ``now_ms`` (pass the simulated market's ``start_ms``) and at ``start_prices[symbol]`` (pass the
      prices the market starts from; default the simulator's start price).

    Returns the bars newly written per history stream. Never raises for a source or Redis failure:
    each is logged and counted (``ingest_history_failures`` by symbol and timeframe, when ``stats``
    is given) and that stream is left as it was; the system runs without history.
    ``settings.history_bars == 0`` writes nothing.
    """
    count = settings.history_bars
    if count <= 0:
        log.info("warm-up history disabled (UNISTREAM_HISTORY_BARS=0)")
        return {}
    symbols = [settings.replay_target] if source_kind == "replay" else list(settings.symbols)
    if stats is not None:
        stats.describe("ingest_history_bars_written", "warm-up history bars newly written to md:history:{SYMBOL}:TF")
        stats.describe("ingest_history_bars_already_written", "warm-up history bars the stream already held")
        stats.describe("ingest_history_failures", "history streams left unwritten (source or Redis failed; logged)")
    built: dict[tuple[str, str], list[Bar]] = {}

    def failed(symbol: str, timeframes: Iterable[str], why: str) -> None:
        log.warning("%s: no warm-up history for %s (%s); running without it", symbol, ",".join(timeframes), why)
        if stats is not None:
            for tf in timeframes:
                stats.inc("ingest_history_failures", symbol=symbol, timeframe=tf)

    if source_kind == "binance":
        client = http if http is not None else httpx.AsyncClient(timeout=HTTP_TIMEOUT_S)
        try:
            for symbol in symbols:
                for tf in keys.TIMEFRAMES:
                    try:
                        built[(symbol, tf)] = await fetch_kline_history(
                            settings.binance_rest_url, symbol, tf, count, client, now_ms=now_ms
                        )
                    except HistoryError as exc:
                        failed(symbol, [tf], str(exc))
        finally:
            if http is None:
                await client.aclose()
    elif source_kind == "replay":
        symbol = symbols[0]
        paths = settings.replay_paths

        def factory() -> Iterable[TradeColumns]:
            if replay_trades_factory is not None:
                return _trade_chunks(replay_trades_factory())
            return read_columns_in_time_order(paths)  # merged as the replay reads them

        try:
            by_tf = await asyncio.to_thread(_replay_history, factory, symbol, count)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            failed(symbol, keys.TIMEFRAMES, f"replay files unreadable: {type(exc).__name__}: {exc}")
        else:
            built.update(((symbol, tf), bars) for tf, bars in by_tf.items())
    elif source_kind == "synthetic":
        prices = start_prices or {}
        for symbol in symbols:
            for tf in keys.TIMEFRAMES:
                try:
                    built[(symbol, tf)] = synthetic_history(
                        symbol, settings.seed, now_ms, tf, count, prices.get(symbol)
                    )
                except ValueError as exc:  # a start price that is not positive
                    failed(symbol, [tf], str(exc))
    else:
        raise ValueError(f"{source_kind!r} is not a history source; use binance, replay or synthetic")

    written: dict[str, int] = {}
    for (symbol, tf), bars in built.items():
        stream = keys.history(symbol, tf)
        dups: dict[str, int] = {}
        try:
            written.update(await publish_history(redis, {stream: bars}, settings.history_maxlen, duplicates=dups))
        except (*REDIS_ERRORS, HistoryError) as exc:
            failed(symbol, [tf], f"writing {stream} failed: {type(exc).__name__}: {exc}")
            continue
        if stats is not None:
            stats.inc("ingest_history_bars_written", written[stream], symbol=symbol, timeframe=tf)
            stats.inc("ingest_history_bars_already_written", dups.get(stream, 0), symbol=symbol, timeframe=tf)
        log.info(
            "%s: %d history bars built from %s, %d new, %d already there%s", stream, len(bars), source_kind,
            written[stream], dups.get(stream, 0), "" if len(bars) >= count else f" (fewer than the {count} asked for)",
        )  # fmt: skip
    return written
