"""The leader's books kept and taken back: a successor goes on exactly as the leader would have."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from unistream_common import codec
from unistream_common.packets import TrainingDataPacket
from unistream_trainer.paper_policy import PaperPolicy

T0 = 1_700_000_000_000
SYMBOLS = ("ETHUSDT", "BTCUSDT")
NAMES = ["1s.p_bottom", "1s.p_none", "1s.p_top", "1s.p_down", "1s.p_up"]
torch.set_num_threads(1)


class ChurningPolicy:
    """Long, short or flat, drawn from the packet's time (the same at every run): many short trades."""

    def greedy_action(self, packet: TrainingDataPacket, position: int) -> tuple[int, np.ndarray]:
        rng = np.random.default_rng(packet.ts_event_ms // 1000 + len(packet.symbol))
        q = rng.normal(0, 1, 3).astype(np.float32)
        action = int(q.argmax()) if rng.random() < 0.06 else {0: 0, 1: 1, -1: 2}[position]
        return action, q


def packets(steps: int, seed: int = 3, dt_ms: int = 10_000) -> list[TrainingDataPacket]:
    rng = np.random.default_rng(seed)
    out = []
    prices = {"ETHUSDT": 3_000.0, "BTCUSDT": 60_000.0}
    for t in range(steps):
        for symbol in SYMBOLS:
            prices[symbol] *= math.exp(rng.normal(0, 2e-3))
            packet = TrainingDataPacket(
                symbol=symbol, ts_event_ms=T0 + dt_ms * t, price=prices[symbol], source="SYNTHETIC",
                state_dim=4, state=codec.f32_to_bytes(np.zeros(4)), cnn_features=b"",
                cnn_predictions=codec.f32_to_bytes(rng.random(5)), prediction_names=NAMES,
                model_version="cnn-mtf-init-7", window_fill=1.0,
            )  # fmt: skip
            out.append(packet)
    return out


def trade(paper: PaperPolicy, stream: list[TrainingDataPacket]) -> None:
    policy = ChurningPolicy()
    for p in stream:
        paper.on_packet(p, policy)


@pytest.fixture(scope="module")
def stream() -> list[TrainingDataPacket]:
    return packets(4 * 360 + 30)  # past three completed hours: Sharpe and hourly edges are reported


def test_books_taken_by_a_successor_go_on_exactly_as_the_leader_s_would(stream: list[TrainingDataPacket]):
    torch.manual_seed(0)
    half = len(stream) // 2 + 1  # one symbol's packet of a second done, the other's not: a portfolio step open
    leader = PaperPolicy(seed=5, sensitivity_updates_per_trade=1)
    trade(leader, stream[:half])
    kept = leader.to_bytes(kept_by="trainer-1", kept_ms=123)
    kept_trades = leader.sensitivity.trades
    trade(leader, stream[half:])

    successor = PaperPolicy(
        seed=9, sensitivity_updates_per_trade=1
    )  # another replica: its own seed, as a new leader has
    assert successor.load_bytes(kept) == {"kept_by": "trainer-1", "kept_ms": 123}
    trade(successor, stream[half:])
    fresh = PaperPolicy(seed=5, sensitivity_updates_per_trade=1)
    trade(fresh, stream[half:])

    assert successor.sensitivity.trades > 32 + kept_trades and kept_trades > 32, "the learner learned on both sides"
    assert leader.metrics()["paper/sharpe_hours"] >= 3
    assert successor.metrics() == leader.metrics()
    for a, b in zip(successor.sensitivity.q_network.parameters(), leader.sensitivity.q_network.parameters()):
        assert torch.equal(a, b)
    # the check can fail: books started afresh at the same point differ
    assert fresh.metrics()["paper/steps"] < leader.metrics()["paper/steps"]
    assert fresh.metrics()["sensitivity/trades"] < leader.metrics()["sensitivity/trades"]


def test_books_kept_under_other_costs_or_by_another_learner_shape_are_refused_and_nothing_changes(
    stream: list[TrainingDataPacket],
):
    leader = PaperPolicy(fee=0.001, seed=1)
    trade(leader, stream[:200])
    kept = leader.to_bytes()
    other = PaperPolicy(fee=0.0005, seed=1)
    trade(other, stream[:10])
    before = other.metrics()
    with pytest.raises(ValueError, match=r"fee 0.001 \(kept\) vs 0.0005 \(now\)"):
        other.load_bytes(kept)
    assert other.metrics() == before
    slower = PaperPolicy(seed=1, latency_ms=5_000)
    with pytest.raises(ValueError, match="latency_ms"):
        slower.load_bytes(kept)

    state = leader.state_dict()
    state["sensitivity"]["context_dim"] = 3
    with pytest.raises(ValueError, match="context_dim 3 \\(kept\\) vs 7 \\(now\\)"):
        PaperPolicy(seed=1).load_state_dict(state)
    state = leader.state_dict()
    del state["portfolio"]["books"]["ETHUSDT"]["policy"]["curve"]
    with pytest.raises(ValueError, match="incomplete or malformed"):
        PaperPolicy(seed=1).load_state_dict(state)
    state = leader.state_dict()
    state["format"] = 99
    with pytest.raises(ValueError, match="format 99"):
        PaperPolicy(seed=1).load_state_dict(state)


class Payload:
    """An object a pickle would build by running code: kept books never hold one."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("code ran",))


def test_bytes_that_are_not_books_are_refused_without_running_anything(capsys: pytest.CaptureFixture[str]):
    paper = PaperPolicy()
    with pytest.raises(ValueError, match="could not be read"):
        paper.load_bytes(b"not a torch file")
    buf = io.BytesIO()
    torch.save({"format": 1, "x": Payload()}, buf)
    with pytest.raises(ValueError, match="could not be read"):
        paper.load_bytes(buf.getvalue())
    assert "code ran" not in capsys.readouterr().out
    buf = io.BytesIO()
    torch.save([1, 2], buf)
    with pytest.raises(ValueError, match="list, not a dict"):
        paper.load_bytes(buf.getvalue())


def test_the_paper_trader_takes_the_signals_at_full_size_until_the_learner_trades_then_at_its_size(
    stream: list[TrainingDataPacket],
):
    shadow = PaperPolicy(seed=2, sensitivity_updates_per_trade=1)
    trade(shadow, stream[:400])
    assert shadow.metrics()["paper/sizing"] == 0.0
    assert shadow.portfolio.metrics() == shadow.signals.metrics(), "in the shadow the two books are one"

    sized = PaperPolicy(seed=2, sensitivity_updates_per_trade=1)
    sized.sensitivity.trading = lambda: (True, "learner sizes the trades")  # type: ignore[method-assign]
    sized.sensitivity.decide = lambda context: (True, 0.5)  # type: ignore[method-assign]
    policy, fills = ChurningPolicy(), []
    for p in stream[:400]:
        change = sized.on_packet(p, policy)
        if change is not None:
            fills.append(change)
    assert fills and all(abs(a) in (0.0, 0.5) and abs(b) in (0.0, 0.5) for a, b in fills)
    assert set(sized.sized.values()) <= {-0.5, 0.0, 0.5} and set(sized.positions.values()) <= {-1, 0, 1}
    assert sized.signals.metrics() == shadow.signals.metrics(), "the signals book is the DQN's at full size"
    half, full = sized.portfolio.metrics(), sized.signals.metrics()
    assert half["paper/fees"] == pytest.approx(full["paper/fees"] / 2)
    assert half["paper/gross_pnl"] == pytest.approx(full["paper/gross_pnl"] / 2)
