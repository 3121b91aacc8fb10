"""Market page: per symbol a live candlestick chart with volume, the forming candle, the CNN's
extrema predictions and the RL agent's paper trades.

Two layers, top to bottom:

* pure shaping (no Redis, no Streamlit): :func:`candle_series` (closed bars plus the forming
  one), :func:`extrema_markers` and :func:`trade_markers` (markers mapped onto candles, the
  predictions as :class:`unistream_dashboard.data.Predictions` columns), :func:`market_caption`
  and :func:`market_figure` (the plotly figure);
* :func:`render`, called by the app's page: controls, then one self-refreshing
  ``st.fragment`` per symbol, each reading through the cached
  :func:`unistream_dashboard.data.read_candles` (one symbol's bars of one timeframe and its
  forming bar) and :func:`unistream_dashboard.data.read_markers` (the newest ``ui:predictions``
  and ``ml:paper`` entries of all symbols).

**Which candle a point belongs to.** A bar covers ``[open_time_ms, close_time_ms)`` and a
prediction or a paper fill is stamped with the close of the 1s bar it was decided on, which is
the open of the next one. So a point at ``ts`` belongs to the candle with
``open < ts <= open + span`` (:func:`candle_open`): on the 1s chart the bar the decision saw, on
coarser charts the candle that contains that bar. Each chart marks the prediction head of its
own timeframe (``1m.p_top`` on the 1m chart), the highest probability within each candle.

Streamlit anchors (for tests): containers keyed ``market-<SYMBOL>``, the timeframe control
``market-tf-<SYMBOL>``, the chart ``market-plot-<SYMBOL>`` with ``uirevision``
``market-<SYMBOL>-<TF>``, controls ``market-max-candles`` and ``market-threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from unistream_common import keys
from unistream_common.packets import Bar, PaperFill
from unistream_common.redisio import REDIS_ERRORS
from unistream_dashboard import charts
from unistream_dashboard.data import BOTTOM, TOP, Predictions, read_candles, read_markers
from unistream_dashboard.settings import DashboardSettings
from unistream_dashboard.widgets import SEP, fetched_caption, live, show_redis_error, utc_datetime

TIMEFRAMES: tuple[str, ...] = keys.TIMEFRAMES
DEFAULT_TIMEFRAME = "1s"
MAX_CANDLES = 500  # per chart: plotly redraws 500 candles in ~40 ms, 5,000 in ~240 ms
DEFAULT_THRESHOLD = 0.5
MIN_SPAN_CANDLES = 10  # the time axis spans at least this many candles
FORMING_UP = "#ffb300"
FORMING_DOWN = "#8d6e63"
TOP_COLOUR = "#ab47bc"
BOTTOM_COLOUR = "#1e88e5"
BUY_COLOUR = "#00c853"
SELL_COLOUR = "#d50000"
# Probabilities travel as float32: 0.95 arrives as 0.949999988. A threshold compares with this slack.
THRESHOLD_SLACK = 1e-6


# --------------------------------------------------------------------------- pure: shaping


def candle_open(ts_ms: int, timeframe: str) -> int:
    """Open time of the ``timeframe`` candle a point stamped ``ts_ms`` belongs to: the one with
    ``open < ts_ms <= open + span`` (a 1s bar's close time belongs to that bar)."""
    span = keys.TIMEFRAME_MS[timeframe]
    return ((ts_ms - 1) // span) * span


@dataclass(frozen=True)
class CandleSeries:
    """Closed candles of one symbol and timeframe (columns, oldest first) and the forming one."""

    symbol: str
    timeframe: str
    times_ms: list[int] = field(default_factory=list)
    open: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    close: list[float] = field(default_factory=list)
    volume: list[float] = field(default_factory=list)
    forming: Bar | None = None

    def __len__(self) -> int:
        return len(self.times_ms) + (self.forming is not None)

    def extent(self) -> dict[int, tuple[float, float]]:
        """Open time -> (high, low) of every candle, the forming one included."""
        out = {t: (h, lo) for t, h, lo in zip(self.times_ms, self.high, self.low, strict=True)}
        if self.forming is not None:
            out[self.forming.open_time_ms] = (self.forming.high, self.forming.low)
        return out

    def price_range(self) -> float:
        """Highest high less lowest low over all candles (0 without candles)."""
        extent = self.extent().values()
        if not extent:
            return 0.0
        return max(h for h, _ in extent) - min(lo for _, lo in extent)


def candle_series(symbol: str, timeframe: str, bars: Iterable[Bar], forming: Bar | None, limit: int) -> CandleSeries:
    """At most ``limit`` candles of ``symbol`` at ``timeframe``: the newest closed bars, oldest
    first, plus the forming bar when it is newer than every closed one (it then takes one of the
    ``limit`` places). Bars of another symbol or timeframe are dropped; a repeated open time keeps
    the last bar seen; a forming bar that already closed (its open time is taken) is dropped."""
    by_open: dict[int, Bar] = {}
    for bar in bars:
        if bar.symbol == symbol and bar.timeframe == timeframe:
            by_open[bar.open_time_ms] = bar
    last_open = max(by_open, default=None)
    if forming is not None and (
        forming.symbol != symbol
        or forming.timeframe != timeframe
        or (last_open is not None and forming.open_time_ms <= last_open)
        or limit < 1
    ):
        forming = None
    closed_limit = max(limit - (forming is not None), 0)
    chosen = [by_open[t] for t in sorted(by_open)][-closed_limit:] if closed_limit else []
    return CandleSeries(
        symbol=symbol,
        timeframe=timeframe,
        times_ms=[b.open_time_ms for b in chosen],
        open=[b.open for b in chosen],
        high=[b.high for b in chosen],
        low=[b.low for b in chosen],
        close=[b.close for b in chosen],
        volume=[b.volume for b in chosen],
        forming=forming,
    )


@dataclass(frozen=True)
class MarkerSet:
    """Markers of one kind: x (candle open times), y (prices) and hover texts."""

    times_ms: list[int] = field(default_factory=list)
    prices: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.times_ms)


@dataclass(frozen=True)
class ExtremaMarkers:
    """Candles the CNN calls a top (drawn above the high) or a bottom (below the low)."""

    tops: MarkerSet = field(default_factory=MarkerSet)
    bottoms: MarkerSet = field(default_factory=MarkerSet)
    head: str = DEFAULT_TIMEFRAME
    threshold: float = DEFAULT_THRESHOLD
    predictions: int = 0  # predictions of this symbol that fell on a shown candle


def marker_pad(series: CandleSeries) -> float:
    """How far above the high (below the low) an extrema marker sits: 4 % of the shown price
    range, or 0.05 % of the price when every candle is flat."""
    span = series.price_range()
    if span > 0:
        return 0.04 * span
    extent = series.extent().values()
    return 0.0005 * max((h for h, _ in extent), default=1.0)


def extrema_markers(
    series: CandleSeries, predictions: Predictions, threshold: float, head: str | None = None
) -> ExtremaMarkers:
    """Per candle, the highest ``<head>.p_top`` and ``<head>.p_bottom`` among the predictions that
    fall on it (see :func:`candle_open`); a candle gets a top marker when that top probability is
    at least ``threshold`` (less :data:`THRESHOLD_SLACK`: the values are float32), and likewise a
    bottom marker. ``head`` is the timeframe whose prediction head is charted, by default the
    chart's own (1m extrema on the 1m chart). Predictions of other symbols, outside the shown
    candles, or non-finite are ignored."""
    head = head or series.timeframe
    extent = series.extent()
    top_name, bottom_name = f"{head}.{TOP}", f"{head}.{BOTTOM}"
    best_top: dict[int, float] = {}
    best_bottom: dict[int, float] = {}
    used = 0
    absent = [math.nan] * len(predictions)
    top_column, bottom_column = predictions.probs.get(top_name, absent), predictions.probs.get(bottom_name, absent)
    rows = zip(predictions.symbols, predictions.ts_ms, top_column, bottom_column, strict=True)
    for symbol, ts_ms, p_top, p_bottom in rows:
        if symbol != series.symbol:
            continue
        opened = candle_open(ts_ms, series.timeframe)
        if opened not in extent:
            continue
        used += 1
        for value, best in ((p_top, best_top), (p_bottom, best_bottom)):
            if math.isfinite(value) and value > best.get(opened, -math.inf):
                best[opened] = value
    pad = marker_pad(series)
    tops, bottoms = MarkerSet(), MarkerSet()
    for opened in sorted(extent):
        high, low = extent[opened]
        p_top = best_top.get(opened)
        if p_top is not None and p_top >= threshold - THRESHOLD_SLACK:
            tops.times_ms.append(opened)
            tops.prices.append(high + pad)
            tops.texts.append(f"{top_name} {p_top:.2f}")
        p_bottom = best_bottom.get(opened)
        if p_bottom is not None and p_bottom >= threshold - THRESHOLD_SLACK:
            bottoms.times_ms.append(opened)
            bottoms.prices.append(low - pad)
            bottoms.texts.append(f"{bottom_name} {p_bottom:.2f}")
    return ExtremaMarkers(tops=tops, bottoms=bottoms, head=head, threshold=threshold, predictions=used)


def trade_side(fill: PaperFill) -> str | None:
    """``buy`` when the position grew (short to flat included), ``sell`` when it shrank, None when
    it did not change."""
    if fill.position_to > fill.position_from:
        return "buy"
    if fill.position_to < fill.position_from:
        return "sell"
    return None


@dataclass(frozen=True)
class TradeMarkers:
    """The agent's paper buys and sells on the shown candles, at their fill prices."""

    buys: MarkerSet = field(default_factory=MarkerSet)
    sells: MarkerSet = field(default_factory=MarkerSet)


def _position(value: float) -> str:
    return f"{value:+g}" if value else "0"


def trade_markers(series: CandleSeries, fills: Iterable[PaperFill]) -> TradeMarkers:
    """Fills of ``series.symbol`` that fall on a shown candle, as buy and sell markers in time
    order: x is the candle's open time, y the fill price."""
    extent = series.extent()
    out = TradeMarkers()
    for fill in sorted(fills, key=lambda f: f.ts_ms):
        side = trade_side(fill)
        if fill.symbol != series.symbol or side is None:
            continue
        opened = candle_open(fill.ts_ms, series.timeframe)
        if opened not in extent:
            continue
        target = out.buys if side == "buy" else out.sells
        target.times_ms.append(opened)
        target.prices.append(fill.price)
        target.texts.append(
            f"{side} {_position(fill.position_from)} → {_position(fill.position_to)} at {fill.price:,.8g}"
            f"{SEP}{fill.model_version}{SEP}{fill.producer}"
        )
    return out


def market_caption(
    series: CandleSeries, extrema: ExtremaMarkers, trades: TradeMarkers, *, predictions_seen: int, fills_seen: int
) -> str:
    """What the chart shows in words, e.g. ``500 1s candles (forming since 12:00:01 UTC) · CNN
    1s.p_top ≥ 0.50: 3 tops, 2 bottoms · agent: 4 buys, 3 sells``; says plainly when the
    predictions or the paper trades stream is empty."""
    closed = len(series.times_ms)
    parts = [f"{closed:,} closed {series.timeframe} candles"]
    if series.forming is not None:
        parts[0] += f" + forming since {utc_datetime(series.forming.open_time_ms):%H:%M:%S} UTC"
    if not predictions_seen:
        parts.append(f"no CNN predictions yet ({keys.PREDICTIONS} is empty)")
    else:
        parts.append(
            f"CNN {extrema.head}.p_top/p_bottom ≥ {extrema.threshold:.2f}: "
            f"{len(extrema.tops)} tops, {len(extrema.bottoms)} bottoms"
        )
    if not fills_seen:
        parts.append(f"no paper trades yet ({keys.PAPER} is empty)")
    else:
        parts.append(f"agent: {len(trades.buys)} buys, {len(trades.sells)} sells")
    return SEP.join(parts)


# --------------------------------------------------------------------------- pure: figure


def _markers(marks: MarkerSet, name: str, symbol: str, colour: str, size: int) -> go.Scatter:
    outline = colour if symbol.endswith("-open") else "#263238"
    return go.Scatter(
        x=[utc_datetime(t) for t in marks.times_ms],
        y=marks.prices,
        mode="markers",
        name=name,
        text=marks.texts,
        hovertemplate="%{text}<extra></extra>",
        marker={
            "symbol": symbol,
            "color": colour,
            "size": size,
            "line": {"width": 2 if outline == colour else 1, "color": outline},
        },
    )


def _add_spacer(fig: go.Figure, at_ms: int, price: float) -> None:
    """An invisible candle and volume bar at ``at_ms``: plotly sizes candles and bars by the gap
    between neighbours, and a lone candle (a fresh stream) would otherwise be a hairline."""
    clear = "rgba(0,0,0,0)"
    at = [utc_datetime(at_ms)]
    fig.add_trace(
        go.Candlestick(
            x=at,
            open=[price],
            high=[price],
            low=[price],
            close=[price],
            name="spacer",
            increasing={"line": {"color": clear}, "fillcolor": clear},
            decreasing={"line": {"color": clear}, "fillcolor": clear},
            hoverinfo="skip",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(x=at, y=[0], name="spacer volume", marker_color=clear, hoverinfo="skip", showlegend=False),
        row=2,
        col=1,
    )


def market_figure(
    series: CandleSeries,
    extrema: ExtremaMarkers | None = None,
    trades: TradeMarkers | None = None,
    height: int = 480,
) -> go.Figure:
    """Candlesticks (closed bars, then the forming bar in amber/brown) over volume bars on a
    shared time axis, with the CNN's tops (hollow ▼ above the high) and bottoms (hollow ▲ below
    the low) and the agent's buys and sells (filled arrows) at their fill prices. ``uirevision`` is ``market-<SYMBOL>-<TF>``."""
    extrema = extrema or ExtremaMarkers()
    trades = trades or TradeMarkers()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.78, 0.22], vertical_spacing=0.02)
    times = [utc_datetime(t) for t in series.times_ms]
    fig.add_trace(
        go.Candlestick(
            x=times,
            open=series.open,
            high=series.high,
            low=series.low,
            close=series.close,
            name=f"{series.symbol} {series.timeframe}",
            increasing_line_color=charts.UP,
            decreasing_line_color=charts.DOWN,
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    volume_colours = [charts.UP if c >= o else charts.DOWN for o, c in zip(series.open, series.close, strict=True)]
    fig.add_trace(
        go.Bar(x=times, y=series.volume, name="volume", marker_color=volume_colours, opacity=0.4, showlegend=False),
        row=2,
        col=1,
    )
    forming = series.forming
    if forming is not None:
        at = [utc_datetime(forming.open_time_ms)]
        fig.add_trace(
            go.Candlestick(
                x=at,
                open=[forming.open],
                high=[forming.high],
                low=[forming.low],
                close=[forming.close],
                name="forming",
                increasing={"line": {"color": FORMING_UP}, "fillcolor": "rgba(255,179,0,0.25)"},
                decreasing={"line": {"color": FORMING_DOWN}, "fillcolor": "rgba(141,110,99,0.25)"},
                showlegend=True,
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Bar(
                x=at,
                y=[forming.volume],
                name="forming volume",
                marker={"color": FORMING_UP, "pattern": {"shape": "/"}},
                opacity=0.5,
                showlegend=False,
            ),
            row=2,
            col=1,
        )
    for marks, name, symbol, colour, size in (
        (extrema.tops, f"CNN top ({extrema.head})", "triangle-down-open", TOP_COLOUR, 10),
        (extrema.bottoms, f"CNN bottom ({extrema.head})", "triangle-up-open", BOTTOM_COLOUR, 10),
        (trades.buys, "agent buy", "arrow-up", BUY_COLOUR, 13),
        (trades.sells, "agent sell", "arrow-down", SELL_COLOUR, 13),
    ):
        if len(marks):
            fig.add_trace(_markers(marks, name, symbol, colour, size), row=1, col=1)
    prices = series.low + ([forming.low] if forming is not None else [])
    fig.update_layout(
        uirevision=f"market-{series.symbol}-{series.timeframe}",
        height=height,
        margin=charts.MARGIN_TWO_LINES,
        title={"text": f"{series.symbol} · {series.timeframe}", **charts.TITLE_LINE},
        legend=charts.LEGEND_LINE,
        bargap=0.1,
        xaxis_rangeslider_visible=False,
    )
    fig.update_xaxes(type="date")
    opens = series.times_ms + ([forming.open_time_ms] if forming is not None else [])
    if opens and len(opens) < MIN_SPAN_CANDLES:
        # A fresh stream: room for MIN_SPAN_CANDLES candles, not one candle stretched over the width.
        span = keys.TIMEFRAME_MS[series.timeframe]
        last = max(opens)
        if len(opens) == 1:
            _add_spacer(fig, last - span, series.close[-1] if series.close else forming.close)  # type: ignore[union-attr]
        fig.update_xaxes(
            range=[
                utc_datetime(last - MIN_SPAN_CANDLES * span),
                utc_datetime(last + span),
            ]
        )
    fig.update_yaxes(tickformat=charts.price_tickformat(prices), row=1, col=1)
    fig.update_yaxes(showgrid=False, row=2, col=1)
    return fig


# --------------------------------------------------------------------------- Streamlit


def _chart_panel(settings: DashboardSettings, symbol: str, max_candles: int, threshold: float) -> None:
    """One symbol's chart: timeframe control, figure, caption; a banner while Redis is down."""
    timeframe = (
        st.segmented_control(
            f"{symbol} timeframe",
            TIMEFRAMES,
            default=DEFAULT_TIMEFRAME,
            key=f"market-tf-{symbol}",
            label_visibility="collapsed",
        )
        or DEFAULT_TIMEFRAME
    )
    try:
        candles = read_candles(settings.redis_url, symbol, timeframe, max_candles)
        markers = read_markers(settings.redis_url)
    except REDIS_ERRORS as exc:
        show_redis_error(settings, exc)
        return
    series = candle_series(symbol, timeframe, candles.bars, candles.forming, max_candles)
    extrema = extrema_markers(series, markers.predictions, threshold)
    trades = trade_markers(series, markers.fills)
    if len(series):
        st.plotly_chart(market_figure(series, extrema, trades), key=f"market-plot-{symbol}", config=charts.PLOT_CONFIG)
    else:
        st.info(
            f"No {timeframe} bars for {symbol} yet: {keys.bars(symbol, timeframe)} is empty and no candle is forming.",
            icon=":material/hourglass_empty:",
        )
    skipped = candles.skipped + markers.skipped
    st.caption(
        fetched_caption(
            candles.fetch_ms + markers.fetch_ms,
            market_caption(
                series,
                extrema,
                trades,
                predictions_seen=len(markers.predictions),
                fills_seen=len(markers.fills),
            ),
            f"{skipped:,} undecodable entries skipped" if skipped else "",
        )
    )


def render(settings: DashboardSettings) -> None:
    """The market page: shared controls, then one live chart per symbol."""
    st.title("Market")
    left, right = st.columns(2)
    max_candles = int(
        left.number_input(
            "Candles per chart",
            min_value=10,
            max_value=MAX_CANDLES,
            value=MAX_CANDLES,
            step=50,
            key="market-max-candles",
            help=f"At most {MAX_CANDLES}: plotly redraws slow down beyond that.",
        )
    )
    threshold = float(
        right.slider(
            "CNN extrema marker threshold",
            min_value=0.0,
            max_value=1.0,
            value=DEFAULT_THRESHOLD,
            step=0.05,
            key="market-threshold",
            help="A candle gets a ▼ (top) or ▲ (bottom) when the CNN's probability reaches this.",
        )
    )
    for symbol in settings.symbols:
        with st.container(border=True, key=f"market-{symbol}"):
            live(_chart_panel, settings, symbol, max_candles, threshold)
