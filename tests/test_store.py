"""Embedded SQLite store: schema, migrations, atomic batches, trades and orders as upserts, idempotent fills."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path

import pytest

from tradebotd.model import Candle, Position, StreamKey
from tradebotd.orders.model import Filled, OrderRecord
from tradebotd.store.base import LogEntry, NotFound, StoreUnavailable, TradeRow, WriteBatch
from tradebotd.store.sqlite import SCHEMA_VERSION, SqliteStore

KEY = StreamKey("BTCUSDT", "1m")


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "t.db")
    s.migrate()
    return s


def trade(coid: str, price: str = "100") -> TradeRow:
    return TradeRow(
        id=coid,
        strategy_id="s",
        portfolio_id=None,
        symbol="BTCUSDT",
        side="buy",
        amount=D("0.001"),
        price=D(price),
        fee=D("0.0001"),
        status="filled",
        client_order_id=coid,
        exchange_order_id=None,
        candle_time=60_000,
        reason="r",
        created_at="2026-01-01T00:00:00.000Z",
    )


def test_schema_has_the_web_app_tables_and_columns(store: SqliteStore) -> None:
    def columns(table: str) -> set[str]:
        return {r["name"] for r in store.execute(f"PRAGMA table_info({table})")}

    assert {
        "id",
        "user_id",
        "name",
        "python_code",
        "typescript_code",
        "asset",
        "interval",
        "status",
        "portfolio_id",
        "parameters",
        "last_run_at",
        "last_signal_at",
        "error_message",
        "created_at",
        "updated_at",
    } <= columns("strategies")
    assert {"id", "strategy_id", "level", "message", "data", "created_at"} <= columns("strategy_logs")
    assert {"symbol", "interval", "open_time", "open", "high", "low", "close", "volume"} <= columns("market_data")
    assert {
        "id",
        "strategy_id",
        "portfolio_id",
        "symbol",
        "side",
        "amount",
        "price",
        "fee",
        "status",
        "client_order_id",
        "exchange_order_id",
        "candle_time",
        "reason",
        "created_at",
    } <= columns("trades")
    assert {"id", "user_id", "name", "type", "cash", "currency", "created_at"} <= columns("portfolios")
    assert store.execute("PRAGMA journal_mode")[0][0] == "wal"


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "m.db")
    assert s.schema_version() == 0
    assert s.migrate() == SCHEMA_VERSION
    assert s.migrate() == SCHEMA_VERSION
    assert s.schema_version() == SCHEMA_VERSION


def test_newer_schema_is_refused(store: SqliteStore) -> None:
    store.execute("INSERT INTO schema_migrations VALUES (999, 'x')")
    with pytest.raises(StoreUnavailable, match="newer"):
        store.migrate()


def test_status_check_constraint(store: SqliteStore) -> None:
    sid = store.add_strategy(
        name="a", user_id="u", code="x", kind="js", asset="btcusdt", interval="1m", parameters={}, portfolio_id=None
    )
    with pytest.raises(sqlite3.IntegrityError):
        store.execute("UPDATE strategies SET status = 'bogus' WHERE id = ?", (sid,))


def test_strategy_lifecycle_and_prefix_ids(store: SqliteStore) -> None:
    pid = store.ensure_paper_portfolio(user_id="u", cash=D("10000"), currency="USDT")
    assert store.ensure_paper_portfolio(user_id="u", cash=D("1"), currency="USDT") == pid  # created once
    sid = store.add_strategy(
        name="sma",
        user_id="u",
        code="function strategy(){}",
        kind="js",
        asset="btcusdt",
        interval="5m",
        parameters={"fast": 5},
        portfolio_id=pid,
    )
    row = store.get_strategy(sid)
    assert row.status == "draft" and row.parameters == {"fast": 5} and row.source.startswith("function")
    assert store.resolve_strategy_id(sid[:8]) == sid
    with pytest.raises(NotFound):
        store.resolve_strategy_id("zzzz")
    with pytest.raises(NotFound):
        store.resolve_strategy_id("")
    store.update_strategy(sid, status="running")
    assert [r.id for r in store.running_strategies()] == [sid]
    store.update_strategy(sid, status="paused")
    assert store.running_strategies() == []


def test_batch_is_applied_atomically(store: SqliteStore) -> None:
    good = WriteBatch(trades=[trade("a")])
    bad = WriteBatch(logs=[LogEntry("s", "bogus", "m", None, "t")])  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        store.apply([good, bad])
    assert store.trades() == []


def test_a_trade_is_one_row_per_order_updated_by_later_fills(store: SqliteStore) -> None:
    store.apply([WriteBatch(trades=[trade("tb-1", "100")])])
    store.apply([WriteBatch(trades=[trade("tb-1", "100")])])  # the same batch re-done after a restart
    (row,) = store.trades()
    assert row == trade("tb-1", "100")  # exact decimal round trip
    # A later fill of the order: its totals change; its identity, candle and creation time do not.
    later = replace(
        trade("tb-1", "100.5"), id="other", amount=D("0.002"), fee=D("0.0002"), status="partially_filled",
        candle_time=120_000, created_at="later", fee_asset="BTC", exchange_order_id="42",
    )
    store.apply([WriteBatch(trades=[later])])
    (row,) = store.trades()
    assert (row.id, row.candle_time, row.created_at) == ("tb-1", 60_000, "2026-01-01T00:00:00.000Z")
    assert (row.amount, row.price, row.fee, row.status, row.fee_asset, row.exchange_order_id) == (
        D("0.002"), D("100.5"), D("0.0002"), "partially_filled", "BTC", "42"
    )


def order(coid: str, status: str, **kw: object) -> OrderRecord:
    base = OrderRecord(
        coid, "s", "p", "binance", "BTCUSDT", "1m", "buy", "limit", "entry", D("0.00200"), D("41000.00"), None,
        D("42000"), "new", None, None, None, D(0), None, D(0), None, 60_000, "why", None, None, "t0", "t0",
    )
    return base._replace(status=status, **kw)  # type: ignore[arg-type]


def test_orders_are_upserts_by_client_order_id_and_fills_are_applied_once(store: SqliteStore) -> None:
    store.apply([WriteBatch(orders={"tb-1": order("tb-1", "new"), "tb-2": order("tb-2", "new")})])
    fill = Filled("tb-1", "29", "71", D("0.0005"), D("41000"), D("0.0205"), "USDT", 160_000, False)
    moved = order("tb-1", "partially_filled", exchange_order_id="29", filled_amount=D("0.0005"),
                  average_price=D("41000"), fee=D("0.0205"), fee_asset="USDT", raw='{"status":"PARTIALLY_FILLED"}',
                  updated_at="t1", reason="changed?", amount=D("9"))
    store.apply([WriteBatch(orders={"tb-1": moved}, order_fills=[fill])])
    store.apply([WriteBatch(order_fills=[fill, fill])])  # reported again
    store.apply([WriteBatch(orders={"tb-2": order("tb-2", "rejected", error="insufficient balance")})])
    rows = {o.client_order_id: o for o in store.orders()}
    # What describes the request never changes; the order's progress does.
    assert rows["tb-1"] == moved._replace(reason="why", amount=D("0.00200"))
    assert str(rows["tb-1"].amount) == "0.00200" and rows["tb-2"].error == "insufficient balance"
    assert store.order_fills("tb-1") == [("71", D("0.0005"), D("41000"), D("0.0205"), "USDT", 160_000)]
    # Start-up restores the active ones, with the trades already applied to them.
    assert store.active_orders() == [(rows["tb-1"], ["71"])]


def test_positions_cursors_cash_and_candles(store: SqliteStore) -> None:
    pid = store.ensure_paper_portfolio(user_id="u", cash=D("10000"), currency="USDT")
    pos = Position(D("0.5"), D("123.45678901"), 60_000, D("130"), None)
    candle = Candle("BTCUSDT", "1m", 60_000, D("1.1"), D("1.2"), D("1.0"), D("1.15"), D("10.5"))
    store.apply(
        [
            WriteBatch(
                positions={"s": (pid, KEY, pos)},
                cash={pid: D("9938.27160549")},
                cursors={"s": ("BTCUSDT", "1m", 120_000)},
                candles=[candle, candle],
            )
        ]
    )
    assert store.positions() == {"s": (pid, KEY, pos)}
    assert store.portfolios()[0].cash == D("9938.27160549")
    assert store.cursors() == {"s": 120_000}
    assert store.candle_count("BTCUSDT", "1m") == 1
    # cursors never move backwards; a flat position deletes the row
    store.apply([WriteBatch(positions={"s": (pid, KEY, None)}, cursors={"s": ("BTCUSDT", "1m", 60_000)})])
    assert store.positions() == {} and store.cursors() == {"s": 120_000}


def test_logs_follow_in_insertion_order(store: SqliteStore) -> None:
    store.apply([WriteBatch(logs=[LogEntry("s", "info", f"m{i}", {"i": i}, "t") for i in range(3)])])
    rows = store.logs_after("s")
    assert [e.message for _, e in rows] == ["m0", "m1", "m2"]
    assert store.logs_after("s", rows[1][0])[0][1].data == {"i": 2}


def test_upgrade_from_schema_1_keeps_rows(tmp_path: Path) -> None:
    from tradebotd.store.sqlite import MIGRATIONS

    old = SqliteStore(tmp_path / "v1.db")
    old.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            old.execute(statement)
    old.execute("INSERT INTO schema_migrations VALUES (1, 'then')")
    # rows as a version-1 daemon wrote them
    old.execute("INSERT INTO strategy_logs VALUES ('l1', 's', 'info', 'kept', NULL, 't')")
    old.execute(
        "INSERT INTO trades VALUES ('t1', 's', NULL, 'BTCUSDT', 'buy', '0.001', '100', '0.0001', 'filled', "
        "'tb-kept', NULL, 60000, 'r', 't')"
    )
    old.close()

    store = SqliteStore(tmp_path / "v1.db")
    assert store.schema_version() == 1
    assert store.migrate() == SCHEMA_VERSION >= 3
    assert [e.message for _, e in store.logs_after("s")] == ["kept"]
    assert [(t.client_order_id, t.fee_asset) for t in store.trades("s")] == [("tb-kept", None)]
    assert store.active_orders() == []  # migration 5: the orders table exists, empty
    indexes = {r["name"] for r in store.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    # the per-strategy indexes that cost every busy candle's commit are gone (migrations 2 and 3)
    assert "strategy_logs_strategy" not in indexes and "trades_strategy" not in indexes


def test_checkpoint_copies_the_wal_and_starts_it_over_so_the_next_commit_need_not(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db", auto_checkpoint=False)
    store.migrate()
    for i in range(20):
        store.apply([WriteBatch(logs=[LogEntry("s", "info", f"row {i}", {"i": i}, "t")])])
    wal = tmp_path / "c.db-wal"

    def restarts() -> int:  # the WAL header's checkpoint sequence number, bumped by every restart
        return int.from_bytes(wal.read_bytes()[12:16], "big")

    before = restarts()
    store.checkpoint()
    assert restarts() == before + 1  # restarted now, by the checkpoint, not by the next candle's commit
    assert [e.message for _, e in store.logs_after("s")][-1] == "row 19"
    assert store.execute("PRAGMA user_version")[0][0] == 0  # the restarting write changed nothing
    store.apply([WriteBatch(logs=[LogEntry("s", "info", "after", None, "t")])])
    assert restarts() == before + 1
    other = sqlite3.connect(tmp_path / "c.db")  # and what a reader sees is all there
    assert other.execute("SELECT count(*) FROM strategy_logs").fetchone()[0] == 21
    other.close()
    store.close()
