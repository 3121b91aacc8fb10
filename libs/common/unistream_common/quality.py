"""Data quality of a symbol's bars: the counters the aggregator keeps in ``md:quality:{SYMBOL}``
and the one score that the aggregator's /stats, ``unistream status`` and the dashboard show.

The counters are incremented in the same MULTI that writes the bars and acknowledges the
trades they count, so their totals are exact across crashes and restarts.

Score (0-100), the product of three shares, each 1 when there is nothing to count:

- applied share = ticks_applied / (ticks_applied + ticks_late): trades that made it into bars;
- complete share = 1 - bars_incomplete / bars_1s: 1s bars not resting on a known gap of trades;
- coverage = bars_1s / (bars_1s + intervals_skipped): seconds that have a bar at all.

Duplicates and redelivered trades do not lower the score: they were recognised and left out,
which is the aggregator doing its job; they are shown beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from unistream_common import keys

if TYPE_CHECKING:  # the aggregator's pure core imports the score: no Redis client for it
    import redis

COUNTERS: tuple[str, ...] = (
    "ticks_applied",  # trades in emitted 1s bars (counted with the bar)
    "ticks_late",  # trades for a 1s interval that had already closed: not applied
    "ticks_duplicate",  # trade ids seen before: not applied again
    "ticks_already_applied",  # trades redelivered after a restart, already in the bars
    "bars_1s",  # 1s bars emitted, filled ones included
    "bars_filled",  # 1s intervals without trades: flat bars at the previous close
    "bars_incomplete",  # 1s bars overlapping a gap marker from ingest
    "intervals_skipped",  # empty 1s intervals in runs longer than the fill limit: no bar
    "gaps",  # gap markers read from the tick stream
    "trades_missing",  # trades those gap markers span
)
FIELDS: tuple[str, ...] = ("last_bar_open_ms", "last_bar_latency_ms", "updated_ms")


def score(counts: Mapping[str, float]) -> float:
    """Quality score in [0, 100] of one symbol's counters (see the module docstring)."""

    def share(good: float, bad: float) -> float:
        return good / (good + bad) if good + bad > 0 else 1.0

    applied = share(counts.get("ticks_applied", 0), counts.get("ticks_late", 0))
    bars = counts.get("bars_1s", 0)
    complete = 1.0 - counts.get("bars_incomplete", 0) / bars if bars > 0 else 1.0
    coverage = share(bars, counts.get("intervals_skipped", 0))
    return round(100.0 * applied * complete * coverage, 2)


def parse(raw: Mapping[Any, Any]) -> dict[str, int]:
    """Counters and fields of a ``md:quality:{SYMBOL}`` hash as integers (missing: 0 / absent)."""
    out: dict[str, int] = {name: 0 for name in COUNTERS}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        try:
            out[name] = int(value)
        except (TypeError, ValueError):
            continue  # a field some other writer put there: not ours to show
    return out


def collect_bar_quality(client: redis.Redis, symbols: list[str]) -> list[dict[str, Any]]:
    """Per symbol: the aggregator owning it and its data-quality counters with the score
    (None before the aggregator counted anything), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.get(keys.agg_owner(symbol))
        pipe.hgetall(keys.quality(symbol))
    replies = pipe.execute()
    rows = []
    for i, symbol in enumerate(symbols):
        owner, raw = replies[2 * i], replies[2 * i + 1]
        counts = parse(raw)
        rows.append(
            {
                "symbol": symbol,
                "owner": keys.lease_holder(owner),
                **counts,
                "score": score(counts) if raw else None,
            }
        )
    return rows
