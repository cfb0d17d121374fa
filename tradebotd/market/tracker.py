"""The per-stream candle state machine, sans-I/O: frames and REST results in, events out.

``CandleTracker`` decides, for every (symbol, interval) stream, which closed candles reach the
engine and when, so that each closed candle is delivered exactly once and in open-time order,
across duplicates, reordering, lost frames and reconnects. It never touches a socket or a clock:
the caller passes each frame with the monotonic time it arrived and each REST result with the
server time read before it was fetched, and carries out the events returned (deliver a candle,
fetch a range over REST, log a malformed frame). The same shape as websockets' ``Protocol``.

States of one stream::

    WAITING ──subscribed──▶ WARMING ──history──▶ LIVE ◀──range──┐
       ▲                     (FetchHistory)        │ gap        │
       └── connection_made ◀── any state           └──▶ CATCHING_UP (FetchRange)

- WAITING: just added, or the connection carrying it was replaced; the subscription is not
  confirmed yet.
- WARMING: ``history`` closed candles were requested; they become one ``History`` event.
- LIVE: a final kline (``k.x``) whose open time is ``last + interval`` is delivered at once.
- CATCHING_UP: a range ``[last + interval, live edge]`` was requested over REST, because of a
  reconnect or a gap (a final kline further ahead than expected, or an update for a candle two
  intervals ahead, which proves the one in between closed without us seeing it).

In every state but LIVE, final klines from the stream are *held*. When the REST answer arrives,
its candles are delivered first (REST is the record), then the held ones in order; copies of a
candle already delivered are dropped. A gap REST cannot fill is fetched again (``attempt`` tells
the caller to wait first), and after ``max_gap_retries`` it is skipped with a ``GapSkipped`` event:
Binance itself has holes in its kline history after outages. Updates (``k.x`` false) pass through
as ``Update`` events in every state, except for candles already closed.

Errors: none are raised. Undecodable frames become ``Malformed`` events (see ``wire`` for the
``MalformedMessage`` the parser raises internally).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from tradebotd.market.errors import MalformedMessage
from tradebotd.market.wire import ControlError, ControlReply, KlineMessage, ServerShutdown, parse_frame
from tradebotd.model import Candle, StreamKey

__all__ = [
    "CandleTracker",
    "Closed",
    "Dropped",
    "Event",
    "FetchHistory",
    "FetchRange",
    "GapSkipped",
    "History",
    "Malformed",
    "Phase",
    "Update",
]


class Phase(enum.Enum):
    WAITING = "waiting"
    WARMING = "warming"
    LIVE = "live"
    CATCHING_UP = "catching_up"


# -- events (outputs) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class History:
    """Warm-up candles for a newly added stream, closed, oldest first (possibly empty)."""

    key: StreamKey
    candles: tuple[Candle, ...]


@dataclass(frozen=True, slots=True)
class Closed:
    """Deliver this closed candle; ``backfilled`` when it came from REST rather than the stream."""

    candle: Candle
    received_ns: int
    backfilled: bool


@dataclass(frozen=True, slots=True)
class Update:
    """A non-final kline for the candle in progress."""

    candle: Candle


@dataclass(frozen=True, slots=True)
class FetchHistory:
    """Fetch the most recent ``count`` closed candles and answer with ``receive_history``."""

    request: int
    key: StreamKey
    count: int


@dataclass(frozen=True, slots=True)
class FetchRange:
    """Fetch every closed candle with open time >= ``start`` and answer with ``receive_range``.

    ``attempt`` > 0 means an earlier answer left a gap (REST may lag the stream): wait a little first.
    """

    request: int
    key: StreamKey
    start: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """A kline that is not delivered: a second copy, older than what was delivered, for a stream
    nobody asked for (an unsubscribe in flight), or impossibly far in the future."""

    key: StreamKey
    open_time: int
    reason: Literal["duplicate", "stale", "untracked", "future"]


@dataclass(frozen=True, slots=True)
class GapSkipped:
    """Candles ``start..end`` (open times) will never be delivered.

    ``confirmed``: REST returned candles on both sides, so Binance has none there. Otherwise REST
    did not fill it after every retry.
    """

    key: StreamKey
    start: int
    end: int
    confirmed: bool


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame that could not be decoded; ``frame`` is its beginning, for the log."""

    error: str
    frame: str


Event = (
    History
    | Closed
    | Update
    | FetchHistory
    | FetchRange
    | Dropped
    | GapSkipped
    | Malformed
    | ControlReply
    | ControlError
    | ServerShutdown
)

_EXCERPT = 200


class CandleTracker:
    """State of every stream of one feed. Not thread-safe; one owner task calls it."""

    def __init__(self, *, history: int, max_gap_retries: int = 3) -> None:
        if history < 0:
            raise ValueError("history must be >= 0")
        self._history = history
        self._max_gap_retries = max_gap_retries
        self._streams: dict[StreamKey, _Stream] = {}
        self._last_request = 0

    # -- inspection ------------------------------------------------------------------------------

    @property
    def keys(self) -> frozenset[StreamKey]:
        return frozenset(self._streams)

    def phase(self, key: StreamKey) -> Phase:
        return self._streams[key].phase

    def last_closed(self, key: StreamKey) -> int | None:
        """Open time of the last candle delivered (or of the warm-up baseline)."""
        return self._streams[key].last_closed

    def is_pending(self, request: int) -> bool:
        """Whether a REST answer to ``request`` is still wanted (else the fetch can be abandoned)."""
        return any(stream.request == request for stream in self._streams.values())

    # -- inputs ----------------------------------------------------------------------------------

    def add(self, keys: Collection[StreamKey]) -> None:
        """Track new streams; nothing happens until their subscription is confirmed."""
        for key in keys:
            if key not in self._streams:
                self._streams[key] = _Stream(key, self._history, self._max_gap_retries)

    def remove(self, keys: Collection[StreamKey]) -> None:
        """Forget streams; answers and frames for them are ignored from now on."""
        for key in keys:
            self._streams.pop(key, None)

    def connection_made(self, keys: Collection[StreamKey]) -> None:
        """A new connection replaced the one that carried ``keys``: those streams wait for their
        subscription again. The feed spreads its streams over several connections, each replaced
        on its own, so only the streams of the connection that dropped lose their place; the
        others stay LIVE and keep delivering.

        Held candles and the last delivered open time survive; the backfill after the
        subscription starts from there. Unknown keys are ignored.
        """
        for key in keys:
            stream = self._streams.get(key)
            if stream is not None:
                stream.reset()

    def subscribed(self, keys: Collection[StreamKey]) -> list[Event]:
        """The server confirmed these streams (URL streams count as confirmed on connect)."""
        events: list[Event] = []
        for key in sorted(keys):
            stream = self._streams.get(key)
            if stream is not None:
                events += stream.subscribed(self._new_request)
        return events

    def receive_frame(self, frame: str | bytes, received_ns: int) -> list[Event]:
        try:
            message = parse_frame(frame)
        except MalformedMessage as exc:
            text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
            return [Malformed(str(exc), text[:_EXCERPT])]
        if not isinstance(message, KlineMessage):
            return [message]
        stream = self._streams.get(message.key)
        if stream is None:
            return [Dropped(message.key, message.candle.open_time, "untracked")]
        return stream.kline(message.candle, received_ns, self._new_request)

    def receive_history(self, request: int, candles: Sequence[Candle], server_now_ms: int) -> list[Event]:
        """Answer to ``FetchHistory``: closed candles, oldest first (more than asked is fine)."""
        stream = self._pending(request)
        return [] if stream is None else stream.history(candles, server_now_ms, self._new_request)

    def receive_range(self, request: int, candles: Sequence[tuple[Candle, int]], server_now_ms: int) -> list[Event]:
        """Answer to ``FetchRange``: (closed candle, received_ns) pairs, oldest first.

        ``server_now_ms`` is the server time read before the first page was fetched.
        """
        stream = self._pending(request)
        return [] if stream is None else stream.range(candles, server_now_ms, self._new_request)

    def _pending(self, request: int) -> _Stream | None:
        for stream in self._streams.values():
            if stream.request == request:
                return stream
        return None

    def _new_request(self) -> int:
        self._last_request += 1
        return self._last_request


class _Stream:
    """One stream's state; see the module docstring for the rules."""

    __slots__ = (
        "held",
        "history_count",
        "key",
        "last_closed",
        "max_retries",
        "phase",
        "request",
        "retries",
        "server_now_ms",
        "step",
        "warmed",
    )

    def __init__(self, key: StreamKey, history_count: int, max_retries: int) -> None:
        self.key = key
        self.step = key.interval_ms
        self.history_count = history_count
        self.max_retries = max_retries
        self.phase = Phase.WAITING
        self.warmed = False
        self.last_closed: int | None = None
        self.held: dict[int, tuple[Candle, int]] = {}  # open time -> (final kline, received_ns)
        self.request: int | None = None  # the REST answer we are waiting for
        self.retries = 0  # consecutive REST answers that left the same gap open
        self.server_now_ms: int | None = None

    def reset(self) -> None:
        self.phase = Phase.WAITING
        self.request = None
        self.retries = 0

    def subscribed(self, new_request: Callable[[], int]) -> list[Event]:
        if self.phase is not Phase.WAITING:
            return []
        if not self.warmed:
            self.phase = Phase.WARMING
            self.request = new_request()
            return [FetchHistory(self.request, self.key, self.history_count)]
        if self.last_closed is None:  # warm-up found nothing: the stream defines the start
            self.phase = Phase.LIVE
            return self._release(new_request)
        return [self._fetch_range(new_request, attempt=0)]

    def kline(self, candle: Candle, received_ns: int, new_request: Callable[[], int]) -> list[Event]:
        last = self.last_closed
        open_time = candle.open_time
        if last is not None and open_time <= last:
            reason: Literal["duplicate", "stale"] = "duplicate" if candle.closed and open_time == last else "stale"
            return [Dropped(self.key, open_time, reason)]
        if not candle.closed:
            events: list[Event] = [Update(candle)]
            # This candle started, so the one after `last` has closed; if its final frame was
            # lost we learn it now instead of one interval later.
            if self.phase is Phase.LIVE and last is not None and open_time >= last + 2 * self.step:
                events.append(self._fetch_range(new_request, attempt=0))
            return events
        if open_time in self.held:
            return [Dropped(self.key, open_time, "duplicate")]
        if self.phase is Phase.LIVE and (last is None or open_time == last + self.step):
            self.last_closed = open_time
            return [Closed(candle, received_ns, backfilled=False)]
        self.held[open_time] = (candle, received_ns)
        if self.phase is Phase.LIVE:  # a final kline further ahead than expected: frames were lost
            return [self._fetch_range(new_request, attempt=0)]
        return []

    def history(self, candles: Sequence[Candle], server_now_ms: int, new_request: Callable[[], int]) -> list[Event]:
        self.request = None
        self.warmed = True
        self.phase = Phase.LIVE
        self.server_now_ms = server_now_ms
        window = tuple(candles[-self.history_count :]) if self.history_count else ()
        if candles:
            self.last_closed = candles[-1].open_time
        return [History(self.key, window), *self._release(new_request)]

    def range(
        self, candles: Sequence[tuple[Candle, int]], server_now_ms: int, new_request: Callable[[], int]
    ) -> list[Event]:
        self.request = None
        self.phase = Phase.LIVE
        self.server_now_ms = server_now_ms
        events: list[Event] = []
        for candle, received_ns in candles:
            last = self.last_closed
            if last is not None and candle.open_time <= last:
                continue  # the range overlaps what was already delivered
            if last is not None and candle.open_time > last + self.step:
                events.append(GapSkipped(self.key, last + self.step, candle.open_time - self.step, True))
            self.last_closed = candle.open_time
            events.append(Closed(candle, received_ns, backfilled=True))
        return events + self._release(new_request)

    def _release(self, new_request: Callable[[], int]) -> list[Event]:
        """Deliver held candles that now follow ``last_closed``; deal with a gap before the rest."""
        events: list[Event] = []
        for open_time in sorted(self.held):
            last = self.last_closed
            if last is not None and open_time <= last:
                del self.held[open_time]
                events.append(Dropped(self.key, open_time, "duplicate"))
            elif last is None or open_time == last + self.step:
                candle, received_ns = self.held.pop(open_time)
                self.last_closed = open_time
                events.append(Closed(candle, received_ns, backfilled=False))
            else:
                break
        if not self.held:
            self.retries = 0
            return events
        if self.retries < self.max_retries:
            self.retries += 1
            events.append(self._fetch_range(new_request, attempt=self.retries))
            return events
        # REST did not fill the gap after every retry. A held candle the server clock has not
        # reached yet cannot be real (a corrupt frame); dropping it keeps the stream alive.
        # Otherwise accept the hole, as Binance's own history has some.
        self.retries = 0
        first = min(self.held)
        assert self.last_closed is not None  # a gap needs a known start
        if self.server_now_ms is not None and first + self.step > self.server_now_ms:
            del self.held[first]
            events.append(Dropped(self.key, first, "future"))
        else:
            events.append(GapSkipped(self.key, self.last_closed + self.step, first - self.step, False))
            self.last_closed = first - self.step
        return events + self._release(new_request)

    def _fetch_range(self, new_request: Callable[[], int], *, attempt: int) -> FetchRange:
        assert self.last_closed is not None
        self.phase = Phase.CATCHING_UP
        self.request = new_request()
        return FetchRange(self.request, self.key, self.last_closed + self.step, attempt)
