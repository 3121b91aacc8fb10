"""Quote volume as Binance computes it: each trade's notional truncated to 8 decimals, then summed.

The fixture is a minute of ETHBTC-like trades in Binance's archive format (``id,price,qty,
quoteQty,time,isBuyerMaker,isBestMatch``) whose products have up to 16 decimals, with the
kline Binance would publish for that minute (its archive kline format), built from the rule: the
kline's quote volume is the sum of the trades' ``quoteQty``, which is price x qty truncated to 8
decimals. Over these 14 trades the exact sum of the products is 8.1e-8 higher.
"""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

from unistream_aggregator.core import BarAggregator
from unistream_common.bars import SCALE, notional_units
from unistream_common.packets import Tick, TickBatch
from unistream_ingest.archive import read_archive

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"
TRADES = FIXTURES / "ETHBTC-trades-notional.csv"
KLINE = FIXTURES / "ETHBTC-1m-notional.csv"
FIRST_MS = 1_739_923_200_000  # 2025-02-19 00:00 UTC, the fixture's minute


def units(text: str) -> int:
    return int(Decimal(text).scaleb(8))


def test_every_trade_s_reported_notional_is_its_price_times_qty_truncated_to_8_decimals() -> None:
    rows = list(csv.reader(TRADES.open()))
    assert len(rows) == 14
    for _, price, qty, quote_qty, *_ in rows:
        assert notional_units(units(price), units(qty)) == units(quote_qty), (price, qty, quote_qty)
    truncated = sum(units(r[3]) for r in rows)
    exact = sum(Decimal(r[1]) * Decimal(r[2]) for r in rows)
    assert exact - Decimal(truncated).scaleb(-8) > Decimal("8e-8"), "the fixture exercises the truncation"


def test_a_minute_of_archive_trades_gives_binance_s_kline_on_every_field_quote_volumes_included() -> None:
    trades = list(read_archive(TRADES, "ETHBTC"))
    ticks = [
        Tick(t.trade_id, t.price, t.size, "SELL" if t.buyer_is_maker else "BUY", t.ts_event_ms, t.ts_event_ms)
        for t in trades
    ]  # as ingest turns a Binance trade into a tick (isBuyerMaker: the taker sold)
    # a trade of the next minute proves this one over
    later = Tick(ticks[-1].trade_id + 1, ticks[-1].price, 1.0, "BUY", FIRST_MS + 60_000, FIRST_MS + 60_000)
    agg = BarAggregator()
    batch = TickBatch(symbol="ETHBTC", source="REPLAY", ticks=[*ticks, later])
    bars = agg.apply([(("md:ticks:{ETHBTC}", "1-0"), batch)]).bars
    [minute] = [b for b in bars if b.timeframe == "1m"]
    (row,) = csv.reader(KLINE.open())
    open_ms, o, h, lo, c, volume, close_ms, quote, count, taker_base, taker_quote = row[:11]
    assert minute.open_time_ms == int(open_ms) and minute.close_time_ms - 1 == int(close_ms)
    assert (minute.open, minute.high, minute.low, minute.close) == tuple(float(x) for x in (o, h, lo, c))
    assert minute.volume == float(volume) and minute.taker_buy_volume == float(taker_base)
    assert minute.trade_count == int(count)
    assert minute.quote_volume == float(quote), "the sum of the truncated notionals, not of the exact products"
    assert minute.taker_buy_quote_volume == float(taker_quote), "the same rule over the trades whose taker bought"
    assert minute.vwap == units(quote) / units(volume)
    # the 1s bars sum to it too: the rule is applied per trade, never per bar
    seconds = [b for b in bars if b.timeframe == "1s" and not b.filled]
    assert sum(round(b.quote_volume * SCALE) for b in seconds) == units(quote)
