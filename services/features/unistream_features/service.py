"""The features I/O shell: the consumer group over trades and bars, history, the model registry.

- ``features`` group over ``ticks`` and ``bars:1s``, ``bars:1m``, ``bars:1h``, ``bars:1d`` of every
  configured symbol; each batch goes through :class:`~unistream_features.core.FeatureEngine` and
  the training packets it produced are written in the same MULTI that acknowledges the batch.
- Reads are paced so that no stream runs far ahead of the states being built (a catch-up reads
  a day of 1s bars in the time a few minutes of trades take): a symbol's 1s bars wait while
  :data:`MAX_QUEUED_BARS` of them await packets, its trades while :data:`MAX_QUEUED_TICKS` trades
  are queued and no bar waits for them, its 1m/1h/1d bars while :data:`MAX_BARS_AHEAD` of them
  are ahead of the states (those streams always lead the 1s stream in time). Memory stays bounded
  whatever the backlog.
- Training packets go to their symbol's stream ``ml:training:{SYMBOL}``, in the MULTI that
  acknowledges the symbol's bars and trades (one hash slot: on a Redis Cluster every commit is
  split per symbol, and each part moves that symbol's sequenced fence).
- Restart (``on_rewind``): the newest training packet on each symbol's training stream is the
  symbol's mark; buffers are reloaded from history and from the bar streams up to the earliest
  mark (:func:`~unistream_features.core.rewind_point`: a state holds every symbol's inputs, and the
  marks differ when a crash fell between two symbols' commits or a replica takes a symbol over),
  and the group is set back (XGROUP SETID) so that it delivers again, in order, every bar after it
  and the trades the states after it need. Nothing is lost or repeated, and no pending entry has
  to survive a crash, so entries are acknowledged at once.
- Replicas (``--scale features=2``): a symbol's state holds every symbol's windows, so every
  replica reads every symbol's bars and trades, in a consumer group of its own
  (``features:<consumer>``, :func:`keys.features_group`), and builds every state; it writes the
  packets of the symbols it holds the lease of (:mod:`unistream_common.leases`: fair shares,
  hand-backs, a dead replica's symbols taken once its leases run out). Taking a lease sets the
  symbol's fence to the taker, so a former holder cannot write for it any more, and the taker
  rewinds (:class:`~unistream_common.consumer.RewindRequested`): the symbol goes on from the
  newest packet on its stream, whoever wrote it, exactly as after a restart. Groups of replicas
  gone for good (scaled down) are removed after :data:`DEAD_GROUP_IDLE_MS`.
- Warm-up history (``md:history:*``, written by ingest at its start, possibly after ours) is read
  at rewind and then polled every ``history_poll_ms``.
- Every ``cycle_ms`` (on_timer): UI packets (at most ``ui_max_per_s``), bars whose trades did not
  come in time, the model registry every ``model_poll_ms``, and every ``overrun_check_s`` whether a
  group reading a training stream lost entries to trimming.
- The registry (``ml:models``) is read with XREVRANGE rather than through a consumer group: every
  replica must see every announcement. Only ``cnn-mtf`` announcements newer than the running weights
  are loaded; the swap happens between two batches, so no packet is lost or built twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlparse

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from unistream_common import codec, keys
from unistream_common.consumer import (
    ConsumerOptions,
    GroupConsumer,
    Message,
    Result,
    RewindRequested,
    SequencedFence,
    StreamRuntime,
    Write,
)
from unistream_common.groups import group_overrun
from unistream_common.leases import SymbolLeases, fair_share
from unistream_common.packets import (
    Bar,
    GapMarker,
    ModelAnnouncement,
    PredictionPacket,
    TickBatch,
    TrainingDataPacket,
    UIDataPacket,
)
from unistream_common.redisio import id_pair, s
from unistream_common.service import ServiceContext, run_consumers
from unistream_common.stats import Stats
from unistream_common.timeframes import TIMEFRAMES
from unistream_features.core import FeatureConfig, FeatureEngine, TrainingChain, rewind_point
from unistream_features.settings import FeaturesSettings
from unistream_model.cnn import MODEL_NAME, ModelRejected

log = logging.getLogger(__name__)

SERVICE = "features"
# Entries per stream and read: a catch-up then writes ~2 x 64 packets (~7 MB) per MULTI, not 1,000
# (54 MB, blocking Redis for tens of ms and setting the process's memory high-water mark).
READ_BATCH = 64
MAX_QUEUED_BARS = 150  # 1s bars awaiting packets before that symbol's 1s stream is paused
# 1m/1h/1d bars read ahead of the states before that stream is paused. Never 0: the higher-timeframe
# streams must never fall behind the 1s stream, or a state at a minute's end would miss the minute's
# bar (the aggregator writes both in one MULTI, so one read sees both or neither).
MAX_BARS_AHEAD = 1_000
MAX_QUEUED_TICKS = 20_000  # trades queued ahead of the states before that symbol's trades are paused
TICK_REWIND_PAGE = 500  # tick entries per XREVRANGE while finding where the trades must restart
TICK_REWIND_MAX = 100_000  # tick entries searched at most
TRAINING_SCAN_MAX = 20_000  # newest training entries searched for each symbol's mark
MODEL_SCAN = 50  # newest registry entries looked at per poll
HISTORY_PAGE = 1_000
RECENT_TRAINING = 100  # the seed's in-process buffers
RECENT_UI = 50
DEAD_GROUP_IDLE_MS = 600_000  # a group of a replica that left the members, unread this long, is removed
DEAD_GROUP_CHECK_S = 60


def wall_ms() -> int:
    return int(time.time() * 1000)


def resolve_model_uri(uri: str, model_dir: str) -> Path:
    """Local path of a model URI: ``file:///abs/path``, an absolute path, or a path relative to ``model_dir``."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme:
        raise ModelRejected(f"URI scheme {parsed.scheme!r} is not supported; announce a file:// path")
    path = Path(uri)
    return path if path.is_absolute() else Path(model_dir) / path


class FeaturesService:
    """Callbacks of the features consumer, around one :class:`FeatureEngine`."""

    def __init__(self, settings: FeaturesSettings, runtime: StreamRuntime, stats: Stats) -> None:
        self.settings = settings
        self.runtime = runtime
        self.stats = stats
        stats.describe(
            "features_bar_to_packet_seconds",
            "live training packets: from the 1s bar's end (the state's time) until the packet is built, seconds",
        )
        self.engine = FeatureEngine(
            FeatureConfig(
                symbols=tuple(settings.symbols),
                window_bars=settings.window_bars,
                bar_capacity=settings.bar_cache_size,
                tick_capacity=settings.tick_cache_size,
                tick_max_age_ms=1000 * settings.tick_cache_s,
                tick_wait_ms=settings.tick_wait_ms,
                ui_max_per_s=settings.ui_max_per_s,
                symbol_sync_ms=settings.symbol_sync_ms,
            ),
            seed=settings.seed,
            now_ms=wall_ms(),
        )
        self.consumer: GroupConsumer | None = None
        self.recent_training: deque[TrainingDataPacket] = deque(maxlen=RECENT_TRAINING)
        self.recent_ui: deque[UIDataPacket] = deque(maxlen=RECENT_UI)
        self._history_seen: dict[str, str] = {}  # history stream -> newest id read
        self._next_model_poll_ms = 0
        self._next_history_poll_ms = 0
        self._next_overrun_check_ms = 0
        self._models_seen_id = "-"  # registry entries up to this id were looked at
        self._rejected: set[tuple[str, str]] = set()  # (version, sha256) that failed to load: not retried
        self.last_model_error = ""
        self.overrun: dict[str, bool] = {}  # group on a training stream -> lost entries to trimming
        self.chain = TrainingChain()  # explicit entry ids and prev_id links of the training packets
        self.group = keys.features_group(runtime.consumer)
        self.leases = SymbolLeases(
            runtime.consumer, settings.writer_lease_ms, keys.features_owner, keys.training_fence, keys.FEATURES_MEMBERS,
            settings.symbols,
        )  # fmt: skip
        # The symbols whose packets this replica writes, in the order taken; each commit expects
        # their fences where this replica's last one left them (taken at each rewind): Redis that
        # rolled back is noticed before anything is written on top of it.
        self.owned: list[str] = []
        self.fences: dict[str, SequencedFence] = {}
        self._next_lease_s = 0.0
        self._next_group_check_s = time.monotonic() + DEAD_GROUP_CHECK_S
        self.paused: set[str] = set()
        stats.describe("features_owned_symbols", "symbols whose training packets this replica writes")

    @property
    def cmd(self) -> aioredis.Redis:
        return self.runtime.cmd

    def register(self) -> GroupConsumer:
        self.consumer = self.runtime.register_consumer(
            self.group,
            self.on_messages,
            ["ticks", *(f"bars:{tf}" for tf in TIMEFRAMES)],
            options=ConsumerOptions(
                batch_size=READ_BATCH, timer_interval_s=self.settings.cycle_ms / 1000, claim_idle_ms=0
            ),
            on_timer=self.on_timer,
            on_rewind=self.on_rewind,
            packet_types=(TickBatch, GapMarker, Bar),
        )
        self.consumer.readable = self.readable
        return self.consumer

    # --- pacing ------------------------------------------------------------------------------

    def readable(self, streams: list[str]) -> list[str]:
        """The streams worth reading now (see the module docstring); the rest wait for the states."""
        engine = self.engine
        out, paused = [], set()
        for stream in streams:
            symbol = keys.parse_ticks(stream)
            if symbol is not None:
                wait = engine.pending_ticks(symbol) > MAX_QUEUED_TICKS and not engine.pending_bars(symbol)
            else:
                parsed = keys.parse_bars(stream)
                if parsed is None:
                    wait = False
                elif parsed[1] == "1s":
                    wait = engine.pending_bars(parsed[0]) > MAX_QUEUED_BARS
                else:
                    wait = engine.bars_ahead(*parsed) > MAX_BARS_AHEAD
            (paused.add if wait else out.append)(stream)
        self.paused = paused
        self.stats.set("features_streams_paused", len(paused))
        return out

    # --- start and rewind --------------------------------------------------------------------

    def _fence_for(self, streams: set[str]) -> dict[str, SequencedFence]:
        """The fences of the owned symbols whose keys a result touches (all owned ones if it touches
        no symbol's key)."""
        touched = {keys.hash_tag(stream) for stream in streams} & set(self.settings.symbols)
        return {f.key: f for symbol, f in self.fences.items() if symbol in touched or not touched}

    # --- ownership ---------------------------------------------------------------------------

    async def _take_symbols(self, now_ms: int) -> None:
        """At a rewind: this replica's fair share of the symbols, those it held first.

        A fresh token: every lease taken (or taken back) sets its symbol's fence to ``token#0``,
        where the new fences start. Symbols held before and not taken back are handed back.
        """
        before, old_token = list(self.owned), self.leases.token
        self.leases.restart()
        fair = fair_share(len(self.settings.symbols), await self.leases.heartbeat(self.cmd, now_ms))
        self.owned, self.fences = [], {}
        for symbol in [*before, *(sym for sym in self.settings.symbols if sym not in before)]:
            if len(self.owned) < fair and await self.leases.take(self.cmd, symbol):
                self.owned.append(symbol)
                self.fences[symbol] = SequencedFence(keys.training_fence(symbol), self.leases.token)
        await self.leases.release(self.cmd, [sym for sym in before if sym not in self.owned], token=old_token)
        self._next_lease_s = time.monotonic() + self.settings.writer_lease_ms / 5_000
        self.stats.set("features_owned_symbols", len(self.owned))
        log.info("writing the training packets of %s", ", ".join(self.owned) or "no symbol (all held by others)")

    async def keep_leases(self) -> None:
        """Renew the held leases every ``writer_lease_ms / 5``, apart from the consumer's lock (a long
        batch must not outlast them); a lease found taken is given up by the next timer."""
        while True:
            await asyncio.sleep(self.settings.writer_lease_ms / 5_000)
            if not await self.leases.renew(self.cmd):
                self.stats.inc("features_lease_renewal_errors")

    async def _maintain_leases(self, now_ms: int) -> None:
        """Give up leases lost, heartbeat, hand one back above the fair share, take a free one.

        Taking one rewinds (:class:`RewindRequested`): the symbol's packets go on from the newest
        on its stream, and the rewind takes the lease again (a former self's) with the others.
        """
        for symbol, holder in list(self.leases.lost.items()):
            self._give_up(symbol)
            self.stats.inc("features_leases_lost", symbol=symbol)
            log.warning("%s: lease lost to %s; no longer writing its packets", symbol, holder or "nobody")
        members = await self.leases.heartbeat(self.cmd, now_ms)
        fair = fair_share(len(self.settings.symbols), members)
        if len(self.owned) > fair and members > 1:
            # All the excess at once (the newest taken): each take costs the taker a rewind.
            excess = self.owned[fair:]
            log.info("handing over %s (held %d, fair share %d of %d replicas)", ", ".join(excess),
                     len(self.owned), fair, members)  # fmt: skip
            for symbol in excess:
                self._give_up(symbol)
                self.stats.inc("features_handovers", symbol=symbol)
            await self.leases.release(self.cmd, excess)
            return
        taken = []
        for symbol in self.settings.symbols:
            if len(self.owned) + len(taken) >= fair:
                break
            if symbol not in self.owned and await self.leases.take(self.cmd, symbol):
                self.stats.inc("features_takeovers", symbol=symbol)
                taken.append(symbol)
        if taken:
            self.owned.extend(taken)  # the rewind takes them back with the others, first
            raise RewindRequested(f"took {', '.join(taken)}: their packets go on from the newest on their streams")

    def _give_up(self, symbol: str) -> None:
        """Stop writing ``symbol``'s packets (its states are still built: the others' need its inputs)."""
        if symbol in self.owned:
            self.owned.remove(symbol)
        self.fences.pop(symbol, None)
        self.leases.forget(symbol)
        self.stats.set("features_owned_symbols", len(self.owned))

    async def _forget_dead_groups(self, now_ms: int) -> None:
        """Remove the groups of features replicas that left the members and have not read for
        :data:`DEAD_GROUP_IDLE_MS` (scaled down for good; a restarted one makes its group again),
        and the single ``features`` group of releases before replicas."""
        live = set(await self.leases.members(self.cmd, now_ms)) | {self.runtime.consumer}
        live_groups = {keys.features_group(c) for c in live}
        for stream in self.consumer.streams if self.consumer is not None else []:
            try:
                groups = await self.cmd.xinfo_groups(stream)
            except ResponseError:
                continue
            for g in groups:
                name = s(g["name"])
                if not keys.is_features_group(name) or name in live_groups:
                    continue
                consumers = await self.cmd.xinfo_consumers(stream, name)
                if any(int(c.get("idle", 0)) < DEAD_GROUP_IDLE_MS for c in consumers):
                    continue
                await self.cmd.xgroup_destroy(stream, name)
                self.stats.inc("features_dead_groups_removed")
                log.info("removed group %s on %s (its replica left)", name, stream)

    # --- rewind ------------------------------------------------------------------------------

    async def on_rewind(self) -> None:
        """Take the leases, reload the buffers as of each symbol's mark and set the group back to
        deliver what follows."""
        await self._take_symbols(wall_ms())
        marks = await self._emission_marks()
        # Every state holds every symbol's inputs: all symbols are read again from the earliest mark
        # (a symbol ahead of it gets its bars and trades after it again, not its packets).
        start = rewind_point(marks, self.settings.symbols)
        bars: list[Bar] = []
        for symbol in self.settings.symbols:
            point = start if marks.get(symbol, 0) else 0
            bars.extend(await self._read_history(symbol))
            for tf in TIMEFRAMES:
                bars.extend(await self._rewind_bars(symbol, tf, point))
            await self._rewind_ticks(symbol, point)
        self.engine.rebuild(bars, [], marks, wall_ms())
        for symbol in self.settings.symbols:
            log.info(
                "%s: training packets exist until %d; buffered %s",
                symbol, marks.get(symbol, 0), {tf: self.engine.windows.size(symbol, tf) for tf in TIMEFRAMES},
            )  # fmt: skip
        self._count_events()

    async def _set_group(self, stream: str, entry_id: str) -> None:
        await self.cmd.xgroup_setid(stream, self.group, entry_id)

    async def _rewind_bars(self, symbol: str, tf: str, mark: int) -> list[Bar]:
        """Bars of ``tf`` closed by ``mark`` (the window's worth); the group restarts after them."""
        stream = keys.bars(symbol, tf)
        span = keys.TIMEFRAME_MS[tf]
        newest_open = mark - span
        if mark <= 0 or newest_open < 0:
            await self._set_group(stream, "0")
            return []
        count = self.engine.windows.capacity[tf]
        entries = await self.cmd.xrevrange(stream, f"{newest_open}-0", "-", count=count)
        loaded = [p for p in self._decode_all(entries) if isinstance(p, Bar)]
        await self._set_group(stream, s(entries[0][0]) if entries else "0")
        return loaded

    async def _rewind_ticks(self, symbol: str, mark: int) -> None:
        """Set the group on the trades back to the first entry the states after ``mark`` need."""
        stream = keys.ticks(symbol)
        if mark <= 0:
            await self._set_group(stream, "0")
            return
        groups = {s(g["name"]): g for g in await self.cmd.xinfo_groups(stream)}
        position = s(groups[self.group]["last-delivered-id"]) if self.group in groups else "0-0"
        if position == "0-0":
            return
        oldest_needed = mark - self.engine.config.tick_max_age_ms
        upper, restart, scanned = position, "0", 0
        while scanned < TICK_REWIND_MAX:
            entries = await self.cmd.xrevrange(stream, upper, "-", count=TICK_REWIND_PAGE)
            done = len(entries) < TICK_REWIND_PAGE
            for entry_id, fields in entries:
                scanned += 1
                restart = s(entry_id)
                try:
                    packet = codec.decode(fields)
                except codec.DecodeError:
                    continue
                if isinstance(packet, TickBatch) and packet.ticks[0].ts_event_ms < oldest_needed:
                    done = True  # this entry reaches back far enough; older ones are not needed
                    break
            else:
                if done:
                    restart = "0"  # the stream's start is not older than the states need
            if done:
                break
            upper = "(" + s(entries[-1][0])
        else:
            self.stats.inc("features_rewind_ticks_truncated")
        await self._set_group(stream, "0" if restart == "0" else _before(restart))

    async def _read_history(self, symbol: str) -> list[Bar]:
        out: list[Bar] = []
        for tf in TIMEFRAMES:
            stream = keys.history(symbol, tf)
            entries = await self.cmd.xrevrange(stream, "+", "-", count=self.engine.windows.capacity[tf])
            if entries:
                self._history_seen[stream] = s(entries[0][0])
            out.extend(p for p in self._decode_all(entries) if isinstance(p, Bar))
        return out

    async def poll_history(self, now_ms: int) -> None:
        """Take in history bars that ingest wrote since the last look."""
        for symbol in self.settings.symbols:
            for tf in TIMEFRAMES:
                stream = keys.history(symbol, tf)
                seen = self._history_seen.get(stream)
                lower = "(" + seen if seen else "-"
                entries = await self.cmd.xrange(stream, lower, "+", count=HISTORY_PAGE)
                if not entries:
                    continue
                self._history_seen[stream] = s(entries[-1][0])
                for packet in self._decode_all(entries):
                    if isinstance(packet, Bar):
                        self.engine.on_bar(packet, now_ms)
                self.stats.inc("features_history_bars_read", len(entries))

    async def _emission_marks(self) -> dict[str, int]:
        """Close time of the newest training packet of each symbol, searched from its stream's end.

        Also sets where each symbol's next entry id and ``prev_id`` continue from.
        """
        marks: dict[str, int] = {}
        newest: dict[str, tuple[str, int]] = {}
        last_ids: dict[str, tuple[int, int]] = {}
        for symbol in self.settings.symbols:
            stream = keys.training(symbol)
            try:
                info = await self.cmd.xinfo_stream(stream)
                last_ids[symbol] = id_pair(info["last-generated-id"])
            except ResponseError:
                continue  # no stream yet
            upper, scanned = "+", 0
            while scanned < TRAINING_SCAN_MAX and symbol not in marks:
                entries = await self.cmd.xrevrange(stream, upper, "-", count=200)
                for entry_id, fields in entries:
                    try:
                        packet = codec.decode(fields)
                    except codec.DecodeError:
                        continue
                    if isinstance(packet, TrainingDataPacket) and packet.symbol == symbol:
                        marks[symbol] = packet.ts_event_ms
                        newest[symbol] = (s(entry_id), packet.ts_event_ms)
                        break
                scanned += len(entries)
                if len(entries) < 200:
                    break
                upper = "(" + s(entries[-1][0])
        self.chain.restart(last_ids, newest)
        return marks

    def _decode_all(self, entries: list[tuple[Any, Any]]) -> list[Any]:
        out = []
        for _, fields in entries:
            try:
                out.append(codec.decode(fields))
            except codec.DecodeError:
                self.stats.inc("features_history_undecodable")
        return out

    # --- processing --------------------------------------------------------------------------

    def _training_writes(self, now_ms: int) -> list[Write]:
        """Training packets that became due, each with the explicit entry id it will have and a link to
        its symbol's previous packet (``prev_id``)."""
        writes = []
        for p in self.engine.emit(now_ms):
            if p.symbol not in self.fences:
                continue  # another replica writes this symbol's packets
            entry_id, p = self.chain.link(p, now_ms)
            self.recent_training.append(p)
            if p.source != "REPLAY":  # live: from the 1s bar's end (the state's time) to its packet
                self.stats.observe(
                    "features_bar_to_packet_seconds", max(0, now_ms - p.ts_event_ms) / 1000, symbol=p.symbol
                )
            writes.append(
                Write(keys.training(p.symbol), p, id=entry_id, maxlen=self.settings.training_maxlen, renumber=True)
            )
            marker = PredictionPacket(
                symbol=p.symbol, ts_event_ms=p.ts_event_ms, price=p.price, model_version=p.model_version,
                names=p.prediction_names, values=p.cnn_predictions,
            )  # fmt: skip
            writes.append(Write(keys.PREDICTIONS, marker, maxlen=self.settings.predictions_maxlen))
        return writes

    async def on_messages(self, messages: list[Message]) -> Result:
        """Feed a batch to the engine; write the training packets that became due (acknowledging the batch)."""
        now_ms = wall_ms()
        for m in messages:
            packet = m.packet
            if isinstance(packet, TickBatch):
                self.engine.on_ticks(packet)
            elif isinstance(packet, GapMarker):
                self.engine.on_gap(packet)
            elif isinstance(packet, Bar):
                self.engine.on_bar(packet, now_ms)
        writes = self._training_writes(now_ms)
        self._count_events()
        touched = {m.stream for m in messages} | {w.stream for w in writes}
        return Result(writes=writes, fence=self._fence_for(touched))

    async def on_timer(self, now_ms: int) -> Result:
        """The processing cycle: leases, late-ready training packets, UI packets, and now and then the registry."""
        if time.monotonic() >= self._next_lease_s:
            self._next_lease_s = time.monotonic() + self.settings.writer_lease_ms / 5_000
            await self._maintain_leases(now_ms)
        if time.monotonic() >= self._next_group_check_s:
            self._next_group_check_s = time.monotonic() + DEAD_GROUP_CHECK_S
            await self._forget_dead_groups(now_ms)
        if now_ms >= self._next_model_poll_ms:
            self._next_model_poll_ms = now_ms + self.settings.model_poll_ms
            await self.poll_models(now_ms)
        if now_ms >= self._next_history_poll_ms:
            self._next_history_poll_ms = now_ms + self.settings.history_poll_ms
            await self.poll_history(now_ms)
        if now_ms >= self._next_overrun_check_ms:
            self._next_overrun_check_ms = now_ms + 1000 * self.settings.overrun_check_s
            await self.check_overrun()
        writes = self._training_writes(now_ms)
        ui = [p for p in self.engine.ui_packets(now_ms) if p.symbol in self.fences]
        self.recent_ui.extend(ui)
        writes.extend(Write(keys.UI, p, maxlen=self.settings.ui_maxlen) for p in ui)
        self._count_events()
        return Result(writes=writes, fence=self._fence_for({w.stream for w in writes}))

    async def check_overrun(self) -> None:
        """Did trimming a training stream delete entries a consumer group had not read yet? (gauge per
        group: 1 while any symbol's stream lost entries to it)

        The rule is :func:`unistream_common.groups.group_overrun`, the one ``unistream status`` shows.
        """
        lost_by_group: dict[str, list[str]] = {}
        for symbol in self.settings.symbols:
            stream = keys.training(symbol)
            try:
                info = await self.cmd.xinfo_stream(stream)
                groups = await self.cmd.xinfo_groups(stream)
            except ResponseError:
                continue  # no stream yet
            first = s(info["first-entry"][0]) if info.get("first-entry") else None
            for g in groups:
                lost = group_overrun(
                    s(g["last-delivered-id"]), g.get("entries-read"), int(info["length"]), first,
                    s(info["last-generated-id"]), info.get("entries-added"),
                )  # fmt: skip
                lost_by_group.setdefault(s(g["name"]), []).extend([stream] if lost else [])
        for name, streams in lost_by_group.items():
            lost = bool(streams)
            if lost and not self.overrun.get(name):
                self.stats.inc("features_training_overruns", group=name)
                log.warning(
                    "group %s fell behind what retention keeps on %s: entries were trimmed before it read them; "
                    "raise UNISTREAM_TRAINING_MAXLEN or add consumers",
                    name, ", ".join(streams),
                )  # fmt: skip
            self.overrun[name] = lost
            self.stats.set("features_training_overrun", 1.0 if lost else 0.0, group=name)

    async def poll_models(self, now_ms: int) -> None:
        """Load the newest ``cnn-mtf`` announcement if it is newer than the running weights."""
        lower = "(" + self._models_seen_id if self._models_seen_id != "-" else "-"
        entries = await self.cmd.xrevrange(keys.MODELS, "+", lower, count=MODEL_SCAN)
        if not entries:
            return
        self._models_seen_id = s(entries[0][0])
        for packet in self._decode_all(entries):
            if isinstance(packet, ModelAnnouncement) and packet.name == MODEL_NAME:
                await self._maybe_load(packet, now_ms)
                return

    async def _maybe_load(self, ann: ModelAnnouncement, now_ms: int) -> None:
        status = self.engine.cnn.status
        if ann.ts_ms <= status.announced_ts_ms or ann.version == status.version:
            return
        if (ann.version, ann.sha256) in self._rejected:
            return
        try:
            if ann.uri.startswith("redis:"):  # the trainer's registry: bytes under a key
                raw = await self.cmd.get(ann.uri[len("redis:") :])
                if raw is None:
                    raise ModelRejected(f"registry key {ann.uri[len('redis:') :]} is gone")
                data = bytes(raw)
            else:
                path = resolve_model_uri(ann.uri, self.settings.model_dir)
                data = await asyncio.to_thread(path.read_bytes)
            self.engine.cnn.load(data, ann.sha256, ann.version, ann.ts_ms, now_ms)
        except (ModelRejected, OSError) as exc:
            self._rejected.add((ann.version, ann.sha256))
            self.last_model_error = f"{ann.version}: {exc}"
            self.stats.inc("features_model_rejected")
            log.warning("CNN %s from %s not loaded: %s", ann.version, ann.uri, exc)
            return
        self.stats.inc("features_model_loaded")
        log.info("loaded CNN %s from %s (%d parameters)", ann.version, ann.uri, self.engine.cnn.status.parameters)

    def _count_events(self) -> None:
        for name, value in self.engine.drain_events().items():
            self.stats.inc(f"features_{name}", value)

    def info(self) -> dict[str, Any]:
        """What /stats shows besides the counters."""
        engine = self.engine
        st = engine.cnn.status
        layout = engine.layouts[self.settings.symbols[0]]
        return {
            "state_layout": {
                "version": engine.layout_version(self.settings.symbols[0]),
                "dim": layout.dim,
                "blocks": {b.name: [b.start, b.stop] for b in layout.blocks},
            },
            "cnn": {"version": st.version, "state": st.state, "parameters": st.parameters},
            "group": self.group,
            "owned": list(self.owned),
            "last_model_error": self.last_model_error,
            "paused_streams": sorted(self.paused),
            "training_overrun": self.overrun,
            "recent_training": [
                {
                    "symbol": p.symbol,
                    "ts_event_ms": p.ts_event_ms,
                    "price": p.price,
                    "source": p.source,
                    "cnn": p.model_version,
                    "warm": p.warm,
                    "tick_coverage": round(p.tick_coverage, 3),
                }
                for p in list(self.recent_training)[-10:]
            ],
            "recent_counts": {"training": len(self.recent_training), "ui": len(self.recent_ui)},
            "symbols": {
                sym: {
                    "ticks_cached": len(x.cache),
                    "ticks_queued": len(x.pending),
                    "bars_queued": len(x.queue),
                    "bars_buffered": {tf: engine.windows.size(sym, tf) for tf in TIMEFRAMES},
                    "ticks_seen": x.ticks_seen,
                    "bars_seen": x.bars_seen,
                    "training_packets": x.training_packets,
                    "emitted_until_ms": x.emitted_until_ms,
                }
                for sym, x in engine.symbols.items()
            },
        }


def _before(entry_id: str) -> str:
    """The stream id just before ``entry_id`` (XGROUP SETID there delivers ``entry_id`` next)."""
    ms, seq = id_pair(entry_id)
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{2**64 - 1}" if ms > 0 else "0-0"


async def worker(ctx: ServiceContext) -> None:
    """The features worker: run the consumer until cancelled."""
    settings = cast(FeaturesSettings, ctx.settings)
    runtime = StreamRuntime(settings.redis_url, settings.consumer(SERVICE), settings.symbols, ctx.stats)
    service = FeaturesService(settings, runtime, ctx.stats)
    service.register()
    try:
        await run_consumers(ctx, runtime, service.info, run=lambda: run_with_leases(runtime, service))
    finally:
        try:
            await asyncio.wait_for(service.leases.leave(runtime.cmd), 2.0)
        except Exception as exc:  # noqa: BLE001 - best effort: the leases expire anyway
            log.info("could not hand the symbols back (%r); their leases expire in %d ms", exc,
                     settings.writer_lease_ms)  # fmt: skip


async def run_with_leases(runtime: StreamRuntime, service: FeaturesService) -> None:
    """The runtime, with the lease keeper beside it."""
    keeper = asyncio.create_task(service.keep_leases(), name="features:leases")
    try:
        await runtime.run()
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
