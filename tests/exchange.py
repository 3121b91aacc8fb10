"""A local test exchange that speaks Binance spot's public protocol on 127.0.0.1.

What it serves (free ports, loopback only):

- websocket ``/stream?streams=ethusdt@trade/btcusdt@trade``: combined-stream messages
  ``{"stream": "ethusdt@trade", "data": {"e": "trade", "E", "s", "t", "p", "q", "T", "m", "M"}}`` with
  Binance's field names and types (``p``/``q`` decimal strings, times in integer ms, per-symbol
  consecutive trade ids);
- REST ``GET /api/v3/time``, ``GET /api/v3/historicalTrades?symbol=&fromId=&limit=`` (limit <= 1000,
  served from the full trade log) and ``GET /api/v3/klines?symbol=&interval=&limit=`` (1s, 1m, 1h or 1d;
  built from the log, after any past klines a test added with :meth:`TestExchange.add_past_klines`;
  the last row is the interval still open, as on Binance).

Trades are generated at ``rate_per_s`` per symbol whether or not anybody is connected, like a real
market: what a client misses while disconnected must be backfilled. Every trade is kept in
:attr:`TestExchange.log` so a test can compare it with what reached the consumer.

Controls for tests: :meth:`drop_all` (abrupt TCP abort), :meth:`refuse_connections_for`,
:meth:`server_shutdown` (send ``serverShutdown``, close after a delay), :meth:`go_silent` (socket
stays open, nothing is sent, client pings go unanswered), :meth:`rest_rate_limit` (429 with
Retry-After for the next N calls; 418 for a call made while Retry-After runs), :meth:`refuse_history`,
:meth:`inject` (raw, possibly malformed, frames) and :meth:`add_past_klines` (history before the log).

Use it as an async context manager::

    async with TestExchange(("ETHUSDT", "BTCUSDT"), rate_per_s=100) as ex:
        ex.ws_url, ex.rest_url
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

# A sample of what a real feed must survive, one per malformed shape (ids are far in the past so that
# a lenient parser that accepts one still cannot create a gap).
GARBAGE: tuple[str | bytes, ...] = (
    "not json {",
    b"\x00\x01\x02 binary frame",
    "[]",
    "null",
    '"just a string"',
    '{"stream": "ethusdt@trade"}',
    '{"stream": "ethusdt@trade", "data": {"e": "trade", "E": 1, "s": "ETHUSDT"}}',
    (
        '{"stream": "ethusdt@trade", "data": {"e": "trade", "E": 1, "s": "ETHUSDT", "t": 5, "p": 3000.5, "q": 0.1,'
        ' "T": 1, "m": true, "M": true}}'
    ),
    (
        '{"stream": "ethusdt@trade", "data": {"e": "trade", "E": 1, "s": "ETHUSDT", "t": "x", "p": "1", "q": "1",'
        ' "T": 1, "m": true, "M": true}}'
    ),
)


IN_FLIGHT_GRACE_S = 0.1  # REST calls this soon after a 429 count as already in flight
KLINE_INTERVAL_MS = {"1s": 1_000, "1m": 60_000, "1h": 3_600_000, "1d": 86_400_000}  # the intervals served


@dataclass(slots=True)
class LoggedTrade:
    """One generated trade: the Binance fields plus when the exchange first sent it (``sent_s``, epoch seconds)."""

    symbol: str
    trade_id: int
    price: str
    qty: str
    time_ms: int
    buyer_is_maker: bool
    sent_s: float | None = None


@dataclass(eq=False)
class _Client:
    ws: ServerConnection
    symbols: frozenset[str]
    queue: asyncio.Queue[tuple[str | bytes, LoggedTrade | None]] = field(default_factory=asyncio.Queue)
    silent: bool = False


class TestExchange:
    """Binance-spot look-alike on loopback; see the module docstring.

    ``rate_per_s`` is trades per second per symbol; ``first_ids`` the first trade id per symbol
    (default: far apart per symbol so a mix-up shows). ``ping_interval_s`` is the server's keepalive
    ping period (Binance: 20 s).
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        symbols: Sequence[str] = ("ETHUSDT", "BTCUSDT"),
        *,
        rate_per_s: float = 50.0,
        first_ids: dict[str, int] | None = None,
        ping_interval_s: float = 20.0,
        seed: int = 7,
        clock_offset_ms: int = 0,
    ) -> None:
        self.symbols = tuple(s.upper() for s in symbols)
        self.clock_offset_ms = clock_offset_ms  # the venue's clock minus the host's: trade and server times
        self.rate_per_s = rate_per_s
        self.ping_interval_s = ping_interval_s
        self._rng = random.Random(seed)
        starts = first_ids or {s: 1_000_000 * (i + 1) for i, s in enumerate(self.symbols)}
        self.first_ids = {s: starts[s] for s in self.symbols}
        self.log: dict[str, list[LoggedTrade]] = {s: [] for s in self.symbols}
        self._price = {s: Decimal("3000.00") if i == 0 else Decimal("60000.00") for i, s in enumerate(self.symbols)}
        self._clients: set[_Client] = set()
        self._accept_after = 0.0  # monotonic time before which new websocket handshakes are refused
        self._rest_limit_left = 0  # next N REST calls answer 429
        self._retry_after_s = 0
        self._retry_from = 0.0  # monotonic start of the window in which a call earns a 418
        self._retry_until = 0.0  # monotonic end of the announced Retry-After window
        self._ban_s = 0
        self._history_refusal: int | None = None
        self._history_floor: dict[str, int] = {}
        self._past_klines: dict[tuple[str, str], dict[int, list[Any]]] = {}
        self.rest_calls: list[tuple[float, str, int]] = []  # (monotonic s, path with query, status)
        self.connections_total = 0
        self._ws_server: Server | None = None
        self._http_server: asyncio.Server | None = None
        self._generator: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.ws_url = ""
        self.rest_url = ""

    # ---- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._ws_server = await serve(
            self._handle_ws,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            ping_interval=self.ping_interval_s,
            ping_timeout=60,
        )
        ws_port = self._ws_server.sockets[0].getsockname()[1]
        self._http_server = await asyncio.start_server(self._handle_http, "127.0.0.1", 0)
        http_port = self._http_server.sockets[0].getsockname()[1]
        self.ws_url = f"ws://127.0.0.1:{ws_port}"
        self.rest_url = f"http://127.0.0.1:{http_port}"
        self._generator = asyncio.create_task(self._generate())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._generator is not None:
            self._generator.cancel()
        for task in list(self._tasks):
            task.cancel()
        for client in list(self._clients):
            client.ws.transport.abort()
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
        if self._http_server is not None:
            self._http_server.close()
            await self._http_server.wait_closed()

    def stream_url(self, symbols: Iterable[str] | None = None) -> str:
        """Combined-stream URL for ``symbols`` (default: all) on this exchange."""
        names = "/".join(f"{s.lower()}@trade" for s in (symbols or self.symbols))
        return f"{self.ws_url}/stream?streams={names}"

    # ---- controls --------------------------------------------------------------------------------

    @property
    def connected(self) -> int:
        """Number of websocket clients connected now."""
        return len(self._clients)

    def drop_all(self) -> None:
        """Abort every websocket connection's TCP stream (no close frame), as a network failure would."""
        for client in list(self._clients):
            client.ws.transport.abort()

    def refuse_connections_for(self, seconds: float) -> None:
        """Answer new websocket handshakes with HTTP 503 for ``seconds``; trades keep being generated."""
        self._accept_after = time.monotonic() + seconds

    def server_shutdown(self, close_after_s: float = 1.0) -> None:
        """Send ``serverShutdown`` to every current client, keep streaming, close them after ``close_after_s``."""
        message = json.dumps({"e": "serverShutdown", "E": _now_ms()})
        clients = list(self._clients)
        for client in clients:
            client.queue.put_nowait((message, None))

        async def close_later() -> None:
            await asyncio.sleep(close_after_s)
            for client in clients:
                await client.ws.close(1001, "server shutdown")

        self._spawn(close_later())

    def go_silent(self) -> None:
        """Current clients get nothing more: no messages, and their pings go unanswered (reading paused)."""
        for client in self._clients:
            client.silent = True
            client.ws.transport.pause_reading()

    def rest_rate_limit(self, calls: int, retry_after_s: int = 1, ban_s: int = 2) -> None:
        """The next ``calls`` REST calls answer 429 with ``Retry-After: retry_after_s``; a call made while that
        window runs answers 418 with ``Retry-After: ban_s`` (Binance's escalation for ignoring 429)."""
        self._rest_limit_left = calls
        self._retry_after_s = retry_after_s
        self._ban_s = ban_s

    def rest_ban(self, ban_s: int = 1) -> None:
        """Every REST call for the next ``ban_s`` seconds answers 418 with ``Retry-After: ban_s`` (a call
        inside the window restarts it, as Binance's bans escalate)."""
        self._ban_s = ban_s
        self._retry_from = time.monotonic()
        self._retry_until = self._retry_from + ban_s

    def refuse_history(self, status: int | None = 400) -> None:
        """Answer every historicalTrades call with ``status`` (None: serve again)."""
        self._history_refusal = status

    def forget_history_before(self, symbol: str, trade_id: int) -> None:
        """historicalTrades of ``symbol`` serves only ids >= ``trade_id`` from now on (a fromId below it
        gets the page that starts at ``trade_id``), as a venue that pruned its history would."""
        self._history_floor[symbol] = trade_id

    def add_past_klines(self, symbol: str, interval: str, rows: Iterable[list[Any]]) -> None:
        """Serve these klines (Binance's 12-value rows) of ``symbol`` and ``interval`` before those built from
        the trade log, as a venue with a past would; a row at an open time the log also has is replaced by it."""
        past = self._past_klines.setdefault((symbol.upper(), interval), {})
        for row in rows:
            past[int(row[0])] = list(row)

    def inject(self, messages: Iterable[str | bytes]) -> None:
        """Queue raw frames (str: text, bytes: binary) to every current client, between its trades."""
        messages = list(messages)
        for client in self._clients:
            for message in messages:
                client.queue.put_nowait((message, None))

    def trade_ids(self, symbol: str) -> list[int]:
        """Every trade id generated so far for ``symbol``, in order."""
        return [t.trade_id for t in self.log[symbol]]

    # ---- trade generation ------------------------------------------------------------------------

    async def _generate(self) -> None:
        """Emit ``rate_per_s`` trades per symbol per second on a 5 ms grid, due counts from elapsed time
        so a late wake-up catches up rather than slowing the market."""
        start = time.monotonic()
        made = 0
        while True:
            due = int((time.monotonic() - start) * self.rate_per_s) - made
            for _ in range(due):
                for symbol in self.symbols:
                    self._new_trade(symbol)
            made += max(due, 0)
            await asyncio.sleep(0.005)

    def _new_trade(self, symbol: str) -> None:
        log = self.log[symbol]
        trade_id = self.first_ids[symbol] + len(log)
        self._price[symbol] += Decimal(self._rng.choice((-1, 0, 0, 1))) * Decimal("0.01")
        qty = Decimal(self._rng.randint(1, 5000)) / Decimal(1000)
        now = _now_ms() + self.clock_offset_ms
        trade = LoggedTrade(symbol, trade_id, str(self._price[symbol]), str(qty), now, self._rng.random() < 0.5)
        log.append(trade)
        data = {
            "e": "trade",
            "E": now,
            "s": symbol,
            "t": trade_id,
            "p": trade.price,
            "q": trade.qty,
            "T": now,
            "m": trade.buyer_is_maker,
            "M": True,
        }
        message = json.dumps({"stream": f"{symbol.lower()}@trade", "data": data}, separators=(",", ":"))
        for client in self._clients:
            if symbol in client.symbols and not client.silent:
                client.queue.put_nowait((message, trade))

    # ---- websocket -------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if time.monotonic() < self._accept_after:
            return connection.respond(503, "Service Unavailable\n")
        path = urlsplit(request.path)
        if path.path != "/stream":
            return connection.respond(404, "Not Found\n")
        return None

    async def _handle_ws(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path).query)
        names = query.get("streams", [""])[0].split("/")
        symbols = frozenset(n.split("@")[0].upper() for n in names if n.endswith("@trade"))
        client = _Client(ws, symbols)
        self.connections_total += 1
        self._clients.add(client)
        sender = asyncio.create_task(self._send_loop(client))
        try:
            await ws.wait_closed()
        finally:
            self._clients.discard(client)
            sender.cancel()

    async def _send_loop(self, client: _Client) -> None:
        with contextlib.suppress(ConnectionClosed):  # the handler notices the close and cleans up
            while True:
                message, trade = await client.queue.get()
                if client.silent:
                    continue
                if trade is not None and trade.sent_s is None:
                    trade.sent_s = time.time()
                await client.ws.send(message)

    # ---- REST ------------------------------------------------------------------------------------

    async def _handle_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Minimal HTTP/1.1 with keep-alive: GET only, no request bodies (all Binance market endpoints)."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                _method, target, _version = request_line.split(" ", 2)
                status, body, headers = self._route(target)
                self.rest_calls.append((time.monotonic(), target, status))
                reason = {
                    200: "OK",
                    400: "Bad Request",
                    404: "Not Found",
                    418: "I'm a teapot",
                    429: "Too Many Requests",
                }
                lines = [f"HTTP/1.1 {status} {reason.get(status, 'Error')}", "Content-Type: application/json"]
                lines += [f"{k}: {v}" for k, v in headers.items()]
                lines.append(f"Content-Length: {len(body)}")
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def _route(self, target: str) -> tuple[int, bytes, dict[str, str]]:
        split = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        now = time.monotonic()
        if self._retry_from <= now < self._retry_until:
            # Calling again inside Retry-After is what gets an IP banned on Binance.
            self._retry_until = now + self._ban_s
            return 418, _error(-1003, "IP banned"), {"Retry-After": str(self._ban_s)}
        if self._rest_limit_left > 0:
            self._rest_limit_left -= 1
            # Calls already in flight when the limit hit (sent before the client could read the 429)
            # get a 429 too, not a ban.
            self._retry_from = now + IN_FLIGHT_GRACE_S
            self._retry_until = now + self._retry_after_s
            return 429, _error(-1003, "Too many requests"), {"Retry-After": str(self._retry_after_s)}
        if split.path == "/api/v3/time":
            return 200, json.dumps({"serverTime": _now_ms() + self.clock_offset_ms}).encode(), {}
        if split.path == "/api/v3/historicalTrades":
            return self._historical_trades(query)
        if split.path == "/api/v3/klines":
            return self._klines(query)
        return 404, _error(-1000, "unknown path"), {}

    def _historical_trades(self, query: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        symbol = query.get("symbol", "").upper()
        if symbol not in self.log:
            return 400, _error(-1121, "Invalid symbol."), {}
        if self._history_refusal is not None:
            return self._history_refusal, _error(-1100, "history refused"), {}
        try:
            limit = int(query.get("limit", "500"))
            log = self.log[symbol]
            from_id = int(query["fromId"]) if "fromId" in query else self.first_ids[symbol] + len(log) - limit
        except ValueError:
            return 400, _error(-1100, "Illegal characters found in a parameter."), {}
        if not 1 <= limit <= 1000:
            return 400, _error(-1100, "limit must be within 1..1000"), {}
        from_id = max(from_id, self._history_floor.get(symbol, from_id))
        start = max(from_id - self.first_ids[symbol], 0)
        items = [
            {
                "id": t.trade_id,
                "price": t.price,
                "qty": t.qty,
                "quoteQty": str(Decimal(t.price) * Decimal(t.qty)),
                "time": t.time_ms,
                "isBuyerMaker": t.buyer_is_maker,
                "isBestMatch": True,
            }
            for t in log[start : start + limit]
        ]
        return 200, json.dumps(items).encode(), {"X-MBX-USED-WEIGHT-1M": "25"}

    def _klines(self, query: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        symbol = query.get("symbol", "").upper()
        interval = query.get("interval", "1m")
        if symbol not in self.log or interval not in KLINE_INTERVAL_MS:
            return 400, _error(-1100, "only 1s, 1m, 1h and 1d klines of known symbols"), {}
        try:
            limit = int(query.get("limit", "500"))
        except ValueError:
            return 400, _error(-1100, "Illegal characters found in a parameter."), {}
        if not 1 <= limit <= 1000:
            return 400, _error(-1100, "limit must be within 1..1000"), {}
        span = KLINE_INTERVAL_MS[interval]
        bars: dict[int, list[Any]] = {}
        for t in self.log[symbol]:
            open_ms = t.time_ms - t.time_ms % span
            price, qty = Decimal(t.price), Decimal(t.qty)
            bar = bars.get(open_ms)
            if bar is None:
                z, last_ms = Decimal(0), open_ms + span - 1  # Binance: close time = last ms inside the kline
                bar = bars[open_ms] = [open_ms, price, price, price, price, z, last_ms, z, 0, z, z]
            bar[2], bar[3], bar[4] = max(bar[2], price), min(bar[3], price), price
            bar[5] += qty
            bar[7] += price * qty
            bar[8] += 1
            if not t.buyer_is_maker:  # the taker bought
                bar[9] += qty
                bar[10] += price * qty
        built = [[b[0], *map(str, b[1:6]), b[6], str(b[7]), b[8], str(b[9]), str(b[10]), "0"] for b in bars.values()]
        rows = {**self._past_klines.get((symbol, interval), {}), **{r[0]: r for r in built}}
        body = [rows[t] for t in sorted(rows)][-limit:]
        return 200, json.dumps(body).encode(), {}

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _error(code: int, msg: str) -> bytes:
    return json.dumps({"code": code, "msg": msg}).encode()


def past_kline_rows(tf: str, n: int, before_ms: int, price: float) -> list[list[Any]]:
    """``n`` closed Binance kline rows (for :meth:`TestExchange.add_past_klines`) ending at the
    interval before the one holding ``before_ms``."""
    span = KLINE_INTERVAL_MS[tf]
    first = before_ms - before_ms % span - n * span
    return [
        [first + i * span, f"{price:.2f}", f"{price + 5:.2f}", f"{price - 5:.2f}", f"{price + 1:.2f}", "2.5",
         first + (i + 1) * span - 1, f"{2.5 * price:.4f}", 10, "1.25", f"{1.25 * price:.4f}", "0"]
        for i in range(n)
    ]  # fmt: skip
