"""A Binance stand-in on 127.0.0.1 that replays recorded candles: kline WebSocket and market REST
on one port, for the demo (real time, ``play``) and for tests (driven by hand, no sleeps).

Served with aiohttp, following Binance's spot documents (``web-socket-streams.md``,
``rest-api.md``, ``errors.md``):

- WebSocket ``/stream?streams=a/b`` (combined: ``{"stream":..,"data":..}``), ``/ws/<stream>`` (raw),
  ``/ws`` and ``/ws/<n>`` (raw, then SUBSCRIBE; ccxt.pro connects that way).
  Control frames SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET_PROPERTY / GET_PROPERTY
  ``combined``, with Binance's answers and error codes 0-3. A ping every 20 s. A client sending
  more than 5 messages (text, ping or pong frames) within a second is disconnected, as Binance does.
  Stricter than Binance in one respect: only kline stream names are accepted (anything else is a
  client bug here), and a bad name in the URL is an HTTP 400.
- REST ``/api/v3/klines`` (startTime / endTime / limit, default 500, max 1000, Binance error
  JSON for bad parameters or symbols), ``/api/v3/time`` (the replay clock, not the wall clock),
  ``/api/v3/exchangeInfo`` (a minimal spot symbol ccxt accepts), ``/api/v3/ping``.
  Intervals that are multiples of the data's interval are aggregated; finer ones are -1120.

Many symbols at once: every series shares the replay clock, so the candles of all symbols (and
of every aggregated interval whose bucket ends there) close in the same step, with the same event
time, as real minute boundaries align; ``synthetic.synthetic_market`` makes such series for N
symbols without data files.

Test control: ``step()``, ``advance(n)`` (returns once every subscriber's frames are written),
``wait_until(predicate)``, and faults: ``drop_connections(clean=...)`` (everyone) or
``drop_connection(number, clean=...)`` (one connection), ``skip_messages(k)``, ``send_raw(frame)``,
``send_server_shutdown()``, ``go_silent()``, ``fail_rest(n)``. Observations: ``connection_log``
and ``rest_log`` record each connection and REST request with the time of ``clock`` (monotonic
seconds unless a test injects its own), for assertions on pacing.

Plugins (``mount``) share the port and the clock: each serves an aiohttp sub-application under
its ``prefix`` and hears every ``step`` before the klines go out. The exchange stand-in
(``tradebotd.replay.exchange``) is one, so one process serves market data and trading.

Errors: ``ReplayDataError`` (from ``series``) for unusable data; ``OSError`` from ``start()`` when
the port is taken.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType, TracebackType
from typing import NamedTuple, Protocol, Self

import orjson
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from tradebotd.market.wire import stream_key
from tradebotd.model import INTERVAL_MS, StreamKey
from tradebotd.replay.series import Series
from tradebotd.replay.tape import FINAL, ReplayTape, Step, format_decimal

__all__ = ["ConnectionRecord", "ReplayPlugin", "ReplayServer", "RestRecord"]

log = structlog.get_logger(__name__)

_CONTROL_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_STREAMS_MAX = 1024  # per connection (Binance's limit)
_ID_STRING = re.compile(r"[A-Za-z0-9]{1,36}")
_NUMBER = re.compile(r"[0-9]{1,20}")
_KLINES_PARAMS = frozenset({"symbol", "interval", "startTime", "endTime", "limit", "timeZone"})
_QUOTES = ("FDUSD", "USDT", "USDC", "TUSD", "BUSD", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL", "JPY", "DAI")
_ORDER_TYPES = ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"]


class ConnectionRecord(NamedTuple):
    """A WebSocket connection accepted: when (``clock``), its number, the streams in its URL."""

    at: float
    number: int
    streams: frozenset[str]


class RestRecord(NamedTuple):
    """A REST request received: when (``clock``), its path and query."""

    at: float
    path: str
    query: dict[str, str]


class ReplayPlugin(Protocol):
    """Served on the replay's port under ``prefix`` and moved by the replay's clock."""

    prefix: str

    def app(self) -> web.Application: ...

    def on_step(self, tape: ReplayTape, step: Step) -> None:
        """Called for every step of the clock, before its klines are pushed."""
        ...


@dataclass(eq=False)
class _Client:
    number: int
    ws: web.WebSocketResponse
    request: web.Request
    streams: dict[str, StreamKey]
    combined: bool
    skip: int = 0
    silent: bool = False
    recent: deque[float] = field(default_factory=deque)  # monotonic times of incoming messages


class ReplayServer:
    """Serve ``series`` as Binance would, from a replay clock that starts ``past`` candles in."""

    def __init__(
        self,
        series: Sequence[Series],
        *,
        past: int = 600,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_interval_s: float | None = 20.0,
        max_messages_per_s: int = 5,
        max_connection_s: float | None = None,
        max_streams_per_connection: int = _STREAMS_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``max_streams_per_connection``: Binance's 1024, or fewer to check that a client never
        asks one connection for more; ``clock``: the time stamped on ``connection_log`` and
        ``rest_log`` (tests pass the clock they drive the client's pacing with)."""
        self.tape = ReplayTape(series, past=past)
        self._series = {s.key.symbol: s for s in series}
        self._host = host
        self._requested_port = port
        self._ping_interval_s = ping_interval_s
        self._max_messages_per_s = max_messages_per_s
        self._max_connection_s = max_connection_s
        self._max_streams = max_streams_per_connection
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._clients: list[_Client] = []
        self._changed = asyncio.Event()
        self._rest_failures: deque[int] = deque()  # statuses for the next REST answers
        self._plugins: list[ReplayPlugin] = []
        # Observations for tests.
        self.total_connections = 0
        self.rate_limited = 0  # clients disconnected for exceeding max_messages_per_s
        self.messages_sent = 0  # kline frames written
        # The most recent frames and requests (bounded: the demo may run for days).
        self.control_frames: deque[tuple[int, str]] = deque(maxlen=10_000)  # (client number, text)
        self.rest_requests: deque[tuple[str, dict[str, str]]] = deque(maxlen=10_000)  # (path, query)
        self.rest_log: deque[RestRecord] = deque(maxlen=10_000)
        self.connection_log: deque[ConnectionRecord] = deque(maxlen=10_000)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen; ``port`` is known afterwards."""
        app = web.Application()
        app.router.add_get("/stream", self._websocket)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/ws/{tail:.*}", self._websocket)
        app.router.add_get("/api/v3/klines", self._klines)
        app.router.add_get("/api/v3/time", self._time)
        app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        app.router.add_get("/api/v3/ping", self._ping)
        for plugin in self._plugins:
            app.add_subapp(plugin.prefix, plugin.app())
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._requested_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("replay server listening", host=self._host, port=self._port, symbols=sorted(self.tape.symbols))

    def mount(self, plugin: ReplayPlugin) -> None:
        """Serve ``plugin`` on this port from the next ``start()`` on."""
        if self._runner is not None:
            raise RuntimeError("mount plugins before the replay server starts")
        self._plugins.append(plugin)

    async def close(self) -> None:
        """Disconnect everyone (close code 1001) and stop listening."""
        for client in list(self._clients):
            await self._close_client(client, WSCloseCode.GOING_AWAY, "server stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ReplayServer is not started")
        return self._port

    @property
    def series(self) -> Mapping[str, Series]:
        """The replayed series by symbol."""
        return MappingProxyType(self._series)

    @property
    def ws_url(self) -> str:
        return f"ws://{self._host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- driving the clock -----------------------------------------------------------------------

    async def step(self) -> Step | None:
        """Move the clock one stage and push its klines to every subscriber; None at the end."""
        step = self.tape.step()
        if step is None:
            return None
        for plugin in self._plugins:
            plugin.on_step(self.tape, step)
        # Every frame of the step is rendered before the first is sent, so the frames of one
        # moment leave back to back, as Binance's do, however many streams there are.
        events: dict[StreamKey, dict[str, object] | None] = {}
        outgoing: list[tuple[_Client, list[str]]] = []
        for client in list(self._clients):
            if client.silent:
                continue
            frames: list[str] = []
            for name, key in list(client.streams.items()):
                if key not in events:
                    events[key] = self.tape.kline_event(key, step)
                event = events[key]
                if event is None:
                    continue
                if client.skip:
                    client.skip -= 1
                    continue
                frames.append(_text({"stream": name, "data": event} if client.combined else event))
            outgoing.append((client, frames))
        for client, frames in outgoing:
            for frame in frames:
                if not await self._send(client, frame):
                    break
                self.messages_sent += 1
        self._notify()
        return step

    async def advance(self, candles: int = 1) -> int:
        """Run the clock until ``candles`` more base candles have closed (pushing every update and
        final kline on the way). Returns how many closed; fewer when the data ran out."""
        closed = 0
        while closed < candles:
            step = await self.step()
            if step is None:
                break
            closed += step.stage == FINAL
        return closed

    async def play(self, speed: float) -> None:
        """Replay in real time, ``speed`` times faster, until the data runs out."""
        if speed <= 0:
            raise ValueError("speed must be > 0")
        loop = asyncio.get_running_loop()
        stage_s = self.tape.base_ms / 1000 / FINAL / speed
        next_at = loop.time()
        while not self.tape.finished:
            next_at += stage_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            await self.step()
        log.info("replay finished", candles=self.tape.slots)

    # -- observing -------------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Clients connected now."""
        return len(self._clients)

    def subscriptions(self) -> list[frozenset[str]]:
        """The streams of each connected client, oldest connection first."""
        return [frozenset(client.streams) for client in self._clients]

    def subscriptions_by_connection(self) -> dict[int, frozenset[str]]:
        """The streams of each connected client, by connection number (1 for the first ever)."""
        return {client.number: frozenset(client.streams) for client in self._clients}

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; it is checked after every change the server sees
        (connections, frames received, REST requests, steps). Bound it with ``asyncio.timeout``."""
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- faults ----------------------------------------------------------------------------------

    async def drop_connections(self, *, clean: bool = False) -> int:
        """Disconnect every client: a close frame 1000 (``clean``) or a TCP abort (abnormal 1006)."""
        clients = list(self._clients)
        for client in clients:
            await self.drop_connection(client.number, clean=clean)
        return len(clients)

    async def drop_connection(self, number: int, *, clean: bool = False) -> bool:
        """Disconnect the client with connection ``number`` only (see ``drop_connections``);
        False if it is not connected."""
        for client in self._clients:
            if client.number == number:
                if clean:
                    await self._close_client(client, WSCloseCode.OK, "replay: dropped")
                else:
                    self._forget(client)
                    transport = client.request.transport
                    if transport is not None:
                        transport.abort()
                return True
        return False

    def skip_messages(self, count: int) -> None:
        """Each client connected now misses its next ``count`` kline frames (as if lost)."""
        for client in self._clients:
            client.skip += count

    async def send_raw(self, frame: str | bytes) -> int:
        """Write ``frame`` as is (text for str, binary for bytes) to every client."""
        sent = 0
        for client in list(self._clients):
            sent += await self._send(client, frame)
        return sent

    async def send_server_shutdown(self) -> int:
        """Send Binance's maintenance notice (``!serverShutdown`` on combined connections)."""
        event = {"e": "serverShutdown", "E": self.tape.now_ms}
        sent = 0
        for client in list(self._clients):
            payload = {"stream": "!serverShutdown", "data": event} if client.combined else event
            sent += await self._send(client, _text(payload))
        return sent

    def go_silent(self) -> None:
        """Clients connected now get nothing more (no data, no pings, no pongs) and their frames are
        ignored; the connection stays open (a close handshake is still answered, by aiohttp).
        New connections are served normally."""
        for client in self._clients:
            client.silent = True

    def fail_rest(self, count: int, *, status: int = 503) -> None:
        """The next ``count`` REST requests fail with ``status`` and Binance's error JSON."""
        self._rest_failures.extend([status] * count)

    # -- WebSocket -------------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/stream":
            names = [name for name in request.query.get("streams", "").split("/") if name]
            combined = True
        else:
            tail = request.path.removeprefix("/ws").removeprefix("/")
            names = [tail] if tail and not tail.isdigit() else []  # /ws/<n> is ccxt.pro's style
            combined = False
        bad = [name for name in names if stream_key(name) is None]
        if bad or len(names) > self._max_streams:
            text = f"Invalid request: invalid stream name {bad[0]!r}" if bad else "Invalid request: too many streams"
            return web.json_response({"code": 2, "msg": text}, status=400)
        ws = web.WebSocketResponse(autoping=False, max_msg_size=64 * 1024)
        if not ws.can_prepare(request).ok:
            return web.json_response({"code": 2, "msg": "Invalid request: not a WebSocket upgrade"}, status=400)
        await ws.prepare(request)

        self.total_connections += 1
        streams = {name: key for name in names if (key := stream_key(name)) is not None}
        client = _Client(self.total_connections, ws, request, streams, combined)
        self._clients.append(client)
        self.connection_log.append(ConnectionRecord(self._clock(), client.number, frozenset(streams)))
        log.debug("replay client connected", client=client.number, streams=len(streams))
        self._notify()
        keepalive = asyncio.create_task(self._keepalive(client))
        try:
            async for message in ws:
                if client.silent:
                    continue
                if self._over_rate_limit(client):
                    self.rate_limited += 1
                    log.warning("replay client over the message rate limit; disconnecting", client=client.number)
                    await self._close_client(client, WSCloseCode.POLICY_VIOLATION, "Too many requests")
                    break
                if message.type is WSMsgType.PING:
                    await ws.pong(message.data)
                elif message.type is WSMsgType.TEXT:
                    self.control_frames.append((client.number, message.data))
                    await self._send(client, _text(self._control(client, message.data)))
                elif message.type is WSMsgType.BINARY:
                    await self._send(client, _text({"code": 3, "msg": "Invalid JSON: binary frame"}))
                self._notify()
        finally:
            keepalive.cancel()
            self._forget(client)
            log.debug("replay client disconnected", client=client.number)
        return ws

    def _over_rate_limit(self, client: _Client) -> bool:
        now = time.monotonic()
        client.recent.append(now)
        while client.recent and now - client.recent[0] >= 1.0:
            client.recent.popleft()
        return len(client.recent) > self._max_messages_per_s

    async def _keepalive(self, client: _Client) -> None:
        """A ping every ``ping_interval_s``, and a clean close at the age limit (Binance: 24 h)."""
        loop = asyncio.get_running_loop()
        inf = float("inf")
        ping_every = self._ping_interval_s if self._ping_interval_s is not None else inf
        close_at = loop.time() + self._max_connection_s if self._max_connection_s is not None else inf
        next_ping = loop.time() + ping_every
        while min(next_ping, close_at) < inf:
            await asyncio.sleep(min(next_ping, close_at) - loop.time())
            if loop.time() >= close_at:
                await self._close_client(client, WSCloseCode.OK, "connection age limit")
                return
            next_ping += ping_every
            if not client.silent:
                try:
                    await client.ws.ping(str(int(time.time() * 1000)).encode())
                except (ConnectionError, RuntimeError):
                    return

    def _control(self, client: _Client, text: str) -> dict[str, object]:
        """Binance's answer to one control frame (errors per ``web-socket-streams.md``)."""
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            return {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}
        if not isinstance(doc, dict):
            return {"code": 3, "msg": "Invalid JSON: expected an object at line 1 column 1"}
        if "method" not in doc:
            return {"code": 2, "msg": f"Invalid request: missing field `method` at line 1 column {len(text)}"}
        request_id = doc.get("id", ...)
        if not (
            request_id is None
            or (type(request_id) is int and -(2**63) <= request_id < 2**63)
            or (isinstance(request_id, str) and _ID_STRING.fullmatch(request_id))
        ):
            return {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}
        method = doc["method"]
        if method not in _CONTROL_METHODS:
            variants = ", ".join(f"`{m}`" for m in _CONTROL_METHODS)
            return {"code": 2, "msg": f"Invalid request: unknown variant `{method}`, expected one of {variants}"}
        if set(doc) - {"method", "params", "id"}:
            return {"code": 2, "msg": "Invalid request: too many parameters"}
        params = doc.get("params")
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                return {"code": 2, "msg": "Invalid request: params must be a list of stream names", "id": request_id}
            for name in params:
                if stream_key(name) is None:
                    return {"code": 2, "msg": f"Invalid request: invalid stream name {name!r}", "id": request_id}
            if method == "SUBSCRIBE":
                if len(set(client.streams) | set(params)) > self._max_streams:
                    return {"code": 2, "msg": "Invalid request: too many streams", "id": request_id}
                for name in params:
                    key = stream_key(name)
                    assert key is not None
                    client.streams[name] = key
            else:
                for name in params:
                    client.streams.pop(name, None)
            return {"result": None, "id": request_id}
        if method == "LIST_SUBSCRIPTIONS":
            if params:
                return {"code": 2, "msg": "Invalid request: too many parameters"}
            return {"result": list(client.streams), "id": request_id}
        # SET_PROPERTY / GET_PROPERTY
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            return {"code": 2, "msg": "Invalid request: property name must be a string"}
        if params[0] != "combined":
            return {"code": 0, "msg": "Unknown property", "id": request_id}
        if method == "GET_PROPERTY":
            return {"result": client.combined, "id": request_id}
        if len(params) != 2 or not isinstance(params[1], bool):
            return {"code": 1, "msg": "Invalid value type: expected Boolean"}
        client.combined = params[1]
        return {"result": None, "id": request_id}

    async def _send(self, client: _Client, frame: str | bytes) -> bool:
        try:
            if isinstance(frame, str):
                await client.ws.send_str(frame)
            else:
                await client.ws.send_bytes(frame)
        except (ConnectionError, RuntimeError):
            self._forget(client)
            return False
        return True

    async def _close_client(self, client: _Client, code: int, reason: str) -> None:
        self._forget(client)
        try:
            await asyncio.wait_for(client.ws.close(code=code, message=reason.encode()), timeout=2.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            transport = client.request.transport
            if transport is not None:
                transport.abort()

    def _forget(self, client: _Client) -> None:
        if client in self._clients:
            self._clients.remove(client)
            self._notify()

    # -- REST ------------------------------------------------------------------------------------

    def _rest_prelude(self, request: web.Request) -> web.Response | None:
        query = dict(request.query)
        self.rest_requests.append((request.path, query))
        self.rest_log.append(RestRecord(self._clock(), request.path, query))
        self._notify()
        if self._rest_failures:
            status = self._rest_failures.popleft()
            msg = "Internal error; unable to process your request. Please try again."
            return _error(-1001 if status >= 500 else -1003, msg, status=status)
        return None

    async def _klines(self, request: web.Request) -> web.Response:
        if (failure := self._rest_prelude(request)) is not None:
            return failure
        query = request.query
        unknown = set(query) - _KLINES_PARAMS
        if unknown:
            return _error(
                -1104,
                f"Not all sent parameters were read; read '{len(query) - len(unknown)}' "
                f"parameter(s) but was sent '{len(query)}'.",
            )
        for name in ("symbol", "interval"):
            if not query.get(name):
                return _error(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        numbers: dict[str, int] = {}
        for name in ("startTime", "endTime", "limit"):
            value = query.get(name)
            if value is None:
                continue
            if _NUMBER.fullmatch(value) is None:
                return _error(
                    -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
                )
            numbers[name] = int(value)
        if query["interval"] not in INTERVAL_MS:
            return _error(-1120, "Invalid interval.")
        if query["symbol"] not in self.tape.symbols:
            return _error(-1121, "Invalid symbol.")
        key = StreamKey(query["symbol"], query["interval"])
        if not self.tape.supports(key):
            return _error(-1120, "Invalid interval.")  # finer than the data: cannot be served
        limit = numbers.get("limit", 500)
        if not 1 <= limit <= 1000:
            return _error(-1130, "Data sent for parameter 'limit' is not valid.")
        start, end = numbers.get("startTime"), numbers.get("endTime")
        if start is not None and end is not None and start > end:
            return _error(-1023, "Start time is greater than end time.")
        return _json(self.tape.rows(key, start=start, end=end, limit=limit))

    async def _time(self, request: web.Request) -> web.Response:
        if (failure := self._rest_prelude(request)) is not None:
            return failure
        return _json({"serverTime": self.tape.now_ms})

    async def _ping(self, request: web.Request) -> web.Response:
        if (failure := self._rest_prelude(request)) is not None:
            return failure
        return _json({})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        if (failure := self._rest_prelude(request)) is not None:
            return failure
        wanted: list[str] = sorted(self.tape.symbols)
        if "symbol" in request.query:
            wanted = [request.query["symbol"]]
        elif "symbols" in request.query:
            try:
                parsed = orjson.loads(request.query["symbols"])
            except orjson.JSONDecodeError:
                return _error(-1100, "Illegal characters found in parameter 'symbols'.")
            if not isinstance(parsed, list) or not all(isinstance(s, str) for s in parsed):
                return _error(-1100, "Illegal characters found in parameter 'symbols'.")
            wanted = parsed
        if any(symbol not in self.tape.symbols for symbol in wanted):
            return _error(-1121, "Invalid symbol.")
        return _json(
            {
                "timezone": "UTC",
                "serverTime": self.tape.now_ms,
                "rateLimits": [],
                "exchangeFilters": [],
                "symbols": [self._symbol_info(symbol) for symbol in wanted],
            }
        )

    def _symbol_info(self, symbol: str) -> dict[str, object]:
        base, quote = _split_symbol(symbol)
        places = max(
            (
                -exp
                for c in self._series[symbol].candles[:1000]
                for p in (c.open, c.high, c.low, c.close)
                if isinstance(exp := p.as_tuple().exponent, int)
            ),
            default=2,
        )
        tick = format_decimal(_quantum(max(places, 0)))
        return {
            "symbol": symbol,
            "status": "TRADING",
            "baseAsset": base,
            "baseAssetPrecision": 8,
            "quoteAsset": quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "orderTypes": _ORDER_TYPES,
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000", "tickSize": tick},
                {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
                {
                    "filterType": "NOTIONAL",
                    "minNotional": "5.00000000",
                    "applyMinToMarket": True,
                    "maxNotional": "9000000.00000000",
                    "applyMaxToMarket": False,
                    "avgPriceMins": 5,
                },
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }


def _text(doc: object) -> str:
    """JSON for a text frame (Binance sends JSON in text frames; orjson produces bytes)."""
    return orjson.dumps(doc).decode()


def _json(body: object, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(code: int, msg: str, *, status: int = 400) -> web.Response:
    return _json({"code": code, "msg": msg}, status=status)


def _split_symbol(symbol: str) -> tuple[str, str]:
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol[: len(symbol) // 2], symbol[len(symbol) // 2 :]


def _quantum(places: int) -> Decimal:
    return Decimal(1).scaleb(-places)
