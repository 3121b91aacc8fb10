"""Crashes around the aggregator leave exactly the bars of an uninterrupted run (real Redis, real
``unistream aggregator`` processes, a writer thread appending REPLAY tick batches meanwhile):

- the aggregator SIGKILLed at seeded random points, restarted under its own or a new name;
- Redis itself killed and restarted from its AOF (``appendfsync always``) under a running aggregator;
- a tick batch delivered twice: XADDed twice, and redelivered through XCLAIM to other consumer names.

In every case the four bar streams (1s, 1m, 1h, 1d) equal, entry for entry, those of an
uninterrupted aggregator process over the same entries, which in turn equal the pure core applied
in-process. REPLAY data closes bars on event time only, so the last 1s bar of each symbol stays
open and its entries stay pending: that is part of the expected end state.
"""

from __future__ import annotations

import random
import time
from functools import partial
from pathlib import Path

import pytest
from aggregator_harness import (
    MIDNIGHT_MS,
    SYMBOLS,
    Aggregator,
    Expected,
    Reference,
    TickWriter,
    assert_counts_exact,
    assert_same_bars,
    caught_up,
    cleanup,
    entry_id,
    expected_of,
    make_entries,
    pending_ids,
    plain_client,
    reference_run,
    start_aggregator,
    wait_ready,
    wait_until,
    write_all,
)

from unistream_common import keys
from unistream_common.packets import TickBatch
from unistream_tools.redis_server import RedisServer, start_redis

pytestmark = [pytest.mark.heavy, pytest.mark.integration]

SEED = 20_240_601
SECONDS = 3_000  # of event time per symbol: about 3,300 entries, 15,000 trades
T0_MS = MIDNIGHT_MS - 1_500_000  # over a UTC midnight and an hour: every timeframe gets bars
OWNER_TTL_MS = 1_500  # a restart under a new name waits for the dead owner's lease


@pytest.fixture(scope="module")
def entries() -> list[TickBatch]:
    return make_entries(SEED, T0_MS, SECONDS)


@pytest.fixture(scope="module")
def expected(entries: list[TickBatch]) -> Expected:
    return expected_of(entries)


@pytest.fixture(scope="module")
def reference(
    entries: list[TickBatch], expected: Expected, module_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Reference:
    """One uninterrupted aggregator process over ``entries`` (db 15 of the module's server)."""
    url = module_redis.url.rsplit("/", 1)[0] + "/15"
    return reference_run(url, entries, expected, tmp_path_factory.mktemp("reference") / "aggregator.log")


def test_aggregator_sigkilled_at_random_points_while_ticks_arrive_writes_the_bars_of_an_uninterrupted_run(
    redis_server: RedisServer, tmp_path: Path, entries: list[TickBatch], expected: Expected, reference: Reference
) -> None:
    rng = random.Random(SEED)
    # Where each life ends: "working" a random while after it wrote bars of its own (mid-stream), or
    # "early" a random moment after it is ready (possibly while it takes the symbols over).
    lives = ["working", "working", "early", "working", "working"]
    client = plain_client(redis_server.url)
    log = tmp_path / "aggregator.log"
    # The writer goes on over each kill: it may write one more share of the entries per life.
    writer = TickWriter(redis_server.url, entries, chunk=25, pause_s=0.05, allowed=0)
    writer.start()
    aggs: list[Aggregator] = []
    names = ["aggregator-a"]
    seen: list[dict[str, object]] = []

    def n_bars() -> int:
        return sum(client.xlen(keys.bars(s, "1s")) for s in SYMBOLS)

    def grew(since: int) -> bool:
        return n_bars() > since

    try:
        for life, how in enumerate(lives):
            bars_at_start = n_bars()
            agg = start_aggregator(redis_server.url, log, names[-1], owner_ttl_ms=OWNER_TTL_MS)
            aggs.append(agg)
            writer.allow((life + 1) / (len(lives) + 1))
            wait_ready(agg)
            if how == "working":
                wait_until(partial(grew, bars_at_start), 15, f"{agg.consumer} writing bars", [agg])
                time.sleep(rng.uniform(0.0, 0.8))
            else:
                time.sleep(rng.uniform(0.0, 0.3))
            bars_before = n_bars()
            agg.kill()
            seen.append({"life": life, "how": how, "consumer": agg.consumer, "written": writer.written,
                         "bars": bars_before})  # fmt: skip
            assert agg.proc.returncode == -9
            # The same name again (a restarted container) or a new one (the process moved host):
            # the new name must take over the dead one's pending entries once its lease expires.
            names.append(names[-1] if life % 2 == 0 else f"aggregator-host{life}")
        writer.allow(len(entries))
        final = start_aggregator(redis_server.url, log, names[-1], owner_ttl_ms=OWNER_TTL_MS)
        aggs.append(final)
        writer.join_ok()
        wait_until(lambda: caught_up(client, expected), 60, "bars caught up after the kills", [final])
        assert_same_bars(client, reference, log=log)
        assert not client.exists(*(keys.dlq(keys.ticks(s)) for s in SYMBOLS))
        assert final.terminate() == 0, final.tail()
        # The kills did interrupt a run in progress: data was still coming, bars were being written.
        assert all(s["written"] < len(entries) for s in seen), seen
        bars_at_kills = [s["bars"] for s in seen]
        assert bars_at_kills[-1] < sum(len(expected.bars[keys.bars(s, "1s")]) for s in SYMBOLS), seen
        assert len(set(bars_at_kills)) >= 3, f"the kills did not land at different points of the run: {seen}"
        assert "took over" in log.read_text(), "a new consumer name did not take over the dead one's pending entries"
        # Redelivered trades are recognised (not duplicates) and every trade is counted applied once.
        counts = assert_counts_exact(client, reference, entries, expected)
        assert sum(c["ticks_duplicate"] for c in counts.values()) == 0
    finally:
        writer.stop()
        cleanup(aggs)
        client.close()


def test_redis_killed_and_restarted_from_its_aof_under_a_running_aggregator_leaves_the_same_bars(
    tmp_path: Path, entries: list[TickBatch], expected: Expected, reference: Reference
) -> None:
    rng = random.Random(SEED + 1)
    fsync = ["--appendfsync", "always"]  # every acknowledged write is on disk: a kill loses nothing
    data_dir = tmp_path / "redis"
    server = start_redis(data_dir, appendonly=True, extra_args=fsync)
    servers = [server]
    log = tmp_path / "aggregator.log"
    restarts = 2
    writer = TickWriter(server.url, entries, chunk=25, pause_s=0.04, allowed=0)
    agg = start_aggregator(server.url, log, "aggregator-a", owner_ttl_ms=OWNER_TTL_MS)
    client = plain_client(server.url)  # reconnects by itself after each restart (same port)
    try:
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        wait_ready(agg)
        writer.start()
        written_at_kill = []
        for n in range(restarts):
            writer.allow((n + 1) / (restarts + 1))
            time.sleep(rng.uniform(0.3, 1.2))
            written_at_kill.append(writer.written)
            server.kill()
            time.sleep(rng.uniform(0.2, 1.0))  # the aggregator and the writer find no Redis
            assert agg.alive(), agg.tail()
            server = start_redis(data_dir, port=server.port, appendonly=True, extra_args=fsync)
            servers.append(server)
        writer.allow(len(entries))
        writer.join_ok()
        wait_until(lambda: caught_up(client, expected), 60, "bars caught up after the Redis restarts", [agg])
        assert_same_bars(client, reference, log=log)
        assert agg.terminate() == 0, agg.tail()
        assert all(0 < n < len(entries) for n in written_at_kill), written_at_kill
        assert writer.outages > 0, "the writer never saw Redis down: the restarts did not happen mid-stream"
        assert "Redis unreachable" in log.read_text(), "the aggregator never noticed Redis going away"
        counts = assert_counts_exact(client, reference, entries, expected)
        assert sum(c["ticks_duplicate"] for c in counts.values()) == 0
    finally:
        writer.stop()
        cleanup([agg])
        client.close()
        for srv in servers:
            srv.kill()


def test_a_batch_delivered_twice_by_xadd_or_by_xclaim_to_other_consumers_leaves_the_bars_unchanged(
    redis_server: RedisServer, tmp_path: Path, entries: list[TickBatch], reference: Reference
) -> None:
    rng = random.Random(SEED + 2)
    # The same batch XADDed twice: right after itself, or some entries later.
    doubled: list[TickBatch] = list(entries)
    copies = sorted(rng.sample(range(100, len(entries) - 100), 12), reverse=True)
    for i in copies:
        doubled.insert(i + 1 + rng.choice([0, 0, 3, 40]), entries[i])
    dup_ticks = {s: sum(len(entries[i].ticks) for i in copies if entries[i].symbol == s) for s in SYMBOLS}
    expected = expected_of(doubled)
    assert all(n > 0 for n in dup_ticks.values()), dup_ticks

    url = redis_server.url
    client = plain_client(url)
    log = tmp_path / "aggregator.log"
    write_all(url, doubled)
    first = start_aggregator(url, log, "aggregator-a", owner_ttl_ms=OWNER_TTL_MS)
    aggs = [first]
    try:
        wait_until(lambda: caught_up(client, expected), 60, "first aggregator caught up", [first])
        # Redeliver through XCLAIM: entries the first aggregator acknowledged long ago (FORCE puts
        # them back into the pending list) and the ones it holds for its open bars, to a consumer
        # that is gone and to the one that runs next.
        group = keys.GROUP_AGGREGATOR
        redelivered: dict[str, list[str]] = {}
        for symbol in SYMBOLS:
            stream = keys.ticks(symbol)
            done = [entry_id(n) for n, b in enumerate(doubled) if b.symbol == symbol][:-10]
            old = rng.sample(done, 6)
            held = pending_ids(client, stream)
            assert held and not set(old) & set(held)
            client.xclaim(stream, group, "aggregator-gone", 0, old[:3], force=True, justid=True)
            client.xclaim(stream, group, "aggregator-b", 0, old[3:], force=True, justid=True)
            client.xclaim(stream, group, "aggregator-gone", 0, held, justid=True)
            redelivered[symbol] = old + held
            assert sorted(pending_ids(client, stream)) == sorted(old + held)
        # A clean stop hands the symbols over at once; the next aggregator claims what is pending.
        assert first.terminate() == 0, first.tail()
        second = start_aggregator(url, log, "aggregator-b", owner_ttl_ms=OWNER_TTL_MS)
        aggs.append(second)
        # Before it took the symbols over the streams may already look caught up (the first one
        # claimed the moved entries back): wait for the takeover itself.
        wait_until(lambda: second.owns(SYMBOLS), 30, "second aggregator owns the symbols", [second])
        wait_until(lambda: caught_up(client, expected), 30, "second aggregator caught up", [second])
        assert_same_bars(client, reference, log=log)
        assert "took over" in log.read_text()
        counts = assert_counts_exact(client, reference, doubled, expected)
        for symbol in SYMBOLS:
            stream = keys.ticks(symbol)
            consumers = {c["name"].decode(): c["pending"] for c in client.xinfo_consumers(stream, group)}
            assert consumers.get("aggregator-gone", 0) == 0 and consumers.get("aggregator-a", 0) == 0, consumers
            # Trades XADDed twice are counted as duplicates, nothing else is.
            assert counts[symbol]["ticks_duplicate"] == dup_ticks[symbol], (symbol, counts[symbol])
            # Redelivered trades already in emitted bars are recognised as such, each time they come
            # (the first aggregator may itself claim the entries moved away under it, so they can
            # come more than once: the counter is informational, the bars above are exact).
            by_id = {entry_id(n): b for n, b in enumerate(doubled)}
            horizon = expected.last_trade_id[symbol]
            again = sum(1 for eid in redelivered[symbol] for t in by_id[eid].ticks if t.trade_id <= horizon)
            assert counts[symbol]["ticks_already_applied"] >= again, (symbol, counts[symbol], again)
        assert second.terminate() == 0, second.tail()
    finally:
        cleanup(aggs)
        client.close()
