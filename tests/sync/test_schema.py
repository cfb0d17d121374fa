"""One schema, two stores: the Supabase migrations and the embedded store's migrations define the
same tables and columns with compatible types (no drift between deploy/supabase/migrations and
tradebotd/store/sqlite.py)."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tradebotd.store.sqlite import SqliteStore

SQLITE_ONLY = {"schema_migrations", "outbox", "outbox_dead", "sync_state", "sync_strategy_base", "close_requests"}
"""Bookkeeping of the embedded store (its ledger, the outbox and the sync's own state), and
``close_requests``: a local CLI's request to the daemon on the same store file, deleted when done."""
POSTGRES_ONLY = {"strategy_leases"}
"""Which instance owns which strategy: only meaningful in the shared database."""

EXACT = {"amount", "price", "fee", "cash", "open", "high", "low", "close", "volume", "entry_price", "take_profit",
         "stop_loss", "limit_price", "stop_price", "reference_price", "filled_amount", "average_price"}  # fmt: skip
"""Money and quantities: numeric in Postgres (decimal text in SQLite), never float."""

COMPATIBLE = {
    "TEXT": {"text", "uuid", "numeric", "timestamp with time zone", "jsonb"},
    "INTEGER": {"bigint", "integer"},
}


def _sqlite(tmp_path: Path) -> dict[str, dict[str, tuple[str, bool, bool]]]:
    """table -> column -> (declared type, not null, primary key)"""
    store = SqliteStore(tmp_path / "schema.db")
    store.migrate()
    tables = [r["name"] for r in store.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    schema = {
        t: {r["name"]: (r["type"], bool(r["notnull"]), bool(r["pk"])) for r in store.execute(f"PRAGMA table_info({t})")}
        for t in tables
        if not t.startswith("sqlite_")
    }
    store.close()
    return schema


def _postgres(dsn: str) -> dict[str, dict[str, tuple[str, bool]]]:
    """table -> column -> (data type, not null)"""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        ).fetchall()
    schema: dict[str, dict[str, tuple[str, bool]]] = {}
    for table, column, type_, nullable in rows:
        schema.setdefault(table, {})[column] = (type_, nullable == "NO")
    return schema


def test_same_tables_and_columns_with_compatible_types(tmp_path: Path, pg_dsn: str) -> None:
    lite, pg = _sqlite(tmp_path), _postgres(pg_dsn)
    assert set(pg) - POSTGRES_ONLY <= set(lite), "Postgres has tables SQLite lacks"
    assert set(lite) - SQLITE_ONLY <= set(pg), "SQLite has tables the migrations lack"
    problems = []
    for table in sorted(set(lite) - SQLITE_ONLY):
        extra = set(pg[table]) - set(lite[table])
        missing = set(lite[table]) - set(pg[table])
        if extra or missing:
            problems.append(f"{table}: only in Postgres {sorted(extra)}, only in SQLite {sorted(missing)}")
        for column, (decl, notnull, pk) in lite[table].items():
            if column not in pg[table]:
                continue
            pg_type, pg_notnull = pg[table][column]
            if pg_type not in COMPATIBLE.get(decl, set()):
                problems.append(f"{table}.{column}: SQLite {decl} vs Postgres {pg_type}")
            if column in EXACT and pg_type != "numeric":
                problems.append(f"{table}.{column}: money/quantity must be numeric, is {pg_type}")
            if column.endswith("_at") and pg_type != "timestamp with time zone":
                problems.append(f"{table}.{column}: times are timestamptz, is {pg_type}")
            if not pk and notnull != pg_notnull:
                problems.append(f"{table}.{column}: NOT NULL {notnull} in SQLite, {pg_notnull} in Postgres")
    assert problems == []


def test_orders_tables_follow_design_md(tmp_path: Path, pg_dsn: str) -> None:
    """The orders tables are DESIGN.md §1's, column for column and in order, on both sides."""
    pg = _postgres(pg_dsn)
    assert list(pg["orders"]) == [
        "client_order_id", "strategy_id", "portfolio_id", "broker", "symbol", "interval", "side", "type", "leg",
        "amount", "limit_price", "stop_price", "reference_price", "status", "exchange_order_id", "list_id",
        "parent_id", "filled_amount", "average_price", "fee", "fee_asset", "candle_time", "reason", "error", "raw",
        "created_at", "updated_at",
    ]  # fmt: skip
    assert list(pg["order_fills"]) == ["client_order_id", "trade_id", "amount", "price", "fee", "fee_asset", "at_ms"]
    lite = _sqlite(tmp_path)
    assert list(lite["orders"]) == list(pg["orders"]) and list(lite["order_fills"]) == list(pg["order_fills"])
