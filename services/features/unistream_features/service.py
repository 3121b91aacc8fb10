"""The features I/O shell: the consumer group over ticks and 1s bars, the cycle timer, the model registry.

- ``features`` group over ``ticks`` and ``bars:1s`` of every configured symbol; each batch goes
  through :class:`~unistream_features.core.FeatureEngine` and its training packets are written
  in the same MULTI that acknowledges the batch. The buffers are rebuilt from the streams on every
  (re)start, so entries are acknowledged at once: nothing has to stay pending to survive a crash.
- every ``cycle_ms`` (on_timer): one UIDataPacket per symbol, and every ``model_poll_ms`` a look
  at the model registry.
- the registry (``ml:models``) is read with XREVRANGE rather than through a consumer group:
  every replica must see every announcement, and a group would hand each one to a single
  consumer. Only ``cnn`` announcements newer than the running weights are loaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlparse

import redis.asyncio as aioredis

from unistream_common import codec, keys
from unistream_common.consumer import ConsumerOptions, GroupConsumer, Message, Result, StreamRuntime, Write
from unistream_common.packets import Bar, GapMarker, ModelAnnouncement, TickBatch, TrainingDataPacket
from unistream_common.redisio import s
from unistream_common.service import ServiceContext, run_consumers
from unistream_common.stats import Stats
from unistream_features.cnn import MODEL_NAME, ModelRejected
from unistream_features.core import FeatureConfig, FeatureEngine
from unistream_features.settings import FeaturesSettings

log = logging.getLogger(__name__)

SERVICE = "features"
TICK_PAGE = 200  # tick batches per XREVRANGE while rebuilding the tick cache
TRAINING_SCAN_MAX = 2_000  # newest training entries searched for each symbol's emission mark
MODEL_SCAN = 50  # newest registry entries looked at per poll


def now_ms() -> int:
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
        self.engine = FeatureEngine(
            FeatureConfig(
                tick_capacity=settings.tick_cache_size,
                bar_capacity=settings.bar_cache_size,
                window_bars=settings.window_bars,
                min_bars=settings.min_bars,
            ),
            seed=settings.seed,
            now_ms=now_ms(),
        )
        self._next_model_poll_ms = 0
        self._models_seen_id = "-"  # registry entries up to this id were looked at
        self._rejected: set[tuple[str, str]] = set()  # (version, sha256) that failed to load: not retried
        self.last_model_error = ""

    @property
    def cmd(self) -> aioredis.Redis:
        return self.runtime.cmd

    def register(self) -> GroupConsumer:
        return self.runtime.register_consumer(
            keys.GROUP_FEATURES,
            self.on_messages,
            ["ticks", "bars:1s"],
            options=ConsumerOptions(timer_interval_s=self.settings.cycle_ms / 1000),
            on_timer=self.on_timer,
            on_rewind=self.on_rewind,
            packet_types=(TickBatch, GapMarker, Bar),
        )

    # --- start and rewind ------------------------------------------------------------------

    async def on_rewind(self) -> None:
        """Rebuild every symbol's buffers from the streams, so a restart does not start cold."""
        marks = await self._emission_marks()
        for symbol in self.settings.symbols:
            bars = await self._recent_bars(symbol)
            batches = await self._recent_tick_batches(symbol)
            self.engine.rebuild(symbol, bars, batches, marks.get(symbol, 0))
            st = self.engine.symbol(symbol)
            log.info(
                "%s: rebuilt %d 1s bars and %d trades; training emitted until %d",
                symbol, len(st.bars), len(st.ticks), st.emitted_until_ms,
            )  # fmt: skip
        self._count_events()

    async def _recent_bars(self, symbol: str) -> list[Bar]:
        entries = await self.cmd.xrevrange(keys.bars(symbol, "1s"), "+", "-", count=self.settings.bar_cache_size)
        return [p for p in self._decode_all(entries) if isinstance(p, Bar)]

    async def _recent_tick_batches(self, symbol: str) -> list[TickBatch]:
        out: list[TickBatch] = []
        total = 0
        upper = "+"
        while total < self.settings.tick_cache_size:
            entries = await self.cmd.xrevrange(keys.ticks(symbol), upper, "-", count=TICK_PAGE)
            for packet in self._decode_all(entries):
                if isinstance(packet, TickBatch):
                    out.append(packet)
                    total += len(packet.ticks)
            if len(entries) < TICK_PAGE:
                break
            upper = "(" + s(entries[-1][0])
        return out

    async def _emission_marks(self) -> dict[str, int]:
        """Close time of the newest training packet of each symbol, searched from the stream's end."""
        marks: dict[str, int] = {}
        wanted = set(self.settings.symbols)
        upper = "+"
        scanned = 0
        while scanned < TRAINING_SCAN_MAX and not wanted <= set(marks):
            entries = await self.cmd.xrevrange(keys.TRAINING, upper, "-", count=200)
            for packet in self._decode_all(entries):
                if isinstance(packet, TrainingDataPacket) and packet.symbol not in marks:
                    marks[packet.symbol] = packet.ts_event_ms
            scanned += len(entries)
            if len(entries) < 200:
                break
            upper = "(" + s(entries[-1][0])
        return marks

    def _decode_all(self, entries: list[tuple[Any, Any]]) -> list[Any]:
        out = []
        for _, fields in entries:
            try:
                out.append(codec.decode(fields))
            except codec.DecodeError:
                self.stats.inc("features_history_undecodable")
        return out

    # --- processing ------------------------------------------------------------------------

    async def on_messages(self, messages: list[Message]) -> Result:
        """Feed a batch to the engine; write the training packets it produced (acknowledging the batch)."""
        writes: list[Write] = []
        for m in messages:
            packet = m.packet
            if isinstance(packet, TickBatch):
                self.engine.on_ticks(packet)
            elif isinstance(packet, GapMarker):
                self.engine.on_gap(packet)
            elif isinstance(packet, Bar):
                training = self.engine.on_bar(packet)
                if training is not None:
                    writes.append(Write(keys.TRAINING, training, maxlen=self.settings.training_maxlen))
        self._count_events()
        return Result(writes=writes)

    async def on_timer(self, now: int) -> Result:
        """The processing cycle: UI packets for every symbol, and now and then the model registry."""
        if now >= self._next_model_poll_ms:
            self._next_model_poll_ms = now + self.settings.model_poll_ms
            await self.poll_models(now)
        writes = [
            Write(keys.UI, p, maxlen=self.settings.ui_maxlen)
            for p in self.engine.ui_packets(now, self.settings.symbols)
        ]
        return Result(writes=writes)

    async def poll_models(self, now: int) -> None:
        """Load the newest ``cnn`` announcement if it is newer than the running weights."""
        lower = "(" + self._models_seen_id if self._models_seen_id != "-" else "-"
        entries = await self.cmd.xrevrange(keys.MODELS, "+", lower, count=MODEL_SCAN)
        if not entries:
            return
        self._models_seen_id = s(entries[0][0])
        for packet in self._decode_all(entries):
            if isinstance(packet, ModelAnnouncement) and packet.name == MODEL_NAME:
                await self._maybe_load(packet, now)
                return

    async def _maybe_load(self, ann: ModelAnnouncement, now: int) -> None:
        status = self.engine.cnn.status
        if ann.ts_ms <= status.announced_ts_ms or ann.version == status.version:
            return
        if (ann.version, ann.sha256) in self._rejected:
            return
        try:
            path = resolve_model_uri(ann.uri, self.settings.model_dir)
            data = await asyncio.to_thread(path.read_bytes)
            self.engine.cnn.load(data, ann.sha256, ann.version, ann.ts_ms, now)
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
        st = self.engine.cnn.status
        return {
            "state_layout": self.engine.layout.describe(),
            "cnn": {"version": st.version, "state": st.state, "parameters": st.parameters},
            "last_model_error": self.last_model_error,
            "symbols": {
                sym: {
                    "ticks_cached": len(x.ticks),
                    "bars_1s": len(x.bars),
                    "ticks_seen": x.ticks_seen,
                    "bars_seen": x.bars_seen,
                    "training_packets": x.training_packets,
                    "emitted_until_ms": x.emitted_until_ms,
                }
                for sym, x in self.engine.symbols.items()
            },
        }


async def worker(ctx: ServiceContext) -> None:
    """The features worker: run the consumer until cancelled."""
    settings = cast(FeaturesSettings, ctx.settings)
    runtime = StreamRuntime(settings.redis_url, settings.consumer(SERVICE), settings.symbols, ctx.stats)
    service = FeaturesService(settings, runtime, ctx.stats)
    service.register()
    await run_consumers(ctx, runtime, service.info)
