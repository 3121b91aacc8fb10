"""``unistream ingest`` sources as a script would run them: replay writes every tick once then exits 0;
external writes only what producers post."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import redis
from helpers import probe

from unistream_common import codec, keys
from unistream_tools.redis_server import free_port

pytestmark = pytest.mark.integration
T0 = 1_740_000_000_000  # 2025: the archive writes µs


def archive_zip(directory: Path, day: str, first_id: int, n: int, t0_ms: int) -> Path:
    """A trades .zip as data.binance.vision serves it: one header-less CSV, µs timestamps."""
    rows = "".join(
        f"{first_id + i},{2500 + (i % 50) / 100:.2f},{0.001 * (1 + i % 7):.3f},1.0,{(t0_ms + i * 7) * 1000},"
        f"{'true' if i % 3 else 'false'},true\n"
        for i in range(n)
    )
    path = directory / f"ETHUSDT-trades-{day}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"ETHUSDT-trades-{day}.csv", rows)
    return path


def replay(redis_url: str, *files: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    env.update({"UNISTREAM_REDIS_URL": redis_url, "UNISTREAM_HTTP_PORT": str(free_port())})
    cmd = [sys.executable, "-m", "unistream_tools.cli", "ingest", "--source", "replay", "--path", *map(str, files),
           "--symbol", "ETHUSDT", "--speed", "max", *extra]  # fmt: skip
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=120)


def stream_ids(client: redis.Redis) -> list[int]:
    ids: list[int] = []
    for _, fields in client.xrange(keys.ticks("ETHUSDT")):
        batch = codec.decode(fields)
        assert batch.source == "REPLAY"
        ids.extend(t.trade_id for t in batch.ticks)
    return ids


def test_replay_of_two_archive_days_writes_every_trade_once_in_order_and_exits_0(
    redis_url: str, tmp_path: Path
) -> None:
    day1 = archive_zip(tmp_path, "2025-02-19", 1_000, 30_000, T0)
    day2 = archive_zip(tmp_path, "2025-02-20", 31_000, 20_000, T0 + 86_400_000)
    done = replay(redis_url, day2, day1)  # given out of order: merged by time
    assert done.returncode == 0, done.stderr[-3000:]
    client = redis.Redis.from_url(redis_url)
    assert stream_ids(client) == list(range(1_000, 51_000))
    entries = client.xlen(keys.ticks("ETHUSDT"))
    assert entries < 1_000, "ticks travel in batches, not one entry each"
    history = [codec.decode(f) for _, f in client.xrange(keys.history("ETHUSDT", "1m"))]
    assert history and all(b.is_history and b.source == "REPLAY" for b in history), "warm-up bars from the files"
    seconds = [codec.decode(f) for _, f in client.xrange(keys.history("ETHUSDT", "1s"))]
    assert len(seconds) == 300 and all(b.timeframe == "1s" and b.source == "REPLAY" for b in seconds)
    assert not client.exists(keys.bars("ETHUSDT", "1m")), "history never goes to the aggregator's streams"

    again = replay(redis_url, day1, day2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert client.xlen(keys.ticks("ETHUSDT")) == entries, "a second replay of the same files writes nothing"
    assert "50000 trade(s) of the files are already on md:ticks:{ETHUSDT}: skipped" in again.stderr
    client.close()


def test_replay_with_a_missing_file_stops_with_the_reason(redis_url: str, tmp_path: Path) -> None:
    done = replay(redis_url, tmp_path / "ETHUSDT-trades-2025-01-01.zip")
    assert done.returncode != 0
    assert "replay files not found" in done.stderr


def test_external_source_writes_nothing_itself_and_stays_ready(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTREAM_")}
    port = free_port()
    env.update({"UNISTREAM_REDIS_URL": redis_url, "UNISTREAM_HTTP_PORT": str(port), "UNISTREAM_SOURCE": "external"})
    proc = subprocess.Popen([sys.executable, "-m", "unistream_tools.cli", "ingest"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while probe(port)[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        tick = {"trade_id": 5, "price": "2500.10", "size": "0.5", "side": "BUY", "ts_event_ms": int(time.time() * 1000)}
        body = json.dumps({"symbol": "BTCUSDT", "source": "REAL", "ticks": [tick]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/ticks", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.loads(resp.read())["accepted"] == 1
        time.sleep(0.5)
        client = redis.Redis.from_url(redis_url)
        assert client.xlen(keys.ticks("ETHUSDT")) == 0, "no built-in source writes"
        assert [codec.decode(f).source for _, f in client.xrange(keys.ticks("BTCUSDT"))] == ["REAL"]
        client.close()
        info = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5).read())["info"]
        assert info["source"].startswith("external")
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
