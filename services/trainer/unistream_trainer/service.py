"""The trainer I/O shell: the ``trainer`` group over ``ml:training``, metrics, checkpoints.

- Each consumed batch is handed to :class:`~unistream_trainer.core.TrainerCore` in a worker
  thread (observing a batch and the gradient steps it earned take tens to hundreds of ms; the
  event loop stays free for the probes) and acknowledged at once: the replay buffer is a cache of
  recent experience, and losing it in a crash costs a few minutes of data, not correctness.
- A timer (every ``TIMER_S``) publishes a MetricsPacket every ``metrics_every_s`` and writes a
  checkpoint every ``checkpoint_every_updates`` gradient steps or ``checkpoint_every_s`` seconds
  (whichever comes first, only when steps were taken): the file first (atomically), then the
  ModelAnnouncement, so an announcement never points at a file that is not complete.
- On start the newest checkpoint under ``<model_dir>/dqn`` is read; it is used when the first
  training packet shows that its shape fits.

The callback and the timer run one after the other in the consumer's loop, never concurrently,
so the core needs no lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, cast

from unistream_common import keys
from unistream_common.consumer import ConsumerOptions, GroupConsumer, Message, Result, StreamRuntime, Write
from unistream_common.packets import MetricsPacket, ModelAnnouncement, TrainingDataPacket
from unistream_common.service import ServiceContext, run_consumers
from unistream_common.stats import Stats
from unistream_trainer.checkpoint import (
    MODEL_NAME,
    SUFFIX,
    CheckpointError,
    checkpoint_version,
    load_newest,
    prune_checkpoints,
    sha256_hex,
    write_atomic,
)
from unistream_trainer.core import TrainerCore
from unistream_trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

SERVICE = "trainer"
TIMER_S = 0.5


def now_ms() -> int:
    return int(time.time() * 1000)


class TrainerService:
    """Callbacks of the trainer consumer, around one :class:`TrainerCore`."""

    def __init__(self, settings: TrainerSettings, runtime: StreamRuntime, stats: Stats) -> None:
        self.settings = settings
        self.runtime = runtime
        self.stats = stats
        self.producer = settings.consumer(SERVICE)
        self.checkpoint_dir = Path(settings.model_dir).resolve() / MODEL_NAME
        self.core = TrainerCore(settings.hyperparameters(), max_gap_ms=settings.max_gap_ms)
        start = now_ms()
        self._next_metrics_ms = start + int(settings.metrics_every_s * 1000)
        self._last_checkpoint_ms = start
        self._last_checkpoint_updates = 0
        self.last_checkpoint = ""

    def register(self) -> GroupConsumer:
        return self.runtime.register_consumer(
            keys.GROUP_TRAINER,
            self.on_messages,
            ["training"],
            options=ConsumerOptions(batch_size=256, timer_interval_s=TIMER_S),
            on_timer=self.on_timer,
            packet_types=(TrainingDataPacket,),
        )

    async def load_resume(self) -> None:
        """Read the newest checkpoint; the core uses it if the first packet's state fits it."""
        ckpt, problems = await asyncio.to_thread(load_newest, self.checkpoint_dir)
        for p in problems:
            self.stats.inc("trainer_checkpoints_unreadable")
            log.warning("checkpoint passed over: %s", p)
        if ckpt is not None:
            self.core.resume = ckpt
            self._last_checkpoint_updates = ckpt.updates
            log.info("will resume from %s (%d updates) if the state size fits", ckpt.version, ckpt.updates)

    async def on_messages(self, messages: list[Message]) -> Result:
        packets = [m.packet for m in messages if isinstance(m.packet, TrainingDataPacket)]
        steps = await asyncio.to_thread(self.core.process, packets)
        self.stats.inc("trainer_packets", len(packets))
        self.stats.inc("trainer_updates", steps)
        for name, value in self.core.events.items():
            self.stats.inc(f"trainer_{name}", value)
        self.core.events.clear()
        return Result()

    async def on_timer(self, now: int) -> Result:
        writes: list[Write] = []
        if now >= self._next_metrics_ms:
            self._next_metrics_ms = now + int(self.settings.metrics_every_s * 1000)
            metrics = self.core.metrics(now)
            packet = MetricsPacket(producer=self.producer, ts_ms=now, step=self.core.updates, metrics=metrics)
            writes.append(Write(keys.METRICS, packet, maxlen=self.settings.metrics_maxlen))
            self.stats.set("trainer_epsilon", metrics["charts/epsilon"])
            self.stats.set("trainer_replay_size", metrics["charts/replay_size"])
        if self._checkpoint_due(now):
            announcement = await self.checkpoint(now)
            if announcement is not None:
                writes.append(Write(keys.MODELS, announcement, maxlen=self.settings.models_maxlen))
        return Result(writes=writes)

    def _checkpoint_due(self, now: int) -> bool:
        done = self.core.updates - self._last_checkpoint_updates
        if done <= 0:
            return False
        return (
            done >= self.settings.checkpoint_every_updates
            or now - self._last_checkpoint_ms >= self.settings.checkpoint_every_s * 1000
        )

    async def checkpoint(self, now: int) -> ModelAnnouncement | None:
        """Write a checkpoint file (atomically) and return its announcement; None when there is nothing to save."""
        updates = self.core.updates
        version = checkpoint_version(now, updates, self.producer)
        try:
            data, parameters = await asyncio.to_thread(self.core.checkpoint, version, self.producer)
        except CheckpointError as exc:
            log.info("no checkpoint: %s", exc)
            return None
        path = self.checkpoint_dir / f"{version}{SUFFIX}"
        await asyncio.to_thread(write_atomic, path, data)
        await asyncio.to_thread(prune_checkpoints, self.checkpoint_dir, self.settings.checkpoint_keep)
        self._last_checkpoint_ms = now
        self._last_checkpoint_updates = updates
        self.last_checkpoint = str(path)
        self.stats.inc("trainer_checkpoints_written")
        log.info("checkpoint %s (%d parameters, %d bytes)", path, parameters, len(data))
        return ModelAnnouncement(
            name=MODEL_NAME,
            version=version,
            ts_ms=now,
            uri=path.as_uri(),
            sha256=sha256_hex(data),
            producer=self.producer,
            parameters=parameters,
            metrics={
                "charts/updates": float(updates),
                "charts/transitions": float(self.core.transitions),
                "charts/state_dim": float(self.core.state_dim),
            },
        )

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
            "resumed_from": core.resumed_from,
            "resume_error": core.resume_error,
            "last_checkpoint": self.last_checkpoint,
            "hyperparameters": {k: v for k, v in vars(core.hp).items()},
        }


async def worker(ctx: ServiceContext) -> None:
    """The trainer worker: resume, then run the consumer until cancelled."""
    settings = cast(TrainerSettings, ctx.settings)
    runtime = StreamRuntime(settings.redis_url, settings.consumer(SERVICE), settings.symbols, ctx.stats)
    service = TrainerService(settings, runtime, ctx.stats)
    await service.load_resume()
    service.register()
    await run_consumers(ctx, runtime, service.info)
