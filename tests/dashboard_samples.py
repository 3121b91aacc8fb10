"""Plausible packets of every kind the dashboard reads, for the dashboard's tests and its bench
(``bench/dashboard.py``); test fixtures, so they live here and not in the dashboard package.

Builders take the numbers a test wants to see on screen and fill in the rest consistently;
:func:`write_snapshot` puts a whole picture (status, ticks, bars, metrics, a model, groups)
into Redis through the shared codec, exactly as the producing services would.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from unistream_common import codec, keys
from unistream_common.heartbeat import queue_beat
from unistream_common.packets import (
    Bar,
    MetricsPacket,
    ModelAnnouncement,
    ModelStatus,
    Packet,
    PaperFill,
    PredictionPacket,
    Tick,
    TickBatch,
    UIDataPacket,
)


def ui_packet(
    symbol: str,
    *,
    ts_ms: int,
    last_price: float,
    ticks_seen: int,
    tick_cache_size: int | None = None,
    tick_cache_capacity: int = 5_000,
    bars_seen: int = 0,
    bars_1s_size: int | None = None,
    bars_1s_capacity: int = 3_600,
    training_packets: int = 0,
    source: str = "REAL",
    cnn_state: str = "TRAINING",
    cnn_version: str = "v1",
    cnn_parameters: int = 123_456,
    rl_state_dim: int = 512,
    predictions: dict[str, float] | None = None,
    gaps_seen: int = 0,
    trades_missing: int = 0,
    warmup: dict[str, float] | None = None,
    cnn_updated_ms: int | None = None,
) -> UIDataPacket:
    """A status packet; cache sizes default to the totals capped at the capacities."""
    predictions = {"top": 0.12, "bottom": 0.08} if predictions is None else predictions
    return UIDataPacket(
        symbol=symbol,
        ts_ms=ts_ms,
        source=source,  # type: ignore[arg-type]
        last_price=last_price,
        last_tick_ms=ts_ms,
        tick_cache_size=min(ticks_seen, tick_cache_capacity) if tick_cache_size is None else tick_cache_size,
        tick_cache_capacity=tick_cache_capacity,
        ticks_seen=ticks_seen,
        bars_1s_size=min(bars_seen, bars_1s_capacity) if bars_1s_size is None else bars_1s_size,
        bars_1s_capacity=bars_1s_capacity,
        bars_seen=bars_seen,
        training_packets=training_packets,
        gaps_seen=gaps_seen,
        trades_missing=trades_missing,
        warmup={"1s": 1.0, "1m": 1.0, "1h": 1.0, "1d": 1.0} if warmup is None else warmup,
        cnn=ModelStatus(
            name="extrema-cnn",
            version=cnn_version,
            state=cnn_state,  # type: ignore[arg-type]
            parameters=cnn_parameters,
            updated_ms=ts_ms if cnn_updated_ms is None else cnn_updated_ms,
        ),
        rl_state_dim=rl_state_dim,
        cnn_predictions=codec.f32_to_bytes(list(predictions.values())),
        prediction_names=list(predictions),
    )


def tick_batch(symbol: str, *, first_trade_id: int, prices: list[float], ts_ms: int, source: str = "REAL") -> TickBatch:
    """Consecutive trades at ``prices``, one millisecond apart, the last one at ``ts_ms``."""
    n = len(prices)
    ticks = [
        Tick(
            trade_id=first_trade_id + i,
            price=price,
            size=0.01 * (1 + i % 5),
            aggressor_side="BUY" if i % 2 == 0 else "SELL",
            ts_event_ms=ts_ms - (n - 1 - i),
            ts_recv_ms=ts_ms - (n - 1 - i),
        )
        for i, price in enumerate(prices)
    ]
    return TickBatch(symbol=symbol, source=source, ticks=ticks)  # type: ignore[arg-type]


def bar_walk(
    symbol: str, *, end_open_ms: int, count: int, start_price: float, seed: int = 7, source: str = "REAL"
) -> list[Bar]:
    """``count`` consecutive 1s bars of a random walk, the last one opening at ``end_open_ms``."""
    rng = random.Random(seed)
    first = (end_open_ms // 1000 - count + 1) * 1000
    price = round(start_price, 2)  # on the 0.01 grid like the rest: a rounded high must not fall below it
    out = []
    for i in range(count):
        open_ = price
        close = round(max(open_ * (1 + rng.gauss(0, 0.0008)), 0.01), 2)
        high = round(max(open_, close) * (1 + abs(rng.gauss(0, 0.0003))), 2)
        low = round(min(open_, close) * (1 - abs(rng.gauss(0, 0.0003))), 2)
        volume = round(rng.uniform(0.5, 20.0), 4)
        out.append(
            Bar(
                symbol=symbol,
                timeframe="1s",
                open_time_ms=first + i * 1000,
                close_time_ms=first + (i + 1) * 1000,
                open=open_,
                high=high,
                low=low,
                close=close,
                volume=volume,
                quote_volume=round(volume * close, 4),
                trade_count=rng.randint(1, 40),
                vwap=round((open_ + close) / 2, 2),
                taker_buy_volume=round(volume * rng.uniform(0.2, 0.8), 4),
                filled=False,
                source=source,  # type: ignore[arg-type]
            )
        )
        price = close
    return out


def metrics_packet(
    producer: str,
    *,
    ts_ms: int,
    step: int,
    td_loss: float,
    updates: int,
    epsilon: float = 0.05,
    packets: int = 0,
    extra: Mapping[str, float] | None = None,
) -> MetricsPacket:
    """A trainer replica's metrics under the namespaces the dashboard knows (plus ``extra``)."""
    return MetricsPacket(
        producer=producer,
        ts_ms=ts_ms,
        step=step,
        metrics={
            "losses/td_loss": td_loss,
            "charts/epsilon": epsilon,
            "charts/updates": float(updates),
            "charts/packets": float(packets),
            **(extra or {}),
        },
    )


def enhanced_metrics(
    *,
    labelled: Mapping[str, int],
    pr_auc_top: float | None = None,
    baseline_top: float | None = None,
    pr_auc_bottom: float | None = None,
    baseline_bottom: float | None = None,
    trades: int = 0,
    edge: float | None = None,
    edge_t: float | None = None,
    timeframe: str = "1s",
) -> dict[str, float]:
    """``extrema/*`` and ``sensitivity/*`` metrics as the trainer's Enhanced RL learners report them."""
    out: dict[str, float] = {f"extrema/labelled_{tf}": float(n) for tf, n in labelled.items()}
    for name, value in (
        (f"extrema/pr_auc_top_{timeframe}", pr_auc_top),
        (f"extrema/baseline_top_{timeframe}", baseline_top),
        (f"extrema/pr_auc_bottom_{timeframe}", pr_auc_bottom),
        (f"extrema/baseline_bottom_{timeframe}", baseline_bottom),
        ("sensitivity/edge", edge),
        ("sensitivity/edge_t", edge_t),
    ):
        if value is not None:
            out[name] = value
    out["sensitivity/trades"] = float(trades)
    return out


def model_announcement(name: str, version: str, *, ts_ms: int, producer: str, parameters: int) -> ModelAnnouncement:
    """An announced checkpoint (the uri and hash are placeholders: nothing is downloaded)."""
    return ModelAnnouncement(
        name=name,
        version=version,
        ts_ms=ts_ms,
        uri=f"file:///models/{name}/{version}.safetensors",
        sha256="0" * 64,
        producer=producer,
        parameters=parameters,
        metrics={"td_loss": 0.0123},
    )


def write(client: redis.Redis, stream: str, packet: Packet, entry_id: str = "*") -> str:
    """XADD one packet through the shared codec; returns the entry id."""
    return client.xadd(stream, codec.encode(packet), id=entry_id).decode()  # type: ignore[union-attr]


@dataclass(frozen=True)
class SymbolSnapshot:
    """The numbers one symbol's card should show after :func:`write_snapshot`."""

    symbol: str
    price: float
    ticks_seen: int
    bars_seen: int
    training_packets: int


def write_snapshot(
    client: redis.Redis,
    symbols: dict[str, SymbolSnapshot],
    *,
    now_ms: int,
    bars: int = 120,
    replicas: int = 2,
    updates_per_replica: int = 500,
    source: str = "REAL",
) -> None:
    """Write a consistent picture of a running system: per symbol a status packet, a tick batch
    ending at ``price`` and ``bars`` 1s bars; trainer metrics and a model announcement; and the
    consumer groups the services register (with one consumer each)."""
    for i, snap in enumerate(symbols.values()):
        s = snap.symbol
        walk = bar_walk(s, end_open_ms=now_ms - 1000, count=bars, start_price=snap.price, seed=i, source=source)
        pipe = client.pipeline(transaction=False)
        for bar in walk:
            pipe.xadd(keys.bars(s, "1s"), codec.encode(bar), id=f"{bar.open_time_ms}-0")
        batch = tick_batch(
            s,
            first_trade_id=snap.ticks_seen - 2,
            prices=[snap.price * 0.9999, snap.price * 1.0001, snap.price],
            ts_ms=now_ms,
            source=source,
        )
        pipe.xadd(keys.ticks(s), codec.encode(batch))
        status = ui_packet(
            s,
            ts_ms=now_ms,
            last_price=snap.price,
            ticks_seen=snap.ticks_seen,
            bars_seen=snap.bars_seen,
            training_packets=snap.training_packets,
            source=source,
        )
        pipe.xadd(keys.UI, codec.encode(status), maxlen=50, approximate=False)
        pipe.execute()
    for r in range(replicas):
        for k in range(5):
            packet = metrics_packet(
                f"trainer-{r}",
                ts_ms=now_ms - (4 - k) * 1000,
                step=(updates_per_replica // 5) * (k + 1),
                td_loss=0.5 / (k + 1 + r),
                updates=(updates_per_replica // 5) * (k + 1),
                packets=(updates_per_replica // 5) * (k + 1) * 4,
            )
            write(client, keys.METRICS, packet)
    write(
        client, keys.MODELS, model_announcement("dqn", "v3", ts_ms=now_ms, producer="trainer-0", parameters=3_500_000)
    )
    for symbol in symbols:
        for group, consumer in (
            (keys.GROUP_AGGREGATOR, "aggregator-1"),
            (keys.features_group("features-1"), "features-1"),
        ):
            ensure_group(client, keys.ticks(symbol), group)
            client.xreadgroup(group, consumer, {keys.ticks(symbol): ">"}, count=1)


def ensure_group(client: redis.Redis, stream: str, group: str, start_id: str = "0") -> None:
    """Create ``group`` on ``stream`` (and the stream) unless it exists."""
    try:
        client.xgroup_create(stream, group, id=start_id, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def heartbeat(
    client: redis.Redis,
    service: str,
    consumer: str,
    *,
    started_ms: int,
    updated_ms: int,
    ready: bool = True,
    pid: int = 4242,
    host: str = "host-a",
) -> None:
    """A service process's beat at ``updated_ms``, written by the services' own writer
    (:func:`unistream_common.heartbeat.queue_beat`) with the pid and host a test wants to see."""
    fields = {"service": service, "consumer": consumer, "started_ms": started_ms, "ready": int(ready), "pid": pid,
              "host": host}  # fmt: skip
    pipe = client.pipeline(transaction=False)  # as on a cluster: the hash and svc:index are in two slots
    queue_beat(pipe, service, consumer, fields, updated_ms)
    pipe.execute()


def dead_letter(
    client: redis.Redis, stream: str, reason: str, *, group: str, consumer: str, ts_ms: int, entry_id: str = "1-0"
) -> str:
    """An entry ``consumer`` gave up on, in ``<stream>:dlq`` with the fields the consumer runtime writes."""
    fields = {
        b"type": b"bar", b"v": b"1", b"data": b"\xc1",
        b"dlq_reason": reason.encode(), b"dlq_stream": stream.encode(), b"dlq_id": entry_id.encode(),
        b"dlq_group": group.encode(), b"dlq_consumer": consumer.encode(), b"dlq_ts_ms": str(ts_ms).encode(),
    }  # fmt: skip
    return client.xadd(keys.dlq(stream), fields).decode()  # type: ignore[union-attr,arg-type]


def quality_counters(client: redis.Redis, symbol: str, counts: Mapping[str, int], owner: str | None = None) -> None:
    """md:quality:{SYMBOL} with these counters (and fields), and the owning aggregator's lease."""
    client.hset(keys.quality(symbol), mapping=dict(counts))
    if owner is not None:
        client.set(keys.agg_owner(symbol), f"{owner}:1")


# --------------------------------------------------------------------------- Market and Training pages
# Builders that take exactly the values a chart or a table of those pages shows.

T0 = 1_749_999_960_000  # a minute boundary (2025-06-15 15:06:00 UTC)
assert T0 % 60_000 == 0


def bar(
    open_ms: int,
    *,
    symbol: str = "ETHUSDT",
    timeframe: str = "1s",
    o: float = 100.0,
    h: float = 101.0,
    lo: float = 99.0,
    c: float = 100.5,
    v: float = 2.0,
) -> Bar:
    return Bar(
        symbol=symbol,
        timeframe=timeframe,  # type: ignore[arg-type]
        open_time_ms=open_ms,
        close_time_ms=open_ms + keys.TIMEFRAME_MS[timeframe],
        open=o,
        high=max(h, o, c),
        low=min(lo, o, c),
        close=c,
        volume=v,
        quote_volume=v * c,
        trade_count=3,
        vwap=c,
        taker_buy_volume=v / 2,
        filled=False,
        source="REAL",
    )


def prediction_packet(ts_ms: int, symbol: str = "ETHUSDT", **probs: float) -> PredictionPacket:
    """``prediction_packet(t, p_top_1s=0.9)`` -> names ``1s.p_top`` etc. (plus an uncharted one)."""
    names = [f"{k.split('_')[-1]}.{k.rsplit('_', 1)[0]}" for k in probs] + ["1s.p_up"]
    values = [*probs.values(), 0.5]
    return PredictionPacket(
        symbol=symbol,
        ts_event_ms=ts_ms,
        price=100.0,
        model_version="cnn-r0000001",
        names=names,
        values=codec.f32_to_bytes(values),
    )


def fill(ts_ms: int, price: float, frm: float, to: float, symbol: str = "ETHUSDT") -> PaperFill:
    return PaperFill(
        symbol=symbol,
        ts_ms=ts_ms,
        price=price,
        position_from=frm,
        position_to=to,
        model_version="dqn-r0000003",
        producer="trainer-0",
    )


def metrics(producer: str, ts_ms: int, step: int = 0, **values: float) -> MetricsPacket:
    """Metric names from keyword names: ``losses__td_loss=0.1`` -> ``losses/td_loss``."""
    return MetricsPacket(
        producer=producer, ts_ms=ts_ms, step=step, metrics={k.replace("__", "/"): v for k, v in values.items()}
    )


def announcement(
    name: str, version: str, ts_ms: int, producer: str = "trainer-0", members: tuple[str, ...] = (), **m: float
) -> ModelAnnouncement:
    return ModelAnnouncement(
        name=name,
        version=version,
        ts_ms=ts_ms,
        uri=f"redis:{keys.registry(name, version)}",
        sha256="0" * 64,
        producer=producer,
        parameters=1000,
        metrics={k.replace("__", "/"): v for k, v in m.items()},
        members=list(members),
    )
