"""The aggregator's I/O shell without Redis: what it asks the runtime to write, acknowledge and fence.

The few commands the shell sends itself (outside the runtime's MULTI) go to :class:`FakeRedis`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import msgspec
import pytest

from unistream_aggregator.core import SymbolCheckpoint
from unistream_aggregator.service import AggregatorService
from unistream_aggregator.settings import AggregatorSettings
from unistream_common import keys, quality
from unistream_common.consumer import Message, Result, StateWrite, StreamRuntime, fence_value
from unistream_common.packets import Bar, Source, Tick, TickBatch
from unistream_common.stats import Stats

DAY = 1_700_006_400_000  # 2023-11-15 00:00:00 UTC: a day, hour and minute boundary
ETH = "ETHUSDT"
BTC = "BTCUSDT"
ETH_TICKS = keys.ticks(ETH)
URL = "redis://127.0.0.1:1/0"  # never contacted: clients connect lazily
_trade_ids = itertools.count(1)  # rising for every symbol, as ingest guarantees


class FakeRedis:
    """Answers what the shell sends itself: this consumer alone has entries pending,
    its leases renew, no other symbol can be taken, and each tick stream's newest entry is in
    ``tops`` (absent: the stream is empty)."""

    def __init__(self) -> None:
        self.tops: dict[str, str] = {}

    def pipeline(self, transaction: bool = True) -> _Pipeline:
        return _Pipeline(self)

    async def eval(self, script: str, numkeys: int, *args: Any) -> int:
        return 0  # _TAKE: owned by someone else

    def answer(self, command: str, args: tuple[Any, ...]) -> Any:
        if command == "xpending":
            return {"pending": 0, "min": None, "max": None, "consumers": []}
        if command == "xrevrange":
            top = self.tops.get(args[0])
            return [(top.encode(), {b"type": b"tick_batch"})] if top else []
        if command == "zrange":
            return []  # members: nobody else (heartbeat counts at least itself)
        return {"eval": 1}.get(command, 0)  # _RENEW: renewed


class _Pipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.queued: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, command: str) -> Any:
        def queue(*args: Any, **kwargs: Any) -> _Pipeline:
            self.queued.append((command, args))
            return self

        return queue

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        return [self.redis.answer(command, args) for command, args in self.queued]


def make_shell(*owned: str, **overrides: object) -> AggregatorService:
    """A shell that owns ``owned`` as if it had taken their leases with no checkpoint in Redis."""
    settings = AggregatorSettings(redis_url=URL, **overrides)  # type: ignore[arg-type]
    stats = Stats("aggregator")
    shell = AggregatorService(settings, stats, StreamRuntime(URL, "aggregator-test", settings.symbols, stats))
    shell.runtime.cmd = FakeRedis()  # type: ignore[assignment]
    for symbol in owned:
        shell.owned[symbol] = 0.0
        shell.quality[symbol] = dict.fromkeys(quality.COUNTERS, 0)
        shell.core.restore(symbol, None)
    return shell


def message(
    eid: str, symbol: str, *trades: tuple[int, float], size: float = 1.0, source: Source = "SYNTHETIC"
) -> Message:
    """An entry of ``symbol``'s tick stream holding trades ``(ts_event_ms, price)``."""
    ticks = [Tick(next(_trade_ids), price, size, "BUY", ts, ts) for ts, price in trades]
    return Message(keys.ticks(symbol), eid, TickBatch(symbol=symbol, source=source, ticks=ticks))


def fences(result: Result) -> dict[str, str]:
    """The values a result's commit expects its fencing keys to hold."""
    return {key: fence_value(expected) for key, expected in result.fence.items()}


def state_of(result: Result, key: str) -> StateWrite:
    [write] = [w for w in result.state if w.key == key]
    return write


async def test_bars_of_every_timeframe_are_written_with_open_time_ids_and_retention_and_acks_follow_them() -> None:
    shell = make_shell(ETH, bar_retention=500)
    result = await shell.on_messages([message("5-0", ETH, (DAY - 1_500, 10.0))])
    assert result.writes == [] and result.ack == []  # the bar is open: the entry is held
    assert result.state == [] and result.fence == {}
    result = await shell.on_messages([message("6-0", ETH, (DAY + 500, 11.0))])
    assert [(w.stream, w.id, w.maxlen) for w in result.writes] == [
        ("md:bars:{ETHUSDT}:1s", f"{DAY - 2_000}-0", 500),
        ("md:bars:{ETHUSDT}:1s", f"{DAY - 1_000}-0", 500),  # filled
        ("md:bars:{ETHUSDT}:1m", f"{DAY - 60_000}-0", 500),
        ("md:bars:{ETHUSDT}:1h", f"{DAY - 3_600_000}-0", 500),
        ("md:bars:{ETHUSDT}:1d", f"{DAY - 86_400_000}-0", 500),
    ]
    for write in result.writes:
        assert isinstance(write.packet, Bar) and keys.bars(ETH, write.packet.timeframe) == write.stream
        assert write.id == f"{write.packet.open_time_ms}-0"
    assert result.ack == [(ETH_TICKS, "5-0")]
    assert shell.stats.get("aggregator_bars_filled", symbol=ETH) == 1
    assert shell.stats.get("aggregator_ticks_applied", symbol=ETH) == 1
    assert shell.stats.get("aggregator_held_entries") == 1


async def test_each_result_writes_the_checkpoint_and_quality_counters_of_the_symbols_it_touched() -> None:
    shell = make_shell(ETH, BTC)
    await shell.on_messages([message("1-0", ETH, (DAY + 100, 10.0)), message("1-0", BTC, (DAY + 100, 50.0))])
    result = await shell.on_messages([message("2-0", ETH, (DAY + 2_100, 11.0))])
    assert [w.key for w in result.state] == [keys.agg_state(ETH), keys.quality(ETH)]  # BTC is untouched
    checkpoint = msgspec.json.decode(state_of(result, keys.agg_state(ETH)).value or b"", type=SymbolCheckpoint)
    assert checkpoint == shell.core.checkpoint(ETH) and checkpoint.last_open_ms == DAY + 1_000
    counters = state_of(result, keys.quality(ETH))
    assert counters.incr == {"ticks_applied": 1, "bars_1s": 2, "bars_filled": 1}
    assert counters.fields["last_bar_open_ms"] == DAY + 1_000
    assert counters.fields["last_bar_latency_ms"] >= 0 and counters.fields["updated_ms"] > DAY
    assert shell.quality[ETH]["bars_1s"] == 2 and shell.quality[BTC]["bars_1s"] == 0


async def test_a_replay_bar_reports_no_latency() -> None:
    shell = make_shell(ETH)
    await shell.on_messages([message("1-0", ETH, (DAY + 100, 10.0), source="REPLAY")])
    result = await shell.on_messages([message("2-0", ETH, (DAY + 1_100, 11.0), source="REPLAY")])
    fields = state_of(result, keys.quality(ETH)).fields
    assert fields["last_bar_open_ms"] == DAY and "last_bar_latency_ms" not in fields


async def test_an_acknowledgement_without_bars_still_writes_the_checkpoint_and_counters() -> None:
    shell = make_shell(ETH)
    await shell.on_messages([message("1-0", ETH, (DAY + 100, 10.0)), message("2-0", ETH, (DAY + 1_100, 11.0))])
    result = await shell.on_messages([message("3-0", ETH, (DAY + 200, 9.0))])  # late: acknowledged at once
    assert result.writes == [] and result.ack == [(ETH_TICKS, "3-0")]
    assert state_of(result, keys.quality(ETH)).incr == {"ticks_late": 1}
    assert state_of(result, keys.agg_state(ETH)).value is not None
    assert fences(result) == {keys.agg_fence(ETH): f"{shell.token}#0"}


async def test_results_are_fenced_on_the_owner_lease_of_every_symbol_they_write_or_acknowledge() -> None:
    shell = make_shell(ETH, BTC)
    await shell.on_messages([message("1-0", ETH, (DAY + 100, 10.0)), message("1-0", BTC, (DAY + 100, 50.0))])
    result = await shell.on_messages(
        [message("2-0", ETH, (DAY + 1_100, 11.0)), message("2-0", BTC, (DAY + 1_100, 51.0))]
    )
    assert fences(result) == {keys.agg_fence(ETH): f"{shell.token}#0", keys.agg_fence(BTC): f"{shell.token}#0"}
    assert shell.token.startswith("aggregator-test:")


async def test_entries_of_a_symbol_this_process_does_not_own_are_neither_applied_nor_acknowledged() -> None:
    shell = make_shell(ETH)
    result = await shell.on_messages([message("1-0", BTC, (DAY + 100, 50.0)), message("2-0", BTC, (DAY + 1_100, 51.0))])
    assert result.writes == [] and result.ack == [] and result.state == []
    assert BTC not in shell.core.symbols  # pending in Redis for the symbol's owner


async def test_a_batch_in_the_stream_of_another_symbol_is_refused_and_acknowledged() -> None:
    shell = make_shell(ETH, BTC)
    wrong = message("1-0", BTC, (DAY, 50.0))
    result = await shell.on_messages([Message(ETH_TICKS, "1-0", wrong.packet)])
    assert result.writes == [] and result.ack == [(ETH_TICKS, "1-0")]
    assert shell.stats.total("aggregator_batches_refused") == 1
    assert shell.core.forming_bars(BTC) == {} and shell.core.forming_bars(ETH) == {}


async def test_checkpoint_sums_beyond_64_bits_survive_the_state_key_and_restore_the_same_bars() -> None:
    shell = make_shell(ETH)
    # 60,000 x 10,000,000 is 6e19 in units of 1e-8: msgpack's 64-bit integers could not hold it.
    await shell.on_messages([message("1-0", ETH, (DAY + 100, 60_000.0), size=10_000_000.0)])
    held = message("2-0", ETH, (DAY + 1_100, 60_001.0), size=10_000_000.0)
    result = await shell.on_messages([held])
    raw = state_of(result, keys.agg_state(ETH)).value or b""
    checkpoint = msgspec.json.decode(raw, type=SymbolCheckpoint)
    assert checkpoint == shell.core.checkpoint(ETH) and checkpoint.forming["1m"].quote > 2**64

    restarted = make_shell(ETH)
    restarted.core.restore(ETH, checkpoint)
    await restarted.on_messages([held])  # redelivered: it was never acknowledged
    closing = message("3-0", ETH, (DAY + 60_100, 60_002.0), size=1_000.0)
    got = await restarted.on_messages([closing])
    want = await shell.on_messages([closing])
    assert [w.packet for w in got.writes] == [w.packet for w in want.writes]
    assert [w.stream for w in got.writes][-1] == keys.bars(ETH, "1m")


async def test_rewind_drops_every_owned_symbol_and_leaves_held_entries_pending() -> None:
    shell = make_shell(ETH, BTC)
    await shell.on_messages([message("1-0", ETH, (DAY + 100, 10.0))])
    assert shell.core.held() == [(ETH_TICKS, "1-0")]
    await shell.on_rewind()
    assert shell.owned == {} and shell.quality == {} and shell.core.symbols == [] and shell.core.held() == []
    assert shell.stats.get("aggregator_owned_symbols") == 0


async def test_a_core_error_asks_for_a_restart_and_never_returns_a_result(monkeypatch: pytest.MonkeyPatch) -> None:
    shell = make_shell(ETH)
    failure = RuntimeError("core bug")

    def broken(entries: object) -> None:
        raise failure

    monkeypatch.setattr(shell.core, "apply", broken)
    call = asyncio.create_task(shell.on_messages([message("1-0", ETH, (DAY + 100, 10.0))]))
    await asyncio.wait_for(shell.restart_requested.wait(), 5)
    await asyncio.sleep(0)
    assert not call.done() and shell.core_error is failure and not shell.ready()
    assert shell.stats.total("aggregator_core_errors") == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    with pytest.raises(TimeoutError):  # until the restart, the broken state is never touched again
        await asyncio.wait_for(shell.on_messages([message("2-0", ETH, (DAY + 200, 10.0))]), 0.05)


async def test_timer_closes_bars_only_of_symbols_whose_stream_holds_nothing_beyond_what_was_applied() -> None:
    shell = make_shell(ETH, grace_ms=250)
    redis: FakeRedis = shell.runtime.cmd  # type: ignore[assignment]
    await shell.on_messages([message("7-0", ETH, (DAY + 100, 10.0))])
    redis.tops[ETH_TICKS] = "8-0"  # read by Redis, not applied yet: its trades may be of this second
    assert await shell.on_timer(DAY + 5_000) is None
    assert shell.core.held() == [(ETH_TICKS, "7-0")]
    redis.tops[ETH_TICKS] = "7-0"
    result = await shell.on_timer(DAY + 5_000)
    assert result is not None and result.ack == [(ETH_TICKS, "7-0")]
    assert [w.id for w in result.writes] == [f"{DAY + k * 1_000}-0" for k in range(4)]  # then filled up to now
    assert [w.key for w in result.state] == [keys.agg_state(ETH), keys.quality(ETH)]
    assert fences(result) == {keys.agg_fence(ETH): f"{shell.token}#0"}


async def test_the_timer_s_result_is_timed_by_the_time_it_was_handed_not_by_the_host_s_clock() -> None:
    shell = make_shell(ETH, grace_ms=250)
    redis: FakeRedis = shell.runtime.cmd  # type: ignore[assignment]
    await shell.on_messages([message("7-0", ETH, (DAY + 100, 10.0))])
    redis.tops[ETH_TICKS] = "7-0"
    result = await shell.on_timer(DAY + 5_000)  # long before this host's clock: a replayed clock
    assert result is not None
    fields = state_of(result, keys.quality(ETH)).fields
    assert fields["updated_ms"] == DAY + 5_000
    assert fields["last_bar_latency_ms"] == DAY + 5_000 - (DAY + 4_000)  # the last filled second closed at DAY + 4 s


async def test_callbacks_raise_a_cancellation_that_a_library_swallowed() -> None:
    shell = make_shell()

    async def lost_cancel() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)  # what redis-py's wait_for does on 3.11: swallow it
        await shell.on_timer(DAY)  # must not carry on as if nothing happened

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(lost_cancel())


def test_info_shows_owned_symbols_their_position_and_quality_score() -> None:
    shell = make_shell(ETH)
    info = shell.info()
    assert info["owned"] == [ETH] and info["core_error"] is None
    assert info["symbols"][ETH]["last_bar_open_ms"] is None
    assert info["quality"][ETH]["score"] == 100.0
