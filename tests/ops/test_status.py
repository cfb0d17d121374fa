"""Reading the status Protocols into a snapshot: which pipeline parts the watchdog follows, and
a snapshot from real and stand-in sources that health then judges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tradebotd.market.feed import FeedStats
from tradebotd.model import StreamKey
from tradebotd.ops.health import HealthPolicy, assess
from tradebotd.ops.sdnotify import Progress, ProgressWatchdog
from tradebotd.ops.status import LatencyHistogram, Sources, StreamProgress, progress_of, snapshot
from tradebotd.supervisor import Supervisor

BTC = StreamKey("BTCUSDT", "1m")


@dataclass
class Feed:
    stats: FeedStats = field(default_factory=FeedStats)
    connected: bool = True
    streams: list[StreamProgress] = field(default_factory=list)

    def stream_progress(self) -> Sequence[StreamProgress]:
        return self.streams


@dataclass
class Engine:
    strategies_running: int = 1
    candles_evaluated: int = 0
    evaluation_backlog: int = 0
    oldest_waiting_ns: int | None = None

    def evaluated_by_stream(self) -> Mapping[StreamKey, int]:
        return {}

    def decisions(self) -> Mapping[str, int]:
        return {}

    def orders(self) -> Mapping[str, int]:
        return {}

    def sandbox_errors(self) -> Mapping[str, int]:
        return {}

    def decision_latency(self) -> Mapping[str, LatencyHistogram]:
        return {}


@dataclass
class Writer:
    backlog: int = 0
    committed_batches: int = 0
    failed_attempts: int = 0


@dataclass
class Broker:
    name: str
    banned_until_ms: int | None


def test_the_watchdog_follows_feed_frames_evaluations_and_commits() -> None:
    feed, engine, writer = Feed(), Engine(), Writer()
    sources = Sources(feed=feed, engine=engine, writer=writer)
    assert progress_of(sources) == {
        "feed": Progress(busy=False, done=0),  # no stream wanted: nothing to wait for
        "evaluation": Progress(busy=False, done=0),
        "writer": Progress(busy=False, done=0),
    }
    feed.streams.append(StreamProgress(BTC, 0, None, 0))
    feed.stats.messages = 12
    engine.evaluation_backlog, engine.candles_evaluated = 2, 40
    writer.backlog, writer.committed_batches = 1, 7
    assert progress_of(sources) == {
        "feed": Progress(busy=True, done=12),
        "evaluation": Progress(busy=True, done=40),
        "writer": Progress(busy=True, done=7),
    }
    assert progress_of(Sources()) == {}


def test_a_snapshot_of_a_silent_feed_is_judged_stale_and_stalled() -> None:
    t0 = 1_700_000_040_000
    feed = Feed(streams=[StreamProgress(BTC, 3, t0 - 60_000, 0)])
    engine = Engine(evaluation_backlog=2, oldest_waiting_ns=1_000_000_000)
    sources = Sources(feed=feed, engine=engine, brokers=[Broker("binance", None)], supervisor=Supervisor())
    dog = ProgressWatchdog(timeout_s=30)
    first = snapshot(sources, watchdog=dog, now_s=0, now_ns=1_500_000_000)
    assert first.streams == (StreamProgress(BTC, 3, t0 - 60_000, 0),)
    assert first.evaluation_backlog == 2 and first.evaluation_wait_s == 0.5
    assert first.bans == () and first.outbox_depth is None and first.stalled == ()
    assert assess(first, t0 + 1_000, HealthPolicy(grace_s=10)).ok
    # 40 s later: no frame, no evaluation; the candle due at t0 + 60 s has not come either
    later = snapshot(sources, watchdog=dog, now_s=40, now_ns=41_000_000_000)
    assert [s.part for s in later.stalled] == ["feed", "evaluation"]
    problems = assess(later, t0 + 80_000, HealthPolicy(grace_s=10)).problems
    assert [(p.check, p.subject) for p in problems] == [
        ("stream", "BTCUSDT/1m"),
        ("evaluation", "engine"),
        ("stalled", "feed"),
        ("stalled", "evaluation"),
    ]
