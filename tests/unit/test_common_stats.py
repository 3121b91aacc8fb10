"""Counters render as JSON for /stats and Prometheus text for /metrics."""

from __future__ import annotations

from unistream_common.stats import Stats


def test_counters_and_gauges_render_in_both_formats() -> None:
    s = Stats("aggregator")
    s.describe("bars_written", "Bars written")
    s.inc("bars_written", 2, symbol="ETHUSDT")
    s.inc("bars_written", symbol="ETHUSDT")
    s.inc("bars_written", symbol="BTCUSDT")
    s.set("lag_ms", 12.5)
    assert s.get("bars_written", symbol="ETHUSDT") == 3
    assert s.total("bars_written") == 4
    d = s.as_dict()
    assert d["counters"]["bars_written"] == {"symbol=ETHUSDT": 3, "symbol=BTCUSDT": 1}
    assert d["gauges"]["lag_ms"] == 12.5
    text = s.prometheus()
    assert "# HELP unistream_bars_written_total Bars written" in text
    assert "# TYPE unistream_bars_written_total counter" in text
    assert 'unistream_bars_written_total{service="aggregator",symbol="ETHUSDT"} 3' in text
    assert 'unistream_lag_ms{service="aggregator"} 12.5' in text


def test_label_values_are_escaped() -> None:
    s = Stats("x")
    s.inc("c", stream='md:ticks:{"A"}')
    assert 'stream="md:ticks:{\\"A\\"}"' in s.prometheus()
