"""Dashboard settings: the common ones plus how often and how much the pages read.

Stream liveness on the Overview page comes from the age of a symbol's last tick: LIVE while it
is at most ``live_after_s`` old (5 s), STALE up to ``stale_after_s`` (60 s), OFFLINE beyond.
"""

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
    stale_after_s: float = Field(
        60.0,
        gt=0.0,
        le=86_400.0,
        description="A symbol's stream that is not LIVE is STALE while its last tick is at most this many seconds old, "
        "OFFLINE beyond (never below UNISTREAM_LIVE_AFTER_S)",
    )
    paused: bool = Field(False, description="Start with the live panels paused (the sidebar toggle resumes them)")
    heartbeat_s: float = Field(
        2.0,
        ge=0.0,
        le=60.0,
        description="Seconds between the dashboard's own heartbeats in Redis (svc:dashboard:*); 0: none",
    )
    dlq_reasons: int = Field(3, ge=1, le=50, description="Newest dead-letter reasons shown per dead-letter stream")
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
    def run_every(self) -> float | None:
        """What a live panel passes to ``st.fragment(run_every=...)``: None while paused."""
        return None if self.paused else self.refresh_s

    @property
    def port(self) -> int:
        """Port to serve on: ``http_port``, or the dashboard's default when it is 0."""
        return self.http_port or DEFAULT_PORT
