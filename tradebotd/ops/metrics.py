"""The Prometheus registry behind ``GET /metrics``.

Nothing on the trading path touches Prometheus: components keep plain counters (the status
Protocols of :mod:`tradebotd.ops.status`), and :class:`PipelineCollector` reads them when the
endpoint is scraped. A scrape therefore costs the scraper's interval, not every candle, and the
engine, feed and writer stay importable and testable without this package.

Names follow Prometheus conventions: the ``tradebotd_`` prefix, ``_total`` on counters, base
units in the name (``_seconds``, ``_bytes``). Per-stream series carry ``symbol`` and
``interval`` labels; strategy ids are never labels (a user with thousands of strategies would
explode the series count; per-strategy detail is in the store and ``tradebotd status``).

Besides the pipeline, the registry holds prometheus-client's standard ``process_*`` and
``python_*`` collectors. ``process_resident_memory_bytes`` needs ``/proc/stat``, which systemd's
``ProcSubset=pid`` hides, so RSS is also exported as ``tradebotd_resident_memory_bytes`` per
process (the daemon and its evaluation processes, which share the unit's ``MemoryMax=``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tradebotd import __version__
from tradebotd.model import StreamKey

from .health import Health
from .status import Sources, rss_bytes

__all__ = ["PipelineCollector", "build_registry"]

PREFIX = "tradebotd_"


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: Iterable[str] = (), value: float | None = None) -> GaugeMetricFamily:
    if value is not None:
        return GaugeMetricFamily(PREFIX + name, doc, value=value)
    return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))


def _by_stream(name: str, doc: str, values: Mapping[StreamKey, int]) -> CounterMetricFamily:
    family = _counter(name, doc, ("symbol", "interval"))
    for key, value in sorted(values.items(), key=lambda kv: (kv[0].symbol, kv[0].interval)):
        family.add_metric([key.symbol, key.interval], value)
    return family


def _by_label(name: str, doc: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
    family = _counter(name, doc, (label,))
    for value_label, value in sorted(values.items()):
        family.add_metric([value_label], value)
    return family


class PipelineCollector(Collector):
    """Reads :class:`~tradebotd.ops.status.Sources` on every scrape.

    ``server_now_ms`` is the exchange's clock (candle ages); ``health`` the current verdict
    (exported as ``tradebotd_healthy``)."""

    def __init__(
        self,
        sources: Sources,
        *,
        server_now_ms: Callable[[], int],
        health: Callable[[], Health] | None = None,
    ) -> None:
        self._sources = sources
        self._now_ms = server_now_ms
        self._health = health

    def collect(self) -> Iterable[Metric]:
        s = self._sources
        info = _gauge("build_info", "Always 1; the version is a label.", ("version",))
        info.add_metric([__version__], 1)
        yield info
        if self._health is not None:
            yield _gauge("healthy", "1 while GET /healthz answers 200.", value=1 if self._health().ok else 0)
        if s.feed is not None:
            yield from self._feed()
        if s.engine is not None:
            yield from self._engine()
        if s.writer is not None:
            w = s.writer
            yield _gauge("store_write_backlog_batches", "Write batches waiting to be committed.", value=w.backlog)
            commits = _counter("store_commits", "Write batches committed to the store.")
            commits.add_metric([], w.committed_batches)
            failures = _counter("store_commit_failures", "Commit attempts that failed and were retried.")
            failures.add_metric([], w.failed_attempts)
            yield from (commits, failures)
        if s.brokers:
            now = self._now_ms()
            banned = _gauge("broker_banned", "1 while the exchange bans this broker's IP (HTTP 418).", ("broker",))
            for broker in s.brokers:
                until = broker.banned_until_ms
                banned.add_metric([broker.name], 1 if until is not None and until > now else 0)
            yield banned
        if s.outbox is not None:
            yield _gauge("outbox_depth", "Store rows waiting to be shipped to Supabase.", value=s.outbox.depth)
        if s.supervisor is not None:
            health = s.supervisor.task_health()
            restarts = _counter("task_restarts", "Restarts of a supervised background task after a crash.", ("task",))
            failing = _gauge("task_failing", "1 while a task is down or crashed repeatedly.", ("task",))
            for task in health:
                restarts.add_metric([task.name], task.restarts)
                failing.add_metric([task.name], 1 if task.failing else 0)
            yield from (restarts, failing)
        if s.queues:
            depth = _gauge("queue_depth", "Items in a bounded queue.", ("queue",))
            capacity = _gauge("queue_capacity", "Capacity of a bounded queue.", ("queue",))
            full = _counter("queue_full", "Times a put found a bounded queue full.", ("queue",))
            for queue in s.queues:
                stats = queue.queue_stats()
                depth.add_metric([stats.name], stats.depth)
                capacity.add_metric([stats.name], stats.capacity)
                full.add_metric([stats.name], stats.full)
            yield from (depth, capacity, full)
        processes = dict(s.processes.processes()) if s.processes is not None else {"daemon": os.getpid()}
        rss = _gauge("resident_memory_bytes", "Resident set size per process of the daemon.", ("process",))
        for label, pid in sorted(processes.items()):
            value = rss_bytes(pid)
            if value is not None:
                rss.add_metric([label], value)
        yield rss

    def _feed(self) -> Iterable[Metric]:
        feed = self._sources.feed
        assert feed is not None
        stats = feed.stats
        for name, doc, value in (
            ("feed_messages", "WebSocket frames received from the exchange.", stats.messages),
            ("feed_malformed_messages", "Frames that did not decode (logged and dropped).", stats.malformed),
            ("feed_reconnects", "Successful WebSocket connections after the first.", stats.reconnects),
            ("feed_connect_failures", "WebSocket connection attempts that failed.", stats.connect_failures),
            ("backfilled_candles", "Closed candles fetched over REST after a (re)connect.", stats.backfilled),
        ):
            family = _counter(name, doc)
            family.add_metric([], value)
            yield family
        yield _gauge("feed_connected", "1 while the market WebSocket is connected.", value=1 if feed.connected else 0)
        progress = feed.stream_progress()
        yield _by_stream(
            "candles_received",
            "Closed candles received per stream (stream and REST).",
            {p.key: p.received for p in progress},
        )
        now = self._now_ms()
        age = _gauge(
            "last_candle_age_seconds",
            "Seconds since the newest closed candle of a stream closed.",
            ("symbol", "interval"),
        )
        for p in progress:
            closed = p.last_closed_close_ms
            if closed is not None:
                age.add_metric([p.key.symbol, p.key.interval], max(0, now - closed) / 1000)
        yield age

    def _engine(self) -> Iterable[Metric]:
        engine = self._sources.engine
        assert engine is not None
        yield _gauge("strategies_running", "Strategies loaded and evaluating.", value=engine.strategies_running)
        yield _gauge(
            "evaluation_backlog_candles",
            "Closed candles received and not yet evaluated.",
            value=engine.evaluation_backlog,
        )
        yield _by_stream("candles_evaluated", "Closed candles evaluated per stream.", engine.evaluated_by_stream())
        yield _by_label(
            "decisions",
            "Strategy decisions by outcome (buy, sell, hold, error, skipped).",
            "outcome",
            engine.decisions(),
        )
        yield _by_label(
            "orders", "Orders by outcome (accepted, rejected, unknown, filled, ...).", "outcome", engine.orders()
        )
        yield _by_label("sandbox_errors", "Strategy failures in the sandbox by kind.", "kind", engine.sandbox_errors())
        latency = HistogramMetricFamily(
            PREFIX + "decision_latency_seconds",
            "Closed kline received -> strategy decision, per strategy kind.",
            labels=["kind"],
        )
        for kind, histogram in sorted(engine.decision_latency().items()):
            # repr() writes these bounds as Go's formatter does (5e-05, 0.00025); +Inf by name
            buckets = [("+Inf" if bound == float("inf") else repr(bound), n) for bound, n in histogram.cumulative()]
            latency.add_metric([kind], buckets, histogram.sum)
        yield latency


def build_registry(
    sources: Sources, *, server_now_ms: Callable[[], int], health: Callable[[], Health] | None = None
) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one, so tests and several daemons in
    one process never collide) with the pipeline and the standard process/Python collectors."""
    registry = CollectorRegistry()
    registry.register(PipelineCollector(sources, server_now_ms=server_now_ms, health=health))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
