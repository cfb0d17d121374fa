"""The status sources the composition root wires, read from a real in-process daemon trading
paper on the replay stand-in: engine counters by outcome and kind, the feed's per-stream
progress and connection, bounded queues, and the manual trigger's idempotence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.conftest import PAST, add_example, make_daemon, started, wave_series
from tradebotd.app import sources_of
from tradebotd.ops.sdnotify import ProgressWatchdog
from tradebotd.ops.status import snapshot
from tradebotd.replay.server import ReplayServer
from tradebotd.testing import until_stored


@pytest.fixture
async def server() -> AsyncIterator[ReplayServer]:
    async with ReplayServer([wave_series()], past=PAST, ping_interval_s=None) as replay:
        yield replay


THROWS = "function tradingStrategy(context) {\n  throw new Error('broken');\n}\n"


async def test_counters_progress_queues_and_an_idempotent_trigger(server: ReplayServer, tmp_path: Path) -> None:
    daemon = make_daemon(server, tmp_path)
    sid = add_example(daemon)
    broken = daemon.store.add_strategy(
        name="broken", user_id="u", code=THROWS, kind="js", asset="btcusdt", interval="1m", parameters={},
        portfolio_id=daemon.portfolio_id, status="running",
    )  # fmt: skip
    await started(daemon, sid, broken)
    try:
        assert daemon.is_ready()
        await server.advance(2)
        await until_stored(daemon, lambda: daemon.engine.counters.candles_evaluated >= 2)
        await daemon.writer.flush()  # counted when handed to the writer; the store below: committed
        counters = daemon.engine.counters
        key = next(iter(daemon.feed.streams))
        assert counters.evaluated_by_stream()[key] == 2
        assert counters.decisions()["error"] == 2 and counters.sandbox_errors() == {"exception": 2}
        assert sum(v for k, v in counters.decisions().items() if k != "error") == 2  # the example's
        assert counters.decision_latency()["js"].count == 2  # the broken one decided nothing
        assert counters.evaluation_backlog == 0 and counters.oldest_waiting_ns is None

        (progress,) = daemon.feed.stream_progress()
        assert progress.key == key and progress.received == 2
        newest = daemon.store.cursors()[sid]
        assert progress.last_closed_open_ms == newest
        assert daemon.feed.connected
        names = {q.queue_stats().name: q.queue_stats() for q in sources_of(daemon).queues}
        assert names["store-writer"].capacity > 0 and names["market-frames"].capacity > 0

        snap = snapshot(sources_of(daemon), watchdog=ProgressWatchdog(60), now_s=0, now_ns=0)
        assert snap.streams == (progress,) and snap.outbox_depth is None and snap.bans == ()

        # the trigger: both were evaluated on the newest candle already; nothing changes
        before = (len(daemon.store.orders()), daemon.store.cursors())
        runs = await daemon.engine.run_latest(None)
        assert runs is not None
        assert sorted((r.strategy_id, r.outcome, r.candle_time) for r in runs) == sorted(
            [(sid, "already_evaluated", newest), (broken, "already_evaluated", newest)]
        )
        assert await daemon.engine.run_latest("no-such-id") is None
        one = await daemon.engine.run_latest(sid[:8])  # a unique prefix
        assert one is not None and [r.strategy_id for r in one] == [sid]
        await daemon.writer.flush()
        assert (len(daemon.store.orders()), daemon.store.cursors()) == before
        assert counters.candles_evaluated == 2
    finally:
        await daemon.shutdown()
    assert daemon.lost_batches == 0
