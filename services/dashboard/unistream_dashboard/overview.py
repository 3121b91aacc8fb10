"""Overview page: the Training Data Stream (one card per symbol) and one health card per service.

Pure view models first (no Redis, no Streamlit, no clock: the current time arrives as ``now_ms``,
milliseconds since the Unix epoch), then the two live panels and :func:`render`.

The text lines built here double as machine-readable anchors for tests. Their formats are
fixed (see :func:`symbol_status` and :func:`service_health`): ``<SYMBOL> · <Label>: <value>``,
integers with thousands separators, absent values as ``n/a``. Streamlit anchors: containers keyed
``tds`` (the Training Data Stream panel), ``tds-<SYMBOL>`` (one card per symbol), ``services`` and
``svc-<service>`` (health cards), which Streamlit renders with the CSS class ``st-key-<key>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import streamlit as st

from unistream_common import codec
from unistream_common.heartbeat import HEARTBEAT_TTL_MS
from unistream_common.keys import TIMEFRAMES
from unistream_common.packets import MetricsPacket, ModelAnnouncement, ModelStatus, TickBatch, UIDataPacket
from unistream_common.redisio import REDIS_ERRORS, safe_url
from unistream_dashboard import data
from unistream_dashboard.data import Heartbeat, Skipped
from unistream_dashboard.settings import DashboardSettings
from unistream_dashboard.widgets import (
    NA,
    SEP,
    clock_ms,
    fetched_caption,
    fmt_age,
    fmt_int,
    fmt_price,
    fmt_utc,
    is_finite,
    latest_per_producer,
    live,
    md_escape,
    refresh_text,
    show_redis_error,
)

T = TypeVar("T")

CARDS_PER_ROW = 3
SERVICE_CARDS_PER_ROW = 5

# Metrics the RL trainer publishes under CleanRL-style namespaces.
UPDATES = "charts/updates"
DQN_MODEL = "dqn"  # ModelAnnouncement.name of the RL agent's checkpoints

SOURCE_LABELS = {
    "REAL": "REAL MARKET DATA",
    "REPLAY": "REPLAY (recorded market data, not live)",
    "SYNTHETIC": "SYNTHETIC (simulated prices, not market data)",
}
SOURCE_COLOURS = {"REAL": "green", "REPLAY": "orange", "SYNTHETIC": "violet"}


# --------------------------------------------------------------------------- undecodable entries


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
    return value if is_finite(value) else None


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


def line_text(lines: tuple[StatusLine, ...], key: str) -> str:
    """Text of the line named ``key`` of a card (raises KeyError when there is none)."""
    for item in lines:
        if item.key == key:
            return item.text
    raise KeyError(key)


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
        return line_text(self.lines, key)


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
        """Text of the line named ``key`` (raises KeyError when there is none)."""
        return line_text(self.lines, key)


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


# --------------------------------------------------------------------------- Streamlit


def _rows(items: Sequence[T], per_row: int) -> list[list[T]]:
    """``items`` in rows of ``per_row`` (a grid of cards from Streamlit columns)."""
    return [list(items[i : i + per_row]) for i in range(0, len(items), per_row)]


def _show_skipped(skipped: Sequence[Skipped]) -> None:
    message = skipped_text(skipped)
    if message:
        st.warning(message, icon=":material/warning:")


def training_data_stream_panel(settings: DashboardSettings) -> None:
    """Per symbol: caches, stream liveness, data source, CNN, RL and Enhanced RL state, warm-up, price."""
    symbols = settings.symbols
    with st.container(key="tds"):
        st.subheader("Training Data Stream")
        try:
            status = data.read_status(settings.redis_url, symbols)
            training = data.read_training(settings.redis_url, settings.metrics_history)
        except REDIS_ERRORS as exc:
            show_redis_error(settings, exc)
            return
        now_ms = clock_ms()
        latest_ui = latest_ui_per_symbol(status.ui, symbols)
        agent = agent_view(training.metrics, training.models, now_ms, int(settings.stale_metrics_s * 1000))
        if not latest_ui and not status.last_ticks:
            st.info("No market data in Redis yet: no status packets and no ticks (is ingest running?).")
        per_row = min(len(symbols), CARDS_PER_ROW)
        for row in _rows(symbols, per_row):
            for column, symbol in zip(st.columns(per_row), row, strict=False):
                ui = latest_ui.get(symbol)
                card = symbol_status(
                    symbol,
                    ui,
                    status.last_ticks.get(symbol),
                    agent,
                    now_ms,
                    int(settings.live_after_s * 1000),
                    int(settings.stale_after_s * 1000),
                )
                with column, st.container(border=True, key=f"tds-{symbol}"):
                    st.markdown(f"#### {symbol} &nbsp; {fmt_price(card.price)}")
                    st.markdown(card.badge)
                    st.markdown("  \n".join(line.text for line in card.lines))
                    if card.warmup is not None:
                        st.progress(card.warmup, text=f"Warm-up {int(100 * card.warmup)}%")
                    notes = [f"Status packet {fmt_age(card.status_age_ms)} old" if ui else "No status packet yet"]
                    if card.predictions:
                        notes.append(card.predictions)
                    st.caption(SEP.join(notes))
        _show_skipped([*status.skipped, *training.skipped])
        st.caption(fetched_caption(status.fetch_ms + training.fetch_ms, now_ms=now_ms))


def services_panel(settings: DashboardSettings) -> None:
    """One card per service from the svc:* heartbeats: ready, replicas, uptime, last beat."""
    with st.container(key="services"):
        st.subheader("Services")
        try:
            health = data.read_health(settings.redis_url)
        except REDIS_ERRORS as exc:
            show_redis_error(settings, exc)
            return
        now_ms = clock_ms()
        known = list(SERVICE_NAMES)
        others = sorted({b.service for b in health.beats} - set(known))
        cards = [service_health(name, health.beats, now_ms, health.leader) for name in known + others]
        st.markdown(services_line(cards))
        if not health.beats:
            st.info(
                "No service has sent a heartbeat yet (heartbeats expire "
                f"{HEARTBEAT_TTL_MS / 1000:g} s after a process stops)."
            )
        per_row = min(len(cards), SERVICE_CARDS_PER_ROW)
        for row in _rows(cards, per_row):
            for column, card in zip(st.columns(per_row), row, strict=False):
                with column, st.container(border=True, key=f"svc-{card.service}"):
                    st.markdown(f"#### {md_escape(card.service)}")
                    st.markdown(card.badge)
                    st.markdown("  \n".join(line.text for line in card.lines))
                    if card.details:
                        st.caption("  \n".join(card.details))
        st.caption(fetched_caption(health.fetch_ms, now_ms=now_ms))


def render(settings: DashboardSettings) -> None:
    """The Overview page: its caption, then the two live panels."""
    st.title("Overview")
    st.caption(
        f"Live market data → RL training data{SEP}Redis {safe_url(settings.redis_url)}"
        f"{SEP}symbols {', '.join(settings.symbols)}{SEP}{refresh_text(settings)}"
    )
    live(training_data_stream_panel, settings)
    live(services_panel, settings)
