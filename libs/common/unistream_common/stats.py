"""Counters and gauges of one service, rendered as JSON (/stats) and Prometheus text (/metrics)."""

from __future__ import annotations

import re
from collections import defaultdict

_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")


class Stats:
    """Named counters (monotonic) and gauges (last value), optionally labelled.

    Labels are a small dict such as ``{"stream": "md:ticks:{ETHUSDT}"}``; each distinct label
    set is its own series.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self._gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self._help: dict[str, str] = {}

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
        """JSON-ready view: name -> value, or name -> {label text: value} when labelled."""

        def flat(d: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> dict[str, object]:
            out: dict[str, object] = {}
            for name, series in sorted(d.items()):
                if list(series) == [()]:
                    out[name] = series[()]
                else:
                    out[name] = {",".join(f"{k}={v}" for k, v in key) or "": val for key, val in series.items()}
            return out

        return {"service": self.service, "counters": flat(self._counters), "gauges": flat(self._gauges)}

    def prometheus(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        lines: list[str] = []
        for kind, table in (("counter", self._counters), ("gauge", self._gauges)):
            for name, series in sorted(table.items()):
                metric = "unistream_" + _NAME_RE.sub("_", name)
                if kind == "counter":
                    metric += "_total"
                if name in self._help:
                    lines.append(f"# HELP {metric} {self._help[name]}")
                lines.append(f"# TYPE {metric} {kind}")
                for key, value in sorted(series.items()):
                    labels = [("service", self.service), *key]
                    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    lines.append(f"{metric}{{{text}}} {value:g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
