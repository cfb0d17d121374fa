"""The embedded store: one SQLite file in WAL mode, schema versioned by numbered migrations.

Money and quantities are stored as decimal TEXT (exact); times the web app shows are ISO-8601 UTC
text; candle times are integer milliseconds. The daemon and the CLI open the same file from
different processes: WAL lets readers proceed during a write, and the daemon's connection waits
only briefly for a lock (``StoreUnavailable`` otherwise) so the event loop is never stalled.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, cast

import orjson

from ..ids import uuid7
from ..model import Position, StreamKey, normalize_symbol
from ..orders.model import OrderRecord
from .base import (
    CloseRequest,
    LogEntry,
    NotFound,
    PortfolioRow,
    StoreUnavailable,
    StrategyKind,
    StrategyRow,
    StrategyStatus,
    TradeRow,
    WriteBatch,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore", "utc_now"]

MIGRATIONS: tuple[str, ...] = (
    # 1: the web app's tables, plus daemon-owned state for restarts.
    """
    CREATE TABLE portfolios (
        id          TEXT PRIMARY KEY,
        user_id     TEXT NOT NULL,
        name        TEXT NOT NULL,
        type        TEXT NOT NULL CHECK (type IN ('paper', 'live')),
        cash        TEXT NOT NULL,
        currency    TEXT NOT NULL DEFAULT 'USDT',
        created_at  TEXT NOT NULL
    );
    CREATE TABLE strategies (
        id              TEXT PRIMARY KEY,
        user_id         TEXT NOT NULL,
        name            TEXT NOT NULL,
        python_code     TEXT,
        typescript_code TEXT,
        asset           TEXT NOT NULL,
        interval        TEXT NOT NULL,
        status          TEXT NOT NULL DEFAULT 'draft'
                        CHECK (status IN ('draft', 'running', 'paused', 'error', 'archived')),
        portfolio_id    TEXT REFERENCES portfolios(id),
        parameters      TEXT NOT NULL DEFAULT '{}',
        last_run_at     TEXT,
        last_signal_at  TEXT,
        error_message   TEXT,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL,
        kind            TEXT NOT NULL DEFAULT 'js' CHECK (kind IN ('js', 'ts', 'wasm'))
    );
    CREATE INDEX strategies_status ON strategies(status);
    CREATE TABLE strategy_logs (
        id          TEXT PRIMARY KEY,
        strategy_id TEXT NOT NULL,
        level       TEXT NOT NULL CHECK (level IN ('info', 'signal', 'trade', 'error')),
        message     TEXT NOT NULL,
        data        TEXT,
        created_at  TEXT NOT NULL
    );
    CREATE INDEX strategy_logs_strategy ON strategy_logs(strategy_id, created_at);
    CREATE TABLE market_data (
        id          INTEGER PRIMARY KEY,
        symbol      TEXT NOT NULL,
        interval    TEXT NOT NULL,
        open_time   INTEGER NOT NULL,
        open        TEXT NOT NULL,
        high        TEXT NOT NULL,
        low         TEXT NOT NULL,
        close       TEXT NOT NULL,
        volume      TEXT NOT NULL,
        UNIQUE (symbol, interval, open_time)
    );
    CREATE TABLE trades (
        id                TEXT PRIMARY KEY,
        strategy_id       TEXT NOT NULL,
        portfolio_id      TEXT,
        symbol            TEXT NOT NULL,
        side              TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
        amount            TEXT NOT NULL,
        price             TEXT NOT NULL,
        fee               TEXT NOT NULL,
        status            TEXT NOT NULL,
        client_order_id   TEXT NOT NULL UNIQUE,
        exchange_order_id TEXT,
        candle_time       INTEGER NOT NULL,
        reason            TEXT,
        created_at        TEXT NOT NULL
    );
    CREATE INDEX trades_strategy ON trades(strategy_id, candle_time);
    CREATE TABLE positions (
        strategy_id  TEXT PRIMARY KEY,
        portfolio_id TEXT,
        symbol       TEXT NOT NULL,
        interval     TEXT NOT NULL,
        amount       TEXT NOT NULL,
        entry_price  TEXT NOT NULL,
        entry_time   INTEGER NOT NULL,
        take_profit  TEXT,
        stop_loss    TEXT,
        updated_at   TEXT NOT NULL
    );
    CREATE TABLE strategy_cursors (
        strategy_id      TEXT PRIMARY KEY,
        symbol           TEXT NOT NULL,
        interval         TEXT NOT NULL,
        last_candle_time INTEGER NOT NULL,
        updated_at       TEXT NOT NULL
    );
    """,
    # 2: no per-strategy index on strategy_logs. A candle on which 100 strategies trade writes 200
    # log rows at 100 places of that index: 2-3 ms of its commit, measured. Per-strategy reads
    # (the CLI) walk the log by rowid instead, which is what `logs --follow` does anyway.
    """
    DROP INDEX strategy_logs_strategy;
    """,
    # 3: no per-strategy index on trades either, for the same reason: when 100 strategies trade on
    # one candle, its 100 entries land on up to 100 different leaf pages, each copied to the WAL.
    # Measured over 400 such candles: 792 KiB of WAL and 2.17 ms per commit with it, 221 KiB and
    # 1.68 ms without, and the gap grows with the table. Per-strategy reads (CLI, reports) scan.
    """
    DROP INDEX trades_strategy;
    """,
    # 4: requests to close a strategy's position (`tradebotd strategy stop|remove --close-position`),
    # written by the CLI, consumed by the daemon: it sells through the normal order path and
    # deletes the row in the same transaction as the sell. A row is a pending request.
    """
    CREATE TABLE close_requests (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        strategy_id  TEXT NOT NULL REFERENCES strategies(id),
        reason       TEXT NOT NULL,
        requested_at TEXT NOT NULL
    );
    """,
    # 5: orders as commands and events (DESIGN.md §1). Every order is recorded here before it is
    # sent; order_fills makes applying a fill idempotent; trades gains the fee's asset. The only
    # index beyond the keys is partial: active orders (what start-up restores) by strategy. A paper
    # order is written once, already filled, and never touches it.
    """
    CREATE TABLE orders (
        client_order_id   TEXT PRIMARY KEY,
        strategy_id       TEXT NOT NULL,
        portfolio_id      TEXT,
        broker            TEXT NOT NULL,
        symbol            TEXT NOT NULL,
        interval          TEXT NOT NULL,
        side              TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
        type              TEXT NOT NULL,
        leg               TEXT NOT NULL CHECK (leg IN ('entry', 'exit', 'tp', 'sl')),
        amount            TEXT NOT NULL,
        limit_price       TEXT,
        stop_price        TEXT,
        reference_price   TEXT NOT NULL,
        status            TEXT NOT NULL CHECK (status IN ('new', 'pending', 'open', 'partially_filled',
                                                           'filled', 'cancelled', 'rejected', 'unknown')),
        exchange_order_id TEXT,
        list_id           TEXT,
        parent_id         TEXT,
        filled_amount     TEXT NOT NULL DEFAULT '0',
        average_price     TEXT,
        fee               TEXT NOT NULL DEFAULT '0',
        fee_asset         TEXT,
        candle_time       INTEGER NOT NULL,
        reason            TEXT,
        error             TEXT,
        raw               TEXT,
        created_at        TEXT NOT NULL,
        updated_at        TEXT NOT NULL
    );
    CREATE INDEX orders_active ON orders(strategy_id)
        WHERE status IN ('new', 'pending', 'open', 'partially_filled', 'unknown');
    CREATE TABLE order_fills (
        client_order_id TEXT NOT NULL,
        trade_id        TEXT NOT NULL,
        amount          TEXT NOT NULL,
        price           TEXT NOT NULL,
        fee             TEXT NOT NULL,
        fee_asset       TEXT,
        at_ms           INTEGER NOT NULL,
        PRIMARY KEY (client_order_id, trade_id)
    ) WITHOUT ROWID;
    ALTER TABLE trades ADD COLUMN fee_asset TEXT;
    """,
)
_ACTIVE = "('new', 'pending', 'open', 'partially_filled', 'unknown')"
SCHEMA_VERSION = len(MIGRATIONS)


_last_stamp: tuple[int, str] = (0, "")


def utc_now() -> str:
    """ISO-8601 UTC with milliseconds, the format every ``*_at`` column uses. Cached per
    millisecond: a candle with 100 strategies asks for it hundreds of times in one burst."""
    global _last_stamp
    ms = time.time_ns() // 1_000_000
    if _last_stamp[0] != ms:
        text = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        _last_stamp = (ms, text)
    return _last_stamp[1]


def _json(data: Mapping[str, Any]) -> str:
    # orjson: ~10x faster than json.dumps, and a candle with 100 trades writes 200 of these.
    # Non-finite floats cannot occur (the sandbox rejects them); anything exotic becomes a string.
    return orjson.dumps(data, default=str).decode()


def _dec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _order(r: sqlite3.Row) -> OrderRecord:
    return OrderRecord(
        client_order_id=r["client_order_id"],
        strategy_id=r["strategy_id"],
        portfolio_id=r["portfolio_id"],
        broker=r["broker"],
        symbol=r["symbol"],
        interval=r["interval"],
        side=r["side"],
        type=r["type"],
        leg=r["leg"],
        amount=Decimal(r["amount"]),
        limit_price=_dec(r["limit_price"]),
        stop_price=_dec(r["stop_price"]),
        reference_price=Decimal(r["reference_price"]),
        status=r["status"],
        exchange_order_id=r["exchange_order_id"],
        list_id=r["list_id"],
        parent_id=r["parent_id"],
        filled_amount=Decimal(r["filled_amount"]),
        average_price=_dec(r["average_price"]),
        fee=Decimal(r["fee"]),
        fee_asset=r["fee_asset"],
        candle_time=int(r["candle_time"]),
        reason=r["reason"],
        error=r["error"],
        raw=r["raw"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


class SqliteStore:
    """The default store. ``busy_timeout_ms`` bounds how long a call may wait for another writer."""

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = 5000, auto_checkpoint: bool = True) -> None:
        self.path = Path(path)
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable across process crashes in WAL mode; only an OS crash can lose the
        # last commits, which the cursor design turns into a re-evaluation, not a loss.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA foreign_keys = ON")
        if not auto_checkpoint:
            # SQLite would otherwise copy the WAL back into the database (and fsync) inside
            # whichever commit crosses 1000 pages: milliseconds on the candle path. The daemon's
            # writer calls checkpoint() when it is idle instead.
            self._db.execute("PRAGMA wal_autocheckpoint = 0")

    # -- schema ------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply pending migrations; returns the schema version."""
        with self._tx():
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            current = self._db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"{self.path} has schema version {current}, newer than this tradebotd ({SCHEMA_VERSION})"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, utc_now()))
        return SCHEMA_VERSION

    def schema_version(self) -> int:
        try:
            return int(self._db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0])
        except sqlite3.OperationalError:
            return 0

    def ensure_paper_portfolio(self, *, user_id: str, cash: Decimal, currency: str, name: str = "Paper") -> str:
        """The default paper portfolio (created on first use); returns its id."""
        row = self._db.execute(
            "SELECT id FROM portfolios WHERE type = 'paper' AND user_id = ? ORDER BY created_at LIMIT 1",
            (user_id,),
        ).fetchone()
        if row:
            return str(row["id"])
        pid = str(uuid.uuid4())
        with self._tx():
            self._db.execute(
                "INSERT INTO portfolios (id, user_id, name, type, cash, currency, created_at) "
                "VALUES (?, ?, ?, 'paper', ?, ?, ?)",
                (pid, user_id, name, str(cash), currency, utc_now()),
            )
        return pid

    def add_portfolio(
        self, *, name: str, user_id: str, type: Literal["paper", "live"], cash: Decimal, currency: str
    ) -> str:
        """A new portfolio (``tradebotd portfolio add``); returns its id."""
        pid = str(uuid.uuid4())
        with self._tx():
            self._db.execute(
                "INSERT INTO portfolios (id, user_id, name, type, cash, currency, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (pid, user_id, name, type, str(cash), currency, utc_now()),
            )
        return pid

    def resolve_portfolio_id(self, id_or_prefix: str) -> str:
        """A full portfolio id or a unique prefix; ``NotFound`` otherwise."""
        return self._resolve("portfolios", "portfolio", id_or_prefix)

    # -- strategies (CLI and control plane) --------------------------------------------------

    def add_strategy(
        self,
        *,
        name: str,
        user_id: str,
        code: str,
        kind: StrategyKind,
        asset: str,
        interval: str,
        parameters: Mapping[str, Any],
        portfolio_id: str | None,
        status: StrategyStatus = "draft",
        error_message: str | None = None,
    ) -> str:
        sid = str(uuid.uuid4())
        now = utc_now()
        with self._tx():
            self._db.execute(
                "INSERT INTO strategies (id, user_id, name, typescript_code, asset, interval, status, "
                "portfolio_id, parameters, created_at, updated_at, kind, error_message) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sid,
                    user_id,
                    name,
                    code,
                    asset,
                    interval,
                    status,
                    portfolio_id,
                    json.dumps(dict(parameters)),
                    now,
                    now,
                    kind,
                    error_message,
                ),
            )
        return sid

    def update_strategy(
        self,
        strategy_id: str,
        *,
        code: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        status: StrategyStatus | None = None,
        name: str | None = None,
        kind: StrategyKind | None = None,
        asset: str | None = None,
        interval: str | None = None,
        portfolio_id: str | None = None,
        error_message: str | None = None,
        close_position: str | None = None,
    ) -> None:
        """Change the given columns (``updated_at`` too, which makes the daemon reload it).
        ``error_message`` is set with status ``error``; status ``running`` clears it.
        ``close_position``: also ask the daemon to close the position, with this reason, in the
        same transaction (see :meth:`request_close`)."""
        sets, args = ["updated_at = ?"], [utc_now()]
        columns: dict[str, str | None] = {
            "typescript_code": code,
            "parameters": None if parameters is None else json.dumps(dict(parameters)),
            "status": status,
            "name": name,
            "kind": kind,
            "asset": asset,
            "interval": interval,
            "portfolio_id": portfolio_id,
            "error_message": error_message,
        }
        for column, value in columns.items():
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        if status == "running":
            sets.append("error_message = NULL")
        with self._tx():
            cur = self._db.execute(f"UPDATE strategies SET {', '.join(sets)} WHERE id = ?", (*args, strategy_id))
            if cur.rowcount == 0:
                raise NotFound(f"no strategy with id {strategy_id}")
            if close_position is not None:
                self._request_close(strategy_id, close_position)

    def request_close(self, strategy_id: str, reason: str) -> int:
        """Ask the daemon to close ``strategy_id``'s position: a ``close_requests`` row, which the
        daemon's control loop turns into a sell (see ``Engine.close_positions``). Returns its id."""
        with self._tx():
            return self._request_close(strategy_id, reason)

    def _request_close(self, strategy_id: str, reason: str) -> int:
        cur = self._db.execute(
            "INSERT INTO close_requests (strategy_id, reason, requested_at) VALUES (?, ?, ?)",
            (strategy_id, reason, utc_now()),
        )
        return int(cur.lastrowid or 0)

    def close_requests(self) -> list[CloseRequest]:
        """Pending requests, oldest first, with the stream the position is on (the strategy's
        asset and interval when the store has no position row)."""
        rows = self._db.execute(
            "SELECT r.id, r.strategy_id, r.reason, r.requested_at, "
            "coalesce(p.portfolio_id, s.portfolio_id) AS portfolio_id, "
            "coalesce(p.symbol, s.asset) AS symbol, coalesce(p.interval, s.interval) AS interval "
            "FROM close_requests r JOIN strategies s ON s.id = r.strategy_id "
            "LEFT JOIN positions p ON p.strategy_id = r.strategy_id ORDER BY r.id"
        ).fetchall()
        requests = []
        for r in rows:
            try:
                key = StreamKey(normalize_symbol(r["symbol"]), r["interval"])
            except ValueError:
                continue  # a strategy whose asset is not a symbol cannot hold a position
            requests.append(
                CloseRequest(
                    id=int(r["id"]),
                    strategy_id=r["strategy_id"],
                    portfolio_id=r["portfolio_id"],
                    key=key,
                    reason=r["reason"],
                    requested_at=r["requested_at"],
                )
            )
        return requests

    def resolve_strategy_id(self, id_or_prefix: str) -> str:
        """Accept a full id or a unique prefix (like git and docker do)."""
        return self._resolve("strategies", "strategy", id_or_prefix)

    def _resolve(self, table: str, what: str, id_or_prefix: str) -> str:
        rows = self._db.execute(
            f"SELECT id FROM {table} WHERE id LIKE ? || '%' ESCAPE '\\' LIMIT 2",
            (id_or_prefix.replace("%", "\\%").replace("_", "\\_"),),
        ).fetchall()
        if not rows or not id_or_prefix:
            raise NotFound(f"no {what} with id {id_or_prefix!r}")
        if len(rows) > 1:
            raise NotFound(f"{what} id prefix {id_or_prefix!r} is ambiguous")
        return str(rows[0]["id"])

    def list_strategies(self, *, archived: bool = True) -> list[StrategyRow]:
        where = "" if archived else " WHERE status != 'archived'"
        rows = self._db.execute(f"SELECT * FROM strategies{where} ORDER BY created_at").fetchall()
        return [self._strategy(r) for r in rows]

    def find_strategy_by_name(self, name: str) -> StrategyRow | None:
        row = self._db.execute(
            "SELECT * FROM strategies WHERE name = ? AND status != 'archived' ORDER BY created_at LIMIT 1",
            (name,),
        ).fetchone()
        return self._strategy(row) if row else None

    def running_strategies(self) -> list[StrategyRow]:
        rows = self._db.execute("SELECT * FROM strategies WHERE status = 'running' ORDER BY created_at").fetchall()
        return [self._strategy(r) for r in rows]

    def get_strategy(self, strategy_id: str) -> StrategyRow:
        row = self._db.execute("SELECT * FROM strategies WHERE id = ?", (strategy_id,)).fetchone()
        if row is None:
            raise NotFound(f"no strategy with id {strategy_id}")
        return self._strategy(row)

    @staticmethod
    def _strategy(row: sqlite3.Row) -> StrategyRow:
        return StrategyRow(
            id=row["id"],
            user_id=row["user_id"],
            name=row["name"],
            python_code=row["python_code"],
            typescript_code=row["typescript_code"],
            asset=row["asset"],
            interval=row["interval"],
            status=row["status"],
            portfolio_id=row["portfolio_id"],
            parameters=json.loads(row["parameters"] or "{}"),
            last_run_at=row["last_run_at"],
            last_signal_at=row["last_signal_at"],
            error_message=row["error_message"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            kind=row["kind"],
        )

    # -- state for restarts ------------------------------------------------------------------

    def cursors(self) -> dict[str, int]:
        rows = self._db.execute("SELECT strategy_id, last_candle_time FROM strategy_cursors").fetchall()
        return {r["strategy_id"]: int(r["last_candle_time"]) for r in rows}

    def portfolios(self) -> list[PortfolioRow]:
        rows = self._db.execute("SELECT * FROM portfolios ORDER BY created_at").fetchall()
        return [
            PortfolioRow(
                id=r["id"],
                user_id=r["user_id"],
                name=r["name"],
                type=r["type"],
                cash=Decimal(r["cash"]),
                currency=r["currency"],
                created_at=r["created_at"],
            )
            for r in rows
        ]

    def positions(self) -> dict[str, tuple[str | None, StreamKey, Position]]:
        rows = self._db.execute("SELECT * FROM positions").fetchall()
        return {
            r["strategy_id"]: (
                r["portfolio_id"],
                StreamKey(r["symbol"], r["interval"]),
                Position(
                    amount=Decimal(r["amount"]),
                    entry_price=Decimal(r["entry_price"]),
                    entry_time=int(r["entry_time"]),
                    take_profit=_dec(r["take_profit"]),
                    stop_loss=_dec(r["stop_loss"]),
                ),
            )
            for r in rows
        }

    def active_orders(self) -> list[tuple[OrderRecord, list[str]]]:
        rows = self._db.execute(f"SELECT * FROM orders WHERE status IN {_ACTIVE} ORDER BY rowid").fetchall()
        fills: dict[str, list[str]] = {}
        if rows:
            marks = ",".join("?" * len(rows))
            for r in self._db.execute(
                f"SELECT client_order_id, trade_id FROM order_fills WHERE client_order_id IN ({marks})",
                [r["client_order_id"] for r in rows],
            ):
                fills.setdefault(r["client_order_id"], []).append(r["trade_id"])
        return [(_order(r), fills.get(r["client_order_id"], [])) for r in rows]

    # -- reads for the CLI and tests ---------------------------------------------------------

    def orders(self, strategy_id: str | None = None, *, active: bool = False) -> list[OrderRecord]:
        """Orders in the order they were recorded; of one strategy; only the active (not
        terminal) ones (``tradebotd orders --open``)."""
        where: list[str] = []
        args: tuple[str, ...] = ()
        if strategy_id is not None:
            where.append("strategy_id = ?")
            args = (strategy_id,)
        if active:
            where.append(f"status IN {_ACTIVE}")
        sql = "SELECT * FROM orders" + (" WHERE " + " AND ".join(where) if where else "")
        return [_order(r) for r in self._db.execute(sql + " ORDER BY rowid", args).fetchall()]

    def order_fills(self, client_order_id: str) -> list[tuple[str, Decimal, Decimal, Decimal, str | None, int]]:
        """(trade id, amount, price, fee, fee asset, at_ms) of one order's fills."""
        rows = self._db.execute(
            "SELECT * FROM order_fills WHERE client_order_id = ? ORDER BY at_ms, trade_id", (client_order_id,)
        ).fetchall()
        return [
            (r["trade_id"], Decimal(r["amount"]), Decimal(r["price"]), Decimal(r["fee"]), r["fee_asset"], r["at_ms"])
            for r in rows
        ]

    def trades(self, strategy_id: str | None = None) -> list[TradeRow]:
        sql = "SELECT * FROM trades"
        args: tuple[str, ...] = ()
        if strategy_id is not None:
            sql, args = sql + " WHERE strategy_id = ?", (strategy_id,)
        rows = self._db.execute(sql + " ORDER BY candle_time, rowid", args).fetchall()
        return [
            TradeRow(
                id=r["id"],
                strategy_id=r["strategy_id"],
                portfolio_id=r["portfolio_id"],
                symbol=r["symbol"],
                side=r["side"],
                amount=Decimal(r["amount"]),
                price=Decimal(r["price"]),
                fee=Decimal(r["fee"]),
                status=r["status"],
                client_order_id=r["client_order_id"],
                exchange_order_id=r["exchange_order_id"],
                candle_time=int(r["candle_time"]),
                reason=r["reason"],
                created_at=r["created_at"],
                fee_asset=r["fee_asset"],
            )
            for r in rows
        ]

    def logs_after(self, strategy_id: str, after_rowid: int = 0, limit: int = 1000) -> list[tuple[int, LogEntry]]:
        """Log rows in insertion order after ``after_rowid`` (for ``strategy logs --follow``)."""
        rows = self._db.execute(
            "SELECT rowid, * FROM strategy_logs WHERE strategy_id = ? AND rowid > ? ORDER BY rowid LIMIT ?",
            (strategy_id, after_rowid, limit),
        ).fetchall()
        return [(int(r["rowid"]), self._log_entry(r)) for r in rows]

    def last_close(self, symbol: str, interval: str) -> tuple[int, Decimal] | None:
        """(open time, close) of the newest stored candle of a stream: what positions are marked to."""
        row = self._db.execute(
            "SELECT open_time, close FROM market_data WHERE symbol = ? AND interval = ? "
            "ORDER BY open_time DESC LIMIT 1",
            (symbol, interval),
        ).fetchone()
        return None if row is None else (int(row["open_time"]), Decimal(row["close"]))

    def recent_logs(self, strategy_id: str, *, levels: Sequence[str], limit: int = 10) -> list[LogEntry]:
        """The newest ``limit`` log rows of these levels, oldest first (``strategy show``)."""
        marks = ", ".join("?" for _ in levels)
        rows = self._db.execute(
            f"SELECT * FROM strategy_logs WHERE strategy_id = ? AND level IN ({marks}) ORDER BY rowid DESC LIMIT ?",
            (strategy_id, *levels, limit),
        ).fetchall()
        return [self._log_entry(r) for r in reversed(rows)]

    @staticmethod
    def _log_entry(r: sqlite3.Row) -> LogEntry:
        return LogEntry(
            strategy_id=r["strategy_id"],
            level=r["level"],
            message=r["message"],
            data=json.loads(r["data"]) if r["data"] else None,
            created_at=r["created_at"],
        )

    def candle_count(self, symbol: str, interval: str) -> int:
        return int(
            self._db.execute(
                "SELECT count(*) FROM market_data WHERE symbol = ? AND interval = ?", (symbol, interval)
            ).fetchone()[0]
        )

    # -- the trading path --------------------------------------------------------------------

    def apply(self, batches: Sequence[WriteBatch]) -> None:
        """Apply batches in order in one transaction; ``StoreUnavailable`` leaves nothing applied."""
        try:
            with self._tx():
                for batch in batches:
                    self._apply_one(batch)
        except sqlite3.OperationalError as exc:  # locked, disk I/O, full: all transient here
            raise StoreUnavailable(f"{self.path}: {exc}") from exc

    def _apply_one(self, b: WriteBatch) -> None:
        db = self._db
        now = utc_now()
        if b.candles:
            db.executemany(
                "INSERT INTO market_data (symbol, interval, open_time, open, high, low, close, volume) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (symbol, interval, open_time) DO UPDATE SET "
                "open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close, "
                "volume = excluded.volume",
                [
                    (
                        c.symbol,
                        c.interval,
                        c.open_time,
                        str(c.open),
                        str(c.high),
                        str(c.low),
                        str(c.close),
                        str(c.volume),
                    )
                    for c in b.candles
                ],
            )
        if b.orders:
            # Several transitions of one order in a batch are one row; the columns that describe
            # the request never change, the rest follow the order.
            db.executemany(
                "INSERT INTO orders (client_order_id, strategy_id, portfolio_id, broker, symbol, interval, side, "
                "type, leg, amount, limit_price, stop_price, reference_price, status, exchange_order_id, list_id, "
                "parent_id, filled_amount, average_price, fee, fee_asset, candle_time, reason, error, raw, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?, ?) ON CONFLICT (client_order_id) DO UPDATE SET status = excluded.status, "
                "exchange_order_id = excluded.exchange_order_id, list_id = excluded.list_id, "
                "filled_amount = excluded.filled_amount, average_price = excluded.average_price, "
                "fee = excluded.fee, fee_asset = excluded.fee_asset, error = excluded.error, raw = excluded.raw, "
                "updated_at = excluded.updated_at",
                [
                    (
                        o.client_order_id,
                        o.strategy_id,
                        o.portfolio_id,
                        o.broker,
                        o.symbol,
                        o.interval,
                        o.side,
                        o.type,
                        o.leg,
                        str(o.amount),
                        _text(o.limit_price),
                        _text(o.stop_price),
                        str(o.reference_price),
                        o.status,
                        o.exchange_order_id,
                        o.list_id,
                        o.parent_id,
                        str(o.filled_amount),
                        _text(o.average_price),
                        str(o.fee),
                        o.fee_asset,
                        o.candle_time,
                        o.reason,
                        o.error,
                        o.raw,
                        o.created_at,
                        o.updated_at,
                    )
                    for o in b.orders.values()
                ],
            )
        if b.order_fills:
            db.executemany(
                "INSERT INTO order_fills (client_order_id, trade_id, amount, price, fee, fee_asset, at_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [
                    (f.client_order_id, f.trade_id, str(f.amount), str(f.price), str(f.fee), f.fee_asset, f.at_ms)
                    for f in b.order_fills
                ],
            )
        if b.trades:
            # One row per order that filled: inserted at its first fill, its totals updated by
            # later ones (a decision re-done after a restart writes the same values again).
            db.executemany(
                "INSERT INTO trades (id, strategy_id, portfolio_id, symbol, side, amount, price, fee, status, "
                "client_order_id, exchange_order_id, candle_time, reason, created_at, fee_asset) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (client_order_id) DO UPDATE SET "
                "amount = excluded.amount, price = excluded.price, fee = excluded.fee, status = excluded.status, "
                "exchange_order_id = excluded.exchange_order_id, fee_asset = excluded.fee_asset",
                [
                    (
                        t.id,
                        t.strategy_id,
                        t.portfolio_id,
                        t.symbol,
                        t.side,
                        str(t.amount),
                        str(t.price),
                        str(t.fee),
                        t.status,
                        t.client_order_id,
                        t.exchange_order_id,
                        t.candle_time,
                        t.reason,
                        t.created_at,
                        t.fee_asset,
                    )
                    for t in b.trades
                ],
            )
        gone = [(sid,) for sid, (_, _, pos) in b.positions.items() if pos is None]
        if gone:
            db.executemany("DELETE FROM positions WHERE strategy_id = ?", gone)
        held = [
            (
                sid,
                pid,
                key.symbol,
                key.interval,
                str(pos.amount),
                str(pos.entry_price),
                pos.entry_time,
                None if pos.take_profit is None else str(pos.take_profit),
                None if pos.stop_loss is None else str(pos.stop_loss),
                now,
            )
            for sid, (pid, key, pos) in b.positions.items()
            if pos is not None
        ]
        if held:
            db.executemany(
                "INSERT INTO positions (strategy_id, portfolio_id, symbol, interval, amount, entry_price, "
                "entry_time, take_profit, stop_loss, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (strategy_id) DO UPDATE SET portfolio_id = excluded.portfolio_id, "
                "symbol = excluded.symbol, interval = excluded.interval, amount = excluded.amount, "
                "entry_price = excluded.entry_price, entry_time = excluded.entry_time, "
                "take_profit = excluded.take_profit, stop_loss = excluded.stop_loss, updated_at = excluded.updated_at",
                held,
            )
        for pid, cash in b.cash.items():
            db.execute("UPDATE portfolios SET cash = ? WHERE id = ?", (str(cash), pid))
        if b.logs:
            db.executemany(
                "INSERT INTO strategy_logs (id, strategy_id, level, message, data, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        uuid7(),
                        e.strategy_id,
                        e.level,
                        e.message,
                        None if e.data is None else _json(e.data),
                        e.created_at,
                    )
                    for e in b.logs
                ],
            )
        if b.cursors:
            # Never backwards on one stream (a re-done batch); a strategy moved to another stream
            # (strategy update --asset/--interval) starts that stream's time line afresh.
            db.executemany(
                "INSERT INTO strategy_cursors (strategy_id, symbol, interval, last_candle_time, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (strategy_id) DO UPDATE SET symbol = excluded.symbol, "
                "interval = excluded.interval, last_candle_time = CASE WHEN symbol = excluded.symbol AND "
                "interval = excluded.interval THEN max(last_candle_time, excluded.last_candle_time) "
                "ELSE excluded.last_candle_time END, updated_at = excluded.updated_at",
                [(sid, symbol, interval, open_time, now) for sid, (symbol, interval, open_time) in b.cursors.items()],
            )
        if b.strategy_runs:
            db.executemany(
                "UPDATE strategies SET last_run_at = ?, last_signal_at = coalesce(?, last_signal_at) WHERE id = ?",
                [(run_at, signal_at, sid) for sid, (run_at, signal_at) in b.strategy_runs.items()],
            )
        if b.closes_done:
            db.executemany("DELETE FROM close_requests WHERE id = ?", [(rid,) for rid in b.closes_done])
        for sid, message in b.strategy_errors.items():
            db.execute(
                "UPDATE strategies SET status = 'error', error_message = ?, updated_at = ? WHERE id = ?",
                (message, now, sid),
            )

    def checkpoint(self) -> None:
        """Copy the WAL into the database without waiting for readers (PASSIVE), then, if all of
        it was copied, start the WAL over with a one-page write.

        With ``synchronous = NORMAL`` the first commit that reuses a checkpointed WAL syncs the
        WAL header to disk. Left to the next candle's commit, that sync cost it about 1 ms (a
        quarter of a millisecond on a bare file); done here, the writer is idle. The write sets
        ``user_version`` to the value it has (the page changes, nothing else does)."""
        try:
            busy, logged, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy == 0 and logged == copied and logged > 0:
                with self._tx():
                    version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
                    self._db.execute(f"PRAGMA user_version = {version}")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"{self.path}: checkpoint failed: {exc}") from exc

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Raw read access for tests and diagnostics."""
        return cast(list[sqlite3.Row], self._db.execute(sql, args).fetchall())

    @property
    def connection(self) -> sqlite3.Connection:
        """The store's own connection (the outbox trims on it: see ``tradebotd.store.outbox``)."""
        return self._db

    def close(self) -> None:
        self._db.close()
