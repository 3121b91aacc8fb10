"""``unistream evaluate``: walk-forward evaluation of the deployed pipeline on Binance archive files (no Redis).

    unistream evaluate --path ETHUSDT-trades-2025-02-19.zip BTCUSDT-trades-2025-02-19.zip [FILE ...]
        [--symbol SYMBOL] [--seeds 3] [--folds 3] [--fee 0.001] [--slippage-bps 2] [--latency-ms 1000]
        [--trials 1] [--hidden 256,256] [--updates-per-packet 4] [--stride 1] [--window-bars 300]
        [--threads 1] [--json] [--report DIR]

**Data, as deployed.** Each file's symbol is read from its name as data.binance.vision names them
(``--symbol`` for files named otherwise). Each symbol's files are read as the ingest replay reads
them (:class:`~unistream_ingest.replay.ReplaySource`: merged in time order, the same validation),
the symbols' trades are merged second by second in time order, go through the aggregator's core
(:class:`~unistream_aggregator.core.BarAggregator`: closed 1s/1m/1h/1d bars, empty seconds
filled) and one features engine (:class:`~unistream_features.core.FeatureEngine`) configured for
all the symbols, as the features service is: a state holds every symbol's blocks (13,448 values
for two symbols at 300 bars), its own symbol first. One packet per symbol and 1s bar. The DQN's
hyperparameters are the trainer's settings (``UNISTREAM_DQN_*``, defaults included: a 256-256
network, 4 updates per packet), one network trained on every symbol's packets in time order as
the live trainer is; ``--hidden`` and ``--updates-per-packet`` override them. The CNN is trained
as the live trainer trains it (its extrema heads, ``UNISTREAM_EXTREMA_UPDATES_PER_PACKET`` steps
per packet) and walk-forward: each block's states carry the CNN trained on the labels of the
blocks before it, as the features service's states carry the CNN the trainer last published
(the first block the seeded one; ``--no-extrema`` keeps the seeded CNN throughout). Still not
as deployed: there is no warm-up history (the windows fill from the files themselves: a few days
leave the 1h and 1d windows mostly empty, as the state's warm-up values say), and the CNN
changes at block boundaries rather than at every merge.

**Walk-forward.** The packets (every symbol's, in time order) are split into ``folds + 1``
consecutive blocks of (nearly) equal duration, cut at whole seconds (so the symbols' blocks cover
the same time) from the files' first to last trade, read before the packets are built: the
extrema heads then learn walk-forward from every 1s packet as it is built, and the states are
built once whatever ``--stride`` keeps. Fold ``i`` trains a :class:`~unistream_trainer.core.TrainerCore` on blocks ``0..i`` in
time order (each packet with its up to ``n_step`` predecessors, as the live trainer gets it,
``--updates-per-packet`` gradient steps per packet) and then paper-trades its greedy policy on
block ``i + 1`` with learning frozen: the decision at a packet sees only that packet, the position
last decided and the network trained on earlier blocks, and fills ``--latency-ms`` later at the
fee plus ``--slippage-bps`` per side, exactly as the live paper trader executes
(:class:`~unistream_trainer.paper.PaperPortfolio`: one book per symbol, equal capital); flat at
the block's start. Nothing later than
block ``i`` is ever trained on. The model of fold ``i`` is the model of fold ``i - 1`` trained on
block ``i`` more: training is deterministic for a seed (the paper trading changes nothing in the
core), so this is exactly a fresh core trained on blocks ``0..i``, at about half the cost. Each
seed (1..``--seeds``) repeats this with its own initialisation, replay sampling and exploration.

**Verdict** (:mod:`unistream_tools.verdict`), per symbol on its own prices (the descriptive table
is the paper portfolio's). The test block is the unit of replication: the
seeds share its prices, so they are averaged inside it, and intervals are over blocks. The
baselines are buy-and-hold, flat and the policy's own positions circularly shifted against the
prices (the random baseline matched in turnover and cost); the shifts' distribution is the null
the policy's net and gross (fee-free) returns are ranked in. The Sharpe ratio comes from the block
returns, with its probabilistic and deflated forms (``--trials``); a fee sweep re-costs the same
positions at 0, 2, 5 and 10 bps per side. The symbols' verdicts are one family: each symbol's
intervals and its p-value threshold are Bonferroni-corrected (95 % and 0.05 over all the
symbols: 97.5 % and 0.025 each for two) and the deflated Sharpe counts ``--trials`` x symbols
configurations. The descriptive table (pnl, sharpe, max_drawdown,
win_rate, trades_per_hour, fee_share) is averaged over seeds inside each block, intervals over
blocks.

**Cost.** Building a packet takes about 1 ms (the CNN pass); training is what costs, and at the
deployed network and update rate it dominates (``data.seconds_per_day`` in ``--json``, and the
header, give the time per day of data; ``make bench`` measures it). ``--stride k`` makes every
k-th packet of each symbol a decision point and drops the rest (one step of the DQN is then k
seconds: its rewards span k seconds and its n-step returns n x k; the chain gap limit scales
with k), which cuts memory and training time k-fold; ``--window-bars`` shrinks the states.
Memory: the kept packets (4 x state size bytes each: 54 KB for two symbols at the defaults) and
one replay buffer (2 x buffer size x state size x 4 bytes).

Exit status: 0 after the report; 2 for files that are missing or unreadable, a bad argument, or
too little data for the requested folds (each block needs :data:`MIN_BLOCK_PACKETS` packets).
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import math
import re
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch

from unistream_common import codec
from unistream_common.keys import check_symbol
from unistream_common.packets import Tick, TickBatch, TrainingDataPacket
from unistream_features.core import FeatureConfig, FeatureEngine
from unistream_model.cnn import TIMEFRAMES as CNN_TIMEFRAMES
from unistream_model.cnn import ModelRejected, MtfCnnRunner, sha256_hex
from unistream_model.layout import DEFAULT_SYMBOLS, StateLayout
from unistream_model.mtf import DEFAULT_WINDOW_BARS
from unistream_tools.report import write_report
from unistream_tools.verdict import BlockPaths, Costs, Verdict, block_paths, format_verdict, judge, verdict_json
from unistream_trainer.core import TrainerCore
from unistream_trainer.dqn import ACTION_POSITION, Hyperparameters
from unistream_trainer.extrema import DEFAULT_ORDER, ExtremaTrainer
from unistream_trainer.paper import (
    BASELINES,
    DEFAULT_LATENCY_MS,
    DEFAULT_SLIPPAGE,
    Interval,
    PaperPortfolio,
    TableRow,
    fold_rows,
    format_table,
)
from unistream_trainer.settings import TrainerSettings

CNN_SEED = 7  # the services' default seed: the features service's untrained CNN
MIN_BLOCK_PACKETS = 20  # decision points per walk-forward block, at least
LIVE_MAX_GAP_MS = 5_000  # the trainer's default chain gap limit, for stride 1
TABLE_METRICS: tuple[str, ...] = ("pnl", "sharpe", "max_drawdown", "win_rate", "trades_per_hour", "fee_share")
CONFIDENCE = 0.95

Progress = Callable[[str], None]


class EvaluationError(Exception):
    """Input the evaluation cannot use (missing or unreadable files, too little data): exit 2 with the message."""


def _quiet(_: str) -> None:
    pass


# --- archive files to training packets ----------------------------------------------------------


@dataclass
class PacketSource:
    """What :func:`packets_from_archives` read and built."""

    packets: list[TrainingDataPacket]  # the kept packets (every ``stride``-th of each symbol), time order
    built: int  # packets the features engine built (one per 1s bar)
    trades: int  # trades accepted by the replay's validator
    rejected: dict[str, int]  # trades the validator rejected, by reason
    rows: dict[str, int]  # rows read per file
    malformed: dict[str, int]  # malformed rows per file
    bars_1s: int
    state_dim: int
    seconds: float  # wall time of the build
    symbols: tuple[str, ...] = ()  # the engine's symbols, the deployed order
    layouts: dict[str, StateLayout] = field(default_factory=dict)  # the engine's state layout per symbol


def _check_files(paths: Sequence[str | Path]) -> None:
    from unistream_ingest.archive import read_archive_columns

    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise EvaluationError(f"file(s) not found: {', '.join(missing)}")
    for p in paths:  # one block of each: a file that cannot be opened or decoded fails here, by name
        try:
            next(read_archive_columns(p), None)
        except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise EvaluationError(f"{p}: unreadable ({type(exc).__name__}: {exc})") from exc


_ARCHIVE_NAME = re.compile(r"^([A-Z0-9]{2,20})-(?:trades|aggTrades)-")


def files_by_symbol(paths: Sequence[str | Path], symbol: str | None = None) -> dict[str, list[str | Path]]:
    """The files of each symbol, in the deployed symbol order (the services' default symbols first).

    A file's symbol is read from its name as data.binance.vision names them
    (``ETHUSDT-trades-2025-02-19.zip``, ``BTCUSDT-aggTrades-...``); ``symbol`` gives the symbol of
    every file instead (files named otherwise), and refuses a file whose name says another one.
    """
    out: dict[str, list[str | Path]] = {}
    for path in paths:
        m = _ARCHIVE_NAME.match(Path(path).name)
        named = m.group(1) if m else None
        if symbol is not None:
            if named is not None and named != symbol:
                raise EvaluationError(f"{Path(path).name} holds {named} by its name, not --symbol {symbol}")
            named = symbol
        if named is None:
            raise EvaluationError(
                f"cannot tell the symbol of {Path(path).name} from its name (SYMBOL-trades-DATE.zip); pass --symbol"
            )
        try:
            check_symbol(named)
        except ValueError as exc:
            raise EvaluationError(f"{Path(path).name}: {exc}") from None
        out.setdefault(named, []).append(path)
    order = {s: k for k, s in enumerate(DEFAULT_SYMBOLS)}
    return {s: out[s] for s in sorted(out, key=lambda s: (order.get(s, len(order)), s))}


def _seconds_of(source: Any, symbol: str, rank: int) -> Iterator[tuple[int, int, str, list[Tick]]]:
    """(second, ``rank``, ``symbol``, its trades in that second) of one replay, time order: merged
    on (second, rank), the symbols' seconds interleave in time, in symbol order within a second."""
    pending: list[Tick] = []
    second = -1
    while not source.done:
        # The validator compares trade times with the wall clock (future_ts): replay time is now.
        ticks = source.advance(int(time.time() * 1000)).get(symbol)
        for t in ticks or ():
            sec = t.ts_event_ms // 1_000
            if sec != second and pending:
                yield second, rank, symbol, pending
                pending = []
            second = sec
            pending.append(t)
    if pending:
        yield second, rank, symbol, pending


@dataclass
class BuildReport:
    """What :func:`build_packets` read, filled as it goes (complete once it is exhausted)."""

    built: int = 0  # packets the features engine built (one per symbol and 1s bar)
    bars_1s: int = 0
    trades: int = 0  # trades accepted by the replays' validators
    rejected: dict[str, int] = field(default_factory=dict)  # trades the validators rejected, by reason
    rows: dict[str, int] = field(default_factory=dict)  # rows read per file
    malformed: dict[str, int] = field(default_factory=dict)  # malformed rows per file
    layouts: dict[str, StateLayout] = field(default_factory=dict)  # the engine's state layout per symbol


def build_packets(
    files: Mapping[str, Sequence[str | Path]],
    window_bars: int = DEFAULT_WINDOW_BARS,
    cnn_seed: int = CNN_SEED,
    report: BuildReport | None = None,
    progress: Progress = _quiet,
) -> Iterator[TrainingDataPacket]:
    """Every training packet of archive files, time order, as the deployed pipeline builds them:
    each symbol's replay (``files``: symbol -> its files) -> the aggregator's core -> one features
    engine configured for all the symbols (their states hold every symbol's blocks, the state's
    own symbol first), the symbols' trades merged second by second in time order.

    Raises :class:`EvaluationError` for missing or unreadable files and, once exhausted, for a
    symbol without an accepted trade.
    """
    try:  # the replay and the aggregator's core: only this step needs those packages
        from unistream_aggregator.core import BarAggregator
        from unistream_ingest.replay import ReplaySource
    except ModuleNotFoundError as exc:
        raise EvaluationError(
            f"{exc.name} is not installed: evaluate reads the files with unistream-ingest and "
            "unistream-aggregator (pip install -e services/ingest services/aggregator)"
        ) from exc
    symbols = tuple(files)
    if not symbols:
        raise EvaluationError("no archive files given")
    _check_files([p for paths in files.values() for p in paths])
    report = BuildReport() if report is None else report
    wall_ms = int(time.time() * 1000)
    sources = {s: ReplaySource(list(paths), s, None, wall_ms) for s, paths in files.items()}
    aggregator = BarAggregator()
    engine = FeatureEngine(
        FeatureConfig(symbols=symbols, window_bars=window_bars, bar_capacity=max(1_000, window_bars + 1)), cnn_seed,
        wall_ms,
    )  # fmt: skip
    report.layouts = dict(engine.layouts)
    entries = 0
    next_report = 50_000
    streams = [_seconds_of(src, symbol, k) for k, (symbol, src) in enumerate(sources.items())]
    try:
        for _sec, _k, symbol, ticks in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
            now_ms = int(time.time() * 1000)
            batch = TickBatch(symbol=symbol, source="REPLAY", ticks=ticks)
            entries += 1
            out = aggregator.apply([(("evaluate", f"{entries}-0"), batch)])
            engine.on_ticks(batch)
            for bar in out.bars:
                report.bars_1s += bar.timeframe == "1s"
                engine.on_bar(bar, now_ms)
            for packet in engine.emit(now_ms):
                report.built += 1
                yield packet
            if report.built >= next_report:
                released = sum(s.released for s in sources.values())
                progress(f"{report.built:,} packets built from {released:,} trades")
                next_report += 50_000
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:  # a file damaged after its first block
        raise EvaluationError(f"the archive files could not be read: {type(exc).__name__}: {exc}") from exc
    report.rows = {path: r.rows for src in sources.values() for path, r in src.reports.items()}
    report.malformed = {path: r.malformed for src in sources.values() for path, r in src.reports.items()}
    empty = [path for path, n in report.rows.items() if n == 0]
    if empty:
        raise EvaluationError(f"no trade rows could be read from: {', '.join(empty)}")
    for symbol, src in sources.items():
        validator = src.validator.stats()
        if not validator["accepted"]:
            raise EvaluationError(f"no trade of the files was accepted as {symbol}: rejected {validator['rejected']}")
        report.trades += int(validator["accepted"])
        for reason, n in validator["rejected"].items():
            report.rejected[reason] = report.rejected.get(reason, 0) + int(n)


def in_time_order(packets: Iterable[TrainingDataPacket], slack_ms: int = 60_000) -> Iterator[TrainingDataPacket]:
    """``packets`` put in time order, streaming: :func:`build_packets` yields one symbol's packets a
    few seconds before another's of the same time at most, so a packet is held until one
    ``slack_ms`` newer has come (ties: in arrival order, one symbol's packets never reorder)."""
    held: list[tuple[int, int, TrainingDataPacket]] = []
    for n, p in enumerate(packets):
        heapq.heappush(held, (p.ts_event_ms, n, p))
        while held[0][0] < p.ts_event_ms - slack_ms:
            yield heapq.heappop(held)[2]
    while held:
        yield heapq.heappop(held)[2]


def packets_from_archives(
    files: Mapping[str, Sequence[str | Path]],
    window_bars: int = DEFAULT_WINDOW_BARS,
    stride: int = 1,
    cnn_seed: int = CNN_SEED,
    progress: Progress = _quiet,
    on_every: Callable[[TrainingDataPacket], None] | None = None,
) -> PacketSource:
    """The packets of :func:`build_packets`, every ``stride``-th of each symbol kept (its first
    included), in time order (the symbols in ``files``' order within a second).

    ``on_every`` sees every packet built, in time order (:func:`in_time_order`), the ones not kept
    too: the extrema heads learn from every 1s packet while the states are built once.
    """
    if stride < 1:
        raise ValueError(f"stride must be at least 1, was {stride}")
    started = time.perf_counter()
    report = BuildReport()
    seen: dict[str, int] = {}
    kept: list[TrainingDataPacket] = []
    for packet in in_time_order(build_packets(files, window_bars, cnn_seed, report, progress)):
        if on_every is not None:
            on_every(packet)
        n = seen.get(packet.symbol, 0)
        if n % stride == 0:
            kept.append(packet)
        seen[packet.symbol] = n + 1
    # A symbol's bar closes at its own next trade, so one symbol's packets may come a few seconds
    # before another's of the same time (live too); offline they are put in time order.
    rank = {s: k for k, s in enumerate(files)}
    kept.sort(key=lambda p: (p.ts_event_ms, rank[p.symbol]))
    return PacketSource(
        packets=kept,
        built=report.built,
        trades=report.trades,
        rejected=report.rejected,
        rows=report.rows,
        malformed=report.malformed,
        bars_1s=report.bars_1s,
        state_dim=kept[0].state_dim if kept else 0,
        seconds=time.perf_counter() - started,
        symbols=tuple(files),
        layouts=report.layouts,
    )


# --- walk-forward ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldResult:
    """One seed's policy on one test block (every symbol, one paper portfolio as the live trader's)."""

    seed: int
    fold: int  # trained on blocks 0..fold, tested on block fold + 1
    train_packets: int
    test_packets: int
    test_from_ms: int
    test_to_ms: int
    updates: int  # gradient steps taken before the test
    metrics: dict[str, float] = field(default_factory=dict)  # PaperPortfolio.metrics() of the test block
    targets: dict[str, list[float]] = field(default_factory=dict)  # per symbol: the position decided at each packet


def archive_span_ms(files: Mapping[str, Sequence[str | Path]]) -> tuple[int, int]:
    """The first and last trade time (ms) of all the files, read before the packets are built."""
    from unistream_ingest.archive import read_columns_in_time_order

    _check_files([p for paths in files.values() for p in paths])
    first, last = math.inf, -math.inf
    try:
        for paths in files.values():
            for block in read_columns_in_time_order(list(paths)):
                if block.ts_event_ms:
                    first, last = min(first, block.ts_event_ms[0]), max(last, block.ts_event_ms[-1])
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise EvaluationError(f"the archive files could not be read: {type(exc).__name__}: {exc}") from exc
    if first > last:
        raise EvaluationError("no trade rows could be read from the files")
    return int(first), int(last)


def time_block_starts(first_ms: int, last_ms: int, folds: int) -> list[int]:
    """The start (ms, a whole second) of each of the ``folds`` test blocks when the seconds from
    ``first_ms`` to ``last_ms`` are cut into ``folds + 1`` blocks of (nearly) equal duration."""
    if folds < 1:
        raise ValueError(f"folds must be at least 1, was {folds}")
    first_s, seconds = first_ms // 1_000, last_ms // 1_000 - first_ms // 1_000 + 1
    return [(first_s + round(k * seconds / (folds + 1))) * 1_000 for k in range(1, folds + 1)]


def block_bounds(n: int, folds: int, min_block: int = MIN_BLOCK_PACKETS) -> list[tuple[int, int]]:
    """``folds + 1`` consecutive ``[start, end)`` index ranges covering ``n`` packets, lengths differing by at most 1.

    Raises :class:`EvaluationError` when a block would hold fewer than ``min_block`` packets.
    """
    if folds < 1:
        raise ValueError(f"folds must be at least 1, was {folds}")
    blocks = folds + 1
    if n < blocks * min_block:
        raise EvaluationError(
            f"too little data: {n} decision points make {blocks} blocks ({folds} folds + 1) of "
            f"{n // blocks}; each block needs at least {min_block} (use longer or more files, fewer "
            f"--folds or a smaller --stride)"
        )
    edges = [round(k * n / blocks) for k in range(blocks + 1)]
    return [(edges[k], edges[k + 1]) for k in range(blocks)]


def _check_sequence(packets: Sequence[TrainingDataPacket]) -> None:
    """Each symbol's packets in strictly increasing time order, the symbols interleaved by time."""
    last: dict[str, int] = {}
    previous = -1
    for p in packets:
        if p.ts_event_ms <= last.get(p.symbol, -1):
            raise ValueError(f"{p.symbol}: packets are not in strictly increasing time order at {p.ts_event_ms}")
        if p.ts_event_ms < previous:
            raise ValueError(f"packets are not in time order at {p.ts_event_ms} ({p.symbol})")
        last[p.symbol] = previous = p.ts_event_ms


def _predecessors(packets: Sequence[TrainingDataPacket], n: int) -> list[list[int]]:
    """For each packet, the indices of up to ``n`` earlier packets of its symbol, oldest first."""
    recent: dict[str, list[int]] = {}
    out = []
    for k, p in enumerate(packets):
        mine = recent.setdefault(p.symbol, [])
        out.append(mine[-n:] if n else [])
        mine.append(k)
        if len(mine) > 2 * n + 1:
            del mine[: len(mine) - n]
    return out


def train_on(core: TrainerCore, packets: Sequence[TrainingDataPacket], start: int, end: int) -> None:
    """Feed ``packets[start:end]`` to ``core`` in order, each with its symbol's ``n_step + fill_lag``
    predecessors (earlier packets only), as the live trainer gets them."""
    n = core.hp.n_step + core.hp.fill_lag
    before = _predecessors(packets[:end], n)
    for k in range(start, end):
        core.process([packets[k]], [[packets[i] for i in before[k]]])


def paper_trade(
    core: TrainerCore,
    packets: Sequence[TrainingDataPacket],
    costs: Costs,
    seed: int,
    latency_ms: int = DEFAULT_LATENCY_MS,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The greedy policy of ``core`` on ``packets`` (time order, any symbols), flat at the start: the
    paper/* metrics of one portfolio over the symbols, executed as the live paper trader executes
    (latency, fee and slippage), and per symbol the position decided at each of its packets.

    The decision at a packet uses that packet and its symbol's position last decided, nothing
    later; the core is not changed (learning is frozen on a test block).
    """
    book = PaperPortfolio(fee=costs.fee, seed=seed, latency_ms=latency_ms, slippage=costs.slippage)
    positions: dict[str, int] = {}
    targets: dict[str, list[float]] = {}
    for p in packets:
        action, _ = core.greedy_action(p, positions.get(p.symbol, 0))
        positions[p.symbol] = ACTION_POSITION[action]
        targets.setdefault(p.symbol, []).append(float(positions[p.symbol]))
        book.step(p.symbol, p.ts_event_ms, p.price, float(positions[p.symbol]))
    return book.metrics(), targets


def walk_forward_bounds(
    packets: Sequence[TrainingDataPacket],
    folds: int,
    min_block: int = MIN_BLOCK_PACKETS,
    starts_ms: Sequence[int] | None = None,
) -> list[tuple[int, int]]:
    """The ``folds + 1`` blocks of :func:`walk_forward` as ``[start, end)`` indices into ``packets``:
    nearly equal in packets, or, with ``starts_ms`` (the test blocks' first times, ascending:
    :func:`time_block_starts`), cut at those times; never splitting a second (the symbols' packets
    of one second go to one block), each holding at least ``min_block`` packets of every symbol
    (else :class:`EvaluationError`)."""
    _check_sequence(packets)
    symbols = sorted({p.symbol for p in packets})
    if starts_ms is not None:
        if len(starts_ms) != folds:
            raise ValueError(f"{len(starts_ms)} test block starts for {folds} folds")
        times = [p.ts_event_ms for p in packets]
        edges = [bisect.bisect_left(times, t) for t in starts_ms]
    else:
        bounds = block_bounds(len(packets), folds, min_block * len(symbols))
        edges = [a for a, _ in bounds[1:]]
    for k, e in enumerate(edges):
        while 0 < e < len(packets) and packets[e].ts_event_ms == packets[e - 1].ts_event_ms:
            e += 1
        edges[k] = e
    cuts = [0, *edges, len(packets)]
    bounds = [(cuts[k], cuts[k + 1]) for k in range(folds + 1)]
    for k, (a, b) in enumerate(bounds):
        counts = {s: sum(1 for p in packets[a:b] if p.symbol == s) for s in symbols}
        if min(counts.values()) < min_block:
            raise EvaluationError(
                f"too little data: block {k + 1} holds {counts} decision points; each symbol needs "
                f"{min_block} in every block (use longer files, fewer --folds or a smaller --stride)"
            )
    return bounds


def extrema_order(window_bars: int) -> dict[str, int]:
    """The extrema labels' order k per timeframe: the live trainer's 5, less where a window is too
    short for the 2k + 1 bars a label needs."""
    return {tf: min(DEFAULT_ORDER[tf], (window_bars - 1) // 2) for tf in DEFAULT_ORDER}


class ExtremaWalkForward:
    """The CNN's extrema heads, walk-forward, fed one packet at a time (:meth:`observe`): per test
    block, the metrics of :class:`~unistream_trainer.extrema.ExtremaTrainer` on that block's labels
    alone, scored by the model trained on every label known before the block began, learning
    frozen inside it.

    Packets: every packet (all symbols, time order; the labels need consecutive 1s packets, so not
    a strided subset); ``test_starts_ms``: the first time of each test block, ascending. The first
    block is trained on as the live trainer trains (``updates_per_packet`` steps per packet,
    interleaved); a test block's labels are scored first and trained on once it ends, at the same
    rate, before the next block is scored. Only bars that close inside the block are scored: one
    closing just before it is labelled inside it, but its neighbours' labels, known before the
    block, were trained on (an embargo of k bars). :attr:`published` receives, per test block, the
    CNN that scored it as the trainer publishes it (safetensors bytes): see :func:`with_trained_cnn`.
    """

    def __init__(
        self,
        test_starts_ms: Sequence[int],
        window_bars: int = DEFAULT_WINDOW_BARS,
        updates_per_packet: float = 0.2,
        seed: int = CNN_SEED,
    ) -> None:
        self.trainer = ExtremaTrainer(
            window_bars=window_bars, order=extrema_order(window_bars), seed=seed, buffer_size=2_000,
            score_window=10**7,
        )  # fmt: skip
        self.starts = list(test_starts_ms)
        self.updates_per_packet = updates_per_packet
        self.published: list[bytes] = []
        self.blocks: list[dict[str, float]] = []
        self.seconds = 0.0  # time spent learning and scoring
        self._block = 0
        self._deferred = 0.0  # steps owed for the test block being scored

    def _train(self, steps: float) -> None:
        self.trainer.train_owed(steps)

    def observe(self, p: TrainingDataPacket) -> None:
        started = time.perf_counter()
        while self._block < len(self.starts) and p.ts_event_ms >= self.starts[self._block]:
            if self._block:
                self.blocks.append(self.trainer.metrics())
                self._train(self._deferred)
                self._deferred = 0.0
            self.trainer.reset_scores(from_ms=self.starts[self._block])
            self.published.append(self.trainer.publish_bytes())
            self._block += 1
        self.trainer.observe(p)
        if self._block == 0:
            self._train(self.updates_per_packet)
        else:
            self._deferred += self.updates_per_packet
        self.seconds += time.perf_counter() - started

    def finish(self) -> list[dict[str, float]]:
        """The test blocks' metrics, the last one's included (call once, after the last packet)."""
        if self._block:
            self.blocks.append(self.trainer.metrics())
        return self.blocks


def extrema_walk_forward(
    packets: Iterable[TrainingDataPacket],
    test_starts_ms: Sequence[int],
    window_bars: int = DEFAULT_WINDOW_BARS,
    updates_per_packet: float = 0.2,
    seed: int = CNN_SEED,
    published: list[bytes] | None = None,
) -> list[dict[str, float]]:
    """:class:`ExtremaWalkForward` over ``packets``; ``published`` (when given) receives the CNN
    that scored each test block."""
    walk = ExtremaWalkForward(test_starts_ms, window_bars, updates_per_packet, seed)
    for p in packets:
        walk.observe(p)
    if published is not None:
        published.extend(walk.published)
    return walk.finish()


def with_trained_cnn(
    packets: Sequence[TrainingDataPacket],
    test_starts_ms: Sequence[int],
    published: Sequence[bytes],
    layouts: Mapping[str, StateLayout],
    window_bars: int = DEFAULT_WINDOW_BARS,
    log_rejected: Progress = _quiet,
) -> list[TrainingDataPacket]:
    """``packets`` with the CNN's blocks of their states (every symbol's branch features, hidden
    layer and predictions) computed as the live features service would have: by the CNN the
    trainer had trained when the packet was built. Block ``b >= 1`` (from ``test_starts_ms[b - 1]``
    on) gets ``published[b - 1]``, trained on the labels of the blocks before it; the first block
    keeps the seeded initialisation, as a fresh deployment does. The windows, microstructure and
    the rest of each state are left as they are; ``layouts`` (per symbol, the engine's) say where
    each block sits.
    """
    runner = MtfCnnRunner(CNN_SEED, 0, window_bars=window_bars)
    out: list[TrainingDataPacket] = []
    current = 0
    for p in packets:
        block = bisect.bisect_right(test_starts_ms, p.ts_event_ms)
        if block == 0:
            out.append(p)
            continue
        if block != current:
            data = published[block - 1]
            try:
                runner.load(data, sha256_hex(data), f"evaluate-block-{block}", 0, 0)
            except ModelRejected as exc:  # the features service keeps the model it has, and so does this
                log_rejected(f"block {block + 1}: the trained CNN was rejected ({exc}); its states keep the last one")
            current = block
        layout = layouts[p.symbol]
        if p.state_dim != layout.dim or p.layout_version != layout.tag:
            raise ValueError(f"{p.symbol} at {p.ts_event_ms}: the packet's layout is not the engine's")
        state = codec.f32_from_bytes(p.state).copy()
        symbols = layout.symbols
        windows = np.stack(
            [
                np.stack([state[layout.slice(f"{s}.window.{tf}")].reshape(-1, window_bars) for tf in CNN_TIMEFRAMES])
                for s in symbols
            ]
        )
        version, branch, hidden, preds = runner.infer_with_version(windows)
        for k, s in enumerate(symbols):
            state[layout.slice(f"{s}.cnn.branch")] = branch[k]
            state[layout.slice(f"{s}.cnn.hidden")] = hidden[k]
            state[layout.slice(f"{s}.cnn.predictions")] = preds[k]
        own = symbols.index(p.symbol)
        out.append(
            msgspec.structs.replace(
                p,
                state=codec.f32_to_bytes(state),
                cnn_features=codec.f32_to_bytes(hidden[own]),
                cnn_predictions=codec.f32_to_bytes(preds[own]),
                model_version=version,
                cnn_state="LOADED",
            )
        )
    return out


def walk_forward(
    packets: Sequence[TrainingDataPacket],
    folds: int,
    seeds: Sequence[int],
    hp: Hyperparameters,
    max_gap_ms: int = LIVE_MAX_GAP_MS,
    min_block: int = MIN_BLOCK_PACKETS,
    progress: Progress = _quiet,
    slippage: float = DEFAULT_SLIPPAGE,
    latency_ms: int = DEFAULT_LATENCY_MS,
    starts_ms: Sequence[int] | None = None,
) -> list[FoldResult]:
    """Walk-forward runs (module docstring): for each seed and fold, train on blocks 0..fold, trade block fold + 1.

    ``hp`` is the template of every run's hyperparameters (its ``seed`` is replaced by each of
    ``seeds``; its ``fee`` is also the paper trading's, beside ``slippage``). ``packets``: time
    order, each symbol's strictly increasing; blocks are cut on this sequence, so with the
    symbols' packets a second apart they share their time ranges, and every block must hold
    ``min_block`` packets of each symbol. Results come seed-major, folds in order.
    """
    costs = Costs(fee=hp.fee, slippage=slippage)
    bounds = walk_forward_bounds(packets, folds, min_block, starts_ms)
    results: list[FoldResult] = []
    for seed in seeds:
        core = TrainerCore(replace(hp, seed=seed), max_gap_ms=max_gap_ms)
        for fold in range(folds):
            start, end = bounds[fold]
            train_on(core, packets, start, end)  # blocks 0..fold-1 were trained on by the folds before
            t0, t1 = bounds[fold + 1]
            test = packets[t0:t1]
            metrics, targets = paper_trade(core, test, costs, seed=1_000 * seed + fold, latency_ms=latency_ms)
            results.append(
                FoldResult(
                    seed=seed,
                    fold=fold,
                    train_packets=end,
                    test_packets=len(test),
                    test_from_ms=test[0].ts_event_ms,
                    test_to_ms=test[-1].ts_event_ms,
                    updates=core.updates,
                    metrics=metrics,
                    targets=targets,
                )
            )
            progress(
                f"seed {seed} fold {fold}: trained on {end:,} packets ({core.updates:,} updates), "
                f"pnl {metrics['paper/pnl']:+.4f} on {len(test):,}"
            )
    return results


# --- summary --------------------------------------------------------------------------------------


def _only_symbol(results: Sequence[FoldResult]) -> str:
    symbols = {s for r in results for s in r.targets}
    if len(symbols) != 1:
        raise ValueError(f"name the symbol: the results hold {sorted(symbols)}")
    return symbols.pop()


def walk_forward_blocks(
    packets: Sequence[TrainingDataPacket],
    results: Sequence[FoldResult],
    latency_ms: int,
    symbol: str | None = None,
) -> list[BlockPaths]:
    """One :class:`~unistream_tools.verdict.BlockPaths` per test block of ``symbol`` (None: the only
    one): its prices and every seed's decisions."""
    symbol = _only_symbol(results) if symbol is None else symbol
    by_fold: dict[int, list[FoldResult]] = {}
    for r in results:
        by_fold.setdefault(r.fold, []).append(r)
    first = {p.ts_event_ms: k for k, p in reversed(list(enumerate(packets)))}
    blocks = []
    for fold in sorted(by_fold):
        runs = by_fold[fold]
        start = first[runs[0].test_from_ms]  # blocks never split a second (see walk_forward)
        block = [p for p in packets[start : start + runs[0].test_packets] if p.symbol == symbol]
        blocks.append(
            block_paths(
                [p.ts_event_ms for p in block],
                [p.price for p in block],
                {r.seed: r.targets[symbol] for r in runs},
                latency_ms,
            )
        )
    return blocks


def summarize(
    results: Sequence[FoldResult],
    packets: Sequence[TrainingDataPacket],
    costs: Costs,
    latency_ms: int = DEFAULT_LATENCY_MS,
    trials: int = 1,
    metrics: Sequence[str] = TABLE_METRICS,
    confidence: float = CONFIDENCE,
    blocks: Sequence[BlockPaths] | None = None,
    symbol: str | None = None,
    family: int = 1,
) -> tuple[list[TableRow], Verdict]:
    """The descriptive table of the paper portfolio (each metric averaged over seeds inside a
    block, intervals over blocks) and the :class:`~unistream_tools.verdict.Verdict` on ``symbol``'s
    test blocks (None: the only symbol; ``blocks``: its :func:`walk_forward_blocks`, when the
    caller has them already; ``family``: the symbols judged together, see
    :func:`~unistream_tools.verdict.judge`)."""
    by_fold: dict[int, list[dict[str, float]]] = {}
    for r in results:
        by_fold.setdefault(r.fold, []).append(r.metrics)
    per_block = [{k: float(np.mean([m[k] for m in runs])) for k in runs[0]} for _, runs in sorted(by_fold.items())]
    rows = fold_rows(per_block, metrics, BASELINES, confidence)
    if blocks is None:
        blocks = walk_forward_blocks(packets, results, latency_ms, symbol)
    verdict = judge(blocks, costs, latency_ms, trials=trials, confidence=confidence, family=family)
    return rows, verdict


def extrema_summary(blocks: Sequence[Mapping[str, float]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per timeframe and class (top, bottom), over the test blocks that have positives: the mean
    PR-AUC, base rate (a random classifier's PR-AUC) and past rule's PR-AUC, how many blocks
    scored above the past rule, and the labels scored."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for tf in DEFAULT_ORDER:
        for name in ("top", "bottom"):
            rows = [b for b in blocks if f"extrema/pr_auc_{name}_{tf}" in b]
            if not rows:
                continue
            pr = [b[f"extrema/pr_auc_{name}_{tf}"] for b in rows]
            past = [b[f"extrema/past_rule_{name}_{tf}"] for b in rows]
            out.setdefault(tf, {})[name] = {
                "pr_auc": float(np.mean(pr)),
                "base_rate": float(np.mean([b[f"extrema/baseline_{name}_{tf}"] for b in rows])),
                "past_rule": float(np.mean(past)),
                "blocks": len(rows),
                "blocks_above_past_rule": sum(a > b for a, b in zip(pr, past, strict=True)),
                "labels": float(sum(b.get(f"extrema/scored_{tf}", 0.0) for b in rows)),
            }
    return out


def format_extrema(summary: Mapping[str, Mapping[str, Mapping[str, float]]], order: Mapping[str, int]) -> str:
    """The extrema heads' table (see :func:`extrema_summary`)."""
    if not summary:
        return "Extrema heads of the CNN: no test block had a labelled extremum (too little data per timeframe)."
    lines = [
        (
            "Extrema heads of the CNN on the test blocks (scored by the model trained on the labels before each "
            "block, frozen in it; means over blocks; the past rule knows only that a bar closed at the extreme of "
            "the k before it: an edge on the future is PR-AUC above it):"
        ),
        "",
        "| timeframe | k | class | PR-AUC | base rate | past rule | blocks above the past rule | labels |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for tf, classes in summary.items():
        for name, m in classes.items():
            lines.append(
                f"| {tf} | {order[tf]} | {name} | {m['pr_auc']:.3f} | {m['base_rate']:.3f} | {m['past_rule']:.3f} "
                f"| {int(m['blocks_above_past_rule'])} of {int(m['blocks'])} | {int(m['labels']):,} |"
            )
    return "\n".join(lines)


def _interval_json(iv: Interval) -> dict[str, float | int | None]:
    def num(v: float) -> float | None:
        return v if math.isfinite(v) else None  # JSON has no infinity: one run has no interval

    return {"mean": iv.value, "low": num(iv.low), "high": num(iv.high), "n": iv.n}


def format_report(rows: Sequence[TableRow], verdicts: Mapping[str, Verdict], header: str, extrema: str = "") -> str:
    """The header, the paper portfolio's descriptive table (per block, seeds averaged), the extrema
    heads' table (``extrema``, when there is one) and each symbol's verdict (its last line the
    conclusion)."""
    lines = [
        header,
        "",
        (
            f"Descriptive, the paper portfolio over {', '.join(verdicts)}, per test block (seeds averaged in each; "
            f"{100 * CONFIDENCE:g}% CI over blocks):"
        ),
        "",
        format_table(rows, confidence=CONFIDENCE),
    ]
    if "sharpe" not in {r.metric for r in rows}:
        lines.append(
            "(no sharpe row: the paper trader's Sharpe needs 3 complete hours in a block; see the Sharpe of the "
            "block returns in the verdict)"
        )
    if extrema:
        lines += ["", extrema]
    for symbol, verdict in verdicts.items():
        lines += ["", f"== {symbol} =="] if len(verdicts) > 1 else [""]
        lines.append(format_verdict(verdict))
    return "\n".join(lines)


# --- the command ----------------------------------------------------------------------------------


def _hidden_arg(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: use a positive width (64) or comma-separated widths (128,32)")
    return sizes * 2 if len(sizes) == 1 else sizes


def _symbol_arg(text: str) -> str:
    try:
        return check_symbol(text.upper())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unistream evaluate",
        description=(
            "Walk-forward evaluation of the deployed pipeline on Binance archive files, in process (no Redis): "
            "replay -> aggregator -> features into the symbols' training packets, split into FOLDS+1 consecutive blocks; "
            "fold i trains a DQN per seed on blocks 0..i and trades its greedy policy on block i+1, learning frozen, "
            "filled --latency-ms later at the fee plus --slippage-bps. The verdict takes the test block as the unit "
            "of replication (seeds averaged inside it): the policy against buy-and-hold, flat and its own positions "
            "shifted in time (cost-matched random, and the null), net and gross, with the Sharpe ratio of the block "
            "returns (probabilistic and deflated) and a fee sweep."
        ),
        epilog=(
            "As deployed: the files' symbols (read from their names) through one features engine, the trainer's "
            "settings (UNISTREAM_DQN_*: a 256-256 network, 4 updates per packet) unless --hidden or "
            "--updates-per-packet say otherwise, the CNN's extrema heads trained walk-forward and each block's "
            "states built with the CNN trained before it. Not as deployed: no warm-up history. --stride k keeps every k-th packet of each symbol as a decision point (a DQN step "
            "is then k seconds), cutting time and memory k-fold; the header gives the minutes per day of data. "
            "Exit 2: missing or unreadable files, a file whose symbol cannot be told, too little data for --folds "
            f"(each block needs {MIN_BLOCK_PACKETS} decision points of each symbol)."
        ),
    )
    parser.add_argument(
        "--path",
        nargs="+",
        required=True,
        metavar="FILE",
        help="archive files (.csv or .zip), one or more symbols, each file's symbol read from its name "
        "(ETHUSDT-trades-2025-02-19.zip)",
    )
    parser.add_argument(
        "--symbol",
        type=_symbol_arg,
        default=None,
        metavar="SYMBOL",
        help="the symbol of every file, for files not named as the archive names them",
    )
    parser.add_argument("--seeds", type=_positive_int, default=3, metavar="N", help="seeds per fold (default 3)")
    parser.add_argument("--folds", type=_positive_int, default=3, metavar="N", help="walk-forward folds (default 3)")
    parser.add_argument(
        "--fee", type=float, default=0.001, metavar="F", help="fee per side, fraction of notional (default 0.001)"
    )
    parser.add_argument(
        "--hidden",
        type=_hidden_arg,
        default=None,
        metavar="W[,W...]",
        help="width of the Q-network's two shared layers, or comma-separated widths (default: the trainer's, "
        "UNISTREAM_DQN_HIDDEN_SIZES, 256,256)",
    )
    parser.add_argument(
        "--updates-per-packet",
        type=float,
        default=None,
        metavar="X",
        help="gradient steps per training packet (default: the trainer's, UNISTREAM_DQN_UPDATES_PER_TRANSITION, 4)",
    )
    parser.add_argument(
        "--stride",
        type=_positive_int,
        default=1,
        metavar="K",
        help="use every k-th packet as a decision point (default 1)",
    )
    parser.add_argument(
        "--window-bars",
        type=_positive_int,
        default=DEFAULT_WINDOW_BARS,
        metavar="N",
        help=f"bars per timeframe window of the states (default {DEFAULT_WINDOW_BARS}, at least 8)",
    )
    parser.add_argument(
        "--slippage-bps",
        type=float,
        default=10_000 * DEFAULT_SLIPPAGE,
        metavar="BPS",
        help=f"spread and impact paid per side beside the fee, bps (default {10_000 * DEFAULT_SLIPPAGE:g}, the live "
        "paper trader's)",
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=DEFAULT_LATENCY_MS,
        metavar="MS",
        help=f"a decision fills at the first packet this long after it (default {DEFAULT_LATENCY_MS}: the next bar)",
    )
    parser.add_argument(
        "--trials",
        type=_positive_int,
        default=1,
        metavar="N",
        help="configurations tried on this data before this one, for the deflated Sharpe ratio (default 1)",
    )
    parser.add_argument("--threads", type=_positive_int, default=1, metavar="N", help="torch CPU threads (default 1)")
    parser.add_argument(
        "--no-extrema",
        action="store_true",
        help="skip the CNN's extrema heads (trained and scored walk-forward on every 1s packet as it is built)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="also write DIR/report.html (the verdict with equity curves, drawdowns, the fee sweep and the "
        "shift null; one self-contained file) and DIR/report.json (what --json prints)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not 0.0 <= args.fee < 0.1:
        parser.error(f"--fee must be in [0, 0.1), was {args.fee}")
    if args.updates_per_packet is not None and not 0.0 <= args.updates_per_packet <= 1_000:
        parser.error(f"--updates-per-packet must be in [0, 1000], was {args.updates_per_packet}")
    if args.window_bars < 8:
        parser.error(f"--window-bars must be at least 8 (the CNN's minimum), was {args.window_bars}")
    if not 0.0 <= args.slippage_bps < 1_000:
        parser.error(f"--slippage-bps must be in [0, 1000), was {args.slippage_bps}")
    if args.latency_ms < 0:
        parser.error(f"--latency-ms must be >= 0, was {args.latency_ms}")
    costs = Costs(fee=args.fee, slippage=args.slippage_bps / 10_000)
    torch.set_num_threads(args.threads)

    def progress(text: str) -> None:
        print(f"unistream evaluate: {text}", file=sys.stderr, flush=True)

    try:
        settings = TrainerSettings()  # the trainer's settings, UNISTREAM_DQN_* included
    except ValueError as exc:
        parser.error(f"the trainer's settings (UNISTREAM_* variables) are invalid: {exc}")
    deployed = settings.hyperparameters()
    updates = deployed.updates_per_transition if args.updates_per_packet is None else args.updates_per_packet
    hp = replace(
        deployed,
        hidden_sizes=deployed.hidden_sizes if args.hidden is None else args.hidden,
        fee=args.fee,
        slippage=costs.slippage,
        # rewards credit the step a decision's fill holds: the first packet --latency-ms later
        fill_lag=math.ceil(args.latency_ms / (1_000 * args.stride)),
        updates_per_transition=updates,
        max_updates_per_batch=max(deployed.max_updates_per_batch, math.ceil(updates)),
    )
    seeds = list(range(1, args.seeds + 1))
    try:
        files = files_by_symbol(args.path, args.symbol)
        # Blocks of equal duration, known before the packets are built: the extrema heads learn
        # walk-forward from every packet as it is built, while only every --stride-th is kept.
        starts = time_block_starts(*archive_span_ms(files), args.folds)
        extrema = (
            None if args.no_extrema
            else ExtremaWalkForward(starts, args.window_bars, settings.extrema_updates_per_packet, settings.seed)
        )  # fmt: skip
        src = packets_from_archives(
            files, args.window_bars, args.stride, progress=progress, on_every=extrema.observe if extrema else None
        )
        build_s = src.seconds - (extrema.seconds if extrema else 0.0)
        progress(
            f"{src.built:,} packets ({src.state_dim:,} values each) of {', '.join(src.symbols)} from "
            f"{src.trades:,} trades in {build_s:.1f} s; {len(src.packets):,} decision points at stride {args.stride}"
        )
        extrema_blocks: list[dict[str, float]] = []
        extrema_s = 0.0
        packets = src.packets
        walk_forward_bounds(packets, args.folds, starts_ms=starts)  # too little data: say so before any work
        if extrema is not None:
            started = time.perf_counter()
            extrema_blocks = extrema.finish()
            packets = with_trained_cnn(src.packets, starts, extrema.published, src.layouts, args.window_bars, progress)
            extrema_s = extrema.seconds + time.perf_counter() - started
            progress(
                f"extrema heads trained and scored on {len(extrema_blocks)} test blocks, and each block's states "
                f"given the CNN trained before it, in {extrema_s:.1f} s"
            )
        started = time.perf_counter()
        results = walk_forward(
            packets, args.folds, seeds, hp, max_gap_ms=LIVE_MAX_GAP_MS * args.stride, progress=progress,
            slippage=costs.slippage, latency_ms=args.latency_ms, starts_ms=starts,
        )  # fmt: skip
    except EvaluationError as exc:
        print(f"unistream evaluate: {exc}", file=sys.stderr)
        return 2
    train_s = time.perf_counter() - started
    blocks = {s: walk_forward_blocks(packets, results, args.latency_ms, s) for s in src.symbols}
    verdicts: dict[str, Verdict] = {}
    rows: list[TableRow] = []
    # The paper trader's Sharpe rests on three complete hours or more (0 before): on shorter blocks
    # the row would read 0 [0, 0]; the verdict gives the Sharpe of the block returns instead.
    metrics = [m for m in TABLE_METRICS if m != "sharpe" or min(r.metrics["paper/sharpe_hours"] for r in results) >= 3]
    for symbol in src.symbols:
        rows, verdicts[symbol] = summarize(
            results, packets, costs, args.latency_ms, args.trials, metrics, blocks=blocks[symbol], symbol=symbol,
            family=len(src.symbols),
        )  # fmt: skip
    hours = (src.packets[-1].ts_event_ms - src.packets[0].ts_event_ms) / 3_600_000
    days = max(hours / 24, 1e-9)
    out: dict[str, Any] = {
        "symbols": list(src.symbols),
        "files": {s: [str(p) for p in paths] for s, paths in files.items()},
        "settings": {
            "seeds": seeds,
            "folds": args.folds,
            "fee": args.fee,
            "slippage": costs.slippage,
            "latency_ms": args.latency_ms,
            "trials": args.trials,
            "hidden_sizes": list(hp.hidden_sizes),
            "updates_per_packet": hp.updates_per_transition,
            "hyperparameters": asdict(hp),
            "stride": args.stride,
            "window_bars": args.window_bars,
            "confidence": CONFIDENCE,
        },
        "data": {
            "trades": src.trades,
            "rejected": src.rejected,
            "malformed": src.malformed,
            "bars_1s": src.bars_1s,
            "packets_built": src.built,
            "decision_points": len(src.packets),
            "state_dim": src.state_dim,
            "hours": hours,
            "build_s": build_s,
            "walk_forward_s": train_s,
            "extrema_s": extrema_s,
            "seconds_per_day": (build_s + train_s + extrema_s) / days,
        },
        "extrema": {
            "order": extrema_order(args.window_bars),
            "updates_per_packet": settings.extrema_updates_per_packet,
            "summary": extrema_summary(extrema_blocks),
            "blocks": extrema_blocks,
        }
        if not args.no_extrema
        else None,
        "rows": {
            r.metric: {
                "policy": _interval_json(r.policy),
                **{b: _interval_json(iv) for b, iv in r.baselines.items()},
            }
            for r in rows
        },
        "verdicts": {s: verdict_json(v) for s, v in verdicts.items()},
        "runs": [asdict(r) for r in results],
    }
    header = (
        f"unistream evaluate: {', '.join(src.symbols)} ({src.state_dim:,} values a state), {len(src.packets):,} "
        f"decision points (stride {args.stride}) over {hours:.2f} h, {args.folds} folds x {len(seeds)} seeds, fee "
        f"{args.fee:g} + slippage {costs.slippage:g} per side, fills {args.latency_ms} ms after a decision, hidden "
        f"{','.join(map(str, hp.hidden_sizes))}, {hp.updates_per_transition:g} updates per packet "
        f"(packets {build_s:.0f} s, extrema {extrema_s:.0f} s, walk-forward {train_s:.0f} s: "
        f"{(build_s + train_s + extrema_s) / days / 60:.0f} min per day of data)"
    )
    extrema_text = (
        format_extrema(extrema_summary(extrema_blocks), extrema_order(args.window_bars)) if not args.no_extrema else ""
    )
    text = format_report(rows, verdicts, header, extrema_text)
    if args.report is not None:
        title = f"unistream evaluate: {', '.join(src.symbols)}, {', '.join(Path(p).name for p in args.path)}"
        sections = [(s if len(verdicts) > 1 else "", blocks[s], v) for s, v in verdicts.items()]
        try:
            written = write_report(args.report, title, text, sections, out)
        except OSError as exc:
            print(f"unistream evaluate: cannot write the report to {args.report}: {exc}", file=sys.stderr)
            return 2
        progress(f"report written: {', '.join(str(p) for p in written)}")
    print(json.dumps(out, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
