"""Orders as values: the commands a broker takes and the events it gives back.

Nothing here does I/O or reads a clock: times are passed in (``at_ms``, exchange or candle time in
ms; ``now`` ISO text for rows). Every value is immutable; money and quantities are ``Decimal``.

Why ``NamedTuple`` rather than frozen dataclasses for the commands, results, events and records:
an order builds about eight of them, and a backtest thousands of orders. Building a frozen
dataclass costs CPython 3.11 one ``object.__setattr__`` per field (1.9 µs for ten fields,
measured), a NamedTuple one tuple (0.3 µs); both are immutable and typed. Compare them only with
values of their own type (a tuple compares equal to any tuple with the same items).

The seam (see DESIGN.md §1 and :mod:`tradebotd.broker.base`):

* **commands** go to a broker: an :class:`OrderRequest` (``submit``), a :class:`ProtectRequest`
  (``protect``: take-profit / stop-loss for a filled entry), a cancel by client order id;
* ``submit`` and ``protect`` answer exactly one :data:`SubmitResult`: :class:`Accepted`,
  :class:`Rejected` (definitive: nothing was placed) or :class:`Unknown` (ambiguous: the request
  may have reached the exchange; resolved by asking it, never by sending again);
* **events** (:data:`BrokerEvent`) come back through the broker's inbox, in arrival order:
  :class:`Filled` (partial or complete; one per exchange trade, keyed by order and trade id),
  :class:`Cancelled`, :class:`Expired`, :class:`Rejected`, and :class:`Accepted` when an answer
  arrives late (reconciliation of an ``unknown`` order, the legs of a protection list).

:class:`OrderRecord` is a row of the ``orders`` table; :class:`MarketRules` are what the exchange
allows on a market (precision and minimums), used to validate a decision before anything is sent.

Errors::

    TradebotdError
    └── MarketUnavailable     a broker has no such market (``Broker.rules``): refuse, per strategy
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Literal, NamedTuple

from ..errors import TradebotdError
from ..ids import strategy_digest
from ..model import StreamKey

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "Accepted",
    "BrokerEvent",
    "Cancelled",
    "Expired",
    "Filled",
    "MarketRules",
    "MarketUnavailable",
    "OrderAction",
    "OrderIntent",
    "OrderLeg",
    "OrderRecord",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "ProtectRequest",
    "RecordType",
    "Rejected",
    "Side",
    "SubmitResult",
    "Unknown",
    "client_order_id",
    "quantum",
    "round_step",
]

OrderStatus = Literal["new", "pending", "open", "partially_filled", "filled", "cancelled", "rejected", "unknown"]
OrderLeg = Literal["entry", "exit", "tp", "sl"]
OrderType = Literal["market", "limit"]
"""What a strategy can ask for."""
RecordType = Literal["market", "limit", "take_profit", "stop_loss"]
"""``orders.type``: a request's type, or the kind of protective leg."""
Side = Literal["buy", "sell"]
OrderAction = Literal["buy", "sell", "tp", "sl", "oco"]

TERMINAL: frozenset[str] = frozenset(("filled", "cancelled", "rejected"))
"""No transition leaves these (a late fill still counts: see :mod:`tradebotd.orders.state`)."""
ACTIVE: frozenset[str] = frozenset(("new", "pending", "open", "partially_filled", "unknown"))


def client_order_id(strategy_id: str, candle_time: int, action: OrderAction, attempt: int = 1) -> str:
    """``tb-<candle open time ms>-<12 hex of sha256(strategy id)>-<action>``: at most 34 characters,
    within Binance's ``^[.A-Z:/a-z0-9_-]{1,36}$``. Time first, so ids sort by candle and the
    store's unique index on them grows at the end. The candle is the one whose decision placed
    the order, so a decision re-done after a restart gets the same id and can never trade twice.

    A protective order placed again on the same candle (``attempt`` 2 to 9) gets ``-p<attempt>``,
    so every id names exactly one exchange order (36 characters at most)."""
    base = f"tb-{candle_time}-{strategy_digest(strategy_id)}-{action}"
    if attempt == 1:
        return base
    if not 2 <= attempt <= 9 or action not in ("tp", "sl", "oco"):
        raise ValueError(f"only a protective order (tp, sl, oco) is placed again, at most 9 times: {action} {attempt}")
    return f"{base}-p{attempt}"


class MarketUnavailable(TradebotdError):
    """The broker has no such market (or cannot tell yet): the strategy cannot trade it."""


def quantum(step: Decimal) -> Decimal:
    """The exponent a value on ``step``'s grid is written with: the step's significant decimals
    (Binance writes a step of 0.00001 as ``"0.00001000"``; an amount on it has 5 decimals), and
    no fewer than units (a step of 10 still writes ``120``, not ``1.2E+2``)."""
    exponent = step.normalize().as_tuple().exponent
    return Decimal(1).scaleb(exponent) if isinstance(exponent, int) and exponent < 0 else Decimal(1)


def round_step(value: Decimal, step: Decimal, rounding: str = ROUND_DOWN) -> Decimal:
    """``value`` rounded to a multiple of ``step`` (written as :func:`quantum` says).

    A value already on the step is returned as it is, so a price like ``110.0`` keeps its form
    on an 8-decimal tick (paper fills record levels exactly as the strategy gave them)."""
    if value % step == 0:
        return value
    return ((value / step).to_integral_value(rounding=rounding) * step).quantize(quantum(step))


@dataclass(frozen=True, slots=True)
class MarketRules:
    """What an exchange accepts on one market (Binance: ``LOT_SIZE``, ``PRICE_FILTER``,
    ``NOTIONAL`` / ``MIN_NOTIONAL`` and the symbol's status)."""

    symbol: str
    base_asset: str
    quote_asset: str
    amount_step: Decimal  # quantities are multiples of this (rounded down)
    price_tick: Decimal  # prices are multiples of this
    min_amount: Decimal = Decimal(0)
    min_notional: Decimal = Decimal(0)  # amount x price, in the quote asset
    max_amount: Decimal | None = None
    trading: bool = True  # False: the market exists but takes no orders (halted, break, delisted)
    native_protection: bool = True  # the exchange holds take-profit / stop-loss orders itself
    _quantum: Decimal = field(init=False, repr=False, compare=False, default=Decimal(1))
    _power_of_ten: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        step = self.amount_step.normalize()
        object.__setattr__(self, "_quantum", quantum(step))
        object.__setattr__(self, "_power_of_ten", step.as_tuple().digits == (1,) and step <= 1)

    def amount(self, value: Decimal) -> Decimal:
        """``value`` rounded down to the quantity step, with the step's decimals. A power-of-ten
        step of at most 1 (nearly every market) takes one ``quantize``: this is on every order's
        path."""
        if self._power_of_ten:
            return value.quantize(self._quantum, rounding=ROUND_DOWN)
        step = self.amount_step
        return ((value / step).to_integral_value(rounding=ROUND_DOWN) * step).quantize(self._quantum)


class OrderIntent(NamedTuple):
    """What a strategy's decision asks for, before any market rule is applied (floats have
    become exact decimals). ``amount`` None: the default amount to buy, the whole position to sell."""

    client_order_id: str
    strategy_id: str
    portfolio_id: str | None
    key: StreamKey
    side: Side
    amount: Decimal | None
    reference_price: Decimal  # close of the signal candle
    candle_time: int  # open time of the signal candle
    reason: str | None = None
    take_profit: Decimal | None = None
    stop_loss: Decimal | None = None
    type: OrderType = "market"
    limit_price: Decimal | None = None


class OrderRequest(NamedTuple):
    """A validated order, ready for ``Broker.submit``: amount and prices on the market's steps,
    above its minimums. Recorded (``orders`` row, status ``new``) before it is sent."""

    client_order_id: str
    strategy_id: str
    portfolio_id: str | None
    key: StreamKey
    side: Side
    type: OrderType
    leg: OrderLeg  # "entry" (buy) or "exit" (sell)
    amount: Decimal  # base quantity, as sent
    limit_price: Decimal | None  # limit orders only
    reference_price: Decimal  # close of the signal candle
    candle_time: int
    reason: str | None
    take_profit: Decimal | None  # levels to protect the filled entry with
    stop_loss: Decimal | None


class ProtectRequest(NamedTuple):
    """Take-profit and/or stop-loss for an open position, as one list: with both levels an OCO
    (one leg filling cancels the other), with one level a single conditional order. Sells
    ``amount`` at the level touched."""

    list_client_order_id: str
    tp_client_order_id: str | None
    sl_client_order_id: str | None
    strategy_id: str
    portfolio_id: str | None
    key: StreamKey
    amount: Decimal
    take_profit: Decimal | None
    stop_loss: Decimal | None
    candle_time: int  # the candle on which it was decided; legs watch only later candles
    parent_id: str | None = None  # the entry order whose fill this protects
    replaces: str | None = None
    """a leg of the protection this one replaces; the engine has cancelled it (and seen the
    cancel) before sending this, so a broker never holds two lists for one position"""


class Accepted(NamedTuple):
    """The exchange holds the order (or list): it is open, or already filled (fills follow as
    events). ``amount`` is the quantity as sent, after rounding."""

    client_order_id: str
    exchange_order_id: str
    at_ms: int
    amount: Decimal
    raw: str | None = None  # the exchange's answer (JSON), stored in ``orders.raw``


class Rejected(NamedTuple):
    """Definitive: the exchange did not take the order, nothing was placed (as a submit result:
    e.g. insufficient balance; as an event: reconciliation found the exchange never saw it)."""

    client_order_id: str
    reason: str
    code: str | None
    at_ms: int
    raw: str | None = None


class Unknown(NamedTuple):
    """Ambiguous: the request may have reached the exchange (timeout, connection error or 5xx
    after sending). The order stays ``unknown`` until the exchange is asked about it."""

    client_order_id: str
    reason: str
    at_ms: int
    raw: str | None = None


class Filled(NamedTuple):
    """One trade of an order. ``complete``: the exchange reports the order fully filled.
    (``client_order_id``, ``trade_id``) is applied once, however often it is reported."""

    client_order_id: str
    exchange_order_id: str
    trade_id: str
    amount: Decimal  # base quantity of this trade
    price: Decimal
    fee: Decimal
    fee_asset: str | None
    at_ms: int
    complete: bool
    raw: str | None = None


class Cancelled(NamedTuple):
    """The order is no longer on the exchange (cancelled by us, by the exchange, or the other
    leg of its OCO list filled). Fills before it stand."""

    client_order_id: str
    reason: str
    at_ms: int
    raw: str | None = None


class Expired(NamedTuple):
    """The exchange expired the order (time in force, self-trade prevention); like a cancel."""

    client_order_id: str
    reason: str
    at_ms: int
    raw: str | None = None


SubmitResult = Accepted | Rejected | Unknown
BrokerEvent = Accepted | Rejected | Filled | Cancelled | Expired


class OrderRecord(NamedTuple):
    """One row of the ``orders`` table (SQLite migration 4; Supabase mirrors it)."""

    client_order_id: str
    strategy_id: str
    portfolio_id: str | None
    broker: str  # "paper" or the exchange id ("binance")
    symbol: str
    interval: str
    side: Side
    type: RecordType
    leg: OrderLeg
    amount: Decimal  # requested base quantity
    limit_price: Decimal | None
    stop_price: Decimal | None
    reference_price: Decimal  # close of the signal candle
    status: OrderStatus
    exchange_order_id: str | None
    list_id: str | None  # exchange order list id (OCO), if any
    parent_id: str | None  # the entry order a protective leg protects
    filled_amount: Decimal
    average_price: Decimal | None
    fee: Decimal
    fee_asset: str | None
    candle_time: int
    reason: str | None
    error: str | None  # last rejection / problem, human-readable
    raw: str | None  # last raw exchange answer (JSON), never secrets
    created_at: str
    updated_at: str

    @property
    def key(self) -> StreamKey:
        return StreamKey(self.symbol, self.interval)
