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
  mark; buffers are reloaded from history and from the bar streams up to the mark, and the group
  is set back (XGROUP SETID) so that it delivers again, in order, every bar after the mark and
  the trades the states after it need. Nothing is lost or repeated, and no pending entry has to
  survive a crash, so entries are acknowledged at once. This makes the features service a single
  consumer: run one per deployment.
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
import secrets
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
    SequencedFence,
    StreamRuntime,
    Write,
)
from unistream_common.groups import group_overrun
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
from unistream_features.core import FeatureConfig, FeatureEngine, TrainingChain
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
        # Every commit expects each symbol's fence where this process's last one left it (set at
        # each rewind): Redis that rolled back is noticed before anything is written on top of it.
        self.fences = self._new_fences()
        self.paused: set[str] = set()

    @property
    def cmd(self) -> aioredis.Redis:
        return self.runtime.cmd

    def register(self) -> GroupConsumer:
        self.consumer = self.runtime.register_consumer(
            keys.GROUP_FEATURES,
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

    def _new_fences(self) -> dict[str, SequencedFence]:
        """A fence per symbol, of this process's own (a fresh token), at its first commit."""
        holder = f"{self.runtime.consumer}:{secrets.token_hex(6)}"
        return {symbol: SequencedFence(keys.training_fence(symbol), holder) for symbol in self.settings.symbols}

    def _fence_for(self, streams: set[str]) -> dict[str, SequencedFence]:
        """The fences of the symbols whose keys a result touches (all of them if it touches none)."""
        symbols = {keys.hash_tag(stream) for stream in streams} & set(self.fences)
        return {f.key: f for symbol, f in self.fences.items() if symbol in symbols or not symbols}

    async def on_rewind(self) -> None:
        """Reload the buffers as of each symbol's mark and set the group back to deliver what follows."""
        self.fences = self._new_fences()
        for fence in self.fences.values():
            await self.cmd.set(fence.key, fence.value)
        marks = await self._emission_marks()
        bars: list[Bar] = []
        for symbol in self.settings.symbols:
            mark = marks.get(symbol, 0)
            bars.extend(await self._read_history(symbol))
            for tf in TIMEFRAMES:
                bars.extend(await self._rewind_bars(symbol, tf, mark))
            await self._rewind_ticks(symbol, mark)
        self.engine.rebuild(bars, [], marks, wall_ms())
        for symbol in self.settings.symbols:
            log.info(
                "%s: training packets exist until %d; buffered %s",
                symbol, marks.get(symbol, 0), {tf: self.engine.windows.size(symbol, tf) for tf in TIMEFRAMES},
            )  # fmt: skip
        self._count_events()

    async def _set_group(self, stream: str, entry_id: str) -> None:
        await self.cmd.xgroup_setid(stream, keys.GROUP_FEATURES, entry_id)

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
        position = s(groups[keys.GROUP_FEATURES]["last-delivered-id"]) if keys.GROUP_FEATURES in groups else "0-0"
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
        """The processing cycle: late-ready training packets, UI packets, and now and then the registry."""
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
        ui = self.engine.ui_packets(now_ms)
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
    await run_consumers(ctx, runtime, service.info)
