"""Settings of the aggregator service (``UNISTREAM_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from unistream_common.settings import CommonSettings


class AggregatorSettings(CommonSettings):
    """Aggregator: 1s, 1m, 1h and 1d bars from ticks into ``md:bars:{SYMBOL}:TF``."""

    bar_retention: int = Field(
        86_400, ge=1, description="Bars kept per stream and timeframe (XADD MAXLEN ~), 86,400 = one day of 1s bars"
    )
    grace_ms: int = Field(
        250, ge=0, le=60_000, description="Wall-clock wait after a bar's end before the timer closes it, ms"
    )
    watermark_hold_ms: int = Field(
        30_000,
        ge=0,
        le=3_600_000,
        description="How long the timer holds bars after ingest's watermark (every trade written by then) "
        "when it stands still, ms: a Redis outage's buffered trades arrive in their bars; after it, the wall clock "
        "closes them (a dead or stopped ingest must not freeze the bars)",
    )
    max_fill_gap_s: int = Field(
        3_600, ge=0, description="Longest run of empty seconds filled with flat bars; longer gaps stay visible"
    )
    owner_ttl_ms: int = Field(
        5_000,
        ge=1_000,
        le=600_000,
        description="Lease of an aggregator on a symbol, ms: a dead owner's symbols are taken over after this",
    )
