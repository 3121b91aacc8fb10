"""The synthetic market (pure core of ingest): determinism, well-formed trades, market statistics."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from unistream_common.packets import Tick
from unistream_ingest.core import TickBuffer
from unistream_ingest.synthetic import SyntheticMarket

T0 = 1_700_000_000_000  # a fixed epoch ms, aligned to the second
SYMBOLS = ["ETHUSDT", "BTCUSDT"]


def _key(t: Tick) -> tuple[int, float, float, str, int]:
    """Everything of a trade but ts_recv_ms (which is the release time, by design)."""
    return (t.trade_id, t.price, t.size, t.aggressor_side, t.ts_event_ms)


def _run(market: SyntheticMarket, nows: list[int]) -> dict[str, list[Tick]]:
    out: dict[str, list[Tick]] = {s: [] for s in market.symbols}
    for now in nows:
        for symbol, ticks in market.advance(now).items():
            out[symbol].extend(ticks)
    return out


def test_same_seed_gives_same_ticks_however_advance_is_chunked() -> None:
    end = T0 + 120_000
    one_call = _run(SyntheticMarket(SYMBOLS, seed=11, start_ms=T0), [end])
    rnd = random.Random(3)
    nows, t = [], T0
    while t < end:
        t = min(end, t + rnd.choice([1, 7, 33, 100, 250, 999, 1000, 1001, 4321]))
        nows.append(t)
        if rnd.random() < 0.1:
            nows.append(t)  # the same now twice: nothing new
    chunked = _run(SyntheticMarket(SYMBOLS, seed=11, start_ms=T0), nows)
    for symbol in SYMBOLS:
        assert len(one_call[symbol]) > 500
        assert [_key(t) for t in chunked[symbol]] == [_key(t) for t in one_call[symbol]]


def test_different_seeds_give_different_markets() -> None:
    a = _run(SyntheticMarket(SYMBOLS, seed=1, start_ms=T0), [T0 + 10_000])
    b = _run(SyntheticMarket(SYMBOLS, seed=2, start_ms=T0), [T0 + 10_000])
    assert [_key(t) for t in a["ETHUSDT"]] != [_key(t) for t in b["ETHUSDT"]]


def test_a_symbols_trades_do_not_depend_on_the_other_configured_symbols() -> None:
    alone = _run(SyntheticMarket(["ETHUSDT"], seed=5, start_ms=T0), [T0 + 30_000])
    paired = _run(SyntheticMarket(["BTCUSDT", "ETHUSDT", "SOLUSDT"], seed=5, start_ms=T0), [T0 + 30_000])
    assert [_key(t) for t in alone["ETHUSDT"]] == [_key(t) for t in paired["ETHUSDT"]]


def test_advance_releases_exactly_the_trades_after_the_previous_now_up_to_now() -> None:
    market = SyntheticMarket(SYMBOLS, seed=4, start_ms=T0)
    prev = T0
    for now in range(T0 + 37, T0 + 20_000, 137):
        for ticks in market.advance(now).values():
            assert all(prev < t.ts_event_ms <= now for t in ticks)
            assert all(t.ts_recv_ms == now for t in ticks)
        prev = now
    assert market.advance(prev) == {s: [] for s in SYMBOLS}
    assert market.advance(prev - 500) == {s: [] for s in SYMBOLS}


def test_trades_have_consecutive_ids_sorted_times_and_positive_prices_and_sizes_on_the_grid() -> None:
    ticks = _run(SyntheticMarket(SYMBOLS + ["DOGEUSDT"], seed=9, start_ms=T0), [T0 + 300_000])
    lots = {"ETHUSDT": 1e-4, "BTCUSDT": 1e-5, "DOGEUSDT": 1e-3}
    for symbol, ts in ticks.items():
        assert ts, symbol
        ids = [t.trade_id for t in ts]
        assert ids == list(range(T0, T0 + len(ids))), symbol  # first id = start_ms by default
        times = [t.ts_event_ms for t in ts]
        assert times == sorted(times)
        for t in ts:
            assert t.price > 0 and t.size > 0
            assert t.aggressor_side in ("BUY", "SELL")
            assert abs(t.price * 100 - round(t.price * 100)) < 1e-6, t.price  # tick 0.01
            lots_n = t.size / lots[symbol]
            assert abs(lots_n - round(lots_n)) < 1e-6 and round(lots_n) >= 1, t.size
            assert repr(t.price) == repr(round(t.price, 2))  # clean decimals on the wire


def test_prices_start_at_the_known_levels_and_a_default_for_other_symbols() -> None:
    first = _run(SyntheticMarket(["ETHUSDT", "BTCUSDT", "XRPUSDT"], seed=1, start_ms=T0), [T0 + 5_000])
    assert first["ETHUSDT"][0].price == pytest.approx(3_000, rel=0.01)
    assert first["BTCUSDT"][0].price == pytest.approx(90_000, rel=0.01)
    assert first["XRPUSDT"][0].price == pytest.approx(100, rel=0.02)


def test_start_prices_and_first_trade_ids_continue_a_previous_run() -> None:
    market = SyntheticMarket(["ETHUSDT"], seed=1, start_ms=T0, start_prices={"ETHUSDT": 2_500.0},
                             first_trade_ids={"ETHUSDT": 42})  # fmt: skip
    ticks = market.advance(T0 + 5_000)["ETHUSDT"]
    assert ticks[0].trade_id == 42
    assert ticks[0].price == pytest.approx(2_500, rel=0.01)


def test_bad_arguments_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="at least one symbol"):
        SyntheticMarket([], seed=1, start_ms=T0)
    with pytest.raises(ValueError, match="not a valid symbol"):
        SyntheticMarket(["eth-usdt"], seed=1, start_ms=T0)
    with pytest.raises(ValueError, match="not positive"):
        SyntheticMarket(["ETHUSDT"], seed=1, start_ms=T0, start_prices={"ETHUSDT": 0.0})


def test_any_integer_seed_is_accepted_including_negative_ones() -> None:
    a = SyntheticMarket(["ETHUSDT"], seed=-3, start_ms=T0).advance(T0 + 5_000)["ETHUSDT"]
    b = SyntheticMarket(["ETHUSDT"], seed=-3, start_ms=T0).advance(T0 + 5_000)["ETHUSDT"]
    assert a and [_key(t) for t in a] == [_key(t) for t in b]


# --- market statistics over one simulated hour -----------------------------------------------


@pytest.fixture(scope="module")
def hour() -> dict[str, dict[str, np.ndarray]]:
    """Per symbol: 1 s closes, trade counts and signed (buy - sell) volume over one hour, seed 7."""
    market = SyntheticMarket(SYMBOLS, seed=7, start_ms=T0)
    seconds = 3_600
    closes = {s: np.empty(seconds) for s in SYMBOLS}
    counts = {s: np.empty(seconds) for s in SYMBOLS}
    signed = {s: np.empty(seconds) for s in SYMBOLS}
    for i in range(seconds):
        out = market.advance(T0 + (i + 1) * 1_000)
        last = market.last_prices()
        for s in SYMBOLS:
            ticks = out[s]
            closes[s][i] = last[s]
            counts[s][i] = len(ticks)
            signed[s][i] = sum(t.size if t.aggressor_side == "BUY" else -t.size for t in ticks)
    return {s: {"returns": np.diff(np.log(closes[s])), "counts": counts[s], "signed": signed[s][1:]} for s in SYMBOLS}


def _excess_kurtosis(x: np.ndarray) -> float:
    x = x - x.mean()
    return float((x**4).mean() / (x**2).mean() ** 2 - 3.0)


def _autocorr(x: np.ndarray, lag: int) -> float:
    return float(np.corrcoef(x[:-lag], x[lag:])[0, 1])


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_one_second_returns_have_fat_tails(hour: dict[str, dict[str, np.ndarray]], symbol: str) -> None:
    # A Gaussian sample of 3,600 has excess kurtosis 0 +- 0.08: 0.5 is far outside that.
    assert _excess_kurtosis(hour[symbol]["returns"]) > 0.5


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_absolute_returns_cluster_in_time(hour: dict[str, dict[str, np.ndarray]], symbol: str) -> None:
    # For independent returns these autocorrelations are 0 +- 0.017 (1 / sqrt(3600)).
    abs_r = np.abs(hour[symbol]["returns"])
    assert _autocorr(abs_r, 1) > 0.05
    assert np.mean([_autocorr(abs_r, lag) for lag in range(1, 11)]) > 0.04


def test_eth_and_btc_returns_correlate_at_about_0_8(hour: dict[str, dict[str, np.ndarray]]) -> None:
    corr = float(np.corrcoef(hour["ETHUSDT"]["returns"], hour["BTCUSDT"]["returns"])[0, 1])
    assert 0.65 < corr < 0.92


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_trade_arrivals_are_bursty_at_a_few_to_dozens_per_second(
    hour: dict[str, dict[str, np.ndarray]], symbol: str
) -> None:
    counts = hour[symbol]["counts"]
    assert 3 < counts.mean() < 40
    assert counts.var() / counts.mean() > 1.5  # Poisson would give 1
    assert counts.max() > 2.5 * counts.mean()  # a Poisson max over 3,600 s stays near mean + 4 sd


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_buy_sell_imbalance_moves_the_price(hour: dict[str, dict[str, np.ndarray]], symbol: str) -> None:
    corr = float(np.corrcoef(hour[symbol]["signed"], hour[symbol]["returns"])[0, 1])
    assert corr > 0.15


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_volatility_is_in_a_plausible_crypto_range(hour: dict[str, dict[str, np.ndarray]], symbol: str) -> None:
    annualised = float(hour[symbol]["returns"].std()) * math.sqrt(365 * 86_400)
    assert 0.2 < annualised < 1.5


# --- the send buffer ---------------------------------------------------------------------------


def _ticks(first_id: int, n: int) -> list[Tick]:
    return [Tick(first_id + i, 100.0, 1.0, "BUY", T0 + i, T0 + i) for i in range(n)]


def test_full_buffer_drops_the_oldest_ticks_and_reports_how_many() -> None:
    buf = TickBuffer(max_ticks=5)
    assert buf.extend("ETHUSDT", _ticks(1, 3)) == 0
    assert buf.extend("ETHUSDT", _ticks(4, 4)) == 2
    assert [t.trade_id for _, chunk in buf.chunks(100) for t in chunk] == [3, 4, 5, 6, 7]
    assert buf.extend("BTCUSDT", _ticks(1, 5)) == 0  # the bound is per symbol
    assert buf.size() == 10


def test_buffer_chunks_split_at_max_batch_and_discard_removes_written_chunks() -> None:
    buf = TickBuffer(max_ticks=100)
    buf.extend("ETHUSDT", _ticks(1, 7))
    chunks = buf.chunks(3)
    assert [[t.trade_id for t in c] for _, c in chunks] == [[1, 2, 3], [4, 5, 6], [7]]
    buf.discard("ETHUSDT", chunks[1][1])  # a middle chunk written, the first one failed
    assert [t.trade_id for _, c in buf.chunks(10) for t in c] == [1, 2, 3, 7]
    buf.discard("ETHUSDT", chunks[0][1])
    assert [t.trade_id for _, c in buf.chunks(10) for t in c] == [7]


def test_buffer_discard_through_trade_id_removes_what_the_stream_already_holds() -> None:
    buf = TickBuffer(max_ticks=100)
    buf.extend("ETHUSDT", _ticks(10, 5))
    assert buf.discard_through("ETHUSDT", 12) == 3
    assert buf.discard_through("ETHUSDT", 5) == 0
    assert buf.discard_through("BTCUSDT", 99) == 0
    assert [t.trade_id for _, c in buf.chunks(10) for t in c] == [13, 14]
