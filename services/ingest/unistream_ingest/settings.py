"""Settings of the ingest service (``UNISTREAM_*`` environment variables)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from unistream_common.keys import check_symbol
from unistream_common.settings import CommonSettings


class IngestSettings(CommonSettings):
    """Ingest: where ticks come from and how they are written to ``md:ticks:{SYMBOL}``."""

    source: Literal["auto", "binance", "synthetic", "replay", "external"] = Field(
        "auto",
        description="Market data source: binance (live trades); auto (binance when its REST answers, else "
        "synthetic, logged); synthetic; replay (archive files, see UNISTREAM_REPLAY_PATHS); external "
        "(only producers posting to /v1/ticks)",
    )
    binance_ws_url: str = Field(
        "wss://stream.binance.com:9443", description="Binance websocket base (combined streams are added)"
    )
    binance_rest_url: str = Field("https://api.binance.com", description="Binance REST base (backfill, time)")
    binance_silence_s: float = Field(60.0, gt=0, description="A websocket with no message for this long is replaced, s")
    live_batch_ms: float = Field(
        1.0, ge=0, le=1_000, description="Live trades wait this long for company before they are written, ms"
    )
    record_dir: str = Field("", description="Record live trades as daily Binance trades CSV files here (--record)")
    history_bars: int = Field(
        300,
        ge=0,
        le=1_000,
        description="Closed 1s, 1m, 1h and 1d bars of warm-up history written per symbol to md:history:{SYMBOL}:TF "
        "at start (0: none)",
    )
    history_maxlen: int = Field(
        2_000, ge=1, description="Keep about this many entries per history stream (XADD MAXLEN ~)"
    )
    replay_paths: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Comma-separated Binance archive files (.csv or .zip, trades or aggTrades) to replay"
    )
    replay_symbol: str = Field("", description="Symbol the replay files hold (default: the first of UNISTREAM_SYMBOLS)")
    replay_speed: str = Field("max", description="Replay pace: max, or a factor of real time such as 1 or 60")

    tick_retention_s: int = Field(
        3_600, ge=1, description="Keep ticks this many seconds (XADD MINID ~ now - retention)"
    )
    flush_interval_ms: int = Field(50, ge=1, le=10_000, description="Write buffered ticks this often, ms")
    max_batch_ticks: int = Field(1_000, ge=1, le=100_000, description="Most ticks in one TickBatch entry")
    max_buffer_ticks: int = Field(
        100_000, ge=1, description="Most unsent ticks kept per symbol while Redis is unreachable (oldest dropped)"
    )
    retry_backoff_max_ms: int = Field(2_000, ge=1, description="Longest wait between write retries, ms")
    # The door for other producers (POST and websocket /v1/ticks, see unistream_ingest.door).
    ingest_token: str = Field(
        "",
        description="Bearer token that POST and websocket /v1/ticks require (empty: the door is open to anyone)",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1_024, le=64 * 1_048_576, description="Largest /v1/ticks request body or websocket message, bytes"
    )
    max_batch_items: int = Field(
        1_000, ge=1, le=100_000, description="Most ticks in one /v1/ticks request or message (written as one entry)"
    )

    @field_validator("replay_paths", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return tuple(value)  # type: ignore[arg-type]

    @field_validator("replay_speed")
    @classmethod
    def _check_speed(cls, value: str) -> str:
        if value != "max":
            try:
                factor = float(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a speed; use max or a positive factor such as 1 or 60") from None
            if not factor > 0:
                raise ValueError(f"{value!r} is not a speed; use max or a positive factor such as 1 or 60")
        return value

    @model_validator(mode="after")
    def _check_replay(self) -> IngestSettings:
        if self.replay_symbol:
            check_symbol(self.replay_symbol)
            if self.replay_symbol not in self.symbols:
                raise ValueError(
                    f"UNISTREAM_REPLAY_SYMBOL {self.replay_symbol} is not in UNISTREAM_SYMBOLS "
                    f"({','.join(self.symbols)}): add it there so the other services consume it"
                )
        if self.source == "replay" and not self.replay_paths:
            raise ValueError("UNISTREAM_SOURCE=replay needs files: set UNISTREAM_REPLAY_PATHS or pass --path FILE...")
        return self

    @property
    def replay_factor(self) -> float | None:
        """Replay speed as a factor of real time, None for as fast as possible."""
        return None if self.replay_speed == "max" else float(self.replay_speed)

    @property
    def door_symbols(self) -> tuple[str, ...]:
        """Symbols /v1/ticks accepts: those no built-in source writes (one writer per tick stream)."""
        if self.source == "external":
            return self.symbols
        if self.source == "replay":
            return tuple(s for s in self.symbols if s != self.replay_target)
        return ()

    @field_validator("binance_ws_url")
    @classmethod
    def _check_ws_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError(f"{value!r} is not a websocket URL; use e.g. wss://stream.binance.com:9443")
        return value.rstrip("/")

    @field_validator("binance_rest_url")
    @classmethod
    def _check_rest_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an HTTP URL; use e.g. https://api.binance.com")
        return value.rstrip("/")

    @property
    def replay_target(self) -> str:
        """The symbol replayed files are written as."""
        return self.replay_symbol or self.symbols[0]
