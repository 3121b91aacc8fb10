"""State layout v2: dimension and order, feature names, JSON and Markdown export, assembly checks, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from unistream_common.packets import Bar, Tick
from unistream_features.__main__ import main as features_main
from unistream_model.layout import (
    LAYOUT_VERSION,
    POSITION_NAMES,
    StateLayout,
    assemble,
    make_layout,
    position_slot,
    sanitize,
    time_features,
)
from unistream_model.micro import TickCache, micro_features
from unistream_model.micro import feature_names as micro_names
from unistream_model.mtf import CHANNELS, TIMEFRAMES, BarWindows

DEFAULT_DIM = 2 * (4 * 5 * 300 + 4 * 128 + 160 + 20 + 24 + 4) + 4 + 4  # 13,448

EXPECTED_ORDER = [
    *(f"ETHUSDT.window.{tf}" for tf in TIMEFRAMES),
    *(f"BTCUSDT.window.{tf}" for tf in TIMEFRAMES),
    *(f"ETHUSDT.{b}" for b in ("cnn.branch", "cnn.hidden", "cnn.predictions", "micro", "warmup")),
    *(f"BTCUSDT.{b}" for b in ("cnn.branch", "cnn.hidden", "cnn.predictions", "micro", "warmup")),
    "time",
    "position",
]


@pytest.fixture(scope="module")
def layout() -> StateLayout:
    return make_layout(("ETHUSDT", "BTCUSDT"))


def test_default_layout_has_13448_values_in_the_documented_order(layout: StateLayout):
    assert layout.version == LAYOUT_VERSION
    assert layout.dim == DEFAULT_DIM == 13_448
    assert [b.name for b in layout.blocks] == EXPECTED_ORDER
    sizes = {b.name: b.length for b in layout.blocks}
    assert sizes["ETHUSDT.window.1d"] == 5 * 300
    assert sizes["BTCUSDT.cnn.branch"] == 4 * 128
    assert sizes["ETHUSDT.cnn.hidden"] == 160
    assert sizes["ETHUSDT.cnn.predictions"] == 20
    assert sizes["BTCUSDT.micro"] == 24
    assert sizes["ETHUSDT.warmup"] == 4
    assert sizes["time"] == 4 and sizes["position"] == 4
    assert [b.start for b in layout.blocks[1:]] == [b.stop for b in layout.blocks[:-1]]
    assert layout.slice("position") == slice(DEFAULT_DIM - 4, DEFAULT_DIM)


def test_focus_symbol_comes_first_and_every_focus_shares_starts_and_lengths():
    eth = make_layout(("ETHUSDT", "BTCUSDT", "SOLUSDT"))
    btc = make_layout(("ETHUSDT", "BTCUSDT", "SOLUSDT"), focus="BTCUSDT")
    assert btc.symbols == ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    assert btc.blocks[0].name == "BTCUSDT.window.1s"
    assert btc.blocks[4].name == "ETHUSDT.window.1s"
    assert [(b.start, b.length) for b in eth.blocks] == [(b.start, b.length) for b in btc.blocks]
    assert eth.fingerprint != btc.fingerprint  # the same index means another symbol's value
    assert eth.role_fingerprint == btc.role_fingerprint  # ... but the same relative to the state's own symbol
    assert eth.tag == btc.tag == f"v2/{eth.role_fingerprint}"
    assert make_layout(("ETHUSDT",)).dim == 4 * 5 * 300 + 512 + 160 + 20 + 24 + 4 + 8


def test_every_block_boundary_name_round_trips_to_its_index(layout: StateLayout):
    for b in layout.blocks:
        for index in (b.start, b.stop - 1):
            name = layout.feature_name(index)
            assert layout.index_of(name) == index
            assert layout.block_at(index) is b
            assert name.startswith(b.name.split(".")[0])


def test_every_feature_name_is_unique_and_round_trips(layout: StateLayout):
    names = list(layout.feature_names())
    assert len(names) == layout.dim == len(set(names))
    assert all(layout.index_of(n) == i for i, n in enumerate(names))


def test_window_feature_names_say_symbol_timeframe_channel_and_lag(layout: StateLayout):
    start = layout.slice("ETHUSDT.window.1m").start
    close_ret = CHANNELS.index("close_ret")
    assert layout.feature_name(start + close_ret * 300 + 296) == "ETHUSDT.1m.close_ret[t-3]"
    assert layout.feature_name(start + close_ret * 300 + 299) == "ETHUSDT.1m.close_ret[t]"
    assert layout.feature_name(start) == "ETHUSDT.1m.open_rel[t-299]"
    assert layout.feature_name(layout.slice("BTCUSDT.cnn.predictions").start + 5) == "BTCUSDT.cnn.1m.p_bottom"
    assert layout.feature_name(layout.dim - 1) == "position.last_action"
    assert layout.index_of("time.dow_cos") == layout.dim - 5


@pytest.mark.parametrize("name", ["ETHUSDT.1m.close_ret[t-0]", "ETHUSDT.1m.close_ret[t-300]", "ETHUSDT.5m.open_rel[t]",
                                  "SOLUSDT.1m.open_rel[t]", "ETHUSDT.1m.vwap[t]", "nonsense"])  # fmt: skip
def test_unknown_or_non_canonical_feature_names_are_refused(layout: StateLayout, name: str):
    with pytest.raises(KeyError):
        layout.index_of(name)


def test_indices_outside_the_state_are_refused(layout: StateLayout):
    with pytest.raises(IndexError):
        layout.feature_name(layout.dim)
    with pytest.raises(IndexError):
        layout.feature_name(-1)
    with pytest.raises(KeyError, match="no block"):
        layout.slice("ETHUSDT.window.5m")


def test_bad_layout_arguments_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="listed twice"):
        make_layout(("ETHUSDT", "ETHUSDT"))
    with pytest.raises(ValueError, match="focus symbol SOLUSDT"):
        make_layout(("ETHUSDT", "BTCUSDT"), focus="SOLUSDT")
    with pytest.raises(ValueError, match="window_bars must be at least 1"):
        make_layout(("ETHUSDT",), window_bars=0)
    with pytest.raises(ValueError, match="not a valid symbol"):
        make_layout(("eth-usdt",))


def test_json_export_describes_every_block_and_names_small_blocks(layout: StateLayout):
    doc = json.loads(json.dumps(layout.to_json()))
    assert doc["version"] == LAYOUT_VERSION and doc["dim"] == DEFAULT_DIM
    assert doc["fingerprint"] == layout.fingerprint
    assert [b["name"] for b in doc["blocks"]] == EXPECTED_ORDER
    assert sum(b["length"] for b in doc["blocks"]) == doc["dim"]
    by_name = {b["name"]: b for b in doc["blocks"]}
    assert by_name["ETHUSDT.window.1h"]["channels"] == list(CHANNELS)
    assert by_name["ETHUSDT.window.1h"]["bars"] == 300
    assert "names" not in by_name["ETHUSDT.window.1h"]
    assert by_name["ETHUSDT.micro"]["names"] == [f"ETHUSDT.micro.{n}" for n in micro_names()]
    assert by_name["position"]["names"] == [f"position.{n}" for n in POSITION_NAMES]
    assert by_name["BTCUSDT.cnn.hidden"]["first"] == "BTCUSDT.cnn.hidden[0]"
    full = layout.to_json(all_names=True)
    assert [n for b in full["blocks"] for n in b["names"]] == list(layout.feature_names())


def test_markdown_table_lists_every_block_with_its_size(layout: StateLayout):
    table = layout.table_markdown()
    assert "13,448 float32 values" in table
    for b in layout.blocks:
        assert f"| `{b.name}` | {b.start:,} | {b.length:,} |" in table


# --- assembly ---------------------------------------------------------------------------------


def parts_for(layout: StateLayout, fill: float = 0.5) -> dict[str, np.ndarray]:
    return {b.name: np.full(b.length, fill, np.float32) for b in layout.blocks if b.name != "position"}


def test_assemble_places_each_part_at_its_block_and_leaves_position_zero():
    layout = make_layout(("ETHUSDT", "BTCUSDT"), window_bars=6)
    parts = parts_for(layout)
    window = np.arange(5 * 6, dtype=np.float32).reshape(5, 6)  # (channels, bars) as BarWindows returns it
    parts["BTCUSDT.window.1h"] = window
    parts["time"] = time_features(0)

    state = assemble(layout, parts)

    assert state.dtype == np.float32 and state.shape == (layout.dim,)
    sl = layout.slice("BTCUSDT.window.1h")
    c, col = 3, 4
    assert state[sl.start + c * 6 + col] == window[c, col]
    assert layout.feature_name(sl.start + c * 6 + col) == "BTCUSDT.1h.close_ret[t-1]"
    assert not state[layout.slice("position")].any()
    assert (state[layout.slice("ETHUSDT.micro")] == 0.5).all()


def test_assemble_refuses_missing_unknown_and_wrongly_sized_parts_naming_the_block():
    layout = make_layout(("ETHUSDT",), window_bars=4)
    parts = parts_for(layout)
    del parts["ETHUSDT.cnn.hidden"]
    with pytest.raises(ValueError, match=r"ETHUSDT\.cnn\.hidden is missing"):
        assemble(layout, parts)
    parts = parts_for(layout) | {"ETHUSDT.warmup": np.zeros(3)}
    with pytest.raises(ValueError, match=r"ETHUSDT\.warmup has 3 values, the layout needs 4"):
        assemble(layout, parts)
    parts = parts_for(layout) | {"BTCUSDT.micro": np.zeros(24)}
    with pytest.raises(ValueError, match=r"BTCUSDT\.micro are not blocks"):
        assemble(layout, parts)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e39])
def test_assemble_refuses_non_finite_values_naming_the_feature(bad: float):
    layout = make_layout(("ETHUSDT",), window_bars=4)
    parts = parts_for(layout)
    micro = np.zeros(24)
    micro[9] = bad  # 1e39 is finite as float64 but overflows float32
    parts["ETHUSDT.micro"] = micro
    with pytest.raises(
        ValueError, match=r"ETHUSDT\.micro holds 1 NaN or infinite values, first ETHUSDT\.micro\.volume_imbalance_60s"
    ):
        assemble(layout, parts)


def test_sanitize_replaces_and_counts_non_finite_values():
    clean, n = sanitize(np.array([1.0, np.nan, np.inf, -np.inf, 2.0]))
    assert n == 3
    assert clean.tolist() == [1.0, 0.0, 10.0, -10.0, 2.0]
    same, n = sanitize(np.array([0.5, -3.0]))
    assert n == 0 and same.tolist() == [0.5, -3.0]


def test_time_features_are_sin_cos_of_utc_hour_and_weekday():
    monday = 4 * 86_400_000  # 1970-01-05, a Monday, 00:00 UTC
    np.testing.assert_allclose(time_features(monday), [0.0, 1.0, 0.0, 1.0], atol=1e-7)
    six_am = time_features(monday + 6 * 3_600_000)
    assert six_am[0] == pytest.approx(1.0) and six_am[1] == pytest.approx(0.0, abs=1e-7)
    thursday_noon = time_features(12 * 3_600_000)  # 1970-01-01 was a Thursday
    phase = 2 * math.pi * 3.5 / 7
    np.testing.assert_allclose(thursday_noon[2:], [math.sin(phase), math.cos(phase)], atol=1e-6)


def test_state_from_the_real_builders_is_finite_and_counts_warm_up():
    layout = make_layout(("ETHUSDT", "BTCUSDT"), window_bars=3)
    t0 = 1_700_006_400_000
    windows = BarWindows(capacity={tf: 4 for tf in TIMEFRAMES})
    for i in range(5):
        for sym in ("ETHUSDT", "BTCUSDT"):
            c = 100.0 + i
            windows.add(Bar(sym, "1s", t0 + 1000 * i, t0 + 1000 * (i + 1), c, c, c, c, 1.0, c, 1, c, 0.5, False, "SYNTHETIC"))  # fmt: skip
    ticks = TickCache(100)
    ticks.push([Tick(k, 100.0 + k % 2, 0.1, "BUY", t0 + 500 * k, t0 + 500 * k) for k in range(10)])
    until = t0 + 5000
    parts: dict[str, np.ndarray] = {}
    for sym in layout.symbols:
        for tf in TIMEFRAMES:
            parts[f"{sym}.window.{tf}"], _ = windows.window(sym, tf, until, bars=3)
        parts[f"{sym}.cnn.branch"] = np.zeros(512)
        parts[f"{sym}.cnn.hidden"] = np.zeros(160)
        parts[f"{sym}.cnn.predictions"] = np.zeros(20)
        parts[f"{sym}.micro"], _ = micro_features(ticks, until)
        parts[f"{sym}.warmup"] = np.array(list(windows.fill(sym, until, bars=3).values()))
    parts["time"] = time_features(until)

    state = assemble(layout, parts)

    assert np.isfinite(state).all()
    assert state[layout.slice("ETHUSDT.warmup")].tolist() == [1.0, 0.0, 0.0, 0.0]


# --- CLI --------------------------------------------------------------------------------------


def test_cli_layout_json_prints_the_default_layout(capsys: pytest.CaptureFixture[str]):
    assert features_main(["layout", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dim"] == DEFAULT_DIM
    assert doc["symbols"] == ["ETHUSDT", "BTCUSDT"]
    assert [b["name"] for b in doc["blocks"]] == EXPECTED_ORDER


def test_cli_layout_takes_symbols_window_bars_and_focus(capsys: pytest.CaptureFixture[str]):
    assert features_main(["layout", "--json", "--symbols", "ethusdt,SOLUSDT", "--window-bars", "10", "--focus", "SOLUSDT"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["symbols"] == ["SOLUSDT", "ETHUSDT"]
    assert doc["dim"] == 2 * (4 * 5 * 10 + 512 + 160 + 20 + 24 + 4) + 8


def test_cli_layout_prints_the_table_or_one_line_per_feature(capsys: pytest.CaptureFixture[str]):
    assert features_main(["layout"]) == 0
    assert "| `ETHUSDT.window.1s` | 0 | 1,500 |" in capsys.readouterr().out
    assert features_main(["layout", "--features", "--symbols", "ETHUSDT", "--window-bars", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "0\tETHUSDT.1s.open_rel[t-1]"
    assert len(lines) == make_layout(("ETHUSDT",), window_bars=2).dim


def test_cli_layout_refuses_a_bad_symbol_with_exit_status_2(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exc:
        features_main(["layout", "--symbols", "ETH-USDT"])
    assert exc.value.code == 2
    assert "not a valid symbol" in capsys.readouterr().err


def test_cli_layout_does_not_import_torch():
    code = (
        "import sys; from unistream_features.__main__ import main; "
        "main(['layout', '--json']); assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dim"] == DEFAULT_DIM


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"symbols": ("BTCUSDT",)},
        {"symbols": ("SOLUSDT", "ETHUSDT", "BTCUSDT"), "window_bars": 7, "branch_features": 3, "hidden": 5},
        {"symbols": ("ETHUSDT", "BTCUSDT"), "focus": "BTCUSDT", "n_predictions_per_symbol": 2},
    ],
)
def test_the_trainer_finds_each_position_value_where_the_layout_names_it(kwargs: dict[str, object]) -> None:
    layout = make_layout(**kwargs)
    version = f"{layout.version}/{layout.fingerprint}"
    for name in POSITION_NAMES:
        assert position_slot(version, layout.dim, name) == layout.index_of(f"position.{name}")


def test_a_layout_without_a_position_block_has_no_slot() -> None:
    assert position_slot("v1/0123456789abcdef", 6_728) is None
    assert position_slot("", 100) is None
    with pytest.raises(KeyError, match="position block holds"):
        position_slot("v2/x", 100, "leverage")


def test_the_role_fingerprint_changes_with_the_symbols_a_feature_or_a_size_and_nothing_else():
    base = make_layout(("ETHUSDT", "BTCUSDT"))
    assert make_layout(("BTCUSDT", "ETHUSDT")).role_fingerprint == base.role_fingerprint  # BTC's own view
    changed = [
        make_layout(("ETHUSDT", "SOLUSDT")),  # another symbol: "other1" means something else
        make_layout(("ETHUSDT", "BTCUSDT", "SOLUSDT")),
        make_layout(("ETHUSDT", "BTCUSDT"), window_bars=299),
        make_layout(("ETHUSDT", "BTCUSDT"), hidden=156, branch_features=129),  # the same size, other blocks
        make_layout(("ETHUSDT", "BTCUSDT"), micro_names=[f"m{i}" for i in range(len(micro_names()))]),
    ]
    assert changed[3].dim == base.dim
    assert len({base.role_fingerprint, *(layout.role_fingerprint for layout in changed)}) == 1 + len(changed)
