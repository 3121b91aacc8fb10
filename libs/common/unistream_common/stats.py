"""Counters, gauges and latency histograms of one service: JSON (/stats) and Prometheus (/metrics).

The Prometheus exposition is prometheus_client's (``generate_latest`` over a registry of this
service's own), not hand-written text: values keep every digit (a counter of 12,345,678 ticks is
``12345678.0``, a millisecond timestamp is exact), names and labels are escaped by the library,
and histograms carry their buckets, sum and count. Metric names are ``unistream_<name>``
(counters ``..._total``); every series has a ``service`` label.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")
# Latency buckets, seconds: from a millisecond (a Redis round trip) to ten seconds (a stalled writer).
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Series = dict[tuple[tuple[str, str], ...], float]


def metric_name(name: str) -> str:
    """``unistream_`` + the name with anything but letters, digits and _ as _."""
    return "unistream_" + _NAME_RE.sub("_", name)


class Stats:
    """Named counters (monotonic), gauges (last value) and histograms, optionally labelled.

    Labels are a small dict such as ``{"stream": "md:ticks:{ETHUSDT}"}``; each distinct label
    set is its own series. A histogram's label names are fixed by its first observation.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self._counters: dict[str, Series] = defaultdict(dict)
        self._gauges: dict[str, Series] = defaultdict(dict)
        self._help: dict[str, str] = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_StatsCollector(self))
        self._histograms: dict[str, tuple[Histogram, tuple[str, ...]]] = {}
        self._observed: dict[str, Series] = defaultdict(dict)  # histogram -> label set -> count (for /stats)
        self._observed_sum: dict[str, Series] = defaultdict(dict)

    def describe(self, name: str, text: str) -> None:
        """Help text shown in /metrics."""
        self._help[name] = text

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        """Add ``value`` to a counter."""
        key = tuple(sorted(labels.items()))
        series = self._counters[name]
        series[key] = series.get(key, 0) + value

    def count_to(self, name: str, total: float, **labels: str) -> None:
        """Set a counter to a running total kept elsewhere (e.g. a client library's own count)."""
        self._counters[name][tuple(sorted(labels.items()))] = total

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        self._gauges[name][tuple(sorted(labels.items()))] = value

    def observe(self, name: str, seconds: float, buckets: Sequence[float] = LATENCY_BUCKETS, **labels: str) -> None:
        """Record a latency in histogram ``name`` (seconds; exported as ``unistream_<name>``)."""
        entry = self._histograms.get(name)
        if entry is None:
            label_names = tuple(sorted(labels))
            histogram = Histogram(
                metric_name(name), self._help.get(name, name.replace("_", " ")), ["service", *label_names],
                buckets=tuple(buckets), registry=self._registry,
            )  # fmt: skip
            entry = self._histograms[name] = (histogram, label_names)
        histogram, label_names = entry
        if tuple(sorted(labels)) != label_names:
            raise ValueError(f"histogram {name} has labels {label_names}, not {tuple(sorted(labels))}")
        histogram.labels(self.service, *(labels[k] for k in label_names)).observe(seconds)
        key = tuple(sorted(labels.items()))
        self._observed[name][key] = self._observed[name].get(key, 0) + 1
        self._observed_sum[name][key] = self._observed_sum[name].get(key, 0.0) + seconds

    def get(self, name: str, **labels: str) -> float:
        """Current value of a counter or gauge series (0 when never touched)."""
        key = tuple(sorted(labels.items()))
        if name in self._counters and key in self._counters[name]:
            return self._counters[name][key]
        return self._gauges.get(name, {}).get(key, 0)

    def total(self, name: str) -> float:
        """Sum of a counter over all label sets."""
        return sum(self._counters.get(name, {}).values())

    def as_dict(self) -> dict[str, object]:
        """JSON-ready view: name -> value, or name -> {label text: value} when labelled; histograms
        as their count and sum (seconds) per series."""

        def flat(d: dict[str, Series]) -> dict[str, object]:
            out: dict[str, object] = {}
            for name, series in sorted(d.items()):
                if list(series) == [()]:
                    out[name] = series[()]
                else:
                    out[name] = {",".join(f"{k}={v}" for k, v in key) or "": val for key, val in series.items()}
            return out

        histograms = {
            name: {
                "count": flat({name: self._observed[name]})[name],
                "sum_s": flat({name: self._observed_sum[name]})[name],
            }
            for name in sorted(self._observed)
        }
        return {
            "service": self.service,
            "counters": flat(self._counters),
            "gauges": flat(self._gauges),
            "histograms": histograms,
        }

    def prometheus(self) -> str:
        """Prometheus text exposition (prometheus_client's)."""
        return generate_latest(self._registry).decode()


class _StatsCollector(Collector):
    """The counters and gauges of a :class:`Stats`, collected when /metrics is read."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        for name, series in sorted(stats._counters.items()):
            yield self._family(CounterMetricFamily, name, series)
        for name, series in sorted(stats._gauges.items()):
            yield self._family(GaugeMetricFamily, name, series)

    def _family(self, kind: type[CounterMetricFamily | GaugeMetricFamily], name: str, series: Series) -> Metric:
        stats = self._stats
        label_names = sorted({k for key in series for k, _ in key})
        family = kind(
            metric_name(name), stats._help.get(name, name.replace("_", " ")), labels=["service", *label_names]
        )
        for key, value in sorted(series.items()):
            labels = dict(key)
            family.add_metric([stats.service, *(labels.get(k, "") for k in label_names)], value)
        return family
