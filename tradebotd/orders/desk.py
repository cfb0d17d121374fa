"""The order desk: decisions in, commands out; command results and broker events in, records,
fills and follow-up commands out. The sans-I/O core of order handling, shared by the daemon's
engine (an async shell that awaits a broker) and the backtest and ``strategy check`` (synchronous
loops over the paper exchange, :func:`run_sync`). Same rules, same state machine, same ledger.

One decision becomes one *job*: the commands one strategy needs, in order, e.g. cancel the
position's protective orders, then sell. A shell runs a job's commands one after another and,
after each, hands the desk the command's result and whatever events the broker produced; the
desk's answers may add follow-up jobs (``Effects.jobs``), e.g. protect an entry that filled.
Jobs of different strategies are independent (the engine runs them concurrently, the backtest
has one strategy).

What the desk decides:

* **one order at a time**: a strategy whose order still awaits an answer (new, pending,
  unknown) gets no other; nor does one with a resting (limit) order on the same side. The
  decision is logged and skipped.
* **validation** (:mod:`tradebotd.orders.validate`); a refusal is a :class:`Refusal` row.
* **just before sending** (:meth:`OrderDesk.before`) a command is checked again: a sell whose
  position has meanwhile been closed by its take-profit, or whose protective orders could not be
  cancelled, is not sent (``new`` -> ``rejected``, with the reason).
* **protection**: when an entry has filled (completely, or cancelled after a partial fill), when
  an exit leaves part of a position, the position's protection is made to match it: the old
  protective orders cancelled, then one list for the whole position with its levels (a buy's
  ``takeProfit`` / ``stopLoss``, else the levels it had). Levels on the wrong side of the entry's
  fill price are dropped with a note. Protection orders are recorded before they are sent too.
* **fills** go to the ledger once each; a protective leg's fill is the position's exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol

from ..model import Position, StreamKey
from .ledger import Fill, Holding, Ledger
from .model import (
    TERMINAL,
    Accepted,
    BrokerEvent,
    Filled,
    MarketRules,
    MarketUnavailable,
    OrderIntent,
    OrderRequest,
    ProtectRequest,
    Rejected,
    SubmitResult,
    Unknown,
    client_order_id,
)
from .state import CHANGED, FILL, ILLEGAL, Order, OrderBook, Transition, intent_levels
from .validate import OrderCap, OrderPolicy, Refusal, validate

_TRADES = frozenset(("entry", "exit"))

__all__ = [
    "CancelRequest",
    "Command",
    "Effects",
    "Job",
    "Note",
    "OrderDesk",
    "SyncBroker",
    "Venue",
    "run_sync",
]


@dataclass(frozen=True, slots=True)
class Venue:
    """What the desk needs to know of a broker."""

    name: str
    rules: Callable[[StreamKey], MarketRules]
    cap: OrderCap | None = None
    durable: bool = False
    """the broker commits intents before sending (live): an entry's levels are kept with its
    intent (``raw``) for a restart that finds it unanswered"""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    client_order_id: str
    strategy_id: str
    reason: str


Command = OrderRequest | ProtectRequest | CancelRequest
Job = tuple[str, list[Command]]
"""One strategy's commands, in order, and the venue (broker name) they go to."""


@dataclass(frozen=True, slots=True)
class Note:
    """Something to log: a ``strategy_logs`` row when ``strategy_id`` is known."""

    strategy_id: str | None
    level: Literal["info", "error"]
    message: str
    data: Mapping[str, Any] | None = None


class Effects:
    """What the desk's answers produced, collected by the caller (one per write batch)."""

    __slots__ = ("fills", "jobs", "notes", "orders", "refusals")

    def __init__(self) -> None:
        self.orders: dict[str, Order] = {}  # changed orders (one row each per batch)
        self.fills: list[tuple[Fill, Filled]] = []
        self.refusals: list[Refusal] = []
        self.notes: list[Note] = []
        self.jobs: list[Job] = []  # follow-up commands, one job per strategy

    def __bool__(self) -> bool:
        return bool(self.orders or self.fills or self.refusals or self.notes or self.jobs)


class OrderDesk:
    def __init__(
        self, *, ledger: Ledger, policy: OrderPolicy, venues: Mapping[str, Venue], book: OrderBook | None = None
    ) -> None:
        self.ledger = ledger
        self.book = book if book is not None else OrderBook()
        self.policy = policy
        self.venues = dict(venues)
        self.portfolio_venues: dict[str, str] = {}
        """portfolio id -> the venue its strategies trade on (set by the engine)"""
        self.default_venue: str | None = None
        """the venue of a portfolio not in ``portfolio_venues`` (an engine without portfolios)"""

    def position(self, strategy_id: str) -> Position | None:
        return self.ledger.position(strategy_id)

    # -- decisions -------------------------------------------------------------------------------

    def decide(self, intent: OrderIntent, venue: str, now: str, out: Effects) -> list[Command] | None:
        """The job a buy or sell decision asks for (its order recorded as ``new``), or None."""
        sid = intent.strategy_id
        book = self.book
        blocking = book.blocking(sid, intent.side)
        if blocking is not None:
            if blocking.status in ("new", "pending", "unknown"):
                why = f"order {blocking.client_order_id} is still {blocking.status}"
            else:
                why = f"a {blocking.type} {blocking.side} ({blocking.client_order_id}) is still open"
            self._skip(intent, f"{why}; this {intent.side} is skipped (one order at a time)", out)
            return None
        place = self.venues[venue]
        try:
            rules = place.rules(intent.key)
        except MarketUnavailable as exc:
            out.refusals.append(Refusal(intent.client_order_id, sid, intent.side, "rejected", str(exc)))
            return None
        checked = validate(intent, holding=self.ledger.holding(sid), rules=rules, policy=self.policy, cap=place.cap)
        if type(checked) is Refusal:
            out.refusals.append(checked)
            return None
        assert type(checked) is OrderRequest
        # The position's protective legs (none unless the strategy has active orders at all).
        legs = book.protection(sid) if checked.side == "sell" and book.has_active(sid) else None
        order = Order.from_request(checked, venue, now)
        if place.durable and (checked.take_profit is not None or checked.stop_loss is not None):
            order.raw = intent_levels(checked.take_profit, checked.stop_loss)
        order.base_asset = rules.base_asset
        order.quote_asset = rules.quote_asset
        book.add(order)
        out.orders[order.client_order_id] = order
        if legs:  # cancelling one leg of a list cancels the list (Binance, and paper)
            return [CancelRequest(legs[0].client_order_id, sid, "the strategy sells"), checked]
        return [checked]

    def _skip(self, intent: OrderIntent, why: str, out: Effects) -> None:
        out.notes.append(Note(intent.strategy_id, "info", why, {"client_order_id": intent.client_order_id}))

    # -- sending ---------------------------------------------------------------------------------

    def before(self, command: Command, now: str, out: Effects) -> bool:
        """Check ``command`` once more just before it is sent and mark it sent; False: skip it."""
        if type(command) is OrderRequest:  # the common case first
            order = self.book.get(command.client_order_id)
            if order is None or order.status != "new":
                return False
            if command.side == "sell":
                problem = self._sell_problem(command)
                if problem is not None:
                    self._drop(order, problem, now, out)
                    return False
            self.book.sent(order.client_order_id, now)
            out.orders[order.client_order_id] = order
            return True
        if type(command) is CancelRequest:
            order = self.book.get(command.client_order_id)
            if order is None or not order.active:
                return False
            if order.status == "new":  # never sent: nothing to cancel on the exchange
                self._drop(order, f"not sent: {command.reason}", now, out)
                return False
            return True
        assert type(command) is ProtectRequest
        legs = [self.book.get(c) for c in (command.tp_client_order_id, command.sl_client_order_id) if c is not None]
        mine = {leg.client_order_id for leg in legs if leg is not None}
        holding = self.ledger.holding(command.strategy_id)
        problem = None
        if holding is None:
            problem = "not sent: the position was closed first"
        elif holding.position.amount != command.amount:
            problem = f"not sent: the position changed to {holding.position.amount} first"
        elif any(o.client_order_id not in mine for o in self.book.protection(command.strategy_id)):
            problem = "not sent: the position's earlier protective orders are still open"
        for leg in legs:
            if leg is None or leg.status != "new":
                return False
            if problem is not None:
                self._drop(leg, problem, now, out)
            else:
                self._sent(self.book.sent(leg.client_order_id, now), out)
        return problem is None

    def _sell_problem(self, request: OrderRequest) -> str | None:
        holding = self.ledger.holding(request.strategy_id)
        if holding is None:
            return "not sent: the position was closed before the sell went out"
        if holding.position.amount < request.amount:
            return f"not sent: the position fell to {holding.position.amount} before the sell went out"
        if self.book.protection(request.strategy_id):
            return "not sent: the position's protective orders could not be cancelled first"
        return None

    def _sent(self, transition: Transition, out: Effects) -> None:
        if transition.order is not None:
            out.orders[transition.order.client_order_id] = transition.order

    def _drop(self, order: Order, reason: str, now: str, out: Effects) -> None:
        self.book.drop(order.client_order_id, reason, now)
        out.orders[order.client_order_id] = order
        out.notes.append(Note(order.strategy_id, "info", reason, {"client_order_id": order.client_order_id}))

    # -- answers ---------------------------------------------------------------------------------

    def on_result(self, command: OrderRequest | ProtectRequest, result: SubmitResult, now: str, out: Effects) -> None:
        """What ``submit`` or ``protect`` answered for ``command``."""
        if isinstance(command, OrderRequest):
            transition = self.book.apply(result, now)
            self._answered(transition, result, out)
            return
        legs = [c for c in (command.tp_client_order_id, command.sl_client_order_id) if c is not None]
        for transition in self.book.apply_protect(legs, result, now):
            self._answered(transition, result, out)

    def _answered(self, transition: Transition, result: SubmitResult, out: Effects) -> None:
        order = transition.order
        if transition.outcome == ILLEGAL or order is None:
            self._illegal(transition, result, out)
            return
        out.orders[order.client_order_id] = order
        if transition.outcome != CHANGED:
            return
        if type(result) is Rejected:
            if order.leg in ("tp", "sl"):
                out.notes.append(Note(order.strategy_id, "error", f"protective order rejected: {order.error}; the "
                                      "position is not protected", {"client_order_id": order.client_order_id}))
            else:
                out.refusals.append(
                    Refusal(order.client_order_id, order.strategy_id, order.side, "rejected", order.error or "")
                )
        elif type(result) is Unknown:
            out.notes.append(
                Note(order.strategy_id, "error", f"order {order.client_order_id}: no definite answer ({result.reason});"
                     " it is resolved by asking the exchange, never by sending it again",
                     {"client_order_id": order.client_order_id})
            )

    def on_event(self, event: BrokerEvent, now: str, out: Effects) -> None:
        """One event from a broker's inbox."""
        transition = self.book.apply(event, now)
        order = transition.order
        if transition.outcome == ILLEGAL or order is None:
            self._illegal(transition, event, out)
            return
        if transition.outcome == FILL:
            assert type(event) is Filled
            out.orders[order.client_order_id] = order
            self._filled(order, event, transition, out)
            if order.status in TERMINAL and order.leg in _TRADES and self._may_need_protection(order.strategy_id):
                self._protect(order.strategy_id, order.broker, self._fill_candle(order, event.at_ms),
                              order.client_order_id, order.reference_price, now, out)
            return
        if transition.outcome != CHANGED:
            return
        out.orders[order.client_order_id] = order
        if order.leg in ("entry", "exit") and type(event) is not Accepted:
            if type(event) is Rejected:
                out.refusals.append(
                    Refusal(order.client_order_id, order.strategy_id, order.side, "rejected", order.error or "")
                )
            else:
                out.notes.append(Note(order.strategy_id, "info", f"order {order.client_order_id} {order.status}: "
                                      f"{order.error}", {"client_order_id": order.client_order_id}))
            if order.filled_amount and order.status == "cancelled":
                self._protect(order.strategy_id, order.broker, order.candle_time, order.client_order_id,
                              order.reference_price, now, out)

    def _may_need_protection(self, sid: str) -> bool:
        """Whether :meth:`_protect` could do anything: a position with levels, or orders still
        active (protective legs to cancel). Most fills have neither: they skip the call."""
        if self.book.has_active(sid):
            return True
        position = self.ledger.position(sid)
        return position is not None and (position.take_profit is not None or position.stop_loss is not None)

    def _illegal(self, transition: Transition, event: object, out: Effects) -> None:
        order = transition.order
        coid = getattr(event, "client_order_id", None)
        out.notes.append(
            Note(None if order is None else order.strategy_id, "error",
                 f"order {coid}: {type(event).__name__} not applied: {transition.note}",
                 {"client_order_id": coid, "event": repr(event)[:500]})
        )

    def _filled(self, order: Order, event: Filled, transition: Transition, out: Effects) -> None:
        base, quote = order.base_asset, order.quote_asset
        if quote is None:  # restored from the store: ask the rules
            try:
                rules = self.venues[order.broker].rules(order.key)
                base = order.base_asset = rules.base_asset
                quote = order.quote_asset = rules.quote_asset
            except (MarketUnavailable, KeyError):  # the fill happened: record it whatever the rules say
                pass
        notes: tuple[str, ...] = (transition.note,) if transition.note else ()
        take_profit = stop_loss = None
        leg = order.leg
        if leg == "entry":
            if order.filled_amount == event.amount and (order.take_profit is not None or order.stop_loss is not None):
                take_profit, stop_loss, dropped = _levels(order, event.price)  # the first fill sets them
                notes += dropped
            reason = order.reason
        elif leg == "tp":
            reason = f"take-profit {order.limit_price} touched"
        elif leg == "sl":
            reason = f"stop-loss {order.stop_price} touched"
        else:
            reason = order.reason
        fill = self.ledger.apply(
            event,
            order.strategy_id,
            order.portfolio_id,
            order.key,
            order.side,
            order.candle_time if order.type == "market" else self._fill_candle(order, event.at_ms),
            reason,
            base,
            quote,
            order.status,
            take_profit,
            stop_loss,
            notes,
        )
        if order.side == "sell" and fill.position_after is not None and order.status == "filled":
            fill = self._dust(order, fill)
        out.fills.append((fill, event))

    def _dust(self, order: Order, fill: Fill) -> Fill:
        """An exit that leaves less than the market lets anyone sell (fees taken in the base asset,
        rounding to the step): the rest is dust. The position is closed and the dust recorded as
        such with the trade, so it is neither protected nor sold again and again."""
        position = fill.position_after
        assert position is not None
        try:
            rules = self.venues[order.broker].rules(order.key)
        except (MarketUnavailable, KeyError):
            return fill
        left = position.amount
        if rules.amount(left) > 0 and not (rules.min_amount and left < rules.min_amount):
            return fill
        self.ledger.replace(order.strategy_id, None)
        note = (f"dust: {left} {rules.base_asset} left, below what {rules.symbol} can sell (step "
                f"{rules.amount_step.normalize():f}, minimum {rules.min_amount.normalize():f}); recorded as dust, "
                "the position is closed")
        return fill._replace(position_after=None, notes=(*fill.notes, note))

    @staticmethod
    def _fill_candle(order: Order, at_ms: int) -> int:
        """The candle a fill belongs to: a market order's signal candle; for a resting order (limit,
        protective leg) the candle in which it filled."""
        if order.type == "market":
            return order.candle_time
        step = order.key.interval_ms
        return max(order.candle_time, at_ms - at_ms % step)

    # -- protection ------------------------------------------------------------------------------

    def ensure_protection(self, now: str, out: Effects, strategy_ids: Iterable[str] | None = None) -> None:
        """Make every position's protection (or these strategies') match it (start-up: positions
        restored from the store, e.g. written before protective orders existed, get theirs; a
        position taken over from another instance)."""
        wanted = None if strategy_ids is None else set(strategy_ids)
        for sid, holding in list(self.ledger.holdings()):
            if wanted is not None and sid not in wanted:
                continue
            venue = next((o.broker for o in self.book.protection(sid)), None) or self._venue_of(holding)
            if venue is not None:
                position = holding.position
                self._protect(sid, venue, position.entry_time, None, position.entry_price, now, out)

    def unprotected(self, venues: Iterable[str]) -> tuple[list[str], list[Note]]:
        """The protection invariant for positions on ``venues`` (exchanges that hold the orders
        themselves): strategies whose position has levels but whose protective orders are not
        live (the exchange cancelled or rejected them, a restart found them gone), and notes
        about positions that cannot be protected (dust, nine attempts used up). Positions with
        an order still awaiting an answer are left to that answer. No side effects."""
        wanted = set(venues)
        missing: list[str] = []
        notes: list[Note] = []
        if not wanted:
            return missing, notes
        book = self.book
        for sid, holding in list(self.ledger.holdings()):
            position = holding.position
            if position.take_profit is None and position.stop_loss is None:
                continue
            legs = book.protection(sid)
            venue = legs[0].broker if legs else self._venue_of(holding)
            if venue not in wanted or (legs and _matches(legs, position)) or book.awaiting(sid) is not None:
                continue
            try:
                rules = self.venues[venue].rules(holding.key)
            except (MarketUnavailable, KeyError):
                continue  # cannot tell now; the next check can
            amount = rules.amount(position.amount)
            if amount <= 0 or (rules.min_amount and amount < rules.min_amount):
                notes.append(Note(sid, "info", f"position {position.amount} is dust: too small to protect or sell"))
                continue
            last = [client_order_id(sid, position.entry_time, leg, 9) for leg in ("tp", "sl")]
            if any(coid in book for coid in last):
                notes.append(Note(sid, "error", "the position is not protected: nine protection attempts are used up"))
                continue
            missing.append(sid)
        return missing, notes

    def venue_of(self, holding: Holding) -> str | None:
        return self._venue_of(holding)

    def _venue_of(self, holding: Holding) -> str | None:
        """The venue of a position without protective orders: the one its portfolio trades on."""
        pid = holding.portfolio_id
        venue = self.portfolio_venues.get(pid) if pid is not None else None
        return venue if venue is not None else self.default_venue

    def _protect(
        self, sid: str, venue: str, candle_time: int, parent_id: str | None, reference: Decimal, now: str, out: Effects
    ) -> None:
        """Make the strategy's protective orders match its position (see the module docstring)."""
        holding = self.ledger.holding(sid)
        position = None if holding is None else holding.position
        if (position is None or (position.take_profit is None and position.stop_loss is None)) and not (
            self.book.has_active(sid)
        ):
            return  # nothing to protect, nothing protecting: the common case
        legs = self.book.protection(sid)
        wanted = position is not None and (position.take_profit is not None or position.stop_loss is not None)
        if legs and position is not None and wanted and _matches(legs, position):
            return
        job: list[Command] = []
        if legs:
            job.append(CancelRequest(legs[0].client_order_id, sid, "the position changed"))
            venue = legs[0].broker
        if wanted and holding is not None:
            replaces = legs[0].client_order_id if legs else None
            request = self._protect_request(sid, venue, holding, candle_time, parent_id, reference, replaces, now, out)
            if request is not None:
                job.append(request)
        if job:
            out.jobs.append((venue, job))

    def _protect_request(
        self,
        sid: str,
        venue: str,
        holding: Holding,
        candle_time: int,
        parent_id: str | None,
        reference: Decimal,
        replaces: str | None,
        now: str,
        out: Effects,
    ) -> ProtectRequest | None:
        position = holding.position
        for attempt in range(1, 10):
            ids = [client_order_id(sid, candle_time, action, attempt) for action in ("oco", "tp", "sl")]
            if not any(i in self.book for i in ids):
                break
        else:
            out.notes.append(Note(sid, "error", "cannot protect the position: nine protection attempts on one candle "
                                  "already", {"candle_time": candle_time}))
            return None
        tp, sl = position.take_profit, position.stop_loss
        request = ProtectRequest(
            ids[0],
            ids[1] if tp is not None else None,
            ids[2] if sl is not None else None,
            sid,
            holding.portfolio_id,
            holding.key,
            position.amount,
            tp,
            sl,
            candle_time,
            parent_id,
            replaces,
        )
        for leg in Order.legs_of(request, venue, reference, now):
            self.book.add(leg)
            out.orders[leg.client_order_id] = leg
        return request


def _levels(order: Order, price: Decimal) -> tuple[Decimal | None, Decimal | None, tuple[str, ...]]:
    take_profit, stop_loss = order.take_profit, order.stop_loss
    notes: list[str] = []
    if take_profit is not None and take_profit <= price:
        notes.append(f"takeProfit {take_profit} is not above the fill price {price}; ignored")
        take_profit = None
    if stop_loss is not None and stop_loss >= price:
        notes.append(f"stopLoss {stop_loss} is not below the fill price {price}; ignored")
        stop_loss = None
    return take_profit, stop_loss, tuple(notes)


def _matches(legs: list[Order], position: Position) -> bool:
    levels = {leg.leg: leg.level for leg in legs}
    wanted = {k: v for k, v in (("tp", position.take_profit), ("sl", position.stop_loss)) if v is not None}
    return levels == wanted and all(leg.amount == position.amount for leg in legs)


# -- the synchronous shell -------------------------------------------------------------------------


class SyncBroker(Protocol):
    """A broker that answers at once (the paper exchange): the backtest's and ``strategy check``'s."""

    def execute(self, request: OrderRequest) -> SubmitResult: ...

    def protect_now(self, request: ProtectRequest) -> SubmitResult: ...

    def cancel_now(self, client_order_id: str) -> None: ...

    def drain(self) -> list[BrokerEvent]: ...


def run_sync(desk: OrderDesk, broker: SyncBroker, now: str, out: Effects) -> None:
    """Apply the events ``broker`` holds, then run ``out.jobs`` and every follow-up job they
    cause, in order, until nothing is left to do."""
    for event in broker.drain():
        desk.on_event(event, now, out)
    jobs = out.jobs
    while jobs:
        for command in jobs.pop(0)[1]:
            if not desk.before(command, now, out):
                continue
            if type(command) is OrderRequest:
                desk.on_result(command, broker.execute(command), now, out)
            elif type(command) is ProtectRequest:
                desk.on_result(command, broker.protect_now(command), now, out)
            else:
                broker.cancel_now(command.client_order_id)  # type: ignore[union-attr]  # a CancelRequest
            for event in broker.drain():
                desk.on_event(event, now, out)
