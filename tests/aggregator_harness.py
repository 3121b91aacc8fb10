"""Harness for the aggregator's process-level tests: seeded tick entries, a paced writer thread,
``unistream aggregator`` processes, and the bar streams read back for comparison.

The tick entries carry explicit stream ids (``<n>-0``, n rising over the whole sequence), so a
writer that lost a reply (Redis restarted under it) can send its chunk again: Redis refuses the
entries already written as "equal or smaller than the top item" and nothing is doubled.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import probe
from redis.backoff import NoBackoff
from redis.retry import Retry

from unistream_aggregator.core import BarAggregator
from unistream_common import codec, keys, quality
from unistream_common.keys import TIMEFRAME_MS, TIMEFRAMES
from unistream_common.packets import Bar, Source, Tick, TickBatch
from unistream_tools.redis_server import free_port

SYMBOLS: tuple[str, ...] = ("ETHUSDT", "BTCUSDT")
MIDNIGHT_MS = 1_717_200_000_000  # 2024-06-01 00:00:00 UTC: the history crosses it, so a 1d bar closes
MAX_FILL_GAP_S = 20  # small, so that one quiet run of the history is skipped rather than filled
FILLED_RUN = (600, 606)  # second offsets of a quiet run that is filled with flat bars
SKIPPED_RUN = (1_200, 1_240)  # a quiet run longer than MAX_FILL_GAP_S: no bars, counted as skipped


# --- entries --------------------------------------------------------------------------------


def make_entries(
    seed: int,
    t0_ms: int,
    seconds: int,
    source: Source = "REPLAY",
    symbols: Sequence[str] = SYMBOLS,
) -> list[TickBatch]:
    """A fixed, interleaved sequence of tick batches over ``seconds`` of event time per symbol.

    Quiet seconds (15 %) and the runs FILLED_RUN and SKIPPED_RUN give filled bars and a skipped
    gap; batches of 1-8 trades straddle bar boundaries. Same seed, same entries.
    """
    rnd = random.Random(seed)
    per_symbol: dict[str, list[TickBatch]] = {}
    for n, symbol in enumerate(symbols):
        price = 3_000.0 if n == 0 else 90_000.0
        trade_id = 1_000_000 * (n + 1)
        ticks: list[Tick] = []
        for sec in range(seconds):
            quiet = FILLED_RUN[0] <= sec < FILLED_RUN[1] or SKIPPED_RUN[0] <= sec < SKIPPED_RUN[1]
            quiet = quiet or rnd.random() < 0.15
            for ms in sorted(rnd.randrange(1_000) for _ in range(0 if quiet else rnd.randrange(1, 6))):
                price = round(max(1.0, price + rnd.choice([-0.02, -0.01, 0.0, 0.01, 0.02])), 2)
                ts = t0_ms + sec * 1_000 + ms
                side = rnd.choice(["BUY", "SELL"])
                ticks.append(Tick(trade_id, price, round(rnd.uniform(0.001, 2.0), 4), side, ts, ts))  # type: ignore[arg-type]
                trade_id += 1
        batches, i = [], 0
        while i < len(ticks):
            k = rnd.randrange(1, 9)
            batches.append(TickBatch(symbol=symbol, source=source, ticks=ticks[i : i + k]))
            i += k
        per_symbol[symbol] = batches
    merged: list[TickBatch] = []
    queues = {s: list(reversed(b)) for s, b in per_symbol.items()}
    while any(queues.values()):
        symbol = rnd.choice([s for s, q in queues.items() if q])
        merged.append(queues[symbol].pop())
    return merged


def entry_id(n: int) -> str:
    """Explicit stream id of the n-th entry (0-based) of a sequence."""
    return f"{n + 1}-0"


# --- the expected result, computed in-process -------------------------------------------------


@dataclass
class Expected:
    """What an aggregator must have written after all ``entries`` (the pure core, in one go)."""

    bars: dict[str, list[tuple[str, Bar]]]  # bar stream -> [(id, bar)]
    counts: dict[str, dict[str, int]]  # symbol -> committed quality counters
    held: dict[str, list[str]]  # tick stream -> ids of entries still pending (the open bars')
    last_trade_id: dict[str, int]  # symbol -> highest trade id in emitted bars


def expected_of(entries: Sequence[TickBatch], max_fill_gap_s: int = MAX_FILL_GAP_S) -> Expected:
    """Apply ``entries`` (ids as :func:`entry_id`) to a :class:`BarAggregator` in one process."""
    core = BarAggregator(max_fill_bars=max_fill_gap_s)
    out = core.apply([((keys.ticks(b.symbol), entry_id(n)), b) for n, b in enumerate(entries)])
    bars: dict[str, list[tuple[str, Bar]]] = {}
    for bar in out.bars:
        bars.setdefault(keys.bars(bar.symbol, bar.timeframe), []).append((f"{bar.open_time_ms}-0", bar))
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(quality.COUNTERS, 0) for s in core.symbols}
    for (name, symbol), n in out.counts.items():
        counts[symbol][name] += n
    held: dict[str, list[str]] = {}
    for stream, eid in core.held():
        held.setdefault(stream, []).append(eid)
    last_trade_id = {s: core.checkpoint(s).last_trade_id for s in core.symbols}
    return Expected(bars, counts, held, last_trade_id)


# --- writing ----------------------------------------------------------------------------------


def plain_client(url: str) -> redis.Redis:
    """A test client that never retries on its own (a retried write is the caller's decision)."""
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))


def write_chunk(client: redis.Redis, chunk: Iterable[tuple[int, TickBatch]]) -> None:
    """XADD each (n, batch) under its explicit id; an id already written is not an error."""
    pipe = client.pipeline(transaction=False)
    for n, batch in chunk:
        pipe.xadd(keys.ticks(batch.symbol), codec.encode(batch), id=entry_id(n))
    for reply in pipe.execute(raise_on_error=False):
        if isinstance(reply, Exception) and "equal or smaller" not in str(reply):
            raise reply


def write_all(url: str, entries: Sequence[TickBatch]) -> None:
    client = plain_client(url)
    numbered = list(enumerate(entries))
    for i in range(0, len(numbered), 1_000):
        write_chunk(client, numbered[i : i + 1_000])
    client.close()


class TickWriter(threading.Thread):
    """Appends ``entries`` in chunks, pausing between them, like a replay feeding the stream.

    It never writes past the number of entries :meth:`allow` granted (all, unless ``allowed`` is
    given), so a test can keep data coming across the points where it breaks things. Redis
    outages are ridden out: the chunk is sent again until Redis takes it.
    """

    def __init__(
        self, url: str, entries: Sequence[TickBatch], chunk: int = 40, pause_s: float = 0.02, allowed: int | None = None
    ) -> None:
        super().__init__(name="tick-writer", daemon=True)
        self.url = url
        self.entries = list(entries)
        self.chunk = chunk
        self.pause_s = pause_s
        self.written = 0
        self.outages = 0
        self.error: BaseException | None = None
        self._allowed = len(self.entries) if allowed is None else allowed
        self._cond = threading.Condition()
        self._halt = threading.Event()

    def allow(self, n: float) -> None:
        """Let the writer go on up to entry ``n`` (a float: that share of all entries)."""
        if isinstance(n, float):
            n = round(n * len(self.entries))
        with self._cond:
            self._allowed = max(self._allowed, min(int(n), len(self.entries)))
            self._cond.notify_all()

    def stop(self) -> None:
        self._halt.set()
        self.allow(len(self.entries))

    @property
    def finished(self) -> bool:
        return self.written >= len(self.entries)

    def run(self) -> None:
        client = plain_client(self.url)
        try:
            while self.written < len(self.entries) and not self._halt.is_set():
                with self._cond:
                    while self.written >= self._allowed and not self._halt.is_set():
                        self._cond.wait(0.1)
                    end = min(self.written + self.chunk, self._allowed)
                chunk = [(n, self.entries[n]) for n in range(self.written, end)]
                while not self._halt.is_set():
                    try:
                        write_chunk(client, chunk)
                        break
                    except (redis.ConnectionError, redis.TimeoutError):
                        self.outages += 1
                        time.sleep(0.05)
                self.written = end
                time.sleep(self.pause_s)
        except BaseException as exc:  # noqa: BLE001 - reported by the test through .error
            self.error = exc
        finally:
            client.close()

    def wait_written(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.written < n:
            assert self.error is None, f"writer failed: {self.error!r}"
            assert self.is_alive(), "writer stopped"
            assert time.monotonic() < deadline, f"writer wrote {self.written} of {n} entries in {timeout} s"
            time.sleep(0.02)

    def join_ok(self, timeout: float = 30.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"writer still running after {timeout} s ({self.written} written)"
        assert self.error is None, f"writer failed: {self.error!r}"


# --- aggregator processes ---------------------------------------------------------------------


@dataclass
class Aggregator:
    """An ``unistream aggregator`` process this test started."""

    proc: subprocess.Popen[bytes]
    consumer: str
    port: int
    log: Path
    env: dict[str, str] = field(repr=False)

    def stats(self) -> dict[str, Any]:
        code, body = probe(self.port, "/stats")
        return body if code == 200 else {}

    def owned(self) -> list[str] | None:
        """Symbols it owns (its /stats), or None when it does not answer."""
        info = self.stats().get("info")
        return list(info["owned"]) if isinstance(info, dict) else None

    def owns(self, symbols: Sequence[str]) -> bool:
        """Whether it owns exactly ``symbols`` now (its /stats)."""
        return sorted(self.owned() or []) == sorted(symbols)

    def token(self) -> str | None:
        info = self.stats().get("info")
        return info["owner_token"] if isinstance(info, dict) else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, within_s: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(within_s)

    def tail(self, n: int = 3_000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def start_aggregator(
    url: str,
    log: Path,
    consumer: str,
    *,
    owner_ttl_ms: int | None = None,
    max_fill_gap_s: int = MAX_FILL_GAP_S,
    symbols: Sequence[str] = SYMBOLS,
    extra_env: dict[str, str] | None = None,
) -> Aggregator:
    """Start ``unistream aggregator`` (output appended to ``log``); it is not waited for."""
    port = free_port()
    env = {
        **os.environ,
        "UNISTREAM_REDIS_URL": url,
        "UNISTREAM_HTTP_PORT": str(port),
        "UNISTREAM_SYMBOLS": ",".join(symbols),
        "UNISTREAM_CONSUMER_NAME": consumer,
        "UNISTREAM_MAX_FILL_GAP_S": str(max_fill_gap_s),
        **({"UNISTREAM_OWNER_TTL_MS": str(owner_ttl_ms)} if owner_ttl_ms is not None else {}),
        **(extra_env or {}),
    }
    with log.open("ab") as fh:
        fh.write(f"\n===== start {consumer} on port {port} =====\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "unistream_tools.cli", "aggregator"], env=env, stdout=fh, stderr=subprocess.STDOUT
        )
    return Aggregator(proc, consumer, port, log, env)


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    watch: Sequence[Aggregator] = (),
    interval: float = 0.02,
) -> float:
    """Poll ``predicate`` until true; returns the seconds it took. Fails (with the logs of
    ``watch``) when it times out or a watched process exits."""
    started = time.monotonic()
    while not predicate():
        for agg in watch:
            if not agg.alive():
                pytest.fail(f"{agg.consumer} exited with {agg.proc.returncode} waiting for {what}:\n{agg.tail()}")
        if time.monotonic() - started > timeout:
            logs = "\n".join(f"--- {a.consumer}:\n{a.tail()}" for a in watch)
            pytest.fail(f"{what}: not within {timeout:.0f} s\n{logs}")
        time.sleep(interval)
    return time.monotonic() - started


def wait_ready(agg: Aggregator, timeout: float = 30.0) -> float:
    return wait_until(lambda: probe(agg.port)[0] == 200, timeout, f"{agg.consumer} ready", [agg], 0.05)


def cleanup(aggs: Iterable[Aggregator]) -> None:
    for agg in aggs:
        if agg.alive():
            agg.kill()


# --- reading back -----------------------------------------------------------------------------


def bar_streams(client: redis.Redis, symbols: Sequence[str] = SYMBOLS) -> dict[str, list[tuple[str, Bar]]]:
    """Every bar stream of ``symbols``, decoded: stream -> [(entry id, bar)] (empty streams left out)."""
    out: dict[str, list[tuple[str, Bar]]] = {}
    for symbol in symbols:
        for tf in TIMEFRAMES:
            rows = []
            for eid, fields in client.xrange(keys.bars(symbol, tf)):
                bar = codec.decode(fields)
                assert isinstance(bar, Bar), f"{keys.bars(symbol, tf)} {eid!r} holds {bar!r}"
                rows.append((eid.decode(), bar))
            if rows:
                out[keys.bars(symbol, tf)] = rows
    return out


def quality_of(client: redis.Redis, symbol: str) -> dict[str, int]:
    parsed = quality.parse(client.hgetall(keys.quality(symbol)))
    return {name: parsed[name] for name in quality.COUNTERS}


def pending_ids(client: redis.Redis, stream: str) -> list[str]:
    """Ids pending in the aggregator group on ``stream``, any consumer (empty without a group)."""
    try:
        rows = client.xpending_range(stream, keys.GROUP_AGGREGATOR, min="-", max="+", count=100_000)
    except redis.ResponseError:
        return []
    return [r["message_id"].decode() for r in rows]


def caught_up(client: redis.Redis, expected: Expected, symbols: Sequence[str] = SYMBOLS) -> bool:
    """Whether the bar streams reached the expected tops and only the open bars' entries are pending."""
    for symbol in symbols:
        for tf in TIMEFRAMES:
            rows = expected.bars.get(keys.bars(symbol, tf))
            top = client.xrevrange(keys.bars(symbol, tf), count=1)
            if (top[0][0].decode() if top else None) != (rows[-1][0] if rows else None):
                return False
        stream = keys.ticks(symbol)
        if sorted(pending_ids(client, stream)) != sorted(expected.held.get(stream, [])):
            return False
    return True


def assert_sound(streams: dict[str, list[tuple[str, Bar]]], max_fill_gap_s: int = MAX_FILL_GAP_S) -> None:
    """Ids are ``<open_time_ms>-0`` and rise; 1s bars are consecutive except over skipped runs."""
    for stream, rows in streams.items():
        symbol, tf = keys.parse_bars(stream) or ("?", "?")
        opens = [bar.open_time_ms for _, bar in rows]
        assert [eid for eid, _ in rows] == [f"{o}-0" for o in opens], f"{stream}: ids are not the open times"
        assert len(set(opens)) == len(opens), f"{stream}: a bar interval appears twice"
        assert opens == sorted(opens), f"{stream}: bars out of order"
        assert all(bar.symbol == symbol and bar.timeframe == tf for _, bar in rows), stream
        assert all(o % TIMEFRAME_MS[tf] == 0 for o in opens), f"{stream}: an unaligned bar"
        if tf == "1s":
            steps = [b - a for a, b in itertools.pairwise(opens)]
            holes = [(a, s) for a, s in zip(opens, steps) if s != 1_000]
            assert all(s > (max_fill_gap_s + 1) * 1_000 for _, s in holes), f"{stream}: missing 1s bars after {holes}"


Streams = dict[str, list[tuple[str, Bar]]]


@dataclass
class Reference:
    """Bar streams and quality counters of one uninterrupted aggregator process."""

    streams: Streams
    counts: dict[str, dict[str, int]]


def reference_run(url: str, entries: Sequence[TickBatch], expected: Expected, log: Path) -> Reference:
    """Write ``entries``, let one aggregator process them without interruption, read the result.

    It must agree with the pure core (``expected``): the reference is itself checked.
    """
    write_all(url, entries)
    client = plain_client(url)
    agg = start_aggregator(url, log, "aggregator-reference")
    try:
        wait_until(lambda: caught_up(client, expected), 60, "reference run caught up", [agg])
        ref = Reference(bar_streams(client), {symbol: quality_of(client, symbol) for symbol in expected.counts})
        assert agg.terminate() == 0, agg.tail()
    finally:
        cleanup([agg])
        client.close()
    assert ref.streams == expected.bars, "the uninterrupted process disagrees with the core"
    assert ref.counts == expected.counts
    return ref


def assert_same_bars(
    client: redis.Redis, reference: Reference, symbols: Sequence[str] = SYMBOLS, log: Path | None = None
) -> Streams:
    """The bar streams equal the reference's entry for entry (ids and decoded bars); returns them.

    A failure shows the end of ``log`` (the aggregators' output), to tell what happened when."""
    tail = f"\n--- end of {log}:\n{log.read_text(errors='replace')[-30_000:]}" if log and log.exists() else ""
    got = bar_streams(client, symbols)
    assert_sound(got)
    assert set(got) == {keys.bars(s, tf) for s in symbols for tf in TIMEFRAMES}, "a timeframe has no bars"
    assert set(got) == set(reference.streams)
    for stream, rows in reference.streams.items():
        for n, ((eid, bar), (ref_eid, ref_bar)) in enumerate(zip(got[stream], rows)):
            assert (eid, bar) == (ref_eid, ref_bar), (
                f"{stream}: entry {n} differs from the uninterrupted run:\n got {eid} {bar}\nwant {ref_eid} {ref_bar}"
                + tail
            )
        assert len(got[stream]) == len(rows), f"{stream}: {len(got[stream])} bars, the uninterrupted run {len(rows)}"
    return got


def assert_counts_exact(
    client: redis.Redis,
    reference: Reference,
    entries: Sequence[TickBatch],
    expected: Expected,
    symbols: Sequence[str] = SYMBOLS,
) -> dict[str, dict[str, int]]:
    """Quality counters as exact as in the uninterrupted run: every trade counted applied once.

    ``entries`` are what the run was given, ``expected`` their end state; ``ticks_applied`` is
    counted with the 1s bars, so it equals the trades in them.
    """
    counts = {symbol: quality_of(client, symbol) for symbol in symbols}
    for symbol in symbols:
        c, r = counts[symbol], reference.counts[symbol]
        in_bars = sum(b.trade_count for _, b in reference.streams[keys.bars(symbol, "1s")])
        assert r["ticks_applied"] == in_bars  # the reference itself
        assert c["ticks_late"] == 0, (symbol, c)
        for name in ("bars_1s", "bars_filled", "intervals_skipped", "bars_incomplete"):
            assert c[name] == r[name], (symbol, name, c, r)
        assert c["ticks_applied"] == r["ticks_applied"], (
            f"{symbol}: ticks_applied {c['ticks_applied']}, the uninterrupted run {r['ticks_applied']} "
            f"(ticks_already_applied {c['ticks_already_applied']} vs {r['ticks_already_applied']})"
        )
    return counts


def ticks_in(entries: Iterable[TickBatch], symbol: str) -> int:
    return sum(len(b.ticks) for b in entries if b.symbol == symbol)
