"""Counters render as JSON for /stats and Prometheus text for /metrics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

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
    assert 'unistream_bars_written_total{service="aggregator",symbol="ETHUSDT"} 3.0' in text
    assert 'unistream_lag_ms{service="aggregator"} 12.5' in text


def test_the_exposition_parses_and_keeps_every_digit_of_large_counters_and_ms_timestamps() -> None:
    s = Stats("ingest")
    s.inc("ticks_written", 12_345_678, symbol="ETHUSDT")
    s.inc("ticks_written", 1, symbol="ETHUSDT")
    s.set("last_read_ms", 1_796_600_000_123, stream="md:ticks:{ETHUSDT}")
    s.describe("tick_write_seconds", "From a trade's receipt until it is in Redis")
    for seconds in (0.0004, 0.003, 0.003, 0.2, 7.0):
        s.observe("tick_write_seconds", seconds, symbol="ETHUSDT")
    families = {f.name: f for f in text_string_to_metric_families(s.prometheus())}
    (written,) = families["unistream_ticks_written"].samples
    assert written.value == 12_345_679 and written.labels == {"service": "ingest", "symbol": "ETHUSDT"}
    (read_ms,) = families["unistream_last_read_ms"].samples
    assert read_ms.value == 1_796_600_000_123, "a millisecond timestamp to the millisecond"
    histogram = families["unistream_tick_write_seconds"]
    assert histogram.type == "histogram" and histogram.documentation == "From a trade's receipt until it is in Redis"
    buckets = {x.labels["le"]: x.value for x in histogram.samples if x.name.endswith("_bucket")}
    assert (buckets["0.001"], buckets["0.005"], buckets["0.25"], buckets["5.0"], buckets["+Inf"]) == (1, 3, 4, 4, 5)
    (count,) = [x.value for x in histogram.samples if x.name.endswith("_count")]
    assert count == 5 and s.as_dict()["histograms"]["tick_write_seconds"]["count"] == {"symbol=ETHUSDT": 5}


def test_a_histogram_keeps_its_label_names() -> None:
    s = Stats("x")
    s.observe("delay_seconds", 0.1, symbol="A")
    with pytest.raises(ValueError, match="labels"):
        s.observe("delay_seconds", 0.1, stream="s")


def test_label_values_are_escaped() -> None:
    s = Stats("x")
    s.inc("c", stream='md:ticks:{"A"}')
    assert 'stream="md:ticks:{\\"A\\"}"' in s.prometheus()
