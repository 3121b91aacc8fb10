"""``make bench``: measured rows, each beside a reference measured in the same run.

Every row runs ``--repeat`` times against a Redis server this script starts on a free port
(append-only off, so the disk is not what is measured) and reports the median, the spread and
the ratio to its reference row, as one Markdown table (figure, value, min..max, runs, unit, the
reference measured in the same run and its value, the ratio, the goal and its verdict, and the
machine: cores and CPU model), with each row's notes below it. Machines here are shared and
noisy: read medians and ratios, not single numbers. Results also go to
``bench-results/<UTC time>.json`` (git ignores the folder).

Rows (ticks/s unless stated):
- ``xadd_per_tick`` (reference): one stream entry per tick, redis-py pipelined 1,000 per round
  trip, the way a naive ingest writes;
- ``redis_benchmark_xadd`` (ceiling): redis-benchmark's own XADD, pipelined x100, no Python;
- ``tickbatch_xadd``: unistream's write path, TickBatch entries of ``--batch`` ticks encoded by
  the codec, pipelined;
- ``tickbatch_codec``: encode + decode of TickBatch entries, no Redis (ticks/s);
- ``replay_max``: ``unistream ingest``'s replay at max speed (archive CSV parsed, validated,
  batched, written) in-process, from start until it is done, warm-up history included (ticks/s);
- ``replay_max_ticks_only``: the same without the warm-up history (``history_bars=0``);
- ``live_p50_ms`` / ``live_p99_ms``: a trade sent by the local test exchange (websocket, 2,000
  messages/s over two symbols) until it is readable in ``md:ticks:{SYMBOL}``, with ``unistream
  ingest --source binance`` as its own process (ms); reference: ``redis_hop_p99_ms``, one XADD
  until a blocked XREAD on another connection returns it;
- ``replay_peak_rss_mib``: peak resident memory of a whole ``unistream ingest --source replay``
  process over the same file (MiB; reference: a bare ``python -c pass``);
- ``aggregator_ticks_per_s``: ticks one ``unistream aggregator`` process turns into 1s, 1m, 1h
  and 1d bars from tick streams filled before it starts (``--ticks`` over two symbols, REPLAY,
  ~35 trades/s of event time, entries of ``--batch``), from its first lease round (process
  start-up excluded) until ``ticks_applied`` in ``md:quality:{SYMBOL}`` counts every tick it can
  (all but those of each symbol's last, still open, 1s bar), those ticks over that time;
  reference:
  ``pandas_resample_ticks_per_s``, pandas resampling the same ticks from in-memory arrays into
  the four timeframes (first/max/min/last/count of price, sum of size). Goal: >= 300,000 ticks/s;
- ``bar_latency_p50_ms`` / ``bar_latency_p99_ms``: a 1s bar's end (``close_time_ms``) until a
  blocked XREAD on ``md:bars:{SYMBOL}:1s`` returns it, the aggregator as its own process fed
  live-like SYNTHETIC trades stamped with the wall clock (200/s on each of two symbols, 9 s a
  run: ~16 bars, so a run's p99 is its slowest bar); at that rate a bar closes on the next
  trade, whose wait is included, not on the grace timer (ms); reference: ``bar_latency_goal_ms``,
  the default ``UNISTREAM_GRACE_MS`` + 20 ms. Goal: p99 under it;
- ``bar_latency_quiet_p50_ms`` / ``bar_latency_quiet_p99_ms``: the same in a quiet market (0.5
  trades/s per symbol), where the wall-clock timer closes most bars and fills the empty seconds
  at end + grace: the figure the goal is about (ms); reference: ``bar_latency_goal_ms``;
- ``features_bar_to_packet_p50_ms`` / ``features_bar_to_packet_p99_ms``: ``unistream features``
  as its own process (default settings: two symbols, 300-bar windows, four timeframes), warm and
  caught up, fed live seconds at 10x real time (trades, then each symbol's 1s bar in a MULTI, the
  1m bar with it at a minute's end): from the bar's EXEC until a blocked XREAD on the training streams
  returns its training packet, ~200 bars a run (ms); reference: ``redis_xadd_roundtrip_p50_ms``,
  one XADD of a 54 KB entry (a training packet's size) until a blocked XREAD returns it. Goal:
  p99 < 20 ms;
- ``features_bar_to_packet_no_wait_p50_ms`` / ``_p99_ms``: the same with ``UNISTREAM_SYMBOL_SYNC_MS=0``
  (states do not wait for inputs on other streams, the default before deterministic packets);
  reference: the deterministic rows above, so the ratio is what the wait costs, inverted;
- ``features_catchup_packets_per_s``: training packets of 30 min of both symbols written before
  the service starts, from the first packet's ``ts_emit_ms`` until the last is on the stream;
  reference: ``features_engine_packets_per_s``, the pure ``FeatureEngine`` in-process on the
  same inputs (no Redis, no codec). Goal: >= 500 packets/s;
- ``features_rss_mb_start`` / ``features_rss_mb_after_hour`` / ``features_rss_growth_pct``:
  VmRSS of the features process once warm (MiB), after one simulated hour of both symbols
  written as fast as Redis takes them (the service catches up), and the growth between (%);
  the samples every 10 simulated minutes are printed under the table. Goal: growth < 10%;
- ``trainer_updates_per_s``: gradient steps per second of the trainer's ``DQNAgent.learn`` (double
  DQN, n-step, Huber, clipping, Polyak target) at batch 64 on the default network (obs 13,451,
  hidden 256, 256), replay pre-filled with random transitions, torch on one thread; reference:
  ``sb3_dqn_updates_per_s``, Stable-Baselines3's ``DQN.train`` with ``net_arch=[256, 256]`` on a
  gymnasium Box of the same size, same batch and replay. Goal: >= 1.5 x the reference;
- ``trainer_packets_per_s_1_replica`` / ``_2_replicas`` / ``_3_replicas``: training packets
  learned per second by 1, 2 and 3 ``unistream trainer`` processes (default settings, full states)
  from a backlog on the training streams, first acknowledgement to nothing read or pending (XINFO
  GROUPS); the 2- and 3-replica rows' reference is the 1-replica row. Goal (2 replicas): >= 1.7 x
  (on a machine with a core per replica);
- ``trainer_updates_per_packet_1_replica`` / ``_2_replicas`` / ``_3_replicas``: DQN updates per
  packet of the same backlogs past each replica's replay warm-up (``trainer_updates`` over
  ``trainer_packets`` less the default ``learning_starts`` of 64 per replica, from the replicas'
  ``/stats``: a replica's first 64 transitions earn no update, live or not); reference:
  ``trainer_updates_per_packet_live``, the ratio over the real-time packets the 2 replicas learn
  after their backlog. A backlog should learn as much per packet as live (the default: 4);
- ``trainer_claim_s``: a consumer of the ``trainer`` group reads a batch and never acknowledges
  it, beside two running replicas: seconds until none of it is pending (claimed after the default
  ``UNISTREAM_CLAIM_IDLE_MS`` of 20 s and learned from). Goal: < 30 s;
- ``trainer_merge_round_ms``: the leader's merge round (gather, average, publish) with both
  replicas in it, default network, from the replicas' ``/stats`` (``info.last_merge``) (ms).
- ``evaluate_s_per_day``: seconds ``unistream evaluate`` takes per day of data at its defaults (the
  deployed configuration: two symbols, the trainer's 256-256 network and 4 updates per packet),
  stride 1, on 5 minutes of two synthetic archive files; reference: ``evaluate_standin_s_per_day``,
  the same with ``--hidden 64 --updates-per-packet 1`` (see ``bench/evaluation.py``; once each);
- ``export_s_per_day``: seconds ``unistream export`` takes (its own process, Parquet) for a day of
  1s bars of one symbol (86,400) and the training packets the features service keeps by default
  (3,600, full 13,448-value states); reference: ``xrange_s_per_day``, reading the same entries
  with XRANGE in the same chunks and nothing else. ``export_peak_rss_mib_day``: that process's
  peak resident memory (MiB); reference: ``export_peak_rss_mib_quarter``, the same for a quarter
  of it (6 h of bars, 900 packets): memory flat means a ratio near 1 (``bench/export.py``);
- ``dashboard_overview_ready_s``: ``unistream dashboard`` as its own process, fed a running
  system's packets and heartbeats every second: from ``page.goto`` of the Overview in headless
  Chromium (a new session) until every symbol card shows its counts and price and every service
  card READY (s); reference: ``streamlit_hello_ready_s``, a one-line Streamlit app served with the
  same flags, until its text shows. Goal: < 3 s;
- ``dashboard_cpu_per_tab_pct``: the server process's CPU (% of one core, /proc utime + stime)
  with one tab on the Overview at the default 1 s refresh, minus the same with no tab;
  reference: ``dashboard_cpu_idle_pct``, that idle figure. Goal: < 15 %;
- ``dashboard_cpu_market_pct`` / ``dashboard_cpu_training_pct`` / ``dashboard_cpu_streams_pct``:
  the same with the tab on the Market, Training and Streams page (the feeder also writes a
  trainer metrics packet a second). Goal: < 15 % each;
- ``dashboard_redis_commands_per_refresh``: Redis commands the dashboard issues per panel
  refresh (INFO commandstats over the tab's window, the feeder's and the idle rate taken off,
  divided by the fragment runs the browser received);
- ``aggregator_ticks_per_s_cluster``, ``features_bar_to_packet_p50_ms_cluster`` /
  ``_p99_ms_cluster``, ``trainer_packets_per_s_1_replica_cluster``: the same rows with every
  process on a Redis Cluster of 3 masters with a replica each (started once for the run, on free
  ports); reference: the row on the single Redis, measured in the same run;
- ``cluster_10_symbols_packets_per_s``, ``cluster_10_symbols_close_to_packet_p50_ms`` / ``_p99_ms``:
  ten synthetic symbols on that cluster with two aggregators and two features replicas (bench/scaled.py);
  reference: the same with one of each (``..._1x1``), in the same run;
- ``cluster_xadd_wait_p50_ms``: an XADD of a 54 KB entry (a training packet) on a cluster master
  followed by ``WAIT 1`` (until its replica has it), what a commit would pay to wait for a replica;
  reference: ``cluster_xadd_p50_ms``, the XADD alone on the same connection.
The evaluate rows live in ``bench/evaluation.py`` (~1.5 min). The aggregator rows live in
``bench/aggregator.py``, the features rows in ``bench/features.py`` (at most ``MAX_RUNS`` = 3 runs
each: one pass over them takes ~50 s), the trainer rows in ``bench/trainer.py`` (3 runs of the
in-process rows, 2 of the process rows: ~3.5 min in all), the dashboard rows in
``bench/dashboard.py`` (2 runs of the ready rows, two 6 s windows per page of the CPU rows: ~3 min);
rows that start processes or wait on the clock run 3 times, the quick in-process ones ``--repeat``
(5) times. The whole run: ~10.5 min on this 2-core machine; ``--only`` takes row names. A goal
marked ``x`` compares the ratio to the row's reference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dashboard
import evaluation
import export
import features
import redis.asyncio as aioredis
import scaled
import trainer
from aggregator import (
    aggregator_ticks_per_s,
    bar_latency_goal_ms,
    bar_latency_p50_ms,
    bar_latency_p99_ms,
    bar_latency_quiet_p50_ms,
    bar_latency_quiet_p99_ms,
    pandas_resample_ticks_per_s,
    percentile,
    stop_process,
)
from dashboard import (
    dashboard_cpu_idle_pct,
    dashboard_cpu_market_pct,
    dashboard_cpu_per_tab_pct,
    dashboard_cpu_streams_pct,
    dashboard_cpu_training_pct,
    dashboard_overview_ready_s,
    dashboard_redis_commands_per_refresh,
    streamlit_hello_ready_s,
)
from evaluation import evaluate_s_per_day, evaluate_standin_s_per_day
from export import export_peak_rss_mib_day, export_peak_rss_mib_quarter, export_s_per_day, xrange_s_per_day
from features import (
    features_bar_to_packet_no_wait_p50_ms,
    features_bar_to_packet_no_wait_p99_ms,
    features_bar_to_packet_p50_ms,
    features_bar_to_packet_p99_ms,
    features_catchup_packets_per_s,
    features_engine_packets_per_s,
    features_rss_growth_pct,
    features_rss_mb_after_hour,
    features_rss_mb_start,
    redis_xadd_roundtrip_p50_ms,
)
from procs import peak_rss_mib
from trainer import (
    sb3_dqn_updates_per_s,
    trainer_claim_s,
    trainer_merge_round_ms,
    trainer_packets_per_s_1_replica,
    trainer_packets_per_s_2_replicas,
    trainer_packets_per_s_3_replicas,
    trainer_updates_per_packet_1_replica,
    trainer_updates_per_packet_2_replicas,
    trainer_updates_per_packet_3_replicas,
    trainer_updates_per_packet_live,
    trainer_updates_per_s,
    trainer_updates_per_s_float32,
)

from unistream_common import codec
from unistream_common.packets import Tick, TickBatch
from unistream_tools.redis_server import start_cluster, start_redis

T0 = 1_760_000_000_000
# Goals ((comparison, value); "x>=": the ratio to the row's reference), run caps and notes by row.
# The aggregator's goals (issue 3): ticks/s, and a 1s bar readable within grace + 20 ms.
AGGREGATOR_GOALS = {
    "aggregator_ticks_per_s": (">=", 300_000.0),
    "bar_latency_p99_ms": ("<", 270.0),
    "bar_latency_quiet_p99_ms": ("<", 270.0),
}
# Rows that start processes or wait on the clock run 3 times (make bench stays under 10 min on 2 cores).
SLOW_ROWS = dict.fromkeys(
    (
        "live_p50_ms", "live_p99_ms", "redis_hop_p99_ms", "replay_peak_rss_mib", "python_rss_mib",
        "aggregator_ticks_per_s", "pandas_resample_ticks_per_s", "bar_latency_goal_ms", "bar_latency_p50_ms",
        "bar_latency_p99_ms", "bar_latency_quiet_p50_ms", "bar_latency_quiet_p99_ms",
    ),
    3,
)  # fmt: skip
GOALS = {**AGGREGATOR_GOALS, **features.GOALS, **trainer.GOALS, **dashboard.GOALS}
MAX_RUNS = {
    **SLOW_ROWS, **features.MAX_RUNS, **trainer.MAX_RUNS, **dashboard.MAX_RUNS, **evaluation.MAX_RUNS, **export.MAX_RUNS,
    **scaled.MAX_RUNS,
}  # fmt: skip
# The same rows on a Redis Cluster of 3 masters with a replica each (started by run() when one of
# them is selected), each beside its single-Redis row of the same run as its reference.
CLUSTER_ROWS = (
    "aggregator_ticks_per_s", "features_bar_to_packet_p50_ms", "features_bar_to_packet_p99_ms",
    "trainer_packets_per_s_1_replica",
)  # fmt: skip
MAX_RUNS.update({f"{name}_cluster": MAX_RUNS.get(name, 3) for name in CLUSTER_ROWS})
_CLUSTER_URL: list[str] = []


def on_cluster(fn: Row) -> Row:
    """``fn`` run against the bench's Redis Cluster instead of its single Redis."""

    async def row(url: str, n: int, batch: int) -> float:
        return await fn(_CLUSTER_URL[0], n, batch)

    return row


NOTES = (
    scaled.NOTES,
    features.NOTES,
    trainer.NOTES,
    dashboard.NOTES,
    evaluation.NOTES,
    export.NOTES,
)  # filled by the rows as they run


def make_ticks(n: int, first_id: int = 1) -> list[Tick]:
    """``n`` plausible trades with consecutive ids, 1 ms apart."""
    return [
        Tick(
            first_id + i, 3000.0 + (i % 97) * 0.01, 0.001 * (1 + i % 13), "BUY" if i % 3 else "SELL", T0 + i, T0 + i + 1
        )
        for i in range(n)
    ]


async def xadd_per_tick(url: str, n: int, batch: int) -> float:
    client = aioredis.Redis.from_url(url, protocol=2)
    ticks = make_ticks(n)
    await client.delete("bench:per_tick")
    start = time.perf_counter()
    for i in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for t in ticks[i : i + 1000]:
            pipe.xadd(
                "bench:per_tick",
                {"id": t.trade_id, "p": t.price, "q": t.size, "s": t.aggressor_side, "T": t.ts_event_ms},
            )
        await pipe.execute()
    elapsed = time.perf_counter() - start
    await client.aclose()
    return n / elapsed


async def tickbatch_xadd(url: str, n: int, batch: int) -> float:
    client = aioredis.Redis.from_url(url, protocol=2)
    ticks = make_ticks(n)
    await client.delete("bench:batch")
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i in range(0, n, batch):
        pipe.xadd("bench:batch", codec.encode(TickBatch("ETHUSDT", "REPLAY", ticks[i : i + batch])))
        if len(pipe) >= 50:
            await pipe.execute()
    await pipe.execute()
    elapsed = time.perf_counter() - start
    await client.aclose()
    return n / elapsed


async def tickbatch_codec(url: str, n: int, batch: int) -> float:
    ticks = make_ticks(n)
    start = time.perf_counter()
    for i in range(0, n, batch):
        codec.decode(codec.encode(TickBatch("ETHUSDT", "REPLAY", ticks[i : i + batch])))
    return n / (time.perf_counter() - start)


async def redis_benchmark_xadd(url: str, n: int, batch: int) -> float:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise RuntimeError("redis-benchmark not installed")
    port = url.rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(  # noqa: ASYNC221 - rows run one at a time; nothing else shares the loop
        [binary, "-p", port, "-n", str(n), "-P", "100", "-c", "4", "-q", "--csv",
         "XADD", "bench:rb", "*", "f", "v"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    # CSV: "test","rps",...; the second line holds the numbers
    line = [row for row in out.stdout.splitlines() if row.startswith('"XADD')][-1]
    return float(line.split(",")[1].strip('"'))


def archive_file(n: int) -> Path:
    """A header-less Binance trades CSV of ``n`` rows (cached per size under the temp dir)."""
    path = Path(tempfile.gettempdir()) / f"unistream-bench-ETHUSDT-trades-{n}.csv"
    if not path.exists():
        with path.open("w") as f:
            for i in range(n):
                f.write(
                    f"{1 + i},{3000 + (i % 997) / 100:.2f},{0.001 * (1 + i % 13):.3f},1.0,{T0 + i},{i % 2 == 0},True\n"
                )
    return path


async def replay_max(url: str, n: int, batch: int, history_bars: int = 300) -> float:
    from unistream_common.redisio import command_client
    from unistream_common.stats import Stats
    from unistream_ingest.service import IngestService
    from unistream_ingest.settings import IngestSettings

    settings = IngestSettings(
        redis_url=url, source="replay", replay_paths=(str(archive_file(n)),), symbols=("ETHUSDT",),
        max_batch_ticks=batch, history_bars=history_bars,
    )  # fmt: skip
    client = command_client(url)
    await client.flushall()
    writer = IngestService(settings, Stats("bench"), client)
    start = time.perf_counter()
    await writer.run()
    elapsed = time.perf_counter() - start
    await client.aclose()
    return n / elapsed


async def replay_max_ticks_only(url: str, n: int, batch: int) -> float:
    return await replay_max(url, n, batch, history_bars=0)


async def replay_peak_rss_mib(url: str, n: int, batch: int) -> float:
    from unistream_tools.redis_server import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    env.update({"UNISTREAM_REDIS_URL": url, "UNISTREAM_HTTP_PORT": str(free_port())})
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    await client.aclose()
    cmd = [sys.executable, "-m", "unistream_tools.cli", "ingest", "--source", "replay",
           "--path", str(archive_file(n)), "--symbol", "ETHUSDT", "--speed", "max"]  # fmt: skip
    return await asyncio.to_thread(peak_rss_mib, cmd, env)


async def python_rss_mib(url: str, n: int, batch: int) -> float:
    return await asyncio.to_thread(peak_rss_mib, [sys.executable, "-c", "pass"], dict(os.environ))


_LIVE_CACHE: dict[str, list[float]] = {}


async def _live_latencies(url: str, seconds: float = 6.0) -> list[float]:
    """Latencies (ms) of every trade from exchange send to readable in Redis, one measured run."""
    import threading

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from exchange import TestExchange  # the local exchange that speaks Binance's protocol

    from unistream_tools.redis_server import free_port

    ready = threading.Event()
    stop = threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            async with TestExchange(("ETHUSDT", "BTCUSDT"), rate_per_s=1_000) as ex:
                box["ex"] = ex
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    ex = box["ex"]
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    env.update({
        "UNISTREAM_REDIS_URL": url, "UNISTREAM_HTTP_PORT": str(free_port()), "UNISTREAM_SOURCE": "binance",
        "UNISTREAM_BINANCE_WS_URL": ex.ws_url, "UNISTREAM_BINANCE_REST_URL": ex.rest_url, "UNISTREAM_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "unistream_tools.cli", "ingest"], env=env)  # noqa: ASYNC220 - returns at once
    seen: dict[tuple[str, int], float] = {}
    last = {"md:ticks:{ETHUSDT}": "$", "md:ticks:{BTCUSDT}": "$"}
    reader = aioredis.Redis.from_url(url, socket_timeout=None)
    deadline = time.monotonic() + seconds + 8
    start_measure = None
    while time.monotonic() < deadline:
        reply = await reader.xread(last, block=500)
        now = time.time()
        for stream, entries in reply or []:
            name = stream.decode()
            for eid, fields in entries:
                last[name] = eid
                batch = codec.decode(fields)
                if isinstance(batch, TickBatch):
                    for tick in batch.ticks:
                        seen[(batch.symbol, tick.trade_id)] = now
        if seen and start_measure is None:
            start_measure = time.monotonic()  # the feed is up: measure from here
        if start_measure is not None and time.monotonic() - start_measure > seconds:
            break
    stop_process(proc)
    stop.set()
    thread.join(5)
    await reader.aclose()
    await client.aclose()
    out = []
    for symbol, trades in ex.log.items():
        for trade in trades:
            got = seen.get((symbol, trade.trade_id))
            if got is not None and trade.sent_s is not None:
                out.append((got - trade.sent_s) * 1000)
    # the first second holds the connection's start-up and any backfill: steady state only
    return out[len(out) // 6 :] if out else out


async def live_p50_ms(url: str, n: int, batch: int) -> float:
    _LIVE_CACHE["last"] = await _live_latencies(url)
    return percentile(_LIVE_CACHE["last"], 0.50)


async def live_p99_ms(url: str, n: int, batch: int) -> float:
    values = _LIVE_CACHE.pop("last", None) or await _live_latencies(url)
    return percentile(values, 0.99)


async def redis_hop_p99_ms(url: str, n: int, batch: int) -> float:
    writer = aioredis.Redis.from_url(url)
    reader = aioredis.Redis.from_url(url, socket_timeout=None)
    hops = []
    last = "$"
    for _ in range(2_000):
        read = asyncio.create_task(reader.xread({"bench:hop": last}, block=1_000))
        await asyncio.sleep(0)
        sent = time.perf_counter()
        await writer.xadd("bench:hop", {"f": "v"})
        reply = await read
        hops.append((time.perf_counter() - sent) * 1000)
        last = reply[0][1][-1][0] if reply else last
    await writer.aclose()
    await reader.aclose()
    return percentile(hops, 0.99)


Row = Callable[[str, int, int], Awaitable[float]]
ROWS: dict[str, tuple[Row, str | None, str]] = {
    "xadd_per_tick": (xadd_per_tick, None, "ticks/s"),
    "redis_benchmark_xadd": (redis_benchmark_xadd, "xadd_per_tick", "entries/s"),
    "tickbatch_xadd": (tickbatch_xadd, "xadd_per_tick", "ticks/s"),
    "tickbatch_codec": (tickbatch_codec, "xadd_per_tick", "ticks/s"),
    "replay_max": (replay_max, "xadd_per_tick", "ticks/s"),
    "replay_max_ticks_only": (replay_max_ticks_only, "xadd_per_tick", "ticks/s"),
    "redis_hop_p99_ms": (redis_hop_p99_ms, None, "ms"),
    "live_p50_ms": (live_p50_ms, "redis_hop_p99_ms", "ms"),
    "live_p99_ms": (live_p99_ms, "redis_hop_p99_ms", "ms"),
    "python_rss_mib": (python_rss_mib, None, "MiB"),
    "replay_peak_rss_mib": (replay_peak_rss_mib, "python_rss_mib", "MiB"),
    "pandas_resample_ticks_per_s": (pandas_resample_ticks_per_s, None, "ticks/s"),
    "aggregator_ticks_per_s": (aggregator_ticks_per_s, "pandas_resample_ticks_per_s", "ticks/s"),
    "bar_latency_goal_ms": (bar_latency_goal_ms, None, "ms"),
    "bar_latency_p50_ms": (bar_latency_p50_ms, "bar_latency_goal_ms", "ms"),
    "bar_latency_p99_ms": (bar_latency_p99_ms, "bar_latency_goal_ms", "ms"),
    "bar_latency_quiet_p50_ms": (bar_latency_quiet_p50_ms, "bar_latency_goal_ms", "ms"),
    "bar_latency_quiet_p99_ms": (bar_latency_quiet_p99_ms, "bar_latency_goal_ms", "ms"),
    "redis_xadd_roundtrip_p50_ms": (redis_xadd_roundtrip_p50_ms, None, "ms"),
    "features_bar_to_packet_p50_ms": (features_bar_to_packet_p50_ms, "redis_xadd_roundtrip_p50_ms", "ms"),
    "features_bar_to_packet_p99_ms": (features_bar_to_packet_p99_ms, "redis_xadd_roundtrip_p50_ms", "ms"),
    "features_bar_to_packet_no_wait_p50_ms": (
        features_bar_to_packet_no_wait_p50_ms,
        "features_bar_to_packet_p50_ms",
        "ms",
    ),
    "features_bar_to_packet_no_wait_p99_ms": (
        features_bar_to_packet_no_wait_p99_ms,
        "features_bar_to_packet_p99_ms",
        "ms",
    ),
    "features_engine_packets_per_s": (features_engine_packets_per_s, None, "packets/s"),
    "features_catchup_packets_per_s": (features_catchup_packets_per_s, "features_engine_packets_per_s", "packets/s"),
    "features_rss_mb_start": (features_rss_mb_start, None, "MiB"),
    "features_rss_mb_after_hour": (features_rss_mb_after_hour, "features_rss_mb_start", "MiB"),
    "features_rss_growth_pct": (features_rss_growth_pct, None, "%"),
    "sb3_dqn_updates_per_s": (sb3_dqn_updates_per_s, None, "updates/s"),
    "trainer_updates_per_s": (trainer_updates_per_s, "sb3_dqn_updates_per_s", "updates/s"),
    "trainer_updates_per_s_float32": (trainer_updates_per_s_float32, "sb3_dqn_updates_per_s", "updates/s"),
    "trainer_packets_per_s_1_replica": (trainer_packets_per_s_1_replica, None, "packets/s"),
    "trainer_packets_per_s_2_replicas": (
        trainer_packets_per_s_2_replicas,
        "trainer_packets_per_s_1_replica",
        "packets/s",
    ),
    "trainer_packets_per_s_3_replicas": (
        trainer_packets_per_s_3_replicas,
        "trainer_packets_per_s_1_replica",
        "packets/s",
    ),
    "trainer_updates_per_packet_live": (trainer_updates_per_packet_live, None, "updates/packet"),
    "trainer_updates_per_packet_1_replica": (
        trainer_updates_per_packet_1_replica,
        "trainer_updates_per_packet_live",
        "updates/packet",
    ),
    "trainer_updates_per_packet_2_replicas": (
        trainer_updates_per_packet_2_replicas,
        "trainer_updates_per_packet_live",
        "updates/packet",
    ),
    "trainer_updates_per_packet_3_replicas": (
        trainer_updates_per_packet_3_replicas,
        "trainer_updates_per_packet_live",
        "updates/packet",
    ),
    "trainer_claim_s": (trainer_claim_s, None, "s"),
    "trainer_merge_round_ms": (trainer_merge_round_ms, None, "ms"),
    "evaluate_standin_s_per_day": (evaluate_standin_s_per_day, None, "s/day"),
    "xrange_s_per_day": (xrange_s_per_day, None, "s"),
    "export_s_per_day": (export_s_per_day, "xrange_s_per_day", "s"),
    "export_peak_rss_mib_quarter": (export_peak_rss_mib_quarter, None, "MiB"),
    "export_peak_rss_mib_day": (export_peak_rss_mib_day, "export_peak_rss_mib_quarter", "MiB"),
    "evaluate_s_per_day": (evaluate_s_per_day, "evaluate_standin_s_per_day", "s/day"),
    "streamlit_hello_ready_s": (streamlit_hello_ready_s, None, "s"),
    "dashboard_overview_ready_s": (dashboard_overview_ready_s, "streamlit_hello_ready_s", "s"),
    "dashboard_cpu_idle_pct": (dashboard_cpu_idle_pct, None, "% core"),
    "dashboard_cpu_per_tab_pct": (dashboard_cpu_per_tab_pct, "dashboard_cpu_idle_pct", "% core"),
    "dashboard_cpu_market_pct": (dashboard_cpu_market_pct, "dashboard_cpu_idle_pct", "% core"),
    "dashboard_cpu_training_pct": (dashboard_cpu_training_pct, "dashboard_cpu_idle_pct", "% core"),
    "dashboard_cpu_streams_pct": (dashboard_cpu_streams_pct, "dashboard_cpu_idle_pct", "% core"),
    "dashboard_redis_commands_per_refresh": (dashboard_redis_commands_per_refresh, None, "commands"),
}
for _name in CLUSTER_ROWS:
    _fn, _ref, _unit = ROWS[_name]
    ROWS[f"{_name}_cluster"] = (on_cluster(_fn), _name, _unit)
# Ten symbols on the cluster: one aggregator and one features process (the reference), then two of each.
for _suffix, _ref_suffix in (("_1x1", None), ("", "_1x1")):
    for _what, _unit in (("packets_per_s", "packets/s"), ("close_to_packet_p50_ms", "ms"),
                         ("close_to_packet_p99_ms", "ms")):  # fmt: skip
        _name = f"cluster_10_symbols_{_what}{_suffix}"
        _ref = None if _ref_suffix is None else f"cluster_10_symbols_{_what}{_ref_suffix}"
        ROWS[_name] = (on_cluster(getattr(scaled, _name)), _ref, _unit)
# What waiting for a replica (WAIT 1) would add to each commit on the cluster (not done: see docs/operations.md).
ROWS["cluster_xadd_p50_ms"] = (on_cluster(scaled.cluster_xadd_p50_ms), None, "ms")
ROWS["cluster_xadd_wait_p50_ms"] = (on_cluster(scaled.cluster_xadd_wait_p50_ms), "cluster_xadd_p50_ms", "ms")


async def run(repeat: int, n: int, batch: int, only: list[str]) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp), appendonly=False)
        cluster = None
        if any(name.endswith("_cluster") or name.startswith("cluster_") for name in (only or ROWS)):
            cluster = start_cluster(Path(tmp) / "cluster", masters=3, replicas=1)
            _CLUSTER_URL[:] = [cluster.url]
        try:
            results: dict[str, list[float]] = {}
            spent: dict[str, float] = {}  # seconds each row took, all its runs
            for _ in range(repeat):  # interleave rows so drift on a shared machine hits all alike
                for name, (fn, _ref, _unit) in ROWS.items():
                    if only and name not in only:
                        continue
                    if len(results.get(name, [])) >= MAX_RUNS.get(name, repeat):
                        continue
                    row_started = time.monotonic()
                    try:
                        value = await fn(server.url, n, batch)
                    except Exception as exc:  # noqa: BLE001 - this row only: the others still run
                        print(f"{name}: skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
                    else:
                        results.setdefault(name, []).append(value)
                    spent[name] = spent.get(name, 0.0) + time.monotonic() - row_started
                    client = aioredis.Redis.from_url(server.url)
                    await client.flushall()
                    await client.aclose()
        finally:
            server.stop()
            if cluster is not None:
                cluster.stop()
    rows = []
    for name, values in results.items():
        _fn, ref, unit = ROWS[name]
        median = statistics.median(values)
        ref_median = statistics.median(results[ref]) if ref in results else None
        rows.append(
            {
                "row": name,
                "unit": unit,
                "median": median,
                "min": min(values),
                "max": max(values),
                "runs": len(values),
                "reference": ref,
                "ratio_to_reference": median / ref_median if ref_median else None,
                "goal": " ".join(map(str, GOALS[name])) if name in GOALS else None,
                "notes": [note for notes in NOTES for note in notes.get(name, [])],
                "seconds": round(spent.get(name, 0.0), 1),
            }
        )
    return rows


def machine_text() -> str:
    """``2 cores, <CPU model>``: what every row ran on."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores, {model}"


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"  # ms and MiB rows need their decimals


def verdict(r: dict[str, object]) -> str:
    """``goal < 15: met`` / ``MISSED`` / "" for a row without a goal."""
    if not r["goal"]:
        return ""
    op, value = GOALS[str(r["row"])]
    if op.startswith("x"):  # a ratio to the reference
        ratio = r["ratio_to_reference"]
        met = None if ratio is None else ratio >= value  # type: ignore[operator]
        text = f">= {value:g} x reference"
    else:
        median = float(r["median"])  # type: ignore[arg-type]
        met = median < value if op == "<" else median >= value
        text = f"{op} {value:g}"
    return f"{text}: {'no reference' if met is None else 'met' if met else 'MISSED'}"


def markdown_table(rows: list[dict[str, object]]) -> str:
    """One Markdown table: figure, value (median, min..max over runs), the reference measured in
    the same run, the ratio, the goal and the machine."""
    medians = {str(r["row"]): r["median"] for r in rows}
    out = [
        (
            "| figure | value (median) | min..max | runs | unit | reference (same run) | reference value | ratio "
            "| goal | machine |"
        ),
        "|---|---:|---|---:|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        ref = r["reference"]
        ratio = r["ratio_to_reference"]
        out.append(
            f"| {r['row']} | {_fmt(r['median'])} | {_fmt(r['min'])}..{_fmt(r['max'])} | {r['runs']} "  # type: ignore[arg-type]
            f"| {r['unit']} | {ref or '(is a reference)'} | {_fmt(medians.get(ref)) if ref else ''} "  # type: ignore[arg-type]
            f"| {'' if ratio is None else f'{ratio:.2f} x'} | {r['verdict']} | {r['machine']} |"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs per row (median reported)")
    parser.add_argument("--ticks", type=int, default=200_000, help="ticks per run")
    parser.add_argument("--batch", type=int, default=1_000, help="ticks per TickBatch entry")
    parser.add_argument("--only", nargs="*", default=[], help="rows to run")
    args = parser.parse_args()
    started = time.monotonic()
    rows = asyncio.run(run(args.repeat, args.ticks, args.batch, args.only))
    machine = machine_text()
    for r in rows:
        r["machine"] = machine
        r["verdict"] = verdict(r)
    print(markdown_table(rows))
    print()
    for r in rows:
        for note in r["notes"]:
            print(f"- {r['row']}: {note}")
    slowest = sorted(rows, key=lambda r: -float(r["seconds"]))[:6]  # type: ignore[arg-type]
    print(f"\n{len(rows)} rows in {(time.monotonic() - started) / 60:.1f} min on {machine}; the longest: "
          + ", ".join(f"{r['row']} {r['seconds']:.0f} s" for r in slowest))  # fmt: skip
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    meta = {
        "machine_text": machine,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "ticks": args.ticks,
        "batch": args.batch,
    }
    (out / f"{stamp}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
