"""The ingest writer's loop without Redis: it stops on cancel even when a library swallows the cancel."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from unistream_common.stats import Stats
from unistream_ingest.service import IngestService
from unistream_ingest.settings import IngestSettings


class SwallowingPipeline:
    """A pipeline whose execute() behaves like redis-py's on Python 3.11 when cancelled mid-write."""

    def __init__(self, entered: asyncio.Event) -> None:
        self.commands: list[str] = []
        self.entered = entered

    def xadd(self, *args: Any, **kwargs: Any) -> None:
        self.commands.append("xadd")

    def eval(self, *args: Any) -> None:  # the writer's fenced XADD script
        self.commands.append("xadd")

    def xrevrange(self, *args: Any, **kwargs: Any) -> None:
        self.commands.append("xrevrange")

    def set(self, *args: Any, **kwargs: Any) -> None:
        self.commands.append("set")

    def get(self, *args: Any, **kwargs: Any) -> None:  # a tick stream's mark
        self.commands.append("get")

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if "xadd" in self.commands:
            self.entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.01)
        replies = {"xrevrange": [], "set": True, "get": None}
        return [replies.get(c, [1, b"1-0"]) for c in self.commands]


class SwallowingRedis:
    def __init__(self) -> None:
        self.entered = asyncio.Event()  # set while a write is in execute()

    def pipeline(self, transaction: bool = True) -> SwallowingPipeline:
        return SwallowingPipeline(self.entered)

    async def ping(self) -> bool:
        return True


async def test_writer_stops_on_cancel_even_when_a_redis_call_swallows_the_cancellation() -> None:
    settings = IngestSettings(flush_interval_ms=1)  # type: ignore[call-arg]
    redis = SwallowingRedis()
    writer = IngestService(settings, Stats("ingest"), redis)  # type: ignore[arg-type]
    task = asyncio.create_task(writer.run())
    await asyncio.wait_for(redis.entered.wait(), 5)
    task.cancel()  # once, while the write is in execute(), which swallows it
    done, _ = await asyncio.wait({task}, timeout=1)
    assert done, "the writer ran on after a swallowed cancel"
    assert task.cancelled()
