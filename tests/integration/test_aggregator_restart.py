"""The aggregator process killed with SIGKILL mid-run and restarted leaves exactly the bars of an
uninterrupted run: no duplicate ids, no missing intervals, identical bars (real Redis, real processes)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from unistream_common import codec, keys
from unistream_common.packets import Bar, Tick, TickBatch
from unistream_common.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNISTREAM = REPO / ".venv" / "bin" / "unistream"
SYMBOLS = ("ETHUSDT", "BTCUSDT")
SECONDS = 3_000  # of history per symbol


def make_entries(seed: int, t0: int) -> list[TickBatch]:
    """A fixed, interleaved sequence of tick batches over SECONDS of history, with quiet spells."""
    rnd = random.Random(seed)
    per_symbol: dict[str, list[TickBatch]] = {}
    for n, symbol in enumerate(SYMBOLS):
        price = 3_000.0 if n == 0 else 90_000.0
        trade_id = 1
        ticks: list[Tick] = []
        for sec in range(SECONDS):
            quiet = 600 <= sec < 606 or rnd.random() < 0.15  # runs of empty seconds give filled bars
            for ms in sorted(rnd.randrange(1_000) for _ in range(0 if quiet else rnd.randrange(1, 6))):
                price = round(max(1.0, price + rnd.choice([-0.02, -0.01, 0.0, 0.01, 0.02])), 2)
                ts = t0 + sec * 1_000 + ms
                side = rnd.choice(["BUY", "SELL"])
                ticks.append(Tick(trade_id, price, round(rnd.uniform(0.001, 2.0), 4), side, ts, ts))  # type: ignore[arg-type]
                trade_id += 1
        batches, i = [], 0
        while i < len(ticks):
            k = rnd.randrange(1, 9)  # batches straddle bar boundaries
            batches.append(TickBatch(symbol=symbol, source="SYNTHETIC", ticks=ticks[i : i + k]))
            i += k
        per_symbol[symbol] = batches
    merged: list[TickBatch] = []
    queues = {s: list(reversed(b)) for s, b in per_symbol.items()}
    while any(queues.values()):
        symbol = rnd.choice([s for s, q in queues.items() if q])
        merged.append(queues[symbol].pop())
    return merged


def write_entries(client: redis.Redis, entries: list[TickBatch]) -> None:
    pipe = client.pipeline(transaction=False)
    for i, batch in enumerate(entries):
        pipe.xadd(keys.ticks(batch.symbol), codec.encode(batch))
        if i % 1_000 == 999:
            pipe.execute()
    pipe.execute()


def expected_last_open(entries: list[TickBatch]) -> dict[str, int]:
    last: dict[str, int] = {}
    for b in entries:
        ts = b.ticks[-1].ts_event_ms
        last[b.symbol] = max(last.get(b.symbol, 0), ts - ts % 1_000)
    return last


def start_aggregator(url: str, log: Path, consumer: str = "aggregator-test") -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "UNISTREAM_REDIS_URL": url,
        "UNISTREAM_HTTP_PORT": str(free_port()),
        "UNISTREAM_SYMBOLS": ",".join(SYMBOLS),
        "UNISTREAM_CONSUMER_NAME": consumer,
    }
    with log.open("ab") as fh:
        return subprocess.Popen([str(UNISTREAM), "aggregator"], env=env, stdout=fh, stderr=fh)


def bars_of(client: redis.Redis, symbol: str) -> list[tuple[str, Bar]]:
    out = []
    for eid, fields in client.xrange(keys.bars(symbol, "1s")):
        bar = codec.decode(fields)
        assert isinstance(bar, Bar)
        out.append((eid.decode(), bar))
    return out


def is_complete(client: redis.Redis, last_open: dict[str, int]) -> bool:
    for symbol, open_ms in last_open.items():
        top = client.xrevrange(keys.bars(symbol, "1s"), count=1)
        if not top or top[0][0] != f"{open_ms}-0".encode():
            return False
        if client.xpending(keys.ticks(symbol), keys.GROUP_AGGREGATOR)["pending"]:
            return False
    return True


def wait_until(predicate, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"aggregator exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out; aggregator log:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)


def run_to_completion(url: str, last_open: dict[str, int], log: Path, consumer: str = "aggregator-test") -> None:
    proc = start_aggregator(url, log, consumer)
    client = redis.Redis.from_url(url)
    try:
        wait_until(lambda: is_complete(client, last_open), 60, proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        client.close()


@pytest.mark.skipif(not UNISTREAM.exists(), reason="the unistream entry point is not installed in .venv")
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_aggregator_killed_twice_mid_run_writes_the_same_bars_as_an_uninterrupted_run(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    t0 = now - now % 1_000 - (SECONDS + 600) * 1_000  # history: the timer may close the last bars
    entries = make_entries(seed=20_240_601, t0=t0)
    last_open = expected_last_open(entries)
    ref_url = redis_server.url.rsplit("/", 1)[0] + "/1"
    run_url = redis_server.url.rsplit("/", 1)[0] + "/2"
    ref, run = redis.Redis.from_url(ref_url), redis.Redis.from_url(run_url)
    write_entries(ref, entries)
    write_entries(run, entries)

    run_to_completion(ref_url, last_open, tmp_path / "reference.log")

    # The interrupted run: SIGKILL about a third of the way and restart under the same consumer name;
    # SIGKILL again at about two thirds and restart under a new name (a new host): the pending
    # entries of the dead consumer must be taken over at once, not after the runtime's idle claim.
    total = sum((last_open[s] - min(b.ticks[0].ts_event_ms for b in entries if b.symbol == s)) // 1_000 + 1
                for s in SYMBOLS)  # fmt: skip
    log = tmp_path / "interrupted.log"
    for share in (0.3, 0.65):
        proc = start_aggregator(run_url, log)

        def progressed(share: float = share) -> bool:
            return sum(run.xlen(keys.bars(s, "1s")) for s in SYMBOLS) >= share * total

        wait_until(progressed, 60, proc, log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        written = sum(run.xlen(keys.bars(s, "1s")) for s in SYMBOLS)
        assert written < total, "the run finished before the kill: the test did not interrupt anything"
        assert sum(run.xpending(keys.ticks(s), keys.GROUP_AGGREGATOR)["pending"] for s in SYMBOLS) > 0
    run_to_completion(run_url, last_open, log, consumer="aggregator-test-new-host")
    assert "took over" in log.read_text()

    for symbol in SYMBOLS:
        expected, got = bars_of(ref, symbol), bars_of(run, symbol)
        opens = [b.open_time_ms for _, b in got]
        assert opens == list(range(opens[0], last_open[symbol] + 1, 1_000)), "missing or repeated intervals"
        assert [eid for eid, _ in got] == [f"{o}-0" for o in opens]
        assert any(b.filled for _, b in got) and any(not b.filled for _, b in got)
        assert len(got) == len(expected)
        assert got == expected
    # Every trade is in exactly one bar.
    for symbol in SYMBOLS:
        n_ticks = sum(len(b.ticks) for b in entries if b.symbol == symbol)
        assert sum(b.trade_count for _, b in bars_of(run, symbol)) == n_ticks
    assert not run.exists(keys.dlq(keys.ticks("ETHUSDT")), keys.dlq(keys.ticks("BTCUSDT")))
    ref.close()
    run.close()
