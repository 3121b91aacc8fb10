"""Settings of the features service (``UNISTREAM_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from unistream_common.settings import CommonSettings


class FeaturesSettings(CommonSettings):
    """Buffers, window and output retention of the features service."""

    model_dir: str = Field("models", description="Directory that relative model URIs are resolved against")
    tick_cache_size: int = Field(5_000, ge=1, description="Trades kept per symbol for microstructure features")
    bar_cache_size: int = Field(1_000, ge=2, description="1s bars kept per symbol")
    window_bars: int = Field(300, ge=2, description="1s bars in the CNN window and the RL state")
    min_bars: int = Field(20, ge=1, description="Buffered 1s bars needed before the first training packet")
    cycle_ms: int = Field(100, ge=10, le=10_000, description="Processing cycle: UI packets every cycle, ms")
    model_poll_ms: int = Field(1_000, ge=100, description="How often the model registry is checked for CNN weights, ms")
    training_maxlen: int = Field(10_000, ge=10, description="Approximate retention of the training stream, entries")
    ui_maxlen: int = Field(50, ge=1, description="Approximate retention of the UI stream, entries")

    @field_validator("window_bars")
    @classmethod
    def _window_fits_buffer(cls, value: int, info: ValidationInfo) -> int:
        capacity = info.data.get("bar_cache_size")
        if capacity is not None and value > capacity:
            raise ValueError(f"the window ({value} bars) must fit UNISTREAM_BAR_CACHE_SIZE ({capacity})")
        return value

    @field_validator("min_bars")
    @classmethod
    def _min_bars_fit_window(cls, value: int, info: ValidationInfo) -> int:
        window = info.data.get("window_bars")
        if window is not None and value > window:
            raise ValueError(f"min_bars ({value}) must not exceed UNISTREAM_WINDOW_BARS ({window})")
        return value
