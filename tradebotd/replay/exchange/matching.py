"""The stand-in's account and matching engine, sans-I/O: balances, orders, OCO lists, trades, and a
price driver. No clock of its own (``clock`` is passed in), no requests, no JSON.

There is no order book: the market is one price per symbol, moved by ``set_price`` (the replay's
kline updates, or a test). What happens at each move, following Binance's spot rules:

* ``MARKET`` fills at once at the current price (taker). With ``quoteOrderQty`` the quantity is
  the quote amount divided by the price, rounded down to the step size.
* ``LIMIT`` fills at once at the current price when marketable (taker), otherwise rests and fills
  at its limit price when the price reaches it (maker). ``IOC``/``FOK`` that cannot fill expire.
  ``LIMIT_MAKER`` that would be marketable is refused ("Order would immediately match and take.").
* ``STOP_LOSS[_LIMIT]`` / ``TAKE_PROFIT[_LIMIT]`` trigger when the price crosses ``stopPrice``
  (a sell stop-loss at or below, a sell take-profit at or above; the reverse for buys); one that
  would trigger at once is refused ("Order would trigger immediately."). Until then
  ``workingTime`` is -1. Market variants then fill at the current price, limit variants become a
  limit order at ``price``.
* OCO: two legs sharing one lock on the funds. When a leg triggers or starts to fill, the other is
  expired (status ``EXPIRED``, as Binance reports it); the list is ``ALL_DONE`` once both legs are
  final. Cancelling a leg cancels the list.
* Fees: ``fee_rate`` of every fill, in the asset received (Binance's default without BNB: base
  on buys, quote on sells) or always in the quote asset (``fee_mode="quote"``).
* The partial-fill fault (``arm_partial_fill``): the next order placed fills in slices. A
  resting order fills one slice per price update; a market order fills one slice and the rest
  expires (Binance: "MARKET orders that partially fill" end ``EXPIRED``).

Business refusals raise :class:`Refusal` with Binance's code and message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_UP, Decimal
from typing import Literal

from tradebotd.replay.exchange.spec import SymbolSpec, filter_failure

__all__ = ["Account", "FeeMode", "Lock", "NewOcoLeg", "NewOrder", "Order", "OrderList", "Refusal", "Trade"]

FeeMode = Literal["received", "quote"]
ZERO = Decimal(0)
_EIGHT = Decimal("0.00000001")
_STOPS = frozenset({"STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"})
_MARKET_LIKE = frozenset({"MARKET", "STOP_LOSS", "TAKE_PROFIT"})
OPEN_STATUSES = frozenset({"NEW", "PARTIALLY_FILLED"})

INSUFFICIENT = "Account has insufficient balance for requested action."


class Refusal(Exception):
    """A request the exchange refuses: Binance's ``code`` and ``msg``, and the HTTP status."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg
        self.status = status


@dataclass(eq=False)
class Lock:
    """Funds an order (or both legs of an OCO) holds."""

    asset: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Trade:
    id: int
    symbol: str
    order_id: int
    order_list_id: int
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    commission: Decimal
    commission_asset: str
    time: int
    is_buyer: bool
    is_maker: bool


@dataclass(eq=False)
class Order:
    symbol: str
    order_id: int
    client_order_id: str
    side: str  # BUY | SELL
    type: str
    quantity: Decimal
    price: Decimal  # 0 when the type has none
    stop_price: Decimal  # 0 when the type has none
    time_in_force: str | None
    time: int
    update_time: int
    working_time: int  # -1 until a stop order triggers
    orig_quote_qty: Decimal = ZERO
    order_list_id: int = -1
    status: str = "NEW"
    executed: Decimal = ZERO
    cum_quote: Decimal = ZERO
    triggered: bool = False
    resting: bool = False  # reached the book unfilled: later fills are at the limit price (maker)
    slices: int = 0  # partial-fill fault: remaining slices
    lock: Lock | None = None
    fills: list[Trade] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.executed

    @property
    def is_stop(self) -> bool:
        return self.type in _STOPS


@dataclass(eq=False)
class OrderList:
    order_list_id: int
    list_client_order_id: str
    symbol: str
    orders: list[Order]  # below leg first, as Binance lists them
    transaction_time: int
    list_status_type: str = "EXEC_STARTED"
    list_order_status: str = "EXECUTING"

    @property
    def is_open(self) -> bool:
        return self.list_order_status == "EXECUTING"


@dataclass(frozen=True, slots=True)
class NewOrder:
    symbol: str
    side: str
    type: str
    client_order_id: str
    quantity: Decimal | None = None
    quote_order_qty: Decimal | None = None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: str | None = None


@dataclass(frozen=True, slots=True)
class NewOcoLeg:
    type: str
    client_order_id: str
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: str | None = None


class Account:
    """One spot account on a set of symbols. ``clock()`` is the exchange's time in ms."""

    def __init__(
        self,
        specs: Sequence[SymbolSpec],
        *,
        balances: Mapping[str, Decimal],
        clock: Callable[[], int],
        fee_rate: Decimal = Decimal("0.001"),
        fee_mode: FeeMode = "received",
        prices: Mapping[str, Decimal] | None = None,
    ) -> None:
        self.specs = {spec.symbol: spec for spec in specs}
        self.free: dict[str, Decimal] = {}
        self.locked: dict[str, Decimal] = {}
        for spec in specs:
            for asset in (spec.base, spec.quote):
                self.free.setdefault(asset, ZERO)
                self.locked.setdefault(asset, ZERO)
        for asset, amount in balances.items():
            self.free[asset] = amount
            self.locked.setdefault(asset, ZERO)
        self.prices: dict[str, Decimal] = dict(prices or {})
        self.fee_rate = fee_rate
        self.fee_mode: FeeMode = fee_mode
        self._clock = clock
        self.orders: dict[str, list[Order]] = {symbol: [] for symbol in self.specs}  # by symbol, oldest first
        # The orders of each symbol that may still be open (oldest first; the closed ones are
        # dropped as they are met): what matching and the open-order checks look through, so a
        # long run's thousands of filled orders do not slow every request down.
        self._live: dict[str, list[Order]] = {symbol: [] for symbol in self.specs}
        self.lists: list[OrderList] = []
        self.trades: dict[str, list[Trade]] = {symbol: [] for symbol in self.specs}
        self._next_order_id = 1
        self._next_list_id = 1
        self._next_trade_id = 1
        self._partial_slices = 0
        self.update_time = clock()

    # -- queries ---------------------------------------------------------------------------------

    def spec(self, symbol: str) -> SymbolSpec:
        try:
            return self.specs[symbol]
        except KeyError:
            raise Refusal(-1121, "Invalid symbol.") from None

    def find_order(self, symbol: str, *, order_id: int | None, client_order_id: str | None) -> Order | None:
        """By id, or the newest order with that client id (ids may be reused once final)."""
        for order in reversed(self.orders[self.spec(symbol).symbol]):
            if order_id is not None and order.order_id != order_id:
                continue
            if client_order_id is not None and order.client_order_id != client_order_id:
                continue
            return order
        return None

    def find_list(self, *, order_list_id: int | None, list_client_order_id: str | None) -> OrderList | None:
        for order_list in reversed(self.lists):
            if order_list_id is not None and order_list.order_list_id != order_list_id:
                continue
            if list_client_order_id is not None and order_list.list_client_order_id != list_client_order_id:
                continue
            return order_list
        return None

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        symbols = [self.spec(symbol).symbol] if symbol is not None else list(self.orders)
        return [order for s in symbols for order in self._open(s)]

    def _open(self, symbol: str) -> list[Order]:
        """The open orders of ``symbol``, oldest first (pruning the live list)."""
        live = self._live[symbol]
        if any(not order.is_open for order in live):
            live[:] = [order for order in live if order.is_open]
        return live

    # -- commands --------------------------------------------------------------------------------

    def arm_partial_fill(self, slices: int) -> None:
        """The next order placed fills in ``slices`` parts (see the module docstring)."""
        if slices < 2:
            raise ValueError("a partial fill needs at least 2 slices")
        self._partial_slices = slices

    def place(self, new: NewOrder) -> Order:
        """Accept ``new`` (already validated for shape) or raise :class:`Refusal`."""
        spec = self.spec(new.symbol)
        if not spec.trading:
            raise Refusal(-2010, "Market is closed.")
        self._check_client_id(new.symbol, new.client_order_id)
        price = self.prices.get(new.symbol)
        now = self._clock()
        quantity = new.quantity
        if new.type == "MARKET" and quantity is None:
            assert new.quote_order_qty is not None
            if price is None:
                raise Refusal(-2010, "Order book liquidity is less than symbol minimum quantity.")
            quantity = (new.quote_order_qty / price).quantize(spec.step_size, rounding=ROUND_DOWN)
        assert quantity is not None
        self._check_filters(spec, new.type, quantity, new.price, new.stop_price, price)
        if new.type == "MARKET" and price is None:
            raise Refusal(-2010, "Order book liquidity is less than symbol minimum quantity.")
        if new.type == "LIMIT_MAKER" and price is not None and _marketable(new.side, new.price, price):
            raise Refusal(-2010, "Order would immediately match and take.")
        if new.type in _STOPS and price is not None and _triggers(new.side, new.type, new.stop_price, price):
            raise Refusal(-2010, "Order would trigger immediately.")
        lock = self._reserve(spec, new.side, new.type, quantity, new.price, price)
        order = Order(
            symbol=new.symbol,
            order_id=self._take_order_id(),
            client_order_id=new.client_order_id,
            side=new.side,
            type=new.type,
            quantity=quantity,
            price=new.price or ZERO,
            stop_price=new.stop_price or ZERO,
            time_in_force=new.time_in_force,
            time=now,
            update_time=now,
            working_time=-1 if new.type in _STOPS else now,
            orig_quote_qty=new.quote_order_qty or ZERO,
            lock=lock,
            slices=self._take_slices(),
        )
        self.orders[new.symbol].append(order)
        self._live[new.symbol].append(order)
        self._on_placed(order, price)
        return order

    def place_oco(
        self,
        symbol: str,
        side: str,
        quantity: Decimal,
        list_client_order_id: str,
        above: NewOcoLeg,
        below: NewOcoLeg,
    ) -> OrderList:
        """Accept an OCO pair (``POST /api/v3/orderList/oco``) or raise :class:`Refusal`."""
        spec = self.spec(symbol)
        if not spec.trading:
            raise Refusal(-2010, "Market is closed.")
        if not spec.oco_allowed:
            raise Refusal(-2010, "OCO orders are not supported for this symbol")
        _check_oco_types(side, above.type, below.type)
        if any(ol.is_open and ol.list_client_order_id == list_client_order_id for ol in self.lists):
            raise Refusal(-2010, "Duplicate order sent.")
        if above.client_order_id == below.client_order_id:
            raise Refusal(-2010, "Duplicate order sent.")
        for leg in (above, below):
            self._check_client_id(symbol, leg.client_order_id)
        price = self.prices.get(symbol)
        for leg in (above, below):
            self._check_filters(spec, leg.type, quantity, leg.price, leg.stop_price, price)
        if price is None or not _oco_prices_ok(side, above, below, price):
            raise Refusal(-2010, "The relationship of the prices for the orders is not correct.")
        # One lock for both legs: only one of them can ever execute.
        lock_price = max((leg.price or leg.stop_price or ZERO) for leg in (above, below))
        lock = self._reserve(spec, side, "LIMIT", quantity, lock_price, price)
        now = self._clock()
        list_id = self._next_list_id
        self._next_list_id += 1
        slices = self._take_slices()
        legs = []
        for leg in (below, above):
            legs.append(
                Order(
                    symbol=symbol,
                    order_id=self._take_order_id(),
                    client_order_id=leg.client_order_id,
                    side=side,
                    type=leg.type,
                    quantity=quantity,
                    price=leg.price or ZERO,
                    stop_price=leg.stop_price or ZERO,
                    time_in_force=leg.time_in_force,
                    time=now,
                    update_time=now,
                    working_time=-1 if leg.type in _STOPS else now,
                    order_list_id=list_id,
                    resting=leg.type not in _STOPS,
                    slices=slices,
                    lock=lock,
                )
            )
        self.orders[symbol].extend(legs)
        self._live[symbol].extend(legs)
        order_list = OrderList(list_id, list_client_order_id, symbol, legs, now)
        self.lists.append(order_list)
        self.update_time = now
        return order_list

    def cancel(self, order: Order) -> list[Order]:
        """Cancel an open order (its whole list, for an OCO leg); returns the orders cancelled."""
        if not order.is_open:
            raise Refusal(-2011, "Unknown order sent.")
        if order.order_list_id != -1:
            order_list = self.find_list(order_list_id=order.order_list_id, list_client_order_id=None)
            assert order_list is not None
            return self.cancel_list(order_list)
        self._finish(order, "CANCELED")
        return [order]

    def cancel_list(self, order_list: OrderList) -> list[Order]:
        if not order_list.is_open:
            raise Refusal(-2011, "Unknown order sent.")
        cancelled = [order for order in order_list.orders if order.is_open]
        for order in cancelled:
            self._finish(order, "CANCELED")
        return cancelled

    def set_price(self, symbol: str, price: Decimal) -> list[Trade]:
        """Move the market to ``price``: trigger stops, fill what the price reached (one slice per
        update for partially filling orders). Returns the trades, in order."""
        self.spec(symbol)
        self.prices[symbol] = price
        made: list[Trade] = []
        for order in list(self._open(symbol)):
            if not order.is_open:
                continue  # e.g. the sibling of a leg that just triggered
            if order.is_stop and not order.triggered:
                if not _triggers(order.side, order.type, order.stop_price, price):
                    continue
                order.triggered = True
                order.working_time = order.update_time = self._clock()
                self._activate_list(order)
                if order.type in _MARKET_LIKE:
                    made += self._fill_some(order, price, maker=False, whole=True)
                elif _marketable(order.side, order.price, price):
                    made += self._fill_some(order, price, maker=False)
                else:
                    order.resting = True
                continue
            if order.type == "MARKET" or not _marketable(order.side, order.price, price):
                continue
            if order.resting:
                made += self._fill_some(order, order.price, maker=True)
            else:
                made += self._fill_some(order, price, maker=False)
        return made

    # -- internals -------------------------------------------------------------------------------

    def _take_order_id(self) -> int:
        order_id = self._next_order_id
        self._next_order_id += 1
        return order_id

    def _take_slices(self) -> int:
        slices, self._partial_slices = self._partial_slices, 0
        return slices

    def _check_client_id(self, symbol: str, client_order_id: str) -> None:
        if any(order.is_open and order.client_order_id == client_order_id for order in self._live[symbol]):
            raise Refusal(-2010, "Duplicate order sent.")

    def _check_filters(
        self,
        spec: SymbolSpec,
        type_: str,
        quantity: Decimal,
        limit: Decimal | None,
        stop: Decimal | None,
        current: Decimal | None,
    ) -> None:
        market = type_ in _MARKET_LIKE
        for level in (limit, stop):
            if level is not None:
                failure = filter_failure(spec, quantity=quantity, price=level, notional_price=None, market=market)
                if failure:
                    raise Refusal(-1013, failure)
        notional_price = limit if limit is not None else (stop if stop is not None else current)
        failure = filter_failure(spec, quantity=quantity, price=None, notional_price=notional_price, market=market)
        if failure:
            raise Refusal(-1013, failure)

    def _reserve(
        self, spec: SymbolSpec, side: str, type_: str, quantity: Decimal, limit: Decimal | None, current: Decimal | None
    ) -> Lock | None:
        """Check the funds an order needs and lock them (market orders spend at once: no lock)."""
        if side == "SELL":
            need, asset = quantity, spec.base
        else:
            at = limit if (limit is not None and type_ not in ("MARKET", "STOP_LOSS", "TAKE_PROFIT")) else current
            assert at is not None
            need, asset = quantity * at, spec.quote
            if self.fee_mode == "quote":
                need = (need * (1 + self.fee_rate)).quantize(_EIGHT, rounding=ROUND_UP)
        if self.free.get(asset, ZERO) < need:
            raise Refusal(-2010, INSUFFICIENT)
        if type_ == "MARKET":
            return None
        self.free[asset] -= need
        self.locked[asset] += need
        return Lock(asset, need)

    def _on_placed(self, order: Order, price: Decimal | None) -> None:
        if order.type == "MARKET":
            assert price is not None
            order.fills = self._fill_some(order, price, maker=False)
            if order.is_open:  # the partial-fill fault: liquidity ran out
                self._finish(order, "EXPIRED")
        elif order.type in ("LIMIT", "LIMIT_MAKER"):
            if price is not None and _marketable(order.side, order.price, price):
                order.fills = self._fill_some(order, price, maker=False)
            if order.is_open and order.time_in_force in ("IOC", "FOK"):
                self._finish(order, "EXPIRED")
            order.resting = order.is_open
        self.update_time = order.update_time

    def _fill_some(self, order: Order, price: Decimal, *, maker: bool, whole: bool = False) -> list[Trade]:
        """Fill the rest of ``order`` at ``price``, or one slice of it under the partial-fill fault."""
        quantity = order.remaining
        if order.slices > 1 and not whole:
            step = self.specs[order.symbol].step_size
            quantity = max(step, (order.remaining / order.slices).quantize(step, rounding=ROUND_DOWN))
            order.slices -= 1
        trade = self._fill(order, min(quantity, order.remaining), price, maker=maker)
        if order.order_list_id != -1:
            self._activate_list(order)
        return [trade]

    def _fill(self, order: Order, quantity: Decimal, price: Decimal, *, maker: bool) -> Trade:
        spec = self.specs[order.symbol]
        quote = quantity * price
        if order.side == "BUY":
            if self.fee_mode == "quote":
                fee, fee_asset = _fee(quote, self.fee_rate), spec.quote
                self._spend(order, spec.quote, quote + fee)
                self._credit(spec.base, quantity)
            else:
                fee, fee_asset = _fee(quantity, self.fee_rate), spec.base
                self._spend(order, spec.quote, quote)
                self._credit(spec.base, quantity - fee)
        else:
            fee, fee_asset = _fee(quote, self.fee_rate), spec.quote
            self._spend(order, spec.base, quantity)
            self._credit(spec.quote, quote - fee)
        now = self._clock()
        trade = Trade(
            id=self._next_trade_id,
            symbol=order.symbol,
            order_id=order.order_id,
            order_list_id=order.order_list_id,
            price=price,
            qty=quantity,
            quote_qty=quote,
            commission=fee,
            commission_asset=fee_asset,
            time=now,
            is_buyer=order.side == "BUY",
            is_maker=maker,
        )
        self._next_trade_id += 1
        self.trades[order.symbol].append(trade)
        order.executed += quantity
        order.cum_quote += quote
        order.update_time = now
        if order.remaining == ZERO:
            self._finish(order, "FILLED")
        else:
            order.status = "PARTIALLY_FILLED"
        self.update_time = now
        return trade

    def _spend(self, order: Order, asset: str, amount: Decimal) -> None:
        lock = order.lock
        from_lock = min(amount, lock.amount) if lock is not None and lock.asset == asset else ZERO
        if lock is not None and from_lock:
            lock.amount -= from_lock
            self.locked[asset] -= from_lock
        self.free[asset] -= amount - from_lock

    def _credit(self, asset: str, amount: Decimal) -> None:
        self.free[asset] = self.free.get(asset, ZERO) + amount
        self.locked.setdefault(asset, ZERO)

    def _finish(self, order: Order, status: str) -> None:
        order.status = status
        order.update_time = self._clock()
        self.update_time = order.update_time
        lock = order.lock
        if lock is not None and lock.amount and not any(o.is_open and o.lock is lock for o in self._siblings(order)):
            self.locked[lock.asset] -= lock.amount
            self.free[lock.asset] += lock.amount
            lock.amount = ZERO
        if order.order_list_id != -1:
            order_list = self.find_list(order_list_id=order.order_list_id, list_client_order_id=None)
            if order_list is not None and not any(o.is_open for o in order_list.orders):
                order_list.list_status_type = "ALL_DONE"
                order_list.list_order_status = "ALL_DONE"

    def _siblings(self, order: Order) -> Iterator[Order]:
        if order.order_list_id == -1:
            return iter(())
        return (o for o in self._live[order.symbol] if o.order_list_id == order.order_list_id and o is not order)

    def _activate_list(self, order: Order) -> None:
        """An OCO leg triggered or started to fill: the other leg expires."""
        for sibling in list(self._siblings(order)):
            if sibling.is_open:
                self._finish(sibling, "EXPIRED")


def _fee(amount: Decimal, rate: Decimal) -> Decimal:
    return (amount * rate).quantize(_EIGHT, rounding=ROUND_HALF_EVEN)


def _marketable(side: str, limit: Decimal | None, price: Decimal) -> bool:
    assert limit is not None
    return price <= limit if side == "BUY" else price >= limit


def _triggers(side: str, type_: str, stop: Decimal | None, price: Decimal) -> bool:
    assert stop is not None
    stop_loss = type_.startswith("STOP_LOSS")
    if side == "SELL":
        return price <= stop if stop_loss else price >= stop
    return price >= stop if stop_loss else price <= stop


def _check_oco_types(side: str, above: str, below: str) -> None:
    """Which leg types may sit above and below (errors.md -1165..-1199)."""
    takes = {"LIMIT_MAKER", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"}
    stops = {"STOP_LOSS", "STOP_LOSS_LIMIT"}
    for leg in (above, below):
        if leg not in takes | stops:
            raise Refusal(-1158, "Order type not supported in OCO.")
    if above == "LIMIT_MAKER" and below == "LIMIT_MAKER":
        raise Refusal(-1168, "At least one OCO order must be contingent.")
    if side == "SELL":
        if below == "LIMIT_MAKER":
            raise Refusal(-1166, "A limit order in a sell OCO must be above.")
        if above in stops:
            raise Refusal(-1197, "A stop loss order in a sell OCO must be below.")
        if below in takes:
            raise Refusal(-1199, "A take profit order in a sell OCO must be above.")
    else:
        if above == "LIMIT_MAKER":
            raise Refusal(-1165, "A limit order in a buy OCO must be below.")
        if below in stops:
            raise Refusal(-1196, "A stop loss order in a buy OCO must be above.")
        if above in takes:
            raise Refusal(-1198, "A take profit order in a buy OCO must be below.")


def _oco_prices_ok(side: str, above: NewOcoLeg, below: NewOcoLeg, price: Decimal) -> bool:
    """SELL: above level > last price > below stop; BUY: mirrored (``rest-api.md``)."""

    def level(leg: NewOcoLeg) -> Decimal:
        value = leg.price if leg.type == "LIMIT_MAKER" else leg.stop_price
        assert value is not None
        return value

    return level(above) > price > level(below)
