"""The consumer runtime on a real Redis Cluster (3 masters, 3 replicas on free ports): reads and
commits per hash slot, dead letters, fences, and a master killed under a running consumer."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
import redis
from helpers import eventually

from unistream_common import codec, keys
from unistream_common.consumer import ConsumerOptions, Message, Result, SequencedFence, StreamRuntime, Write
from unistream_common.packets import MetricsPacket
from unistream_common.redisio import command_client, is_cluster, s, sync_client
from unistream_common.stats import Stats
from unistream_tools.redis_server import RedisCluster

pytestmark = pytest.mark.heavy

FAST = ConsumerOptions(batch_size=50, block_ms=100, claim_idle_ms=0, max_deliveries=3)


def metric(step: int) -> MetricsPacket:
    return MetricsPacket(producer="t", ts_ms=1_700_000_000_000 + step, step=step, metrics={"x": float(step)})


def streams_on_two_masters(cluster: RedisCluster, prefix: str) -> tuple[str, str]:
    """Two tagged input streams whose slots are served by two different masters."""
    first = f"{prefix}:{{A0}}:in"
    master = cluster.master_of(_slot(first))
    for i in range(1, 200):
        other = f"{prefix}:{{B{i}}}:in"
        if cluster.master_of(_slot(other)) != master:
            return first, other
    raise AssertionError("no second master found")


def _slot(key: str) -> int:
    from redis.crc import key_slot

    return key_slot(key.encode())


def out(stream: str) -> str:
    return stream.replace(":in", ":out")


def per_tag(messages: list[Message]) -> Result:
    return Result(writes=[Write(out(m.stream), m.packet) for m in messages])


async def _true(value: bool) -> bool:
    return value


async def stop(task: asyncio.Task[None], rt: StreamRuntime, client: Any) -> None:
    """Cancel a running runtime and close its clients and the test's."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


def test_the_cluster_fixture_is_three_masters_with_a_replica_each(redis_cluster: RedisCluster) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    assert sum(hi - lo + 1 for ranges in masters.values() for lo, hi in ranges) == 16_384
    assert redis_cluster.cli_run(redis_cluster.nodes[0].port, "cluster", "nodes").count("slave") == 3
    assert is_cluster(redis_cluster.url)


async def test_one_consumer_reads_and_commits_per_slot_across_masters(redis_cluster: RedisCluster) -> None:
    a, b = streams_on_two_masters(redis_cluster, "t1")
    client = command_client(redis_cluster.url)
    for i in range(30):
        await client.xadd(a if i % 2 else b, codec.encode(metric(i)))
    rt = StreamRuntime(redis_cluster.url, "c1", [], Stats("test"))
    assert rt.read_groups([a, b]) == [[a], [b]]
    rt.register_consumer("g", per_tag, [], options=FAST, streams=[a, b])
    task = asyncio.create_task(rt.run())
    try:
        await eventually(lambda: _true(rt.stats.total("consumer_acked") == 30))
        # More while it runs: each slot's read returns on its own.
        for i in range(30, 40):
            await client.xadd(a, codec.encode(metric(i)))
        await eventually(lambda: _true(rt.stats.total("consumer_acked") == 40))
        assert await client.xlen(out(a)) == 25 and await client.xlen(out(b)) == 15
        for stream in (a, b):
            assert (await client.xpending(stream, "g"))["pending"] == 0
        assert rt.stats.total("consumer_redis_errors") == 0
    finally:
        await stop(task, rt, client)


async def test_burst_mode_dead_letters_and_fences_work_per_slot(redis_cluster: RedisCluster) -> None:
    a, b = streams_on_two_masters(redis_cluster, "t2")
    client = command_client(redis_cluster.url)
    await client.xadd(a, codec.encode(metric(1)))
    await client.xadd(a, {b"not": b"a packet"})
    await client.xadd(b, codec.encode(metric(2)))
    fences = {s: SequencedFence(f"t2:fence:{{{keys.hash_tag(s)}}}", "me") for s in (a, b)}
    for fence in fences.values():
        await client.set(fence.key, fence.value)

    def fenced(messages: list[Message]) -> Result:
        return Result(
            writes=[Write(out(m.stream), m.packet) for m in messages],
            fence={fences[m.stream].key: fences[m.stream] for m in messages},
        )

    # The fence keys share their stream's tag, so each part's MULTI holds its own fence.
    for stream, fence in fences.items():
        assert keys.hash_tag(fence.key) == keys.hash_tag(stream)
    rt = StreamRuntime(redis_cluster.url, "c2", [], Stats("test"))
    rt.register_consumer("g", fenced, [], options=FAST, streams=[a, b])
    try:
        assert await rt.run_until_drained() == 3
        assert await client.xlen(out(a)) == 1 and await client.xlen(out(b)) == 1
        dead = await client.xrange(keys.dlq(a))
        assert len(dead) == 1 and b"undecodable" in dead[0][1][b"dlq_reason"]
        assert [s(await client.get(f.key)) for f in fences.values()] == ["me#1", "me#1"]
        for stream in (a, b):
            assert (await client.xpending(stream, "g"))["pending"] == 0
    finally:
        await rt.close()
        await client.aclose()


async def test_a_consumer_carries_on_through_a_master_failover(redis_cluster: RedisCluster) -> None:
    """SIGKILL the master that serves one input stream: its replica is promoted, the runtime
    reconnects and learns the new topology, and every entry written is processed once."""
    a, b = streams_on_two_masters(redis_cluster, "t3")
    victim = redis_cluster.master_of(_slot(a))
    client = command_client(redis_cluster.url)
    # The inputs of a go to its master by one connection, which then waits for the replica to
    # have them (WAIT counts the writes of its own connection): the inputs survive the kill.
    direct = redis.Redis(port=victim)
    for i in range(20):
        if i % 2:
            direct.xadd(a, codec.encode(metric(i)), id=f"{i + 1}-0")
        else:
            await client.xadd(b, codec.encode(metric(i)), id=f"{i + 1}-0")
    assert direct.execute_command("WAIT", 1, 5_000) == 1
    direct.close()
    rt = StreamRuntime(redis_cluster.url, "c3", [], Stats("test"))
    rt.register_consumer("g", per_tag, [], options=FAST, streams=[a, b])
    task = asyncio.create_task(rt.run())
    try:
        await eventually(lambda: _true(rt.stats.total("consumer_acked") == 20))
        # No WAIT for the consumer's own writes: the kill may take them with it.
        redis_cluster.node(victim).kill()
        promoted_s = redis_cluster.wait_failover(victim)
        assert redis_cluster.master_of(_slot(a)) != victim
        writer = command_client(redis_cluster.url)
        for i in range(20, 30):
            await writer.xadd(a, codec.encode(metric(i)), id=f"{i + 1}-0")
        check = sync_client(redis_cluster.url, "check")

        async def all_out() -> bool:
            return check.xlen(out(a)) >= 20 and check.xpending(a, "g")["pending"] == 0

        await eventually(all_out, timeout=60)
        # Outputs of a: each of its 20 inputs at least once (a MULTI the replica had not
        # received when its master died is lost with its acknowledgements: done again).
        steps = {codec.decode(f).step for _, f in check.xrange(out(a))}
        assert steps == set(range(1, 20, 2)) | set(range(20, 30)), steps
        assert check.xlen(out(b)) == 10
        check.close()
        await writer.aclose()
        assert rt.stats.total("consumer_reconnects") >= 1, promoted_s
    finally:
        await stop(task, rt, client)


async def test_a_consumer_commits_every_entry_once_while_its_slot_is_migrated(redis_cluster: RedisCluster) -> None:
    """Fenced commits (WATCH, MULTI/EXEC straight to the slot's master) go on while the slot moves
    to another master key by key: ASK and TRYAGAIN meanwhile, MOVED after; every entry once."""
    a, _ = streams_on_two_masters(redis_cluster, "t5")
    tag = keys.hash_tag(a)
    fence = SequencedFence(f"t5:fence:{{{tag}}}", "me")
    client = command_client(redis_cluster.url)
    await client.set(fence.key, fence.value)
    for i in range(200):  # keys of the slot beside the streams: the migration takes a while
        await client.set(f"t5:pad:{{{tag}}}:{i}", "x" * 1_000)

    def fenced(messages: list[Message]) -> Result:
        return Result(writes=[Write(out(m.stream), m.packet) for m in messages], fence={fence.key: fence})

    rt = StreamRuntime(redis_cluster.url, "c5", [], Stats("test"))
    rt.register_consumer("g", fenced, [], options=dataclasses.replace(FAST, batch_size=5), streams=[a])
    task = asyncio.create_task(rt.run())
    written = 0

    async def write(n: int) -> None:
        nonlocal written
        for _ in range(n):
            await client.xadd(a, codec.encode(metric(written)))
            written += 1
            await asyncio.sleep(0.002)

    try:
        await write(100)
        source = redis_cluster.master_of(_slot(a))
        target = next(port for port in redis_cluster.masters() if port != source)
        writer = asyncio.create_task(write(300))
        moved = await asyncio.to_thread(redis_cluster.migrate_slot, _slot(a), target, 2)
        await writer
        assert moved >= 200 and redis_cluster.master_of(_slot(a)) == target
        await eventually(lambda: _true(rt.stats.total("consumer_acked") >= written), 30)
        steps = [codec.decode(f).step for _, f in await client.xrange(out(a))]
        assert sorted(steps) == list(range(written)), "every entry once"
        assert (await client.xpending(a, "g"))["pending"] == 0
        assert (await client.get(fence.key)).decode().startswith("me#")
        # The moves were met in the commit (redirected, tried again), not as errors that rewind.
        assert rt.stats.total("consumer_redirects") > 0
        assert rt.stats.total("consumer_redis_errors") == 0
    finally:
        await stop(task, rt, client)


async def test_a_timer_waiting_for_a_read_to_end_is_not_held_up_by_another_slot_s_batch(
    redis_cluster: RedisCluster,
) -> None:
    """The aggregator hands a symbol back from its timer, under the consumer's lock, and first waits
    until no read of the symbol's stream is under way (``quiesce``). On a cluster each slot has a
    read of its own: another slot's read may come back meanwhile, its batch waiting for that lock.
    The wait ends when the stream's own read does (seen: an aggregator stuck for good with nine of
    ten symbols, the lock held by a wait on a read loop that waited for the lock)."""
    a, b = streams_on_two_masters(redis_cluster, "t6")
    client = command_client(redis_cluster.url)
    rt = StreamRuntime(redis_cluster.url, "c6", [], Stats("test"))
    go, waited = asyncio.Event(), asyncio.get_running_loop().create_future()

    async def hand_back_b(now_ms: int) -> None:
        if not go.is_set() or waited.done():
            return
        await client.xadd(a, codec.encode(metric(1)))  # a's read comes back with it: its batch waits for the lock
        await asyncio.sleep(0.3)
        started = asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(gc.quiesce(b), 5)
            waited.set_result(asyncio.get_running_loop().time() - started)
        except TimeoutError:
            waited.set_result(None)

    options = dataclasses.replace(FAST, block_ms=500, timer_interval_s=0.05)
    gc = rt.register_consumer("g", per_tag, [], options=options, streams=[a, b], on_timer=hand_back_b)
    task = asyncio.create_task(rt.run())
    try:
        await eventually(lambda: _true(len(gc._reads) == 2), 10, "a read under way on each slot")
        go.set()
        took = await asyncio.wait_for(waited, 15)
        assert took is not None, "quiesce(b) never returned: b's read ended, the read loop waited for the lock"
        assert took < 1.0, "b's read ends within its block time"
        await eventually(lambda: _true(rt.stats.total("consumer_acked") == 1), 10, "a's batch delivered after")
    finally:
        await stop(task, rt, client)
