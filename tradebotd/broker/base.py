"""The broker seam: the engine turns decisions into :class:`OrderIntent` values and a broker
executes them. Paper trading (the default) and backtests use :class:`~tradebotd.broker.paper.PaperBroker`;
live trading will implement the same protocol with ccxt.

Money path rules every broker keeps:

* client order ids are deterministic (:func:`client_order_id`): strategy, candle and action, so a
  decision re-done after a restart can never become a second order;
* amounts and prices are ``Decimal`` here and beyond; floats stop at the strategy boundary;
* an outcome is a :class:`Fill`, or a :class:`Rejected` / :class:`Ignored` with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

from ..ids import strategy_digest
from ..model import Candle, Position, StreamKey

__all__ = [
    "Broker",
    "Fill",
    "Ignored",
    "OrderAction",
    "OrderIntent",
    "OrderOutcome",
    "Rejected",
    "client_order_id",
]

Side = Literal["buy", "sell"]
OrderAction = Literal["buy", "sell", "tp", "sl"]


def client_order_id(strategy_id: str, candle_time: int, action: OrderAction) -> str:
    """``tb-<candle open time ms>-<12 hex of sha256(strategy id)>-<action>``: at most 34 characters,
    within Binance's ``^[.A-Z:/a-z0-9_-]{1,36}$``. Time first, so ids sort by candle and the
    store's unique index on them grows at the end."""
    return f"tb-{candle_time}-{strategy_digest(strategy_id)}-{action}"


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """What a strategy's decision asks for, before any broker rule is applied."""

    client_order_id: str
    strategy_id: str
    portfolio_id: str | None
    key: StreamKey
    side: Side
    amount: Decimal | None  # None: buy the default amount / sell the whole position
    reference_price: Decimal  # close of the signal candle
    candle_time: int  # open time of the signal candle
    reason: str | None = None
    take_profit: Decimal | None = None
    stop_loss: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Fill:
    client_order_id: str
    strategy_id: str
    portfolio_id: str | None
    key: StreamKey
    side: Side
    amount: Decimal
    price: Decimal
    fee: Decimal
    candle_time: int
    reason: str | None
    position_after: Position | None
    cash_after: Decimal | None
    exchange_order_id: str | None = None
    status: str = "filled"
    notes: tuple[str, ...] = ()
    """broker remarks worth logging (e.g. an invalid take-profit level that was dropped)"""


@dataclass(frozen=True, slots=True)
class Rejected:
    """The broker refused the order (e.g. not enough cash); nothing happened."""

    client_order_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """The decision needs no order (e.g. ``sell`` while flat); nothing happened."""

    client_order_id: str
    reason: str


OrderOutcome = Fill | Rejected | Ignored


class Broker(Protocol):
    """What the engine needs from a broker."""

    def position(self, strategy_id: str) -> Position | None: ...

    async def submit(self, intent: OrderIntent) -> OrderOutcome: ...

    def on_candle(self, candle: Candle) -> list[Fill]:
        """Protective exits (take-profit / stop-loss) that this kline update triggers."""
        ...

    def protected_keys(self) -> Iterable[StreamKey]:
        """Streams the broker must keep watching for open positions' protective levels."""
        ...
