"""`unistream export` against a real Redis: streams to Parquet and CSV that pandas and polars read back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from unistream_common import codec, keys
from unistream_common.packets import Bar, GapMarker, Tick, TickBatch, TrainingDataPacket
from unistream_features.core import FeatureConfig, state_layouts
from unistream_tools import export
from unistream_tools.cli import main

pytestmark = pytest.mark.integration

T0 = 1_739_923_200_000  # 2025-02-19 00:00 UTC
LAYOUTS = state_layouts(FeatureConfig())  # the default features configuration: ETHUSDT, BTCUSDT, 300 bars


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    r.flushall()
    yield r
    r.close()


def bar(k: int) -> Bar:
    close = 2700.0 + k * 0.01
    return Bar(
        symbol="ETHUSDT", timeframe="1s", open_time_ms=T0 + 1000 * k, close_time_ms=T0 + 1000 * (k + 1),
        open=close, high=close + 0.5, low=close - 0.5, close=close, volume=1.5 + k, quote_volume=close * (1.5 + k),
        trade_count=3, vwap=close, taker_buy_volume=0.5, filled=False, source="REPLAY",
    )  # fmt: skip


def packet(symbol: str, k: int, rng: np.random.Generator) -> TrainingDataPacket:
    layout = LAYOUTS[symbol]
    return TrainingDataPacket(
        symbol=symbol, ts_event_ms=T0 + 1000 * k, price=2700.0 + k, source="REPLAY", state_dim=layout.dim,
        state=codec.f32_to_bytes(rng.standard_normal(layout.dim)), cnn_features=codec.f32_to_bytes(rng.random(160)),
        cnn_predictions=codec.f32_to_bytes(rng.random(20)), prediction_names=[f"p{i}" for i in range(20)],
        model_version="cnn-init-7", window_fill=1.0, layout_version=layout.tag,
    )  # fmt: skip


def test_bars_and_ticks_go_to_parquet_and_csv_that_pandas_and_polars_read_back(
    client: redis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setattr(export, "DEFAULT_CHUNK", 3)  # several chunks: the file is written a chunk at a time
    bars = [bar(k) for k in range(10)]
    for b in bars:
        client.xadd(keys.bars("ETHUSDT", "1s"), codec.encode(b), id=f"{b.open_time_ms}-0")
    ticks = keys.ticks("ETHUSDT")
    client.xadd(ticks, codec.encode(TickBatch("ETHUSDT", "REAL", [Tick(7, 2700.5, 0.25, "BUY", T0, T0 + 4)])), id="1-0")
    client.xadd(ticks, {"type": "tick_batch", "v": "1", "data": b"\xc1 not msgpack"}, id="2-0")
    client.xadd(
        ticks, codec.encode(GapMarker("ETHUSDT", "REAL", 8, 8, T0, T0 + 5, "backfill failed", T0 + 6)), id="2-1"
    )
    later = [Tick(8, 2701.0, 1.0, "SELL", T0 + 5, T0 + 9), Tick(9, 2699.0, 2.0, "BUY", T0 + 6, T0 + 9)]
    client.xadd(ticks, codec.encode(TickBatch("ETHUSDT", "REAL", later)), id="3-0")
    streams = [keys.bars("ETHUSDT", "1s"), ticks]
    for fmt in ("parquet", "csv"):
        out = tmp_path / fmt
        assert main(["export", *streams, "--out", str(out), "--format", fmt, "--redis-url", redis_url]) == 0
        stdout, err = capsys.readouterr()
        assert "10 entries, 10 rows" in stdout and "4 entries, 4 rows" in stdout
        assert "1 undecodable entries left out (first: 2-0)" in err
        bar_file = out / f"md_bars_ETHUSDT_1s.{fmt}"
        frame = pd.read_parquet(bar_file) if fmt == "parquet" else pd.read_csv(bar_file)
        polars = pl.read_parquet(bar_file) if fmt == "parquet" else pl.read_csv(bar_file)
        assert frame["close"].tolist() == [b.close for b in bars] == polars["close"].to_list()
        assert frame["open_time_ms"].tolist() == [b.open_time_ms for b in bars]
        assert frame["quote_volume"].tolist() == [b.quote_volume for b in bars]
        assert frame["entry_id"].tolist() == [f"{b.open_time_ms}-0" for b in bars]
        tick_file = out / f"md_ticks_ETHUSDT.{fmt}"
        tick_frame = pd.read_parquet(tick_file) if fmt == "parquet" else pd.read_csv(tick_file)
        assert tick_frame["trade_id"].tolist() == [7, 8, 9] and tick_frame["entry_id"].tolist() == ["1-0", "3-0", "3-0"]
        assert tick_frame["aggressor_side"].tolist() == ["BUY", "SELL", "BUY"]
        assert set(tick_frame["source"]) == {"REAL"} and set(tick_frame["symbol"]) == {"ETHUSDT"}
        # the tick stream's gap marker goes to a file of its own beside the ticks
        gap_file = out / f"md_ticks_ETHUSDT.gap.{fmt}"
        gaps = pd.read_parquet(gap_file) if fmt == "parquet" else pd.read_csv(gap_file)
        assert gaps["entry_id"].tolist() == ["2-1"] and gaps["from_trade_id"].tolist() == [8]
        assert export.read_metadata(gap_file)["unistream.type"] == "gap"
        assert export.read_metadata(bar_file)["unistream.type"] == "bar"
    # --since / --until: [since, until) on the entry ids (a bar's is its open time)
    out = tmp_path / "range"
    args = ["--since", str(T0 + 2000), "--until", "2025-02-19T00:00:05Z", "--redis-url", redis_url]
    assert main(["export", keys.bars("ETHUSDT", "1s"), "--out", str(out), *args]) == 0
    got = pd.read_parquet(out / "md_bars_ETHUSDT_1s.parquet")
    assert got["open_time_ms"].tolist() == [T0 + 2000, T0 + 3000, T0 + 4000]


def test_training_packets_keep_their_vectors_and_name_every_state_value(
    client: redis.Redis, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(4)
    packets = [packet(symbol, k, rng) for k in range(4) for symbol in ("ETHUSDT", "BTCUSDT")]
    for n, p in enumerate(packets):
        client.xadd(keys.training(p.symbol), codec.encode(p), id=f"{p.ts_event_ms}-{n}")
    out = tmp_path / "training"
    streams = [keys.training("ETHUSDT"), keys.training("BTCUSDT")]
    assert main(["export", *streams, "--out", str(out), "--chunk", "3", "--redis-url", redis_url]) == 0
    dim = LAYOUTS["ETHUSDT"].dim
    for symbol in ("ETHUSDT", "BTCUSDT"):
        mine = [p for p in packets if p.symbol == symbol]
        path = out / f"ml_training_{symbol}.parquet"
        table = pq.read_table(path)
        state_type = table.schema.field("state").type
        assert pa.types.is_fixed_size_list(state_type) and state_type.list_size == dim
        assert state_type.value_type == pa.float32()
        frame = pd.read_parquet(path)
        states = np.stack(frame["state"].to_numpy())
        assert states.dtype == np.float32 and states.shape == (len(mine), dim)
        assert np.array_equal(states, np.stack([codec.f32_from_bytes(p.state) for p in mine]))
        assert np.array_equal(np.stack(pl.read_parquet(path)["cnn_features"].to_numpy()), np.stack(
            [codec.f32_from_bytes(p.cnn_features) for p in mine]
        ))  # fmt: skip
        assert frame["symbol"].tolist() == [symbol] * len(mine)
        meta = export.read_metadata(path)
        assert meta["unistream.layout_version"] == LAYOUTS[symbol].tag
        assert json.loads(meta["unistream.prediction_names"]) == [f"p{i}" for i in range(20)]
        names = json.loads(meta[f"unistream.state_names.{symbol}"])  # the symbol's own blocks come first
        assert names == list(LAYOUTS[symbol].feature_names()) and len(names) == dim
    # a configuration that is not the packets' says the names are unknown, and why
    other = tmp_path / "other"
    assert main(["export", streams[0], "--out", str(other), "--window-bars", "60", "--redis-url", redis_url]) == 0
    meta = export.read_metadata(other / "ml_training_ETHUSDT.parquet")
    assert "unknown" in json.loads(meta["unistream.state_names.ETHUSDT"])
    # CSV: vectors as JSON arrays, metadata beside the file
    csv_out = tmp_path / "csv"
    assert main(["export", streams[0], "--out", str(csv_out), "--format", "csv", "--redis-url", redis_url]) == 0
    packets = [p for p in packets if p.symbol == "ETHUSDT"]
    frame = pd.read_csv(csv_out / "ml_training_ETHUSDT.csv")
    assert np.array_equal(np.asarray(json.loads(frame["state"][0]), np.float32), codec.f32_from_bytes(packets[0].state))
    assert export.read_metadata(csv_out / "ml_training_ETHUSDT.csv")["unistream.type"] == "training"


def test_a_missing_stream_is_reported_and_the_others_still_exported(
    client: redis.Redis, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client.xadd(keys.bars("ETHUSDT", "1s"), codec.encode(bar(0)), id=f"{T0}-0")
    code = main(["export", "md:bars:{NOPE}:1s", keys.bars("ETHUSDT", "1s"), "--out", str(tmp_path), "--redis-url",
                 redis_url])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1 and "no stream md:bars:{NOPE}:1s" in err and "1 entries, 1 rows" in out
    with pytest.raises(SystemExit) as exc:
        main(["export", "x", "--out", str(tmp_path), "--since", "yesterday", "--redis-url", redis_url])
    assert exc.value.code == 2 and "epoch milliseconds or ISO 8601" in capsys.readouterr().err


def test_times_are_epoch_ms_or_iso_8601_in_utc() -> None:
    assert export.parse_time_ms("1739923200000") == T0
    assert export.parse_time_ms("2025-02-19") == T0
    assert export.parse_time_ms("2025-02-19T01:00:00+01:00") == T0
    with pytest.raises(ValueError, match="epoch milliseconds or ISO 8601"):
        export.parse_time_ms("yesterday")
