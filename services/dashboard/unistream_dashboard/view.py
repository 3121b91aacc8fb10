"""Pure core of the dashboard: decoded Redis reads in, view models and display text out.

Nothing here touches Redis, Streamlit or the clock (:class:`RateTracker` takes its times as arguments): the current time arrives as ``now_ms``
(milliseconds since the Unix epoch), so every function is a plain unit-testable mapping.

The text lines built here double as machine-readable anchors for tests. Their formats are
fixed (see :func:`symbol_status`): ``<SYMBOL> · <Label>: <value>``, integers with thousands
separators, absent values as ``n/a``.
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from unistream_common import codec
from unistream_common.groups import group_overrun
from unistream_common.keys import TIMEFRAMES
from unistream_common.packets import MetricsPacket, ModelAnnouncement, ModelStatus, TickBatch, UIDataPacket

NA = "n/a"
SEP = " · "

# Metrics the RL trainer publishes under CleanRL-style namespaces.
UPDATES = "charts/updates"
DQN_MODEL = "dqn"  # ModelAnnouncement.name of the RL agent's checkpoints

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


def fmt_fetch(ms: float) -> str:
    """How long a read took: ``0.4 ms``, ``12 ms``."""
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:,.0f} ms"


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


# --------------------------------------------------------------------------- per-symbol status

LIVE, STALE, OFFLINE = "LIVE", "STALE", "OFFLINE"
STATE_COLOURS = {LIVE: "green", STALE: "orange", OFFLINE: "red"}


def stream_state(age_ms: int | None, live_after_ms: int, stale_after_ms: int) -> str:
    """LIVE while the last tick is at most ``live_after_ms`` old, STALE up to ``stale_after_ms``
    (never below ``live_after_ms``), OFFLINE beyond or without any tick."""
    if age_ms is None:
        return OFFLINE
    if age_ms <= live_after_ms:
        return LIVE
    if age_ms <= max(stale_after_ms, live_after_ms):
        return STALE
    return OFFLINE


@dataclass(frozen=True)
class AgentView:
    """What every symbol card says about the learners (the trainer is shared by all symbols).

    ``rl``: the replicas' summary; ``dqn_version``: the newest announced ``dqn`` checkpoint;
    ``extrema`` and ``sensitivity``: the Enhanced RL status texts (see :func:`extrema_text`,
    :func:`sensitivity_text`).
    """

    rl: RLSummary
    dqn_version: str | None = None
    extrema: str = "waiting (no trainer metrics yet)"
    sensitivity: str = "waiting (no trainer metrics yet)"


def newest_model(announcements: Iterable[ModelAnnouncement], name: str) -> ModelAnnouncement | None:
    """The newest (by ``ts_ms``) announcement of model ``name``, or None."""
    chosen = None
    for a in announcements:
        if a.name == name and (chosen is None or a.ts_ms > chosen.ts_ms):
            chosen = a
    return chosen


def newest_with(metrics: Iterable[MetricsPacket], key: str) -> MetricsPacket | None:
    """The newest (by ``ts_ms``, then ``step``) packet whose metrics have a key starting with ``key``."""
    chosen = None
    for p in metrics:
        if any(k.startswith(key) for k in p.metrics) and (
            chosen is None or (p.ts_ms, p.step) >= (chosen.ts_ms, chosen.step)
        ):
            chosen = p
    return chosen


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def extrema_text(packet: MetricsPacket | None) -> str:
    """Extrema learning from the newest ``extrema/*`` metrics: labels so far, then PR-AUC against the
    random baseline (positive rate) at the finest timeframe that has one.

    ``1,234 labelled (1s 1,200 · 1m 34), PR-AUC 1s top 0.312 vs baseline 0.120, bottom 0.280 vs baseline 0.110``;
    ``waiting (no labelled extrema yet)`` before the first label.
    """
    if packet is None:
        return "waiting (no labelled extrema yet)"
    m = packet.metrics
    labelled = {tf: n for tf in TIMEFRAMES if (n := _finite(m.get(f"extrema/labelled_{tf}"))) is not None}
    if not labelled or not sum(labelled.values()):
        return "waiting (no labelled extrema yet)"
    text = (
        f"{fmt_int(sum(labelled.values()))} labelled ({SEP.join(f'{tf} {fmt_int(n)}' for tf, n in labelled.items())})"
    )
    for tf in TIMEFRAMES:
        parts = []
        for name in ("top", "bottom"):
            pr = _finite(m.get(f"extrema/pr_auc_{name}_{tf}"))
            base = _finite(m.get(f"extrema/baseline_{name}_{tf}"))
            if pr is not None:
                parts.append(f"{name} {pr:.3f} vs baseline {f'{base:.3f}' if base is not None else NA}")
        if parts:
            return f"{text}, PR-AUC {tf} " + ", ".join(parts)
    return f"{text}, PR-AUC n/a (no extremum in the scoring window yet)"


def sensitivity_text(packet: MetricsPacket | None) -> str:
    """Sensitivity learning from the newest ``sensitivity/*`` metrics: trades scored and the edge
    (mean reward less the baseline's, log-return units) with its t statistic.

    ``45 trades, edge +0.00123 (t 1.80)``; ``0 trades (no edge yet)``; ``waiting (...)`` without metrics.
    """
    if packet is None:
        return "waiting (no sensitivity metrics yet)"
    trades = _finite(packet.metrics.get("sensitivity/trades"))
    if not trades:
        return "0 trades (no edge yet)"
    edge = _finite(packet.metrics.get("sensitivity/edge"))
    t = _finite(packet.metrics.get("sensitivity/edge_t"))
    edge_text = NA if edge is None else f"{edge:+.3g}"
    return f"{fmt_int(trades)} trades, edge {edge_text}" + (f" (t {t:.2f})" if t is not None else "")


def agent_view(
    metrics: Sequence[MetricsPacket], models: Iterable[ModelAnnouncement], now_ms: int, stale_metrics_ms: int
) -> AgentView:
    """The learners as the symbol cards show them, from the trainer's metrics and announcements."""
    dqn = newest_model(models, DQN_MODEL)
    return AgentView(
        rl=rl_summary(latest_per_producer(metrics), now_ms, stale_metrics_ms),
        dqn_version=dqn.version if dqn else None,
        extrema=extrema_text(newest_with(metrics, "extrema/labelled_")),
        sensitivity=sensitivity_text(newest_with(metrics, "sensitivity/")),
    )


@dataclass(frozen=True)
class StatusLine:
    """One anchored line of a symbol's card: ``key`` names the field, ``text`` is shown."""

    key: str
    text: str


@dataclass(frozen=True)
class SymbolStatus:
    """Everything the Training Data Stream panel shows for one symbol."""

    symbol: str
    state: str
    source: str | None
    price: float | None
    last_tick_age_ms: int | None
    status_age_ms: int | None
    lines: tuple[StatusLine, ...]
    predictions: str | None
    warmup: float | None = None

    @property
    def live(self) -> bool:
        return self.state == LIVE

    @property
    def badge(self) -> str:
        """Streamlit Markdown badges for the card header: LIVE/STALE/OFFLINE and the data source."""
        state = f":{STATE_COLOURS[self.state]}-badge[{self.state}]"
        if self.source is None:
            return state
        label = SOURCE_LABELS.get(self.source, self.source).split(" (")[0]
        return f"{state} :{SOURCE_COLOURS.get(self.source, 'gray')}-badge[{label}]"

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


def warmup_fill(fill: Mapping[str, float]) -> float | None:
    """Overall warm-up progress in [0, 1]: the mean share of real bars over the timeframes (None if unknown)."""
    values = [min(max(v, 0.0), 1.0) for v in fill.values() if math.isfinite(v)]
    return sum(values) / len(values) if values else None


def cnn_text(status: ModelStatus, now_ms: int) -> str:
    """``version v3, trained (LOADED), 123,456 parameters, last reload 12:00:00 UTC (4.0 s ago)``.

    INITIALISED means seeded, untrained weights (the features service has not loaded a checkpoint
    the trainer published yet); ``updated_ms`` is when the weights in use were initialised or loaded.
    """
    if status.state == "INITIALISED":
        kind, when = "untrained (INITIALISED: seeded weights)", "initialised"
    elif status.state == "ERROR":
        kind, when = "ERROR (weights failed to load)", "last change"
    else:
        kind, when = f"trained ({status.state})", "last reload"
    at = f"{fmt_utc(status.updated_ms)} ({fmt_age(now_ms - status.updated_ms)} ago)" if status.updated_ms else NA
    return f"version {md_escape(status.version)}, {kind}, {fmt_int(status.parameters)} parameters, {when} {at}"


def symbol_status(
    symbol: str,
    ui: UIDataPacket | None,
    last_ticks: TickBatch | None,
    agent: AgentView,
    now_ms: int,
    live_after_ms: int,
    stale_after_ms: int,
) -> SymbolStatus:
    """The card of one symbol.

    ``ui`` is the newest UIDataPacket of the symbol, ``last_ticks`` the newest entry of its
    tick stream (either may be None). The price and the age of the last tick come from the
    tick stream when it has them (it is fresher than the 100 ms status packet), else from
    ``ui``. The age uses the receive time (``ts_recv_ms``) so a replay of old trades still
    counts as live while it flows; see :func:`stream_state` for LIVE / STALE / OFFLINE.

    Lines, in order (``S`` is the symbol, numbers with thousands separators, ``n/a`` if unknown):

    - ``S · Tick cache: 1,234 / 5,000 (total 45,678)``
    - ``S · 1s bars: 120 / 3,600 (total 4,321)``: buffered / capacity (live bars taken in since the
      features service started); while the buffer still holds warm-up bars from ingest's history,
      ``S · 1s bars: 304 / 1,000 (total 4), 300 of them history``
    - ``S · Stream: LIVE (last tick 0.4 s ago)``, ``STALE (...)``, ``OFFLINE (...)`` or ``OFFLINE (no ticks yet)``
    - ``S · Source: REAL MARKET DATA`` | ``REPLAY (...)`` | ``SYNTHETIC (...)`` | ``n/a``
    - ``S · Price: 3,012.55``
    - ``S · Training packets: 1,234``
    - ``S · Warm-up: complete`` or ``S · Warm-up: 1s 100% · 1m 100% · 1h 40% · 1d 0%``: how much of
      each timeframe's window in the training states is real bars
    - ``S · Gaps: none`` or ``S · Gaps: 2 (57 trades missing)``: runs of trades ingest could not recover
    - ``S · CNN model: version v3, trained (LOADED), 123,456 parameters, last reload 12:00:00 UTC (4.0 s ago)``
      (see :func:`cnn_text`)
    - ``S · RL agent: training (1,234 updates), 512 features, model v7`` (``no model announced yet``)
    - ``S · Extrema learning: ...`` (:func:`extrema_text`) and ``S · Sensitivity: ...``
      (:func:`sensitivity_text`): the Enhanced RL learners
    """
    tick_price, tick_recv_ms = _last_tick(last_ticks)
    price = tick_price if tick_price is not None else (ui.last_price if ui else None)
    last_tick_ms = tick_recv_ms if tick_recv_ms is not None else (ui.last_tick_ms if ui else None)
    age = now_ms - last_tick_ms if last_tick_ms is not None else None
    state = stream_state(age, live_after_ms, stale_after_ms)
    source = ui.source if ui else (last_ticks.source if last_ticks else None)
    head = f"{symbol}{SEP}"
    stream = f"{state} (no ticks yet)" if age is None else f"{state} (last tick {fmt_age(age)} ago)"

    if ui is None:
        tick_cache = bars = training = cnn = gaps = warmup = NA
        features = NA
    else:
        tick_cache = (
            f"{fmt_int(ui.tick_cache_size)} / {fmt_int(ui.tick_cache_capacity)} (total {fmt_int(ui.ticks_seen)})"
        )
        bars = f"{fmt_int(ui.bars_1s_size)} / {fmt_int(ui.bars_1s_capacity)} (total {fmt_int(ui.bars_seen)})"
        if ui.bars_1s_size > ui.bars_seen:  # the rest of the buffer is warm-up history
            bars += f", {fmt_int(ui.bars_1s_size - ui.bars_seen)} of them history"
        training = fmt_int(ui.training_packets)
        gaps = "none" if not ui.gaps_seen else f"{fmt_int(ui.gaps_seen)} ({fmt_int(ui.trades_missing)} trades missing)"
        cnn = cnn_text(ui.cnn, now_ms)
        features = fmt_int(ui.rl_state_dim)
        warmup = warmup_text(ui.warmup)
    model = f"model {md_escape(agent.dqn_version)}" if agent.dqn_version else "no model announced yet"

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
        StatusLine("rl", f"{head}RL agent: {agent.rl.text}, {features} features, {model}"),
        StatusLine("extrema", f"{head}Extrema learning: {agent.extrema}"),
        StatusLine("sensitivity", f"{head}Sensitivity: {agent.sensitivity}"),
    )
    return SymbolStatus(
        symbol=symbol,
        state=state,
        source=source,
        price=price,
        last_tick_age_ms=age,
        status_age_ms=now_ms - ui.ts_ms if ui else None,
        lines=lines,
        predictions=predictions_text(ui.prediction_names, cnn_predictions(ui)) if ui else None,
        warmup=warmup_fill(ui.warmup) if ui else None,
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


# --------------------------------------------------------------------------- service health

SERVICE_NAMES: tuple[str, ...] = ("ingest", "aggregator", "features", "trainer", "dashboard")
READY, DEGRADED, NOT_READY, DOWN = "READY", "DEGRADED", "NOT READY", "DOWN"
HEALTH_COLOURS = {READY: "green", DEGRADED: "orange", NOT_READY: "orange", DOWN: "red"}


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
class ServiceHealth:
    """The health card of one service: its state, anchored lines (``<service> · <Label>: <value>``)
    and one caption line per live replica."""

    service: str
    state: str
    replicas: int
    ready_replicas: int
    uptime_ms: int | None
    last_beat_age_ms: int | None
    lines: tuple[StatusLine, ...]
    details: tuple[str, ...] = ()

    @property
    def badge(self) -> str:
        return f":{HEALTH_COLOURS[self.state]}-badge[{self.state}]"

    def line(self, key: str) -> str:
        for item in self.lines:
            if item.key == key:
                return item.text
        raise KeyError(key)


def fmt_uptime(ms: int | None) -> str:
    """A process's uptime: ``45 s``, ``12 min``, ``3 h 20 min``, ``2 d 4 h``; n/a if unknown."""
    if ms is None:
        return NA
    seconds = max(int(ms // 1000), 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86_400
    if seconds < 120:
        return f"{seconds} s"
    if minutes < 60:
        return f"{minutes} min"
    if hours < 48:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


def service_health(service: str, beats: Iterable[Heartbeat], now_ms: int, leader: str | None = None) -> ServiceHealth:
    """The card of ``service`` from its live heartbeats (those of other services are ignored).

    State: READY when every replica says ready, DEGRADED when some do, NOT READY when none does,
    DOWN without any heartbeat. Uptime is the longest-running replica's (now - started_ms), the
    last beat the newest replica's. Lines:

    - ``S · Status: READY`` | ``DEGRADED (1 of 2 replicas ready)`` | ``NOT READY`` | ``DOWN (no heartbeat)``
    - ``S · Replicas: 2 (2 ready)``
    - ``S · Uptime: 3 h 20 min``
    - ``S · Last beat: 0.8 s ago``
    - trainer only, when a replica holds the lease: ``trainer · Leader: trainer-a``
    """
    mine = sorted((b for b in beats if b.service == service), key=lambda b: b.consumer)
    ready = sum(b.ready for b in mine)
    if not mine:
        state, status = DOWN, f"{DOWN} (no heartbeat)"
    elif ready == len(mine):
        state, status = READY, READY
    elif ready:
        state, status = DEGRADED, f"{DEGRADED} ({ready} of {len(mine)} replicas ready)"
    else:
        state, status = NOT_READY, NOT_READY
    starts = [b.started_ms for b in mine if b.started_ms]
    beats_ms = [b.updated_ms for b in mine if b.updated_ms]
    uptime = now_ms - min(starts) if starts else None
    age = now_ms - max(beats_ms) if beats_ms else None
    head = f"{md_escape(service)}{SEP}"
    lines = [
        StatusLine("status", f"{head}Status: {status}"),
        StatusLine("replicas", f"{head}Replicas: {len(mine)} ({ready} ready)"),
        StatusLine("uptime", f"{head}Uptime: {fmt_uptime(uptime)}"),
        StatusLine("beat", f"{head}Last beat: {f'{fmt_age(age)} ago' if age is not None else NA}"),
    ]
    if service == "trainer" and leader:
        lines.append(StatusLine("leader", f"{head}Leader: {md_escape(leader)}"))
    details = tuple(
        f"{md_escape(b.consumer)}: {'ready' if b.ready else 'not ready'}, up "
        f"{fmt_uptime(now_ms - b.started_ms if b.started_ms else None)}"
        + (f", pid {b.pid}" if b.pid else "")
        + (f" on {md_escape(b.host)}" if b.host else "")
        for b in mine
    )
    return ServiceHealth(service, state, len(mine), ready, uptime, age, tuple(lines), details)


def services_line(health: Sequence[ServiceHealth]) -> str:
    """``Services: 4 of 5 up · 3 ready``."""
    up = sum(h.state != DOWN for h in health)
    ready = sum(h.state == READY for h in health)
    return f"Services: {up} of {len(health)} up{SEP}{ready} ready"


# --------------------------------------------------------------------------- charts


# --------------------------------------------------------------------------- tables


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


def fmt_rate(rate: float | None) -> str:
    """Entries per second: ``0``, ``0.5``, ``12.3``, ``1,234``; n/a when unknown."""
    if rate is None or not math.isfinite(rate):
        return NA
    if rate >= 100:
        return fmt_int(round(rate))
    if rate == 0:
        return "0"
    return f"{rate:.1f}" if rate >= 0.05 else f"{rate:.2g}"


def overrun_count(stream: StreamInfo, group: GroupInfo) -> int | None:
    """Entries trimmed from ``stream`` before ``group`` read them: a count when Redis >= 7's counters
    tell it, else None. Only meaningful when :func:`overrun_alarm` raised an alarm."""
    if stream.entries_added is None or group.entries_read is None:
        return None
    return max(stream.entries_added - stream.length - group.entries_read, 0)


def overrun_alarm(stream: StreamInfo, group: GroupInfo) -> str | None:
    """``OVERRUN: 2 entries trimmed before this group read them`` (or without a count when Redis
    cannot tell how many) when trimming removed entries the group had not read, else None.

    The judgement is :func:`unistream_common.tools.group_overrun`, the one ``unistream status`` uses.
    """
    last_generated = stream.last_generated_id or stream.last_entry_id or group.last_delivered_id
    lost = group_overrun(
        group.last_delivered_id,
        group.entries_read,
        stream.length,
        stream.first_entry_id,
        last_generated,
        stream.entries_added,
    )
    if not lost:
        return None
    count = overrun_count(stream, group)
    if count:
        return f"OVERRUN: {fmt_int(count)} {'entry' if count == 1 else 'entries'} trimmed before this group read them"
    return "OVERRUN: entries trimmed before this group read them"


def overrun_alarms(streams: Iterable[StreamInfo]) -> list[str]:
    """One alarm line per overrun group: ``md:ticks:{ETHUSDT} · group aggregator: OVERRUN: ...``."""
    return [
        f"{md_escape(s.name)}{SEP}group {md_escape(g.name)}: {alarm}"
        for s in streams
        for g in s.groups
        if (alarm := overrun_alarm(s, g))
    ]


def _rate_cell(stream: StreamInfo, rate: float | None) -> str:
    if rate is not None:
        return fmt_rate(rate)
    return "measuring" if stream.entries_added is not None else f"{NA} (Redis < 7)"


def stream_rows(
    streams: Iterable[StreamInfo], now_ms: int, rates: Mapping[str, float | None] | None = None
) -> list[dict[str, str]]:
    """One row per stream: entries, entries/s, total added, last entry's age, groups, first/last id.

    ``entries/s`` says ``measuring`` until two reads of the counter are apart, and n/a on Redis < 7
    (which keeps no counter).
    """
    rates = rates or {}
    return [
        {
            "stream": s.name,
            "entries": fmt_int(s.length),
            "entries/s": _rate_cell(s, rates.get(s.name)),
            "added": fmt_int(s.entries_added),
            "last entry": f"{fmt_age(now_ms - id_ms(s.last_entry_id))} ago" if s.last_entry_id else "empty",
            "groups": fmt_int(len(s.groups)),
            "first id": s.first_entry_id or NA,
            "last id": s.last_entry_id or NA,
        }
        for s in streams
    ]


def group_rows(streams: Iterable[StreamInfo]) -> list[dict[str, str]]:
    """One row per (stream, group): consumers, pending, lag (``n/a`` when Redis cannot tell, never
    a made-up 0), last delivered id, entries read and the trimming check (``ok`` or the alarm)."""
    return [
        {
            "stream": s.name,
            "group": g.name,
            "consumers": fmt_int(g.consumers),
            "pending": fmt_int(g.pending),
            "lag": fmt_int(g.lag),
            "last delivered": g.last_delivered_id,
            "read": fmt_int(g.entries_read),
            "trimmed": overrun_alarm(s, g) or "ok",
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


# --------------------------------------------------------------------------- dead letters


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


def dead_letter_reasons(latest: Sequence[DeadLetter], now_ms: int) -> str:
    """Newest first: ``3 s ago by aggregator-1 (aggregator): bar rejected: ...; ...``."""
    parts = []
    for d in latest:
        when = f"{fmt_age(now_ms - (d.ts_ms if d.ts_ms is not None else id_ms(d.entry_id)))} ago"
        who = f" by {d.consumer}" + (f" ({d.group})" if d.group else "") if d.consumer else ""
        parts.append(f"{when}{who}: {d.reason}")
    return "; ".join(parts)


def dead_letter_rows(dlqs: Iterable[DeadLetters], now_ms: int) -> list[dict[str, str]]:
    """One row per dead-letter stream that holds entries: count, total ever, newest reasons."""
    return [
        {
            "stream": d.stream,
            "dead letters": fmt_int(d.length),
            "total": fmt_int(d.entries_added),
            "latest reasons": dead_letter_reasons(d.latest, now_ms),
        }
        for d in dlqs
        if d.length or d.latest
    ]


def dead_letters_line(dlqs: Sequence[DeadLetters]) -> str:
    """``Dead letters: none`` or ``Dead letters: 7 in 2 streams``."""
    held = [d for d in dlqs if d.length]
    if not held:
        return "Dead letters: none"
    total = sum(d.length for d in held)
    return f"Dead letters: {fmt_int(total)} in {len(held)} {'stream' if len(held) == 1 else 'streams'}"


# --------------------------------------------------------------------------- data quality


def quality_rows(rows: Iterable[Mapping[str, object]], now_ms: int) -> list[dict[str, str]]:
    """Per symbol, the aggregator's counters (``tools.collect_bar_quality`` rows) as display strings.

    ``score`` is :func:`unistream_common.quality.score` (n/a before the first counter). Columns:
    symbol, owner, score, ticks applied, late, duplicates, redelivered, 1s bars, empty filled
    (empty intervals filled with flat bars), incomplete (bars on a gap), skipped (empty intervals
    without a bar), gaps (trades missing), last bar latency, updated.
    """

    def num(row: Mapping[str, object], key: str) -> str:
        value = row.get(key)
        return fmt_int(value) if isinstance(value, int | float) else NA

    out = []
    for row in rows:
        score = row.get("score")
        updated = row.get("updated_ms")
        latency = row.get("last_bar_latency_ms")
        out.append(
            {
                "symbol": str(row.get("symbol", "")),
                "owner": str(row.get("owner") or "(none)"),
                "score": f"{score:.2f}" if isinstance(score, int | float) else NA,
                "ticks applied": num(row, "ticks_applied"),
                "late": num(row, "ticks_late"),
                "duplicates": num(row, "ticks_duplicate"),
                "redelivered": num(row, "ticks_already_applied"),
                "1s bars": num(row, "bars_1s"),
                "empty filled": num(row, "bars_filled"),
                "incomplete": num(row, "bars_incomplete"),
                "skipped": num(row, "intervals_skipped"),
                "gaps": f"{num(row, 'gaps')} ({num(row, 'trades_missing')} trades missing)",
                "bar latency": f"{fmt_int(latency)} ms" if isinstance(latency, int) else NA,
                "updated": f"{fmt_age(now_ms - updated)} ago" if isinstance(updated, int) and updated else NA,
            }
        )
    return out
