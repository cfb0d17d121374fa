"""The order state machine: every order's status, driven by commands' results and broker events.

No I/O and no clock (times come in with the events, row timestamps from the caller). The live
broker's poller, the paper exchange and reconciliation all produce the same events, so this one
table decides what each of them means::

    new ──sent──> pending ──Accepted──> open ──Filled──> partially_filled ──Filled(complete)──> filled
                     │                   │                      │
                     ├──Rejected──> rejected                    └──Cancelled/Expired──> cancelled
                     └──Unknown───> unknown ──(the exchange's answer)──> open | partially_filled
                                                                         | filled | cancelled | rejected

* ``new``: recorded (the intent row), not yet handed to the broker. An order can go from ``new``
  to ``rejected`` without being sent (:meth:`OrderBook.drop`: the engine found, just before
  sending, that it no longer applies).
* ``unknown`` is resolved by asking the exchange by client order id, never by sending again: its
  answer arrives as the same events (``Accepted`` = it is open, ``Filled``, ``Cancelled``, or
  ``Rejected`` when the exchange never saw it).
* Fills are applied once per (client order id, trade id): a repeat is a :data:`DUPLICATE` outcome
  and changes nothing. A fill is accepted in any state but ``new`` (the exchange's trades are
  facts: a late fill of a cancelled order, or of one we had given up as rejected, still moved
  money), unless it contradicts the order: another exchange order id, or more than the order's
  amount in total. Those, and every other transition not in the table, are :data:`ILLEGAL`
  outcomes: the order is left as it is and the caller logs them at ``error``. Nothing is silent.
* Repeats that carry no news are :data:`DUPLICATE`: ``Accepted`` for an order already open,
  ``Cancelled`` for one already cancelled. ``Accepted`` on an open order may still add its
  exchange order id (the legs of a protection list learn theirs after the list is accepted).
* ``Expired`` is recorded as ``cancelled`` (the table has no separate status); the error column
  says why.

Why mutable: a candle on which 100 strategies trade runs four transitions per order, and a
backtest thousands of them; replacing a 27-field frozen record each time was the larger part of
the order path. :class:`Order` is a slotted object changed only here; :meth:`Order.record` takes
the frozen :class:`~tradebotd.orders.model.OrderRecord` a write batch stores, once per batch.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Final, Literal, NamedTuple

from ..model import StreamKey
from .model import (
    ACTIVE,
    TERMINAL,
    Accepted,
    BrokerEvent,
    Cancelled,
    Expired,
    Filled,
    OrderLeg,
    OrderRecord,
    OrderRequest,
    OrderStatus,
    ProtectRequest,
    RecordType,
    Rejected,
    Side,
    SubmitResult,
    Unknown,
)

__all__ = ["CHANGED", "DUPLICATE", "FILL", "ILLEGAL", "Order", "OrderBook", "Outcome", "Transition", "intent_levels"]

Outcome = Literal["changed", "fill", "duplicate", "illegal"]
CHANGED: Final = "changed"  # the status (or an id) changed
FILL: Final = "fill"  # a new fill was applied: the ledger must apply it too
DUPLICATE: Final = "duplicate"  # nothing new; nothing changed
ILLEGAL: Final = "illegal"  # not a transition of the table; nothing changed, log it

_ZERO = Decimal(0)
_AWAITING = frozenset(("new", "pending", "unknown"))
_TRADES = frozenset(("entry", "exit"))
_LEGS = frozenset(("tp", "sl"))
_new = tuple.__new__
"""Makes a NamedTuple without its generated ``__new__`` (a Python call): on every order's path."""
DONE_KEPT = 10_000
"""Finished orders kept in memory (a late or repeated event for them is still recognised)."""


class Order:
    """One order's live state (see the module docstring for why it is mutable)."""

    __slots__ = (
        "_cost",
        "_fills",
        "amount",
        "average_price",
        "base_asset",
        "broker",
        "candle_time",
        "client_order_id",
        "created_at",
        "error",
        "exchange_order_id",
        "fee",
        "fee_asset",
        "filled_amount",
        "key",
        "leg",
        "limit_price",
        "list_id",
        "parent_id",
        "portfolio_id",
        "quote_asset",
        "raw",
        "reason",
        "reference_price",
        "side",
        "status",
        "stop_loss",
        "stop_price",
        "strategy_id",
        "take_profit",
        "type",
        "updated_at",
    )

    def __init__(
        self,
        client_order_id: str,
        strategy_id: str,
        portfolio_id: str | None,
        broker: str,
        key: StreamKey,
        side: Side,
        type: RecordType,
        leg: OrderLeg,
        amount: Decimal,
        reference_price: Decimal,
        candle_time: int,
        created_at: str,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
        reason: str | None = None,
        parent_id: str | None = None,
        take_profit: Decimal | None = None,
        stop_loss: Decimal | None = None,
        status: OrderStatus = "new",
    ) -> None:
        self.client_order_id = client_order_id
        self.strategy_id = strategy_id
        self.portfolio_id = portfolio_id
        self.broker = broker
        self.key = key
        self.side: Side = side
        self.type: RecordType = type
        self.leg: OrderLeg = leg
        self.amount = amount
        self.limit_price = limit_price
        self.stop_price = stop_price
        self.reference_price = reference_price
        self.candle_time = candle_time
        self.reason = reason
        self.parent_id = parent_id
        self.take_profit = take_profit  # levels an entry asks for (not stored: the position holds them)
        self.stop_loss = stop_loss
        self.status: OrderStatus = status
        self.exchange_order_id: str | None = None
        self.list_id: str | None = None
        self.filled_amount = _ZERO
        self.average_price: Decimal | None = None
        self.fee = _ZERO
        self.fee_asset: str | None = None
        self.error: str | None = None
        self.raw: str | None = None
        self.created_at = created_at
        self.updated_at = created_at
        self.base_asset: str | None = None  # the market's assets, when known (a fee's asset is one of them)
        self.quote_asset: str | None = None
        self._cost = _ZERO  # sum of amount x price over fills (for the average price)
        # Trade ids applied. A tuple: an order has a handful of trades, and a tuple of strings is
        # not tracked by the cyclic GC (a set per order was, and made a backtest's collections slower).
        self._fills: tuple[str, ...] = ()

    @classmethod
    def from_request(cls, request: OrderRequest, broker: str, now: str) -> Order:
        # Positional: a call with twenty keywords costs a backtest's signal a microsecond.
        return cls(
            request.client_order_id,
            request.strategy_id,
            request.portfolio_id,
            broker,
            request.key,
            request.side,
            request.type,
            request.leg,
            request.amount,
            request.reference_price,
            request.candle_time,
            now,
            request.limit_price,
            None,
            request.reason,
            None,
            request.take_profit,
            request.stop_loss,
        )

    @classmethod
    def legs_of(cls, request: ProtectRequest, broker: str, reference_price: Decimal, now: str) -> list[Order]:
        """The protective sell orders of ``request``: take-profit first, then stop-loss."""
        legs: list[Order] = []
        common = dict(
            strategy_id=request.strategy_id,
            portfolio_id=request.portfolio_id,
            broker=broker,
            key=request.key,
            side="sell",
            amount=request.amount,
            reference_price=reference_price,
            candle_time=request.candle_time,
            created_at=now,
            parent_id=request.parent_id,
        )
        if request.tp_client_order_id is not None and request.take_profit is not None:
            level = request.take_profit
            legs.append(
                cls(client_order_id=request.tp_client_order_id, type="take_profit", leg="tp", limit_price=level,
                    reason=f"take-profit {level}", **common)  # type: ignore[arg-type]
            )
        if request.sl_client_order_id is not None and request.stop_loss is not None:
            level = request.stop_loss
            legs.append(
                cls(client_order_id=request.sl_client_order_id, type="stop_loss", leg="sl", stop_price=level,
                    reason=f"stop-loss {level}", **common)  # type: ignore[arg-type]
            )
        return legs

    @classmethod
    def from_record(cls, record: OrderRecord, trade_ids: Iterable[str] = ()) -> Order:
        """An order restored from its row (at start-up); ``trade_ids``: its fills already applied."""
        order = cls(
            client_order_id=record.client_order_id,
            strategy_id=record.strategy_id,
            portfolio_id=record.portfolio_id,
            broker=record.broker,
            key=record.key,
            side=record.side,
            type=record.type,
            leg=record.leg,
            amount=record.amount,
            reference_price=record.reference_price,
            candle_time=record.candle_time,
            created_at=record.created_at,
            limit_price=record.limit_price,
            stop_price=record.stop_price,
            reason=record.reason,
            parent_id=record.parent_id,
            status=record.status,
        )
        order.exchange_order_id = record.exchange_order_id
        order.list_id = record.list_id
        order.filled_amount = record.filled_amount
        order.average_price = record.average_price
        order.fee = record.fee
        order.fee_asset = record.fee_asset
        order.error = record.error
        order.raw = record.raw
        order.updated_at = record.updated_at
        order._fills = tuple(trade_ids)
        if record.average_price is not None:
            order._cost = record.average_price * record.filled_amount
        if record.leg == "entry" and record.status in _AWAITING and record.raw and record.raw.startswith(_INTENT):
            order.take_profit, order.stop_loss = _levels_of(record.raw)
        return order

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def level(self) -> Decimal | None:
        """A protective leg's trigger level (take-profit: its limit, stop-loss: its stop)."""
        return self.limit_price if self.leg == "tp" else self.stop_price if self.leg == "sl" else None

    def has_fill(self, trade_id: str) -> bool:
        return trade_id in self._fills

    def record(self) -> OrderRecord:
        key = self.key
        return OrderRecord(
            self.client_order_id,
            self.strategy_id,
            self.portfolio_id,
            self.broker,
            key.symbol,
            key.interval,
            self.side,
            self.type,
            self.leg,
            self.amount,
            self.limit_price,
            self.stop_price,
            self.reference_price,
            self.status,
            self.exchange_order_id,
            self.list_id,
            self.parent_id,
            self.filled_amount,
            self.average_price,
            self.fee,
            self.fee_asset,
            self.candle_time,
            self.reason,
            self.error,
            self.raw,
            self.created_at,
            self.updated_at,
        )

    def __repr__(self) -> str:
        return f"Order({self.client_order_id}, {self.status}, {self.side} {self.amount} filled {self.filled_amount})"


class Transition(NamedTuple):
    """What one result or event did to one order (a NamedTuple: several are made per order)."""

    outcome: Outcome
    order: Order | None
    previous: OrderStatus | None
    note: str = ""  # why, for duplicates and illegal transitions


class OrderBook:
    """Every order the daemon knows, by client order id: the active ones, and the last
    ``done_kept`` finished ones. One book serves every broker (ids are unique across them). A
    backtest keeps few finished orders: nothing reports on them late."""

    def __init__(self, orders: Iterable[Order] = (), *, done_kept: int = DONE_KEPT) -> None:
        self._done_kept = done_kept
        self._active: dict[str, Order] = {}
        # Oldest first. Not a dict: after many deletions at its front, finding a dict's first key
        # scans the dead entries (measured: 4 us per order in a backtest); popitem(last=False) is O(1).
        self._done: OrderedDict[str, Order] = OrderedDict()
        self._by_strategy: dict[str, list[Order]] = {}  # active orders only
        for order in orders:
            self._keep(order)

    # -- queries ---------------------------------------------------------------------------------

    def get(self, client_order_id: str) -> Order | None:
        order = self._active.get(client_order_id)
        return order if order is not None else self._done.get(client_order_id)

    def __contains__(self, client_order_id: str) -> bool:
        return client_order_id in self._active or client_order_id in self._done

    def active(self, strategy_id: str | None = None) -> list[Order]:
        """Active orders, of one strategy or of all, oldest first."""
        if strategy_id is None:
            return list(self._active.values())
        return list(self._by_strategy.get(strategy_id, ()))

    def blocking(self, strategy_id: str, side: str) -> Order | None:
        """The strategy's order that keeps it from placing another on ``side``: one still waiting
        for an answer (new, pending or unknown), or a resting entry or exit on the same side."""
        for order in self._by_strategy.get(strategy_id, ()):
            if order.status in _AWAITING or (order.side == side and order.leg in _TRADES):
                return order
        return None

    def awaiting(self, strategy_id: str) -> Order | None:
        """The strategy's order still waiting for an answer (new, pending or unknown), if any."""
        for order in self._by_strategy.get(strategy_id, ()):
            if order.status in _AWAITING:
                return order
        return None

    def has_active(self, strategy_id: str) -> bool:
        return strategy_id in self._by_strategy

    def protection(self, strategy_id: str) -> list[Order]:
        """The strategy's live protective legs (take-profit / stop-loss)."""
        orders = self._by_strategy.get(strategy_id)
        return [o for o in orders if o.leg in _LEGS] if orders else []

    def __iter__(self) -> Iterator[Order]:
        return iter(list(self._active.values()))

    # -- commands --------------------------------------------------------------------------------

    def add(self, order: Order) -> None:
        """A new order (status ``new``): its intent is recorded from here on."""
        coid = order.client_order_id
        if coid in self._active or coid in self._done:
            raise ValueError(f"client order id {order.client_order_id} is already taken")
        self._keep(order)

    def sent(self, client_order_id: str, now: str) -> Transition:
        """The order is being handed to the broker: ``new`` -> ``pending``."""
        order = self._active.get(client_order_id) or self._done.get(client_order_id)
        if order is None:
            return Transition(ILLEGAL, None, None, f"no order {client_order_id}")
        if order.status != "new":
            return Transition(ILLEGAL, order, order.status, f"sending an order that is {order.status}")
        return self._move(order, "pending", now)

    def drop(self, client_order_id: str, reason: str, now: str) -> Transition:
        """Not sending it after all: ``new`` -> ``rejected`` (it never left the daemon)."""
        order = self.get(client_order_id)
        if order is None or order.status != "new":
            return Transition(ILLEGAL, order, None if order is None else order.status, "only a new order is dropped")
        order.error = reason
        return self._move(order, "rejected", now)

    # -- results and events ----------------------------------------------------------------------

    def apply(self, event: SubmitResult | BrokerEvent, now: str) -> Transition:
        coid = event.client_order_id
        order = self._active.get(coid) or self._done.get(coid)
        if order is None:
            return Transition(ILLEGAL, None, None, f"{type(event).__name__} for an order we do not know")
        if type(event) is Filled:
            return self._fill(order, event, now)
        status = order.status
        if type(event) is Accepted:
            if status in ("pending", "unknown"):
                self._ids(order, event.exchange_order_id, event.raw)
                return self._move(order, "open", now)
            if status in ("open", "partially_filled", "filled"):
                known = order.exchange_order_id
                if known is None or (known == coid and event.exchange_order_id != coid):
                    # No id yet, or the placeholder a broker gives an order it holds itself (its
                    # client order id: a protective level watched by the broker, not the exchange)
                    # and now the exchange's own id for the order that carried it out.
                    self._ids(order, event.exchange_order_id, event.raw)
                    order.updated_at = now
                    return Transition(CHANGED, order, status)
                return Transition(DUPLICATE, order, status, "already accepted")
            return Transition(ILLEGAL, order, status, f"accepted, but the order is {status}")
        if type(event) is Unknown:
            if status == "pending":
                order.error = event.reason
                if event.raw is not None:  # else it keeps the intent's levels (see intent_levels)
                    order.raw = event.raw
                return self._move(order, "unknown", now)
            return Transition(ILLEGAL, order, status, f"an ambiguous result for an order that is {status}")
        if type(event) is Rejected:
            if status in ("new", "pending", "unknown"):
                order.error, order.raw = _rejection(event), event.raw
                return self._move(order, "rejected", now)
            if status == "rejected":
                return Transition(DUPLICATE, order, status, "already rejected")
            return Transition(ILLEGAL, order, status, f"rejected ({event.reason}), but the order is {status}")
        if type(event) is Cancelled or type(event) is Expired:
            if status in ("pending", "unknown", "open", "partially_filled"):
                order.error = event.reason if type(event) is Cancelled else f"expired: {event.reason}"
                if event.raw is not None:
                    order.raw = event.raw
                return self._move(order, "cancelled", now)
            if status == "cancelled":
                return Transition(DUPLICATE, order, status, "already cancelled")
            return Transition(ILLEGAL, order, status, f"cancelled ({event.reason}), but the order is {status}")
        return Transition(ILLEGAL, order, status, f"not an order event: {event!r}")

    def apply_protect(self, legs: list[str], result: SubmitResult, now: str) -> list[Transition]:
        """The answer to a ``protect`` for the legs it placed. With two legs it names the
        exchange's order *list*: ``Accepted`` opens both legs and gives them its list id (each
        leg's own exchange order id follows as an ``Accepted`` event for that leg, or with its
        first fill); with one leg it is that order's answer."""
        if len(legs) == 1 or type(result) is not Accepted:
            return [self.apply(_for_leg(result, coid), now) for coid in legs]
        transitions = []
        for coid in legs:
            order = self.get(coid)
            if order is None or order.status not in ("pending", "unknown"):
                transitions.append(self.apply(_for_leg(result, coid), now))
                continue
            order.list_id = result.exchange_order_id
            if result.raw is not None:
                order.raw = result.raw
            transitions.append(self._move(order, "open", now))
        return transitions

    def _fill(self, order: Order, fill: Filled, now: str) -> Transition:
        status = order.status
        if fill.trade_id in order._fills:
            return Transition(DUPLICATE, order, status, f"trade {fill.trade_id} already applied")
        if status == "new":
            return Transition(ILLEGAL, order, status, "a fill for an order that was never sent")
        if order.exchange_order_id is not None and fill.exchange_order_id != order.exchange_order_id:
            return Transition(
                ILLEGAL, order, status,
                f"a fill of exchange order {fill.exchange_order_id}, but this order is {order.exchange_order_id}",
            )
        filled = order.filled_amount + fill.amount
        if filled > order.amount or fill.amount <= 0:
            return Transition(
                ILLEGAL, order, status, f"a fill of {fill.amount} would make {filled} of an order for {order.amount}"
            )
        order._fills += (fill.trade_id,)
        if order.exchange_order_id is None:
            order.exchange_order_id = fill.exchange_order_id
        price = fill.price
        if filled == fill.amount:  # the first fill (most orders have only one)
            order.average_price = price
        else:
            if len(order._fills) == 2:  # the cost so far was the first fill's
                order._cost = order.filled_amount * order.average_price  # type: ignore[operator]
            order._cost += fill.amount * price
            order.average_price = order._cost / filled
        order.filled_amount = filled
        if fill.fee:
            order.fee += fill.fee
            order.fee_asset = fill.fee_asset
        elif order.fee_asset is None:
            order.fee_asset = fill.fee_asset
        if fill.raw is not None:
            order.raw = fill.raw
        note = ""
        if status == "rejected":
            note = "a fill for an order recorded as rejected: the exchange traded it after all"
        if status in ("cancelled", "rejected") and not (fill.complete or filled == order.amount):
            # A late fill of a cancelled order: it stays cancelled, the fill still counts.
            order.updated_at = now
            if status == "rejected":
                self._set(order, "partially_filled", now)
            return Transition(FILL, order, status, note)
        new_status: OrderStatus = "filled" if fill.complete or filled == order.amount else "partially_filled"
        if new_status != status:
            self._set(order, new_status, now)
        else:
            order.updated_at = now
        return _new(Transition, (FILL, order, status, note))

    # -- plumbing --------------------------------------------------------------------------------

    @staticmethod
    def _ids(order: Order, exchange_order_id: str, raw: str | None) -> None:
        order.exchange_order_id = exchange_order_id
        if raw is not None:
            order.raw = raw

    def _move(self, order: Order, status: OrderStatus, now: str) -> Transition:
        previous = order.status
        if previous in ACTIVE and status in ACTIVE:  # new -> pending -> open: the book stays as it is
            order.status = status
            order.updated_at = now
        else:
            self._set(order, status, now)
        return _new(Transition, (CHANGED, order, previous, ""))

    def _set(self, order: Order, status: OrderStatus, now: str) -> None:
        previous = order.status
        order.status = status
        order.updated_at = now
        was_active, is_active = previous in ACTIVE, status in ACTIVE
        if was_active and not is_active:
            self._finish(order)
        elif is_active and not was_active:  # only a late fill of a rejected order does this
            self._done.pop(order.client_order_id, None)
            self._keep(order)

    def _keep(self, order: Order) -> None:
        coid = order.client_order_id
        if order.status in TERMINAL:
            self._remember(order)
            return
        self._active[coid] = order
        peers = self._by_strategy.get(order.strategy_id)
        if peers is None:
            self._by_strategy[order.strategy_id] = [order]
        else:
            peers.append(order)

    def _finish(self, order: Order) -> None:
        coid = order.client_order_id
        self._active.pop(coid, None)
        peers = self._by_strategy.get(order.strategy_id)
        if peers is not None:
            peers.remove(order)
            if not peers:
                del self._by_strategy[order.strategy_id]
        self._remember(order)

    def _remember(self, order: Order) -> None:
        done = self._done
        done[order.client_order_id] = order
        if len(done) > self._done_kept:
            done.popitem(last=False)


_INTENT = '{"intent":'


def intent_levels(take_profit: Decimal | None, stop_loss: Decimal | None) -> str:
    """An entry's take-profit and stop-loss, kept in its ``raw`` column until the exchange answers
    (the ``orders`` table has no columns for them: once the entry fills, the position holds them).
    An entry whose answer was lost to a crash is restored with its levels from here, so its
    protection is placed (or found on the exchange) like any other's."""
    tp = "null" if take_profit is None else f'"{take_profit}"'
    sl = "null" if stop_loss is None else f'"{stop_loss}"'
    return f'{_INTENT}{{"take_profit":{tp},"stop_loss":{sl}}}}}'


def _levels_of(raw: str) -> tuple[Decimal | None, Decimal | None]:
    try:
        levels = json.loads(raw)["intent"]
        tp, sl = levels.get("take_profit"), levels.get("stop_loss")
        return (None if tp is None else Decimal(tp)), (None if sl is None else Decimal(sl))
    except (ValueError, KeyError, TypeError, ArithmeticError):
        return None, None


def _for_leg(result: SubmitResult, client_order_id: str) -> SubmitResult:
    if type(result) is Accepted:
        return Accepted(client_order_id, result.exchange_order_id, result.at_ms, result.amount, result.raw)
    if isinstance(result, Rejected):
        return Rejected(client_order_id, result.reason, result.code, result.at_ms, result.raw)
    assert isinstance(result, Unknown)
    return Unknown(client_order_id, result.reason, result.at_ms, result.raw)


def _rejection(event: Rejected) -> str:
    return event.reason if event.code is None else f"{event.reason} (code {event.code})"
