"""One of the market feed's WebSocket connections, and the loop that keeps it up: ``Link``.

A link carries the streams the feed's ``StreamPlan`` placed on it. While it has any, its loop
holds one connection to ``<ws_url>/stream?streams=...``: each attempt spends from the feed's
connection budget (Binance: 300 new connections per 5 minutes per IP), failures back off with
jitter (one log line per retry), a ``serverShutdown`` notice is answered by reconnecting at once,
and the connection is rotated before Binance's 24 h cut-off. Per connection it runs

- a reader: frames into the feed's inbox, stamped with ``time.monotonic_ns()`` on arrival;
- a subscriber: SUBSCRIBE / UNSUBSCRIBE towards the link's streams, at most one frame per
  ``control_interval_s`` (Binance counts its 5 incoming messages per second per connection);
- a watchdog: rotation and silence.

Links never touch the tracker or the sink. They tell the feed's processor what happened by
putting ``Connected`` and ``Frame`` items into its inbox, in the order it happened on this link;
the processor owns everything else (``Link.active``, the tracker, exactly-once).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Final, Literal

import structlog
import websockets.asyncio.client
from asyncio_throttle.throttler import Throttler
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, WebSocketException

from tradebotd.market.backoff import Backoff
from tradebotd.market.errors import describe
from tradebotd.market.pacing import Pacer
from tradebotd.market.stats import FeedStats
from tradebotd.market.wire import ControlMethod, encode_control
from tradebotd.model import StreamKey

__all__ = ["CONTROL_PARAMS_MAX", "URL_STREAMS_MAX", "Connected", "Connection", "Frame", "Link", "LinkSettings"]

log = structlog.get_logger(__name__)

# Streams named in the connection URL; the rest are subscribed with control frames. Keeps the
# request line short (servers commonly cap it near 8 KiB) even near Binance's 1024-stream limit.
URL_STREAMS_MAX: Final = 200
# Streams per SUBSCRIBE / UNSUBSCRIBE frame.
CONTROL_PARAMS_MAX: Final = 200
# Each connection rotates after rotate_after_s shortened by up to this fraction, at random:
# connections opened together (at start-up) then rotate, and backfill, at different moments.
ROTATE_SPREAD: Final = 0.02

Reason = Literal["dropped", "silent", "shutdown", "rotate", "idle", "rejected"]


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Connection settings shared by a feed's links (see ``MarketFeed`` for their meaning)."""

    ws_url: str  # the base endpoint, without /ws or /stream
    rotate_after_s: float
    backoff: Backoff
    backoff_reset_after_s: float
    silence_timeout_s: float | None
    ping_interval_s: float | None
    ping_timeout_s: float | None
    open_timeout_s: float
    close_timeout_s: float
    control_interval_s: float


@dataclass(frozen=True, slots=True)
class Outcome:
    reason: Reason
    detail: str


class Connection:
    """One WebSocket connection of a link and what we asked of it."""

    def __init__(
        self, link: Link, ws: websockets.asyncio.client.ClientConnection, url_streams: Collection[str]
    ) -> None:
        self.link = link
        self.ws = ws
        self.subscribed: set[str] = set(url_streams)  # named in the URL or SUBSCRIBE sent
        self.confirmed: set[str] = set(url_streams)  # ... and acknowledged
        self.requests: dict[int, tuple[ControlMethod, tuple[str, ...]]] = {}
        self.started = time.monotonic()
        # Since when the reader has waited on the socket; None while it hands a frame over (it
        # may wait for room in the inbox then: a slow sink is not a silent server).
        self.idle_since: float | None = self.started
        self.outcome: Outcome | None = None
        self.done = asyncio.Event()

    def end(self, outcome: Outcome) -> None:
        """Ask the link's loop to close this connection; the first reason given wins."""
        if self.outcome is None:
            self.outcome = outcome
            self.done.set()


@dataclass(slots=True)
class Frame:
    conn: Connection
    data: str | bytes
    received_ns: int


@dataclass(slots=True)
class Connected:
    """``conn`` is up; the streams named in its URL count as subscribed."""

    conn: Connection
    url_keys: tuple[StreamKey, ...]


Put = Callable[[Frame | Connected], None]


class Link:
    """A connection slot: the streams placed on it, and ``run()``, which keeps a connection open
    for them whenever there are any. ``run()`` is restarted with the feed; the streams persist."""

    def __init__(
        self,
        index: int,
        settings: LinkSettings,
        *,
        stats: FeedStats,
        connect_pacer: Pacer,
        rng: random.Random,
        on_attempt: Callable[[], None],
    ) -> None:
        self.index = index
        self.wanted: dict[str, StreamKey] = {}  # stream name -> key: what this link must carry
        self.conn: Connection | None = None  # this link's current connection
        self.active: Connection | None = None  # the connection the feed's processor has seen start
        self.connects = 0  # successful connections of this link, across runs
        self._settings = settings
        self._stats = stats
        self._pacer = connect_pacer
        self._rng = rng
        self._on_attempt = on_attempt
        self._has_streams = asyncio.Event()
        self._streams_changed = asyncio.Event()
        self._last_control_id = 0
        self._put: Put | None = None
        self._frame_slots: asyncio.Semaphore | None = None

    def set_streams(self, keys: Collection[StreamKey]) -> None:
        """Make ``keys`` what this link carries; the subscriber catches up, and a link left with
        no streams closes its connection."""
        wanted = {key.stream_name: key for key in keys}
        if wanted.keys() == self.wanted.keys():
            return
        self.wanted = wanted
        self._streams_changed.set()
        if wanted:
            self._has_streams.set()
        else:
            self._has_streams.clear()
            if self.conn is not None:
                self.conn.end(Outcome("idle", "no streams wanted"))

    # -- the connection loop ---------------------------------------------------------------------

    async def run(self, put: Put, frame_slots: asyncio.Semaphore) -> None:
        """Connect, serve, reconnect, until cancelled. ``put`` hands items to the feed's
        processor; ``frame_slots`` bounds the frames received and not processed yet."""
        self._put, self._frame_slots = put, frame_slots
        settings = self._settings
        failures = 0
        while True:
            await self._has_streams.wait()
            if await self._pacer.acquire():
                self._stats.connect_waits += 1
            url_keys = sorted(self.wanted.values())[:URL_STREAMS_MAX]  # after the wait: it may have changed
            if not url_keys:
                continue
            url = f"{settings.ws_url}/stream?streams=" + "/".join(key.stream_name for key in url_keys)
            try:
                ws = await websockets.asyncio.client.connect(
                    url,
                    open_timeout=settings.open_timeout_s,
                    ping_interval=settings.ping_interval_s,
                    ping_timeout=settings.ping_timeout_s,
                    close_timeout=settings.close_timeout_s,
                )
            except (OSError, TimeoutError, WebSocketException) as exc:
                failures += 1
                self._stats.connect_failures += 1
                self._on_attempt()
                delay = settings.backoff.delay(failures, self._rng)
                log.warning(
                    "market feed unreachable; retrying",
                    error=describe(exc),
                    retry_in_s=round(delay, 1),
                    attempt=failures,
                    url=settings.ws_url,
                    connection=self.index,
                )
                await asyncio.sleep(delay)
                continue

            self.connects += 1
            self._stats.connects += 1
            if self.connects > 1:
                self._stats.reconnects += 1
            self._on_attempt()
            log.info("market feed connected", streams=len(self.wanted), url=settings.ws_url, connection=self.index)
            conn = Connection(self, ws, [key.stream_name for key in url_keys])
            outcome = await self._serve(conn, tuple(url_keys))

            if time.monotonic() - conn.started >= settings.backoff_reset_after_s:
                failures = 0
            if outcome.reason in ("rotate", "idle"):
                log.info(
                    "market feed connection closed", reason=outcome.reason, detail=outcome.detail, connection=self.index
                )
                continue
            failures += 1
            # A shutdown notice is answered at once, unless it keeps coming on fresh connections.
            at_once = outcome.reason == "shutdown" and failures == 1
            delay = 0.0 if at_once else settings.backoff.delay(failures, self._rng)
            log.warning(
                "market feed disconnected; reconnecting",
                reason=outcome.reason,
                detail=outcome.detail,
                retry_in_s=round(delay, 1),
                connection=self.index,
            )
            await asyncio.sleep(delay)

    async def _serve(self, conn: Connection, url_keys: tuple[StreamKey, ...]) -> Outcome:
        """Run one connection until something ends it; always closes it."""
        assert self._put is not None
        self.conn = conn
        self._put(Connected(conn, url_keys))
        if not self.wanted:  # emptied while we were connecting
            conn.end(Outcome("idle", "no streams wanted"))
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
            self.conn = None
            if conn.outcome is not None and conn.outcome.reason == "silent":
                conn.ws.transport.abort()  # an unresponsive peer would hold a closing handshake for close_timeout_s
            await conn.ws.close()
        for result in results:
            if isinstance(result, Exception):
                raise result  # a bug in a helper; let the task group report it
        return conn.outcome or Outcome("dropped", "connection ended")

    async def _read(self, conn: Connection) -> None:
        assert self._put is not None and self._frame_slots is not None
        put, slots = self._put, self._frame_slots
        try:
            # A clean close (e.g. Binance's 24 h cut-off) ends this loop without an exception,
            # so leaving the loop is a disconnect like any other.
            async for data in conn.ws:
                received_ns = time.monotonic_ns()
                conn.idle_since = None
                await slots.acquire()
                put(Frame(conn, data, received_ns))
                conn.idle_since = time.monotonic()
        except ConnectionClosedError as exc:
            conn.end(Outcome("dropped", describe(exc)))
            return
        code, reason = conn.ws.close_code, conn.ws.close_reason
        conn.end(Outcome("dropped", f"closed by the server ({code} {reason or 'no reason'})"))

    async def _subscribe(self, conn: Connection) -> None:
        """Bring the connection's subscriptions to the link's streams, one throttled frame at a time."""
        throttle = Throttler(rate_limit=1, period=self._settings.control_interval_s)
        try:
            while True:
                if self._control_change(conn) is None:
                    self._streams_changed.clear()
                    await self._streams_changed.wait()
                    continue
                await throttle.acquire()  # type: ignore[no-untyped-call]  # asyncio-throttle is unannotated
                change = self._control_change(conn)  # recomputed: changes made while we waited coalesce
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
                self._stats.control_sent += 1
                log.debug("market feed control sent", method=method, streams=len(names), connection=self.index)
        except ConnectionClosed as exc:
            conn.end(Outcome("dropped", describe(exc)))

    def _control_change(self, conn: Connection) -> tuple[ControlMethod, tuple[str, ...]] | None:
        extra = sorted(conn.subscribed - self.wanted.keys())
        if extra:  # unsubscribe first: it frees room under the 1024-stream limit
            return "UNSUBSCRIBE", tuple(extra[:CONTROL_PARAMS_MAX])
        missing = sorted(self.wanted.keys() - conn.subscribed)
        if missing:
            return "SUBSCRIBE", tuple(missing[:CONTROL_PARAMS_MAX])
        return None

    async def _watch(self, conn: Connection) -> None:
        rotate_after_s = self._settings.rotate_after_s * (1.0 - ROTATE_SPREAD * self._rng.random())
        rotate_at = conn.started + rotate_after_s
        timeout = self._settings.silence_timeout_s
        while True:
            now = time.monotonic()
            if now >= rotate_at:
                conn.end(Outcome("rotate", "connection age limit"))
                return
            wake = rotate_at
            if timeout is not None:
                idle_since = conn.idle_since
                if idle_since is not None and now - idle_since >= timeout:
                    conn.end(Outcome("silent", f"no frame for {timeout:g} s"))
                    return
                wake = min(wake, (idle_since if idle_since is not None else now) + timeout)
            await asyncio.sleep(wake - now)
