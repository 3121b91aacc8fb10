"""Multi-timeframe CNN: shapes, batching, seeded init, probabilities, finiteness, branch isolation, weight loading."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from unistream_model.cnn import (
    BRANCH_FEATURES,
    EXPECTED_TENSORS,
    HIDDEN,
    N_CHANNELS,
    N_TIMEFRAMES,
    PREDICTION_NAMES,
    TIMEFRAMES,
    ModelRejected,
    MtfCnnRunner,
    init_model,
    predictions_from_logits,
    save_bytes,
    sha256_hex,
)

torch.set_num_threads(1)

T0 = 1_700_000_000_000  # ms
W = 64  # short windows keep the file fast; the architecture does not depend on the length


def windows(n: int, w: int = W, seed: int = 1) -> np.ndarray:
    """``n`` symbols of random normalised windows, (n, 4, 5, w) float32."""
    return np.random.default_rng(seed).normal(0.0, 1.0, (n, N_TIMEFRAMES, N_CHANNELS, w)).astype(np.float32)


def load_state(runner: MtfCnnRunner, tensors: dict[str, torch.Tensor], version: str = "cnn-mtf-bad") -> None:
    data = save_safetensors(tensors)
    runner.load(data, sha256_hex(data), version, announced_ts_ms=T0 + 5, now_ms=T0 + 10)


# --- model ------------------------------------------------------------------------------------


def test_prediction_names_are_five_per_timeframe_in_head_order():
    assert len(PREDICTION_NAMES) == 20
    assert PREDICTION_NAMES[:5] == ("1s.p_bottom", "1s.p_none", "1s.p_top", "1s.p_down", "1s.p_up")
    assert PREDICTION_NAMES[-1] == "1d.p_up"


def test_predictions_from_logits_follow_the_prediction_names():
    extrema = torch.full((1, 4, 3), -20.0)
    direction = torch.full((1, 4, 2), -20.0)
    extrema[0, 2, 2] = 20.0  # 1h: top
    direction[0, 3, 0] = 20.0  # 1d: down
    probs = dict(zip(PREDICTION_NAMES, predictions_from_logits(extrema, direction)[0].tolist(), strict=True))
    assert probs["1h.p_top"] == pytest.approx(1.0)
    assert probs["1d.p_down"] == pytest.approx(1.0)
    assert probs["1s.p_bottom"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("w", [300, 16, 8])
def test_model_outputs_have_the_documented_shapes_for_any_window_length(w):
    model = init_model(7)
    with torch.inference_mode():
        branch, hidden, extrema, direction = model(torch.from_numpy(windows(3, w)))
    assert branch.shape == (3, N_TIMEFRAMES, BRANCH_FEATURES) == (3, 4, 128)
    assert hidden.shape == (3, HIDDEN) == (3, 160)
    assert extrema.shape == (3, 4, 3) and direction.shape == (3, 4, 2)
    assert hidden.abs().max() <= 1.0, "the embedding is tanh-bounded"


@pytest.mark.parametrize("w", [300, 16])
def test_runner_returns_float32_arrays_of_the_documented_shapes(w):
    runner = MtfCnnRunner(seed=7, now_ms=T0, window_bars=w)
    branch, hidden, preds = runner.infer(windows(2, w))
    assert branch.shape == (2, 4 * 128) and hidden.shape == (2, HIDDEN) and preds.shape == (2, 20)
    assert branch.dtype == hidden.dtype == preds.dtype == np.float32


def test_runner_rejects_windows_of_another_shape_and_windows_shorter_than_eight_bars():
    runner = MtfCnnRunner(seed=7, now_ms=T0, window_bars=W)
    with pytest.raises(ValueError, match="shape"):
        runner.infer(windows(2, W + 1))
    with pytest.raises(ValueError, match="shape"):
        runner.infer(windows(2)[:, :3])
    with pytest.raises(ValueError, match="at least 8"):
        MtfCnnRunner(seed=7, now_ms=T0, window_bars=7)


def test_runner_with_no_symbols_returns_empty_arrays():
    branch, hidden, preds = MtfCnnRunner(seed=7, now_ms=T0, window_bars=W).infer(windows(0))
    assert branch.shape == (0, 512) and hidden.shape == (0, HIDDEN) and preds.shape == (0, 20)


def test_a_batch_of_two_symbols_equals_two_single_symbol_forwards():
    runner = MtfCnnRunner(seed=7, now_ms=T0, window_bars=300)
    x = windows(2, 300)
    batched = runner.infer(x)
    for i in range(2):
        for got, single in zip(batched, runner.infer(x[i : i + 1]), strict=True):
            np.testing.assert_allclose(got[i], single[0], rtol=0, atol=1e-6)


def test_initialisation_is_deterministic_per_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(1).item()
    torch.manual_seed(0)
    a, b, c = init_model(7), init_model(7), init_model(8)
    MtfCnnRunner(seed=9, now_ms=T0, window_bars=W)
    assert torch.rand(1).item() == before, "seeded initialisation must not consume the global RNG"
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    for tf in TIMEFRAMES:
        assert not torch.equal(a.branches[tf][0].weight, c.branches[tf][0].weight), tf
    assert not torch.equal(a.branches["1s"][0].weight, a.branches["1m"][0].weight), "branches share no weights"


def test_seeded_runner_is_labelled_as_untrained():
    status = MtfCnnRunner(seed=7, now_ms=T0, window_bars=W).status
    assert status.version == "cnn-mtf-init-7" and status.state == "INITIALISED"
    assert status.parameters == sum(int(np.prod(s)) for s in EXPECTED_TENSORS.values()) == 136_628
    assert status.updated_ms == T0 and status.announced_ts_ms == 0


def test_predictions_are_probabilities_per_timeframe_and_head():
    _, hidden, preds = MtfCnnRunner(seed=7, now_ms=T0, window_bars=W).infer(windows(5))
    per_tf = preds.reshape(5, N_TIMEFRAMES, 5)
    np.testing.assert_allclose(per_tf[:, :, :3].sum(axis=2), 1.0, atol=1e-6)
    np.testing.assert_allclose(per_tf[:, :, 3:].sum(axis=2), 1.0, atol=1e-6)
    assert ((preds > 0) & (preds < 1)).all()
    assert np.abs(hidden).max() <= 1.0


@pytest.mark.parametrize("value", [0.0, 10.0, -10.0, 3e38, np.nan, np.inf])
def test_outputs_are_finite_for_constant_and_extreme_inputs(value):
    runner = MtfCnnRunner(seed=7, now_ms=T0, window_bars=W)
    x = np.full((2, N_TIMEFRAMES, N_CHANNELS, W), value, dtype=np.float32)
    x[1, :, :, ::2] = -x[1, :, :, ::2]  # an alternating sign pattern as well as a constant one
    for out in runner.infer(x):
        assert np.isfinite(out).all()
    assert runner.nonfinite_outputs == 0
    assert runner.nonfinite_inputs == (x.size if not np.isfinite(value) else 0), "non-finite inputs are counted"


def test_inputs_beyond_the_clip_are_served_as_the_clip_and_non_finite_inputs_as_zero():
    runner = MtfCnnRunner(seed=7, now_ms=T0, window_bars=W)
    x = windows(1)
    x[0, 0, 0, :4] = 10.0
    x[0, 1, 2, 5] = 0.0
    wild = x.copy()
    wild[0, 0, 0, :4] = [11.0, 1e6, 1e30, 3e38]
    wild[0, 1, 2, 5] = np.nan
    for got, expected in zip(runner.infer(wild), runner.infer(x), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert runner.nonfinite_inputs == 1


def test_changing_one_timeframes_window_changes_only_that_branchs_features():
    runner = MtfCnnRunner(seed=7, now_ms=T0, window_bars=W)
    x = windows(1)
    base_branch, base_hidden, _ = runner.infer(x)
    base_branch = base_branch.reshape(N_TIMEFRAMES, BRANCH_FEATURES)
    for k in range(N_TIMEFRAMES):
        changed = x.copy()
        changed[0, k] = windows(1, seed=100 + k)[0, k]
        branch, hidden, _ = runner.infer(changed)
        branch = branch.reshape(N_TIMEFRAMES, BRANCH_FEATURES)
        for j in range(N_TIMEFRAMES):
            if j == k:
                assert not np.array_equal(branch[j], base_branch[j]), f"branch {TIMEFRAMES[j]} ignored its window"
            else:
                np.testing.assert_array_equal(branch[j], base_branch[j], err_msg=f"{TIMEFRAMES[k]} leaked into {j}")
        assert not np.array_equal(hidden, base_hidden), "the embedding sees every branch"


# --- loading ----------------------------------------------------------------------------------


def test_saved_weights_load_and_serve_the_same_outputs_as_the_trained_model():
    runner = MtfCnnRunner(seed=7, now_ms=T0, window_bars=W)
    trained = init_model(99)
    data = save_bytes(trained)
    torch.manual_seed(0)
    before = torch.rand(1).item()
    torch.manual_seed(0)
    runner.load(data, sha256_hex(data), "cnn-mtf-trained-1", announced_ts_ms=T0 + 5, now_ms=T0 + 10)
    assert torch.rand(1).item() == before, "loading must not consume the global RNG"
    status = runner.status
    assert (status.state, status.version, status.announced_ts_ms, status.updated_ms) == (
        "LOADED",
        "cnn-mtf-trained-1",
        T0 + 5,
        T0 + 10,
    )
    x = windows(3)
    reference = MtfCnnRunner(seed=99, now_ms=T0, window_bars=W)
    for got, expected in zip(runner.infer(x), reference.infer(x), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert runner.infer_with_version(x)[0] == "cnn-mtf-trained-1"
    assert not runner.model.training


def rejected_files() -> dict[str, tuple[str, dict[str, torch.Tensor] | bytes]]:
    good = init_model(99).state_dict()
    missing = {k: v for k, v in good.items() if k != "extrema_heads.1d.bias"}
    renamed = {k.replace("branches.1d.", "branches.1w."): v for k, v in good.items()}
    wrong_shape = dict(good, **{"embedding.0.weight": torch.zeros(HIDDEN, 3 * BRANCH_FEATURES)})
    nan = dict(good, **{"branches.1h.3.weight": good["branches.1h.3.weight"].clone().fill_(float("nan"))})
    half = dict(good, **{"embedding.0.bias": good["embedding.0.bias"].half()})
    huge = {k: torch.full_like(v, 1e30) for k, v in good.items()}
    return {
        "pickle": ("not a safetensors", pickle.dumps(good)),
        "junk": ("not a safetensors", b"\x80\x04not safetensors"),
        "missing tensor": ("missing \\['extrema_heads.1d.bias'\\]", missing),
        "renamed tensors": ("unexpected \\['branches.1w", renamed),
        "wrong shape": ("embedding.0.weight has shape \\(160, 384\\)", wrong_shape),
        "nan": ("branches.1h.3.weight holds NaN", nan),
        "float16": ("dtype torch.float16", half),
        "overflowing": ("overflow", huge),
    }


@pytest.mark.parametrize("case", list(rejected_files()))
def test_rejected_weights_leave_the_previous_model_serving_identical_outputs(case):
    runner = MtfCnnRunner(seed=7, now_ms=T0, window_bars=W)
    x = windows(2)
    before = runner.infer(x)
    status = runner.status
    reason, payload = rejected_files()[case]
    data = payload if isinstance(payload, bytes) else save_safetensors(payload)
    with pytest.raises(ModelRejected, match=reason):
        runner.load(data, sha256_hex(data), f"cnn-mtf-{case}", T0 + 5, T0 + 10)
    assert runner.status == status
    for got, expected in zip(runner.infer(x), before, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_weights_whose_sha256_differs_from_the_announcement_are_rejected_before_parsing():
    runner = MtfCnnRunner(seed=7, now_ms=T0, window_bars=W)
    x = windows(2)
    before = runner.infer(x)
    data = save_bytes(init_model(99))
    with pytest.raises(ModelRejected, match="sha256 of the file was"):
        runner.load(data, "0" * 64, "cnn-mtf-bad", T0 + 5, T0 + 10)
    assert runner.status.state == "INITIALISED" and runner.status.version == "cnn-mtf-init-7"
    np.testing.assert_array_equal(runner.infer(x)[2], before[2])


def test_a_rejected_file_after_a_good_one_keeps_the_good_one_serving():
    runner = MtfCnnRunner(seed=7, now_ms=T0, window_bars=W)
    load_state(runner, init_model(99).state_dict(), "cnn-mtf-trained-1")
    x = windows(2)
    before = runner.infer(x)
    with pytest.raises(ModelRejected):
        load_state(runner, {"embedding.0.weight": torch.zeros(3, 3)})
    assert runner.status.version == "cnn-mtf-trained-1" and runner.status.state == "LOADED"
    np.testing.assert_array_equal(runner.infer(x)[1], before[1])
