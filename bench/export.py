"""``make bench`` rows of ``unistream export`` (see bench/run.py for the table they go into).

- ``export_s_per_day``: seconds ``unistream export`` (its own process, Parquet, default chunk)
  takes for a day of one symbol's 1s bars (86,400) and the training packets the features service
  keeps by default (``UNISTREAM_TRAINING_MAXLEN`` 3,600, full states of 13,448 values: ~190 MB
  in Redis); reference: ``xrange_s_per_day``, the same entries read with XRANGE in the same
  chunks and nothing done with them (the floor set by Redis and the transfer).
- ``export_peak_rss_mib_day``: the export process's peak resident memory for that day (MiB);
  reference: ``export_peak_rss_mib_quarter``, the same for a quarter of it (6 h of bars, 900
  packets). Writing a chunk before reading the next keeps memory flat: the ratio should stay
  near 1 however long the streams are.

Each row runs at most ``MAX_RUNS`` times; the streams are written once per size and reused.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
from procs import peak_rss_mib

from unistream_common import codec, keys
from unistream_common.packets import Bar, TrainingDataPacket

T0 = 1_739_923_200_000  # 2025-02-19 00:00 UTC
DAY_BARS, DAY_PACKETS = 86_400, 3_600
MAX_RUNS: dict[str, int] = dict.fromkeys(
    ("export_s_per_day", "xrange_s_per_day", "export_peak_rss_mib_day", "export_peak_rss_mib_quarter"), 2
)
NOTES: dict[str, list[str]] = {}


def _streams(part: int) -> list[str]:
    return [keys.bars("ETHUSDT", "1s") + f":d{part}", keys.training("ETHUSDT") + f":d{part}"]


def _fill(url: str, part: int) -> list[str]:
    """Write 1/``part`` of a day of bars and packets (once per Redis and size); the stream names."""
    bars_stream, training_stream = names = _streams(part)
    client = redis.Redis.from_url(url)
    try:
        if client.exists(bars_stream) and client.exists(training_stream):
            return names
        from unistream_model.layout import make_layout

        layout = make_layout(focus="ETHUSDT")
        rng = np.random.default_rng(part)
        pipe = client.pipeline(transaction=False)
        for k in range(DAY_BARS // part):
            close = 2700.0 + (k % 500) * 0.01
            bar = Bar(
                symbol="ETHUSDT", timeframe="1s", open_time_ms=T0 + 1000 * k, close_time_ms=T0 + 1000 * (k + 1),
                open=close, high=close + 0.5, low=close - 0.5, close=close, volume=1.5, quote_volume=close * 1.5,
                trade_count=3, vwap=close, taker_buy_volume=0.5, filled=False, source="REPLAY",
            )  # fmt: skip
            pipe.xadd(bars_stream, codec.encode(bar), id=f"{bar.open_time_ms}-0")
            if k % 5_000 == 4_999:
                pipe.execute()
        pipe.execute()
        for k in range(DAY_PACKETS // part):
            state = rng.standard_normal(layout.dim).astype(np.float32)  # as incompressible as real states
            packet = TrainingDataPacket(
                symbol="ETHUSDT", ts_event_ms=T0 + 1000 * k, price=2700.0, source="REPLAY", state_dim=layout.dim,
                state=codec.f32_to_bytes(state), cnn_features=codec.f32_to_bytes(state[:160]),
                cnn_predictions=codec.f32_to_bytes(state[:20]), prediction_names=[f"p{i}" for i in range(20)],
                model_version="cnn-init-7", window_fill=1.0, layout_version=layout.tag,
            )  # fmt: skip
            pipe.xadd(training_stream, codec.encode(packet), id=f"{packet.ts_event_ms}-0")
            if k % 200 == 199:
                pipe.execute()
        pipe.execute()
        return names
    finally:
        client.close()


def _export(url: str, part: int) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one ``unistream export`` of 1/``part`` of a day."""
    streams = _fill(url, part)
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "unistream_tools.cli", "export", *streams, "--out", tmp, "--redis-url", url]
        started = time.perf_counter()
        rss = peak_rss_mib(cmd, env)
        seconds = time.perf_counter() - started
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    NOTES.setdefault(f"export_peak_rss_mib_{'day' if part == 1 else 'quarter'}", []).append(
        f"{DAY_BARS // part:,} bars and {DAY_PACKETS // part:,} packets -> {size / 2**20:.0f} MiB of Parquet in "
        f"{seconds:.1f} s"
    )
    return seconds, rss


def _xrange(url: str) -> float:
    streams = _fill(url, 1)
    client = redis.Redis.from_url(url)
    try:
        started = time.perf_counter()
        for stream in streams:
            start = "-"
            while entries := client.xrange(stream, min=start, max="+", count=1_000):
                start = "(" + entries[-1][0].decode()
        return time.perf_counter() - started
    finally:
        client.close()


async def export_s_per_day(url: str, n: int, batch: int) -> float:
    seconds, _ = await asyncio.to_thread(_export, url, 1)
    return seconds


async def xrange_s_per_day(url: str, n: int, batch: int) -> float:
    return await asyncio.to_thread(_xrange, url)


async def export_peak_rss_mib_day(url: str, n: int, batch: int) -> float:
    _, rss = await asyncio.to_thread(_export, url, 1)
    return rss


async def export_peak_rss_mib_quarter(url: str, n: int, batch: int) -> float:
    _, rss = await asyncio.to_thread(_export, url, 4)
    return rss
