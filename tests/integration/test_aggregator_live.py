"""The aggregator live: as a process behind `unistream ingest`, and in-process through a core failure."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis

from unistream_aggregator.core import BarAggregator
from unistream_aggregator.service import AggregatorShell, run_with_restarts
from unistream_aggregator.settings import AggregatorSettings
from unistream_common import codec, keys
from unistream_common.consumer import StreamRuntime
from unistream_common.packets import Bar, Tick, TickBatch
from unistream_common.redis_server import free_port
from unistream_common.redisio import command_client
from unistream_common.stats import Stats

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNISTREAM = REPO / ".venv" / "bin" / "unistream"


def _bars(client: redis.Redis, symbol: str) -> list[Bar]:
    out = []
    for _, fields in client.xrange(keys.bars(symbol, "1s")):
        bar = codec.decode(fields)
        assert isinstance(bar, Bar)
        out.append(bar)
    return out


@pytest.mark.skipif(not UNISTREAM.exists(), reason="the unistream entry point is not installed in .venv")
def test_ingest_and_aggregator_processes_write_consecutive_1s_bars_answer_probes_and_stop_on_sigterm(
    redis_url: str, tmp_path: Path
) -> None:
    ports = {"ingest": free_port(), "aggregator": free_port()}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.log" for name in ports}
    for name, port in ports.items():
        env = {**os.environ, "UNISTREAM_REDIS_URL": redis_url, "UNISTREAM_HTTP_PORT": str(port)}
        with logs[name].open("wb") as fh:
            procs[name] = subprocess.Popen([str(UNISTREAM), name], env=env, stdout=fh, stderr=fh)
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 20
        while len(_bars(client, "ETHUSDT")) < 4 or len(_bars(client, "BTCUSDT")) < 4:
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited:\n{logs[name].read_text()}"
            assert time.monotonic() < deadline, {n: logs[n].read_text()[-2000:] for n in logs}
            time.sleep(0.1)
        for symbol in ("ETHUSDT", "BTCUSDT"):
            bars = _bars(client, symbol)
            opens = [b.open_time_ms for b in bars]
            assert opens == list(range(opens[0], opens[0] + 1_000 * len(opens), 1_000))
            assert all(b.source == "SYNTHETIC" and b.symbol == symbol for b in bars)
            assert sum(b.trade_count for b in bars) > 0
            # Bars close within about a second plus the grace of their end (wall clock).
            assert time.time() * 1000 - bars[-1].close_time_ms < 3_000
        for name, port in ports.items():
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/healthz", timeout=2).json() == {"status": "ok", "service": name}
            ready = httpx.get(f"{base}/readyz", timeout=2)
            assert ready.status_code == 200, ready.text
            stats = httpx.get(f"{base}/stats", timeout=2).json()
            assert stats["service"] == name
        assert httpx.get(f"http://127.0.0.1:{ports['ingest']}/stats").json()["info"]["source"] == "SYNTHETIC"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {name: proc.wait(10) for name, proc in procs.items()}
        client.close()
    assert codes == {"ingest": 0, "aggregator": 0}
    assert "using the seeded synthetic market" in logs["ingest"].read_text()
    assert "stopped; every generated tick was written" in logs["ingest"].read_text()
    assert "stopped with" in logs["aggregator"].read_text()


async def test_a_core_failure_restarts_the_consumer_and_the_bars_stay_exact(redis_url: str) -> None:
    """A bug that raises half-way through a batch must not corrupt bars or dead-letter good entries."""
    t0 = (int(time.time() * 1000) // 1_000 - 600) * 1_000
    batches = [
        TickBatch(
            symbol="ETHUSDT",
            source="SYNTHETIC",
            ticks=[Tick(i * 3 + j, 100.0 + (i * 3 + j) % 7, 1.0, "BUY", t + j * 150, t + j * 150) for j in range(3)],
        )
        for i, t in enumerate(range(t0, t0 + 400_000, 400))  # 1,000 entries: two reads of 500
    ]
    client = command_client(redis_url)
    for b in batches:
        await client.xadd(keys.ticks("ETHUSDT"), codec.encode(b))
    reference = BarAggregator()
    expected = reference.apply([(("s", str(i)), b) for i, b in enumerate(batches)]).bars
    expected += reference.close_due(t0 + 10**7).bars

    settings = AggregatorSettings(redis_url=redis_url, symbols="ETHUSDT")  # type: ignore[arg-type]
    stats = Stats("aggregator")
    runtime = StreamRuntime(redis_url, "aggregator-test", settings.symbols, stats)
    shell = AggregatorShell(settings, stats, runtime)
    shell.register()
    real_apply = shell.core.apply
    calls = {"n": 0}

    def flaky_apply(entries):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            entries = list(entries)
            real_apply(entries[: len(entries) // 2])  # half-updated state, then the bug strikes
            raise RuntimeError("injected core failure")
        return real_apply(entries)

    shell.core.apply = flaky_apply  # type: ignore[method-assign]
    task = asyncio.create_task(run_with_restarts(runtime, shell))
    try:
        deadline = time.monotonic() + 20
        while True:
            top = await client.xrevrange(keys.bars("ETHUSDT", "1s"), count=1)
            done = top and top[0][0] == f"{expected[-1].open_time_ms}-0".encode()
            if done and not (await client.xpending(keys.ticks("ETHUSDT"), keys.GROUP_AGGREGATOR))["pending"]:
                break
            assert not task.done(), task
            assert time.monotonic() < deadline, "bars did not complete"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runtime.close()
    got = [codec.decode(f) for _, f in await client.xrange(keys.bars("ETHUSDT", "1s"))]
    assert got == expected
    assert stats.total("aggregator_core_errors") == 1
    assert stats.total("aggregator_consumer_restarts") == 1
    assert stats.total("consumer_dead_lettered") == 0
    assert not await client.exists(keys.dlq(keys.ticks("ETHUSDT")))
    await client.aclose()


async def test_a_batch_whose_symbol_does_not_match_its_stream_is_refused_counted_and_acknowledged(
    redis_url: str,
) -> None:
    t0 = (int(time.time() * 1000) // 1_000 - 60) * 1_000
    client = command_client(redis_url)
    good = TickBatch(symbol="ETHUSDT", source="SYNTHETIC", ticks=[Tick(1, 10.0, 1.0, "BUY", t0 + 10, t0 + 10)])
    stray = TickBatch(symbol="BTCUSDT", source="SYNTHETIC", ticks=[Tick(2, 99.0, 1.0, "BUY", t0 + 20, t0 + 20)])
    await client.xadd(keys.ticks("ETHUSDT"), codec.encode(good))
    await client.xadd(keys.ticks("ETHUSDT"), codec.encode(stray))
    settings = AggregatorSettings(redis_url=redis_url, symbols="ETHUSDT,BTCUSDT")  # type: ignore[arg-type]
    stats = Stats("aggregator")
    runtime = StreamRuntime(redis_url, "aggregator-test", settings.symbols, stats)
    shell = AggregatorShell(settings, stats, runtime)
    shell.register()
    task = asyncio.create_task(run_with_restarts(runtime, shell))
    try:
        deadline = time.monotonic() + 10
        while not await client.exists(keys.bars("ETHUSDT", "1s")):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runtime.close()
    [(_, fields)] = await client.xrange(keys.bars("ETHUSDT", "1s"))
    bar = codec.decode(fields)
    assert isinstance(bar, Bar) and bar.trade_count == 1 and bar.high == 10.0
    assert not await client.exists(keys.bars("BTCUSDT", "1s"))
    assert stats.total("aggregator_batches_refused") == 1
    assert (await client.xpending(keys.ticks("ETHUSDT"), keys.GROUP_AGGREGATOR))["pending"] == 0
    await client.aclose()
