"""The running aggregator's bars equal an independent pandas computation over the same ticks, to the
last digit, for 1s, 1m, 1h and 1d, on more than a million trades (real Redis, a real process).

The ticks are generated with numpy from a seed: two symbols, prices on a 0.01 step, sizes with up
to 8 decimals, more than a day of event time starting shortly before a UTC midnight, quiet seconds
and quiet runs (one of exactly ``MAX_FILL_GAP_S`` seconds, filled; longer ones, skipped, one of them
over a whole hour and one over the next midnight) and bursts of thousands of trades in one second.
The source is REPLAY, so only event time closes bars: the last trade's 1s interval stays open, and
every earlier interval is final.

The reference knows each trade's exact decimals (price in cents, size in units of 1e-8), sums them
as integers (quote volume as Python ints: its sums outgrow 64 bits) and turns each sum into a float
by one correctly rounded integer division. Bars of every timeframe come straight from the trades
with pandas ``resample``; which intervals have a bar (filled flat bars, skipped runs, higher bars
closed by a later 1s bar) follows the rules of ``unistream_aggregator.core``'s docstring.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from unistream_common import codec, keys, quality
from unistream_common.packets import Bar, Tick, TickBatch
from unistream_tools.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.heavy, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
UNISTREAM = REPO / ".venv" / "bin" / "unistream"

SEED = 20_250_311
START_CENTS = {"ETHUSDT": 300_000, "BTCUSDT": 9_000_000}  # 3,000.00 and 90,000.00
MAX_FILL_GAP_S = 120
MIDNIGHT_MS = 1_710_028_800_000  # 2024-03-10 00:00:00 UTC
LEAD_S = 600  # seconds of history before that midnight
SECONDS = LEAD_S + 86_400 + 900  # the day after the midnight closes in full, then 15 minutes more
T0_MS = MIDNIGHT_MS - LEAD_S * 1_000
SPAN_MS = {"1s": 1_000, "1m": 60_000, "1h": 3_600_000, "1d": 86_400_000}
FREQ = {"1s": "1s", "1m": "1min", "1h": "1h", "1d": "1D"}
SCALE = 10**8  # sizes and prices in units of 1e-8
CENT_UNITS = 10**6  # one cent in units of 1e-8
BATCH_MAX = 1_000  # ticks per TickBatch entry

# Quiet runs placed on purpose (second offsets from T0, end exclusive), each between trades.
FILLED_RUN = (5_000, 5_000 + MAX_FILL_GAP_S)  # exactly the limit: filled, holds a whole minute
SKIPPED_RUN = (8_000, 8_000 + MAX_FILL_GAP_S + 1)  # one second over: skipped
HOUR_RUN = (LEAD_S + 8 * 3_600 - 700, LEAD_S + 9 * 3_600 + 500)  # hour 08:00 of the day: no 1s bar at all
MIDNIGHT_RUN = (LEAD_S + 86_400 - 200, LEAD_S + 86_400 + 300)  # over the second midnight: skipped
BURSTS = 14  # seconds with 2,000..6,000 trades


@dataclass(frozen=True)
class Trades:
    """One symbol's generated trades, in trade order, with their exact decimals."""

    symbol: str
    trade_id: np.ndarray  # int64, rising
    ts_ms: np.ndarray  # int64, event time
    cents: np.ndarray  # int64, price in units of 0.01
    size_units: np.ndarray  # int64, size in units of 1e-8
    buy: np.ndarray  # bool, the aggressor bought

    @property
    def price(self) -> np.ndarray:
        # An exact integer over 100, correctly rounded: the nearest double of the decimal price.
        return self.cents / 100

    @property
    def size(self) -> np.ndarray:
        return self.size_units / SCALE


def generate(symbol: str, rng: np.random.Generator) -> Trades:
    """Trades over SECONDS seconds from T0: quiet seconds and runs, bursts, a lone last trade."""
    counts = rng.poisson(8.0, SECONDS) + 1
    counts[rng.random(SECONDS) < 0.3] = 0  # scattered empty seconds: short filled runs
    for start in rng.integers(0, SECONDS - 200, 250):  # quiet spells of up to a minute and a half
        counts[start : start + rng.integers(2, 90)] = 0
    burst_at = rng.choice(SECONDS - 10, BURSTS, replace=False)
    counts[burst_at] = rng.integers(2_000, 6_001, BURSTS)
    for a, b in (FILLED_RUN, SKIPPED_RUN, HOUR_RUN, MIDNIGHT_RUN):
        counts[a:b] = 0
        counts[a - 1] = max(counts[a - 1], 1)  # the run starts and ends exactly where planned
        counts[b] = max(counts[b], 1)
    counts[0] = max(counts[0], 1)
    counts[-6:] = 0  # five filled seconds, then the last trade alone in the last second
    counts[-1] = 1
    n = int(counts.sum())
    second = np.repeat(np.arange(SECONDS, dtype=np.int64), counts)
    ts_ms = np.sort(T0_MS + second * 1_000 + rng.integers(0, 1_000, n))
    steps = rng.choice([-3, -2, -1, 0, 1, 2, 3], n, p=[0.05, 0.1, 0.2, 0.3, 0.2, 0.1, 0.05])
    cents = START_CENTS[symbol] + np.cumsum(steps)
    assert cents.min() > 0
    size_units = np.clip(np.rint(rng.lognormal(np.log(5e6), 2.2, n)), 1, 300 * SCALE).astype(np.int64)
    lots = rng.random(n) < 0.4  # many venues' lots: at most 4 decimals
    size_units[lots] = np.maximum(size_units[lots] // 10_000, 1) * 10_000
    trade_id = 7_000_000_000 + np.cumsum(rng.integers(1, 4, n))  # rising, with holes
    return Trades(symbol, trade_id, ts_ms, cents, size_units, rng.random(n) < 0.5)


def batches_of(trades: Trades, rng: np.random.Generator) -> list[TickBatch]:
    """TickBatch entries of 1..BATCH_MAX ticks that straddle bar boundaries; the last trade alone,
    so that the entries still pending at the end hold exactly the trades of the open bar."""
    rows = zip(
        trades.trade_id.tolist(),
        trades.price.tolist(),
        trades.size.tolist(),
        np.where(trades.buy, "BUY", "SELL").tolist(),
        trades.ts_ms.tolist(),
        trades.ts_ms.tolist(),
        strict=True,
    )
    ticks = [Tick(*row) for row in rows]
    out, i = [], 0
    while i < len(ticks) - 1:
        k = min(int(rng.integers(1, BATCH_MAX + 1)), len(ticks) - 1 - i)
        out.append(TickBatch(symbol=trades.symbol, source="REPLAY", ticks=ticks[i : i + k]))
        i += k
    out.append(TickBatch(symbol=trades.symbol, source="REPLAY", ticks=ticks[-1:]))
    return out


# --- the reference ----------------------------------------------------------------------------


Row = tuple[float, float, float, float, int, int, int, int, int]  # OHLC, count, volume, taker, quote, taker quote


def exact_bars(trades: Trades, timeframe: str) -> dict[int, Row]:
    """Per interval with trades, by open time (ms): OHLC, count and the exact integer sums.

    ``volume``, ``taker``, ``quote`` and ``taker quote`` (Python ints) in units of 1e-8.
    """
    index = pd.to_datetime(trades.ts_ms, unit="ms", utc=True)
    frame = pd.DataFrame(
        {"price": trades.price, "size_units": trades.size_units, "taker_units": trades.size_units * trades.buy},
        index=index,
    )
    r = frame.resample(FREQ[timeframe], closed="left", label="left")
    bars = pd.DataFrame(
        {
            "open": r["price"].first(),
            "high": r["price"].max(),
            "low": r["price"].min(),
            "close": r["price"].last(),
            "count": r["price"].count(),
            "volume": r["size_units"].sum(),
            "taker": r["taker_units"].sum(),
        }
    )
    bars = bars[bars["count"] > 0]
    assert bars["volume"].dtype == np.int64 and bars["taker"].dtype == np.int64
    # The int64 sums cannot have wrapped: no interval holds more than this.
    assert int(bars["count"].max()) * int(trades.size_units.max()) < 2**63
    # Each trade's notional as Binance reports it: price x size (Python ints, up to ~1e23 in units of
    # 1e-16) truncated to 8 decimals, summed per interval in trade order.
    quote_each = trades.cents.astype(object) * CENT_UNITS * trades.size_units.astype(object) // SCALE
    starts = np.concatenate(([0], np.cumsum(bars["count"].to_numpy())[:-1]))
    quote = np.add.reduceat(quote_each, starts).tolist()
    taker_quote = np.add.reduceat(quote_each * trades.buy.astype(object), starts).tolist()
    open_ms = bars.index.as_unit("ms").asi8.tolist()
    assert all(t % SPAN_MS[timeframe] == 0 for t in open_ms)
    columns = [bars[c].tolist() for c in ("open", "high", "low", "close", "count", "volume", "taker")]
    return dict(zip(open_ms, zip(*columns, quote, taker_quote, strict=True), strict=True))


def real_bar(symbol: str, timeframe: str, open_ms: int, row: Row) -> Bar:
    open_, high, low, close, count, volume, taker, quote, taker_quote = row
    return Bar(
        symbol=symbol,
        timeframe=timeframe,  # type: ignore[arg-type]
        open_time_ms=open_ms,
        close_time_ms=open_ms + SPAN_MS[timeframe],
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume / SCALE,  # int / int: the correctly rounded value of the exact decimal
        quote_volume=quote / SCALE,
        trade_count=count,
        vwap=min(max(quote / volume, low), high),  # truncated notionals can sum below size x low
        taker_buy_volume=taker / SCALE,
        taker_buy_quote_volume=taker_quote / SCALE,
        filled=False,
        source="REPLAY",
    )


def flat_bar(symbol: str, timeframe: str, open_ms: int, level: float) -> Bar:
    return Bar(
        symbol=symbol,
        timeframe=timeframe,  # type: ignore[arg-type]
        open_time_ms=open_ms,
        close_time_ms=open_ms + SPAN_MS[timeframe],
        open=level,
        high=level,
        low=level,
        close=level,
        volume=0.0,
        quote_volume=0.0,
        trade_count=0,
        vwap=level,
        taker_buy_volume=0.0,
        filled=True,
        source="REPLAY",
    )


@dataclass
class Reference:
    bars: dict[str, list[Bar]]  # timeframe -> final bars, oldest first
    ticks_in_bars: int
    filled: int
    skipped: int


def reference(trades: Trades) -> Reference:
    """Every bar the aggregator must have written for ``trades``, from the trades alone."""
    symbol = trades.symbol
    last_open = int(trades.ts_ms[-1]) // 1_000 * 1_000  # the open interval: never closes on REPLAY
    real = {tf: exact_bars(trades, tf) for tf in SPAN_MS}
    out: dict[str, list[Bar]] = {tf: [] for tf in SPAN_MS}
    filled = skipped = 0
    prev_open, prev_close = None, 0.0
    for open_ms, row in real["1s"].items():
        if prev_open is not None:
            # Empty seconds since the last trade are proven over by this one: filled, or skipped
            # when the run is longer than the limit. Nothing is filled before the first trade.
            empty = (open_ms - prev_open) // 1_000 - 1
            if empty > MAX_FILL_GAP_S:
                skipped += empty
            else:
                out["1s"].extend(flat_bar(symbol, "1s", prev_open + k * 1_000, prev_close) for k in range(1, empty + 1))
                filled += empty
        if open_ms == last_open:
            break
        out["1s"].append(real_bar(symbol, "1s", open_ms, row))
        prev_open, prev_close = open_ms, row[3]

    # A higher interval has a bar when one of its 1s bars exists, and it is final when its last
    # 1s bar exists or a 1s bar of a later interval does (its end passed inside a skipped run).
    last_1s = out["1s"][-1].open_time_ms
    for tf in ("1m", "1h", "1d"):
        span = SPAN_MS[tf]
        forming = last_1s - last_1s % span if (last_1s + 1_000) % span else None
        firsts: dict[int, Bar] = {}
        for bar in out["1s"]:
            firsts.setdefault(bar.open_time_ms - bar.open_time_ms % span, bar)
        for open_ms, first in firsts.items():
            if open_ms == forming:
                continue
            if open_ms in real[tf]:
                out[tf].append(real_bar(symbol, tf, open_ms, real[tf][open_ms]))
            else:  # only filled seconds: flat at their level
                out[tf].append(flat_bar(symbol, tf, open_ms, first.close))
    ticks_in_bars = sum(bar.trade_count for bar in out["1s"])
    assert ticks_in_bars == len(trades.ts_ms) - 1
    return Reference(out, ticks_in_bars, filled, skipped)


# --- the service --------------------------------------------------------------------------------


def write_entries(client: redis.Redis, batches: list[TickBatch]) -> None:
    pipe = client.pipeline(transaction=False)
    for i, batch in enumerate(batches):
        pipe.xadd(keys.ticks(batch.symbol), codec.encode(batch))
        if i % 200 == 199:
            pipe.execute()
    pipe.execute()


def written_bars(client: redis.Redis, symbol: str, timeframe: str) -> list[tuple[str, Bar]]:
    out: list[tuple[str, Bar]] = []
    start = "-"
    while True:
        rows = client.xrange(keys.bars(symbol, timeframe), min=start, max="+", count=20_000)
        for eid, fields in rows:
            bar = codec.decode(fields)
            assert isinstance(bar, Bar)
            out.append((eid.decode(), bar))
        if len(rows) < 20_000:
            return out
        start = "(" + rows[-1][0].decode()


def first_difference(symbol: str, timeframe: str, expected: list[Bar], got: list[Bar]) -> str:
    """The earliest interval where the bars differ, and how: a missing or extra bar, or each field
    that differs (expected, got)."""
    want_by_open = {bar.open_time_ms: bar for bar in expected}
    have_by_open = {bar.open_time_ms: bar for bar in got}
    for open_ms in sorted(want_by_open.keys() | have_by_open.keys()):
        want, have = want_by_open.get(open_ms), have_by_open.get(open_ms)
        where = f"{symbol} {timeframe} bar opening {open_ms}"
        if have is None:
            return f"{where}: expected {want}, none written"
        if want is None:
            return f"{where}: written {have}, none expected"
        if want != have:
            fields = [
                f"{name}: expected {getattr(want, name)!r}, got {getattr(have, name)!r}"
                for name in want.__struct_fields__
                if getattr(want, name) != getattr(have, name)
            ]
            return f"{where}: " + "; ".join(fields)
    return f"{symbol} {timeframe}: bars repeated or out of order ({len(expected)} expected, {len(got)} written)"


def is_done(client: redis.Redis, last_1s: dict[str, int]) -> bool:
    """Each symbol's 1s stream ends at its last final interval and only the open bar's entry is pending."""
    for symbol, open_ms in last_1s.items():
        top = client.xrevrange(keys.bars(symbol, "1s"), count=1)
        if not top or top[0][0] != f"{open_ms}-0".encode():
            return False
        if client.xpending(keys.ticks(symbol), keys.GROUP_AGGREGATOR)["pending"] != 1:
            return False
    return True


@pytest.mark.skipif(not UNISTREAM.exists(), reason="the unistream entry point is not installed in .venv")
def test_running_aggregator_bars_equal_an_exact_pandas_reference_on_a_million_trades_for_every_timeframe(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    rng = np.random.default_rng(SEED)
    trades = {symbol: generate(symbol, rng) for symbol in START_CENTS}
    assert sum(len(t.ts_ms) for t in trades.values()) >= 1_000_000
    batches = {symbol: batches_of(t, rng) for symbol, t in trades.items()}

    client = redis.Redis.from_url(redis_server.url)
    for symbol_batches in batches.values():
        write_entries(client, symbol_batches)
    env = {
        **os.environ,
        "UNISTREAM_REDIS_URL": redis_server.url,
        "UNISTREAM_HTTP_PORT": str(free_port()),
        "UNISTREAM_SYMBOLS": ",".join(START_CENTS),
        "UNISTREAM_CONSUMER_NAME": "aggregator-reference",
        "UNISTREAM_MAX_FILL_GAP_S": str(MAX_FILL_GAP_S),
        "UNISTREAM_BAR_RETENTION": "1000000",  # keep every 1s bar of the day and a bit (default: one day)
    }
    log = tmp_path / "aggregator.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([str(UNISTREAM), "aggregator"], env=env, stdout=fh, stderr=fh)
    try:
        # The reference is computed while the service works.
        refs = {symbol: reference(t) for symbol, t in trades.items()}
        last_1s = {symbol: ref.bars["1s"][-1].open_time_ms for symbol, ref in refs.items()}
        deadline = time.monotonic() + 180
        while not is_done(client, last_1s):
            assert proc.poll() is None, f"aggregator exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"bars incomplete after 180 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    for symbol, ref in refs.items():
        # The data holds the cases it was made for, so the comparison below covers them.
        assert ref.filled > 0 and ref.skipped > 0
        assert any(b.filled for b in ref.bars["1m"]), "no 1m bar made only of filled seconds"
        opens_1h = [b.open_time_ms for b in ref.bars["1h"]]
        assert any(b - a > 3_600_000 for a, b in itertools.pairwise(opens_1h)), "no hour without bars"
        assert [b.open_time_ms for b in ref.bars["1d"]] == [MIDNIGHT_MS - 86_400_000, MIDNIGHT_MS]
        assert max(b.trade_count for b in ref.bars["1s"]) >= 2_000

        for tf in SPAN_MS:
            rows = written_bars(client, symbol, tf)
            got = [bar for _, bar in rows]
            expected = ref.bars[tf]
            assert got == expected, first_difference(symbol, tf, expected, got)
            assert [eid for eid, _ in rows] == [f"{bar.open_time_ms}-0" for bar in expected]

        counters = quality.parse(client.hgetall(keys.quality(symbol)))
        assert counters["ticks_applied"] == ref.ticks_in_bars
        assert counters["bars_1s"] == len(ref.bars["1s"])
        assert counters["bars_filled"] == ref.filled
        assert counters["intervals_skipped"] == ref.skipped
        for name in ("ticks_late", "ticks_duplicate", "ticks_already_applied", "bars_incomplete"):
            assert counters[name] == 0, name
        assert not client.exists(keys.dlq(keys.ticks(symbol)))
    client.close()
