"""The unistream dashboard, run by ``streamlit run`` (start it with ``unistream dashboard``).

Four pages under ``st.navigation``: **Overview** (the Training Data Stream cards and one health
card per service), **Market** and **Training** (rendered by :mod:`unistream_dashboard.market` and
:mod:`unistream_dashboard.training`, imported when the page is opened) and **Streams** (stream,
group and consumer statistics, dead letters, data quality).

Every live panel is its own ``st.fragment(run_every=...)`` that refreshes itself every
``refresh_s`` seconds without rerunning the page (never a ``while True`` loop: that would pin a
script thread per tab and block Streamlit's own reruns). The sidebar's pause toggle stops them
(``run_every=None``). Panels read through the cached readers in :mod:`unistream_dashboard.data`
(shared by every tab), turn the reads into text and tables with :mod:`unistream_dashboard.view`,
say how long the fetch took, and keep refreshing when Redis is down, with a banner.

Stable anchors for tests: containers keyed ``tds`` (the Training Data Stream panel),
``tds-<SYMBOL>`` (one card per symbol), ``services`` and ``svc-<service>`` (health cards),
``streams``, ``dlq`` and ``quality`` (the Streams page), which Streamlit renders with the CSS
class ``st-key-<key>``; and the text lines documented in :func:`unistream_dashboard.view.symbol_status`
and :func:`unistream_dashboard.view.service_health`.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import redis
import streamlit as st
from pydantic import ValidationError

from unistream_common.redisio import safe_url
from unistream_common.settings import describe_errors
from unistream_dashboard import data, view
from unistream_dashboard.settings import DashboardSettings

T = TypeVar("T")

CARDS_PER_ROW = 3
SERVICE_CARDS_PER_ROW = 5


@dataclass(frozen=True)
class PageSpec:
    """One page of the navigation: its title, URL path and icon."""

    key: str
    title: str
    icon: str


PAGES: tuple[PageSpec, ...] = (
    PageSpec("overview", "Overview", ":material/dashboard:"),
    PageSpec("market", "Market", ":material/candlestick_chart:"),
    PageSpec("training", "Training", ":material/model_training:"),
    PageSpec("streams", "Streams", ":material/stream:"),
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _redis_failed(settings: DashboardSettings, exc: redis.RedisError) -> None:
    """Banner for a failed read; the panel's next scheduled refresh simply tries again."""
    where = safe_url(settings.redis_url)
    reason = str(exc).rstrip(".")
    retry = f"Retrying every {settings.refresh_s:g} s." if not settings.paused else "Paused: resume to retry."
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        st.error(f"Redis unreachable at {where}: {reason}. {retry}", icon=":material/cloud_off:")
    else:
        st.error(f"Redis error at {where}: {reason}. {retry}", icon=":material/error:")


def _show_skipped(skipped: Sequence[view.Skipped]) -> None:
    message = view.skipped_text(skipped)
    if message:
        st.warning(message, icon=":material/warning:")


def _fetched(fetch_ms: float, now_ms: int) -> None:
    """The panel's footer: how long its Redis reads took and when it was drawn."""
    st.caption(f"fetched in {view.fmt_fetch(fetch_ms)}{view.SEP}updated {view.fmt_utc(now_ms)}")


def _rows(items: Sequence[T], per_row: int) -> list[list[T]]:
    """``items`` in rows of ``per_row`` (a grid of cards from Streamlit columns)."""
    return [list(items[i : i + per_row]) for i in range(0, len(items), per_row)]


# --------------------------------------------------------------------------- Overview


def training_data_stream(settings: DashboardSettings) -> None:
    """Per symbol: caches, stream liveness, data source, CNN, RL and Enhanced RL state, warm-up, price."""
    symbols = settings.symbols
    with st.container(key="tds"):
        st.subheader("Training Data Stream")
        try:
            status = data.read_status(settings.redis_url, symbols)
            training = data.read_training(settings.redis_url, settings.metrics_history)
        except redis.RedisError as exc:
            _redis_failed(settings, exc)
            return
        now_ms = _now_ms()
        latest_ui = view.latest_ui_per_symbol(status.ui, symbols)
        agent = view.agent_view(training.metrics, training.models, now_ms, int(settings.stale_metrics_s * 1000))
        if not latest_ui and not status.last_ticks:
            st.info("No market data in Redis yet: no status packets and no ticks (is ingest running?).")
        per_row = min(len(symbols), CARDS_PER_ROW)
        for row in _rows(symbols, per_row):
            for column, symbol in zip(st.columns(per_row), row, strict=False):
                ui = latest_ui.get(symbol)
                card = view.symbol_status(
                    symbol,
                    ui,
                    status.last_ticks.get(symbol),
                    agent,
                    now_ms,
                    int(settings.live_after_s * 1000),
                    int(settings.stale_after_s * 1000),
                )
                with column, st.container(border=True, key=f"tds-{symbol}"):
                    st.markdown(f"#### {symbol} &nbsp; {view.fmt_price(card.price)}")
                    st.markdown(card.badge)
                    st.markdown("  \n".join(line.text for line in card.lines))
                    if card.warmup is not None:
                        st.progress(card.warmup, text=f"Warm-up {int(100 * card.warmup)}%")
                    notes = [f"Status packet {view.fmt_age(card.status_age_ms)} old" if ui else "No status packet yet"]
                    if card.predictions:
                        notes.append(card.predictions)
                    st.caption(view.SEP.join(notes))
        _show_skipped([*status.skipped, *training.skipped])
        _fetched(status.fetch_ms + training.fetch_ms, now_ms)


def service_health(settings: DashboardSettings) -> None:
    """One card per service from the svc:* heartbeats: ready, replicas, uptime, last beat."""
    with st.container(key="services"):
        st.subheader("Services")
        try:
            health = data.read_health(settings.redis_url)
        except redis.RedisError as exc:
            _redis_failed(settings, exc)
            return
        now_ms = _now_ms()
        known = list(view.SERVICE_NAMES)
        others = sorted({b.service for b in health.beats} - set(known))
        cards = [view.service_health(name, health.beats, now_ms, health.leader) for name in known + others]
        st.markdown(view.services_line(cards))
        if not health.beats:
            st.info("No service has sent a heartbeat yet (heartbeats expire 10 s after a process stops).")
        per_row = min(len(cards), SERVICE_CARDS_PER_ROW)
        for row in _rows(cards, per_row):
            for column, card in zip(st.columns(per_row), row, strict=False):
                with column, st.container(border=True, key=f"svc-{card.service}"):
                    st.markdown(f"#### {view.md_escape(card.service)}")
                    st.markdown(card.badge)
                    st.markdown("  \n".join(line.text for line in card.lines))
                    if card.details:
                        st.caption("  \n".join(card.details))
        _fetched(health.fetch_ms, now_ms)


def overview_page(settings: DashboardSettings) -> None:
    st.title("Overview")
    st.caption(
        f"Live market data → RL training data{view.SEP}Redis {safe_url(settings.redis_url)}"
        f"{view.SEP}symbols {', '.join(settings.symbols)}{view.SEP}{_refresh_text(settings)}"
    )
    _live(training_data_stream, settings)
    _live(service_health, settings)


# --------------------------------------------------------------------------- Market, Training


def _lazy_page(module: str, title: str, settings: DashboardSettings) -> None:
    """Render ``unistream_dashboard.<module>`` (imported on first visit: plotly stays out of the
    Overview's start-up), or say plainly that this installation lacks it."""
    try:
        render = importlib.import_module(f"unistream_dashboard.{module}").render
    except ImportError as exc:
        st.title(title)
        st.info(f"The {title} page is not available in this installation ({exc}).", icon=":material/info:")
        return
    render(settings)


def market_page(settings: DashboardSettings) -> None:
    _lazy_page("market", "Market", settings)


def training_page(settings: DashboardSettings) -> None:
    _lazy_page("training", "Training", settings)


# --------------------------------------------------------------------------- Streams


def _read_streams(settings: DashboardSettings) -> data.StreamsRead | None:
    """The Streams page's statistics (one cached read both panels share), or None after saying
    that Redis failed."""
    try:
        return data.read_streams(settings.redis_url, settings.symbols, settings.dlq_reasons)
    except redis.RedisError as exc:
        _redis_failed(settings, exc)
        return None


def stream_statistics(settings: DashboardSettings) -> None:
    """Streams, consumer groups and consumers: lengths, entries/s, pending, lag, trimming overruns."""
    with st.container(key="streams"):
        st.subheader("Stream statistics")
        streams = _read_streams(settings)
        if streams is None:
            return
        now_ms = streams.time_ms or _now_ms()
        st.markdown(view.streams_line(streams.streams, streams.missing))
        for alarm in view.overrun_alarms(streams.streams):
            st.error(alarm, icon=":material/warning:")
        if streams.streams:
            st.dataframe(view.stream_rows(streams.streams, now_ms, streams.rates), hide_index=True, key="streams-table")
        else:
            st.info("No streams in Redis yet: nothing has been written (is ingest running?).")
        groups = view.group_rows(streams.streams)
        if groups:
            st.markdown("**Consumer groups**")
            st.dataframe(groups, hide_index=True, key="groups-table")
        consumers = view.consumer_rows(streams.streams)
        if consumers:
            st.markdown("**Consumers**")
            st.dataframe(consumers, hide_index=True, key="consumers-table")
        if streams.missing:
            st.caption("Not created yet: " + ", ".join(view.md_escape(m) for m in streams.missing))
        _fetched(streams.fetch_ms, _now_ms())


def dead_letters(settings: DashboardSettings) -> None:
    """Entries the consumers gave up on, per stream, with the newest reasons."""
    with st.container(key="dlq"):
        st.subheader("Dead letters")
        streams = _read_streams(settings)
        if streams is None:
            return
        now_ms = streams.time_ms or _now_ms()
        st.markdown(view.dead_letters_line(streams.dead_letters))
        rows = view.dead_letter_rows(streams.dead_letters, now_ms)
        if rows:
            st.dataframe(rows, hide_index=True, key="dlq-table")
        _fetched(streams.fetch_ms, _now_ms())


def data_quality(settings: DashboardSettings) -> None:
    """The aggregator's data-quality counters and score per symbol (md:quality:{SYMBOL})."""
    with st.container(key="quality"):
        st.subheader("Data quality")
        try:
            quality = data.read_quality(settings.redis_url, settings.symbols)
        except redis.RedisError as exc:
            _redis_failed(settings, exc)
            return
        now_ms = _now_ms()
        rows = view.quality_rows(quality.rows, now_ms)
        if not any(r.get("score") is not None for r in quality.rows):
            st.info("No data-quality counters yet: the aggregator has not emitted a bar.")
        st.dataframe(rows, hide_index=True, key="quality-table")
        st.caption(
            "Score (0-100) = share of trades applied (not late) × share of 1s bars not resting on a gap × "
            "share of seconds that have a bar. Duplicates and redelivered trades were recognised and left out."
        )
        _fetched(quality.fetch_ms, now_ms)


def streams_page(settings: DashboardSettings) -> None:
    st.title("Streams")
    st.caption(f"Redis {safe_url(settings.redis_url)}{view.SEP}{_refresh_text(settings)}")
    _live(stream_statistics, settings)
    _live(dead_letters, settings)
    _live(data_quality, settings)


# --------------------------------------------------------------------------- the app


def _refresh_text(settings: DashboardSettings) -> str:
    return "paused" if settings.paused else f"refresh every {settings.refresh_s:g} s"


def _live(panel: Callable[[DashboardSettings], None], settings: DashboardSettings) -> None:
    """Run ``panel`` as a fragment that reruns itself every ``refresh_s`` seconds (never while paused)."""
    st.fragment(panel, run_every=settings.run_every)(settings)


RENDERERS: dict[str, Callable[[DashboardSettings], None]] = {
    "overview": overview_page,
    "market": market_page,
    "training": training_page,
    "streams": streams_page,
}


def _sidebar(settings: DashboardSettings) -> DashboardSettings:
    """The pause toggle (and a refresh button while paused); returns the settings the pages use."""
    with st.sidebar:
        paused = st.toggle(
            "Pause live updates",
            value=settings.paused,
            key="paused",
            help="Stops every panel's automatic refresh; the numbers shown stay as they were.",
        )
        if paused:
            st.button("Refresh now", key="refresh-now", icon=":material/refresh:")
        st.caption(
            f"Redis {safe_url(settings.redis_url)}  \nsymbols {', '.join(settings.symbols)}  \n"
            f"{'paused' if paused else f'refresh every {settings.refresh_s:g} s'}"
        )
    return settings.model_copy(update={"paused": paused})


def main(start: str | None = None) -> None:
    """Check settings, start the dashboard's heartbeat, and show the page chosen in the navigation.

    ``start`` names the page shown at the root URL (default: the first of :data:`PAGES`).
    """
    # An emoji favicon: a :material/ page icon makes the browser fetch an SVG from Google Fonts, which
    # fails (a console error) wherever the dashboard has no internet.
    st.set_page_config(page_title="unistream", page_icon="📈", layout="wide")
    try:
        settings = DashboardSettings()
    except ValidationError as exc:
        st.error(describe_errors(DashboardSettings, exc))
        st.stop()
    if settings.heartbeat_s > 0:
        data.start_heartbeat(settings.redis_url, settings.consumer(data.SERVICE_NAME), settings.heartbeat_s)
    start = start or PAGES[0].key
    current: dict[str, DashboardSettings] = {}

    def page(spec: PageSpec) -> st.Page:
        render = RENDERERS[spec.key]
        return st.Page(
            lambda: render(current["settings"]),
            title=spec.title,
            icon=spec.icon,
            url_path=spec.key,
            default=spec.key == start,
        )

    chosen = st.navigation([page(spec) for spec in PAGES])
    current["settings"] = _sidebar(settings)
    chosen.run()


if __name__ == "__main__":
    main()
