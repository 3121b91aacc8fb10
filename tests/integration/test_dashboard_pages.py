"""The dashboard's Overview and Streams pages run by Streamlit's AppTest (no browser) against a real
Redis holding what the services would write (packets through the shared codec, heartbeats,
dead letters, quality counters): the values shown are the values written; an empty Redis and a
Redis that is down are said plainly, and the pages recover by themselves."""

from __future__ import annotations

import re
import time

import dashboard_samples as samples
import pandas as pd
import pytest
import redis
import streamlit as st
from dashboard_samples import SymbolSnapshot
from streamlit.testing.v1 import AppTest

from unistream_common import keys, quality
from unistream_dashboard import data
from unistream_tools.redis_server import RedisServer, free_port, start_redis

pytestmark = [pytest.mark.heavy, pytest.mark.integration]

SNAPSHOTS = {
    "ETHUSDT": SymbolSnapshot("ETHUSDT", price=3012.55, ticks_seen=45_678, bars_seen=4_321, training_packets=1_234),
    "BTCUSDT": SymbolSnapshot("BTCUSDT", price=97_123.4, ticks_seen=2_345, bars_seen=321, training_packets=56),
}


def _now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def client(dashboard_redis: redis.Redis) -> redis.Redis:
    """An empty Redis the pages read (conftest's dashboard_redis)."""
    return dashboard_redis


def _page(page: str) -> None:
    from unistream_dashboard import app

    app.main(start=page)


def _run(page: str = "overview", at: AppTest | None = None) -> AppTest:
    at = at or AppTest.from_function(_page, args=(page,), default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _text(at: AppTest) -> str:
    """Every text element of the page, one per line (Markdown source as written)."""
    parts = [e.value for kind in (at.markdown, at.caption, at.warning, at.error, at.info) for e in kind]
    return "\n".join(str(p) for p in parts)


def _in(at: AppTest, key: str) -> str:
    """The Markdown and captions inside the container keyed ``key``."""
    box = at.get_by_key(key)
    return "\n".join(str(e.value) for kind in (box.markdown, box.caption) for e in kind)


def _table(at: AppTest, column: str) -> pd.DataFrame:
    """The first table on the page that has ``column``."""
    for frame in at.dataframe:
        if column in frame.value.columns:
            return frame.value
    raise AssertionError(f"no table with a column {column!r}")


def _find(text: str, pattern: str) -> re.Match[str]:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not on the page:\n{text}"
    return match


# --------------------------------------------------------------------------- Overview: Training Data Stream


def test_symbol_cards_show_the_written_counts_price_source_and_learners(client: redis.Redis) -> None:
    now = _now_ms()
    samples.write_snapshot(client, SNAPSHOTS, now_ms=now)
    enhanced = samples.enhanced_metrics(labelled={"1s": 1_200, "1m": 34}, pr_auc_top=0.3123, baseline_top=0.12,
                                        trades=45, edge=0.0012345, edge_t=1.8)  # fmt: skip
    samples.write(client, keys.METRICS, samples.metrics_packet("trainer-0", ts_ms=now, step=500, td_loss=0.1,
                                                               updates=500, extra=enhanced))  # fmt: skip
    at = _run()
    eth, btc = _in(at, "tds-ETHUSDT"), _in(at, "tds-BTCUSDT")
    assert "ETHUSDT · Tick cache: 5,000 / 5,000 (total 45,678)" in eth
    assert "ETHUSDT · 1s bars: 3,600 / 3,600 (total 4,321)" in eth
    assert "ETHUSDT · Price: 3,012.55" in eth and "ETHUSDT · Training packets: 1,234" in eth
    assert "BTCUSDT · Tick cache: 2,345 / 5,000 (total 2,345)" in btc
    assert "BTCUSDT · 1s bars: 321 / 3,600 (total 321)" in btc and "BTCUSDT · Price: 97,123.40" in btc
    assert "BTCUSDT" not in eth and "ETHUSDT" not in btc, "each card holds its own symbol"
    for symbol, card in (("ETHUSDT", eth), ("BTCUSDT", btc)):
        _find(card, rf"{symbol} · Stream: LIVE \(last tick \d+\.\d s ago\)")
        assert f"{symbol} · Source: REAL MARKET DATA" in card
        _find(card, rf"{symbol} · CNN model: version v1, trained \(TRAINING\), 123,456 parameters, last reload "
                    r"\d\d:\d\d:\d\d UTC \(\d+\.\d s ago\)")  # fmt: skip
        assert f"{symbol} · RL agent: training (1,000 updates), 512 features, model v3" in card
        assert (
            f"{symbol} · Extrema learning: 1,234 labelled (1s 1,200 · 1m 34), PR-AUC 1s top 0.312 vs baseline 0.120"
            in card
        )
        assert f"{symbol} · Sensitivity: 45 trades, edge +0.00123 (t 1.80)" in card
        assert f"{symbol} · Warm-up: complete" in card
        assert ":green-badge[LIVE] :green-badge[REAL MARKET DATA]" in card
        assert "CNN predictions: top 0.120 · bottom 0.080" in card
    assert [p.value for p in at.get_by_key("tds-ETHUSDT").get("progress")] == [100]
    _find(_in(at, "tds"), r"fetched in \d+(\.\d)? ms · updated \d\d:\d\d:\d\d UTC")
    assert "Undecodable" not in _text(at) and not at.error


@pytest.mark.parametrize(("age_s", "state", "badge"), [(20, "STALE", "orange"), (120, "OFFLINE", "red")])
def test_a_stream_whose_last_tick_is_old_is_stale_then_offline(
    client: redis.Redis, age_s: int, state: str, badge: str
) -> None:
    old = _now_ms() - age_s * 1000
    samples.write(client, keys.ticks("ETHUSDT"), samples.tick_batch("ETHUSDT", first_trade_id=1, prices=[3000.5],
                                                                      ts_ms=old))  # fmt: skip
    samples.write(client, keys.UI, samples.ui_packet("ETHUSDT", ts_ms=old, last_price=3000.5, ticks_seen=1))
    card = _in(_run(), "tds-ETHUSDT")
    # the page may render a few seconds after the write on a busy machine
    age = "|".join(f"{a} s" for a in range(age_s, age_s + 5)) if age_s < 120 else "2 min"
    assert re.search(rf"ETHUSDT · Stream: {state} \(last tick ({age}) ago\)", card), card
    assert f":{badge}-badge[{state}]" in card


def test_the_live_and_stale_thresholds_are_settings(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNISTREAM_LIVE_AFTER_S", "30")
    monkeypatch.setenv("UNISTREAM_STALE_AFTER_S", "40")
    old = _now_ms() - 20_000
    samples.write(client, keys.ticks("ETHUSDT"), samples.tick_batch("ETHUSDT", first_trade_id=1, prices=[3000.5],
                                                                      ts_ms=old))  # fmt: skip
    samples.write(client, keys.ticks("BTCUSDT"), samples.tick_batch("BTCUSDT", first_trade_id=1, prices=[9e4],
                                                                      ts_ms=old - 30_000))  # fmt: skip
    at = _run()
    assert re.search(r"ETHUSDT · Stream: LIVE \(last tick 2[0-4] s ago\)", _in(at, "tds-ETHUSDT"))
    assert re.search(r"BTCUSDT · Stream: OFFLINE \(last tick 5[0-4] s ago\)", _in(at, "tds-BTCUSDT"))


@pytest.mark.parametrize(
    ("source", "label"),
    [
        ("REPLAY", "REPLAY (recorded market data, not live)"),
        ("SYNTHETIC", "SYNTHETIC (simulated prices, not market data)"),
    ],
)
def test_replayed_or_simulated_data_is_never_labelled_real(client: redis.Redis, source: str, label: str) -> None:
    samples.write_snapshot(client, SNAPSHOTS, now_ms=_now_ms(), source=source)
    text = _text(_run())
    assert f"ETHUSDT · Source: {label}" in text
    assert "REAL MARKET DATA" not in text


def test_untrained_cnn_and_warm_up_in_progress_are_said(client: redis.Redis) -> None:
    now = _now_ms()
    packet = samples.ui_packet("ETHUSDT", ts_ms=now, last_price=3000.0, ticks_seen=5, cnn_state="INITIALISED",
                               cnn_version="cnn-mtf-init-7", cnn_updated_ms=now - 180_000,
                               warmup={"1s": 1.0, "1m": 0.5, "1h": 0.1, "1d": 0.0})  # fmt: skip
    samples.write(client, keys.UI, packet)
    at = _run()
    card = _in(at, "tds-ETHUSDT")
    _find(card, r"ETHUSDT · CNN model: version cnn-mtf-init-7, untrained \(INITIALISED: seeded weights\), "
                r"123,456 parameters, initialised \d\d:\d\d:\d\d UTC \(3 min ago\)")  # fmt: skip
    assert "ETHUSDT · Warm-up: 1s 100% · 1m 50% · 1h 10% · 1d 0%" in card
    [bar] = at.get_by_key("tds-ETHUSDT").get("progress")
    assert bar.value == 40 and bar.proto.text == "Warm-up 40%"
    assert "ETHUSDT · RL agent: waiting (no updates yet), 512 features, no model announced yet" in card
    assert "ETHUSDT · Extrema learning: waiting (no labelled extrema yet)" in card


def test_an_empty_redis_is_said_plainly(client: redis.Redis) -> None:
    at = _run()
    text = _text(at)
    assert "No market data in Redis yet: no status packets and no ticks (is ingest running?)." in text
    assert "ETHUSDT · Stream: OFFLINE (no ticks yet)" in text and "ETHUSDT · Tick cache: n/a" in text
    assert "No service has sent a heartbeat yet" in text
    assert "Services: 0 of 5 up · 0 ready" in text
    assert not at.error


def test_undecodable_entries_are_counted_and_the_page_still_renders(client: redis.Redis) -> None:
    samples.write_snapshot(client, SNAPSHOTS, now_ms=_now_ms())
    client.xadd(keys.UI, {b"type": b"mystery", b"v": b"1", b"data": b"\x00"})
    client.xadd(keys.UI, {b"type": b"ui", b"v": b"99", b"data": b"\x00"})
    client.xadd(keys.METRICS, {b"type": b"metrics", b"v": b"1", b"data": b"not msgpack"})
    client.xadd(keys.ticks("BTCUSDT"), {b"unrelated": b"field"})
    at = _run()
    [warning] = at.warning
    match = _find(warning.value, r"Undecodable entries: (\d+) \(")
    assert int(match[1]) == 4  # two in ui:packets, the newest BTCUSDT tick entry, one in ml:metrics
    assert "unknown packet type 'mystery'" in warning.value and "schema version 99 is not supported" in warning.value
    assert "ETHUSDT · Tick cache: 5,000 / 5,000 (total 45,678)" in _text(at)


def test_numbers_follow_new_packets_on_the_next_refresh(client: redis.Redis) -> None:
    now = _now_ms()
    samples.write_snapshot(client, SNAPSHOTS, now_ms=now)
    at = _run()
    assert "BTCUSDT · Tick cache: 2,345 / 5,000 (total 2,345)" in _text(at)
    samples.write(client, keys.UI, samples.ui_packet("BTCUSDT", ts_ms=now + 100, last_price=97_200.0,
                                                     ticks_seen=2_400, bars_seen=322))  # fmt: skip
    samples.write(client, keys.ticks("BTCUSDT"), samples.tick_batch("BTCUSDT", first_trade_id=2_400,
                                                                      prices=[97_200.0], ts_ms=now + 100))  # fmt: skip
    st.cache_data.clear()  # the page's reads live one second; don't wait for it
    card = _in(_run(at=at), "tds-BTCUSDT")
    assert "BTCUSDT · Tick cache: 2,400 / 5,000 (total 2,400)" in card
    assert "BTCUSDT · 1s bars: 322 / 3,600 (total 322)" in card
    assert "BTCUSDT · Price: 97,200.00" in card


# --------------------------------------------------------------------------- Overview: services


def test_one_health_card_per_service_from_the_heartbeats(client: redis.Redis) -> None:
    now = _now_ms()
    samples.heartbeat(client, "ingest", "ingest-a", started_ms=now - 12_000_000, updated_ms=now - 800, pid=11)
    samples.heartbeat(client, "trainer", "trainer-a", started_ms=now - 600_000, updated_ms=now - 300)
    samples.heartbeat(client, "trainer", "trainer-b", started_ms=now - 60_000, updated_ms=now - 1_500, ready=False)
    samples.heartbeat(client, "features", "features-a", started_ms=now - 5_000, updated_ms=now - 100, ready=False)
    client.zadd(keys.SERVICES, {"aggregator/aggregator-gone": now - 30_000})  # listed; its hash expired
    client.set(data.TRAINER_LEADER, "trainer-a")
    at = _run()
    assert "Services: 3 of 5 up · 1 ready" in _in(at, "services")
    ingest = _in(at, "svc-ingest")
    assert ":green-badge[READY]" in ingest
    for line in ("ingest · Status: READY", "ingest · Replicas: 1 (1 ready)", "ingest · Uptime: 3 h 20 min"):
        assert line in ingest
    _find(ingest, r"ingest · Last beat: \d\.\d s ago")
    assert "ingest-a: ready, up 3 h 20 min, pid 11 on host-a" in ingest
    trainer = _in(at, "svc-trainer")
    assert "trainer · Status: DEGRADED (1 of 2 replicas ready)" in trainer and ":orange-badge[DEGRADED]" in trainer
    assert "trainer · Replicas: 2 (1 ready)" in trainer and "trainer · Uptime: 10 min" in trainer
    assert "trainer · Leader: trainer-a" in trainer
    assert "features · Status: NOT READY" in _in(at, "svc-features")
    for service in ("aggregator", "dashboard"):
        card = _in(at, f"svc-{service}")
        assert f"{service} · Status: DOWN (no heartbeat)" in card and ":red-badge[DOWN]" in card
        assert f"{service} · Uptime: n/a" in card


def test_the_dashboard_shows_its_own_heartbeat(
    client: redis.Redis, module_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNISTREAM_HEARTBEAT_S", "0.5")
    monkeypatch.setenv("UNISTREAM_CONSUMER_NAME", "dash-under-test")
    try:
        at = _run()
        deadline = time.monotonic() + 5
        while not client.exists(keys.heartbeat("dashboard", "dash-under-test")) and time.monotonic() < deadline:
            time.sleep(0.05)
        st.cache_data.clear()
        card = _in(_run(at=at), "svc-dashboard")
        assert "dashboard · Status: READY" in card and "dash-under-test: ready, up " in card
    finally:
        data.start_heartbeat(module_redis.url, "dash-under-test", 0.5).set()  # the running thread's stop event
        data.start_heartbeat.clear()


# --------------------------------------------------------------------------- Streams page


def test_stream_table_shows_lengths_rates_ages_groups_and_lag_na(client: redis.Redis) -> None:
    samples.write_snapshot(client, SNAPSHOTS, now_ms=_now_ms())
    # A group created at an id inside the stream: Redis cannot compute its lag and says nil.
    last_bar = client.xrevrange(keys.bars("ETHUSDT", "1s"), count=2)[1][0].decode()
    client.xgroup_create(keys.bars("ETHUSDT", "1s"), keys.GROUP_FEATURES, id=last_bar)
    at = _run("streams")
    statistics = _in(at, "streams")
    _find(statistics, r"Streams: 7 present, 18 not created yet · groups 5 · consumers 4 · pending 4")
    streams = _table(at, "entries").set_index("stream")
    assert streams.loc["md:bars:{ETHUSDT}:1s", ["entries", "added", "groups"]].tolist() == ["120", "120", "1"]
    assert streams.loc["ml:metrics", "entries"] == "10"
    assert streams.loc["md:ticks:{ETHUSDT}", "entries/s"] == "measuring"
    _find(streams.loc["ui:packets", "last entry"], r"^\d\.\d s ago$")
    groups = _table(at, "lag")
    features_bars = groups[(groups["stream"] == "md:bars:{ETHUSDT}:1s") & (groups["group"] == "features")]
    assert features_bars["lag"].tolist() == ["n/a"], "Redis cannot tell: never shown as 0"
    ticks = groups[(groups["stream"] == "md:ticks:{ETHUSDT}") & (groups["group"] == "aggregator")]
    assert ticks[["consumers", "pending", "lag", "trimmed"]].values.tolist() == [["1", "1", "0", "ok"]]
    consumers = _table(at, "consumer")
    assert len(consumers) == 4 and set(consumers["pending"]) == {"1"}
    assert "Not created yet: " in statistics and "md:history:{ETHUSDT}:1s" in statistics
    _find(statistics, r"fetched in \d+(\.\d)? ms")

    time.sleep(0.6)
    for i in range(20):
        client.xadd(keys.ticks("ETHUSDT"), {b"n": str(i).encode()})
    st.cache_data.clear()
    rate = float(_table(_run("streams", at), "entries").set_index("stream").loc["md:ticks:{ETHUSDT}", "entries/s"])
    assert 20 / 5 < rate <= 20 / 0.6


def test_a_group_that_lost_entries_to_trimming_raises_an_alarm(client: redis.Redis) -> None:
    stream = keys.ticks("ETHUSDT")
    for i in range(1, 11):
        client.xadd(stream, {b"n": str(i).encode()}, id=f"{i}-0")
    samples.ensure_group(client, stream, keys.GROUP_AGGREGATOR)
    client.xreadgroup(keys.GROUP_AGGREGATOR, "aggregator-1", {stream: ">"}, count=3)
    client.xtrim(stream, maxlen=5, approximate=False)
    at = _run("streams")
    alarm = "md:ticks:{ETHUSDT} · group aggregator: OVERRUN: 2 entries trimmed before this group read them"
    assert [e.value for e in at.error] == [alarm]
    groups = _table(at, "trimmed")
    assert groups["trimmed"].tolist() == ["OVERRUN: 2 entries trimmed before this group read them"]


def test_dead_letters_are_counted_per_stream_with_the_latest_reasons(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNISTREAM_DLQ_REASONS", "2")
    now = _now_ms()
    bars = keys.bars("ETHUSDT", "1s")
    for i, reason in enumerate(["bar rejected: one", "bar rejected: two", "bar rejected: three"]):
        samples.dead_letter(client, bars, reason, group="features", consumer="features-1", ts_ms=now - 3_000 + i)
    samples.dead_letter(client, keys.training("ETHUSDT"), "state_dim 12 != 512", group="trainer", consumer="trainer-a",
                        ts_ms=now - 60_000)  # fmt: skip
    at = _run("streams")
    assert "Dead letters: 4 in 2 streams" in _in(at, "dlq")
    rows = _table(at, "dead letters").set_index("stream")
    assert rows.loc[bars, ["dead letters", "total"]].tolist() == ["3", "3"]
    _find(rows.loc[bars, "latest reasons"], r"^\d\.\d s ago by features-1 \(features\): bar rejected: three; "
                                             r"\d\.\d s ago by features-1 \(features\): bar rejected: two$")  # fmt: skip
    # 60 s old when written; a render that takes more than a second on a busy machine says 61 or 62
    _find(
        rows.loc[keys.training("ETHUSDT"), "latest reasons"],
        r"^6[012] s ago by trainer-a \(trainer\): state_dim 12 != 512$",
    )


def test_data_quality_per_symbol_shows_the_counters_and_score(client: redis.Redis) -> None:
    counts = {"ticks_applied": 9_000, "ticks_late": 12, "ticks_duplicate": 5, "ticks_already_applied": 3,
              "bars_1s": 600, "bars_filled": 40, "bars_incomplete": 6, "intervals_skipped": 2, "gaps": 1,
              "trades_missing": 57, "last_bar_latency_ms": 35, "updated_ms": _now_ms()}  # fmt: skip
    samples.quality_counters(client, "ETHUSDT", counts, owner="aggregator-a")
    at = _run("streams")
    rows = _table(at, "score").set_index("symbol")
    eth = rows.loc["ETHUSDT"]
    assert eth["score"] == f"{quality.score(counts):.2f}"
    assert eth[["owner", "ticks applied", "late", "duplicates", "redelivered", "1s bars", "empty filled",
                "incomplete", "skipped", "gaps", "bar latency"]].tolist() == [
        "aggregator-a", "9,000", "12", "5", "3", "600", "40", "6", "2", "1 (57 trades missing)", "35 ms"
    ]  # fmt: skip
    assert rows.loc["BTCUSDT", ["owner", "score"]].tolist() == ["(none)", "n/a"]


def test_an_empty_redis_is_said_plainly_on_the_streams_page(client: redis.Redis) -> None:
    at = _run("streams")
    text = _text(at)
    assert "No streams in Redis yet: nothing has been written (is ingest running?)." in text
    assert "Streams: 0 present, 25 not created yet" in text
    assert "Dead letters: none" in text
    assert "No data-quality counters yet: the aggregator has not emitted a bar." in text
    assert not at.error


# --------------------------------------------------------------------------- Redis down, then back


@pytest.mark.parametrize(("page", "panels"), [("overview", 2), ("streams", 3)])
def test_while_redis_is_down_every_panel_says_so_and_recovers_by_itself(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, page: str, panels: int
) -> None:
    monkeypatch.setenv("UNISTREAM_REDIS_URL", redis_server.url)
    monkeypatch.setenv("UNISTREAM_HEARTBEAT_S", "0")
    st.cache_data.clear()
    conn = redis.Redis.from_url(redis_server.url)
    samples.write_snapshot(conn, SNAPSHOTS, now_ms=_now_ms(), bars=10)
    conn.close()
    at = _run(page)
    assert not at.error
    redis_server.stop()
    st.cache_data.clear()
    _run(page, at)
    banners = [e.value for e in at.error]
    assert len(banners) == panels
    assert all(
        re.match(r"Redis unreachable at redis://127\.0\.0\.1:\d+/0: .*Retrying every 1 s\.$", b) for b in banners
    )
    restarted = start_redis(redis_server.data_dir, port=redis_server.port, appendonly=True)
    try:
        st.cache_data.clear()
        _run(page, at)
        assert not at.error
        if page == "overview":
            assert "ETHUSDT · Tick cache: 5,000 / 5,000 (total 45,678)" in _in(at, "tds-ETHUSDT")
        else:
            assert "md:ticks:{ETHUSDT}" in _table(at, "entries")["stream"].tolist()
    finally:
        restarted.stop()


def test_a_redis_that_never_was_is_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNISTREAM_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("UNISTREAM_HEARTBEAT_S", "0")
    at = _run()
    assert [h.value for h in at.subheader] == ["Training Data Stream", "Services"]
    assert len(at.error) == 2 and all(e.value.startswith("Redis unreachable at") for e in at.error)
