"""Paper trading: a simulated spot exchange behind the broker seam. The default broker, and the
backtest's (through :func:`tradebotd.orders.desk.run_sync`).

It takes the same commands and gives the same events as the live broker, so paper trading,
backtests and live trading go through the same order states. Its fill model (the README's; the
backtest and the live/backtest parity test rely on it being exactly this):

* **market orders** fill at once, in full, at the signal candle's close moved by
  ``slippage_bps`` against the trader (buy: up, sell: down), rounded half-even to 8 decimals;
* **fee**: price x amount x ``fee_rate`` in the quote currency, rounded half-even to 8 decimals;
* **balances** per portfolio: a buy needs cash for price x amount + fee, a sell needs the base
  asset (free, i.e. not held by a resting order); else the order is rejected;
* **limit orders** fill at once like a market order when the signal candle's market price is
  already at or better than the limit; otherwise they rest (holding their cash or base) until a
  later kline update crosses the limit (buy: low <= limit, sell: high >= limit) and then fill
  at the limit. A resting buy that meets too little cash when it fills is cancelled;
* **protection** (``protect``): one list per position, a take-profit and/or a stop-loss, holding
  the position's base; watched on kline updates (closed or in progress) of candles *after* the
  one it was placed on; the level touched (high >= take-profit, low <= stop-loss) fills at the
  level, and the other leg is cancelled. When one candle touches both, the stop wins: the order
  inside a candle is unknown, so assume the worse;
* ids: an order's exchange id is its client order id (a list's is its list id; a single-leg
  protection's, that leg's id); each order fills in one trade, ``"1"``.

Nothing here is persisted by the paper exchange itself: its state is its balances (the
portfolios' cash and the strategies' positions) and its resting orders (``orders`` rows that are
open), all written by the engine in the same write batch as the decisions, intents and fills
that changed them. So after a restart :meth:`PaperBroker.reconcile` rebuilds exactly the
exchange that was committed; there is nothing in between to lose (see
:mod:`tradebotd.engine.orders` for why the paper path therefore needs no intent-first commit).

Every price is in the portfolio's currency (``paper.currency``): a symbol's base asset is the
symbol without that suffix.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from ..model import Candle, StreamKey
from ..orders.ledger import EIGHT_DP, Holding, q_money
from ..orders.model import (
    Accepted,
    BrokerEvent,
    Cancelled,
    Filled,
    MarketRules,
    OrderRecord,
    OrderRequest,
    ProtectRequest,
    Rejected,
    SubmitResult,
)
from ..orders.validate import OrderCap

__all__ = ["PAPER", "PaperBroker"]

PAPER = "paper"
BPS = Decimal("10000")
_new = tuple.__new__
_ZERO = Decimal(0)


@dataclass(slots=True)
class _Resting:
    """An order waiting on the paper book: a limit order, or a leg of a protection list."""

    client_order_id: str
    portfolio_id: str | None
    key: StreamKey
    side: str
    kind: str  # "limit", "tp" or "sl"
    amount: Decimal
    level: Decimal  # limit price, take-profit or stop
    after: int  # watches candles opening after this time
    list_id: str | None  # the protection list it belongs to
    locked: Decimal  # cash (buy) or base (sell) it holds; a list's legs share their lock


class PaperBroker:
    """The simulated exchange. ``cash``: each portfolio's cash; ``holdings``: the strategies'
    open positions (their base assets are what the portfolios hold)."""

    name = PAPER
    durable_intents = False
    order_cap: OrderCap | None = None

    def __init__(
        self,
        *,
        fee_rate: Decimal,
        slippage_bps: Decimal,
        currency: str = "USDT",
        cash: dict[str | None, Decimal] | None = None,
        holdings: Iterable[Holding] = (),
    ) -> None:
        self.fee_rate = fee_rate
        self.slippage = slippage_bps / BPS
        self._up, self._down = 1 + self.slippage, 1 - self.slippage  # a buy's and a sell's price factors
        self.currency = currency
        self._cash: dict[str | None, Decimal] = dict(cash or {})
        self._cash_locked: dict[str | None, Decimal] = {}
        self._base: dict[tuple[str | None, str], Decimal] = {}
        self._base_locked: dict[tuple[str | None, str], Decimal] = {}
        for held in holdings:
            where = (held.portfolio_id, held.key.symbol)
            self._base[where] = self._base.get(where, _ZERO) + held.position.amount
        self._resting: dict[str, _Resting] = {}
        self._by_key: dict[StreamKey, list[_Resting]] = {}
        self._lists: dict[str, list[_Resting]] = {}
        self._limits = 0  # resting limit orders (the rest are protective legs)
        self._rules: dict[StreamKey, MarketRules] = {}
        self._inbox: list[BrokerEvent] = []
        self._clock = 0  # the latest time the exchange has seen (ms): it has no clock of its own
        # Events are drained by whoever caused them (the command's or on_candle's caller), right
        # after the call: nothing arrives on its own, so this is never set.
        self.inbox_ready = asyncio.Event()

    # -- queries ---------------------------------------------------------------------------------

    def rules(self, key: StreamKey) -> MarketRules:
        rules = self._rules.get(key)
        if rules is None:
            symbol, quote = key.symbol, self.currency
            base = symbol[: -len(quote)] if symbol.endswith(quote) and symbol != quote else symbol
            rules = self._rules[key] = MarketRules(symbol, base, quote, EIGHT_DP, EIGHT_DP)
        return rules

    def add_portfolio(self, portfolio_id: str, cash: Decimal) -> None:
        """A portfolio that appeared after start-up (``portfolio add``, or mirrored from
        Supabase); known ones keep their cash (the local store is the truth for it)."""
        self._cash.setdefault(portfolio_id, cash)

    def take_over(
        self, previous: Holding | None, holding: Holding | None, portfolio_id: str | None, cash: Decimal | None
    ) -> None:
        """A strategy taken over from another instance sharing a Supabase project: its position
        (``holding``; it held ``previous`` here) and its portfolio's cash as that instance left
        them. The portfolio's base balance moves by the difference."""
        for held, sign in ((previous, -1), (holding, 1)):
            if held is not None:
                where = (held.portfolio_id, held.key.symbol)
                self._base[where] = self._base.get(where, _ZERO) + sign * held.position.amount
        if portfolio_id is not None and cash is not None:
            self._cash[portfolio_id] = cash

    def cash(self, portfolio_id: str | None) -> Decimal:
        return self._cash.get(portfolio_id, _ZERO)

    def base(self, portfolio_id: str | None, symbol: str) -> Decimal:
        return self._base.get((portfolio_id, symbol), _ZERO)

    def watched_keys(self) -> set[StreamKey]:
        """Streams whose klines can fill a resting order."""
        return {key for key, resting in self._by_key.items() if resting}

    def limits_resting(self) -> bool:
        """Whether a limit order rests on the book (not only protective legs)."""
        return self._limits > 0

    def resting(self) -> list[str]:
        """Client order ids of the orders resting on the book."""
        return list(self._resting)

    # -- commands (the Broker protocol; each answers at once) ------------------------------------

    async def submit(self, request: OrderRequest) -> SubmitResult:
        return self.execute(request)

    async def protect(self, request: ProtectRequest) -> SubmitResult:
        return self.protect_now(request)

    async def cancel(self, client_order_id: str) -> None:
        self.cancel_now(client_order_id)

    async def reconcile(self, known: Sequence[OrderRecord]) -> list[BrokerEvent]:
        return self.restore(known)

    def drain(self) -> list[BrokerEvent]:
        events, self._inbox = self._inbox, []
        return events

    async def close(self) -> None:
        pass

    # -- the synchronous core (tradebotd.orders.desk.SyncBroker) ---------------------------------

    def execute(self, request: OrderRequest) -> SubmitResult:
        at_ms = request.candle_time + request.key.interval_ms - 1  # the signal candle's close
        if at_ms > self._clock:
            self._clock = at_ms
        factor = self._up if request.side == "buy" else self._down
        market = (request.reference_price * factor).quantize(EIGHT_DP, ROUND_HALF_EVEN)
        limit = request.limit_price
        if request.type == "market" or limit is None or (limit >= market if request.side == "buy" else limit <= market):
            return self._fill_now(request, market, at_ms)
        # A limit order that rests: it holds what it may spend (buy) or sell.
        where = (request.portfolio_id, request.key.symbol)
        if request.side == "buy":
            need = limit * request.amount * (1 + self.fee_rate)
            free = self.cash(request.portfolio_id) - self._cash_locked.get(request.portfolio_id, _ZERO)
            if need > free:
                return self._insufficient_cash(request.client_order_id, need, free, at_ms)
            self._cash_locked[request.portfolio_id] = self._cash_locked.get(request.portfolio_id, _ZERO) + need
        else:
            free = self.base(*where) - self._base_locked.get(where, _ZERO)
            if request.amount > free:
                return self._insufficient_base(request, free, at_ms)
            need = request.amount
            self._base_locked[where] = self._base_locked.get(where, _ZERO) + need
        self._rest(
            _Resting(request.client_order_id, request.portfolio_id, request.key, request.side, "limit",
                     request.amount, limit, request.candle_time, None, need)
        )
        return Accepted(request.client_order_id, request.client_order_id, at_ms, request.amount)

    def protect_now(self, request: ProtectRequest) -> SubmitResult:
        at_ms = request.candle_time + request.key.interval_ms - 1
        where = (request.portfolio_id, request.key.symbol)
        free = self.base(*where) - self._base_locked.get(where, _ZERO)
        if request.amount > free:
            return Rejected(
                request.list_client_order_id,
                f"insufficient {self.rules(request.key).base_asset}: the protection needs {request.amount}, "
                f"{free} is free",
                None,
                at_ms,
            )
        legs: list[_Resting] = []
        list_id = request.list_client_order_id
        for coid, kind, level in (
            (request.tp_client_order_id, "tp", request.take_profit),
            (request.sl_client_order_id, "sl", request.stop_loss),
        ):
            if coid is not None and level is not None:
                legs.append(_Resting(coid, request.portfolio_id, request.key, "sell", kind, request.amount, level,
                                     request.candle_time, list_id, request.amount))
        if not legs:
            return Rejected(list_id, "a protection needs a take-profit or a stop-loss", None, at_ms)
        self._base_locked[where] = self._base_locked.get(where, _ZERO) + request.amount
        for leg in legs:
            self._rest(leg)
        self._lists[list_id] = legs
        exchange_id = list_id if len(legs) > 1 else legs[0].client_order_id
        return Accepted(list_id, exchange_id, at_ms, request.amount)

    def cancel_now(self, client_order_id: str, reason: str = "cancelled on request") -> None:
        """Cancel a resting order (a protective leg: its whole list). Unknown ids are ignored."""
        order = self._resting.get(client_order_id)
        if order is None:
            return
        legs = self._lists.pop(order.list_id, [order]) if order.list_id is not None else [order]
        self._release(legs[0])
        for leg in legs:
            if self._unrest(leg):
                self._inbox.append(Cancelled(leg.client_order_id, reason, self._clock))

    def restore(self, known: Sequence[OrderRecord]) -> list[BrokerEvent]:
        """Rebuild the book from the engine's records of this broker's active orders (start-up)."""
        events: list[BrokerEvent] = []
        lists: dict[str, list[OrderRecord]] = {}
        for record in known:
            if record.broker != PAPER or record.status not in ("new", "pending", "unknown", "open", "partially_filled"):
                continue
            if record.client_order_id in self._resting:
                continue
            if record.status in ("new", "pending", "unknown"):
                # The paper exchange commits with the engine: an order it had seen would be open
                # or done in the same batch. So it never saw this one.
                events.append(
                    Rejected(record.client_order_id, "never reached the paper exchange", None, record.candle_time)
                )
                continue
            if record.leg in ("tp", "sl") and record.list_id is not None:
                lists.setdefault(record.list_id, []).append(record)
                continue
            self._restore_one([record], None)
        for list_id, legs in lists.items():
            self._restore_one(legs, list_id if len(legs) > 1 else None)
        return events

    # -- the price driver ------------------------------------------------------------------------

    def on_candle(self, candle: Candle) -> None:
        """A kline update (closed or in progress): fill resting orders its range reaches. Only
        candles after the one an order was placed on count; a list's stop is checked first."""
        if candle.open_time > self._clock:
            self._clock = candle.open_time
        resting = self._by_key.get(candle.key)
        if not resting:
            return
        done: set[str] = set()
        for order in list(resting):
            if order.client_order_id in done or candle.open_time <= order.after:
                continue
            if order.list_id is not None:
                legs = self._lists.get(order.list_id, [order])
                done.update(leg.client_order_id for leg in legs)
                hit = next((leg for leg in legs if leg.kind == "sl" and candle.low <= leg.level), None) or next(
                    (leg for leg in legs if leg.kind == "tp" and candle.high >= leg.level), None
                )
                if hit is not None:
                    self._fill_resting(hit, candle.open_time)
                    self._lists.pop(order.list_id, None)
                    for other in legs:
                        if other is not hit and self._unrest(other):
                            self._inbox.append(Cancelled(other.client_order_id, f"the {hit.kind} leg filled",
                                                         candle.open_time))
                continue
            if order.kind == "limit":
                crossed = candle.low <= order.level if order.side == "buy" else candle.high >= order.level
            elif order.kind == "sl":
                crossed = candle.low <= order.level
            else:
                crossed = candle.high >= order.level
            if crossed:
                self._fill_resting(order, candle.open_time)

    # -- internals -------------------------------------------------------------------------------

    def _fill_now(self, request: OrderRequest, price: Decimal, at_ms: int) -> SubmitResult:
        coid, amount, pid = request.client_order_id, request.amount, request.portfolio_id
        value = price * amount
        fee = (value * self.fee_rate).quantize(EIGHT_DP, ROUND_HALF_EVEN)
        cash = self._cash.get(pid, _ZERO)
        where = (pid, request.key.symbol)
        held = self._base.get(where, _ZERO)
        if request.side == "buy":
            cost = value + fee
            locked = self._cash_locked.get(pid)
            free = cash - locked if locked else cash
            if cost > free:
                return self._insufficient_cash(coid, cost, free, at_ms)
            self._cash[pid] = (cash - cost).quantize(EIGHT_DP, ROUND_HALF_EVEN)
            self._base[where] = held + amount
        else:
            locked = self._base_locked.get(where)
            free = held - locked if locked else held
            if amount > free:
                return self._insufficient_base(request, free, at_ms)
            self._cash[pid] = (cash + value - fee).quantize(EIGHT_DP, ROUND_HALF_EVEN)
            self._base[where] = held - amount
        # tuple.__new__: the NamedTuples without their Python-level __new__ (every paper fill).
        self._inbox.append(_new(Filled, (coid, coid, "1", amount, price, fee, self.currency, at_ms, True, None)))
        return _new(Accepted, (coid, coid, at_ms, amount, None))

    def _fill_resting(self, order: _Resting, at_ms: int) -> None:
        self._release(order)
        self._unrest(order)
        amount, price, pid = order.amount, order.level, order.portfolio_id
        fee = q_money(price * amount * self.fee_rate)
        where = (pid, order.key.symbol)
        if order.side == "buy":
            cost = price * amount + fee
            if cost > self.cash(pid) - self._cash_locked.get(pid, _ZERO):
                self._inbox.append(Cancelled(order.client_order_id, "insufficient cash when the limit was reached",
                                             at_ms))
                return
            self._cash[pid] = q_money(self.cash(pid) - cost)
            self._base[where] = self._base.get(where, _ZERO) + amount
        else:
            self._cash[pid] = q_money(self.cash(pid) + price * amount - fee)
            self._base[where] = self._base.get(where, _ZERO) - amount
        exchange_id = order.client_order_id
        self._inbox.append(Filled(order.client_order_id, exchange_id, "1", amount, price, fee, self.currency, at_ms,
                                  True))

    def _insufficient_cash(self, coid: str, need: Decimal, free: Decimal, at_ms: int) -> Rejected:
        return Rejected(coid, f"insufficient cash: need {q_money(need)}, have {free}", None, at_ms)

    def _insufficient_base(self, request: OrderRequest, free: Decimal, at_ms: int) -> Rejected:
        asset = self.rules(request.key).base_asset
        return Rejected(
            request.client_order_id, f"insufficient {asset}: need {request.amount}, have {free}", None, at_ms
        )

    def _rest(self, order: _Resting) -> None:
        self._resting[order.client_order_id] = order
        self._by_key.setdefault(order.key, []).append(order)
        if order.kind == "limit":
            self._limits += 1

    def _unrest(self, order: _Resting) -> bool:
        if self._resting.pop(order.client_order_id, None) is None:
            return False
        if order.kind == "limit":
            self._limits -= 1
        peers = self._by_key.get(order.key)
        if peers is not None:
            peers.remove(order)
            if not peers:
                del self._by_key[order.key]
        return True

    def _release(self, order: _Resting) -> None:
        """Give back what ``order`` (or its list) holds."""
        if order.client_order_id not in self._resting:
            return
        if order.side == "buy":
            pid = order.portfolio_id
            self._cash_locked[pid] = self._cash_locked.get(pid, _ZERO) - order.locked
        else:
            where = (order.portfolio_id, order.key.symbol)
            self._base_locked[where] = self._base_locked.get(where, _ZERO) - order.locked

    def _restore_one(self, records: list[OrderRecord], list_id: str | None) -> None:
        first = records[0]
        key = first.key
        remaining = first.amount - first.filled_amount
        legs = []
        for record in records:
            kind = "limit" if record.leg in ("entry", "exit") else record.leg
            level = record.stop_price if record.leg == "sl" else record.limit_price
            if level is None:
                continue
            legs.append(_Resting(record.client_order_id, record.portfolio_id, key, record.side, kind, remaining,
                                 level, record.candle_time, list_id, _ZERO))
        if not legs:
            return
        if first.side == "buy":
            need = legs[0].level * remaining * (1 + self.fee_rate)
            self._cash_locked[first.portfolio_id] = self._cash_locked.get(first.portfolio_id, _ZERO) + need
        else:
            need = remaining
            where = (first.portfolio_id, key.symbol)
            self._base_locked[where] = self._base_locked.get(where, _ZERO) + need
        legs[0].locked = need
        for leg in legs:
            leg.locked = need
            self._rest(leg)
        if list_id is not None:
            self._lists[list_id] = legs
