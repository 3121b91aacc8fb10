"""The trainer I/O shell: the ``trainer`` group over every symbol's training stream
(``ml:training:{SYMBOL}``), replicas merged into one model.

- Each consumed batch (as many packets as earn the most gradient steps a batch takes: 4 at the
  defaults, so a backlog is learned at the live rate, at the pace of learning): every packet gets
  its symbol's predecessors (``prev_id`` chains: from a cache of recent packets, else fetched by
  id), then :class:`~unistream_trainer.core.TrainerCore` builds
  the n-step transitions and takes the gradient steps they earned, in a worker thread (the event
  loop stays free). Entries are acknowledged at once: the replay buffer is a cache of recent experience.
- The CNN has one owner, the replica holding the lease: an extremum label needs the packet of its
  bar and the one ``k`` bars later (hours apart for 1h bars), which the group hands to different
  replicas, so a learner fed one replica's share lost most labels (about half at two replicas).
  The owner reads every symbol's training packets in stream order, from the symbol's cursor in
  ``ml:{trainer}:cnn_cursor`` the previous owner left (the stream's start at the first), learns the
  heads from the labels that became known and moves the cursor on (only while it holds the lease).
  A new owner starts from the newest merged CNN; labels whose bar came before the cursor and whose
  later bar comes after it are lost at a change of owner (at most ``k`` bars per timeframe and symbol).
- A dead replica's unacknowledged packets are claimed by the others after ``claim_idle_ms``.
- Every ``merge_every_s`` (:mod:`unistream_trainer.replicas`): heartbeat, submit what was learned
  since the last submission (the DQN as a delta, the CNN's weights from its owner), and, for the
  replica holding the lease, add the live replicas' DQN deltas averaged by packets to the newest
  merged DQN, take the CNN (by labelled samples: its owner's alone) and publish both (registry in
  Redis + files + ``ml:models``). Every replica adopts each newer merged version plus its own
  learning since its submission; a new replica starts from the newest.
- The leader also paper-trades the current policy on every packet as it arrives (the training
  streams read without the group, so it sees all of them), with fees and baselines, learns sensitivity from
  the closed trades, and publishes ``paper/*`` and ``sensitivity/*`` metrics. It keeps these books
  (ledgers, positions, the sensitivity learner) in ``ml:{trainer}:books`` every merge round and when
  it stops, under the lease; a new or returning leader takes them and goes on from the stream's
  head, so a change of leader keeps the figures. What was booked since the last keeping is lost
  with a leader that dies (one round at most; none at a clean stop).
- Metrics (``losses/*``, ``charts/*``, ``extrema/*``, ``merge/*``) every ``metrics_every_s``.

The callback and the timer run one after the other in the consumer's loop, never concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from typing import Any, cast

from safetensors.torch import load as load_safetensors

from unistream_common import codec, keys
from unistream_common.consumer import ConsumerOptions, GroupConsumer, Message, Result, StreamRuntime, Write
from unistream_common.packets import MetricsPacket, ModelAnnouncement, PaperFill, TrainingDataPacket
from unistream_common.redisio import read_reply, s
from unistream_common.service import ServiceContext, run_consumers
from unistream_common.stats import Stats
from unistream_trainer.checkpoint import MODEL_NAME, VALUES, read_metadata
from unistream_trainer.core import TrainerCore, packets_per_batch, published_values_kind, values_kind
from unistream_trainer.dqn import upgrade_state_dict
from unistream_trainer.replicas import DELTA_MODELS, LEADER, ReplicaSync, describe
from unistream_trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

SERVICE = "trainer"
TIMER_S = 0.5
CNN_MODEL = "cnn-mtf"
PAPER_READ = 500
CNN_READ = 64  # training packets the CNN's owner reads per timer tick: short ticks, 128 packets/s at most
CNN_CURSOR = keys.TRAINER_CNN_CURSOR
# Claim the entries of symbol ARGV[2] after its cursor up to ARGV[4]: only the lease holder, only
# from where the cursor is (ARGV[3]).
_CLAIM_CNN_BATCH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if (redis.call('HGET', KEYS[2], ARGV[2]) or '0-0') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4]) return 1
"""


# Keep the paper books only while holding the lease: a stale leader must not overwrite its successor's.
_KEEP_BOOKS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2]) return 1
"""


def wall_ms() -> int:
    return int(time.time() * 1000)


class TrainerService:
    """Callbacks of the trainer consumer, around one :class:`TrainerCore` and the replica protocol."""

    def __init__(self, settings: TrainerSettings, runtime: StreamRuntime, stats: Stats) -> None:
        self.settings = settings
        self.runtime = runtime
        self.stats = stats
        self.producer = settings.consumer(SERVICE)
        self.core = TrainerCore(settings.hyperparameters(), max_gap_ms=settings.max_gap_ms)
        self.extrema = make_extrema(settings)
        self.paper = make_paper(settings)
        self.sync: ReplicaSync | None = None
        self._cache: OrderedDict[tuple[str, str], TrainingDataPacket] = OrderedDict()  # (symbol, entry id)
        start = wall_ms()
        self._next_metrics_ms = start + int(settings.metrics_every_s * 1000)
        self._next_merge_ms = start + int(settings.merge_every_s * 1000)
        self._adopted_ts = {MODEL_NAME: 0, CNN_MODEL: 0}
        self._paper_ids: dict[str, str] | None = None  # leading: per symbol, the last packet paper-traded
        self.last_merge: dict[str, Any] = {}
        self.members: list[str] = []
        self._extrema_samples = 0  # labelled CNN samples since the last submission
        self.extrema_labels = 0  # labelled CNN samples learned while owning the CNN, in all
        # Owning the CNN: per symbol, the last entry of its training stream learned from.
        self._cnn_ids: dict[str, str] | None = None
        self._claim_cnn_batch: Any = None
        self._keep_books: Any = None
        self._leading = False  # held the lease at the last timer tick
        self._layout_warned = -math.inf  # monotonic time of the last warning about refused layouts
        self.books_from: dict[str, str | int] = {}  # who kept the paper books this replica took, and when
        self._base: tuple[str, dict[str, Any], str] = ("", {}, "")  # newest published DQN: version, tensors, layout

    def register(self) -> GroupConsumer:
        self.sync = ReplicaSync(
            self.runtime.cmd, self.producer, self.settings.model_dir, ttl_ms=int(3_000 * self.settings.merge_every_s),
            models_maxlen=self.settings.models_maxlen, files_keep=self.settings.checkpoint_keep,
        )  # fmt: skip
        self._claim_cnn_batch = self.runtime.cmd.register_script(_CLAIM_CNN_BATCH)
        self._keep_books = self.runtime.cmd.register_script(_KEEP_BOOKS)
        return self.runtime.register_consumer(
            keys.GROUP_TRAINER,
            self.on_messages,
            ["training"],
            options=ConsumerOptions(
                batch_size=packets_per_batch(self.core.hp),
                timer_interval_s=TIMER_S,
                claim_idle_ms=self.settings.claim_idle_ms,
                claim_every_s=2.0,
            ),
            on_timer=self.on_timer,
            packet_types=(TrainingDataPacket,),
        )

    # --- start -------------------------------------------------------------------------------

    async def start_from_published(self) -> None:
        """A new or restarted replica starts from the newest merged models, not from scratch."""
        assert self.sync is not None
        for model in (MODEL_NAME, CNN_MODEL):
            ann = await self.sync.newest(model)
            if ann is not None and await self._adopt(ann):
                continue
            found = await asyncio.to_thread(self.sync.newest_file, model)  # Redis lost it: the volume has it
            if found is not None:
                version, data = found
                tensors, meta = unpack_single(data)
                if model == MODEL_NAME and not self._same_values(version, meta):
                    continue
                if model == MODEL_NAME:
                    ok = self.core.adopt(tensors, version, meta.get("layout_version", ""))
                else:
                    ok = adopt_cnn(self.extrema, tensors)
                self.stats.inc("trainer_models_from_volume", model=model)
                log.info(
                    "starting from %s on the volume (%s)", version, "adopted" if ok else "waits for the first packet"
                )

    async def _adopt(self, ann: ModelAnnouncement) -> bool:
        assert self.sync is not None
        data = await self.sync.fetch(ann)
        if data is None:
            self.stats.inc("trainer_model_unavailable")
            return False
        try:
            groups, meta = unpack_single(data)
        except Exception as exc:  # noqa: BLE001 - a broken registry entry must not stop training
            self.stats.inc("trainer_model_unreadable")
            log.warning("merged model %s not adopted: %s", ann.version, exc)
            return False
        if ann.name == MODEL_NAME and not self._same_values(ann.version, meta):
            return False
        self._adopted_ts[ann.name] = ann.ts_ms
        if ann.name == CNN_MODEL and meta.get("members") == self.producer:
            return True  # the CNN this replica owns, as it submitted it: it has learned more since
        if ann.name == MODEL_NAME:
            ok = self.core.adopt(groups, ann.version, meta.get("layout_version", ""))
        else:
            ok = self.extrema is not None and adopt_cnn(self.extrema, groups)
        self.stats.inc("trainer_models_adopted" if ok else "trainer_models_waiting", model=ann.name)
        return ok

    def _same_values(self, version: str, meta: dict[str, str]) -> bool:
        """Whether a published DQN's outputs mean what this replica's do (see ``known_costs``); counted if not."""
        theirs, ours = published_values_kind(meta), values_kind(self.core.hp)
        if theirs == ours:
            return True
        self.stats.inc("trainer_models_other_values")
        log.warning("merged model %s not adopted: it holds %s, this trainer %s", version, VALUES[theirs], VALUES[ours])
        return False

    # --- learning ----------------------------------------------------------------------------

    def _remember(self, entry_id: str, packet: TrainingDataPacket) -> None:
        key = (packet.symbol, entry_id)  # ids are per symbol's stream
        self._cache[key] = packet
        self._cache.move_to_end(key)
        while len(self._cache) > self.settings.chain_cache:
            self._cache.popitem(last=False)

    async def _ancestors(self, packets: list[TrainingDataPacket]) -> list[list[TrainingDataPacket]]:
        """Up to n_step + fill_lag predecessors of each packet, oldest first (cache, then fetched by id, level by level)."""
        n = self.core.hp.n_step + self.core.hp.fill_lag
        chains: list[list[TrainingDataPacket]] = [[] for _ in packets]
        heads: list[tuple[str, str]] = [(p.symbol, p.prev_id) for p in packets]
        for _ in range(n):
            missing = sorted({h for h in heads if h[1] and h not in self._cache})
            if missing:
                pipe = self.runtime.cmd.pipeline(transaction=False)
                for symbol, entry_id in missing:
                    pipe.xrange(keys.training(symbol), entry_id, entry_id, count=1)
                for (symbol, entry_id), reply in zip(missing, await pipe.execute(), strict=True):
                    if not reply:
                        self.stats.inc("trainer_predecessor_trimmed")
                        continue
                    try:
                        packet = codec.decode(reply[0][1])
                    except codec.DecodeError:
                        continue
                    if isinstance(packet, TrainingDataPacket) and packet.symbol == symbol:
                        self._remember(entry_id, packet)
                        self.stats.inc("trainer_predecessors_fetched")
            for k, h in enumerate(heads):
                prev = self._cache.get(h) if h[1] else None
                if prev is None:
                    heads[k] = (h[0], "")
                    continue
                chains[k].insert(0, prev)
                heads[k] = (h[0], prev.prev_id)
        return chains

    async def on_messages(self, messages: list[Message]) -> Result:
        packets: list[TrainingDataPacket] = []
        for m in messages:
            if isinstance(m.packet, TrainingDataPacket):
                packets.append(m.packet)
                self._remember(m.id, m.packet)  # a packet's predecessor is often in the same batch
        ancestors = await self._ancestors(packets)
        steps = await asyncio.to_thread(self._learn, packets, ancestors)
        self.stats.inc("trainer_packets", len(packets))
        self.stats.inc("trainer_updates", steps)
        for name, value in self.core.events.items():
            self.stats.inc(f"trainer_{name}", value)
        if self.core.events["layout_mismatch"] and time.monotonic() >= self._layout_warned + 60:
            self._layout_warned = time.monotonic()  # once a minute: every packet of a wrong layout is counted
            log.warning("training packets refused: %s", self.core.layout_error)
        self.core.events.clear()
        return Result()

    def _learn(self, packets: list[TrainingDataPacket], ancestors: list[list[TrainingDataPacket]]) -> int:
        return self.core.process(packets, ancestors)

    def _learn_extrema(self, packets: list[TrainingDataPacket]) -> int:
        """The CNN owner's step: observe ``packets`` (stream order), train the steps they earned; labels found."""
        assert self.extrema is not None
        return int(self.extrema.learn(packets, self.settings.extrema_updates_per_packet))

    async def _read_training(self, cursors: dict[str, str], count: int) -> dict[str, list[tuple[str, Any]]]:
        """Entries after ``cursors`` (symbol -> entry id) of the symbols' training streams, at most
        ``count`` per stream: one XREAD per hash slot (one for all on a single Redis)."""
        by_stream = {keys.training(symbol): cursor for symbol, cursor in cursors.items()}
        out: dict[str, list[tuple[str, Any]]] = {}
        for group in self.runtime.read_groups(list(by_stream)):
            reply = await self.runtime.cmd.xread({stream: by_stream[stream] for stream in group}, count=count)
            for stream, entries in read_reply(reply):
                symbol = keys.parse_training(stream)
                if symbol is not None and entries:
                    out[symbol] = entries
        return out

    async def cnn_learn(self) -> None:
        """As the CNN's owner (the lease holder): learn from the next ``CNN_READ`` packets of each
        symbol's training stream."""
        assert self.extrema is not None and self.sync is not None
        if self._cnn_ids is None:
            saved = await self.runtime.cmd.hgetall(CNN_CURSOR)
            self._cnn_ids = {symbol: s(saved.get(symbol.encode(), b"0-0")) for symbol in self.settings.symbols}
        cursors = self._cnn_ids
        for symbol, entries in (await self._read_training(cursors, CNN_READ)).items():
            start, packets = cursors[symbol], []
            for _, fields in entries:
                try:
                    packet = codec.decode(fields)
                except codec.DecodeError:
                    continue  # counted by the group's consumer, which reads the same entry
                if isinstance(packet, TrainingDataPacket):
                    packets.append(packet)
            last = entries[-1][0]
            # The batch is claimed before it is learned, so that each entry is learned once: a lease
            # lost meanwhile, or a cursor another owner moved, leaves it to the owner of the cursor.
            claim = [self.sync.token, symbol, start, last]
            if not await self._claim_cnn_batch(keys=[LEADER, CNN_CURSOR], args=claim):
                self._cnn_ids = None
                self.stats.inc("trainer_extrema_batches_not_claimed")
                return
            cursors[symbol] = last
            labelled = await asyncio.to_thread(self._learn_extrema, packets)
            self._extrema_samples += labelled
            self.extrema_labels += labelled
            self.stats.inc("trainer_extrema_packets", len(packets))
            self.stats.inc("trainer_extrema_labels", labelled)

    # --- the cycle ---------------------------------------------------------------------------

    async def on_timer(self, now_ms: int) -> Result:
        writes: list[Write] = []
        if now_ms >= self._next_merge_ms:
            self._next_merge_ms = now_ms + int(self.settings.merge_every_s * 1000)
            await self.merge_round(now_ms)
        await self.adopt_newer()
        leader = self.sync is not None and self.sync.leader
        if leader and not self._leading and self.paper is not None:
            await self.take_books()
        self._leading = leader
        if leader and self.extrema is not None:
            await self.cnn_learn()
        if not leader:
            # A next turn as leader owns the CNN from the cursor in Redis, and paper-trades from the
            # stream's head, never packets of the time it did not lead (which the group has meanwhile
            # trained on: in-sample decisions).
            self._cnn_ids = None
            self._paper_ids = None
        if leader and self.paper is not None:
            writes.extend(await self.paper_trade())
        if now_ms >= self._next_metrics_ms:
            self._next_metrics_ms = now_ms + int(self.settings.metrics_every_s * 1000)
            writes.append(Write(keys.METRICS, self._metrics_packet(now_ms), maxlen=self.settings.metrics_maxlen))
        return Result(writes=writes)

    def _metrics_packet(self, now_ms: int) -> MetricsPacket:
        metrics = self.core.metrics(now_ms)
        metrics["charts/model_round"] = float(round_of(self.core.model_version))
        metrics["charts/replicas"] = float(len(self.members))
        if self.extrema is not None and self.extrema_labels:  # only an owner of the CNN has learned labels
            metrics.update(self.extrema.metrics())
        if self.paper is not None and self.sync is not None and self.sync.leader:
            metrics.update(self.paper.metrics())
        if self.last_merge:
            metrics["merge/duration_ms"] = float(self.last_merge["duration_ms"])
            metrics["merge/members"] = float(self.last_merge["members"])
        self.stats.set("trainer_epsilon", metrics["charts/epsilon"])
        self.stats.set("trainer_replay_size", metrics["charts/replay_size"])
        return MetricsPacket(producer=self.producer, ts_ms=now_ms, step=self.core.updates, metrics=metrics)

    async def merge_round(self, now_ms: int) -> None:
        """Heartbeat, submit, and (as leader) merge and publish (the announcements included)."""
        sync = self.sync
        assert sync is not None
        self.members = await sync.heartbeat(now_ms)
        mark = self.core.mark
        groups = self._groups() if self.core.samples_since_merge > 0 or self._extrema_samples > 0 else {}
        if groups:
            meta = describe({
                "base": self.core.model_version, "state_dim": self.core.state_dim,
                "layout_version": self.core.agent_layout, DELTA_MODELS: MODEL_NAME,
                f"samples.{CNN_MODEL}": self._extrema_samples,
            })  # fmt: skip
            try:
                await sync.submit(groups, self.core.samples_since_merge, meta)
            except Exception:
                self.core.mark = mark  # not submitted: what it learned goes into the next submission
                raise
            self.core.samples_since_merge = 0
            self._extrema_samples = 0
        if not await sync.try_lead():
            return
        await self.keep_books(now_ms)
        meta = describe({
            "hyperparameters": {k: v for k, v in vars(self.core.hp).items()},
            "state_dim": self.core.state_dim,
            "layout_version": self.core.agent_layout,  # of the states the network was built for
            "cnn_version": self.core.cnn_version,
            "data_from_ms": self.core.data_from_ms,
            "data_to_ms": self.core.data_to_ms,
            "metrics": {"losses/td_loss": self.core.last_loss},
        })  # fmt: skip
        bases = await self._merge_bases()
        if MODEL_NAME not in bases:  # the submissions stay queued for a round that has one
            self.stats.inc("trainer_merge_rounds_without_base")
            return
        result = await sync.merge(self.members, now_ms, meta, bases)  # announced on ml:models too, under the lease
        if result is None:
            return
        self.last_merge = {"round": result.round, "members": len(result.members), "duration_ms": result.duration_ms}
        self.stats.inc("trainer_merge_rounds")
        self.stats.set("trainer_merge_duration_ms", result.duration_ms)
        log.info(
            "merge round %d: %d replicas, %d samples, %.0f ms", result.round, len(result.members), result.samples,
            result.duration_ms,
        )  # fmt: skip

    async def _merge_bases(self) -> dict[str, dict[str, Any]]:
        """The DQN the members' deltas are added to: the newest published one (read from the
        registry once per version), else, before any, this replica's starting weights."""
        assert self.sync is not None
        ann = await self.sync.newest(MODEL_NAME)
        if ann is not None and self._base[0] != ann.version:
            data = await self.sync.fetch(ann)
            if data is not None:
                tensors, meta = unpack_single(data)
                self._base = (ann.version, upgrade_state_dict(tensors), meta.get("layout_version", ""))
        if ann is not None and self._base[0] == ann.version and self._fits(self._base[1], self._base[2]):
            return {MODEL_NAME: self._base[1]}
        # None published yet, or the newest is of another state size or layout (the features were
        # reconfigured): the deltas of this network start from its starting weights
        if self.core.origin is not None and (ann is None or self._base[0] == ann.version):
            return {MODEL_NAME: self.core.origin}
        return {}  # the newest is unreadable, or nothing was learned here yet: no round now

    def _fits(self, tensors: dict[str, Any], layout: str) -> bool:
        """Whether published DQN weights are of this replica's network: names, shapes and state layout."""
        own = self.core.origin
        if own is None or set(own) != set(tensors) or any(own[k].shape != tensors[k].shape for k in own):
            return False
        return not (layout and self.core.agent_layout and layout != self.core.agent_layout)

    def _groups(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        delta = self.core.take_delta()
        if delta is not None:
            out[MODEL_NAME] = delta
        if self.extrema is not None and self._extrema_samples > 0:  # the CNN's owner, with labels learned
            out[CNN_MODEL] = {k: v.detach().clone() for k, v in self.extrema.model.state_dict().items()}
        return out

    async def adopt_newer(self) -> None:
        """Adopt merged versions announced since the last ones adopted."""
        assert self.sync is not None
        for model in (MODEL_NAME, CNN_MODEL):
            ann = await self.sync.newest(model, after_ts_ms=self._adopted_ts[model])
            if ann is not None:
                await self._adopt(ann)

    async def paper_trade(self) -> list[Write]:
        """The leader's paper trading: every packet as it arrives, decided on by the current policy.

        Returns the PaperFills (position changes) to write on ``ml:paper``.
        """
        fills: list[Write] = []
        assert self.paper is not None
        if self._paper_ids is None:
            # Just became leader: from each symbol's newest packet on.
            self._paper_ids = {}
            for symbol in self.settings.symbols:
                top = await self.runtime.cmd.xrevrange(keys.training(symbol), "+", "-", count=1)
                self._paper_ids[symbol] = s(top[0][0]) if top else "0-0"
        for symbol, entries in (await self._read_training(self._paper_ids, PAPER_READ)).items():
            for entry_id, fields in entries:
                self._paper_ids[symbol] = entry_id
                try:
                    packet = codec.decode(fields)
                except codec.DecodeError:
                    continue
                if isinstance(packet, TrainingDataPacket):
                    change = self.paper.on_packet(packet, self.core)
                    if change is not None:
                        fill = PaperFill(
                            symbol=packet.symbol, ts_ms=packet.ts_event_ms, price=packet.price,
                            position_from=change[0], position_to=change[1],
                            model_version=self.core.model_version, producer=self.producer,
                        )  # fmt: skip
                        fills.append(Write(keys.PAPER, fill, maxlen=self.settings.paper_maxlen))
        return fills

    async def keep_books(self, now_ms: int) -> bool:
        """As leader: the paper books into ``ml:{trainer}:books`` (only while the lease is this replica's).

        Not before a new leader has taken its predecessor's books (the timer tick after the one
        that won the lease): it would overwrite them with its own."""
        if self.paper is None or self.sync is None or not self.sync.leader or not self._leading:
            return False
        data = await asyncio.to_thread(self.paper.to_bytes, kept_by=self.producer, kept_ms=now_ms)
        kept = bool(await self._keep_books(keys=[LEADER, keys.TRAINER_BOOKS], args=[self.sync.token, data]))
        self.stats.inc("trainer_paper_books_kept" if kept else "trainer_paper_books_not_kept")
        return kept

    async def take_books(self) -> None:
        """Just became leader: go on with the books the last leader kept (none: this replica's own)."""
        assert self.paper is not None
        data = await self.runtime.cmd.get(keys.TRAINER_BOOKS)
        if data is None:
            return
        try:
            self.books_from = await asyncio.to_thread(self.paper.load_bytes, bytes(data))
        except ValueError as exc:  # other settings or another release: these books start afresh
            self.stats.inc("trainer_paper_books_refused")
            log.warning("the paper books in %s were not taken, this leader's own go on: %s", keys.TRAINER_BOOKS, exc)
            return
        self.stats.inc("trainer_paper_books_taken")
        log.info(
            "paper books taken (kept by %s at %s): %d decisions, %d sensitivity trades",
            self.books_from.get("kept_by", "?"), self.books_from.get("kept_ms", "?"), self.paper.decisions,
            self.paper.sensitivity.trades,
        )  # fmt: skip

    async def leave(self) -> None:
        """A clean stop: the books kept (when leading), then out of the members and the lease released."""
        if self.sync is None:
            return
        if self.sync.leader:
            await self.keep_books(wall_ms())
        await self.sync.leave()

    def info(self) -> dict[str, Any]:
        """What /stats shows besides the counters."""
        core = self.core
        return {
            "state_dim": core.state_dim,
            "updates": core.updates,
            "packets": core.packets,
            "transitions": core.transitions,
            "replay_size": len(core.agent.replay) if core.agent else 0,
            "epsilon": core.epsilon,
            "model_version": core.model_version,
            "leader": bool(self.sync and self.sync.leader),
            "members": self.members,
            "last_merge": self.last_merge,
            "layout_version": core.agent_layout,
            "layout_error": core.layout_error,
            "cnn_owner": self._cnn_ids is not None,
            "extrema_labels": self.extrema_labels,
            "paper_books_from": self.books_from,
            "hyperparameters": {k: v for k, v in vars(core.hp).items()},
        }


def unpack_single(data: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and metadata of a published model (a plain safetensors file of one model)."""
    return load_safetensors(data), read_metadata(data)


def round_of(version: str) -> int:
    """Merge round of a published version (``dqn-r0000012`` -> 12); 0 for none."""
    _, sep, tail = version.rpartition("-r")
    return int(tail) if sep and tail.isdigit() else 0


def make_extrema(settings: TrainerSettings) -> Any:
    """The CNN's extrema trainer, or None when it is switched off."""
    if settings.extrema_updates_per_packet <= 0:
        return None
    from unistream_trainer.extrema import ExtremaTrainer

    # 2,000 labelled windows (float16: ~24 MB at the default window) keep memory modest per replica.
    return ExtremaTrainer(seed=settings.seed, buffer_size=2_000)


def adopt_cnn(extrema: Any, tensors: dict[str, Any]) -> bool:
    if extrema is None:
        return False
    try:
        extrema.model.load_state_dict(tensors, strict=True)
    except RuntimeError:
        return False
    return True


def make_paper(settings: TrainerSettings) -> Any:
    if not settings.paper_trading:
        return None
    from unistream_trainer.paper_policy import PaperPolicy

    return PaperPolicy(
        fee=settings.fee,
        seed=settings.seed,
        latency_ms=settings.paper_latency_ms,
        slippage=settings.paper_slippage_bps / 10_000,
    )


async def worker(ctx: ServiceContext) -> None:
    """The trainer worker: start from the newest published models, then run the consumer until cancelled."""
    settings = cast(TrainerSettings, ctx.settings)
    runtime = StreamRuntime(settings.redis_url, settings.consumer(SERVICE), settings.symbols, ctx.stats)
    service = TrainerService(settings, runtime, ctx.stats)
    service.register()
    try:
        await service.start_from_published()
    except Exception as exc:  # noqa: BLE001 - Redis may not be up yet; the first merge round retries
        log.warning("could not read the published models at start: %s", exc)
    try:
        await run_consumers(ctx, runtime, service.info)
    finally:
        with contextlib.suppress(Exception):  # best effort on the way out: the heartbeat expires anyway
            await service.leave()
