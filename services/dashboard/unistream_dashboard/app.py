"""The unistream dashboard page, run by ``streamlit run`` (start it with ``unistream dashboard``).

Four live panels, each its own ``st.fragment(run_every=...)`` so each refreshes itself about
once a second without rerunning the page (never a ``while True`` loop: that would pin a
script thread per tab and block Streamlit's own reruns). Each panel reads through the cached
readers in :mod:`unistream_dashboard.data`, turns the reads into text and tables with
:mod:`unistream_dashboard.view`, and keeps refreshing when Redis is down, with a banner.

Stable anchors for tests: containers keyed ``tds`` (the Training Data Stream panel),
``tds-<SYMBOL>`` (one card per symbol), ``chart-<SYMBOL>``, ``training`` and ``streams``, which
Streamlit renders with the CSS class ``st-key-<key>``; and the text lines documented in
:func:`unistream_dashboard.view.symbol_status`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import redis
import streamlit as st
from pydantic import ValidationError

from unistream_common.redisio import safe_url
from unistream_common.settings import describe_errors
from unistream_dashboard import charts, data, view
from unistream_dashboard.settings import DashboardSettings

T = TypeVar("T")

CARDS_PER_ROW = 3
CHARTS_PER_ROW = 2


def _now_ms() -> int:
    return int(time.time() * 1000)


def _redis_failed(settings: DashboardSettings, exc: redis.RedisError) -> None:
    """Banner for a failed read; the panel's next scheduled refresh simply tries again."""
    where = safe_url(settings.redis_url)
    reason = str(exc).rstrip(".")
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        st.error(
            f"Redis unreachable at {where}: {reason}. Retrying every {settings.refresh_s:g} s.",
            icon=":material/cloud_off:",
        )
    else:
        st.error(f"Redis error at {where}: {reason}. Retrying every {settings.refresh_s:g} s.", icon=":material/error:")


def _show_skipped(skipped: Sequence[view.Skipped]) -> None:
    message = view.skipped_text(skipped)
    if message:
        st.warning(message, icon=":material/warning:")


def _updated(now_ms: int) -> None:
    st.caption(f"Updated {view.fmt_utc(now_ms)}")


def _rows(items: Sequence[T], per_row: int) -> list[list[T]]:
    """``items`` in rows of ``per_row`` (a grid of cards from Streamlit columns)."""
    return [list(items[i : i + per_row]) for i in range(0, len(items), per_row)]


def training_data_stream(settings: DashboardSettings) -> None:
    """Per symbol: caches, stream liveness, data source, CNN and RL state, live price."""
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
        rl = view.rl_summary(view.latest_per_producer(training.metrics), now_ms, int(settings.stale_metrics_s * 1000))
        per_row = min(len(symbols), CARDS_PER_ROW)
        for row in _rows(symbols, per_row):
            for column, symbol in zip(st.columns(per_row), row, strict=False):
                ui = latest_ui.get(symbol)
                card = view.symbol_status(
                    symbol,
                    ui,
                    status.last_ticks.get(symbol),
                    rl,
                    now_ms,
                    int(settings.live_after_s * 1000),
                )
                with column, st.container(border=True, key=f"tds-{symbol}"):
                    st.markdown(f"#### {symbol} &nbsp; {view.fmt_price(card.price)}")
                    st.markdown(card.badge)
                    st.markdown("  \n".join(line.text for line in card.lines))
                    notes = [f"Status packet {view.fmt_age(card.status_age_ms)} old" if ui else "No status packet yet"]
                    if card.predictions:
                        notes.append(card.predictions)
                    st.caption(view.SEP.join(notes))
        _show_skipped(status.skipped)
        _updated(now_ms)


def live_charts(settings: DashboardSettings) -> None:
    """A candlestick chart of the newest 1s bars per symbol."""
    symbols = settings.symbols
    with st.container(key="charts"):
        st.subheader("Live 1s candles")
        try:
            bars = data.read_bars(settings.redis_url, symbols, settings.chart_bars)
        except redis.RedisError as exc:
            _redis_failed(settings, exc)
            return
        per_row = min(len(symbols), CHARTS_PER_ROW)
        for row in _rows(symbols, per_row):
            for column, symbol in zip(st.columns(per_row), row, strict=False):
                candles = view.candles(symbol, bars.bars.get(symbol, []), settings.chart_bars)
                with column, st.container(border=True, key=f"chart-{symbol}"):
                    if len(candles):
                        st.plotly_chart(
                            charts.candle_figure(candles),
                            key=f"plot-{symbol}",
                            config={"displaylogo": False},
                        )
                    else:
                        st.info(f"No 1s bars for {symbol} yet.")
                    st.caption(candles.caption)
        _show_skipped(bars.skipped)


def training_metrics(settings: DashboardSettings) -> None:
    """Latest metrics of each trainer replica, the td_loss curve and the announced models."""
    with st.container(key="training"):
        st.subheader("RL training")
        try:
            training = data.read_training(settings.redis_url, settings.metrics_history)
        except redis.RedisError as exc:
            _redis_failed(settings, exc)
            return
        now_ms = _now_ms()
        latest = view.latest_per_producer(training.metrics)
        rl = view.rl_summary(latest, now_ms, int(settings.stale_metrics_s * 1000))
        st.markdown(view.rl_line(rl))
        table, chart = st.columns([3, 2])
        with table:
            rows = view.metrics_rows(latest, now_ms)
            if rows:
                st.dataframe(rows, hide_index=True, key="metrics-table")
            models = view.model_rows(training.models, now_ms)
            st.markdown("**Models**" if models else "**Models:** none announced yet")
            if models:
                st.dataframe(models, hide_index=True, key="models-table")
        with chart:
            series = view.metric_series(training.metrics, view.TD_LOSS)
            if series:
                st.plotly_chart(
                    charts.loss_figure(series, view.TD_LOSS), key="plot-td-loss", config={"displaylogo": False}
                )
            else:
                st.info("No td_loss reported yet.")
        _show_skipped(training.skipped)


def stream_statistics(settings: DashboardSettings) -> None:
    """Streams, consumer groups and consumers: lengths, pending, lag, trimming overruns."""
    with st.container(key="streams"):
        st.subheader("Stream statistics")
        try:
            streams = data.read_streams(settings.redis_url, settings.symbols)
        except redis.RedisError as exc:
            _redis_failed(settings, exc)
            return
        now_ms = _now_ms()
        st.markdown(view.streams_line(streams.streams, streams.missing))
        if streams.streams:
            st.dataframe(view.stream_rows(streams.streams, now_ms), hide_index=True, key="streams-table")
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


def _live(panel: Callable[[DashboardSettings], None], settings: DashboardSettings) -> None:
    """Run ``panel`` as a fragment that reruns itself every ``refresh_s`` seconds."""
    st.fragment(panel, run_every=settings.refresh_s)(settings)


def main() -> None:
    """Lay out the page: header, then one self-refreshing fragment per live panel."""
    st.set_page_config(page_title="unistream", page_icon=":material/candlestick_chart:", layout="wide")
    try:
        settings = DashboardSettings()
    except ValidationError as exc:
        st.error(describe_errors(DashboardSettings, exc))
        st.stop()
    st.title("unistream")
    st.caption(
        f"Live market data → RL training data{view.SEP}Redis {safe_url(settings.redis_url)}"
        f"{view.SEP}symbols {', '.join(settings.symbols)}{view.SEP}refresh every {settings.refresh_s:g} s"
    )
    _live(training_data_stream, settings)
    _live(live_charts, settings)
    _live(training_metrics, settings)
    _live(stream_statistics, settings)


main()
