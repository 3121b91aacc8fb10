"""The bar core: one trade at a time and many at once make the same bars; roll-ups are exact."""

from __future__ import annotations

import random

import msgspec
import numpy as np
import pytest

from unistream_common.bars import (
    SCALE,
    BarAccumulator,
    interval_open_ms,
    notional_units,
    roll_up,
    sum_trades,
)
from unistream_common.timeframes import TIMEFRAME_MS, TIMEFRAMES

T0 = 1_764_028_800_000  # 2025-11-25 00:00:00 UTC: aligned to every timeframe


def random_columns(n: int, seed: int, huge_at: int | None = None) -> dict[str, np.ndarray]:
    """``n`` time-ordered trades from 00:59 on, some seconds busy and some empty."""
    rng = random.Random(seed)
    ts, out = T0 + 3_540_000, []
    for k in range(n):
        ts += rng.choice([0, 3, 400, 1_000, 2_500, 30_000])
        size = round(rng.uniform(0.0001, 50.0), 4) if k != huge_at else 9e10  # 9e10 x 1e8 > 2^62
        out.append((ts, round(rng.uniform(0.01, 0.1), 5), size, rng.random() < 0.5, rng.randint(1, 4)))
    ts_, price, size, bought, count = zip(*out, strict=True)
    return {
        "ts": np.array(ts_, np.int64), "price": np.array(price), "size": np.array(size),
        "bought": np.array(bought), "count": np.array(count, np.int64),
    }  # fmt: skip


def one_by_one(c: dict[str, np.ndarray], span_ms: int) -> list[BarAccumulator]:
    out: list[BarAccumulator] = []
    for ts, price, size, bought, count in zip(*(c[k].tolist() for k in ("ts", "price", "size", "bought", "count"))):
        open_ms = interval_open_ms(ts, span_ms)
        if not out or out[-1].open_ms != open_ms:
            out.append(BarAccumulator.opening(open_ms, price, "REPLAY"))
        out[-1].add_trade(price, size, bought, count)
    return out


@pytest.mark.parametrize("huge_at", [None, 17])
@pytest.mark.parametrize("timeframe", ["1s", "1m", "1h"])
def test_summing_many_trades_at_once_gives_the_bars_of_adding_them_one_by_one(
    timeframe: str, huge_at: int | None
) -> None:
    c = random_columns(3_000, seed=len(timeframe), huge_at=huge_at)  # a size too large for 64-bit sums
    span = TIMEFRAME_MS[timeframe]
    expected = one_by_one(c, span)
    got = sum_trades(c["ts"], c["price"], c["size"], c["bought"], span, "REPLAY", c["count"])
    assert got == expected
    assert sum_trades(c["ts"], c["price"], c["size"], c["bought"], span, "REPLAY", c["count"], last=5) == expected[-5:]
    ones = sum_trades(c["ts"], c["price"], c["size"], c["bought"], span, "REPLAY")
    assert [b.count for b in ones] == [b.count for b in one_by_one({**c, "count": np.ones(3_000, np.int64)}, span)]


def test_a_notional_is_truncated_to_8_decimals_as_binance_reports_it() -> None:
    # 0.05123 x 0.1234 = 0.006321782: Binance's quoteQty is 0.00632178.
    assert notional_units(5_123_000, 12_340_000) == 632_178
    bar = BarAccumulator.opening(T0, 0.05123, "REAL")
    bar.add_trade(0.05123, 0.1234, taker_bought=True)
    assert (bar.quote, bar.taker_quote, bar.volume) == (632_178, 632_178, round(0.1234 * SCALE))


def test_bars_rolled_up_through_minutes_equal_bars_rolled_up_from_seconds() -> None:
    c = random_columns(4_000, seed=7)
    seconds = one_by_one(c, 1_000)
    direct: dict[str, BarAccumulator] = {}
    from_seconds = [
        (tf, msgspec.structs.replace(b)) for s in seconds for tf, b in roll_up(direct, s, "1s", TIMEFRAMES[1:])
    ]
    minutes = [b for tf, b in from_seconds if tf == "1m"]
    through: dict[str, BarAccumulator] = {}
    from_minutes = [b for m in minutes for tf, b in roll_up(through, m, "1m", ("1h",))]
    assert from_minutes == [b for tf, b in from_seconds if tf == "1h"] and len(from_minutes) >= 2


def test_a_filled_part_sets_only_the_close_of_the_bar_it_rolls_into() -> None:
    hour = BarAccumulator.flat(T0, 100.0, "REPLAY")
    hour.add_bar(BarAccumulator.flat(T0, 100.0, "REPLAY"))
    assert not hour.real and hour.to_bar("ETHUSDT", "1h").filled
    traded = BarAccumulator.opening(T0 + 60_000, 101.0, "REPLAY")
    traded.add_trade(101.0, 2.0, taker_bought=False)
    traded.add_trade(102.5, 1.0, taker_bought=True)
    hour.add_bar(traded)
    hour.add_bar(BarAccumulator.flat(T0 + 120_000, 102.5, "REPLAY"))  # flat at the last close
    bar = hour.to_bar("ETHUSDT", "1h")
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.filled) == (101.0, 102.5, 101.0, 102.5, 3.0, False)
    assert bar.taker_buy_volume == 1.0 and bar.vwap == (202.0 + 102.5) / 3
    assert BarAccumulator.of_bar(bar) == hour
