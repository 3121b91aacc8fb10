"""Market and training pages run by Streamlit's AppTest (no browser) against a real Redis holding
packets written through the shared codec: what Redis holds is drawn, empty streams and a Redis
that is down are said plainly, and the pages recover by themselves. Their pure shaping is tested in
tests/unit/test_dashboard_market_training.py."""

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
from dashboard_samples import T0, announcement, bar, fill, metrics, prediction_packet
from streamlit.testing.v1 import AppTest

from unistream_common import codec, keys
from unistream_dashboard import training
from unistream_dashboard.training import Value
from unistream_tools.redis_server import free_port, start_redis


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
    conn.zadd(keys.TRAINER_MEMBERS, {"trainer-0": now + 20_000, "trainer-1": now + 15_000})
    conn.set(keys.TRAINER_LEADER, "trainer-0")
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
    assert "No trainer replicas: no metrics on ml:metrics, nobody in ml:{trainer}:members, no heartbeats." in infos
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
    from unistream_dashboard.data import read_candles

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
