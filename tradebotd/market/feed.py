"""``MarketFeed``: Binance closed klines for a changing set of streams, over as many WebSocket
connections as the streams need.

The asyncio shell around the sans-I/O ``CandleTracker``, the single source of exactly-once per
stream. While ``run()`` runs:

- the streams are spread over connections by a ``StreamPlan``, at most
  ``streams_per_connection`` on each (Binance takes 1024); each connection slot is a ``Link``
  (``market.connection``) with its own reconnects, backoff, rotation and control-frame pacing,
  and every connection attempt spends from one connection budget (Binance: 300 per 5 minutes per
  IP). A stream added while its connection is up is subscribed with a control frame; one that
  does not fit goes to the next connection;
- the processor is the only task that touches the tracker or calls the sink: it takes inbox items
  (frames, REST answers, stream-set changes, connection markers) in arrival order, so the sink
  sees each stream's candles strictly in order. A new connection re-subscribes, and backfills,
  only the streams it carries: the others keep flowing;
- one fetch task per REST request (warm-up, backfill, ``market.fetch``), every request paced by
  one request-weight budget (Binance: 6000 per minute per IP, klines weigh 2).

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
from typing import Final, Protocol

import aiohttp
import structlog
import websockets.uri
from websockets.exceptions import InvalidURI

from tradebotd.market.backoff import Backoff
from tradebotd.market.connection import Connected, Connection, Frame, Link, LinkSettings, Outcome
from tradebotd.market.fetch import Fetcher, HistoryAnswer, RangeAnswer, Refused
from tradebotd.market.pacing import Clock, Pacer, SharedBudget
from tradebotd.market.plan import StreamPlan
from tradebotd.market.rest import KlinesClient, ServerClock
from tradebotd.market.stats import FeedStats
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
from tradebotd.market.wire import ControlError, ControlReply, ServerShutdown
from tradebotd.model import Candle, StreamKey
from tradebotd.ops.status import QueueStats, StreamProgress

__all__ = [
    "DEFAULT_CONNECTS_PER_5MIN",
    "DEFAULT_REST_WEIGHT_PER_MINUTE",
    "DEFAULT_STREAMS_PER_CONNECTION",
    "FeedSink",
    "FeedStats",
    "MarketFeed",
]

log = structlog.get_logger(__name__)

# 200 streams per connection: all of them fit in the connection URL (no control frame after a
# reconnect, so a connection is whole at once), a dropped connection backfills at most 200
# streams (400 request weight, 7% of Binance's per-minute budget), and at Binance's 2 s update
# cadence a connection carries at most ~100 frames per second. Binance's own cap is 1024.
DEFAULT_STREAMS_PER_CONNECTION: Final = 200
# Half of Binance's per-IP budgets: the rest is for whatever else shares the IP (the live
# broker's order traffic, a second daemon, a restart whose old connections are still counted).
DEFAULT_REST_WEIGHT_PER_MINUTE: Final = 3000
DEFAULT_CONNECTS_PER_5MIN: Final = 150


class FeedSink(Protocol):
    """Where the feed delivers candles. Called from one task, awaited, in order."""

    async def on_history(self, key: StreamKey, candles: Sequence[Candle]) -> None:
        """Warm-up for a newly added stream: closed candles, oldest first (possibly fewer than
        asked, or none, for a young market). Called once each time a stream is added, before any
        ``on_closed`` for it."""

    async def on_closed(self, candle: Candle, received_ns: int) -> None:
        """A closed candle, exactly once per (stream, open time), in increasing open time per
        stream. ``received_ns`` is ``time.monotonic_ns()`` when its frame (or REST page) arrived."""

    async def on_refused(self, key: StreamKey, reason: str) -> None:
        """The exchange refused the stream's market data (REST 4xx, e.g. ``Invalid symbol. (code
        -1121)``): the same request would fail again, so the stream gets no candles until it is
        removed and added again. ``reason`` is the exchange's answer."""

    def on_update(self, candle: Candle) -> None:
        """A non-final kline (``closed=False``), for take-profit / stop-loss watching. Keep it cheap.

        Updates are not held back during warm-up or backfill, so one may come before its stream's
        ``on_history``, and they carry no ordering promise across reconnects."""


@dataclass(slots=True)
class _StreamsChanged:
    added: frozenset[StreamKey]
    removed: frozenset[StreamKey]


@dataclass(slots=True)
class _Stop:
    pass


_Item = Frame | Connected | _StreamsChanged | HistoryAnswer | RangeAnswer | Refused | _Stop


class MarketFeed:
    """Closed Binance klines for the streams passed to ``set_streams``, delivered to ``sink``.

    ``run()`` may be called once at a time; ``stop()`` ends it. ``history`` closed candles are
    loaded per new stream before its live candles (config ``market.history``).
    """

    def __init__(
        self,
        *,
        ws_url: str,
        rest_url: str,
        sink: FeedSink,
        history: int = 500,
        session: aiohttp.ClientSession | None = None,
        streams_per_connection: int = DEFAULT_STREAMS_PER_CONNECTION,
        rest_weight_per_minute: int = DEFAULT_REST_WEIGHT_PER_MINUTE,
        connects_per_5min: int = DEFAULT_CONNECTS_PER_5MIN,
        rest_budget: SharedBudget | None = None,
        clock: Clock | None = None,
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

        - ``streams_per_connection``: streams carried by one connection (1..1024, Binance's
          limit); more streams open more connections.
        - ``rest_weight_per_minute`` / ``connects_per_5min``: the budgets every REST request and
          every connection attempt spend from, in sliding windows; ``clock`` is theirs (tests
          pass a manual one).
        - ``rest_budget``: the REST host's whole request budget, shared with the exchange port
          when it calls the same host (``tradebotd.exchange.throttle.RequestBudgets``): every REST
          request spends from it too and reports its answer to it, so 429s and 418s hold back
          both; ``rest_weight_per_minute`` then caps the feed's part of it.
        - ``rotate_after_s``: reconnect (and backfill) before Binance's 24 h disconnect; each
          connection rotates up to 2% earlier, at random, so connections opened together do not
          rotate together.
        - ``backoff_*``: reconnect delays, per connection; the count of failures resets once a
          connection has stayed up ``backoff_reset_after_s``, so a server that accepts and drops
          at once cannot pull us into a reconnect storm.
        - ``silence_timeout_s``: reconnect when no frame at all arrived for this long (Binance
          pushes every kline stream every 2 s; None disables, e.g. for a manually driven server).
        - ``control_interval_s``: at most one control frame per interval and connection. Binance
          disconnects above 5 incoming messages per second on a connection, counting our pings
          and pongs too; 0.4 s means at most 3 frames in any second, which leaves room for those
          and for network jitter that bunches frames together. Frames carry up to 200 streams
          each, and changes made while a frame waits are merged into it.
        - ``max_pending_frames``: frames received but not processed yet, over all connections;
          when full, reading stops and TCP pushes back (a slow sink must not grow memory
          without bound).
        """
        try:
            websockets.uri.parse_uri(ws_url)
        except InvalidURI as exc:
            raise ValueError(f"market ws_url is not a WebSocket URL: {exc}") from None
        if not rest_url.startswith(("http://", "https://")):
            raise ValueError(f"market rest_url is not an HTTP URL: {rest_url!r}")
        if rest_concurrency < 1 or max_pending_frames < 1 or control_interval_s <= 0 or rotate_after_s <= 0:
            raise ValueError("rest_concurrency, max_pending_frames, control_interval_s, rotate_after_s must be > 0")
        if rest_weight_per_minute < 2 or connects_per_5min < 1:  # 2: one klines request must fit
            raise ValueError("rest_weight_per_minute must be >= 2 and connects_per_5min >= 1")
        self._plan = StreamPlan(streams_per_connection)  # ValueError outside 1..1024
        # The base endpoint, e.g. wss://stream.binance.com:9443. Binance's docs also quote raw-stream
        # endpoints ending in /ws (the testnet's wss://stream.testnet.binance.vision/ws); accept both.
        ws_base = ws_url.rstrip("/").removesuffix("/ws").removesuffix("/stream")
        self._backoff = Backoff(backoff_initial_s, backoff_max_s, backoff_factor)
        self._link_settings = LinkSettings(
            ws_url=ws_base,
            rotate_after_s=rotate_after_s,
            backoff=self._backoff,
            backoff_reset_after_s=backoff_reset_after_s,
            silence_timeout_s=silence_timeout_s,
            ping_interval_s=ping_interval_s,
            ping_timeout_s=ping_timeout_s,
            open_timeout_s=open_timeout_s,
            close_timeout_s=close_timeout_s,
            control_interval_s=control_interval_s,
        )
        self._rest_url = rest_url
        self._sink = sink
        self._session = session
        self._rest_timeout_s = rest_timeout_s
        self._rest_concurrency = rest_concurrency
        self._rng = rng or random.Random()
        self.stats = FeedStats()
        self.rest_pacer = Pacer(rest_weight_per_minute, 60.0, clock=clock)
        self.rest_budget = rest_budget
        self.connect_pacer = Pacer(connects_per_5min, 300.0, clock=clock)
        self._attempt = asyncio.Event()  # replaced after every connection attempt (wait_until)

        self._history = history
        self._max_gap_retries = max_gap_retries
        self._max_pending_frames = max_pending_frames
        self._tracker = CandleTracker(history=history, max_gap_retries=max_gap_retries)
        self._desired: dict[str, StreamKey] = {}  # stream name -> key
        self._links: list[Link] = []  # index = the plan's connection index
        self._link_tasks: dict[int, asyncio.Task[None]] = {}
        self._inbox: asyncio.Queue[_Item] = asyncio.Queue()
        self._frame_slots = asyncio.Semaphore(max_pending_frames)
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._rest: KlinesClient | None = None
        self._fetcher: Fetcher | None = None
        self._task_group: asyncio.TaskGroup | None = None
        self._processor: asyncio.Task[None] | None = None
        self._running = False
        # stream name -> [closed candles delivered, newest closed open time, server ms wanted since]
        self._progress: dict[str, list[int | None]] = {}
        self.frames_waited = 0  # times a frame found the pending-frames bound full (reading paused)

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
        # Queue the change before a link can act on it, so that the processor knows a stream
        # before it can see the server acknowledge its subscription.
        self._inbox.put_nowait(_StreamsChanged(added, removed))
        self._desired = wanted
        now = self.server_now_ms()
        for key in added:
            self._progress.setdefault(key.stream_name, [0, None, now])
        for key in removed:
            self._progress.pop(key.stream_name, None)
        self._plan.release(removed)
        self._plan.place(added)
        self._sync_links()

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
                self._rest = KlinesClient(
                    session,
                    self._rest_url,
                    timeout_s=self._rest_timeout_s,
                    pacer=self.rest_pacer,
                    shared=self.rest_budget,
                )
                try:
                    async with asyncio.TaskGroup() as group:
                        self._task_group = group
                        self._fetcher = Fetcher(
                            self._rest,
                            group,
                            put=self._inbox.put_nowait,
                            is_pending=self._tracker.is_pending,
                            backoff=self._backoff,
                            rng=self._rng,
                            stats=self.stats,
                            concurrency=self._rest_concurrency,
                        )
                        self._processor = group.create_task(self._process(), name="market-feed-processor")
                        self._sync_links()
                        await self._stopping.wait()
                        for task in self._link_tasks.values():
                            task.cancel()
                        self._fetcher.cancel_all()
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
            self._fetcher = None
            self._link_tasks.clear()
            self._running = False
            self._finished.set()

    def _reset(self) -> None:
        """Fresh state for a run: nothing delivered yet, every wanted stream to be warmed up."""
        self._tracker = CandleTracker(history=self._history, max_gap_retries=self._max_gap_retries)
        self._inbox = asyncio.Queue()
        self._frame_slots = asyncio.Semaphore(self._max_pending_frames)
        for link in self._links:
            link.conn = link.active = None
        if self._desired:
            self._inbox.put_nowait(_StreamsChanged(frozenset(self._desired.values()), frozenset()))

    def _sync_links(self) -> None:
        """Links mirror the plan; while running, each has its connection loop."""
        while len(self._links) < self._plan.connections:
            index = len(self._links)
            self._links.append(
                Link(
                    index,
                    self._link_settings,
                    stats=self.stats,
                    connect_pacer=self.connect_pacer,
                    rng=self._rng,
                    on_attempt=self._attempted,
                )
            )
        for link in self._links:
            link.set_streams(self._plan.streams(link.index))
            group = self._task_group
            if group is not None and link.index not in self._link_tasks and not self._stopping.is_set():
                self._link_tasks[link.index] = group.create_task(
                    link.run(self._inbox.put_nowait, self._frame_slots), name=f"market-feed-connection-{link.index}"
                )

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
    def connected(self) -> bool:
        """Every connection slot that carries streams has a connection up (False with none)."""
        carrying = [link for link in self._links if self._plan.streams(link.index)]
        return bool(carrying) and all(
            link.conn is not None and link.active is link.conn and link.conn.outcome is None for link in carrying
        )

    def stream_progress(self) -> list[StreamProgress]:
        """Per wanted stream: closed candles delivered, the newest one's open time, and since
        when it is wanted (:class:`tradebotd.ops.status.FeedStatus`)."""
        out = []
        for name, key in self._desired.items():
            received, last, since = self._progress.get(name) or (0, None, 0)
            out.append(StreamProgress(key, received or 0, last, since or 0))
        return out

    def queue_stats(self) -> QueueStats:
        """Frames received and not processed yet, against ``max_pending_frames``."""
        return QueueStats("market-frames", self._inbox.qsize(), self._max_pending_frames, self.frames_waited)

    def _delivered(self, key: StreamKey, open_time: int, *, count: int) -> None:
        progress = self._progress.get(key.stream_name)
        if progress is not None:
            progress[0] = (progress[0] or 0) + count
            if progress[1] is None or open_time > progress[1]:
                progress[1] = open_time

    @property
    def streams(self) -> frozenset[StreamKey]:
        """The wanted streams (as last passed to ``set_streams``)."""
        return frozenset(self._desired.values())

    def connection_streams(self) -> list[frozenset[StreamKey]]:
        """The streams each connection slot carries, by slot (empty slots included)."""
        return [self._plan.streams(link.index) for link in self._links]

    def _server_clock(self) -> ServerClock | None:
        return self._rest.clock if self._rest is not None else None

    # -- processor: the only caller of the tracker and the sink ----------------------------------

    async def _process(self) -> None:
        while True:
            item = await self._inbox.get()
            match item:
                case _Stop():
                    return
                case Frame(conn=conn, data=data, received_ns=received_ns):
                    if self._frame_slots.locked():
                        self.frames_waited += 1
                        if self.frames_waited == 1 or self.frames_waited % 1000 == 0:
                            log.warning(
                                "market frames queue full; reading paused until the engine catches up",
                                queue="market-frames",
                                capacity=self._max_pending_frames,
                                times=self.frames_waited,
                            )
                    self._frame_slots.release()
                    self.stats.messages += 1
                    await self._carry_out(self._tracker.receive_frame(data, received_ns), conn)
                case Connected(conn=conn, url_keys=url_keys):
                    link = conn.link
                    link.active = conn
                    self._tracker.connection_made(self._plan.streams(link.index))
                    await self._carry_out(self._tracker.subscribed(url_keys), conn)
                case _StreamsChanged(added=added, removed=removed):
                    self._tracker.remove(removed)
                    self._tracker.add(added)
                    # A stream removed and re-added before its UNSUBSCRIBE went out is still
                    # subscribed on its connection: no acknowledgement will come for it.
                    ready = [key for key in added if self._confirmed_on_its_link(key)]
                    await self._carry_out(self._tracker.subscribed(ready), None)
                case HistoryAnswer(request=request, candles=candles, server_now_ms=now):
                    await self._carry_out(self._tracker.receive_history(request, candles, now), None)
                case RangeAnswer(request=request, candles=pairs, server_now_ms=now):
                    await self._carry_out(self._tracker.receive_range(request, pairs, now), None)
                case Refused(key=key, reason=reason):
                    if key.stream_name in self._desired:
                        await self._sink.on_refused(key, reason)

    def _confirmed_on_its_link(self, key: StreamKey) -> bool:
        index = self._plan.link_of(key)
        if index is None or index >= len(self._links):
            return False
        active = self._links[index].active
        return active is not None and key.stream_name in active.confirmed

    async def _carry_out(self, events: list[Event], conn: Connection | None) -> None:
        queue = deque(events)
        while queue:
            match queue.popleft():
                case Closed(candle=candle, received_ns=received_ns, backfilled=backfilled):
                    self.stats.closed += 1
                    if backfilled:
                        self.stats.backfilled += 1
                    self._delivered(candle.key, candle.open_time, count=1)
                    await self._sink.on_closed(candle, received_ns)
                case Update(candle=candle):
                    self._sink.on_update(candle)
                case History(key=key, candles=candles):
                    self.stats.history_candles += len(candles)
                    log.info("market history loaded", stream=str(key), candles=len(candles))
                    if candles:
                        self._delivered(key, candles[-1].open_time, count=0)
                    await self._sink.on_history(key, candles)
                case FetchHistory() | FetchRange() as request:
                    assert self._fetcher is not None
                    self._fetcher.start(request)
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
                        conn.end(Outcome("shutdown", "server shutdown notice"))

    def _on_control_reply(self, reply: ControlReply, conn: Connection) -> list[Event]:
        link = conn.link
        if conn is not link.active or type(reply.id) is not int:
            return []
        request = conn.requests.pop(reply.id, None)
        if request is None or request[0] != "SUBSCRIBE":
            return []
        confirmed = [name for name in request[1] if name in conn.subscribed]
        conn.confirmed.update(confirmed)
        # Only the connection a stream is placed on speaks for it (one moved by a remove and
        # re-add may still be subscribed on its old connection until the UNSUBSCRIBE goes out).
        keys = [self._desired[name] for name in confirmed if name in self._desired]
        return self._tracker.subscribed([key for key in keys if self._plan.link_of(key) == link.index])

    def _on_control_error(self, request_id: object, code: int, msg: str, conn: Connection) -> None:
        request = conn.requests.get(request_id) if type(request_id) is int else None
        method, names = request if request is not None else (None, ())
        log.warning(
            "market feed control request rejected; reconnecting",
            code=code,
            msg=msg,
            method=method,
            streams=list(names[:5]),
            connection=conn.link.index,
        )
        # Reconnecting names the connection's streams in the URL again, which needs no control frame.
        conn.end(Outcome("rejected", f"control request rejected: {code} {msg}"))

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
