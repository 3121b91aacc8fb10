"""Features core: window building, microstructure, state layout, CNN, engine emission rules, weight loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from unistream_common import codec
from unistream_common.packets import Bar, GapMarker, Tick, TickBatch
from unistream_features import microstructure as micro
from unistream_features.cnn import HIDDEN, PREDICTION_NAMES, CnnRunner, ModelRejected, init_model, sha256_hex
from unistream_features.core import FeatureConfig, FeatureEngine
from unistream_features.state import make_layout
from unistream_features.window import CHANNELS, CLIP, N_CHANNELS, build_window

torch.set_num_threads(1)

T0 = 1_700_000_000_000  # ms, aligned to the second


def make_bar(i: int, close: float, symbol: str = "ETHUSDT", volume: float = 2.0, filled: bool = False) -> Bar:
    """The i-th 1s bar after T0, closing at ``close``, opening at close / 1.0001."""
    open_ = close / 1.0001
    if filled:
        return Bar(symbol, "1s", T0 + 1000 * i, T0 + 1000 * (i + 1), close, close, close, close,
                   0.0, 0.0, 0, close, 0.0, True, "SYNTHETIC")  # fmt: skip
    high, low = max(open_, close) * 1.0002, min(open_, close) * 0.9998
    return Bar(symbol, "1s", T0 + 1000 * i, T0 + 1000 * (i + 1), open_, high, low, close,
               volume, volume * close, 5 + i % 7, (open_ + close) / 2, volume * 0.6, False, "SYNTHETIC")  # fmt: skip


def random_walk_bars(n: int, seed: int = 1, symbol: str = "ETHUSDT") -> list[Bar]:
    rng = np.random.default_rng(seed)
    closes = 3000.0 * np.exp(np.cumsum(rng.normal(0, 3e-4, n)))
    return [make_bar(i, float(c), symbol, volume=float(rng.uniform(0.1, 5))) for i, c in enumerate(closes)]


def make_ticks(n: int, start_ms: int, step_ms: int = 50, symbol: str = "ETHUSDT", first_id: int = 1) -> TickBatch:
    ticks = [
        Tick(
            trade_id=first_id + k,
            price=3000.0 + (k % 5) * 0.5,
            size=0.01 * (1 + k % 3),
            aggressor_side="BUY" if k % 3 else "SELL",
            ts_event_ms=start_ms + k * step_ms,
            ts_recv_ms=start_ms + k * step_ms + 5,
        )
        for k in range(n)
    ]
    return TickBatch(symbol, "SYNTHETIC", ticks)


# --- window -----------------------------------------------------------------------------------


def test_window_with_fewer_bars_is_left_zero_padded_and_fill_is_their_share():
    bars = random_walk_bars(30)
    window, fill = build_window(bars, 300)
    assert window.shape == (N_CHANNELS, 300)
    assert window.dtype == np.float32
    assert fill == pytest.approx(30 / 300)
    assert not window[:, :270].any(), "padding columns must be all zero"
    real = window[CHANNELS.index("real")]
    assert real[270:].tolist() == [1.0] * 30


def test_window_with_more_bars_keeps_the_newest_and_uses_the_previous_close_for_the_first_return():
    bars = random_walk_bars(350)
    window, fill = build_window(bars, 300)
    assert fill == 1.0
    ret = window[CHANNELS.index("ret")]
    assert ret[0] != 0.0, "the first column's return comes from the bar before the window"
    # The newest column is the newest bar: its price relative to itself is 0.
    assert window[CHANNELS.index("price_rel"), -1] == 0.0


def test_window_channels_are_finite_and_clipped_even_for_extreme_and_empty_bars():
    bars = random_walk_bars(300)
    # A 50 % jump among 1 bp moves is ~17 RMS returns: clipped to CLIP, not inf or huge.
    bars[200] = make_bar(200, bars[199].close * 1.5)
    bars[201:] = [make_bar(i, b.close * 1.5) for i, b in enumerate(bars[201:], start=201)]
    bars[250] = make_bar(250, bars[249].close, filled=True)
    window, _ = build_window(bars, 300)
    assert np.isfinite(window).all()
    assert np.abs(window).max() <= CLIP
    assert window[CHANNELS.index("ret"), 200] == CLIP
    assert window[CHANNELS.index("filled"), 250] == 1.0
    assert window[CHANNELS.index("taker_imbalance"), 250] == 0.0  # no volume: no imbalance


def test_window_normalisation_makes_returns_scale_free():
    calm = random_walk_bars(100, seed=3)
    # The same path with every log return doubled: price channels must not change (up to float error).
    wild = [make_bar(i, float(3000 * (b.close / 3000) ** 2)) for i, b in enumerate(calm)]
    a, _ = build_window(calm, 100)
    b, _ = build_window(wild, 100)
    ret = CHANNELS.index("ret")
    np.testing.assert_allclose(a[ret], b[ret], atol=1e-3)


def test_window_of_no_bars_is_all_zero_with_zero_fill():
    window, fill = build_window([], 10)
    assert fill == 0.0 and not window.any()


# --- microstructure ---------------------------------------------------------------------------


def test_tick_cache_wraps_keeps_newest_in_order_and_ignores_duplicates():
    cache = micro.TickCache(10)
    batch = make_ticks(25, T0)
    assert cache.push(batch.ticks) == 25
    assert cache.push(batch.ticks[-5:]) == 0, "trades already cached are duplicates"
    assert len(cache) == 10
    ts = cache.ordered()[0]
    assert ts.tolist() == [T0 + k * 50 for k in range(15, 25)]
    assert cache.newest_ts_ms == T0 + 24 * 50


def test_microstructure_uses_only_trades_before_the_bar_close_and_per_horizon():
    cache = micro.TickCache(1000)
    cache.push(make_ticks(400, T0, step_ms=100).ticks)  # 40 s of trades, 10 per second
    end = T0 + 20_000
    values, coverage = micro.microstructure(cache, end)
    names = micro.feature_names()
    assert values.shape == (len(names),) and np.isfinite(values).all()
    v = dict(zip(names, values.tolist()))
    # 10 s horizon: 100 trades in [end-10s, end) -> log1p(10/s); trades at or after `end` are excluded.
    assert v["trade_rate_10s"] == pytest.approx(math.log1p(10.0), rel=1e-6)
    assert v["trade_rate_60s"] == pytest.approx(math.log1p(200 / 60), rel=1e-6)
    assert -1.0 <= v["volume_imbalance_10s"] <= 1.0
    assert v["realised_vol_10s"] > 0
    assert coverage == pytest.approx(20_000 / 300_000)


def test_microstructure_of_an_empty_cache_is_zero():
    values, coverage = micro.microstructure(micro.TickCache(5), T0)
    assert not values.any() and coverage == 0.0


# --- state layout, CNN ------------------------------------------------------------------------


def test_state_layout_blocks_are_contiguous_and_default_dim_is_2791():
    layout = make_layout(300)
    assert layout.dim == 9 * 300 + HIDDEN + len(PREDICTION_NAMES) + 7 * 3 + 2 == 2791
    end = 0
    for _, start, length in layout.blocks:
        assert start == end
        end = start + length
    assert layout.slice("cnn_hidden") == slice(2700, 2764)


def test_cnn_outputs_have_the_documented_shapes_and_probabilities_sum_to_one():
    runner = CnnRunner(seed=7, now_ms=T0)
    window, _ = build_window(random_walk_bars(300), 300)
    hidden, preds = runner.infer(window)
    assert hidden.shape == (HIDDEN,) and preds.shape == (len(PREDICTION_NAMES),)
    assert preds[:3].sum() == pytest.approx(1.0, abs=1e-5)
    assert (preds[:3] > 0).all() and np.abs(hidden).max() <= 1.0
    assert runner.status.state == "INITIALISED" and runner.status.version == "cnn-init-7"


def test_cnn_initialisation_is_deterministic_per_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a, b, c = init_model(7), init_model(7), init_model(8)
    assert torch.rand(1).item() == before.item(), "init_model must not consume the global RNG"
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.state_dict()["hidden.0.weight"], c.state_dict()["hidden.0.weight"])


def test_cnn_loads_announced_safetensors_weights_and_reports_loaded():
    runner = CnnRunner(seed=7, now_ms=T0)
    trained = init_model(99)
    data = save_safetensors(trained.state_dict())
    runner.load(data, sha256_hex(data), "cnn-trained-1", announced_ts_ms=T0 + 5, now_ms=T0 + 10)
    assert runner.status.state == "LOADED" and runner.status.version == "cnn-trained-1"
    window, _ = build_window(random_walk_bars(40), 300)
    with torch.inference_mode():
        expected = torch.softmax(trained(torch.from_numpy(window).unsqueeze(0))[1], dim=1)[0].numpy()
    np.testing.assert_allclose(runner.infer(window)[1][:3], expected, rtol=1e-5)


def test_cnn_rejects_weights_whose_sha256_differs_from_the_announcement():
    runner = CnnRunner(seed=7, now_ms=T0)
    data = save_safetensors(init_model(99).state_dict())
    with pytest.raises(ModelRejected, match="sha256"):
        runner.load(data, "0" * 64, "cnn-bad", T0, T0)
    assert runner.status.state == "INITIALISED"


def test_cnn_rejects_weights_of_another_architecture_and_non_safetensors_bytes():
    runner = CnnRunner(seed=7, now_ms=T0)
    wrong = save_safetensors({"hidden.0.weight": torch.zeros(3, 3)})
    with pytest.raises(ModelRejected, match="do not match"):
        runner.load(wrong, sha256_hex(wrong), "cnn-wrong", T0, T0)
    junk = b"\x80\x04not safetensors"
    with pytest.raises(ModelRejected, match="not a safetensors"):
        runner.load(junk, sha256_hex(junk), "cnn-junk", T0, T0)


# --- engine -----------------------------------------------------------------------------------


def small_engine(**kw: int) -> FeatureEngine:
    return FeatureEngine(FeatureConfig(tick_capacity=500, bar_capacity=100, window_bars=60, min_bars=5, **kw), 7, T0)


def test_engine_emits_nothing_before_min_bars_then_one_decodable_packet_per_bar():
    engine = small_engine()
    engine.on_ticks(make_ticks(100, T0))
    bars = random_walk_bars(8)
    out = [engine.on_bar(b) for b in bars]
    assert out[:4] == [None] * 4
    packets = [p for p in out if p is not None]
    assert len(packets) == 4
    p = packets[-1]
    decoded = codec.decode(codec.encode(p))
    assert decoded == p
    state = codec.f32_from_bytes(p.state)
    assert p.state_dim == engine.layout.dim == state.size and np.isfinite(state).all()
    assert p.ts_event_ms == bars[-1].close_time_ms and p.price == bars[-1].close
    assert p.window_fill == pytest.approx(8 / 60)
    assert p.prediction_names == list(PREDICTION_NAMES) and p.model_version == "cnn-init-7"
    np.testing.assert_array_equal(
        state[engine.layout.slice("cnn_predictions")], codec.f32_from_bytes(p.cnn_predictions)
    )
    np.testing.assert_array_equal(state[engine.layout.slice("cnn_hidden")], codec.f32_from_bytes(p.cnn_features))
    assert state[engine.layout.slice("context")][0] == pytest.approx(8 / 60)


def test_engine_ignores_a_redelivered_bar_and_counts_out_of_order_ones():
    engine = small_engine()
    bars = random_walk_bars(10)
    for b in bars:
        engine.on_bar(b)
    assert engine.on_bar(bars[-1]) is None
    assert engine.symbol("ETHUSDT").bars_seen == 10
    engine.drain_events()
    engine.symbol("ETHUSDT").bars.pop(3)  # a hole in the buffer: a bar for it is history, not news
    engine.symbol("ETHUSDT").opens.pop(3)
    assert engine.on_bar(bars[3]) is None
    assert engine.drain_events()["bars_out_of_order"] == 1


def test_engine_after_rebuild_emits_only_bars_newer_than_the_emission_mark():
    bars = random_walk_bars(20)
    engine = small_engine()
    engine.rebuild("ETHUSDT", reversed(bars), [make_ticks(50, T0)], emitted_until_ms=bars[14].close_time_ms)
    assert len(engine.symbol("ETHUSDT").bars) == 20
    assert all(engine.on_bar(b) is None for b in bars[:15]), "already emitted before the restart"
    late = engine.on_bar(bars[15])
    assert late is not None and late.ts_event_ms == bars[15].close_time_ms
    # Its window ends at bar 15 itself, not at the newer bars the rebuild buffered.
    state = codec.f32_from_bytes(late.state)
    window, _ = build_window(bars[:16], 60)
    np.testing.assert_allclose(state[: window.size], window.reshape(-1), atol=1e-6)


def test_totals_after_a_rebuild_are_never_below_the_cache_sizes():
    engine = small_engine()
    engine.rebuild("ETHUSDT", random_walk_bars(20), [make_ticks(50, T0)], emitted_until_ms=0)
    st = engine.symbol("ETHUSDT")
    assert (st.ticks_seen, st.bars_seen) == (50, 20)
    engine.on_ticks(make_ticks(5, T0 + 60_000, first_id=1_000))
    assert st.ticks_seen == 55
    engine.rebuild("ETHUSDT", random_walk_bars(20), [make_ticks(50, T0)], emitted_until_ms=0)
    assert st.ticks_seen == 55, "a second rebuild does not count the same trades again"


def test_engine_trims_the_bar_buffer_to_capacity():
    engine = small_engine()
    for b in random_walk_bars(130):
        engine.on_bar(b)
    st = engine.symbol("ETHUSDT")
    assert len(st.bars) == 100 and st.opens == sorted(st.opens) and st.bars_seen == 130


def test_ui_packets_report_buffers_model_and_latest_predictions_per_symbol():
    engine = small_engine()
    engine.on_ticks(make_ticks(30, T0))
    for b in random_walk_bars(6):
        engine.on_bar(b)
    engine.on_ticks(make_ticks(3, T0 + 1000, symbol="BTCUSDT"))
    packets = {p.symbol: p for p in engine.ui_packets(T0 + 9000, ["ETHUSDT", "BTCUSDT", "SOLUSDT"])}
    assert set(packets) == {"ETHUSDT", "BTCUSDT"}, "a symbol without data gets no packet"
    eth = packets["ETHUSDT"]
    assert (eth.tick_cache_size, eth.tick_cache_capacity, eth.ticks_seen) == (30, 500, 30)
    assert (eth.bars_1s_size, eth.bars_1s_capacity, eth.bars_seen, eth.training_packets) == (6, 100, 6, 2)
    assert eth.cnn.state == "INITIALISED" and eth.cnn.parameters > 0
    assert eth.rl_state_dim == engine.layout.dim
    assert len(codec.f32_from_bytes(eth.cnn_predictions)) == 4
    assert packets["BTCUSDT"].cnn_predictions == b"" and packets["BTCUSDT"].last_price > 0
    assert codec.decode(codec.encode(eth)) == eth


# --- settings and model URIs ------------------------------------------------------------------


def test_features_settings_default_to_the_seed_sizes_and_refuse_a_window_larger_than_the_buffer():
    from pydantic import ValidationError

    from unistream_features.settings import FeaturesSettings

    s = FeaturesSettings()
    assert (s.tick_cache_size, s.bar_cache_size, s.window_bars, s.min_bars) == (5_000, 1_000, 300, 20)
    assert (s.cycle_ms, s.training_maxlen, s.ui_maxlen, s.model_dir) == (100, 10_000, 50, "models")
    with pytest.raises(ValidationError, match="UNISTREAM_BAR_CACHE_SIZE"):
        FeaturesSettings(bar_cache_size=100, window_bars=300)
    with pytest.raises(ValidationError, match="UNISTREAM_WINDOW_BARS"):
        FeaturesSettings(window_bars=50, min_bars=60)


def test_model_uris_resolve_file_urls_absolute_and_relative_paths_and_refuse_remote_ones(tmp_path):
    from unistream_features.service import resolve_model_uri

    target = tmp_path / "cnn" / "a b.safetensors"
    assert resolve_model_uri(target.as_uri(), "/elsewhere") == target
    assert resolve_model_uri(str(target), "/elsewhere") == target
    assert resolve_model_uri("cnn/x.safetensors", str(tmp_path)) == tmp_path / "cnn" / "x.safetensors"
    with pytest.raises(ModelRejected, match="https"):
        resolve_model_uri("https://example.com/x.safetensors", str(tmp_path))


def test_gap_markers_are_counted_into_the_status_packet():
    engine = small_engine()
    engine.on_ticks(make_ticks(3, T0))
    engine.on_gap(GapMarker("ETHUSDT", "REAL", 4, 10, T0, T0 + 500, "backfill_failed", T0 + 600))
    engine.on_gap(GapMarker("ETHUSDT", "REAL", 20, 20, T0 + 900, T0 + 950, "backfill_failed", T0 + 990))
    (ui,) = engine.ui_packets(T0 + 1_000, ["ETHUSDT"])
    assert (ui.gaps_seen, ui.trades_missing) == (2, 8)
