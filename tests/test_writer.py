"""The store writer: batches committed in order, nothing lost while the database is unavailable
(a real lock held by another connection), and strategy run times committed after the decisions."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tradebotd.store.base import LogEntry, WriteBatch
from tradebotd.store.sqlite import SqliteStore
from tradebotd.store.writer import StoreWriter

T1, T2, T3 = "2026-01-01T00:01:00.000Z", "2026-01-01T00:02:00.000Z", "2026-01-01T00:03:00.000Z"


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "w.db", busy_timeout_ms=0)
    s.migrate()
    return s


@pytest.fixture
def committed() -> list[WriteBatch]:
    return []


@pytest.fixture
async def writer(store: SqliteStore, committed: list[WriteBatch]) -> AsyncIterator[StoreWriter]:
    w = StoreWriter(store, retry_min_s=0.001, retry_max_s=0.002, on_committed=lambda b, _: committed.append(b))
    task = asyncio.create_task(w.run())
    yield w
    w.stop()
    await task


def strategy(store: SqliteStore, name: str) -> str:
    return store.add_strategy(
        name=name, user_id="u", code="function evaluate(){}", kind="js", asset="BTCUSDT", interval="1m",
        parameters={}, portfolio_id=None,
    )


def decision(sid: str, candle_time: int, run_at: str, signal_at: str | None) -> WriteBatch:
    return WriteBatch(
        logs=[LogEntry(sid, "signal" if signal_at else "info", f"candle {candle_time}", None, run_at)],
        cursors={sid: ("BTCUSDT", "1m", candle_time)},
        strategy_runs={sid: (run_at, signal_at)},
        enqueued_ns=candle_time,
    )


def runs(store: SqliteStore, sid: str) -> tuple[str | None, str | None]:
    row = store.get_strategy(sid)
    return row.last_run_at, row.last_signal_at


async def test_run_times_are_merged_and_committed_after_the_decisions(
    store: SqliteStore, writer: StoreWriter, committed: list[WriteBatch]
) -> None:
    a, b = strategy(store, "a"), strategy(store, "b")
    writer.submit(decision(a, 60_000, T1, T1))  # a signals on the first candle
    writer.submit(decision(b, 60_000, T1, None))
    writer.submit(decision(a, 120_000, T2, None))  # then holds: its last signal time stays T1
    writer.submit(decision(b, 120_000, T2, T2))
    await writer.flush()
    assert runs(store, a) == (T2, T1)
    assert runs(store, b) == (T2, T2)
    assert store.cursors() == {a: 120_000, b: 120_000}
    # The four decision batches were committed without their run times, which followed in one
    # batch of their own, merged.
    assert [bool(c.strategy_runs) for c in committed] == [False] * 4 + [True]
    assert [c.enqueued_ns for c in committed[:4]] == [60_000, 60_000, 120_000, 120_000]
    assert committed[4].strategy_runs == {a: (T2, T1), b: (T2, T2)}


async def test_a_batch_of_run_times_only_is_still_committed(store: SqliteStore, writer: StoreWriter) -> None:
    a = strategy(store, "a")
    writer.submit(WriteBatch(strategy_runs={a: (T3, None)}))
    assert writer.backlog == 1
    await writer.flush()
    assert runs(store, a) == (T3, None) and writer.backlog == 0


async def test_an_unavailable_database_delays_batches_and_loses_none(
    store: SqliteStore, writer: StoreWriter, tmp_path: Path
) -> None:
    a = strategy(store, "a")
    other = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock: every commit attempt fails at once
    for minute in range(1, 6):
        attempt = writer.next_attempt()
        writer.submit(decision(a, minute * 60_000, T1, None))
        await attempt.wait()
    for _ in range(3):  # the writer keeps trying, with backoff
        await writer.next_attempt().wait()
    assert writer.failed_attempts >= 8 and writer.committed_batches == 0
    assert store.cursors() == {}  # nothing half-written
    other.execute("ROLLBACK")
    other.close()
    await writer.flush()
    assert store.cursors() == {a: 300_000}
    assert [e.message for _, e in store.logs_after(a)] == [f"candle {m * 60_000}" for m in range(1, 6)]
    assert runs(store, a) == (T1, None)


async def test_a_batch_says_when_it_is_durable_and_not_before(
    store: SqliteStore, writer: StoreWriter, tmp_path: Path
) -> None:
    a = strategy(store, "a")
    durable: list[int] = []
    other = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    attempt = writer.next_attempt()
    batch = decision(a, 60_000, T1, T1)
    batch.on_durable = lambda: durable.append(len(store.cursors()))
    writer.submit(batch)
    await attempt.wait()
    await writer.next_attempt().wait()
    assert durable == []  # two attempts failed: not durable yet
    other.execute("ROLLBACK")
    other.close()
    await writer.flush()
    assert durable == [1]  # called once, after the commit that holds it
    empty = WriteBatch(on_durable=lambda: durable.append(-1))
    writer.submit(empty)  # nothing to write is durable at once
    assert durable == [1, -1]


async def test_run_times_wait_for_a_quiet_moment(store: SqliteStore) -> None:
    a = strategy(store, "a")
    writer = StoreWriter(store, idle_s=0.01)
    task = asyncio.create_task(writer.run())
    commit = writer.next_commit()
    writer.submit(decision(a, 60_000, T1, T1))
    await commit.wait()
    assert store.cursors() == {a: 60_000} and runs(store, a) == (None, None)
    await writer.next_commit().wait()  # after idle_s without a batch, no flush needed
    assert runs(store, a) == (T1, T1)
    writer.stop()
    await task


async def test_run_times_of_a_writer_that_is_never_idle_wait_at_most_their_max_age(store: SqliteStore) -> None:
    a = strategy(store, "a")
    writer = StoreWriter(store, idle_s=3600, runs_max_age_s=0)
    task = asyncio.create_task(writer.run())
    seen: list[tuple[str | None, str | None]] = []
    for minute in (1, 2):
        commit = writer.next_commit()
        writer.submit(decision(a, minute * 60_000, [T1, T2][minute - 1], None))
        await commit.wait()  # the decision
        await writer.next_commit().wait()  # its run time, already overdue
        seen.append(runs(store, a))
    assert seen == [(T1, None), (T2, None)]
    writer.stop()
    await task


async def test_stop_commits_set_aside_run_times(store: SqliteStore) -> None:
    a = strategy(store, "a")
    writer = StoreWriter(store, idle_s=3600)
    task = asyncio.create_task(writer.run())
    writer.submit(WriteBatch(strategy_runs={a: (T2, T2)}))
    writer.stop()
    await task
    assert runs(store, a) == (T2, T2)


async def test_flush_now_commits_what_a_dead_writer_task_left(store: SqliteStore) -> None:
    """The daemon's last resort after the supervisor gave up on the writer task."""
    w = StoreWriter(store)  # run() never started: as if its task had died
    sid = strategy(store, "orphan")
    w.submit(decision(sid, 60_000, "2024-01-01T00:01:00Z", "2024-01-01T00:01:00Z"))
    assert w.backlog == 2  # the decision and its set-aside run times
    assert w.flush_now()
    assert w.backlog == 0
    assert store.cursors()[sid] == 60_000
    assert runs(store, sid) == ("2024-01-01T00:01:00Z", "2024-01-01T00:01:00Z")


async def test_a_queue_past_its_capacity_is_counted_once_per_crossing(store: SqliteStore) -> None:
    w = StoreWriter(store, queue_capacity=2)
    sid = strategy(store, "busy")
    for t in range(1, 5):
        w.submit(WriteBatch(cursors={sid: ("BTCUSDT", "1m", t * 60_000)}))
    stats = w.queue_stats()
    assert (stats.name, stats.depth, stats.capacity, stats.full) == ("store-writer", 4, 2, 1)
    assert w.flush_now() and w.queue_stats().depth == 0
