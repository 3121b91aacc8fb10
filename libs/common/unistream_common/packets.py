"""Typed packets that travel over the streams.

Each packet type has a wire name (``TYPE``) and the entry carries the schema version beside it
(see :mod:`unistream_common.codec`). Units are in the names: ``*_ms`` are integer
milliseconds since the Unix epoch (UTC). Prices and sizes are float64: Binance quotes at most
8 decimals on values below 1e6, i.e. at most 15 significant digits, and every such decimal
string parses to a double whose ``repr`` is that same decimal, so nothing is lost.

Numeric vectors (states, CNN features, predictions) are raw little-endian float32 bytes; use
:func:`unistream_common.codec.f32_to_bytes` and :func:`~unistream_common.codec.f32_from_bytes`.

Constructors and decoders reject impossible values with a message that states the fact.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

from unistream_common.keys import SYMBOL_RE
from unistream_common.timeframes import TIMEFRAME_MS, Timeframe

SCHEMA_VERSION = 1

Source = Literal["REAL", "REPLAY", "SYNTHETIC"]
Side = Literal["BUY", "SELL"]

Symbol = Annotated[str, msgspec.Meta(pattern=SYMBOL_RE.pattern)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0.0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
EpochMs = Annotated[int, msgspec.Meta(ge=0, le=10**14)]


class Tick(msgspec.Struct, array_like=True, frozen=True):
    """One trade. Carried inside a :class:`TickBatch`, which names the symbol."""

    trade_id: int
    price: PositiveFloat
    size: PositiveFloat
    aggressor_side: Side  # BUY: the taker bought (Binance m=false)
    ts_event_ms: EpochMs  # trade time at the venue
    ts_recv_ms: EpochMs  # when unistream received it


class TickBatch(msgspec.Struct, frozen=True):
    """Consecutive trades of one symbol from one source, in trade order."""

    TYPE: ClassVar[str] = "tick_batch"
    symbol: Symbol
    source: Source
    ticks: list[Tick]

    def __post_init__(self) -> None:
        if not self.ticks:
            raise ValueError("a tick batch holds no ticks")


class GapMarker(msgspec.Struct, frozen=True):
    """Trades ``from_trade_id``..``to_trade_id`` (inclusive) of one symbol are known to be missing.

    Written on the symbol's tick stream, in order with its ticks, when ingest could not recover
    them (REST backfill failed or the venue no longer serves them). ``ts_from_ms`` and
    ``ts_to_ms`` bound the missing trades' times: the last trade before the gap and the first
    after it (0 when unknown), so consumers can flag the bars that rest on incomplete data.
    """

    TYPE: ClassVar[str] = "gap"
    symbol: Symbol
    source: Source
    from_trade_id: NonNegInt
    to_trade_id: NonNegInt
    ts_from_ms: EpochMs
    ts_to_ms: EpochMs
    reason: str
    ts_recv_ms: EpochMs

    def __post_init__(self) -> None:
        if self.to_trade_id < self.from_trade_id:
            raise ValueError(f"to_trade_id {self.to_trade_id} was below from_trade_id {self.from_trade_id}")
        if self.ts_from_ms and self.ts_to_ms and self.ts_to_ms < self.ts_from_ms:
            raise ValueError(f"ts_to_ms {self.ts_to_ms} was before ts_from_ms {self.ts_from_ms}")

    @property
    def missing(self) -> int:
        """How many trades the gap spans."""
        return self.to_trade_id - self.from_trade_id + 1


class Bar(msgspec.Struct, frozen=True):
    """OHLCV bar over the left-closed UTC interval [open_time_ms, close_time_ms)."""

    TYPE: ClassVar[str] = "bar"
    symbol: Symbol
    timeframe: Timeframe
    open_time_ms: EpochMs
    close_time_ms: EpochMs
    open: PositiveFloat
    high: PositiveFloat
    low: PositiveFloat
    close: PositiveFloat
    volume: NonNegFloat  # base asset
    quote_volume: NonNegFloat
    trade_count: NonNegInt
    vwap: PositiveFloat
    taker_buy_volume: NonNegFloat
    filled: bool  # no trades in the interval: a flat bar at the previous close
    source: Source
    is_history: bool = False
    incomplete: bool = False  # rests on trades with a known, unrepaired gap
    taker_buy_quote_volume: NonNegFloat = 0.0  # quote volume of the trades whose aggressor bought

    def __post_init__(self) -> None:
        span = TIMEFRAME_MS[self.timeframe]
        if self.close_time_ms - self.open_time_ms != span:
            raise ValueError(
                f"a {self.timeframe} bar spans {span} ms but close_time_ms - open_time_ms was "
                f"{self.close_time_ms - self.open_time_ms}"
            )
        if self.open_time_ms % span:
            raise ValueError(f"open_time_ms {self.open_time_ms} is not aligned to {self.timeframe}")
        if self.high < max(self.open, self.close, self.low):
            raise ValueError(f"high {self.high} was below open, close or low")
        if self.low > min(self.open, self.close):
            raise ValueError(f"low {self.low} was above open or close")
        if self.taker_buy_volume > self.volume * (1 + 1e-9):
            raise ValueError("taker_buy_volume was greater than volume")
        if self.filled and (self.trade_count or self.volume):
            raise ValueError("a filled (empty) bar had trades")

    @property
    def bar_type(self) -> str:
        """String form such as ``ETHUSDT-1s`` (see :func:`parse_bar_type`)."""
        return f"{self.symbol}-{self.timeframe}"


def parse_bar_type(text: str) -> tuple[str, str]:
    """Split ``ETHUSDT-1s`` into (symbol, timeframe); raises ValueError on anything else."""
    symbol, sep, tf = text.rpartition("-")
    if not sep or not SYMBOL_RE.match(symbol) or tf not in TIMEFRAME_MS:
        raise ValueError(f"{text!r} is not a bar type such as ETHUSDT-1s")
    return symbol, tf


class TrainingDataPacket(msgspec.Struct, frozen=True):
    """One RL observation: the state vector after a 1s bar closed, with the CNN outputs in it."""

    TYPE: ClassVar[str] = "training"
    symbol: Symbol
    ts_event_ms: EpochMs  # close time of the bar that completed this state
    price: PositiveFloat  # close of that bar: the trainer's reward is computed from it
    source: Source
    state_dim: NonNegInt
    state: bytes  # float32 LE, state_dim values
    cnn_features: bytes  # float32 LE, hidden-layer activations
    cnn_predictions: bytes  # float32 LE, see prediction_names
    prediction_names: list[str]
    model_version: str  # CNN weights that produced the features
    window_fill: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]  # share of the windows that is real bars (mean)
    # What the state means relative to its own symbol: "<layout version>/<role fingerprint>", the
    # same for every symbol of one configuration (`unistream features layout` prints it).
    layout_version: str = ""
    cnn_state: str = ""  # INITIALISED: seeded, untrained weights; LOADED: weights the trainer published
    # Per timeframe, the share of the state's own symbol's window that is real bars; warm: all are 1.
    warmup: dict[str, Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]] = {}
    warm: bool = False
    # How much of the longest microstructure horizon (300 s) the tick cache reached back to, 0..1.
    tick_coverage: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    ts_emit_ms: EpochMs = 0  # when the features service built the packet (wall clock)
    # The previous packet of the same symbol: its entry id on ml:training ("" if there is none) and its
    # time. Whichever trainer replica receives this packet can fetch its predecessors and build the
    # transition, although the consumer group hands consecutive packets to different replicas.
    prev_id: str = ""
    prev_ts_event_ms: EpochMs = 0

    def __post_init__(self) -> None:
        if len(self.state) != 4 * self.state_dim:
            raise ValueError(f"state held {len(self.state)} bytes, expected 4 x state_dim = {4 * self.state_dim}")
        if len(self.cnn_predictions) != 4 * len(self.prediction_names):
            raise ValueError("cnn_predictions and prediction_names differ in length")
        if len(self.cnn_features) % 4:
            raise ValueError("cnn_features is not a whole number of float32 values")


class ModelStatus(msgspec.Struct, frozen=True):
    """What a model looks like from outside, for the dashboard."""

    name: str
    version: str
    state: Literal["INITIALISED", "TRAINING", "LOADED", "ERROR"]
    parameters: NonNegInt
    updated_ms: EpochMs


class UIDataPacket(msgspec.Struct, frozen=True):
    """Status of one symbol's data stream for the dashboard, published every processing cycle."""

    TYPE: ClassVar[str] = "ui"
    symbol: Symbol
    ts_ms: EpochMs
    source: Source
    last_price: PositiveFloat
    last_tick_ms: EpochMs
    tick_cache_size: NonNegInt
    tick_cache_capacity: NonNegInt
    ticks_seen: NonNegInt
    bars_1s_size: NonNegInt
    bars_1s_capacity: NonNegInt
    bars_seen: NonNegInt
    training_packets: NonNegInt
    cnn: ModelStatus
    rl_state_dim: NonNegInt
    cnn_predictions: bytes  # float32 LE
    prediction_names: list[str]
    gaps_seen: NonNegInt = 0  # GapMarkers on the tick stream: runs of trades ingest could not recover
    trades_missing: NonNegInt = 0  # trades those gaps span
    latest_bars: list[Bar] = []  # the newest closed bar of each timeframe buffered (1s, 1m, 1h, 1d)
    bars_buffered: dict[str, NonNegInt] = {}  # bars buffered per timeframe
    warmup: dict[str, Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]] = {}  # share of each window that is real
    layout_version: str = ""  # of the training states ("<version>/<role fingerprint>")
    last_bar_ms: EpochMs = 0  # close time of the newest 1s bar


class ModelAnnouncement(msgspec.Struct, frozen=True):
    """A new model checkpoint is available at ``uri`` (safetensors; never pickle)."""

    TYPE: ClassVar[str] = "model"
    name: str
    version: str
    ts_ms: EpochMs
    uri: str
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    producer: str
    parameters: NonNegInt
    metrics: dict[str, float] = {}
    members: list[str] = []  # a merged version: the replicas whose submissions it holds (empty before)


class MetricsPacket(msgspec.Struct, frozen=True):
    """Training metrics of one producer, keys in fixed namespaces such as ``losses/td_loss``."""

    TYPE: ClassVar[str] = "metrics"
    producer: str
    ts_ms: EpochMs
    step: NonNegInt
    metrics: dict[str, float]


class PredictionPacket(msgspec.Struct, frozen=True):
    """The CNN's predictions for one symbol at one training state, small enough to chart (``ui:predictions``)."""

    TYPE: ClassVar[str] = "predictions"
    symbol: Symbol
    ts_event_ms: EpochMs  # the 1s bar's close: the state's time
    price: PositiveFloat
    model_version: str
    names: list[str]
    values: bytes  # float32 LE, one per name

    def __post_init__(self) -> None:
        if len(self.values) != 4 * len(self.names):
            raise ValueError("values and names differ in length")


class PaperFill(msgspec.Struct, frozen=True):
    """The paper trader changed a symbol's position (``ml:paper``): the agent's buys and sells."""

    TYPE: ClassVar[str] = "paper_fill"
    symbol: Symbol
    ts_ms: EpochMs  # the decision's packet time
    price: PositiveFloat
    position_from: Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)]
    position_to: Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)]
    model_version: str
    producer: str


Packet = (
    TickBatch | GapMarker | Bar | TrainingDataPacket | UIDataPacket | ModelAnnouncement | MetricsPacket
    | PredictionPacket | PaperFill
)  # fmt: skip
PACKET_TYPES: tuple[type, ...] = (
    TickBatch,
    GapMarker,
    Bar,
    TrainingDataPacket,
    UIDataPacket,
    ModelAnnouncement,
    MetricsPacket,
    PredictionPacket,
    PaperFill,
)
