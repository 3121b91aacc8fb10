"""The aggregator live: as a process behind `unistream ingest`, and in-process through a core failure."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from unistream_aggregator.core import BarAggregator
from unistream_aggregator.service import AggregatorService, run_with_restarts
from unistream_aggregator.settings import AggregatorSettings
from unistream_common import codec, keys
from unistream_common.consumer import StreamRuntime
from unistream_common.packets import Bar, Tick, TickBatch
from unistream_common.redisio import command_client
from unistream_common.stats import Stats
from unistream_ingest.service import IngestService
from unistream_ingest.settings import IngestSettings
from unistream_tools.redis_server import RedisServer, free_port, start_redis

pytestmark = [pytest.mark.heavy, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
UNISTREAM = REPO / ".venv" / "bin" / "unistream"
LIVE_SYMBOLS = ("ETHUSDT", "BTCUSDT")
FORMING_WINDOW_S = 2.0  # how long the forming 1s bar is watched
FORMING_LAG_S = 0.5  # a trade in the stream this long must be in the forming bar (timer: 0.1 s)
MINUTE_WAIT_S = 25.0  # wait for a minute boundary only when it is this close


def _bars(client: redis.Redis, symbol: str, timeframe: str = "1s") -> list[Bar]:
    out = []
    for _, fields in client.xrange(keys.bars(symbol, timeframe)):
        bar = codec.decode(fields)
        assert isinstance(bar, Bar)
        out.append(bar)
    return out


def _units(x: float) -> int:
    return round(x * 100_000_000)


def _assert_rollup(minute: Bar, seconds: list[Bar]) -> None:
    """A 1m bar is the roll-up of its 1s bars (filled ones set only the close)."""
    assert seconds, f"no 1s bars under the 1m bar {minute}"
    real = [b for b in seconds if not b.filled]
    assert minute.trade_count == sum(b.trade_count for b in seconds)
    assert _units(minute.volume) == sum(_units(b.volume) for b in seconds)
    assert _units(minute.taker_buy_volume) == sum(_units(b.taker_buy_volume) for b in seconds)
    assert minute.close == seconds[-1].close
    assert minute.filled == (not real)
    if real:
        assert minute.open == real[0].open
        assert minute.high == max(b.high for b in real)
        assert minute.low == min(b.low for b in real)


def _watch_forming(
    client: redis.Redis, symbol: str, window_s: float
) -> tuple[list[tuple[float, Bar | None]], dict[int, tuple[float, int]]]:
    """Sample the forming 1s bar every 20 ms for ``window_s``; with each sample, in the same MULTI,
    the trades that reached the tick stream since the last. Returns the samples (monotonic time,
    bar, None while no 1s bar is open) and every trade seen: trade id -> (monotonic time first seen,
    ts_event_ms)."""
    stream = keys.ticks(symbol)
    top = client.xrevrange(stream, count=1)
    last_id = top[0][0].decode() if top else "0-0"
    samples: list[tuple[float, Bar | None]] = []
    trades: dict[int, tuple[float, int]] = {}
    end = time.monotonic() + window_s
    while time.monotonic() < end:
        pipe = client.pipeline(transaction=True)
        pipe.xrange(stream, min=f"({last_id}", max="+")
        pipe.hgetall(keys.forming(symbol, "1s"))
        new, fields = pipe.execute()
        now = time.monotonic()
        for eid, entry in new:
            last_id = eid.decode()
            batch = codec.decode(entry)
            assert isinstance(batch, TickBatch)
            for tick in batch.ticks:
                trades.setdefault(tick.trade_id, (now, tick.ts_event_ms))
        forming = codec.decode(fields) if fields else None  # no key: the timer closed the bar, no trade since
        assert forming is None or isinstance(forming, Bar), forming
        samples.append((now, forming))
        time.sleep(0.02)
    return samples, trades


@pytest.mark.skipif(not UNISTREAM.exists(), reason="the unistream entry point is not installed in .venv")
def test_ingest_and_aggregator_processes_write_consecutive_bars_publish_forming_bars_and_stop_on_sigterm(
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
        while any(len(_bars(client, s)) < 4 for s in LIVE_SYMBOLS):
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited:\n{logs[name].read_text()}"
            assert time.monotonic() < deadline, {n: logs[n].read_text()[-2000:] for n in logs}
            time.sleep(0.1)
        for symbol in LIVE_SYMBOLS:
            bars = _bars(client, symbol)
            opens = [b.open_time_ms for b in bars]
            assert opens == list(range(opens[0], opens[0] + 1_000 * len(opens), 1_000))
            assert all(b.source == "SYNTHETIC" and b.symbol == symbol for b in bars)
            assert sum(b.trade_count for b in bars) > 0
            # Bars close within about a second plus the grace of their end (wall clock).
            assert time.time() * 1000 - bars[-1].close_time_ms < 3_000

        # The forming 1s bar follows the trades as they come, within about a timer period.
        samples, trades = _watch_forming(client, "ETHUSDT", FORMING_WINDOW_S)
        assert len(trades) >= 5, f"only {len(trades)} trades in {FORMING_WINDOW_S} s: the market is too quiet to judge"
        shown = [(at, b) for at, b in samples if b is not None]
        states = [(b.open_time_ms, b.trade_count, b.close) if b is not None else None for _, b in samples]
        changes = sum(1 for a, b in itertools.pairwise(states) if a != b)
        assert changes >= 8, (
            f"the forming 1s bar changed {changes} times in {FORMING_WINDOW_S} s ({len(trades)} trades)"
        )
        # At every sample, the trades that reached the stream FORMING_LAG_S before are in the bar shown
        # (or in bars already closed); with no bar shown, none of them is newer than the last one shown.
        stale = []
        shown_end = 0
        for at, bar in samples:
            old = [ts for seen, ts in trades.values() if seen <= at - FORMING_LAG_S]
            if bar is None:
                behind = any(ts >= shown_end for ts in old)
            else:
                shown_end = bar.close_time_ms
                in_bar = sum(1 for ts in old if bar.open_time_ms <= ts < bar.close_time_ms)
                behind = any(ts >= bar.close_time_ms for ts in old) or in_bar > bar.trade_count
            if behind:
                stale.append((round(at - samples[0][0], 3), bar))
        assert not stale, f"forming bar behind the trades by more than {FORMING_LAG_S} s: {stale[:3]}"
        assert len(shown) >= len(samples) // 2
        for _, bar in shown:
            assert (bar.symbol, bar.timeframe, bar.source, bar.filled) == ("ETHUSDT", "1s", "SYNTHETIC", False), bar
        # What the forming bar showed is what the final bar holds (a preview, never a different bar).
        time.sleep(1.5)
        final = {b.open_time_ms: b for b in _bars(client, "ETHUSDT")}
        compared = 0
        for _, bar in shown:
            done = final.get(bar.open_time_ms)
            if done is None:
                continue
            compared += 1
            assert done.open == bar.open and done.trade_count >= bar.trade_count, (bar, done)
            assert done.high >= bar.high and done.low <= bar.low, (bar, done)
            if done.trade_count == bar.trade_count:
                assert done == bar, (bar, done)
        assert compared == len(shown), "a 1s bar shown as forming was never emitted"
        for symbol in LIVE_SYMBOLS:
            for tf in ("1m", "1h", "1d"):
                # Absent for a moment only when that bar just closed and no trade came since.
                deadline = time.monotonic() + 3
                while not (fields := client.hgetall(keys.forming(symbol, tf))):
                    assert time.monotonic() < deadline, f"no forming {tf} bar for {symbol}"
                    time.sleep(0.05)
                higher = codec.decode(fields)
                assert isinstance(higher, Bar) and higher.timeframe == tf, higher
                assert higher.open_time_ms <= time.time() * 1000 < higher.close_time_ms + 2_000, higher
                assert higher.trade_count > 0

        # A minute bar, when a minute boundary has passed or comes soon (the test never waits longer).
        now_ms = time.time() * 1000
        boundary_ms = now_ms - now_ms % 60_000 + 60_000
        if not _bars(client, "ETHUSDT", "1m") and (boundary_ms - now_ms) / 1000 + 2 <= MINUTE_WAIT_S:
            deadline = time.monotonic() + MINUTE_WAIT_S + 5
            while not all(_bars(client, s, "1m") for s in LIVE_SYMBOLS):
                assert time.monotonic() < deadline, "no 1m bar after the minute boundary"
                time.sleep(0.2)
        for symbol in LIVE_SYMBOLS:
            seconds = _bars(client, symbol)
            for minute in _bars(client, symbol, "1m"):
                assert minute.source == "SYNTHETIC" and minute.close_time_ms <= seconds[-1].close_time_ms
                _assert_rollup(
                    minute, [b for b in seconds if minute.open_time_ms <= b.open_time_ms < minute.close_time_ms]
                )

        for name, port in ports.items():
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/healthz", timeout=2).json() == {"status": "ok", "service": name}
            ready = httpx.get(f"{base}/readyz", timeout=2)
            assert ready.status_code == 200, ready.text
            stats = httpx.get(f"{base}/stats", timeout=2).json()
            assert stats["service"] == name
        assert httpx.get(f"http://127.0.0.1:{ports['ingest']}/stats").json()["info"]["source"] == "SYNTHETIC"
        info = httpx.get(f"http://127.0.0.1:{ports['aggregator']}/stats").json()["info"]
        assert info["owned"] == sorted(LIVE_SYMBOLS)
        # the latencies users alert on, as Prometheus histograms the client library's parser reads
        for name, histogram in (("ingest", "unistream_ingest_tick_write_seconds"),
                                ("aggregator", "unistream_aggregator_bar_close_seconds")):  # fmt: skip
            text = httpx.get(f"http://127.0.0.1:{ports[name]}/metrics", timeout=2).text
            families = {f.name: f for f in text_string_to_metric_families(text)}
            assert families[histogram].type == "histogram", name
            counts = [x.value for x in families[histogram].samples if x.name.endswith("_count")]
            assert counts and all(c > 0 for c in counts), (name, counts)
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
    """A bug that raises half-way through a batch must not corrupt bars or dead-letter good entries.

    REPLAY data: bars close on event time only, so the end state does not depend on the wall clock
    (the last 1s bar stays open, its entries pending).
    """
    t0 = 1_717_200_000_000 - 120_000  # over a minute boundary or two
    batches = [
        TickBatch(
            symbol="ETHUSDT",
            source="REPLAY",
            ticks=[Tick(i * 3 + j, 100.0 + (i * 3 + j) % 7, 1.0, "BUY", t + j * 150, t + j * 150) for j in range(3)],
        )
        for i, t in enumerate(range(t0, t0 + 400_000, 400))  # 1,000 entries: two reads of 500
    ]
    client = command_client(redis_url)
    for b in batches:
        await client.xadd(keys.ticks("ETHUSDT"), codec.encode(b))
    reference = BarAggregator()
    out = reference.apply([(("s", str(i)), b) for i, b in enumerate(batches)])
    expected = {tf: [b for b in out.bars if b.timeframe == tf] for tf in ("1s", "1m")}
    held = len(reference.held())
    assert held and reference.close_due(t0 + 10**7).bars == []  # the timer leaves REPLAY alone

    settings = AggregatorSettings(redis_url=redis_url, symbols="ETHUSDT")  # type: ignore[arg-type]
    stats = Stats("aggregator")
    runtime = StreamRuntime(redis_url, "aggregator-test", settings.symbols, stats)
    shell = AggregatorService(settings, stats, runtime)
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
            done = top and top[0][0] == f"{expected['1s'][-1].open_time_ms}-0".encode()
            if done and (await client.xpending(keys.ticks("ETHUSDT"), keys.GROUP_AGGREGATOR))["pending"] == held:
                break
            assert not task.done(), task
            assert time.monotonic() < deadline, "bars did not complete"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runtime.close()
    for tf, bars in expected.items():
        got = [(eid.decode(), codec.decode(f)) for eid, f in await client.xrange(keys.bars("ETHUSDT", tf))]
        assert got == [(f"{b.open_time_ms}-0", b) for b in bars], tf
    assert len(expected["1m"]) >= 5
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
    shell = AggregatorService(settings, stats, runtime)
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
    # The timer closed the good trade's bar and filled the quiet seconds since (a live source).
    first, *filled = [codec.decode(f) for _, f in await client.xrange(keys.bars("ETHUSDT", "1s"))]
    assert isinstance(first, Bar) and first.trade_count == 1 and first.high == 10.0 and not first.filled
    assert all(isinstance(b, Bar) and b.filled and b.close == 10.0 for b in filled)
    assert not await client.exists(keys.bars("BTCUSDT", "1s"))
    assert stats.total("aggregator_batches_refused") == 1
    assert (await client.xpending(keys.ticks("ETHUSDT"), keys.GROUP_AGGREGATOR))["pending"] == 0
    await client.aclose()


async def _crash_redis_under_ingest_and_aggregator(
    server: RedisServer, hold_ms: int
) -> tuple[Stats, Stats, dict[str, list[Bar]], dict[str, list[Tick]]]:
    """Synthetic ingest and the aggregator, in process, through a Redis crash (SIGKILL, 1 s down).

    Ingest comes back 2 s after Redis, so the aggregator reconnects first and, by the wall clock
    alone, would close the outage's seconds before their trades arrive. Returns
    both services' stats and, per symbol, the 1s bars and the ticks in Redis at the end.
    """
    symbols = ",".join(LIVE_SYMBOLS)
    ingest_cfg = IngestSettings(redis_url=server.url, symbols=symbols, flush_interval_ms=20, retry_backoff_max_ms=3_000)  # type: ignore[arg-type]
    ingest_stats, agg_stats = Stats("ingest"), Stats("aggregator")
    ingest_client = command_client(server.url, timeout_s=1.0)
    writer = IngestService(ingest_cfg, ingest_stats, ingest_client)
    settings = AggregatorSettings(redis_url=server.url, symbols=symbols, watermark_hold_ms=hold_ms)  # type: ignore[arg-type]
    runtime = StreamRuntime(server.url, "aggregator-1", settings.symbols, agg_stats)
    shell = AggregatorService(settings, agg_stats, runtime)
    shell.register()
    # The aggregator retries every 0.2 s at most, so it is back well before ingest whatever the load
    # (its backoff of up to 2.4 s after a 1 s outage let it come back after ingest on a busy machine).
    assert shell.gc is not None
    shell.gc.options = dataclasses.replace(shell.gc.options, backoff_max_s=0.2)
    tasks = [asyncio.create_task(writer.run()), asyncio.create_task(run_with_restarts(runtime, shell))]
    restarted = server
    try:
        await asyncio.sleep(2.5)
        assert ingest_stats.total("ingest_ticks_written") > 0 and not any(t.done() for t in tasks)
        server.kill()
        await asyncio.sleep(1.0)
        restarted = start_redis(server.data_dir, port=server.port, appendonly=True)
        # ingest's way back takes 2 s more (its backoff, a slow network): the aggregator is back first
        writer._retry_at = time.monotonic() + 2.0
        deadline = time.monotonic() + 15
        while writer.buffer.size() or ingest_stats.total("ingest_write_errors") == 0:
            assert time.monotonic() < deadline, "ingest did not write its buffer after the restart"
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)  # the bars of the outage close
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runtime.close()
        await ingest_client.aclose()
    client = redis.Redis.from_url(restarted.url)
    bars = {symbol: _bars(client, symbol) for symbol in LIVE_SYMBOLS}
    ticks = {
        symbol: [t for _, f in client.xrange(keys.ticks(symbol)) for t in codec.decode(f).ticks]  # type: ignore[union-attr]
        for symbol in LIVE_SYMBOLS
    }
    client.close()
    restarted.stop()
    return ingest_stats, agg_stats, bars, ticks


async def test_trades_ingest_held_through_a_redis_crash_land_in_their_bars(redis_server: RedisServer) -> None:
    ingest_stats, agg_stats, bars, ticks = await _crash_redis_under_ingest_and_aggregator(redis_server, 30_000)
    assert ingest_stats.total("ingest_write_errors") > 0, "the outage was felt"
    for symbol in LIVE_SYMBOLS:
        opens = [b.open_time_ms for b in bars[symbol]]
        assert opens == list(range(opens[0], opens[-1] + 1, 1_000)), f"{symbol}: a hole in the 1s bars"
        in_span = [t for t in ticks[symbol] if opens[0] <= t.ts_event_ms < opens[-1] + 1_000]
        assert sum(b.trade_count for b in bars[symbol]) == len(in_span), f"{symbol}: trades missing from the bars"
    assert agg_stats.total("aggregator_ticks_late") == 0
    assert agg_stats.total("aggregator_watermark_holds") >= 1, "the bars waited for ingest's watermark"


async def test_a_watermark_that_stands_still_past_the_hold_lets_the_wall_clock_close_bars(
    redis_server: RedisServer,
) -> None:
    # hold 0.5 s: shorter than ingest's way back, so the outage's trades come late, and are counted
    ingest_stats, agg_stats, bars, _ = await _crash_redis_under_ingest_and_aggregator(redis_server, 500)
    assert ingest_stats.total("ingest_write_errors") > 0
    for symbol in LIVE_SYMBOLS:
        opens = [b.open_time_ms for b in bars[symbol]]
        assert opens == list(range(opens[0], opens[-1] + 1, 1_000)), f"{symbol}: bars kept coming, on time"
    assert agg_stats.total("aggregator_ticks_late") > 0, "with no hold, the outage's trades were late"
