"""``/metrics`` content: what the collector reads from the status Protocols, in Prometheus text
that prometheus-client's own parser accepts, with conventional names."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tradebotd.market.feed import FeedStats
from tradebotd.model import StreamKey
from tradebotd.ops.health import Health, Problem
from tradebotd.ops.metrics import build_registry
from tradebotd.ops.status import (
    LatencyHistogram,
    QueueStats,
    Sources,
    StreamProgress,
    TaskHealth,
    sandbox_error_kind,
)
from tradebotd.sandbox.errors import StrategyLoadError, StrategyMemoryError, StrategyTimeout
from tradebotd.store.sqlite import SqliteStore
from tradebotd.store.writer import StoreWriter

BTC = StreamKey("BTCUSDT", "1m")
NOW_MS = 1_700_000_100_000


@dataclass
class Feed:
    stats: FeedStats = field(default_factory=lambda: FeedStats(messages=40, reconnects=2, closed=7, backfilled=3))
    connected: bool = True

    def stream_progress(self) -> Sequence[StreamProgress]:
        return [StreamProgress(BTC, received=7, last_closed_open_ms=NOW_MS - 90_000, wanted_since_ms=0)]


@dataclass
class Engine:
    strategies_running: int = 2
    candles_evaluated: int = 6
    evaluation_backlog: int = 1
    oldest_waiting_ns: int | None = None
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def evaluated_by_stream(self) -> Mapping[StreamKey, int]:
        return {BTC: 6}

    def decisions(self) -> Mapping[str, int]:
        return {"buy": 2, "hold": 9, "error": 1}

    def orders(self) -> Mapping[str, int]:
        return {"accepted": 2, "filled": 2}

    def sandbox_errors(self) -> Mapping[str, int]:
        return {"timeout": 1}

    def decision_latency(self) -> Mapping[str, LatencyHistogram]:
        return {"js": self.latency}


@dataclass
class Broker:
    name: str
    banned_until_ms: int | None


@dataclass
class Outbox:
    depth: int


@dataclass
class Supervisor:
    gave_up: bool = False

    def task_health(self) -> Sequence[TaskHealth]:
        return [TaskHealth("market-feed", 3, 2, False, True, "OSError: x")]


@dataclass
class Queue:
    def queue_stats(self) -> QueueStats:
        return QueueStats("feed-inbox", depth=4, capacity=1000, full=1)


@dataclass
class Processes:
    def processes(self) -> Mapping[str, int]:
        return {"daemon": os.getpid(), "gone": 2**22 + 1}  # a pid that does not exist is left out


def scrape(sources: Sources, health: Health | None = None) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = build_registry(
        sources, server_now_ms=lambda: NOW_MS, health=(lambda: health) if health is not None else None
    )
    text = generate_latest(registry).decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_every_pipeline_metric_with_its_value(tmp_path: Path) -> None:
    engine = Engine()
    for seconds in (0.0002, 0.0003, 0.004):
        engine.latency.observe(seconds)
    store = SqliteStore(tmp_path / "m.db")
    store.migrate()
    writer = StoreWriter(store)  # the real writer satisfies WriterStatus as it is
    sources = Sources(
        feed=Feed(),
        engine=engine,
        writer=writer,
        brokers=[Broker("binance", NOW_MS + 1000), Broker("paper", None)],
        outbox=Outbox(12),
        supervisor=Supervisor(),
        queues=[Queue()],
        processes=Processes(),
    )
    m = scrape(sources, Health((), ()))
    stream = (("interval", "1m"), ("symbol", "BTCUSDT"))
    assert m["tradebotd_healthy"][()] == 1
    assert m["tradebotd_feed_messages_total"][()] == 40
    assert m["tradebotd_feed_reconnects_total"][()] == 2
    assert m["tradebotd_backfilled_candles_total"][()] == 3
    assert m["tradebotd_feed_connected"][()] == 1
    assert m["tradebotd_candles_received_total"][stream] == 7
    assert m["tradebotd_candles_evaluated_total"][stream] == 6
    assert m["tradebotd_last_candle_age_seconds"][stream] == 30.0  # closed 90 s - 60 s ago
    assert m["tradebotd_strategies_running"][()] == 2
    assert m["tradebotd_evaluation_backlog_candles"][()] == 1
    assert m["tradebotd_decisions_total"] == {
        (("outcome", "buy"),): 2,
        (("outcome", "error"),): 1,
        (("outcome", "hold"),): 9,
    }
    assert m["tradebotd_orders_total"][(("outcome", "filled"),)] == 2
    assert m["tradebotd_sandbox_errors_total"][(("kind", "timeout"),)] == 1
    latency = m["tradebotd_decision_latency_seconds_bucket"]
    assert latency[(("kind", "js"), ("le", "0.00025"))] == 1
    assert latency[(("kind", "js"), ("le", "0.0005"))] == 2
    assert latency[(("kind", "js"), ("le", "+Inf"))] == 3
    assert m["tradebotd_decision_latency_seconds_count"][(("kind", "js"),)] == 3
    assert abs(m["tradebotd_decision_latency_seconds_sum"][(("kind", "js"),)] - 0.0045) < 1e-12
    assert m["tradebotd_store_write_backlog_batches"][()] == 0
    assert m["tradebotd_store_commits_total"][()] == 0
    assert m["tradebotd_broker_banned"] == {(("broker", "binance"),): 1, (("broker", "paper"),): 0}
    assert m["tradebotd_outbox_depth"][()] == 12
    assert m["tradebotd_task_restarts_total"][(("task", "market-feed"),)] == 3
    assert m["tradebotd_task_failing"][(("task", "market-feed"),)] == 1
    assert m["tradebotd_queue_depth"][(("queue", "feed-inbox"),)] == 4
    assert m["tradebotd_queue_capacity"][(("queue", "feed-inbox"),)] == 1000
    assert m["tradebotd_queue_full_total"][(("queue", "feed-inbox"),)] == 1
    rss = m["tradebotd_resident_memory_bytes"]
    assert list(rss) == [(("process", "daemon"),)] and rss[(("process", "daemon"),)] > 1 << 20
    assert m["tradebotd_build_info"][(("version", "0.1.0"),)] == 1
    store.close()


def test_names_follow_the_conventions() -> None:
    m = scrape(Sources(feed=Feed(), engine=Engine(), supervisor=Supervisor(), outbox=Outbox(0)))
    ours = [name for name in m if name.startswith("tradebotd_")]
    assert len(ours) > 15
    for name in ours:
        assert name == name.lower() and "__" not in name
    assert "tradebotd_decision_latency_seconds_bucket" in m
    # counters end in _total; nothing that is not a counter does
    families = list(text_string_to_metric_families(_text(Sources(feed=Feed(), engine=Engine()))))
    counters = {f.name for f in families if f.type == "counter"}
    assert {"tradebotd_feed_messages", "tradebotd_candles_evaluated", "tradebotd_decisions"} <= counters
    assert all(f"{c}_total" in m for c in counters if c.startswith("tradebotd_"))
    assert not [f.name for f in families if f.type != "counter" and f.name.endswith("_total")]


def _text(sources: Sources) -> str:
    return generate_latest(build_registry(sources, server_now_ms=lambda: NOW_MS)).decode()


def test_an_unhealthy_daemon_reports_zero_and_absent_sources_are_left_out() -> None:
    m = scrape(Sources(), Health((Problem("stream", "BTCUSDT/1m", "old"),), ()))
    assert m["tradebotd_healthy"][()] == 0
    assert "tradebotd_feed_messages_total" not in m and "tradebotd_outbox_depth" not in m
    assert m["tradebotd_resident_memory_bytes"][(("process", "daemon"),)] > 0  # the daemon itself, always


def test_sandbox_error_kinds() -> None:
    assert sandbox_error_kind(StrategyTimeout("slow")) == "timeout"
    assert sandbox_error_kind(StrategyMemoryError("big")) == "memory"
    assert sandbox_error_kind(StrategyLoadError("syntax")) == "load"
    assert sandbox_error_kind(RuntimeError("?")) == "other"


def test_the_histogram_buckets_are_cumulative() -> None:
    h = LatencyHistogram((0.001, 0.01))
    for s in (0.0005, 0.001, 0.002, 5.0):
        h.observe(s)
    assert h.cumulative() == [(0.001, 2), (0.01, 3), (float("inf"), 4)]
    assert h.count == 4
