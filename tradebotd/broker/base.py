"""The broker seam: commands to a broker, events back through its inbox (like candles through the
feed's sink). :class:`~tradebotd.broker.paper.PaperBroker` is the simulated exchange (paper
trading, backtests); the live broker implements the same :class:`Broker` protocol on the
exchange port. The values (requests, results, events, records) are in
:mod:`tradebotd.orders.model`; the engine's side of it is :mod:`tradebotd.engine.orders`.

Money path rules every broker keeps:

* client order ids are deterministic (:func:`client_order_id`): strategy, candle and action, so a
  decision re-done after a restart can never become a second order. A broker sends the id it is
  given (``newClientOrderId``, ``listClientOrderId``, the legs' ids) and never makes up another;
* the engine has recorded every order (an ``orders`` row) before it calls ``submit`` or
  ``protect``; for a broker with ``durable_intents`` it waited until that row was committed;
* amounts and prices are ``Decimal`` and already on the market's steps (``rules``); a broker
  does not round again;
* an answer that may or may not have placed the order is :class:`Unknown`, never a retry: a
  resend of an order that was filled would trade twice (Binance keeps a client order id unique
  only among *open* orders). ``reconcile`` resolves it by asking the exchange.

What a broker must do, method by method (the live broker's checklist):

=================  =============================================================================
``name``           ``"paper"`` or the exchange id (``"binance"``); the ``orders.broker`` column
``durable_intents`` True: the engine commits each intent before ``submit``/``protect`` (live).
                   False: the broker's state is persisted in the engine's write batches (paper)
``order_cap``      a last check on every request (:data:`~tradebotd.orders.validate.OrderCap`),
                   e.g. ``max_quote_cap(exchange.max_order_quote)``; None for no cap
``rules(key)``     the market's precision and minimums; :class:`MarketUnavailable` when the
                   exchange has no such market (the strategy is refused with a log row). Called
                   on the trading path: answer from memory (markets loaded at start-up)
``submit``         place one order. :class:`Accepted` (open, or filled: fills follow as
                   :class:`Filled` events), :class:`Rejected` (definitive: nothing placed, e.g.
                   insufficient balance, a filter failure), :class:`Unknown` (timeout, connection
                   error, 5xx after sending). Should not raise: the engine treats an exception as
                   :class:`Unknown`
``protect``        place a position's take-profit and stop-loss as one list (Binance: an OCO sell,
                   ``POST /api/v3/orderList/oco``) or, with one level, the single conditional order;
                   with the request's list and leg client order ids. Answers like ``submit``, for
                   the list: ``Accepted.exchange_order_id`` is the exchange's list id (two legs)
                   or the order's id (one leg); each leg's own exchange order id may follow as an
                   :class:`Accepted` event for that leg's client order id. A broker without native
                   protection (``MarketRules.native_protection`` False) watches the levels itself
                   from ``on_candle``, as paper does
``cancel``         cancel one order; a leg of a list cancels the whole list. The outcome is an
                   event: the :class:`Cancelled` events (one per leg) must be in the inbox when
                   ``cancel`` returns (Binance answers the DELETE with the cancelled orders); an
                   order that had filled meanwhile gives its :class:`Filled` events instead. The
                   engine sends a position's sell only after its protection is seen cancelled
``reconcile``      given the engine's active orders on this broker, the events that bring each to
                   the exchange's truth: an order the exchange has (asked by ``origClientOrderId``)
                   gives :class:`Accepted` and its fills since, and :class:`Cancelled` when it is
                   gone; one it never saw (-2013, after the exchange's open-order window) gives
                   :class:`Rejected`. At start-up before the feed starts, then every
                   ``exchange.reconcile_s``
``on_candle``      every kline update (closed and in progress), in order: the price driver of a
                   simulated exchange; live: a no-op or a nudge to poll
``drain()``        the events that arrived since the last drain, in arrival order
``inbox_ready``    set when events arrive on their own (a poller); the engine waits on it, clears
                   it and drains. Events a command or ``on_candle`` produced are drained by the
                   engine right after that call
``watched_keys()`` streams whose klines the broker needs (resting simulated orders); the engine
                   keeps them subscribed after their strategy stopped
``close()``        release connections
=================  =============================================================================

A simulated exchange (paper) keeps the balances itself and also implements
:class:`SimulatedBalances`, which the engine uses when a portfolio appears while running or a
strategy is taken over from another instance; a live broker does not (the exchange holds its
balances, and ``reconcile`` reads them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Protocol, runtime_checkable

from ..model import Candle, StreamKey
from ..orders.ledger import Fill, Holding
from ..orders.model import (
    Accepted,
    BrokerEvent,
    Cancelled,
    Expired,
    Filled,
    MarketRules,
    MarketUnavailable,
    OrderAction,
    OrderIntent,
    OrderRecord,
    OrderRequest,
    ProtectRequest,
    Rejected,
    SubmitResult,
    Unknown,
    client_order_id,
)
from ..orders.validate import OrderCap

__all__ = [
    "Accepted",
    "Broker",
    "BrokerEvent",
    "Cancelled",
    "Expired",
    "Fill",
    "Filled",
    "MarketRules",
    "MarketUnavailable",
    "OrderAction",
    "OrderIntent",
    "OrderRecord",
    "OrderRequest",
    "Polling",
    "Preparing",
    "ProtectRequest",
    "Reconciling",
    "Rejected",
    "SimulatedBalances",
    "SubmitResult",
    "Unknown",
    "client_order_id",
]


class Broker(Protocol):
    """What the engine needs from a broker (see the module docstring for each member)."""

    name: str
    durable_intents: bool
    order_cap: OrderCap | None
    inbox_ready: asyncio.Event

    def rules(self, key: StreamKey) -> MarketRules: ...

    async def submit(self, request: OrderRequest) -> SubmitResult: ...

    async def protect(self, request: ProtectRequest) -> SubmitResult: ...

    async def cancel(self, client_order_id: str) -> None: ...

    async def reconcile(self, known: Sequence[OrderRecord]) -> list[BrokerEvent]: ...

    def on_candle(self, candle: Candle) -> None: ...

    def drain(self) -> list[BrokerEvent]: ...

    def watched_keys(self) -> Iterable[StreamKey]: ...

    async def close(self) -> None: ...


@runtime_checkable
class Reconciling(Protocol):
    """A broker that can say which active orders reconciliation could not ask the exchange about
    (the live broker): the engine does not trade their strategies."""

    def unresolved(self) -> Mapping[str, str]:
        """client order id -> why its state is unknown (the exchange unreachable, keys refused)"""

    def available(self) -> bool:
        """Whether orders can go out now (markets loaded, no ban): the protection invariant waits
        otherwise, rather than spend its attempts on requests that cannot be sent."""


@runtime_checkable
class Preparing(Protocol):
    """A broker that can start, before a candle's intents are committed, the reads its orders
    will need when they are sent after the commit (the live broker: the free balance an exit is
    sized from), so that they overlap the commit. Reads only: nothing that the intent-first rule
    guards goes out early."""

    def prepare(self, requests: Sequence[OrderRequest]) -> bool:
        """``requests``: the orders about to wait for their commit. True if a read started."""


@runtime_checkable
class Polling(Protocol):
    """A broker with a task of its own (the live broker's poller), supervised by the daemon."""

    name: str

    async def run(self) -> None: ...


@runtime_checkable
class SimulatedBalances(Protocol):
    """A broker that keeps its account's balances itself (the paper exchange)."""

    def add_portfolio(self, portfolio_id: str, cash: Decimal) -> None:
        """A portfolio that appeared after start-up; a known one keeps its cash."""

    def take_over(
        self, previous: Holding | None, holding: Holding | None, portfolio_id: str | None, cash: Decimal | None
    ) -> None:
        """A strategy's position is now ``holding`` (it was ``previous``), its portfolio's cash ``cash``."""
