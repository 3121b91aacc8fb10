"""Market and training pages: the pure shaping (candles, markers, metric series, replica rows,
model timeline) and the pages themselves run by Streamlit's AppTest against a real Redis holding
packets written through the shared codec."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import streamlit as st
from streamlit.testing.v1 import AppTest

from unistream_common import codec, keys
from unistream_common.packets import Bar, MetricsPacket, ModelAnnouncement, PaperFill, PredictionPacket
from unistream_dashboard import charts, market, training
from unistream_dashboard.market import CandleSeries
from unistream_dashboard.training import Value
from unistream_tools.redis_server import free_port, start_redis

T0 = 1_749_999_960_000  # a minute boundary (2025-06-15 15:06:00 UTC)
assert T0 % 60_000 == 0


# --------------------------------------------------------------------------- builders


def bar(
    open_ms: int,
    *,
    symbol: str = "ETHUSDT",
    timeframe: str = "1s",
    o: float = 100.0,
    h: float = 101.0,
    lo: float = 99.0,
    c: float = 100.5,
    v: float = 2.0,
) -> Bar:
    return Bar(
        symbol=symbol,
        timeframe=timeframe,  # type: ignore[arg-type]
        open_time_ms=open_ms,
        close_time_ms=open_ms + keys.TIMEFRAME_MS[timeframe],
        open=o,
        high=max(h, o, c),
        low=min(lo, o, c),
        close=c,
        volume=v,
        quote_volume=v * c,
        trade_count=3,
        vwap=c,
        taker_buy_volume=v / 2,
        filled=False,
        source="REAL",
    )


def prediction_packet(ts_ms: int, symbol: str = "ETHUSDT", **probs: float) -> PredictionPacket:
    """``prediction_packet(t, p_top_1s=0.9)`` -> names ``1s.p_top`` etc. (plus an uncharted one)."""
    names = [f"{k.split('_')[-1]}.{k.rsplit('_', 1)[0]}" for k in probs] + ["1s.p_up"]
    values = [*probs.values(), 0.5]
    return PredictionPacket(
        symbol=symbol,
        ts_event_ms=ts_ms,
        price=100.0,
        model_version="cnn-r0000001",
        names=names,
        values=codec.f32_to_bytes(values),
    )


def predictions(*packets: PredictionPacket) -> market.Predictions:
    return market.predictions_from(packets)


def fill(ts_ms: int, price: float, frm: float, to: float, symbol: str = "ETHUSDT") -> PaperFill:
    return PaperFill(
        symbol=symbol,
        ts_ms=ts_ms,
        price=price,
        position_from=frm,
        position_to=to,
        model_version="dqn-r0000003",
        producer="trainer-0",
    )


def metrics(producer: str, ts_ms: int, step: int = 0, **values: float) -> MetricsPacket:
    """Metric names from keyword names: ``losses__td_loss=0.1`` -> ``losses/td_loss``."""
    return MetricsPacket(
        producer=producer, ts_ms=ts_ms, step=step, metrics={k.replace("__", "/"): v for k, v in values.items()}
    )


def announcement(
    name: str, version: str, ts_ms: int, producer: str = "trainer-0", members: tuple[str, ...] = (), **m: float
) -> ModelAnnouncement:
    return ModelAnnouncement(
        name=name,
        version=version,
        ts_ms=ts_ms,
        uri=f"redis:ml:registry:{name}:{version}",
        sha256="0" * 64,
        producer=producer,
        parameters=1000,
        metrics={k.replace("__", "/"): v for k, v in m.items()},
        members=list(members),
    )


def series_of(bars: list[Bar], forming: Bar | None = None, limit: int = 500) -> CandleSeries:
    first = bars[0] if bars else forming
    assert first is not None
    return market.candle_series(first.symbol, first.timeframe, bars, forming, limit)


# --------------------------------------------------------------------------- pure: market


def test_a_point_belongs_to_the_candle_whose_close_it_is_at_or_before() -> None:
    assert market.candle_open(T0 + 1000, "1s") == T0  # a 1s bar's close time: that bar
    assert market.candle_open(T0 + 1, "1s") == T0
    assert market.candle_open(T0 + 1001, "1s") == T0 + 1000
    assert market.candle_open(T0 + 60_000, "1m") == T0
    assert market.candle_open(T0 + 60_001, "1m") == T0 + 60_000
    day = 86_400_000
    assert market.candle_open(T0, "1d") == (T0 - 1) // day * day


def test_candle_series_keeps_the_newest_bars_of_its_symbol_and_timeframe_in_order() -> None:
    bars = [bar(T0 + i * 1000, c=100 + i) for i in (3, 0, 2, 1)]
    bars += [bar(T0 + 1000, c=555.0)]  # repeated open time: the last one wins
    bars += [bar(T0 + 9000, symbol="BTCUSDT"), bar(T0 + 60_000, timeframe="1m")]
    series = market.candle_series("ETHUSDT", "1s", bars, None, limit=3)
    assert series.times_ms == [T0 + 1000, T0 + 2000, T0 + 3000]
    assert series.close == [555.0, 102.0, 103.0]
    assert len(series) == 3 and series.forming is None


def test_forming_bar_is_added_when_newer_and_takes_one_of_the_places() -> None:
    bars = [bar(T0 + i * 1000) for i in range(5)]
    forming = bar(T0 + 5000, h=120.0, lo=80.0)
    series = series_of(bars, forming, limit=3)
    assert series.times_ms == [T0 + 3000, T0 + 4000] and series.forming == forming
    assert len(series) == 3
    assert series.extent()[T0 + 5000] == (120.0, 80.0)
    assert series.price_range() == 40.0
    # A forming bar whose candle already closed (the key lags the stream) is not drawn twice.
    assert series_of(bars, bar(T0 + 4000)).forming is None
    assert market.candle_series("ETHUSDT", "1s", bars, bar(T0 + 60_000, timeframe="1m"), 10).forming is None
    # Only a forming candle so far.
    only = market.candle_series("ETHUSDT", "1s", [], forming, 10)
    assert len(only) == 1 and only.times_ms == []


def test_predictions_keep_only_the_extrema_probabilities_as_columns() -> None:
    p = predictions(
        prediction_packet(T0, p_top_1s=0.75, p_bottom_1m=0.25),
        prediction_packet(T0 + 1000, "BTCUSDT", p_top_1s=0.5, p_top_1h=0.125),
    )
    assert len(p) == 2 and p.symbols == ["ETHUSDT", "BTCUSDT"] and p.ts_ms == [T0, T0 + 1000]
    assert list(p.probs) == ["1s.p_top", "1m.p_bottom", "1h.p_top"]  # not 1s.p_up
    assert p.probs["1s.p_top"] == [0.75, 0.5]
    assert p.probs["1m.p_bottom"][0] == 0.25 and math.isnan(p.probs["1m.p_bottom"][1])
    assert math.isnan(p.probs["1h.p_top"][0]) and p.probs["1h.p_top"][1] == 0.125


def test_extrema_markers_on_the_1s_chart_apply_the_threshold_inclusively() -> None:
    series = series_of([bar(T0 + i * 1000, h=101.0 + i, lo=99.0 - i) for i in range(4)])
    preds = predictions(
        prediction_packet(T0 + 1000, p_top_1s=0.9, p_bottom_1s=0.1),  # bar T0: top
        prediction_packet(T0 + 2000, p_top_1s=0.5, p_bottom_1s=0.5),  # bar T0+1s: both, exactly at the threshold
        prediction_packet(T0 + 3000, p_top_1s=0.49, p_bottom_1s=0.2),  # bar T0+2s: nothing
        prediction_packet(T0 + 4000, symbol="BTCUSDT", p_top_1s=1.0),  # other symbol
        prediction_packet(T0 + 9000, p_top_1s=1.0),  # no such candle
        prediction_packet(T0 + 4000, p_top_1s=float("nan"), p_bottom_1s=0.8),  # bar T0+3s: bottom only
    )
    marks = market.extrema_markers(series, preds, threshold=0.5)
    pad = 0.04 * series.price_range()
    assert marks.tops.times_ms == [T0, T0 + 1000]
    assert marks.tops.prices == pytest.approx([101.0 + pad, 102.0 + pad])
    assert marks.bottoms.times_ms == [T0 + 1000, T0 + 3000]
    assert marks.bottoms.prices == pytest.approx([98.0 - pad, 96.0 - pad])
    assert marks.tops.texts[0] == "1s.p_top 0.90"
    assert marks.predictions == 4 and marks.head == "1s"


def test_extrema_markers_on_coarser_charts_use_the_highest_probability_in_each_candle() -> None:
    series = series_of([bar(T0 - 60_000, timeframe="1m"), bar(T0, timeframe="1m")], bar(T0 + 60_000, timeframe="1m"))
    preds = predictions(
        prediction_packet(T0 - 59_000, p_top_1m=0.2, p_top_1s=0.99),  # the 1s head is not the 1m chart's
        prediction_packet(T0, p_top_1m=0.7),  # the last 1s bar of candle T0-60s
        prediction_packet(T0 + 1000, p_top_1m=0.3, p_bottom_1m=0.6),  # candle T0
        prediction_packet(T0 + 60_000, p_top_1m=0.65),  # candle T0 (its close)
        prediction_packet(T0 + 61_000, p_bottom_1m=0.9),  # the forming candle
    )
    marks = market.extrema_markers(series, preds, threshold=0.6)
    assert marks.head == "1m"
    assert marks.tops.times_ms == [T0 - 60_000, T0]
    assert marks.tops.texts == ["1m.p_top 0.70", "1m.p_top 0.65"]
    assert marks.bottoms.times_ms == [T0, T0 + 60_000]
    # An explicit head: 1s predictions on the 1m chart.
    ones = market.extrema_markers(series, preds, threshold=0.6, head="1s")
    assert ones.tops.times_ms == [T0 - 60_000] and not ones.bottoms


def test_flat_candles_still_get_markers_off_the_price() -> None:
    series = series_of([bar(T0, o=100.0, h=100.0, lo=100.0, c=100.0)])
    marks = market.extrema_markers(series, predictions(prediction_packet(T0 + 1000, p_top_1s=0.9)), threshold=0.5)
    assert marks.tops.prices[0] > 100.0


@pytest.mark.parametrize(
    ("frm", "to", "side"),
    [(0.0, 1.0, "buy"), (-1.0, 0.0, "buy"), (-1.0, 1.0, "buy"), (1.0, 0.0, "sell"), (0.0, -1.0, "sell"),
     (1.0, -1.0, "sell"), (0.5, 0.5, None)],
)  # fmt: skip
def test_a_fill_that_raises_the_position_is_a_buy(frm: float, to: float, side: str | None) -> None:
    assert market.trade_side(fill(T0, 100.0, frm, to)) == side


def test_trade_markers_sit_at_the_fill_price_on_the_candle_of_the_decision() -> None:
    series = series_of([bar(T0 + i * 1000) for i in range(3)])
    fills = [
        fill(T0 + 3000, 100.7, 1.0, -1.0),  # bar T0+2s, listed first but later in time
        fill(T0 + 1000, 100.2, 0.0, 1.0),  # bar T0
        fill(T0 + 2000, 100.4, 0.0, 0.0),  # no change: no marker
        fill(T0 + 2000, 100.4, 0.0, 1.0, symbol="BTCUSDT"),
        fill(T0 + 9000, 100.9, -1.0, 0.0),  # outside the shown candles
    ]
    trades = market.trade_markers(series, fills)
    assert trades.buys.times_ms == [T0] and trades.buys.prices == [100.2]
    assert trades.sells.times_ms == [T0 + 2000] and trades.sells.prices == [100.7]
    assert trades.buys.texts[0].startswith("buy 0 → +1 at 100.2 · dqn-r0000003 · trainer-0")
    assert trades.sells.texts[0].startswith("sell +1 → -1 at 100.7")
    hour = market.candle_series("ETHUSDT", "1h", [bar(T0 - T0 % 3_600_000, timeframe="1h")], None, 10)
    on_hour = market.trade_markers(hour, fills)
    assert on_hour.buys.prices == [100.2, 100.9] and on_hour.sells.prices == [100.7]  # all on the one 1h candle
    assert set(on_hour.buys.times_ms) == {T0 - T0 % 3_600_000}


def test_market_figure_draws_forming_candle_volume_and_markers_on_a_shared_time_axis() -> None:
    series = series_of([bar(T0 + i * 1000) for i in range(3)], bar(T0 + 3000))
    extrema = market.extrema_markers(
        series,
        predictions(prediction_packet(T0 + 1000, p_top_1s=0.9), prediction_packet(T0 + 4000, p_bottom_1s=0.9)),
        0.5,
    )
    trades = market.trade_markers(series, [fill(T0 + 2000, 100.3, 0, 1), fill(T0 + 3000, 100.1, 1, 0)])
    fig = market.market_figure(series, extrema, trades).to_dict()
    by_name = {t["name"]: t for t in fig["data"]}
    assert fig["layout"]["uirevision"] == "market-ETHUSDT-1s"
    assert len(by_name["ETHUSDT 1s"]["x"]) == 3 and by_name["ETHUSDT 1s"]["type"] == "candlestick"
    assert by_name["forming"]["type"] == "candlestick" and len(by_name["forming"]["x"]) == 1
    assert by_name["volume"]["type"] == "bar" and by_name["volume"]["yaxis"] == "y2"
    assert by_name["forming volume"]["yaxis"] == "y2"
    assert by_name["CNN top (1s)"]["marker"]["symbol"] == "triangle-down-open"
    assert by_name["CNN bottom (1s)"]["marker"]["symbol"] == "triangle-up-open"
    assert by_name["agent buy"]["marker"]["symbol"] == "arrow-up"
    assert list(by_name["agent buy"]["y"]) == [100.3] and list(by_name["agent sell"]["y"]) == [100.1]
    assert fig["layout"]["xaxis"]["matches"] == "x2" or fig["layout"]["xaxis2"].get("matches") == "x"
    empty = market.market_figure(series).to_dict()
    assert {t["name"] for t in empty["data"]} == {"ETHUSDT 1s", "volume", "forming", "forming volume"}
    # Few candles: the time axis still spans ten; a lone candle gets an invisible neighbour for its width.
    assert list(empty["layout"]["xaxis"]["range"]) == [charts.utc_datetime(T0 - 7000), charts.utc_datetime(T0 + 4000)]
    lone = market.market_figure(series_of([], bar(T0 + 3000))).to_dict()
    spacer = next(t for t in lone["data"] if t["name"] == "spacer")
    assert list(spacer["x"]) == [charts.utc_datetime(T0 + 2000)] and spacer["hoverinfo"] == "skip"
    many = market.market_figure(series_of([bar(T0 + i * 1000) for i in range(10)])).to_dict()
    assert "range" not in many["layout"]["xaxis"] and "spacer" not in {t["name"] for t in many["data"]}


def test_market_caption_says_what_is_shown_and_which_streams_are_empty() -> None:
    series = series_of([bar(T0)], bar(T0 + 1000))
    extrema = market.extrema_markers(series, predictions(prediction_packet(T0 + 1000, p_top_1s=0.9)), 0.5)
    trades = market.trade_markers(series, [fill(T0 + 1000, 100.0, 0, 1)])
    text = market.market_caption(series, extrema, trades, predictions_seen=1, fills_seen=1)
    assert text == (
        "1 closed 1s candles + forming since 15:06:01 UTC · CNN 1s.p_top/p_bottom ≥ 0.50: 1 tops, 0 bottoms"
        " · agent: 1 buys, 0 sells"
    )
    empty = market.market_caption(series, extrema, trades, predictions_seen=0, fills_seen=0)
    assert "no CNN predictions yet (ui:predictions is empty)" in empty
    assert "no paper trades yet (ml:paper is empty)" in empty
    assert market.fetched_caption(3.456, "a", "", "b", now_ms=T0) == "fetched in 3.5 ms · updated 15:06:00 UTC · a · b"
    assert market.fetched_caption(1234.0, now_ms=T0) == "fetched in 1,234 ms · updated 15:06:00 UTC"


# --------------------------------------------------------------------------- pure: training


def test_metric_series_per_producer_in_time_order_without_gaps_or_nan() -> None:
    packets = [
        metrics("trainer-1", T0 + 2000, losses__td_loss=0.3),
        metrics("trainer-0", T0 + 1000, losses__td_loss=0.2),
        metrics("trainer-0", T0, losses__td_loss=0.25),
        metrics("trainer-0", T0 + 3000, losses__td_loss=float("nan")),
        metrics("trainer-2", T0, charts__epsilon=0.5),  # no td_loss at all
    ]
    assert training.metric_series(packets, "losses/td_loss") == {
        "trainer-0": ([T0, T0 + 1000], [0.25, 0.2]),
        "trainer-1": ([T0 + 2000], [0.3]),
    }
    assert list(training.metric_series(packets, "charts/epsilon")) == ["trainer-2"]
    assert training.metric_series([], "losses/td_loss") == {}


def test_lines_figure_marks_few_points_and_spans_at_least_a_minute() -> None:
    few = charts.lines_figure({"a": ([T0], [1.0]), "b": ([T0 + 1000], [2.0])}, "t", "rev").to_dict()
    assert [t["mode"] for t in few["data"]] == ["lines+markers"] * 2
    assert list(few["layout"]["xaxis"]["range"]) == [charts.utc_datetime(T0 - 59_000), charts.utc_datetime(T0 + 6000)]
    times = [T0 + 1000 * i for i in range(61)]
    many = charts.lines_figure({"a": (times, [0.0] * 61)}, "t", "rev", dashed=["a"]).to_dict()
    assert many["data"][0]["mode"] == "lines" and many["data"][0]["line"]["dash"] == "dash"
    assert "range" not in many["layout"]["xaxis"] and many["layout"]["uirevision"] == "rev"


def test_paper_series_joins_every_leaders_reports_per_line() -> None:
    packets = [
        metrics("trainer-1", T0 + 1000, paper__pnl=0.02, paper__buy_and_hold_pnl=0.01, paper__flat_pnl=0.0),
        metrics("trainer-0", T0, paper__pnl=0.01, paper__buy_and_hold_pnl=0.0, paper__random_pnl=-0.01),
        metrics("trainer-2", T0 + 500, losses__td_loss=0.1),
    ]
    out = training.paper_series(packets)
    assert list(out) == ["policy", "buy & hold", "flat", "random"]
    assert out["policy"] == ([T0, T0 + 1000], [0.01, 0.02])
    assert out["flat"] == ([T0 + 1000], [0.0])
    assert training.paper_series([metrics("trainer-0", T0, losses__td_loss=0.1)]) == {}


def test_newest_values_take_the_latest_report_of_each_metric() -> None:
    packets = [
        metrics("trainer-0", T0 + 1000, paper__sharpe=1.5, sensitivity__edge=0.001),
        metrics("trainer-1", T0 + 2000, paper__sharpe=2.5, sensitivity__edge=float("inf")),
        metrics("trainer-0", T0, paper__sharpe=9.0),
    ]
    values = training.newest_values(packets)
    assert values["paper/sharpe"] == Value(2.5, T0 + 2000, "trainer-1")
    assert values["sensitivity/edge"] == Value(0.001, T0 + 1000, "trainer-0")
    assert list(training.newest_values(packets, ["sensitivity/edge"])) == ["sensitivity/edge"]


def test_extrema_rows_per_timeframe_beside_their_baselines() -> None:
    values = training.newest_values(
        [
            metrics(
                "trainer-0",
                T0,
                extrema__pr_auc_top_1s=0.4,
                extrema__baseline_top_1s=0.1,
                extrema__past_rule_top_1s=0.2,
                extrema__pr_auc_bottom_1s=0.35,
                extrema__pr_auc_top_1h=0.3,
            )
        ]
    )
    rows = training.extrema_rows(values)
    assert [r["timeframe"] for r in rows] == ["1s", "1h"]
    assert rows[0] == {
        "timeframe": "1s",
        "PR-AUC top": 0.4,
        "baseline top": 0.1,
        "past rule top": 0.2,
        "PR-AUC bottom": 0.35,
        "baseline bottom": None,
        "past rule bottom": None,
    }
    fig = training.extrema_figure(rows).to_dict()
    assert [t["name"] for t in fig["data"]] == ["PR-AUC top", "baseline top", "past rule top"]
    assert list(fig["data"][0]["y"]) == [0.4, 0.3]


def test_the_sizing_verdict_says_which_rule_trades_and_why() -> None:
    def values(**m: float) -> dict[str, Value]:
        return {k.replace("__", "/"): Value(v, T0, "trainer-0") for k, v in m.items()}

    assert training.sizing_verdict({}) == "Sizing: full size (no sensitivity metrics yet)."
    assert "shadow (1 of 3 held-out blocks of trades scored)" in training.sizing_verdict(
        values(sensitivity__blocks=1.0, sensitivity__trading=0.0)
    )
    trading = training.sizing_verdict(
        values(
            sensitivity__blocks=20.0, sensitivity__trading=1.0, sensitivity__threshold=0.7,
            sensitivity__block_edge_always=0.0016, sensitivity__block_edge_always_low=0.0014,
            sensitivity__block_edge_threshold=0.0006, sensitivity__block_edge_threshold_low=0.0005,
        )
    )  # fmt: skip
    assert trading.startswith("Sizing: **the sensitivity learner sizes the trades**: it beats both rules (over 20")
    assert "acting always +0.0016 (95 % low +0.0014), the best past threshold (0.70) +0.0006" in trading


def test_chosen_sizes_in_size_order() -> None:
    sizes = {"sensitivity/chosen_size_1": 0.2, "sensitivity/chosen_size_0.5": 0.3, "sensitivity/chosen_size_0": 0.5}
    values = training.newest_values([metrics("t", T0, **sizes)])
    assert training.chosen_sizes(values) == {"0": 0.5, "0.5": 0.3, "1": 0.2}


def test_model_timeline_per_model_with_rounds() -> None:
    anns = [
        announcement("dqn", "dqn-r0000002", T0 + 2000, "trainer-1", merge__round=2, merge__members=3),
        announcement("dqn", "dqn-r0000001", T0 + 1000, "trainer-0", merge__round=1, merge__members=2),
        announcement("cnn-mtf", "cnn-mtf-r0000007", T0 + 1500),  # round from the version
        announcement("other", "v-final", T0 + 100),  # no round: its position
        announcement("dqn", "dqn-r0000002", T0 + 2000, "trainer-1", merge__round=2, merge__members=3),  # repeated
    ]
    timeline = training.model_timeline(anns)
    assert list(timeline) == ["cnn-mtf", "dqn", "other"]
    dqn = timeline["dqn"]
    assert dqn.times_ms == [T0 + 1000, T0 + 2000] and dqn.rounds == [1, 2]
    assert dqn.versions == ["dqn-r0000001", "dqn-r0000002"]
    assert dqn.producers == ["trainer-0", "trainer-1"] and dqn.members == [2, 3]
    assert timeline["cnn-mtf"].rounds == [7] and timeline["cnn-mtf"].members == [None]
    assert timeline["other"].rounds == [1]
    fig = training.model_figure(timeline).to_dict()
    assert fig["layout"]["uirevision"] == "training-models"
    assert [t["name"] for t in fig["data"]] == ["cnn-mtf", "dqn", "other"]


def test_merge_rounds_name_their_contributors_newest_first() -> None:
    anns = [
        announcement("dqn", "dqn-r0000001", T0 + 1000, "trainer-1", ("trainer-1", "trainer-2"), merge__round=1,
                     merge__members=2, merge__samples=640),
        announcement("cnn-mtf", "cnn-mtf-r0000001", T0 + 1000, "trainer-1", ("trainer-1",), merge__round=1),
        announcement("dqn", "dqn-r0000002", T0 + 31_000, "trainer-1", ("trainer-1", "trainer-2", "trainer-3"),
                     merge__round=2, merge__members=3, merge__samples=700),
        announcement("dqn", "dqn-r0000000", T0, "trainer-9", merge__round=0, merge__members=2),  # an older release
    ]  # fmt: skip
    timeline = training.model_timeline(anns)
    assert timeline["dqn"].contributors == [[], ["trainer-1", "trainer-2"], ["trainer-1", "trainer-2", "trainer-3"]]
    rows = training.merge_rows(timeline, limit=3)
    assert [(r["model"], r["round"]) for r in rows] == [("dqn", 2), ("dqn", 1), ("cnn-mtf", 1)]
    assert rows[0] == {
        "round": 2, "model": "dqn", "time (UTC)": "15:06:31", "contributors": "trainer-1, trainer-2, trainer-3",
        "samples": 700, "published by": "trainer-1",
    }  # fmt: skip
    assert training.merge_rows(timeline)[-1]["contributors"] == "2 replicas"
    hover = training.model_figure(timeline).to_dict()["data"][1]["text"]
    assert hover[-1].endswith("from trainer-1, trainer-2, trainer-3")


def test_replica_rows_name_the_lease_holder_and_the_heartbeat_ages() -> None:
    now = T0 + 100_000
    packets = [
        metrics("trainer-0", now - 4000, step=10, charts__packets_per_s=50.0, charts__updates_per_s=5.0),
        metrics(
            "trainer-0", now - 2000, step=20, charts__packets_per_s=60.0, charts__updates_per_s=6.0,
            charts__model_round=4.0, merge__duration_ms=35.5, merge__members=2.0, charts__replay_fresh=0.25,
        ),
        metrics("trainer-1", now - 3000, step=7, charts__packets_per_s=40.0, charts__updates_per_s=float("nan")),
        metrics("trainer-old", now - 600_000, step=1),
    ]  # fmt: skip
    members = {"trainer-0": now + 20_000, "trainer-1": now + 5_000, "trainer-gone": now - 1_000}
    heartbeats = {
        "trainer-0": {"updated_ms": str(now - 1500), "ready": "1"},
        "trainer-2": {"updated_ms": str(now - 30_000), "ready": "0"},
    }
    anns = [
        announcement("dqn", "dqn-r0000003", now - 9000, "trainer-0", merge__round=3),
        announcement("dqn", "dqn-r0000004", now - 2000, "trainer-0", merge__round=4),
        announcement("dqn", "dqn-r0000002", now - 20_000, "trainer-1", merge__round=2),
    ]
    rows = training.replica_rows(packets, members, "trainer-0", heartbeats, anns, now)
    by_name = {r["replica"]: r for r in rows}
    assert [r["replica"] for r in rows] == ["trainer-0", "trainer-1", "trainer-2", "trainer-gone", "trainer-old"]
    assert [r["lease"] for r in rows] == [True, False, False, False, False]
    assert [r["alive"] for r in rows] == [True, True, False, False, False]
    t0 = by_name["trainer-0"]
    assert t0["packets/s"] == 60.0 and t0["updates/s"] == 6.0 and t0["step"] == 20
    assert t0["heartbeat age s"] == 1.5 and t0["member expires in s"] == 20.0 and t0["ready"] is True
    assert t0["metrics age s"] == 2.0 and t0["model round"] == 4
    assert t0["last merge round"] == 4 and t0["last merge ms"] == 35.5 and t0["last merge members"] == 2
    assert t0["replay fresh %"] == 25.0 and by_name["trainer-1"]["replay fresh %"] is None
    t1 = by_name["trainer-1"]
    assert t1["updates/s"] is None and t1["heartbeat age s"] is None and t1["ready"] is None
    assert t1["last merge round"] == 2 and t1["last merge ms"] is None
    assert by_name["trainer-2"]["ready"] is False and by_name["trainer-2"]["heartbeat age s"] == 30.0
    assert by_name["trainer-gone"]["member expires in s"] == -1.0 and by_name["trainer-gone"]["step"] is None
    assert training.replica_rows([], {}, None, {}, [], now) == []
    assert not any(r["lease"] for r in training.replica_rows(packets, members, None, heartbeats, anns, now))


def test_paper_stats_format() -> None:
    assert training.fmt_stat(0.0512, "pct") == "5.1 %"
    assert training.fmt_stat(1.23456, "num") == "1.23"
    assert training.fmt_stat(12345.6, "num") == "12,346"


def test_sharpe_is_na_under_three_completed_hours_and_names_its_hours_under_a_day() -> None:
    assert training.sharpe_label(0) == "Sharpe (needs 3 h)"
    assert training.sharpe_value(-4522.0, 0) is None, "never a figure annualised from minutes"
    assert training.fmt_stat(training.sharpe_value(-4522.0, 2), "num") == "n/a"
    assert training.sharpe_label(5) == "Sharpe (5 h)" and training.sharpe_value(1.5, 5) == 1.5
    assert training.sharpe_label(24.0) == "Sharpe"
    assert training.sharpe_label(None) == "Sharpe"
    assert training.fmt_stat(None, "num") == "n/a"


def test_the_edge_verdict_reads_the_interval_and_waits_for_three_hours() -> None:
    def values(**metrics: float) -> dict[str, Value]:
        return {f"paper/{k}": Value(v, T0, "trainer-0") for k, v in metrics.items()}

    assert training.edge_verdict({}, "random").endswith("n/a, needs 3 completed hours (0 so far).")
    assert "(2 so far)" in training.edge_verdict(values(edge_random_hours=2.0), "random")
    none = values(edge_random=0.0004, edge_random_low=-0.001, edge_random_high=0.0018, edge_random_hours=7.0)
    assert training.edge_verdict(none, "random").endswith(
        "+0.0004 log return per hour, 95 % interval [-0.001, +0.0018] over 7 h: **no difference shown**."
    )
    assert training.edge_verdict(none, "random").startswith("Policy vs the random baseline (its own trades")
    worse = values(edge_flat=-0.002, edge_flat_low=-0.003, edge_flat_high=-0.001, edge_flat_hours=4.0)
    assert training.edge_verdict(worse, "flat").endswith("over 4 h: **worse**.")
    better = values(edge_flat=0.002, edge_flat_low=0.001, edge_flat_high=0.003, edge_flat_hours=4.0)
    assert training.edge_verdict(better, "flat").endswith("**better**.")


# --------------------------------------------------------------------------- pages (AppTest)


def _market_page() -> None:
    from unistream_dashboard import market
    from unistream_dashboard.settings import DashboardSettings

    market.render(DashboardSettings())


def _training_page() -> None:
    from unistream_dashboard import training
    from unistream_dashboard.settings import DashboardSettings

    training.render(DashboardSettings())


@pytest.fixture
def client(dashboard_redis: redis.Redis) -> redis.Redis:
    """An empty Redis the pages read (conftest's dashboard_redis)."""
    return dashboard_redis


def _run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _market() -> AppTest:
    return _run(AppTest.from_function(_market_page, default_timeout=30))


def _training() -> AppTest:
    return _run(AppTest.from_function(_training_page, default_timeout=30))


def _charts(at: AppTest) -> dict[str, dict[str, Any]]:
    """Plotly figures on the page by their uirevision."""
    specs = (json.loads(chart.proto.spec) for chart in at.get("plotly_chart"))
    return {spec["layout"]["uirevision"]: spec for spec in specs}


def _traces(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in spec["data"]}


def _captions(at: AppTest) -> list[str]:
    return [c.value for c in at.caption]


def _put(conn: redis.Redis, stream: str, *packets: Any) -> None:
    pipe = conn.pipeline(transaction=False)
    for packet in packets:
        pipe.xadd(stream, codec.encode(packet))
    pipe.execute()


def _write_market(conn: redis.Redis) -> None:
    pipe = conn.pipeline(transaction=False)
    for i in range(30):
        pipe.xadd(keys.bars("ETHUSDT", "1s"), codec.encode(bar(T0 + i * 1000, c=100 + i / 10)), id=f"{T0 + i * 1000}-0")
    for i, open_ms in enumerate((T0 - 120_000, T0 - 60_000, T0)):
        pipe.xadd(keys.bars("ETHUSDT", "1m"), codec.encode(bar(open_ms, timeframe="1m", c=101 + i)), id=f"{open_ms}-0")
    pipe.hset(keys.forming("ETHUSDT", "1s"), mapping=codec.encode(bar(T0 + 30_000, h=104.5, c=104.0)))
    pipe.hset(keys.forming("ETHUSDT", "1m"), mapping=codec.encode(bar(T0 + 60_000, timeframe="1m")))
    pipe.execute()
    _put(
        conn,
        keys.PREDICTIONS,
        prediction_packet(T0 + 1000, p_top_1s=0.9, p_bottom_1s=0.1, p_top_1m=0.8),  # bar T0 / 1m candle T0
        prediction_packet(T0 + 5000, p_top_1s=0.2, p_bottom_1s=0.7),  # bar T0+4s
        prediction_packet(T0 + 6000, p_top_1s=0.3, p_bottom_1s=0.3),  # below any threshold
        prediction_packet(T0 + 31_000, p_top_1s=0.95),  # the forming 1s bar
        prediction_packet(T0 + 2000, symbol="BTCUSDT", p_top_1s=1.0),
    )
    _put(
        conn,
        keys.PAPER,
        fill(T0 + 3000, 100.25, 0.0, 1.0),  # buy on bar T0+2s
        fill(T0 + 10_000, 100.95, 1.0, -1.0),  # sell on bar T0+9s
        fill(T0 + 4000, 50_000.0, 0.0, 1.0, symbol="BTCUSDT"),
    )


@pytest.mark.integration
def test_market_page_draws_what_redis_holds_and_follows_the_controls(client: redis.Redis) -> None:
    _write_market(client)
    at = _market()
    assert not at.error
    charts = _charts(at)
    assert list(charts) == ["market-ETHUSDT-1s"]  # BTCUSDT has no bars
    traces = _traces(charts["market-ETHUSDT-1s"])
    assert len(traces["ETHUSDT 1s"]["x"]) == 30
    assert traces["ETHUSDT 1s"]["close"][-1] == pytest.approx(102.9)
    assert traces["forming"]["close"] == [104.0]
    assert len(traces["CNN top (1s)"]["x"]) == 2  # bar T0 and the forming bar
    assert traces["CNN top (1s)"]["text"] == ["1s.p_top 0.90", "1s.p_top 0.95"]
    assert traces["CNN bottom (1s)"]["text"] == ["1s.p_bottom 0.70"]
    assert traces["agent buy"]["y"] == [100.25] and traces["agent sell"]["y"] == [100.95]
    eth = _captions(at)[0]
    assert eth.startswith("fetched in ") and " UTC · 30 closed 1s candles + forming since 15:06:30 UTC" in eth
    assert "2 tops, 1 bottoms · agent: 1 buys, 1 sells" in eth
    assert "No 1s bars for BTCUSDT yet: md:bars:{BTCUSDT}:1s is empty and no candle is forming." in [
        i.value for i in at.info
    ]
    assert at.get_by_key("market-BTCUSDT") is not None

    # The 1m timeframe of ETHUSDT: its own bars, forming candle and 1m predictions.
    at.segmented_control(key="market-tf-ETHUSDT").set_value("1m")
    _run(at)
    traces = _traces(_charts(at)["market-ETHUSDT-1m"])
    assert len(traces["ETHUSDT 1m"]["x"]) == 3 and len(traces["forming"]["x"]) == 1
    assert traces["CNN top (1m)"]["text"] == ["1m.p_top 0.80"]
    assert "CNN bottom (1m)" not in traces
    assert len(traces["agent buy"]["x"]) == 1 and len(traces["agent sell"]["x"]) == 1  # both in candle T0

    # Fewer candles and a higher threshold (back on 1s).
    at.segmented_control(key="market-tf-ETHUSDT").set_value("1s")
    at.number_input(key="market-max-candles").set_value(10)
    at.slider(key="market-threshold").set_value(0.95)
    _run(at)
    traces = _traces(_charts(at)["market-ETHUSDT-1s"])
    assert len(traces["ETHUSDT 1s"]["x"]) == 9 and len(traces["forming"]["x"]) == 1
    assert traces["CNN top (1s)"]["text"] == ["1s.p_top 0.95"]
    assert not {"CNN bottom (1s)", "agent buy", "agent sell"} & set(traces)  # their bars are not shown
    assert "9 closed 1s candles + forming" in _captions(at)[0] and "0 buys, 0 sells" in _captions(at)[0]


@pytest.mark.integration
def test_market_page_says_when_streams_are_empty(client: redis.Redis) -> None:
    client.hset(keys.forming("BTCUSDT", "1s"), mapping=codec.encode(bar(T0, symbol="BTCUSDT")))
    at = _market()
    infos = [i.value for i in at.info]
    assert infos == ["No 1s bars for ETHUSDT yet: md:bars:{ETHUSDT}:1s is empty and no candle is forming."]
    assert list(_charts(at)) == ["market-BTCUSDT-1s"]  # only a forming candle, drawn
    for caption in _captions(at):
        assert "no CNN predictions yet (ui:predictions is empty)" in caption
        assert "no paper trades yet (ml:paper is empty)" in caption


@pytest.mark.integration
def test_market_page_survives_redis_down_and_recovers_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("UNISTREAM_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setenv("UNISTREAM_SYMBOLS", "ETHUSDT,BTCUSDT")
    st.cache_data.clear()
    at = _market()
    banners = [e.value for e in at.error]
    assert len(banners) == 2
    assert all(b.startswith(f"Redis unreachable at redis://127.0.0.1:{port}/0") for b in banners)
    assert all("Retrying every 1 s." in b for b in banners)
    server = start_redis(tmp_path / "redis", port=port)
    try:
        _write_market(redis.Redis(port=port))
        _run(at)  # the next refresh: errors were not cached
        assert not at.error
        assert "market-ETHUSDT-1s" in _charts(at)
    finally:
        server.stop()


def _write_training(conn: redis.Redis, now: int) -> None:
    packets = []
    for k in range(3):
        ts = now - (3 - k) * 5000
        for i, name in enumerate(("trainer-0", "trainer-1")):
            leader = {
                "paper/pnl": 0.01 * k, "paper/buy_and_hold_pnl": 0.005 * k, "paper/flat_pnl": 0.0,
                "paper/random_pnl": -0.002 * k, "paper/sharpe": 1.25, "paper/max_drawdown": 0.05,
                "paper/win_rate": 0.55, "paper/trades_per_hour": 12.0, "paper/fee_share": 0.2,
                "paper/hours": 0.25 + k, "paper/sharpe_hours": 3.0 + k, "merge/duration_ms": 42.0,
                "merge/members": 2.0, "paper/gross_pnl": 0.03 * k,
                "paper/edge_random": 0.0004, "paper/edge_random_low": -0.001, "paper/edge_random_high": 0.0018,
                "paper/edge_random_hours": 3.0 + k, "paper/edge_flat_hours": 2.0,
            }  # fmt: skip
            sizes = {"sensitivity/chosen_size_0": 0.6, "sensitivity/chosen_size_0.5": 0.4} if k == 2 else {}
            sizes |= {
                "sensitivity/blocks": 4.0, "sensitivity/trading": 0.0, "sensitivity/threshold": 0.71,
                "sensitivity/block_edge_always": 0.002, "sensitivity/block_edge_always_low": 0.001,
                "sensitivity/block_edge_threshold": 0.0001, "sensitivity/block_edge_threshold_low": -0.0003,
            }  # fmt: skip
            packets.append(
                metrics(
                    name, ts, step=100 * (k + 1),
                    losses__td_loss=0.5 / (k + 1) + i, losses__q_values=1.0 + k, charts__epsilon=0.9 - 0.1 * k,
                    charts__packets_per_s=10.0 * (i + 1), charts__updates_per_s=2.0 * (i + 1),
                    charts__model_round=float(k + 1),
                    extrema__pr_auc_top_1s=0.4, extrema__baseline_top_1s=0.1, extrema__past_rule_top_1s=0.2,
                    extrema__pr_auc_top_1m=0.3, extrema__baseline_top_1m=0.05,
                    sensitivity__edge=0.001 * (k + 1), sensitivity__edge_se=0.0005,
                    **sizes, **(leader if i == 0 else {}),
                )
            )  # fmt: skip
    _put(conn, keys.METRICS, *packets)
    _put(
        conn,
        keys.MODELS,
        announcement(
            "dqn",
            "dqn-r0000001",
            now - 14_000,
            "trainer-0",
            ("trainer-0", "trainer-1"),
            merge__round=1,
            merge__members=2,
        ),
        announcement("cnn-mtf", "cnn-mtf-r0000001", now - 14_000, "trainer-0", merge__round=1),
        announcement("dqn", "dqn-r0000002", now - 9_000, "trainer-0", merge__round=2, merge__members=2),
    )
    conn.zadd(training.MEMBERS, {"trainer-0": now + 20_000, "trainer-1": now + 15_000})
    conn.set(training.LEADER, "trainer-0")
    conn.zadd(keys.SERVICES, {"trainer/trainer-0": now, "trainer/trainer-2": now - 5000, "features/f-0": now})
    conn.hset(keys.heartbeat("trainer", "trainer-0"), mapping={"updated_ms": now - 1000, "ready": 1})
    conn.hset(keys.heartbeat("trainer", "trainer-2"), mapping={"updated_ms": now - 5000, "ready": 0})


@pytest.mark.integration
def test_training_page_shows_what_the_trainers_reported(client: redis.Redis) -> None:
    now = int(time.time() * 1000)
    _write_training(client, now)
    at = _training()
    assert not at.error
    charts = _charts(at)
    td = _traces(charts["training-losses/td_loss"])
    assert list(td) == ["trainer-0", "trainer-1"] and td["trainer-1"]["y"] == pytest.approx([1.5, 1.25, 0.5 / 3 + 1])
    assert _traces(charts["training-losses/q_values"])["trainer-0"]["y"] == [1.0, 2.0, 3.0]
    assert _traces(charts["training-charts/epsilon"])["trainer-0"]["y"] == pytest.approx([0.9, 0.8, 0.7])
    paper = _traces(charts["training-paper"])
    assert list(paper) == ["policy", "buy & hold", "flat", "random"]
    assert paper["policy"]["y"] == [0.0, 0.01, 0.02] and paper["buy & hold"]["line"]["dash"] == "dash"
    stats = {m.label: m.value for m in at.metric}
    assert stats["Sharpe (5 h)"] == "1.25" and stats["Max drawdown"] == "5.0 %" and stats["Win rate"] == "55.0 %"
    assert stats["Trades / hour"] == "12" and stats["Fee share"] == "20.0 %" and stats["PnL (log)"] == "0.02"
    assert stats["Gross PnL (log)"] == "0.06"
    verdicts = [m.value for m in at.markdown if m.value.startswith("Policy vs ")]
    assert verdicts == [
        training.edge_verdict(
            {
                "paper/edge_random": Value(0.0004, 0, ""), "paper/edge_random_low": Value(-0.001, 0, ""),
                "paper/edge_random_high": Value(0.0018, 0, ""), "paper/edge_random_hours": Value(5.0, 0, ""),
            },
            "random",
        ),
        "Policy vs staying flat: n/a, needs 3 completed hours (2 so far).",
    ]  # fmt: skip
    assert "over 5 h: **no difference shown**." in verdicts[0]
    assert stats["Sensitivity edge (mean reward over the best past threshold's)"] == "+0.003"
    sizing = [m.value for m in at.markdown if m.value.startswith("Sizing:")]
    assert sizing == [
        (
            "Sizing: full size; the sensitivity learner is in the shadow: it does not beat both rules (over 4 "
            "held-out blocks, its mean reward per trade less acting always +0.002 (95 % low +0.001), the best past "
            "threshold (0.71) +0.0001 (95 % low -0.0003))."
        )
    ]
    extrema = _traces(charts["training-extrema-top"])
    assert extrema["PR-AUC top"]["x"] == ["1s", "1m"] and extrema["PR-AUC top"]["y"] == [0.4, 0.3]
    assert extrema["baseline top"]["y"] == [0.1, 0.05]
    assert _traces(charts["training-edge"])["trainer-0"]["y"] == pytest.approx([0.001, 0.002, 0.003])
    models = _traces(charts["training-models"])
    assert list(models) == ["cnn-mtf", "dqn"] and models["dqn"]["y"] == [1, 2]
    merges = next(f.value for f in at.dataframe if "contributors" in f.value.columns)
    first = merges[(merges["model"] == "dqn") & (merges["round"] == 1)]
    assert first["contributors"].tolist() == ["trainer-0, trainer-1"]
    table = next(f.value for f in at.dataframe if "replica" in f.value.columns)
    assert table["replica"].tolist() == ["trainer-0", "trainer-1", "trainer-2"]
    assert table["lease"].tolist() == [True, False, False]
    assert table["alive"].tolist() == [True, True, True]
    assert table["packets/s"].tolist()[:2] == [10.0, 20.0] and table["updates/s"].tolist()[:2] == [2.0, 4.0]
    assert 1.0 <= table["heartbeat age s"][0] < 30 and math.isnan(table["heartbeat age s"][1])
    assert table["last merge round"][0] == 2 and table["last merge ms"][0] == 42.0
    captions = _captions(at)
    assert all(c.startswith("fetched in ") for c in captions if "Chosen sizes" not in c)
    assert "Chosen sizes: 0: 60 %, 0.5: 40 %" in captions
    assert any("3 replicas · lease held by trainer-0 · newest: dqn-r0000002 by trainer-0" in c for c in captions)


@pytest.mark.integration
def test_training_page_says_when_nothing_was_reported(client: redis.Redis) -> None:
    at = _training()
    infos = [i.value for i in at.info]
    assert infos.count("No trainer metrics yet: ml:metrics is empty (is a trainer running?).") == 3
    assert "No trainer replicas: no metrics on ml:metrics, nobody in ml:trainer:members, no heartbeats." in infos
    assert not _charts(at) and not at.error
    assert any("nobody holds the lease · no model announced yet (ml:models is empty)" in c for c in _captions(at))


@pytest.mark.integration
@pytest.mark.parametrize("paused", [False, True])
def test_training_page_survives_redis_down(monkeypatch: pytest.MonkeyPatch, paused: bool) -> None:
    monkeypatch.setenv("UNISTREAM_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("UNISTREAM_PAUSED", str(paused).lower())
    st.cache_data.clear()
    at = _training()
    banners = [e.value for e in at.error]
    assert len(banners) == 4 and all(b.startswith("Redis unreachable at") for b in banners)
    retry = "Paused: resume to retry." if paused else "Retrying every 1 s."
    assert all(b.endswith(retry) for b in banners)
    assert [h.value for h in at.subheader] == [
        "DQN learning",
        "Paper trading",
        "CNN extrema and sensitivity",
        "Trainer replicas and models",
    ]


@pytest.mark.integration
def test_market_candles_include_ingests_history_where_no_live_bar_exists(client: redis.Redis) -> None:
    from unistream_dashboard.market import read_candles

    url = client.connection_pool.connection_kwargs
    pipe = client.pipeline(transaction=False)
    for i, open_ms in enumerate((T0 - 180_000, T0 - 120_000, T0 - 60_000)):  # history before the system ran
        hist = msgspec.structs.replace(bar(open_ms, timeframe="1m", c=90 + i), is_history=True)
        pipe.xadd(keys.history("ETHUSDT", "1m"), codec.encode(hist), id=f"{open_ms}-0")
    for open_ms in (T0 - 60_000, T0):  # live bars: one of them covers the newest history minute
        pipe.xadd(keys.bars("ETHUSDT", "1m"), codec.encode(bar(open_ms, timeframe="1m", c=101)), id=f"{open_ms}-0")
    pipe.execute()
    read = read_candles(f"redis://{url['host']}:{url['port']}/0", "ETHUSDT", "1m", 500)
    assert [b.open_time_ms for b in read.bars] == [T0 - 180_000, T0 - 120_000, T0 - 60_000, T0]
    assert [b.is_history for b in read.bars] == [True, True, False, False], "a live bar replaces history"
    assert [
        b.open_time_ms for b in read_candles(f"redis://{url['host']}:{url['port']}/0", "ETHUSDT", "1m", 2).bars
    ] == [
        T0 - 60_000,
        T0,
    ]
