"""The CNN's extrema heads in ``unistream evaluate``: scored walk-forward, each test block by the model
trained on the labels known before it, learning frozen inside it."""

from __future__ import annotations

import numpy as np
import pytest
from archives import archive_zip

from unistream_common import codec
from unistream_common.packets import TrainingDataPacket
from unistream_tools.evaluate import (
    ExtremaWalkForward,
    PacketSource,
    archive_span_ms,
    extrema_order,
    extrema_summary,
    extrema_walk_forward,
    format_extrema,
    in_time_order,
    packets_from_archives,
    time_block_starts,
    walk_forward_bounds,
    with_trained_cnn,
)
from unistream_trainer.extrema import ExtremaTrainer, random_walk_extremum_rate

T0 = 1_740_000_000_000
pytestmark = pytest.mark.heavy
WINDOW = 16
RATE = 0.25  # extrema steps per packet
PUBLISHED: list[bytes] = []  # the walk's CNN per test block


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> PacketSource:
    path = archive_zip(tmp_path_factory.mktemp("archives"), "2025-02-19", 1, 900, T0, seed=4)
    return packets_from_archives({"ETHUSDT": [path]}, window_bars=WINDOW)


@pytest.fixture(scope="module")
def walk(src: PacketSource) -> tuple[list[TrainingDataPacket], list[int], list[dict[str, float]]]:
    ps = src.packets
    bounds = walk_forward_bounds(ps, folds=2)
    starts = [ps[a].ts_event_ms for a, _ in bounds[1:]]
    PUBLISHED.clear()
    return ps, starts, extrema_walk_forward(ps, starts, WINDOW, RATE, published=PUBLISHED)


def test_a_test_block_is_scored_by_the_model_trained_on_the_blocks_before_it_only(walk) -> None:  # type: ignore[no-untyped-def]
    ps, starts, blocks = walk
    assert len(blocks) == 2
    # A fresh trainer fed the first block as the live trainer is, then the second block without learning.
    fresh = ExtremaTrainer(window_bars=WINDOW, order=extrema_order(WINDOW), buffer_size=2_000, score_window=10**7)
    credit = 0.0
    for p in ps:
        if p.ts_event_ms >= starts[0]:
            break
        fresh.observe(p)
        credit += RATE
        if int(credit):
            fresh.train(int(credit))
            credit -= int(credit)
    fresh.reset_scores(from_ms=starts[0])
    scored = 0
    for p in ps:
        if starts[0] <= p.ts_event_ms < starts[1]:
            samples = fresh.observe(p)
            scored += sum(s.bar_close_ms >= starts[0] and s.timeframe == "1s" for s in samples)
            assert all(s.labelled_at_ms >= starts[0] for s in samples)
    assert fresh.metrics() == blocks[0]
    # Bars that closed before the block but were labelled inside it are trained on, not scored (embargo).
    assert blocks[0]["extrema/scored_1s"] == scored
    # Nothing after a block changes its scores: cut the data where the last block begins.
    cut = next(k for k, p in enumerate(ps) if p.ts_event_ms >= starts[1])
    assert extrema_walk_forward(ps[:cut], starts, WINDOW, RATE) == blocks[:1]


def test_the_summary_compares_each_head_with_the_base_rate_and_the_past_rule(walk) -> None:  # type: ignore[no-untyped-def]
    _, _, blocks = walk
    summary = extrema_summary(blocks)
    one = summary["1s"]["top"]
    assert one["blocks"] == 2 and 0 < one["base_rate"] < 1 and 0 < one["pr_auc"] <= 1 and 0 < one["past_rule"] <= 1
    # A random walk with quiet (flat) seconds: tops a little more often than the continuous walk's
    # 1/(pi k); the past rule, which sees half of what makes a top, ranks them better than chance.
    theory = random_walk_extremum_rate(extrema_order(WINDOW)["1s"])
    assert theory < one["base_rate"] < 2 * theory
    assert one["past_rule"] > 1.5 * one["base_rate"]
    assert one["labels"] > 500
    text = format_extrema(summary, extrema_order(WINDOW))
    assert "| 1s | 5 | top |" in text and "past rule" in text
    assert "no test block had a labelled extremum" in format_extrema({}, extrema_order(WINDOW))


def test_short_windows_take_the_largest_order_their_labels_fit() -> None:
    assert extrema_order(300) == {"1s": 5, "1m": 5, "1h": 5, "1d": 5}
    assert set(extrema_order(8).values()) == {3}


def test_each_block_s_states_get_the_cnn_trained_before_it_and_nothing_else_changes(src: PacketSource, walk) -> None:  # type: ignore[no-untyped-def]
    ps, starts, _ = walk
    bounds = walk_forward_bounds(ps, folds=2)
    seeded = ExtremaTrainer(window_bars=WINDOW).publish_bytes()  # the engine's own seeded CNN, as published
    same = with_trained_cnn(ps, starts, [seeded, seeded], src.layouts, WINDOW)
    layout = src.layouts["ETHUSDT"]
    cnn = [layout.slice(f"ETHUSDT.cnn.{b}") for b in ("branch", "hidden", "predictions")]
    for before, after in zip(ps, same, strict=True):  # recomputed from the state's windows: what the engine computed
        a, b = codec.f32_from_bytes(before.state), codec.f32_from_bytes(after.state)
        for part in cnn:
            np.testing.assert_allclose(b[part], a[part], rtol=1e-5, atol=1e-6)
    published = PUBLISHED
    assert len(published) == 2 and published[0] != published[1] != seeded
    trained = with_trained_cnn(ps, starts, published, src.layouts, WINDOW)
    first = bounds[1][0]
    assert trained[:first] == ps[:first], "the first block keeps the seeded CNN"
    cnn_mask = np.zeros(layout.dim, bool)
    for part in cnn:
        cnn_mask[part] = True
    changed = 0
    for before, after in zip(ps[first:], trained[first:], strict=True):
        a, b = codec.f32_from_bytes(before.state), codec.f32_from_bytes(after.state)
        assert np.array_equal(a[~cnn_mask], b[~cnn_mask]), "windows, microstructure, time and position untouched"
        changed += not np.array_equal(a[cnn_mask], b[cnn_mask])
        assert after.model_version != before.model_version
    assert changed == len(ps) - first


def test_packets_a_few_seconds_out_of_order_come_out_in_time_order() -> None:
    def packet(symbol: str, t: int) -> TrainingDataPacket:
        return TrainingDataPacket(symbol=symbol, ts_event_ms=t, price=1.0, source="REPLAY", state_dim=0, state=b"",
                                  cnn_features=b"", cnn_predictions=b"", prediction_names=[], model_version="", window_fill=1.0)  # fmt: skip

    arrived = [packet("ETHUSDT", 1_000), packet("ETHUSDT", 2_000), packet("BTCUSDT", 1_000), packet("ETHUSDT", 3_000),
               packet("BTCUSDT", 2_000), packet("BTCUSDT", 3_000)]  # fmt: skip
    out = list(in_time_order(arrived, slack_ms=1_500))
    assert [(p.ts_event_ms, p.symbol) for p in out] == [
        (1_000, "ETHUSDT"), (1_000, "BTCUSDT"), (2_000, "ETHUSDT"), (2_000, "BTCUSDT"), (3_000, "ETHUSDT"),
        (3_000, "BTCUSDT"),
    ]  # fmt: skip


def test_with_two_symbols_one_cnn_pass_a_second_fills_both_packets_as_the_engine_did(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    directory = tmp_path_factory.mktemp("pair")
    files = {
        "ETHUSDT": [archive_zip(directory, "2025-02-19", 1, 240, T0, seed=5)],
        "BTCUSDT": [archive_zip(directory, "2025-02-19", 1, 240, T0, seed=6, symbol="BTCUSDT", price=60_000.0)],
    }
    pair = packets_from_archives(files, window_bars=WINDOW)
    seeded = ExtremaTrainer(window_bars=WINDOW).publish_bytes()
    start = pair.packets[len(pair.packets) // 2].ts_event_ms
    rebuilt = with_trained_cnn(pair.packets, [start], [seeded], pair.layouts, WINDOW)
    parts = ("branch", "hidden", "predictions")
    checked = 0
    for before, after in zip(pair.packets, rebuilt, strict=True):
        layout = pair.layouts[before.symbol]
        a, b = codec.f32_from_bytes(before.state), codec.f32_from_bytes(after.state)
        for s in ("ETHUSDT", "BTCUSDT"):  # each symbol's blocks, wherever the packet's layout puts them
            for part in parts:
                cut = layout.slice(f"{s}.cnn.{part}")
                np.testing.assert_allclose(b[cut], a[cut], rtol=1e-5, atol=1e-6)
        checked += before.ts_event_ms >= start
    assert checked > 200


def test_one_build_feeds_the_extrema_heads_every_packet_and_keeps_every_stride_th_as_two_builds_did(
    tmp_path_factory: pytest.TempPathFactory, src: PacketSource
) -> None:
    path = archive_zip(tmp_path_factory.mktemp("again"), "2025-02-19", 1, 900, T0, seed=4)  # src's file
    files = {"ETHUSDT": [path]}
    first, last = archive_span_ms(files)
    starts = time_block_starts(first, last, 2)
    assert starts[0] % 1_000 == 0 and starts == sorted(starts) and first < starts[0] < starts[1] <= last
    assert abs((starts[1] - starts[0]) - (starts[0] - first)) <= 1_000, "blocks of equal duration"
    walk = ExtremaWalkForward(starts, WINDOW, RATE)
    strided = packets_from_archives(files, window_bars=WINDOW, stride=5, on_every=walk.observe)
    assert [p.ts_event_ms for p in strided.packets] == [p.ts_event_ms for p in src.packets[::5]]
    # what two passes gave: every packet of a stride-1 build, then the heads walked over them
    published: list[bytes] = []
    assert walk.finish() == extrema_walk_forward(src.packets, starts, WINDOW, RATE, published=published)
    assert walk.published == published and len(published) == 2
    bounds = walk_forward_bounds(strided.packets, 2, min_block=10, starts_ms=starts)
    assert [strided.packets[a].ts_event_ms >= t for (a, _), t in zip(bounds[1:], starts)] == [True, True]
    assert all(strided.packets[a - 1].ts_event_ms < t for (a, _), t in zip(bounds[1:], starts))
