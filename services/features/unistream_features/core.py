"""The features core: tick batches and 1s bars in, training and UI packets out (pure).

Per symbol it keeps a tick cache (the last ``tick_capacity`` trades) and a bar buffer (the last
``bar_capacity`` 1s bars, sorted and unique by ``open_time_ms``). When a 1s bar closes and at
least ``min_bars`` bars are buffered, it builds the state of that bar (window, CNN, tick
microstructure; layout in :mod:`unistream_features.state`) and returns a TrainingDataPacket.

Restarts: the shell rebuilds the buffers from the streams (:meth:`FeatureEngine.rebuild`) and
passes ``emitted_until_ms``, the close time of the newest training packet already written for the
symbol. A bar that is delivered again, or delivered for the first time after the rebuild already
put it in the buffer, is emitted when it is newer than that mark and not otherwise, so a restart
neither loses nor repeats training packets. The window of such a bar ends at the bar itself,
never at newer buffered bars.

Nothing here reads a clock: times come in as arguments (``now_ms``).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from unistream_common import codec
from unistream_common.packets import Bar, GapMarker, ModelStatus, Source, TickBatch, TrainingDataPacket, UIDataPacket
from unistream_features import microstructure as micro
from unistream_features.cnn import MODEL_NAME, PREDICTION_NAMES, CnnRunner
from unistream_features.state import StateLayout, assemble, make_layout
from unistream_features.window import build_window


@dataclass(frozen=True)
class FeatureConfig:
    """Sizes of the per-symbol buffers and the window (counts, not bytes)."""

    tick_capacity: int = 5_000  # trades kept per symbol
    bar_capacity: int = 1_000  # 1s bars kept per symbol
    window_bars: int = 300  # bars in the CNN window and the state
    min_bars: int = 20  # no state before this many bars are buffered
    horizons_s: tuple[int, ...] = micro.HORIZONS_S  # microstructure horizons, seconds

    def __post_init__(self) -> None:
        if not 1 <= self.min_bars <= self.window_bars:
            raise ValueError(f"min_bars ({self.min_bars}) must be between 1 and window_bars ({self.window_bars})")
        if self.window_bars > self.bar_capacity:
            raise ValueError(f"window_bars ({self.window_bars}) exceeds bar_capacity ({self.bar_capacity})")


@dataclass
class SymbolState:
    """Buffers and counters of one symbol."""

    ticks: micro.TickCache
    bars: list[Bar] = field(default_factory=list)  # sorted by open_time_ms, unique
    opens: list[int] = field(default_factory=list)  # open_time_ms of ``bars``, for bisect
    # Trades / new 1s bars taken in by this process. A rebuild from the streams counts what it
    # loaded (never below the cache's size), so the dashboard's total is never below the cache.
    ticks_seen: int = 0
    gaps_seen: int = 0  # GapMarkers read from the tick stream
    trades_missing: int = 0  # trades they span
    bars_seen: int = 0
    training_packets: int = 0  # training packets produced by this process
    emitted_until_ms: int = 0  # close time of the newest bar a training packet exists for
    last_price: float = 0.0
    last_tick_ms: int = 0
    source: Source = "REAL"
    predictions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


class FeatureEngine:
    """All symbols' buffers, the CNN, and the packet builders."""

    def __init__(self, config: FeatureConfig, seed: int, now_ms: int) -> None:
        self.config = config
        self.layout: StateLayout = make_layout(config.window_bars, config.horizons_s)
        self.cnn = CnnRunner(seed, now_ms)
        self.symbols: dict[str, SymbolState] = {}
        self.events: Counter[str] = Counter()  # what happened, for the shell's stats

    # --- state -----------------------------------------------------------------------------

    def symbol(self, symbol: str) -> SymbolState:
        st = self.symbols.get(symbol)
        if st is None:
            st = self.symbols[symbol] = SymbolState(ticks=micro.TickCache(self.config.tick_capacity))
        return st

    def rebuild(
        self, symbol: str, bars: Iterable[Bar], tick_batches: Iterable[TickBatch], emitted_until_ms: int
    ) -> None:
        """Replace a symbol's buffers with history read from the streams (any order; duplicates ignored).

        Counters of what this process saw are kept; only the buffers and the emission mark change.
        """
        st = self.symbol(symbol)
        by_open = {b.open_time_ms: b for b in bars if b.symbol == symbol and b.timeframe == "1s"}
        ordered = [by_open[k] for k in sorted(by_open)][-self.config.bar_capacity :]
        st.bars = ordered
        st.opens = [b.open_time_ms for b in ordered]
        st.ticks.clear()
        batches = sorted(
            (tb for tb in tick_batches if tb.symbol == symbol),
            key=lambda tb: (tb.ticks[0].ts_event_ms, tb.ticks[0].trade_id),
        )
        for tb in batches:
            st.ticks.push(tb.ticks)
            st.source = tb.source
        st.emitted_until_ms = emitted_until_ms
        if batches:
            last = batches[-1].ticks[-1]
            st.last_price, st.last_tick_ms = last.price, last.ts_event_ms
        elif ordered and not st.last_price:
            st.last_price = ordered[-1].close
        if ordered and not batches:
            st.source = ordered[-1].source
        self.events["rebuilt_bars"] += len(ordered)
        self.events["rebuilt_ticks"] += len(st.ticks)
        st.ticks_seen = max(st.ticks_seen, len(st.ticks))
        st.bars_seen = max(st.bars_seen, len(st.bars))

    def on_gap(self, gap: GapMarker) -> None:
        """Count a run of trades ingest could not recover (shown on the dashboard)."""
        st = self.symbol(gap.symbol)
        st.gaps_seen += 1
        st.trades_missing += gap.missing

    def on_ticks(self, batch: TickBatch) -> None:
        """Add a batch of trades to its symbol's cache."""
        st = self.symbol(batch.symbol)
        added = st.ticks.push(batch.ticks)
        st.ticks_seen += added
        self.events["ticks_duplicate"] += len(batch.ticks) - added
        last = batch.ticks[-1]
        if last.ts_event_ms >= st.last_tick_ms:
            st.last_price, st.last_tick_ms = last.price, last.ts_event_ms
        st.source = batch.source

    def on_bar(self, bar: Bar) -> TrainingDataPacket | None:
        """Buffer a closed 1s bar; the training packet of its state when one is due, else None."""
        if bar.timeframe != "1s":
            self.events["bars_wrong_timeframe"] += 1
            return None
        st = self.symbol(bar.symbol)
        i = bisect.bisect_left(st.opens, bar.open_time_ms)
        if i == len(st.opens):
            st.bars.append(bar)
            st.opens.append(bar.open_time_ms)
            st.bars_seen += 1
            excess = len(st.bars) - self.config.bar_capacity
            if excess > 0:
                del st.bars[:excess], st.opens[:excess]
                i -= excess
            if not st.last_tick_ms:
                st.last_price = bar.close
                st.source = bar.source
        elif st.opens[i] == bar.open_time_ms:
            self.events["bars_duplicate"] += 1
        else:
            # Older than the newest buffered bar and not in the buffer: the aggregator only emits final
            # bars in order, so this is history that fell out of (or never reached) the buffer.
            self.events["bars_out_of_order"] += 1
            return None
        if bar.close_time_ms <= st.emitted_until_ms:
            return None
        if i + 1 < self.config.min_bars:
            self.events["bars_warming_up"] += 1
            return None
        packet = self.training_packet(bar.symbol, i)
        st.emitted_until_ms = bar.close_time_ms
        st.training_packets += 1
        self.events["training_packets"] += 1
        return packet

    # --- packets ---------------------------------------------------------------------------

    def state_at(self, symbol: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(state, cnn hidden, predictions, window_fill) of the symbol after buffered bar ``index``."""
        st = self.symbols[symbol]
        w = self.config.window_bars
        start = max(0, index + 1 - w)
        prev_close = st.bars[start - 1].close if start > 0 else None
        window, fill = build_window(st.bars[start : index + 1], w, prev_close)
        hidden, preds = self.cnn.infer(window)
        micro_values, coverage = micro.microstructure(st.ticks, st.bars[index].close_time_ms, self.config.horizons_s)
        state = assemble(self.layout, window, hidden, preds, micro_values, fill, coverage)
        return state, hidden, preds, fill

    def training_packet(self, symbol: str, index: int) -> TrainingDataPacket:
        """The training packet of buffered bar ``index`` of ``symbol``."""
        st = self.symbols[symbol]
        bar = st.bars[index]
        state, hidden, preds, fill = self.state_at(symbol, index)
        st.predictions = preds
        return TrainingDataPacket(
            symbol=symbol,
            ts_event_ms=bar.close_time_ms,
            price=bar.close,
            source=bar.source,
            state_dim=self.layout.dim,
            state=codec.f32_to_bytes(state),
            cnn_features=codec.f32_to_bytes(hidden),
            cnn_predictions=codec.f32_to_bytes(preds),
            prediction_names=list(PREDICTION_NAMES),
            model_version=self.cnn.status.version,
            window_fill=min(1.0, fill),
        )

    def model_status(self) -> ModelStatus:
        s = self.cnn.status
        return ModelStatus(
            name=MODEL_NAME, version=s.version, state=s.state, parameters=s.parameters, updated_ms=s.updated_ms
        )  # type: ignore[arg-type]

    def ui_packets(self, now_ms: int, symbols: Sequence[str] | None = None) -> list[UIDataPacket]:
        """One status packet per symbol that has a price (from a trade or a bar)."""
        status = self.model_status()
        out = []
        for symbol in symbols if symbols is not None else sorted(self.symbols):
            st = self.symbols.get(symbol)
            if st is None or st.last_price <= 0:
                continue
            has_preds = st.predictions.size == len(PREDICTION_NAMES)
            out.append(
                UIDataPacket(
                    symbol=symbol,
                    ts_ms=now_ms,
                    source=st.source,
                    last_price=st.last_price,
                    last_tick_ms=st.last_tick_ms,
                    tick_cache_size=len(st.ticks),
                    tick_cache_capacity=self.config.tick_capacity,
                    ticks_seen=st.ticks_seen,
                    gaps_seen=st.gaps_seen,
                    trades_missing=st.trades_missing,
                    bars_1s_size=len(st.bars),
                    bars_1s_capacity=self.config.bar_capacity,
                    bars_seen=st.bars_seen,
                    training_packets=st.training_packets,
                    cnn=status,
                    rl_state_dim=self.layout.dim,
                    cnn_predictions=codec.f32_to_bytes(st.predictions) if has_preds else b"",
                    prediction_names=list(PREDICTION_NAMES) if has_preds else [],
                )
            )
        return out

    def drain_events(self) -> dict[str, int]:
        """Events counted since the last call (for the shell's counters)."""
        out = dict(self.events)
        self.events.clear()
        return out
