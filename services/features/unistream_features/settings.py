"""Settings of the features service (``UNISTREAM_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from unistream_common.settings import CommonSettings


class FeaturesSettings(CommonSettings):
    """Buffers, window and output retention of the features service."""

    model_dir: str = Field("models", description="Directory that relative model URIs are resolved against")
    tick_cache_size: int = Field(5_000, ge=1, description="Trades kept per symbol for microstructure features")
    tick_cache_s: int = Field(
        300,
        ge=300,
        le=3_600,
        description="Tick cache age bound: no trade older than this before the newest, s (at least the 300 s horizon)",
    )
    bar_cache_size: int = Field(1_000, ge=2, description="1s bars kept per symbol (1m, 1h, 1d keep the window + 5)")
    window_bars: int = Field(300, ge=8, description="Bars per timeframe window in the CNN input and the RL state")
    tick_wait_ms: int = Field(
        5_000, ge=0, le=600_000, description="A 1s bar waits at most this long for its trades before its state is built"
    )
    symbol_sync_ms: int = Field(
        1_000,
        ge=0,
        le=10_000,
        description="A state at t waits at most this long for the inputs not in yet (the other symbols' 1s bar at t "
        "and its trades, the 1m/1h/1d bars closing at t), ms, so live states equal replayed and caught-up ones "
        "bit for bit; 0: never wait (states depend on the order of arrival)",
    )
    cycle_ms: int = Field(100, ge=10, le=10_000, description="Processing cycle: UI packets and late bars, ms")
    ui_max_per_s: float = Field(10.0, gt=0, le=1_000, description="UI packets per second at most, all symbols together")
    model_poll_ms: int = Field(1_000, ge=100, description="How often the model registry is checked for CNN weights, ms")
    history_poll_ms: int = Field(
        1_000, ge=100, description="How often md:history:* is checked for new warm-up bars, ms"
    )
    overrun_check_s: int = Field(
        5, ge=1, description="How often ml:training is checked for entries trimmed before a group read them, s"
    )
    training_maxlen: int = Field(
        3_600,
        ge=10,
        description="Training packets kept on ml:training (XADD MAXLEN ~): size it for the longest trainer outage "
        "to survive; one packet is ~54 KB, 3,600 = 30 min of 2 symbols",
    )
    writer_lease_ms: int = Field(
        10_000,
        ge=1_000,
        le=600_000,
        description="Lease of a features replica on a symbol's training packets, ms: a dead replica's symbols are "
        "taken over after this",
    )
    ui_maxlen: int = Field(50, ge=1, description="Approximate retention of the UI stream, entries")
    predictions_maxlen: int = Field(
        5_000,
        ge=10,
        description="CNN predictions kept on ui:predictions for chart markers, entries (~40 min of 2 symbols)",
    )

    @field_validator("window_bars")
    @classmethod
    def _window_fits_buffer(cls, value: int, info: ValidationInfo) -> int:
        capacity = info.data.get("bar_cache_size")
        if capacity is not None and value + 1 > capacity:
            raise ValueError(f"the window ({value} bars) plus one must fit UNISTREAM_BAR_CACHE_SIZE ({capacity})")
        return value
