"""Live trading: the :class:`~tradebotd.broker.base.Broker` seam on the exchange port
(:class:`~tradebotd.exchange.ccxt_exchange.CcxtExchange`, the real ccxt underneath).

The same commands and events as the paper exchange (:mod:`tradebotd.broker.paper`, the reference),
so the engine has one path for both. What this broker adds is everything a real exchange does to
you, each handled in one place:

* **Answers that may or may not have placed the order.** A timeout, a cut connection or a 5xx
  after sending (the port's ``Ambiguous``), or any surprise once the request may have left, is
  :class:`Unknown`; the order is then only ever *asked about* by its client order id
  (``origClientOrderId``), never sent again. Nothing sent (the port's ``Retryable``: our own
  budget said wait, a connection that never opened, a clock skew the exchange refused) and a
  refusal (``Permanent``) are :class:`Rejected`.
* **Exits sized from the free balance.** Before a sell or a protection the account's free base
  balance is read (concurrent requests share one read) and the amount capped to it, rounded down
  to the step: a buy's fee taken in the base asset leaves less than was bought. A candle's sells
  that come first in their jobs have it read by :meth:`LiveBroker.prepare`, while their intents
  commit (one read for all of them); a sell after a cancel reads it after the cancel. What remains
  below the market's minimums is dust: refused with a reason that says so, never retried.
* **Protection on the exchange.** Two levels: one OCO sell (``POST /api/v3/orderList/oco``, a
  ``LIMIT_MAKER`` take-profit and a ``STOP_LOSS`` stop). One level: the single order (a
  ``STOP_LOSS`` stop, or a limit sell at the take-profit). A level the market has already
  touched (the last kline price, or the exchange's "Order would trigger immediately.") becomes a
  market exit now, on the touched leg's client order id: the position is never left unprotected
  because its stop was too tight.
* **Protection the exchange cannot hold** (a market without OCO lists, or without stop orders
  for a stop alone): the levels are watched here from the kline feed, as the paper exchange does
  (candles after the one it was placed on; the stop first), and the touched level is sold at
  market on its leg's client order id. Until then the legs carry placeholder exchange ids (the
  list's or the leg's client order id); after a restart they are watched again, not asked about.
* **Exchange-side exits.** :meth:`LiveBroker.run` polls every ``poll_s`` (and at once after a
  closed kline): the open orders of each symbol with tracked orders, then every tracked order
  that is no longer open, by client order id; its fills come from ``myTrades`` with the real
  price and fee. Events go to the inbox and ``inbox_ready`` is set. An OCO leg that ended
  without fills (cancelled, or expired because its sibling acted) is reported before the
  sibling's fills.
* **Idempotent fills.** Each fill is a :class:`Filled` keyed by exchange order id and trade id;
  the order book applies each once however often it is reported (after a restart, a poll and a
  reconciliation may report the same trade).
* **Order not found.** Binance's -2013 right after placing can be lag: an order younger than
  ``not_found_grace_s`` stays ``unknown`` and is asked again at the next poll; after that the
  exchange never saw it (:class:`Rejected`). An order that was open and is now not found is
  :class:`Cancelled`.
* **Bans.** A 418 stops every request (the request budget refuses to send until the ban ends,
  with one log line); the poller skips its rounds meanwhile and :attr:`LiveBroker.banned_until_ms`
  says until when (ops health reads it). A 429 backs off the same way for its ``Retry-After``.

Start-up: :meth:`reconcile` loads the markets (``rules`` answers from memory afterwards; a symbol
the exchange does not list, or not trading, is :class:`MarketUnavailable`), asks the exchange about
every active order the engine restored, and reads the balances. Orders it could not ask about (the
exchange unreachable, keys refused) are in :meth:`unresolved`; the engine does not trade their
strategies.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import orjson
import structlog

from ..exchange.errors import (
    Ambiguous,
    Banned,
    DuplicateOrder,
    ExchangeError,
    InvalidOrder,
    OrderNotFound,
    RateLimited,
    Retryable,
)
from ..exchange.model import Balance, ExchangeOrder, ExchangePort, ExchangeTrade, OcoRequest, OrderKind, OrderList
from ..exchange.model import MarketRules as ExchangeRules
from ..exchange.throttle import RequestBudget
from ..model import Candle, StreamKey
from ..orders.model import (
    ACTIVE,
    Accepted,
    BrokerEvent,
    Cancelled,
    Expired,
    Filled,
    MarketRules,
    MarketUnavailable,
    OrderLeg,
    OrderRecord,
    OrderRequest,
    ProtectRequest,
    Rejected,
    SubmitResult,
    Unknown,
)
from ..orders.validate import OrderCap, max_quote_cap

__all__ = ["LiveBroker", "list_client_order_id", "order_rules"]

log = structlog.get_logger(__name__)

_ZERO = Decimal(0)
_LEG_ID = re.compile(r"-(tp|sl)(-p\d)?$")
_IMMEDIATE = ("would trigger immediately", "would immediately match")
ALL_SYMBOLS_AFTER = 12
"""With open orders on more symbols than this, one poll asks for all open orders at once."""


def list_client_order_id(leg_client_order_id: str) -> str:
    """The OCO list's client order id of one of its legs (``...-tp[-pN]`` -> ``...-oco[-pN]``):
    the desk names a protection's list and legs after the same candle and attempt."""
    return _LEG_ID.sub(lambda m: "-oco" + (m.group(2) or ""), leg_client_order_id)


def order_rules(rules: ExchangeRules) -> MarketRules:
    """The exchange port's market rules as the order core uses them."""
    return MarketRules(
        symbol=rules.symbol,
        base_asset=rules.base,
        quote_asset=rules.quote,
        amount_step=rules.amount_step,
        price_tick=rules.price_tick,
        min_amount=rules.min_amount,
        min_notional=rules.min_notional or _ZERO,
        max_amount=rules.max_amount,
        trading=rules.trading,
        native_protection=rules.oco,
    )


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False)
class _Tracked:
    """One order this broker watches on the exchange until it is done."""

    client_order_id: str
    symbol: str
    leg: OrderLeg
    since_ms: int  # when the order was placed (or its intent recorded): the -2013 grace starts here
    exchange_order_id: str | None = None
    list_client_order_id: str | None = None  # an OCO leg's list
    accepted: bool = False  # the engine knows the order is on the exchange (open or done)
    was_open: bool = False  # the exchange reported it open once
    filled: Decimal = _ZERO  # the quantity whose fills the engine has been told of
    trades: set[str] = field(default_factory=set)  # trade ids reported


@dataclass(eq=False)
class _Watch:
    """A protection the exchange cannot hold (no OCO, no stop orders on that market): its levels
    are watched here, from the kline feed, as the paper exchange does; the touched level is sold
    at market on its leg's client order id."""

    list_client_order_id: str
    key: StreamKey
    amount: Decimal
    after: int  # candles opening after this time count
    tp_client_order_id: str | None
    take_profit: Decimal | None
    sl_client_order_id: str | None
    stop_loss: Decimal | None


class LiveBroker:
    """The live broker on one exchange account (see the module docstring).

    ``exchange``: the port (its ``id`` is this broker's ``name``); ``budget``: its request budget
    (for :attr:`banned_until_ms`); ``max_order_quote``: the per-order cap in the quote asset."""

    durable_intents = True

    def __init__(
        self,
        exchange: ExchangePort,
        *,
        max_order_quote: Decimal,
        poll_s: float = 5.0,
        budget: RequestBudget | None = None,
        not_found_grace_s: float = 10.0,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.exchange = exchange
        self.name = exchange.id
        self.order_cap: OrderCap | None = max_quote_cap(max_order_quote)
        self.max_order_quote = max_order_quote
        self.poll_s = poll_s
        self.budget = budget
        self.not_found_grace_ms = int(not_found_grace_s * 1000)
        self._now_ms = now_ms
        self.inbox_ready = asyncio.Event()
        self._inbox: list[BrokerEvent] = []
        self._rules: dict[str, MarketRules] = {}
        self._exchange_rules: dict[str, ExchangeRules] = {}
        self._markets_loaded = False
        self._markets_error: str | None = None
        self._tracked: dict[str, _Tracked] = {}
        self._lists: dict[str, list[str]] = {}  # list client order id -> its legs' client order ids
        self._in_flight: set[str] = set()  # being placed or cancelled now: the poller leaves them alone
        self._last_price: dict[str, Decimal] = {}
        self._balances_task: asyncio.Future[Mapping[str, Balance]] | None = None
        self._prepared: dict[str, asyncio.Future[Mapping[str, Balance]]] = {}  # exit's client order id -> its read
        self.balances: Mapping[str, Balance] = {}
        """the account's balances as last read (reconciliation, exits)"""
        self._unresolved: dict[str, str] = {}
        self._reconciled = False
        self._banned_until_ms: int | None = None
        self._wake = asyncio.Event()
        self.polls = 0  # completed poll rounds (tests, metrics)
        self._watches: dict[str, _Watch] = {}  # by list client order id
        self._watch_of: dict[str, str] = {}  # leg client order id -> its watch's list client order id
        self._tasks: set[asyncio.Task[None]] = set()

    # -- queries ---------------------------------------------------------------------------------

    def rules(self, key: StreamKey) -> MarketRules:
        rules = self._rules.get(key.symbol)
        if rules is None:
            if not self._markets_loaded:
                why = f": {self._markets_error}" if self._markets_error else ""
                raise MarketUnavailable(f"{self.name}'s markets are not loaded yet{why}")
            raise MarketUnavailable(f"{self.name} has no spot market {key.symbol}")
        if not rules.trading:
            status = self._exchange_rules[key.symbol].status
            raise MarketUnavailable(f"{key.symbol} is not trading on {self.name} (status {status})")
        return rules

    @property
    def banned_until_ms(self) -> int | None:
        """Wall-clock ms until which the exchange bans this IP (HTTP 418), or None."""
        now = self._now_ms()
        if self.budget is not None:
            status = self.budget.status()
            return now + int(status.blocked_for_s * 1000) if status.banned else None
        if self._banned_until_ms is not None and self._banned_until_ms > now:
            return self._banned_until_ms
        return None

    def available(self) -> bool:
        """Markets loaded and no ban: orders can go out."""
        return self._markets_loaded and self.banned_until_ms is None

    def unresolved(self) -> Mapping[str, str]:
        """Active orders the exchange could not be asked about (client order id -> why)."""
        return dict(self._unresolved)

    def tracked(self) -> list[str]:
        """Client order ids of the orders watched on the exchange."""
        return list(self._tracked)

    def watched_keys(self) -> Iterable[StreamKey]:
        """Streams whose klines drive a protection watched here (none on Binance spot)."""
        return {watch.key for watch in self._watches.values()}

    def drain(self) -> list[BrokerEvent]:
        events, self._inbox = self._inbox, []
        return events

    def on_candle(self, candle: Candle) -> None:
        """The last price of each symbol (a protection's levels are checked against it before
        sending); a closed kline nudges the poller, so exits are learned by the next candle."""
        self._last_price[candle.symbol] = candle.close
        if candle.closed and self._tracked:
            self._wake.set()
        if self._watches:
            self._check_watches(candle)

    # -- commands --------------------------------------------------------------------------------

    def prepare(self, requests: Sequence[OrderRequest]) -> bool:
        """A candle's orders, before their intents are committed: the free balance their exits
        will be sized from is read now (one read for all of them; a read, so nothing the intent
        comes first for), and it is on its way while the intents commit."""
        exits = [r.client_order_id for r in requests if r.side == "sell" and r.key.symbol in self._exchange_rules]
        if not exits or self.banned_until_ms is not None:
            return False
        for coid in [c for c, read in self._prepared.items() if read.done()]:
            del self._prepared[coid]  # left by orders the desk did not send after all
        read = self._read_balances()
        for coid in exits:
            self._prepared[coid] = read
        return True

    async def submit(self, request: OrderRequest) -> SubmitResult:
        coid = request.client_order_id
        symbol = request.key.symbol
        at = self._now_ms()
        rules = self._exchange_rules.get(symbol)
        if rules is None:
            return Rejected(coid, f"not sent: {self.name} has no market {symbol} loaded", None, at)
        self._in_flight.add(coid)
        try:
            amount = request.amount
            if request.side == "sell":
                read = self._prepared.pop(coid, None)
                amount, problem = await self._sellable(rules, amount, request.reference_price, read)
                if problem is not None:
                    return Rejected(coid, problem, None, at)
            kind: OrderKind = "limit" if request.type == "limit" else "market"
            tracked = self._track(coid, symbol, request.leg, at)
            try:
                order = await self.exchange.create_order(
                    symbol, request.side, kind, amount, client_order_id=coid, price=request.limit_price
                )
            except BaseException as exc:
                return self._failed(tracked, exc, at)
            _answered(tracked, order)  # the result says it; no Accepted event too
            self._inbox.extend(await self._events(tracked, order))
            return Accepted(coid, order.exchange_order_id, at, order.amount, _raw(order.raw))
        finally:
            self._in_flight.discard(coid)

    async def protect(self, request: ProtectRequest) -> SubmitResult:
        list_coid = request.list_client_order_id
        symbol = request.key.symbol
        at = self._now_ms()
        rules = self._exchange_rules.get(symbol)
        tp, sl = request.take_profit, request.stop_loss
        tp_coid = request.tp_client_order_id if tp is not None else None
        sl_coid = request.sl_client_order_id if sl is not None else None
        if rules is None:
            return Rejected(list_coid, f"not sent: {self.name} has no market {symbol} loaded", None, at)
        if tp_coid is None and sl_coid is None:
            return Rejected(list_coid, "a protection needs a take-profit or a stop-loss", None, at)
        legs = [c for c in (tp_coid, sl_coid) if c is not None]
        self._in_flight.update(legs)
        try:
            amount, problem = await self._sellable(rules, request.amount, sl or tp or _ZERO)
            if amount < request.amount:
                # Less is free than the position holds: maybe because this very protection is on
                # the exchange already (placed just before a crash). Then it is adopted, not doubled.
                adopted = await self._adopt(request, tp_coid, sl_coid, at)
                if adopted is not None:
                    return adopted
            if problem is not None:
                return Rejected(list_coid, problem, None, at)
            last = self._last_price.get(symbol)
            if last is not None and sl is not None and last <= sl:
                why = f"the price {last} is at or below the stop-loss {sl}"
                return await self._exit_now(request, amount, "sl", why)
            if last is not None and tp is not None and last >= tp:
                why = f"the price {last} is at or above the take-profit {tp}"
                return await self._exit_now(request, amount, "tp", why)
            if not _native(rules, tp_coid is not None, sl_coid is not None):
                return self._watch(request, amount, at)
            if tp_coid is not None and sl_coid is not None:
                assert tp is not None and sl is not None
                return await self._place_oco(request, amount, tp, sl, tp_coid, sl_coid, at)
            coid = tp_coid or sl_coid
            assert coid is not None
            tracked = self._track(coid, symbol, "tp" if tp_coid else "sl", at)
            try:
                if sl_coid is not None:
                    order = await self.exchange.create_order(
                        symbol, "sell", "stop_loss", amount, client_order_id=coid, stop_price=sl
                    )
                else:
                    order = await self.exchange.create_order(
                        symbol, "sell", "limit", amount, client_order_id=coid, price=tp
                    )
            except InvalidOrder as exc:
                if _immediate(exc):
                    self._untrack(coid)
                    return await self._exit_now(request, amount, "sl" if sl_coid else "tp", str(exc))
                return self._failed(tracked, exc, at)
            except BaseException as exc:
                return self._failed(tracked, exc, at)
            _answered(tracked, order)
            self._inbox.extend(await self._events(tracked, order))
            return Accepted(list_coid, order.exchange_order_id, at, order.amount, _raw(order.raw))
        finally:
            self._in_flight.difference_update(legs)

    async def _place_oco(
        self,
        request: ProtectRequest,
        amount: Decimal,
        tp: Decimal,
        sl: Decimal,
        tp_coid: str,
        sl_coid: str,
        at: int,
    ) -> SubmitResult:
        list_coid = request.list_client_order_id
        symbol = request.key.symbol
        legs = [self._track(tp_coid, symbol, "tp", at, list_coid), self._track(sl_coid, symbol, "sl", at, list_coid)]
        self._lists[list_coid] = [tp_coid, sl_coid]
        try:
            placed = await self.exchange.create_oco(
                OcoRequest(symbol, "sell", amount, tp, sl, list_coid, tp_coid, sl_coid)
            )
        except InvalidOrder as exc:
            if _immediate(exc):
                for leg in legs:
                    self._untrack(leg.client_order_id)
                return await self._exit_now(request, amount, "sl", str(exc))
            return self._failed_list(list_coid, legs, exc, at)
        except BaseException as exc:
            return self._failed_list(list_coid, legs, exc, at)
        self._inbox.extend(await self._list_events(legs, placed))
        return Accepted(list_coid, placed.list_id, at, amount, _raw(placed.raw))

    async def _adopt(
        self, request: ProtectRequest, tp_coid: str | None, sl_coid: str | None, at: int
    ) -> SubmitResult | None:
        """The protection ``request`` names, if the exchange holds it open already."""
        list_coid = request.list_client_order_id
        symbol = request.key.symbol
        try:
            if tp_coid is not None and sl_coid is not None:
                found = await self.exchange.fetch_oco(list_coid)
                if not found.is_open:
                    return None
                legs = [
                    self._track(tp_coid, symbol, "tp", at, list_coid),
                    self._track(sl_coid, symbol, "sl", at, list_coid),
                ]
                self._lists[list_coid] = [tp_coid, sl_coid]
                ids = {ref.client_order_id: ref.exchange_order_id for ref in found.legs}
                for leg in legs:
                    leg.accepted = leg.was_open = True
                    leg.exchange_order_id = ids.get(leg.client_order_id)
                    if leg.exchange_order_id is not None:
                        self._inbox.append(Accepted(leg.client_order_id, leg.exchange_order_id, at, request.amount))
                log.info("protection found on the exchange already; adopted", broker=self.name, list=list_coid)
                return Accepted(list_coid, found.list_id, at, request.amount, _raw(found.raw))
            coid = tp_coid or sl_coid
            assert coid is not None
            order = await self.exchange.fetch_order(symbol, coid)
        except ExchangeError:
            return None
        if not order.is_open:
            return None
        tracked = self._track(coid, symbol, "tp" if coid == tp_coid else "sl", at)
        _answered(tracked, order)
        tracked.was_open = True
        log.info("protection found on the exchange already; adopted", broker=self.name, client_order_id=coid)
        return Accepted(list_coid, order.exchange_order_id, at, order.amount, _raw(order.raw))

    async def _exit_now(self, request: ProtectRequest, amount: Decimal, touched: str, why: str) -> SubmitResult:
        """A level the market has already reached: sell at market now, on that leg's client order
        id (the other leg, if any, is reported cancelled first)."""
        at = self._now_ms()
        list_coid = request.list_client_order_id
        coid = (request.sl_client_order_id if touched == "sl" else request.tp_client_order_id) or list_coid
        other = request.tp_client_order_id if touched == "sl" else request.sl_client_order_id
        two = request.tp_client_order_id is not None and request.sl_client_order_id is not None
        symbol = request.key.symbol
        log.warning(
            "protective level already touched; exiting at market", broker=self.name, symbol=symbol,
            client_order_id=coid, reason=why,
        )
        tracked = self._track(coid, symbol, "sl" if touched == "sl" else "tp", at)
        try:
            order = await self.exchange.create_order(symbol, "sell", "market", amount, client_order_id=coid)
        except BaseException as exc:
            return self._failed(tracked, exc, at, list_coid)  # for the list: both legs alike
        events: list[BrokerEvent] = []
        if two and other is not None:
            # The list's answer opens both legs; the other was never placed, this one is the exit.
            events.append(Cancelled(other, f"not placed: {why}; sold at market instead", at))
            events.append(Accepted(coid, order.exchange_order_id, at, order.amount, _raw(order.raw)))
        _answered(tracked, order)
        events.extend(await self._events(tracked, order))
        self._inbox.extend(events)
        return Accepted(list_coid, order.exchange_order_id, at, order.amount, _raw(order.raw))

    async def cancel(self, client_order_id: str) -> None:
        watched = self._watch_of.get(client_order_id)
        if watched is not None:
            watch = self._unwatch(watched)
            at = self._now_ms()
            for coid in (watch.tp_client_order_id, watch.sl_client_order_id):
                if coid is not None:
                    self._inbox.append(Cancelled(coid, "cancelled on request", at))
            return
        tracked = self._tracked.get(client_order_id)
        if tracked is None:
            log.warning("cancel of an order this broker does not watch", broker=self.name,
                        client_order_id=client_order_id)
            return
        symbol = tracked.symbol
        list_coid = tracked.list_client_order_id
        legs = [self._tracked[c] for c in self._lists.get(list_coid, ()) if c in self._tracked] if list_coid else []
        if not legs:
            legs = [tracked]
        ids = [leg.client_order_id for leg in legs]
        self._in_flight.update(ids)
        try:
            try:
                if list_coid is not None:
                    answer = await self.exchange.cancel_oco(symbol, list_coid)
                    events = await self._list_events(legs, answer)
                else:
                    order = await self.exchange.cancel_order(symbol, client_order_id)
                    events = await self._events(tracked, order)
            except OrderNotFound:
                # Not open any more: filled (or expired) meanwhile. Its final state says which.
                events = await self._ask(legs)
            self._inbox.extend(events)
        except ExchangeError as exc:
            log.warning("cancel failed", broker=self.name, client_order_id=client_order_id, error=str(exc))
        finally:
            self._in_flight.difference_update(ids)

    async def reconcile(self, known: Sequence[OrderRecord]) -> list[BrokerEvent]:
        """The events that bring the engine's active orders on this broker to the exchange's truth
        (see the module docstring); also reads the balances. Never raises."""
        if not await self._load_markets():
            for record in known:
                if record.broker == self.name and record.status in ACTIVE:
                    self._unresolved[record.client_order_id] = f"markets not loaded: {self._markets_error}"
            return []
        first = not self._reconciled
        watched: list[_Tracked] = []
        for record in known:
            coid = record.client_order_id
            if record.broker != self.name or record.status not in ACTIVE or coid in self._in_flight:
                continue
            if not first and coid in self._tracked:
                continue  # the poller watches it
            if not first and record.status in ("new", "pending"):
                continue  # not handed to this broker yet (its intent is being committed, or it waits its turn)
            if coid in self._watch_of or self._rewatch(record):
                continue  # a protective leg watched here, not on the exchange
            watched.append(self._track_record(record))
        events: list[BrokerEvent] = []
        by_symbol: dict[str, list[_Tracked]] = {}
        for tracked in watched:
            by_symbol.setdefault(tracked.symbol, []).append(tracked)
        for trackeds in by_symbol.values():
            events.extend(await self._ask(trackeds, reconciling=True))
        try:
            self.balances = await self.exchange.balances()
        except ExchangeError as exc:
            log.warning("could not read the balances", broker=self.name, error=str(exc))
        self._reconciled = True
        return events

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.exchange.close()

    # -- protection watched here -----------------------------------------------------------------

    def _watch(self, request: ProtectRequest, amount: Decimal, at: int) -> SubmitResult:
        list_coid = request.list_client_order_id
        watch = _Watch(list_coid, request.key, amount, request.candle_time, request.tp_client_order_id,
                       request.take_profit, request.sl_client_order_id, request.stop_loss)
        self._add_watch(watch)
        log.info("protective levels watched by the daemon: the exchange cannot hold them on this market",
                 broker=self.name, symbol=request.key.symbol, list=list_coid)
        legs = [c for c in (watch.tp_client_order_id, watch.sl_client_order_id) if c is not None]
        # Like paper: a list's id is its list id, a single order's its client order id (until the
        # exchange order that carries the exit out gives it a real one).
        return Accepted(list_coid, list_coid if len(legs) > 1 else legs[0], at, amount)

    def _add_watch(self, watch: _Watch) -> None:
        self._watches[watch.list_client_order_id] = watch
        for coid in (watch.tp_client_order_id, watch.sl_client_order_id):
            if coid is not None:
                self._watch_of[coid] = watch.list_client_order_id

    def _unwatch(self, list_coid: str) -> _Watch:
        watch = self._watches.pop(list_coid)
        for coid in (watch.tp_client_order_id, watch.sl_client_order_id):
            if coid is not None:
                self._watch_of.pop(coid, None)
        return watch

    def _rewatch(self, record: OrderRecord) -> bool:
        """A protective leg watched here before a restart (its exchange ids are placeholders)."""
        coid = record.client_order_id
        if record.leg not in ("tp", "sl") or record.status not in ("open", "partially_filled"):
            return False
        list_coid = list_client_order_id(coid)
        single = record.list_id is None and record.exchange_order_id == coid
        if not single and record.list_id != list_coid:
            return False
        key = list_coid if not single else coid
        watch = self._watches.get(key) or _Watch(key, record.key, record.amount - record.filled_amount,
                                                 record.candle_time, None, None, None, None)
        if record.leg == "tp":
            watch.tp_client_order_id, watch.take_profit = coid, record.limit_price
        else:
            watch.sl_client_order_id, watch.stop_loss = coid, record.stop_price
        self._add_watch(watch)
        return True

    def _check_watches(self, candle: Candle) -> None:
        for watch in list(self._watches.values()):
            if watch.key.symbol != candle.symbol or candle.open_time <= watch.after:
                continue
            if watch.stop_loss is not None and candle.low <= watch.stop_loss:
                touched = "sl"
            elif watch.take_profit is not None and candle.high >= watch.take_profit:
                touched = "tp"
            else:
                continue
            self._unwatch(watch.list_client_order_id)
            task = asyncio.get_running_loop().create_task(self._carry_out(watch, touched))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _carry_out(self, watch: _Watch, touched: str) -> None:
        """Sell at market the position a watched level protects (the other leg cancelled first)."""
        coid = watch.sl_client_order_id if touched == "sl" else watch.tp_client_order_id
        other = watch.tp_client_order_id if touched == "sl" else watch.sl_client_order_id
        assert coid is not None
        symbol = watch.key.symbol
        at = self._now_ms()
        rules = self._exchange_rules.get(symbol)
        events: list[BrokerEvent] = []
        self._in_flight.add(coid)
        try:
            amount, problem = (watch.amount, None) if rules is None else await self._sellable(
                rules, watch.amount, self._last_price.get(symbol, _ZERO))
            if problem is not None:
                log.error("a watched level was touched but the position cannot be sold", broker=self.name,
                          client_order_id=coid, reason=problem)
                return
            tracked = self._track(coid, symbol, "sl" if touched == "sl" else "tp", at)
            try:
                order = await self.exchange.create_order(symbol, "sell", "market", amount, client_order_id=coid)
            except Ambiguous as exc:
                log.error("the exit of a watched level got no definite answer; asked at the next poll",
                          broker=self.name, client_order_id=coid, error=str(exc))
                return
            except ExchangeError as exc:
                self._untrack(coid)
                self._add_watch(watch)  # still protecting: the next kline that touches it tries again
                log.error("the exit of a watched level failed; still watched", broker=self.name,
                          client_order_id=coid, error=str(exc))
                return
            if other is not None:
                events.append(Cancelled(other, f"the {touched} leg was touched", at))
            events.extend(await self._events(tracked, order))
        finally:
            self._in_flight.discard(coid)
            if events:
                self._inbox.extend(events)
                self.inbox_ready.set()

    # -- the poller ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll the exchange every ``poll_s`` (sooner after a closed kline) for what happened to
        the watched orders; events go to the inbox (supervised by the daemon)."""
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()
            try:
                events = await self.poll()
            except Exception:  # a surprise in one round must not stop the watching (nor crash-loop)
                log.exception("poll round failed", broker=self.name)
                continue
            if events:
                self._inbox.extend(events)
                self.inbox_ready.set()

    async def poll(self) -> list[BrokerEvent]:
        """One poll round; returns its events (``run`` puts them in the inbox)."""
        events: list[BrokerEvent] = []
        if self.banned_until_ms is not None:
            return events
        if not self._markets_loaded:
            await self._load_markets()
            return events
        by_symbol: dict[str, list[_Tracked]] = {}
        for tracked in list(self._tracked.values()):
            if tracked.client_order_id not in self._in_flight:
                by_symbol.setdefault(tracked.symbol, []).append(tracked)
        everything: dict[str, ExchangeOrder] | None = None
        if len(by_symbol) > ALL_SYMBOLS_AFTER:
            # Binance: openOrders costs 6 per symbol, 80 for all of them.
            try:
                everything = {o.client_order_id: o for o in await self.exchange.open_orders()}
            except ExchangeError as exc:
                self._note_error(exc)
                log.warning("polling open orders failed", broker=self.name, error=str(exc))
                return events
        for symbol, trackeds in by_symbol.items():
            if everything is not None:
                open_orders = everything
            else:
                try:
                    open_orders = {o.client_order_id: o for o in await self.exchange.open_orders(symbol)}
                except ExchangeError as exc:
                    self._note_error(exc)
                    log.warning("polling open orders failed", broker=self.name, symbol=symbol, error=str(exc))
                    continue
            gone: list[_Tracked] = []
            for tracked in trackeds:
                order = open_orders.get(tracked.client_order_id)
                if order is None:
                    gone.append(tracked)
                elif tracked.client_order_id in self._tracked:
                    events.extend(await self._events(tracked, order))
            if gone:
                events.extend(await self._ask(gone))
        self.polls += 1
        return events

    # -- asking the exchange ---------------------------------------------------------------------

    async def _ask(self, trackeds: Sequence[_Tracked], *, reconciling: bool = False) -> list[BrokerEvent]:
        """Each order's state by client order id, as events; legs that ended without fills first."""
        first: list[BrokerEvent] = []
        rest: list[BrokerEvent] = []
        for tracked in trackeds:
            coid = tracked.client_order_id
            if coid not in self._tracked and not reconciling:
                continue
            try:
                order = await self.exchange.fetch_order(tracked.symbol, coid)
            except OrderNotFound as exc:
                self._unresolved.pop(coid, None)
                rest.extend(self._not_found(tracked, exc))
                continue
            except ExchangeError as exc:
                self._note_error(exc)
                self._unresolved[coid] = str(exc)
                log.warning("could not ask the exchange about an order", broker=self.name, client_order_id=coid,
                            error=str(exc))
                continue
            self._unresolved.pop(coid, None)
            events = await self._events(tracked, order)
            quiet_leg = tracked.leg in ("tp", "sl") and not any(type(e) is Filled for e in events)
            (first if quiet_leg else rest).extend(events)
        return first + rest

    def _not_found(self, tracked: _Tracked, exc: OrderNotFound) -> list[BrokerEvent]:
        now = self._now_ms()
        coid = tracked.client_order_id
        if tracked.was_open or (tracked.accepted and tracked.exchange_order_id is not None):
            self._untrack(coid)
            return [Cancelled(coid, f"no longer on the exchange ({exc})", now)]
        if now - tracked.since_ms < self.not_found_grace_ms:
            return []  # maybe the exchange's lag right after placing: asked again at the next poll
        self._untrack(coid)
        return [Rejected(coid, "the exchange never saw this order", str(exc.code) if exc.code else None, now)]

    async def _events(self, tracked: _Tracked, order: ExchangeOrder) -> list[BrokerEvent]:
        """What ``order`` (the exchange's view of ``tracked``) tells the engine that it has not
        been told yet: accepted, new fills, and its end."""
        events: list[BrokerEvent] = []
        coid = tracked.client_order_id
        now = self._now_ms()
        if order.state == "rejected" and not tracked.accepted:
            self._untrack(coid)
            return [Rejected(coid, "rejected by the exchange", None, now, _raw(order.raw))]
        if not tracked.accepted or tracked.exchange_order_id is None:
            events.append(Accepted(coid, order.exchange_order_id, now, order.amount, _raw(order.raw)))
            tracked.accepted = True
        tracked.exchange_order_id = order.exchange_order_id
        if order.is_open:
            tracked.was_open = True
        all_fills = True
        if order.filled > tracked.filled:
            trades: Sequence[ExchangeTrade] = order.trades
            if sum((t.amount for t in trades), _ZERO) < order.filled:
                try:
                    trades = await self.exchange.my_trades(tracked.symbol, order_id=order.exchange_order_id)
                except ExchangeError as exc:
                    self._note_error(exc)
                    log.warning("could not read an order's fills", broker=self.name, client_order_id=coid,
                                error=str(exc))
                    trades = ()
            mine = [t for t in trades if t.order_id in (order.exchange_order_id, "")]
            total = sum((t.amount for t in mine), _ZERO)
            all_fills = total >= order.filled
            tracked.filled = max(tracked.filled, total)
            for i, trade in enumerate(mine):
                if trade.trade_id in tracked.trades:
                    continue
                tracked.trades.add(trade.trade_id)
                complete = all_fills and order.state == "filled" and i == len(mine) - 1
                events.append(
                    Filled(coid, order.exchange_order_id, trade.trade_id, trade.amount, trade.price, trade.fee,
                           trade.fee_asset, trade.at_ms or order.updated_ms or now, complete)
                )
        if not all_fills:
            return events  # the rest of its fills at the next poll
        if order.state == "filled":
            self._untrack(coid)
        elif order.state == "cancelled":
            self._untrack(coid)
            events.append(Cancelled(coid, "cancelled on the exchange", now, _raw(order.raw)))
        elif order.state == "expired":
            self._untrack(coid)
            why = "the other leg of its list acted" if tracked.list_client_order_id else "expired on the exchange"
            events.append(Expired(coid, why, now, _raw(order.raw)))
        elif order.state == "rejected":
            self._untrack(coid)
            events.append(Cancelled(coid, "rejected by the exchange", now, _raw(order.raw)))
        return events

    async def _list_events(self, legs: Sequence[_Tracked], answer: OrderList) -> list[BrokerEvent]:
        """A list's answer (placed or cancelled): each leg's report, quiet legs first."""
        reports = {o.client_order_id: o for o in answer.orders}
        if not reports:
            return await self._ask(legs)
        first: list[BrokerEvent] = []
        rest: list[BrokerEvent] = []
        for leg in legs:
            order = reports.get(leg.client_order_id)
            if order is None:
                continue
            events = await self._events(leg, order)
            (rest if any(type(e) is Filled for e in events) else first).extend(events)
        return first + rest

    # -- plumbing --------------------------------------------------------------------------------

    async def _load_markets(self) -> bool:
        if self._markets_loaded:
            return True
        try:
            markets = await self.exchange.load_markets()
        except ExchangeError as exc:
            self._note_error(exc)
            self._markets_error = str(exc)
            log.error("could not load the exchange's markets", broker=self.name, error=str(exc))
            return False
        self._exchange_rules = dict(markets)
        self._rules = {symbol: order_rules(rules) for symbol, rules in markets.items()}
        self._markets_loaded = True
        self._markets_error = None
        log.info("exchange markets loaded", broker=self.name, markets=len(markets))
        return True

    async def _sellable(
        self,
        rules: ExchangeRules,
        amount: Decimal,
        price: Decimal,
        read: asyncio.Future[Mapping[str, Balance]] | None = None,
    ) -> tuple[Decimal, str | None]:
        """``amount`` capped to the free base balance (rounded down to the step; from ``read``,
        the balances read for it by :meth:`prepare`, if any), and why it cannot be sold at all
        (dust), if so."""
        free = await self._free(rules.base, read)
        if free is not None and free < amount:
            capped = rules.round_amount(free) if free > 0 else _ZERO
            log.warning("exit sized to the free balance", broker=self.name, symbol=rules.symbol, asked=str(amount),
                        free=str(free), selling=str(capped))
            amount = capped
        if amount <= 0 or amount < rules.min_amount or (
            rules.min_notional is not None and rules.min_notional_for_market and price > 0
            and amount * price < rules.min_notional
        ):
            held = f"{free} {rules.base} free" if free is not None else f"{amount} {rules.base}"
            return amount, (
                f"dust: {held}, below the market's minimum (quantity {rules.min_amount.normalize():f}, "
                f"notional {(rules.min_notional or _ZERO).normalize():f} {rules.quote}); not sold, not retried"
            )
        return amount, None

    def _read_balances(self) -> asyncio.Future[Mapping[str, Balance]]:
        """The balances read in flight, or a new one: concurrent callers share one request."""
        task = self._balances_task
        if task is None or task.done():
            task = self._balances_task = asyncio.ensure_future(self.exchange.balances())
            task.add_done_callback(_retrieved)  # a prepared read no exit used after all: no warning
        return task

    async def _free(self, asset: str, read: asyncio.Future[Mapping[str, Balance]] | None = None) -> Decimal | None:
        """The free balance of ``asset`` now (``read``: a read started for this caller, done or
        not); concurrent callers share one request."""
        task = read if read is not None else self._read_balances()
        try:
            balances = await asyncio.shield(task)
        except ExchangeError as exc:
            self._note_error(exc)
            log.warning("could not read the balances; the exit keeps its amount", broker=self.name, error=str(exc))
            return None
        self.balances = balances
        held = balances.get(asset)
        return held.free if held is not None else _ZERO

    def _track(
        self, coid: str, symbol: str, leg: OrderLeg, since_ms: int, list_coid: str | None = None
    ) -> _Tracked:
        tracked = self._tracked.get(coid)
        if tracked is None:
            tracked = self._tracked[coid] = _Tracked(coid, symbol, leg, since_ms, list_client_order_id=list_coid)
        return tracked

    def _track_record(self, record: OrderRecord) -> _Tracked:
        coid = record.client_order_id
        tracked = self._tracked.get(coid)
        if tracked is not None:
            return tracked
        list_coid = None
        if record.leg in ("tp", "sl") and record.list_id is not None:
            list_coid = list_client_order_id(coid)
            legs = self._lists.setdefault(list_coid, [])
            if coid not in legs:
                legs.append(coid)
        tracked = self._track(coid, record.symbol, record.leg, _iso_ms(record.created_at), list_coid)
        tracked.exchange_order_id = record.exchange_order_id
        tracked.filled = record.filled_amount
        tracked.accepted = record.status in ("open", "partially_filled")
        tracked.was_open = tracked.accepted and record.exchange_order_id is not None
        return tracked

    def _untrack(self, coid: str) -> None:
        tracked = self._tracked.pop(coid, None)
        if tracked is not None and tracked.list_client_order_id is not None:
            legs = self._lists.get(tracked.list_client_order_id)
            if legs is not None and not any(c in self._tracked for c in legs):
                del self._lists[tracked.list_client_order_id]

    def _failed(self, tracked: _Tracked, exc: BaseException, at: int, result_id: str | None = None) -> SubmitResult:
        """The result for an order request that raised ``exc``."""
        coid = result_id or tracked.client_order_id
        if isinstance(exc, ExchangeError):
            self._note_error(exc)
        if isinstance(exc, Ambiguous | DuplicateOrder) or not isinstance(exc, ExchangeError):
            if not isinstance(exc, Exception):  # CancelledError: the order stays unknown, watched
                raise exc
            return Unknown(coid, f"no definite answer: {exc}", at)
        self._untrack(tracked.client_order_id)
        if isinstance(exc, Retryable):
            return Rejected(coid, f"not sent: {exc}", _code(exc), at)
        return Rejected(coid, str(exc), _code(exc), at)

    def _failed_list(self, list_coid: str, legs: Sequence[_Tracked], exc: BaseException, at: int) -> SubmitResult:
        result = self._failed(legs[0], exc, at, list_coid)
        if type(result) is Rejected:
            for leg in legs:
                self._untrack(leg.client_order_id)
        return result

    def _note_error(self, exc: ExchangeError) -> None:
        if isinstance(exc, Banned) and exc.retry_after_s:
            self._banned_until_ms = self._now_ms() + int(exc.retry_after_s * 1000)
        elif isinstance(exc, RateLimited):
            pass  # the request budget backs off by itself (Retry-After)


def _retrieved(task: asyncio.Future[Mapping[str, Balance]]) -> None:
    if not task.cancelled():
        task.exception()


def _native(rules: ExchangeRules, take_profit: bool, stop_loss: bool) -> bool:
    """Whether the exchange holds this protection itself on this market: both levels need an OCO
    list, a stop alone a stop-loss order; a take-profit alone is a plain limit sell."""
    if take_profit and stop_loss:
        return rules.oco
    if stop_loss:
        return "STOP_LOSS" in rules.order_types
    return True


def _answered(tracked: _Tracked, order: ExchangeOrder) -> None:
    """A command's own answer told the engine the order is on the exchange."""
    tracked.accepted = True
    tracked.exchange_order_id = order.exchange_order_id


def _immediate(exc: ExchangeError) -> bool:
    text = str(exc)
    return any(words in text for words in _IMMEDIATE)


def _code(exc: ExchangeError) -> str | None:
    return None if exc.code is None else str(exc.code)


def _raw(raw: Mapping[str, object]) -> str | None:
    if not raw:
        return None
    return orjson.dumps(dict(raw), default=str).decode()


def _iso_ms(text: str) -> int:
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0
