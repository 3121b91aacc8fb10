"""Dashboard settings: the common ones plus how often and how much the page reads."""

from __future__ import annotations

from pydantic import Field

from unistream_common.settings import CommonSettings

DEFAULT_PORT = 8501


class DashboardSettings(CommonSettings):
    """``UNISTREAM_*`` settings of the dashboard (see :class:`CommonSettings` for the shared ones)."""

    http_port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="Port the Streamlit server listens on (0: 8501)")
    refresh_s: float = Field(1.0, ge=0.2, le=60.0, description="Seconds between refreshes of each live panel")
    live_after_s: float = Field(
        5.0,
        gt=0.0,
        le=3600.0,
        description="A symbol's stream is LIVE while its last tick is at most this many seconds old",
    )
    stale_metrics_s: float = Field(
        30.0,
        gt=0.0,
        description="The RL agent counts as stalled when no trainer replica reported for this many seconds",
    )
    chart_bars: int = Field(
        300,
        ge=10,
        le=1000,
        description="1s bars per candlestick chart (at most 1,000: plotly redraws slow down beyond that)",
    )
    metrics_history: int = Field(
        600, ge=1, le=10_000, description="Newest ml:metrics entries read for the replica table and loss chart"
    )

    @property
    def port(self) -> int:
        """Port to serve on: ``http_port``, or the dashboard's default when it is 0."""
        return self.http_port or DEFAULT_PORT
