"""The verdict on a trading policy: did it earn more than chance, after costs, on data it never saw (pure).

Everything here works on arrays of one *test block* (a stretch of time no model was trained on):
the decision times and prices, and the positions a policy asked for. No I/O, no clock.

**Execution.** A decision taken at ``ts[t]`` (on everything known at the close of bar ``t``) fills
at the first price at or after ``ts[t] + latency_ms`` (:func:`fill_indices`): with one price a
second and the default latency of 1 s, the next bar's close, never the deciding bar's own. The
position held between two prices is the target of the latest decision filled by then
(:func:`held_positions`). Every unit of position change pays ``fee + slippage`` per side at its
fill (:class:`Costs`): the fee is the venue's, the slippage stands for the half spread and the
impact. A latency of 0 and no slippage is the old, flattering model (fills at a price the policy
could not get).

**Returns** of one path over a block with prices ``p_0..p_{n-1}``: at step ``i`` the position held
since step ``i-1`` earns ``h_{i-1} * log(p_i / p_{i-1})`` (gross) and the change to ``h_i`` costs
``(fee + slippage) * |h_i - h_{i-1}|`` (``h_{-1} = 0``: entering at the block's start pays). A
block's net return is the sum; *turnover* is the sum of the changes.

**Baselines**, all on the same prices and costs: ``flat`` (0), ``buy_and_hold`` (+1 from the
block's start) and ``random``: the policy's own held positions circularly shifted against the
prices by a random offset (:func:`shift_null`). A shift keeps every trade, holding time, exposure
and (but for the one jump where the series wraps) every cost of the policy, and destroys only its
timing: the mean over shifts is the random baseline *matched in turnover and cost* (a random
policy that draws positions of its own pays other costs and makes a spurious edge), and the
distribution over shifts is the null the policy's value is ranked in (a one-sided p-value).

**Unit of replication: the block.** Seeds share a block's prices, so they are not independent
replicates: they are averaged inside each block (:func:`judge`), and intervals are over blocks
(Student t), p-values over the sum across blocks of independently shifted paths. Sharpe ratios
come from block returns (one value per block), never annualised from seconds; the probabilistic
Sharpe ratio (:func:`probabilistic_sharpe`) and the deflated one (:func:`deflated_sharpe`, for the
number of configurations tried) say how likely the true Sharpe exceeds 0 and the best of N tries.

**Several symbols.** One evaluation judges each symbol on its own prices: ``family`` verdicts looked
at together. A symbol's EDGE needs its p-value under ``(1 - confidence) / family`` and its
intervals are at ``1 - (1 - confidence) / family`` (Bonferroni: 95 % over two symbols makes each
97.5 %, so the chance that any symbol shows an edge it does not have stays 5 %), and the deflated
Sharpe counts ``trials x family`` configurations.

**Arms.** ``net`` at the configured costs and ``gross`` (no costs): a look-ahead leak shows as a
gross edge even where fees eat it. :func:`fee_sweep` re-costs the same held positions at other
costs per side (0, 2, 5, 10 bps), which is honest only as a statement about these positions: a
policy trained at other fees would trade otherwise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from unistream_trainer.paper import DEFAULT_LATENCY_MS, DEFAULT_SLIPPAGE, Interval, mean_ci

EULER_GAMMA = 0.5772156649015329
SWEEP_BPS: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0)
NULL_SHIFTS = 400  # circular shifts drawn per block
SHIFT_MARGIN = 0.1  # shifts closer than this share of the block to 0 (or n) are not drawn
_NORMAL = statistics.NormalDist()


@dataclass(frozen=True)
class Costs:
    """What one unit of position change pays at its fill, per side, as fractions of notional."""

    fee: float = 0.001  # the venue's fee (Binance spot 0.1 %)
    slippage: float = DEFAULT_SLIPPAGE

    def __post_init__(self) -> None:
        if not (0.0 <= self.fee < 0.1 and 0.0 <= self.slippage < 0.1):
            raise ValueError(f"fee and slippage per side must be in [0, 0.1), were {self.fee} and {self.slippage}")

    @property
    def per_side(self) -> float:
        return self.fee + self.slippage


# --- execution ------------------------------------------------------------------------------------


def fill_indices(ts_ms: np.ndarray, latency_ms: int) -> np.ndarray:
    """For each decision ``t``, the index of the first price at or after ``ts[t] + latency_ms`` (``n``: none).

    ``ts_ms`` must be strictly increasing.
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    if latency_ms < 0:
        raise ValueError(f"latency_ms must be >= 0, was {latency_ms}")
    if ts.size > 1 and np.any(np.diff(ts) <= 0):
        raise ValueError("decision times must be strictly increasing")
    return np.searchsorted(ts, ts + latency_ms, side="left")


def held_positions(targets: np.ndarray, fills: np.ndarray) -> np.ndarray:
    """The position held at each price index: the target of the latest decision filled by then (0 before any).

    ``fills`` is :func:`fill_indices` of the same decisions (non-decreasing); a decision whose fill
    falls past the end is never filled.
    """
    targets = np.asarray(targets, dtype=np.float64)
    n = targets.size
    latest = np.searchsorted(fills, np.arange(n), side="right") - 1  # last decision with fill <= i
    held = np.where(latest >= 0, targets[np.clip(latest, 0, None)], 0.0)
    return held


# --- one path on one block ------------------------------------------------------------------------


@dataclass(frozen=True)
class PathResult:
    """One held-position path on one block."""

    gross: float  # sum of position x log return
    cost: float  # sum of (fee + slippage) x |position change|
    turnover: float  # sum of |position change|, entering at the start included
    exposure: float  # mean |position|

    @property
    def net(self) -> float:
        return self.gross - self.cost


def step_returns(log_prices: np.ndarray, held: np.ndarray, cost_per_side: float) -> tuple[np.ndarray, np.ndarray]:
    """(gross, cost) per step of a held path: gross ``[0] = 0``, ``[i] = h[i-1] * (lp[i] - lp[i-1])``."""
    lp = np.asarray(log_prices, dtype=np.float64)
    h = np.asarray(held, dtype=np.float64)
    gross = np.zeros_like(lp)
    gross[1:] = h[:-1] * np.diff(lp)
    change = np.abs(np.diff(h, prepend=0.0))
    return gross, cost_per_side * change


def path_result(log_prices: np.ndarray, held: np.ndarray, cost_per_side: float) -> PathResult:
    gross, cost = step_returns(log_prices, held, cost_per_side)
    turnover = float(np.abs(np.diff(np.asarray(held, dtype=np.float64), prepend=0.0)).sum())
    return PathResult(float(gross.sum()), float(cost.sum()), turnover, float(np.abs(held).mean()) if len(held) else 0.0)


def shift_offsets(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` circular shifts of a block of ``n`` steps, at least :data:`SHIFT_MARGIN` of it from 0."""
    low = max(1, math.ceil(SHIFT_MARGIN * n))
    high = n - low
    if high < low:
        raise ValueError(f"a block of {n} steps is too short for a shift null")
    return rng.integers(low, high + 1, size=count)


def shift_null(
    log_prices: np.ndarray, held: np.ndarray, cost_per_side: float, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(net, gross, turnover) of ``held`` circularly shifted by each of ``offsets`` against the prices.

    A shift's turnover is the policy's but at the seam: where the series wraps (and where the
    shifted path starts) it differs by at most 3 units.
    """
    lp = np.asarray(log_prices, dtype=np.float64)
    h = np.asarray(held, dtype=np.float64)
    moves = np.diff(lp)  # moves[i - 1] is earned by h[i - 1]
    nets, grosses, turnovers = np.empty(len(offsets)), np.empty(len(offsets)), np.empty(len(offsets))
    for k, s in enumerate(offsets):
        shifted = np.roll(h, int(s))
        gross = float(shifted[:-1] @ moves)
        turnover = float(np.abs(np.diff(shifted, prepend=0.0)).sum())
        grosses[k], nets[k], turnovers[k] = gross, gross - cost_per_side * turnover, turnover
    return nets, grosses, turnovers


# --- Sharpe ratios ------------------------------------------------------------------------------


def sharpe(returns: Sequence[float] | np.ndarray) -> float:
    """Mean over sample standard deviation of ``returns`` (per period, not annualised); 0 when undefined."""
    r = np.asarray(returns, dtype=np.float64)
    if r.size < 2:
        return 0.0
    sd = float(r.std(ddof=1))
    return float(r.mean()) / sd if sd > 1e-15 else 0.0


def probabilistic_sharpe(returns: Sequence[float] | np.ndarray, benchmark: float = 0.0) -> float:
    """P(true Sharpe > ``benchmark``) from ``returns`` (Bailey and Lopez de Prado, 2012), per period.

    Uses the sample skewness and kurtosis of the returns; 0.5 with fewer than three returns or no spread.
    """
    r = np.asarray(returns, dtype=np.float64)
    n = r.size
    sd = float(r.std(ddof=1)) if n > 1 else 0.0
    if n < 3 or sd <= 1e-15:
        return 0.5
    sr = float(r.mean()) / sd
    z = (r - r.mean()) / r.std(ddof=0)
    skew = float((z**3).mean())
    kurt = float((z**4).mean())  # 3 for normal returns
    denominator = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr * sr
    if denominator <= 0:
        return 0.5
    return _NORMAL.cdf((sr - benchmark) * math.sqrt(n - 1) / math.sqrt(denominator))


def expected_max_sharpe(trials: int, sharpe_variance: float) -> float:
    """The Sharpe ratio the best of ``trials`` unskilled configurations is expected to reach (per period)."""
    if trials < 2 or sharpe_variance <= 0:
        return 0.0
    a = _NORMAL.inv_cdf(1.0 - 1.0 / trials)
    b = _NORMAL.inv_cdf(1.0 - 1.0 / (trials * math.e))
    return math.sqrt(sharpe_variance) * ((1.0 - EULER_GAMMA) * a + EULER_GAMMA * b)


def deflated_sharpe(returns: Sequence[float] | np.ndarray, trials: int, sharpe_variance: float | None = None) -> float:
    """:func:`probabilistic_sharpe` against the best of ``trials`` tries (Bailey and Lopez de Prado, 2014).

    ``sharpe_variance``: the variance of the Sharpe ratios over the tries; by default the sampling
    variance of one estimate, ``(1 + SR^2 / 2) / (n - 1)``.
    """
    r = np.asarray(returns, dtype=np.float64)
    if r.size < 3:
        return 0.5
    if sharpe_variance is None:
        sr = sharpe(r)
        sharpe_variance = (1.0 + sr * sr / 2.0) / (r.size - 1)
    return probabilistic_sharpe(r, expected_max_sharpe(trials, sharpe_variance))


# --- a policy on its test blocks ----------------------------------------------------------------------


@dataclass(frozen=True)
class BlockPaths:
    """What a policy did on one test block: one held-position path per seed, on one price path."""

    ts_ms: np.ndarray  # decision times (strictly increasing)
    log_prices: np.ndarray  # log price at each decision time
    held: Mapping[int, np.ndarray]  # seed -> held position at each index (after execution)

    @property
    def hours(self) -> float:
        return float(self.ts_ms[-1] - self.ts_ms[0]) / 3_600_000 if len(self.ts_ms) else 0.0


def block_paths(
    ts_ms: Sequence[int], prices: Sequence[float], targets: Mapping[int, Sequence[float]], latency_ms: int
) -> BlockPaths:
    """:class:`BlockPaths` from decisions: each seed's ``targets`` filled with ``latency_ms`` (:func:`held_positions`)."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    fills = fill_indices(ts, latency_ms)
    prices_arr = np.asarray(prices, dtype=np.float64)
    if np.any(~np.isfinite(prices_arr)) or np.any(prices_arr <= 0):
        raise ValueError("prices must be finite and positive")
    held = {seed: held_positions(np.asarray(t, dtype=np.float64), fills) for seed, t in targets.items()}
    for seed, h in held.items():
        if h.size != ts.size:
            raise ValueError(f"seed {seed}: {h.size} targets for {ts.size} decision times")
    return BlockPaths(ts, np.log(prices_arr), held)


ARMS: tuple[str, ...] = ("policy", "buy_and_hold", "flat", "random")


@dataclass
class BlockVerdict:
    """One block, seeds averaged: each arm's net and gross return, and the policy's rank in the shift null."""

    hours: float
    steps: int
    net: dict[str, float]  # arm -> block return at the configured costs
    gross: dict[str, float]  # arm -> block return without costs
    turnover: dict[str, float]  # arm -> turnover (random: the mean over shifts)
    null_net: np.ndarray  # seed-averaged net returns of the shifted paths
    null_gross: np.ndarray
    sweep: dict[float, dict[str, float]] = field(default_factory=dict)  # bps -> arm -> net


def judge_block(paths: BlockPaths, costs: Costs, rng: np.random.Generator, shifts: int = NULL_SHIFTS) -> BlockVerdict:
    """The arms of one block, seeds averaged; the same shifts for every seed (the null of the seed mean)."""
    n = len(paths.ts_ms)
    offsets = shift_offsets(n, shifts, rng)
    lp = paths.log_prices
    per_seed = [path_result(lp, h, costs.per_side) for h in paths.held.values()]
    nulls = [shift_null(lp, h, costs.per_side, offsets) for h in paths.held.values()]
    null_net = np.mean([nn for nn, _, _ in nulls], axis=0)
    null_gross = np.mean([ng for _, ng, _ in nulls], axis=0)
    bh = path_result(lp, np.ones(n), costs.per_side)
    net = {
        "policy": float(np.mean([p.net for p in per_seed])),
        "buy_and_hold": bh.net,
        "flat": 0.0,
        "random": float(null_net.mean()),
    }
    gross = {
        "policy": float(np.mean([p.gross for p in per_seed])),
        "buy_and_hold": bh.gross,
        "flat": 0.0,
        "random": float(null_gross.mean()),
    }
    turnover = {
        "policy": float(np.mean([p.turnover for p in per_seed])),
        "buy_and_hold": 1.0,
        "flat": 0.0,
        "random": float(np.mean([nt.mean() for _, _, nt in nulls])),
    }
    sweep = {}
    for bps in SWEEP_BPS:
        c = bps / 10_000
        sweep[bps] = {
            "policy": float(np.mean([p.gross - c * p.turnover for p in per_seed])),
            "random": float(null_gross.mean()) - c * turnover["random"],
            "buy_and_hold": bh.gross - c,
            "flat": 0.0,
        }
    return BlockVerdict(paths.hours, n, net, gross, turnover, null_net, null_gross, sweep)


def turnover_matched(policy_turnover: float, baseline_turnover: float, blocks: int) -> bool:
    """Whether a baseline traded as much as the policy (within 5 %, or the 3 units per block a shift's seam
    may add), so paid the same costs.

    A baseline that trades more pays more and makes the policy look better for nothing (the old
    random baseline drew new positions uniformly and paid ~1.33 fee units per change against the
    policy's ~1.08: on pure noise that was the whole "edge"); one that trades less flatters itself.
    """
    return abs(baseline_turnover - policy_turnover) <= max(0.05 * policy_turnover, 3.0 * blocks)


def rank_p_value(observed: float, null: np.ndarray) -> float:
    """One-sided p-value of ``observed`` against draws of its null: (1 + #draws >= observed) / (1 + draws)."""
    return (1.0 + float(np.sum(null >= observed))) / (1.0 + len(null))


@dataclass
class Verdict:
    """A policy over its test blocks: edges with intervals over blocks, null p-values, Sharpe ratios."""

    blocks: list[BlockVerdict]
    costs: Costs
    latency_ms: int
    trials: int
    confidence: float  # family-wise: over the ``family`` verdicts judged together
    family: int  # verdicts judged together (the evaluation's symbols): Bonferroni
    edges: dict[str, dict[str, Interval]]  # arm ("net"/"gross") -> baseline -> policy minus baseline, over blocks
    p_value: dict[str, float]  # arm -> the sum over blocks ranked in the sum of shifted paths
    block_p_values: dict[str, list[float]]
    sharpe: float  # of the policy's net block returns, per block
    sharpe_annual: float  # the same, times sqrt(blocks per year)
    probabilistic_sharpe: float
    deflated_sharpe: float
    sweep: dict[float, dict[str, Interval]]  # bps -> baseline -> policy minus baseline, over blocks
    cost_matched: bool  # the random baseline's turnover is the policy's, within 5 % (or one unit)

    @property
    def alpha(self) -> float:
        """The level each p-value is held to: ``(1 - confidence) / family``."""
        return (1.0 - self.confidence) / self.family

    @property
    def each_confidence(self) -> float:
        """The confidence of each interval here: ``1 - alpha``."""
        return 1.0 - self.alpha

    def significant(self, arm: str = "net", alpha: float | None = None) -> bool:
        """Whether the policy beat the shift null in ``arm`` at level ``alpha`` (default :attr:`alpha`)."""
        return self.p_value[arm] < (self.alpha if alpha is None else alpha)


def judge(
    blocks: Sequence[BlockPaths],
    costs: Costs,
    latency_ms: int = DEFAULT_LATENCY_MS,
    seed: int = 0,
    trials: int = 1,
    confidence: float = 0.95,
    shifts: int = NULL_SHIFTS,
    family: int = 1,
) -> Verdict:
    """The verdict over test ``blocks`` (each a :class:`BlockPaths`; every block is one replicate),
    one of ``family`` judged together (module docstring: intervals at ``1 - (1 - confidence) / family``)."""
    if not blocks:
        raise ValueError("no test block to judge")
    if family < 1 or trials < 1:
        raise ValueError(f"family and trials must be at least 1, were {family} and {trials}")
    each = 1.0 - (1.0 - confidence) / family
    rng = np.random.default_rng(seed)
    verdicts = [judge_block(b, costs, rng, shifts) for b in blocks]
    edges: dict[str, dict[str, Interval]] = {}
    p_value: dict[str, float] = {}
    block_p: dict[str, list[float]] = {}
    for arm in ("net", "gross"):
        values = [getattr(v, arm) for v in verdicts]
        edges[arm] = {base: mean_ci([v["policy"] - v[base] for v in values], each) for base in ARMS if base != "policy"}
        nulls = [v.null_net if arm == "net" else v.null_gross for v in verdicts]
        observed = sum(v["policy"] for v in values)
        p_value[arm] = rank_p_value(observed, np.sum(nulls, axis=0))
        block_p[arm] = [rank_p_value(v["policy"], nn) for v, nn in zip(values, nulls, strict=True)]
    returns = np.array([v.net["policy"] for v in verdicts])
    hours = float(np.mean([v.hours for v in verdicts]))
    per_year = 365 * 24 / hours if hours > 0 else 0.0
    sr = sharpe(returns)
    sweep = {
        bps: {
            base: mean_ci([v.sweep[bps]["policy"] - v.sweep[bps][base] for v in verdicts], each)
            for base in ARMS
            if base != "policy"
        }
        for bps in SWEEP_BPS
    }
    matched = turnover_matched(
        sum(v.turnover["policy"] for v in verdicts), sum(v.turnover["random"] for v in verdicts), len(verdicts)
    )
    return Verdict(
        blocks=verdicts,
        costs=costs,
        latency_ms=latency_ms,
        trials=trials,
        confidence=confidence,
        family=family,
        edges=edges,
        p_value=p_value,
        block_p_values=block_p,
        sharpe=sr,
        sharpe_annual=sr * math.sqrt(per_year),
        probabilistic_sharpe=probabilistic_sharpe(returns),
        deflated_sharpe=deflated_sharpe(returns, trials * family),
        sweep=sweep,
        cost_matched=matched,
    )


# --- reading it ------------------------------------------------------------------------------------


def _num(v: float, digits: int = 4) -> str:
    return f"{v:+.{digits}g}" if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def _iv(iv: Interval) -> str:
    return f"{_num(iv.value)} [{_num(iv.low)}, {_num(iv.high)}]"


def edge_word(iv: Interval) -> str:
    """``better``/``worse`` when the interval over blocks excludes 0, else ``no difference``."""
    if iv.low > 0:
        return "better"
    if iv.high < 0:
        return "worse"
    return "no difference"


def conclusion(v: Verdict) -> str:
    """One line: whether the policy earned more than its own trades out of time, after costs, at :attr:`Verdict.alpha`."""
    level = f"< {v.alpha:.3g}" + (f", {1 - v.confidence:g} over {v.family} symbols" if v.family > 1 else "")
    if v.significant("net"):
        return f"EDGE: beats its own positions out of time after costs (p = {v.p_value['net']:.3g} {level})"
    if v.significant("gross"):
        return (
            f"NO EDGE AFTER COSTS: a gross edge (p = {v.p_value['gross']:.3g} {level}) that costs eat "
            f"(net p = {v.p_value['net']:.3g})"
        )
    return (
        f"NO EDGE: not distinguishable from its own positions out of time (net p = {v.p_value['net']:.3g}, "
        f"needs {level})"
    )


def format_verdict(v: Verdict) -> str:
    """The verdict as Markdown: arms over blocks, edges, null p-values, Sharpe ratios, the fee sweep."""
    n = len(v.blocks)
    c = f"{100 * v.each_confidence:g}%"
    family = (
        f"; intervals at {c}: {100 * v.confidence:g}% over the {v.family} symbols judged together"
        if v.family > 1
        else ""
    )
    lines = [
        (
            f"{n} test blocks (the unit of replication; seeds averaged inside each), {np.mean([b.hours for b in v.blocks]):.2f} h"
            f" each; costs {10_000 * v.costs.fee:g} bps fee + {10_000 * v.costs.slippage:g} bps slippage per side; fills "
            f"{v.latency_ms} ms after each decision{family}"
        ),
        "",
        f"| arm | net return per block [{c} CI] | gross | turnover per block |",
        "|---|---|---|---:|",
    ]
    for arm in ARMS:
        net = mean_ci([b.net[arm] for b in v.blocks], v.each_confidence)
        gross = mean_ci([b.gross[arm] for b in v.blocks], v.each_confidence)
        turnover = float(np.mean([b.turnover[arm] for b in v.blocks]))
        lines.append(f"| {arm} | {_iv(net)} | {_iv(gross)} | {turnover:.1f} |")
    lines += ["", f"| policy minus | net [{c} CI over blocks] | | gross | |", "|---|---|---|---|---|"]
    for base in ARMS[1:]:
        net, gross = v.edges["net"][base], v.edges["gross"][base]
        lines.append(f"| {base} | {_iv(net)} | {edge_word(net)} | {_iv(gross)} | {edge_word(gross)} |")
    lines += [
        "",
        f"shift null (the policy's own positions at {NULL_SHIFTS} random offsets per block): "
        f"net p = {v.p_value['net']:.3g}, gross p = {v.p_value['gross']:.3g}; per block net p "
        + ", ".join(f"{p:.2g}" for p in v.block_p_values["net"]),
        f"random baseline cost-matched: {'yes' if v.cost_matched else 'NO'}",
        (
            f"Sharpe of the net block returns: {v.sharpe:+.3g} per block ({v.sharpe_annual:+.3g} annualised from blocks); "
            f"probabilistic Sharpe P(SR > 0) = {v.probabilistic_sharpe:.3f}; deflated for {v.trials * v.family} "
            f"configuration(s) tried = {v.deflated_sharpe:.3f}"
        ),
        "",
        "| cost per side | policy minus random | policy minus buy_and_hold | policy minus flat |",
        "|---|---|---|---|",
    ]
    for bps, edges in v.sweep.items():
        cells = " | ".join(_iv(edges[b]) for b in ("random", "buy_and_hold", "flat"))
        lines.append(f"| {bps:g} bps | {cells} |")
    lines += ["", conclusion(v)]
    return "\n".join(lines)


def verdict_json(v: Verdict) -> dict[str, object]:
    """The verdict's numbers for ``--json`` (infinite interval ends as null)."""

    def iv(x: Interval) -> dict[str, float | int | None]:
        def num(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {"mean": x.value, "low": num(x.low), "high": num(x.high), "n": x.n}

    return {
        "costs": {"fee": v.costs.fee, "slippage": v.costs.slippage, "latency_ms": v.latency_ms},
        "blocks": [
            {"hours": b.hours, "steps": b.steps, "net": b.net, "gross": b.gross, "turnover": b.turnover}
            for b in v.blocks
        ],
        "edges": {
            arm: {base: {**iv(x), "verdict": edge_word(x)} for base, x in e.items()} for arm, e in v.edges.items()
        },
        "p_value": v.p_value,
        "block_p_values": v.block_p_values,
        "sharpe_per_block": v.sharpe,
        "sharpe_annualised_from_blocks": v.sharpe_annual,
        "probabilistic_sharpe": v.probabilistic_sharpe,
        "deflated_sharpe": v.deflated_sharpe,
        "trials": v.trials,
        "family": v.family,
        "alpha": v.alpha,
        "interval_confidence": v.each_confidence,
        "cost_matched": v.cost_matched,
        "sweep_bps": {f"{bps:g}": {base: iv(x) for base, x in e.items()} for bps, e in v.sweep.items()},
        "conclusion": conclusion(v),
    }
