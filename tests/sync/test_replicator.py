"""The replicator: outbox rows (written by the store's triggers) planned into requests (sans-I/O)
and shipped through the real supabase client to the stand-in: exact decimals, idempotent
re-sends, nothing lost in an outage, refused rows set aside instead of blocking."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from decimal import Decimal as D
from pathlib import Path

import psycopg
import pytest

from tests.standins.postgrest import PostgrestStandin
from tradebotd.model import Candle, Position, StreamKey
from tradebotd.store.base import LogEntry, TradeRow, WriteBatch
from tradebotd.store.outbox import Outbox, OutboxRow, install
from tradebotd.store.sqlite import SqliteStore
from tradebotd.sync.client import SupabaseGateway, SupabaseUnavailable
from tradebotd.sync.replicator import Delete, Patch, PatchStrategies, Replicator, Upsert, plan

from .conftest import SERVICE_KEY

KEY = StreamKey("BTCUSDT", "1m")
T0 = "2026-01-01T00:00:00.000Z"


def row(seq: int, table: str, op: str, pk: dict[str, object], data: dict[str, object] | None) -> OutboxRow:
    return OutboxRow(seq, table, op, pk, data)  # type: ignore[arg-type]


def test_plan_coalesces_per_row_and_orders_parents_first() -> None:
    s, p = {"id": "s1"}, {"id": "p1"}
    rows = [
        row(1, "strategy_logs", "upsert", {"id": "l1"}, {"id": "l1", "message": "a"}),
        row(2, "strategies", "upsert", s, {"id": "s1", "status": "draft", "name": "n"}),
        row(3, "strategies", "patch", s, {"status": "running"}),
        row(4, "positions", "upsert", {"strategy_id": "s1"}, {"strategy_id": "s1", "amount": "1"}),
        row(5, "positions", "delete", {"strategy_id": "s1"}, None),
        row(6, "portfolios", "patch", p, {"cash": "9.5"}),
        row(7, "portfolios", "patch", p, {"cash": "9.25"}),
        row(8, "strategies", "patch", {"id": "s2"}, {"last_run_at": T0}),
        row(9, "strategy_logs", "upsert", {"id": "l2"}, {"id": "l2", "message": "b"}),
    ]
    assert plan(rows) == [
        Patch("portfolios", "id", "p1", {"cash": "9.25"}),
        Upsert("strategies", ({"id": "s1", "status": "running", "name": "n"},), ("id",), False),
        PatchStrategies(({"id": "s2", "last_run_at": T0},)),
        Delete("positions", "strategy_id", ("s1",)),
        Upsert("strategy_logs", ({"id": "l1", "message": "a"}, {"id": "l2", "message": "b"}), ("id",), True),
    ]


def test_plan_batches_large_tables() -> None:
    rows = [row(i, "strategy_logs", "upsert", {"id": str(i)}, {"id": str(i)}) for i in range(1200)]
    requests = plan(rows, max_rows=500)
    assert [len(r.rows) for r in requests if isinstance(r, Upsert)] == [500, 500, 200]


def _store(tmp_path: Path) -> tuple[SqliteStore, str, str]:
    store = SqliteStore(tmp_path / "t.db")
    store.migrate()
    install(store._db)  # what the sync service does at start
    pid = store.ensure_paper_portfolio(user_id="user_1", cash=D("10000"), currency="USDT")
    sid = store.add_strategy(
        name="s", user_id="user_1", code="x", kind="js", asset="btcusdt", interval="1m",
        parameters={"fast": 5}, portfolio_id=pid, status="running",
    )  # fmt: skip
    return store, pid, sid


def _candle_batch(sid: str, pid: str, t: int) -> WriteBatch:
    coid = f"tb-{t}-abc-buy"
    trade = TradeRow(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, coid)), strategy_id=sid, portfolio_id=pid, symbol="BTCUSDT",
        side="buy", amount=D("0.00100000"), price=D("30000.12345678"), fee=D("0.03000012"), status="filled",
        client_order_id=coid, exchange_order_id=None, candle_time=t, reason="r", created_at=T0,
    )  # fmt: skip
    return WriteBatch(
        logs=[LogEntry(sid, "trade", "bought", {"price": "30000.12345678"}, T0)],
        trades=[trade],
        positions={sid: (pid, KEY, Position(D("0.001"), D("30000.12345678"), t, None, None))},
        cash={pid: D("9969.84654310")},
        cursors={sid: ("BTCUSDT", "1m", t)},
        candles=[Candle("BTCUSDT", "1m", t, D("1.1"), D("2.2"), D("0.5"), D("30000.12345678"), D("3.000"))],
    )


async def test_ships_every_table_exactly_with_decimals_as_text(
    tmp_path: Path, rest: PostgrestStandin, pg: psycopg.Connection[tuple[object, ...]]
) -> None:
    store, pid, sid = _store(tmp_path)
    store.apply([_candle_batch(sid, pid, 60_000), _candle_batch(sid, pid, 120_000)])
    store.apply([WriteBatch(positions={sid: (pid, KEY, None)}, strategy_runs={sid: (T0, T0)})])
    outbox = Outbox(str(store.path))
    gateway = await SupabaseGateway.connect(rest.url, SERVICE_KEY)
    replicator = Replicator(outbox, gateway)
    pending = outbox.pending(1000)
    await replicator.ship(pending)
    assert outbox.backlog() == 0
    await replicator.ship(pending)  # a chunk re-sent (a crash before its rows were deleted): no change

    assert pg.execute("SELECT cash::text, name FROM portfolios").fetchall() == [("9969.84654310", "Paper")]
    assert pg.execute("SELECT status, parameters, last_run_at IS NOT NULL FROM strategies").fetchall() == [
        ("running", {"fast": 5}, True)
    ]
    assert pg.execute("SELECT count(*), min(price::text), min(amount::text) FROM trades").fetchone() == (
        2, "30000.12345678", "0.00100000",
    )  # fmt: skip
    assert pg.execute("SELECT count(*) FROM strategy_logs").fetchone() == (2,)
    assert pg.execute("SELECT count(*) FROM positions").fetchone() == (0,)
    assert pg.execute("SELECT last_candle_time FROM strategy_cursors").fetchall() == [(120_000,)]
    assert pg.execute("SELECT open_time, close::text, volume::text FROM market_data ORDER BY 1").fetchall() == [
        (60_000, "30000.12345678", "3.000"), (120_000, "30000.12345678", "3.000"),
    ]  # fmt: skip
    await gateway.close()


async def test_an_outage_keeps_everything_and_a_refused_row_is_set_aside(
    tmp_path: Path, rest: PostgrestStandin, pg: psycopg.Connection[tuple[object, ...]]
) -> None:
    store, pid, sid = _store(tmp_path)
    store.apply([_candle_batch(sid, pid, 60_000)])
    outbox = Outbox(str(store.path))
    gateway = await SupabaseGateway.connect(rest.url, SERVICE_KEY)
    replicator = Replicator(outbox, gateway)
    before = outbox.backlog()
    await rest.go_down()
    with pytest.raises(SupabaseUnavailable):
        await replicator.ship(outbox.pending(1000))
    assert outbox.backlog() == before  # nothing lost
    await rest.come_up()
    # a log row for a strategy the remote database does not have: refused for good (23503)
    store.apply([WriteBatch(logs=[LogEntry(str(uuid.uuid4()), "info", "orphan", None, T0)])])
    await replicator.ship(outbox.pending(1000))
    assert outbox.backlog() == 0 and outbox.dead() == 1
    assert replicator.stats.dead_rows == 1
    assert pg.execute("SELECT count(*) FROM strategy_logs").fetchone() == (1,)  # the good one arrived
    assert pg.execute("SELECT count(*) FROM trades").fetchone() == (1,)
    await gateway.close()


async def test_rows_from_before_supabase_mode_are_shipped_once(
    tmp_path: Path, rest: PostgrestStandin, pg: psycopg.Connection[tuple[object, ...]]
) -> None:
    """A store that ran on SQLite alone: its portfolios and strategies go out when the triggers are
    first installed (their logs and trades would be refused otherwise), and only then."""
    store = SqliteStore(tmp_path / "t.db")
    store.migrate()
    pid = store.ensure_paper_portfolio(user_id="user_1", cash=D("10000"), currency="USDT")
    sid = store.add_strategy(
        name="old", user_id="user_1", code="x", kind="js", asset="btcusdt", interval="1m",
        parameters={}, portfolio_id=pid, status="paused",
    )  # fmt: skip
    install(store._db)
    install(store._db)  # every start installs again: no second copy
    store.apply([WriteBatch(logs=[LogEntry(sid, "info", "hello", None, T0)])])
    outbox = Outbox(str(store.path))
    assert [(r.table, r.op) for r in outbox.pending(100)] == [
        ("portfolios", "upsert"), ("strategies", "upsert"), ("strategy_logs", "upsert"),
    ]  # fmt: skip
    gateway = await SupabaseGateway.connect(rest.url, SERVICE_KEY)
    await Replicator(outbox, gateway).ship(outbox.pending(100))
    assert pg.execute("SELECT name, status FROM strategies").fetchall() == [("old", "paused")]
    assert pg.execute("SELECT count(*) FROM strategy_logs").fetchone() == (1,)
    assert outbox.dead() == 0
    await gateway.close()


async def test_holds_back_while_the_candle_path_is_busy_then_ships_everything_once(
    tmp_path: Path, rest: PostgrestStandin, pg: psycopg.Connection[tuple[object, ...]]
) -> None:
    """While a candle is being evaluated or committed the replicator reads, sends and trims
    nothing (it shares the event loop with the candles); once the path is quiet the rows go out,
    each once."""
    store, pid, sid = _store(tmp_path)
    store.apply([_candle_batch(sid, pid, 60_000)])
    outbox = Outbox(str(store.path))
    gateway = await SupabaseGateway.connect(rest.url, SERVICE_KEY)
    busy = True
    replicator = Replicator(outbox, gateway, busy=lambda: busy, max_defer_s=3600)
    held_back = replicator.next_deferral()
    task = asyncio.create_task(replicator.run())
    replicator.notify()  # the writer committed
    async with asyncio.timeout(30):
        await held_back.wait()
    backlog = outbox.backlog()
    assert backlog > 0 and replicator.stats.requests == 0
    assert pg.execute("SELECT count(*) FROM trades").fetchone() == (0,)

    # Still busy: a second deferral, and still nothing sent.
    held_back = replicator.next_deferral()
    async with asyncio.timeout(30):
        await held_back.wait()
    assert replicator.stats.requests == 0 and outbox.backlog() == backlog

    busy = False
    async with asyncio.timeout(30):
        await replicator.drained()
    assert outbox.backlog() == 0 and replicator.stats.forced == 0
    assert pg.execute("SELECT count(*) FROM trades").fetchone() == (1,)
    assert pg.execute("SELECT count(*) FROM strategy_logs").fetchone() == (1,)
    replicator.stop()
    await task
    await gateway.close()


async def test_a_candle_arriving_mid_chunk_holds_the_rest_of_the_chunk_back(
    tmp_path: Path, rest: PostgrestStandin, pg: psycopg.Connection[tuple[object, ...]]
) -> None:
    """The candle path is asked again before each request of a chunk and before the trim: a candle
    that starts while a chunk is being shipped gets the loop; the chunk then completes, in order,
    and is trimmed only after all of it arrived."""
    store, pid, sid = _store(tmp_path)
    store.apply([_candle_batch(sid, pid, 60_000)])
    outbox = Outbox(str(store.path))
    gateway = await SupabaseGateway.connect(rest.url, SERVICE_KEY)
    state = {"busy": False}
    sent: list[str] = []

    class Gateway:
        """The real gateway; the first request sent is when the next candle arrives."""

        async def upsert(self, table: str, *args: object, **kwargs: object) -> None:
            sent.append(table)
            state["busy"] = len(sent) == 1
            await gateway.upsert(table, *args, **kwargs)  # type: ignore[arg-type]

        def __getattr__(self, name: str) -> object:
            return getattr(gateway, name)

    replicator = Replicator(outbox, Gateway(), busy=lambda: state["busy"], max_defer_s=3600)  # type: ignore[arg-type]
    held_back = replicator.next_deferral()
    task = asyncio.create_task(replicator.ship(outbox.pending(1000)))
    async with asyncio.timeout(30):
        await held_back.wait()
    assert len(sent) == 1 and outbox.backlog() > 0  # one request out, the rest held back

    state["busy"] = False
    async with asyncio.timeout(30):
        await task
    assert outbox.backlog() == 0
    assert {"portfolios", "strategies", "trades", "strategy_logs", "market_data"} <= set(sent)
    assert pg.execute("SELECT count(*) FROM trades").fetchone() == (1,)
    await gateway.close()


async def test_a_candle_path_that_is_never_quiet_does_not_stop_shipping(
    tmp_path: Path, rest: PostgrestStandin, pg: psycopg.Connection[tuple[object, ...]]
) -> None:
    """Deferring is bounded (max_defer_s): a daemon that is always busy still ships."""
    store, pid, sid = _store(tmp_path)
    store.apply([_candle_batch(sid, pid, 60_000)])
    outbox = Outbox(str(store.path))
    gateway = await SupabaseGateway.connect(rest.url, SERVICE_KEY)
    replicator = Replicator(outbox, gateway, busy=lambda: True, max_defer_s=0)
    task = asyncio.create_task(replicator.run())
    async with asyncio.timeout(30):
        await replicator.drained()
    assert outbox.backlog() == 0 and replicator.stats.forced > 0
    assert pg.execute("SELECT count(*) FROM trades").fetchone() == (1,)
    replicator.stop()
    await task
    await gateway.close()


async def test_the_trim_commits_on_the_store_writers_connection_or_else_its_own(
    tmp_path: Path, rest: PostgrestStandin, pg: psycopg.Connection[tuple[object, ...]]
) -> None:
    """The shipped rows are deleted on the store's own connection (a commit on another one makes
    SQLite drop that connection's page cache before the next candle's commit); when that
    connection cannot write, on the outbox's own: either way the chunk is trimmed once."""
    store, pid, sid = _store(tmp_path)
    store.apply([_candle_batch(sid, pid, 60_000)])
    outbox = Outbox(str(store.path), trim_on=store.connection)
    gateway = await SupabaseGateway.connect(rest.url, SERVICE_KEY)
    backlog, before = outbox.backlog(), store.connection.total_changes
    await Replicator(outbox, gateway).ship(outbox.pending(1000))
    assert outbox.backlog() == 0 and store.connection.total_changes - before == backlog

    store.apply([_candle_batch(sid, pid, 120_000)])
    read_only = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True, isolation_level=None)
    fallback = Outbox(str(store.path), trim_on=read_only)
    await Replicator(fallback, gateway).ship(fallback.pending(1000))
    assert fallback.backlog() == 0
    assert pg.execute("SELECT count(*) FROM trades").fetchone() == (2,)
    read_only.close()
    await gateway.close()
