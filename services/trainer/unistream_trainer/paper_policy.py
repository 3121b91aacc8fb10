"""Paper trading of the current policy on live packets, and sensitivity learning from its trades (pure).

:class:`PaperPolicy` sees every training packet as it arrives. For each symbol it holds a position;
at a packet it asks the trading DQN for its greedy action given that position (the decision uses
only that packet and the past), moves the :class:`~unistream_trainer.paper.PaperPortfolio` to the
action's target position (filled a packet later, as :mod:`~unistream_trainer.paper` executes; the
returned change is the decision's), and when that opens a trade it tags it with the signal's context (the
DQN's Q-values, the CNN's 1s predictions). Every closed trade's net outcome (fees included) is fed
to the :class:`~unistream_trainer.sensitivity.SensitivityLearner`, which learns at which confidence
and size to act, scored on held-out blocks of trades against acting always and a threshold chosen
on earlier trades. The decisions are booked twice: at full size (the signals, whose trades teach
the learner, skipped or not) and as the paper trader takes them, sized by the learner only while
it beats both rules (else at full size: the two books are then the same).

**Kept books.** :meth:`PaperPolicy.to_bytes` holds everything booked and learned (the portfolio's
ledgers, positions, pending fills, the sensitivity learner with its optimizer and stored trades)
as a torch file of tensors and plain values, read back with ``weights_only`` (no code is run):
the trainer keeps it in Redis, so that the next leader goes on with the same books
(:meth:`PaperPolicy.load_bytes`).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch

from unistream_common.packets import TrainingDataPacket
from unistream_trainer.dqn import ACTION_POSITION
from unistream_trainer.paper import DEFAULT_LATENCY_MS, DEFAULT_SLIPPAGE, PaperPortfolio
from unistream_trainer.sensitivity import CONTEXT_NAMES, SensitivityLearner, packet_predictions, signal_context

BOOKS_FORMAT = 1  # of PaperPolicy.state_dict; books of another format are not taken


class Policy(Protocol):
    def greedy_action(self, packet: TrainingDataPacket, position: int) -> tuple[int, np.ndarray]: ...


class PaperPolicy:
    """Positions per symbol, the paper portfolio, and the sensitivity learner fed by its closed trades."""

    def __init__(
        self,
        fee: float = 0.001,
        seed: int = 0,
        sensitivity_updates_per_trade: int = 4,
        latency_ms: int = DEFAULT_LATENCY_MS,
        slippage: float = DEFAULT_SLIPPAGE,
    ) -> None:
        # The DQN's own decisions at full size (their closed trades teach the sensitivity learner)
        # and the paper trader's book: the same decisions, sized by the learner when it trades.
        self.signals = PaperPortfolio(fee=fee, seed=seed, latency_ms=latency_ms, slippage=slippage)
        self.portfolio = PaperPortfolio(fee=fee, seed=seed, latency_ms=latency_ms, slippage=slippage)
        self.sensitivity = SensitivityLearner(len(CONTEXT_NAMES), seed=seed)
        self.positions: dict[str, int] = {}  # the DQN's position per symbol
        self.sized: dict[str, float] = {}  # the paper trader's position per symbol
        self.sizes: dict[str, float] = {}  # the size of the signal's open trade per symbol
        self.last_ts: dict[str, int] = {}
        self.updates_per_trade = sensitivity_updates_per_trade
        self.decisions = 0

    def on_packet(self, packet: TrainingDataPacket, policy: Policy) -> tuple[int, int] | None:
        """Decide at ``packet`` (older or repeated packets of a symbol are ignored).

        Returns the paper trader's (position before, position after) when the decision changed
        it, else None. A new signal trade's size is the sensitivity learner's when it trades
        (:meth:`~unistream_trainer.sensitivity.SensitivityLearner.trading`), else full.
        """
        symbol = packet.symbol
        if packet.ts_event_ms <= self.last_ts.get(symbol, 0):
            return None
        self.last_ts[symbol] = packet.ts_event_ms
        position = self.positions.get(symbol, 0)
        action, q_values = policy.greedy_action(packet, position)
        target = ACTION_POSITION[action]
        tag = None
        if target != 0 and target != position:
            tag = signal_context(q_values, action, packet_predictions(packet), fill=0.0)
            learner_trades, _ = self.sensitivity.trading()
            self.sizes[symbol] = self.sensitivity.decide(tag)[1] if learner_trades else 1.0
        closed = self.signals.step(symbol, packet.ts_event_ms, packet.price, float(target), tag)
        sized_before = self.sized.get(symbol, 0.0)
        sized = target * self.sizes.get(symbol, 1.0)
        self.portfolio.step(symbol, packet.ts_event_ms, packet.price, sized)
        self.positions[symbol], self.sized[symbol] = target, sized
        self.decisions += 1
        for trade in closed:
            if trade.tag is not None:
                self.sensitivity.record(np.asarray(trade.tag, np.float32), trade.net_return)
                self.sensitivity.train(self.updates_per_trade)
        return (sized_before, sized) if sized != sized_before else None

    def metrics(self) -> dict[str, float]:
        """The paper trader's ``paper/*`` (sized), the signals' net PnL at full size
        (``paper/signal_pnl``), ``paper/sizing`` (1 while the learner sizes the trades) and ``sensitivity/*``."""
        out = self.portfolio.metrics()
        out.update(self.sensitivity.metrics())
        out["paper/decisions"] = float(self.decisions)
        out["paper/signal_pnl"] = self.signals.pnl()
        out["paper/sizing"] = out["sensitivity/trading"]
        return out

    # --- keeping the books --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": BOOKS_FORMAT,
            "portfolio": self.portfolio.state_dict(),
            "signals": self.signals.state_dict(),
            "sensitivity": self.sensitivity.state_dict(),
            "positions": dict(self.positions),
            "sized": dict(self.sized),
            "sizes": dict(self.sizes),
            "last_ts": dict(self.last_ts),
            "decisions": self.decisions,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take the books of :meth:`state_dict`, all or nothing; ValueError says why not (another
        format, other execution settings, another learner shape, missing parts)."""
        if state.get("format") != BOOKS_FORMAT:
            raise ValueError(f"the books are of format {state.get('format')!r}, this trainer reads {BOOKS_FORMAT}")
        mine = self.portfolio
        books = []
        for name in ("portfolio", "signals"):
            if not isinstance(state.get(name), Mapping):
                raise ValueError(f"the books are incomplete or malformed: no {name}")  # noqa: TRY004 - bad input
            book = PaperPortfolio(fee=mine.fee, seed=mine.seed, latency_ms=mine.latency_ms, slippage=mine.slippage)
            book.load_state_dict(state[name])
            books.append(book)
        sensitivity = copy.deepcopy(self.sensitivity)
        sensitivity.load_state_dict(state["sensitivity"])
        try:
            sized = {str(k): float(v) for k, v in state["sized"].items()}
            sizes = {str(k): float(v) for k, v in state["sizes"].items()}
            positions = {str(k): int(v) for k, v in state["positions"].items()}
            last_ts = {str(k): int(v) for k, v in state["last_ts"].items()}
            decisions = int(state["decisions"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"the books are incomplete or malformed: {type(exc).__name__}: {exc}") from exc
        (self.portfolio, self.signals), self.sensitivity = books, sensitivity
        self.positions, self.last_ts, self.decisions = positions, last_ts, decisions
        self.sized, self.sizes = sized, sizes

    def to_bytes(self, **meta: str | int) -> bytes:
        """:meth:`state_dict` (with ``meta``, e.g. who kept it and when) as bytes."""
        buf = io.BytesIO()
        torch.save({**self.state_dict(), "meta": dict(meta)}, buf)
        return buf.getvalue()

    def load_bytes(self, data: bytes) -> dict[str, str | int]:
        """Take the books of :meth:`to_bytes`; returns their ``meta``. ValueError (nothing changed)
        for bytes that are not such books or books this policy cannot go on with."""
        try:
            state = torch.load(io.BytesIO(data), weights_only=True)
        except Exception as exc:  # torch raises many kinds for foreign or broken files
            raise ValueError(f"the books could not be read: {type(exc).__name__}: {exc}") from exc
        if not isinstance(state, dict):
            raise ValueError(f"the books hold a {type(state).__name__}, not a dict")  # noqa: TRY004 - bad input, one kind
        self.load_state_dict(state)
        meta = state.get("meta")
        return dict(meta) if isinstance(meta, dict) else {}
