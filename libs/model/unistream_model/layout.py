"""The RL state layout, version 2, as data: which feature sits at which index (pure).

A layout is an ordered table of blocks, each a name and an index range, and every index has a
feature name (``ETHUSDT.1m.close_ret[t-3]``), so a state vector can be explained value by value.
``unistream features layout`` prints the table (``--json`` for the machine-readable export).

Block order, for symbols ``[focus, *others]`` (the symbol a state is for comes first, the others
follow in configured order, so an index means the same thing relative to the state's own symbol
in every symbol's state; block names carry the concrete symbols):

1. per symbol: ``{SYM}.window.{tf}`` for tf in 1s, 1m, 1h, 1d: ``len(CHANNELS) x window_bars``
   normalised bar channels (see :mod:`unistream_model.mtf`), channel-major, oldest bar first:
   index ``start + c * window_bars + (window_bars - 1 - lag)`` is channel ``c`` ``lag`` bars back;
2. per symbol: ``{SYM}.cnn.branch`` (``4 x branch_features``, timeframe-major),
   ``{SYM}.cnn.hidden``, ``{SYM}.cnn.predictions`` (per timeframe p_bottom, p_none, p_top, p_down,
   p_up), ``{SYM}.micro`` (:mod:`unistream_model.micro`), ``{SYM}.warmup`` (share of each
   timeframe's window that is real bars);
3. ``time``: hour of day and day of week (UTC) as sin/cos;
4. ``position``: the agent's position context, zero here; the trainer writes it.

Two symbols with the defaults: 2 x (4 x 5 x 300 + 4 x 128 + 160 + 20 + 24 + 4) + 4 + 4 = 13,448 values.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from unistream_common.keys import check_symbol
from unistream_model.micro import feature_names as micro_feature_names
from unistream_model.mtf import CHANNELS, CLIP, DEFAULT_WINDOW_BARS, TIMEFRAMES

LAYOUT_VERSION = "v2"

DEFAULT_SYMBOLS: tuple[str, ...] = ("ETHUSDT", "BTCUSDT")
PREDICTIONS_PER_TIMEFRAME: tuple[str, ...] = ("p_bottom", "p_none", "p_top", "p_down", "p_up")
TIME_NAMES: tuple[str, ...] = ("hour_sin", "hour_cos", "dow_sin", "dow_cos")
POSITION_NAMES: tuple[str, ...] = ("position", "unrealised_pnl", "time_in_position_s", "last_action")
POSITION_BLOCK = "position"
TIME_BLOCK = "time"

NAMES_IN_JSON_UP_TO = 64  # blocks this small list every feature name in the JSON export

_DAY_MS = 86_400_000
_WINDOW_NAME_RE = re.compile(r"^([A-Z0-9]{2,20})\.(1s|1m|1h|1d)\.([a-z_]+)\[t(?:-(\d+))?\]$")


@dataclass(frozen=True)
class Block:
    """``length`` consecutive state values from index ``start``.

    ``names`` holds one name per value; a window block has ``names=None`` and names its values
    from ``channels`` x ``bars`` (channel-major, oldest bar first).
    """

    name: str
    start: int
    length: int
    names: tuple[str, ...] | None
    description: str = ""
    channels: tuple[str, ...] = ()
    bars: int = 0

    @property
    def stop(self) -> int:
        return self.start + self.length

    def feature_name(self, offset: int) -> str:
        """Name of value ``offset`` (0-based, inside the block)."""
        if not 0 <= offset < self.length:
            raise IndexError(f"offset {offset} is outside block {self.name} of {self.length} values")
        if self.names is not None:
            return self.names[offset]
        symbol, _, timeframe = self.name.split(".")
        c, col = divmod(offset, self.bars)
        lag = self.bars - 1 - col
        return f"{symbol}.{timeframe}.{self.channels[c]}[t{f'-{lag}' if lag else ''}]"

    def feature_names(self) -> Iterator[str]:
        """Every value's name, in order."""
        if self.names is not None:
            yield from self.names
        else:
            for offset in range(self.length):
                yield self.feature_name(offset)


@dataclass(frozen=True)
class StateLayout:
    """The ordered, contiguous blocks of a state vector and the names of its values."""

    version: str
    symbols: tuple[str, ...]  # focus symbol first
    window_bars: int
    blocks: tuple[Block, ...]
    _by_name: dict[str, Block] = field(init=False, repr=False, compare=False)
    _named_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        expected = 0
        by_name: dict[str, Block] = {}
        named: dict[str, int] = {}
        for b in self.blocks:
            if b.start != expected:
                raise ValueError(f"block {b.name} starts at {b.start}, the previous block ends at {expected}")
            if b.length < 1:
                raise ValueError(f"block {b.name} has {b.length} values")
            if b.name in by_name:
                raise ValueError(f"block {b.name} appears twice")
            if b.names is not None:
                if len(b.names) != b.length:
                    raise ValueError(f"block {b.name} has {b.length} values but {len(b.names)} names")
                for k, n in enumerate(b.names):
                    if n in named:
                        raise ValueError(f"feature name {n} appears twice")
                    named[n] = b.start + k
            elif b.channels and len(b.channels) * b.bars != b.length:
                raise ValueError(f"window block {b.name} has {b.length} values, not channels x bars")
            by_name[b.name] = b
            expected = b.stop
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_named_index", named)

    @property
    def dim(self) -> int:
        """Values in a state vector."""
        return self.blocks[-1].stop if self.blocks else 0

    @cached_property
    def fingerprint(self) -> str:
        """First 16 hex digits of the sha256 of every feature name in order: equal iff the layouts mean the same."""
        h = hashlib.sha256(self.version.encode())
        for name in self.feature_names():
            h.update(b"\0" + name.encode())
        return h.hexdigest()[:16]

    @cached_property
    def role_fingerprint(self) -> str:
        """Like :attr:`fingerprint`, with each symbol in the names replaced by its role (``self`` for
        the state's own symbol, ``other1``.. for the others, in order), and the set of symbols: equal
        for every symbol's state of one configuration, different when a block, a feature, a size or
        the symbols change. Packets carry it (:attr:`tag`): one network learns from every symbol's
        states, so what must agree is what each index means relative to the state's own symbol."""
        roles = {s: "self" if k == 0 else f"other{k}" for k, s in enumerate(self.symbols)}
        h = hashlib.sha256(self.version.encode())
        h.update(b"\0" + ",".join(sorted(self.symbols)).encode())
        for name in self.feature_names():
            head, dot, tail = name.partition(".")
            h.update(b"\0" + (roles[head] + dot + tail if head in roles else name).encode())
        return h.hexdigest()[:16]

    @property
    def tag(self) -> str:
        """``<version>/<role fingerprint>``: what a packet's ``layout_version`` says of its state."""
        return f"{self.version}/{self.role_fingerprint}"

    def block(self, name: str) -> Block:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no block {name!r} in layout {self.version}") from None

    def slice(self, name: str) -> slice:
        """Index range of block ``name``; KeyError if there is none."""
        b = self.block(name)
        return slice(b.start, b.stop)

    def block_at(self, index: int) -> Block:
        """The block holding value ``index``."""
        if not 0 <= index < self.dim:
            raise IndexError(f"index {index} is outside the state of {self.dim} values")
        lo, hi = 0, len(self.blocks) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.blocks[mid].start <= index:
                lo = mid
            else:
                hi = mid - 1
        return self.blocks[lo]

    def feature_name(self, index: int) -> str:
        """Name of state value ``index``, e.g. ``ETHUSDT.1m.close_ret[t-3]``."""
        b = self.block_at(index)
        return b.feature_name(index - b.start)

    def index_of(self, name: str) -> int:
        """Index of the value called ``name`` (inverse of :meth:`feature_name`); KeyError if none."""
        if name in self._named_index:
            return self._named_index[name]
        m = _WINDOW_NAME_RE.match(name)
        if m:
            symbol, timeframe, channel, lag = m.group(1), m.group(2), m.group(3), int(m.group(4) or 0)
            b = self._by_name.get(f"{symbol}.window.{timeframe}")
            if b is not None and b.names is None and channel in b.channels and lag < b.bars:
                offset = b.channels.index(channel) * b.bars + (b.bars - 1 - lag)
                if b.feature_name(offset) == name:  # refuses non-canonical spellings such as [t-0]
                    return b.start + offset
        raise KeyError(f"no feature {name!r} in layout {self.version}")

    def feature_names(self) -> Iterator[str]:
        """Every value's name, index order."""
        for b in self.blocks:
            yield from b.feature_names()

    def to_json(self, all_names: bool = False) -> dict[str, object]:
        """JSON-ready description: version, dim, fingerprints, and per block its range and names.

        Blocks of at most :data:`NAMES_IN_JSON_UP_TO` values (or all, with ``all_names``) list every
        feature name; window blocks give ``channels`` and ``bars`` instead.
        """
        blocks = []
        for b in self.blocks:
            entry: dict[str, object] = {
                "name": b.name,
                "start": b.start,
                "length": b.length,
                "description": b.description,
                "first": b.feature_name(0),
                "last": b.feature_name(b.length - 1),
            }
            if b.names is None:
                entry["channels"] = list(b.channels)
                entry["bars"] = b.bars
            if all_names or b.length <= NAMES_IN_JSON_UP_TO:
                entry["names"] = list(b.feature_names())
            blocks.append(entry)
        return {
            "version": self.version,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
            "role_fingerprint": self.role_fingerprint,
            "tag": self.tag,
            "symbols": list(self.symbols),
            "window_bars": self.window_bars,
            "timeframes": list(TIMEFRAMES),
            "blocks": blocks,
        }

    def table_markdown(self) -> str:
        """The blocks as a Markdown table with their sizes (for docs/state-layout.md and the CLI)."""
        title = (
            f"State layout {self.version}: {self.dim:,} float32 values, fingerprint {self.fingerprint}, "
            f"packets' layout_version {self.tag} (symbols {', '.join(self.symbols)}, the state's own symbol first; windows of {self.window_bars} bars)"
        )
        lines = [
            title,
            "",
            "| block | start | length | content | first .. last feature |",
            "|---|---:|---:|---|---|",
        ]
        for b in self.blocks:
            lines.append(
                f"| `{b.name}` | {b.start:,} | {b.length:,} | {b.description} "
                f"| `{b.feature_name(0)}` .. `{b.feature_name(b.length - 1)}` |"
            )
        return "\n".join(lines)


def _prediction_names(n: int) -> tuple[str, ...]:
    if n == len(TIMEFRAMES) * len(PREDICTIONS_PER_TIMEFRAME):
        return tuple(f"{tf}.{p}" for tf in TIMEFRAMES for p in PREDICTIONS_PER_TIMEFRAME)
    return tuple(f"pred[{i}]" for i in range(n))


def position_slot(layout_version: str, state_dim: int, name: str = "position") -> int | None:
    """Index of ``position.{name}`` in a state of ``layout_version`` (as packets carry it,
    ``v2/<role fingerprint>``) with ``state_dim`` values; None when that version has no position block
    (v1) or the state is too short to hold one.

    The trainer, which writes the agent's position into states it did not build, finds the slot
    here rather than from the features' configuration: :func:`make_layout` builds the position
    block last, so its values sit at the same distance from the end whatever the symbols,
    windows or CNN sizes (a test checks this against :meth:`StateLayout.index_of`).
    """
    if name not in POSITION_NAMES:
        raise KeyError(f"no position value {name!r}; the position block holds {', '.join(POSITION_NAMES)}")
    if layout_version.split("/", 1)[0] != LAYOUT_VERSION or state_dim < len(POSITION_NAMES):
        return None
    return state_dim - len(POSITION_NAMES) + POSITION_NAMES.index(name)


def make_layout(
    symbols: Sequence[str] = DEFAULT_SYMBOLS,
    window_bars: int = DEFAULT_WINDOW_BARS,
    branch_features: int = 128,
    hidden: int = 160,
    n_predictions_per_symbol: int = len(TIMEFRAMES) * len(PREDICTIONS_PER_TIMEFRAME),
    micro_names: Sequence[str] = micro_feature_names(),
    position_names: Sequence[str] = POSITION_NAMES,
    focus: str | None = None,
) -> StateLayout:
    """The layout of a state for ``focus`` (default: the first symbol), the others after it in configured order.

    Every layout built from the same arguments but another ``focus`` has the same block starts and
    lengths; only the symbols in the names change places. With ``n_predictions_per_symbol`` of
    4 x 5 the prediction values are named per timeframe, otherwise ``pred[i]``.
    """
    symbols = tuple(symbols)
    if not symbols:
        raise ValueError("a layout needs at least one symbol")
    for s in symbols:
        check_symbol(s)
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"a symbol is listed twice in {', '.join(symbols)}")
    focus = symbols[0] if focus is None else focus
    if focus not in symbols:
        raise ValueError(f"focus symbol {focus} is not one of {', '.join(symbols)}")
    for what, n in (
        ("window_bars", window_bars),
        ("branch_features", branch_features),
        ("hidden", hidden),
        ("n_predictions_per_symbol", n_predictions_per_symbol),
        ("micro_names", len(micro_names)),
        ("position_names", len(position_names)),
    ):
        if n < 1:
            raise ValueError(f"{what} must be at least 1, was {n}")
    ordered = (focus, *(s for s in symbols if s != focus))

    blocks: list[Block] = []

    def add(name: str, description: str, names: Sequence[str] = (), channels: tuple[str, ...] = (), bars: int = 0):
        start = blocks[-1].stop if blocks else 0
        if channels:
            blocks.append(Block(name, start, len(channels) * bars, None, description, channels, bars))
        else:
            blocks.append(Block(name, start, len(names), tuple(names), description))

    for s in ordered:
        for tf in TIMEFRAMES:
            text = f"{', '.join(CHANNELS)} x {window_bars} {tf} bars, channel-major, oldest first"
            add(f"{s}.window.{tf}", text, channels=CHANNELS, bars=window_bars)
    preds = _prediction_names(n_predictions_per_symbol)
    for s in ordered:
        branch = [f"{s}.cnn.branch.{tf}[{i}]" for tf in TIMEFRAMES for i in range(branch_features)]
        add(f"{s}.cnn.branch", f"CNN branch outputs, {branch_features} per timeframe", branch)
        add(f"{s}.cnn.hidden", "CNN hidden layer", [f"{s}.cnn.hidden[{i}]" for i in range(hidden)])
        add(f"{s}.cnn.predictions", "CNN predictions", [f"{s}.cnn.{p}" for p in preds])
        add(f"{s}.micro", "tick microstructure", [f"{s}.micro.{n}" for n in micro_names])
        add(f"{s}.warmup", "share of each window that is real bars", [f"{s}.warmup.fill_{tf}" for tf in TIMEFRAMES])
    add(TIME_BLOCK, "UTC hour of day and day of week", [f"time.{n}" for n in TIME_NAMES])
    add(
        POSITION_BLOCK,
        "agent position context (0 here; the trainer fills it)",
        [f"position.{n}" for n in position_names],
    )
    return StateLayout(version=LAYOUT_VERSION, symbols=ordered, window_bars=window_bars, blocks=tuple(blocks))


def time_features(ts_ms: int) -> np.ndarray:
    """The ``time`` block at ``ts_ms`` (ms since the epoch, UTC): hour-of-day and day-of-week sin/cos.

    Both are continuous (the day's phase advances every millisecond); the week starts on Monday 00:00 UTC.
    """
    day_phase = (ts_ms % _DAY_MS) / _DAY_MS
    week_phase = (((ts_ms // _DAY_MS) + 3) % 7 + day_phase) / 7  # 1970-01-01 was a Thursday (Monday + 3)
    a, b = 2 * math.pi * day_phase, 2 * math.pi * week_phase
    return np.array([math.sin(a), math.cos(a), math.sin(b), math.cos(b)], np.float32)


def sanitize(values: np.ndarray, limit: float = CLIP) -> tuple[np.ndarray, int]:
    """float32 copy of ``values`` with NaN -> 0 and +-inf -> +-``limit``, and how many values were replaced.

    For callers that must pass through data they do not control; count the replacements, never hide them.
    """
    with np.errstate(over="ignore"):
        arr = np.asarray(values, dtype=np.float32).copy()
    bad = ~np.isfinite(arr)
    n = int(bad.sum())
    if n:
        arr = np.nan_to_num(arr, nan=0.0, posinf=limit, neginf=-limit)
    return arr, n


def assemble(
    layout: StateLayout, parts: Mapping[str, np.ndarray], zero_blocks: Collection[str] = (POSITION_BLOCK,)
) -> np.ndarray:
    """The state vector (float32, ``layout.dim``) from one array per block name.

    Blocks named in ``zero_blocks`` may be left out and are then 0 (the position context, which
    the trainer writes). Raises ValueError naming the block for a missing or unknown part, a part
    of the wrong size, or a NaN/infinite value (run :func:`sanitize` first and count what it replaced).
    Multi-dimensional parts are flattened in C order (a ``(channels, bars)`` window becomes channel-major).
    """
    unknown = sorted(set(parts) - {b.name for b in layout.blocks})
    if unknown:
        raise ValueError(f"parts {', '.join(unknown)} are not blocks of layout {layout.version}")
    out = np.zeros(layout.dim, np.float32)
    for b in layout.blocks:
        part = parts.get(b.name)
        if part is None:
            if b.name in zero_blocks:
                continue
            raise ValueError(f"state block {b.name} is missing")
        with np.errstate(over="ignore"):
            arr = np.asarray(part, dtype=np.float32).reshape(-1)
        if arr.size != b.length:
            raise ValueError(f"state block {b.name} has {arr.size} values, the layout needs {b.length}")
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(
                f"state block {b.name} holds {bad.size} NaN or infinite values, first {b.feature_name(int(bad[0]))}"
            )
        out[b.start : b.stop] = arr
    return out
