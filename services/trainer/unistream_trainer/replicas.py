"""Trainer replicas converge to one model: weight averaging through Redis (local SGD / federated averaging).

Every replica trains on its share of the training streams ``ml:training:{SYMBOL}`` (one consumer
group: each packet is learned from once). The replicas' shared keys below all carry the hash tag
``{trainer}`` (one slot on a Redis Cluster: the lease is checked in the script that writes beside it). Every ``merge_every_s`` each replica

1. renews its heartbeat in ``ml:{trainer}:members`` (a sorted set: name -> expiry, ms) and drops
   members whose heartbeat expired: replicas join and leave at any time;
2. when it learned something since its last submission, appends a submission to its list
   ``ml:{trainer}:deltas:<name>`` (safetensors; the list expires 3 rounds after the last one): the
   DQN as a *delta*, what its online weights learned since its previous submission or adoption,
   with the number of samples behind it; the CNN (learned by one replica, its owner) as weights;
3. tries to hold the lease ``ml:{trainer}:leader`` (one replica at a time; its value is the holder's
   :attr:`ReplicaSync.token`, ``<member>:<random>``, new in every process, so a replica restarted
   under the same name never takes its former self's lease for its own: it leads once that
   lease is released or runs out). The leader takes every
   live member's submissions (the whole list at once: each counts in one round only) and
   publishes the merged version: the DQN is the newest published DQN (the base) plus the
   members' deltas averaged by samples, each member's deltas summed (they are consecutive steps
   of one run); the CNN is its submitted weights (averaged by labelled samples if several
   replicas submitted one). Bytes go to the registry ``ml:{trainer}:registry:<model>:<version>``
   (Redis, for distribution; the newest few kept) in a script that first checks the lease (a
   leader whose lease expired during a stall publishes nothing), then a ModelAnnouncement on
   ``ml:models`` (a public stream in another slot: written after the script, so a leader that
   dies between the two leaves a version in the registry that nobody announced, never an
   announcement without its bytes), then a file under ``<model_dir>/<model>/`` with a JSON of its
   metadata (the volume, for persistence).
4. Every replica loads each newer merged version it sees announced (also the leader), and a new or
   restarted replica starts from the newest one: nobody starts from scratch once a model exists.
   A replica adopts the merged weights *plus* what it learned since its last submission (its next
   delta), so the steps it took between submitting and adopting are not overwritten.

Why deltas: with weights, the leader averaged each replica's weights at submission time and every
replica then replaced its weights by the average, losing the steps it took in between (half a
round per replica on average) while its samples still counted. Averaging the members' updates
from a shared point weighted by their samples is federated averaging (McMahan et al. 2017) /
local SGD (Stich 2019; Lin et al. 2020); keeping the local update made since the last
communication on top of the new average is how asynchronous variants avoid the overwrite.
Replicas' deltas start from the merged version they last adopted, which may be a round behind
the base they are added to (the staleness of asynchronous SGD, bounded by a round). With one
replica the published DQN is exactly its weights.

:func:`average` is pure; :class:`ReplicaSync` is the I/O.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from unistream_common import codec, keys
from unistream_common.packets import ModelAnnouncement
from unistream_common.redisio import s
from unistream_trainer.checkpoint import MODEL_NAME, read_metadata, sha256_hex, write_atomic
from unistream_trainer.dqn import is_statistic, upgrade_state_dict

log = logging.getLogger(__name__)

MEMBERS = keys.TRAINER_MEMBERS
LEADER = keys.TRAINER_LEADER
ROUND = keys.TRAINER_ROUND
REGISTRY_KEEP = 5  # merged versions kept in Redis per model
MODEL_SCAN = 100

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""


# A merged version is registered only by the lease holder, in one step: its registry entry and
# the registry index (its announcement follows: see the module's docstring).
_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[3])
return 1
"""


deltas_key = keys.trainer_deltas


DELTA_MODELS = "delta_models"  # submission metadata: the models submitted as deltas, comma-separated


def average(parts: Sequence[tuple[Mapping[str, torch.Tensor], float]]) -> dict[str, torch.Tensor]:
    """Tensors averaged with the given weights (samples learned); every part must have the same names and shapes.

    Raises ValueError for no parts, weights that do not sum to a positive number, or parts that disagree.
    """
    if not parts:
        raise ValueError("nothing to average")
    total = float(sum(w for _, w in parts))
    if not total > 0:
        raise ValueError(f"weights sum to {total}; at least one part must have learned something")
    names = set(parts[0][0])
    out: dict[str, torch.Tensor] = {}
    for tensors, _ in parts[1:]:
        if set(tensors) != names:
            raise ValueError(f"parts hold different tensors: {sorted(names ^ set(tensors))[:5]}")
    for name in sorted(names):
        first = parts[0][0][name]
        acc = torch.zeros_like(first, dtype=torch.float64)
        for tensors, w in parts:
            t = tensors[name]
            if t.shape != first.shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)} in one part and {tuple(first.shape)} in another")
            acc += t.to(torch.float64) * (w / total)
        out[name] = acc.to(first.dtype)
    return out


def pack(groups: Mapping[str, Mapping[str, torch.Tensor]], metadata: Mapping[str, str]) -> bytes:
    """One safetensors file holding several models' tensors, names prefixed ``<model>/``."""
    tensors = {f"{g}/{k}": v.detach().cpu().contiguous() for g, t in groups.items() for k, v in t.items()}
    return save_safetensors(tensors, metadata=dict(metadata))


def unpack(data: bytes) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """Inverse of :func:`pack`: tensors per model, and the metadata."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in load_safetensors(data).items():
        g, _, k = name.partition("/")
        groups.setdefault(g, {})[k] = t
    return groups, read_metadata(data)


@dataclass
class Submission:
    member: str
    groups: dict[str, dict[str, torch.Tensor]]
    samples: float
    metadata: dict[str, str]

    def samples_of(self, model: str) -> float:
        """The samples behind ``model``'s tensors: ``samples.<model>`` when submitted (the CNN's
        labelled samples), else ``samples`` (the DQN's packets)."""
        return float(self.metadata.get(f"samples.{model}", self.samples))

    def is_delta(self, model: str) -> bool:
        return model in self.metadata.get(DELTA_MODELS, "").split(",")


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _layout(subs: Sequence[Submission]) -> str:
    """The first state layout the submissions name ("" for none)."""
    return next((x.metadata["layout_version"] for x in subs if x.metadata.get("layout_version")), "")


@dataclass
class MergeResult:
    version: str
    round: int
    members: list[str]
    samples: float
    duration_ms: float
    announcements: list[ModelAnnouncement] = field(default_factory=list)


class ReplicaSync:
    """Heartbeat, submission, leadership, merge and publication for one replica."""

    def __init__(
        self, redis: aioredis.Redis, member: str, model_dir: str, ttl_ms: int, models_maxlen: int = 1_000,
        files_keep: int = 10,
    ) -> None:  # fmt: skip
        self.redis = redis
        self.member = member
        self.model_dir = Path(model_dir).resolve()
        self.ttl_ms = ttl_ms
        self.models_maxlen = models_maxlen
        self.files_keep = files_keep
        self.leader = False
        # The lease's value: this process, not only its name (a restart under the same name is another holder).
        self.token = f"{member}:{secrets.token_hex(6)}"
        self._renew = redis.register_script(_RENEW)
        self._publish = redis.register_script(_PUBLISH)

    async def heartbeat(self, now_ms: int) -> list[str]:
        """Renew this member; drop expired ones; the live members, sorted."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(MEMBERS, {self.member: now_ms + self.ttl_ms})
        pipe.zremrangebyscore(MEMBERS, "-inf", now_ms)
        pipe.zrange(MEMBERS, 0, -1)
        *_, members = await pipe.execute()
        return sorted(s(m) for m in members)

    async def leave(self) -> None:
        """A clean stop: out of the members, the lease released if held."""
        await self.redis.zrem(MEMBERS, self.member)
        if self.leader:
            await self.redis.eval(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                1, LEADER, self.token,
            )  # fmt: skip
            self.leader = False

    async def submit(
        self, groups: Mapping[str, Mapping[str, torch.Tensor]], samples: int, meta: Mapping[str, str]
    ) -> None:
        """Append a submission (``meta`` names the models that are deltas under ``DELTA_MODELS``)."""
        data = pack(groups, {**meta, "member": self.member, "samples": str(samples)})
        # Kept as long as this member's heartbeat (``ttl_ms``: 3 rounds in the service), as the module says.
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(deltas_key(self.member), data)
        pipe.pexpire(deltas_key(self.member), self.ttl_ms)
        await pipe.execute()

    async def try_lead(self) -> bool:
        self.leader = bool(await self._renew(keys=[LEADER], args=[self.token, self.ttl_ms]))
        return self.leader

    async def collect(self, members: Sequence[str]) -> list[Submission]:
        """Take the live members' submissions, oldest first per member (each list read and deleted
        at once); undecodable ones are dropped with a warning."""
        pipe = self.redis.pipeline(transaction=True)
        for m in members:
            pipe.lrange(deltas_key(m), 0, -1)
            pipe.delete(deltas_key(m))
        replies = await pipe.execute()
        taken = [(m, data) for k, m in enumerate(members) for data in replies[2 * k]]
        out = []
        for m, data in taken:
            try:
                groups, meta = unpack(data)
                # a replica of the previous release submits the DQN's first layer in nn.Linear's layout
                if MODEL_NAME in groups:
                    groups[MODEL_NAME] = upgrade_state_dict(groups[MODEL_NAME])
                out.append(Submission(m, groups, float(meta.get("samples", "0")), meta))
            except Exception as exc:  # noqa: BLE001 - a broken submission must not stop the merge
                log.warning("submission of %s passed over: %s", m, exc)
        return out

    async def merge(
        self, members: Sequence[str], now_ms: int, meta: Mapping[str, str],
        bases: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    ) -> MergeResult | None:  # fmt: skip
        """As leader: merge the submissions and publish every model in them; None with nothing to merge.

        ``bases``: per model, the weights deltas are added to (the newest published version; before
        any, the leader's starting weights); a model submitted as deltas without a base is not merged.
        """
        started = time.perf_counter()
        subs = await self.collect(members)
        # Per model, the submissions that learned it something, weighted by their samples of it (the
        # DQN by packets, the CNN by labelled samples: only its owner submits it); only those with the
        # tensor names and shapes of the first one, and its state layout (a submission that names
        # none, of an older release, goes with any), merge together.
        parts: dict[str, list[Submission]] = {}
        for model in sorted({m for x in subs for m in x.groups}):
            having = [x for x in subs if model in x.groups and x.samples_of(model) > 0]
            if having:
                shapes, layout = _shapes(having[0].groups[model]), _layout(having)
                parts[model] = [
                    x for x in having if _shapes(x.groups[model]) == shapes and _layout([x]) in ("", layout)
                ]
        if not parts:
            return None
        round_no = int(await self.redis.incr(ROUND))
        version_tag = f"r{round_no:07d}"
        contributors = sorted({x.member for group in parts.values() for x in group})
        samples = sum(x.samples for x in subs if x.member in contributors)
        result = MergeResult(version_tag, round_no, contributors, samples, 0.0)
        for model, group in parts.items():
            base = (bases or {}).get(model)
            if base is not None and _shapes(base) != _shapes(group[0].groups[model]):
                log.warning("%s: the base does not fit the submissions (another state size): not used", model)
                base = None
            if base is None and any(x.is_delta(model) for x in group):
                log.warning("%s not merged this round: its deltas have no base", model)
                continue
            merged = merge_model(model, group, base)
            model_samples = sum(x.samples_of(model) for x in group)
            names = list(dict.fromkeys(x.member for x in group))  # a member may have queued several
            version = f"{model}-{version_tag}"
            metadata = {
                **meta,
                **{k: v for k, v in group[0].metadata.items() if k.startswith(model + ".")},
                "model": model,
                "version": version,
                "round": str(round_no),
                "parents": ",".join(f"{x.member}:{x.metadata.get('base', '')}" for x in group),
                "members": ",".join(names),
                "submissions": str(len(group)),
                "samples": str(int(model_samples)),
                "published_ms": str(now_ms),
            }
            data = save_safetensors({k: v.contiguous() for k, v in merged.items()}, metadata=metadata)
            key = keys.registry(model, version)
            metrics = {
                "merge/round": float(round_no),
                "merge/members": float(len(names)),
                "merge/submissions": float(len(group)),
                "merge/samples": float(model_samples),
            }
            ann = ModelAnnouncement(
                name=model, version=version, ts_ms=now_ms, uri=f"redis:{key}", sha256=sha256_hex(data),
                producer=self.member, parameters=sum(t.numel() for t in merged.values()), metrics=metrics,
                members=names,
            )  # fmt: skip
            keys_ = [LEADER, key, keys.registry_index(model)]
            if not await self._publish(keys=keys_, args=[self.token, data, version]):
                # The lease expired (a stall longer than its TTL) and another replica may lead: a
                # stale leader publishes nothing, and the submissions it took are lost for this round.
                self.leader = False
                log.warning("merge round %d not published: %s no longer holds the lease", round_no, self.member)
                return None
            await self.redis.xadd(keys.MODELS, codec.encode(ann), maxlen=self.models_maxlen, approximate=True)
            path = self.model_dir / model / f"{version}.safetensors"
            write_atomic(path, data)
            path.with_suffix(".json").write_text(json.dumps(metadata, indent=1, sort_keys=True))
            for old in sorted(path.parent.glob(f"{model}-r*.safetensors"))[: -self.files_keep]:
                old.unlink(missing_ok=True)
                old.with_suffix(".json").unlink(missing_ok=True)
            await self._prune(model)
            result.announcements.append(ann)
        result.duration_ms = (time.perf_counter() - started) * 1000
        return result

    async def _prune(self, model: str) -> None:
        index = keys.registry_index(model)
        extra = int(await self.redis.llen(index)) - REGISTRY_KEEP
        for _ in range(max(0, extra)):
            old = await self.redis.lpop(index)
            if old:
                await self.redis.delete(keys.registry(model, s(old)))

    async def fetch(self, ann: ModelAnnouncement) -> bytes | None:
        """The bytes an announcement points at (registry key or file), checked against its sha256."""
        if ann.uri.startswith("redis:"):
            data = await self.redis.get(ann.uri[len("redis:") :])
        else:
            path = Path(ann.uri.removeprefix("file://"))
            data = path.read_bytes() if path.exists() else None
        if data is None or sha256_hex(data) != ann.sha256:
            return None
        return bytes(data)

    def newest_file(self, model: str) -> tuple[str, bytes] | None:
        """(version, bytes) of the newest merged file of ``model`` on the volume (when Redis lost the registry)."""
        files = sorted((self.model_dir / model).glob(f"{model}-r*.safetensors"))
        return (files[-1].stem, files[-1].read_bytes()) if files else None

    async def newest(self, model: str, after_ts_ms: int = 0) -> ModelAnnouncement | None:
        """The newest announcement of ``model`` newer than ``after_ts_ms`` on ``ml:models``."""
        for _, fields in await self.redis.xrevrange(keys.MODELS, "+", "-", count=MODEL_SCAN):
            try:
                p = codec.decode(fields)
            except codec.DecodeError:
                continue
            if isinstance(p, ModelAnnouncement) and p.name == model:
                return p if p.ts_ms > after_ts_ms else None
        return None


def merge_model(
    model: str, group: Sequence[Submission], base: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """One model's merged tensors from a round's submissions of it (see the module docstring).

    With a ``base``: base + the members' updates averaged by their samples, each member's update
    the sum of its submissions (deltas as they are; whole weights less the base). Sums of
    observations (the DQN's input statistics, :func:`~unistream_trainer.dqn.is_statistic`) take the
    *sum* of the members' updates instead: each state is counted by the one replica that learned
    from it, so base + every update counts each exactly once. Without a base: the samples-weighted
    average of the members' newest whole weights (for sums, a pooled estimate on an averaged count).
    """
    members: dict[str, list[Submission]] = {}
    for x in group:
        members.setdefault(x.member, []).append(x)
    if base is None:
        return average([(subs[-1].groups[model], sum(x.samples_of(model) for x in subs)) for subs in members.values()])
    zero = {k: torch.zeros_like(v) for k, v in base.items()}
    updates: list[tuple[Mapping[str, torch.Tensor], float]] = []
    for subs in members.values():
        update = dict(zero)
        for x in subs:
            t = x.groups[model]
            update = {k: update[k] + (t[k] if x.is_delta(model) else t[k] - base[k]) for k in update}
        updates.append((update, sum(x.samples_of(model) for x in subs)))
    mean = average(updates)
    total = {k: sum(u[k].to(torch.float64) for u, _ in updates) for k in base if is_statistic(k)}
    return {k: (base[k].to(torch.float64) + total.get(k, mean[k]).to(torch.float64)).to(base[k].dtype) for k in base}


def describe(meta: Mapping[str, Any]) -> dict[str, str]:
    """Metadata values as strings (safetensors metadata is str -> str)."""
    return {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}
