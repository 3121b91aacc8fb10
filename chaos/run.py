"""``make chaos``: the whole system under faults, from a replayed file with known content; nothing may be lost.

One run (~6 minutes on a 2-core machine):

1. writes a Binance trades archive (CSV) of :data:`SYMBOL` from a seed: 50 min of event time across a
   UTC midnight (so 1s, 1m, 1h and 1d bars all close), with malformed rows and repeated ids that
   ingest must refuse; the valid trades are known exactly;
2. computes the reference: the aggregator's pure core (``BarAggregator``) fed every valid trade
   in one uninterrupted pass, in process;
3. starts a Redis with AOF (everysec) on a free port and ``unistream run`` against it (the
   compose file's services as local processes; aggregator, features and trainer scaled to 2),
   ingest replaying the file at :data:`SPEED` x real time;
4. injects faults one after another, in a seeded random order with random pauses: SIGKILL of
   each service several times (the supervisor restarts it, as compose's restart policy would),
   of the aggregator replica that owns the symbol, of the features replica that writes its
   training packets and of the trainer replica holding the merge lease; a Redis restart (SIGTERM, AOF kept) and Redis taken away for 10 s; Redis SIGKILLed
   with the last 1 s and 2 s of its append-only file lost (what ``appendfsync everysec`` risks:
   the file is cut back to its size that long before the kill, and Redis restarts from it, so
   every service finds Redis behind what it wrote or acknowledged and must notice and repair);
   poison entries on every stream a consumer group reads; garbage bodies at the ingest door.
   After each it measures
   the seconds until every process answers ``/readyz`` again (a restarted trainer also until it
   has adopted the newest model published before it was killed);
5. waits for the replay to end and the bars to settle, then checks: the tick stream holds every
   valid trade exactly once; every valid trade is in exactly one 1s bar; the bar streams of all
   four timeframes equal the reference, bar for bar, with unique, aligned ids; ``ml:training:{ETHUSDT}``
   holds one training packet per 1s bar, none twice; every poison entry
   is in the dead-letter stream of its stream with a reason, for every group reading it; the door
   refused every garbage body and counted it; every recovery took at most :data:`RECOVERY_S`.

It prints a summary table (faults injected, ticks in, bars checked, mismatches, recovery times)
and exits 1 on any loss, mismatch or slow recovery. Options: ``--seed``, ``--minutes`` (event
time in the file), ``--speed``, ``--keep`` (leave the run directory for inspection).

``--cluster``: the same on a Redis Cluster of 3 masters with a replica each (AOF on every node),
where the Redis faults are those of a cluster: SIGKILL of the master serving the symbol's slot
(twice) and of the one serving the trainers' ``{trainer}`` slot, each promoting its replica (the
killed node is started again and rejoins as a replica), and the symbol's slot migrated to another
master twice while the services use it (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE: the clients
get ASK and TRYAGAIN meanwhile). The checks are the same.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.crc import key_slot

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from processes import pick_port_offset

from unistream_aggregator.core import BarAggregator
from unistream_aggregator.settings import AggregatorSettings
from unistream_common import codec, keys
from unistream_common.packets import Bar, Tick, TickBatch
from unistream_common.redisio import sync_client
from unistream_tools.redis_server import RedisCluster, RedisServer, start_cluster, start_redis

SYMBOL = "ETHUSDT"
MIDNIGHT_MS = 1_710_028_800_000  # 2024-03-10 00:00:00 UTC
SPEED = 10.0
RECOVERY_S = 10.0
TOKEN = "chaos-door-token"
UNISTREAM = REPO / ".venv" / "bin" / "unistream"
# compose's probe ports; replicas of a scaled service add 100 x (replica - 1)
PORTS = (8001, 8002, 8102, 8003, 8103, 8004, 8104, 8501)
SCALE = ("aggregator=2", "features=2", "trainer=2")
PROCESSES = 8  # ingest, dashboard and two of each of the others
# Each features replica reads every stream in a group of its own (keys.features_group).
FEATURES_GROUPS = (keys.features_group("features-1"), keys.features_group("features-2"))
GROUPS = {  # the streams each consumer group reads (poison goes on each)
    keys.ticks(SYMBOL): (keys.GROUP_AGGREGATOR, *FEATURES_GROUPS),
    **{keys.bars(SYMBOL, tf): FEATURES_GROUPS for tf in keys.TIMEFRAMES},
    keys.training(SYMBOL): (keys.GROUP_TRAINER,),
}
DOOR_GARBAGE: tuple[tuple[bytes, bool, int], ...] = (  # (body, with the token, the door's answer)
    (b"not json at all", True, 400),
    (b'{"symbol": "ETHUSDT", "ticks": 5}', True, 422),
    (b"[1, 2, 3]", True, 422),
    (b'{"symbol": "ETHUSDT", "ticks": [{"id": "x", "p": -1}]}', True, 422),
    (b'{"symbol": "ETHUSDT", "ticks": []}', False, 401),  # no token: refused before reading
)


def say(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", flush=True)


# --------------------------------------------------------------------------- the file and its reference


@dataclass
class Archive:
    path: Path
    valid: list[Tick]  # what ingest must write, in order
    malformed: int
    repeated: int


def write_archive(path: Path, seed: int, minutes: int) -> Archive:
    """A Binance trades CSV (``id,price,qty,quote_qty,time,is_buyer_maker,is_best_match``) of
    ``minutes`` of event time ending 30 minutes after :data:`MIDNIGHT_MS`: ~3 trades a second with
    quiet runs and bursts, plus rows ingest must refuse (malformed; an id repeated)."""
    rng = random.Random(seed)
    start_ms = MIDNIGHT_MS - (minutes - 30) * 60_000
    end_ms = start_ms + minutes * 60_000
    lines: list[str] = []
    valid: list[Tick] = []
    malformed = repeated = 0
    trade_id, cents, t = 7_000_000, 300_000, start_ms
    while True:
        r = rng.random()
        if r < 0.002:
            t += rng.randrange(5_000, 90_000)  # a quiet run (filled with flat bars)
        elif r < 0.01:
            t += rng.randrange(0, 3)  # a burst
        else:
            t += int(rng.expovariate(1 / 330))
        if t >= end_ms:
            break
        cents = max(1_000, cents + rng.choice((-2, -1, -1, 0, 0, 0, 1, 1, 2)))
        size_units = rng.randrange(1, 2_000_000)  # 1e-8 units: up to 0.02
        trade_id += 1
        maker = rng.random() < 0.5
        price, size = f"{cents // 100}.{cents % 100:02d}", f"0.{size_units:08d}"
        notional = cents * size_units // 100  # Binance's quoteQty: price x qty truncated to 8 decimals
        quote = f"{notional // 10**8}.{notional % 10**8:08d}"
        lines.append(f"{trade_id},{price},{size},{quote},{t},{'True' if maker else 'False'},True")
        valid.append(Tick(trade_id, float(price), float(size), "SELL" if maker else "BUY", t, t))
        if rng.random() < 0.003:  # the same id again, another price: a duplicate to refuse
            lines.append(f"{trade_id},{price},{size},{quote},{t},True,True")
            repeated += 1
        if rng.random() < 0.002:
            lines.append(rng.choice(("garbage,row", f"{trade_id + 1},abc,0.1,1,{t},True,True", ",,,,,,")))
            malformed += 1
    path.write_text("\n".join(lines) + "\n")
    return Archive(path, valid, malformed, repeated)


def reference_bars(ticks: list[Tick]) -> dict[str, list[Bar]]:
    """The aggregator core over every valid trade in one uninterrupted pass (source REPLAY: only
    event time closes bars; the last trade's second stays open)."""
    settings = AggregatorSettings()
    core = BarAggregator(settings.grace_ms, settings.max_fill_gap_s)
    out: dict[str, list[Bar]] = defaultdict(list)
    stream = keys.ticks(SYMBOL)
    for i in range(0, len(ticks), 500):
        result = core.apply([((stream, f"{i + 1}-0"), TickBatch(SYMBOL, "REPLAY", ticks[i : i + 500]))])
        for bar in result.bars:
            out[bar.timeframe].append(bar)
    return dict(out)


# --------------------------------------------------------------------------- the running system


def get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """(status, the body as JSON or None); status 0 when nothing answered."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None
    try:
        return status, json.loads(body or b"null")
    except ValueError:  # Streamlit's health answers "ok"
        return status, None


def post(url: str, body: bytes, token: str | None) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with opener.open(request, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@dataclass
class System:
    run_dir: Path
    redis_dir: Path
    port: int
    offset: int
    proc: subprocess.Popen[bytes] | None = None
    server: RedisServer | None = None
    cluster: RedisCluster | None = None  # --cluster: 3 masters with a replica each instead of ``server``
    clustered: bool = False

    @property
    def url(self) -> str:
        if self.cluster is not None:
            return self.cluster.url
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        """A client of the system's Redis (redis-py's cluster client on a cluster)."""
        return sync_client(self.url, "unistream-chaos", timeout_s=5.0, connect_timeout_s=2.0)

    def start_redis(self) -> None:
        if self.clustered:
            self.cluster = start_cluster(
                self.redis_dir, masters=3, replicas=1, appendonly=True, avoid=[p + self.offset for p in PORTS]
            )
        else:
            self.server = start_redis(self.redis_dir, port=self.port, appendonly=True)

    def stop_redis(self) -> None:
        assert self.server is not None
        self.server.stop()  # SIGTERM: the AOF is flushed

    def processes(self) -> dict[str, dict[str, Any]]:
        try:
            state = json.loads((self.run_dir / "run.json").read_text())
        except (OSError, ValueError):
            return {}
        return {p["name"]: p for p in state.get("processes", [])}

    @staticmethod
    def _answers(name: str, port: int | None) -> bool:
        if port is None:
            return True
        path = "/_stcore/health" if name.startswith("dashboard") else "/readyz"
        return get_json(f"http://127.0.0.1:{port}{path}")[0] == 200

    def all_ready(self) -> list[str]:
        """Names of the processes not ready (run.json read once per call)."""
        return [name for name, p in self.processes().items() if not self._answers(name, p.get("http_port"))]

    def stats(self, name: str) -> dict[str, Any]:
        port = self.processes()[name]["http_port"]
        return get_json(f"http://127.0.0.1:{port}/stats")[1] or {}


def wait(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.1) -> float | None:
    """Seconds until ``predicate()`` held, or None after ``timeout_s``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        with contextlib.suppress(Exception):
            if predicate():
                return time.monotonic() - start
        time.sleep(step_s)
    return None


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    kind: str
    target: str
    at_s: float = 0.0  # since the system was ready
    recovery_s: float | None = None
    detail: str = ""
    ok: bool = True


@dataclass
class Chaos:
    system: System
    rng: random.Random
    t0: float = field(default_factory=time.monotonic)
    faults: list[Fault] = field(default_factory=list)
    poison: list[tuple[str, str]] = field(default_factory=list)  # (stream, entry id)
    door: list[tuple[int, int]] = field(default_factory=list)  # (status, expected status)
    door_counted: int = 0
    # Redis SIGKILLs: (seconds lost, AOF bytes cut, ...); master kills: (target, failover s, ...)
    rollbacks: list[tuple[Any, Any, list[int], dict[str, float]]] = field(default_factory=list)

    def record(self, fault: Fault) -> None:
        self.faults.append(fault)
        took = "n/a" if fault.recovery_s is None else f"{fault.recovery_s:.1f} s"
        say(f"{fault.kind} {fault.target}: ready again after {took} {fault.detail}".rstrip())

    def _recover(
        self, fault: Fault, started: float, extra: Callable[[], bool] | None = None, flowing: bool = False
    ) -> None:
        """Wait until every process is ready again (and ``extra`` holds); with ``flowing`` also
        until the aggregator writes a new 1s bar, reported in the detail (readiness is the goal)."""
        fault.at_s = started - self.t0
        bar_top = self._bar_top() if flowing else None

        def back() -> bool:
            return not self.system.all_ready() and (extra is None or extra())

        took = wait(back, 90, 0.1)
        fault.recovery_s = None if took is None else time.monotonic() - started
        fault.ok = fault.recovery_s is not None and fault.recovery_s <= RECOVERY_S
        if flowing:
            moved = wait(lambda: self._bar_top() != bar_top, 60, 0.1)
            fault.detail += (
                " (no new 1s bar in 60 s)"
                if moved is None
                else f" (1s bars flowing {time.monotonic() - started:.1f} s after)"
            )
        self.record(fault)

    def _bar_top(self) -> bytes | None:
        top = self.system.client().xrevrange(keys.bars(SYMBOL, "1s"), count=1)
        return top[0][0] if top else None

    def kill(self, name: str, kind: str = "SIGKILL", flowing: bool = False) -> None:
        pid = self.system.processes()[name]["pid"]
        extra: Callable[[], bool] | None = None
        detail = ""
        if name.startswith("trainer"):
            newest = newest_round(self.system.client(), "dqn")
            detail = f"(newest dqn round at the kill: {newest})"

            def adopted(name: str = name, newest: int = newest) -> bool:
                if self.system.processes()[name]["pid"] == pid:
                    return False
                return (
                    newest == 0 or round_of(self.system.stats(name).get("info", {}).get("model_version", "")) >= newest
                )

            extra = adopted
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # the supervisor notices, waits its backoff, restarts: a new pid, then ready
        wait(lambda: self.system.processes()[name]["pid"] != pid, 60, 0.05)
        fault = Fault(kind, name, detail=detail)
        self._recover(fault, started, extra, flowing)
        if extra is not None and fault.recovery_s is None:
            fault.detail += "; never adopted the newest model"

    def kill_owner(self) -> None:
        owner = (self.system.client().get(keys.agg_owner(SYMBOL)) or b"").decode()
        name = owner.split(":", 1)[0]
        if name not in self.system.processes():
            name = "aggregator-1"
        self.kill(name, "SIGKILL owner", flowing=True)

    def kill_writer(self) -> None:
        """SIGKILL the features replica that writes :data:`SYMBOL`'s training packets (its lease's
        holder); the other takes the symbol over once the lease runs out."""
        name = keys.lease_holder(self.system.client().get(keys.features_owner(SYMBOL))) or ""
        if name not in self.system.processes():
            name = "features-1"
        self.kill(name, "SIGKILL writer", flowing=True)

    def kill_leader(self) -> None:
        leader = keys.lease_holder(self.system.client().get(keys.TRAINER_LEADER)) or ""
        name = leader if leader in self.system.processes() else "trainer-1"
        self.kill(name, "SIGKILL leader")

    def redis_restart(self, away_s: float) -> None:
        started = time.monotonic()
        self.system.stop_redis()
        time.sleep(away_s)
        self.system.start_redis()
        back = time.monotonic()
        fault = Fault("Redis restart" if away_s == 0 else f"Redis away {away_s:g} s", "redis")
        fault.detail = f"(down {back - started:.1f} s; counted from its return)"
        self._recover(fault, back, flowing=True)

    def redis_kill(self, lose_s: float) -> None:
        """SIGKILL Redis, its append-only file cut back to where it was ``lose_s`` before, and restart it.

        The detail reports what Redis lost (trades, 1s bars and training packets behind their
        streams' tops at the kill) and what the services counted repairing it."""
        server = self.system.server
        assert server is not None
        before = self._repair_counters()
        position = server.aof_position()
        time.sleep(lose_s)  # the writes of this second are the ones the cut takes away
        tops = self._tops()
        started = time.monotonic()
        cut = server.kill_losing_after(position) if position is not None else 0
        self.system.start_redis()
        back = time.monotonic()
        after_restart = self._tops()
        fault = Fault(f"Redis SIGKILL, {lose_s:g} s lost", "redis")
        self._recover(fault, back, flowing=True)
        wait(lambda: self._tops()[0] >= tops[0], 30, 0.2)  # the lost trades written again
        repaired = {k: v - before.get(k, 0) for k, v in self._repair_counters().items()}
        lost = [a - b for a, b in zip(tops, after_restart)]
        what = (
            f"(down {back - started:.1f} s; AOF cut by {cut:,} bytes: rolled back {lost[0]:,} trades, "
            f"{lost[1]:,} 1s bars, {lost[2]:,} training packets; repaired: "
            + ", ".join(f"{k} {v:g}" for k, v in repaired.items())
            + ")"
        )
        fault.detail += " " + what
        self.rollbacks.append((lose_s, cut, lost, repaired))
        say(f"  {what}")

    def master_kill(self, key: str, label: str) -> None:
        """SIGKILL the cluster master serving ``key``'s slot; its replica is promoted and the killed
        node is started again (it rejoins as the new master's replica).

        The detail reports the failover's seconds, what the promoted replica lacked (trades, 1s bars
        and training packets behind the streams' tops at the kill) and what the services counted
        repairing it. Ready-again is counted from the kill (the failover included)."""
        cluster = self.system.cluster
        assert cluster is not None
        port = cluster.master_of(key_slot(key.encode()))
        before = self._repair_counters()
        tops = self._tops()
        started = time.monotonic()
        cluster.node(port).kill()
        took = cluster.wait_failover(port, timeout=60)
        promoted = self._tops()
        cluster.restart(port)
        fault = Fault("master SIGKILL", f"{label}'s master :{port}")
        self._recover(fault, started, flowing=True)
        wait(lambda: self._tops()[0] >= tops[0], 30, 0.2)  # trades the replica lacked written again
        repaired = {k: v - before.get(k, 0) for k, v in self._repair_counters().items()}
        lost = [max(0, a - b) for a, b in zip(tops, promoted)]
        what = (
            f"(failover {took:.1f} s; the promoted replica lacked {lost[0]:,} trades, {lost[1]:,} 1s bars, "
            f"{lost[2]:,} training packets; repaired: " + ", ".join(f"{k} {v:g}" for k, v in repaired.items()) + ")"
        )
        fault.detail += " " + what
        self.rollbacks.append((f"{label}'s master :{port}", took, lost, repaired))
        say(f"  {what}")

    def migrate(self) -> None:
        """Move :data:`SYMBOL`'s slot (its ticks, bars, training packets, leases, fences, state) to
        another master while the services use it. Ready-again is counted from the move's end."""
        cluster = self.system.cluster
        assert cluster is not None
        slot = key_slot(keys.ticks(SYMBOL).encode())
        source = cluster.master_of(slot)
        target = self.rng.choice(sorted(p for p in cluster.masters() if p != source))
        started = time.monotonic()
        moved = cluster.migrate_slot(slot, target)
        done = time.monotonic()
        fault = Fault("slot migrated", f"slot {slot} :{source} -> :{target}")
        fault.detail = f"({moved} keys moved in {done - started:.1f} s)"
        self._recover(fault, done, flowing=True)

    def _tops(self) -> tuple[int, int, int]:
        """Newest trade id on the tick stream, 1s bars and training packets written (counts)."""
        client = self.system.client()
        trade = 0
        for _eid, fields in client.xrevrange(keys.ticks(SYMBOL), count=20):
            with contextlib.suppress(codec.DecodeError):
                packet = codec.decode(fields)
                if isinstance(packet, TickBatch):
                    trade = max(trade, packet.ticks[-1].trade_id)
        return trade, client.xlen(keys.bars(SYMBOL, "1s")), client.xlen(keys.training(SYMBOL))

    def _repair_counters(self) -> dict[str, float]:
        """The services' counts of rollbacks noticed and trades written again, summed over processes."""
        out: dict[str, float] = {}
        for name in self.system.processes():
            if name.startswith("dashboard"):
                continue
            with contextlib.suppress(Exception):
                counters = self.system.stats(name).get("counters", {})
                for key in ("ingest_redis_rollbacks", "ingest_ticks_resent", "consumer_rollbacks",
                            "consumer_reconnects"):  # fmt: skip
                    value = counters.get(key, 0)
                    out[key] = out.get(key, 0) + (sum(value.values()) if isinstance(value, dict) else value)
        return out

    def inject_poison(self) -> None:
        client = self.system.client()
        for stream in GROUPS:
            top = client.xrevrange(stream, count=1)
            if stream == keys.ticks(SYMBOL) or stream == keys.training(SYMBOL):
                entry_id = "*"  # ids from the clock: the next writer's id stays above
            else:  # bar ids are <open_time_ms>-0: go just above the top, below the next bar
                ms, seq = map(int, top[0][0].decode().split("-")) if top else (0, 0)
                entry_id = f"{ms}-{seq + 1}"
            eid = client.xadd(stream, {"poison": f"chaos-{len(self.poison)}", "v": "\xff not a packet"}, id=entry_id)
            self.poison.append((stream, eid.decode()))
        self.faults.append(Fault("poison", f"{len(GROUPS)} streams", time.monotonic() - self.t0, 0.0))
        say(f"poison on {len(GROUPS)} streams")

    def door_garbage(self) -> None:
        port = self.system.processes()["ingest-1"]["http_port"]
        before = door_refusals(self.system.stats("ingest-1"))
        for body, with_token, expected in DOOR_GARBAGE:
            status = post(f"http://127.0.0.1:{port}/v1/ticks", body, TOKEN if with_token else None)
            self.door.append((status, expected))
        after = door_refusals(self.system.stats("ingest-1"))
        self.door_counted += after - before
        self.faults.append(Fault("door garbage", "ingest-1", time.monotonic() - self.t0, 0.0))
        say(f"door garbage: statuses {[s for s, _ in self.door[-len(DOOR_GARBAGE) :]]}, counted {after - before}")


def door_refusals(stats: dict[str, Any]) -> int:
    counters = stats.get("counters", {})
    total = 0
    for name in ("door_rejected", "door_auth_failures"):
        value = counters.get(name, 0)
        total += int(sum(value.values()) if isinstance(value, dict) else value)
    return total


def round_of(version: str) -> int:
    m = re.search(r"r(\d+)$", version or "")
    return int(m.group(1)) if m else 0


def newest_round(client: Any, model: str) -> int:
    for _eid, fields in client.xrevrange(keys.MODELS, count=200):
        with contextlib.suppress(codec.DecodeError):
            packet = codec.decode(fields)
            if getattr(packet, "name", None) == model:
                return round_of(packet.version)
    return 0


# --------------------------------------------------------------------------- checks


@dataclass
class Check:
    name: str
    checked: int
    mismatches: int
    detail: str = ""


def read_stream(client: Any, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
    out: list[tuple[str, dict[bytes, bytes]]] = []
    last = "-"
    while True:
        page = client.xrange(stream, min=last, count=5_000)
        page = [e for e in page if e[0].decode() != last]
        if not page:
            return out
        out.extend((eid.decode(), fields) for eid, fields in page)
        last = out[-1][0]


def check_ticks(client: Any, archive: Archive) -> Check:
    ids: list[int] = []
    for _eid, fields in read_stream(client, keys.ticks(SYMBOL)):
        with contextlib.suppress(codec.DecodeError):
            packet = codec.decode(fields)
            if isinstance(packet, TickBatch):
                ids.extend(t.trade_id for t in packet.ticks)
    want = [t.trade_id for t in archive.valid]
    dup = sum(n - 1 for n in Counter(ids).values() if n > 1)
    missing = len(set(want) - set(ids))
    extra = len(set(ids) - set(want))
    order = sum(1 for a, b in itertools.pairwise(ids) if b <= a)
    return Check(
        "ticks on md:ticks (each valid trade once, in order)", len(want), dup + missing + extra + order,
        f"{len(ids)} written: {missing} missing, {dup} duplicated, {extra} unknown, {order} out of order",
    )  # fmt: skip


def check_bars(client: Any, reference: dict[str, list[Bar]], archive: Archive) -> list[Check]:
    checks = []
    for tf in keys.TIMEFRAMES:
        got: list[Bar] = []
        bad_ids = 0
        for eid, fields in read_stream(client, keys.bars(SYMBOL, tf)):
            try:
                bar = codec.decode(fields)
            except codec.DecodeError:
                continue  # poison: checked against the dead letters
            if not isinstance(bar, Bar):
                continue
            bad_ids += eid != f"{bar.open_time_ms}-0"
            got.append(bar)
        want = reference.get(tf, [])
        opens = [b.open_time_ms for b in got]
        dup = len(opens) - len(set(opens))
        differing = sum(1 for a, b in zip(got, want, strict=False) if a != b)
        missing = max(0, len(want) - len(got))
        extra = max(0, len(got) - len(want))
        checks.append(
            Check(
                f"{tf} bars equal the uninterrupted reference", len(want), differing + missing + extra + dup + bad_ids,
                f"{len(got)} on the stream: {differing} differ, {missing} missing, {extra} extra, {dup} duplicate "
                f"open times, {bad_ids} ids not <open_time>-0",
            )
        )  # fmt: skip
        if tf == "1s":
            per_second = Counter((t.ts_event_ms // 1000) * 1000 for t in archive.valid)
            last_open = max(per_second)  # the last trade's second stays open (REPLAY)
            counted = {b.open_time_ms: b.trade_count for b in got}
            wrong = sum(1 for sec, n in per_second.items() if sec != last_open and counted.get(sec) != n)
            in_bars = sum(b.trade_count for b in got)
            expected = sum(n for sec, n in per_second.items() if sec != last_open)
            checks.append(
                Check(
                    "every valid trade in exactly one 1s bar", expected, wrong + abs(in_bars - expected),
                    f"{in_bars} trades in 1s bars; {wrong} seconds whose count differs "
                    f"({per_second[last_open]} in the still-open last second)",
                )
            )  # fmt: skip
    return checks


def check_training(client: Any, reference: dict[str, list[Bar]]) -> Check:
    """One training packet per live 1s bar (at the bar's close), none twice, none missing."""
    from unistream_common.packets import TrainingDataPacket

    seen: Counter[int] = Counter()
    for _eid, fields in read_stream(client, keys.training(SYMBOL)):
        with contextlib.suppress(codec.DecodeError):
            packet = codec.decode(fields)
            if isinstance(packet, TrainingDataPacket) and packet.symbol == SYMBOL:
                seen[packet.ts_event_ms] += 1
    want = {b.close_time_ms for b in reference.get("1s", [])}
    dup = sum(n - 1 for n in seen.values() if n > 1)
    missing = len(want - set(seen))
    extra = len(set(seen) - want)
    return Check(
        "training packets: one per 1s bar", len(want), dup + missing + extra,
        f"{sum(seen.values())} on {keys.training(SYMBOL)}: {missing} missing, {dup} twice, {extra} at no bar's close",
    )  # fmt: skip


def check_dead_letters(client: Any, poison: list[tuple[str, str]]) -> Check:
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    reasons: dict[tuple[str, str], str] = {}
    for stream in GROUPS:
        for _eid, fields in read_stream(client, keys.dlq(stream)):
            key = (fields.get(b"dlq_stream", b"").decode(), fields.get(b"dlq_id", b"").decode())
            found[key].add(fields.get(b"dlq_group", b"").decode())
            if fields.get(b"dlq_reason"):
                reasons[key] = fields[b"dlq_reason"].decode()
    missing = [(s, e, g) for s, e in poison for g in GROUPS[s] if g not in found.get((s, e), set())]
    no_reason = [p for p in poison if p not in reasons]
    sample = next(iter(reasons.values()), "")
    return Check(
        "poison entries dead-lettered with a reason (per group)", sum(len(GROUPS[s]) for s, _ in poison),
        len(missing) + len(no_reason),
        f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}; e.g. {sample[:80]!r}",
    )  # fmt: skip


def settle(system: System, reference: dict[str, list[Bar]], archive: Archive, timeout_s: float) -> float | None:
    """Wait until the tick stream has the last valid trade and every bar stream its last reference bar."""
    last_id = archive.valid[-1].trade_id
    client = system.client()

    def done() -> bool:
        top = client.xrevrange(keys.ticks(SYMBOL), count=5)
        tops = []
        for _eid, fields in top:
            with contextlib.suppress(codec.DecodeError):
                p = codec.decode(fields)
                if isinstance(p, TickBatch):
                    tops.append(p.ticks[-1].trade_id)
        if not tops or max(tops) < last_id:
            return False
        for tf, bars in reference.items():
            latest = client.xrevrange(keys.bars(SYMBOL, tf), max=f"{bars[-1].open_time_ms}-0", count=1)
            if not latest or latest[0][0].decode() != f"{bars[-1].open_time_ms}-0":
                return False
        return True

    return wait(done, timeout_s, 0.5)


# --------------------------------------------------------------------------- the run


def start_system(system: System, archive: Archive, log: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    env.update({
        "UNISTREAM_REDIS_URL": system.url, "UNISTREAM_SYMBOLS": SYMBOL, "UNISTREAM_SOURCE": "replay",
        "UNISTREAM_REPLAY_PATHS": str(archive.path), "UNISTREAM_REPLAY_SPEED": f"{SPEED:g}",
        "UNISTREAM_INGEST_TOKEN": TOKEN, "UNISTREAM_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    argv = [str(UNISTREAM), "run", "--run-dir", str(system.run_dir), "--port-offset", str(system.offset)]
    for item in SCALE:
        argv += ["--scale", item]
    with log.open("wb") as out:
        system.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_system(system: System) -> None:
    if system.proc is not None and system.proc.poll() is None:
        system.proc.send_signal(signal.SIGINT)
        try:
            system.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(system.proc.pid, signal.SIGKILL)
            system.proc.wait()
    if system.server is not None:
        system.server.stop()
    if system.cluster is not None:
        system.cluster.stop()


def plan_faults(chaos: Chaos) -> list[Callable[[], None]]:
    """Every fault once or more, in a seeded random order."""
    faults: list[Callable[[], None]] = []
    for name in ("ingest-1", "dashboard-1"):
        faults += [lambda n=name: chaos.kill(n)] * 2
    for name in ("aggregator-1", "aggregator-2", "features-1", "features-2", "trainer-1", "trainer-2"):
        faults += [lambda n=name: chaos.kill(n)]
    faults += [chaos.kill_owner, chaos.kill_owner, chaos.kill_writer, chaos.kill_writer, chaos.kill_leader]
    if chaos.system.clustered:
        faults += [lambda: chaos.master_kill(keys.ticks(SYMBOL), SYMBOL)] * 2
        faults += [lambda: chaos.master_kill(keys.TRAINER_LEADER, "{trainer}")]
        faults += [chaos.migrate, chaos.migrate]
    else:
        faults += [lambda: chaos.redis_restart(0.0), lambda: chaos.redis_restart(10.0)]
        faults += [lambda: chaos.redis_kill(1.0), lambda: chaos.redis_kill(2.0)]
    faults += [chaos.inject_poison, chaos.inject_poison, chaos.door_garbage]
    chaos.rng.shuffle(faults)
    return faults


def summary(chaos: Chaos, checks: list[Check], archive: Archive, elapsed_s: float) -> bool:
    kinds = Counter(f.kind for f in chaos.faults)
    timed = [f for f in chaos.faults if f.kind not in ("poison", "door garbage")]
    slow = [f for f in timed if not f.ok]
    recoveries = [f.recovery_s for f in timed if f.recovery_s is not None]
    door_wrong = sum(1 for status, want in chaos.door if status != want)
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| faults injected | {len(chaos.faults)} ({', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))}) |")
    print(f"| valid ticks in the file | {len(archive.valid):,} (+{archive.malformed} malformed, "
          f"{archive.repeated} repeated ids refused) |")  # fmt: skip
    print(f"| poison entries | {len(chaos.poison)} on {len(GROUPS)} streams |")
    print(f"| door garbage | {len(chaos.door)} bodies, {door_wrong} answered otherwise than refused, "
          f"{chaos.door_counted} counted |")  # fmt: skip
    if recoveries:
        print(f"| recovery s (median / max, goal <= {RECOVERY_S:g}) | {statistics.median(recoveries):.1f} / "
              f"{max(recoveries):.1f} |")  # fmt: skip
    print(f"| run time | {elapsed_s / 60:.1f} min |")
    print()
    print("| check | checked | mismatches | detail |")
    print("|---|---|---|---|")
    for c in checks:
        print(f"| {c.name} | {c.checked:,} | {c.mismatches:,} | {c.detail} |")
    print()
    print("| fault | target | at s | ready again s | |")
    print("|---|---|---|---|---|")
    for f in chaos.faults:
        took = (
            "-"
            if f.kind in ("poison", "door garbage")
            else ("never" if f.recovery_s is None else f"{f.recovery_s:.1f}")
        )
        print(f"| {f.kind} | {f.target} | {f.at_s:.0f} | {took} | {'ok' if f.ok else 'SLOW'} {f.detail} |")
    if chaos.rollbacks:
        print()
        if chaos.system.clustered:
            print("| master SIGKILL | failover s | the promoted replica lacked: trades / 1s bars / training packets "
                  "| repaired (counted) |")  # fmt: skip
        else:
            print("| Redis SIGKILL | AOF cut (bytes) | rolled back: trades / 1s bars / training packets "
                  "| repaired (counted) |")  # fmt: skip
        print("|---|---|---|---|")
        for what, size, lost, repaired in chaos.rollbacks:
            counted = ", ".join(f"{k} {v:g}" for k, v in repaired.items() if v)
            first = what if chaos.system.clustered else f"last {what:g} s lost"
            second = f"{size:.1f}" if chaos.system.clustered else f"{size:,}"
            print(f"| {first} | {second} | {lost[0]:,} / {lost[1]:,} / {lost[2]:,} | {counted or '-'} |")
    failed = [c for c in checks if c.mismatches] + slow
    if door_wrong or chaos.door_counted < len(chaos.door):
        failed.append(Check("door", len(chaos.door), door_wrong))
    print()
    print("chaos: PASSED" if not failed else f"chaos: FAILED ({len(failed)} checks or recoveries)")
    return not failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--minutes", type=int, default=50, help="event time in the replayed file (the training stream keeps 3,600)"
    )
    parser.add_argument("--speed", type=float, default=SPEED, help="replay pace, x real time")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument(
        "--cluster", action="store_true",
        help="on a Redis Cluster of 3 masters with a replica each: master SIGKILLs and slot migrations "
        "instead of the single Redis's restarts and AOF losses",
    )  # fmt: skip
    args = parser.parse_args()
    globals()["SPEED"] = args.speed
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="unistream-chaos-"))
    say(f"working in {tmp}")
    archive = write_archive(tmp / f"{SYMBOL}-trades-chaos.csv", args.seed, args.minutes)
    reference = reference_bars(archive.valid)
    say(
        f"{len(archive.valid):,} valid trades, reference bars: "
        + ", ".join(f"{tf} {len(b)}" for tf, b in reference.items())
    )
    from unistream_tools.redis_server import free_port

    system = System(tmp / "run", tmp / "redis", free_port(), pick_port_offset(PORTS), clustered=args.cluster)
    ok = False
    try:
        system.start_redis()
        start_system(system, archive, tmp / "run.log")
        took = wait(lambda: len(system.processes()) == PROCESSES and not system.all_ready(), 180, 0.5)
        if took is None:
            raise RuntimeError(f"the system did not get ready: {system.all_ready()}; see {tmp / 'run.log'}")
        say(f"system ready after {took:.0f} s; replay at {SPEED:g}x")
        chaos = Chaos(system, random.Random(args.seed))
        faults = plan_faults(chaos)
        # spread over the replay (~10 s of each fault's own recovery and checks aside), at random moments
        replay_s = (archive.valid[-1].ts_event_ms - archive.valid[0].ts_event_ms) / 1000 / SPEED
        gap_s = max(2.0, (replay_s - 30 - 6 * len(faults)) / len(faults))
        for fault in faults:
            time.sleep(chaos.rng.uniform(0.3, 1.7) * gap_s)
            fault()
        say("faults done; waiting for the replay to end and the bars to settle")
        settled = settle(system, reference, archive, replay_s + 120)
        say("settled" if settled is not None else "did NOT settle in time; checking what is there")
        time.sleep(3)  # last dead letters
        client = system.client()
        checks = [check_ticks(client, archive), *check_bars(client, reference, archive)]
        checks.append(check_training(client, reference))
        checks.append(check_dead_letters(client, chaos.poison))
        ok = summary(chaos, checks, archive, time.monotonic() - started)
    finally:
        stop_system(system)
        if args.keep or not ok:
            say(f"run directory kept: {tmp}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
