"""Order handling in the engine: intent first for brokers with durable intents, dispatch after
the candle lock with bounded concurrency, results recorded in request order, one order at a time
per strategy, events through the inbox, unknown results resolved by reconciliation (never by
sending again), portfolios picking their broker. The live broker is not written yet: ``Exchange``
below is a broker with durable intents whose answers the test gives, one by one."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal as D
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from tradebotd import app
from tradebotd.broker.paper import PaperBroker
from tradebotd.config import ExchangeSettings, Settings
from tradebotd.engine import Engine, EngineConfig, core
from tradebotd.model import Candle, Decision, Position, StreamKey
from tradebotd.orders.ledger import Ledger
from tradebotd.orders.model import (
    Accepted,
    BrokerEvent,
    Cancelled,
    Filled,
    MarketRules,
    OrderRecord,
    OrderRequest,
    ProtectRequest,
    SubmitResult,
    Unknown,
    client_order_id,
)
from tradebotd.orders.validate import OrderPolicy
from tradebotd.store.base import StrategyRow, WriteBatch
from tradebotd.store.sqlite import SqliteStore
from tradebotd.store.writer import StoreWriter

MIN = 60_000
KEY = StreamKey("BTCUSDT", "1m")


def candle(i: int, close: str = "100") -> Candle:
    return Candle("BTCUSDT", "1m", i * MIN, D(close), D(close), D(close), D(close), D("1"))


@dataclass
class Info:
    elapsed_us: float = 1.0
    console: tuple[tuple[str, str], ...] = ()


@dataclass
class Scripted:
    decide: Callable[[int, Position | None], Decision]
    evaluated: list[int] = field(default_factory=list)

    def push_history(self, candles: np.ndarray) -> None:
        pass

    def step(self, c: tuple[float, ...], position: Position | None) -> tuple[Decision, Info]:
        self.evaluated.append(int(c[0]))
        return self.decide(int(c[0]), position), Info()

    def close(self) -> None:
        pass


class Exchange:
    """A broker with durable intents; each ``submit`` waits for the test's answer. It notes the
    status of the order's row in the store when the order reaches it (intent first)."""

    name = "binance"
    durable_intents = True
    order_cap = None

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.inbox_ready = asyncio.Event()
        self.sent: list[tuple[str, str | None]] = []  # (client order id, its row's status when sent)
        self.answers: dict[str, asyncio.Future[SubmitResult]] = {}
        self.in_flight = 0
        self.most_in_flight = 0
        self.reconciled: list[list[OrderRecord]] = []
        self.truth: list[BrokerEvent] = []  # what reconcile reports
        self._inbox: list[BrokerEvent] = []
        self._arrived = asyncio.Event()

    def rules(self, key: StreamKey) -> MarketRules:
        return MarketRules(key.symbol, "BTC", "USDT", D("0.00001"), D("0.01"))

    async def submit(self, request: OrderRequest) -> SubmitResult:
        row = next((o for o in self.store.orders() if o.client_order_id == request.client_order_id), None)
        self.sent.append((request.client_order_id, None if row is None else row.status))
        answer: asyncio.Future[SubmitResult] = asyncio.get_running_loop().create_future()
        self.answers[request.client_order_id] = answer
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self._arrived.set()
        try:
            return await answer
        finally:
            self.in_flight -= 1

    async def protect(self, request: ProtectRequest) -> SubmitResult:
        raise AssertionError("no protection in these tests")

    async def cancel(self, client_order_id: str) -> None:
        self._inbox.append(Cancelled(client_order_id, "cancelled on request", 0))

    async def reconcile(self, known: Sequence[OrderRecord]) -> list[BrokerEvent]:
        self.reconciled.append(list(known))
        return list(self.truth)

    def on_candle(self, candle: Candle) -> None:
        pass

    def drain(self) -> list[BrokerEvent]:
        events, self._inbox = self._inbox, []
        return events

    def watched_keys(self) -> list[StreamKey]:
        return []

    async def close(self) -> None:
        pass

    async def reached(self, n: int) -> None:
        """Until ``n`` orders have been sent."""
        while len(self.sent) < n:
            self._arrived.clear()
            await self._arrived.wait()

    def answer(self, coid: str, result: SubmitResult, *events: BrokerEvent) -> None:
        """Answer ``coid``'s submit; ``events`` are in the inbox when the call returns."""
        self._inbox.extend(events)
        self.answers[coid].set_result(result)

    def arrive(self, *events: BrokerEvent) -> None:
        """Events arriving on their own (a poller)."""
        self._inbox.extend(events)
        self.inbox_ready.set()


def row(sid: str, portfolio: str) -> StrategyRow:
    return StrategyRow(
        id=sid, user_id="u", name=sid, python_code=None, typescript_code="v1", asset="btcusdt", interval="1m",
        status="running", portfolio_id=portfolio, parameters={}, last_run_at=None, last_signal_at=None,
        error_message=None, created_at="c", updated_at="u1", kind="js",
    )


def filled(coid: str, amount: str = "0.5", price: str = "100", trade: str = "1", complete: bool = True) -> Filled:
    return Filled(coid, f"x-{coid}", trade, D(amount), D(price), D("0.05"), "USDT", 7 * MIN, complete)


class Daemon:
    """Engine, store and writer as the daemon wires them, a paper portfolio "p" and a live one "L"."""

    def __init__(self, tmp_path: Path, max_in_flight: int = 2) -> None:
        self.store = SqliteStore(tmp_path / "o.db")
        self.store.migrate()
        self.batches: list[WriteBatch] = []
        self.committed: list[WriteBatch] = []
        self.commit = asyncio.Event()
        self.writer = StoreWriter(self.store, on_committed=self._committed)
        self.exchange = Exchange(self.store)
        self.paper = PaperBroker(fee_rate=D("0.001"), slippage_bps=D(0), cash={"p": D("10000")})
        self.scripts: dict[str, Callable[[int, Position | None], Decision]] = {}
        self.engine = Engine(
            brokers={"paper": self.paper, "live": self.exchange},
            sink=self._sink,
            runtime_factory=lambda r, key: Scripted(self.scripts[r.id]),
            now_ms=lambda: 10**9 * MIN,
            config=EngineConfig(max_candle_lag_ms=0, max_in_flight=max_in_flight),
            ledger=Ledger({"p": D("10000"), "L": D("10000")}),
            portfolios={"p": "paper", "L": "live", "X": "live-elsewhere"},
            policy=OrderPolicy(D("0.5")),
        )

    def _sink(self, batch: WriteBatch) -> None:
        self.batches.append(batch)
        self.writer.submit(batch)

    def _committed(self, batch: WriteBatch, _: int) -> None:
        self.committed.append(batch)
        self.commit.set()

    async def start(self, rows: list[StrategyRow]) -> None:
        await self.engine.sync(rows)
        await self.engine.on_history(KEY, [candle(i) for i in range(1, 6)])

    def statuses(self) -> dict[str, str]:
        return {o.strategy_id: o.status for o in self.store.orders()}


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(tmp_path)
    task = asyncio.create_task(d.writer.run())
    yield d
    await asyncio.wait_for(d.engine.drain(), 10)
    d.writer.stop()
    await task
    d.engine.close()


def buys_at(*times: int) -> Callable[[int, Position | None], Decision]:
    return lambda t, p: Decision("buy") if t in {i * MIN for i in times} else Decision("hold")


async def test_live_orders_go_out_after_their_intent_is_committed_bounded_and_never_delay_paper(
    daemon: Daemon,
) -> None:
    live = ["l1", "l2", "l3"]
    for sid in live:
        daemon.scripts[sid] = buys_at(6, 7)
    daemon.scripts["p1"] = lambda t, p: Decision("buy" if t == 6 * MIN else "sell" if t == 7 * MIN else "hold")
    await daemon.start([row(sid, "L") for sid in live] + [row("p1", "p")])
    await daemon.engine.on_closed(candle(6), 1)
    ex = daemon.exchange
    await ex.reached(2)
    # Intent first: each order's row was committed (status new) before it reached the exchange.
    coids = [client_order_id(sid, 6 * MIN, "buy") for sid in live]
    assert ex.sent == [(coids[0], "new"), (coids[1], "new")]
    assert ex.in_flight == 2  # max_in_flight: the third waits for a free slot
    # The paper strategy's fill is in the candle's own batch: decision, intent and fill together.
    (candle_batch,) = [b for b in daemon.batches if b.enqueued_ns == 1]
    assert [t.strategy_id for t in candle_batch.trades] == ["p1"]
    assert set(candle_batch.orders) == {*coids, client_order_id("p1", 6 * MIN, "buy")}
    assert candle_batch.orders[coids[0]].status == "new" and set(candle_batch.cursors) == {*live, "p1"}
    # The next candle is not held up by the exchange: p1 sells; the live strategies, whose orders
    # await an answer, get no second one.
    await daemon.engine.on_closed(candle(7), 2)
    await daemon.writer.flush()
    assert [t.side for t in daemon.store.trades("p1")] == ["buy", "sell"]
    skipped = [e.message for _, e in daemon.store.logs_after("l1") if "one order at a time" in e.message]
    assert skipped == [f"order {coids[0]} is still pending; this buy is skipped (one order at a time)"]
    assert len(ex.sent) == 2
    # Answers in another order than the requests; the third goes out once a slot is free.
    ex.answer(coids[1], Accepted(coids[1], f"x-{coids[1]}", 6 * MIN, D("0.5")), filled(coids[1]))
    await ex.reached(3)
    ex.answer(coids[2], Accepted(coids[2], f"x-{coids[2]}", 6 * MIN, D("0.5")), filled(coids[2]))
    ex.answer(coids[0], Accepted(coids[0], f"x-{coids[0]}", 6 * MIN, D("0.5")), filled(coids[0]))
    await daemon.engine.drain()
    await daemon.writer.flush()
    assert ex.most_in_flight == 2
    (results,) = [b for b in daemon.batches if b.trades and b.trades[0].strategy_id in live]
    assert [t.strategy_id for t in results.trades] == live  # recorded in request order
    assert daemon.statuses() == {"l1": "filled", "l2": "filled", "l3": "filled", "p1": "filled"}
    assert all(daemon.engine.position(sid) == Position(D("0.5"), D("100"), 6 * MIN) for sid in live)
    assert daemon.engine.ledger.cash("L") == D("10000") - 3 * (D("50") + D("0.05"))
    assert [(t.amount, t.price, t.fee, t.fee_asset) for t in daemon.store.trades("l1")] == [
        (D("0.5"), D("100"), D("0.05"), "USDT")
    ]


async def test_a_candles_decision_log_lines_wait_until_its_live_orders_are_sent(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logging a candle's decisions (a line per strategy) must not delay its live orders: the
    lines are written once the orders have gone out, paper candles' right after the commit."""
    seen: list[tuple[str, object]] = []
    narrated = asyncio.Event()

    def narrate(lines: list[tuple[str, dict[str, object]]]) -> None:
        seen.append(("logged", [fields["strategy_id"] for event, fields in lines if event == "decision"]))
        narrated.set()

    monkeypatch.setattr(core, "narrate", narrate)
    ex = daemon.exchange
    submit = ex.submit

    async def sending(request: OrderRequest) -> SubmitResult:
        seen.append(("sent", request.client_order_id))
        return await submit(request)

    ex.submit = sending  # type: ignore[method-assign]
    live = ["l1", "l2"]
    for sid in live:
        daemon.scripts[sid] = buys_at(6)
    await daemon.start([row(sid, "L") for sid in live])
    await daemon.engine.on_closed(candle(6), 1)
    await ex.reached(2)
    await asyncio.wait_for(narrated.wait(), 10)
    coids = [client_order_id(sid, 6 * MIN, "buy") for sid in live]
    assert seen[-3:] == [("sent", coids[0]), ("sent", coids[1]), ("logged", live)]
    for coid in coids:
        ex.answer(coid, Accepted(coid, f"x-{coid}", 6 * MIN, D("0.5")), filled(coid))
    # A hold candle (no orders wait for its commit): logged as it is handed to the writer.
    narrated.clear()
    await daemon.engine.on_closed(candle(7), 2)
    await asyncio.wait_for(narrated.wait(), 10)
    assert seen[-1] == ("logged", live) and len(ex.sent) == 2


async def test_no_cyclic_gc_collection_while_a_candles_live_orders_are_sent(daemon: Daemon) -> None:
    ex = daemon.exchange
    submit = ex.submit
    collecting: list[bool] = []

    async def sending(request: OrderRequest) -> SubmitResult:
        collecting.append(gc.isenabled())
        return await submit(request)

    ex.submit = sending  # type: ignore[method-assign]
    live = ["l1", "l2"]
    for sid in live:
        daemon.scripts[sid] = buys_at(6, 8)
    await daemon.start([row(sid, "L") for sid in live])
    assert gc.isenabled()
    await daemon.engine.on_closed(candle(6), 1)
    await asyncio.wait_for(ex.reached(2), 10)
    assert collecting == [False, False]
    for coid, _ in ex.sent:
        ex.answer(coid, Accepted(coid, f"x-{coid}", 6 * MIN, D("0.5")), filled(coid))
    await asyncio.wait_for(daemon.engine.drain(), 10)
    assert gc.isenabled()  # back once they are out
    gc.disable()  # someone else's choice (a benchmark): left as it is
    try:
        await daemon.engine.on_closed(candle(8), 2)
        await asyncio.wait_for(ex.reached(4), 10)
        assert collecting[2:] == [False, False]
        for coid, _ in ex.sent[2:]:
            ex.answer(coid, Accepted(coid, f"x-{coid}", 8 * MIN, D("0.5")), filled(coid))
        await asyncio.wait_for(daemon.engine.drain(), 10)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_exchange_max_in_flight_bounds_the_engines_exchange_calls() -> None:
    settings = Settings(exchange=ExchangeSettings(max_in_flight=7))
    assert ExchangeSettings().max_in_flight == 50  # Binance: 50 new orders per 10 s per account
    with pytest.raises(ValidationError):
        ExchangeSettings(max_in_flight=101)  # ccxt's HTTP connection pool holds 100
    assert app.engine_config(settings).max_in_flight == 7


async def test_an_ambiguous_answer_is_resolved_by_reconciling_never_by_sending_again(daemon: Daemon) -> None:
    daemon.scripts["l1"] = buys_at(6, 7, 8)
    await daemon.start([row("l1", "L")])
    await daemon.engine.on_closed(candle(6), 1)
    ex = daemon.exchange
    await ex.reached(1)
    coid = client_order_id("l1", 6 * MIN, "buy")
    ex.answer(coid, Unknown(coid, "timeout after sending", 6 * MIN))
    await daemon.engine.drain()
    await daemon.engine.on_closed(candle(7), 2)
    await daemon.writer.flush()
    assert daemon.statuses() == {"l1": "unknown"}
    errors = [e.message for _, e in daemon.store.logs_after("l1") if e.level == "error"]
    assert errors == [f"order {coid}: no definite answer (timeout after sending); it is resolved by asking the "
                      "exchange, never by sending it again"]
    # The exchange had placed it after all, and filled it.
    ex.truth = [Accepted(coid, f"x-{coid}", 6 * MIN, D("0.5")), filled(coid)]
    await daemon.engine.reconcile()
    await daemon.writer.flush()
    assert [r.client_order_id for r in ex.reconciled[-1]] == [coid]
    assert daemon.statuses() == {"l1": "filled"} and len(ex.sent) == 1
    assert daemon.engine.position("l1") == Position(D("0.5"), D("100"), 6 * MIN)
    # From now on the strategy trades again.
    await daemon.engine.on_closed(candle(8), 3)
    await ex.reached(2)
    assert ex.sent[1] == (client_order_id("l1", 8 * MIN, "buy"), "new")
    ex.answer(ex.sent[1][0], Accepted(ex.sent[1][0], "x-2", 8 * MIN, D("0.5")))


async def test_a_broker_that_raises_leaves_the_order_unknown(daemon: Daemon) -> None:
    async def broken(request: OrderRequest) -> SubmitResult:
        raise ConnectionResetError("reset by peer")

    daemon.exchange.submit = broken  # type: ignore[method-assign]
    daemon.scripts["l1"] = buys_at(6)
    await daemon.start([row("l1", "L")])
    await daemon.engine.on_closed(candle(6), 1)
    await daemon.engine.drain()
    await daemon.writer.flush()
    (order,) = daemon.store.orders()
    assert (order.status, order.error) == ("unknown", "broker error: ConnectionResetError('reset by peer')")


async def test_fills_arriving_on_their_own_are_applied_through_the_inbox(daemon: Daemon) -> None:
    daemon.scripts["l1"] = buys_at(6)
    await daemon.start([row("l1", "L")])
    consumer = asyncio.create_task(daemon.engine.run())
    try:
        await daemon.engine.on_closed(candle(6), 1)
        ex = daemon.exchange
        await ex.reached(1)
        coid = client_order_id("l1", 6 * MIN, "buy")
        ex.answer(coid, Accepted(coid, f"x-{coid}", 6 * MIN, D("0.5")))  # resting: no fill yet
        await daemon.engine.drain()
        await daemon.writer.flush()
        assert daemon.statuses() == {"l1": "open"}
        daemon.commit.clear()
        ex.arrive(filled(coid, "0.2", trade="7", complete=False))
        while not daemon.store.trades("l1"):
            daemon.commit.clear()
            await daemon.commit.wait()
        ex.arrive(filled(coid, "0.3", "110", trade="8"), filled(coid, "0.2", trade="7", complete=False))
        while daemon.statuses() != {"l1": "filled"}:
            daemon.commit.clear()
            await daemon.commit.wait()
        (trade,) = daemon.store.trades("l1")  # one row per order, updated by the later fill
        assert (trade.amount, trade.price, trade.fee, trade.status) == (D("0.5"), D("106"), D("0.10"), "filled")
        assert [f[0] for f in daemon.store.order_fills(coid)] == ["7", "8"]  # the repeat applied once
        assert daemon.engine.position("l1") == Position(D("0.5"), D("106"), 6 * MIN)
    finally:
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer


async def test_a_portfolio_picks_the_broker_and_one_without_a_broker_cannot_load(daemon: Daemon) -> None:
    daemon.scripts.update({"p1": buys_at(6), "x1": buys_at(6), "n1": buys_at(6)})
    await daemon.start([row("p1", "p"), row("x1", "X"), row("n1", "nope")])
    await daemon.writer.flush()
    assert daemon.engine.strategy_ids() == {"p1"}
    messages = {sid: [e.message for _, e in daemon.store.logs_after(sid) if e.level == "error"] for sid in ("x1", "n1")}
    assert messages == {
        "x1": ["cannot load strategy: portfolio X is a live-elsewhere portfolio, and live-elsewhere trading is not "
               "configured"],
        "n1": ["cannot load strategy: portfolio 'nope' does not exist"],
    }
    daemon.engine.add_portfolio("q", "paper", D("20"))  # `portfolio add` while running
    daemon.scripts["q1"] = buys_at(6)
    await daemon.engine.sync([row("p1", "p"), row("q1", "q")])
    await daemon.engine.on_closed(candle(6), 1)
    await daemon.writer.flush()
    assert [t.portfolio_id for t in daemon.store.trades("q1")] == []  # 0.5 at 100 needs 50: refused
    (refusal,) = [e.message for _, e in daemon.store.logs_after("q1") if e.level == "error"]
    assert refusal.startswith("insufficient cash: need 50.05")
    assert daemon.paper.cash("q") == D("20") and [t.portfolio_id for t in daemon.store.trades("p1")] == ["p"]
