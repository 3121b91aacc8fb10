"""Plotly figures of the dashboard, built from view models (pure: no Redis, no Streamlit).

Each figure carries a fixed ``uirevision`` so that a user's zoom and pan survive the
once-a-second redraw, and candlestick charts hold at most :data:`MAX_CANDLES` candles, beyond
which plotly's redraw time grows past the refresh interval on a small machine.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go

from unistream_dashboard.view import Candles, utc_datetime

MAX_CANDLES = 1000
UP = "#26a69a"
DOWN = "#ef5350"


def price_tickformat(prices: list[float]) -> str:
    """d3 format of a price axis: thousands separators and enough decimals for the smallest
    price (2 from 1 up; more below, so 0.00001234 does not print as 0.00)."""
    positive = [p for p in prices if p > 0]
    if not positive or min(positive) >= 1:
        return ",.2f"
    return f",.{min(-math.floor(math.log10(min(positive))) + 3, 10)}f"


def candle_figure(candles: Candles, height: int = 340) -> go.Figure:
    """Candlestick chart of one symbol's 1s bars with volume bars underneath."""
    shown = slice(-MAX_CANDLES, None)
    times = [utc_datetime(t) for t in candles.times_ms[shown]]
    opens, closes = candles.open[shown], candles.close[shown]
    fig = go.Figure()
    fig.add_trace(
        go.Candlestick(
            x=times,
            open=opens,
            high=candles.high[shown],
            low=candles.low[shown],
            close=closes,
            name=candles.symbol,
            increasing_line_color=UP,
            decreasing_line_color=DOWN,
            showlegend=False,
        )
    )
    fig.add_trace(
        go.Bar(
            x=times,
            y=candles.volume[shown],
            yaxis="y2",
            name="volume",
            marker_color=[UP if c >= o else DOWN for o, c in zip(opens, closes, strict=True)],
            opacity=0.35,
            showlegend=False,
        )
    )
    fig.update_layout(
        uirevision=f"candles-{candles.symbol}",
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title={"text": f"{candles.symbol} · 1s", "x": 0.01, "font": {"size": 14}},
        # Anchored to the volume axis so the time labels sit under the volume bars, not across them.
        xaxis={"rangeslider": {"visible": False}, "type": "date", "anchor": "y2"},
        yaxis={"title": None, "domain": [0.25, 1.0], "tickformat": price_tickformat(candles.low[shown])},
        yaxis2={"domain": [0.0, 0.2], "showticklabels": False, "showgrid": False},
        bargap=0.1,
    )
    return fig


def loss_figure(series: dict[str, tuple[list[int], list[float]]], title: str, height: int = 260) -> go.Figure:
    """Line per trainer replica of one metric over time."""
    fig = go.Figure()
    for producer, (times_ms, values) in series.items():
        fig.add_trace(go.Scatter(x=[utc_datetime(t) for t in times_ms], y=values, mode="lines", name=producer))
    fig.update_layout(
        uirevision=f"metric-{title}",
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title={"text": title, "x": 0.01, "font": {"size": 14}},
        xaxis={"type": "date"},
        legend={"orientation": "h", "x": 1.0, "xanchor": "right", "y": 1.0, "yanchor": "bottom"},
    )
    return fig
