"""The dashboard page run by Streamlit's AppTest (no browser) against a real Redis holding
packets written through the shared codec, as the producing services would write them."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import redis
import streamlit as st
from streamlit.testing.v1 import AppTest

from unistream_common import keys
from unistream_common.redis_server import RedisServer, free_port
from unistream_dashboard import samples
from unistream_dashboard.samples import SymbolSnapshot

pytestmark = pytest.mark.integration

APP = Path(samples.__file__).with_name("app.py")
SNAPSHOTS = {
    "ETHUSDT": SymbolSnapshot("ETHUSDT", price=3012.55, ticks_seen=45_678, bars_seen=4_321, training_packets=1_234),
    "BTCUSDT": SymbolSnapshot("BTCUSDT", price=97_123.4, ticks_seen=2_345, bars_seen=321, training_packets=56),
}


def _now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def client(module_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """An empty Redis that the page reads (UNISTREAM_REDIS_URL), and no cached reads from
    an earlier test (the cache key is the URL, which every test of this module shares)."""
    monkeypatch.setenv("UNISTREAM_REDIS_URL", module_redis.url)
    monkeypatch.setenv("UNISTREAM_SYMBOLS", "ETHUSDT,BTCUSDT")
    conn = redis.Redis.from_url(module_redis.url)
    conn.flushall()
    st.cache_data.clear()
    try:
        yield conn
    finally:
        conn.close()


def _run(at: AppTest | None = None) -> AppTest:
    at = at or AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _text(at: AppTest) -> str:
    """Every text element of the page, one per line (Markdown source as written)."""
    parts = [e.value for kind in (at.markdown, at.caption, at.warning, at.error, at.info) for e in kind]
    return "\n".join(str(p) for p in parts)


def _table(at: AppTest, column: str) -> pd.DataFrame:
    """The first table on the page that has ``column``."""
    for frame in at.dataframe:
        if column in frame.value.columns:
            return frame.value
    raise AssertionError(f"no table with a column {column!r}")


def _charts(at: AppTest) -> dict[str, dict]:
    """Plotly figures on the page by their uirevision."""
    specs = (json.loads(chart.proto.spec) for chart in at.get("plotly_chart"))
    return {spec["layout"]["uirevision"]: spec for spec in specs}


def _find(at: AppTest, pattern: str) -> re.Match[str]:
    match = re.search(pattern, _text(at))
    assert match, f"{pattern!r} not on the page:\n{_text(at)}"
    return match


def test_training_data_stream_panel_shows_each_symbols_counts_price_and_state(client: redis.Redis) -> None:
    samples.write_snapshot(client, SNAPSHOTS, now_ms=_now_ms())
    at = _run()
    text = _text(at)
    assert "ETHUSDT · Tick cache: 5,000 / 5,000 (total 45,678)" in text
    assert "ETHUSDT · 1s bars: 3,600 / 3,600 (total 4,321)" in text
    assert "ETHUSDT · Price: 3,012.55" in text
    assert "ETHUSDT · Training packets: 1,234" in text
    assert "BTCUSDT · Tick cache: 2,345 / 5,000 (total 2,345)" in text
    assert "BTCUSDT · 1s bars: 321 / 3,600 (total 321)" in text
    assert "BTCUSDT · Price: 97,123.40" in text
    for symbol in SNAPSHOTS:
        _find(at, rf"{symbol} · Stream: LIVE \(last tick \d+\.\d s ago\)")
        assert f"{symbol} · Source: REAL MARKET DATA" in text
        assert f"{symbol} · CNN model: TRAINING, version v1, 123,456 parameters" in text
        assert f"{symbol} · RL agent: training (1,000 updates), 512 features" in text
    assert ":green-badge[LIVE] :green-badge[REAL MARKET DATA]" in text
    assert "CNN predictions: top 0.120 · bottom 0.080" in text
    assert "Undecodable" not in text and not at.error


def test_cards_sit_in_containers_keyed_by_symbol(client: redis.Redis) -> None:
    samples.write_snapshot(client, SNAPSHOTS, now_ms=_now_ms())
    at = _run()
    for symbol in SNAPSHOTS:
        card = at.get_by_key(f"tds-{symbol}")
        texts = "\n".join(m.value for m in card.markdown)
        assert f"{symbol} · Tick cache:" in texts
        assert all(other not in texts for other in SNAPSHOTS if other != symbol)


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


def test_stale_ticks_show_offline_and_a_symbol_without_data_shows_na(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNISTREAM_LIVE_AFTER_S", "5")
    old = _now_ms() - 60_000
    samples.write(client, keys.ticks("ETHUSDT"), samples.tick_batch("ETHUSDT", first_trade_id=1, prices=[3000.5],
                                                                      ts_ms=old))  # fmt: skip
    samples.write(client, keys.UI, samples.ui_packet("ETHUSDT", ts_ms=old, last_price=3000.5, ticks_seen=1))
    at = _run()
    _find(at, r"ETHUSDT · Stream: OFFLINE \(last tick 60 s ago\)")
    assert ":red-badge[OFFLINE]" in _text(at)
    text = _text(at)
    assert "BTCUSDT · Stream: OFFLINE (no ticks yet)" in text
    assert "BTCUSDT · Tick cache: n/a" in text and "BTCUSDT · Price: n/a" in text
    assert "No 1s bars for BTCUSDT yet." in text


def test_undecodable_entries_are_counted_and_the_page_still_renders(client: redis.Redis) -> None:
    samples.write_snapshot(client, SNAPSHOTS, now_ms=_now_ms())
    client.xadd(keys.UI, {b"type": b"mystery", b"v": b"1", b"data": b"\x00"})
    client.xadd(keys.UI, {b"type": b"ui", b"v": b"99", b"data": b"\x00"})
    client.xadd(keys.METRICS, {b"type": b"metrics", b"v": b"1", b"data": b"not msgpack"})
    client.xadd(keys.ticks("BTCUSDT"), {b"unrelated": b"field"})
    at = _run()
    text = _text(at)
    match = _find(at, r"Undecodable entries: (\d+) \(")
    assert int(match[1]) == 3  # two in ui:packets, the newest BTCUSDT tick entry
    assert "unknown packet type 'mystery'" in text and "schema version 99 is not supported" in text
    assert "md:ticks:{BTCUSDT}" in text
    _find(at, r"Undecodable entries: 1 \(ml:metrics")
    assert "ETHUSDT · Tick cache: 5,000 / 5,000 (total 45,678)" in text


def test_redis_down_shows_a_banner_in_every_panel_and_the_page_survives(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNISTREAM_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    at = _run()
    banners = [e.value for e in at.error]
    assert len(banners) == 4
    assert all(b.startswith("Redis unreachable at redis://127.0.0.1:") and "Retrying every 1 s" in b for b in banners)
    assert "Training Data Stream" in [h.value for h in at.subheader]


def test_training_panel_lists_every_replica_with_its_latest_metrics_and_models(client: redis.Redis) -> None:
    samples.write_snapshot(client, SNAPSHOTS, now_ms=_now_ms(), replicas=3, updates_per_replica=500)
    at = _run()
    _find(at, r"RL training: training \(1,500 updates\), 3 replicas, last metrics \d+\.\d s ago")
    replicas = _table(at, "replica")
    assert replicas["replica"].tolist() == ["trainer-0", "trainer-1", "trainer-2"]
    assert replicas["charts/updates"].tolist() == ["500"] * 3
    assert replicas["losses/td_loss"].tolist() == ["0.1", "0.08333", "0.07143"]
    models = _table(at, "model")
    assert models.iloc[0][["model", "version", "parameters"]].tolist() == ["dqn", "v3", "3,500,000"]
    loss = _charts(at)["metric-losses/td_loss"]
    assert [t["name"] for t in loss["data"]] == ["trainer-0", "trainer-1", "trainer-2"]


def test_rl_agent_waits_while_no_trainer_has_reported(client: redis.Redis) -> None:
    samples.write(client, keys.UI, samples.ui_packet("ETHUSDT", ts_ms=_now_ms(), last_price=3000.0, ticks_seen=5))
    text = _text(_run())
    assert "ETHUSDT · RL agent: waiting (no updates yet), 512 features" in text
    assert "RL training: waiting (no trainer has reported metrics yet)" in text
    assert "No td_loss reported yet." in text


def test_stream_statistics_show_groups_consumers_pending_and_lag_na(client: redis.Redis) -> None:
    samples.write_snapshot(client, SNAPSHOTS, now_ms=_now_ms())
    # A group created at an id inside the stream: Redis cannot compute its lag and says nil.
    last_bar = client.xrevrange(keys.bars("ETHUSDT", "1s"), count=2)[1][0].decode()
    client.xgroup_create(keys.bars("ETHUSDT", "1s"), keys.GROUP_FEATURES, id=last_bar)
    at = _run()
    _find(at, r"Streams: 7 present, 9 not created yet · groups 5 · consumers 4 · pending 4")
    groups = _table(at, "lag")
    features_bars = groups[(groups["stream"] == "md:bars:{ETHUSDT}:1s") & (groups["group"] == "features")]
    assert features_bars["lag"].tolist() == ["n/a"]
    ticks = groups[(groups["stream"] == "md:ticks:{ETHUSDT}") & (groups["group"] == "aggregator")]
    assert ticks[["consumers", "pending", "lag", "trimmed"]].values.tolist() == [["1", "1", "0", "ok"]]
    consumers = _table(at, "consumer")
    assert len(consumers) == 4 and set(consumers["pending"]) == {"1"}
    streams = _table(at, "entries")
    assert streams.set_index("stream").loc["md:bars:{ETHUSDT}:1s", "entries"] == "120"


def test_candlestick_chart_per_symbol_holds_the_newest_bars_with_a_fixed_uirevision(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNISTREAM_CHART_BARS", "100")
    samples.write_snapshot(client, SNAPSHOTS, now_ms=_now_ms(), bars=150)
    at = _run()
    charts = _charts(at)
    for symbol in SNAPSHOTS:
        assert len(charts[f"candles-{symbol}"]["data"][0]["close"]) == 100
        _find(at, rf"{symbol} · 1s candles: 100 shown, last close [\d,]+\.\d\d at \d\d:\d\d:\d\d UTC")


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
    text = _text(_run(at))
    assert "BTCUSDT · Tick cache: 2,400 / 5,000 (total 2,400)" in text
    assert "BTCUSDT · 1s bars: 322 / 3,600 (total 322)" in text
    assert "BTCUSDT · Price: 97,200.00" in text


def test_bad_configuration_is_explained_on_the_page(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNISTREAM_SYMBOLS", "eth-usd")
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert [e.value for e in at.error] and "UNISTREAM_SYMBOLS" in at.error[0].value
