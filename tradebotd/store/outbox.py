"""The transactional outbox: with ``store.backend = "supabase"`` every change to a replicated table
also writes an ``outbox`` row, in the same SQLite transaction, for the replicator to ship.

The rows are written by SQLite triggers generated from the live schema (``install``), not by the
code that writes the tables: whatever writes them (the store writer's batches, ``tradebotd
strategy add|start|stop`` in another process, a later migration's new columns) is captured, and an
outbox row exists if and only if its change committed. Each row holds the changed row as the
local store has it (decimals stay text, so they arrive exact), as one of:

* ``upsert``: the whole row (idempotent on the table's key: shipping it twice is harmless);
* ``patch``: some columns of a row that the web app also edits (``strategies``: the daemon's
  status/error/run times, or a local edit; ``portfolios``: cash), so a concurrent edit in the app
  of another column is never overwritten;
* ``delete``: the key of a removed row (``positions`` when flat).

Outside Supabase mode the triggers are dropped (``uninstall``): plain SQLite pays nothing. The
outbox tables are the sync's own bookkeeping, created here rather than by the store's numbered
migrations, so a SQLite-only store never carries them.

Errors: ``sqlite3`` errors propagate as ``StoreUnavailable`` from the callers' transactions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

__all__ = ["REPLICATED", "Outbox", "OutboxRow", "TableSpec", "install", "uninstall", "uninstall_at"]

Op = Literal["upsert", "patch", "delete"]

DDL = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    op         TEXT NOT NULL CHECK (op IN ('upsert', 'patch', 'delete')),
    pk         TEXT NOT NULL,
    row        TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_dead (
    seq        INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL,
    op         TEXT NOT NULL,
    pk         TEXT NOT NULL,
    row        TEXT,
    created_at TEXT NOT NULL,
    error      TEXT NOT NULL,
    failed_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sync_strategy_base (strategy_id TEXT PRIMARY KEY, fields TEXT NOT NULL);
"""

_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
_JSON_COLUMNS = {"parameters", "data"}  # JSON text locally, jsonb remotely: shipped as JSON values


@dataclass(frozen=True, slots=True)
class TableSpec:
    """How one table replicates: its key (what upserts conflict on), columns never shipped, and
    the column groups a local update ships as patches (None: updates ship the whole row)."""

    key: tuple[str, ...]
    skip: tuple[str, ...] = ()
    patches: tuple[tuple[str, ...], ...] | None = None
    deletes: bool = False
    updates: bool = True


REPLICATED: dict[str, TableSpec] = {
    "portfolios": TableSpec(("id",), patches=(("cash",),)),
    "strategies": TableSpec(
        ("id",),
        patches=(
            ("status", "error_message"),
            ("last_run_at", "last_signal_at"),
            ("name", "python_code", "typescript_code", "asset", "interval", "parameters", "kind", "portfolio_id"),
        ),
    ),
    "orders": TableSpec(("client_order_id",)),
    "order_fills": TableSpec(("client_order_id", "trade_id")),
    "trades": TableSpec(("id",)),
    "positions": TableSpec(("strategy_id",), deletes=True),
    "strategy_cursors": TableSpec(("strategy_id",)),
    "strategy_logs": TableSpec(("id",), updates=False),
    # The local id is SQLite's rowid; Postgres has its own: the candle is the key.
    "market_data": TableSpec(("symbol", "interval", "open_time"), skip=("id",)),
}
"""In the order the replicator ships a chunk's tables (parents before children)."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    table: str
    op: Op
    pk: dict[str, Any]
    row: dict[str, Any] | None


def _value(column: str, ref: str) -> str:
    return f"json({ref}.{column})" if column in _JSON_COLUMNS else f"{ref}.{column}"


def _object(columns: Sequence[str], ref: str = "NEW") -> str:
    return "json_object(" + ", ".join(f"'{c}', {_value(c, ref)}" for c in columns) + ")"


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in db.execute(f"PRAGMA table_info({table})")]


def _trigger(
    table: str, key: Sequence[str], name: str, event: str, op: Op, row: str, *, ref: str = "NEW", when: str = ""
) -> str:
    return (
        f"CREATE TRIGGER tb_outbox_{table}_{name} AFTER {event} ON {table} {when}BEGIN "
        "INSERT INTO outbox (table_name, op, pk, row, created_at) "
        f"VALUES ('{table}', '{op}', {_object(key, ref)}, {row}, {_NOW}); END"
    )


def trigger_sql(db: sqlite3.Connection, *, market_data: bool) -> list[str]:
    """CREATE TRIGGER statements for every replicated table the store has."""
    statements = []
    for table, spec in REPLICATED.items():
        columns = [c for c in _columns(db, table) if c not in spec.skip]
        if not columns or (table == "market_data" and not market_data):
            continue
        statements.append(_trigger(table, spec.key, "insert", "INSERT", "upsert", _object(columns)))
        if spec.updates and spec.patches is None:
            statements.append(_trigger(table, spec.key, "update", "UPDATE", "upsert", _object(columns)))
        for i, group in enumerate(spec.patches or ()):
            present = [c for c in group if c in columns]
            changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in present)
            event = f"UPDATE OF {', '.join(present)}"
            statements.append(
                _trigger(table, spec.key, f"patch{i}", event, "patch", _object(present), when=f"WHEN {changed} ")
            )
        if spec.deletes:
            statements.append(_trigger(table, spec.key, "delete", "DELETE", "delete", "NULL", ref="OLD"))
    return statements


def uninstall(db: sqlite3.Connection) -> None:
    """Drop the outbox triggers (store.backend = "sqlite"); queued rows stay until shipped."""
    names = [
        r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'tb_outbox_%'")
    ]
    for name in names:
        db.execute(f"DROP TRIGGER {name}")


SEEDED = ("portfolios", "strategies")
"""Parents other rows refer to: rows a store had before it first ran in Supabase mode are shipped
once then, or every later row referring to them would be refused."""


def _seed(db: sqlite3.Connection) -> None:
    if db.execute("SELECT 1 FROM sync_state WHERE key = 'seeded'").fetchone():
        return
    for table in SEEDED:
        spec = REPLICATED[table]
        columns = [c for c in _columns(db, table) if c not in spec.skip]
        db.execute(
            "INSERT INTO outbox (table_name, op, pk, row, created_at) "
            f"SELECT '{table}', 'upsert', {_object(spec.key, table)}, {_object(columns, table)}, {_NOW} "
            f"FROM {table} ORDER BY rowid"
        )
    db.execute(f"INSERT INTO sync_state (key, value) VALUES ('seeded', {_NOW})")


def uninstall_at(path: str | Path) -> None:
    """:func:`uninstall` on the store at ``path`` (its own short connection)."""
    if str(path) == ":memory:" or not Path(path).exists():
        return
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 2000")
        uninstall(db)
    finally:
        db.close()


def install(db: sqlite3.Connection, *, market_data: bool = True) -> None:
    """Create the outbox tables and (re)create its triggers from the current schema, in one
    transaction (call after the store's migrations)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in DDL.split(";"):
            if statement.strip():
                db.execute(statement)
        uninstall(db)
        for statement in trigger_sql(db, market_data=market_data):
            db.execute(statement)
        _seed(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Outbox:
    """Reading and trimming the outbox (the replicator's side), on its own connection.

    ``trim_on``: the store writer's connection (same thread, the event loop's), for the trim
    alone. SQLite has a connection drop its whole page cache when another connection committed
    to the file since its last read; a trim committed here after every shipped chunk made the
    next candle's commit read its pages again (measured: +15 us median for one strategy's
    commit, +40 us median and +200 us at p90 for 100 strategies'). The trim's own transaction
    there never spans an await. If that connection is busy (its short busy timeout) the trim
    falls back to this one."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 2000, trim_on: sqlite3.Connection | None = None) -> None:
        self._trim_on = trim_on
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        # As the store's own connection: durable across process crashes in WAL mode, and no fsync
        # in every trim of the outbox (measured: that fsync on the event loop cost the candle
        # after it 2.5 ms at p99).
        self._db.execute("PRAGMA synchronous = NORMAL")

    def pending(self, limit: int) -> list[OutboxRow]:
        rows = self._db.execute(
            "SELECT seq, table_name, op, pk, row FROM outbox ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [
            OutboxRow(int(seq), table, op, orjson.loads(pk), None if row is None else orjson.loads(row))
            for seq, table, op, pk, row in rows
        ]

    def backlog(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def dead(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox_dead").fetchone()[0])

    def status(self) -> dict[str, Any]:
        """What ``tradebotd sync status`` shows: backlog (per table, oldest row), rows set aside,
        the last error and the mirror's mark."""
        tables = dict(self._db.execute("SELECT table_name, count(*) FROM outbox GROUP BY 1 ORDER BY 1").fetchall())
        (oldest,) = self._db.execute("SELECT min(created_at) FROM outbox").fetchone()
        last_error = self.get_state("last_error")
        return {
            "backlog": sum(tables.values()),
            "backlog_by_table": tables,
            "oldest": oldest,
            "dead": self.dead(),
            "last_error": None if last_error is None else orjson.loads(last_error),
            "mirror_updated_at": self.get_state("mirror_updated_at"),
        }

    def remove_through(self, seq: int) -> None:
        """Forget shipped rows: everything up to ``seq`` (a chunk is always the oldest rows)."""
        if self._trim_on is not None:
            try:
                with _Tx(self._trim_on):
                    self._trim_on.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))
                return
            except sqlite3.OperationalError:
                pass  # locked by another process past that connection's busy timeout: here, then
        with self.transaction():
            self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))

    def bury(self, rows: Sequence[OutboxRow], error: str) -> None:
        """Move rows the remote end refuses for good (a data or integrity error about the row
        itself) out of the way, keeping them with the error: never dropped, never blocking."""
        with self.transaction():
            for r in rows:
                self._db.execute(
                    "INSERT OR REPLACE INTO outbox_dead (seq, table_name, op, pk, row, created_at, error, failed_at) "
                    f"SELECT seq, table_name, op, pk, row, created_at, ?, {_NOW} FROM outbox WHERE seq = ?",
                    (error, r.seq),
                )
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (r.seq,))

    def get_state(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO sync_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def transaction(self) -> _Tx:
        """``with outbox.transaction():`` one immediate transaction on this connection."""
        return _Tx(self._db)

    @property
    def db(self) -> sqlite3.Connection:
        return self._db

    def close(self) -> None:
        self._db.close()


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
