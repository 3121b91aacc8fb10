"""The door for other producers: ticks pushed over HTTP or a websocket into ``md:ticks:{SYMBOL}``.

``POST /v1/ticks`` and websocket ``/v1/ticks`` take the same JSON document, a batch::

    {"symbol": "ETHUSDT", "source": "REAL" | "REPLAY" | "SYNTHETIC",
     "ticks": [{"trade_id": 7, "price": "3012.55", "size": "0.012", "side": "BUY" | "SELL",
                "ts_event_ms": 1764000000000}, ...]}

or one tick with ``symbol`` and ``source`` beside its fields (no ``ticks`` key). ``price`` and
``size`` are decimal strings (Binance practice, recommended: ``^[0-9]+(\\.[0-9]+)?$``) or JSON
numbers; both are parsed once, correctly rounded, to float64, so a string and the same decimal
written as a number give the same tick. ``side`` is the aggressor's (taker's) side;
``ts_event_ms`` is the trade time at the venue in ms since the epoch. Unknown fields are ignored.

A request is all or nothing. Every item is parsed and checked by a *copy* of the door's
:class:`~unistream_ingest.validate.Validator`; only when no item is refused is the batch written,
as one ``TickBatch`` entry (one XADD, atomic in Redis), and only after that write succeeded does
the copy replace the validator (its last trade ids, counts, gaps). So a refused request (422) or
a failed write (503) leaves neither the stream nor the validator changed, and the client may
simply resend. Trade ids must increase within a batch; ids at or below the last accepted one are
*duplicates*: skipped and counted, not an error, so resending after a lost answer is safe.

Status codes (POST; a websocket answer carries the same ``status`` and body plus ``seq``):
200 written (or all duplicates), 400 not JSON, 401 missing/wrong token, 413 body larger than
``max_body_bytes`` or more than ``max_batch_items`` ticks, 422 well-formed JSON that is not a
valid batch (unknown symbol, wrong types, refused items: ``items`` lists each by index),
503 Redis unavailable (nothing written; retry). Never 500 by design: bad input is counted
(``door_*`` counters in /stats and /metrics), sampled (``GET /v1/ticks/stats``) and answered.

Websocket: each text or binary message is one document as above and gets one answer
``{"seq": k, "status": ..., <the POST body>}``, k counting the connection's messages from 1; the
connection stays open after bad input. A message over ``max_body_bytes`` is answered 413; one over
4 x that closes the connection with 1009. The token may come as ``?token=`` (browsers cannot set
headers); without it the handshake is refused (close 1008, an HTTP 403 to the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, Request, Response, WebSocket
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect
from starlette.websockets import WebSocketDisconnect

from unistream_common import codec, keys
from unistream_common.packets import GapMarker, Side, Source, Tick, TickBatch
from unistream_common.redisio import REDIS_ERRORS, command_client
from unistream_common.settings import is_loopback
from unistream_common.stats import Stats
from unistream_ingest.core import WrittenTicks
from unistream_ingest.settings import IngestSettings
from unistream_ingest.tickwrite import ROLLBACK_KEEP_MS, queue_batch, written
from unistream_ingest.validate import Rejection, Validator
from unistream_ingest.venue import RawTrade

log = logging.getLogger(__name__)

PATH = "/v1/ticks"
STATS_PATH = "/v1/ticks/stats"
REDIS_TIMEOUT_S = 2.0  # a door answer should not hang longer than this on a dead Redis
HUGE_FACTOR = 4  # a websocket message this many times max_body_bytes closes the connection (1009)
WS_POLICY_VIOLATION = 1008
WS_MESSAGE_TOO_BIG = 1009
MAX_TRADE_ID = 2**63 - 1  # TickBatch entries are msgpack: ids must fit a signed 64-bit integer
SKIPPED_REASONS = frozenset({"duplicate"})  # not written, but no reason to refuse the request

# Strict decimal: no sign, exponent, whitespace, underscores, nan or inf (all of which float() takes).
_DECIMAL_RE = re.compile(r"^[0-9]{1,24}(?:\.[0-9]{1,24})?$")


class TickIn(msgspec.Struct):
    """One tick as a producer sends it (see the module docstring for units)."""

    trade_id: Annotated[int, msgspec.Meta(ge=0, le=MAX_TRADE_ID)]
    price: str | float
    size: str | float
    side: Side
    ts_event_ms: int


class BatchIn(msgspec.Struct):
    """The envelope: which symbol, what kind of producer, and the ticks (raw, decoded one by one)."""

    symbol: str
    source: Source
    ticks: list[msgspec.Raw] | None = None  # None: the document itself is one tick


_BATCH = msgspec.json.Decoder(BatchIn)
_TICK = msgspec.json.Decoder(TickIn)


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why the item at ``index`` of the batch was refused; ``reason`` is a countable label."""

    index: int
    reason: str
    detail: str = ""


@dataclass(slots=True)
class ParsedBatch:
    """A decoded request: the trades that parsed, in request order, and the items that did not.

    ``raw_items[i]`` is the JSON text of item ``i`` (for the rejection sample).
    """

    symbol: str
    source: str
    trades: list[tuple[int, RawTrade]]
    errors: list[ItemError]
    raw_items: list[bytes]


class BodyError(Exception):
    """The request as a whole is refused with HTTP ``status``; ``error`` is a countable label."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP status and the JSON body that goes with it."""

    status: int
    body: dict[str, Any]


def parse_decimal(value: str | float) -> float:
    """float64 of a decimal string or JSON number; raises ValueError saying why it is not one.

    Positivity is the validator's business (it names ``bad_price``/``bad_size``); this only
    refuses what is not a plain finite decimal.
    """
    if isinstance(value, str):
        if not _DECIMAL_RE.match(value):
            raise ValueError(f"{value[:40]!r} is not a decimal string such as '3012.55'")
        return float(value)
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _decode_message(exc: msgspec.DecodeError) -> str:
    return str(exc)[:200]


def parse_batch(
    body: bytes, symbols: frozenset[str], max_items: int, busy: frozenset[str] = frozenset()
) -> ParsedBatch:
    """Decode one request body (pure: no clock, no Redis).

    ``symbols`` are those the door serves; ``busy`` those the ingest's own source writes.
    Raises :class:`BodyError` when the body as a whole is unusable (not JSON 400; too many
    items 413; wrong envelope, unknown or busy symbol, no ticks 422). Items that do not parse, or whose
    trade id does not increase, are returned in ``errors``; the others in ``trades``.
    """
    try:
        envelope = _BATCH.decode(body)
    except msgspec.ValidationError as exc:
        raise BodyError(422, "bad_envelope", _decode_message(exc)) from None
    except msgspec.DecodeError as exc:
        raise BodyError(400, "bad_json", f"the body is not JSON: {_decode_message(exc)}") from None
    except RecursionError:  # msgspec's depth guard: '[[[[...' is refused, not a crash
        raise BodyError(422, "too_deep", "the JSON is nested too deeply") from None
    if envelope.symbol not in symbols:
        if envelope.symbol in busy:
            raise BodyError(
                422,
                "source_conflict",
                f"{envelope.symbol} is written by this ingest's own source; one writer per tick stream keeps ids "
                "in order: run an ingest with UNISTREAM_SOURCE=external for symbols you bring",
            )
        raise BodyError(
            422,
            "unknown_symbol",
            f"{envelope.symbol[:40]!r} is not served here; use one of {', '.join(sorted(symbols)) or '(none)'}",
        )
    raw_items = [body] if envelope.ticks is None else [bytes(raw) for raw in envelope.ticks]
    if not raw_items:
        raise BodyError(422, "no_ticks", "the batch holds no ticks")
    if len(raw_items) > max_items:
        raise BodyError(413, "too_many_ticks", f"{len(raw_items)} ticks; send at most {max_items} per request")
    trades: list[tuple[int, RawTrade]] = []
    errors: list[ItemError] = []
    previous_id: int | None = None
    for index, raw in enumerate(raw_items):
        try:
            item = _TICK.decode(raw)
        except msgspec.DecodeError as exc:  # ValidationError included: wrong type, missing field
            errors.append(ItemError(index, "bad_item", _decode_message(exc)))
            continue
        try:
            price = parse_decimal(item.price)
        except ValueError as exc:
            errors.append(ItemError(index, "bad_price", str(exc)))
            continue
        try:
            size = parse_decimal(item.size)
        except ValueError as exc:
            errors.append(ItemError(index, "bad_size", str(exc)))
            continue
        # Checked here, not left to the validator: inside one batch a smaller id is a producer's
        # ordering bug, and the validator would call it a duplicate and skip it without a word.
        if previous_id is not None and item.trade_id <= previous_id:
            errors.append(
                ItemError(index, "not_increasing", f"trade_id {item.trade_id} follows {previous_id} in this batch")
            )
            continue
        previous_id = item.trade_id
        trade = RawTrade(
            symbol=envelope.symbol,
            trade_id=item.trade_id,
            price=price,
            size=size,
            buyer_is_maker=item.side == "SELL",
            ts_event_ms=item.ts_event_ms,
        )
        trades.append((index, trade))
    return ParsedBatch(envelope.symbol, envelope.source, trades, errors, raw_items)


def wall_ms() -> int:
    """Wall-clock time, ms since the epoch."""
    return int(time.time() * 1000)


@dataclass
class Door:
    """Accepts batches from other producers and writes them; one per ingest process.

    ``validator`` is replaced (never mutated) by each accepted request, under ``_lock``, so
    requests for the door are serialised: the XADD order is the validation order.
    """

    settings: IngestSettings
    stats: Stats
    validator: Validator = field(init=False)
    _redis: aioredis.Redis | None = field(default=None, init=False)
    _redis_loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _lock: asyncio.Lock | None = field(default=None, init=False)
    _seeded: set[str] = field(default_factory=set, init=False)
    # Symbols whose last write failed with an unknown outcome: read the stream top before the next one.
    _uncertain: set[str] = field(default_factory=set, init=False)
    _last_error: str = field(default="", init=False)  # last Redis failure logged, "" once writes succeed
    written: WrittenTicks = field(init=False)  # what the door wrote lately, to repair a Redis rollback

    def __post_init__(self) -> None:
        self.validator = Validator(self.settings.symbols)
        self.written = WrittenTicks(ROLLBACK_KEEP_MS, self.settings.max_buffer_ticks)
        self._symbols = frozenset(self.settings.door_symbols)
        self._busy = frozenset(self.settings.symbols) - self._symbols  # written by the built-in source
        self._token = self.settings.ingest_token.encode()
        describe = self.stats.describe
        describe("door_requests", "requests and websocket messages at /v1/ticks, by transport and status")
        describe("door_ticks_accepted", "ticks written through /v1/ticks")
        describe("door_rejected", "refused or skipped /v1/ticks items and bodies, by reason")
        describe("door_ticks_refused", "valid ticks not written because their request was refused or failed")
        describe("door_auth_failures", "/v1/ticks requests without the right bearer token")
        describe("door_oversized", "/v1/ticks bodies or messages over max_body_bytes")
        describe("door_write_errors", "failed /v1/ticks writes and stream-top reads (answered 503)")
        describe("door_redis_rollbacks", "times a tick stream's mark was found below what the door wrote")
        describe("door_ticks_resent", "accepted ticks written again after Redis lost them in a rollback")
        describe("door_ticks_lost_in_rollback", "accepted ticks Redis lost further back than remembered")

    # --- Redis -------------------------------------------------------------------------------

    def _client(self) -> aioredis.Redis:
        """The door's command client, made on first use in the running loop.

        Made lazily because the router exists before any event loop does; re-made when the loop
        changed (an app restarted in tests), since a redis-py connection belongs to one loop.
        """
        loop = asyncio.get_running_loop()
        if self._redis is None or self._redis_loop is not loop:
            self._redis = command_client(self.settings.redis_url, name="ingest:door", timeout_s=REDIS_TIMEOUT_S)
            self._redis_loop = loop
            self._lock = asyncio.Lock()
        return self._redis

    async def close(self) -> None:
        """Close the Redis client (the app's lifespan calls this on shutdown)."""
        client, self._redis, self._redis_loop = self._redis, None, None
        if client is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await client.aclose()

    async def _seed(self, client: aioredis.Redis, symbol: str) -> None:
        """Continue the validator from the stream's last trade id, so ticks already there are duplicates."""
        reply = await client.xrevrange(keys.ticks(symbol), count=1)
        top: int | None = None
        if reply:
            try:
                packet = codec.decode(reply[0][1])
            except codec.DecodeError as exc:
                # Not fatal: without a top the door cannot spot repeats of what is there, so say so.
                log.warning("%s: top entry of %s is unreadable (%s); door not seeded from it", symbol,
                            keys.ticks(symbol), exc)  # fmt: skip
                self.stats.inc("door_seed_unreadable", symbol=symbol)
            else:
                if isinstance(packet, TickBatch) and packet.ticks:
                    top = packet.ticks[-1].trade_id
        last = self.validator.last_ids.get(symbol)
        if top is not None and (last is None or top > last):
            self.validator.resume(symbol, top)
        mark = await client.get(keys.ticks_mark(symbol))
        await self._repair(client, symbol, int(mark) if mark else None)
        self._seeded.add(symbol)
        self._uncertain.discard(symbol)

    async def _repair(self, client: aioredis.Redis, symbol: str, mark: int | None) -> None:
        """Take Redis's ``mark``; after a rollback, write again the accepted ticks it lost (in order)."""
        found = self.written.reconcile(symbol, mark)
        if not found.rolled_back:
            return
        self.stats.inc("door_redis_rollbacks", symbol=symbol)
        log.warning("%s: Redis rolled back (the stream's mark is trade %s): writing %d accepted tick(s) again",
                    symbol, mark, len(found.resend))  # fmt: skip
        min_id = max(0, wall_ms() - self.settings.tick_retention_s * 1000)
        if found.lost is not None:
            first, last = found.lost
            after = found.resend[0].ts_event_ms if found.resend else 0
            marker = GapMarker(symbol, found.sources[0] if found.sources else "REAL", first, last, 0, after)
            await client.xadd(keys.ticks(symbol), codec.encode(marker), id="*", minid=min_id, approximate=True)
            self.stats.inc("door_ticks_lost_in_rollback", last - first + 1, symbol=symbol)
        start = 0
        while start < len(found.resend):  # runs of one source label, in batches the door would accept
            end = start + 1
            while (end < len(found.resend) and end - start < self.settings.max_batch_items
                   and found.sources[end] == found.sources[start]):  # fmt: skip
                end += 1
            await self._write_fenced(client, TickBatch(symbol, found.sources[start], found.resend[start:end]), min_id)  # type: ignore[arg-type]
            self.stats.inc("door_ticks_resent", end - start, symbol=symbol)
            start = end

    async def _write_fenced(self, client: aioredis.Redis, batch: TickBatch, min_id: int) -> str:
        """Append ``batch`` if the stream's mark is the door's; repair a rollback first. The entry id."""
        for _ in range(3):
            ok, value = written(await queue_batch(client, batch, self.written.expected(batch.symbol), min_id))
            if ok:
                self.written.note(batch.symbol, batch.ticks, wall_ms(), batch.source)
                return str(value)
            await self._repair(client, batch.symbol, value)  # type: ignore[arg-type]
        raise RedisError(f"the mark of {keys.ticks(batch.symbol)} keeps changing: is another writer on the stream?")

    # --- auth --------------------------------------------------------------------------------

    @property
    def token_required(self) -> bool:
        """True when UNISTREAM_INGEST_TOKEN is set."""
        return bool(self._token)

    def authorized(self, authorization: str | None, query_token: str | None = None) -> bool:
        """True when no token is configured, or ``Authorization: Bearer <token>`` (or ``query_token``) matches."""
        if not self._token:
            return True
        given: str | None = None
        if authorization:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() == "bearer":
                given = credentials.strip()
        if given is None:
            given = query_token
        if given is None:
            return False
        # Headers arrive decoded as latin-1: back to the bytes the client sent, then compare in constant time.
        return hmac.compare_digest(given.encode("latin-1", "replace"), self._token)

    # --- the work ----------------------------------------------------------------------------

    def _refuse(self, error: str, detail: str, status: int, raw: bytes) -> Answer:
        self.stats.inc("door_rejected", reason=error)
        self.validator.reject_raw(error, raw, detail)
        return Answer(status, {"error": error, "detail": detail})

    def oversized(self, size: int | None) -> Answer:
        """The answer to a body over ``max_body_bytes`` (``size`` when known), counted."""
        self.stats.inc("door_oversized")
        limit = self.settings.max_body_bytes
        shown = f"{size} bytes" if size is not None else "the body"
        return Answer(413, {"error": "too_large", "detail": f"{shown} is over the limit of {limit} bytes"})

    def unauthorized(self) -> Answer:
        """The answer to a request without the right token, counted."""
        self.stats.inc("door_auth_failures")
        return Answer(401, {"error": "unauthorized", "detail": "send Authorization: Bearer <UNISTREAM_INGEST_TOKEN>"})

    async def submit(self, body: bytes) -> Answer:
        """Validate one batch and write it whole, or refuse it whole; the answer says which."""
        try:
            parsed = parse_batch(body, self._symbols, self.settings.max_batch_items, self._busy)
        except BodyError as exc:
            return self._refuse(exc.error, exc.detail, exc.status, body)
        recv_ms = wall_ms()
        client = self._client()
        assert self._lock is not None
        async with self._lock:
            symbol = parsed.symbol
            if symbol not in self._seeded or symbol in self._uncertain:
                try:
                    await self._seed(client, symbol)
                except REDIS_ERRORS as exc:
                    return self._unavailable(parsed, len(parsed.trades), exc)
            trial = copy.deepcopy(self.validator)
            ticks: list[Tick] = []
            duplicates: list[int] = []
            errors = list(parsed.errors)
            for index, trade in parsed.trades:
                result = trial.check(trade, recv_ms)
                if isinstance(result, Rejection):
                    if result.reason in SKIPPED_REASONS:
                        duplicates.append(index)
                    else:
                        errors.append(ItemError(index, result.reason, result.detail))
                else:
                    ticks.append(result)
            gaps = trial.take_gaps()  # taken now: nobody else drains the door's validator
            if errors:
                return self._refuse_items(parsed, errors, len(ticks))
            entry_id: str | None = None
            if ticks:
                batch = TickBatch(symbol=symbol, source=parsed.source, ticks=ticks)  # type: ignore[arg-type]
                min_id = max(0, recv_ms - self.settings.tick_retention_s * 1000)
                # Until the reply arrives the XADD may or may not have run (a broken connection, a
                # cancelled request): the next request re-reads the stream top first, so a resend of
                # these ticks is seen as duplicates rather than written twice.
                self._uncertain.add(symbol)
                try:
                    entry_id = await self._write_fenced(client, batch, min_id)
                except REDIS_ERRORS as exc:
                    return self._unavailable(parsed, len(ticks), exc)
                self._uncertain.discard(symbol)
            self._last_error = ""
            self.validator = trial  # commit: the write (if any) succeeded
        return self._accepted(parsed, ticks, duplicates, gaps, entry_id)

    def _refuse_items(self, parsed: ParsedBatch, errors: list[ItemError], valid: int) -> Answer:
        errors.sort(key=lambda e: e.index)
        for e in errors:
            self.stats.inc("door_rejected", reason=e.reason)
            self.validator.reject_raw(e.reason, parsed.raw_items[e.index], e.detail)
        if valid:
            self.stats.inc("door_ticks_refused", valid, symbol=parsed.symbol)
        total = len(parsed.raw_items)
        return Answer(
            422,
            {
                "error": "invalid_ticks",
                "detail": f"{len(errors)} of {total} ticks were refused; nothing was written",
                "items": [{"index": e.index, "reason": e.reason, "detail": e.detail} for e in errors],
            },
        )

    def _unavailable(self, parsed: ParsedBatch, valid: int, exc: BaseException) -> Answer:
        self.stats.inc("door_write_errors")
        if valid:
            self.stats.inc("door_ticks_refused", valid, symbol=parsed.symbol)
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_error:  # once per kind of failure, not once per retrying producer
            log.warning("door: Redis unavailable (%s); answering 503 until it is back", text)
            self._last_error = text
        return Answer(503, {"error": "redis_unavailable", "detail": "nothing was written; retry later", "retry": True})

    def _accepted(
        self, parsed: ParsedBatch, ticks: list[Tick], duplicates: list[int], gaps: list[Any], entry_id: str | None
    ) -> Answer:
        symbol = parsed.symbol
        if ticks:
            self.stats.inc("door_ticks_accepted", len(ticks), symbol=symbol, source=parsed.source)
        if duplicates:
            self.stats.inc("door_rejected", len(duplicates), reason="duplicate")
        if gaps:
            self.stats.inc("door_gaps", len(gaps), symbol=symbol)
        body: dict[str, Any] = {"accepted": len(ticks), "duplicates": len(duplicates), "entry_id": entry_id}
        if duplicates:
            body["duplicate_indices"] = duplicates
        if gaps:
            body["gaps"] = [{"from_id": g.from_id, "to_id": g.to_id} for g in gaps]
        return Answer(200, body)

    def info(self) -> dict[str, Any]:
        """The door's state for ``GET /v1/ticks/stats``: the validator's counts and rejection sample."""
        return {
            "token_required": self.token_required,
            "max_body_bytes": self.settings.max_body_bytes,
            "max_batch_items": self.settings.max_batch_items,
            "seeded": sorted(self._seeded),
            "uncertain": sorted(self._uncertain),
            "validator": self.validator.stats(),
        }


def _json(answer: Answer, headers: dict[str, str] | None = None) -> Response:
    return Response(codec.to_json(answer.body), status_code=answer.status, media_type="application/json",
                    headers=headers)  # fmt: skip


def make_door_router(settings: IngestSettings, stats: Stats) -> APIRouter:
    """Router with ``POST /v1/ticks``, websocket ``/v1/ticks`` and ``GET /v1/ticks/stats``."""
    door = Door(settings, stats)
    limit = settings.max_body_bytes
    if settings.door_symbols and not door.token_required and not is_loopback(settings.http_host):
        log.warning(
            "/v1/ticks accepts %s from anyone who reaches %s:%s: set UNISTREAM_INGEST_TOKEN to require a bearer token",
            ",".join(settings.door_symbols), settings.http_host, settings.http_port or "8001",
        )  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await door.close()

    router = APIRouter(lifespan=lifespan)
    router.door = door  # type: ignore[attr-defined]  # for tests and the service's /stats

    def answered(transport: str, answer: Answer) -> Answer:
        stats.inc("door_requests", transport=transport, status=str(answer.status))
        return answer

    @router.post(PATH)
    async def post_ticks(request: Request) -> Response:
        if not door.authorized(request.headers.get("authorization")):
            return _json(answered("http", door.unauthorized()), {"WWW-Authenticate": "Bearer"})
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _json(answered("http", door.oversized(int(declared))))
        # Read in chunks and stop at the limit: a body without (or lying about) its length
        # must not be buffered whole before it is refused.
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return _json(answered("http", door.oversized(None)))
        except ClientDisconnect:
            stats.inc("door_rejected", reason="client_disconnect")
            return _json(answered("http", Answer(400, {"error": "client_disconnect", "detail": "body cut short"})))
        answer = answered("http", await door.submit(bytes(body)))
        headers = {"Retry-After": "1"} if answer.status == 503 else None
        return _json(answer, headers)

    @router.get(STATS_PATH)
    async def door_stats(request: Request) -> Response:
        if not door.authorized(request.headers.get("authorization")):
            return _json(door.unauthorized(), {"WWW-Authenticate": "Bearer"})
        return _json(Answer(200, door.info()))

    @router.websocket(PATH)
    async def ws_ticks(websocket: WebSocket) -> None:
        if not door.authorized(websocket.headers.get("authorization"), websocket.query_params.get("token")):
            answered("ws", door.unauthorized())
            await websocket.close(code=WS_POLICY_VIOLATION, reason="unauthorized")
            return
        await websocket.accept()
        seq = 0
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                seq += 1
                text: str | None = message.get("text")
                data: bytes = (message.get("bytes") or b"") if text is None else b""
                # chars <= bytes: a text too long in chars is too long in bytes, without encoding it.
                size = len(data) if text is None else len(text)
                if text is not None and size <= limit:
                    data = text.encode("utf-8", "surrogatepass")
                    size = len(data)
                if size > limit:
                    answer = answered("ws", door.oversized(size))
                    if size > HUGE_FACTOR * limit:
                        await websocket.close(code=WS_MESSAGE_TOO_BIG, reason="message too big")
                        return
                else:
                    try:
                        answer = answered("ws", await door.submit(data))
                    except Exception:  # one bad message must not end the connection
                        log.exception("door: websocket message %d failed", seq)
                        stats.inc("door_internal_errors")
                        answer = Answer(500, {"error": "internal", "detail": "the message was not written"})
                await websocket.send_text(codec.to_json({"seq": seq, "status": answer.status, **answer.body}).decode())
        except WebSocketDisconnect:
            return

    return router
