"""``make bench``: measured rows, each beside a reference measured in the same run.

Every row runs ``--repeat`` times against a Redis server this script starts on a free port
(append-only off, so the disk is not what is measured) and reports the median, the spread and
the ratio to its reference row. Machines here are shared and noisy: read medians and ratios,
not single numbers. Results also go to ``bench-results/<UTC time>.json``.

Rows (ticks/s unless stated):
- ``xadd_per_tick`` (reference): one stream entry per tick, redis-py pipelined 1,000 per round
  trip, the way a naive ingest writes;
- ``redis_benchmark_xadd`` (ceiling): redis-benchmark's own XADD, pipelined x100, no Python;
- ``tickbatch_xadd``: unistream's write path, TickBatch entries of ``--batch`` ticks encoded by
  the codec, pipelined;
- ``tickbatch_codec``: encode + decode of TickBatch entries, no Redis (ticks/s);
- ``replay_max``: ``unistream ingest``'s replay at max speed (archive CSV parsed, validated,
  batched, written) in-process, from start to the last tick written (ticks/s);
- ``replay_peak_rss_mib``: peak resident memory of a whole ``unistream ingest --source replay``
  process over the same file (MiB; reference: a bare ``python -c pass``).
"""

from __future__ import annotations

import argparse
import asyncio
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

import redis.asyncio as aioredis

from unistream_common import codec
from unistream_common.packets import Tick, TickBatch
from unistream_common.redis_server import start_redis

T0 = 1_760_000_000_000


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


async def replay_max(url: str, n: int, batch: int) -> float:
    from unistream_common.redisio import command_client
    from unistream_common.stats import Stats
    from unistream_ingest.service import IngestWriter
    from unistream_ingest.settings import IngestSettings

    settings = IngestSettings(
        redis_url=url, source="replay", replay_paths=(str(archive_file(n)),), symbols=("ETHUSDT",),
        max_batch_ticks=batch,
    )  # fmt: skip
    client = command_client(url)
    await client.flushall()
    writer = IngestWriter(settings, Stats("bench"), client)
    start = time.perf_counter()
    await writer.run()
    elapsed = time.perf_counter() - start
    await client.aclose()
    return n / elapsed


# A small launcher runs the command and reports its children's peak RSS. ru_maxrss survives exec,
# so a child forked straight from this (large) process would start at this process's size.
_LAUNCHER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode\n"
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def _peak_rss_mib(cmd: list[str], env: dict[str, str]) -> float:
    """Peak RSS of ``cmd`` run to completion, MiB."""
    out = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], env=env, capture_output=True, text=True, check=True)
    rc, kib = out.stdout.split()
    if rc != "0":
        raise RuntimeError(f"{cmd[:4]} exited {rc}")
    return int(kib) / 1024


async def replay_peak_rss_mib(url: str, n: int, batch: int) -> float:
    from unistream_common.redis_server import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    env.update({"UNISTREAM_REDIS_URL": url, "UNISTREAM_HTTP_PORT": str(free_port())})
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    await client.aclose()
    cmd = [sys.executable, "-m", "unistream_common.cli", "ingest", "--source", "replay",
           "--path", str(archive_file(n)), "--symbol", "ETHUSDT", "--speed", "max"]  # fmt: skip
    return await asyncio.to_thread(_peak_rss_mib, cmd, env)


async def python_rss_mib(url: str, n: int, batch: int) -> float:
    return await asyncio.to_thread(_peak_rss_mib, [sys.executable, "-c", "pass"], dict(os.environ))


Row = Callable[[str, int, int], Awaitable[float]]
ROWS: dict[str, tuple[Row, str | None, str]] = {
    "xadd_per_tick": (xadd_per_tick, None, "ticks/s"),
    "redis_benchmark_xadd": (redis_benchmark_xadd, "xadd_per_tick", "entries/s"),
    "tickbatch_xadd": (tickbatch_xadd, "xadd_per_tick", "ticks/s"),
    "tickbatch_codec": (tickbatch_codec, "xadd_per_tick", "ticks/s"),
    "replay_max": (replay_max, "xadd_per_tick", "ticks/s"),
    "python_rss_mib": (python_rss_mib, None, "MiB"),
    "replay_peak_rss_mib": (replay_peak_rss_mib, "python_rss_mib", "MiB"),
}


async def run(repeat: int, n: int, batch: int, only: list[str]) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp), appendonly=False)
        try:
            results: dict[str, list[float]] = {}
            for _ in range(repeat):  # interleave rows so drift on a shared machine hits all alike
                for name, (fn, _ref, _unit) in ROWS.items():
                    if only and name not in only:
                        continue
                    try:
                        results.setdefault(name, []).append(await fn(server.url, n, batch))
                    except RuntimeError as exc:
                        print(f"{name}: skipped ({exc})", file=sys.stderr)
                        break
                    client = aioredis.Redis.from_url(server.url)
                    await client.flushall()
                    await client.aclose()
        finally:
            server.stop()
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
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs per row (median reported)")
    parser.add_argument("--ticks", type=int, default=200_000, help="ticks per run")
    parser.add_argument("--batch", type=int, default=1_000, help="ticks per TickBatch entry")
    parser.add_argument("--only", nargs="*", default=[], help="rows to run")
    args = parser.parse_args()
    rows = asyncio.run(run(args.repeat, args.ticks, args.batch, args.only))
    print(f"{'row':24} {'median':>14} {'min':>14} {'max':>14}  unit        x reference")
    for r in rows:
        ratio = f"{r['ratio_to_reference']:.2f} x {r['reference']}" if r["ratio_to_reference"] else "(reference)"
        print(f"{r['row']:24} {r['median']:>14,.0f} {r['min']:>14,.0f} {r['max']:>14,.0f}  {r['unit']:10}  {ratio}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "ticks": args.ticks,
        "batch": args.batch,
    }
    (out / f"{stamp}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
