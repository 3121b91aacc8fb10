"""Pure core of the dashboard: decoded Redis reads in, view models and display text out.

Nothing here touches Redis, Streamlit or the clock: the current time arrives as ``now_ms``
(milliseconds since the Unix epoch), so every function is a plain unit-testable mapping.

The text lines built here double as machine-readable anchors for tests. Their formats are
fixed (see :func:`symbol_status`): ``<SYMBOL> · <Label>: <value>``, integers with thousands
separators, absent values as ``n/a``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from unistream_common import codec
from unistream_common.packets import Bar, MetricsPacket, ModelAnnouncement, TickBatch, UIDataPacket

NA = "n/a"
SEP = " · "

# Metrics the RL trainer publishes under CleanRL-style namespaces.
TD_LOSS = "losses/td_loss"
EPSILON = "charts/epsilon"
UPDATES = "charts/updates"
PACKETS = "charts/packets"
_FIRST_METRICS = (TD_LOSS, EPSILON, UPDATES, PACKETS)

SOURCE_LABELS = {
    "REAL": "REAL MARKET DATA",
    "REPLAY": "REPLAY (recorded market data, not live)",
    "SYNTHETIC": "SYNTHETIC (simulated prices, not market data)",
}
SOURCE_COLOURS = {"REAL": "green", "REPLAY": "orange", "SYNTHETIC": "violet"}

# Characters that change Markdown (or Streamlit's $LaTeX$) mid-line; only these need escaping
# in names that come from other services.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~$])")


# --------------------------------------------------------------------------- formatting


def md_escape(text: str) -> str:
    """``text`` with Markdown's special characters escaped, for strings that come from outside."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def fmt_int(value: float | None) -> str:
    """``1234567`` -> ``1,234,567``; None -> ``n/a``."""
    if value is None:
        return NA
    return f"{int(value):,}"


def fmt_price(price: float | None, max_decimals: int = 8) -> str:
    """A venue price with thousands separators and the decimals it was quoted with (at least 2).

    Prices arrive as float64 whose shortest ``repr`` is the venue's decimal string (see
    ``unistream_common.packets``), so the decimals of that repr are the quoted precision:
    ``3012.5`` -> ``3,012.50``, ``0.00001234`` -> ``0.00001234``.
    """
    if price is None or not math.isfinite(price):
        return NA
    try:
        exponent = Decimal(repr(price)).as_tuple().exponent
    except InvalidOperation:
        return NA
    decimals = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    decimals = min(max(decimals, 2), max_decimals)
    return f"{price:,.{decimals}f}"


def fmt_age(age_ms: float | None) -> str:
    """A duration for humans: ``0.4 s``, ``12 s``, ``3 min``, ``2.5 h``, ``4 d``.

    Negative ages (the writer's clock runs ahead of ours) show as ``0.0 s``.
    """
    if age_ms is None:
        return NA
    seconds = max(age_ms, 0) / 1000.0
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.0f} d"


def fmt_metric(value: float | None) -> str:
    """A metric value: whole numbers with separators, others with 4 significant digits."""
    if value is None:
        return NA
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return fmt_int(value)
    return f"{value:.4g}"


def fmt_utc(ts_ms: int | None) -> str:
    """Wall-clock time of an epoch-ms timestamp, ``HH:MM:SS UTC``."""
    if ts_ms is None:
        return NA
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%H:%M:%S UTC")


def utc_datetime(ts_ms: int) -> datetime:
    """Timezone-aware UTC datetime of an epoch-ms timestamp (chart axes)."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


def id_ms(entry_id: str) -> int:
    """Millisecond part of a stream entry id such as ``1700000000000-0``."""
    return int(entry_id.split("-", 1)[0])


def id_key(entry_id: str) -> tuple[int, int]:
    """Sort key of a stream entry id (``ms-seq``), so ids compare as Redis compares them."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# --------------------------------------------------------------------------- undecodable entries


@dataclass(frozen=True)
class Skipped:
    """An entry the dashboard could not show, and why (it is counted, never fatal)."""

    stream: str
    entry_id: str
    reason: str


def skipped_text(skipped: Sequence[Skipped], shown: int = 3) -> str | None:
    """``Undecodable entries: N (stream id: reason; ...)``, or None when nothing was skipped."""
    if not skipped:
        return None
    details = "; ".join(f"{s.stream} {s.entry_id}: {s.reason}" for s in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"Undecodable entries: {len(skipped)} ({details}{more})"


# --------------------------------------------------------------------------- RL agent


@dataclass(frozen=True)
class RLSummary:
    """State of the RL trainer replicas as their latest metrics tell it.

    ``state`` is ``training`` (updates made and a replica reported recently), ``waiting``
    (no replica has made an update yet) or ``stalled`` (updates were made but no replica has
    reported for longer than the stale threshold).
    """

    state: str
    updates: int
    replicas: int
    last_report_age_ms: int | None

    @property
    def text(self) -> str:
        """``training (1,234 updates)``, ``waiting (no updates yet)`` or ``stalled (...)``."""
        if self.state == "training":
            return f"training ({fmt_int(self.updates)} updates)"
        if self.state == "stalled":
            return f"stalled (no metrics for {fmt_age(self.last_report_age_ms)}, {fmt_int(self.updates)} updates)"
        return "waiting (no updates yet)"


def latest_per_producer(metrics: Iterable[MetricsPacket]) -> dict[str, MetricsPacket]:
    """Newest packet (by ``ts_ms``, then ``step``) of each producer, producers sorted by name."""
    latest: dict[str, MetricsPacket] = {}
    for packet in metrics:
        seen = latest.get(packet.producer)
        if seen is None or (packet.ts_ms, packet.step) >= (seen.ts_ms, seen.step):
            latest[packet.producer] = packet
    return dict(sorted(latest.items()))


def rl_summary(latest: Mapping[str, MetricsPacket], now_ms: int, stale_after_ms: int) -> RLSummary:
    """Summarise the replicas: total ``charts/updates`` and whether anyone reported lately."""
    counts = (p.metrics.get(UPDATES, 0.0) for p in latest.values())
    updates = int(sum(c for c in counts if math.isfinite(c)))
    age = now_ms - max(p.ts_ms for p in latest.values()) if latest else None
    if updates <= 0:
        state = "waiting"
    elif age is not None and age > stale_after_ms:
        state = "stalled"
    else:
        state = "training"
    return RLSummary(state=state, updates=updates, replicas=len(latest), last_report_age_ms=age)


def rl_line(summary: RLSummary) -> str:
    """``RL training: training (1,234 updates), 2 replicas, last metrics 0.4 s ago``."""
    if summary.replicas == 0:
        return "RL training: waiting (no trainer has reported metrics yet)"
    replicas = "1 replica" if summary.replicas == 1 else f"{summary.replicas} replicas"
    return f"RL training: {summary.text}, {replicas}, last metrics {fmt_age(summary.last_report_age_ms)} ago"


# --------------------------------------------------------------------------- per-symbol status


@dataclass(frozen=True)
class StatusLine:
    """One anchored line of a symbol's card: ``key`` names the field, ``text`` is shown."""

    key: str
    text: str


@dataclass(frozen=True)
class SymbolStatus:
    """Everything the Training Data Stream panel shows for one symbol."""

    symbol: str
    live: bool
    source: str | None
    price: float | None
    last_tick_age_ms: int | None
    status_age_ms: int | None
    lines: tuple[StatusLine, ...]
    predictions: str | None

    @property
    def badge(self) -> str:
        """Streamlit Markdown badges for the card header: LIVE/OFFLINE and the data source."""
        live = ":green-badge[LIVE]" if self.live else ":red-badge[OFFLINE]"
        if self.source is None:
            return live
        label = SOURCE_LABELS.get(self.source, self.source).split(" (")[0]
        return f"{live} :{SOURCE_COLOURS.get(self.source, 'gray')}-badge[{label}]"

    def line(self, key: str) -> str:
        """Text of the line named ``key`` (raises KeyError when there is none)."""
        for item in self.lines:
            if item.key == key:
                return item.text
        raise KeyError(key)


def _last_tick(batch: TickBatch | None) -> tuple[float | None, int | None]:
    if batch is None or not batch.ticks:
        return None, None
    tick = batch.ticks[-1]
    return tick.price, tick.ts_recv_ms


def cnn_predictions(packet: UIDataPacket) -> list[float]:
    """The CNN's predictions carried by a status packet (empty when the bytes are malformed)."""
    try:
        return [float(v) for v in codec.f32_from_bytes(packet.cnn_predictions)]
    except codec.DecodeError:
        return []


def predictions_text(names: Sequence[str], values: Sequence[float]) -> str | None:
    """``CNN predictions: top 0.120 · bottom 0.080`` (None when the model predicts nothing)."""
    if not names or len(names) != len(values):
        return None
    parts = [f"{md_escape(n)} {v:.3f}" for n, v in zip(names, values, strict=True)]
    return "CNN predictions: " + SEP.join(parts)


def warmup_text(fill: Mapping[str, float]) -> str:
    """``complete`` when every window is full, else each timeframe's share of real bars; n/a if unknown."""
    if not fill:
        return NA
    if all(v >= 1.0 for v in fill.values()):
        return "complete"
    return SEP.join(f"{tf} {math.floor(100 * v)}%" for tf, v in fill.items())


def symbol_status(
    symbol: str,
    ui: UIDataPacket | None,
    last_ticks: TickBatch | None,
    rl: RLSummary,
    now_ms: int,
    live_after_ms: int,
) -> SymbolStatus:
    """The card of one symbol.

    ``ui`` is the newest UIDataPacket of the symbol, ``last_ticks`` the newest entry of its
    tick stream (either may be None). The price and the age of the last tick come from the
    tick stream when it has them (it is fresher than the 100 ms status packet), else from
    ``ui``. The age uses the receive time (``ts_recv_ms``) so a replay of old trades still
    counts as live while it flows. LIVE means that age is at most ``live_after_ms``.

    Lines, in order (``S`` is the symbol, numbers with thousands separators, ``n/a`` if unknown):

    - ``S · Tick cache: 1,234 / 5,000 (total 45,678)``
    - ``S · 1s bars: 120 / 3,600 (total 4,321)``
    - ``S · Stream: LIVE (last tick 0.4 s ago)`` or ``OFFLINE (...)``, ``OFFLINE (no ticks yet)``
    - ``S · Source: REAL MARKET DATA`` | ``REPLAY (...)`` | ``SYNTHETIC (...)`` | ``n/a``
    - ``S · Price: 3,012.55``
    - ``S · Training packets: 1,234``
    - ``S · Warm-up: complete`` or ``S · Warm-up: 1s 100% · 1m 100% · 1h 40% · 1d 0%``: how much of
      each timeframe's window in the training states is real bars
    - ``S · Gaps: none`` or ``S · Gaps: 2 (57 trades missing)``: runs of trades ingest could not recover
    - ``S · CNN model: TRAINING, version v3, 123,456 parameters``
    - ``S · RL agent: training (1,234 updates), 512 features``
    """
    tick_price, tick_recv_ms = _last_tick(last_ticks)
    price = tick_price if tick_price is not None else (ui.last_price if ui else None)
    last_tick_ms = tick_recv_ms if tick_recv_ms is not None else (ui.last_tick_ms if ui else None)
    age = now_ms - last_tick_ms if last_tick_ms is not None else None
    live = age is not None and age <= live_after_ms
    source = ui.source if ui else (last_ticks.source if last_ticks else None)
    head = f"{symbol}{SEP}"

    if age is None:
        stream = "OFFLINE (no ticks yet)"
    else:
        stream = f"{'LIVE' if live else 'OFFLINE'} (last tick {fmt_age(age)} ago)"

    if ui is None:
        tick_cache = bars = training = cnn = gaps = warmup = NA
        features = NA
    else:
        tick_cache = (
            f"{fmt_int(ui.tick_cache_size)} / {fmt_int(ui.tick_cache_capacity)} (total {fmt_int(ui.ticks_seen)})"
        )
        bars = f"{fmt_int(ui.bars_1s_size)} / {fmt_int(ui.bars_1s_capacity)} (total {fmt_int(ui.bars_seen)})"
        training = fmt_int(ui.training_packets)
        gaps = "none" if not ui.gaps_seen else f"{fmt_int(ui.gaps_seen)} ({fmt_int(ui.trades_missing)} trades missing)"
        untrained = " (untrained: seeded weights)" if ui.cnn.state == "INITIALISED" else ""
        cnn = f"{ui.cnn.state}{untrained}, version {md_escape(ui.cnn.version)}, {fmt_int(ui.cnn.parameters)} parameters"
        features = fmt_int(ui.rl_state_dim)
        warmup = warmup_text(ui.warmup)

    lines = (
        StatusLine("tick-cache", f"{head}Tick cache: {tick_cache}"),
        StatusLine("bars", f"{head}1s bars: {bars}"),
        StatusLine("stream", f"{head}Stream: {stream}"),
        StatusLine("source", f"{head}Source: {SOURCE_LABELS.get(source, source) if source else NA}"),
        StatusLine("price", f"{head}Price: {fmt_price(price)}"),
        StatusLine("training", f"{head}Training packets: {training}"),
        StatusLine("warmup", f"{head}Warm-up: {warmup}"),
        StatusLine("gaps", f"{head}Gaps: {gaps}"),
        StatusLine("cnn", f"{head}CNN model: {cnn}"),
        StatusLine("rl", f"{head}RL agent: {rl.text}, {features} features"),
    )
    return SymbolStatus(
        symbol=symbol,
        live=live,
        source=source,
        price=price,
        last_tick_age_ms=age,
        status_age_ms=now_ms - ui.ts_ms if ui else None,
        lines=lines,
        predictions=predictions_text(ui.prediction_names, cnn_predictions(ui)) if ui else None,
    )


def latest_ui_per_symbol(packets: Iterable[UIDataPacket], symbols: Iterable[str]) -> dict[str, UIDataPacket]:
    """Newest (by ``ts_ms``) status packet of each wanted symbol; others are ignored."""
    wanted = set(symbols)
    latest: dict[str, UIDataPacket] = {}
    for packet in packets:
        if packet.symbol not in wanted:
            continue
        seen = latest.get(packet.symbol)
        if seen is None or packet.ts_ms >= seen.ts_ms:
            latest[packet.symbol] = packet
    return latest


# --------------------------------------------------------------------------- charts


@dataclass(frozen=True)
class Candles:
    """Columns of a candlestick chart, oldest first; ``filled`` marks bars without trades."""

    symbol: str
    times_ms: list[int] = field(default_factory=list)
    open: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    close: list[float] = field(default_factory=list)
    volume: list[float] = field(default_factory=list)
    filled: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.times_ms)

    @property
    def caption(self) -> str:
        """``S · 1s candles: 300 shown, last close 3,012.55 at 12:00:59 UTC`` (or ``none yet``)."""
        if not self.times_ms:
            return f"{self.symbol}{SEP}1s candles: none yet"
        return (
            f"{self.symbol}{SEP}1s candles: {fmt_int(len(self))} shown, last close "
            f"{fmt_price(self.close[-1])} at {fmt_utc(self.times_ms[-1])}"
        )


def candles(symbol: str, bars: Iterable[Bar], limit: int) -> Candles:
    """The newest ``limit`` bars of ``symbol`` as chart columns, oldest first, one per open time.

    Bars of another symbol are dropped; a repeated open time keeps the last bar seen.
    """
    by_open: dict[int, Bar] = {}
    for bar in bars:
        if bar.symbol == symbol:
            by_open[bar.open_time_ms] = bar
    chosen = [by_open[t] for t in sorted(by_open)][-limit:] if limit > 0 else []
    return Candles(
        symbol=symbol,
        times_ms=[b.open_time_ms for b in chosen],
        open=[b.open for b in chosen],
        high=[b.high for b in chosen],
        low=[b.low for b in chosen],
        close=[b.close for b in chosen],
        volume=[b.volume for b in chosen],
        filled=[b.filled for b in chosen],
    )


def metric_series(metrics: Iterable[MetricsPacket], key: str = TD_LOSS) -> dict[str, tuple[list[int], list[float]]]:
    """Per producer, (ts_ms, value) of metric ``key`` in time order; non-finite values dropped."""
    points: dict[str, list[tuple[int, float]]] = {}
    for packet in metrics:
        value = packet.metrics.get(key)
        if value is not None and math.isfinite(value):
            points.setdefault(packet.producer, []).append((packet.ts_ms, value))
    out: dict[str, tuple[list[int], list[float]]] = {}
    for producer in sorted(points):
        ordered = sorted(points[producer])
        out[producer] = ([t for t, _ in ordered], [v for _, v in ordered])
    return out


# --------------------------------------------------------------------------- tables


def metrics_rows(latest: Mapping[str, MetricsPacket], now_ms: int) -> list[dict[str, str]]:
    """One row per trainer replica: replica, step, age, then td_loss, epsilon, updates, packets
    and every other metric (sorted), all as display strings so the table never mixes types."""
    keys = [k for k in _FIRST_METRICS if any(k in p.metrics for p in latest.values())]
    keys += sorted({k for p in latest.values() for k in p.metrics} - set(_FIRST_METRICS))
    rows = []
    for producer, packet in latest.items():
        row = {"replica": producer, "step": fmt_int(packet.step), "updated": f"{fmt_age(now_ms - packet.ts_ms)} ago"}
        for key in keys:
            row[key] = fmt_metric(packet.metrics.get(key))
        rows.append(row)
    return rows


def model_rows(announcements: Iterable[ModelAnnouncement], now_ms: int, limit: int = 10) -> list[dict[str, str]]:
    """Newest model announcements first (at most ``limit``), as display strings."""
    ordered = sorted(announcements, key=lambda a: a.ts_ms, reverse=True)[:limit]
    return [
        {
            "model": a.name,
            "version": a.version,
            "producer": a.producer,
            "parameters": fmt_int(a.parameters),
            "announced": f"{fmt_age(now_ms - a.ts_ms)} ago",
            "metrics": ", ".join(f"{k} {fmt_metric(v)}" for k, v in sorted(a.metrics.items())),
            "uri": a.uri,
        }
        for a in ordered
    ]


# --------------------------------------------------------------------------- stream statistics


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


def overrun(stream: StreamInfo, group: GroupInfo) -> int | None:
    """Entries trimmed from ``stream`` before ``group`` read them: a count, -1 when some were lost
    but the count is unknown, 0 when none, None when it cannot be told.

    Trimming ignores consumer groups and leaves Redis's ``lag`` wrong, so this is computed:
    with Redis 7 counters, the group missed (entries added - length) - entries read; without
    them, a first entry newer than the group's last-delivered id after entries were removed
    means something was lost (how much is unknown).
    """
    if stream.entries_added is not None and group.entries_read is not None:
        return max(stream.entries_added - stream.length - group.entries_read, 0)
    if stream.first_entry_id is None:
        return None
    removed = stream.entries_added is None or stream.entries_added > stream.length
    if removed and id_key(stream.first_entry_id) > id_key(group.last_delivered_id):
        return -1
    return 0 if stream.entries_added is not None else None


def stream_rows(streams: Iterable[StreamInfo], now_ms: int) -> list[dict[str, str]]:
    """One row per stream: entries, total added, newest entry's age, first/last id, groups."""
    return [
        {
            "stream": s.name,
            "entries": fmt_int(s.length),
            "added": fmt_int(s.entries_added),
            "newest": f"{fmt_age(now_ms - id_ms(s.last_entry_id))} ago" if s.last_entry_id else NA,
            "first id": s.first_entry_id or NA,
            "last id": s.last_entry_id or NA,
            "groups": fmt_int(len(s.groups)),
        }
        for s in streams
    ]


def _overrun_text(missed: int | None) -> str:
    if missed is None:
        return NA
    if missed == 0:
        return "ok"
    if missed < 0:
        return "OVERRUN (entries trimmed before read)"
    return f"OVERRUN ({fmt_int(missed)} trimmed before read)"


def group_rows(streams: Iterable[StreamInfo]) -> list[dict[str, str]]:
    """One row per (stream, group): consumers, pending, lag (``n/a`` when Redis reports none),
    last delivered id, entries read and whether trimming overran the group."""
    return [
        {
            "stream": s.name,
            "group": g.name,
            "consumers": fmt_int(g.consumers),
            "pending": fmt_int(g.pending),
            "lag": fmt_int(g.lag),
            "last delivered": g.last_delivered_id,
            "read": fmt_int(g.entries_read),
            "trimmed": _overrun_text(overrun(s, g)),
        }
        for s in streams
        for g in s.groups
    ]


def consumer_rows(streams: Iterable[StreamInfo]) -> list[dict[str, str]]:
    """One row per consumer: its pending entries, idle time, and inactive time when known."""
    return [
        {
            "stream": s.name,
            "group": g.name,
            "consumer": c.name,
            "pending": fmt_int(c.pending),
            "idle": fmt_age(c.idle_ms),
            "inactive": fmt_age(c.inactive_ms) if c.inactive_ms is not None and c.inactive_ms >= 0 else NA,
        }
        for s in streams
        for g in s.groups
        for c in g.consumer_infos
    ]


def streams_line(streams: Sequence[StreamInfo], missing: Sequence[str]) -> str:
    """``Streams: 9 present, 5 not created yet · groups 3 · consumers 4 · pending 12``."""
    groups = [g for s in streams for g in s.groups]
    consumers = sum(len(g.consumer_infos) for g in groups)
    pending = sum(g.pending for g in groups)
    return (
        f"Streams: {len(streams)} present, {len(missing)} not created yet{SEP}groups {len(groups)}"
        f"{SEP}consumers {consumers}{SEP}pending {fmt_int(pending)}"
    )
