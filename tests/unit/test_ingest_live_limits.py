"""Rate limits and retries of the Binance live source: the weight budget, the backoff, bad configuration."""

from __future__ import annotations

import random

import pytest

from unistream_ingest.binance.rest import WeightBudget, backoff_delay
from unistream_ingest.binance.websocket import BinanceLiveSource


async def _noop(*_args: object) -> None:
    return None


def test_weight_budget_books_until_full_then_says_when_the_oldest_booking_leaves_the_minute() -> None:
    budget = WeightBudget(100)
    assert [budget.reserve(t, 25) for t in (0.0, 1.0, 2.0, 3.0)] == [0.0, 0.0, 0.0, 0.0]
    assert budget.used(3.0) == 100
    assert budget.reserve(10.0, 25) == pytest.approx(50.0)  # the booking at 0 s leaves at 60 s
    assert budget.reserve(10.0, 50) == pytest.approx(51.0)  # needs the 0 s and 1 s bookings gone
    assert budget.reserve(60.0, 25) == 0.0 and budget.used(60.0) == 100


def test_weight_budget_counts_weight_the_venue_reports_beyond_our_own_bookings() -> None:
    budget = WeightBudget(100)
    budget.reserve(0.0, 25)
    budget.observe(1.0, 20)  # less than we booked ourselves: nothing to add
    assert budget.used(1.0) == 25
    budget.observe(1.0, 90)  # another process on the same IP spent 65
    assert budget.used(1.0) == 90 and budget.reserve(1.0, 25) > 0
    assert budget.used(61.0) == 0


def test_weight_budget_rejects_a_request_that_can_never_fit_and_an_empty_budget() -> None:
    with pytest.raises(ValueError, match="can never fit"):
        WeightBudget(20).reserve(0.0, 25)
    with pytest.raises(ValueError, match="must be > 0"):
        WeightBudget(0)


def test_backoff_doubles_from_the_minimum_is_capped_and_jittered_within_half_to_full() -> None:
    rng = random.Random(1)
    assert backoff_delay(0, 0.5, 30.0, rng) == 0.0
    for failures, nominal in ((1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (50, 30.0)):
        delays = [backoff_delay(failures, 0.5, 30.0, rng) for _ in range(200)]
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert max(delays) - min(delays) > nominal / 4  # really jittered, not a constant


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"symbols": []}, "at least one symbol"),
        ({"silence_s": 0}, "silence_s must be > 0"),
        ({"backoff_min_s": 5.0, "backoff_max_s": 1.0}, "backoff_min_s <= backoff_max_s"),
        ({"rest_attempts": 0}, "rest_attempts must be >= 1"),
        ({"rest_weight_budget_per_min": 0}, "must be > 0 per minute"),
        ({"ws_url": "http://127.0.0.1:1"}, "ws_url must be ws"),
    ],
)
def test_impossible_configuration_is_refused_with_what_to_change(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"ws_url": "ws://127.0.0.1:1", "symbols": ["ETHUSDT"], **kwargs}
    with pytest.raises(ValueError, match=message):
        BinanceLiveSource(rest_url="http://127.0.0.1:1", on_trades=_noop, **args)  # type: ignore[arg-type]


def test_one_combined_stream_url_carries_every_symbol_in_lower_case() -> None:
    source = BinanceLiveSource("ws://127.0.0.1:9/", "http://127.0.0.1:9", ["ethusdt", "BTCUSDT"], _noop)
    assert source.stream_url == "ws://127.0.0.1:9/stream?streams=ethusdt@trade/btcusdt@trade"
    assert source.symbols == ("ETHUSDT", "BTCUSDT")
