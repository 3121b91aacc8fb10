"""Redis reads of the dashboard: one client per server process, each read cached for a second.

Every browser tab runs the page in its own thread, and every live panel refreshes about once a
second, so reads go through ``st.cache_data(ttl=1)``: all tabs share one Redis round trip per
read per second. Results are plain dataclasses of decoded packets (they are pickled into the
cache). Entries that do not decode are returned as :class:`~unistream_dashboard.view.Skipped`
so the page can count and show them; Redis errors (:class:`redis.RedisError`) propagate to the
page, which shows a banner and tries again on the next refresh (errors are never cached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
import streamlit as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from unistream_common import codec, keys
from unistream_common.packets import Bar, MetricsPacket, ModelAnnouncement, TickBatch, UIDataPacket
from unistream_common.redisio import PROTOCOL
from unistream_common.redisio import s as text
from unistream_dashboard.view import ConsumerInfo, GroupInfo, Skipped, StreamInfo

# A page refresh must not hang on a dead server: fail fast, the next refresh tries again.
CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 2.0
CACHE_TTL_S = 1
# Status packets of all symbols share ui:packets (about one per symbol per 100 ms, ~50 retained):
# read well past the retention so every symbol's newest packet is in the window.
UI_WINDOW = 256
MODELS_WINDOW = 50

T = TypeVar("T")


@st.cache_resource(show_spinner=False)
def redis_client(url: str) -> redis.Redis:
    """The process's Redis client for ``url`` (thread-safe pool; RESP2 pinned, bytes replies).

    Automatic retries are off: a read that fails is simply repeated by the next refresh.
    """
    return redis.Redis.from_url(
        url,
        protocol=PROTOCOL,
        decode_responses=False,
        socket_timeout=READ_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
        health_check_interval=0,
        client_name="unistream-dashboard",
    )


def _decode_as(stream: str, entry_id: Any, fields: Any, cls: type[T], skipped: list[Skipped]) -> T | None:
    """Decode one entry as ``cls``; on failure record why in ``skipped`` and return None."""
    eid = text(entry_id)
    try:
        packet = codec.decode(fields)
    except codec.DecodeError as exc:
        skipped.append(Skipped(stream, eid, str(exc)))
        return None
    if not isinstance(packet, cls):
        skipped.append(Skipped(stream, eid, f"expected a {cls.TYPE} packet, got {packet.TYPE}"))  # type: ignore[attr-defined]
        return None
    return packet


@dataclass(frozen=True)
class StatusRead:
    """What the Training Data Stream panel needs, from one round trip.

    ``ui`` holds every status packet in the read window (newest first); ``last_ticks`` the
    newest tick-stream entry per symbol that has one.
    """

    ui: list[UIDataPacket] = field(default_factory=list)
    last_ticks: dict[str, TickBatch] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def read_status(url: str, symbols: tuple[str, ...]) -> StatusRead:
    """Newest status packets (XREVRANGE ui:packets) and the last tick entry of each symbol."""
    pipe = redis_client(url).pipeline(transaction=False)
    pipe.xrevrange(keys.UI, count=UI_WINDOW)
    for symbol in symbols:
        pipe.xrevrange(keys.ticks(symbol), count=1)
    ui_reply, *tick_replies = pipe.execute()
    skipped: list[Skipped] = []
    ui = [p for eid, f in ui_reply if (p := _decode_as(keys.UI, eid, f, UIDataPacket, skipped))]
    last_ticks: dict[str, TickBatch] = {}
    for symbol, reply in zip(symbols, tick_replies, strict=True):
        for eid, fields in reply:
            batch = _decode_as(keys.ticks(symbol), eid, fields, TickBatch, skipped)
            if batch is not None:
                last_ticks[symbol] = batch
    return StatusRead(ui=ui, last_ticks=last_ticks, skipped=skipped)


@dataclass(frozen=True)
class BarsRead:
    """1s bars of each symbol, oldest first."""

    bars: dict[str, list[Bar]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def read_bars(url: str, symbols: tuple[str, ...], count: int) -> BarsRead:
    """The newest ``count`` 1s bars of every symbol (XREVRANGE, one round trip)."""
    pipe = redis_client(url).pipeline(transaction=False)
    for symbol in symbols:
        pipe.xrevrange(keys.bars(symbol, "1s"), count=count)
    skipped: list[Skipped] = []
    out: dict[str, list[Bar]] = {}
    for symbol, reply in zip(symbols, pipe.execute(), strict=True):
        stream = keys.bars(symbol, "1s")
        decoded = (_decode_as(stream, eid, f, Bar, skipped) for eid, f in reversed(reply))
        out[symbol] = [b for b in decoded if b is not None]
    return BarsRead(bars=out, skipped=skipped)


@dataclass(frozen=True)
class TrainingRead:
    """Trainer metrics (oldest first) and model announcements (newest first)."""

    metrics: list[MetricsPacket] = field(default_factory=list)
    models: list[ModelAnnouncement] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def read_training(url: str, metrics_count: int) -> TrainingRead:
    """The newest ``metrics_count`` entries of ml:metrics and the newest of ml:models."""
    pipe = redis_client(url).pipeline(transaction=False)
    pipe.xrevrange(keys.METRICS, count=metrics_count)
    pipe.xrevrange(keys.MODELS, count=MODELS_WINDOW)
    metrics_reply, models_reply = pipe.execute()
    skipped: list[Skipped] = []
    metrics = [
        p for eid, f in reversed(metrics_reply) if (p := _decode_as(keys.METRICS, eid, f, MetricsPacket, skipped))
    ]
    models = [p for eid, f in models_reply if (p := _decode_as(keys.MODELS, eid, f, ModelAnnouncement, skipped))]
    return TrainingRead(metrics=metrics, models=models, skipped=skipped)


@dataclass(frozen=True)
class StreamsRead:
    """Statistics of the streams that exist; names of the expected ones that do not (yet)."""

    streams: list[StreamInfo] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _entry_id(entry: Any) -> str | None:
    """Id of XINFO STREAM's first-entry/last-entry, which is (id, fields) or None."""
    if not entry:
        return None
    return text(entry[0])


def _is_missing(reply: Any) -> bool:
    return isinstance(reply, redis.ResponseError) and "no such key" in str(reply).lower()


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def read_streams(url: str, symbols: tuple[str, ...]) -> StreamsRead:
    """XINFO STREAM / GROUPS / CONSUMERS of every stream of these symbols and of their
    dead-letter streams (two round trips). Streams that do not exist are listed as missing;
    missing dead-letter streams are the normal case and are not listed."""
    client = redis_client(url)
    data_streams = keys.all_streams(symbols)
    candidates = [(name, False) for name in data_streams] + [(keys.dlq(name), True) for name in data_streams]
    pipe = client.pipeline(transaction=False)
    for name, _ in candidates:
        pipe.xinfo_stream(name)
        pipe.xinfo_groups(name)
    replies = pipe.execute(raise_on_error=False)

    present: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = []
    missing: list[str] = []
    for i, (name, is_dlq) in enumerate(candidates):
        info, groups = replies[2 * i], replies[2 * i + 1]
        if _is_missing(info):
            if not is_dlq:
                missing.append(name)
            continue
        for reply in (info, groups):
            if isinstance(reply, Exception):
                raise reply
        present.append((name, info, groups))

    pipe = client.pipeline(transaction=False)
    for name, _, groups in present:
        for group in groups:
            pipe.xinfo_consumers(name, group["name"])
    consumer_replies = iter(pipe.execute())

    streams: list[StreamInfo] = []
    for name, info, groups in present:
        group_infos = []
        for group in groups:
            consumers = tuple(
                ConsumerInfo(
                    name=text(c["name"]),
                    pending=int(c["pending"]),
                    idle_ms=int(c["idle"]),
                    inactive_ms=_opt_int(c.get("inactive")),
                )
                for c in next(consumer_replies)
            )
            group_infos.append(
                GroupInfo(
                    name=text(group["name"]),
                    consumers=int(group["consumers"]),
                    pending=int(group["pending"]),
                    last_delivered_id=text(group["last-delivered-id"]),
                    entries_read=_opt_int(group.get("entries-read")),
                    lag=_opt_int(group.get("lag")),
                    consumer_infos=consumers,
                )
            )
        streams.append(
            StreamInfo(
                name=name,
                length=int(info["length"]),
                first_entry_id=_entry_id(info.get("first-entry")),
                last_entry_id=_entry_id(info.get("last-entry")),
                entries_added=_opt_int(info.get("entries-added")),
                groups=tuple(group_infos),
            )
        )
    return StreamsRead(streams=streams, missing=missing)
