"""The trainer shell against a real Redis: chains of packets in; merged models, metrics and paper trading out.

Packets are written the way the features service writes them: explicit entry ids, each naming its
symbol's previous packet (``prev_id``). Small networks and states keep the runs short.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
import torch
from helpers import eventually, running_worker
from safetensors.torch import load as load_safetensors

from unistream_common import codec, keys
from unistream_common.packets import MetricsPacket, ModelAnnouncement, TrainingDataPacket
from unistream_common.redisio import command_client
from unistream_common.service import ServiceContext
from unistream_trainer.replicas import MEMBERS
from unistream_trainer.service import worker
from unistream_trainer.settings import TrainerSettings

pytestmark = pytest.mark.integration
torch.set_num_threads(1)

T0 = 1_700_000_000_000
DIM = 24
SYMBOLS = ("ETHUSDT", "BTCUSDT")
PREDICTIONS = ["1s.p_bottom", "1s.p_none", "1s.p_top", "1s.p_down", "1s.p_up"]


class Writer:
    """Writes training packets like the features service: ids it assigns, prev_id links per symbol."""

    def __init__(self, r: aioredis.Redis, seed: int = 0) -> None:
        self.r = r
        self.rng = np.random.default_rng(seed)
        self.seq = 0
        self.prev: dict[str, tuple[str, int]] = {}

    async def seconds(self, first: int, last: int) -> None:
        pipe = self.r.pipeline(transaction=False)
        for t in range(first, last):
            for symbol in SYMBOLS:
                self.seq += 1
                entry_id = f"{T0 + t * 1000}-{self.seq}"
                prev_id, prev_ts = self.prev.get(symbol, ("", 0))
                base = 3000.0 if symbol == "ETHUSDT" else 60_000.0
                p = TrainingDataPacket(
                    symbol=symbol, ts_event_ms=T0 + 1000 * t, price=float(base * (1 + 0.002 * np.sin(t / 5))),
                    source="SYNTHETIC", state_dim=DIM, state=codec.f32_to_bytes(self.rng.normal(0, 1, DIM)),
                    cnn_features=b"", cnn_predictions=codec.f32_to_bytes([0.2, 0.6, 0.2, 0.4, 0.6]),
                    prediction_names=PREDICTIONS, model_version="cnn-mtf-init-7", window_fill=1.0,
                    prev_id=prev_id, prev_ts_event_ms=prev_ts,
                )  # fmt: skip
                self.prev[symbol] = (entry_id, p.ts_event_ms)
                pipe.xadd(keys.training(symbol), codec.encode(p), id=entry_id)
        await pipe.execute()


def make_settings(redis_url: str, tmp_path: Path, name: str, **extra: Any) -> TrainerSettings:
    values: dict[str, Any] = {
        "redis_url": redis_url, "symbols": SYMBOLS, "consumer_name": name, "model_dir": str(tmp_path),
        "dqn_hidden_sizes": "16", "dqn_buffer_size": 500, "dqn_batch_size": 16, "dqn_learning_starts": 16,
        "dqn_updates_per_transition": 0.5, "metrics_every_s": 0.5, "merge_every_s": 0.7,
        "extrema_updates_per_packet": 0.0, "claim_idle_ms": 1_000,
    }  # fmt: skip
    values.update(extra)
    return TrainerSettings(**values)


async def announcements(r: aioredis.Redis, name: str) -> list[ModelAnnouncement]:
    out = [codec.decode(f) for _, f in await r.xrange(keys.MODELS)]
    return [a for a in out if isinstance(a, ModelAnnouncement) and a.name == name]


async def metrics(r: aioredis.Redis) -> list[MetricsPacket]:
    return [codec.decode(f) for _, f in await r.xrange(keys.METRICS)]  # type: ignore[misc]


async def test_one_replica_learns_from_chains_publishes_merged_models_and_a_restart_starts_from_them(
    redis_url: str, tmp_path: Path
):
    r = command_client(redis_url)
    writer = Writer(r)
    settings = make_settings(redis_url, tmp_path, "trainer-1")
    try:
        async with running_worker("trainer", settings, worker) as ctx:
            await writer.seconds(0, 60)
            await eventually(lambda: _n(announcements(r, "dqn"), 1), timeout=20, what="a merged DQN")
            await eventually(lambda: _paper_started(r), timeout=20, what="the leader's paper trading")
            await writer.seconds(60, 70)  # the leader paper-trades packets that arrive while it leads
            await eventually(lambda: _paper(r), timeout=20, what="paper-trading metrics")
            await eventually(lambda: _round_reported(r), timeout=20, what="metrics naming the adopted round")
            # a symbol's first packets have no predecessor to fill at (the first 1 + fill_lag of them)
            assert ctx.stats.total("trainer_no_predecessor") <= len(SYMBOLS) * (1 + settings.hyperparameters().fill_lag)
            assert ctx.stats.total("trainer_predecessors_fetched") < 10, "the batch and the cache hold them"
            assert ctx.stats.total("trainer_updates") > 0
        ann = (await announcements(r, "dqn"))[-1]
        assert ann.uri.startswith("redis:ml:{trainer}:registry:dqn:dqn-r") and ann.metrics["merge/members"] == 1
        data = await r.get(ann.uri[len("redis:") :])
        files = sorted((tmp_path / "dqn").glob("dqn-r*.safetensors"))
        assert files and files[-1].read_bytes() == data, "the registry is in Redis and on the volume"
        meta = json.loads(files[-1].with_suffix(".json").read_text())
        assert meta["model"] == "dqn" and meta["members"] == "trainer-1" and int(meta["samples"]) > 0
        assert json.loads(meta["hyperparameters"])["hidden_sizes"] == [16]
        assert int(meta["data_to_ms"]) >= int(meta["data_from_ms"]) >= T0
        newest = [m.metrics for m in await metrics(r) if "losses/td_loss" in m.metrics][-1]
        assert np.isfinite(newest["losses/td_loss"])
        assert any("charts/packets_per_s" in m.metrics for m in await metrics(r))

        # A restart (a new replica too) starts from the newest merged model.
        published = load_safetensors(data)
        async with running_worker("trainer", make_settings(redis_url, tmp_path, "trainer-2"), worker) as ctx2:
            await writer.seconds(70, 72)
            await eventually(lambda: _stat(ctx2, "trainer_packets", 1))
            info = ctx2.info()
            assert info["model_version"].startswith("dqn-r"), info
        assert published, "weights were there to start from"

        # Redis lost the registry and the announcements: the volume still has the newest merged model.
        await r.delete(keys.MODELS, *[k async for k in r.scan_iter(keys.registry_index("*"))])
        async with running_worker("trainer", make_settings(redis_url, tmp_path, "trainer-3"), worker) as ctx3:
            await writer.seconds(72, 74)
            await eventually(lambda: _stat(ctx3, "trainer_packets", 1))
            assert ctx3.info()["model_version"] == max((tmp_path / "dqn").glob("dqn-r*.safetensors")).stem
    finally:
        await r.aclose()


async def test_two_replicas_share_the_packets_merge_into_one_model_and_take_over_a_dead_ones_packets(
    redis_url: str, tmp_path: Path
):
    r = command_client(redis_url)
    writer = Writer(r, seed=1)
    try:
        a = make_settings(redis_url, tmp_path, "trainer-a")
        b = make_settings(redis_url, tmp_path, "trainer-b")
        async with running_worker("trainer", a, worker) as ca, running_worker("trainer", b, worker) as cb:
            for k in range(6):
                await writer.seconds(20 * k, 20 * k + 20)
                await asyncio.sleep(0.2)
            await eventually(lambda: _merged_with(r, 2), timeout=20, what="a merge of both replicas")
            assert ca.stats.total("trainer_packets") > 0 and cb.stats.total("trainer_packets") > 0
            assert ca.stats.total("trainer_packets") + cb.stats.total("trainer_packets") <= 2 * 120
            # Both end on the same merged version.
            await eventually(lambda: _same_version(ca, cb), timeout=10, what="both replicas on one version")

            members = {m.decode() for m in await r.zrange(MEMBERS, 0, -1)}
            assert {"trainer-a", "trainer-b"} <= members

        # A replica that died holding packets: a consumer that read them and never acknowledged.
        await writer.seconds(120, 125)
        streams = dict.fromkeys((keys.training(symbol) for symbol in SYMBOLS), ">")
        dead = await r.xreadgroup(keys.GROUP_TRAINER, "trainer-dead", streams, count=1000)
        assert sum(len(entries) for _, entries in dead) == 10
        async with running_worker("trainer", a, worker) as ca:
            started = asyncio.get_running_loop().time()
            await eventually(lambda: _claimed(r, ca, 10), timeout=30, what="the dead replica's packets claimed")
            assert asyncio.get_running_loop().time() - started < 30
    finally:
        await r.aclose()


async def _n(coro: Any, n: int) -> bool:
    return len(await coro) >= n


async def _stat(ctx: ServiceContext, name: str, n: float) -> bool:
    return ctx.stats.total(name) >= n


async def _paper(r: aioredis.Redis) -> bool:
    return any(
        m.metrics.get("paper/decisions", 0) > 0 and "paper/buy_and_hold_pnl" in m.metrics for m in await metrics(r)
    )


async def _paper_started(r: aioredis.Redis) -> bool:
    """A leader reports paper metrics from its first tick on: it trades every packet written after."""
    return any("paper/steps" in m.metrics for m in await metrics(r))


async def _paper_reports(r: aioredis.Redis) -> int:
    return sum("paper/steps" in m.metrics for m in await metrics(r))


async def _round_reported(r: aioredis.Redis) -> bool:
    return any(m.metrics.get("charts/model_round", 0) >= 1 for m in await metrics(r))


async def _merged_with(r: aioredis.Redis, members: int) -> bool:
    return any(a.metrics.get("merge/members") == members for a in await announcements(r, "dqn"))


async def _same_version(ca: ServiceContext, cb: ServiceContext) -> bool:
    va, vb = ca.info()["model_version"], cb.info()["model_version"]
    return bool(va) and va == vb


async def _claimed(r: aioredis.Redis, ctx: ServiceContext, taken: int) -> bool:
    pending = [await r.xpending(keys.training(symbol), keys.GROUP_TRAINER) for symbol in SYMBOLS]
    return ctx.stats.total("trainer_packets") >= taken and all(int(p["pending"]) == 0 for p in pending)


async def test_the_leaders_position_changes_are_written_as_paper_fills(redis_url: str, tmp_path: Path):
    from unistream_common.packets import PaperFill

    r = command_client(redis_url)
    writer = Writer(r, seed=3)
    settings = make_settings(redis_url, tmp_path, "trainer-1", dqn_start_e=0.0, dqn_end_e=0.0)
    try:
        async with running_worker("trainer", settings, worker) as ctx:
            await writer.seconds(0, 40)
            await eventually(lambda: _n(announcements(r, "dqn"), 1), timeout=20, what="a merged DQN")
            await eventually(lambda: _paper_started(r), timeout=20, what="the leader's paper trading")
            await writer.seconds(40, 200)
            await eventually(lambda: _paper(r), timeout=20, what="paper decisions")
            fills = [codec.decode(f) for _, f in await r.xrange(keys.PAPER)]
            assert ctx.stats.total("trainer_packets") > 0
        decisions = [m.metrics.get("paper/position_changes", 0) for m in await metrics(r)]
        assert all(isinstance(f, PaperFill) and f.position_from != f.position_to for f in fills)
        assert len(fills) >= 1 or max(decisions) == 0, "every position change is a fill"
    finally:
        await r.aclose()


async def test_a_merge_adds_the_members_deltas_to_the_base_each_counted_once(redis_url: str, tmp_path: Path):
    from unistream_trainer.dqn import QNetwork
    from unistream_trainer.replicas import DELTA_MODELS, ReplicaSync, deltas_key

    r = command_client(redis_url)
    try:
        base, new, other = QNetwork(6, (4, 3)), QNetwork(6, (4, 3)), QNetwork(6, (4, 3))
        base_t = {k: v.detach().clone() for k, v in base.state_dict().items()}
        step = {k: v.detach() - base_t[k] for k, v in new.state_dict().items()}  # learned in two submissions
        step_b = {k: v.detach() - base_t[k] for k, v in other.state_dict().items()}
        leader = ReplicaSync(r, "trainer-new", str(tmp_path), ttl_ms=10_000)
        follower = ReplicaSync(r, "trainer-b", str(tmp_path / "b"), ttl_ms=10_000)
        delta = {DELTA_MODELS: "dqn"}
        await leader.submit({"dqn": {k: 0.5 * v for k, v in step.items()}}, 40, delta)
        await leader.submit({"dqn": {k: 0.5 * v for k, v in step.items()}}, 60, delta)
        await follower.submit({"dqn": step_b}, 300, delta)
        assert 9_000 < await r.pttl(deltas_key("trainer-new")) <= 10_000, "kept as long as the heartbeat"
        assert await leader.try_lead()
        result = await leader.merge(["trainer-new", "trainer-b"], 1_000, {}, {"dqn": base_t})
        assert result is not None and result.members == ["trainer-b", "trainer-new"] and result.samples == 400
        merged = load_safetensors((tmp_path / "dqn" / f"dqn-{result.version}.safetensors").read_bytes())
        for k, b in base_t.items():  # the base + the members' updates averaged by samples (100 and 300)
            torch.testing.assert_close(merged[k], b + 0.25 * step[k] + 0.75 * step_b[k])
        assert not await r.exists(deltas_key("trainer-new"), deltas_key("trainer-b")), "each counts once"
        assert await leader.merge(["trainer-new", "trainer-b"], 2_000, {}, {"dqn": base_t}) is None
        # Registered under the lease, then announced (ml:models is in another slot on a cluster).
        ann = codec.decode((await r.xrevrange(keys.MODELS, count=1))[0][1])
        assert ann.version == f"dqn-{result.version}" and await r.get(ann.uri.removeprefix("redis:")) is not None
    finally:
        await r.aclose()


async def test_a_returning_leader_paper_trades_from_the_head_not_the_packets_of_its_absence(
    redis_url: str, tmp_path: Path
):
    from unistream_trainer.paper_policy import PaperPolicy
    from unistream_trainer.replicas import LEADER

    r = command_client(redis_url)
    writer = Writer(r, seed=4)
    settings = make_settings(redis_url, tmp_path, "trainer-1")

    async def steps() -> float:
        found = [m.metrics["paper/steps"] for m in await metrics(r) if "paper/steps" in m.metrics]
        return found[-1] if found else -1.0

    try:
        async with running_worker("trainer", settings, worker) as ctx:
            await writer.seconds(0, 30)
            await eventually(lambda: _n(announcements(r, "dqn"), 1), timeout=20, what="a merged DQN")
            await eventually(lambda: _paper_started(r), timeout=20, what="the leader's paper trading")
            await writer.seconds(30, 60)
            await eventually(lambda: _paper(r), timeout=20, what="paper decisions")
            await eventually(lambda: _stat(ctx, "trainer_paper_books_kept", 2), timeout=10, what="books kept")
            await r.set(LEADER, "trainer-elsewhere", px=60_000)  # the lease goes to another replica
            await eventually(lambda: _true(not ctx.info()["leader"]), timeout=10, what="the lease lost")
            books = PaperPolicy()
            books.load_bytes(await r.get(keys.TRAINER_BOOKS))  # what it takes back: its own, as last kept
            kept = books.portfolio.metrics()["paper/steps"]
            await writer.seconds(60, 120)  # 120 packets another leader trades
            await asyncio.sleep(1.5)
            await r.delete(LEADER)
            await eventually(lambda: _true(ctx.info()["leader"]), timeout=10, what="the lease back")
            await eventually(lambda: _stat(ctx, "trainer_paper_books_taken", 1), timeout=10, what="books taken back")
            reported = await _paper_reports(r)  # the next report comes after it found the stream's head
            await eventually(lambda: _true_async(_paper_reports(r), lambda n: n > reported), what="a report")
            await writer.seconds(120, 125)
            await eventually(lambda: _true_async(steps(), lambda n: n > kept), timeout=20, what="new decisions")
            await asyncio.sleep(1.5)  # every packet of 120..125 decided and reported
            after = await steps()
        assert kept > 0 and after - kept <= 2 * 5 + 2, (kept, after)
    finally:
        await r.aclose()


async def test_a_new_leader_goes_on_with_the_books_its_predecessor_kept(redis_url: str, tmp_path: Path):
    r = command_client(redis_url)
    writer = Writer(r, seed=6)

    async def last_paper() -> dict[str, float]:
        found = [m.metrics for m in await metrics(r) if "paper/steps" in m.metrics]
        return found[-1] if found else {}

    try:
        async with running_worker("trainer", make_settings(redis_url, tmp_path, "trainer-1"), worker) as first:
            await writer.seconds(0, 10)
            await eventually(lambda: _paper_started(r), timeout=20, what="the leader's paper trading")
            await writer.seconds(10, 40)
            await eventually(lambda: _paper(r), timeout=20, what="paper decisions")
            await asyncio.sleep(1.0)  # every packet decided and reported
            assert first.info()["leader"]
            before = await last_paper()
        # a clean stop keeps the books and gives up the lease; the next replica leads and takes them
        async with running_worker("trainer", make_settings(redis_url, tmp_path, "trainer-2"), worker) as second:
            await eventually(lambda: _stat(second, "trainer_paper_books_taken", 1), timeout=20, what="books taken")
            assert second.info()["paper_books_from"]["kept_by"] == "trainer-1"
            reported = await _paper_reports(r)  # the next report comes after it found the stream's head
            await eventually(lambda: _true_async(_paper_reports(r), lambda n: n > reported), what="a report")
            await writer.seconds(40, 45)
            await eventually(
                lambda: _true_async(last_paper(), lambda m: m["paper/steps"] > before["paper/steps"]),
                timeout=20, what="the second leader's decisions",
            )  # fmt: skip
            await asyncio.sleep(1.0)
            after = await last_paper()
        assert before["paper/steps"] >= 2 * 29, before
        # the figures go on: the first leader's steps, hours and curve, then 5 seconds of both symbols
        assert before["paper/steps"] < after["paper/steps"] <= before["paper/steps"] + 2 * 5 + 2
        assert after["paper/hours"] >= before["paper/hours"]
        assert after["sensitivity/trades"] >= before["sensitivity/trades"]
        assert after["paper/decisions"] > before["paper/decisions"]
    finally:
        await r.aclose()


async def _true(value: bool) -> bool:
    return value


async def _true_async(value: Any, check: Any) -> bool:
    return bool(check(await value))


async def test_a_leader_whose_lease_expired_publishes_nothing(redis_url: str, tmp_path: Path):
    from unistream_trainer.dqn import QNetwork
    from unistream_trainer.replicas import LEADER, ReplicaSync

    r = command_client(redis_url)
    try:
        stale = ReplicaSync(r, "trainer-a", str(tmp_path), ttl_ms=10_000)
        assert await stale.try_lead()
        await stale.submit({"dqn": QNetwork(6, (4,)).state_dict()}, 10, {})
        # a stall longer than the lease: it expires and another replica takes it
        holder = ReplicaSync(r, "trainer-b", str(tmp_path), ttl_ms=10_000)
        await r.set(LEADER, holder.token, px=10_000)
        assert stale.leader, "it does not know yet"
        assert await stale.merge(["trainer-a"], 1_000, {}) is None
        assert not stale.leader
        assert await r.xlen(keys.MODELS) == 0 and not [k async for k in r.scan_iter(keys.registry_index("*"))]
        assert not list(tmp_path.rglob("*.safetensors")), "nor on the volume"
        # the lease holder publishes: registry, index and announcement together
        await holder.submit({"dqn": QNetwork(6, (4,)).state_dict()}, 10, {})
        result = await holder.merge(["trainer-b"], 2_000, {})
        assert result is not None
        (announced,) = await announcements(r, "dqn")
        assert announced == result.announcements[0] and await r.exists(announced.uri.removeprefix("redis:"))
    finally:
        await r.aclose()


async def test_a_replica_restarted_under_the_same_name_does_not_take_its_former_self_s_lease(
    redis_url: str, tmp_path: Path
):
    from unistream_trainer.dqn import QNetwork
    from unistream_trainer.replicas import LEADER, ReplicaSync

    r = command_client(redis_url)
    try:
        before = ReplicaSync(r, "trainer-1", str(tmp_path), ttl_ms=10_000)
        assert await before.try_lead()
        assert keys.lease_holder(await r.get(LEADER)) == "trainer-1" and (await r.get(LEADER)).decode() == before.token
        # the process dies holding the lease; a new one starts as trainer-1 (compose restarts it)
        after = ReplicaSync(r, "trainer-1", str(tmp_path), ttl_ms=10_000)
        assert after.token != before.token
        assert not await after.try_lead(), "the lease is its former self's: it waits for it to run out"
        await after.submit({"dqn": QNetwork(6, (4,)).state_dict()}, 10, {})
        after.leader = True  # even believing it leads, it cannot publish under another process's lease
        assert await after.merge(["trainer-1"], 1_000, {}) is None and await r.xlen(keys.MODELS) == 0
        await r.pexpire(LEADER, 1)  # the dead process's lease runs out
        await asyncio.sleep(0.05)
        assert await after.try_lead() and (await r.get(LEADER)).decode() == after.token
    finally:
        await r.aclose()


async def test_submissions_of_another_state_layout_are_not_merged_with_the_first(redis_url: str, tmp_path: Path):
    from unistream_trainer.dqn import QNetwork
    from unistream_trainer.replicas import ReplicaSync

    r = command_client(redis_url)
    try:
        members = ["trainer-a", "trainer-b", "trainer-c"]
        syncs = {m: ReplicaSync(r, m, str(tmp_path), ttl_ms=10_000) for m in members}
        layouts = {"trainer-a": "v2/aaaa", "trainer-b": "v2/bbbb", "trainer-c": ""}  # c: an older release
        for m, sync in syncs.items():
            meta = {"layout_version": layouts[m]} if layouts[m] else {}
            await sync.submit({"dqn": QNetwork(6, (4,)).state_dict()}, 10, meta)
        assert await syncs["trainer-a"].try_lead()
        result = await syncs["trainer-a"].merge(members, 1_000, {})
        assert result is not None and result.members == ["trainer-a", "trainer-c"]
        (announced,) = await announcements(r, "dqn")
        assert announced.metrics["merge/members"] == 2
    finally:
        await r.aclose()


async def test_after_a_change_of_state_size_the_deltas_merge_onto_the_replicas_own_start_not_the_old_model(
    redis_url: str, tmp_path: Path
):
    from unistream_trainer.dqn import QNetwork
    from unistream_trainer.replicas import ReplicaSync

    r = command_client(redis_url)
    writer = Writer(r, seed=8)
    try:
        # a DQN published before the features were reconfigured: states of another size
        old = ReplicaSync(r, "trainer-old", str(tmp_path), ttl_ms=10_000)
        assert await old.try_lead()
        await old.submit({"dqn": QNetwork(DIM + 10 + 3, (16,)).state_dict()}, 10, {})
        assert await old.merge(["trainer-old"], 1_000, {}) is not None
        await r.delete(keys.TRAINER_LEADER)
        async with running_worker("trainer", make_settings(redis_url, tmp_path, "trainer-1"), worker):
            await writer.seconds(0, 40)
            await eventually(lambda: _n(announcements(r, "dqn"), 2), timeout=20, what="a DQN of the new size")
        newest = (await announcements(r, "dqn"))[-1]
        published = load_safetensors(await r.get(newest.uri.removeprefix("redis:")))
        assert published["trunk.0.weight_in_out"].shape[0] == DIM + 3  # the state and the position one-hot
    finally:
        await r.aclose()
