"""Paper trading on the training stream and the statistics that judge it (pure).

No I/O and no clock: every time comes in as an argument (``ts_ms``, event time in milliseconds).

**Execution.** ``PaperBook.step(ts_ms, price, target_position)`` is a decision taken at ``ts_ms``
on everything known then. It fills at the first step at or after ``ts_ms + latency_ms`` (1 s by
default: with a packet a second, the next bar's close, never the deciding bar's own price), at that
step's price, and pays ``fee + slippage`` per side of the change there (the fee is the venue's, the
slippage the half spread and the impact; 2 bps by default). A later decision due at the same step
replaces an earlier one. ``unistream evaluate`` (:mod:`unistream_tools.verdict`) executes the
same way. A step books

    r_k = h_{k-1} * log(price_k / price_{k-1}) - (fee + slippage) * |h_k - h_{k-1}|

where ``h_k`` is the position held after step ``k``'s fills (the move of the position held since
the previous step, then the cost of what filled now; the first step has no move). Nothing after
step ``k`` can change ``r_1 .. r_k``. An open position is marked to market, never closed for the
report. ``latency_ms=0`` and ``slippage=0`` give the old model, which fills at a price the policy
could not get: only for tests of the accounting.

**Units.** Returns are log returns of one unit of notional (position -1..+1), net of costs;
``fee`` and ``slippage`` are per side as fractions of notional (0.001 = Binance spot 0.1 %), so a
flip from long to short pays two sides. The equity curve ``E_k = r_1 + .. + r_k`` starts at
``E_0 = 0``; wealth is ``exp(E)``.

**Trades.** A trade runs from opening a non-zero position to flat or to the opposite side (a flip
closes one trade and opens the next; resizing on the same side stays in the trade). Its net
return is the sum of its moves less its fees: the entry fee, any resizing fees and the exit fee
(on a flip the exit side goes to the closing trade, the entry side to the new one).

**Baselines**, fed the same prices and executed the same way inside every book: ``buy_and_hold``
(long from the first decision, one entry cost), ``flat`` (always 0) and ``random``: the policy's
own held position of ``lag`` earlier (a seeded lag between 30 min and 2 h per book), so it makes
the same trades, holds them as long and pays the same costs, with their timing destroyed. (A
random policy drawing positions of its own pays other costs: the one this replaced paid ~1.33 fee
units per change against the policy's ~1.08, and on pure noise that difference was the policy's
whole "edge".) Offline, :mod:`unistream_tools.verdict` shifts the positions circularly instead
and ranks the policy in the distribution of shifts.

**Metrics** (:meth:`PaperBook.metrics`, ``paper/...``): ``pnl`` (sum of net log returns),
``pnl_pct`` (``100 * (exp(pnl) - 1)``), ``sharpe`` (mean / sample std of the net returns of each
completed hour of event time, times ``sqrt(24 * 365)``; 0 until :data:`SHARPE_MIN_HOURS` hours
are complete, ``sharpe_hours`` says how many it rests on: never annualised from seconds, where
minutes of data gave values in the thousands), ``max_drawdown`` (largest fall of
wealth from its running peak, ``1 - exp(E_k - max_{j<=k} E_j)``, a fraction), ``win_rate`` (share
of closed trades whose net return is > 0; 0 without closed trades, see ``trades``),
``trades_per_hour`` (closed trades per hour of event time between the first and the last step),
``fee_share`` (``fees / (|gross_pnl| + fees)``, fees meaning every cost paid, slippage included: 0
without costs, 1/2 when they equal the gross PnL in size, 1 when the gross PnL is 0), and
``pnl``/``sharpe``/``max_drawdown`` of each baseline as ``paper/<baseline>_<metric>``, and
``edge_random``/``edge_flat`` (with ``_low``, ``_high``, ``_hours``): the policy's net return less
the turnover-matched random baseline's (less nothing: flat's) per completed hour, the mean and its
95 % Student-t interval over the hours, from :data:`SHARPE_MIN_HOURS` completed hours on (what the
dashboard's Training page judges the live policy by; offline, :mod:`unistream_tools.verdict`).

Several symbols: :class:`PaperPortfolio`, one book per symbol, capital split equally among the
symbols seen so far (see there).

Statistics for walk-forward folds: :func:`mean_ci` (Student-t interval of the mean),
:func:`bootstrap_ci` (percentile bootstrap of any statistic), :func:`fold_rows` and
:func:`format_table` (the Markdown table ``unistream evaluate`` prints).
"""

from __future__ import annotations

import math
import random
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

MS_PER_HOUR = 3_600_000
HOURS_PER_YEAR = 365 * 24
SHARPE_MIN_HOURS = 3  # completed hours of returns before a Sharpe ratio is reported
BASELINES: tuple[str, ...] = ("buy_and_hold", "flat", "random")
DEFAULT_LATENCY_MS = 1_000  # a decision fills at the first price this long after it: the next 1s bar
DEFAULT_SLIPPAGE = 0.0002  # per side, beside the fee: 2 bps of spread and impact on a liquid spot pair
RANDOM_LAG_MS = (30 * 60_000, 2 * 3_600_000)  # the random baseline holds the policy's position of this long ago
TABLE_METRICS: tuple[str, ...] = ("pnl", "sharpe", "max_drawdown")


# --- one equity curve ---------------------------------------------------------------------------


class _Curve:
    """Per-step returns of one equity curve, kept online: equity, drawdown, hourly sums, first and last step."""

    def __init__(self) -> None:
        self.equity = 0.0
        self.peak = 0.0
        self.max_drawdown = 0.0  # fraction of wealth
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.hourly: dict[int, float] = {}  # hour (ts_ms // 1 h) -> its summed returns

    def add(self, ts_ms: int, r: float) -> None:
        self.equity += r
        self.peak = max(self.peak, self.equity)
        self.max_drawdown = max(self.max_drawdown, -math.expm1(self.equity - self.peak))
        if self.first_ts is None:
            self.first_ts = ts_ms
        self.last_ts = ts_ms
        hour = ts_ms // MS_PER_HOUR
        self.hourly[hour] = self.hourly.get(hour, 0.0) + r

    def state_dict(self) -> dict[str, Any]:
        return {
            "equity": self.equity, "peak": self.peak, "max_drawdown": self.max_drawdown,
            "first_ts": self.first_ts, "last_ts": self.last_ts, "hourly": sorted(self.hourly.items()),
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _Curve:
        c = cls()
        c.equity, c.peak, c.max_drawdown = float(state["equity"]), float(state["peak"]), float(state["max_drawdown"])
        c.first_ts, c.last_ts = state["first_ts"], state["last_ts"]
        c.hourly = {int(h): float(r) for h, r in state["hourly"]}
        return c

    def copy(self) -> _Curve:
        c = _Curve()
        c.__dict__.update(self.__dict__)
        c.hourly = dict(self.hourly)
        return c

    def completed_hours(self) -> list[float]:
        """The summed returns of every hour from the first to the last before the current one (0 when idle)."""
        if self.last_ts is None or self.first_ts is None:
            return []
        first, current = self.first_ts // MS_PER_HOUR, self.last_ts // MS_PER_HOUR
        if self.first_ts % MS_PER_HOUR:
            first += 1  # the first hour began before the first step: partial, left out like the current one
        return [self.hourly.get(h, 0.0) for h in range(first, current)]

    def sharpe(self) -> float:
        """Sharpe ratio of the completed hours' returns, annualised (x sqrt(24 x 365)); 0 under SHARPE_MIN_HOURS."""
        hours = self.completed_hours()
        if len(hours) < SHARPE_MIN_HOURS:
            return 0.0
        mean = sum(hours) / len(hours)
        std = math.sqrt(sum((h - mean) ** 2 for h in hours) / (len(hours) - 1))
        if std <= 1e-9 * abs(mean) + 1e-15:  # constant returns, up to float rounding
            return 0.0
        return mean / std * math.sqrt(HOURS_PER_YEAR)


# --- trades and one account ---------------------------------------------------------------------


@dataclass(frozen=True)
class ClosedTrade:
    """A trade from opening a position to flat or to the opposite side."""

    side: int  # +1 long, -1 short
    entry_ts_ms: int
    exit_ts_ms: int
    entry_price: float
    exit_price: float
    net_return: float  # sum of position * log returns while open, less all of its fees
    fees: float
    tag: object = None  # what the caller passed with the step that opened it (e.g. a signal context)


@dataclass
class _OpenTrade:
    side: int
    entry_ts_ms: int
    entry_price: float
    net_return: float
    fees: float
    tag: object


def _tag_state(tag: object) -> list[float] | None:
    """A trade's tag as kept books hold it: None, or its values as floats (a signal context)."""
    if tag is None:
        return None
    try:
        return [float(v) for v in tag]  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a tag must be None or a sequence of numbers to be kept, was {tag!r}") from exc


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


@dataclass
class _Ledger:
    """The account of one policy on one symbol: decisions fill ``latency_ms`` later, paying ``cost`` per side."""

    cost: float  # fee + slippage, per side
    latency_ms: int = 0
    position: float = 0.0
    price: float | None = None
    steps: int = 0
    changes: int = 0  # steps whose target differed from the position held
    fees: float = 0.0
    gross: float = 0.0  # sum of position * log returns, before fees
    trades: int = 0  # closed trades
    wins: int = 0
    last_return: float = 0.0
    open_trade: _OpenTrade | None = None
    curve: _Curve = field(default_factory=_Curve)
    pending: deque[tuple[int, float, object]] = field(default_factory=deque)  # (fill at or after, target, tag)

    def step(self, ts_ms: int, price: float, target: float, tag: object = None) -> list[ClosedTrade]:
        move = self.position * math.log(price / self.price) if self.price is not None else 0.0
        self.gross += move
        if self.open_trade is not None:
            self.open_trade.net_return += move
        self.pending.append((ts_ms + self.latency_ms, target, tag))
        due: tuple[int, float, object] | None = None
        while self.pending and self.pending[0][0] <= ts_ms:
            due = self.pending.popleft()  # a later decision due now replaces an earlier one
        if due is not None:
            target, tag = due[1], due[2]
        else:
            target = self.position
        closed: list[ClosedTrade] = []
        cost = 0.0
        if target != self.position:
            self.changes += 1
            cost = self.cost * abs(target - self.position)
            self.fees += cost
            old_side, new_side = _sign(self.position), _sign(target)
            if old_side == new_side:  # resize on the same side: the trade goes on
                assert self.open_trade is not None
                self.open_trade.net_return -= cost
                self.open_trade.fees += cost
            else:
                entry_cost = cost
                if self.open_trade is not None:  # exit: flat or the other side
                    exit_cost = self.cost * abs(self.position)
                    entry_cost = cost - exit_cost
                    closed.append(self._close(ts_ms, price, exit_cost))
                if new_side:
                    self.open_trade = _OpenTrade(new_side, ts_ms, price, -entry_cost, entry_cost, tag)
        self.last_return = move - cost
        self.curve.add(ts_ms, self.last_return)
        self.position = target
        self.price = price
        self.steps += 1
        return closed

    def state_dict(self) -> dict[str, Any]:
        t = self.open_trade
        return {
            "cost": self.cost, "latency_ms": self.latency_ms, "position": self.position, "price": self.price,
            "steps": self.steps, "changes": self.changes, "fees": self.fees, "gross": self.gross,
            "trades": self.trades, "wins": self.wins, "last_return": self.last_return,
            "open_trade": None if t is None else {
                "side": t.side, "entry_ts_ms": t.entry_ts_ms, "entry_price": t.entry_price,
                "net_return": t.net_return, "fees": t.fees, "tag": _tag_state(t.tag),
            },
            "curve": self.curve.state_dict(),
            "pending": [(ts, target, _tag_state(tag)) for ts, target, tag in self.pending],
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _Ledger:
        t = state["open_trade"]
        return cls(
            cost=float(state["cost"]), latency_ms=int(state["latency_ms"]), position=float(state["position"]),
            price=state["price"], steps=int(state["steps"]), changes=int(state["changes"]),
            fees=float(state["fees"]), gross=float(state["gross"]), trades=int(state["trades"]),
            wins=int(state["wins"]), last_return=float(state["last_return"]),
            open_trade=None if t is None else _OpenTrade(
                int(t["side"]), int(t["entry_ts_ms"]), float(t["entry_price"]), float(t["net_return"]),
                float(t["fees"]), t["tag"],
            ),
            curve=_Curve.from_state(state["curve"]),
            pending=deque((int(ts), float(target), tag) for ts, target, tag in state["pending"]),
        )  # fmt: skip

    def _close(self, ts_ms: int, price: float, exit_cost: float) -> ClosedTrade:
        t = self.open_trade
        assert t is not None
        self.open_trade = None
        trade = ClosedTrade(
            side=t.side,
            entry_ts_ms=t.entry_ts_ms,
            exit_ts_ms=ts_ms,
            entry_price=t.entry_price,
            exit_price=price,
            net_return=t.net_return - exit_cost,
            fees=t.fees + exit_cost,
            tag=t.tag,
        )
        self.trades += 1
        self.wins += trade.net_return > 0
        return trade


def _fee_share(fees: float, gross: float) -> float:
    denominator = abs(gross) + fees
    return fees / denominator if denominator > 0 else 0.0


def _hours(first_ts: int | None, last_ts: int | None) -> float:
    if first_ts is None or last_ts is None:
        return 0.0
    return (last_ts - first_ts) / 3_600_000


def _curve_metrics(curve: _Curve, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}pnl": curve.equity,
        f"{prefix}sharpe": curve.sharpe(),
        f"{prefix}max_drawdown": curve.max_drawdown,
    }


EDGES: tuple[str, ...] = ("random", "flat")  # baselines the policy's hourly edge is measured against


def _edge_metrics(policy: _Curve, baseline: _Curve, name: str, confidence: float = 0.95) -> dict[str, float]:
    """``paper/edge_<name>[_low|_high|_hours]``: the policy's net return less ``baseline``'s per completed
    hour, its mean and Student-t interval over the hours (live, the hour is the unit of replication,
    as the test block is offline); only ``_hours`` until :data:`SHARPE_MIN_HOURS` are complete."""
    p, b = policy.completed_hours(), baseline.completed_hours()
    n = min(len(p), len(b))
    out = {f"paper/edge_{name}_hours": float(n)}
    if n >= SHARPE_MIN_HOURS:
        iv = mean_ci([x - y for x, y in zip(p[len(p) - n :], b[len(b) - n :], strict=True)], confidence)
        out.update(
            {f"paper/edge_{name}": iv.value, f"paper/edge_{name}_low": iv.low, f"paper/edge_{name}_high": iv.high}
        )
    return out


# --- one symbol ---------------------------------------------------------------------------------


class PaperBook:
    """Paper trading of one symbol: the policy's account and the three baselines' on the same prices."""

    def __init__(
        self,
        fee: float = 0.001,
        seed: int = 0,
        latency_ms: int = DEFAULT_LATENCY_MS,
        slippage: float = DEFAULT_SLIPPAGE,
    ) -> None:
        if not (0.0 <= fee < 1.0 and 0.0 <= slippage < 1.0):
            raise ValueError(f"fee and slippage must be in [0, 1), were {fee} and {slippage}")
        if latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, was {latency_ms}")
        self.fee = fee
        self.slippage = slippage
        self.latency_ms = latency_ms
        self.policy = _Ledger(fee + slippage, latency_ms)
        self.baselines: dict[str, _Ledger] = {name: _Ledger(fee + slippage, latency_ms) for name in BASELINES}
        self.lag_ms = random.Random(seed).randint(*RANDOM_LAG_MS)
        self._held: deque[tuple[int, float]] = deque()  # (ts, the policy's held position) over the last lag

    @property
    def position(self) -> float:
        """The policy's position now."""
        return self.policy.position

    @property
    def steps(self) -> int:
        return self.policy.steps

    def step(self, ts_ms: int, price: float, target_position: float, tag: object = None) -> list[ClosedTrade]:
        """Apply a decision taken at ``(ts_ms, price)``; returns the policy's trades it closed (0 or 1).

        ``target_position`` is in [-1, 1] (the DQN's actions give 0, +1, -1). ``tag`` is kept with a
        trade this step opens and handed back in its :class:`ClosedTrade`. Steps must come in
        strictly increasing ``ts_ms``.
        """
        last = self.policy.curve.last_ts
        if last is not None and ts_ms <= last:
            raise ValueError(f"ts_ms {ts_ms} is not after the previous step's {last}")
        if not (math.isfinite(price) and price > 0):
            raise ValueError(f"price must be finite and positive, was {price}")
        if not (math.isfinite(target_position) and -1.0 <= target_position <= 1.0):
            raise ValueError(f"target_position must be in [-1, 1], was {target_position}")
        closed = self.policy.step(ts_ms, price, target_position, tag)
        self.baselines["buy_and_hold"].step(ts_ms, price, 1)
        self.baselines["flat"].step(ts_ms, price, 0)
        self._held.append((ts_ms, self.policy.position))
        cutoff = ts_ms - self.lag_ms
        while len(self._held) >= 2 and self._held[1][0] <= cutoff:
            self._held.popleft()
        lagged = self._held[0][1] if self._held[0][0] <= cutoff else 0.0
        self.baselines["random"].step(ts_ms, price, lagged)
        return closed

    def state_dict(self) -> dict[str, Any]:
        """Everything the book has booked, as plain values (see :meth:`PaperPortfolio.state_dict`)."""
        return {
            "fee": self.fee, "slippage": self.slippage, "latency_ms": self.latency_ms, "lag_ms": self.lag_ms,
            "policy": self.policy.state_dict(),
            "baselines": {name: ledger.state_dict() for name, ledger in self.baselines.items()},
            "held": list(self._held),
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PaperBook:
        book = cls(float(state["fee"]), 0, int(state["latency_ms"]), float(state["slippage"]))
        book.lag_ms = int(state["lag_ms"])
        book.policy = _Ledger.from_state(state["policy"])
        book.baselines = {name: _Ledger.from_state(state["baselines"][name]) for name in BASELINES}
        book._held = deque((int(ts), float(position)) for ts, position in state["held"])
        return book

    def last_returns(self) -> dict[str, float]:
        """Net return booked by the latest step, for the policy and each baseline."""
        out = {"policy": self.policy.last_return}
        out.update((name, ledger.last_return) for name, ledger in self.baselines.items())
        return out

    def metrics(self) -> dict[str, float]:
        """The ``paper/...`` metrics (see the module docstring)."""
        p = self.policy
        hours = _hours(p.curve.first_ts, p.curve.last_ts)
        out = _curve_metrics(p.curve, "paper/")
        out.update(
            {
                "paper/pnl_pct": 100.0 * math.expm1(p.curve.equity),
                "paper/gross_pnl": p.gross,
                "paper/fees": p.fees,
                "paper/fee_share": _fee_share(p.fees, p.gross),
                "paper/trades": float(p.trades),
                "paper/win_rate": p.wins / p.trades if p.trades else 0.0,
                "paper/trades_per_hour": p.trades / hours if hours > 0 else 0.0,
                "paper/position_changes": float(p.changes),
                "paper/steps": float(p.steps),
                "paper/hours": hours,
                "paper/position": float(p.position),
                "paper/sharpe_hours": float(len(p.curve.completed_hours())),
            }
        )
        for name, ledger in self.baselines.items():
            out.update(_curve_metrics(ledger.curve, f"paper/{name}_"))
        for name in EDGES:
            out.update(_edge_metrics(p.curve, self.baselines[name].curve, name))
        out["paper/random_position_changes"] = float(self.baselines["random"].changes)
        return out


# --- several symbols ----------------------------------------------------------------------------


class _PooledCurve:
    """An equity curve fed per symbol step: the steps at one ``ts_ms`` form one step, their mean return."""

    def __init__(self) -> None:
        self.curve = _Curve()
        self.pending_ts: int | None = None
        self.pending = 0.0  # sum of the symbols' returns in the open step
        self.pending_symbols = 1  # symbols in the portfolio when the open step last grew

    def add(self, ts_ms: int, r: float, n_symbols: int) -> None:
        if self.pending_ts is None:
            self.pending_ts = ts_ms
        elif ts_ms > self.pending_ts:
            self.curve.add(self.pending_ts, self.pending / self.pending_symbols)
            self.pending_ts, self.pending = ts_ms, 0.0
        self.pending += r  # the same time, or late (another symbol behind): joins the open step
        self.pending_symbols = n_symbols

    def state_dict(self) -> dict[str, Any]:
        return {
            "curve": self.curve.state_dict(), "pending_ts": self.pending_ts, "pending": self.pending,
            "pending_symbols": self.pending_symbols,
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _PooledCurve:
        c = cls()
        c.curve = _Curve.from_state(state["curve"])
        c.pending_ts, c.pending = state["pending_ts"], float(state["pending"])
        c.pending_symbols = int(state["pending_symbols"])
        return c

    def snapshot(self) -> _Curve:
        c = self.curve.copy()
        if self.pending_ts is not None:
            c.add(self.pending_ts, self.pending / self.pending_symbols)
        return c


class PaperPortfolio:
    """One :class:`PaperBook` per symbol, and the portfolio that holds them with equal capital.

    The portfolio splits its capital equally among its symbols: the steps of all symbols at one
    ``ts_ms`` make one portfolio step (1s bars of different symbols share their close times) whose
    return is the mean of theirs over the symbols seen so far (first order in log returns; exact
    for one symbol). ``pnl``, ``sharpe`` and ``max_drawdown`` are measured on that curve;
    ``gross_pnl`` and ``fees`` are the symbols' means (per unit of capital when every symbol runs
    from the start); trade counts, ``win_rate`` and ``trades_per_hour`` pool every symbol's closed
    trades. Baselines aggregate the same way.
    """

    def __init__(
        self,
        fee: float = 0.001,
        seed: int = 0,
        latency_ms: int = DEFAULT_LATENCY_MS,
        slippage: float = DEFAULT_SLIPPAGE,
    ) -> None:
        self.fee = fee
        self.seed = seed
        self.latency_ms = latency_ms
        self.slippage = slippage
        self.books: dict[str, PaperBook] = {}
        self._curves: dict[str, _PooledCurve] = {name: _PooledCurve() for name in ("policy", *BASELINES)}

    def step(
        self, symbol: str, ts_ms: int, price: float, target_position: float, tag: object = None
    ) -> list[ClosedTrade]:
        """:meth:`PaperBook.step` on ``symbol``'s book (created on first sight, its own seeded random baseline)."""
        book = self.books.get(symbol)
        if book is None:
            seed = (self.seed * 1_000_003 + zlib.crc32(symbol.encode())) & 0xFFFFFFFF
            book = self.books[symbol] = PaperBook(self.fee, seed, self.latency_ms, self.slippage)
        closed = book.step(ts_ms, price, target_position, tag)
        for name, r in book.last_returns().items():
            self._curves[name].add(ts_ms, r, len(self.books))
        return closed

    def state_dict(self) -> dict[str, Any]:
        """The books as plain values (numbers, strings, lists, dicts, None): what a successor needs to
        go on booking exactly as this portfolio would (:meth:`load_state_dict`). A trade's tag is
        kept as a list of floats (a signal context), or None."""
        return {
            "fee": self.fee, "seed": self.seed, "latency_ms": self.latency_ms, "slippage": self.slippage,
            "books": {symbol: book.state_dict() for symbol, book in self.books.items()},
            "curves": {name: curve.state_dict() for name, curve in self._curves.items()},
        }  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take the books of :meth:`state_dict`. Books kept under other costs or latency would go on
        booking by rules other than this portfolio's: ValueError says which differ, and nothing changes."""
        mine = {"fee": self.fee, "slippage": self.slippage, "latency_ms": self.latency_ms}
        differ = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if differ:
            raise ValueError(
                "the books were kept under other execution settings: "
                + ", ".join(f"{k} {kept} (kept) vs {now} (now)" for k, (kept, now) in differ.items())
            )
        try:
            books = {str(symbol): PaperBook.from_state(b) for symbol, b in state["books"].items()}
            curves = {name: _PooledCurve.from_state(state["curves"][name]) for name in ("policy", *BASELINES)}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the books are incomplete or malformed: {type(exc).__name__}: {exc}") from exc
        self.books, self._curves = books, curves

    def pnl(self) -> float:
        """The portfolio's net log return so far (``paper/pnl`` of :meth:`metrics`, without the rest)."""
        return self._curves["policy"].snapshot().equity

    def metrics(self) -> dict[str, float]:
        """The same ``paper/...`` names as :meth:`PaperBook.metrics`, for the whole portfolio."""
        ledgers = [b.policy for b in self.books.values()]
        trades = sum(p.trades for p in ledgers)
        wins = sum(p.wins for p in ledgers)
        firsts = [p.curve.first_ts for p in ledgers if p.curve.first_ts is not None]
        lasts = [p.curve.last_ts for p in ledgers if p.curve.last_ts is not None]
        hours = _hours(min(firsts), max(lasts)) if firsts else 0.0
        curve = self._curves["policy"].snapshot()
        gross = sum(p.gross for p in ledgers) / len(ledgers) if ledgers else 0.0
        fees = sum(p.fees for p in ledgers) / len(ledgers) if ledgers else 0.0
        out = _curve_metrics(curve, "paper/")
        out.update(
            {
                "paper/pnl_pct": 100.0 * math.expm1(curve.equity),
                "paper/gross_pnl": gross,
                "paper/fees": fees,
                "paper/fee_share": _fee_share(fees, gross),
                "paper/trades": float(trades),
                "paper/win_rate": wins / trades if trades else 0.0,
                "paper/trades_per_hour": trades / hours if hours > 0 else 0.0,
                "paper/position_changes": float(sum(p.changes for p in ledgers)),
                "paper/steps": float(sum(p.steps for p in ledgers)),
                "paper/hours": hours,
                "paper/symbols": float(len(self.books)),
                "paper/sharpe_hours": float(len(curve.completed_hours())),
            }
        )
        baselines = {name: self._curves[name].snapshot() for name in BASELINES}
        for name, baseline in baselines.items():
            out.update(_curve_metrics(baseline, f"paper/{name}_"))
        for name in EDGES:
            out.update(_edge_metrics(curve, baselines[name], name))
        out["paper/random_position_changes"] = float(sum(b.baselines["random"].changes for b in self.books.values()))
        return out

    def symbol_metrics(self) -> dict[str, dict[str, float]]:
        """Each symbol's own :meth:`PaperBook.metrics`."""
        return {symbol: book.metrics() for symbol, book in self.books.items()}


# --- statistics for walk-forward folds ----------------------------------------------------------


class Interval(NamedTuple):
    """A point estimate and its confidence interval over ``n`` values."""

    value: float
    low: float
    high: float
    n: int


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student-t cumulative distribution function."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Student-t quantile: the ``t`` with ``t_cdf(t, df) == p`` (bisection to float precision)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), was {p}")
    if df <= 0:
        raise ValueError(f"df must be positive, was {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if mid in (lo, hi):
            break
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def _finite_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("no values")
    if not np.isfinite(x).all():
        raise ValueError("values hold NaN or infinity")
    return x


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), was {confidence}")


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean and its Student-t confidence interval, ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)``.

    One value gives no spread to measure: the interval is (-inf, inf).
    """
    _check_confidence(confidence)
    x = _finite_array(values)
    n = x.size
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1)
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """``stat(values)`` and its percentile bootstrap interval from ``n_boot`` resamples (seeded).

    One value gives no spread to resample: the interval is (-inf, inf).
    """
    _check_confidence(confidence)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, was {n_boot}")
    x = _finite_array(values)
    value = float(stat(x))
    if x.size == 1:
        return Interval(value, -math.inf, math.inf, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = np.array([float(stat(x[row])) for row in idx])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boots, [alpha, 1.0 - alpha])
    return Interval(value, float(low), float(high), int(x.size))


@dataclass(frozen=True)
class TableRow:
    """One metric: the policy's interval over folds and each baseline's."""

    metric: str
    policy: Interval
    baselines: dict[str, Interval] = field(default_factory=dict)


def fold_rows(
    folds: Sequence[Mapping[str, float]],
    metrics: Sequence[str] = TABLE_METRICS,
    baselines: Sequence[str] = BASELINES,
    confidence: float = 0.95,
) -> list[TableRow]:
    """Rows for :func:`format_table` from per-fold ``paper/...`` metrics (t-intervals over folds)."""
    rows = []
    for m in metrics:
        policy = mean_ci([f[f"paper/{m}"] for f in folds], confidence)
        base = {}
        for b in baselines:
            key = f"paper/{b}_{m}"
            if all(key in f for f in folds):
                base[b] = mean_ci([f[key] for f in folds], confidence)
        rows.append(TableRow(m, policy, base))
    return rows


def _cell(iv: Interval, digits: int) -> str:
    def num(v: float) -> str:
        return f"{v:.{digits}g}" if math.isfinite(v) else ("inf" if v > 0 else "-inf")

    return f"{num(iv.value)} [{num(iv.low)}, {num(iv.high)}]"


def format_table(rows: Sequence[TableRow], digits: int = 4, confidence: float = 0.95) -> str:
    """A Markdown table: metric | policy mean [low, high] | one column per baseline (same form).

    ``confidence`` only labels the header; the intervals are whatever the rows hold. A baseline a
    row lacks shows as ``-``. Returns the text; the caller prints it.
    """
    names: list[str] = []
    for r in rows:
        names += [b for b in r.baselines if b not in names]
    header = ["metric", f"policy mean [{100 * confidence:g}% CI]", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [r.metric, _cell(r.policy, digits)]
        cells += [_cell(r.baselines[b], digits) if b in r.baselines else "-" for b in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
