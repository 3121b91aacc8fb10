"""``unistream evaluate``: walk-forward evaluation of the trainer on Binance archive files (no Redis).

    unistream evaluate --path ETHUSDT-trades-2025-02-19.zip [FILE ...] [--symbol ETHUSDT]
        [--seeds 3] [--folds 3] [--fee 0.001] [--slippage-bps 2] [--latency-ms 1000] [--trials 1]
        [--hidden 64] [--updates-per-packet 1.0] [--stride 1] [--window-bars 300] [--threads 1] [--json]

**Data.** The files (trades or aggTrades, .csv or the downloaded .zip, one symbol) are read as the
ingest replay reads them (:class:`~unistream_ingest.replay.ReplaySource`: merged in time order,
the same validation), the trades go through the aggregator's core
(:class:`~unistream_aggregator.core.BarAggregator`: closed 1s/1m/1h/1d bars, empty seconds
filled) and the features engine (:class:`~unistream_features.core.FeatureEngine`), all in this
process, into the symbol's time-ordered training packets: one per 1s bar, as the live system
builds them. Choices that differ from a live run, on purpose:

- the engine is configured for ``--symbol`` alone (the files hold one symbol), so a state is that
  symbol's blocks of layout v2 only (6,728 values at 300 bars per window, 1,928 at 60);
- the CNN keeps its seeded, untrained initialisation (seed 7, the services' default);
- there is no warm-up history: the windows fill from the files themselves (a few days leave the
  1h and 1d windows mostly empty; the state's warm-up values say so, as they do live).

**Walk-forward.** The packets are split into ``folds + 1`` consecutive blocks of (nearly) equal
length. Fold ``i`` trains a :class:`~unistream_trainer.core.TrainerCore` on blocks ``0..i`` in
time order (each packet with its up to ``n_step`` predecessors, as the live trainer gets it,
``--updates-per-packet`` gradient steps per packet) and then paper-trades its greedy policy on
block ``i + 1`` with learning frozen: the decision at a packet sees only that packet, the position
last decided and the network trained on earlier blocks, and fills ``--latency-ms`` later at the
fee plus ``--slippage-bps`` per side, exactly as the live paper trader executes
(:class:`~unistream_trainer.paper.PaperPortfolio`); flat at the block's start. Nothing later than
block ``i`` is ever trained on. The model of fold ``i`` is the model of fold ``i - 1`` trained on
block ``i`` more: training is deterministic for a seed (the paper trading changes nothing in the
core), so this is exactly a fresh core trained on blocks ``0..i``, at about half the cost. Each
seed (1..``--seeds``) repeats this with its own initialisation, replay sampling and exploration.

**Verdict** (:mod:`unistream_tools.verdict`). The test block is the unit of replication: the
seeds share its prices, so they are averaged inside it, and intervals are over blocks. The
baselines are buy-and-hold, flat and the policy's own positions circularly shifted against the
prices (the random baseline matched in turnover and cost); the shifts' distribution is the null
the policy's net and gross (fee-free) returns are ranked in. The Sharpe ratio comes from the block
returns, with its probabilistic and deflated forms (``--trials``); a fee sweep re-costs the same
positions at 0, 2, 5 and 10 bps per side. The descriptive table (pnl, sharpe, max_drawdown,
win_rate, trades_per_hour, fee_share) is averaged over seeds inside each block, intervals over
blocks.

**Cost.** Building a packet takes about 1 ms (the CNN pass); training is what costs: the live
network (256, 256) on states of several thousand values is slow on a CPU, so the default network
here is small (``--hidden 64``: two shared layers of 64), ``--updates-per-packet`` defaults to 1
(the live trainer: 4) and torch runs on one thread (``--threads``; more were slower on small
networks). Measured at the defaults on a slow 2-core machine: about 5 ms per packet trained on,
so an hour of data (3,600 packets, 3 folds x 3 seeds) takes about a minute, a day at stride 1
about 15-20 minutes. ``--stride k`` makes every k-th packet a decision point and drops the rest
(one step of the DQN is then k seconds: its rewards span k seconds and its n-step returns n x k;
the chain gap limit scales with k), which cuts memory and training time k-fold; ``--window-bars``
shrinks the states. Memory: the kept packets (4 x state size bytes each: 27 KB at the defaults, a
day at stride 1 about 2.3 GB) and one replay buffer (2 x 5,000 x state size x 4 bytes).

Exit status: 0 after the report; 2 for files that are missing or unreadable, a bad argument, or
too little data for the requested folds (each block needs :data:`MIN_BLOCK_PACKETS` packets).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unistream_common.keys import check_symbol
from unistream_common.packets import TickBatch, TrainingDataPacket
from unistream_features.core import FeatureConfig, FeatureEngine
from unistream_model.mtf import DEFAULT_WINDOW_BARS
from unistream_tools.report import write_report
from unistream_tools.verdict import BlockPaths, Costs, Verdict, block_paths, format_verdict, judge, verdict_json
from unistream_trainer.core import TrainerCore
from unistream_trainer.dqn import ACTION_POSITION, Hyperparameters
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

    packets: list[TrainingDataPacket]  # the kept packets (every ``stride``-th), time order
    built: int  # packets the features engine built (one per 1s bar)
    trades: int  # trades accepted by the replay's validator
    rejected: dict[str, int]  # trades the validator rejected, by reason
    rows: dict[str, int]  # rows read per file
    malformed: dict[str, int]  # malformed rows per file
    bars_1s: int
    state_dim: int
    seconds: float  # wall time of the build


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


def packets_from_archives(
    paths: Sequence[str | Path],
    symbol: str,
    window_bars: int = DEFAULT_WINDOW_BARS,
    stride: int = 1,
    cnn_seed: int = CNN_SEED,
    progress: Progress = _quiet,
) -> PacketSource:
    """The training packets of ``symbol`` built from archive files: replay -> aggregator -> features.

    Every ``stride``-th packet is kept (the first one included). Raises :class:`EvaluationError`
    for missing or unreadable files and for files without a trade of ``symbol``.
    """
    if stride < 1:
        raise ValueError(f"stride must be at least 1, was {stride}")
    try:  # the replay and the aggregator's core: only this step needs those packages
        from unistream_aggregator.core import BarAggregator
        from unistream_ingest.replay import ReplaySource
    except ModuleNotFoundError as exc:
        raise EvaluationError(
            f"{exc.name} is not installed: evaluate reads the files with unistream-ingest and "
            "unistream-aggregator (pip install -e services/ingest services/aggregator)"
        ) from exc
    _check_files(paths)
    started = time.perf_counter()
    wall_ms = int(time.time() * 1000)
    source = ReplaySource(paths, symbol, None, wall_ms)
    aggregator = BarAggregator()
    engine = FeatureEngine(
        FeatureConfig(symbols=(symbol,), window_bars=window_bars, bar_capacity=max(1_000, window_bars + 1)),
        cnn_seed,
        wall_ms,
    )
    kept: list[TrainingDataPacket] = []
    built = bars_1s = entries = 0
    next_report = 50_000
    try:
        while not source.done:
            # The validator compares trade times with the wall clock (future_ts): replay time is now.
            now_ms = int(time.time() * 1000)
            ticks = source.advance(now_ms).get(symbol)
            if not ticks:
                continue
            batch = TickBatch(symbol=symbol, source="REPLAY", ticks=ticks)
            entries += 1
            out = aggregator.apply([(("evaluate", f"{entries}-0"), batch)])
            engine.on_ticks(batch)
            for bar in out.bars:
                bars_1s += bar.timeframe == "1s"
                engine.on_bar(bar, now_ms)
            for packet in engine.emit(now_ms):
                if built % stride == 0:
                    kept.append(packet)
                built += 1
            if built >= next_report:
                progress(f"{built:,} packets built from {source.released:,} trades")
                next_report += 50_000
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:  # a file damaged after its first block
        raise EvaluationError(f"the archive files could not be read: {type(exc).__name__}: {exc}") from exc
    rows = {path: r.rows for path, r in source.reports.items()}
    empty = [path for path, n in rows.items() if n == 0]
    if empty:
        raise EvaluationError(f"no trade rows could be read from: {', '.join(empty)}")
    validator = source.validator.stats()
    if not validator["accepted"]:
        raise EvaluationError(f"no trade of the files was accepted as {symbol}: rejected {validator['rejected']}")
    return PacketSource(
        packets=kept,
        built=built,
        trades=int(validator["accepted"]),
        rejected=dict(validator["rejected"]),
        rows=rows,
        malformed={path: r.malformed for path, r in source.reports.items()},
        bars_1s=bars_1s,
        state_dim=kept[0].state_dim if kept else 0,
        seconds=time.perf_counter() - started,
    )


# --- walk-forward ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldResult:
    """One seed's policy on one test block."""

    seed: int
    fold: int  # trained on blocks 0..fold, tested on block fold + 1
    train_packets: int
    test_packets: int
    test_from_ms: int
    test_to_ms: int
    updates: int  # gradient steps taken before the test
    metrics: dict[str, float] = field(default_factory=dict)  # PaperPortfolio.metrics() of the test block
    targets: list[float] = field(default_factory=list)  # the position decided at each test packet


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
    symbols = {p.symbol for p in packets}
    if len(symbols) > 1:
        raise ValueError(f"walk-forward takes one symbol's packets, got {sorted(symbols)}")
    for a, b in itertools.pairwise(packets):
        if b.ts_event_ms <= a.ts_event_ms:
            raise ValueError(f"packets are not in strictly increasing time order at {b.ts_event_ms}")


def train_on(core: TrainerCore, packets: Sequence[TrainingDataPacket], start: int, end: int) -> None:
    """Feed ``packets[start:end]`` to ``core`` in order, each with its ``n_step + fill_lag`` predecessors
    (earlier packets only)."""
    n = core.hp.n_step + core.hp.fill_lag
    for k in range(start, end):
        core.process([packets[k]], [packets[max(0, k - n) : k]])


def paper_trade(
    core: TrainerCore,
    packets: Sequence[TrainingDataPacket],
    costs: Costs,
    seed: int,
    latency_ms: int = DEFAULT_LATENCY_MS,
) -> tuple[dict[str, float], list[float]]:
    """The greedy policy of ``core`` on ``packets`` (one symbol, time order), flat at the start: its
    paper/* metrics, executed as the live paper trader executes (latency, fee and slippage), and
    the position it decided at each packet.

    The decision at a packet uses that packet and the position last decided, nothing later; the
    core is not changed (learning is frozen on a test block).
    """
    book = PaperPortfolio(fee=costs.fee, seed=seed, latency_ms=latency_ms, slippage=costs.slippage)
    position = 0
    targets: list[float] = []
    for p in packets:
        action, _ = core.greedy_action(p, position)
        position = ACTION_POSITION[action]
        targets.append(float(position))
        book.step(p.symbol, p.ts_event_ms, p.price, float(position))
    return book.metrics(), targets


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
) -> list[FoldResult]:
    """Walk-forward runs (module docstring): for each seed and fold, train on blocks 0..fold, trade block fold + 1.

    ``hp`` is the template of every run's hyperparameters (its ``seed`` is replaced by each of
    ``seeds``; its ``fee`` is also the paper trading's, beside ``slippage``). ``packets``: one
    symbol, strictly increasing times. Results come seed-major, folds in order.
    """
    costs = Costs(fee=hp.fee, slippage=slippage)
    _check_sequence(packets)
    bounds = block_bounds(len(packets), folds, min_block)
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


def walk_forward_blocks(
    packets: Sequence[TrainingDataPacket], results: Sequence[FoldResult], latency_ms: int
) -> list[BlockPaths]:
    """One :class:`~unistream_tools.verdict.BlockPaths` per test block: its prices and every seed's decisions."""
    by_fold: dict[int, list[FoldResult]] = {}
    for r in results:
        by_fold.setdefault(r.fold, []).append(r)
    index = {p.ts_event_ms: k for k, p in enumerate(packets)}
    blocks = []
    for fold in sorted(by_fold):
        runs = by_fold[fold]
        start = index[runs[0].test_from_ms]
        block = packets[start : start + runs[0].test_packets]
        blocks.append(
            block_paths(
                [p.ts_event_ms for p in block], [p.price for p in block], {r.seed: r.targets for r in runs}, latency_ms
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
) -> tuple[list[TableRow], Verdict]:
    """The descriptive table (each metric averaged over seeds inside a block, intervals over blocks)
    and the :class:`~unistream_tools.verdict.Verdict` on the test blocks (``blocks``: their
    :func:`walk_forward_blocks`, when the caller has them already)."""
    by_fold: dict[int, list[dict[str, float]]] = {}
    for r in results:
        by_fold.setdefault(r.fold, []).append(r.metrics)
    per_block = [{k: float(np.mean([m[k] for m in runs])) for k in runs[0]} for _, runs in sorted(by_fold.items())]
    rows = fold_rows(per_block, metrics, BASELINES, confidence)
    if blocks is None:
        blocks = walk_forward_blocks(packets, results, latency_ms)
    verdict = judge(blocks, costs, latency_ms, trials=trials, confidence=confidence)
    return rows, verdict


def _interval_json(iv: Interval) -> dict[str, float | int | None]:
    def num(v: float) -> float | None:
        return v if math.isfinite(v) else None  # JSON has no infinity: one run has no interval

    return {"mean": iv.value, "low": num(iv.low), "high": num(iv.high), "n": iv.n}


def format_report(rows: Sequence[TableRow], verdict: Verdict, header: str) -> str:
    """The header, the descriptive table (per block, seeds averaged) and the verdict."""
    return "\n".join(
        [
            header,
            "",
            f"Descriptive, per test block (seeds averaged in each; {100 * CONFIDENCE:g}% CI over blocks):",
            "",
            format_table(rows, confidence=CONFIDENCE),
            "",
            format_verdict(verdict),
        ]
    )


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
            "Walk-forward evaluation of the trainer on Binance archive files, in process (no Redis): replay -> "
            "aggregator -> features into the symbol's training packets, split into FOLDS+1 consecutive blocks; "
            "fold i trains a DQN per seed on blocks 0..i and trades its greedy policy on block i+1, learning frozen, "
            "filled --latency-ms later at the fee plus --slippage-bps. The verdict takes the test block as the unit "
            "of replication (seeds averaged inside it): the policy against buy-and-hold, flat and its own positions "
            "shifted in time (cost-matched random, and the null), net and gross, with the Sharpe ratio of the block "
            "returns (probabilistic and deflated) and a fee sweep."
        ),
        epilog=(
            "Practical choices: the states are the symbol's own (features configured for --symbol alone), the CNN "
            "is the seeded untrained one, there is no warm-up history. The live network (256,256) is slow on "
            "states of thousands of values, hence --hidden 64 (two layers of 64) and --updates-per-packet 1 "
            "(live: 4); about 5 ms per packet trained on, 15-20 minutes for a day at stride 1. --stride k keeps "
            "every k-th packet as a decision point (a DQN step is then k seconds), cutting time and memory k-fold; "
            "memory is about 4 x state size bytes per kept packet (27 KB at --window-bars 300: a day at stride 1 "
            "is about 2.3 GB). Exit 2: missing or unreadable files, too "
            f"little data for --folds (each block needs {MIN_BLOCK_PACKETS} decision points)."
        ),
    )
    parser.add_argument(
        "--path", nargs="+", required=True, metavar="FILE", help="archive files of one symbol (.csv or .zip)"
    )
    parser.add_argument(
        "--symbol", type=_symbol_arg, default="ETHUSDT", metavar="SYMBOL", help="the files' symbol (default ETHUSDT)"
    )
    parser.add_argument("--seeds", type=_positive_int, default=3, metavar="N", help="seeds per fold (default 3)")
    parser.add_argument("--folds", type=_positive_int, default=3, metavar="N", help="walk-forward folds (default 3)")
    parser.add_argument(
        "--fee", type=float, default=0.001, metavar="F", help="fee per side, fraction of notional (default 0.001)"
    )
    parser.add_argument(
        "--hidden",
        type=_hidden_arg,
        default=(64, 64),
        metavar="W[,W...]",
        help="width of the Q-network's two shared layers, or comma-separated widths (default 64)",
    )
    parser.add_argument(
        "--updates-per-packet",
        type=float,
        default=1.0,
        metavar="X",
        help="gradient steps per training packet (default 1.0)",
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
    if not 0.0 <= args.updates_per_packet <= 1_000:
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

    hp = Hyperparameters(
        hidden_sizes=args.hidden,
        fee=args.fee,
        slippage=costs.slippage,
        # rewards credit the step a decision's fill holds: the first packet --latency-ms later
        fill_lag=math.ceil(args.latency_ms / (1_000 * args.stride)),
        updates_per_transition=args.updates_per_packet,
        max_updates_per_batch=max(16, math.ceil(args.updates_per_packet)),
    )
    seeds = list(range(1, args.seeds + 1))
    try:
        src = packets_from_archives(args.path, args.symbol, args.window_bars, args.stride, progress=progress)
        progress(
            f"{src.built:,} packets ({src.state_dim:,} values each) from {src.trades:,} trades in "
            f"{src.seconds:.1f} s; {len(src.packets):,} decision points at stride {args.stride}"
        )
        started = time.perf_counter()
        results = walk_forward(
            src.packets, args.folds, seeds, hp, max_gap_ms=LIVE_MAX_GAP_MS * args.stride, progress=progress,
            slippage=costs.slippage, latency_ms=args.latency_ms,
        )  # fmt: skip
    except EvaluationError as exc:
        print(f"unistream evaluate: {exc}", file=sys.stderr)
        return 2
    train_s = time.perf_counter() - started
    blocks = walk_forward_blocks(src.packets, results, args.latency_ms)
    rows, verdict = summarize(results, src.packets, costs, args.latency_ms, args.trials, blocks=blocks)
    hours = (src.packets[-1].ts_event_ms - src.packets[0].ts_event_ms) / 3_600_000
    out: dict[str, Any] = {
        "symbol": args.symbol,
        "files": [str(p) for p in args.path],
        "settings": {
            "seeds": seeds,
            "folds": args.folds,
            "fee": args.fee,
            "slippage": costs.slippage,
            "latency_ms": args.latency_ms,
            "trials": args.trials,
            "hidden_sizes": list(args.hidden),
            "updates_per_packet": args.updates_per_packet,
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
            "build_s": src.seconds,
            "walk_forward_s": train_s,
        },
        "rows": {
            r.metric: {
                "policy": _interval_json(r.policy),
                **{b: _interval_json(iv) for b, iv in r.baselines.items()},
            }
            for r in rows
        },
        "verdict": verdict_json(verdict),
        "runs": [asdict(r) for r in results],
    }
    header = (
        f"unistream evaluate: {args.symbol}, {len(src.packets):,} decision points (stride {args.stride}) over "
        f"{hours:.2f} h, {args.folds} folds x {len(seeds)} seeds, fee {args.fee:g} + slippage {costs.slippage:g} per "
        f"side, fills {args.latency_ms} ms after a decision, hidden "
        f"{','.join(map(str, args.hidden))}, {args.updates_per_packet:g} updates per packet "
        f"(packets {src.seconds:.0f} s, walk-forward {train_s:.0f} s)"
    )
    text = format_report(rows, verdict, header)
    if args.report is not None:
        title = f"unistream evaluate: {args.symbol}, {', '.join(Path(p).name for p in args.path)}"
        try:
            written = write_report(args.report, title, text, blocks, verdict, out)
        except OSError as exc:
            print(f"unistream evaluate: cannot write the report to {args.report}: {exc}", file=sys.stderr)
            return 2
        progress(f"report written: {', '.join(str(p) for p in written)}")
    print(json.dumps(out, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
