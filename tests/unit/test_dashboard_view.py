"""The dashboard's pure core: formatting, per-symbol status lines, RL state, charts, tables."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unistream_common.packets import MetricsPacket
from unistream_common.redisio import safe_url
from unistream_dashboard import charts, samples, view
from unistream_dashboard.view import ConsumerInfo, GroupInfo, Skipped, StreamInfo

NOW = 1_700_000_000_000
LIVE_AFTER = 5_000


def _rl(updates: int = 1_234, replicas: int = 2) -> view.RLSummary:
    return view.RLSummary(state="training" if updates else "waiting", updates=updates, replicas=replicas,
                          last_report_age_ms=400)  # fmt: skip


def _ui(symbol: str = "ETHUSDT", **kw: object) -> object:
    args: dict[str, object] = {
        "ts_ms": NOW - 100,
        "last_price": 3012.55,
        "ticks_seen": 45_678,
        "tick_cache_size": 1_234,
        "bars_seen": 4_321,
        "bars_1s_size": 120,
        "training_packets": 987,
    }
    args.update(kw)
    return samples.ui_packet(symbol, **args)  # type: ignore[arg-type]


def _ticks(price: float = 3013.0, ts_ms: int = NOW - 400, source: str = "REAL") -> object:
    return samples.tick_batch("ETHUSDT", first_trade_id=10, prices=[price - 1, price], ts_ms=ts_ms, source=source)


# --------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (999, "999"), (1_000, "1,000"), (45_678, "45,678"), (1_234_567, "1,234,567"), (None, "n/a")],
)
def test_fmt_int_groups_thousands_and_shows_none_as_na(value: int | None, text: str) -> None:
    assert view.fmt_int(value) == text


@pytest.mark.parametrize(
    ("price", "text"),
    [
        (3012.55, "3,012.55"),
        (3012.5, "3,012.50"),
        (97_123.4, "97,123.40"),
        (3000.0, "3,000.00"),
        (0.00001234, "0.00001234"),
        (1e-05, "0.00001"),
        (0.123456789, "0.12345679"),
        (1_234_567.125, "1,234,567.125"),
        (None, "n/a"),
        (math.nan, "n/a"),
        (math.inf, "n/a"),
    ],
)
def test_fmt_price_keeps_the_quoted_decimals_with_at_least_two(price: float | None, text: str) -> None:
    assert view.fmt_price(price) == text


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=0, max_value=8))
def test_fmt_price_round_trips_any_venue_decimal(units: int, decimals: int) -> None:
    price = float(f"{units / 10**decimals:.{decimals}f}")
    assert float(view.fmt_price(price).replace(",", "")) == price


@given(st.integers(min_value=0, max_value=10**15))
def test_fmt_int_round_trips(n: int) -> None:
    assert int(view.fmt_int(n).replace(",", "")) == n


@pytest.mark.parametrize(
    ("age_ms", "text"),
    [
        (0, "0.0 s"),
        (-250, "0.0 s"),
        (400, "0.4 s"),
        (9_949, "9.9 s"),
        (12_000, "12 s"),
        (119_000, "119 s"),
        (180_000, "3 min"),
        (2 * 3_600_000 + 1_800_000, "2.5 h"),
        (4 * 86_400_000, "4 d"),
        (None, "n/a"),
    ],
)
def test_fmt_age_picks_a_readable_unit(age_ms: int | None, text: str) -> None:
    assert view.fmt_age(age_ms) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(1100.0, "1,100"), (0.0123456, "0.01235"), (0.05, "0.05"), (None, "n/a"), (math.nan, "nan"), (2.5e20, "2.5e+20")],
)
def test_fmt_metric_shows_counts_whole_and_losses_to_four_digits(value: float | None, text: str) -> None:
    assert view.fmt_metric(value) == text


def test_md_escape_neutralises_markdown_in_external_names() -> None:
    assert view.md_escape("cnn_v1*[x]$y") == r"cnn\_v1\*\[x\]\$y"
    assert view.md_escape("v3-2024.01") == "v3-2024.01"


def test_redacted_hides_the_password_only() -> None:
    assert safe_url("redis://user:secret@redis:6379/0") == "redis://user:***@redis:6379/0"
    assert safe_url("redis://127.0.0.1:6380/0") == "redis://127.0.0.1:6380/0"


def test_id_key_orders_ids_as_redis_does() -> None:
    assert view.id_key("10-0") > view.id_key("9-5")
    assert view.id_key("10-1") > view.id_key("10-0")
    assert view.id_ms("1700000000123-4") == 1_700_000_000_123


def test_skipped_text_counts_and_explains_the_first_few() -> None:
    assert view.skipped_text([]) is None
    items = [Skipped("ui:packets", f"{i}-0", "unknown packet type 'x'") for i in range(5)]
    text = view.skipped_text(items)
    assert text is not None
    assert text.startswith("Undecodable entries: 5 (ui:packets 0-0: unknown packet type 'x';")
    assert text.endswith("; and 2 more)")


# --------------------------------------------------------------------------- per-symbol status


def test_symbol_status_lines_follow_the_documented_formats() -> None:
    card = view.symbol_status("ETHUSDT", _ui(), _ticks(), _rl(), NOW, LIVE_AFTER)  # type: ignore[arg-type]
    assert [line.text for line in card.lines] == [
        "ETHUSDT · Tick cache: 1,234 / 5,000 (total 45,678)",
        "ETHUSDT · 1s bars: 120 / 3,600 (total 4,321)",
        "ETHUSDT · Stream: LIVE (last tick 0.4 s ago)",
        "ETHUSDT · Source: REAL MARKET DATA",
        "ETHUSDT · Price: 3,013.00",
        "ETHUSDT · Training packets: 987",
        "ETHUSDT · Warm-up: complete",
        "ETHUSDT · Gaps: none",
        "ETHUSDT · CNN model: TRAINING, version v1, 123,456 parameters",
        "ETHUSDT · RL agent: training (1,234 updates), 512 features",
    ]
    assert card.line("tick-cache") == card.lines[0].text
    assert card.live and card.badge == ":green-badge[LIVE] :green-badge[REAL MARKET DATA]"
    assert card.predictions == "CNN predictions: top 0.120 · bottom 0.080"
    assert card.status_age_ms == 100


def test_warm_up_progress_and_untrained_weights_are_said_on_the_card() -> None:
    ui = _ui(warmup={"1s": 1.0, "1m": 1.0, "1h": 0.4, "1d": 0.0}, cnn_state="INITIALISED")
    card = view.symbol_status("ETHUSDT", ui, _ticks(), _rl(), NOW, LIVE_AFTER)  # type: ignore[arg-type]
    assert card.line("warmup") == "ETHUSDT · Warm-up: 1s 100% · 1m 100% · 1h 40% · 1d 0%"
    assert (
        card.line("cnn")
        == "ETHUSDT · CNN model: INITIALISED (untrained: seeded weights), version v1, 123,456 parameters"
    )
    assert view.warmup_text({"1s": 0.999}) == "1s 99%", "never rounded up to full"


def test_unrecoverable_gaps_are_counted_on_the_card() -> None:
    card = view.symbol_status("ETHUSDT", _ui(gaps_seen=2, trades_missing=1_057), _ticks(), _rl(), NOW, LIVE_AFTER)  # type: ignore[arg-type]
    assert card.line("gaps") == "ETHUSDT · Gaps: 2 (1,057 trades missing)"


def test_price_and_age_come_from_the_tick_stream_when_it_is_there() -> None:
    card = view.symbol_status(
        "ETHUSDT",
        _ui(last_price=3000.0, ts_ms=NOW - 9_000),  # type: ignore[arg-type]
        _ticks(price=3013.25, ts_ms=NOW - 1_000),  # type: ignore[arg-type]
        _rl(),
        NOW,
        LIVE_AFTER,
    )
    assert card.price == 3013.25
    assert card.line("stream") == "ETHUSDT · Stream: LIVE (last tick 1.0 s ago)"


def test_without_a_tick_stream_price_and_age_come_from_the_status_packet() -> None:
    card = view.symbol_status("ETHUSDT", _ui(ts_ms=NOW - 7_000), None, _rl(), NOW, LIVE_AFTER)  # type: ignore[arg-type]
    assert card.line("price") == "ETHUSDT · Price: 3,012.55"
    assert card.line("stream") == "ETHUSDT · Stream: OFFLINE (last tick 7.0 s ago)"
    assert not card.live and card.badge.startswith(":red-badge[OFFLINE]")


@pytest.mark.parametrize(("age_ms", "live"), [(LIVE_AFTER, True), (LIVE_AFTER + 1, False), (-2_000, True)])
def test_live_means_last_tick_at_most_the_threshold_old(age_ms: int, live: bool) -> None:
    card = view.symbol_status("ETHUSDT", None, _ticks(ts_ms=NOW - age_ms), _rl(), NOW, LIVE_AFTER)  # type: ignore[arg-type]
    assert card.live is live
    assert card.line("stream").startswith(f"ETHUSDT · Stream: {'LIVE' if live else 'OFFLINE'} (last tick ")


def test_symbol_without_any_data_is_offline_with_na_everywhere() -> None:
    card = view.symbol_status("BTCUSDT", None, None, _rl(0, 0), NOW, LIVE_AFTER)
    assert [line.text for line in card.lines] == [
        "BTCUSDT · Tick cache: n/a",
        "BTCUSDT · 1s bars: n/a",
        "BTCUSDT · Stream: OFFLINE (no ticks yet)",
        "BTCUSDT · Source: n/a",
        "BTCUSDT · Price: n/a",
        "BTCUSDT · Training packets: n/a",
        "BTCUSDT · Warm-up: n/a",
        "BTCUSDT · Gaps: n/a",
        "BTCUSDT · CNN model: n/a",
        "BTCUSDT · RL agent: waiting (no updates yet), n/a features",
    ]
    assert card.badge == ":red-badge[OFFLINE]"
    assert card.predictions is None


@pytest.mark.parametrize(
    ("source", "line", "badge"),
    [
        ("REPLAY", "REPLAY (recorded market data, not live)", ":orange-badge[REPLAY]"),
        ("SYNTHETIC", "SYNTHETIC (simulated prices, not market data)", ":violet-badge[SYNTHETIC]"),
    ],
)
def test_non_real_sources_are_stated_plainly_and_never_called_real(source: str, line: str, badge: str) -> None:
    card = view.symbol_status("ETHUSDT", _ui(source=source), None, _rl(), NOW, LIVE_AFTER)  # type: ignore[arg-type]
    assert card.line("source") == f"ETHUSDT · Source: {line}"
    assert badge in card.badge
    assert "REAL MARKET DATA" not in " ".join(x.text for x in card.lines) + card.badge


def test_source_falls_back_to_the_tick_stream_without_a_status_packet() -> None:
    card = view.symbol_status("ETHUSDT", None, _ticks(source="SYNTHETIC"), _rl(), NOW, LIVE_AFTER)  # type: ignore[arg-type]
    assert card.source == "SYNTHETIC"


def test_cnn_version_from_another_service_is_escaped() -> None:
    card = view.symbol_status("ETHUSDT", _ui(cnn_version="v_2*"), None, _rl(), NOW, LIVE_AFTER)  # type: ignore[arg-type]
    assert card.line("cnn") == r"ETHUSDT · CNN model: TRAINING, version v\_2\*, 123,456 parameters"


def test_predictions_text_needs_matching_names_and_values() -> None:
    assert view.predictions_text(["top"], [0.5]) == "CNN predictions: top 0.500"
    assert view.predictions_text(["top", "bottom"], [0.5]) is None
    assert view.predictions_text([], []) is None


def test_latest_ui_per_symbol_keeps_the_newest_of_wanted_symbols() -> None:
    packets = [_ui(ts_ms=NOW - 300), _ui(ts_ms=NOW - 100), _ui("SOLUSDT"), _ui("BTCUSDT", ts_ms=NOW - 200)]
    latest = view.latest_ui_per_symbol(packets, ["ETHUSDT", "BTCUSDT"])  # type: ignore[arg-type]
    assert set(latest) == {"ETHUSDT", "BTCUSDT"}
    assert latest["ETHUSDT"].ts_ms == NOW - 100


# --------------------------------------------------------------------------- RL agent


def _metrics(producer: str, ts_ms: int, updates: float, step: int = 1) -> MetricsPacket:
    return MetricsPacket(producer, ts_ms, step, {"charts/updates": updates, "losses/td_loss": 0.1})


def test_rl_waits_until_a_replica_reports_updates() -> None:
    none = view.rl_summary({}, NOW, 30_000)
    assert (none.state, none.updates, none.replicas, none.last_report_age_ms) == ("waiting", 0, 0, None)
    assert none.text == "waiting (no updates yet)"
    zero = view.rl_summary({"a": _metrics("a", NOW, 0.0)}, NOW, 30_000)  # type: ignore[dict-item]
    assert zero.state == "waiting" and zero.replicas == 1


def test_rl_training_sums_updates_over_replicas_and_ignores_non_finite_counts() -> None:
    latest = {
        "a": _metrics("a", NOW - 1_000, 700.0),
        "b": _metrics("b", NOW - 500, 534.0),
        "c": _metrics("c", NOW - 500, math.nan),
    }
    summary = view.rl_summary(latest, NOW, 30_000)  # type: ignore[arg-type]
    assert (summary.state, summary.updates, summary.replicas, summary.last_report_age_ms) == ("training", 1234, 3, 500)
    assert summary.text == "training (1,234 updates)"
    assert view.rl_line(summary) == "RL training: training (1,234 updates), 3 replicas, last metrics 0.5 s ago"


def test_rl_is_stalled_when_no_replica_reported_for_the_threshold() -> None:
    summary = view.rl_summary({"a": _metrics("a", NOW - 180_000, 10.0)}, NOW, 30_000)  # type: ignore[dict-item]
    assert summary.state == "stalled"
    assert summary.text == "stalled (no metrics for 3 min, 10 updates)"
    assert view.rl_line(summary).startswith("RL training: stalled (no metrics for 3 min, 10 updates), 1 replica,")


def test_rl_line_without_any_replica_says_so() -> None:
    assert view.rl_line(view.rl_summary({}, NOW, 1)) == "RL training: waiting (no trainer has reported metrics yet)"


def test_latest_per_producer_keeps_each_producers_newest_sorted_by_name() -> None:
    packets = [
        _metrics("b", NOW - 10, 1),
        _metrics("a", NOW - 20, 1),
        _metrics("b", NOW - 5, 2),
        _metrics("b", NOW - 9, 3),
    ]
    latest = view.latest_per_producer(packets)  # type: ignore[arg-type]
    assert list(latest) == ["a", "b"]
    assert latest["b"].metrics["charts/updates"] == 2


def test_metrics_rows_put_known_metrics_first_and_format_every_cell() -> None:
    packet = samples.metrics_packet("trainer-0", ts_ms=NOW - 400, step=1_200, td_loss=0.0123456, updates=1_100)
    packet = MetricsPacket(packet.producer, packet.ts_ms, packet.step, {**packet.metrics, "charts/sps": 18.25})
    [row] = view.metrics_rows({"trainer-0": packet}, NOW)
    assert list(row) == [
        "replica", "step", "updated", "losses/td_loss", "charts/epsilon", "charts/updates", "charts/packets", "charts/sps",
    ]  # fmt: skip
    assert row["step"] == "1,200" and row["updated"] == "0.4 s ago"
    assert row["losses/td_loss"] == "0.01235" and row["charts/updates"] == "1,100" and row["charts/sps"] == "18.25"
    assert all(isinstance(v, str) for v in row.values())


def test_metric_series_orders_points_by_time_and_drops_non_finite_values() -> None:
    a = samples.metrics_packet("a", ts_ms=NOW, step=2, td_loss=0.2, updates=1)
    b = samples.metrics_packet("a", ts_ms=NOW - 1_000, step=1, td_loss=0.4, updates=1)
    c = samples.metrics_packet("b", ts_ms=NOW, step=1, td_loss=math.inf, updates=1)
    series = view.metric_series([a, b, c])
    assert series == {"a": ([NOW - 1_000, NOW], [0.4, 0.2])}


def test_model_rows_are_newest_first() -> None:
    old = samples.model_announcement("dqn", "v1", ts_ms=NOW - 60_000, producer="t0", parameters=10)
    new = samples.model_announcement("dqn", "v2", ts_ms=NOW - 1_000, producer="t1", parameters=3_500_000)
    rows = view.model_rows([old, new], NOW)
    assert [r["version"] for r in rows] == ["v2", "v1"]
    assert rows[0]["parameters"] == "3,500,000" and rows[0]["announced"] == "1.0 s ago"


# --------------------------------------------------------------------------- charts


def test_candles_keep_the_newest_bars_of_the_symbol_in_time_order() -> None:
    bars = samples.bar_walk("ETHUSDT", end_open_ms=NOW // 1000 * 1000, count=50, start_price=3000.0)
    other = samples.bar_walk("BTCUSDT", end_open_ms=NOW // 1000 * 1000, count=5, start_price=90_000.0)
    candles = view.candles("ETHUSDT", [*reversed(bars), *other, bars[-1]], limit=30)
    assert len(candles) == 30
    assert candles.times_ms == [b.open_time_ms for b in bars[-30:]]
    assert candles.close == [b.close for b in bars[-30:]]
    assert re.fullmatch(r"ETHUSDT · 1s candles: 30 shown, last close [\d,]+\.\d{2} at \d\d:\d\d:\d\d UTC",
                        candles.caption)  # fmt: skip


def test_candles_without_bars_say_none_yet() -> None:
    candles = view.candles("ETHUSDT", [], limit=300)
    assert len(candles) == 0 and candles.caption == "ETHUSDT · 1s candles: none yet"


def test_candle_figure_has_a_fixed_uirevision_and_at_most_1000_candles() -> None:
    bars = samples.bar_walk("ETHUSDT", end_open_ms=NOW // 1000 * 1000, count=1_200, start_price=3000.0)
    candles = view.candles("ETHUSDT", bars, limit=1_200)
    first, second = charts.candle_figure(candles), charts.candle_figure(view.candles("ETHUSDT", bars[:-1], 1_200))
    assert first.layout.uirevision == second.layout.uirevision == "candles-ETHUSDT"
    assert len(first.data[0].x) == charts.MAX_CANDLES
    assert first.data[0].close[-1] == bars[-1].close


@pytest.mark.parametrize(
    ("prices", "fmt"), [([3012.5, 2990.0], ",.2f"), ([0.5, 0.7], ",.4f"), ([0.00001234], ",.8f"), ([], ",.2f")]
)
def test_price_axis_shows_enough_decimals_for_small_prices(prices: list[float], fmt: str) -> None:
    assert charts.price_tickformat(prices) == fmt


def test_loss_figure_draws_one_line_per_replica_with_a_fixed_uirevision() -> None:
    fig = charts.loss_figure({"a": ([NOW], [0.1]), "b": ([NOW], [0.2])}, "losses/td_loss")
    assert [t.name for t in fig.data] == ["a", "b"]
    assert fig.layout.uirevision == "metric-losses/td_loss"


# --------------------------------------------------------------------------- stream statistics


def _stream(length: int, added: int | None, first: str | None, *groups: GroupInfo) -> StreamInfo:
    return StreamInfo("md:ticks:{ETHUSDT}", length, first, "1700000000000-0" if first else None, added, groups)


def _group(last: str, read: int | None, lag: int | None = None, consumers: tuple[ConsumerInfo, ...] = ()) -> GroupInfo:
    return GroupInfo("aggregator", len(consumers), 3, last, read, lag, consumers)


@pytest.mark.parametrize(
    ("stream", "group", "missed"),
    [
        (_stream(5, 10, "6-0"), _group("3-0", 3), 2),  # read 3, 5 trimmed: 2 never delivered
        (_stream(5, 10, "6-0"), _group("5-0", 5), 0),  # everything trimmed had been read
        (_stream(10, 10, "1-0"), _group("0-0", None), 0),  # nothing removed
        (_stream(5, 10, "6-0"), _group("3-0", None), -1),  # Redis 7 without entries-read: lost, count unknown
        (_stream(5, None, "6-0"), _group("3-0", None), -1),  # Redis 6.2: first entry past the group
        (_stream(5, None, "6-0"), _group("7-0", None), None),  # Redis 6.2: cannot tell
        (_stream(0, 10, None), _group("3-0", None), None),  # empty stream, no counters
    ],
)
def test_overrun_counts_entries_trimmed_before_the_group_read_them(
    stream: StreamInfo, group: GroupInfo, missed: int | None
) -> None:
    assert view.overrun(stream, group) == missed


def test_group_rows_show_lag_na_when_redis_reports_none_and_flag_overruns() -> None:
    consumers = (ConsumerInfo("aggregator-1", 3, 1_500), ConsumerInfo("aggregator-2", 0, 200_000, inactive_ms=100_000))
    stream = _stream(5, 10, "6-0", _group("3-0", 3, None, consumers), _group("9-0", 9, 0))
    rows = view.group_rows([stream])
    assert rows[0]["lag"] == "n/a" and rows[1]["lag"] == "0"
    assert rows[0]["trimmed"] == "OVERRUN (2 trimmed before read)" and rows[1]["trimmed"] == "ok"
    assert rows[0]["consumers"] == "2" and rows[0]["pending"] == "3" and rows[0]["last delivered"] == "3-0"
    crow = view.consumer_rows([stream])
    assert [(c["consumer"], c["pending"], c["idle"], c["inactive"]) for c in crow] == [
        ("aggregator-1", "3", "1.5 s", "n/a"),
        ("aggregator-2", "0", "3 min", "100 s"),
    ]


def test_stream_rows_and_summary_line() -> None:
    stream = StreamInfo("ui:packets", 50, "1699999999000-0", "1699999999900-0", 12_345, (_group("1-0", 1),))
    empty = StreamInfo("ml:models", 0, None, None, 3)
    rows = view.stream_rows([stream, empty], NOW)
    assert rows[0] == {
        "stream": "ui:packets",
        "entries": "50",
        "added": "12,345",
        "newest": "0.1 s ago",
        "first id": "1699999999000-0",
        "last id": "1699999999900-0",
        "groups": "1",
    }
    assert rows[1]["newest"] == "n/a" and rows[1]["first id"] == "n/a"
    assert view.streams_line([stream, empty], ["ml:training"]) == (
        "Streams: 2 present, 1 not created yet · groups 1 · consumers 0 · pending 3"
    )
