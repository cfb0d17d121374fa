"""The live broker through the real ccxt against the Binance spot stand-in on 127.0.0.1: entries,
OCO protection, exchange-side exits learned by the poller, cancels, immediate-trigger stops,
partial fills, refusals and the cap, all driven through the engine's order shell and desk."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from decimal import Decimal as D
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.broker.intents import decision_intent
from tests.exchange.conftest import KEY as API_KEY
from tests.exchange.conftest import SECRET, SecondsClock
from tradebotd.broker.live import LiveBroker, list_client_order_id, order_rules
from tradebotd.exchange.errors import Banned
from tradebotd.exchange.model import Balance
from tradebotd.exchange.throttle import RequestBudget
from tradebotd.model import Candle, Position, StreamKey
from tradebotd.orders.desk import Effects
from tradebotd.orders.ledger import Holding
from tradebotd.orders.model import MarketUnavailable, OrderRecord
from tradebotd.orders.state import Order
from tradebotd.replay.exchange import ExchangeServer, SymbolSpec
from tradebotd.store.base import WriteBatch
from tradebotd.store.sqlite import utc_now

from .live_harness import KEY, PORTFOLIO, LiveAccount, T, live_account, started


@pytest.fixture
def clock() -> SecondsClock:
    return SecondsClock()


@pytest.fixture
async def server(clock: SecondsClock) -> AsyncIterator[ExchangeServer]:
    specs = [
        SymbolSpec.named("BTCUSDT"),
        SymbolSpec.named("ETHUSDT", status="BREAK"),
    ]
    async with ExchangeServer(
        specs,
        api_keys={API_KEY: SECRET},
        balances={"USDT": D("10000")},
        prices={"BTCUSDT": D("42000.00"), "ETHUSDT": D("2000.00")},
        limits_clock=clock,
    ) as exchange:
        yield exchange


@pytest.fixture
async def account(server: ExchangeServer, clock: SecondsClock) -> AsyncIterator[LiveAccount]:
    a = await started(live_account(server, budget=RequestBudget(monotonic=clock)))
    try:
        yield a
    finally:
        await a.close()


def test_leg_ids_name_their_list() -> None:
    assert list_client_order_id("tb-1-abc-tp") == "tb-1-abc-oco"
    assert list_client_order_id("tb-1-abc-sl-p3") == "tb-1-abc-oco-p3"


async def test_rules_come_from_the_markets_loaded_at_start_up(account: LiveAccount) -> None:
    rules = account.broker.rules(KEY)
    assert (rules.base_asset, rules.quote_asset, rules.amount_step, rules.min_notional) == (
        "BTC", "USDT", D("0.00001"), D("5"),
    )
    with pytest.raises(MarketUnavailable, match="no spot market DOGEUSDT"):
        account.broker.rules(StreamKey("DOGEUSDT", "1m"))
    with pytest.raises(MarketUnavailable, match="not trading"):
        account.broker.rules(StreamKey("ETHUSDT", "1m"))
    assert order_rules(account.port.rules("BTCUSDT")).native_protection


async def test_market_entry_is_protected_by_an_oco_and_the_take_profit_exit_is_polled(account: LiveAccount) -> None:
    buy = await account.decide("buy", amount="0.01", tp="43000", sl="41000")
    entry = account.order(buy)
    assert (entry.status, entry.filled_amount, entry.average_price) == ("filled", D("0.01"), D("42000"))
    assert entry.exchange_order_id is not None
    position = account.position()
    assert position is not None
    assert position.amount == D("0.00999")  # the fee was taken in BTC
    [oco] = account.posts("/api/v3/orderList/oco")
    assert (oco["quantity"], oco["abovePrice"], oco["belowStopPrice"]) == ("0.00999", "43000.00", "41000.00")
    tp, sl = account.desk.book.protection("s1")
    assert (tp.leg, tp.status, sl.leg, sl.status) == ("tp", "open", "sl", "open")
    assert tp.exchange_order_id and sl.exchange_order_id and tp.list_id == sl.list_id is not None

    await account.poll()  # nothing happened yet
    assert account.position() is not None

    account.price("43000")
    await account.poll()
    assert account.position() is None
    assert (tp.status, tp.average_price, sl.status) == ("filled", D("43000"), "cancelled")
    assert "expired" in (sl.error or "")
    sell_fee = D("0.00999") * D("43000") * D("0.001")
    assert tp.fee == sell_fee and tp.fee_asset == "USDT"
    assert account.desk.ledger.cash("p") == D("10000") - D("420") + D("0.00999") * D("43000") - sell_fee
    trades = [t for b in account.batches for t in b.trades]
    assert [(t.side, t.price) for t in trades][-1] == ("sell", D("43000"))
    assert account.broker.tracked() == []


async def test_the_stop_loss_exit_is_polled_with_its_real_price(account: LiveAccount) -> None:
    await account.decide("buy", amount="0.01", tp="43000", sl="41000")
    account.price("40990")
    await account.poll()
    assert account.position() is None
    tp, sl = (account.order(c) for c in account.broker.tracked()) if account.broker.tracked() else (None, None)
    assert tp is None and sl is None
    legs = [o for o in account.desk.book if o.leg in ("tp", "sl")]
    assert legs == []  # both done
    sells = [f for b in account.batches for f in b.order_fills if f.client_order_id.endswith("-sl")]
    assert [(f.price, f.amount) for f in sells] == [(D("40990"), D("0.00999"))]


async def test_a_sell_cancels_the_protection_first(account: LiveAccount) -> None:
    await account.decide("buy", amount="0.01", tp="43000", sl="41000")
    sell = await account.decide("sell", t=T + 60_000)
    assert account.order(sell).status == "filled"
    assert account.position() is None
    paths = [(r.method, r.path) for r in account.server.requests if r.method in ("POST", "DELETE")]
    assert paths[-2:] == [("DELETE", "/api/v3/orderList"), ("POST", "/api/v3/order")]
    assert account.server.account.open_orders() == []
    assert {o.status for o in account.desk.book if o.leg in ("tp", "sl")} == set()


async def test_a_candles_exits_share_one_balance_read_started_before_their_intents_commit(
    account: LiveAccount,
) -> None:
    for sid in ("s1", "s2"):
        await account.decide("buy", amount="0.01", sid=sid)
    reads_before = len(account.server.requests_to("/api/v3/account"))
    handed_over: list[int] = []  # batches handed to the writer when the balances were asked for
    balances = account.port.balances

    def asked() -> Coroutine[Any, Any, dict[str, Balance]]:
        handed_over.append(len(account.batches))
        return balances()

    account.port.balances = asked  # type: ignore[method-assign]
    batches_before = len(account.batches)
    async with account.orders._lock:
        out = Effects()
        for sid in ("s1", "s2"):
            intent = decision_intent(sid, T + 60_000, "sell", "42000", portfolio_id=PORTFOLIO, key=KEY)
            job = account.desk.decide(intent, account.broker.name, utc_now(), out)
            assert job is not None
            out.jobs.append((account.broker.name, job))
    await account.orders.finish(out, WriteBatch())
    await account.orders.drain()
    assert account.position("s1") is None and account.position("s2") is None
    # One read for both exits, asked for before the batch with their intents was handed over.
    assert len(account.server.requests_to("/api/v3/account")) == reads_before + 1
    assert handed_over == [batches_before]
    assert [p["quantity"] for p in account.posts()[-2:]] == ["0.00999", "0.00999"]  # fees in BTC: sized from it


async def test_one_level_is_a_single_stop_loss_order_on_the_exchange(account: LiveAccount) -> None:
    await account.decide("buy", amount="0.01", sl="41990")
    assert account.posts("/api/v3/orderList/oco") == []
    [stop] = [p for p in account.posts() if p["type"] == "STOP_LOSS"]
    assert (stop["quantity"], stop["stopPrice"]) == ("0.00999", "41990")
    [sl] = account.desk.book.protection("s1")
    assert sl.status == "open" and sl.exchange_order_id is not None
    account.price("41000")  # the market gaps through the stop: it triggers on the exchange
    await account.poll()
    assert account.position() is None and sl.status == "filled" and sl.average_price == D("41000")


async def test_a_stop_that_would_trigger_immediately_becomes_a_market_exit(account: LiveAccount) -> None:
    # The exchange refuses the stop as Binance does when the market is already through it.
    original = account.port.create_order

    async def create_order(*args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("stop_price") is not None:
            account.server.faults.reject(-2010, "Order would trigger immediately.", path="/api/v3/order")
        return await original(*args, **kwargs)

    account.port.create_order = create_order  # type: ignore[method-assign]
    with capture_logs() as logs:
        buy = await account.decide("buy", amount="0.01", sl="41500")
    account.port.create_order = original  # type: ignore[method-assign]
    assert account.order(buy).status == "filled"
    assert account.position() is None  # sold at market at once, never left unprotected
    sl = account.order(buy.replace("-buy", "-sl"))
    assert (sl.status, sl.average_price, sl.filled_amount) == ("filled", D("42000"), D("0.00999"))
    market = [p for p in account.posts() if p.get("newClientOrderId") == sl.client_order_id]
    assert [p["type"] for p in market] == ["STOP_LOSS", "MARKET"]
    assert any(e["event"].startswith("protective level already touched") for e in logs)
    assert account.server.account.open_orders() == []


async def test_a_restored_position_whose_stop_the_market_has_passed_exits_at_market(clock: SecondsClock) -> None:
    # The daemon was down while the market fell through the position's stop; its protection is
    # gone. At start-up (no price yet) the exchange refuses the OCO; at the first candle the
    # invariant places it again, sees the stop passed, and sells at market instead.
    async with ExchangeServer(
        [SymbolSpec.named("BTCUSDT")], api_keys={API_KEY: SECRET}, balances={"USDT": D("0"), "BTC": D("0.01")},
        prices={"BTCUSDT": D("40000.00")}, limits_clock=clock,
    ) as server:
        held = Holding("p", KEY, Position(D("0.01"), D("42000"), T, D("45000"), D("41000")))
        a = await started(live_account(server, holdings={"s1": held}))
        try:
            assert a.position() is not None
            assert [e for e in a.logs("error") if "protective order rejected" in e.message]
            await a.candle("40000")
            assert a.position() is None
            [exit_fill] = [f for b in a.batches for f in b.order_fills]
            assert exit_fill.client_order_id.endswith("-sl-p2") and exit_fill.price == D("40000")
            assert len(a.posts("/api/v3/orderList/oco")) == 1  # the one refused at start-up
            assert server.account.open_orders() == [] and server.account.free["BTC"] == 0
        finally:
            await a.close()


async def test_a_partial_fill_is_protected_for_what_filled(account: LiveAccount) -> None:
    account.server.account.arm_partial_fill(2)
    buy = await account.decide("buy", amount="0.02", tp="43000", sl="41000")
    entry = account.order(buy)
    assert (entry.status, entry.filled_amount) == ("cancelled", D("0.01"))
    position = account.position()
    assert position is not None and position.amount == D("0.00999")
    [oco] = account.posts("/api/v3/orderList/oco")
    assert oco["quantity"] == "0.00999"


async def test_insufficient_balance_is_rejected_with_a_log_row(account: LiveAccount) -> None:
    account.server.faults.insufficient_balance()
    buy = await account.decide("buy", amount="0.01")
    order = account.order(buy)
    assert order.status == "rejected" and "insufficient balance" in (order.error or "")
    assert "-2010" in (order.error or "")
    assert account.position() is None
    refusals = [e for e in account.logs() if "insufficient balance" in e.message]
    assert len(refusals) == 1 and refusals[0].strategy_id == "s1"


async def test_an_absurd_amount_is_refused_by_the_cap_and_nothing_is_sent(account: LiveAccount) -> None:
    before = len(account.server.requests)
    buy = await account.decide("buy", amount="5")  # 5 BTC x 42000 = 210000 USDT > 1000
    assert buy not in account.desk.book
    assert account.posts() == [] and account.placed() == []
    assert len(account.server.requests) == before  # not even a balance check
    [row] = [e for e in account.logs() if "exchange.max_order_quote" in e.message]
    assert "210000 USDT" in row.message


async def test_a_market_the_exchange_does_not_list_is_refused_for_that_strategy(account: LiveAccount) -> None:
    await account.decide("buy", "1", amount="10", sid="doge", key=StreamKey("DOGEUSDT", "1m"))
    await account.decide("buy", amount="0.01", sid="btc")
    rows = [e for e in account.logs() if e.strategy_id == "doge"]
    assert any("no spot market DOGEUSDT" in e.message for e in rows)
    assert account.position("doge") is None and account.position("btc") is not None
    assert [p["symbol"] for p in account.posts()] == ["BTCUSDT"]


async def test_a_timeout_after_accept_is_unknown_then_reconciled_never_resent(server: ExchangeServer) -> None:
    a = await started(live_account(server, timeout_s=0.3))
    try:
        server.faults.timeout_after_accept()
        buy = await a.decide("buy", amount="0.01", tp="43000", sl="41000")
        order = a.order(buy)
        assert order.status == "unknown"
        assert [e for e in a.logs("error") if "no definite answer" in e.message]
        assert a.position() is None
        await a.poll()  # asked by origClientOrderId
        assert order.status == "filled" and a.position() is not None
        assert len(a.posts()) == 1 and a.placed().count(buy) == 1  # never sent again
        assert len(a.posts("/api/v3/orderList/oco")) == 1  # and protected once it was known
    finally:
        await a.close()


async def test_order_not_found_right_after_placing_is_asked_again(server: ExchangeServer) -> None:
    a = await started(live_account(server, timeout_s=0.3))
    try:
        server.faults.timeout_after_accept()
        buy = await a.decide("buy", amount="0.01")
        server.faults.order_not_found()  # the query lags behind the matching engine: -2013
        await a.poll()
        assert a.order(buy).status == "unknown"  # within the grace: not given up
        await a.poll()
        assert a.order(buy).status == "filled" and len(a.posts()) == 1
    finally:
        await a.close()


async def test_an_order_the_exchange_never_saw_is_rejected_after_the_grace(server: ExchangeServer) -> None:
    a = await started(live_account(server, timeout_s=0.3, grace_s=0))
    try:
        original = a.port.create_order

        async def lost(*args, **kwargs):  # type: ignore[no-untyped-def]
            from tradebotd.exchange.errors import Ambiguous

            raise Ambiguous("create_order: the connection broke before the request left")

        a.port.create_order = lost  # type: ignore[method-assign]
        buy = await a.decide("buy", amount="0.01")
        a.port.create_order = original  # type: ignore[method-assign]
        assert a.order(buy).status == "unknown"
        await a.poll()
        order = a.order(buy)
        assert order.status == "rejected" and "never saw" in (order.error or "") and "-2013" in (order.error or "")
        assert a.placed() == []
    finally:
        await a.close()


async def test_429_then_418_stop_order_traffic_with_one_log_line(account: LiveAccount, clock: SecondsClock) -> None:
    account.server.faults.too_many_requests(retry_after_s=30)
    with capture_logs() as logs:
        first = await account.decide("buy", amount="0.01")  # the balance read is fine; the order gets 429
        order = account.order(first)
        assert order.status == "rejected" and "not sent" in (order.error or "") and account.placed() == []
        sent = len(account.server.requests)
        second = await account.decide("buy", amount="0.01", t=T + 60_000)  # backing off: held back, unsent
        assert account.order(second).status == "rejected" and len(account.server.requests) == sent
        # The client that does not back off is banned (the stand-in bans requests before Retry-After).
        account.server.faults.ban(retry_after_s=300)
        clock.t += 31
        third = await account.decide("buy", amount="0.01", t=T + 120_000)
        assert account.order(third).status == "rejected"
        until = account.broker.banned_until_ms
        assert until is not None
        sent = len(account.server.requests)
        fourth = await account.decide("buy", amount="0.01", t=T + 180_000)
        await account.poll()
        assert len(account.server.requests) == sent  # nothing at all goes out during the ban
        assert "banned" in (account.order(fourth).error or "")
    bans = [e for e in logs if e["log_level"] == "error" and "418" in e["event"]]
    assert len(bans) == 1
    clock.t += 300
    account.server.api.lift_ban()
    assert account.broker.banned_until_ms is None
    fifth = await account.decide("buy", amount="0.01", t=T + 240_000)
    assert account.order(fifth).status == "filled" and account.placed() == [fifth]


async def test_a_rejected_oco_is_logged_and_the_invariant_places_it_again(account: LiveAccount) -> None:
    account.server.faults.reject_oco()
    await account.decide("buy", amount="0.01", tp="43000", sl="41000")
    assert account.position() is not None and account.desk.book.protection("s1") == []
    assert [e for e in account.logs("error") if "protective order rejected" in e.message]
    await account.candle("42000")  # the invariant after a closed candle
    repaired = [e for e in account.logs("error") if "not live on the exchange" in e.message]
    assert len(repaired) == 1
    tp, sl = account.desk.book.protection("s1")
    assert tp.client_order_id.endswith("-tp-p2") and tp.status == "open" and sl.status == "open"
    assert len(account.server.account.open_orders()) == 2
    await account.candle("42000", t=T + 120_000)  # protected: nothing more to do
    assert len([e for e in account.logs("error") if "not live on the exchange" in e.message]) == 1


async def test_dust_left_by_base_fees_is_recorded_as_dust(server: ExchangeServer) -> None:
    a = await started(live_account(server))
    try:
        await a.decide("buy", amount="0.01234")  # fee 0.00001234 BTC: 0.01232766 held
        position = a.position()
        assert position is not None and position.amount == D("0.01232766")
        sell = await a.decide("sell", t=T + 60_000)
        assert a.order(sell).status == "filled" and a.order(sell).filled_amount == D("0.01232")
        assert a.position() is None  # 0.00000766 BTC is dust: recorded, not kept as a position
        notes = [e for e in a.logs() if "dust" in e.message]
        assert notes and "0.00000766" in notes[0].message
        assert server.account.free["BTC"] == D("0.00000766")
    finally:
        await a.close()


async def test_an_exit_is_sized_from_the_free_balance(account: LiveAccount) -> None:
    await account.decide("buy", amount="0.01")
    # Someone else sold some BTC from this account: the position says 0.00999, 0.005 is free.
    await account.port.create_order("BTCUSDT", "sell", "market", D("0.00499"), client_order_id="manual-1")
    sell = await account.decide("sell", t=T + 60_000)
    order = account.order(sell)
    assert order.status == "filled" and order.filled_amount == D("0.005")
    [sent] = [p for p in account.posts() if p.get("newClientOrderId") == sell]
    assert D(sent["quantity"]) == D("0.005")


async def test_dust_below_the_minimum_is_refused_not_retried(account: LiveAccount) -> None:
    await account.decide("buy", amount="0.01")
    await account.port.create_order("BTCUSDT", "sell", "market", D("0.00998"), client_order_id="manual-1")
    sell = await account.decide("sell", t=T + 60_000)
    order = account.order(sell)
    assert order.status == "rejected" and "dust" in (order.error or "")
    assert [p.get("newClientOrderId") for p in account.posts()].count(sell) == 0


async def test_the_broker_is_named_after_the_exchange_and_its_cap(server: ExchangeServer) -> None:
    a = live_account(server, max_order_quote="500")
    try:
        broker: LiveBroker = a.broker
        assert broker.name == "binance" and broker.durable_intents
        assert broker.order_cap is not None
    finally:
        await a.close()


# -- restarts -----------------------------------------------------------------------------------


def _restored(a: LiveAccount, upto: int | None = None) -> tuple[dict[str, Holding], list[Order]]:
    """What the store would give a restarted daemon: the active orders and positions as of the
    first ``upto`` batches (all of them by default)."""
    batches = a.batches if upto is None else a.batches[:upto]
    latest: dict[str, OrderRecord] = {}
    fills: dict[str, list[str]] = {}
    positions: dict[str, Holding] = {}
    for b in batches:
        latest.update(b.orders)
        for f in b.order_fills:
            fills.setdefault(f.client_order_id, []).append(f.trade_id)
        for sid, (pid, key, position) in b.positions.items():
            if position is None:
                positions.pop(sid, None)
            else:
                positions[sid] = Holding(pid, key, position)
    active = [Order.from_record(r, fills.get(r.client_order_id, ())) for r in latest.values()
              if r.status not in ("filled", "cancelled", "rejected")]
    return positions, active


async def test_a_restart_rebuilds_state_from_the_exchange(server: ExchangeServer) -> None:
    a = await started(live_account(server))
    await a.decide("buy", amount="0.01", tp="43000", sl="41000")
    await a.close()
    holdings, active = _restored(a)
    assert {o.leg for o in active} == {"tp", "sl"}
    server.set_price("BTCUSDT", D("43000"))  # while the daemon is down the take-profit fills

    b = await started(live_account(server, holdings=holdings, orders=active, cash=str(a.desk.ledger.cash("p"))))
    try:
        assert b.position() is None
        [tp_fill] = [f for batch in b.batches for f in batch.order_fills]
        assert tp_fill.client_order_id.endswith("-tp") and tp_fill.price == D("43000")
        assert b.desk.book.active() == [] and b.held == {}  # type: ignore[attr-defined]
        assert b.desk.ledger.cash("p") == D("10000") - D("420") + D("0.00999") * D("43000") * D("0.999")
    finally:
        await b.close()


async def test_an_order_recorded_but_not_answered_before_a_crash_is_asked_about(server: ExchangeServer) -> None:
    a = await started(live_account(server))
    buy = await a.decide("buy", amount="0.01", tp="43000", sl="41000")
    await a.close()
    # The crash came after the intent's commit (the first batch) and after sending, before
    # anything else was recorded: the store has the order as "new" and no position.
    intent = next(i for i, batch in enumerate(a.batches) if buy in batch.orders)
    assert a.batches[intent].orders[buy].status == "new" and a.batches[intent].on_durable is not None
    holdings, active = _restored(a, upto=intent + 1)
    assert holdings == {} and [(o.client_order_id, o.status) for o in active] == [(buy, "new")]

    b = await started(live_account(server, holdings=holdings, orders=active))
    try:
        order = b.order(buy)
        assert order.status == "filled" and order.filled_amount == D("0.01")
        position = b.position()
        assert position is not None and position.amount == D("0.00999")
        assert b.placed().count(buy) == 1 and len(b.posts()) == 1  # asked, never sent again
        # Its protection (the entry's levels were kept with its intent) was placed before the
        # crash: the exchange's list is adopted, not placed twice.
        tp, sl = b.desk.book.protection("s1")
        assert (tp.status, sl.status) == ("open", "open") and tp.exchange_order_id and sl.exchange_order_id
        assert len(b.posts("/api/v3/orderList/oco")) == 1
        assert len(server.account.open_orders()) == 2
        server.set_price("BTCUSDT", D("40900"))
        await b.poll()
        assert b.position() is None and sl.status == "filled"
    finally:
        await b.close()


async def test_an_order_the_exchange_cannot_be_asked_about_holds_its_strategy(server: ExchangeServer) -> None:
    a = await started(live_account(server, timeout_s=0.3))
    server.faults.timeout_after_accept()
    buy = await a.decide("buy", amount="0.01")
    await a.close()
    holdings, active = _restored(a)
    assert [o.status for o in active] == ["unknown"]
    server.faults.server_error(503, method="GET", path="/api/v3/order", count=5)
    b = await started(live_account(server, holdings=holdings, orders=active))
    try:
        assert b.order(buy).status == "unknown"
        assert "s1" in b.held and buy in b.held["s1"]  # type: ignore[attr-defined]
    finally:
        await b.close()


async def test_protection_cancelled_on_the_exchange_is_noticed_and_placed_again(account: LiveAccount) -> None:
    await account.decide("buy", amount="0.01", tp="43000", sl="41000")
    tp, sl = account.desk.book.protection("s1")
    # Someone cancels the list by hand (or the exchange does): the poller sees the legs gone.
    await account.port.cancel_oco("BTCUSDT", list_client_order_id(tp.client_order_id))
    await account.poll()
    assert (tp.status, sl.status) == ("cancelled", "cancelled") and account.position() is not None
    await account.candle("42000")  # the invariant after the closed candle
    tp2, sl2 = account.desk.book.protection("s1")
    assert tp2.client_order_id.endswith("-tp-p2") and (tp2.status, sl2.status) == ("open", "open")
    assert [e for e in account.logs("error") if "not live on the exchange" in e.message]
    assert len(account.server.account.open_orders()) == 2


async def test_periodic_reconciliation_finds_what_the_poller_did_not_watch(account: LiveAccount) -> None:
    await account.decide("buy", amount="0.01", tp="43000", sl="41000")
    tp, sl = account.desk.book.protection("s1")
    account.broker._tracked.clear()  # as if the broker had lost track of them
    await account.poll()  # watches nothing
    account.price("43000")
    await account.poll()
    assert account.position() is not None
    await account.orders.reconcile_durable()  # the engine's active orders, asked by client order id
    await account.orders.drain()
    assert account.position() is None and (tp.status, sl.status) == ("filled", "cancelled")


async def test_the_invariant_waits_while_the_exchange_cannot_take_orders(
    account: LiveAccount, clock: SecondsClock
) -> None:
    await account.decide("buy", amount="0.01", tp="43000", sl="41000")
    tp, _ = account.desk.book.protection("s1")
    await account.port.cancel_oco("BTCUSDT", list_client_order_id(tp.client_order_id))
    await account.poll()
    account.server.faults.ban(retry_after_s=300)
    with pytest.raises(Banned):
        await account.port.balances()  # any request of this account's IP: 418
    assert account.broker.banned_until_ms is not None and not account.broker.available()
    await account.candle("42000")
    assert account.desk.book.protection("s1") == []  # no attempt spent on a request that cannot go out
    clock.t += 300
    account.server.api.lift_ban()
    await account.candle("42000", t=T + 120_000)
    assert [o.client_order_id[-5:] for o in account.desk.book.protection("s1")] == ["tp-p2", "sl-p2"]


async def test_many_symbols_are_polled_with_one_request(account: LiveAccount, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tradebotd.broker.live.ALL_SYMBOLS_AFTER", 0)
    await account.decide("buy", amount="0.01", tp="43000", sl="41000")
    account.price("43000")
    await account.poll()
    assert account.position() is None
    polls = [r.params for r in account.server.requests_to("/api/v3/openOrders", "GET")]
    assert polls and all("symbol" not in p for p in polls)


async def test_the_poller_runs_at_once_after_a_closed_kline_and_fills_the_inbox(account: LiveAccount) -> None:
    await account.decide("buy", amount="0.01", tp="43000", sl="41000")
    task = asyncio.create_task(account.broker.run())  # poll_s is an hour: only the nudge wakes it
    try:
        account.server.set_price("BTCUSDT", D("43000"))
        account.broker.on_candle(Candle("BTCUSDT", "1m", T + 60_000, *(D("43000"),) * 4, D("1"), True))
        async with asyncio.timeout(10):
            await account.broker.inbox_ready.wait()
        events = account.broker.drain()
        assert [type(e).__name__ for e in events] == ["Expired", "Filled"]
        await account.apply(events)
        assert account.position() is None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- markets where the exchange cannot hold the protection ------------------------------------


@pytest.fixture
async def plain_server(clock: SecondsClock) -> AsyncIterator[ExchangeServer]:
    """BTCUSDT without OCO lists or stop orders: only market and limit orders."""
    spec = SymbolSpec.named("BTCUSDT", oco_allowed=False, order_types=("LIMIT", "LIMIT_MAKER", "MARKET"))
    async with ExchangeServer([spec], api_keys={API_KEY: SECRET}, balances={"USDT": D("10000")},
                              prices={"BTCUSDT": D("42000.00")}, limits_clock=clock) as exchange:
        yield exchange


async def _touched(a: LiveAccount, low: str, high: str, t: int) -> None:
    """A kline update whose range touches a watched level; the exit's events, once it is done."""
    a.server.set_price("BTCUSDT", D(low))
    a.broker.on_candle(Candle("BTCUSDT", "1m", t, D(high), D(high), D(low), D(low), D("1"), False))
    async with asyncio.timeout(10):
        await a.broker.inbox_ready.wait()
    a.broker.inbox_ready.clear()
    await a.apply(a.broker.drain())


async def test_levels_the_exchange_cannot_hold_are_watched_from_the_klines(plain_server: ExchangeServer) -> None:
    a = await started(live_account(plain_server))
    try:
        await a.decide("buy", amount="0.01", tp="43000", sl="41000")
        assert a.posts("/api/v3/orderList/oco") == [] and len(a.posts()) == 1  # the entry only
        tp, sl = a.desk.book.protection("s1")
        assert (tp.status, sl.status) == ("open", "open") and list(a.broker.watched_keys()) == [KEY]
        a.broker.on_candle(Candle("BTCUSDT", "1m", T, *(D("40000"),) * 4, D("1"), False))  # its own candle: no
        assert a.broker.drain() == [] and a.position() is not None
        await _touched(a, "40950", "42100", T + 60_000)
        assert a.position() is None
        assert (sl.status, sl.average_price, tp.status) == ("filled", D("40950"), "cancelled")
        assert sl.exchange_order_id not in (None, sl.client_order_id)  # the market sell's real id
        [exit_order] = [p for p in a.posts() if p["newClientOrderId"] == sl.client_order_id]
        assert exit_order["type"] == "MARKET" and list(a.broker.watched_keys()) == []
    finally:
        await a.close()


async def test_watched_levels_survive_a_restart_and_a_sell_cancels_them(plain_server: ExchangeServer) -> None:
    a = await started(live_account(plain_server))
    await a.decide("buy", amount="0.01", tp="43000", sl="41000")
    await a.close()
    holdings, active = _restored(a)
    b = await started(live_account(plain_server, holdings=holdings, orders=active, cash=str(a.desk.ledger.cash("p"))))
    try:
        asked = [r.params.get("origClientOrderId") for r in plain_server.requests_to("/api/v3/order", "GET")]
        assert not any(c and c.endswith(("-tp", "-sl")) for c in asked)  # watched here: nothing to ask
        tp, sl = b.desk.book.protection("s1")
        assert (tp.status, sl.status) == ("open", "open")
        await _touched(b, "43000", "43000", T + 120_000)
        assert b.position() is None and (tp.status, tp.average_price, sl.status) == ("filled", D("43000"), "cancelled")
    finally:
        await b.close()
    c = await started(live_account(plain_server))
    try:
        await c.decide("buy", amount="0.01", tp="45000", sl="40000", t=T + 180_000)
        sell = await c.decide("sell", t=T + 240_000)
        assert c.order(sell).status == "filled" and c.position() is None
        assert list(c.broker.watched_keys()) == [] and c.desk.book.protection("s1") == []
    finally:
        await c.close()
