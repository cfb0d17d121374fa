"""What the exchange port speaks: frozen values with ``Decimal`` amounts and prices, and the
:class:`ExchangePort` protocol the live broker codes against.

Symbols are exchange ids (``BTCUSDT``, as ``StreamKey.symbol``); the port maps them to ccxt's
unified ``BTC/USDT``. Nothing here imports ccxt, so the engine, the paper broker and tests can use
these types without loading it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Literal, Protocol

__all__ = [
    "Balance",
    "ExchangeOrder",
    "ExchangePort",
    "ExchangeTrade",
    "MarketRules",
    "OcoRequest",
    "OrderKind",
    "OrderList",
    "OrderRef",
    "OrderState",
    "Side",
]

Side = Literal["buy", "sell"]
OrderKind = Literal["market", "limit", "stop_loss", "stop_loss_limit"]
# The exchange's view of one order. "partially_filled" is an open order with fills; "cancelled"
# and "expired" may carry fills too (``filled`` says how much).
OrderState = Literal["open", "partially_filled", "filled", "cancelled", "expired", "rejected"]

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class MarketRules:
    """One spot market's trading rules, exact (Binance: from the symbol's filters)."""

    symbol: str  # exchange id, e.g. BTCUSDT
    base: str
    quote: str
    status: str  # the exchange's word: TRADING, BREAK, HALT, ...
    trading: bool
    amount_step: Decimal
    min_amount: Decimal
    max_amount: Decimal | None
    price_tick: Decimal
    min_price: Decimal | None
    max_price: Decimal | None
    min_notional: Decimal | None
    max_notional: Decimal | None = None
    min_notional_for_market: bool = True  # Binance NOTIONAL.applyMinToMarket
    order_types: frozenset[str] = frozenset()  # the exchange's names: MARKET, LIMIT, STOP_LOSS_LIMIT, ...
    oco: bool = False

    def round_amount(self, amount: Decimal) -> Decimal:
        """Down to the step: never more than asked (an exit never exceeds the balance). The
        result has the step's decimals (0.00012 for a step of 0.00001000)."""
        return _on_grid(amount, self.amount_step, ROUND_DOWN)

    def round_price(self, price: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
        """To the tick; pass ``ROUND_DOWN``/``ROUND_UP`` when the direction matters."""
        return _on_grid(price, self.price_tick, rounding)

    def refusal(self, amount: Decimal, price: Decimal, *, market: bool) -> str | None:
        """Why an order of ``amount`` at ``price`` (a market order: the reference price) would be
        refused by the exchange's filters, or None. Checks the values as given (round first)."""
        if not self.trading:
            return f"{self.symbol} is not trading (status {self.status})"
        if amount <= _ZERO or amount % self.amount_step:
            return f"amount {_show(amount)} is not a positive multiple of the step {_show(self.amount_step)}"
        if amount < self.min_amount:
            return f"amount {_show(amount)} is below the minimum {_show(self.min_amount)}"
        if self.max_amount is not None and amount > self.max_amount:
            return f"amount {_show(amount)} is above the maximum {_show(self.max_amount)}"
        if not market:
            if price % self.price_tick:
                return f"price {_show(price)} is not on the tick {_show(self.price_tick)}"
            if self.min_price is not None and price < self.min_price:
                return f"price {_show(price)} is below the minimum {_show(self.min_price)}"
            if self.max_price is not None and price > self.max_price:
                return f"price {_show(price)} is above the maximum {_show(self.max_price)}"
        notional = amount * price
        if (
            self.min_notional is not None
            and notional < self.min_notional
            and (self.min_notional_for_market or not market)
        ):
            return f"notional {_show(notional)} {self.quote} is below the minimum {_show(self.min_notional)}"
        if self.max_notional is not None and notional > self.max_notional and not market:
            return f"notional {_show(notional)} {self.quote} is above the maximum {_show(self.max_notional)}"
        return None


def _on_grid(value: Decimal, step: Decimal, rounding: str) -> Decimal:
    """``value`` on a multiple of ``step``, written with the step's significant decimals."""
    exponent = step.normalize().as_tuple().exponent
    places = Decimal(1).scaleb(min(exponent, 0) if isinstance(exponent, int) else 0)
    return ((value / step).to_integral_value(rounding=rounding) * step).quantize(places)


def _show(value: Decimal) -> str:
    """A number for a message: ``5``, not ``5.00000000``."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True, slots=True)
class ExchangeTrade:
    """One fill. ``trade_id`` is unique per symbol on the exchange: with the order id it keys the
    idempotent application of fills."""

    symbol: str
    trade_id: str
    order_id: str
    side: Side | None  # None when the exchange's answer does not say (Binance order fills)
    amount: Decimal
    price: Decimal
    fee: Decimal
    fee_asset: str | None
    at_ms: int | None  # None for the fills of a new-order answer (the order's time applies)
    maker: bool | None = None


@dataclass(frozen=True, slots=True)
class ExchangeOrder:
    """One order as the exchange reports it."""

    symbol: str
    exchange_order_id: str
    client_order_id: str
    side: Side
    type: str  # the exchange's type, lower case: market, limit, limit_maker, stop_loss, stop_loss_limit, ...
    state: OrderState
    amount: Decimal
    filled: Decimal
    cost: Decimal  # quote spent or received so far
    average: Decimal | None
    price: Decimal | None  # the limit price, if any
    stop_price: Decimal | None
    list_id: str | None  # the order list (OCO) it belongs to
    created_ms: int | None  # None until a stop triggers (Binance workingTime -1), or when unknown
    updated_ms: int | None
    trades: tuple[ExchangeTrade, ...] = ()  # fills carried by the answer itself (new-order FULL)
    raw: Mapping[str, object] = field(default_factory=dict, compare=False)  # the exchange's JSON

    @property
    def is_open(self) -> bool:
        return self.state in ("open", "partially_filled")

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.filled


@dataclass(frozen=True, slots=True)
class OrderRef:
    """An order list's member as the list reports it (ids only)."""

    exchange_order_id: str
    client_order_id: str


@dataclass(frozen=True, slots=True)
class OrderList:
    """An OCO pair. ``orders`` holds the legs' full state when the answer carried it (placing and
    cancelling do; Binance's list queries carry only ``legs``)."""

    symbol: str
    list_id: str
    list_client_order_id: str
    is_open: bool  # Binance listOrderStatus EXECUTING
    status: str  # the exchange's words, e.g. "EXEC_STARTED/EXECUTING", "ALL_DONE/ALL_DONE"
    legs: tuple[OrderRef, ...]
    orders: tuple[ExchangeOrder, ...] = ()
    raw: Mapping[str, object] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class OcoRequest:
    """A take-profit / stop-loss pair that cancels itself when either leg acts (Binance OCO).

    Selling (protecting a long): a LIMIT_MAKER at ``take_profit`` above the market and a
    ``STOP_LOSS`` at ``stop_price`` below it, or ``STOP_LOSS_LIMIT`` with ``stop_limit_price``
    (a limit leg may rest unfilled if the price gaps through it; the market variant fills)."""

    symbol: str
    side: Side
    amount: Decimal
    take_profit: Decimal
    stop_price: Decimal
    list_client_order_id: str
    tp_client_order_id: str
    sl_client_order_id: str
    stop_limit_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Balance:
    asset: str
    free: Decimal
    locked: Decimal

    @property
    def total(self) -> Decimal:
        return self.free + self.locked


class ExchangePort(Protocol):
    """What the live broker needs from an exchange. Every method raises only the errors of
    ``tradebotd.exchange.errors``; amounts and prices are ``Decimal`` in and out.

    Contract (the live broker relies on it):

    - ``create_order`` / ``create_oco`` round amounts down to the step and prices to the tick and
      send those exact digits; the answer's ``amount`` is what was sent. A timeout, lost
      connection or 5xx after sending raises ``Ambiguous``: the order may exist, so ask
      ``fetch_order`` / ``fetch_oco`` by client id, never send again.
    - Client order ids are the caller's (``tb-...``), on every order and OCO leg.
    - Nothing is sent while the account's request budget says wait (``RateLimited``/``Banned``).
    """

    id: str

    async def load_markets(self, *, reload: bool = False) -> Mapping[str, MarketRules]: ...

    def rules(self, symbol: str) -> MarketRules:
        """From the last ``load_markets``; ``BadSymbol`` when the exchange has no such spot market."""
        ...

    async def server_time(self) -> int: ...

    async def create_order(
        self,
        symbol: str,
        side: Side,
        kind: OrderKind,
        amount: Decimal,
        *,
        client_order_id: str,
        price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> ExchangeOrder: ...

    async def fetch_order(self, symbol: str, client_order_id: str) -> ExchangeOrder: ...

    async def cancel_order(self, symbol: str, client_order_id: str) -> ExchangeOrder: ...

    async def open_orders(self, symbol: str | None = None) -> Sequence[ExchangeOrder]: ...

    async def create_oco(self, request: OcoRequest) -> OrderList: ...

    async def cancel_oco(self, symbol: str, list_client_order_id: str) -> OrderList: ...

    async def fetch_oco(self, list_client_order_id: str) -> OrderList: ...

    async def open_ocos(self) -> Sequence[OrderList]: ...

    async def balances(self) -> Mapping[str, Balance]: ...

    async def my_trades(
        self,
        symbol: str,
        *,
        from_id: str | None = None,
        since_ms: int | None = None,
        limit: int = 1000,
        order_id: str | None = None,
    ) -> Sequence[ExchangeTrade]:
        """Fills oldest first: with ``order_id`` that order's; else from trade id ``from_id``
        (inclusive), else from ``since_ms``, else the most recent ``limit``. Binance answers a
        ``since_ms`` with at most the 24 hours that follow it, so catching up over a longer gap
        pages by ``from_id`` (the last trade id + 1) until a page is shorter than ``limit``."""
        ...

    async def close(self) -> None: ...
