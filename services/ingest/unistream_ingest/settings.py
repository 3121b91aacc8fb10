"""Settings of the ingest service (``UNISTREAM_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field

from unistream_common.settings import CommonSettings


class IngestSettings(CommonSettings):
    """Ingest: where ticks come from and how they are written to ``md:ticks:{SYMBOL}``."""

    tick_retention_s: int = Field(
        3_600, ge=1, description="Keep ticks this many seconds (XADD MINID ~ now - retention)"
    )
    flush_interval_ms: int = Field(50, ge=1, le=10_000, description="Write buffered ticks this often, ms")
    max_batch_ticks: int = Field(1_000, ge=1, le=100_000, description="Most ticks in one TickBatch entry")
    max_buffer_ticks: int = Field(
        100_000, ge=1, description="Most unsent ticks kept per symbol while Redis is unreachable (oldest dropped)"
    )
    retry_backoff_max_ms: int = Field(2_000, ge=1, description="Longest wait between write retries, ms")
