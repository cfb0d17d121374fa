"""``CcxtExchange`` through the real ccxt 4.5.90 against the Binance stand-in: rules, exact
decimals, every call, OCO life cycles, partial fills, and each fault mapped into our error tree."""

from __future__ import annotations

import decimal
from decimal import Decimal as D

import aiohttp
import pytest
from structlog.testing import capture_logs

from tradebotd.exchange import ccxt_exchange, errors
from tradebotd.exchange.ccxt_exchange import KEEPALIVE_S, CcxtExchange
from tradebotd.exchange.model import OcoRequest
from tradebotd.exchange.throttle import Limits, RequestBudget
from tradebotd.replay.exchange import ExchangeServer, RateLimits, SymbolSpec

from .conftest import KEY, SECRET, SecondsClock, make_port


async def buy(port: CcxtExchange, amount: str = "0.01", cid: str = "tb-1-buy", symbol: str = "BTCUSDT") -> None:
    await port.create_order(symbol, "buy", "market", D(amount), client_order_id=cid)


def oco(amount: str = "0.00999", tp: str = "43000", sl: str = "41000", sl_limit: str | None = None) -> OcoRequest:
    return OcoRequest(
        symbol="BTCUSDT",
        side="sell",
        amount=D(amount),
        take_profit=D(tp),
        stop_price=D(sl),
        stop_limit_price=D(sl_limit) if sl_limit else None,
        list_client_order_id="tb-1-oco",
        tp_client_order_id="tb-1-tp",
        sl_client_order_id="tb-1-sl",
    )


# -- markets ----------------------------------------------------------------------------------


async def test_load_markets_gives_exact_rules_and_sizes_the_budget(server: ExchangeServer) -> None:
    budget = RequestBudget()
    port = make_port(server, budget=budget)
    try:
        rules = await port.load_markets()
    finally:
        await port.close()
    # Spot only: one exchangeInfo; adjustForTimeDifference then reads the server clock.
    assert [r.path for r in server.requests] == ["/api/v3/exchangeInfo", "/api/v3/time"]
    btc = rules["BTCUSDT"]
    assert (btc.base, btc.quote, btc.trading, btc.status, btc.oco) == ("BTC", "USDT", True, "TRADING", True)
    assert (btc.amount_step, btc.min_amount, btc.price_tick, btc.min_notional) == (
        D("0.00001"),
        D("0.00001"),
        D("0.01"),
        D("5"),
    )
    assert {"MARKET", "LIMIT", "LIMIT_MAKER", "STOP_LOSS", "STOP_LOSS_LIMIT"} <= btc.order_types
    assert (rules["ETHUSDT"].trading, rules["ETHUSDT"].status) == (False, "BREAK")
    assert budget.limits == Limits(6000, 50, 160_000, 60.0, 10.0, 86_400.0)  # from exchangeInfo rateLimits
    assert btc.refusal(D("0.0001"), D("42000"), market=True) == "notional 4.2 USDT is below the minimum 5"
    assert rules["ETHUSDT"].refusal(D("1"), D("2000"), market=True) == "ETHUSDT is not trading (status BREAK)"
    with pytest.raises(errors.BadSymbol):
        port.rules("NOPEUSDT")


async def test_rate_limits_advertised_by_the_exchange_size_the_budget() -> None:
    limits = RateLimits(weight_per_minute=1200, orders_per_10s=10, orders_per_day=1000)
    async with ExchangeServer(
        [SymbolSpec.named("BTCUSDT")], api_keys={KEY: SECRET}, balances={}, limits=limits
    ) as server:
        budget = RequestBudget(share=0.5)
        port = make_port(server, budget=budget)
        try:
            await port.load_markets()
        finally:
            await port.close()
    assert (budget.limits.weight, budget.limits.orders_short, budget.limits.orders_long) == (1200, 10, 1000)


# -- decimals ---------------------------------------------------------------------------------


async def test_amounts_go_over_the_wire_exactly_and_round_down_to_the_step(
    server: ExchangeServer, port: CcxtExchange
) -> None:
    order = await port.create_order("SATSUSDT", "buy", "market", D("0.00012345"), client_order_id="tb-sats")
    assert server.requests[-1].params["quantity"] == "0.00012345"
    assert (order.amount, order.filled, order.cost) == (D("0.00012345"), D("0.00012345"), D("5.18490000"))
    [fill] = order.trades
    assert (fill.amount, fill.price, fill.fee, fill.fee_asset) == (D("0.00012345"), D("42000"), D("1.2E-7"), "SATS")

    rounded = await port.create_order("BTCUSDT", "buy", "market", D("0.00012345"), client_order_id="tb-btc")
    assert server.requests[-1].params["quantity"] == "0.00012"  # down to the step 0.00001, never up
    assert rounded.amount == D("0.00012")

    await port.create_order("BTCUSDT", "buy", "limit", D("0.001"), price=D("41000.129"), client_order_id="tb-lim")
    assert server.requests[-1].params["price"] == "41000.13"  # to the tick


async def test_the_callers_decimal_context_survives_ccxt(port: CcxtExchange) -> None:
    decimal.getcontext().rounding = decimal.ROUND_HALF_EVEN
    decimal.getcontext().traps[decimal.Underflow] = False
    await buy(port)
    context = decimal.getcontext()
    # ccxt's decimal_to_precision sets ROUND_HALF_UP and traps Underflow for the whole thread.
    assert context.rounding == decimal.ROUND_HALF_EVEN and not context.traps[decimal.Underflow]


# -- new orders: ccxt's implicit endpoint, with the unified request and answer -------------------

# (kind, side, amount, price, stop price): every kind create_order places on Binance.
NEW_ORDERS = [
    ("market", "buy", "0.03", None, None),
    ("limit", "sell", "0.005", "45000.10", None),
    ("limit", "buy", "0.001", "41000", None),
    ("stop_loss", "sell", "0.00999", None, "41000"),
    ("stop_loss_limit", "buy", "0.001", "43500", "43400"),
]
_PER_REQUEST = {"timestamp", "recvWindow", "signature", "newClientOrderId"}


async def test_a_new_order_is_the_request_unified_create_order_sends_and_reads_as_ccxt_parses_it(
    server: ExchangeServer, port: CcxtExchange
) -> None:
    """Binance's new orders go through ccxt's implicit ``private_post_order`` (ccxt signs and
    sends them): the same parameters its unified ``create_order`` sends for the same order, and
    the answer read into what ``parse_order`` makes of it."""
    client = port._client
    market = client.market("BTC/USDT")
    for i, (kind, side, amount, price, stop) in enumerate(NEW_ORDERS):
        params = {"newClientOrderId": f"unified-{i}"}
        if price is not None:
            params["timeInForce"] = "GTC"
        if stop is not None:
            params["stopLossPrice"] = stop
        ccxt_type = "limit" if price is not None else "market"
        with decimal.localcontext():
            await client.create_order("BTC/USDT", ccxt_type, side, amount, price, params)
        unified = server.requests[-1].params
        order = await port.create_order(
            "BTCUSDT", side, kind, D(amount), client_order_id=f"lean-{i}",  # type: ignore[arg-type]
            price=D(price) if price else None, stop_price=D(stop) if stop else None,
        )  # fmt: skip
        lean = server.requests[-1]
        assert (lean.method, lean.path, lean.params["newClientOrderId"]) == ("POST", "/api/v3/order", f"lean-{i}")
        assert {k: v for k, v in lean.params.items() if k not in _PER_REQUEST} == {
            k: v for k, v in unified.items() if k not in _PER_REQUEST
        }, kind
        assert order == ccxt_exchange._order(client.parse_order(order.raw, market), "BTCUSDT"), kind
        assert order.raw["clientOrderId"] == order.client_order_id == f"lean-{i}"
    # The other answers an order report comes in: a query (time, updateTime) and a cancel
    # (origClientOrderId), and a market order that filled in part and expired.
    queried = await client.private_get_order({"symbol": "BTCUSDT", "origClientOrderId": "lean-1"})
    cancelled = await client.private_delete_order({"symbol": "BTCUSDT", "origClientOrderId": "lean-2"})
    server.account.arm_partial_fill(2)
    expired = await port.create_order("BTCUSDT", "buy", "market", D("0.02"), client_order_id="lean-partial")
    assert (expired.state, expired.filled, len(expired.trades)) == ("expired", D("0.01"), 1)
    for raw in (queried, cancelled, expired.raw):
        parsed = ccxt_exchange._order(client.parse_order(raw, market), "BTCUSDT")
        assert ccxt_exchange._binance_order(raw, "BTCUSDT", port._currency_code) == parsed
    assert [o.client_order_id for o in await port.open_orders("BTCUSDT")] == [
        "unified-1", "lean-1", "unified-2", "unified-3", "lean-3", "unified-4", "lean-4",
    ]  # fmt: skip


async def test_an_order_type_the_market_does_not_take_is_refused_before_sending() -> None:
    spec = SymbolSpec.named("BTCUSDT", order_types=("LIMIT", "MARKET"))
    async with ExchangeServer([spec], api_keys={KEY: SECRET}, balances={"BTC": D("1")}) as server:
        port = make_port(server)
        try:
            await port.load_markets()
            with pytest.raises(errors.InvalidOrder, match="STOP_LOSS is not a valid order type"):
                await port.create_order(
                    "BTCUSDT", "sell", "stop_loss", D("0.01"), stop_price=D("40000"), client_order_id="tb-sl"
                )
        finally:
            await port.close()
    assert server.requests_to("/api/v3/order") == []


# -- orders, balances, trades -----------------------------------------------------------------


async def test_market_limit_fetch_cancel_open_orders_balances_trades_time(
    server: ExchangeServer, port: CcxtExchange
) -> None:
    bought = await port.create_order("BTCUSDT", "buy", "market", D("0.01"), client_order_id="tb-1-buy")
    assert (bought.state, bought.type, bought.client_order_id, bought.average) == (
        "filled",
        "market",
        "tb-1-buy",
        D("42000"),
    )
    assert bought.raw["status"] == "FILLED" and bought.list_id is None
    assert [(t.amount, t.fee, t.fee_asset) for t in bought.trades] == [(D("0.01"), D("0.00001"), "BTC")]
    fetched = await port.fetch_order("BTCUSDT", "tb-1-buy")
    assert (fetched.exchange_order_id, fetched.state, fetched.filled) == (bought.exchange_order_id, "filled", D("0.01"))

    resting = await port.create_order(
        "BTCUSDT", "sell", "limit", D("0.005"), price=D("45000"), client_order_id="tb-2-sell"
    )
    assert (resting.state, resting.price, resting.remaining) == ("open", D("45000"), D("0.005"))
    assert [o.client_order_id for o in await port.open_orders("BTCUSDT")] == ["tb-2-sell"]
    assert [o.client_order_id for o in await port.open_orders()] == ["tb-2-sell"]
    balances = await port.balances()
    assert (balances["BTC"].free, balances["BTC"].locked) == (D("0.00499"), D("0.005"))
    assert balances["USDT"].free == D("9580")

    cancelled = await port.cancel_order("BTCUSDT", "tb-2-sell")
    assert (cancelled.state, cancelled.client_order_id) == ("cancelled", "tb-2-sell")  # not the cancel's own id
    assert await port.open_orders("BTCUSDT") == []

    trades = await port.my_trades("BTCUSDT")
    assert [(t.order_id, t.side, t.amount, t.maker) for t in trades] == [
        (bought.exchange_order_id, "buy", D("0.01"), False)
    ]
    assert await port.my_trades("BTCUSDT", from_id=str(int(trades[0].trade_id) + 1)) == []
    assert abs(await port.server_time() - server.api.now_ms()) < 5_000


async def test_stop_loss_orders(server: ExchangeServer, port: CcxtExchange) -> None:
    await buy(port)
    stop = await port.create_order(
        "BTCUSDT", "sell", "stop_loss", D("0.00999"), stop_price=D("41000"), client_order_id="tb-1-sl"
    )
    assert (stop.type, stop.state, stop.stop_price, stop.created_ms) == ("stop_loss", "open", D("41000"), None)
    assert server.requests[-1].params["type"] == "STOP_LOSS"
    server.set_price("BTCUSDT", D("40990"))
    filled = await port.fetch_order("BTCUSDT", "tb-1-sl")
    assert (filled.state, filled.average) == ("filled", D("40990"))
    limited = await port.create_order(
        "BTCUSDT", "buy", "stop_loss_limit", D("0.001"), price=D("41500"), stop_price=D("41400"), client_order_id="x"
    )
    assert (limited.type, limited.price, limited.stop_price) == ("stop_loss_limit", D("41500"), D("41400"))


async def test_partial_fills_arrive_over_several_price_updates(server: ExchangeServer, port: CcxtExchange) -> None:
    await buy(port, "0.03")
    server.account.arm_partial_fill(3)
    await port.create_order("BTCUSDT", "sell", "limit", D("0.0297"), price=D("43000"), client_order_id="tb-2-sell")
    server.set_price("BTCUSDT", D("43000"))
    first = await port.fetch_order("BTCUSDT", "tb-2-sell")
    assert (first.state, first.filled, first.remaining) == ("partially_filled", D("0.0099"), D("0.0198"))
    server.set_price("BTCUSDT", D("43100"))
    server.set_price("BTCUSDT", D("43200"))
    done = await port.fetch_order("BTCUSDT", "tb-2-sell")
    assert (done.state, done.filled, done.average) == ("filled", D("0.0297"), D("43000"))
    sells = [t for t in await port.my_trades("BTCUSDT") if t.side == "sell"]
    assert [t.amount for t in sells] == [D("0.0099")] * 3
    assert len({t.trade_id for t in sells}) == 3


async def test_a_partially_filled_market_order_expires(server: ExchangeServer, port: CcxtExchange) -> None:
    server.account.arm_partial_fill(2)
    order = await port.create_order("BTCUSDT", "buy", "market", D("0.02"), client_order_id="tb-1-buy")
    assert (order.state, order.filled, order.amount) == ("expired", D("0.01"), D("0.02"))


# -- OCO --------------------------------------------------------------------------------------


async def test_oco_take_profit_fills_and_the_stop_is_gone(server: ExchangeServer, port: CcxtExchange) -> None:
    await buy(port)
    placed = await port.create_oco(oco())
    assert (placed.is_open, placed.list_client_order_id, placed.status) == (True, "tb-1-oco", "EXEC_STARTED/EXECUTING")
    assert {o.client_order_id: o.type for o in placed.orders} == {"tb-1-sl": "stop_loss", "tb-1-tp": "limit_maker"}
    assert {o.list_id for o in placed.orders} == {placed.list_id}
    body = server.requests[-1].params
    assert (body["aboveType"], body["abovePrice"], body["belowType"], body["belowStopPrice"]) == (
        "LIMIT_MAKER",
        "43000.00",
        "STOP_LOSS",
        "41000.00",
    )
    assert [ol.list_client_order_id for ol in await port.open_ocos()] == ["tb-1-oco"]

    server.set_price("BTCUSDT", D("43000"))
    done = await port.fetch_oco("tb-1-oco")
    assert (done.is_open, done.status) == (False, "ALL_DONE/ALL_DONE")
    assert [leg.client_order_id for leg in done.legs] == ["tb-1-sl", "tb-1-tp"]
    tp, sl = await port.fetch_order("BTCUSDT", "tb-1-tp"), await port.fetch_order("BTCUSDT", "tb-1-sl")
    assert (tp.state, tp.average, sl.state, sl.filled) == ("filled", D("43000"), "expired", D("0"))
    assert await port.open_ocos() == []
    assert (await port.balances())["BTC"] == type((await port.balances())["BTC"])("BTC", D("0"), D("0"))


async def test_oco_stop_triggers_and_the_take_profit_is_gone(server: ExchangeServer, port: CcxtExchange) -> None:
    await buy(port)
    await port.create_oco(oco(sl="41000", sl_limit="40900"))
    assert server.requests[-1].params["belowType"] == "STOP_LOSS_LIMIT"
    server.set_price("BTCUSDT", D("40950"))
    sl, tp = await port.fetch_order("BTCUSDT", "tb-1-sl"), await port.fetch_order("BTCUSDT", "tb-1-tp")
    assert (sl.state, sl.average, tp.state) == ("filled", D("40950"), "expired")
    assert not (await port.fetch_oco("tb-1-oco")).is_open


async def test_cancel_an_oco(port: CcxtExchange) -> None:
    await buy(port)
    await port.create_oco(oco())
    cancelled = await port.cancel_oco("BTCUSDT", "tb-1-oco")
    assert not cancelled.is_open and {o.state for o in cancelled.orders} == {"cancelled"}
    assert (await port.balances())["BTC"].locked == 0


async def test_a_rejected_oco_is_invalid_order_and_places_nothing(server: ExchangeServer, port: CcxtExchange) -> None:
    await buy(port)
    server.faults.reject_oco()
    with pytest.raises(errors.InvalidOrder) as err:
        await port.create_oco(oco())
    assert err.value.code == -2010 and "relationship of the prices" in str(err.value)
    with pytest.raises(errors.InvalidOrder):  # a stop above the market: Binance's own check
        await port.create_oco(oco(tp="44000", sl="42500"))
    assert await port.open_ocos() == []


# -- errors -----------------------------------------------------------------------------------


async def test_a_wrong_secret_is_authentication_failed(server: ExchangeServer) -> None:
    port = make_port(server, secret="not-the-secret")
    try:
        await port.load_markets()  # public
        with pytest.raises(errors.AuthenticationFailed) as err:
            await port.balances()
    finally:
        await port.close()
    assert err.value.code == -1022


@pytest.mark.parametrize(
    ("arm", "expected", "code"),
    [
        ("insufficient_balance", errors.InsufficientFunds, -2010),
        ("notional", errors.InvalidOrder, -1013),
        ("closed", errors.MarketClosed, None),
    ],
)
async def test_refusals_are_permanent(
    server: ExchangeServer, port: CcxtExchange, arm: str, expected: type[errors.ExchangeError], code: int | None
) -> None:
    symbol, amount = "BTCUSDT", D("0.01")
    if arm == "insufficient_balance":
        server.faults.insufficient_balance()
    elif arm == "notional":
        amount = D("0.0001")
    else:
        symbol = "ETHUSDT"
    with pytest.raises(expected) as err:
        await port.create_order(symbol, "buy", "market", amount, client_order_id="tb-x")
    assert isinstance(err.value, errors.Permanent)
    if code is not None:
        assert err.value.code == code


async def test_duplicate_client_order_id_and_not_found(server: ExchangeServer, port: CcxtExchange) -> None:
    await port.create_order("BTCUSDT", "buy", "limit", D("0.001"), price=D("41000"), client_order_id="tb-dup")
    with pytest.raises(errors.DuplicateOrder):
        await port.create_order("BTCUSDT", "buy", "limit", D("0.001"), price=D("40000"), client_order_id="tb-dup")
    with pytest.raises(errors.OrderNotFound) as err:
        await port.fetch_order("BTCUSDT", "tb-never")
    assert err.value.code == -2013
    server.faults.order_not_found()  # the exchange's query lagging behind its matching engine
    with pytest.raises(errors.OrderNotFound):
        await port.fetch_order("BTCUSDT", "tb-dup")
    assert (await port.fetch_order("BTCUSDT", "tb-dup")).state == "open"
    with pytest.raises(errors.OrderNotFound) as err:
        await port.fetch_oco("tb-no-list")
    assert err.value.code == -2018
    await port.cancel_order("BTCUSDT", "tb-dup")
    with pytest.raises(errors.OrderNotFound) as err:
        await port.cancel_order("BTCUSDT", "tb-dup")
    assert err.value.code == -2011


@pytest.mark.parametrize("fault", ["timeout", "disconnect", "truncated", "5xx"])
async def test_a_lost_answer_to_an_order_is_ambiguous_and_resolved_by_asking(
    server: ExchangeServer, fault: str
) -> None:
    port = make_port(server, timeout_s=0.3)
    try:
        await port.load_markets()
        if fault == "timeout":
            server.faults.timeout_after_accept()
        elif fault == "disconnect":
            server.faults.disconnect_after_accept()
        elif fault == "truncated":  # a 200 cut short: ccxt says plain ExchangeError, caused by aiohttp
            server.faults.truncate_after_accept()
        else:
            server.faults.server_error(503, after_accept=True, path="/api/v3/order")
        with pytest.raises(errors.Ambiguous):
            await port.create_order("BTCUSDT", "buy", "market", D("0.01"), client_order_id="tb-amb")
        resolved = await port.fetch_order("BTCUSDT", "tb-amb")  # never sent again: asked
    finally:
        await port.close()
    assert resolved.state == "filled"
    assert len(server.requests_to("/api/v3/order", "POST")) == 1


async def test_a_lost_answer_to_an_oco_is_ambiguous(server: ExchangeServer, port: CcxtExchange) -> None:
    await buy(port)
    server.faults.truncate_after_accept(path="/api/v3/orderList/oco")
    with pytest.raises(errors.Ambiguous):
        await port.create_oco(oco())
    assert (await port.fetch_oco("tb-1-oco")).is_open  # placed: asked, not sent again
    assert len(server.requests_to("/api/v3/orderList/oco", "POST")) == 1


async def test_a_lost_answer_to_a_read_or_a_cancel_is_retryable(server: ExchangeServer, port: CcxtExchange) -> None:
    server.faults.server_error(502, path="/api/v3/account")
    with pytest.raises(errors.Unavailable):
        await port.balances()
    server.faults.server_error(503, path="/api/v3/order", method="DELETE")
    with pytest.raises(errors.Unavailable):
        await port.cancel_order("BTCUSDT", "tb-whatever")


async def test_an_order_that_could_not_connect_was_never_sent() -> None:
    # Without keep-alive no pooled connection survives, so after the server stops the next
    # request needs a new connection, which is refused: provably never sent. (Over a pooled
    # connection the server has closed, the failure can come after sending: Ambiguous.)
    server = ExchangeServer([SymbolSpec.named("BTCUSDT")], api_keys={KEY: SECRET}, balances={}, keep_alive=False)
    await server.start()
    port = make_port(server)
    try:
        await port.load_markets()
        await server.close()
        with pytest.raises(errors.Unavailable) as err:
            await port.create_order("BTCUSDT", "buy", "market", D("0.01"), client_order_id="tb-refused")
        assert not isinstance(err.value, errors.Ambiguous)
    finally:
        await port.close()
        await server.close()


async def test_clock_skew_is_retryable_and_the_port_measures_the_offset_again(
    server: ExchangeServer, port: CcxtExchange
) -> None:
    server.api.skew_ms = 30_000  # the exchange's clock jumped ahead of ours
    with pytest.raises(errors.ClockSkew) as err:
        await port.create_order("BTCUSDT", "buy", "market", D("0.01"), client_order_id="tb-skew")
    assert err.value.code == -1021 and server.account.orders["BTCUSDT"] == []
    assert server.requests[-1].path == "/api/v3/time"  # re-measured at once
    await port.create_order("BTCUSDT", "buy", "market", D("0.01"), client_order_id="tb-skew")


async def test_error_messages_carry_no_signature_key_or_secret(server: ExchangeServer, port: CcxtExchange) -> None:
    server.faults.server_error(503, path="/api/v3/order", method="GET")
    with pytest.raises(errors.Unavailable) as err:
        await port.fetch_order("BTCUSDT", "tb-1-buy")
    text = str(err.value)
    assert "/api/v3/order?…" in text or "-1001" in text
    for leaked in ("signature=", "timestamp=", KEY, SECRET):
        assert leaked not in text
    assert err.value.__cause__ is None and err.value.__context__ is None  # ccxt's exception is not attached


# -- 429 and 418 ------------------------------------------------------------------------------


async def test_429_backs_off_and_nothing_is_sent_until_retry_after(
    server: ExchangeServer, port: CcxtExchange, budget_clock: SecondsClock
) -> None:
    server.faults.too_many_requests(retry_after_s=30)
    with pytest.raises(errors.RateLimited) as err:
        await port.balances()
    assert err.value.retry_after_s == 30.0 and not isinstance(err.value, errors.Banned)
    sent = len(server.requests)
    with pytest.raises(errors.RateLimited) as err:
        await port.create_order("BTCUSDT", "buy", "market", D("0.01"), client_order_id="tb-wait")
    assert len(server.requests) == sent  # held back: the server saw nothing
    assert 0 < (err.value.retry_after_s or 0) <= 30
    budget_clock.t += 30
    await port.create_order("BTCUSDT", "buy", "market", D("0.01"), client_order_id="tb-wait")
    assert server.requests[-1].status == 200


async def test_418_stops_all_order_traffic_until_the_ban_ends_with_one_log_line(
    server: ExchangeServer, port: CcxtExchange, budget_clock: SecondsClock
) -> None:
    server.faults.ban(retry_after_s=300)
    with capture_logs() as logs:
        with pytest.raises(errors.Banned) as err:
            await port.open_orders("BTCUSDT")
        assert err.value.retry_after_s == 300.0
        sent = len(server.requests)
        for cid in ("tb-a", "tb-b"):
            with pytest.raises(errors.Banned):
                await port.create_order("BTCUSDT", "buy", "market", D("0.01"), client_order_id=cid)
        with pytest.raises(errors.Banned):
            await port.create_oco(oco())
        assert len(server.requests) == sent
        budget_clock.t += 300
        server.api.lift_ban()
        await port.create_order("BTCUSDT", "buy", "market", D("0.01"), client_order_id="tb-c")
    banned = [e for e in logs if e["log_level"] == "error"]
    assert len(banned) == 1 and "banned this IP (HTTP 418) for 300 s" in banned[0]["event"]
    assert any(e["event"] == "exchange ban over; requests resume" for e in logs)


async def test_pacing_under_our_budget(server: ExchangeServer) -> None:
    """The one test that lets time pass: a 300 ms window of 8 weight, and fetch_order weighs 4,
    so the third query cannot leave before the first one's weight has aged out."""
    budget = RequestBudget(Limits(weight=8, weight_window_s=0.3), share=1.0)
    port = make_port(server, budget=budget, max_wait_s=5.0)
    try:
        await port.load_markets()  # reads rateLimits: put our window back
        budget.configure(Limits(weight=8, weight_window_s=0.3))
        await port.create_order("BTCUSDT", "buy", "market", D("0.01"), client_order_id="tb-p")
        for _ in range(3):
            await port.fetch_order("BTCUSDT", "tb-p")
    finally:
        await port.close()
    queries = server.requests_to("/api/v3/order", "GET")
    assert len(queries) == 3
    # POST (1) + GET (4) + GET (4) > 8: the second GET waits for the window to roll.
    assert queries[1].at_ms - server.requests_to("/api/v3/order", "POST")[0].at_ms >= 250
    assert queries[2].at_ms - queries[0].at_ms >= 250


# -- modes and URLs ---------------------------------------------------------------------------


async def test_live_mode_with_rest_url_talks_only_to_that_url(server: ExchangeServer) -> None:
    port = CcxtExchange(api_key=KEY, api_secret=SECRET, mode="live", rest_url=server.rest_url, max_wait_s=0)
    try:
        assert set(port._client.urls["api"]) == {"public", "private", "v1"}
        await port.load_markets()
        await port.balances()
    finally:
        await port.close()
    assert [r.path for r in server.requests] == ["/api/v3/exchangeInfo", "/api/v3/time", "/api/v3/account"]


async def test_testnet_without_rest_url_uses_binance_testnet_hosts() -> None:
    port = CcxtExchange(api_key=KEY, api_secret=SECRET, mode="testnet")
    try:
        urls = port._client.urls["api"]
        assert urls["public"] == "https://testnet.binance.vision/api/v3" and "sapi" not in urls
    finally:
        await port.close()


async def test_the_http_session_keeps_idle_connections_past_a_candle_and_closes_with_the_port(
    server: ExchangeServer, budget: RequestBudget
) -> None:
    exchange = make_port(server, budget=budget)
    await exchange.server_time()
    session = exchange._client.session
    assert isinstance(session, aiohttp.ClientSession)
    # aiohttp's default (15 s) would close them between two 1m candles
    assert session.connector is not None and session.connector._keepalive_timeout == KEEPALIVE_S > 60
    await exchange.server_time()
    assert session.connector is not None and len(session.connector._conns) == 1  # one idle connection, reused
    await exchange.close()
    assert session.closed
    with pytest.raises(errors.ExchangeError):
        await exchange.server_time()  # closed: refused, and no new session is made for it
    assert exchange._client.session is None
