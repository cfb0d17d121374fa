"""The live broker behind the engine's real order shell (:class:`tradebotd.engine.orders.Orders`),
the order desk and the ledger, against the Binance stand-in through the real ccxt.

Batches go to a list instead of SQLite; each is "committed" on the loop's next turn (its
``on_durable``), so the intent-first path runs exactly as in the daemon. Every wait is on the
work itself (``Orders.drain``), never on time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import Decimal as D

from tests.broker.intents import decision_intent
from tests.exchange.conftest import make_port
from tradebotd.broker.live import LiveBroker
from tradebotd.engine.orders import Orders
from tradebotd.engine.records import Recorder
from tradebotd.exchange.ccxt_exchange import CcxtExchange
from tradebotd.exchange.throttle import RequestBudget
from tradebotd.model import Candle, Position, StreamKey
from tradebotd.orders.desk import Effects, OrderDesk, Venue
from tradebotd.orders.ledger import Holding, Ledger
from tradebotd.orders.model import OrderRecord
from tradebotd.orders.state import Order, OrderBook
from tradebotd.orders.validate import OrderPolicy
from tradebotd.replay.exchange import ExchangeServer
from tradebotd.store.base import LogEntry, WriteBatch
from tradebotd.store.sqlite import utc_now

KEY = StreamKey("BTCUSDT", "1m")
T = 1_700_000_040_000  # a candle's open time
PORTFOLIO = "p"


@dataclass
class LiveAccount:
    server: ExchangeServer
    port: CcxtExchange
    broker: LiveBroker
    desk: OrderDesk
    orders: Orders
    batches: list[WriteBatch] = field(default_factory=list)

    # -- driving ---------------------------------------------------------------------------------

    async def decide(
        self,
        side: str,
        price: str = "42000",
        *,
        t: int = T,
        amount: str | None = None,
        tp: str | None = None,
        sl: str | None = None,
        sid: str = "s1",
        key: StreamKey = KEY,
        limit: str | None = None,
    ) -> str:
        """A strategy's decision on candle ``t``, through the desk and the shell; returns its
        client order id once everything it caused has been sent and recorded."""
        intent = decision_intent(
            sid, t, side, price, portfolio_id=PORTFOLIO, key=key, amount=amount, tp=tp, sl=sl, limit=limit
        )
        async with self.orders._lock:
            out = Effects()
            job = self.desk.decide(intent, self.broker.name, utc_now(), out)
            if job is not None:
                out.jobs.append((self.broker.name, job))
        await self.orders.finish(out, WriteBatch())
        await self.orders.drain()
        return intent.client_order_id

    async def poll(self) -> None:
        """One poller round, its events consumed as ``Orders.run`` consumes them."""
        events = await self.broker.poll()
        await self.apply(events)

    async def apply(self, events: list) -> None:  # type: ignore[type-arg]
        async with self.orders._lock:
            out = Effects()
            for event in events:
                self.desk.on_event(event, utc_now(), out)
        await self.orders.finish(out, WriteBatch())
        await self.orders.drain()

    async def candle(self, close: str, *, t: int = T + 60_000) -> None:
        """A closed kline: the broker's price driver, then the protection invariant."""
        candle = Candle("BTCUSDT", "1m", t, D(close), D(close), D(close), D(close), D("1"), True)
        async with self.orders._lock:
            out = Effects()
            self.orders.on_market(candle, out)
            self.orders.check_protection(out)
        await self.orders.finish(out, WriteBatch())
        await self.orders.drain()

    def price(self, close: str, *, t: int = T + 60_000) -> None:
        """The market moves: the stand-in's price, and the last price the broker saw."""
        self.server.set_price("BTCUSDT", D(close))
        self.broker.on_candle(Candle("BTCUSDT", "1m", t, D(close), D(close), D(close), D(close), D("1"), False))

    # -- looking ---------------------------------------------------------------------------------

    def position(self, sid: str = "s1") -> Position | None:
        return self.desk.position(sid)

    def order(self, coid: str) -> Order:
        order = self.desk.book.get(coid)
        assert order is not None, coid
        return order

    def logs(self, level: str | None = None) -> list[LogEntry]:
        return [e for b in self.batches for e in b.logs if level is None or e.level == level]

    def records(self) -> list[OrderRecord]:
        """The active orders as the store would restore them."""
        latest: dict[str, OrderRecord] = {}
        for b in self.batches:
            latest.update(b.orders)
        return [r for r in latest.values() if r.status not in ("filled", "cancelled", "rejected")]

    def posts(self, path: str = "/api/v3/order") -> list[dict[str, str]]:
        """Every order request the stand-in received on ``path``."""
        return [r.params for r in self.server.requests_to(path, "POST")]

    def placed(self) -> list[str]:
        """Client order ids of every order the stand-in holds (placed, whatever became of it)."""
        return [o.client_order_id for orders in self.server.account.orders.values() for o in orders]

    async def close(self) -> None:
        await self.orders.drain()
        await self.broker.close()


def live_account(
    server: ExchangeServer,
    *,
    budget: RequestBudget | None = None,
    cash: str = "10000",
    default_amount: str = "0.01",
    max_order_quote: str = "1000",
    holdings: dict[str, Holding] | None = None,
    orders: list[Order] | None = None,
    timeout_s: float = 10.0,
    grace_s: float = 10.0,
) -> LiveAccount:
    port = make_port(server, budget=budget or RequestBudget(), timeout_s=timeout_s)
    broker = LiveBroker(port, max_order_quote=D(max_order_quote), poll_s=3600, budget=port.budget,
                        not_found_grace_s=grace_s)
    desk = OrderDesk(
        ledger=Ledger({PORTFOLIO: D(cash)}, holdings or {}),
        policy=OrderPolicy(D(default_amount)),
        venues={broker.name: Venue(broker.name, broker.rules, broker.order_cap, durable=True)},
        book=OrderBook(orders or []),
    )
    desk.portfolio_venues = {PORTFOLIO: broker.name}
    batches: list[WriteBatch] = []

    def sink(batch: WriteBatch) -> None:
        batches.append(batch)
        if batch.on_durable is not None:
            asyncio.get_running_loop().call_soon(batch.on_durable)

    recorder = Recorder([], lambda sid, key: None)
    shell = Orders(brokers=[broker], desk=desk, recorder=recorder, submit=sink, lock=asyncio.Lock(),
                   now_ms=lambda: 0)
    return LiveAccount(server, port, broker, desk, shell, batches)


async def started(account: LiveAccount) -> LiveAccount:
    """Start-up: markets loaded and the restored orders reconciled (as the daemon does)."""
    account.held = await account.orders.reconcile()  # type: ignore[attr-defined]
    await account.orders.drain()
    return account
