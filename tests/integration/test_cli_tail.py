"""`unistream tail` against a real Redis: packets written with the codec, read back as lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from unistream_common import codec, keys
from unistream_common.packets import Bar, Tick, TickBatch, TrainingDataPacket
from unistream_tools import tail
from unistream_tools.cli import main
from unistream_tools.redis_server import free_port

T0 = 1_700_000_000_000
STREAM = keys.ticks("ETHUSDT")


def batch(first_trade_id: int, n: int = 2) -> TickBatch:
    ticks = [
        Tick(
            trade_id=first_trade_id + i,
            price=3000.25 + i,
            size=0.5,
            aggressor_side="BUY",
            ts_event_ms=T0 + i,
            ts_recv_ms=T0 + i + 3,
        )
        for i in range(n)
    ]
    return TickBatch(symbol="ETHUSDT", source="SYNTHETIC", ticks=ticks)


def one_bar() -> Bar:
    return Bar(
        symbol="ETHUSDT", timeframe="1s", open_time_ms=T0, close_time_ms=T0 + 1000, open=3000.0, high=3001.0,
        low=2999.5, close=3000.5, volume=2.0, quote_volume=6001.0, trade_count=3, vwap=3000.5,
        taker_buy_volume=1.0, filled=False, source="SYNTHETIC",
    )  # fmt: skip


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


@pytest.fixture
def filled(client: redis.Redis) -> redis.Redis:
    """A tick stream holding a batch of 3 ticks, a garbage entry, then a batch of 2 ticks."""
    client.xadd(STREAM, codec.encode(batch(100, 3)), id="1-0")
    client.xadd(STREAM, {"type": "tick_batch", "v": "1", "data": b"\xc1 not msgpack"}, id="2-0")
    client.xadd(STREAM, codec.encode(batch(200, 2)), id="3-0")
    return client


def test_tail_prints_one_line_per_tick_and_reports_the_undecodable_entry(
    filled: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tail", STREAM, "--redis-url", redis_url]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["1-0", "1-0", "1-0", "3-0", "3-0"]
    assert all(" tick " in line and "symbol=ETHUSDT" in line and "source=SYNTHETIC" in line for line in lines)
    assert "trade_id=100" in lines[0] and "trade_id=201" in lines[-1]
    assert "2-0: undecodable entry: tick_batch rejected" in err


def test_tail_json_prints_json_lines_with_symbol_and_source_per_tick(
    filled: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tail", STREAM, "--json", "--redis-url", redis_url]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["trade_id"] for r in records] == [100, 101, 102, 200, 201]
    assert records[0] == {
        "id": "1-0",
        "stream": STREAM,
        "type": "tick",
        "symbol": "ETHUSDT",
        "source": "SYNTHETIC",
        "trade_id": 100,
        "price": 3000.25,
        "size": 0.5,
        "aggressor_side": "BUY",
        "ts_event_ms": T0,
        "ts_recv_ms": T0 + 3,
    }
    assert "undecodable" in err


def test_tail_count_takes_the_newest_entries(
    filled: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tail", STREAM, "--count", "1", "--redis-url", redis_url]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["3-0", "3-0"]
    assert err == ""


def test_tail_prints_bars_one_per_entry(
    client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = keys.bars("ETHUSDT", "1s")
    client.xadd(stream, codec.encode(one_bar()), id=f"{T0}-0")
    assert main(["tail", stream, "--redis-url", redis_url]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{T0}-0 bar ") and "close=3000.5" in line and "timeframe=1s" in line


def test_tail_of_a_missing_stream_says_so_and_exits_1(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", "md:ticks:{NOPE}", "--redis-url", redis_url]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_tail_follow_prints_entries_added_later(redis_url: str, client: redis.Redis) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "unistream_tools.cli", "tail", STREAM, "--follow", "--json", "--redis-url", redis_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(20, proc.kill)  # a missing line must fail the test, not hang it
    watchdog.start()
    try:
        time.sleep(0.8)  # the stream does not exist yet: tail waits for it
        client.xadd(STREAM, codec.encode(batch(500, 2)))
        first = json.loads(proc.stdout.readline())
        second = json.loads(proc.stdout.readline())
        assert (first["trade_id"], second["trade_id"]) == (500, 501)
        client.xadd(STREAM, codec.encode(batch(600, 1)))
        assert json.loads(proc.stdout.readline())["trade_id"] == 600
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(10)


def test_tail_against_an_unreachable_redis_exits_1_with_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", STREAM, "--redis-url", f"redis://127.0.0.1:{free_port()}/0"]) == 1
    assert "cannot reach Redis at redis://127.0.0.1:" in capsys.readouterr().err


def training_packet(t: int, state: list[float]) -> TrainingDataPacket:
    return TrainingDataPacket(
        symbol="ETHUSDT", ts_event_ms=T0 + 1000 * t, price=3000.5, source="SYNTHETIC", state_dim=len(state),
        state=codec.f32_to_bytes(state), cnn_features=codec.f32_to_bytes([0.25, -1.5]),
        cnn_predictions=codec.f32_to_bytes([0.75]), prediction_names=["top_1s"], model_version="cnn-init-7",
        window_fill=1.0,
    )  # fmt: skip


def test_tail_json_prints_a_training_packet_s_vectors_as_lists_of_floats(
    client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = [0.1, -2.0, 3.5e-7, 40.0]
    client.xadd(keys.training("ETHUSDT"), codec.encode(training_packet(0, state)), id=f"{T0}-0")
    assert main(["tail", keys.training("ETHUSDT"), "--json", "--redis-url", redis_url]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["state"] == np.asarray(state, np.float32).tolist(), "each float32's value, not base64 text"
    assert record["cnn_features"] == [0.25, -1.5] and record["cnn_predictions"] == [0.75]


def test_tail_all_prints_every_entry_oldest_first_a_chunk_at_a_time(
    client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tail, "ALL_CHUNK", 2)
    for k in range(5):
        client.xadd(STREAM, codec.encode(batch(100 + 10 * k, 1)), id=f"{k + 1}-0")
    assert main(["tail", STREAM, "--all", "--redis-url", redis_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["1-0", "2-0", "3-0", "4-0", "5-0"]
    assert main(["tail", STREAM, "--count", "0", "--redis-url", redis_url]) == 0
    assert capsys.readouterr().out == ""
