"""Binance spot: endpoints, symbol mapping and parsers for websocket, REST and timestamps.

The pure part of the venue's folder (the cryptofeed skeleton): the constants say where to connect, the symbol
helpers map unistream symbols (``ETHUSDT``) to stream names (``ethusdt@trade``), and the parsers
turn venue bytes into :mod:`unistream_ingest.venue` values. Parsers decide only "well-formed or
not": a negative price parses (the validator rejects it), a price sent as a JSON number does not.

Exactness: prices and sizes arrive as decimal strings. Each is checked against a strict decimal
syntax (optional minus, ASCII digits, optional fraction; no exponent, no ``nan``/``inf``, no
spaces or underscores, all of which ``float()`` would accept) and only then converted with
``float()``, which is correctly rounded; for Binance's at most 15 significant digits the double's
``repr`` is the original decimal again. A price that arrives as a JSON number is rejected
(``bad_type``) instead of being silently accepted: it would mean the venue format changed.

Timestamps: Binance sends milliseconds, or microseconds when a stream is opened with
``timeUnit=MICROSECOND`` (and in the public archive from 2025-01-01 on). :func:`epoch_to_ms`
tells them apart by magnitude and converts with integer division, so nothing is rounded up.

Speed: well-formed trade messages take a fast path (msgspec decoding straight into typed
structs); anything else (subscription replies, other events, malformed input) falls back to a
generic decode that finds the precise reason. Both paths build events with the same helper.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from unistream_ingest.venue import IgnoredEvent, ParseError, RawTrade, ShutdownEvent, TradeEvent, VenueEvent

# --- endpoints -----------------------------------------------------------------------------------

WS_BASE = "wss://stream.binance.com:9443"
WS_DATA_BASE = "wss://data-stream.binance.vision"  # market data only, no user streams
REST_BASE = "https://api.binance.com"
REST_DATA_BASE = "https://data-api.binance.vision"  # market data only, does not count against api.binance.com

TRADES_PATH = "/api/v3/trades"  # recent trades, weight 25
HISTORICAL_TRADES_PATH = "/api/v3/historicalTrades"  # ?fromId=, weight 25
AGG_TRADES_PATH = "/api/v3/aggTrades"  # ?fromId=, weight 4
KLINES_PATH = "/api/v3/klines"
TIME_PATH = "/api/v3/time"

# At or above this an epoch value is microseconds: 1e14 ms is the year 5138, 1e14 µs is 1973.
MICROSECONDS_THRESHOLD = 10**14


def epoch_to_ms(value: int) -> int:
    """Binance epoch time in ms or µs (told apart by magnitude) -> integer ms since the epoch (UTC).

    µs are floored to ms (integer division), so a trade is never moved into a later millisecond.
    """
    return value // 1000 if value >= MICROSECONDS_THRESHOLD else value


# --- symbols -------------------------------------------------------------------------------------


def stream_name(symbol: str, channel: str = "trade") -> str:
    """Stream name of one symbol and channel: ``ETHUSDT`` -> ``ethusdt@trade`` (Binance wants lower case)."""
    return f"{symbol.lower()}@{channel}"


def symbol_from_stream(stream: str) -> str:
    """Inverse of :func:`stream_name`: ``ethusdt@trade`` -> ``ETHUSDT``."""
    return stream.partition("@")[0].upper()


def combined_stream_url(base: str, symbols: Iterable[str], channel: str = "trade", microseconds: bool = False) -> str:
    """URL of one combined-stream connection, e.g. ``{base}/stream?streams=ethusdt@trade/btcusdt@trade``.

    ``microseconds`` adds ``timeUnit=MICROSECOND`` (timestamps in µs; :func:`parse_ws` converts).
    Binance allows at most 1024 streams per connection.
    """
    names = [stream_name(s, channel) for s in symbols]
    if not names:
        raise ValueError("a combined stream needs at least one symbol")
    if len(names) > 1024:
        raise ValueError(f"Binance allows 1024 streams per connection, {len(names)} were asked for")
    url = f"{base.rstrip('/')}/stream?streams={'/'.join(names)}"
    return url + "&timeUnit=MICROSECOND" if microseconds else url


def subscribe_message(symbols: Iterable[str], request_id: int, channel: str = "trade") -> str:
    """JSON text of a SUBSCRIBE request; the reply is ``{"result":null,"id":request_id}``."""
    params = [stream_name(s, channel) for s in symbols]
    return msgspec.json.encode({"method": "SUBSCRIBE", "params": params, "id": request_id}).decode()


# --- shared field checks -------------------------------------------------------------------------

# ASCII digits only: Python's float() would also take other scripts' digits, "1e5", "nan", "1_0".
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def parse_decimal(text: str, name: str) -> float:
    """Decimal string -> float, or ParseError("bad_number") if it is not plain decimal syntax."""
    if _DECIMAL.fullmatch(text) is None:
        raise ParseError("bad_number", f"{name}={text[:40]!r}")
    return float(text)


def _field(obj: dict[str, Any], key: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise ParseError("missing_field", key) from None


def _int(obj: dict[str, Any], key: str) -> int:
    value = _field(obj, key)
    if type(value) is not int:  # bool is an int subclass: "type is" keeps true/false out
        raise ParseError("bad_type", f"{key} is not an integer")
    return value


def _str(obj: dict[str, Any], key: str) -> str:
    value = _field(obj, key)
    if type(value) is not str:
        raise ParseError("bad_type", f"{key} is not a string")
    return value


def _bool(obj: dict[str, Any], key: str) -> bool:
    value = _field(obj, key)
    if type(value) is not bool:
        raise ParseError("bad_type", f"{key} is not a boolean")
    return value


def _raw_trade(
    symbol: str, trade_id: int, price: str, qty: str, ts: int, buyer_is_maker: bool, count: int = 1
) -> RawTrade:
    # Positional: measurably faster than keywords on this hot path. Order: see RawTrade.
    return RawTrade(
        symbol,
        trade_id,
        parse_decimal(price, "price"),
        parse_decimal(qty, "qty"),
        buyer_is_maker,
        epoch_to_ms(ts),
        count,
    )


def _agg_count(first_id: int, last_id: int) -> int | None:
    """Raw trades behind an aggTrade; None for an invalidated one (f = l = -1, p = q = "0")."""
    if first_id == -1 and last_id == -1:
        return None
    if last_id < first_id or first_id < 0:
        raise ParseError("bad_range", f"aggTrade ids f={first_id} l={last_id} are not a range")
    return last_id - first_id + 1


INVALIDATED = IgnoredEvent("invalidated")
SUBSCRIPTION_REPLY = IgnoredEvent("subscription_reply")
VENUE_ERROR = IgnoredEvent("venue_error")
OTHER_EVENT = IgnoredEvent("other_event")

# --- websocket: fast path ------------------------------------------------------------------------


class _WsTrade(msgspec.Struct, tag_field="e", tag="trade"):
    E: int
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool


class _WsAggTrade(msgspec.Struct, tag_field="e", tag="aggTrade"):
    E: int
    s: str
    a: int
    p: str
    q: str
    f: int
    l: int  # Binance's field name
    T: int
    m: bool


class _WsShutdown(msgspec.Struct, tag_field="e", tag="serverShutdown"):
    E: int


_WsEvent = _WsTrade | _WsAggTrade | _WsShutdown


class _WsCombined(msgspec.Struct):
    stream: str
    data: _WsEvent


_decode_combined = msgspec.json.Decoder(_WsCombined).decode
_decode_bare = msgspec.json.Decoder(_WsEvent).decode
_decode_any = msgspec.json.Decoder().decode


def _from_struct(ev: _WsTrade | _WsAggTrade | _WsShutdown) -> VenueEvent:
    if type(ev) is _WsTrade:
        return TradeEvent(_raw_trade(ev.s, ev.t, ev.p, ev.q, ev.T, ev.m), epoch_to_ms(ev.E))
    if type(ev) is _WsAggTrade:
        count = _agg_count(ev.f, ev.l)
        if count is None:
            return INVALIDATED
        return TradeEvent(_raw_trade(ev.s, ev.a, ev.p, ev.q, ev.T, ev.m, count), epoch_to_ms(ev.E))
    return ShutdownEvent(epoch_to_ms(ev.E))


def parse_ws(raw: str | bytes) -> VenueEvent:
    """One websocket message (combined-stream wrapper or bare event) -> a venue event.

    - ``trade`` -> :class:`TradeEvent` (``trade_id`` = ``t``, ``count`` 1).
    - ``aggTrade`` -> :class:`TradeEvent` whose ``trade_id`` is the AGGREGATE id ``a`` (its own
      consecutive sequence, not comparable with raw trade ids) and ``count`` = l - f + 1;
      invalidated ones (f = l = -1) -> ``IgnoredEvent("invalidated")``.
    - ``serverShutdown`` -> :class:`ShutdownEvent` (reconnect now).
    - ``{"result": null, "id": n}`` -> ``IgnoredEvent("subscription_reply")``; ``{"error": ...}``
      -> ``IgnoredEvent("venue_error")``; any other event type -> ``IgnoredEvent("other_event")``.

    Times (``T``, ``E``) come out in ms whether they arrived in ms or µs. Unknown fields are ignored.
    Raises :class:`ParseError` (and nothing else) with reason ``bad_json``, ``bad_type``,
    ``missing_field``, ``bad_number`` or ``bad_range``.
    """
    try:
        if raw[:9] == (b'{"stream"' if isinstance(raw, bytes) else '{"stream"'):
            return _from_struct(_decode_combined(raw).data)
        return _from_struct(_decode_bare(raw))
    except (msgspec.DecodeError, RecursionError, TypeError, UnicodeDecodeError):
        # Not the common shape (or not valid): the generic path names the precise reason.
        return _parse_ws_generic(raw)


def _parse_ws_generic(raw: str | bytes) -> VenueEvent:
    try:
        obj = _decode_any(raw)
    except (msgspec.DecodeError, RecursionError, TypeError, UnicodeDecodeError):  # invalid UTF-8 inside a string too
        raise ParseError("bad_json") from None
    if type(obj) is not dict:
        raise ParseError("bad_type", "message is not a JSON object")
    if "stream" in obj:
        if type(obj["stream"]) is not str:
            raise ParseError("bad_type", "stream is not a string")
        obj = _field(obj, "data")
        if type(obj) is not dict:
            raise ParseError("bad_type", "data is not a JSON object")
    if "e" not in obj:
        if "result" in obj and "id" in obj:
            return SUBSCRIPTION_REPLY
        if "error" in obj:
            return VENUE_ERROR
        raise ParseError("missing_field", "e")
    kind = _str(obj, "e")
    if kind == "trade":
        trade = _raw_trade(
            _str(obj, "s"), _int(obj, "t"), _str(obj, "p"), _str(obj, "q"), _int(obj, "T"), _bool(obj, "m")
        )
        return TradeEvent(trade, epoch_to_ms(_int(obj, "E")))
    if kind == "aggTrade":
        count = _agg_count(_int(obj, "f"), _int(obj, "l"))
        # Check every field of an invalidated row too: a malformed one is still malformed.
        symbol, agg_id, p, q = _str(obj, "s"), _int(obj, "a"), _str(obj, "p"), _str(obj, "q")
        ts, m, event_ts = _int(obj, "T"), _bool(obj, "m"), _int(obj, "E")
        if count is None:
            return INVALIDATED
        return TradeEvent(_raw_trade(symbol, agg_id, p, q, ts, m, count), epoch_to_ms(event_ts))
    if kind == "serverShutdown":
        return ShutdownEvent(epoch_to_ms(_int(obj, "E")))
    return OTHER_EVENT


# --- REST ----------------------------------------------------------------------------------------


class _RestTrade(msgspec.Struct):
    id: int
    price: str
    qty: str
    time: int
    isBuyerMaker: bool  # Binance's field name


class _RestAggTrade(msgspec.Struct):
    a: int
    p: str
    q: str
    f: int
    l: int  # Binance's field name
    T: int
    m: bool


class _ServerTime(msgspec.Struct):
    serverTime: int  # Binance's field name


_decode_rest_trades = msgspec.json.Decoder(list[_RestTrade]).decode
_decode_rest_agg_trades = msgspec.json.Decoder(list[_RestAggTrade]).decode
_decode_server_time = msgspec.json.Decoder(_ServerTime).decode


def _rest_error(body: bytes | str, exc: Exception) -> ParseError:
    """Map a failed typed decode to a countable reason; Binance error bodies become ``api_error``."""
    if not isinstance(exc, msgspec.ValidationError):
        return ParseError("bad_json", str(exc))
    try:
        obj = _decode_any(body)
    except (msgspec.DecodeError, RecursionError):
        obj = None
    if type(obj) is dict and "code" in obj and "msg" in obj:
        return ParseError("api_error", f"{obj['code']}: {str(obj['msg'])[:200]}")
    text = str(exc)
    reason = "missing_field" if "missing required field" in text else "bad_type"
    return ParseError(reason, text)


def parse_rest_trades(body: bytes | str, symbol: str) -> list[RawTrade]:
    """Body of GET /api/v3/trades or /api/v3/historicalTrades -> raw trades, in the venue's order.

    Items are ``{"id","price","qty","quoteQty","time","isBuyerMaker","isBestMatch"}``; ``quoteQty``
    and ``isBestMatch`` are not needed (quoteQty = price x qty). One malformed item fails the whole
    body with :class:`ParseError`: a response is one unit, refetch it rather than keep a part.
    """
    try:
        items = _decode_rest_trades(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _rest_error(body, exc) from None
    return [_raw_trade(symbol, it.id, it.price, it.qty, it.time, it.isBuyerMaker) for it in items]


def parse_rest_agg_trades(body: bytes | str, symbol: str) -> list[RawTrade]:
    """Body of GET /api/v3/aggTrades -> raw trades (``trade_id`` = agg id, ``count`` = l - f + 1).

    Invalidated items (f = l = -1) are dropped. Errors as in :func:`parse_rest_trades`.
    """
    try:
        items = _decode_rest_agg_trades(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _rest_error(body, exc) from None
    out = []
    for it in items:
        count = _agg_count(it.f, it.l)
        if count is not None:
            out.append(_raw_trade(symbol, it.a, it.p, it.q, it.T, it.m, count))
    return out


@dataclass(frozen=True, slots=True)
class Kline:
    """One kline (candle) from GET /api/v3/klines. Times in ms; volumes in base, quote_* in quote.

    Binance's ``close_time_ms`` is the last millisecond inside the candle (open + span - 1).
    """

    symbol: str
    interval: str
    open_time_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    close_time_ms: int
    quote_volume: float
    trade_count: int
    taker_buy_base: float
    taker_buy_quote: float


# Binance's documented kline intervals.
_KLINE_INTERVALS = frozenset(
    {"1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"}
)


def parse_rest_klines(body: bytes | str, symbol: str, interval: str) -> list[Kline]:
    """Body of GET /api/v3/klines -> klines. Each row is a JSON array of at least 11 values.

    Row layout: open time, open, high, low, close, volume, close time, quote volume, trade count,
    taker buy base volume, taker buy quote volume, (ignored). Raises :class:`ParseError`.
    """
    if interval not in _KLINE_INTERVALS:
        raise ValueError(f"{interval!r} is not a Binance kline interval")
    try:
        rows = _decode_any(body)
    except (msgspec.DecodeError, RecursionError):
        raise ParseError("bad_json") from None
    if type(rows) is dict and "code" in rows and "msg" in rows:
        raise ParseError("api_error", f"{rows['code']}: {str(rows['msg'])[:200]}")
    if type(rows) is not list:
        raise ParseError("bad_type", "klines body is not a JSON array")
    out = []
    for i, row in enumerate(rows):
        if type(row) is not list or len(row) < 11:
            raise ParseError("bad_type", f"kline row {i} is not an array of 11+ values")
        ints = (row[0], row[6], row[8])
        if any(type(v) is not int for v in ints):
            raise ParseError("bad_type", f"kline row {i}: a time or the count is not an integer")
        nums = []
        for j in (1, 2, 3, 4, 5, 7, 9, 10):
            if type(row[j]) is not str:
                raise ParseError("bad_type", f"kline row {i} column {j} is not a string")
            nums.append(parse_decimal(row[j], f"kline[{i}][{j}]"))
        o, h, lo, c, v, qv, tbb, tbq = nums
        out.append(
            Kline(symbol, interval, epoch_to_ms(row[0]), o, h, lo, c, v, epoch_to_ms(row[6]), qv, row[8], tbb, tbq)
        )
    return out


def parse_server_time(body: bytes | str) -> int:
    """Body of GET /api/v3/time (``{"serverTime": ms}``) -> server time in ms."""
    try:
        return epoch_to_ms(_decode_server_time(body).serverTime)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _rest_error(body, exc) from None


RETRY_AFTER_MARGIN_S = 0.05  # arriving a hair before the venue's window ends earns a 418 ban: wait a little longer


def retry_after_s(headers: Mapping[str, str], default: float) -> float:
    """Seconds to wait after a 429/418: ``Retry-After`` (Binance sends whole seconds) plus a small
    margin for clock and timer granularity; ``default`` when the header is absent or unreadable."""
    try:
        return max(float(headers["Retry-After"]), 0.0) + RETRY_AFTER_MARGIN_S
    except (KeyError, ValueError):
        return default
