"""Features rows of ``make bench`` (imported by ``bench/run.py``; see its docstring for the rows).

The system under test is ``unistream features`` as its own process (``python -m
unistream_tools.cli features``, what the supervisor and the integration tests start), default
settings (two symbols, 300-bar windows, 1s/1m/1h/1d, torch on one thread), against the harness's
Redis. The inputs are what ingest and the aggregator would write, SYNTHETIC and seeded:

- history: :data:`HISTORY_BARS` closed bars of every timeframe on ``md:history:{SYMBOL}:TF``,
  the newest closing at :data:`T0` (05:00 UTC), so every window is warm from the first packet;
- live seconds from :data:`T0` on: per symbol one TickBatch of ~:data:`TRADES_PER_S` trades on
  ``md:ticks:{SYMBOL}``, then, in one MULTI per symbol (the aggregator commits per hash slot),
  the 1s bar under ``<open_time_ms>-0`` and, at a minute's (hour's) end, the 1m (1h) bar with it.
  Each 1s bar counts its trades, so the engine knows its trades are in when the batch is.

Scenarios (each a fresh process, its start-up never timed):

- latency: history and :data:`WARM_SECONDS` live seconds are written first and the service
  catches up on them (its tick cache is then as full as in production), then live seconds are
  written at :data:`LIVE_PACE_S` of wall time per second (10x real time, both symbols, trades
  then bars) for :data:`LATENCY_SECONDS` seconds. A blocking XREAD on the training streams on its own
  connection timestamps every training packet; latency = that time minus the time the EXEC of
  the packet's 1s bar returned (``time.perf_counter`` on both sides, one process).
- catch-up: history and :data:`CATCHUP_SECONDS` live seconds are written, then the service
  starts; packets/s = packets over the time from the first packet's ``ts_emit_ms`` (the service's
  clock as its first batch is processed: import, rewind and history load excluded) until XLEN of
  the training streams count them all (polled every 5 ms).
- memory: history and :data:`WARM_SECONDS` seconds, caught up, then VmRSS of the process
  (``/proc/<pid>/status``) is the start; one simulated hour (:data:`HOUR_SECONDS` seconds of both
  symbols, crossing 06:00 so a 1h bar is in it) is then written as fast as Redis takes it (the
  service paces its own reads), VmRSS sampled every 10 simulated minutes, the last after every
  packet of the hour is out.

The latency rows run with the default ``UNISTREAM_SYMBOL_SYNC_MS`` (a state waits for its inputs
on other streams: deterministic packets); ``features_bar_to_packet_no_wait_p50_ms``/``_p99_ms``
are the same with the wait off (``0``, the default before), what determinism costs beside.

References, measured in the same runs: ``redis_xadd_roundtrip_p50_ms`` (one XADD of a 54 KB
entry, a training packet's size, until a blocked XREAD on another connection returns it: the
floor under the latency) and ``features_engine_packets_per_s`` (the pure ``FeatureEngine`` of
the service's default settings in this process, torch on one thread, fed the catch-up's bars and
trades as objects, one second at a time: no Redis, no codec, no asyncio).

Every scenario checks what came out: one training packet per live 1s bar and symbol, no
duplicate, none missing (the latency and catch-up runs read every packet back; the hour, which
``UNISTREAM_TRAINING_MAXLEN`` trims, counts ``entries-added`` and looks at the newest packets).
A failed check raises RuntimeError: the row is skipped and says why.
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
from aggregator import percentile, stop_process  # the shared helpers (bench/ is on sys.path, as for run.py)

from unistream_common import codec, keys
from unistream_common.bars import BarAccumulator, roll_up
from unistream_common.packets import Bar, Tick, TickBatch, TrainingDataPacket
from unistream_common.redisio import is_cluster
from unistream_tools.redis_server import free_port

SYMBOLS = ("ETHUSDT", "BTCUSDT")
BASE_CENTS = {"ETHUSDT": 300_000, "BTCUSDT": 6_000_000}
DAY_MS = 86_400_000
T0 = 1_760_000_000_000 - 1_760_000_000_000 % DAY_MS + 5 * 3_600_000  # 05:00 UTC: whole hours/days behind
SPAN = keys.TIMEFRAME_MS
HISTORY_BARS = 310  # per timeframe: the 300-bar window plus one, and some
TRADES_PER_S = 20.0  # mean trades per second per symbol (Poisson)
WARM_SECONDS = 300  # live seconds before a measurement: the 300 s tick horizon is full
LATENCY_SECONDS = 105  # live seconds per latency run: 210 bars over the two symbols
LATENCY_SKIP = 5  # the first live seconds of a run are left out (the writer's first lap)
LIVE_PACE_S = 0.1  # wall time per live second: 10x real time
CATCHUP_SECONDS = 1_800  # 30 min of both symbols: 3,600 packets
HOUR_SECONDS = 3_600
RSS_SAMPLE_EVERY_S = 600  # simulated seconds between RSS samples during the hour
TOTAL_SECONDS = WARM_SECONDS + max(HOUR_SECONDS, CATCHUP_SECONDS, LATENCY_SECONDS)
ROUNDTRIP_ENTRY_BYTES = 54_000  # a training packet's size
CONSUMER = "bench-features"

# Goals, by row: (comparison, value).
GOALS: dict[str, tuple[str, float]] = {
    "features_bar_to_packet_p99_ms": ("<", 20.0),
    "features_catchup_packets_per_s": (">=", 500.0),
    "features_rss_growth_pct": ("<", 10.0),
}
# Runs per row at most, whatever --repeat says (one features run takes ~50 s of a 2-core machine).
MAX_RUNS: dict[str, int] = dict.fromkeys(
    (
        "redis_xadd_roundtrip_p50_ms", "features_bar_to_packet_p50_ms", "features_bar_to_packet_p99_ms",
        "features_bar_to_packet_no_wait_p50_ms", "features_bar_to_packet_no_wait_p99_ms",
        "features_engine_packets_per_s", "features_catchup_packets_per_s", "features_rss_mb_start",
        "features_rss_mb_after_hour", "features_rss_growth_pct",
    ),
    3,
)  # fmt: skip
# Notes a run leaves on a row (the RSS samples), newest run last; bench/run.py prints them.
NOTES: dict[str, list[str]] = {}

Entry = tuple[str, dict[bytes, bytes], str]  # stream, fields, entry id ("*": Redis picks)


# --- the data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Second:
    """One live second of one symbol: its trades and the bars that close at its end (1s first)."""

    symbol: str
    index: int  # seconds since T0
    ticks: TickBatch
    bars: tuple[Bar, ...]
    tick_entry: Entry
    bar_entries: tuple[Entry, ...]

    @property
    def close_ms(self) -> int:
        return T0 + 1000 * (self.index + 1)


@dataclass(frozen=True)
class Data:
    history: list[Entry]
    history_bars: list[Bar]
    seconds: list[list[Second]]  # [second][symbol]


def _bar(symbol: str, tf: str, open_ms: int, o: float, h: float, lo: float, c: float, vol: float, qv: float,
         n: int, buy: float, history: bool = False) -> Bar:  # fmt: skip
    return Bar(
        symbol, tf, open_ms, open_ms + SPAN[tf], o, max(h, o, c), min(lo, o, c), c, vol, qv,  # type: ignore[arg-type]
        n, qv / vol if vol else c, min(buy, vol), n == 0, "SYNTHETIC", is_history=history,
    )  # fmt: skip


def _history(rng: np.random.Generator) -> tuple[list[Entry], list[Bar]]:
    entries: list[Entry] = []
    bars: list[Bar] = []
    for symbol in SYMBOLS:
        for tf in keys.TIMEFRAMES:
            step = {"1s": 2e-5, "1m": 2e-4, "1h": 2e-3, "1d": 1e-2}[tf]
            close = BASE_CENTS[symbol] / 100
            end = T0 - T0 % SPAN[tf]  # the 1d history ends at midnight: today is still open
            for k in range(HISTORY_BARS, 0, -1):
                o = close
                close = o * float(np.exp(rng.normal(0, step)))
                h = max(o, close) * (1 + abs(float(rng.normal(0, step / 2))))
                lo = min(o, close) * (1 - abs(float(rng.normal(0, step / 2))))
                vol = float(rng.uniform(0.5, 2.0)) * SPAN[tf] / 1000 * 0.02
                b = _bar(symbol, tf, end - k * SPAN[tf], o, h, lo, close, vol, vol * close, 10, vol / 2, history=True)
                bars.append(b)
                entries.append((keys.history(symbol, tf), codec.encode(b), f"{b.open_time_ms}-0"))
    return entries, bars


def _live(rng: np.random.Generator, n: int) -> list[list[Second]]:
    out: list[list[Second]] = [[] for _ in range(n)]
    for symbol in SYMBOLS:
        cents = BASE_CENTS[symbol]
        trade_id = 1
        forming: dict[str, BarAccumulator] = {}  # the 1m and 1h bars so far, as the aggregator rolls them up
        for i in range(n):
            start = T0 + 1000 * i
            k = max(1, int(rng.poisson(TRADES_PER_S)))
            offsets = np.sort(rng.integers(0, 1000, k)).tolist()
            steps = rng.integers(-2, 3, k).tolist()
            lots = rng.integers(1, 40, k).tolist()
            buys = (rng.random(k) < 0.5).tolist()
            ticks = []
            for off, st, lot, buy in zip(offsets, steps, lots, buys):
                cents += st
                ticks.append(Tick(trade_id, cents / 100, lot / 1000, "BUY" if buy else "SELL",
                                  start + off, start + off + 1))  # fmt: skip
                trade_id += 1
            second = BarAccumulator.opening(start, ticks[0].price, "SYNTHETIC")
            for t in ticks:
                second.add_trade(t.price, t.size, t.aggressor_side == "BUY")
            bars = [second.to_bar(symbol, "1s")]
            bars.extend(acc.to_bar(symbol, tf) for tf, acc in roll_up(forming, second))
            batch = TickBatch(symbol, "SYNTHETIC", ticks)
            bar_entries = tuple((keys.bars(symbol, b.timeframe), codec.encode(b), f"{b.open_time_ms}-0") for b in bars)
            tick_entry = (keys.ticks(symbol), codec.encode(batch), "*")
            out[i].append(Second(symbol, i, batch, tuple(bars), tick_entry, bar_entries))
    return out


_DATA: list[Data] = []


def data() -> Data:
    """History and :data:`TOTAL_SECONDS` live seconds of both symbols (seeded, built once, encoded)."""
    if not _DATA:
        rng = np.random.default_rng(5)
        history, history_bars = _history(rng)
        _DATA.append(Data(history, history_bars, _live(rng, TOTAL_SECONDS)))
    return _DATA[0]


async def _write(client: aioredis.Redis, entries: list[Entry], per_round: int = 200) -> None:
    pipe = client.pipeline(transaction=False)
    for stream, fields, entry_id in entries:
        pipe.xadd(stream, fields, id=entry_id)
        if len(pipe) >= per_round:
            await pipe.execute()
    await pipe.execute()


def _second_entries(seconds: list[list[Second]]) -> list[Entry]:
    """The entries of ``seconds`` in the order a live system writes them."""
    out: list[Entry] = []
    for per_symbol in seconds:
        out.extend(x.tick_entry for x in per_symbol)
        for x in per_symbol:
            out.extend(x.bar_entries)
    return out


# --- the service as a process ---------------------------------------------------------------


def _features_env(url: str, model_dir: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    env.update({
        "UNISTREAM_REDIS_URL": url, "UNISTREAM_HTTP_PORT": str(free_port()), "UNISTREAM_SYMBOLS": ",".join(SYMBOLS),
        "UNISTREAM_CONSUMER_NAME": CONSUMER, "UNISTREAM_MODEL_DIR": model_dir, "UNISTREAM_LOG_LEVEL": "WARNING",
        **(extra or {}),
    })  # fmt: skip
    return env


class _Features:
    """``unistream features`` as a process, output to a temporary log; stopped on the way out."""

    def __init__(self, url: str, extra_env: dict[str, str] | None = None) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="unistream-bench-features-")
        self.log = Path(self.dir.name) / "features.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "unistream_tools.cli", "features"],
                env=_features_env(url, self.dir.name, extra_env), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def check(self, what: str, deadline: float) -> None:
        """RuntimeError (the row is skipped) when the process died or ``deadline`` passed."""
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"features exited {self.proc.returncode} before {what}: {tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"features: no {what} in time")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS for the features process")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc)
        log = self.log.read_text(errors="replace")
        self.dir.cleanup()
        if "Traceback" in log:
            print(f"features log:\n{log[-3000:]}", file=sys.stderr)


TRAINING = [keys.training(s) for s in SYMBOLS]


async def _packets_added(client: aioredis.Redis) -> int:
    """Training packets ever added to the symbols' training streams (trimming does not lower it)."""
    added = 0
    for stream in TRAINING:
        try:
            added += int((await client.xinfo_stream(stream))["entries-added"])
        except aioredis.ResponseError:
            pass  # not created yet
    return added


async def _wait_packets(client: aioredis.Redis, proc: _Features, n: int, timeout_s: float) -> float:
    """Wait until ``n`` training packets were added; the wall time (s) it was seen at."""
    deadline = time.monotonic() + timeout_s
    while (added := await _packets_added(client)) < n:
        proc.check(f"{n:,} training packets (at {added:,})", deadline)
        await asyncio.sleep(0.02)
    return time.time()


async def _check_packets(client: aioredis.Redis, seconds: range, added: int) -> list[TrainingDataPacket]:
    """One packet per symbol and live second in ``seconds`` on the training streams (all retained), no more.

    Returns the packets (read in pages, oldest first).
    """
    await asyncio.sleep(0.3)  # would a duplicate follow?
    expected = {(s, T0 + 1000 * (i + 1)) for s in SYMBOLS for i in seconds}
    total = await _packets_added(client)
    packets: list[TrainingDataPacket] = []
    for stream in TRAINING:
        lower = "-"
        while entries := await client.xrange(stream, lower, "+", count=500):
            packets.extend(p for _, fields in entries if isinstance(p := codec.decode(fields), TrainingDataPacket))
            lower = "(" + entries[-1][0].decode()
    packets.sort(key=lambda p: (p.ts_emit_ms, p.ts_event_ms))
    got = [(p.symbol, p.ts_event_ms) for p in packets]
    if total != added or len(got) != len(set(got)) or set(got) != expected:
        missing = sorted(expected - set(got))[:5]
        extra = sorted(set(got) - expected)[:5]
        raise RuntimeError(
            f"training packets: {total:,} added, {added:,} expected; missing {missing}, unexpected {extra}, "
            f"{len(got) - len(set(got))} duplicates"
        )
    return packets


def _batches(packets: list[TrainingDataPacket]) -> list[int]:
    """Packets per processing batch (those built at one ``ts_emit_ms``), in order."""
    sizes: dict[int, int] = {}
    for p in packets:
        sizes[p.ts_emit_ms] = sizes.get(p.ts_emit_ms, 0) + 1
    return list(sizes.values())


# --- latency --------------------------------------------------------------------------------

_CACHE: dict[str, Any] = {}


async def bar_to_packet_latencies(url: str, extra_env: dict[str, str] | None = None) -> tuple[list[float], str]:
    """Latencies (ms) of the measured live bars of one run, and a note on them (see the module docstring)."""
    d = data()
    client = clients.client(url)
    reader = clients.reader(url)
    await client.flushall()
    written: dict[tuple[str, int], float] = {}
    received: dict[tuple[str, int], float] = {}
    stop = asyncio.Event()

    async def read(last: dict[str, Any]) -> None:
        while not stop.is_set():
            reply = await reader.xread(last, block=200)
            now = time.perf_counter()
            for stream, entries in reply or []:
                for eid, fields in entries:
                    last[stream.decode()] = eid
                    p = codec.decode(fields)
                    if isinstance(p, TrainingDataPacket):
                        received.setdefault((p.symbol, p.ts_event_ms), now)

    try:
        await _write(client, d.history)
        await _write(client, _second_entries(d.seconds[:WARM_SECONDS]))
        with _Features(url, extra_env) as proc:
            await _wait_packets(client, proc, 2 * WARM_SECONDS, 120)
            last = {stream: (await client.xrevrange(stream, count=1) or [(b"0-0", None)])[0][0] for stream in TRAINING}
            readers = [  # one blocking read per hash slot on a cluster
                asyncio.create_task(read({s: last[s] for s in group})) for group in clients.read_groups(url, TRAINING)
            ]
            await asyncio.sleep(0.05)
            lap = time.perf_counter()
            for per_symbol in d.seconds[WARM_SECONDS : WARM_SECONDS + LATENCY_SECONDS]:
                lap += LIVE_PACE_S
                await asyncio.sleep(max(0.0, lap - time.perf_counter()))
                pipe = client.pipeline(transaction=False)
                for x in per_symbol:
                    pipe.xadd(*x.tick_entry[:2])
                await pipe.execute()
                for x in per_symbol:
                    pipe = client.pipeline(transaction=True)
                    for stream, fields, entry_id in x.bar_entries:
                        pipe.xadd(stream, fields, id=entry_id)
                    await pipe.execute()
                    written[(x.symbol, x.close_ms)] = time.perf_counter()
            await _wait_packets(client, proc, 2 * (WARM_SECONDS + LATENCY_SECONDS), 30)
            await asyncio.sleep(0.2)
            stop.set()
            await asyncio.gather(*readers)
            packets = await _check_packets(
                client, range(WARM_SECONDS + LATENCY_SECONDS), 2 * (WARM_SECONDS + LATENCY_SECONDS)
            )
    finally:
        stop.set()
        await reader.aclose()
        await client.aclose()
    skip = T0 + 1000 * (WARM_SECONDS + LATENCY_SKIP)
    measured = [k for k in written if k[1] > skip]
    if any(k not in received for k in measured):
        raise RuntimeError("a live bar's training packet was not read")
    out = [(received[k] - written[k]) * 1000 for k in measured]
    # Were the two symbols of a second built together (one batch, one CNN pass), or one by one?
    emitted = {(p.symbol, p.ts_event_ms): p.ts_emit_ms for p in packets}
    seconds = {k[1] for k in measured}
    together = sum(len({emitted[(s, t)] for s in SYMBOLS}) == 1 for t in seconds)
    by_symbol = ", ".join(
        f"{s} p50 {percentile([v for k, v in zip(measured, out) if k[0] == s], 0.5):.1f}" for s in SYMBOLS
    )
    worst = ", ".join(f"{v:.1f}" for v in sorted(out)[-3:])
    note = (
        f"{len(out)} bars; {by_symbol} ms; slowest {worst} ms; "
        f"both symbols in one batch for {together}/{len(seconds)} seconds"
    )
    return out, note


async def features_bar_to_packet_p50_ms(url: str, n: int, batch: int) -> float:
    values, note = await bar_to_packet_latencies(url)
    _CACHE["latency"] = values
    suffix = "_cluster" if is_cluster(url) else ""  # the same row on a Redis Cluster (bench/run.py)
    NOTES.setdefault(f"features_bar_to_packet_p99_ms{suffix}", []).append(note)
    return percentile(values, 0.50)


async def features_bar_to_packet_p99_ms(url: str, n: int, batch: int) -> float:
    values = _CACHE.pop("latency", None) or (await bar_to_packet_latencies(url))[0]
    return percentile(values, 0.99)


NO_WAIT = {"UNISTREAM_SYMBOL_SYNC_MS": "0"}  # the default before training packets waited for their inputs


async def features_bar_to_packet_no_wait_p50_ms(url: str, n: int, batch: int) -> float:
    values, note = await bar_to_packet_latencies(url, NO_WAIT)
    _CACHE["latency_no_wait"] = values
    NOTES.setdefault("features_bar_to_packet_no_wait_p99_ms", []).append(note)
    return percentile(values, 0.50)


async def features_bar_to_packet_no_wait_p99_ms(url: str, n: int, batch: int) -> float:
    values = _CACHE.pop("latency_no_wait", None) or (await bar_to_packet_latencies(url, NO_WAIT))[0]
    return percentile(values, 0.99)


async def redis_xadd_roundtrip_p50_ms(url: str, n: int, batch: int) -> float:
    """XADD of a training-packet-sized entry until a blocked XREAD on another connection returns it."""
    writer = aioredis.Redis.from_url(url)
    reader = aioredis.Redis.from_url(url, socket_timeout=None)
    payload = {b"type": b"training", b"v": b"1", b"data": os.urandom(ROUNDTRIP_ENTRY_BYTES)}
    hops = []
    last = "$"
    for _ in range(500):
        read = asyncio.create_task(reader.xread({"bench:roundtrip": last}, block=1_000))
        await asyncio.sleep(0)
        sent = time.perf_counter()
        await writer.xadd("bench:roundtrip", payload, maxlen=100, approximate=True)
        reply = await read
        hops.append((time.perf_counter() - sent) * 1000)
        last = reply[0][1][-1][0] if reply else last
    await writer.aclose()
    await reader.aclose()
    return percentile(hops, 0.50)


# --- catch-up -------------------------------------------------------------------------------


async def features_catchup_packets_per_s(url: str, n: int, batch: int) -> float:
    d = data()
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    expected = 2 * CATCHUP_SECONDS
    try:
        await _write(client, d.history)
        await _write(client, _second_entries(d.seconds[:CATCHUP_SECONDS]))
        with _Features(url) as proc:
            deadline = time.monotonic() + 120
            while not await _packets_added(client):
                proc.check("a training packet", deadline)
                await asyncio.sleep(0.005)
            first = min(
                (codec.decode(entries[0][1]) for s in TRAINING if (entries := await client.xrange(s, count=1))),
                key=lambda p: p.ts_emit_ms,
            )
            while (count := await _packets_added(client)) < expected:
                proc.check(f"{expected:,} training packets (at {count:,})", deadline + expected / 100)
                await asyncio.sleep(0.005)
            end_s = time.time()
            batches = _batches(await _check_packets(client, range(CATCHUP_SECONDS), expected))
    finally:
        await client.aclose()
    NOTES.setdefault("features_catchup_packets_per_s", []).append(
        f"{len(batches)} batches (one MULTI each) of {', '.join(map(str, batches[:8]))}"
        f"{', ...' if len(batches) > 8 else ''} packets"
    )
    return expected / (end_s - first.ts_emit_ms / 1000)


def _engine_run(profile: bool = False) -> float:
    """The pure FeatureEngine on the catch-up's inputs: packets/s (history loaded before the clock)."""
    import torch

    from unistream_features.core import FeatureConfig, FeatureEngine
    from unistream_features.settings import FeaturesSettings

    torch.set_num_threads(1)  # as the service runs it
    d = data()
    defaults = {name: f.default for name, f in FeaturesSettings.model_fields.items()}
    engine = FeatureEngine(
        FeatureConfig(
            symbols=SYMBOLS, window_bars=defaults["window_bars"], bar_capacity=defaults["bar_cache_size"],
            tick_capacity=defaults["tick_cache_size"], tick_max_age_ms=1000 * defaults["tick_cache_s"],
            tick_wait_ms=defaults["tick_wait_ms"], ui_max_per_s=defaults["ui_max_per_s"],
        ),
        seed=defaults["seed"], now_ms=int(time.time() * 1000),
    )  # fmt: skip
    engine.rebuild(d.history_bars, [], {}, int(time.time() * 1000))
    packets = 0
    start = time.perf_counter()
    for per_symbol in d.seconds[:CATCHUP_SECONDS]:
        now = int(time.time() * 1000)
        for x in per_symbol:
            engine.on_ticks(x.ticks)
        for x in per_symbol:
            for bar in x.bars:
                engine.on_bar(bar, now)
        packets += len(engine.emit(now))
    elapsed = time.perf_counter() - start
    if packets != 2 * CATCHUP_SECONDS:
        raise RuntimeError(f"the engine built {packets:,} packets, expected {2 * CATCHUP_SECONDS:,}")
    return packets / elapsed


async def features_engine_packets_per_s(url: str, n: int, batch: int) -> float:
    return _engine_run()


# --- memory ---------------------------------------------------------------------------------


async def rss_over_an_hour(url: str) -> list[float]:
    """VmRSS (MiB) of the service after warm-up, every :data:`RSS_SAMPLE_EVERY_S` simulated seconds, at the end."""
    d = data()
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    samples: list[float] = []
    end = WARM_SECONDS + HOUR_SECONDS
    try:
        await _write(client, d.history)
        await _write(client, _second_entries(d.seconds[:WARM_SECONDS]))
        with _Features(url) as proc:
            await _wait_packets(client, proc, 2 * WARM_SECONDS, 120)
            await asyncio.sleep(0.5)  # its timer has run (UI packets, registry, history polls)
            samples.append(proc.rss_mib())
            writing = asyncio.create_task(_write(client, _second_entries(d.seconds[WARM_SECONDS:end])))
            try:
                for mark in range(WARM_SECONDS + RSS_SAMPLE_EVERY_S, end + 1, RSS_SAMPLE_EVERY_S):
                    await _wait_packets(client, proc, 2 * mark, 120)
                    if mark == end:
                        await asyncio.sleep(0.5)
                    samples.append(proc.rss_mib())
                await writing
            finally:
                writing.cancel()
            # The hour's packets are trimmed away in part (UNISTREAM_TRAINING_MAXLEN): count them and look at the newest.
            added = await _packets_added(client)
            newest = {codec.decode(f).ts_event_ms for s in TRAINING for _, f in await client.xrevrange(s, count=1)}
            if added != 2 * end or newest != {T0 + 1000 * end}:
                raise RuntimeError(f"{added:,} training packets added, expected {2 * end:,}; newest at {newest}")
    finally:
        await client.aclose()
    return samples


async def features_rss_mb_start(url: str, n: int, batch: int) -> float:
    _CACHE["rss"] = samples = await rss_over_an_hour(url)
    NOTES.setdefault("features_rss_mb_after_hour", []).append(
        f"MiB every {RSS_SAMPLE_EVERY_S // 60} simulated min: "
        + ", ".join(f"{v:.0f}" for v in samples)
        + f" (from the first sample of the hour to the last: {100 * (samples[-1] / samples[1] - 1):+.1f}%)"
    )
    return samples[0]


async def features_rss_mb_after_hour(url: str, n: int, batch: int) -> float:
    samples = _CACHE.get("rss") or await rss_over_an_hour(url)
    return samples[-1]


async def features_rss_growth_pct(url: str, n: int, batch: int) -> float:
    samples = _CACHE.pop("rss", None) or await rss_over_an_hour(url)
    return 100 * (samples[-1] / samples[0] - 1)
