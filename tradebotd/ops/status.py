"""What health, metrics and the watchdog read from the pipeline: small typed status Protocols.

Each component (market feed, engine, store writer, brokers, outbox, supervisor) implements the
Protocol for what it knows, with plain counters and no dependency on this package's consumers:
the engine does not import Prometheus, and the HTTP server does not reach into private
attributes. :class:`Sources` bundles them; :func:`snapshot` turns them, at one instant, into the
frozen :class:`StatusSnapshot` that :func:`tradebotd.ops.health.assess` judges.

Counters only ever grow (Prometheus counters); gauges are read at collection time. Which
existing classes already satisfy which Protocol is checked by mypy at the bottom of this module;
the rest (``MarketFeed.connected`` / ``stream_progress``, the engine's counters, broker bans, the
outbox, bounded queues, the evaluation pool's pids) are wired with the composition root.

:class:`LatencyHistogram` is a dependency-free histogram a component can own and fill on its
hot path (a bisect and two additions); the metrics collector exports it as a Prometheus histogram.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tradebotd.model import StreamKey

from .sdnotify import Progress, ProgressWatchdog, Stall

__all__ = [
    "DECISION_LATENCY_BUCKETS_S",
    "BrokerStatus",
    "EngineStatus",
    "FeedCounters",
    "FeedStatus",
    "LatencyHistogram",
    "OutboxStatus",
    "ProcessTree",
    "QueueStats",
    "QueueStatus",
    "Sources",
    "StatusSnapshot",
    "StreamProgress",
    "SupervisorStatus",
    "TaskHealth",
    "WriterStatus",
    "progress_of",
    "rss_bytes",
    "sandbox_error_kind",
    "snapshot",
]

# Closed kline received -> strategy decision: 50 µs (one native evaluation) to 1 s (far too slow
# for a 1-minute strategy). The README's targets sit at 1 ms (p99, one strategy) and 10 ms (100).
DECISION_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip


class LatencyHistogram:
    """Per-bucket counts (not cumulative) plus sum and count; ``observe`` is cheap enough for
    the per-strategy, per-candle path."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = DECISION_LATENCY_BUCKETS_S) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must be increasing")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) for every bucket, ending with +Inf."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


# -- the Protocols ---------------------------------------------------------------------------


class FeedCounters(Protocol):
    """``tradebotd.market.feed.FeedStats`` satisfies this."""

    @property
    def messages(self) -> int: ...  # WebSocket frames received
    @property
    def malformed(self) -> int: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def connect_failures(self) -> int: ...
    @property
    def closed(self) -> int: ...  # closed candles delivered (stream and REST)
    @property
    def backfilled(self) -> int: ...  # ... of which came from REST backfill


@dataclass(frozen=True, slots=True)
class StreamProgress:
    """One wanted stream as the feed sees it."""

    key: StreamKey
    received: int  # closed candles delivered for it
    last_closed_open_ms: int | None  # open time of the newest closed candle delivered (warm-up included)
    wanted_since_ms: int  # server time when the stream was first wanted: the clock before a first candle

    @property
    def last_closed_close_ms(self) -> int | None:
        """When the newest delivered candle closed (open time + interval)."""
        if self.last_closed_open_ms is None:
            return None
        return self.last_closed_open_ms + self.key.interval_ms


class FeedStatus(Protocol):
    @property
    def stats(self) -> FeedCounters: ...
    @property
    def connected(self) -> bool: ...
    def stream_progress(self) -> Sequence[StreamProgress]: ...


class EngineStatus(Protocol):
    @property
    def strategies_running(self) -> int: ...
    @property
    def candles_evaluated(self) -> int: ...  # closed candles fully evaluated (the progress count)
    @property
    def evaluation_backlog(self) -> int: ...  # closed candles received, not yet evaluated
    @property
    def oldest_waiting_ns(self) -> int | None: ...  # monotonic receive time of the oldest of them
    def evaluated_by_stream(self) -> Mapping[StreamKey, int]: ...
    def decisions(self) -> Mapping[str, int]: ...  # outcome (buy, sell, hold, error, skipped) -> count
    def orders(self) -> Mapping[str, int]: ...  # outcome (accepted, rejected, unknown, filled, ...) -> count
    def sandbox_errors(self) -> Mapping[str, int]: ...  # sandbox_error_kind() -> count
    def decision_latency(self) -> Mapping[str, LatencyHistogram]: ...  # strategy kind (js, wasm) -> histogram


class WriterStatus(Protocol):
    """``tradebotd.store.writer.StoreWriter`` satisfies this."""

    @property
    def backlog(self) -> int: ...  # batches not yet committed
    @property
    def committed_batches(self) -> int: ...
    @property
    def failed_attempts(self) -> int: ...


class BrokerStatus(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def banned_until_ms(self) -> int | None: ...  # server time an IP ban (HTTP 418) ends; None: no ban


class OutboxStatus(Protocol):
    @property
    def depth(self) -> int: ...  # rows waiting to be shipped to Supabase


@dataclass(frozen=True, slots=True)
class TaskHealth:
    name: str
    restarts: int  # restarts since start-up
    recent_crashes: int  # crashes within daemon.restart_window_s
    down: bool  # crashed and waiting for its restart
    failing: bool  # down, or crashed more than once within the window: health is red
    last_error: str | None  # "ExceptionType: message" of the last crash, secrets masked


class SupervisorStatus(Protocol):
    """``tradebotd.supervisor.Supervisor`` satisfies this."""

    def task_health(self) -> Sequence[TaskHealth]: ...
    @property
    def gave_up(self) -> bool: ...  # too many crashes: the daemon is exiting non-zero


@dataclass(frozen=True, slots=True)
class QueueStats:
    name: str
    depth: int
    capacity: int
    full: int  # times a put found it full


class QueueStatus(Protocol):
    def queue_stats(self) -> QueueStats: ...


class ProcessTree(Protocol):
    def processes(self) -> Mapping[str, int]: ...  # label ("daemon", "eval-1", ...) -> pid


# -- one instant -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sources:
    """Everything the daemon can be asked about; absent parts are simply not reported."""

    feed: FeedStatus | None = None
    engine: EngineStatus | None = None
    writer: WriterStatus | None = None
    brokers: Sequence[BrokerStatus] = ()
    outbox: OutboxStatus | None = None
    supervisor: SupervisorStatus | None = None
    queues: Sequence[QueueStatus] = ()
    processes: ProcessTree | None = None


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """What :func:`tradebotd.ops.health.assess` judges; plain data, built by :func:`snapshot`."""

    ready: bool = True
    streams: tuple[StreamProgress, ...] = ()
    evaluation_backlog: int = 0
    evaluation_wait_s: float = 0.0  # how long the oldest waiting candle has waited
    write_backlog: int = 0
    outbox_depth: int | None = None  # None: no outbox (SQLite-only store)
    bans: tuple[tuple[str, int], ...] = ()  # (broker, banned until ms)
    tasks: tuple[TaskHealth, ...] = ()
    supervisor_gave_up: bool = False
    stalled: tuple[Stall, ...] = ()


def progress_of(sources: Sources) -> dict[str, Progress]:
    """The parts the progress watchdog follows: the feed while any stream is wanted (frames),
    evaluation while candles wait (candles evaluated), the writer while batches wait (commits)."""
    parts: dict[str, Progress] = {}
    if sources.feed is not None:
        wanted = len(sources.feed.stream_progress()) > 0
        parts["feed"] = Progress(busy=wanted, done=sources.feed.stats.messages)
    if sources.engine is not None:
        engine = sources.engine
        parts["evaluation"] = Progress(busy=engine.evaluation_backlog > 0, done=engine.candles_evaluated)
    if sources.writer is not None:
        writer = sources.writer
        parts["writer"] = Progress(busy=writer.backlog > 0, done=writer.committed_batches)
    return parts


def snapshot(
    sources: Sources, *, watchdog: ProgressWatchdog, now_s: float, now_ns: int, ready: bool = True
) -> StatusSnapshot:
    """Read every source once. ``now_s`` is the watchdog's clock; ``now_ns`` the monotonic clock
    of ``EngineStatus.oldest_waiting_ns``."""
    engine, supervisor = sources.engine, sources.supervisor
    oldest = engine.oldest_waiting_ns if engine is not None else None
    stalled = watchdog.observe(now_s, progress_of(sources))
    return StatusSnapshot(
        ready=ready,
        streams=tuple(sources.feed.stream_progress()) if sources.feed is not None else (),
        evaluation_backlog=engine.evaluation_backlog if engine is not None else 0,
        evaluation_wait_s=max(0.0, (now_ns - oldest) / 1e9) if oldest is not None else 0.0,
        write_backlog=sources.writer.backlog if sources.writer is not None else 0,
        outbox_depth=sources.outbox.depth if sources.outbox is not None else None,
        bans=tuple((b.name, until) for b in sources.brokers if (until := b.banned_until_ms) is not None),
        tasks=tuple(supervisor.task_health()) if supervisor is not None else (),
        supervisor_gave_up=supervisor.gave_up if supervisor is not None else False,
        stalled=stalled,
    )


# -- helpers shared by the engine side and the collectors --------------------------------------

_SANDBOX_ERROR_KINDS = {
    "StrategyLoadError": "load",
    "StrategyRuntimeError": "exception",
    "StrategyTimeout": "timeout",
    "StrategyMemoryError": "memory",
    "InvalidResult": "invalid_result",
    "SandboxTrap": "trap",
    "SandboxUnavailable": "unavailable",
}


def sandbox_error_kind(exc: BaseException) -> str:
    """The ``kind`` label of ``tradebotd_sandbox_errors_total`` for a strategy failure: the
    nearest class in the sandbox error tree (``tradebotd.sandbox.errors``), else ``other``."""
    for cls in type(exc).__mro__:
        kind = _SANDBOX_ERROR_KINDS.get(cls.__name__)
        if kind is not None:
            return kind
    return "other"


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` from ``/proc/<pid>/statm`` (visible under systemd's
    ``ProcSubset=pid``, unlike the ``/proc/stat`` that prometheus-client's process collector
    needs); ``None`` if the process is gone or ``/proc`` is not there."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


if TYPE_CHECKING:  # mypy checks that these classes satisfy their Protocols as they are
    import tradebotd.market.feed
    import tradebotd.store.writer
    import tradebotd.supervisor

    def _conforms(
        stats: tradebotd.market.feed.FeedStats,
        writer: tradebotd.store.writer.StoreWriter,
        supervisor: tradebotd.supervisor.Supervisor,
    ) -> tuple[FeedCounters, WriterStatus, SupervisorStatus]:
        return stats, writer, supervisor
