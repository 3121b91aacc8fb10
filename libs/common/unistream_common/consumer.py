"""The consumer runtime: the design's ``register_consumer(name, callback, data_types)`` on consumer groups.

One registered consumer is one Redis consumer group (``name``) over the streams of its data
types; this process is one consumer in that group, under a name that stays the same across
restarts of the same process slot. The life of a batch:

1. read: first this consumer's own pending entries (ID ``0``), then new ones (``>``), in batches;
   every ``claim_every_s`` also entries left idle by dead consumers (XAUTOCLAIM);
2. decode: an entry that does not decode is dead-lettered at once (``<stream>:dlq``) with the
   reason, and acknowledged, in one MULTI;
3. call back: ``callback(messages) -> Result`` returns the packets to write and, optionally,
   which of the delivered entries to acknowledge now (a callback that holds entries in open
   state, like the aggregator's open bar, acknowledges them later from ``on_timer`` or a later
   call);
4. commit: writes, state keys and acknowledgements go out in one MULTI, so an entry is
   acknowledged only together with what it produced. Writes with an explicit id that Redis
   refuses as "equal or smaller than the top item" are counted as already written. A result
   may name fencing keys (a lease): the MULTI then runs under WATCH and only while each key
   still holds the value the callback expects, else :class:`FenceLost` is raised and nothing
   is written. A :class:`SequencedFence` also moves with every commit, so a Redis that rolled
   back (restarted without its last writes) is noticed at the next commit, however the
   connection came back, and counted (``consumer_rollbacks``); the rewind that follows rebuilds
   the callback's state from what Redis really holds.

A callback that raises is retried entry by entry to isolate the poison (unless it raised a
connection error: Redis went away under it, which is an outage like any other); an entry that keeps
failing, or that was delivered more than ``max_deliveries`` times (it may have crashed its
consumers), is dead-lettered. A lost connection or a Redis restart makes the runtime reconnect
with backoff and re-read its pending entries; ``on_rewind`` tells the callback to forget state
built from unacknowledged entries, which come again. NOGROUP (Redis lost its data) recreates
the group from ``0``: whatever the stream now holds has not been processed by this group.

Burst mode (:meth:`StreamRuntime.run_until_drained`) runs the same steps without the loop: deliver
what the streams hold now, run each timer once, return. Integration tests use it to process
"everything written so far" and then look, instead of sleeping and hoping the loop got there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import itertools
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from unistream_common import codec, keys
from unistream_common.packets import Packet
from unistream_common.redisio import (
    REDIRECTS,
    autoclaim_reply,
    blocking_client,
    close_transaction_clients,
    command_client,
    is_cluster,
    is_id_too_small,
    read_reply,
    refresh_topology,
    s,
    transaction_client,
    xreadgroup,
)
from unistream_common.stats import Stats

log = logging.getLogger(__name__)

DLQ_MAXLEN = 100_000
# RedisClusterException: the cluster client found no reachable node, or no node serving a slot (mid-failover).
CONNECTION_ERRORS = (
    RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, asyncio.TimeoutError, RedisClusterException,
)  # fmt: skip


HEALTHY_S = 10.0  # connected this long: the next failure backs off from the shortest delay again
REDIRECT_WAIT_S = 30.0  # a commit waits this long for its slot to be served again (a migration, a failover)


@dataclass(frozen=True)
class Message:
    """One decoded entry handed to a callback."""

    stream: str
    id: str
    packet: Packet
    deliveries: int = 1
    fields: dict[bytes, bytes] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Write:
    """A packet to append to ``stream``; ``id`` explicit (``<ms>-0``) for idempotent writes.

    An explicit id that Redis refuses as not above the stream's top means the packet is already
    there, unless ``renumber``: the id was only chosen ahead of the write (to be named by a later
    packet) and another writer went above it, so the packet is appended again under an id Redis
    picks (``consumer_renumbered_writes``) rather than lost.
    """

    stream: str
    packet: Packet
    id: str = "*"
    maxlen: int | None = None
    renumber: bool = False


@dataclass(frozen=True)
class StateWrite:
    """A key written in the same MULTI as a result's packets: SET ``value`` (a string key), or
    HINCRBY ``incr`` and HSET ``fields`` (a hash)."""

    key: str
    value: bytes | None = None
    incr: Mapping[str, int] = field(default_factory=dict)
    fields: Mapping[str, str | bytes | int | float] = field(default_factory=dict)


@dataclass
class Result:
    """What a callback produced. ``ack=None`` acknowledges every message it was given.

    ``state`` keys are written with the packets; ``fence`` maps keys to the values they must
    still hold when the MULTI runs (see :class:`FenceLost`).
    """

    writes: list[Write] = field(default_factory=list)
    ack: list[tuple[str, str]] | None = None
    state: list[StateWrite] = field(default_factory=list)
    fence: Mapping[str, str | SequencedFence] = field(default_factory=dict)


class FenceLost(Exception):
    """A fencing key no longer held the expected value: the commit was not made.

    ``keys`` are the keys that differed. Nothing of the result was written or acknowledged;
    the entries stay pending for whoever holds the fence now. ``rolled_back``: a sequenced
    fence was found at an earlier commit of its own holder (Redis lost acknowledged writes).
    """

    def __init__(self, keys: list[str], rolled_back: bool = False) -> None:
        what = "Redis rolled back behind the last commits of" if rolled_back else "fencing keys changed:"
        super().__init__(f"{what} {', '.join(keys)}")
        self.keys = keys
        self.rolled_back = rolled_back


class RewindRequested(Exception):
    """Raised by a callback or timer that wants its state rebuilt from Redis now (``on_rewind``),
    e.g. after it took over a symbol whose state another process was building. Nothing of the
    call is written; the runtime rewinds at once, without a backoff."""


@dataclass
class SequencedFence:
    """A fencing key holding ``<holder>#<n>``, where ``n`` counts the holder's commits.

    In a result's ``fence``, the commit runs only while the key holds this value, and sets it to
    the next one in the same MULTI. Redis that lost the last commits (killed before its
    append-only file had them, a failover to a lagging replica) lost their moves too: the key
    is found at an earlier ``n`` of the same holder, which is a rollback, not a takeover.
    """

    key: str
    holder: str
    n: int = 0

    @property
    def value(self) -> str:
        return f"{self.holder}#{self.n}"

    @property
    def next_value(self) -> str:
        return f"{self.holder}#{self.n + 1}"

    def behind(self, found: str | None) -> bool:
        """True when ``found`` is an earlier value of this holder's."""
        holder, _, n = (found or "").rpartition("#")
        return holder == self.holder and n.isdigit() and int(n) < self.n


def fence_value(expected: str | SequencedFence) -> str:
    return expected.value if isinstance(expected, SequencedFence) else expected


Callback = Callable[[list[Message]], "Awaitable[Result | None] | Result | None"]
TimerCallback = Callable[[int], "Awaitable[Result | None] | Result | None"]


@dataclass
class ConsumerOptions:
    """Tuning of one registered consumer. Times in the unit of their suffix."""

    batch_size: int = 500
    block_ms: int = 2_000  # keep short: see the field notes on blocking reads
    claim_idle_ms: int = 60_000  # entries idle this long on another consumer are taken over (0: never)
    claim_every_s: float = 5.0
    max_deliveries: int = 5  # a failing entry is dead-lettered after this many attempts
    start_id: str = "0"  # where a new group starts: 0 = everything retained
    # Consumers idle this long with nothing pending are removed from the group, so replicas that
    # went away (a scaled-down trainer, a replica renamed) do not pile up in XINFO and status.
    # Removing a live one would be harmless (its next read recreates it, and it holds nothing),
    # and a live consumer reads at least every block_ms: two minutes is far from that.
    forget_idle_ms: int = 120_000
    timer_interval_s: float = 0.0  # 0: no on_timer calls
    # One MULTI per Redis Cluster hash slot instead of one for the whole result: for callbacks
    # whose outputs are independent per hash tag (the aggregator's symbols).
    commit_per_slot: bool = False
    backoff_min_s: float = 0.1
    backoff_max_s: float = 5.0


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def raise_if_cancel_lost() -> None:
    """Re-raise a cancellation that an inner ``asyncio.wait_for`` swallowed.

    redis-py wraps commands in ``wait_for`` when a socket timeout is set, and on Python 3.11
    that can lose a ``cancel()`` (CPython gh-86296, fixed in 3.12): the loop would run on after
    shutdown asked it to stop. Checked once per loop iteration.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def split_by_slot(result: Result, acks: list[tuple[str, str]]) -> list[Result]:
    """``result`` with ``acks`` as one Result per hash tag (keys.hash_tag), in order of appearance."""
    parts: dict[str, Result] = {}

    def part(key: str) -> Result:
        tag = keys.hash_tag(key)
        if tag not in parts:
            parts[tag] = Result(ack=[], fence={})
        return parts[tag]

    for w in result.writes:
        part(w.stream).writes.append(w)
    for sw in result.state:
        part(sw.key).state.append(sw)
    for ref in acks:
        part(ref[0]).ack.append(ref)  # type: ignore[union-attr]
    for key, value in result.fence.items():
        part(key).fence[key] = value  # type: ignore[index]
    # A part with a fence but nothing to write needs no commit.
    return [r for r in parts.values() if r.writes or r.state or r.ack]


class GroupConsumer:
    """One registered consumer (a consumer group) and its read-process-commit loop."""

    def __init__(
        self,
        runtime: StreamRuntime,
        name: str,
        callback: Callback,
        streams: Sequence[str],
        options: ConsumerOptions,
        on_timer: TimerCallback | None = None,
        on_rewind: Callable[[], Any] | None = None,
        packet_types: Iterable[type] | None = None,
        dynamic: bool = False,
    ) -> None:
        if not streams and not dynamic:
            raise ValueError(f"consumer {name!r} reads no streams")
        self.runtime = runtime
        self.group = name
        self.callback = callback
        self.streams = list(streams)
        self.options = options
        self.on_timer = on_timer
        self.on_rewind = on_rewind
        self.packet_types = tuple(packet_types) if packet_types else None
        self.connected = False
        self.dynamic = dynamic  # streams come and go with add_stream / remove_stream
        self.held: set[tuple[str, str]] = set()  # delivered, not yet acknowledged by the callback
        # Entries the callback was holding when the runtime last rewound, or was processing when
        # Redis went away: their redelivery is the runtime's doing, not a sign of poison, so it
        # does not count towards max_deliveries.
        self._rewound: set[tuple[str, str]] = set()
        self._interrupted: set[tuple[str, str]] = set()
        self._next_claim = 0.0
        self._next_timer = 0.0
        self._wake_ms: float | None = None  # see wake_at
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one delivery or timer call at a time
        # The blocking reads under way (one per hash slot on a cluster), by the streams they read.
        self._reads: dict[tuple[str, ...], asyncio.Task[Any]] = {}
        self._streams_changed = asyncio.Event()
        # Which of its streams a dynamic consumer may read now (e.g. those whose lease outlasts
        # the next blocking read); None: all of them.
        self.readable: Callable[[list[str]], list[str]] | None = None
        self._labels = {"group": name}
        self._burst_started = False  # burst mode (run_until_drained) has set up and rewound

    @property
    def consumer(self) -> str:
        return self.runtime.consumer

    @property
    def stats(self) -> Stats:
        return self.runtime.stats

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until cancelled, reconnecting through Redis outages."""
        delay = self.options.backoff_min_s
        failed = False
        while True:
            connected_at: float | None = None
            try:
                if failed:
                    await self.runtime.refresh_topology()
                failed = True
                await self._setup()
                await self._rewind()
                await self._drain_pending()
                self._rewound.clear()
                self.connected = True
                connected_at = time.monotonic()
                await self._loop()
            except asyncio.CancelledError:
                self.connected = False
                raise
            except RewindRequested as exc:
                self.connected = False
                failed = False  # not an outage: the topology is as it was
                self.stats.inc("consumer_rewinds_requested", **self._labels)
                log.info("%s/%s: rewinding (%s)", self.group, self.consumer, exc)
                continue
            except FenceLost as exc:
                # Another process holds the fence now: forget everything built on it and start over.
                self.connected = False
                log.warning("%s/%s: %s; rewinding in %.1fs", self.group, self.consumer, exc, delay)
            except CONNECTION_ERRORS as exc:
                self.connected = False
                self.stats.inc("consumer_reconnects", **self._labels)
                log.warning("%s/%s: Redis unreachable (%s); retrying in %.1fs", self.group, self.consumer, exc, delay)
            except ResponseError as exc:
                self.connected = False
                # NOGROUP: the group is gone; UNBLOCKED: the key vanished under a blocked read.
                if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):
                    self.stats.inc("consumer_nogroup_recoveries", **self._labels)
                    log.warning("%s: group or stream vanished (%s); recreating from 0", self.group, exc)
                    continue
                self.stats.inc("consumer_redis_errors", **self._labels)
                log.error("%s/%s: Redis error %s; retrying in %.1fs", self.group, self.consumer, exc, delay)
            # The backoff starts over only after a healthy stretch: a consumer whose set-up works
            # but whose reads fail at once (a user without the right to read, say) backs off too,
            # instead of retrying and logging at the shortest delay forever.
            if connected_at is not None and time.monotonic() - connected_at >= HEALTHY_S:
                delay = self.options.backoff_min_s
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.options.backoff_max_s)

    async def run_until_drained(self, now_ms: int | None = None) -> int:
        """Burst mode: deliver what the streams hold now, run the timer once, return; for tests and
        one-shot jobs that want "process everything, then look" without sleeping.

        The first call does what :meth:`run` does on connecting (create the groups, rewind, deliver
        this consumer's own pending entries); every call then reads new entries without blocking
        until a read comes back empty, and calls ``on_timer`` once with ``now_ms`` (default: the
        wall clock) if there is one. Returns the number of entries read. Errors propagate: no
        reconnecting, no backoff.
        """
        read = 0
        async with self._lock:
            if not self._burst_started:
                await self._setup()
                await self._rewind()
                await self._drain_pending()
                self._rewound.clear()
                self._burst_started = True
            while True:
                streams = self.readable(list(self.streams)) if self.readable is not None else list(self.streams)
                got = 0
                for group in self.runtime.read_groups(streams):
                    reply = await xreadgroup(
                        self.runtime.cmd, self.group, self.consumer, dict.fromkeys(group, ">"), self.options.batch_size
                    )
                    batch = read_reply(reply)
                    got += sum(len(entries) for _, entries in batch)
                    if batch:
                        await self._deliver(batch, {})
                if not got:
                    break
                read += got
            if self.on_timer is not None:
                await self._run_timer(now_ms)
        return read

    async def _setup(self) -> None:
        for stream in self.streams:
            await self.ensure_group(stream)

    async def ensure_group(self, stream: str) -> None:
        """Create the group on ``stream`` (and the stream) unless it exists, and this consumer in it."""
        cmd = self.runtime.cmd
        try:
            await cmd.xgroup_create(stream, self.group, id=self.options.start_id, mkstream=True)
            log.info("created group %s on %s from %s", self.group, stream, self.options.start_id)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await cmd.xgroup_createconsumer(stream, self.group, self.consumer)

    async def _rewind(self) -> None:
        self._rewound = set(self.held) | self._interrupted
        self.held.clear()
        self._interrupted.clear()
        if self.on_rewind is not None:
            await _maybe_await(self.on_rewind())

    async def add_stream(self, stream: str) -> None:
        """Start reading ``stream`` (dynamic consumers): create the group, deliver own pending first.

        Call it from a callback or timer of this consumer, which runs inside its loop.
        """
        if stream in self.streams:
            return
        await self.ensure_group(stream)
        self.streams.append(stream)
        await self._drain_pending([stream])
        self._streams_changed.set()

    def remove_stream(self, stream: str) -> None:
        """Stop reading ``stream``; entries held from it stay pending in Redis for the next reader.

        A blocking read already under way may still take new entries of it: they stay pending
        on this consumer. Await :meth:`quiesce` before letting another consumer take the stream
        over (it claims what is pending here).
        """
        if stream in self.streams:
            self.streams.remove(stream)
        self.held = {ref for ref in self.held if ref[0] != stream}

    async def take_over_pending(self, stream: str) -> int:
        """Claim the entries of ``stream`` pending on other consumers of the group; how many.

        Delivery counts are kept (JUSTID). The next read of this consumer's own pending entries
        (as :meth:`add_stream` does) delivers them, in stream order with the rest of its pending
        ones: handing them to the callback apart could put them out of order with a batch read
        but not yet delivered.
        """
        cmd, claimed, start = self.runtime.cmd, 0, "-"
        while True:
            rows = await cmd.xpending_range(stream, self.group, min=start, max="+", count=1_000)
            ids = [s(r["message_id"]) for r in rows if s(r["consumer"]) != self.consumer]
            if ids:
                await cmd.xclaim(stream, self.group, self.consumer, 0, ids, justid=True)
                claimed += len(ids)
            if len(rows) < 1_000:
                return claimed
            start = "(" + s(rows[-1]["message_id"])

    async def quiesce(self, stream: str) -> None:
        """Wait until no read of ``stream`` is under way (at most one blocking read's time).

        Waits on the read itself, not on the read loop: the caller may hold the lock the loop
        needs to deliver another slot's batch (on a cluster reads of several slots are under way
        at once), and the loop would then never come back to notice the read had ended.
        """
        while under_way := [task for streams, task in self._reads.items() if stream in streams and not task.done()]:
            await asyncio.wait(under_way)

    async def _loop(self) -> None:
        """Read and deliver batches; alongside, run the timer on its own clock.

        The timer is a task of its own rather than a step between reads because a blocking read
        returns on Redis's clock (its timeouts fire at the server's ``hz``, every 100 ms by
        default), which would make a timer that wants to run at a given millisecond late by up
        to that much. A lock keeps deliveries and timer calls from interleaving.
        """
        tasks = [asyncio.create_task(self._read_loop(), name=f"consumer:{self.group}:read")]
        if self.on_timer is not None and self.options.timer_interval_s > 0:
            tasks.append(asyncio.create_task(self._timer_loop(), name=f"consumer:{self.group}:timer"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_loop(self) -> None:
        """Blocking reads of this consumer's streams, delivered as they come back.

        One read covers every stream on a single Redis; on a cluster there is one read per hash
        slot (StreamRuntime.read_groups), each under way on its own while the others' batches
        are delivered, so a quiet symbol does not hold up a busy one and no command spans two
        slots. A stream is never in two reads at once: its entries are delivered in order.
        """
        opts = self.options
        reads = self._reads
        try:
            while True:
                raise_if_cancel_lost()
                now = time.monotonic()
                if now >= self._next_claim:
                    self._next_claim = now + opts.claim_every_s
                    async with self._lock:
                        await self._claim()
                streams = self.readable(list(self.streams)) if self.readable is not None else list(self.streams)
                busy = {stream for group in reads for stream in group}
                for group in self.runtime.read_groups(streams):
                    if busy.isdisjoint(group):
                        reads[tuple(group)] = asyncio.create_task(self._read(group))
                if not reads:
                    # A dynamic consumer that owns nothing (yet): until add_stream or the next check.
                    self._streams_changed.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._streams_changed.wait(), opts.block_ms / 1000)
                    continue
                done, _ = await asyncio.wait(reads.values(), return_when=asyncio.FIRST_COMPLETED)
                replies = [reads.pop(group).result() for group in [g for g, task in reads.items() if task in done]]
                for reply in replies:
                    batch = read_reply(reply)
                    if batch:
                        async with self._lock:
                            # A stream removed while the read was under way: its entries stay pending
                            # for whoever reads that stream next.
                            batch = [(stream, entries) for stream, entries in batch if stream in self.streams]
                            await self._deliver(batch, {})
                self.stats.set("consumer_last_read_ms", time.time() * 1000, **self._labels)
        finally:
            for task in reads.values():
                task.cancel()
            await asyncio.gather(*reads.values(), return_exceptions=True)
            reads.clear()

    async def _read(self, streams: list[str]) -> Any:
        """One blocking XREADGROUP of new entries of ``streams`` (all in one slot on a cluster)."""
        return await asyncio.wait_for(
            xreadgroup(
                self.runtime.reader, self.group, self.consumer, dict.fromkeys(streams, ">"), self.options.batch_size,
                self.options.block_ms,
            ),
            timeout=self.options.block_ms / 1000 + 10,
        )  # fmt: skip

    def wake_at(self, wall_ms: float) -> None:
        """Run the timer at ``wall_ms`` (ms since the epoch) if that is before its next interval."""
        self._wake_ms = wall_ms if self._wake_ms is None else min(self._wake_ms, wall_ms)
        self._wake.set()

    async def _timer_loop(self) -> None:
        interval = self.options.timer_interval_s
        while True:
            raise_if_cancel_lost()
            if self._wake_ms is not None:
                wake = time.monotonic() + (self._wake_ms - time.time() * 1000) / 1000
                self._next_timer = min(self._next_timer, wake)
                self._wake_ms = None
            delay = self._next_timer - time.monotonic()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            self._next_timer = time.monotonic() + interval
            async with self._lock:
                await self._run_timer()

    # --- reading ---------------------------------------------------------------------------

    async def _drain_pending(self, streams: Sequence[str] | None = None) -> None:
        """Deliver this consumer's own pending entries (left by a previous run) before new ones."""
        for stream in list(self.streams if streams is None else streams):
            last = "0"
            while True:
                raise_if_cancel_lost()
                reply = await xreadgroup(
                    self.runtime.cmd, self.group, self.consumer, {stream: last}, self.options.batch_size
                )
                batch = read_reply(reply)
                entries = batch[0][1] if batch else []
                if not entries:
                    break
                last = entries[-1][0]
                self.stats.inc("consumer_pending_redelivered", len(entries), **self._labels)
                await self._deliver([(stream, entries)], await self._deliveries(stream, entries))

    async def _claim(self) -> None:
        """Take over entries idle on other (dead) consumers for longer than claim_idle_ms."""
        for stream in self.streams if self.options.claim_idle_ms > 0 else []:
            cursor = "0-0"
            while True:
                raise_if_cancel_lost()
                reply = await self.runtime.cmd.xautoclaim(
                    stream,
                    self.group,
                    self.consumer,
                    min_idle_time=self.options.claim_idle_ms,
                    start_id=cursor,
                    count=self.options.batch_size,
                )
                cursor, entries, deleted = autoclaim_reply(reply)
                if deleted:
                    self.stats.inc("consumer_trimmed_pending", len(deleted), **self._labels)
                entries = [e for e in entries if (stream, e[0]) not in self.held]
                if entries:
                    self.stats.inc("consumer_claimed", len(entries), **self._labels)
                    log.info("%s/%s claimed %d idle entries of %s", self.group, self.consumer, len(entries), stream)
                    await self._deliver([(stream, entries)], await self._deliveries(stream, entries))
                if cursor in ("0-0", "0"):
                    break
        await self._forget_departed()

    async def _forget_departed(self) -> None:
        """Delete other consumers that hold nothing and have been idle for forget_idle_ms."""
        for stream in list(self.streams):
            for info in await self.runtime.cmd.xinfo_consumers(stream, self.group):
                name = s(info["name"])
                if (
                    name != self.consumer
                    and int(info["pending"]) == 0
                    and int(info["idle"]) >= self.options.forget_idle_ms
                ):
                    # DELCONSUMER drops a consumer's pending entries, hence only when it has none.
                    await self.runtime.cmd.xgroup_delconsumer(stream, self.group, name)
                    self.stats.inc("consumer_forgotten", **self._labels)
                    log.info("%s: removed departed consumer %s from %s", self.group, name, stream)

    async def _deliveries(self, stream: str, entries: list[tuple[str, Any]]) -> dict[str, int]:
        rows = await self.runtime.cmd.xpending_range(
            stream, self.group, min=entries[0][0], max=entries[-1][0], count=len(entries) + 10
        )
        return {s(r["message_id"]): int(r["times_delivered"]) for r in rows}

    # --- processing ------------------------------------------------------------------------

    async def _deliver(self, batch: list[tuple[str, list[tuple[str, Any]]]], deliveries: dict[str, int]) -> None:
        messages: list[Message] = []
        dead: list[tuple[str, str, dict[bytes, bytes], str]] = []
        ack_only: list[tuple[str, str]] = []
        max_d = self.options.max_deliveries
        for stream, entries in batch:
            for eid, fields in entries:
                if not fields:
                    ack_only.append((stream, eid))  # trimmed before we processed it
                    self.stats.inc("consumer_trimmed_pending", **self._labels)
                    continue
                try:
                    packet = codec.decode(fields)
                except codec.DecodeError as exc:
                    self.stats.inc("consumer_decode_errors", stream=stream, **self._labels)
                    dead.append((stream, eid, fields, f"undecodable: {exc}"))
                    continue
                if self.packet_types is not None and not isinstance(packet, self.packet_types):
                    ack_only.append((stream, eid))
                    self.stats.inc("consumer_skipped", **self._labels)
                    continue
                n = deliveries.get(eid, 1)
                if n > max_d and (stream, eid) not in self._rewound:
                    dead.append((stream, eid, fields, f"delivered {n} times without being acknowledged"))
                    continue
                messages.append(Message(stream, eid, packet, n, fields))
        self.stats.inc("consumer_delivered", len(messages), **self._labels)
        if dead:
            await self._dead_letter(dead)
        if ack_only:
            await self._commit(Result(ack=ack_only), [])
        if messages:
            try:
                await self._process(messages)
            except CONNECTION_ERRORS:
                self._interrupted.update((m.stream, m.id) for m in messages)
                raise

    async def _process(self, messages: list[Message]) -> None:
        try:
            result = await _maybe_await(self.callback(messages))
        except CONNECTION_ERRORS:
            raise  # Redis went away under the callback: an outage (run() reconnects), not poison
        except Exception as exc:  # noqa: BLE001 - poison isolation: any other callback failure
            self.stats.inc("consumer_callback_errors", **self._labels)
            if len(messages) == 1:
                await self._retry_one(messages[0], exc)
            else:
                log.warning("%s: batch of %d failed (%r); retrying entry by entry", self.group, len(messages), exc)
                for m in messages:
                    await self._process_one(m)
            return
        await self._commit(result or Result(), messages)

    async def _process_one(self, message: Message) -> None:
        try:
            result = await _maybe_await(self.callback([message]))
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001
            self.stats.inc("consumer_callback_errors", **self._labels)
            await self._retry_one(message, exc)
            return
        await self._commit(result or Result(), [message])

    async def _retry_one(self, message: Message, exc: BaseException) -> None:
        attempt = message.deliveries
        while attempt < self.options.max_deliveries:
            attempt += 1
            await asyncio.sleep(min(0.01 * 2**attempt, 1.0))
            try:
                result = await _maybe_await(self.callback([message]))
            except CONNECTION_ERRORS:
                raise
            except Exception as again:  # noqa: BLE001
                self.stats.inc("consumer_callback_errors", **self._labels)
                exc = again
                continue
            await self._commit(result or Result(), [message])
            return
        log.error("%s: %s %s failed %d times, dead-lettered: %r", self.group, message.stream, message.id, attempt, exc)
        await self._dead_letter([(message.stream, message.id, message.fields, f"callback failed: {exc!r}")])

    async def _run_timer(self, now_ms: int | None = None) -> None:
        assert self.on_timer is not None
        result = await _maybe_await(self.on_timer(int(time.time() * 1000) if now_ms is None else now_ms))
        if result is not None and (result.writes or result.ack):
            await self._commit(result, [])

    # --- writing ---------------------------------------------------------------------------

    async def _commit(self, result: Result, delivered: list[Message]) -> None:
        """Write the result's packets and state, and acknowledge entries, in one MULTI.

        With ``commit_per_slot``, and always on a Redis Cluster, the result is split by hash tag
        and each part goes out in a MULTI of its own (all keys of one part share a slot), in
        order: what a callback writes for one symbol is atomic with that symbol's
        acknowledgements, not with another symbol's.
        """
        acks = result.ack if result.ack is not None else [(m.stream, m.id) for m in delivered]
        self._hold(delivered, acks)
        if not result.writes and not acks and not result.state:
            return
        per_slot = self.options.commit_per_slot or self.runtime.cluster
        parts = split_by_slot(result, acks) if per_slot else [dataclasses.replace(result, ack=acks)]
        for i, part in enumerate(parts):
            try:
                await self._commit_part(part)
            except FenceLost:
                for later in parts[i:]:
                    self.held.update(later.ack or [])  # not acknowledged: their redelivery is the rewind's doing
                raise

    async def _commit_part(self, result: Result) -> None:
        acks = result.ack or []
        by_stream: dict[str, list[str]] = defaultdict(list)
        for stream, eid in acks:
            by_stream[stream].append(eid)
        tx, replies = await self._transaction(result, by_stream)
        renumber: list[Write] = []
        for w, reply in zip(result.writes, replies):
            if isinstance(reply, Exception):
                if is_id_too_small(reply) and w.renumber:
                    renumber.append(w)
                    continue
                if is_id_too_small(reply):
                    self.stats.inc("consumer_duplicate_writes", stream=w.stream, **self._labels)
                    continue
                raise reply
            self.stats.inc("consumer_written", stream=w.stream, **self._labels)
        if renumber:
            # Another writer's entry is above the ids chosen here: these go after it (and after any
            # later packet of this result that did fit below it).
            pipe = tx.pipeline(transaction=True)
            for w in renumber:
                pipe.xadd(w.stream, codec.encode(w.packet), id="*", maxlen=w.maxlen, approximate=True)
            await pipe.execute()
            self.stats.inc("consumer_renumbered_writes", len(renumber), **self._labels)
            log.warning("%s: %d packet(s) written under a new id: another writer's entry was above the ids chosen "
                        "(%s)", self.group, len(renumber), renumber[0].stream)  # fmt: skip
        for reply in replies[len(result.writes) :]:
            if isinstance(reply, Exception):
                raise reply
        self.stats.inc("consumer_acked", len(acks), **self._labels)

    def _hold(self, delivered: list[Message], acks: list[tuple[str, str]]) -> None:
        acked = set(acks)
        for m in delivered:
            if (m.stream, m.id) not in acked:
                self.held.add((m.stream, m.id))
        self.held.difference_update(acked)

    def _queue(self, pipe: Any, result: Result, by_stream: Mapping[str, list[str]]) -> None:
        for w in result.writes:
            pipe.xadd(w.stream, codec.encode(w.packet), id=w.id, maxlen=w.maxlen, approximate=True)
        for sw in result.state:
            if sw.value is not None:
                pipe.set(sw.key, sw.value)
            for name, n in sw.incr.items():
                pipe.hincrby(sw.key, name, n)
            if sw.fields:
                pipe.hset(sw.key, mapping=dict(sw.fields))
        for stream, ids in by_stream.items():
            pipe.xack(stream, self.group, *ids)

    async def _on_slot(self, key: str, run: Callable[[Any], Awaitable[Any]]) -> Any:
        """``run(client)``, a MULTI on ``key``'s slot, through the client it goes through.

        On a cluster that is the master serving the slot
        (:func:`~unistream_common.redisio.transaction_client`); a slot that moved or is being
        migrated (:data:`~unistream_common.redisio.REDIRECTS`: nothing of the MULTI was applied)
        makes it learn the topology and run again, for up to :data:`REDIRECT_WAIT_S`.
        """
        deadline = time.monotonic() + REDIRECT_WAIT_S
        while True:
            tx = await transaction_client(self.runtime.cmd, key)
            try:
                return await run(tx)
            except REDIRECTS as exc:
                if time.monotonic() > deadline:
                    raise RedisConnectionError(f"the slot of {key} was not served for {REDIRECT_WAIT_S:g} s: {exc!r}")
                self.stats.inc("consumer_redirects", **self._labels)
                await asyncio.sleep(0.05)
                await self.runtime.refresh_topology()

    async def _transaction(self, result: Result, by_stream: Mapping[str, list[str]]) -> tuple[Any, list[Any]]:
        """The part's MULTI (under WATCH of its fences, if any) and the client it went through (on a
        cluster the part's keys share a slot: :meth:`_on_slot`)."""
        key = next(
            itertools.chain((w.stream for w in result.writes), (sw.key for sw in result.state), by_stream, result.fence)
        )

        async def commit(tx: Any) -> tuple[Any, list[Any]]:
            if result.fence:
                return tx, await self._fenced(tx, result, by_stream)
            pipe = tx.pipeline(transaction=True)
            self._queue(pipe, result, by_stream)
            return tx, await pipe.execute(raise_on_error=False)

        tx, replies = await self._on_slot(key, commit)
        return tx, replies

    async def _fenced(self, tx: Any, result: Result, by_stream: Mapping[str, list[str]]) -> list[Any]:
        """The MULTI under WATCH of the fencing keys; FenceLost when one holds another value."""
        fence_keys = list(result.fence)
        while True:
            async with tx.pipeline(transaction=True) as pipe:
                await pipe.watch(*fence_keys)
                # One GET per key (a cluster pipeline refuses MGET); a part usually has one fence.
                values = [await pipe.get(key) for key in fence_keys]
                found = dict(zip(fence_keys, (None if v is None else s(v) for v in values)))
                lost = [k for k in fence_keys if found[k] != fence_value(result.fence[k])]
                if lost:
                    await pipe.unwatch()
                    self.stats.inc("consumer_fence_lost", len(lost), **self._labels)
                    behind = [
                        k for k in lost if isinstance(f := result.fence[k], SequencedFence) and f.behind(found[k])
                    ]
                    if behind:
                        self.stats.inc("consumer_rollbacks", **self._labels)
                        log.warning(
                            "%s/%s: Redis rolled back: %s; this consumer's state is rebuilt from what Redis holds",
                            self.group, self.consumer,
                            ", ".join(f"{k} is at {found[k]}, was {fence_value(result.fence[k])}" for k in behind),
                        )  # fmt: skip
                    raise FenceLost(lost, rolled_back=bool(behind))
                pipe.multi()
                self._queue(pipe, result, by_stream)
                moved = [f for f in result.fence.values() if isinstance(f, SequencedFence)]
                for f in moved:
                    pipe.set(f.key, f.next_value)
                try:
                    replies = list(await pipe.execute(raise_on_error=False))
                except WatchError:
                    # A fencing key was touched (a renewal, or a new holder): look again.
                    self.stats.inc("consumer_fence_retries", **self._labels)
                    continue
                for f in moved:
                    f.n += 1
                return replies[: len(replies) - len(moved)]

    async def _dead_letter(self, dead: list[tuple[str, str, dict[bytes, bytes], str]]) -> None:
        """XADD each entry to its stream's dead-letter stream and XACK it, in one MULTI (on a
        cluster one per stream: a tagged stream's dead letters share its slot)."""
        by_stream: dict[str, list[tuple[str, str, dict[bytes, bytes], str]]] = defaultdict(list)
        for item in dead:
            by_stream[item[0] if self.runtime.cluster else ""].append(item)
        for items in by_stream.values():
            await self._dead_letter_part(items)
        for stream, eid, _, reason in dead:
            log.warning("%s: dead-lettered %s %s: %s", self.group, stream, eid, reason)
        for stream, eid, _, _ in dead:
            self.held.discard((stream, eid))
        self.stats.inc("consumer_dead_lettered", len(dead), **self._labels)

    async def _dead_letter_part(self, dead: list[tuple[str, str, dict[bytes, bytes], str]]) -> None:
        # A stream without a hash tag has its dead letters in another slot: written first, then
        # acknowledged (a crash between the two repeats a dead letter, never loses one).
        atomic = not self.runtime.cluster or keys.hash_tag(dead[0][0]) == keys.hash_tag(keys.dlq(dead[0][0]))
        if atomic:
            await self._on_slot(dead[0][0], lambda tx: self._write_dead(tx, dead, atomic=True))
        else:
            await self._write_dead(self.runtime.cmd, dead, atomic=False)

    async def _write_dead(
        self, client: Any, dead: list[tuple[str, str, dict[bytes, bytes], str]], atomic: bool
    ) -> None:
        pipe = client.pipeline(transaction=atomic)
        acks = pipe if atomic else client.pipeline(transaction=False)
        now = str(int(time.time() * 1000)).encode()
        for stream, eid, fields, reason in dead:
            entry = {k if isinstance(k, bytes) else str(k).encode(): v for k, v in (fields or {}).items()}
            entry.update(
                {
                    b"dlq_reason": reason.encode(),
                    b"dlq_stream": stream.encode(),
                    b"dlq_id": eid.encode(),
                    b"dlq_group": self.group.encode(),
                    b"dlq_consumer": self.consumer.encode(),
                    b"dlq_ts_ms": now,
                }
            )
            pipe.xadd(keys.dlq(stream), entry, maxlen=DLQ_MAXLEN, approximate=True)
            acks.xack(stream, self.group, eid)
        await pipe.execute()
        if acks is not pipe:
            await acks.execute()


class StreamRuntime:
    """The registered consumers of one process, with their Redis clients.

    ``register_consumer`` mirrors the design's API; ``run`` drives every registered consumer
    until cancelled. ``ready`` is true when each one is connected and its task alive.
    """

    def __init__(self, redis_url: str, consumer: str, symbols: Sequence[str], stats: Stats) -> None:
        self.redis_url = redis_url
        self.consumer = consumer
        self.symbols = list(symbols)
        self.stats = stats
        self.cluster = is_cluster(redis_url)
        self.cmd: aioredis.Redis = command_client(redis_url, name=consumer)
        self.reader: aioredis.Redis = blocking_client(redis_url, name=consumer + ":reader")
        self.consumers: list[GroupConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []

    def register_consumer(
        self,
        consumer_name: str,
        callback: Callback,
        data_types: Sequence[str],
        *,
        options: ConsumerOptions | None = None,
        on_timer: TimerCallback | None = None,
        on_rewind: Callable[[], Any] | None = None,
        packet_types: Iterable[type] | None = None,
        streams: Sequence[str] | None = None,
        dynamic: bool = False,
    ) -> GroupConsumer:
        """Register ``callback`` as consumer group ``consumer_name`` over ``data_types``.

        ``data_types`` are names from :data:`unistream_common.keys.DATA_TYPES` (``ticks``,
        ``bars:1s``, ``training``...) expanded over the configured symbols; ``streams`` replaces
        them with explicit stream names. A ``dynamic`` consumer starts with the given streams
        (possibly none) and changes them with ``add_stream``/``remove_stream``.
        """
        names = list(streams) if streams is not None else keys.streams_for(data_types, self.symbols)
        gc = GroupConsumer(
            self, consumer_name, callback, names, options or ConsumerOptions(), on_timer, on_rewind, packet_types,
            dynamic,
        )  # fmt: skip
        self.consumers.append(gc)
        return gc

    async def run(self) -> None:
        """Run every registered consumer; returns (or raises) when one of them stops."""
        self._tasks = [asyncio.create_task(gc.run(), name=f"consumer:{gc.group}") for gc in self.consumers]
        try:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run_until_drained(self, now_ms: int | None = None, max_rounds: int = 100) -> int:
        """Burst mode for every registered consumer (:meth:`GroupConsumer.run_until_drained`), in
        rounds until a round reads nothing, so that what one consumer writes for another in this
        process is processed too; returns the entries read. ``max_rounds`` bounds a pipeline that
        never settles (raises RuntimeError).
        """
        total = 0
        for _ in range(max_rounds):
            read = 0
            for gc in self.consumers:
                read += await gc.run_until_drained(now_ms)
            total += read
            if read == 0:
                return total
        raise RuntimeError(f"the consumers still read entries after {max_rounds} rounds")

    def read_groups(self, streams: Sequence[str]) -> list[list[str]]:
        """``streams`` in the groups one XREADGROUP may read together: all of them on a single
        Redis, those of one hash slot each on a cluster (in order of first appearance)."""
        if not streams:
            return []
        if not self.cluster:
            return [list(streams)]
        groups: dict[int, list[str]] = {}
        for stream in streams:
            groups.setdefault(key_slot(stream.encode()), []).append(stream)
        return list(groups.values())

    async def refresh_topology(self) -> None:
        """On a cluster, learn its slots and nodes again (after an outage: a failover may have
        moved slots to a promoted replica); nothing on a single Redis."""
        if self.cluster:
            await refresh_topology(self.cmd)
            await refresh_topology(self.reader)

    @property
    def ready(self) -> bool:
        return bool(self.consumers) and all(gc.connected for gc in self.consumers)

    async def close(self) -> None:
        await close_transaction_clients(self.cmd)
        await self.cmd.aclose()
        await self.reader.aclose()
