"""Market and training pages: the pure shaping (candles, markers, metric series, replica rows,
model timeline), without Redis; the pages themselves against a real Redis are in
tests/integration/test_dashboard_market_training_pages.py."""

from __future__ import annotations

import math

import pytest
from dashboard_samples import T0, announcement, bar, fill, metrics, prediction_packet

from unistream_common.packets import Bar, PredictionPacket
from unistream_dashboard import charts, data, market, training, widgets
from unistream_dashboard.market import CandleSeries
from unistream_dashboard.training import Value

# --------------------------------------------------------------------------- builders (more in dashboard_samples)


def predictions(*packets: PredictionPacket) -> data.Predictions:
    return data.predictions_from(packets)


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
    assert list(empty["layout"]["xaxis"]["range"]) == [widgets.utc_datetime(T0 - 7000), widgets.utc_datetime(T0 + 4000)]
    lone = market.market_figure(series_of([], bar(T0 + 3000))).to_dict()
    spacer = next(t for t in lone["data"] if t["name"] == "spacer")
    assert list(spacer["x"]) == [widgets.utc_datetime(T0 + 2000)] and spacer["hoverinfo"] == "skip"
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
    assert widgets.fetched_caption(3.456, "a", "", "b", now_ms=T0) == "fetched in 3.5 ms · updated 15:06:00 UTC · a · b"
    assert widgets.fetched_caption(1234.0, now_ms=T0) == "fetched in 1,234 ms · updated 15:06:00 UTC"


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
    assert list(few["layout"]["xaxis"]["range"]) == [widgets.utc_datetime(T0 - 59_000), widgets.utc_datetime(T0 + 6000)]
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
