"""Live 1s bars close by the venue's clock, not this host's.

A local exchange speaking Binance's protocol stamps its trades with a clock 1 s behind, then 1 s
ahead of the host's. Ingest (in-process, reading the exchange's websocket) measures the offset
from the trades (receipt minus trade time) and writes its watermark in the venue's time beside
its own; the aggregator (its own process) closes each second when the venue's clock passes its
end + grace. Behind: no real trade is late (by the host's clock the second would have closed a
second early and the trades of its last 750 ms come after it). Ahead: the bars keep up with the
venue's seconds instead of trailing them by the offset.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis
from aggregator_harness import cleanup, quality_of, start_aggregator
from exchange import TestExchange
from test_ingest_binance_to_redis import ingest, live_settings

from unistream_common import codec, keys

pytestmark = [pytest.mark.integration, pytest.mark.heavy]

SYMBOLS = ("ETHUSDT", "BTCUSDT")
RUN_S = 6.0


@pytest.mark.parametrize("offset_ms", [-1_000, 1_000], ids=["venue_1s_behind", "venue_1s_ahead"])
async def test_live_bars_close_by_the_venue_s_clock(redis_url: str, tmp_path: Path, offset_ms: int) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    agg = None
    leads: list[int] = []  # newest 1s bar's end minus the host's clock, sampled while running
    try:
        async with (
            TestExchange(SYMBOLS, rate_per_s=40, clock_offset_ms=offset_ms) as ex,
            ingest(live_settings(redis_url, ex, history_bars=0)),
        ):
            agg = start_aggregator(redis_url, tmp_path / "aggregator.log", "aggregator-clock", symbols=SYMBOLS)
            deadline = time.monotonic() + RUN_S
            while time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                top = client.xrevrange(keys.bars("ETHUSDT", "1s"), count=1)
                if top:
                    leads.append(codec.decode(top[0][1]).close_time_ms - int(time.time() * 1000))
            venue, _, host = client.get(keys.ticks_watermark("ETHUSDT")).decode().partition(":")
        for symbol in SYMBOLS:
            q = quality_of(client, symbol)
            assert q["ticks_applied"] > 50, (symbol, q)
            assert q["ticks_late"] == 0, (symbol, q, agg.tail() if agg else "")
        # the watermark's venue time is the host's less the measured offset (transit included)
        assert abs((int(host) - int(venue)) + offset_ms) < 300, (host, venue)
        assert len(leads) > 10
        settled = sorted(leads[len(leads) // 2 :])
        middle = settled[len(settled) // 2]
        if offset_ms > 0:  # the venue's seconds end a second before the host's: bars close that much earlier
            assert middle > 0, f"bars trail the venue's clock: newest bar end - host clock {settled}"
        else:
            assert middle < -1_000, f"bars close before the venue's second is over: {settled}"
    finally:
        if agg is not None:
            cleanup([agg])
        client.close()
