"""Redis reads of every dashboard page: one client per server process, each read cached for a second.

Every browser tab runs the page in its own thread, and every live panel refreshes about once a
second, so reads go through ``st.cache_data(ttl=1)``: all tabs share one Redis round trip per
read per second. Results are plain dataclasses of decoded packets (they are pickled into the
cache), defined here beside the reads that fill them. Entries that do not decode are returned as
:class:`Skipped` (the Overview's reads) or counted (the Market and Training reads) so the page can
show them; Redis errors (:class:`redis.RedisError`) propagate to the page, which shows a banner
and tries again on the next refresh (errors are never cached).

Each read records ``fetch_ms``, how long its Redis round trips took when it was really made (a
read served from the cache keeps the time of the fetch behind it), for the panels' captions.
The dashboard's own heartbeat (:func:`start_heartbeat`) is a daemon thread per server process,
beating as every service does (:mod:`unistream_common.heartbeat`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
import streamlit as st

from unistream_common import codec, heartbeat, keys, quality
from unistream_common.packets import (
    Bar,
    MetricsPacket,
    ModelAnnouncement,
    PaperFill,
    PredictionPacket,
    TickBatch,
    UIDataPacket,
)
from unistream_common.redisio import REDIS_ERRORS, beat_pipeline, is_cluster_client, sync_client
from unistream_common.redisio import s as text

# A page refresh must not hang on a dead server: fail fast, the next refresh tries again.
CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 2.0
CACHE_TTL_S = 1
# Status packets of all symbols share ui:packets (about one per symbol per 100 ms, ~50 retained):
# read well past the retention so every symbol's newest packet is in the window.
UI_WINDOW = 256
MODELS_WINDOW = 50  # newest ml:models entries the Overview reads
TRAINER_MODELS_WINDOW = 1_000  # the Training page's: the trainer keeps ~1,000 announcements
PREDICTIONS_WINDOW = 5_000  # newest ui:predictions entries read (the features service keeps ~5,000)
PAPER_WINDOW = 5_000  # newest ml:paper entries read (the trainer keeps ~5,000)
SERVICE_NAME = "dashboard"
TRAINER_SERVICE = "trainer"
# The trainer replicas' lease (see unistream_trainer.replicas; not imported: it pulls in torch).
TRAINER_LEADER = keys.TRAINER_LEADER
# The extrema probabilities the Market page charts: prediction names ``<timeframe>.p_top`` and ``.p_bottom``.
TOP = "p_top"
BOTTOM = "p_bottom"

T = TypeVar("T")


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


@st.cache_resource(show_spinner=False)
def redis_client(url: str) -> redis.Redis:
    """The process's Redis client for ``url`` (thread-safe pool; RESP2 pinned, bytes replies).

    Automatic retries are off: a read that fails is simply repeated by the next refresh.
    """
    return sync_client(url, "unistream-dashboard", timeout_s=READ_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S)


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Skipped:
    """An entry the dashboard could not show, and why (it is counted, never fatal)."""

    stream: str
    entry_id: str
    reason: str


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


def decode_entries(entries: Iterable[Any], cls: type[T]) -> tuple[list[T], int]:
    """The entries' packets of type ``cls`` in the given order, and how many were something else
    or did not decode."""
    out: list[T] = []
    skipped = 0
    for _, fields in entries:
        try:
            packet = codec.decode(fields)
        except codec.DecodeError:
            packet = None
        if isinstance(packet, cls):
            out.append(packet)
        else:
            skipped += 1
    return out, skipped


# --------------------------------------------------------------------------- Overview


@dataclass(frozen=True)
class StatusRead:
    """What the Training Data Stream panel needs, from one round trip.

    ``ui`` holds every status packet in the read window (newest first); ``last_ticks`` the
    newest tick-stream entry per symbol that has one.
    """

    ui: list[UIDataPacket] = field(default_factory=list)
    last_ticks: dict[str, TickBatch] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    fetch_ms: float = 0.0


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def read_status(url: str, symbols: tuple[str, ...]) -> StatusRead:
    """Newest status packets (XREVRANGE ui:packets) and the last tick entry of each symbol."""
    started = time.perf_counter()
    pipe = redis_client(url).pipeline(transaction=False)
    pipe.xrevrange(keys.UI, count=UI_WINDOW)
    for symbol in symbols:
        pipe.xrevrange(keys.ticks(symbol), count=1)
    ui_reply, *tick_replies = pipe.execute()
    fetch_ms = _elapsed_ms(started)
    skipped: list[Skipped] = []
    ui = [p for eid, f in ui_reply if (p := _decode_as(keys.UI, eid, f, UIDataPacket, skipped))]
    last_ticks: dict[str, TickBatch] = {}
    for symbol, reply in zip(symbols, tick_replies, strict=True):
        for eid, fields in reply:
            batch = _decode_as(keys.ticks(symbol), eid, fields, TickBatch, skipped)
            if batch is not None:
                last_ticks[symbol] = batch
    return StatusRead(ui=ui, last_ticks=last_ticks, skipped=skipped, fetch_ms=fetch_ms)


@dataclass(frozen=True)
class TrainingRead:
    """Trainer metrics (oldest first) and model announcements (newest first)."""

    metrics: list[MetricsPacket] = field(default_factory=list)
    models: list[ModelAnnouncement] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    fetch_ms: float = 0.0


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def read_training(url: str, metrics_count: int) -> TrainingRead:
    """The newest ``metrics_count`` entries of ml:metrics and the newest of ml:models."""
    started = time.perf_counter()
    pipe = redis_client(url).pipeline(transaction=False)
    pipe.xrevrange(keys.METRICS, count=metrics_count)
    pipe.xrevrange(keys.MODELS, count=MODELS_WINDOW)
    metrics_reply, models_reply = pipe.execute()
    fetch_ms = _elapsed_ms(started)
    skipped: list[Skipped] = []
    metrics = [
        p for eid, f in reversed(metrics_reply) if (p := _decode_as(keys.METRICS, eid, f, MetricsPacket, skipped))
    ]
    models = [p for eid, f in models_reply if (p := _decode_as(keys.MODELS, eid, f, ModelAnnouncement, skipped))]
    return TrainingRead(metrics=metrics, models=models, skipped=skipped, fetch_ms=fetch_ms)


@dataclass(frozen=True)
class Heartbeat:
    """One live ``svc:{service}:{consumer}`` hash (it expires 10 s after the process's last beat)."""

    service: str
    consumer: str
    started_ms: int | None
    updated_ms: int | None
    ready: bool
    pid: int | None = None
    host: str = ""


def _opt(raw: Mapping[str, str], name: str) -> int | None:
    try:
        return int(raw[name])
    except (KeyError, ValueError):
        return None


def parse_heartbeat(raw: Mapping[bytes | str, bytes | str]) -> Heartbeat | None:
    """A heartbeat hash as written by the services (bytes or str keys); None when it lacks a service."""
    fields = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode(errors="replace") if isinstance(v, bytes) else str(v))
        for k, v in raw.items()
    }
    if not fields.get("service"):
        return None
    return Heartbeat(
        service=fields["service"],
        consumer=fields.get("consumer", ""),
        started_ms=_opt(fields, "started_ms"),
        updated_ms=_opt(fields, "updated_ms"),
        ready=fields.get("ready", "0") == "1",
        pid=_opt(fields, "pid"),
        host=fields.get("host", ""),
    )


@dataclass(frozen=True)
class HealthRead:
    """Live service heartbeats (sorted by service, then consumer) and the trainer's leader."""

    beats: list[Heartbeat] = field(default_factory=list)
    leader: str | None = None
    fetch_ms: float = 0.0


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def read_health(url: str) -> HealthRead:
    """Every heartbeat listed in svc:index whose hash has not expired, and ml:{trainer}:leader.

    The index keeps members for a while after their process stopped; only the hashes (which
    expire 10 s after the last beat) say a process is alive.
    """
    started = time.perf_counter()
    client = redis_client(url)
    pipe = client.pipeline(transaction=False)
    pipe.zrange(keys.SERVICES, 0, -1)
    pipe.get(TRAINER_LEADER)
    members, leader = pipe.execute()
    pipe = client.pipeline(transaction=False)
    pairs = [keys.parse_service_member(m) for m in members]
    for service, consumer in pairs:
        pipe.hgetall(keys.heartbeat(service, consumer))
    hashes = pipe.execute() if pairs else []
    fetch_ms = _elapsed_ms(started)
    beats = [b for raw in hashes if raw and (b := parse_heartbeat(raw)) is not None]
    beats.sort(key=lambda b: (b.service, b.consumer))
    return HealthRead(beats=beats, leader=keys.lease_holder(leader), fetch_ms=fetch_ms)


# --------------------------------------------------------------------------- Streams


@dataclass(frozen=True)
class ConsumerInfo:
    """XINFO CONSUMERS of one consumer. ``inactive_ms`` exists from Redis 7.2 on."""

    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None = None


@dataclass(frozen=True)
class GroupInfo:
    """XINFO GROUPS of one group. ``entries_read`` and ``lag`` are None before Redis 7.0,
    and ``lag`` is also None whenever Redis cannot compute it."""

    name: str
    consumers: int
    pending: int
    last_delivered_id: str
    entries_read: int | None
    lag: int | None
    consumer_infos: tuple[ConsumerInfo, ...] = ()


@dataclass(frozen=True)
class StreamInfo:
    """XINFO STREAM of one stream. ``entries_added`` is None before Redis 7.0."""

    name: str
    length: int
    first_entry_id: str | None
    last_entry_id: str | None
    entries_added: int | None
    groups: tuple[GroupInfo, ...] = ()
    last_generated_id: str | None = None


class RateTracker:
    """Entries per second of each stream, from its ``entries-added`` counter sampled over time.

    :meth:`update` takes a sample (seconds on a monotonic clock, the counter) and returns the rate
    over the samples of the last ``window_s`` seconds, or None until two samples at least
    ``min_span_s`` apart exist. A counter that goes back (the stream was deleted, Redis restarted)
    starts over, and so does one not sampled for longer than the window (nobody watched the page):
    the rate is always a recent one. Thread-safe: one tracker serves every browser tab of a server process.
    """

    def __init__(self, window_s: float = 10.0, min_span_s: float = 0.5) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def update(self, key: str, t_s: float, count: int) -> float | None:
        with self._lock:
            samples = self._samples.setdefault(key, deque())
            if samples and (count < samples[-1][1] or not 0 <= t_s - samples[-1][0] <= self.window_s):
                samples.clear()
            if not samples or t_s > samples[-1][0]:
                samples.append((t_s, count))
            while len(samples) > 2 and t_s - samples[1][0] >= self.window_s:
                samples.popleft()
            t0, c0 = samples[0]
            if t_s - t0 < self.min_span_s:
                return None
            return (count - c0) / (t_s - t0)


@dataclass(frozen=True)
class DeadLetter:
    """One entry of a ``<stream>:dlq`` stream: why, and who gave up on it."""

    entry_id: str
    reason: str
    group: str = ""
    consumer: str = ""
    ts_ms: int | None = None


@dataclass(frozen=True)
class DeadLetters:
    """A dead-letter stream: ``stream`` is the stream whose entries it holds."""

    stream: str
    length: int
    entries_added: int | None
    latest: tuple[DeadLetter, ...] = ()


def parse_dead_letter(entry_id: str, fields: Mapping[bytes | str, bytes | str]) -> DeadLetter:
    """A dead-letter entry's ``dlq_*`` fields (a missing reason reads ``(no reason given)``)."""
    f = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode(errors="replace") if isinstance(v, bytes) else str(v))
        for k, v in fields.items()
    }
    return DeadLetter(
        entry_id=entry_id,
        reason=f.get("dlq_reason") or "(no reason given)",
        group=f.get("dlq_group", ""),
        consumer=f.get("dlq_consumer", ""),
        ts_ms=_opt(f, "dlq_ts_ms"),
    )


@dataclass(frozen=True)
class StreamsRead:
    """Statistics of the streams that exist, names of the expected ones that do not (yet), the
    dead-letter streams that exist, entries/s per stream and Redis's clock (entry ids are stamped
    with it, so entry ages are taken against it)."""

    streams: list[StreamInfo] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dead_letters: list[DeadLetters] = field(default_factory=list)
    rates: dict[str, float | None] = field(default_factory=dict)
    time_ms: int = 0
    fetch_ms: float = 0.0


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _entry_id(entry: Any) -> str | None:
    """Id of XINFO STREAM's first-entry/last-entry, which is (id, fields) or None."""
    if not entry:
        return None
    return text(entry[0])


def _is_missing(reply: Any) -> bool:
    return isinstance(reply, redis.ResponseError) and "no such key" in str(reply).lower()


@st.cache_resource(show_spinner=False)
def rate_tracker(url: str) -> RateTracker:
    """The server process's entries/s tracker for the Redis at ``url`` (shared by every tab)."""
    return RateTracker()


def _time_ms(reply: Any) -> int:
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def read_streams(url: str, symbols: tuple[str, ...], dlq_reasons: int = 3) -> StreamsRead:
    """XINFO STREAM / GROUPS / CONSUMERS of every data and history stream of these symbols, and
    the size and newest ``dlq_reasons`` entries of their dead-letter streams (two round trips).

    Streams that do not exist are listed as missing; missing dead-letter streams are the normal
    case and are not listed. Entries/s come from the ``entries-added`` counter (Redis >= 7)
    compared with earlier reads of this server process (:func:`rate_tracker`).
    """
    started = time.perf_counter()
    client = redis_client(url)
    names = keys.all_streams(symbols) + keys.history_streams(symbols)
    # The server's clock in the same round trip; a cluster pipeline refuses a keyless command, so
    # there it is a command of its own (to any node).
    cluster = is_cluster_client(client)
    pipe = client.pipeline(transaction=False)
    if not cluster:
        pipe.time()
    for name in names:
        pipe.xinfo_stream(name)
        pipe.xinfo_groups(name)
    for name in names:
        pipe.xinfo_stream(keys.dlq(name))
        pipe.xrevrange(keys.dlq(name), count=dlq_reasons)
    replies = pipe.execute(raise_on_error=False)
    time_reply = client.time() if cluster else replies.pop(0)
    if isinstance(time_reply, Exception):
        raise time_reply
    now_ms = _time_ms(time_reply)
    sampled_s = time.monotonic()

    present: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = []
    missing: list[str] = []
    for i, name in enumerate(names):
        info, groups = replies[2 * i], replies[2 * i + 1]
        if _is_missing(info):
            missing.append(name)
            continue
        for reply in (info, groups):
            if isinstance(reply, Exception):
                raise reply
        present.append((name, info, groups))
    dead_letters: list[DeadLetters] = []
    offset = 2 * len(names)
    for i, name in enumerate(names):
        info, latest = replies[offset + 2 * i], replies[offset + 2 * i + 1]
        if _is_missing(info):
            continue
        for reply in (info, latest):
            if isinstance(reply, Exception):
                raise reply
        dead_letters.append(
            DeadLetters(
                stream=name,
                length=int(info["length"]),
                entries_added=_opt_int(info.get("entries-added")),
                latest=tuple(parse_dead_letter(text(eid), fields) for eid, fields in latest),
            )
        )

    pipe = client.pipeline(transaction=False)
    for name, _, groups in present:
        for group in groups:
            pipe.xinfo_consumers(name, group["name"])
    consumer_replies = iter(pipe.execute())
    fetch_ms = _elapsed_ms(started)

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
        last_generated = info.get("last-generated-id")
        streams.append(
            StreamInfo(
                name=name,
                length=int(info["length"]),
                first_entry_id=_entry_id(info.get("first-entry")),
                last_entry_id=_entry_id(info.get("last-entry")),
                entries_added=_opt_int(info.get("entries-added")),
                groups=tuple(group_infos),
                last_generated_id=text(last_generated) if last_generated is not None else None,
            )
        )
    tracker = rate_tracker(url)
    rates = {
        s.name: tracker.update(s.name, sampled_s, s.entries_added) if s.entries_added is not None else None
        for s in streams
    }
    return StreamsRead(
        streams=streams,
        missing=missing,
        dead_letters=dead_letters,
        rates=rates,
        time_ms=now_ms,
        fetch_ms=fetch_ms,
    )


@dataclass(frozen=True)
class QualityRead:
    """Per symbol the aggregator's data-quality counters (``quality.collect_bar_quality`` rows)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    fetch_ms: float = 0.0


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def read_quality(url: str, symbols: tuple[str, ...]) -> QualityRead:
    """md:quality:{SYMBOL} and the owning aggregator of each symbol, scored as ``unistream status`` does."""
    started = time.perf_counter()
    rows = quality.collect_bar_quality(redis_client(url), list(symbols))
    return QualityRead(rows=rows, fetch_ms=_elapsed_ms(started))


# --------------------------------------------------------------------------- Market


def _charted(name: str) -> bool:
    return name.endswith((f".{TOP}", f".{BOTTOM}"))


@dataclass
class Predictions:
    """The extrema probabilities (``*.p_top``, ``*.p_bottom``) of PredictionPackets as columns,
    in the order added: ``probs[name][i]`` is row i's value (NaN where its packet had no such
    name). Columns pickle in a millisecond where thousands of small objects take tens: the
    cached read hands a copy of this to every chart every second."""

    symbols: list[str] = field(default_factory=list)
    ts_ms: list[int] = field(default_factory=list)
    probs: dict[str, list[float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts_ms)

    def add(self, packet: PredictionPacket) -> None:
        """Append one packet's row (its other predictions, such as ``p_up``, are not kept)."""
        row = len(self.ts_ms)
        values = codec.f32_from_bytes(packet.values).tolist()
        self.symbols.append(packet.symbol)
        self.ts_ms.append(packet.ts_event_ms)
        for name, value in zip(packet.names, values, strict=True):
            if _charted(name):
                column = self.probs.get(name)
                if column is None:
                    column = self.probs[name] = [math.nan] * row
                if len(column) == row:  # a name listed twice keeps its first value
                    column.append(value)
        for column in self.probs.values():
            if len(column) == row:
                column.append(math.nan)


def predictions_from(packets: Iterable[PredictionPacket]) -> Predictions:
    """:class:`Predictions` of ``packets``, in their order."""
    out = Predictions()
    for packet in packets:
        out.add(packet)
    return out


@dataclass(frozen=True)
class CandlesRead:
    """One symbol's newest bars of one timeframe (oldest first) and its forming bar."""

    bars: list[Bar] = field(default_factory=list)
    forming: Bar | None = None
    skipped: int = 0  # entries that did not decode as bars
    fetch_ms: float = 0.0


@st.cache_data(ttl=CACHE_TTL_S, max_entries=64, show_spinner=False)
def read_candles(url: str, symbol: str, timeframe: str, count: int) -> CandlesRead:
    """XREVRANGE md:bars:{SYMBOL}:TF and md:history:{SYMBOL}:TF (``count`` entries each) and HGETALL
    md:forming:{SYMBOL}:TF, one round trip. History (ingest's warm-up bars) fills the chart where no live
    bar exists yet; a live bar of the same open time replaces it."""
    started = time.perf_counter()
    pipe = redis_client(url).pipeline(transaction=False)
    pipe.xrevrange(keys.bars(symbol, timeframe), count=count)
    pipe.xrevrange(keys.history(symbol, timeframe), count=count)
    pipe.hgetall(keys.forming(symbol, timeframe))
    entries, history_entries, forming_fields = pipe.execute()
    fetch_ms = _elapsed_ms(started)
    by_open: dict[int, Bar] = {}
    skipped = 0
    for source in (history_entries, entries):  # live last: it replaces history of the same interval
        decoded, not_bars = decode_entries(reversed(source), Bar)
        skipped += not_bars
        for packet in decoded:
            by_open[packet.open_time_ms] = packet
    bars = [by_open[k] for k in sorted(by_open)][-count:]
    forming: Bar | None = None
    if forming_fields:
        try:
            packet = codec.decode(forming_fields)
        except codec.DecodeError:
            packet = None
        if isinstance(packet, Bar):
            forming = packet
        else:
            skipped += 1
    return CandlesRead(bars=bars, forming=forming, skipped=skipped, fetch_ms=fetch_ms)


@dataclass(frozen=True)
class MarkersRead:
    """The newest CNN predictions and paper fills of every symbol (oldest first)."""

    predictions: Predictions = field(default_factory=Predictions)
    fills: list[PaperFill] = field(default_factory=list)
    skipped: int = 0
    fetch_ms: float = 0.0


@st.cache_data(ttl=CACHE_TTL_S, max_entries=8, show_spinner=False)
def read_markers(url: str) -> MarkersRead:
    """XREVRANGE ui:predictions and ml:paper (the newest few thousand entries), one round trip
    shared by every chart of every tab."""
    started = time.perf_counter()
    pipe = redis_client(url).pipeline(transaction=False)
    pipe.xrevrange(keys.PREDICTIONS, count=PREDICTIONS_WINDOW)
    pipe.xrevrange(keys.PAPER, count=PAPER_WINDOW)
    prediction_entries, fill_entries = pipe.execute()
    fetch_ms = _elapsed_ms(started)
    packets, skipped = decode_entries(reversed(prediction_entries), PredictionPacket)
    predictions = Predictions()
    for packet in packets:
        try:
            predictions.add(packet)
        except ValueError:
            skipped += 1
    fills, skipped_fills = decode_entries(reversed(fill_entries), PaperFill)
    skipped += skipped_fills
    return MarkersRead(predictions=predictions, fills=fills, skipped=skipped, fetch_ms=fetch_ms)


# --------------------------------------------------------------------------- Training


@dataclass(frozen=True)
class TrainerRead:
    """Everything the training page shows, from two round trips."""

    metrics: list[MetricsPacket] = field(default_factory=list)  # oldest first
    models: list[ModelAnnouncement] = field(default_factory=list)  # oldest first
    members: dict[str, int] = field(default_factory=dict)  # replica -> heartbeat expiry (ms)
    leader: str | None = None
    heartbeats: dict[str, dict[str, str]] = field(default_factory=dict)  # replica -> svc:trainer:<name>
    skipped: int = 0
    fetch_ms: float = 0.0


@st.cache_data(ttl=CACHE_TTL_S, max_entries=16, show_spinner=False)
def read_trainer(url: str, metrics_count: int) -> TrainerRead:
    """The newest ``metrics_count`` ml:metrics entries, the newest ml:models entries, the members
    set, the lease holder, then the heartbeat hash of every replica named in svc:index or the
    members set."""
    started = time.perf_counter()
    client = redis_client(url)
    pipe = client.pipeline(transaction=False)
    pipe.xrevrange(keys.METRICS, count=metrics_count)
    pipe.xrevrange(keys.MODELS, count=TRAINER_MODELS_WINDOW)
    pipe.zrange(keys.TRAINER_MEMBERS, 0, -1, withscores=True)
    pipe.get(TRAINER_LEADER)
    pipe.zrange(keys.SERVICES, 0, -1)
    metrics_reply, models_reply, members_reply, leader_reply, services_reply = pipe.execute()
    members = {text(name): int(score) for name, score in members_reply}
    replicas = {
        consumer for service, consumer in map(keys.parse_service_member, services_reply) if service == TRAINER_SERVICE
    }
    names = sorted(set(members) | replicas)
    heartbeats: dict[str, dict[str, str]] = {}
    if names:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(keys.heartbeat(TRAINER_SERVICE, name))
        for name, beat in zip(names, pipe.execute(), strict=True):
            if beat:
                heartbeats[name] = {text(k): text(v) for k, v in beat.items()}
    fetch_ms = _elapsed_ms(started)
    metrics, skipped_metrics = decode_entries(reversed(metrics_reply), MetricsPacket)
    models, skipped_models = decode_entries(reversed(models_reply), ModelAnnouncement)
    return TrainerRead(
        metrics=metrics,
        models=models,
        members=members,
        leader=keys.lease_holder(leader_reply),
        heartbeats=heartbeats,
        skipped=skipped_metrics + skipped_models,
        fetch_ms=fetch_ms,
    )


# --------------------------------------------------------------------------- the dashboard's heartbeat


def beat_once(client: redis.Redis, consumer: str, fields: dict[str, str | int]) -> None:
    """One beat of ``svc:dashboard:{consumer}`` (as the services beat: redisio.beat_pipeline)."""
    pipe = beat_pipeline(client)
    heartbeat.queue_beat(pipe, SERVICE_NAME, consumer, fields, int(time.time() * 1000))
    pipe.execute()


@st.cache_resource(show_spinner=False)
def start_heartbeat(url: str, consumer: str, every_s: float) -> threading.Event:
    """Beat ``svc:dashboard:{consumer}`` every ``every_s`` seconds from a daemon thread (one per
    server process and Redis), as the other services do, so the Overview shows the dashboard too.

    Returns the event that stops the thread. Redis errors are ignored: the next beat tries again.
    """
    stop = threading.Event()
    client = sync_client(
        url, "unistream-dashboard-heartbeat", timeout_s=READ_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S
    )
    fields = heartbeat.beat_fields(SERVICE_NAME, consumer, started_ms=int(time.time() * 1000), ready=True)

    def run() -> None:
        while not stop.is_set():
            try:
                beat_once(client, consumer, fields)
            except REDIS_ERRORS:
                pass
            stop.wait(every_s)
        client.close()

    threading.Thread(target=run, name="unistream-dashboard-heartbeat", daemon=True).start()
    return stop
