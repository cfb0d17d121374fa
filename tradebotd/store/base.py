"""The store seam: what the daemon reads and writes, independent of SQLite or Supabase.

Tables and column names follow the web app's Supabase schema (``strategies``, ``strategy_logs``,
``market_data``, ``trades``, ``portfolios``); the embedded store adds daemon-owned tables
(``positions``, ``strategy_cursors``) that hold what a restart needs.

The trading path never writes directly: it builds a :class:`WriteBatch` per candle and hands it
to the :class:`~tradebotd.store.writer.StoreWriter`, which applies batches in order, each in one
transaction. A crash therefore loses at most a suffix of batches, and because a batch carries the
candle cursor together with the trades it caused, a lost batch is simply re-done after restart
with the same deterministic client order ids.

Errors: ``tradebotd.errors.StoreError`` and its subclasses

    StoreError
    ├── StoreUnavailable     transient (locked, disk full, I/O): retry later, lose nothing
    └── NotFound             no row with that id (or an ambiguous id prefix)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

from ..errors import StoreError
from ..model import Candle, Position, StreamKey
from ..orders.model import Filled, OrderRecord

__all__ = [
    "CloseRequest",
    "LogLevel",
    "NotFound",
    "PortfolioRow",
    "Store",
    "StoreUnavailable",
    "StrategyRow",
    "StrategyStatus",
    "TradeRow",
    "WriteBatch",
]

StrategyStatus = Literal["draft", "running", "paused", "error", "archived"]
StrategyKind = Literal["js", "ts", "wasm"]
LogLevel = Literal["info", "signal", "trade", "error"]


class StoreUnavailable(StoreError):
    """The store cannot take the write right now; retrying later is safe."""


class NotFound(StoreError):
    """No such row."""


@dataclass(frozen=True, slots=True)
class StrategyRow:
    id: str
    user_id: str
    name: str
    python_code: str | None
    typescript_code: str | None
    asset: str
    interval: str
    status: StrategyStatus
    portfolio_id: str | None
    parameters: Mapping[str, Any]
    last_run_at: str | None
    last_signal_at: str | None
    error_message: str | None
    created_at: str
    updated_at: str
    kind: StrategyKind = "js"

    @property
    def source(self) -> str:
        """The code the daemon runs (JS/TS live in ``typescript_code``, as the web app stores them)."""
        return self.typescript_code or ""


@dataclass(frozen=True, slots=True)
class PortfolioRow:
    id: str
    user_id: str
    name: str
    type: Literal["paper", "live"]
    cash: Decimal
    currency: str
    created_at: str


@dataclass(frozen=True, slots=True)
class TradeRow:
    id: str
    strategy_id: str
    portfolio_id: str | None
    symbol: str
    side: Literal["buy", "sell"]
    amount: Decimal
    price: Decimal
    fee: Decimal
    status: str
    client_order_id: str
    exchange_order_id: str | None
    candle_time: int
    reason: str | None
    created_at: str
    fee_asset: str | None = None


@dataclass(frozen=True, slots=True)
class LogEntry:
    strategy_id: str
    level: LogLevel
    message: str
    data: Mapping[str, Any] | None
    created_at: str


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """A pending request to close a strategy's position (``close_requests``): the daemon sells
    it through the normal order path at the next fresh price of ``key`` and deletes the row in
    the sell's batch (``WriteBatch.closes_done``)."""

    id: int
    strategy_id: str
    portfolio_id: str | None
    key: StreamKey
    reason: str
    requested_at: str


@dataclass(slots=True)
class WriteBatch:
    """Everything one candle (or one control-plane event) changes, applied atomically."""

    logs: list[LogEntry] = field(default_factory=list)
    trades: list[TradeRow] = field(default_factory=list)
    """one row per order that filled; a later fill of the same order updates it (its totals)"""
    orders: dict[str, OrderRecord] = field(default_factory=dict)
    """client order id -> the order as it is after this batch (several transitions, one write)"""
    order_fills: list[Filled] = field(default_factory=list)
    """fills applied in this batch (``order_fills`` rows, unique by client order id and trade id)"""
    positions: dict[str, tuple[str | None, StreamKey, Position | None]] = field(default_factory=dict)
    """strategy id -> (portfolio id, stream the position is watched on, position or None when flat)"""
    cash: dict[str, Decimal] = field(default_factory=dict)
    """portfolio id -> cash after this batch"""
    cursors: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    """strategy id -> (symbol, interval, open time of the last evaluated candle)"""
    strategy_runs: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """strategy id -> (last_run_at, last_signal_at or None to keep)"""
    strategy_errors: dict[str, str] = field(default_factory=dict)
    """strategy id -> error message; sets status 'error'"""
    candles: list[Candle] = field(default_factory=list)
    closes_done: list[int] = field(default_factory=list)
    """close request ids carried out (or found moot) by this batch: deleted with it"""
    enqueued_ns: int = 0
    """monotonic time at which the batch's triggering message arrived (for latency metrics)"""
    on_durable: Callable[[], None] | None = None
    """called by the writer once the batch is committed (the engine waits on it before sending an
    order to a broker with durable intents); None costs nothing"""

    def __bool__(self) -> bool:
        return bool(
            self.logs
            or self.trades
            or self.orders
            or self.order_fills
            or self.positions
            or self.cash
            or self.cursors
            or self.strategy_runs
            or self.strategy_errors
            or self.candles
            or self.closes_done
        )


class Store(Protocol):
    """What the daemon needs from a store. The embedded SQLite store is the default."""

    # control plane -----------------------------------------------------------------------
    def running_strategies(self) -> list[StrategyRow]: ...

    def get_strategy(self, strategy_id: str) -> StrategyRow: ...

    def cursors(self) -> dict[str, int]: ...

    def portfolios(self) -> list[PortfolioRow]: ...

    def positions(self) -> dict[str, tuple[str | None, StreamKey, Position]]: ...

    def close_requests(self) -> list[CloseRequest]: ...

    def active_orders(self) -> list[tuple[OrderRecord, list[str]]]:
        """Orders not yet filled, cancelled or rejected, each with the trade ids of its fills."""
        ...

    # trading path (called by the writer only) ---------------------------------------------
    def apply(self, batches: Sequence[WriteBatch]) -> None: ...

    def checkpoint(self) -> None:
        """Housekeeping the writer runs while idle (SQLite: fold the WAL into the database)."""
        ...

    def close(self) -> None: ...
