"""The features core: bars and trades in, training and UI packets out (pure: no I/O, no clock).

Inputs, per configured symbol:

- closed bars of every timeframe (:meth:`FeatureEngine.on_bar`): live bars from the aggregator
  (``md:bars:*``) and warm-up history from ingest (``md:history:*``, ``is_history``), any order;
  they fill the bounded multi-timeframe buffers of :class:`~unistream_model.mtf.BarWindows`;
- trade batches and gap markers (:meth:`on_ticks`, :meth:`on_gap`).

Output: every live 1s bar gets exactly one TrainingDataPacket (:meth:`emit`), built at the bar's
close time ``t`` from data at or before ``t`` only:

- the four windows (1s, 1m, 1h, 1d) of every symbol as of ``t``, one CNN forward pass for all
  symbols together (the state of each symbol carries every symbol's windows and CNN outputs,
  its own first, see :mod:`unistream_model.layout`);
- microstructure of the trades strictly before ``t``;
- warm-up: per timeframe, the share of each window that is real bars.

Trades wait in a per-symbol queue and enter the tick cache only when a state at a later time is
built, so the cache never holds a trade from after the state it serves, whatever order the streams
are read in. A 1s bar waits until its trades have arrived: a later trade was seen, or as many
trades of its second as the bar counts, or it has no trades; after ``tick_wait_ms`` of wall time it
is built without them (counted), so a tick stream that was trimmed away cannot stall the packets.

Restarts: :meth:`rebuild` loads what the streams held up to where the consumer group had read,
with ``emitted_until_ms``, the close time of the newest training packet already written for the
symbol; live 1s bars after that mark are (re)queued, older ones never, so a restart neither loses
nor repeats training packets. The marks of the symbols may differ (each symbol's packets are
committed on their own, and a replica that takes a symbol over finds it behind its own): every
state holds every symbol's windows and trades, so the engine restarts all symbols together from
the earliest mark (:func:`rewind_point`); a symbol ahead of it has its bars and trades after it
read again and its states up to its own mark built again (the others' states wait for its inputs
as they always do) without its packets being output twice.

Times: ``*_ms`` venue/event times come from the data; ``now_ms`` (wall clock) is passed in.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec
import numpy as np

from unistream_common import codec
from unistream_common.keys import TIMEFRAME_MS
from unistream_common.packets import (
    Bar,
    GapMarker,
    ModelStatus,
    Source,
    Tick,
    TickBatch,
    TrainingDataPacket,
    UIDataPacket,
)
from unistream_model import micro
from unistream_model.cnn import BRANCH_FEATURES, HIDDEN, MODEL_NAME, PREDICTION_NAMES, MtfCnnRunner
from unistream_model.layout import DEFAULT_SYMBOLS, StateLayout, assemble, make_layout, time_features
from unistream_model.mtf import DEFAULT_WINDOW_BARS, TIMEFRAMES, BarWindows

_SECOND_MS = 1_000
# Bars kept per 1m/1h/1d buffer beyond the window + 1: a bar let in for one symbol's state must not
# evict one that a lagging symbol's next states still need.
SPARE_BARS = 4
ACTIVE_MS = 10_000  # a symbol with a live 1s bar this recently is expected to have one every second


@dataclass(frozen=True)
class FeatureConfig:
    """Symbols, buffer sizes and waits of the engine (counts, not bytes; ms)."""

    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    window_bars: int = DEFAULT_WINDOW_BARS  # bars per timeframe window
    bar_capacity: int = 1_000  # 1s bars kept per symbol (the other timeframes keep window_bars + 1)
    tick_capacity: int = micro.DEFAULT_CAPACITY  # trades kept per symbol
    tick_max_age_ms: int = micro.DEFAULT_MAX_AGE_MS  # and none older than this before the newest
    horizons_s: tuple[int, ...] = micro.HORIZONS_S  # microstructure horizons
    tick_wait_ms: int = 5_000  # a 1s bar waits at most this long (wall clock) for its trades
    max_pending_ticks: int = 200_000  # trades queued ahead of the states per symbol; beyond, the oldest go in
    ui_max_per_s: float = 10.0  # UI packets per second, all symbols together
    # A state at t waits at most this long (wall clock) for the inputs it depends on that are not in
    # yet (the other active symbols' 1s bar at t and its trades, every 1m/1h/1d bar closing at t), so
    # that a live run builds the states a replay or a catch-up builds. 0: never wait.
    symbol_sync_ms: int = 1_000

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValueError("no symbols configured")
        if self.window_bars < 8:
            raise ValueError(f"window_bars ({self.window_bars}) must be at least 8 (the CNN's minimum)")
        if self.bar_capacity < self.window_bars + 1:
            raise ValueError(
                f"the 1s buffer ({self.bar_capacity} bars) must hold the window plus one bar ({self.window_bars + 1})"
            )
        if self.tick_capacity < 1 or self.tick_max_age_ms < 1000 * max(self.horizons_s):
            raise ValueError(
                f"the tick cache must hold at least 1 trade and reach back the longest horizon "
                f"({max(self.horizons_s)} s), was {self.tick_capacity} trades / {self.tick_max_age_ms} ms"
            )
        if self.ui_max_per_s <= 0:
            raise ValueError(f"ui_max_per_s must be positive, was {self.ui_max_per_s}")


@dataclass
class SymbolState:
    """One symbol's trade queues, bars awaiting a packet, and what the dashboard shows of it."""

    cache: micro.TickCache
    pending: deque[Tick] = field(default_factory=deque)  # trades not yet in the cache, arrival order
    pending_keys: set[tuple[int, int]] = field(default_factory=set)
    pending_per_second: Counter[int] = field(default_factory=Counter)  # second (ts // 1000) -> trades pending
    released_until_ms: int = 0  # trades before this time go straight into the cache
    tick_watermark_ms: int = 0  # newest trade time received
    queue: deque[tuple[Bar, int]] = field(default_factory=deque)  # live 1s bars awaiting their packet, wall ms
    emitted_until_ms: int = 0  # close time of the newest bar whose state was built (or whose packet exists)
    written_until_ms: int = 0  # after a restart: packets exist until here; states up to it are built, not output
    ticks_seen: int = 0
    gaps_seen: int = 0
    trades_missing: int = 0
    bars_seen: int = 0  # live 1s bars taken in
    training_packets: int = 0
    last_price: float = 0.0
    last_tick_ms: int = 0
    last_bar_ms: int = 0
    last_close_ms: dict[str, int] = field(default_factory=dict)  # higher timeframe -> newest live bar's close
    source: Source = "REAL"
    predictions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    ui_sent_ms: int = 0


def _close_time(bar: Bar) -> int:
    return bar.close_time_ms


def rewind_point(emitted_until_ms: dict[str, int], symbols: Iterable[str]) -> int:
    """Where a restart takes up the states of all symbols: the earliest mark of a symbol that has
    packets (0: none has). The states built after it need every symbol's bars and trades as they
    were then, so every symbol's inputs are read again from there.

    A symbol without packets yet (added to the configuration, or no bar so far) does not hold the
    others back: it starts from the beginning of its streams as at a first start, its first states
    seeing the others' trades from this point on.
    """
    return min((m for s in symbols if (m := emitted_until_ms.get(s, 0)) > 0), default=0)


def state_layouts(config: FeatureConfig) -> dict[str, StateLayout]:
    """The layout of each symbol's states under ``config`` (what the engine builds; tools that
    read training packets name their values with it)."""
    micro_names = micro.feature_names(config.horizons_s)
    return {
        s: make_layout(
            config.symbols,
            window_bars=config.window_bars,
            branch_features=BRANCH_FEATURES,
            hidden=HIDDEN,
            n_predictions_per_symbol=len(PREDICTION_NAMES),
            micro_names=micro_names,
            focus=s,
        )
        for s in config.symbols
    }


class FeatureEngine:
    """All symbols' buffers, the CNN, and the packet builders."""

    def __init__(self, config: FeatureConfig, seed: int, now_ms: int) -> None:
        self.config = config
        capacity = {tf: config.window_bars + 1 + SPARE_BARS for tf in TIMEFRAMES}
        capacity["1s"] = config.bar_capacity
        self._capacity = capacity
        self.windows = BarWindows(capacity, symbols=config.symbols)
        self.cnn = MtfCnnRunner(seed, now_ms, window_bars=config.window_bars)
        self.layouts: dict[str, StateLayout] = state_layouts(config)
        self.dim = self.layouts[config.symbols[0]].dim
        self.symbols: dict[str, SymbolState] = {s: self._new_symbol() for s in config.symbols}
        self.events: Counter[str] = Counter()  # what happened, for the shell's counters
        # Live bars that close after every state built so far wait here (a catch-up reads them far
        # ahead of the states); they enter the buffers as the states reach them, so a buffer never
        # loses a bar a coming state needs to bars from after it.
        self._ahead: dict[tuple[str, str], list[Bar]] = {}  # sorted by close time
        self._frontier_ms = 0  # newest time a state was built for
        self._ui_tokens = float(len(config.symbols))
        self._ui_refill_ms = now_ms

    def _new_symbol(self, start_ms: int = 0, written_until_ms: int = 0) -> SymbolState:
        """A symbol whose states go on from ``start_ms``, its packets being output after ``written_until_ms``."""
        cache = micro.TickCache(self.config.tick_capacity, self.config.tick_max_age_ms)
        cache.anchor(start_ms)  # age counts from the states, not from trades ahead of them
        return SymbolState(
            cache=cache, emitted_until_ms=start_ms, released_until_ms=start_ms, written_until_ms=written_until_ms
        )

    def layout_version(self, symbol: str) -> str:
        """``<version>/<role fingerprint>`` of the layout of ``symbol``'s states (the same for every
        symbol: :attr:`~unistream_model.layout.StateLayout.role_fingerprint`)."""
        return self.layouts[symbol].tag

    # --- input -------------------------------------------------------------------------------

    def _known(self, symbol: str, what: str) -> SymbolState | None:
        st = self.symbols.get(symbol)
        if st is None:
            self.events[f"{what}_unknown_symbol"] += 1
        return st

    def on_ticks(self, batch: TickBatch) -> None:
        """Queue a batch of trades (duplicates of queued or cached trades are counted and dropped)."""
        st = self._known(batch.symbol, "ticks")
        if st is None:
            return
        st.source = batch.source
        for t in batch.ticks:
            key = (t.trade_id, t.ts_event_ms)
            if key in st.pending_keys or key in st.cache:
                self.events["ticks_duplicate"] += 1
                continue
            st.ticks_seen += 1
            st.tick_watermark_ms = max(st.tick_watermark_ms, t.ts_event_ms)
            if t.ts_event_ms >= st.last_tick_ms:
                st.last_price, st.last_tick_ms = t.price, t.ts_event_ms
            if t.ts_event_ms < st.released_until_ms:
                # Older than a state already built (another symbol's at the same second, or a late
                # trade): the cache is where it belongs; the state built before it did not see it.
                st.cache.push((t,))
                self.events["ticks_after_state"] += 1
                continue
            st.pending.append(t)
            st.pending_keys.add(key)
            st.pending_per_second[t.ts_event_ms // _SECOND_MS] += 1
        excess = len(st.pending) - self.config.max_pending_ticks
        if excess > 0:
            self.events["ticks_released_early"] += excess
            self._move_to_cache(st, [st.pending.popleft() for _ in range(excess)])

    def on_gap(self, gap: GapMarker) -> None:
        """Count a run of trades ingest could not recover (shown on the dashboard)."""
        st = self._known(gap.symbol, "gaps")
        if st is not None:
            st.gaps_seen += 1
            st.trades_missing += gap.missing

    def on_bar(self, bar: Bar, now_ms: int) -> None:
        """Take in a closed bar: history straight into the buffers; a live bar when the states reach
        its close (at once if they have); a new live 1s bar is also queued for its training packet.
        """
        st = self._known(bar.symbol, "bars")
        if st is None:
            return
        if bar.is_history:
            self._buffer(bar)
            return
        if bar.timeframe != "1s":
            st.last_close_ms[bar.timeframe] = max(st.last_close_ms.get(bar.timeframe, 0), bar.close_time_ms)
        if bar.timeframe == "1s":
            if bar.close_time_ms <= st.last_bar_ms:
                # The aggregator writes a symbol's 1s bars in order: this one was here before.
                self.events["bars_not_newer"] += 1
                return
            st.last_bar_ms = bar.close_time_ms
            if not st.last_tick_ms:
                st.last_price, st.source = bar.close, bar.source
        self._buffer(bar)
        if bar.timeframe != "1s":
            return
        st.bars_seen += 1
        if bar.close_time_ms <= st.emitted_until_ms:
            self.events["bars_already_emitted"] += 1
            return
        st.queue.append((bar, now_ms))

    # --- restart -----------------------------------------------------------------------------

    def rebuild(
        self,
        bars: Iterable[Bar],
        tick_batches: Iterable[TickBatch],
        emitted_until_ms: dict[str, int],
        now_ms: int,
    ) -> None:
        """Forget every buffer and queue; load history, bars and trades read back from the streams.

        ``emitted_until_ms``: per symbol, the close time of the newest training packet on the
        stream. The states of every symbol go on from :func:`rewind_point`: live 1s bars closing
        after it are queued again, other bars wait for their states, trades from it on are queued.
        A symbol whose mark is later has its states up to its mark built again (the other symbols'
        states wait for its inputs as always) but not output. Counters are kept.
        """
        self.windows = BarWindows(self._capacity, symbols=self.config.symbols)
        self._ahead.clear()
        start = rewind_point(emitted_until_ms, self.config.symbols)
        self._frontier_ms = start
        for s in self.config.symbols:
            old = self.symbols[s]
            mark = emitted_until_ms.get(s, 0)
            st = self.symbols[s] = self._new_symbol(start if mark else 0, mark)
            for name in ("ticks_seen", "gaps_seen", "trades_missing", "bars_seen", "training_packets", "source"):
                setattr(st, name, getattr(old, name))
        before = Counter(self.events)
        seen = {s: (st.bars_seen, st.ticks_seen) for s, st in self.symbols.items()}
        for bar in sorted(bars, key=lambda b: b.close_time_ms):
            self.on_bar(bar, now_ms)
        for batch in tick_batches:
            self.on_ticks(batch)
        # What was read back is not news: only new bars and trades count.
        for name in ("ticks_after_state", "ticks_duplicate", "bars_already_emitted", "bars_not_newer"):
            self.events[name] = before[name]
        for s, (bars_seen, ticks_seen) in seen.items():
            self.symbols[s].bars_seen, self.symbols[s].ticks_seen = bars_seen, ticks_seen
        self.windows.events.clear()

    # --- packets -----------------------------------------------------------------------------

    def _move_to_cache(self, st: SymbolState, ticks: Sequence[Tick]) -> None:
        for t in ticks:
            st.pending_keys.discard((t.trade_id, t.ts_event_ms))
            sec = t.ts_event_ms // _SECOND_MS
            st.pending_per_second[sec] -= 1
            if st.pending_per_second[sec] <= 0:
                del st.pending_per_second[sec]
        st.cache.push(ticks)

    def _release(self, st: SymbolState, until_ms: int) -> None:
        """Move the queued trades before ``until_ms`` into the cache."""
        if until_ms <= st.released_until_ms:
            return
        st.released_until_ms = until_ms
        out: list[Tick] = []
        while st.pending and st.pending[0].ts_event_ms < until_ms:
            out.append(st.pending.popleft())
        if out:
            self._move_to_cache(st, out)
        if st.pending_per_second and min(st.pending_per_second) <= (until_ms - 1) // _SECOND_MS:
            # A trade out of time order sat behind a later one: take the early ones from the rest too.
            late = [t for t in st.pending if t.ts_event_ms < until_ms]
            st.pending = deque(t for t in st.pending if t.ts_event_ms >= until_ms)
            self._move_to_cache(st, late)

    def _ready(self, st: SymbolState, bar: Bar, received_ms: int, now_ms: int) -> bool:
        if self._has_trades(st, bar):
            return True
        return now_ms - received_ms >= self.config.tick_wait_ms  # waited long enough: build it without them

    def _active(self, st: SymbolState, t: int) -> bool:
        """Whether a symbol is expected to have a live 1s bar at ``t``: it had one within ACTIVE_MS
        before. (At start-up no symbol is known to be active yet: the very first state is built
        from what has arrived, and may differ from a replay's.)"""
        return bool(st.last_bar_ms) and t - ACTIVE_MS <= st.last_bar_ms

    def _others_behind(self, symbol: str, t: int) -> list[str]:
        """Other active symbols (:meth:`_active`) whose bar at ``t`` is not in yet."""
        return [s for s, o in self.symbols.items() if s != symbol and o.last_bar_ms < t and self._active(o, t)]

    def _inputs_missing(self, symbol: str, t: int) -> list[str]:
        """What a state of ``symbol`` at ``t`` would lack of the inputs it depends on (empty: none).

        A state at ``t`` holds every symbol's bars closing at or before ``t`` and trades before
        ``t``. The active symbols (a live 1s bar within ACTIVE_MS) will have them: the other
        symbols' 1s bar at ``t`` with its trades, and every symbol's 1m/1h/1d bar closing at ``t``
        (the aggregator writes one with the 1s bar that completes it, filled or not).
        """
        missing = [f"{s} 1s" for s in self._others_behind(symbol, t)]
        for s, o in self.symbols.items():
            if s == symbol or not self._active(o, t):
                continue
            if o.queue and o.queue[0][0].close_time_ms == t and not self._has_trades(o, o.queue[0][0]):
                missing.append(f"{s} trades")
        for s, o in self.symbols.items():
            if s != symbol and not (o.last_bar_ms and self._active(o, t)):
                continue
            for tf in ("1m", "1h", "1d"):
                if t % TIMEFRAME_MS[tf] == 0 and o.last_close_ms.get(tf, 0) < t:
                    missing.append(f"{s} {tf}")
        return missing

    def _synced(self, symbol: str, bar: Bar, received_ms: int, now_ms: int) -> bool:
        """Whether every input of the state at the bar's close is in, or ``symbol_sync_ms`` passed waiting."""
        if not self.config.symbol_sync_ms or not self._inputs_missing(symbol, bar.close_time_ms):
            return True
        return now_ms - received_ms >= self.config.symbol_sync_ms

    def _has_trades(self, st: SymbolState, bar: Bar) -> bool:
        """Whether the trades of ``bar`` have arrived: a later trade, or as many of its second as it counts."""
        if bar.trade_count == 0 or st.tick_watermark_ms >= bar.close_time_ms:
            return True
        have = st.pending_per_second.get(bar.open_time_ms // _SECOND_MS, 0)
        if have < bar.trade_count:  # some may be in the cache already (moved early, or late)
            have += st.cache.count_between(bar.open_time_ms, bar.close_time_ms)
        return have >= bar.trade_count

    def bars_ahead(self, symbol: str, timeframe: str) -> int:
        """Live ``timeframe`` bars of ``symbol`` that close after every state built so far (not yet buffered)."""
        q = self._ahead.get((symbol, timeframe))
        return len(q) if q else 0

    def _buffer(self, bar: Bar) -> None:
        """Into the buffers if the states have reached its close, else to wait (sorted by close) until they do."""
        if bar.close_time_ms <= self._frontier_ms:
            self.windows.add(bar)
        else:
            bisect.insort(self._ahead.setdefault((bar.symbol, bar.timeframe), []), bar, key=_close_time)

    def _anchor_caches(self) -> None:
        """Age every tick cache from the earliest state still to come (any symbol's): a symbol that lags
        keeps, in every cache, the trades its states need."""
        fronts = [st.queue[0][0].close_time_ms for st in self.symbols.values() if st.queue]
        earliest = min([*fronts, self._frontier_ms])
        for st in self.symbols.values():
            st.cache.anchor(earliest)

    def _advance(self, t: int) -> None:
        """Let the bars that close by ``t`` into the buffers."""
        self._frontier_ms = max(self._frontier_ms, t)
        for q in self._ahead.values():
            if q and q[0].close_time_ms <= t:
                n = bisect.bisect_right(q, t, key=_close_time)
                for bar in q[:n]:
                    self.windows.add(bar)
                del q[:n]

    def pending_bars(self, symbol: str) -> int:
        """Live 1s bars of ``symbol`` waiting for their training packet."""
        return len(self.symbols[symbol].queue)

    def pending_ticks(self, symbol: str) -> int:
        """Trades of ``symbol`` received but not yet in the cache."""
        return len(self.symbols[symbol].pending)

    def emit(self, now_ms: int) -> list[TrainingDataPacket]:
        """Training packets of every queued 1s bar that is ready, oldest time first.

        The bars of all symbols that close at the same time are served by one CNN pass.
        """
        out: list[TrainingDataPacket] = []
        while True:
            ready: dict[str, Bar] = {}
            for s, st in self.symbols.items():
                if st.queue and self._ready(st, *st.queue[0], now_ms) and self._synced(s, *st.queue[0], now_ms):
                    ready[s] = st.queue[0][0]
            if not ready:
                self._anchor_caches()
                return out
            t = min(b.close_time_ms for b in ready.values())
            due = {s: b for s, b in ready.items() if b.close_time_ms == t}
            # A state rebuilt after a restart whose packet exists already is built (it moves the
            # buffers and caches as the first time) and not output.
            new = {s: b for s, b in due.items() if t > self.symbols[s].written_until_ms}
            out.extend(self._packets_at(t, new, now_ms))
            for s, bar in due.items():
                st = self.symbols[s]
                if s in new:
                    if bar.trade_count and not self._has_trades(st, bar):
                        self.events["bars_without_all_trades"] += 1
                    if self.config.symbol_sync_ms and self._inputs_missing(s, t):
                        self.events["states_without_other_symbols"] += 1
                    st.training_packets += 1
                st.queue.popleft()
                st.emitted_until_ms = t
            self.events["training_packets"] += len(new)

    def _packets_at(self, t: int, due: dict[str, Bar], now_ms: int) -> list[TrainingDataPacket]:
        cfg = self.config
        symbols = cfg.symbols
        windows = np.empty((len(symbols), len(TIMEFRAMES), 5, cfg.window_bars), np.float32)
        fills: dict[str, dict[str, float]] = {}
        self._advance(t)
        for k, s in enumerate(symbols):
            self._release(self.symbols[s], t)
            windows[k], n_real = self.windows.windows(s, t, cfg.window_bars)
            fills[s] = {tf: n_real[tf] / cfg.window_bars for tf in TIMEFRAMES}
        version, branch, hidden, preds = self.cnn.infer_with_version(windows)
        status = self.cnn.status
        micro_values: dict[str, np.ndarray] = {}
        coverage: dict[str, float] = {}
        for s in symbols:
            micro_values[s], coverage[s] = micro.micro_features(self.symbols[s].cache, t, cfg.horizons_s)
        parts: dict[str, np.ndarray] = {"time": time_features(t)}
        for k, s in enumerate(symbols):
            for j, tf in enumerate(TIMEFRAMES):
                parts[f"{s}.window.{tf}"] = windows[k, j]
            parts[f"{s}.cnn.branch"] = branch[k]
            parts[f"{s}.cnn.hidden"] = hidden[k]
            parts[f"{s}.cnn.predictions"] = preds[k]
            parts[f"{s}.micro"] = micro_values[s]
            parts[f"{s}.warmup"] = np.array([fills[s][tf] for tf in TIMEFRAMES], np.float32)
        out = []
        for s, bar in due.items():
            k = symbols.index(s)
            state = assemble(self.layouts[s], parts)
            self.symbols[s].predictions = preds[k]
            fill = fills[s]
            out.append(
                TrainingDataPacket(
                    symbol=s,
                    ts_event_ms=t,
                    price=bar.close,
                    source=bar.source,
                    state_dim=state.size,
                    state=codec.f32_to_bytes(state),
                    cnn_features=codec.f32_to_bytes(hidden[k]),
                    cnn_predictions=codec.f32_to_bytes(preds[k]),
                    prediction_names=list(PREDICTION_NAMES),
                    model_version=version,
                    window_fill=float(np.mean(list(fill.values()))),
                    layout_version=self.layout_version(s),
                    cnn_state=status.state if status.version == version else "LOADED",
                    warmup=fill,
                    warm=all(v == 1.0 for v in fill.values()),
                    tick_coverage=coverage[s],
                    ts_emit_ms=now_ms,
                )
            )
        return out

    # --- status ------------------------------------------------------------------------------

    def model_status(self) -> ModelStatus:
        s = self.cnn.status
        return ModelStatus(
            name=MODEL_NAME, version=s.version, state=s.state, parameters=s.parameters, updated_ms=s.updated_ms
        )  # type: ignore[arg-type]

    def warmup(self, symbol: str, until_ms: int) -> dict[str, float]:
        """Share of each of ``symbol``'s windows at ``until_ms`` that is real bars."""
        return self.windows.fill(symbol, until_ms, self.config.window_bars)

    def ui_packets(self, now_ms: int) -> list[UIDataPacket]:
        """Status packets for the symbols that waited longest, at most ``ui_max_per_s`` a second overall."""
        cfg = self.config
        rate = cfg.ui_max_per_s
        self._ui_tokens = min(float(len(cfg.symbols)), self._ui_tokens + (now_ms - self._ui_refill_ms) * rate / 1000)
        self._ui_refill_ms = now_ms
        status = self.model_status()
        candidates = sorted((st.ui_sent_ms, s) for s, st in self.symbols.items() if st.last_price > 0)
        out = []
        for _, s in candidates:
            if self._ui_tokens < 1:
                break
            self._ui_tokens -= 1
            st = self.symbols[s]
            st.ui_sent_ms = now_ms
            has_preds = st.predictions.size == len(PREDICTION_NAMES)
            latest = [b for tf in TIMEFRAMES if (b := self._newest_bar(s, tf)) is not None]
            until = max(st.last_bar_ms, st.emitted_until_ms)
            out.append(
                UIDataPacket(
                    symbol=s,
                    ts_ms=now_ms,
                    source=st.source,
                    last_price=st.last_price,
                    last_tick_ms=st.last_tick_ms,
                    tick_cache_size=len(st.cache),
                    tick_cache_capacity=cfg.tick_capacity,
                    ticks_seen=st.ticks_seen,
                    gaps_seen=st.gaps_seen,
                    trades_missing=st.trades_missing,
                    bars_1s_size=self.windows.size(s, "1s"),
                    bars_1s_capacity=cfg.bar_capacity,
                    bars_seen=st.bars_seen,
                    training_packets=st.training_packets,
                    cnn=status,
                    rl_state_dim=self.dim,
                    cnn_predictions=codec.f32_to_bytes(st.predictions) if has_preds else b"",
                    prediction_names=list(PREDICTION_NAMES) if has_preds else [],
                    latest_bars=latest,
                    bars_buffered={tf: self.windows.size(s, tf) + self.bars_ahead(s, tf) for tf in TIMEFRAMES},
                    warmup=self.warmup(s, until) if until else dict.fromkeys(TIMEFRAMES, 0.0),
                    layout_version=self.layout_version(s),
                    last_bar_ms=st.last_bar_ms,
                )
            )
        return out

    def _newest_bar(self, symbol: str, timeframe: str) -> Bar | None:
        """The newest bar held for ``(symbol, timeframe)``, buffered or still waiting for the states."""
        ahead = self._ahead.get((symbol, timeframe))
        return ahead[-1] if ahead else self.windows.latest(symbol, timeframe)

    def drain_events(self) -> dict[str, int]:
        """Events counted since the last call (for the shell's counters), the buffers' included."""
        out = dict(self.events)
        self.events.clear()
        for name, n in self.windows.events.items():
            out[name] = out.get(name, 0) + n
        self.windows.events.clear()
        return out


class TrainingChain:
    """The entry id of every training packet, and the link from each to its symbol's previous one.

    Training entries get explicit ids on their symbol's stream, assigned here as Redis would
    (``<ms>-<seq>``, ``ms`` the wall clock passed in, never going back on that stream), so that a
    packet can name its symbol's previous packet (``prev_id``, ``prev_ts_event_ms``) before either
    is written. After a restart or a rewind the chain continues from what the streams hold
    (:meth:`restart`). Pure: no I/O, no clock.
    """

    def __init__(self) -> None:
        self.last_id: dict[str, tuple[int, int]] = {}  # symbol -> the last id given on its stream
        self.newest: dict[str, tuple[str, int]] = {}  # symbol -> (entry id, ts_event_ms) of its newest packet

    def restart(self, last_ids: dict[str, tuple[int, int]], newest: dict[str, tuple[str, int]]) -> None:
        """Continue after each symbol stream's last generated id and the newest packet in it."""
        for symbol, last in last_ids.items():
            self.last_id[symbol] = max(self.last_id.get(symbol, (0, 0)), last)
        self.newest = dict(newest)

    def link(self, packet: TrainingDataPacket, now_ms: int) -> tuple[str, TrainingDataPacket]:
        """(entry id, the packet naming its symbol's previous one) for the symbol's next packet written."""
        ms, seq = self.last_id.get(packet.symbol, (0, 0))
        last = (ms, seq + 1) if now_ms <= ms else (now_ms, 0)
        self.last_id[packet.symbol] = last
        entry_id = f"{last[0]}-{last[1]}"
        prev_id, prev_ts = self.newest.get(packet.symbol, ("", 0))
        linked = msgspec.structs.replace(packet, prev_id=prev_id, prev_ts_event_ms=prev_ts)
        self.newest[packet.symbol] = (entry_id, packet.ts_event_ms)
        return entry_id, linked
