"""What venue parsers hand to the rest of ingest: parsed trades and control events, before validation.

A parser turns one venue message (or archive row, or REST item) into these values and never
decides what is acceptable beyond "this is well-formed"; :mod:`unistream_ingest.validate`
decides what gets written. Malformed input raises :class:`ParseError` with a reason that names
the fact, so the caller can count it by reason and keep a sample.
"""

from __future__ import annotations

from dataclasses import dataclass


class ParseError(ValueError):
    """A venue message or row is malformed; ``reason`` is a short, countable label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RawTrade:
    """One trade as the venue reported it.

    ``price`` and ``size`` are float64 parsed from the venue's decimal strings (exact for
    Binance's at most 15 significant digits). ``buyer_is_maker`` is Binance's ``m``: true means
    the aggressor SOLD. ``ts_event_ms`` is the venue's trade time in ms (µs inputs are
    converted); ``count`` is how many raw trades it stands for (aggTrades: l - f + 1).
    """

    symbol: str
    trade_id: int
    price: float
    size: float
    buyer_is_maker: bool
    ts_event_ms: int
    count: int = 1


@dataclass(frozen=True, slots=True)
class TradeEvent:
    """A trade message from the live stream; ``event_ms`` is the venue's event time (``E``)."""

    trade: RawTrade
    event_ms: int


@dataclass(frozen=True, slots=True)
class ShutdownEvent:
    """The venue announced it will close this connection (Binance ``serverShutdown``)."""

    event_ms: int


@dataclass(frozen=True, slots=True)
class IgnoredEvent:
    """A well-formed message that carries no trade (subscription replies, other event types)."""

    reason: str


VenueEvent = TradeEvent | ShutdownEvent | IgnoredEvent
