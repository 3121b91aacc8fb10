"""Ten symbols on the bench's Redis Cluster, with the aggregator and features scaled (rows of
``make bench``; see bench/run.py's docstring for how rows run).

The system under test is the services as their own processes (``python -m unistream_tools.cli
<service>``, what the supervisor starts), default settings apart from the symbols: one ingest
(synthetic, seeded, :data:`SYMBOLS`: ten symbols, ~8 trades a second each), :data:`SCALED`
aggregators and features replicas, no trainer. Features' states then hold ten symbols' windows
(~66,000 values, ~265 KB a packet), and every replica builds every symbol's state (that is what a
symbol's state needs) and writes those of the symbols it holds the lease of.

After every symbol has its first training packet and :data:`WARM_S` more seconds, for
:data:`MEASURE_S` seconds of wall time:

- ``cluster_10_symbols_packets_per_s``: training packets added over the ten symbols' streams per
  second (``entries-added``); real time is 10 a second (one per symbol and second);
- ``cluster_10_symbols_close_to_packet_p50_ms`` / ``_p99_ms``: over the packets of that window, the
  packet's ``ts_emit_ms`` (features' clock when it built the packet) minus ``ts_event_ms`` (the end
  of its 1s bar): the aggregator's grace (250 ms) and its commit, features' read, wait for the
  other symbols' inputs (``UNISTREAM_SYMBOL_SYNC_MS``) and build.

Reference of each: the same with one aggregator and one features process (``..._1x1``), measured in
the same run on the same cluster. One run each (~2 min a configuration): the medians are over the
packets of one window, the packets/s of one window.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import clients
import redis.asyncio as aioredis
from aggregator import percentile, stop_process

from unistream_common import codec, keys
from unistream_common.packets import TrainingDataPacket
from unistream_tools.redis_server import free_port

SYMBOLS = tuple(f"SYM{i}USDT" for i in range(10))
SCALED = 2  # aggregators and features replicas in the scaled configuration
WARM_S = 20  # seconds after every symbol's first packet before the window
MEASURE_S = 45
START_TIMEOUT_S = 180
NOTES: dict[str, list[str]] = {}
MAX_RUNS = {
    f"cluster_10_symbols_{what}{suffix}": 1
    for what in ("packets_per_s", "close_to_packet_p50_ms", "close_to_packet_p99_ms")
    for suffix in ("_1x1", "")
}
_CACHE: dict[int, dict[str, float]] = {}


def _env(url: str, service: str, replica: int, run_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    env.update({
        "UNISTREAM_REDIS_URL": url, "UNISTREAM_SYMBOLS": ",".join(SYMBOLS), "UNISTREAM_SOURCE": "synthetic",
        "UNISTREAM_HTTP_PORT": str(free_port()), "UNISTREAM_CONSUMER_NAME": f"{service}-{replica}",
        "UNISTREAM_MODEL_DIR": run_dir, "UNISTREAM_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    return env


def _start(url: str, service: str, replica: int, run_dir: str, stack: ExitStack) -> subprocess.Popen[bytes]:
    log = Path(run_dir) / f"{service}-{replica}.log"
    out = stack.enter_context(log.open("wb"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "unistream_tools.cli", service],
        env=_env(url, service, replica, run_dir), stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    stack.callback(stop_process, proc)
    return proc


async def _added(client: Any) -> dict[str, int]:
    out = {}
    for symbol in SYMBOLS:
        try:
            out[symbol] = int((await client.xinfo_stream(keys.training(symbol)))["entries-added"])
        except Exception:  # noqa: BLE001 - not created yet
            out[symbol] = 0
    return out


async def _window_latencies(client: Any, since_ms: int, until_ms: int) -> list[float]:
    """``ts_emit_ms - ts_event_ms`` of the packets emitted in [since_ms, until_ms), ms."""
    out: list[float] = []
    for symbol in SYMBOLS:
        # Entry ids follow the wall clock closely (features numbers them from it): a margin each side.
        for _eid, fields in await client.xrange(keys.training(symbol), min=since_ms - 60_000, max=until_ms + 60_000):
            p = codec.decode(fields)
            if isinstance(p, TrainingDataPacket) and since_ms <= p.ts_emit_ms < until_ms:
                out.append(float(p.ts_emit_ms - p.ts_event_ms))
    return out


async def run_scaled(url: str, replicas: int) -> dict[str, float]:
    """One run with ``replicas`` aggregators and features processes: the three figures."""
    client = clients.client(url)
    await client.flushall()
    with tempfile.TemporaryDirectory(prefix="unistream-bench-scaled-") as run_dir, ExitStack() as stack:
        procs = [_start(url, "ingest", 1, run_dir, stack)]
        for i in range(1, replicas + 1):
            procs.append(_start(url, "aggregator", i, run_dir, stack))
            procs.append(_start(url, "features", i, run_dir, stack))
        deadline = time.monotonic() + START_TIMEOUT_S
        while min((await _added(client)).values()) == 0:
            dead = [p.args for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = {f.name: f.read_text(errors="replace")[-800:] for f in Path(run_dir).glob("*.log")}
                raise RuntimeError(f"not every symbol has a training packet (exited: {dead}): {logs}")
            await asyncio.sleep(0.5)
        await asyncio.sleep(WARM_S)
        before, since_ms = await _added(client), int(time.time() * 1000)
        await asyncio.sleep(MEASURE_S)
        after, until_ms = await _added(client), int(time.time() * 1000)
        latencies = await _window_latencies(client, since_ms, until_ms)
    await client.aclose()
    packets = sum(after.values()) - sum(before.values())
    per_s = packets / ((until_ms - since_ms) / 1000)
    label = f"{replicas}x{replicas}"
    NOTES.setdefault(f"cluster_10_symbols_packets_per_s{'' if replicas == SCALED else '_1x1'}", []).append(
        f"{label}: {packets} packets in {(until_ms - since_ms) / 1000:.0f} s; fewest per symbol "
        f"{min(after[s] - before[s] for s in SYMBOLS)}, most {max(after[s] - before[s] for s in SYMBOLS)}"
    )
    if not latencies:
        raise RuntimeError("no training packet emitted in the window")
    return {"packets_per_s": per_s, "p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99)}


def _row(replicas: int, figure: str) -> Any:
    """A row's function: the packets/s row runs the configuration, its latency rows read that run."""

    async def row(url: str, n: int, batch: int) -> float:
        if figure == "packets_per_s" or replicas not in _CACHE:
            _CACHE[replicas] = await run_scaled(url, replicas)
        return _CACHE[replicas][figure]

    return row


cluster_10_symbols_packets_per_s = _row(SCALED, "packets_per_s")
cluster_10_symbols_close_to_packet_p50_ms = _row(SCALED, "p50")
cluster_10_symbols_close_to_packet_p99_ms = _row(SCALED, "p99")
cluster_10_symbols_packets_per_s_1x1 = _row(1, "packets_per_s")
cluster_10_symbols_close_to_packet_p50_ms_1x1 = _row(1, "p50")
cluster_10_symbols_close_to_packet_p99_ms_1x1 = _row(1, "p99")


# --- what WAIT would cost ---------------------------------------------------------------------

WAIT_SAMPLES = 300
PACKET_BYTES = 54_000  # a training packet's size


async def _xadd_latencies(url: str, wait_replicas: int) -> list[float]:
    """XADD of a training-packet-sized entry to a cluster master, alone or followed by ``WAIT n``
    (until n replicas acknowledge it), ms each, on a direct connection to the key's master."""
    key = "bench:wait:{ETHUSDT}"
    cluster = clients.client(url)
    await cluster.initialize()
    node = cluster.get_node_from_key(key)
    await cluster.aclose()
    master = aioredis.Redis(host=node.host, port=node.port)
    payload = {b"type": b"training", b"v": b"1", b"data": os.urandom(PACKET_BYTES)}
    out = []
    try:
        for _ in range(WAIT_SAMPLES):
            started = time.perf_counter()
            await master.xadd(key, payload, maxlen=100, approximate=True)
            if wait_replicas:
                acked = await master.execute_command("WAIT", wait_replicas, 1_000)
                if int(acked) < wait_replicas:
                    raise RuntimeError(f"WAIT: {acked} replicas acknowledged within 1 s")
            out.append((time.perf_counter() - started) * 1000)
        await master.delete(key)
    finally:
        await master.aclose()
    return out


async def cluster_xadd_p50_ms(url: str, n: int, batch: int) -> float:
    return percentile(await _xadd_latencies(url, 0), 0.50)


async def cluster_xadd_wait_p50_ms(url: str, n: int, batch: int) -> float:
    values = await _xadd_latencies(url, 1)
    NOTES.setdefault("cluster_xadd_wait_p50_ms", []).append(
        f"{len(values)} XADD + WAIT 1; p99 {percentile(values, 0.99):.2f} ms"
    )
    return percentile(values, 0.50)


MAX_RUNS.update({"cluster_xadd_p50_ms": 3, "cluster_xadd_wait_p50_ms": 3})
