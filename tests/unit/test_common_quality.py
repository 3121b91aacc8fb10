"""The bar-quality score: one formula for the aggregator, `unistream status` and the dashboard."""

from __future__ import annotations

import pytest

from unistream_common import quality


def test_nothing_counted_yet_scores_100() -> None:
    assert quality.score({}) == 100.0


def test_duplicates_and_redelivered_trades_do_not_lower_the_score() -> None:
    assert quality.score({"ticks_applied": 10, "ticks_duplicate": 5, "ticks_already_applied": 7, "bars_1s": 4}) == 100.0


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"ticks_applied": 99, "ticks_late": 1}, 99.0),  # one trade in a hundred missed its bar
        ({"bars_1s": 100, "bars_incomplete": 25}, 75.0),  # a quarter of the bars rest on a known gap
        ({"bars_1s": 60, "intervals_skipped": 40}, 60.0),  # 40 of 100 seconds have no bar
        ({"ticks_applied": 90, "ticks_late": 10, "bars_1s": 50, "bars_incomplete": 5, "intervals_skipped": 50}, 40.5),
    ],
)
def test_score_is_the_product_of_applied_complete_and_coverage_shares(counts: dict[str, int], expected: float) -> None:
    assert quality.score(counts) == expected


def test_parse_turns_a_redis_hash_into_integers_and_ignores_foreign_fields() -> None:
    parsed = quality.parse({b"ticks_late": b"3", b"last_bar_latency_ms": b"251", b"note": b"hello"})
    assert parsed["ticks_late"] == 3 and parsed["last_bar_latency_ms"] == 251
    assert parsed["ticks_applied"] == 0 and "note" not in parsed
