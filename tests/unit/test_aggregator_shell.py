"""The aggregator's I/O shell without Redis: what it asks the runtime to write and acknowledge."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from unistream_aggregator.service import AggregatorShell
from unistream_aggregator.settings import AggregatorSettings
from unistream_common.consumer import Message, StreamRuntime
from unistream_common.packets import Tick, TickBatch
from unistream_common.stats import Stats

T0 = 1_700_000_000_000
URL = "redis://127.0.0.1:1/0"  # never contacted: clients connect lazily


def make_shell(**overrides: object) -> AggregatorShell:
    settings = AggregatorSettings(redis_url=URL, **overrides)  # type: ignore[arg-type]
    stats = Stats("aggregator")
    return AggregatorShell(settings, stats, StreamRuntime(URL, "aggregator-test", settings.symbols, stats))


def message(stream: str, eid: str, symbol: str, *ts: int) -> Message:
    ticks = [Tick(i + 1, 10.0 + i, 1.0, "BUY", t, t) for i, t in enumerate(ts)]
    return Message(stream, eid, TickBatch(symbol=symbol, source="SYNTHETIC", ticks=ticks))


async def test_bars_are_written_with_explicit_open_time_ids_and_retention_and_acks_follow_them() -> None:
    shell = make_shell(bar_retention=500)
    eth = "md:ticks:{ETHUSDT}"
    result = await shell.on_messages([message(eth, "5-0", "ETHUSDT", T0 + 10, T0 + 20)])
    assert result.writes == [] and result.ack == []  # the bar is open: the entry is held
    result = await shell.on_messages([message(eth, "6-0", "ETHUSDT", T0 + 3_500)])
    assert [(w.stream, w.id, w.maxlen) for w in result.writes] == [
        ("md:bars:{ETHUSDT}:1s", f"{T0}-0", 500),
        ("md:bars:{ETHUSDT}:1s", f"{T0 + 1_000}-0", 500),  # filled
        ("md:bars:{ETHUSDT}:1s", f"{T0 + 2_000}-0", 500),  # filled
    ]
    assert result.ack == [(eth, "5-0")]
    assert shell.stats.get("aggregator_bars_filled", symbol="ETHUSDT") == 2
    assert shell.stats.get("aggregator_ticks_applied", symbol="ETHUSDT") == 3


async def test_a_batch_in_the_stream_of_another_symbol_is_refused_and_acknowledged() -> None:
    shell = make_shell()
    result = await shell.on_messages([message("md:ticks:{ETHUSDT}", "1-0", "BTCUSDT", T0)])
    assert result.writes == [] and result.ack == [("md:ticks:{ETHUSDT}", "1-0")]
    assert shell.stats.total("aggregator_batches_refused") == 1


async def test_callbacks_raise_a_cancellation_that_a_library_swallowed() -> None:
    shell = make_shell()

    async def lost_cancel() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)  # what redis-py's wait_for does on 3.11: swallow it
        await shell.on_timer(T0)  # must not carry on as if nothing happened

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(lost_cancel())
