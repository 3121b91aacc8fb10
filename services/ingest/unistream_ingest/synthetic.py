"""The synthetic source: a seeded market that stands in, and says so, when no venue can be reached.

Pure: no Redis, no clock, no I/O; time comes in as an argument (``now_ms``, integer milliseconds
since the Unix epoch, UTC).

:class:`SyntheticMarket` produces trades that look enough like a crypto spot market to train on.
It simulates on a fixed grid: blocks of one second (aligned to ``start_ms``), each made of ten
100 ms steps. Per symbol and block:

- **Volatility clustering**: a GARCH(1,1) variance on the one-second scale, driven by the market
  (common) shock, times a slow log-normal regime (AR(1) with a 15-minute memory). Both are shared
  by all symbols, as crypto volatility is market-wide.
- **Fat tails**: step shocks are Student-t (5 degrees of freedom) scaled to unit variance.
- **Correlation**: each symbol's shock is ``b * common + sqrt(1 - b^2) * own``; ``b^2`` is 0.9
  for ETHUSDT and BTCUSDT, so after the idiosyncratic price impact their one-second returns
  correlate at about 0.8.
- **Bursty arrivals**: trade counts per 100 ms step are Poisson with a self-exciting (Hawkes-like)
  intensity: a base rate scaled by the current volatility plus an excitation that jumps with
  every trade and decays with a 2 s time constant (branching ratio 0.65).
- **Order flow that moves price**: the aggressor side is BUY with probability
  ``logistic(k * shock + flow)``, where ``flow`` is a persistent (5 s) per-symbol imbalance;
  every trade shifts the mid by a square-root impact in the direction of its aggressor, so a
  run of buys pushes the price up and the imbalance carries short-term predictive signal.
- Trades execute at the touch: buys at the ask, sells at the bid, one tick apart (bid-ask
  bounce). Prices are multiples of the tick size, sizes multiples of the lot, both > 0.

Determinism: every symbol and the common factor draw from their own generator seeded by
``(seed, start_ms, symbol)``, and blocks are simulated whole and in order, so the same
arguments give the same trades however :meth:`SyntheticMarket.advance` calls are chunked,
and one symbol's trades do not depend on which other symbols are configured.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from unistream_common.keys import check_symbol
from unistream_common.packets import Tick

BLOCK_MS = 1_000  # one GARCH update and one batch of random draws per block
STEP_MS = 100  # Poisson arrivals and the diffusion advance on this grid
STEPS_PER_BLOCK = BLOCK_MS // STEP_MS
SECONDS_PER_YEAR = 365 * 86_400

# Shared dynamics (per one-second block unless stated otherwise).
T_DF = 5.0  # Student-t degrees of freedom of the step shocks: finite kurtosis, fat tails
GARCH_ALPHA = 0.08
GARCH_BETA = 0.90
GARCH_OMEGA = 1.0 - GARCH_ALPHA - GARCH_BETA  # unconditional variance multiplier = 1
REGIME_PHI = math.exp(-1.0 / 900.0)  # slow volatility regime, 15-minute memory
REGIME_SD = 0.3  # stationary standard deviation of the log regime
HAWKES_TAU_S = 2.0  # decay time of the self-excitation
HAWKES_BRANCHING = 0.65  # expected trades triggered by one trade (< 1: stationary)
MAX_RATE_PER_S = 2_000.0  # caps a runaway burst
FLOW_PHI = math.exp(-(STEP_MS / 1000) / 5.0)  # order-flow imbalance memory, 5 s
FLOW_SD = 0.6  # stationary sd of the imbalance (logit units)
SIDE_SHOCK_K = 0.8  # how strongly the step's price shock sets the aggressor side
SIZE_LOG_SD = 1.3  # log-normal trade notional: heavy right tail


@dataclass(frozen=True)
class SymbolSpec:
    """How one symbol behaves.

    Attributes:
        start_price: first mid price, quote currency (USDT).
        tick_size: price increment (quote).
        lot_size: size increment (base asset).
        annual_vol: annualised volatility of log returns (0.65 = 65 %).
        base_rate: trades per second before self-excitation (the mean is about
            ``base_rate / (1 - branching)``).
        median_notional: median trade value, quote currency.
        market_loading_sq: share of return variance from the common (market) factor.
        impact: log-price move of one median-sized trade (2e-6 = 0.02 basis points).
    """

    start_price: float
    tick_size: float = 0.01
    lot_size: float = 1e-3
    annual_vol: float = 0.8
    base_rate: float = 2.0
    median_notional: float = 100.0
    market_loading_sq: float = 0.7
    impact: float = 3e-6


KNOWN_SPECS: dict[str, SymbolSpec] = {
    "ETHUSDT": SymbolSpec(
        start_price=3_000.0, lot_size=1e-4, annual_vol=0.65, base_rate=4.5, median_notional=300.0,
        market_loading_sq=0.9,
    ),
    "BTCUSDT": SymbolSpec(
        start_price=90_000.0, lot_size=1e-5, annual_vol=0.50, base_rate=5.5, median_notional=500.0,
        market_loading_sq=0.9,
    ),
}  # fmt: skip
DEFAULT_SPEC = SymbolSpec(start_price=100.0)


def spec_for(symbol: str) -> SymbolSpec:
    """Behaviour of ``symbol``: a known spec, else a mid-cap default starting at 100.0."""
    return KNOWN_SPECS.get(symbol, DEFAULT_SPEC)


def _decimals(step: float) -> int:
    """Decimal places of a power-of-ten increment such as 0.01 or 1e-5."""
    return max(0, -math.floor(math.log10(step) + 1e-9))


def _student_t(rng: np.random.Generator, shape: int | tuple[int, ...]) -> np.ndarray:
    """Student-t draws scaled to unit variance."""
    return rng.standard_t(T_DF, shape) * math.sqrt((T_DF - 2.0) / T_DF)


@dataclass
class _Released:
    """Simulated trades of one symbol waiting for ``advance`` to release them (columns)."""

    ids: deque[int] = field(default_factory=deque)
    prices: deque[float] = field(default_factory=deque)
    sizes: deque[float] = field(default_factory=deque)
    buys: deque[bool] = field(default_factory=deque)
    ts: deque[int] = field(default_factory=deque)


class _SymbolState:
    """Per-symbol simulation state between blocks."""

    def __init__(self, symbol: str, spec: SymbolSpec, rng: np.random.Generator, price: float, first_id: int) -> None:
        self.symbol = symbol
        self.spec = spec
        self.rng = rng
        self.log_mid = math.log(price)
        self.next_id = first_id
        # trades/s added by recent trades; starts at its stationary mean so the first seconds look typical
        self.excitation = spec.base_rate * HAWKES_BRANCHING / (1.0 - HAWKES_BRANCHING)
        self.flow = 0.0  # order-flow imbalance, logit units
        self.loading = math.sqrt(spec.market_loading_sq)
        self.own_weight = math.sqrt(1.0 - spec.market_loading_sq)
        self.sigma_step = spec.annual_vol / math.sqrt(SECONDS_PER_YEAR) * math.sqrt(STEP_MS / 1000)
        self.price_decimals = _decimals(spec.tick_size)
        self.size_decimals = _decimals(spec.lot_size)
        self.pending = _Released()
        self.last_price = price


class SyntheticMarket:
    """A seeded synthetic spot market for several symbols (see the module docstring).

    Args:
        symbols: venue symbols such as ``ETHUSDT``.
        seed: integer seed (any sign); with ``start_ms`` it fixes every trade.
        start_ms: simulation start, ms since the epoch; trades have ``ts_event_ms > start_ms``.
        start_prices: optional first mid price per symbol (e.g. to continue after a restart).
        first_trade_ids: optional first trade id per symbol. The default is ``start_ms``, so ids
            keep increasing across restarts (at fewer than 1,000 trades/s) and a restart shows
            as an id gap rather than a false continuity.
    """

    label = "SYNTHETIC"  # the source recorded on every batch it produces

    def __init__(
        self,
        symbols: Sequence[str],
        seed: int,
        start_ms: int,
        start_prices: Mapping[str, float] | None = None,
        first_trade_ids: Mapping[str, int] | None = None,
    ) -> None:
        if not symbols:
            raise ValueError("a synthetic market needs at least one symbol")
        if start_ms < 0:
            raise ValueError(f"start_ms was negative ({start_ms})")
        start_prices = start_prices or {}
        first_trade_ids = first_trade_ids or {}
        self.seed = seed
        self.start_ms = start_ms
        seed = seed % 2**64  # numpy seeds are non-negative; any configured integer is accepted
        self._common_rng = np.random.default_rng([seed, start_ms, 0])
        self._symbols: list[_SymbolState] = []
        for symbol in symbols:
            check_symbol(symbol)
            spec = spec_for(symbol)
            price = float(start_prices.get(symbol, spec.start_price))
            if not price > 0:
                raise ValueError(f"start price of {symbol} was not positive ({price})")
            rng = np.random.default_rng([seed, start_ms, 1, zlib.crc32(symbol.encode())])
            self._symbols.append(_SymbolState(symbol, spec, rng, price, int(first_trade_ids.get(symbol, start_ms))))
        self._garch_h = 1.0  # variance multiplier of the coming block
        self._log_regime = 0.0
        self._simulated_to_ms = start_ms  # end of the last simulated block
        self._released_to_ms = start_ms

    @property
    def symbols(self) -> list[str]:
        return [st.symbol for st in self._symbols]

    @property
    def released_to_ms(self) -> int:
        """Time up to which trades have been released (inclusive), ms."""
        return self._released_to_ms

    def last_prices(self) -> dict[str, float]:
        """Price of the last simulated trade (or the start price) per symbol."""
        return {st.symbol: st.last_price for st in self._symbols}

    def info(self) -> dict[str, object]:
        """State for /stats."""
        return {"start_ms": self.start_ms, "released_to_ms": self.released_to_ms}

    def advance(self, now_ms: int) -> dict[str, list[Tick]]:
        """Trades with ``previous now < ts_event_ms <= now_ms`` per symbol, in trade-id order.

        ``ts_recv_ms`` of each trade is ``now_ms``: the moment this call hands it over. A
        ``now_ms`` at or before the previous one returns no trades.
        """
        out: dict[str, list[Tick]] = {st.symbol: [] for st in self._symbols}
        if now_ms <= self._released_to_ms:
            return out
        while self._simulated_to_ms < now_ms:
            self._simulate_block()
        for st in self._symbols:
            q = st.pending
            ticks = out[st.symbol]
            while q.ts and q.ts[0] <= now_ms:
                ticks.append(
                    Tick(
                        trade_id=q.ids.popleft(),
                        price=q.prices.popleft(),
                        size=q.sizes.popleft(),
                        aggressor_side="BUY" if q.buys.popleft() else "SELL",
                        ts_event_ms=q.ts.popleft(),
                        ts_recv_ms=now_ms,
                    )
                )
        self._released_to_ms = now_ms
        return out

    # --- simulation ------------------------------------------------------------------------

    def _simulate_block(self) -> None:
        block_start = self._simulated_to_ms
        regime_var = math.exp(2.0 * self._log_regime - 2.0 * REGIME_SD**2)  # mean 1
        vol_mult = math.sqrt(self._garch_h * regime_var)
        common = _student_t(self._common_rng, STEPS_PER_BLOCK)
        regime_noise = float(self._common_rng.standard_normal())
        for st in self._symbols:
            self._simulate_symbol(st, block_start, common, vol_mult)
        # GARCH on the one-second scale, driven by the block's standardised market shock.
        shock_1s = float(common.sum()) / math.sqrt(STEPS_PER_BLOCK)
        self._garch_h = GARCH_OMEGA + GARCH_ALPHA * self._garch_h * shock_1s**2 + GARCH_BETA * self._garch_h
        self._log_regime = REGIME_PHI * self._log_regime + REGIME_SD * math.sqrt(1 - REGIME_PHI**2) * regime_noise
        self._simulated_to_ms = block_start + BLOCK_MS

    def _simulate_symbol(self, st: _SymbolState, block_start: int, common: np.ndarray, vol_mult: float) -> None:
        spec, rng = st.spec, st.rng
        shocks = st.loading * common + st.own_weight * _student_t(rng, STEPS_PER_BLOCK)
        flow_noise = rng.standard_normal(STEPS_PER_BLOCK) * (FLOW_SD * math.sqrt(1 - FLOW_PHI**2))
        dt_s = STEP_MS / 1000
        decay = math.exp(-dt_s / HAWKES_TAU_S)
        jump = HAWKES_BRANCHING / HAWKES_TAU_S
        base = spec.base_rate * vol_mult
        counts = np.empty(STEPS_PER_BLOCK, dtype=np.int64)
        flows = np.empty(STEPS_PER_BLOCK)
        excitation, flow = st.excitation, st.flow
        for k in range(STEPS_PER_BLOCK):
            rate = min(base + excitation, MAX_RATE_PER_S)
            n = int(rng.poisson(rate * dt_s))
            counts[k] = n
            flow = FLOW_PHI * flow + float(flow_noise[k])
            flows[k] = flow
            excitation = excitation * decay + jump * n
        st.excitation, st.flow = excitation, flow

        diffusion = st.sigma_step * vol_mult * shocks  # log-price move of each step
        total = int(counts.sum())
        # Per-trade draws, always made (even when empty) so the stream of draws has a fixed shape.
        u_time = rng.random(total)
        u_side = rng.random(total)
        z_size = rng.standard_normal(total)
        if total == 0:
            st.log_mid += float(diffusion.sum())
            return

        step = np.repeat(np.arange(STEPS_PER_BLOCK), counts)
        offset_ms = 1 + np.floor(u_time * STEP_MS).astype(np.int64)  # in (step start, step end]
        order = np.lexsort((offset_ms, step))
        offset_ms = offset_ms[order]  # step is already sorted and stays so under this order
        frac = offset_ms / STEP_MS
        p_buy = 1.0 / (1.0 + np.exp(-(SIDE_SHOCK_K * shocks[step] + flows[step])))
        buy = u_side < p_buy
        sign = np.where(buy, 1.0, -1.0)

        notional = spec.median_notional * np.exp(SIZE_LOG_SD * z_size)
        ref_price = math.exp(st.log_mid)
        lots = np.maximum(1.0, np.round(notional / ref_price / spec.lot_size))
        sizes = np.round(lots * spec.lot_size, st.size_decimals)
        # Square-root impact: a trade k times the median size moves the mid sqrt(k) times as far.
        impact = sign * spec.impact * np.sqrt(lots * spec.lot_size * ref_price / spec.median_notional)
        impact_before = np.cumsum(impact) - impact  # a trade fills at the quote, then moves it
        diffusion_before_step = np.concatenate(([0.0], np.cumsum(diffusion)[:-1]))
        log_mid = st.log_mid + diffusion_before_step[step] + frac * diffusion[step] + impact_before
        bid_ticks = np.maximum(1.0, np.floor(np.exp(log_mid) / spec.tick_size))
        prices = np.round((bid_ticks + buy) * spec.tick_size, st.price_decimals)

        st.log_mid += float(diffusion.sum() + impact.sum())
        ts = block_start + step * STEP_MS + offset_ms
        q = st.pending
        q.ids.extend(range(st.next_id, st.next_id + total))
        q.prices.extend(prices.tolist())
        q.sizes.extend(sizes.tolist())
        q.buys.extend(buy.tolist())
        q.ts.extend(ts.tolist())
        st.next_id += total
        st.last_price = float(prices[-1])
