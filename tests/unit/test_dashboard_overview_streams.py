"""The Overview and Streams pages' pure view models (per-symbol status lines, RL state, service
health, stream tables, dead letters, data quality), the shared formatting of widgets and the parsing
of Redis replies in data: no Redis, no browser."""

from __future__ import annotations

import math

import dashboard_samples as samples
import pytest
from hypothesis import given
from hypothesis import strategies as st

from unistream_common import quality
from unistream_common.packets import MetricsPacket, ModelStatus
from unistream_common.redisio import safe_url
from unistream_dashboard import data, overview, streams, widgets
from unistream_dashboard.data import ConsumerInfo, GroupInfo, Skipped, StreamInfo

NOW = 1_700_000_000_000
LIVE_AFTER = 5_000
STALE_AFTER = 60_000


def _rl(updates: int = 1_234, replicas: int = 2) -> overview.RLSummary:
    return overview.RLSummary(state="training" if updates else "waiting", updates=updates, replicas=replicas,
                          last_report_age_ms=400)  # fmt: skip


def _agent(updates: int = 1_234, dqn: str | None = "v7") -> overview.AgentView:
    return overview.AgentView(_rl(updates), dqn_version=dqn)


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
    assert widgets.fmt_int(value) == text


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
    assert widgets.fmt_price(price) == text


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=0, max_value=8))
def test_fmt_price_round_trips_any_venue_decimal(units: int, decimals: int) -> None:
    price = float(f"{units / 10**decimals:.{decimals}f}")
    assert float(widgets.fmt_price(price).replace(",", "")) == price


@given(st.integers(min_value=0, max_value=10**15))
def test_fmt_int_round_trips(n: int) -> None:
    assert int(widgets.fmt_int(n).replace(",", "")) == n


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
    assert widgets.fmt_age(age_ms) == text


def test_md_escape_neutralises_markdown_in_external_names() -> None:
    assert widgets.md_escape("cnn_v1*[x]$y") == r"cnn\_v1\*\[x\]\$y"
    assert widgets.md_escape("v3-2024.01") == "v3-2024.01"


def test_redacted_hides_the_password_only() -> None:
    assert safe_url("redis://user:secret@redis:6379/0") == "redis://user:***@redis:6379/0"
    assert safe_url("redis://127.0.0.1:6380/0") == "redis://127.0.0.1:6380/0"


def test_id_ms_is_the_time_part_of_an_entry_id() -> None:
    assert widgets.id_ms("1700000000123-4") == 1_700_000_000_123


def test_skipped_text_counts_and_explains_the_first_few() -> None:
    assert overview.skipped_text([]) is None
    items = [Skipped("ui:packets", f"{i}-0", "unknown packet type 'x'") for i in range(5)]
    text = overview.skipped_text(items)
    assert text is not None
    assert text.startswith("Undecodable entries: 5 (ui:packets 0-0: unknown packet type 'x';")
    assert text.endswith("; and 2 more)")


# --------------------------------------------------------------------------- per-symbol status


def _status(ui: object, ticks: object, agent: overview.AgentView | None = None) -> overview.SymbolStatus:
    return overview.symbol_status("ETHUSDT", ui, ticks, agent or _agent(), NOW, LIVE_AFTER, STALE_AFTER)  # type: ignore[arg-type]


def test_bars_line_tells_warm_up_history_from_live_bars() -> None:
    # features buffers 300 history bars before the first live one: "total 4" alone read as a
    # miscount of the 304 buffered
    card = _status(_ui(bars_seen=4, bars_1s_size=304), _ticks())
    assert card.line("bars") == "ETHUSDT · 1s bars: 304 / 3,600 (total 4), 300 of them history"
    full = _status(_ui(bars_seen=4_321, bars_1s_size=1_000), _ticks())
    assert full.line("bars") == "ETHUSDT · 1s bars: 1,000 / 3,600 (total 4,321)"


def test_symbol_status_lines_follow_the_documented_formats() -> None:
    card = _status(_ui(cnn_state="LOADED", cnn_version="v3", cnn_updated_ms=NOW - 4_000), _ticks())
    assert [line.text for line in card.lines] == [
        "ETHUSDT · Tick cache: 1,234 / 5,000 (total 45,678)",
        "ETHUSDT · 1s bars: 120 / 3,600 (total 4,321)",
        "ETHUSDT · Stream: LIVE (last tick 0.4 s ago)",
        "ETHUSDT · Source: REAL MARKET DATA",
        "ETHUSDT · Price: 3,013.00",
        "ETHUSDT · Training packets: 987",
        "ETHUSDT · Warm-up: complete",
        "ETHUSDT · Gaps: none",
        (
            "ETHUSDT · CNN model: version v3, trained (LOADED), 123,456 parameters, last reload "
            f"{widgets.fmt_utc(NOW - 4_000)} (4.0 s ago)"
        ),
        "ETHUSDT · RL agent: training (1,234 updates), 512 features, model v7",
        "ETHUSDT · Extrema learning: waiting (no trainer metrics yet)",
        "ETHUSDT · Sensitivity: waiting (no trainer metrics yet)",
    ]
    assert card.line("tick-cache") == card.lines[0].text
    assert card.live and card.state == "LIVE"
    assert card.badge == ":green-badge[LIVE] :green-badge[REAL MARKET DATA]"
    assert card.predictions == "CNN predictions: top 0.120 · bottom 0.080"
    assert card.status_age_ms == 100
    assert card.warmup == 1.0


@pytest.mark.parametrize(
    ("age_ms", "state"),
    [
        (None, "OFFLINE"),
        (-2_000, "LIVE"),  # the writer's clock runs ahead
        (0, "LIVE"),
        (LIVE_AFTER, "LIVE"),
        (LIVE_AFTER + 1, "STALE"),
        (STALE_AFTER, "STALE"),
        (STALE_AFTER + 1, "OFFLINE"),
    ],
)
def test_stream_state_is_live_then_stale_then_offline_by_the_last_ticks_age(age_ms: int | None, state: str) -> None:
    assert overview.stream_state(age_ms, LIVE_AFTER, STALE_AFTER) == state


def test_a_stale_threshold_below_the_live_one_never_hides_live() -> None:
    assert overview.stream_state(4_000, 5_000, 1_000) == "LIVE"
    assert overview.stream_state(5_001, 5_000, 1_000) == "OFFLINE"


@pytest.mark.parametrize(
    ("age_ms", "state", "badge"),
    [(LIVE_AFTER, "LIVE", ":green-badge[LIVE]"), (20_000, "STALE", ":orange-badge[STALE]"),
     (STALE_AFTER + 1, "OFFLINE", ":red-badge[OFFLINE]")],
)  # fmt: skip
def test_the_card_says_live_stale_or_offline_with_the_ticks_age(age_ms: int, state: str, badge: str) -> None:
    card = _status(None, _ticks(ts_ms=NOW - age_ms))
    assert card.state == state and card.live is (state == "LIVE")
    assert card.line("stream") == f"ETHUSDT · Stream: {state} (last tick {widgets.fmt_age(age_ms)} ago)"
    assert card.badge.startswith(badge)


def test_warm_up_progress_and_untrained_weights_are_said_on_the_card() -> None:
    ui = _ui(warmup={"1s": 1.0, "1m": 1.0, "1h": 0.4, "1d": 0.0}, cnn_state="INITIALISED", cnn_version="cnn-mtf-init-7")
    card = _status(ui, _ticks())
    assert card.line("warmup") == "ETHUSDT · Warm-up: 1s 100% · 1m 100% · 1h 40% · 1d 0%"
    assert card.warmup == pytest.approx(0.6)
    assert card.line("cnn").startswith(
        "ETHUSDT · CNN model: version cnn-mtf-init-7, untrained (INITIALISED: seeded weights), 123,456 parameters, "
        "initialised "
    )
    assert overview.warmup_text({"1s": 0.999}) == "1s 99%", "never rounded up to full"


@pytest.mark.parametrize(
    ("state", "kind", "when"),
    [
        ("INITIALISED", "untrained (INITIALISED: seeded weights)", "initialised"),
        ("LOADED", "trained (LOADED)", "last reload"),
        ("TRAINING", "trained (TRAINING)", "last reload"),
        ("ERROR", "ERROR (weights failed to load)", "last change"),
    ],
)
def test_cnn_text_says_trained_or_untrained_and_when_the_weights_were_loaded(state: str, kind: str, when: str) -> None:
    status = ModelStatus("extrema-cnn", "v2", state, 1_000, NOW - 180_000)  # type: ignore[arg-type]
    assert overview.cnn_text(status, NOW) == (
        f"version v2, {kind}, 1,000 parameters, {when} {widgets.fmt_utc(NOW - 180_000)} (3 min ago)"
    )
    assert overview.cnn_text(ModelStatus("x", "v", state, 1, 0), NOW).endswith(f"{when} n/a")  # type: ignore[arg-type]


def test_warmup_fill_is_the_mean_share_clamped_and_none_when_unknown() -> None:
    assert overview.warmup_fill({}) is None
    assert overview.warmup_fill({"1s": 1.0, "1m": 0.5}) == 0.75
    assert overview.warmup_fill({"1s": 1.5, "1m": math.nan}) == 1.0


def test_unrecoverable_gaps_are_counted_on_the_card() -> None:
    card = _status(_ui(gaps_seen=2, trades_missing=1_057), _ticks())
    assert card.line("gaps") == "ETHUSDT · Gaps: 2 (1,057 trades missing)"


def test_price_and_age_come_from_the_tick_stream_when_it_is_there() -> None:
    card = _status(_ui(last_price=3000.0, ts_ms=NOW - 9_000), _ticks(price=3013.25, ts_ms=NOW - 1_000))
    assert card.price == 3013.25
    assert card.line("stream") == "ETHUSDT · Stream: LIVE (last tick 1.0 s ago)"


def test_without_a_tick_stream_price_and_age_come_from_the_status_packet() -> None:
    card = _status(_ui(ts_ms=NOW - 7_000), None)
    assert card.line("price") == "ETHUSDT · Price: 3,012.55"
    assert card.line("stream") == "ETHUSDT · Stream: STALE (last tick 7.0 s ago)"
    assert not card.live and card.badge.startswith(":orange-badge[STALE]")


def test_symbol_without_any_data_is_offline_with_na_everywhere() -> None:
    card = overview.symbol_status("BTCUSDT", None, None, overview.AgentView(_rl(0, 0)), NOW, LIVE_AFTER, STALE_AFTER)
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
        "BTCUSDT · RL agent: waiting (no updates yet), n/a features, no model announced yet",
        "BTCUSDT · Extrema learning: waiting (no trainer metrics yet)",
        "BTCUSDT · Sensitivity: waiting (no trainer metrics yet)",
    ]
    assert card.badge == ":red-badge[OFFLINE]"
    assert card.predictions is None and card.warmup is None


@pytest.mark.parametrize(
    ("source", "line", "badge"),
    [
        ("REPLAY", "REPLAY (recorded market data, not live)", ":orange-badge[REPLAY]"),
        ("SYNTHETIC", "SYNTHETIC (simulated prices, not market data)", ":violet-badge[SYNTHETIC]"),
    ],
)
def test_non_real_sources_are_stated_plainly_and_never_called_real(source: str, line: str, badge: str) -> None:
    card = _status(_ui(source=source), None)
    assert card.line("source") == f"ETHUSDT · Source: {line}"
    assert badge in card.badge
    assert "REAL MARKET DATA" not in " ".join(x.text for x in card.lines) + card.badge


def test_source_falls_back_to_the_tick_stream_without_a_status_packet() -> None:
    assert _status(None, _ticks(source="SYNTHETIC")).source == "SYNTHETIC"


def test_names_from_other_services_are_escaped() -> None:
    card = _status(_ui(cnn_version="v_2*"), None, overview.AgentView(_rl(), dqn_version="round_3"))
    assert card.line("cnn").startswith(r"ETHUSDT · CNN model: version v\_2\*, trained (TRAINING)")
    assert card.line("rl").endswith(r"model round\_3")


def test_predictions_text_needs_matching_names_and_values() -> None:
    assert overview.predictions_text(["top"], [0.5]) == "CNN predictions: top 0.500"
    assert overview.predictions_text(["top", "bottom"], [0.5]) is None
    assert overview.predictions_text([], []) is None


def test_latest_ui_per_symbol_keeps_the_newest_of_wanted_symbols() -> None:
    packets = [_ui(ts_ms=NOW - 300), _ui(ts_ms=NOW - 100), _ui("SOLUSDT"), _ui("BTCUSDT", ts_ms=NOW - 200)]
    latest = overview.latest_ui_per_symbol(packets, ["ETHUSDT", "BTCUSDT"])  # type: ignore[arg-type]
    assert set(latest) == {"ETHUSDT", "BTCUSDT"}
    assert latest["ETHUSDT"].ts_ms == NOW - 100


# --------------------------------------------------------------------------- Enhanced RL


def _enhanced(ts_ms: int = NOW, producer: str = "trainer-0", **kw: object) -> MetricsPacket:
    return samples.metrics_packet(
        producer,
        ts_ms=ts_ms,
        step=1,
        td_loss=0.1,
        updates=10,
        extra=samples.enhanced_metrics(**kw),  # type: ignore[arg-type]
    )


def test_extrema_text_counts_labels_and_compares_pr_auc_with_the_baseline() -> None:
    packet = _enhanced(labelled={"1s": 1_200, "1m": 34}, pr_auc_top=0.3123, baseline_top=0.12,
                       pr_auc_bottom=0.28, baseline_bottom=0.11)  # fmt: skip
    assert overview.extrema_text(packet) == (
        "1,234 labelled (1s 1,200 · 1m 34), PR-AUC 1s top 0.312 vs baseline 0.120, bottom 0.280 vs baseline 0.110"
    )


def test_extrema_text_uses_the_finest_timeframe_with_a_pr_auc_and_says_when_there_is_none() -> None:
    coarse = _enhanced(labelled={"1s": 50, "1m": 9}, pr_auc_top=0.5, baseline_top=0.2, timeframe="1m")
    assert overview.extrema_text(coarse).endswith("PR-AUC 1m top 0.500 vs baseline 0.200")
    unscored = _enhanced(labelled={"1s": 5})
    assert overview.extrema_text(unscored) == "5 labelled (1s 5), PR-AUC n/a (no extremum in the scoring window yet)"
    assert overview.extrema_text(_enhanced(labelled={"1s": 0})) == "waiting (no labelled extrema yet)"
    assert overview.extrema_text(None) == "waiting (no labelled extrema yet)"


def test_sensitivity_text_gives_trades_and_the_edge() -> None:
    assert overview.sensitivity_text(_enhanced(labelled={}, trades=45, edge=0.0012345, edge_t=1.8)) == (
        "45 trades, edge +0.00123 (t 1.80)"
    )
    assert overview.sensitivity_text(_enhanced(labelled={}, trades=3, edge=-0.5)) == "3 trades, edge -0.5"
    assert overview.sensitivity_text(_enhanced(labelled={}, trades=0)) == "0 trades (no edge yet)"
    assert overview.sensitivity_text(None) == "waiting (no sensitivity metrics yet)"


def test_agent_view_takes_the_newest_dqn_model_and_the_newest_enhanced_metrics() -> None:
    old = _enhanced(NOW - 5_000, "trainer-1", labelled={"1s": 10}, trades=1, edge=0.1)
    new = _enhanced(NOW - 1_000, "trainer-0", labelled={"1s": 20}, trades=2, edge=0.2)
    plain = samples.metrics_packet("trainer-1", ts_ms=NOW, step=9, td_loss=0.1, updates=10)
    models = [
        samples.model_announcement("dqn", "v2", ts_ms=NOW - 9_000, producer="t", parameters=1),
        samples.model_announcement("cnn-mtf", "c9", ts_ms=NOW, producer="t", parameters=1),
        samples.model_announcement("dqn", "v3", ts_ms=NOW - 2_000, producer="t", parameters=1),
    ]
    agent = overview.agent_view([old, new, plain], models, NOW, 30_000)
    assert agent.dqn_version == "v3"
    assert agent.extrema.startswith("20 labelled") and agent.sensitivity == "2 trades, edge +0.2"
    assert agent.rl.updates == 20 and agent.rl.replicas == 2
    assert overview.newest_model(models, "none") is None and overview.newest_with([plain], "extrema/") is None


# --------------------------------------------------------------------------- RL agent


def _metrics(producer: str, ts_ms: int, updates: float, step: int = 1) -> MetricsPacket:
    return MetricsPacket(producer, ts_ms, step, {"charts/updates": updates, "losses/td_loss": 0.1})


def test_rl_waits_until_a_replica_reports_updates() -> None:
    none = overview.rl_summary({}, NOW, 30_000)
    assert (none.state, none.updates, none.replicas, none.last_report_age_ms) == ("waiting", 0, 0, None)
    assert none.text == "waiting (no updates yet)"
    zero = overview.rl_summary({"a": _metrics("a", NOW, 0.0)}, NOW, 30_000)  # type: ignore[dict-item]
    assert zero.state == "waiting" and zero.replicas == 1


def test_latest_per_producer_keeps_each_producers_newest_sorted_by_name() -> None:
    packets = [
        _metrics("b", NOW - 10, 1),
        _metrics("a", NOW - 20, 1),
        _metrics("b", NOW - 5, 2),
        _metrics("b", NOW - 9, 3),
    ]
    latest = widgets.latest_per_producer(packets)  # type: ignore[arg-type]
    assert list(latest) == ["a", "b"]
    assert latest["b"].metrics["charts/updates"] == 2


# --------------------------------------------------------------------------- charts


# --------------------------------------------------------------------------- service health


def _beat(service: str, consumer: str, *, started: int = NOW - 3_600_000, updated: int = NOW - 800,
          ready: bool = True) -> data.Heartbeat:  # fmt: skip
    return data.Heartbeat(service, consumer, started, updated, ready, pid=42, host="host-a")


def test_parse_heartbeat_reads_the_hash_the_services_write() -> None:
    raw = {b"service": b"ingest", b"consumer": b"ingest-a", b"started_ms": b"100", b"updated_ms": b"200",
           b"ready": b"1", b"pid": b"42", b"host": b"host-a"}  # fmt: skip
    assert data.parse_heartbeat(raw) == data.Heartbeat("ingest", "ingest-a", 100, 200, True, 42, "host-a")
    partial = data.parse_heartbeat({"service": "features", "ready": "0", "started_ms": "soon"})
    assert partial == data.Heartbeat("features", "", None, None, False, None, "")
    assert data.parse_heartbeat({}) is None and data.parse_heartbeat({b"ready": b"1"}) is None


def test_a_service_with_ready_replicas_shows_replicas_uptime_and_last_beat() -> None:
    beats = [
        _beat("aggregator", "aggregator-b", started=NOW - 600_000, updated=NOW - 1_500),
        _beat("aggregator", "aggregator-a", started=NOW - 12_000_000, updated=NOW - 300),
        _beat("ingest", "ingest-a"),
    ]
    health = overview.service_health("aggregator", beats, NOW)
    assert (health.state, health.replicas, health.ready_replicas) == ("READY", 2, 2)
    assert [line.text for line in health.lines] == [
        "aggregator · Status: READY",
        "aggregator · Replicas: 2 (2 ready)",
        "aggregator · Uptime: 3 h 20 min",
        "aggregator · Last beat: 0.3 s ago",
    ]
    assert health.badge == ":green-badge[READY]"
    assert health.details == (
        "aggregator-a: ready, up 3 h 20 min, pid 42 on host-a",
        "aggregator-b: ready, up 10 min, pid 42 on host-a",
    )


def test_a_service_without_heartbeat_is_down_and_says_so() -> None:
    health = overview.service_health("features", [_beat("ingest", "ingest-a")], NOW)
    assert health.state == "DOWN" and health.badge == ":red-badge[DOWN]"
    assert health.line("status") == "features · Status: DOWN (no heartbeat)"
    assert health.line("replicas") == "features · Replicas: 0 (0 ready)"
    assert health.line("uptime") == "features · Uptime: n/a" and health.line("beat") == "features · Last beat: n/a"


def test_partly_or_not_ready_services_are_flagged() -> None:
    some = [_beat("trainer", "t-a"), _beat("trainer", "t-b", ready=False)]
    degraded = overview.service_health("trainer", some, NOW, leader="t-a")
    assert degraded.state == "DEGRADED" and degraded.badge == ":orange-badge[DEGRADED]"
    assert degraded.line("status") == "trainer · Status: DEGRADED (1 of 2 replicas ready)"
    assert degraded.line("leader") == "trainer · Leader: t-a"
    assert "t-b: not ready" in degraded.details[1]
    none = overview.service_health("ingest", [_beat("ingest", "i", ready=False)], NOW, leader="t-a")
    assert none.state == "NOT READY" and none.line("status") == "ingest · Status: NOT READY"
    with pytest.raises(KeyError):
        none.line("leader")  # only the trainer has a leader


@pytest.mark.parametrize(
    ("ms", "text"),
    [(None, "n/a"), (-5, "0 s"), (45_000, "45 s"), (119_999, "119 s"), (120_000, "2 min"), (3_599_000, "59 min"),
     (12_000_000, "3 h 20 min"), (47 * 3_600_000, "47 h 0 min"), (2 * 86_400_000 + 4 * 3_600_000, "2 d 4 h")],
)  # fmt: skip
def test_fmt_uptime(ms: int | None, text: str) -> None:
    assert overview.fmt_uptime(ms) == text


def test_services_line_counts_services_up_and_ready() -> None:
    beats = [_beat("ingest", "i"), _beat("trainer", "t", ready=False)]
    cards = [overview.service_health(name, beats, NOW) for name in overview.SERVICE_NAMES]
    assert overview.services_line(cards) == "Services: 2 of 5 up · 1 ready"


# --------------------------------------------------------------------------- stream statistics


def _stream(
    length: int, added: int | None, first: str | None, *groups: GroupInfo, last_gen: str = "10-0"
) -> StreamInfo:
    last = "1700000000000-0" if first else None
    return StreamInfo("md:ticks:{ETHUSDT}", length, first, last, added, groups, last_generated_id=last_gen)


def _group(last: str, read: int | None, lag: int | None = None, consumers: tuple[ConsumerInfo, ...] = ()) -> GroupInfo:
    return GroupInfo("aggregator", len(consumers), 3, last, read, lag, consumers)


@pytest.mark.parametrize(
    ("stream", "group", "alarm"),
    [
        (_stream(5, 10, "6-0"), _group("3-0", 3), "OVERRUN: 2 entries trimmed before this group read them"),
        (_stream(5, 10, "6-0"), _group("4-0", 4), "OVERRUN: 1 entry trimmed before this group read them"),
        (_stream(5, 10, "6-0"), _group("5-0", 5), None),  # everything trimmed had been read
        (_stream(10, 10, "1-0"), _group("0-0", None), None),  # nothing removed
        (_stream(5, 10, "6-0"), _group("3-0", None), "OVERRUN: entries trimmed before this group read them"),
        (_stream(5, None, "6-0"), _group("3-0", None), "OVERRUN: entries trimmed before this group read them"),
        (_stream(5, None, "6-0"), _group("7-0", None), None),  # Redis 6.2, group past the first entry
        (_stream(0, 10, None), _group("3-0", None), "OVERRUN: entries trimmed before this group read them"),
        (_stream(0, 10, None, last_gen="3-0"), _group("3-0", 10), None),  # emptied after everything was read
    ],
)
def test_overrun_alarm_follows_the_status_tools_judgement(
    stream: StreamInfo, group: GroupInfo, alarm: str | None
) -> None:
    assert streams.overrun_alarm(stream, group) == alarm


def test_overrun_alarms_name_the_stream_and_group() -> None:
    infos = [_stream(5, 10, "6-0", _group("3-0", 3), _group("9-0", 9))]
    assert streams.overrun_alarms(infos) == [
        "md:ticks:{ETHUSDT} · group aggregator: OVERRUN: 2 entries trimmed before this group read them"
    ]


def test_group_rows_show_lag_na_when_redis_reports_none_and_flag_overruns() -> None:
    consumers = (ConsumerInfo("aggregator-1", 3, 1_500), ConsumerInfo("aggregator-2", 0, 200_000, inactive_ms=100_000))
    stream = _stream(5, 10, "6-0", _group("3-0", 3, None, consumers), _group("9-0", 9, 0))
    rows = streams.group_rows([stream])
    assert rows[0]["lag"] == "n/a" and rows[1]["lag"] == "0"
    assert rows[0]["trimmed"] == "OVERRUN: 2 entries trimmed before this group read them" and rows[1]["trimmed"] == "ok"
    assert rows[0]["consumers"] == "2" and rows[0]["pending"] == "3" and rows[0]["last delivered"] == "3-0"
    crow = streams.consumer_rows([stream])
    assert [(c["consumer"], c["pending"], c["idle"], c["inactive"]) for c in crow] == [
        ("aggregator-1", "3", "1.5 s", "n/a"),
        ("aggregator-2", "0", "3 min", "100 s"),
    ]


def test_stream_rows_and_summary_line() -> None:
    stream = StreamInfo("ui:packets", 50, "1699999999000-0", "1699999999900-0", 12_345, (_group("1-0", 1),))
    empty = StreamInfo("ml:models", 0, None, None, 3)
    old = StreamInfo("ml:paper", 1, "1-0", "1-0", None)
    rows = streams.stream_rows([stream, empty, old], NOW, {"ui:packets": 12.345, "ml:models": None})
    assert rows[0] == {
        "stream": "ui:packets",
        "entries": "50",
        "entries/s": "12.3",
        "added": "12,345",
        "last entry": "0.1 s ago",
        "groups": "1",
        "first id": "1699999999000-0",
        "last id": "1699999999900-0",
    }
    assert rows[1]["last entry"] == "empty" and rows[1]["first id"] == "n/a"
    assert rows[1]["entries/s"] == "measuring", "a counter read once has no rate yet"
    assert rows[2]["entries/s"] == "n/a (Redis < 7)" and rows[2]["added"] == "n/a"
    assert streams.streams_line([stream, empty], ["ml:training"]) == (
        "Streams: 2 present, 1 not created yet · groups 1 · consumers 0 · pending 3"
    )


@pytest.mark.parametrize(
    ("rate", "text"),
    [(None, "n/a"), (math.nan, "n/a"), (0.0, "0"), (0.01, "0.01"), (0.5, "0.5"), (12.34, "12.3"), (99.94, "99.9"),
     (1234.4, "1,234")],
)  # fmt: skip
def test_fmt_rate(rate: float | None, text: str) -> None:
    assert streams.fmt_rate(rate) == text


@pytest.mark.parametrize(("ms", "text"), [(0.0, "0.0 ms"), (0.44, "0.4 ms"), (9.94, "9.9 ms"), (12.4, "12 ms"),
                                          (1234.0, "1,234 ms")])  # fmt: skip
def test_fmt_fetch(ms: float, text: str) -> None:
    assert widgets.fmt_fetch(ms) == text


def test_rate_tracker_measures_entries_per_second_over_a_window() -> None:
    rates = data.RateTracker(window_s=10.0, min_span_s=0.5)
    assert rates.update("s", 100.0, 1_000) is None, "one sample has no rate"
    assert rates.update("s", 100.2, 1_010) is None, "too close to the first"
    assert rates.update("s", 101.0, 1_050) == pytest.approx(50.0)
    assert rates.update("other", 101.0, 7) is None, "keys are separate"
    for t in range(102, 130):
        rate = rates.update("s", float(t), 1_050 + 20 * (t - 101))
    assert rate == pytest.approx(20.0), "old samples leave the window"
    assert rates.update("s", 130.0, 5) is None, "a counter that went back starts over"
    assert rates.update("s", 131.0, 5) == 0.0
    assert rates.update("s", 200.0, 1_000) is None, "a sample older than the window is not a recent rate"
    assert rates.update("s", 201.0, 1_010) == pytest.approx(10.0)


# --------------------------------------------------------------------------- dead letters


def test_dead_letters_are_counted_with_their_newest_reasons() -> None:
    fields = {b"type": b"bar", b"dlq_reason": b"bar rejected: high below low", b"dlq_group": b"features",
              b"dlq_consumer": b"features-1", b"dlq_ts_ms": str(NOW - 3_000).encode()}  # fmt: skip
    letter = data.parse_dead_letter("1699999990000-0", fields)
    assert letter == data.DeadLetter("1699999990000-0", "bar rejected: high below low", "features", "features-1",
                                     NOW - 3_000)  # fmt: skip
    bare = data.parse_dead_letter("1699999998000-0", {})
    assert bare.reason == "(no reason given)" and bare.ts_ms is None
    assert streams.dead_letter_reasons([letter, bare], NOW) == (
        "3.0 s ago by features-1 (features): bar rejected: high below low; 2.0 s ago: (no reason given)"
    )
    dlqs = [
        data.DeadLetters("md:bars:{ETHUSDT}:1s", 2, 9, (letter,)),
        data.DeadLetters("ml:training", 0, 4),  # emptied (trimmed): not a row
    ]
    assert streams.dead_letter_rows(dlqs, NOW) == [
        {
            "stream": "md:bars:{ETHUSDT}:1s",
            "dead letters": "2",
            "total": "9",
            "latest reasons": "3.0 s ago by features-1 (features): bar rejected: high below low",
        }
    ]
    assert streams.dead_letters_line(dlqs) == "Dead letters: 2 in 1 stream"
    assert streams.dead_letters_line([*dlqs, data.DeadLetters("ui:packets", 5, 5)]) == "Dead letters: 7 in 2 streams"
    assert streams.dead_letters_line([]) == "Dead letters: none"


# --------------------------------------------------------------------------- data quality


def test_quality_rows_show_every_counter_and_the_score() -> None:
    counts = {**{k: 0 for k in quality.COUNTERS}, "ticks_applied": 1_000, "ticks_late": 10, "ticks_duplicate": 3,
              "ticks_already_applied": 7, "bars_1s": 500, "bars_filled": 20, "bars_incomplete": 5,
              "intervals_skipped": 2, "gaps": 1, "trades_missing": 57, "last_bar_latency_ms": 35,
              "updated_ms": NOW - 1_200}  # fmt: skip
    row = {"symbol": "ETHUSDT", "owner": "aggregator-a", **counts, "score": quality.score(counts)}
    empty = {"symbol": "BTCUSDT", "owner": None, **{k: 0 for k in quality.COUNTERS}, "score": None}
    rows = streams.quality_rows([row, empty], NOW)
    assert rows[0] == {
        "symbol": "ETHUSDT",
        "owner": "aggregator-a",
        "score": f"{quality.score(counts):.2f}",
        "ticks applied": "1,000",
        "late": "10",
        "duplicates": "3",
        "redelivered": "7",
        "1s bars": "500",
        "empty filled": "20",
        "incomplete": "5",
        "skipped": "2",
        "gaps": "1 (57 trades missing)",
        "bar latency": "35 ms",
        "updated": "1.2 s ago",
    }
    assert (rows[1]["owner"], rows[1]["score"], rows[1]["bar latency"], rows[1]["updated"]) == (
        "(none)", "n/a", "n/a", "n/a"
    )  # fmt: skip


T_WALK = 1_700_000_000_000


def test_sample_bar_walk_is_valid_from_any_start_price() -> None:
    # bench's feeder starts walks at prices off the 0.01 grid; a rounded high once fell below the open
    for i in range(500):
        bars = samples.bar_walk(
            "ETHUSDT", end_open_ms=T_WALK, count=3, start_price=3012.55 * (1 + 0.0005 * (i % 7 - 3)), seed=i
        )
        assert all(b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high for b in bars)
