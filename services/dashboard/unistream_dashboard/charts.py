"""Plotly figures of the dashboard, built from view models (pure: no Redis, no Streamlit).

Each figure carries a fixed ``uirevision`` so that a user's zoom and pan survive the
once-a-second redraw, and candlestick charts hold at most :data:`MAX_CANDLES` candles, beyond
which plotly's redraw time grows past the refresh interval on a small machine.

The market and training pages build their own figures (:mod:`unistream_dashboard.market`,
:mod:`unistream_dashboard.training`) from the helpers here: :func:`price_tickformat` for price
axes, :func:`lines_figure` for lines over time (time axes take
:func:`unistream_dashboard.widgets.utc_datetime`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from unistream_dashboard.widgets import utc_datetime

MAX_CANDLES = 1000
UP = "#26a69a"
DOWN = "#ef5350"
MARGIN = {"l": 10, "r": 10, "t": 30, "b": 10}
LEGEND_TOP = {"orientation": "h", "x": 1.0, "xanchor": "right", "y": 1.0, "yanchor": "bottom"}
# Title on the first line, legend on the second, both above the plot: a narrow chart's legend
# never runs over its title.
MARGIN_TWO_LINES = {"l": 10, "r": 10, "t": 58, "b": 10}
TITLE_LINE = {"x": 0.01, "y": 0.99, "yanchor": "top", "font": {"size": 14}}
LEGEND_LINE = {"orientation": "h", "x": 0.0, "xanchor": "left", "y": 1.0, "yanchor": "bottom"}
PLOT_CONFIG: dict[str, Any] = {"displaylogo": False}
FEW_POINTS = 30  # below this a line also marks its points (a single point draws no line)
MIN_SPAN_MS = 60_000  # a time axis shorter than this is widened to it


def price_tickformat(prices: Sequence[float]) -> str:
    """d3 format of a price axis: thousands separators and enough decimals for the smallest
    price (2 from 1 up; more below, so 0.00001234 does not print as 0.00)."""
    positive = [p for p in prices if p > 0]
    if not positive or min(positive) >= 1:
        return ",.2f"
    return f",.{min(-math.floor(math.log10(min(positive))) + 3, 10)}f"


def lines_figure(
    series: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    title: str,
    uirevision: str,
    *,
    height: int = 260,
    yaxis_title: str | None = None,
    dashed: Sequence[str] = (),
) -> go.Figure:
    """One line per entry of ``series`` (name -> (times_ms, values)) over time; names in
    ``dashed`` are drawn dashed (baselines beside the line that matters); lines of fewer than
    :data:`FEW_POINTS` points mark them too."""
    fig = go.Figure()
    for name, (times_ms, values) in series.items():
        fig.add_trace(
            go.Scatter(
                x=[utc_datetime(t) for t in times_ms],
                y=list(values),
                mode="lines" if len(values) >= FEW_POINTS else "lines+markers",
                name=name,
                line={"dash": "dash"} if name in dashed else {},
            )
        )
    fig.update_layout(
        uirevision=uirevision,
        height=height,
        margin=MARGIN_TWO_LINES,
        title={"text": title, **TITLE_LINE},
        xaxis={"type": "date"},
        yaxis={"title": yaxis_title},
        legend=LEGEND_LINE,
    )
    times = [t for times_ms, _ in series.values() for t in times_ms]
    if times and max(times) - min(times) < MIN_SPAN_MS:
        # A new run (one or two reports): a minute of axis, not milliseconds around one point.
        fig.update_xaxes(range=[utc_datetime(max(times) - MIN_SPAN_MS), utc_datetime(max(times) + MIN_SPAN_MS // 12)])
    return fig
