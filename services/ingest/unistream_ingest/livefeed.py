"""The live Binance feed as a tick source for the ingest writer.

:class:`~unistream_ingest.binance.websocket.BinanceLiveSource` de-duplicates, sequences and backfills; this
adapter validates what it delivers (prices, sizes, timestamps, clock skew), records it when
``--record`` is on, turns unrecoverable gaps into :class:`~unistream_common.packets.GapMarker`
packets and wakes the writer as soon as trades arrive, so a tick waits for a micro-batch of a
few milliseconds, not for a fixed flush period.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from unistream_common.packets import GapMarker, Tick
from unistream_ingest.binance.websocket import BinanceLiveSource, ConnectionEvent, LiveEvent
from unistream_ingest.record import Recorder
from unistream_ingest.sequencer import GapEvent
from unistream_ingest.validate import Rejection, Validator
from unistream_ingest.venue import RawTrade

log = logging.getLogger(__name__)


class LiveFeed:
    """Validated live trades, released to the writer on each ``advance``."""

    label = "REAL"

    def __init__(
        self,
        client_factory: Any,
        symbols: tuple[str, ...],
        resume_from: Mapping[str, int] | None = None,
        recorder: Recorder | None = None,
        validator: Validator | None = None,
    ) -> None:
        """``client_factory(on_trades, on_event, resume_from)`` builds the BinanceLiveSource."""
        self.symbols = symbols
        # Backfill can deliver trades hours old after an outage: the venue's REST serves them. Ids
        # are the sequencer's (repeats dropped, gaps declared there): the validator checks values.
        self.validator = validator or Validator(symbols, max_past_ms=None, check_ids=False)
        self.recorder = recorder
        self.client: BinanceLiveSource = client_factory(self._on_trades, self._on_event, resume_from)
        self.wake = asyncio.Event()
        self._ticks: dict[str, list[Tick]] = {}
        self._markers: list[GapMarker] = []
        self._last_ts: dict[str, int] = {}
        self.connected = False

    async def run(self) -> None:
        """Stream until cancelled (the writer runs this beside its own loop)."""
        try:
            await self.client.run()
        finally:
            if self.recorder is not None:
                self.recorder.close()

    async def _on_trades(self, trades: list[RawTrade], recv_ms: int) -> None:
        check = self.validator.check
        for trade in trades:
            out = check(trade, recv_ms)
            if isinstance(out, Rejection):
                continue
            self._ticks.setdefault(trade.symbol, []).append(out)
            self._last_ts[trade.symbol] = out.ts_event_ms
            if self.recorder is not None:
                self.recorder.write(trade, recv_ms)
        if self.recorder is not None:
            self.recorder.flush_if_due(recv_ms)
        self.wake.set()

    async def _on_event(self, event: LiveEvent) -> None:
        if isinstance(event, GapEvent):
            log.warning("%s: trades %d..%d lost (%s)", event.symbol, event.from_id, event.to_id, event.reason)
            last_ts = self._last_ts.get(event.symbol, 0)
            self._markers.append(
                GapMarker(
                    symbol=event.symbol,
                    source="REAL",
                    from_trade_id=event.from_id,
                    to_trade_id=event.to_id,
                    ts_from_ms=last_ts,
                    ts_to_ms=max(event.ts_ms, last_ts),
                    reason=event.reason,
                    ts_recv_ms=event.ts_ms,
                )
            )
            self.wake.set()
        elif isinstance(event, ConnectionEvent):
            self.connected = event.kind == "connected" or (self.connected and event.kind == "rotating")
            log.info("binance websocket %s (%s)", event.kind, event.reason)

    def advance(self, now_ms: int) -> dict[str, list[Tick]]:
        """Trades validated since the last call, per symbol."""
        out, self._ticks = self._ticks, {}
        return out

    def take_markers(self) -> list[GapMarker]:
        """Gap markers decided since the last call, oldest first."""
        out, self._markers = self._markers, []
        return out

    def info(self) -> dict[str, Any]:
        return {"binance": self.client.stats, "validator": self.validator.stats(), "connected": self.connected}
