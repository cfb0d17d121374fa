"""``MarketFeed``: Binance closed klines for a changing set of streams, over one WebSocket.

The asyncio shell around the sans-I/O ``CandleTracker``. While ``run()`` runs:

- the connection loop holds one connection to ``<ws_url>/stream?streams=...`` whenever at least
  one stream is wanted; it reconnects with backoff and jitter (one log line per retry), at once
  after a ``serverShutdown`` notice, and rotates the connection before Binance's 24 h cut-off.
  Per connection it runs a reader (frames into the inbox, stamped on arrival), a subscriber
  (SUBSCRIBE / UNSUBSCRIBE towards the wanted set, throttled) and a watchdog (rotation, silence);
- the processor is the only task that touches the tracker or calls the sink: it takes inbox items
  (frames, REST answers, stream-set changes, connection markers) in arrival order, so the sink
  sees each stream's candles strictly in order;
- one fetch task per REST request (warm-up, backfill) puts its answer into the inbox.

Errors: ``run()`` raises only what the sink raises (or a bug), unwrapped; every market-data
problem is logged, counted in ``stats`` and retried or skipped (tree in ``tradebotd.market.errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import aiohttp
import structlog
import websockets.asyncio.client
import websockets.uri
from asyncio_throttle.throttler import Throttler
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidURI, WebSocketException

from tradebotd.market.backoff import Backoff
from tradebotd.market.errors import MalformedMessage, RestRejected, RestUnavailable, describe
from tradebotd.market.rest import KlinesClient, ServerClock
from tradebotd.market.tracker import (
    CandleTracker,
    Closed,
    Dropped,
    Event,
    FetchHistory,
    FetchRange,
    GapSkipped,
    History,
    Malformed,
    Update,
)
from tradebotd.market.wire import (
    ControlError,
    ControlMethod,
    ControlReply,
    ServerShutdown,
    encode_control,
)
from tradebotd.model import Candle, StreamKey

__all__ = ["FeedSink", "FeedStats", "MarketFeed"]

log = structlog.get_logger(__name__)

# Streams named in the connection URL; the rest are subscribed with control frames. Keeps the
# request line short (servers commonly cap it near 8 KiB) even near Binance's 1024-stream limit.
URL_STREAMS_MAX: Final = 200
# Streams per SUBSCRIBE / UNSUBSCRIBE frame.
CONTROL_PARAMS_MAX: Final = 200


class FeedSink(Protocol):
    """Where the feed delivers candles. Called from one task, awaited, in order."""

    async def on_history(self, key: StreamKey, candles: Sequence[Candle]) -> None:
        """Warm-up for a newly added stream: closed candles, oldest first (possibly fewer than
        asked, or none, for a young market). Called once each time a stream is added, before any
        ``on_closed`` for it."""

    async def on_closed(self, candle: Candle, received_ns: int) -> None:
        """A closed candle, exactly once per (stream, open time), in increasing open time per
        stream. ``received_ns`` is ``time.monotonic_ns()`` when its frame (or REST page) arrived."""

    def on_update(self, candle: Candle) -> None:
        """A non-final kline (``closed=False``), for take-profit / stop-loss watching. Keep it cheap.

        Updates are not held back during warm-up or backfill, so one may come before its stream's
        ``on_history``, and they carry no ordering promise across reconnects."""


@dataclass(slots=True)
class FeedStats:
    """Counters since the feed was created (never reset)."""

    messages: int = 0  # WebSocket frames received
    malformed: int = 0  # frames that did not decode: bad JSON, missing fields, unknown events
    control_sent: int = 0  # SUBSCRIBE / UNSUBSCRIBE frames sent
    control_errors: int = 0  # {"code", "msg"} answers to them
    connects: int = 0  # successful connections
    reconnects: int = 0  # successful connections after the first
    connect_failures: int = 0  # connection attempts that failed
    closed: int = 0  # closed candles delivered, from the stream or REST
    backfilled: int = 0  # ... of which came from REST backfill
    history_candles: int = 0  # warm-up candles delivered
    duplicates_dropped: int = 0  # second copies of a closed candle
    stale_dropped: int = 0  # klines older than the last delivered candle
    untracked_dropped: int = 0  # klines for streams no longer wanted (unsubscribe in flight)
    future_dropped: int = 0  # final klines the server clock had not reached (corrupt)
    gaps_skipped: int = 0  # holes REST confirmed or could not fill
    rest_failures: int = 0  # REST requests that failed (each is retried or logged)


Reason = Literal["dropped", "silent", "shutdown", "rotate", "idle", "rejected"]


@dataclass(frozen=True, slots=True)
class _Outcome:
    reason: Reason
    detail: str


class _Connection:
    """One WebSocket connection and what we asked of it."""

    def __init__(self, ws: websockets.asyncio.client.ClientConnection, url_streams: Collection[str]) -> None:
        self.ws = ws
        self.subscribed: set[str] = set(url_streams)  # named in the URL or SUBSCRIBE sent
        self.confirmed: set[str] = set(url_streams)  # ... and acknowledged
        self.requests: dict[int, tuple[ControlMethod, tuple[str, ...]]] = {}
        self.started = time.monotonic()
        # Since when the reader has waited on the socket; None while it hands a frame over (it
        # may wait for room in the inbox then: a slow sink is not a silent server).
        self.idle_since: float | None = self.started
        self.outcome: _Outcome | None = None
        self.done = asyncio.Event()

    def end(self, outcome: _Outcome) -> None:
        """Ask the connection loop to close this connection; the first reason given wins."""
        if self.outcome is None:
            self.outcome = outcome
            self.done.set()


@dataclass(slots=True)
class _Frame:
    conn: _Connection
    data: str | bytes
    received_ns: int


@dataclass(slots=True)
class _Connected:
    conn: _Connection
    url_keys: tuple[StreamKey, ...]


@dataclass(slots=True)
class _StreamsChanged:
    added: frozenset[StreamKey]
    removed: frozenset[StreamKey]


@dataclass(slots=True)
class _HistoryAnswer:
    request: int
    candles: list[Candle]
    server_now_ms: int


@dataclass(slots=True)
class _RangeAnswer:
    request: int
    candles: list[tuple[Candle, int]]
    server_now_ms: int


@dataclass(slots=True)
class _Stop:
    pass


_Item = _Frame | _Connected | _StreamsChanged | _HistoryAnswer | _RangeAnswer | _Stop


class MarketFeed:
    """Closed Binance klines for the streams passed to ``set_streams``, delivered to ``sink``.

    ``run()`` may be called once; ``stop()`` ends it. ``history`` closed candles are loaded per
    new stream before its live candles (Binance config ``market.history``).
    """

    def __init__(
        self,
        *,
        ws_url: str,
        rest_url: str,
        sink: FeedSink,
        history: int = 500,
        session: aiohttp.ClientSession | None = None,
        rotate_after_s: float = 23.5 * 3600,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        backoff_factor: float = 2.0,
        backoff_reset_after_s: float = 60.0,
        silence_timeout_s: float | None = 60.0,
        ping_interval_s: float | None = 20.0,
        ping_timeout_s: float | None = 20.0,
        open_timeout_s: float = 10.0,
        close_timeout_s: float = 5.0,
        control_interval_s: float = 0.4,
        rest_timeout_s: float = 10.0,
        rest_concurrency: int = 4,
        max_gap_retries: int = 3,
        max_pending_frames: int = 1024,
        rng: random.Random | None = None,
    ) -> None:
        """Most parameters have production defaults; tests shorten the delays.

        - ``rotate_after_s``: reconnect (and backfill) before Binance's 24 h disconnect.
        - ``backoff_*``: reconnect delays; the count of failures resets once a connection has
          stayed up ``backoff_reset_after_s``, so a server that accepts and drops at once
          cannot pull us into a reconnect storm (Binance allows 300 connections per 5 min per IP).
        - ``silence_timeout_s``: reconnect when no frame at all arrived for this long (Binance
          pushes every kline stream every 2 s; None disables, e.g. for a manually driven server).
        - ``control_interval_s``: at most one control frame per interval. Binance disconnects
          above 5 incoming messages per second, counting our pings and pongs too; 0.4 s means at
          most 3 frames in any second, which leaves room for those and for network jitter that
          bunches frames together. Frames carry up to 200 streams each, and changes made while a
          frame waits are merged into it.
        - ``max_pending_frames``: frames received but not processed yet; when full, reading stops
          and TCP pushes back (a slow sink must not grow memory without bound).
        """
        try:
            websockets.uri.parse_uri(ws_url)
        except InvalidURI as exc:
            raise ValueError(f"market ws_url is not a WebSocket URL: {exc}") from None
        if not rest_url.startswith(("http://", "https://")):
            raise ValueError(f"market rest_url is not an HTTP URL: {rest_url!r}")
        if rest_concurrency < 1 or max_pending_frames < 1 or control_interval_s <= 0 or rotate_after_s <= 0:
            raise ValueError("rest_concurrency, max_pending_frames, control_interval_s, rotate_after_s must be > 0")
        # The base endpoint, e.g. wss://stream.binance.com:9443. Binance's docs also quote raw-stream
        # endpoints ending in /ws (the testnet's wss://stream.testnet.binance.vision/ws); accept both.
        self._ws_url = ws_url.rstrip("/").removesuffix("/ws").removesuffix("/stream")
        self._rest_url = rest_url
        self._sink = sink
        self._session = session
        self._rotate_after_s = rotate_after_s
        self._backoff = Backoff(backoff_initial_s, backoff_max_s, backoff_factor)
        self._backoff_reset_after_s = backoff_reset_after_s
        self._silence_timeout_s = silence_timeout_s
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._open_timeout_s = open_timeout_s
        self._close_timeout_s = close_timeout_s
        self._control_interval_s = control_interval_s
        self._rest_timeout_s = rest_timeout_s
        self._rng = rng or random.Random()
        self.stats = FeedStats()
        self._attempt = asyncio.Event()  # replaced after every connection attempt (wait_until)

        self._history = history
        self._max_gap_retries = max_gap_retries
        self._max_pending_frames = max_pending_frames
        self._tracker = CandleTracker(history=history, max_gap_retries=max_gap_retries)
        self._desired: dict[str, StreamKey] = {}  # stream name -> key
        self._inbox: asyncio.Queue[_Item] = asyncio.Queue()
        self._frame_slots = asyncio.Semaphore(max_pending_frames)
        self._rest_slots = asyncio.Semaphore(rest_concurrency)
        self._wanted = asyncio.Event()  # set while any stream is wanted
        self._subscriptions_changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._conn: _Connection | None = None  # the connection loop's current connection
        self._active: _Connection | None = None  # the connection the processor has seen start
        self._rest: KlinesClient | None = None
        self._task_group: asyncio.TaskGroup | None = None
        self._processor: asyncio.Task[None] | None = None
        self._fetches: set[asyncio.Task[None]] = set()
        self._last_control_id = 0
        self._running = False

    # -- public API ------------------------------------------------------------------------------

    async def set_streams(self, keys: Collection[StreamKey]) -> None:
        """Make ``keys`` the wanted set. New streams get warm-up history, then live candles;
        removed ones stop at once (UNSUBSCRIBE follows). Cheap and safe to call often: changes
        are coalesced into as few control frames as the rate limit needs."""
        wanted = {key.stream_name: key for key in keys}
        added = frozenset(key for name, key in wanted.items() if name not in self._desired)
        removed = frozenset(key for name, key in self._desired.items() if name not in wanted)
        if not added and not removed:
            return
        # Queue the change before the subscriber can act on it, so that the processor knows a
        # stream before it can see the server acknowledge its subscription.
        self._inbox.put_nowait(_StreamsChanged(added, removed))
        self._desired = wanted
        self._subscriptions_changed.set()
        if wanted:
            self._wanted.set()
        else:
            self._wanted.clear()
            if self._conn is not None:
                self._conn.end(_Outcome("idle", "no streams wanted"))

    async def run(self) -> None:
        """Connect, read, reconnect, until ``stop()``; returns at once after ``stop()``.

        Raises what the sink raises. It may then be called again (a supervisor restarting it):
        each run starts afresh, so every wanted stream gets its warm-up ``on_history`` again.
        """
        if self._running:
            raise RuntimeError("MarketFeed.run() is already running")
        self._running = True
        self._finished.clear()
        self._reset()
        try:
            async with contextlib.AsyncExitStack() as stack:
                session = self._session
                if session is None:
                    session = await stack.enter_async_context(aiohttp.ClientSession())
                self._rest = KlinesClient(session, self._rest_url, timeout_s=self._rest_timeout_s)
                try:
                    async with asyncio.TaskGroup() as group:
                        self._task_group = group
                        self._processor = group.create_task(self._process(), name="market-feed-processor")
                        connector = group.create_task(self._connection_loop(), name="market-feed-connection")
                        await self._stopping.wait()
                        connector.cancel()
                        for fetch in list(self._fetches):
                            fetch.cancel()
                        # The processor finishes the item in hand (never cancelled inside the
                        # sink), then stops before anything still queued.
                        while not self._inbox.empty():
                            self._inbox.get_nowait()
                        self._inbox.put_nowait(_Stop())
                except BaseExceptionGroup as group_error:
                    if len(group_error.exceptions) == 1:
                        raise group_error.exceptions[0] from None
                    raise
        finally:
            self._task_group = None
            self._running = False
            self._finished.set()

    def _reset(self) -> None:
        """Fresh state for a run: nothing delivered yet, every wanted stream to be warmed up."""
        self._tracker = CandleTracker(history=self._history, max_gap_retries=self._max_gap_retries)
        self._inbox = asyncio.Queue()
        self._frame_slots = asyncio.Semaphore(self._max_pending_frames)
        self._conn = self._active = None
        if self._desired:
            self._inbox.put_nowait(_StreamsChanged(frozenset(self._desired.values()), frozenset()))

    async def stop(self) -> None:
        """End ``run()`` and wait for it (unless called from inside a sink callback)."""
        self._stopping.set()
        if self._running and asyncio.current_task() is not self._processor:
            await self._finished.wait()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checked after every connection attempt (for tests
        and tools; bound it with ``asyncio.timeout``)."""
        while not predicate():
            await self._attempt.wait()

    def _attempted(self) -> None:
        self._attempt.set()
        self._attempt = asyncio.Event()

    def server_now_ms(self) -> int:
        """The server's clock: local monotonic time plus the offset measured at the last REST
        ``/api/v3/time`` call (the local wall clock until the first one)."""
        clock = self._server_clock()
        if clock is None:
            return time.time_ns() // 1_000_000
        return clock.now_ms(time.monotonic_ns())

    @property
    def streams(self) -> frozenset[StreamKey]:
        """The wanted streams (as last passed to ``set_streams``)."""
        return frozenset(self._desired.values())

    def _server_clock(self) -> ServerClock | None:
        return self._rest.clock if self._rest is not None else None

    # -- processor: the only caller of the tracker and the sink ----------------------------------

    async def _process(self) -> None:
        while True:
            item = await self._inbox.get()
            match item:
                case _Stop():
                    return
                case _Frame(conn=conn, data=data, received_ns=received_ns):
                    self._frame_slots.release()
                    self.stats.messages += 1
                    await self._carry_out(self._tracker.receive_frame(data, received_ns), conn)
                case _Connected(conn=conn, url_keys=url_keys):
                    self._active = conn
                    self._tracker.connection_made()
                    await self._carry_out(self._tracker.subscribed(url_keys), conn)
                case _StreamsChanged(added=added, removed=removed):
                    self._tracker.remove(removed)
                    self._tracker.add(added)
                    # A stream removed and re-added before its UNSUBSCRIBE went out is still
                    # subscribed on this connection: no acknowledgement will come for it.
                    active = self._active
                    if active is not None:
                        ready = [key for key in added if key.stream_name in active.confirmed]
                        await self._carry_out(self._tracker.subscribed(ready), active)
                case _HistoryAnswer(request=request, candles=candles, server_now_ms=now):
                    await self._carry_out(self._tracker.receive_history(request, candles, now), None)
                case _RangeAnswer(request=request, candles=pairs, server_now_ms=now):
                    await self._carry_out(self._tracker.receive_range(request, pairs, now), None)

    async def _carry_out(self, events: list[Event], conn: _Connection | None) -> None:
        queue = deque(events)
        while queue:
            match queue.popleft():
                case Closed(candle=candle, received_ns=received_ns, backfilled=backfilled):
                    self.stats.closed += 1
                    if backfilled:
                        self.stats.backfilled += 1
                    await self._sink.on_closed(candle, received_ns)
                case Update(candle=candle):
                    self._sink.on_update(candle)
                case History(key=key, candles=candles):
                    self.stats.history_candles += len(candles)
                    log.info("market history loaded", stream=str(key), candles=len(candles))
                    await self._sink.on_history(key, candles)
                case FetchHistory() | FetchRange() as request:
                    self._start_fetch(request)
                case Dropped(key=key, open_time=open_time, reason=reason):
                    self._count_drop(reason)
                    log.debug("market kline dropped", stream=str(key), open_time=open_time, reason=reason)
                case GapSkipped(key=key, start=start, end=end, confirmed=confirmed):
                    self.stats.gaps_skipped += 1
                    log.warning(
                        "market candles missing; skipped",
                        stream=str(key),
                        first_open_time=start,
                        last_open_time=end,
                        confirmed_by_rest=confirmed,
                    )
                case Malformed(error=error, frame=frame):
                    self.stats.malformed += 1
                    log.warning("market frame malformed; ignored", error=error, frame=frame)
                case ControlReply() as reply:
                    if conn is not None:
                        queue.extend(self._on_control_reply(reply, conn))
                case ControlError(id=request_id, code=code, msg=msg):
                    self.stats.control_errors += 1
                    if conn is not None:
                        self._on_control_error(request_id, code, msg, conn)
                case ServerShutdown():
                    if conn is not None:
                        conn.end(_Outcome("shutdown", "server shutdown notice"))

    def _on_control_reply(self, reply: ControlReply, conn: _Connection) -> list[Event]:
        if conn is not self._active or type(reply.id) is not int:
            return []
        request = conn.requests.pop(reply.id, None)
        if request is None or request[0] != "SUBSCRIBE":
            return []
        confirmed = [name for name in request[1] if name in conn.subscribed]
        conn.confirmed.update(confirmed)
        return self._tracker.subscribed([self._desired[name] for name in confirmed if name in self._desired])

    def _on_control_error(self, request_id: object, code: int, msg: str, conn: _Connection) -> None:
        request = conn.requests.get(request_id) if type(request_id) is int else None
        method, names = request if request is not None else (None, ())
        log.warning(
            "market feed control request rejected; reconnecting",
            code=code,
            msg=msg,
            method=method,
            streams=list(names[:5]),
        )
        # Reconnecting names every wanted stream in the URL again, which needs no control frame.
        conn.end(_Outcome("rejected", f"control request rejected: {code} {msg}"))

    def _count_drop(self, reason: str) -> None:
        stats = self.stats
        if reason == "duplicate":
            stats.duplicates_dropped += 1
        elif reason == "stale":
            stats.stale_dropped += 1
        elif reason == "untracked":
            stats.untracked_dropped += 1
        else:
            stats.future_dropped += 1

    # -- REST fetches ----------------------------------------------------------------------------

    def _start_fetch(self, request: FetchHistory | FetchRange) -> None:
        assert self._task_group is not None
        task = self._task_group.create_task(self._fetch(request), name=f"market-fetch-{request.key}")
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch(self, request: FetchHistory | FetchRange) -> None:
        if isinstance(request, FetchRange) and request.attempt:
            # An earlier answer left a gap: REST may lag the stream by a moment.
            await asyncio.sleep(self._backoff.delay(request.attempt, self._rng))
        failures = 0
        while self._tracker.is_pending(request.request):
            try:
                async with self._rest_slots:
                    answer = await self._fetch_once(request)
            except RestRejected as exc:
                self.stats.rest_failures += 1
                log.error("market data request rejected", stream=str(request.key), error=describe(exc))
                return
            except (RestUnavailable, MalformedMessage) as exc:
                self.stats.rest_failures += 1
                failures += 1
                delay = self._backoff.delay(failures, self._rng)
                if isinstance(exc, RestUnavailable) and exc.retry_after_s is not None:
                    delay = max(delay, exc.retry_after_s)
                log.warning(
                    "market data request failed; retrying",
                    stream=str(request.key),
                    error=describe(exc),
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
            else:
                self._inbox.put_nowait(answer)
                return

    async def _fetch_once(self, request: FetchHistory | FetchRange) -> _HistoryAnswer | _RangeAnswer:
        assert self._rest is not None
        if isinstance(request, FetchHistory):
            candles, now = await self._rest.recent_closed(request.key, request.count)
            return _HistoryAnswer(request.request, candles, now)
        pairs, now = await self._rest.closed_since(request.key, request.start)
        return _RangeAnswer(request.request, pairs, now)

    # -- connection ------------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        failures = 0
        while True:
            await self._wanted.wait()
            url_keys = sorted(self._desired.values())[:URL_STREAMS_MAX]
            if not url_keys:
                continue
            url = f"{self._ws_url}/stream?streams=" + "/".join(key.stream_name for key in url_keys)
            try:
                ws = await websockets.asyncio.client.connect(
                    url,
                    open_timeout=self._open_timeout_s,
                    ping_interval=self._ping_interval_s,
                    ping_timeout=self._ping_timeout_s,
                    close_timeout=self._close_timeout_s,
                )
            except (OSError, TimeoutError, WebSocketException) as exc:
                failures += 1
                self.stats.connect_failures += 1
                self._attempted()
                delay = self._backoff.delay(failures, self._rng)
                log.warning(
                    "market feed unreachable; retrying",
                    error=describe(exc),
                    retry_in_s=round(delay, 1),
                    attempt=failures,
                    url=self._ws_url,
                )
                await asyncio.sleep(delay)
                continue

            self.stats.connects += 1
            self._attempted()
            if self.stats.connects > 1:
                self.stats.reconnects += 1
            log.info("market feed connected", streams=len(self._desired), url=self._ws_url)
            conn = _Connection(ws, [key.stream_name for key in url_keys])
            outcome = await self._serve(conn, tuple(url_keys))

            if time.monotonic() - conn.started >= self._backoff_reset_after_s:
                failures = 0
            if outcome.reason in ("rotate", "idle"):
                log.info("market feed connection closed", reason=outcome.reason, detail=outcome.detail)
                continue
            failures += 1
            # A shutdown notice is answered at once, unless it keeps coming on fresh connections.
            delay = 0.0 if outcome.reason == "shutdown" and failures == 1 else self._backoff.delay(failures, self._rng)
            log.warning(
                "market feed disconnected; reconnecting",
                reason=outcome.reason,
                detail=outcome.detail,
                retry_in_s=round(delay, 1),
            )
            await asyncio.sleep(delay)

    async def _serve(self, conn: _Connection, url_keys: tuple[StreamKey, ...]) -> _Outcome:
        """Run one connection until something ends it; always closes it."""
        self._conn = conn
        self._inbox.put_nowait(_Connected(conn, url_keys))
        if not self._desired:  # emptied while we were connecting
            conn.end(_Outcome("idle", "no streams wanted"))
        helpers = [
            asyncio.create_task(self._read(conn)),
            asyncio.create_task(self._subscribe(conn)),
            asyncio.create_task(self._watch(conn)),
        ]
        ended = asyncio.create_task(conn.done.wait())
        try:
            await asyncio.wait([ended, *helpers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ended, *helpers):
                task.cancel()
            results = await asyncio.gather(ended, *helpers, return_exceptions=True)
            self._conn = None
            if conn.outcome is not None and conn.outcome.reason == "silent":
                conn.ws.transport.abort()  # an unresponsive peer would hold a closing handshake for close_timeout_s
            await conn.ws.close()
        for result in results:
            if isinstance(result, Exception):
                raise result  # a bug in a helper; let the task group report it
        return conn.outcome or _Outcome("dropped", "connection ended")

    async def _read(self, conn: _Connection) -> None:
        try:
            # A clean close (e.g. Binance's 24 h cut-off) ends this loop without an exception,
            # so leaving the loop is a disconnect like any other.
            async for data in conn.ws:
                received_ns = time.monotonic_ns()
                conn.idle_since = None
                await self._frame_slots.acquire()
                self._inbox.put_nowait(_Frame(conn, data, received_ns))
                conn.idle_since = time.monotonic()
        except ConnectionClosedError as exc:
            conn.end(_Outcome("dropped", describe(exc)))
            return
        code, reason = conn.ws.close_code, conn.ws.close_reason
        conn.end(_Outcome("dropped", f"closed by the server ({code} {reason or 'no reason'})"))

    async def _subscribe(self, conn: _Connection) -> None:
        """Bring the connection's subscriptions to the wanted set, one throttled frame at a time."""
        throttle = Throttler(rate_limit=1, period=self._control_interval_s)
        try:
            while True:
                if self._control_change(conn) is None:
                    self._subscriptions_changed.clear()
                    await self._subscriptions_changed.wait()
                    continue
                await throttle.acquire()  # type: ignore[no-untyped-call]  # asyncio-throttle is unannotated
                change = self._control_change(conn)  # recomputed: calls made while we waited coalesce
                if change is None:
                    continue
                method, names = change
                self._last_control_id += 1
                conn.requests[self._last_control_id] = (method, names)
                if method == "SUBSCRIBE":
                    conn.subscribed.update(names)
                else:
                    conn.subscribed.difference_update(names)
                    conn.confirmed.difference_update(names)
                await conn.ws.send(encode_control(method, names, self._last_control_id))
                self.stats.control_sent += 1
                log.debug("market feed control sent", method=method, streams=len(names))
        except ConnectionClosed as exc:
            conn.end(_Outcome("dropped", describe(exc)))

    def _control_change(self, conn: _Connection) -> tuple[ControlMethod, tuple[str, ...]] | None:
        extra = sorted(conn.subscribed - self._desired.keys())
        if extra:  # unsubscribe first: it frees room under the 1024-stream limit
            return "UNSUBSCRIBE", tuple(extra[:CONTROL_PARAMS_MAX])
        missing = sorted(self._desired.keys() - conn.subscribed)
        if missing:
            return "SUBSCRIBE", tuple(missing[:CONTROL_PARAMS_MAX])
        return None

    async def _watch(self, conn: _Connection) -> None:
        rotate_at = conn.started + self._rotate_after_s
        while True:
            now = time.monotonic()
            if now >= rotate_at:
                conn.end(_Outcome("rotate", "connection age limit"))
                return
            wake = rotate_at
            timeout = self._silence_timeout_s
            if timeout is not None:
                idle_since = conn.idle_since
                if idle_since is not None and now - idle_since >= timeout:
                    conn.end(_Outcome("silent", f"no frame for {timeout:g} s"))
                    return
                wake = min(wake, (idle_since if idle_since is not None else now) + timeout)
            await asyncio.sleep(wake - now)
