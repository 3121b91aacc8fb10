"""Aggregator rows of ``make bench`` (imported by ``bench/run.py``; see its docstring for the rows).

Both rows run ``unistream aggregator`` as its own process (``python -m unistream_tools.cli
aggregator``, as the integration tests do) against the harness's Redis, on two symbols:

- throughput: the tick streams are filled first (REPLAY source, TickBatch entries of ``--batch``
  ticks, ~35 trades/s of event time per symbol), then the aggregator starts and the clock runs
  from its first lease round (the heartbeat it writes in ``md:agg:members`` just before it takes
  the symbols, read back as its own wall-clock time) until the ``ticks_applied`` counters of
  ``md:quality:{SYMBOL}`` add up to every tick that can be counted. Interpreter start-up,
  imports and connecting are therefore excluded. The first non-zero ``ticks_applied`` would not
  do as the start: one read delivers up to 500 entries per stream, so at the default size the
  counters go from 0 to their total in one commit. /readyz would start the clock late: the
  worker starts from the app's lifespan, before uvicorn listens, and /readyz first answered 200
  ~10 ms after that lease round (~4% of a 200,000-tick run) when this was written.
- latency: a writer task adds SYNTHETIC TickBatches stamped with the wall clock (~200 trades/s
  per symbol, written every ~2 ms; live ingest waits 1 ms), and a blocking XREAD on another
  connection timestamps each 1s bar as it arrives on ``md:bars:{SYMBOL}:1s``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import clients
import numpy as np
import redis.asyncio as aioredis

from unistream_aggregator.settings import AggregatorSettings
from unistream_common import codec, keys
from unistream_common.leases import symbols_fingerprint
from unistream_common.packets import Bar, Tick, TickBatch
from unistream_tools.redis_server import free_port

T0 = 1_760_000_000_000
SYMBOLS = ("ETHUSDT", "BTCUSDT")
BASE_CENTS = {"ETHUSDT": 300_000, "BTCUSDT": 6_000_000}
REPLAY_GAP_MS = 28.0  # mean time between trades of one symbol in the pre-filled data (~35/s)
LIVE_RATE_PER_S = 200.0  # trades per second per symbol of the live-like writer
QUIET_RATE_PER_S = 0.5  # a quiet market: most 1s bars (and every filled one) are closed by the timer
LIVE_WRITE_EVERY_S = 0.002
LIVE_SECONDS = 9.0  # writer run per measured latency run; the first second is warm-up
CONSUMER = "bench-aggregator"
OWNER_TTL_MS = 5_000
GRACE_MS: int = AggregatorSettings.model_fields["grace_ms"].default
LATENCY_SLACK_MS = 20  # the goal: a 1s bar readable within grace + this after its end


@dataclass(frozen=True)
class ReplayData:
    """The pre-filled ticks: entries per symbol, the same ticks as arrays, and what gets counted."""

    batches: dict[str, list[TickBatch]]
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # ts_event_ms, price, size
    countable: int  # ticks in the 1s bars the aggregator emits by the end (counted as ticks_applied)


_REPLAY: dict[tuple[int, int], ReplayData] = {}


def replay_data(n: int, batch: int) -> ReplayData:
    """``n`` trades over :data:`SYMBOLS` (seeded, cached per size) in TickBatch entries of ``batch``.

    ``ticks_applied`` counts the trades of emitted 1s bars: at the end of the data, every trade
    but those of each symbol's last second (its bar stays open: REPLAY closes on event time).
    """
    key = (n, batch)
    if key in _REPLAY:
        return _REPLAY[key]
    rng = np.random.default_rng(7)
    batches: dict[str, list[TickBatch]] = {}
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    countable = 0
    for k, symbol in enumerate(SYMBOLS):
        count = n // len(SYMBOLS) + (1 if k < n % len(SYMBOLS) else 0)
        ts = T0 + np.cumsum(rng.exponential(REPLAY_GAP_MS, count)).astype(np.int64)
        cents = BASE_CENTS[symbol] + np.cumsum(rng.integers(-1, 2, count))
        lots = rng.integers(1, 14, count)  # sizes of 0.001 .. 0.013
        sides = rng.random(count) < 0.5
        ticks = [
            Tick(1 + i, c / 100, q / 1000, "BUY" if b else "SELL", t, t + 1)
            for i, (t, c, q, b) in enumerate(zip(ts.tolist(), cents.tolist(), lots.tolist(), sides.tolist()))
        ]
        batches[symbol] = [TickBatch(symbol, "REPLAY", ticks[i : i + batch]) for i in range(0, count, batch)]
        arrays[symbol] = (ts, cents / 100, lots / 1000)
        last_second = int(ts[-1]) // 1000
        first_of_last = int(np.searchsorted(ts // 1000, last_second))
        countable += first_of_last
    _REPLAY[key] = data = ReplayData(batches, arrays, countable)
    return data


def _aggregator_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    env.update({
        "UNISTREAM_REDIS_URL": url, "UNISTREAM_HTTP_PORT": str(free_port()), "UNISTREAM_SYMBOLS": ",".join(SYMBOLS),
        "UNISTREAM_CONSUMER_NAME": CONSUMER, "UNISTREAM_OWNER_TTL_MS": str(OWNER_TTL_MS),
        "UNISTREAM_GRACE_MS": str(GRACE_MS), "UNISTREAM_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    return env


class _Aggregator:
    """``unistream aggregator`` as a process, output to a temporary log; stopped on the way out."""

    def __init__(self, url: str) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="unistream-bench-aggregator-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unistream_tools.cli", "aggregator"],
            env=_aggregator_env(url), stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def check(self, what: str, deadline: float) -> None:
        """RuntimeError (the row is skipped) when the process died or ``deadline`` passed."""
        if self.proc.poll() is not None:
            tail = Path(self.log.name).read_text(errors="replace")[-1500:]
            raise RuntimeError(f"aggregator exited {self.proc.returncode} before {what}: {tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"aggregator: no {what} in time")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc)
        self.log.close()


async def _fill(client: aioredis.Redis, data: ReplayData) -> None:
    pipe = client.pipeline(transaction=False)
    for symbol, entries in data.batches.items():
        for entry in entries:
            pipe.xadd(keys.ticks(symbol), codec.encode(entry))
            if len(pipe) >= 50:
                await pipe.execute()
    await pipe.execute()


async def aggregator_ticks_per_s(url: str, n: int, batch: int) -> float:
    data = replay_data(n, batch)
    if not data.countable:
        raise RuntimeError(f"--ticks {n:,} leaves no entry to count: each symbol needs more than one --batch")
    client = clients.client(url)
    await client.flushall()
    await _fill(client, data)
    quality_keys = [keys.quality(symbol) for symbol in SYMBOLS]
    start_s = end_s = None
    applied = 0
    try:
        with _Aggregator(url) as agg:
            deadline = time.monotonic() + 60 + n / 20_000
            while True:
                pipe = client.pipeline(transaction=False)
                pipe.zscore(keys.AGGREGATOR_MEMBERS, f"{CONSUMER}|{symbols_fingerprint(SYMBOLS)}")
                for key in quality_keys:
                    pipe.hget(key, "ticks_applied")
                heartbeat, *counts = await pipe.execute()
                now = time.time()
                if start_s is None and heartbeat is not None:
                    start_s = (heartbeat - OWNER_TTL_MS) / 1000  # the aggregator's clock at its first lease round
                applied = sum(int(c or 0) for c in counts)
                if applied >= data.countable:
                    end_s = now
                    break
                agg.check(f"{data.countable:,} ticks applied (at {applied:,})", deadline)
                await asyncio.sleep(0.002)
    finally:
        await client.aclose()
    if applied != data.countable or start_s is None or end_s is None:
        raise RuntimeError(f"ticks_applied reached {applied:,}, expected {data.countable:,}")
    return data.countable / (end_s - start_s)


def _resample(pd: Any, ts: np.ndarray, price: np.ndarray, size: np.ndarray) -> None:
    frame = pd.DataFrame({"price": price, "size": size}, index=pd.to_datetime(ts, unit="ms"))
    for rule in ("1s", "1min", "1h", "1D"):
        frame.resample(rule).agg({"price": ["first", "max", "min", "last", "count"], "size": "sum"})


async def pandas_resample_ticks_per_s(url: str, n: int, batch: int) -> float:
    try:
        import pandas as pd  # in .venv through the dashboard's streamlit, not a dependency of its own
    except ImportError as exc:
        raise RuntimeError("pandas not installed") from exc
    data = replay_data(n, batch)
    start = time.perf_counter()
    for ts, price, size in data.arrays.values():
        _resample(pd, ts, price, size)
    return n / (time.perf_counter() - start)


# --- live bar latency -----------------------------------------------------------------------

_LATENCY_CACHE: dict[str, list[float]] = {}


async def _write_live(client: aioredis.Redis, seconds: float, rate: float) -> tuple[int, int]:
    """Trades stamped with the wall clock for ``seconds``; returns (first, last) write time, ms."""
    rng = np.random.default_rng(11)
    next_id = dict.fromkeys(SYMBOLS, 1)
    cents = {symbol: BASE_CENTS[symbol] for symbol in SYMBOLS}
    first_ms = int(time.time() * 1000)
    last = time.monotonic()
    end = last + seconds
    now_ms = first_ms
    while last < end:
        await asyncio.sleep(LIVE_WRITE_EVERY_S)
        mono = time.monotonic()
        now_ms = int(time.time() * 1000)
        pipe = client.pipeline(transaction=False)
        for symbol in SYMBOLS:
            k = int(rng.poisson(rate * (mono - last)))
            if not k:
                continue
            ticks = []
            for _ in range(k):
                cents[symbol] += int(rng.integers(-1, 2))
                side = "BUY" if rng.random() < 0.5 else "SELL"
                ticks.append(Tick(next_id[symbol], cents[symbol] / 100, 0.001 * int(rng.integers(1, 14)), side,
                                  now_ms, now_ms))  # fmt: skip
                next_id[symbol] += 1
            pipe.xadd(keys.ticks(symbol), codec.encode(TickBatch(symbol, "SYNTHETIC", ticks)))
        last = mono
        if len(pipe):
            await pipe.execute()
    return first_ms, now_ms


async def _bar_latencies(url: str, seconds: float = LIVE_SECONDS, rate: float = LIVE_RATE_PER_S) -> list[float]:
    """ms from each 1s bar's end until a blocked XREAD on its bar stream returns it, one run.

    At ``rate`` trades/s a bar closes on the next trade (event time), so the wait for that trade
    is part of each sample (at 200/s: 5 ms on average, over 20 ms for 2% of bars); the timer
    path (end + grace, quiet markets) is reached only by a bar with no trade after it. Bars of
    the writer's first (partial) second, and bars ending within 100 ms of the writer stopping
    (no trade may follow them), are left out.
    """
    client = aioredis.Redis.from_url(url)
    reader = aioredis.Redis.from_url(url, socket_timeout=None)
    await client.flushall()
    seen: list[tuple[Bar, float]] = []
    stop = asyncio.Event()

    async def read() -> None:
        last = {keys.bars(symbol, "1s"): "0-0" for symbol in SYMBOLS}
        while not stop.is_set():
            reply = await reader.xread(last, block=200)
            now_ms = time.time() * 1000
            for stream, entries in reply or []:
                for eid, fields in entries:
                    last[stream.decode()] = eid
                    bar = codec.decode(fields)
                    if isinstance(bar, Bar):
                        seen.append((bar, now_ms))

    try:
        with _Aggregator(url) as agg:
            deadline = time.monotonic() + 60
            owners = [keys.agg_owner(symbol) for symbol in SYMBOLS]
            while await client.exists(*owners) < len(owners):  # it owns the symbols: it reads their streams
                agg.check("lease on the symbols", deadline)
                await asyncio.sleep(0.05)
            reading = asyncio.create_task(read())
            first_ms, stop_ms = await _write_live(client, seconds, rate)
            await asyncio.sleep((GRACE_MS + 200) / 1000)  # a bar that ended just before: closed by the timer
            agg.check("end of the run", deadline + seconds)
            stop.set()
            await reading
    finally:
        await reader.aclose()
        await client.aclose()
    warm_up_end = first_ms - first_ms % 1000 + 1000
    out = [
        recv_ms - bar.close_time_ms
        for bar, recv_ms in seen
        if bar.open_time_ms >= warm_up_end and bar.close_time_ms <= stop_ms - 100
    ]
    if not out:
        raise RuntimeError("no 1s bars arrived")
    return out


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM ``proc``, SIGKILL it after ``timeout_s``; shared by the bench modules."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank, no interpolation); shared by bench/run.py."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bar_latency_goal_ms(url: str, n: int, batch: int) -> float:
    return float(GRACE_MS + LATENCY_SLACK_MS)


async def bar_latency_p50_ms(url: str, n: int, batch: int) -> float:
    _LATENCY_CACHE["busy"] = await _bar_latencies(url)
    return percentile(_LATENCY_CACHE["busy"], 0.50)


async def bar_latency_p99_ms(url: str, n: int, batch: int) -> float:
    values = _LATENCY_CACHE.pop("busy", None) or await _bar_latencies(url)
    return percentile(values, 0.99)


async def bar_latency_quiet_p50_ms(url: str, n: int, batch: int) -> float:
    _LATENCY_CACHE["quiet"] = await _bar_latencies(url, rate=QUIET_RATE_PER_S)
    return percentile(_LATENCY_CACHE["quiet"], 0.50)


async def bar_latency_quiet_p99_ms(url: str, n: int, batch: int) -> float:
    values = _LATENCY_CACHE.pop("quiet", None) or await _bar_latencies(url, rate=QUIET_RATE_PER_S)
    return percentile(values, 0.99)
