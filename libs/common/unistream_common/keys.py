"""Every Redis stream, consumer group and key that unistream uses, named in one place.

Stream names are public: other programs read them. Per-symbol names carry the symbol in
braces, which Redis Cluster treats as a hash tag, so one symbol's ticks and bars (and the
MULTI that writes bars and acknowledges ticks) live in one slot.

Ownership: ingest writes ``md:ticks:*`` and ``md:history:*``, the aggregator ``md:bars:*``. History
(bars from before the system started, for warm-up) has streams of its own so that a live bar and
a history bar never compete for one entry id: both use ``<open_time_ms>-0``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Defined in timeframes; here too because the bar and history streams are named after them.
from unistream_common.timeframes import TIMEFRAME_MS, TIMEFRAMES

SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")

# Streams without a symbol.
UI = "ui:packets"
METRICS = "ml:metrics"
MODELS = "ml:models"
PREDICTIONS = "ui:predictions"  # PredictionPacket per training state (features), for chart markers
PAPER = "ml:paper"  # PaperFill per position change of the paper trader (trainer leader)
# The trainer replicas' shared keys carry one hash tag, {trainer}, so that the scripts and MULTIs
# that check the merge lease and write beside it stay in one slot on a Redis Cluster.
TRAINER_TAG = "{trainer}"
# The paper trader's books (ledgers, positions, sensitivity learner), kept by the trainer leader
# every merge round and taken by the next leader: a torch file of tensors and plain values.
TRAINER_BOOKS = "ml:{trainer}:books"
# Trainer replicas (unistream_trainer.replicas): heartbeats, the merge lease, the round counter,
# the CNN owner's cursors on the training streams, and each replica's queued submissions.
TRAINER_MEMBERS = "ml:{trainer}:members"  # sorted set: replica -> heartbeat expiry (ms)
TRAINER_LEADER = "ml:{trainer}:leader"  # string: the lease holder's token, "<replica>:<random>"
TRAINER_ROUND = "ml:{trainer}:round"  # integer: the last merge round
# hash: symbol -> the last entry of the symbol's training stream the CNN's owner learned from
TRAINER_CNN_CURSOR = "ml:{trainer}:cnn_cursor"


def trainer_deltas(member: str) -> str:
    """A trainer replica's submissions not yet merged, oldest first (a list)."""
    return f"ml:{{trainer}}:deltas:{member}"


def registry(model: str, version: str) -> str:
    """A published model's bytes (a string): announced on ml:models as ``redis:<this key>``."""
    return f"ml:{{trainer}}:registry:{model}:{version}"


def registry_index(model: str) -> str:
    """A model's published versions in the registry, oldest first (a list); the oldest are pruned."""
    return f"ml:{{trainer}}:registry:{model}"


def lease_holder(value: str | bytes | None) -> str | None:
    """The process named by a lease's value (``<name>:<token>``: the trainer's merge lease, an
    aggregator's symbol lease); a value without a token (a previous release) is the name."""
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    if not text:
        return None
    name, sep, _ = text.rpartition(":")
    return name if sep else text


# Service heartbeats: a hash per process, refreshed every few seconds, expiring when it stops.
SERVICES = "svc:index"  # sorted set: "<service>/<consumer>" -> last heartbeat (ms)

DLQ_SUFFIX = ":dlq"

# Consumer groups (the design's registered consumers).
GROUP_AGGREGATOR = "aggregator"
GROUP_FEATURES = "features"  # the prefix of each features replica's own group: see features_group
GROUP_TRAINER = "trainer"


def features_group(consumer: str) -> str:
    """The consumer group of one features replica: ``features:<consumer>``. Every replica reads
    every symbol's bars and trades (a symbol's state holds all symbols' windows), so each has a
    group of its own; it writes the packets of the symbols it holds the lease of."""
    return f"{GROUP_FEATURES}:{consumer}"


def is_features_group(group: str) -> bool:
    """A features replica's group (or the single group ``features`` of releases before replicas)."""
    return group == GROUP_FEATURES or group.startswith(GROUP_FEATURES + ":")


# Data types accepted by ``register_consumer(..., data_types=[...])``.
DATA_TYPES: tuple[str, ...] = (
    "ticks",
    *(f"bars:{tf}" for tf in TIMEFRAMES),
    "training",
    "ui",
    "metrics",
    "models",
    "predictions",
    "paper",
)

_TICKS_RE = re.compile(r"^md:ticks:\{([A-Z0-9]{2,20})\}$")
_BARS_RE = re.compile(r"^md:bars:\{([A-Z0-9]{2,20})\}:(1s|1m|1h|1d)$")
_HISTORY_RE = re.compile(r"^md:history:\{([A-Z0-9]{2,20})\}:(1s|1m|1h|1d)$")
_TRAINING_RE = re.compile(r"^ml:training:\{([A-Z0-9]{2,20})\}$")


def check_symbol(symbol: str) -> str:
    """Return ``symbol`` if it is a venue symbol such as ``ETHUSDT``, else raise ValueError."""
    if not SYMBOL_RE.match(symbol):
        raise ValueError(f"{symbol!r} is not a valid symbol: use 2-20 upper-case letters and digits, e.g. ETHUSDT")
    return symbol


def check_timeframe(timeframe: str) -> str:
    """Return ``timeframe`` if it is one of 1s, 1m, 1h, 1d, else raise ValueError."""
    if timeframe not in TIMEFRAME_MS:
        raise ValueError(f"{timeframe!r} is not a timeframe; use one of {', '.join(TIMEFRAMES)}")
    return timeframe


def training(symbol: str) -> str:
    """Training packets of one symbol (features writes them with the acknowledgements of the
    symbol's bars and trades, which share its hash tag; the trainers read every symbol's)."""
    return f"ml:training:{{{check_symbol(symbol)}}}"


def training_fence(symbol: str) -> str:
    """The features writer's sequenced fence for one symbol (consumer.SequencedFence):
    ``<holder>#<commits>``, moved with every commit to the symbol's training stream, so a Redis
    that lost the last commits (a restart, a failover to a lagging replica) is noticed at the
    next one; also what makes one features replica the symbol's only writer (taking the
    symbol's lease, :func:`features_owner`, sets it to the taker's token)."""
    return f"ml:training:{{{check_symbol(symbol)}}}:fence"


FEATURES_MEMBERS = "ml:features:members"  # sorted set: features consumer -> heartbeat expiry (ms)


def features_owner(symbol: str) -> str:
    """Lease naming the features replica that writes one symbol's training packets:
    ``ml:training:{SYMBOL}:owner`` (``<consumer>:<token>``, expires unless renewed)."""
    return f"ml:training:{{{check_symbol(symbol)}}}:owner"


def ticks(symbol: str) -> str:
    """Tick stream of one symbol: ``md:ticks:{SYMBOL}``."""
    return f"md:ticks:{{{check_symbol(symbol)}}}"


def ticks_watermark(symbol: str) -> str:
    """``md:ticks:{SYMBOL}:watermark``: a string key, ``<venue ms>:<host ms>``, that ingest's live
    source sets after each successful write: every trade it had received by then is in the tick
    stream; the time by the venue's clock (the host's less the recent median of receipt minus
    trade time) and by ingest's host. The aggregator's timer closes no bar that ends after it, so
    trades held back by a Redis outage are not made late by the wall clock, and closes bars by the
    venue's clock. A plain ``<ms>`` (an older ingest) is both."""
    return f"{ticks(symbol)}:watermark"


def ticks_mark(symbol: str) -> str:
    """``md:ticks:{SYMBOL}:mark``: a string key, the trade id of the last trade written to the
    symbol's tick stream, set by the same script as the XADD (so the two roll back together). A
    writer that finds it below what it wrote knows Redis lost acknowledged writes, and repairs."""
    return f"{ticks(symbol)}:mark"


def bars(symbol: str, timeframe: str) -> str:
    """Bar stream of one symbol and timeframe: ``md:bars:{SYMBOL}:TF``."""
    return f"md:bars:{{{check_symbol(symbol)}}}:{check_timeframe(timeframe)}"


def history(symbol: str, timeframe: str) -> str:
    """History stream of one symbol and timeframe: ``md:history:{SYMBOL}:TF`` (TF one of 1s, 1m, 1h, 1d).

    Written by ingest at start-up: closed bars from before the system ran (exchange klines, the
    replay files, or the simulator's own past), oldest first, each a ``Bar`` with
    ``is_history=True`` under the entry id ``<open_time_ms>-0``. Never a live bar: those are in
    :func:`bars`, owned by the aggregator.
    """
    if timeframe not in TIMEFRAME_MS:
        raise ValueError(f"{timeframe!r} is not a history timeframe; use one of {', '.join(TIMEFRAMES)}")
    return f"md:history:{{{check_symbol(symbol)}}}:{timeframe}"


def history_streams(symbols: Iterable[str]) -> list[str]:
    """Every history stream of these symbols, per symbol in the order 1s, 1m, 1h, 1d."""
    return [history(s, tf) for s in symbols for tf in TIMEFRAMES]


# Aggregator coordination and bar quality (all per-symbol keys share the symbol's hash slot).
AGGREGATOR_MEMBERS = "md:agg:members"  # sorted set: aggregator consumer -> heartbeat expiry (ms)


def agg_state(symbol: str) -> str:
    """Aggregator checkpoint of one symbol: ``md:agg:state:{SYMBOL}`` (written with its bars)."""
    return f"md:agg:state:{{{check_symbol(symbol)}}}"


def agg_owner(symbol: str) -> str:
    """Lease naming the aggregator that owns one symbol: ``md:agg:owner:{SYMBOL}`` (expires)."""
    return f"md:agg:owner:{{{check_symbol(symbol)}}}"


def agg_fence(symbol: str) -> str:
    """The token of the aggregator that last took one symbol: ``md:agg:fence:{SYMBOL}`` (never
    expires; changes only at a takeover). Commits are fenced on it, not on the lease, so renewing
    the lease during a long commit does not abort the commit's WATCH."""
    return f"md:agg:fence:{{{check_symbol(symbol)}}}"


def forming(symbol: str, timeframe: str) -> str:
    """The bar of ``timeframe`` still forming (not final): ``md:forming:{SYMBOL}:TF``, a hash
    holding one encoded :class:`~unistream_common.packets.Bar` (fields type, v, data)."""
    return f"md:forming:{{{check_symbol(symbol)}}}:{check_timeframe(timeframe)}"


def quality(symbol: str) -> str:
    """Data-quality counters of one symbol's bars: ``md:quality:{SYMBOL}`` (a hash, see
    :mod:`unistream_common.quality`)."""
    return f"md:quality:{{{check_symbol(symbol)}}}"


def heartbeat(service: str, consumer: str) -> str:
    """Heartbeat hash of one service process: ``svc:{service}:{consumer}`` (see :data:`SERVICES`)."""
    return f"svc:{service}:{consumer}"


def service_member(service: str, consumer: str) -> str:
    """Member of one service process in :data:`SERVICES`: ``<service>/<consumer>``."""
    return f"{service}/{consumer}"


def parse_service_member(member: str | bytes) -> tuple[str, str]:
    """(service, consumer) of a :data:`SERVICES` member (:func:`service_member` reversed); a
    member without ``/`` is a service with an empty consumer name."""
    text = member.decode() if isinstance(member, bytes) else member
    service, _, consumer = text.partition("/")
    return service, consumer


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: the text in its first non-empty ``{...}``, else the key."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def dlq(stream: str) -> str:
    """Dead-letter stream for entries of ``stream`` that could not be processed."""
    return stream + DLQ_SUFFIX


def parse_ticks(stream: str) -> str | None:
    """Symbol of a tick stream name, or None if ``stream`` is not one."""
    m = _TICKS_RE.match(stream)
    return m.group(1) if m else None


def parse_bars(stream: str) -> tuple[str, str] | None:
    """(symbol, timeframe) of a bar stream name, or None if ``stream`` is not one."""
    m = _BARS_RE.match(stream)
    return (m.group(1), m.group(2)) if m else None


def parse_training(stream: str) -> str | None:
    """Symbol of a training stream name, or None if ``stream`` is not one."""
    m = _TRAINING_RE.match(stream)
    return m.group(1) if m else None


def parse_history(stream: str) -> tuple[str, str] | None:
    """(symbol, timeframe) of a history stream name, or None if ``stream`` is not one."""
    m = _HISTORY_RE.match(stream)
    return (m.group(1), m.group(2)) if m else None


def streams_for(data_types: Iterable[str], symbols: Iterable[str]) -> list[str]:
    """Streams that carry the given data types for the given symbols, in a stable order."""
    symbols = list(symbols)
    out: list[str] = []
    for dt in data_types:
        if dt == "ticks":
            out.extend(ticks(s) for s in symbols)
        elif dt.startswith("bars:"):
            out.extend(bars(s, dt.split(":", 1)[1]) for s in symbols)
        elif dt == "training":
            out.extend(training(s) for s in symbols)
        elif dt == "ui":
            out.append(UI)
        elif dt == "metrics":
            out.append(METRICS)
        elif dt == "models":
            out.append(MODELS)
        elif dt == "predictions":
            out.append(PREDICTIONS)
        elif dt == "paper":
            out.append(PAPER)
        else:
            raise ValueError(f"unknown data type {dt!r}; use one of {', '.join(DATA_TYPES)}")
    return out


def all_streams(symbols: Iterable[str]) -> list[str]:
    """Every data stream the system writes for these symbols (dead-letter and history streams excluded)."""
    return streams_for(DATA_TYPES, symbols)
