"""The stand-in spoken to by the real ccxt 4.5.90 (recipe A: ``urls['test']`` + sandbox mode),
standalone and mounted on the replay server, where the replayed klines move its prices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal as D

import aiohttp
import ccxt
import ccxt.async_support as ccxt_async
import orjson
import pytest

from tradebotd.replay.cli import ExchangeOptions, serve_replay
from tradebotd.replay.exchange import ExchangeServer
from tradebotd.replay.server import ReplayServer
from tradebotd.replay.tape import FINAL

from ..conftest import PAST, series
from ..test_cli import Announcements
from .conftest import SECRET, recipe_a

pytestmark = pytest.mark.asyncio


async def test_load_markets_is_one_request_and_reports_trading_status(
    server: ExchangeServer, client: ccxt_async.binance
) -> None:
    markets = await client.load_markets()
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/api/v3/exchangeInfo")]
    assert markets["BTC/USDT"]["active"] is True and markets["ETH/USDT"]["active"] is False
    assert markets["BTC/USDT"]["precision"] == {"amount": 1e-05, "price": 0.01, "base": 1e-08, "quote": 1e-08}
    assert markets["BTC/USDT"]["limits"]["cost"]["min"] == 5.0


async def test_a_wrong_secret_is_an_authentication_error(server: ExchangeServer) -> None:
    client = recipe_a(server, secret="not-" + SECRET)
    try:
        await client.load_markets()
        with pytest.raises(ccxt.AuthenticationError, match="-1022"):
            await client.fetch_balance()
    finally:
        await client.close()


async def test_timestamps_outside_recv_window_are_invalid_nonce(
    server: ExchangeServer, client: ccxt_async.binance
) -> None:
    server.api.skew_ms = 15_000  # ccxt's recvWindow is 10000
    with pytest.raises(ccxt.InvalidNonce, match="-1021"):
        await client.fetch_balance()
    # ccxt's own remedy: measure the offset (GET /api/v3/time) and sign with adjusted timestamps.
    await client.load_time_difference()
    await client.fetch_balance()


async def test_orders_queries_cancels_balances_and_trades(server: ExchangeServer, client: ccxt_async.binance) -> None:
    await client.load_markets()
    bought = await client.create_order("BTC/USDT", "market", "buy", "0.01", None, {"newClientOrderId": "tb-buy"})
    assert (bought["status"], bought["filled"], bought["average"]) == ("closed", 0.01, 42000.0)
    assert bought["fee"] == {"currency": "BTC", "cost": 1e-05}
    fetched = await client.fetch_order(None, "BTC/USDT", {"origClientOrderId": "tb-buy"})
    assert (fetched["id"], fetched["status"], fetched["info"]["executedQty"]) == (bought["id"], "closed", "0.01000000")

    resting = await client.create_order("BTC/USDT", "limit", "sell", "0.005", "45000", {"newClientOrderId": "tb-lim"})
    assert resting["status"] == "open"
    assert [o["clientOrderId"] for o in await client.fetch_open_orders("BTC/USDT")] == ["tb-lim"]
    balance = await client.fetch_balance()
    assert (balance["BTC"]["free"], balance["BTC"]["used"]) == (0.00499, 0.005)
    cancelled = await client.cancel_order(None, "BTC/USDT", {"origClientOrderId": "tb-lim"})
    assert cancelled["status"] == "canceled" and cancelled["info"]["origClientOrderId"] == "tb-lim"
    assert await client.fetch_open_orders("BTC/USDT") == []

    trades = await client.fetch_my_trades("BTC/USDT")
    assert [(t["order"], t["amount"], t["fee"]["currency"]) for t in trades] == [(bought["id"], 0.01, "BTC")]
    assert abs(await client.fetch_time() - server.api.now_ms()) < 5_000


async def test_oco_through_the_implicit_endpoint_and_a_take_profit_fill(
    server: ExchangeServer, client: ccxt_async.binance
) -> None:
    await client.load_markets()
    await client.create_order("BTC/USDT", "market", "buy", "0.01", None, {"newClientOrderId": "tb-e"})
    raw = await client.private_post_orderlist_oco(
        {
            "symbol": "BTCUSDT",
            "side": "SELL",
            "quantity": "0.00999",
            "listClientOrderId": "tb-oco",
            "aboveType": "LIMIT_MAKER",
            "abovePrice": "43000.00",
            "aboveClientOrderId": "tb-tp",
            "belowType": "STOP_LOSS_LIMIT",
            "belowStopPrice": "41000.00",
            "belowPrice": "40900.00",
            "belowTimeInForce": "GTC",
            "belowClientOrderId": "tb-sl",
        }
    )
    assert (raw["listStatusType"], raw["listOrderStatus"]) == ("EXEC_STARTED", "EXECUTING")
    legs = [client.parse_order(report, client.market("BTC/USDT")) for report in raw["orderReports"]]
    assert [(o["clientOrderId"], o["status"], o["triggerPrice"]) for o in legs] == [
        ("tb-sl", "open", 41000.0),
        ("tb-tp", "open", None),
    ]
    assert legs[0]["timestamp"] == -1 and legs[0]["stopLossPrice"] is None  # ccxt quirks (notes §2.8)
    assert [ol["listClientOrderId"] for ol in await client.private_get_openorderlist()] == ["tb-oco"]

    server.set_price("BTCUSDT", D("43000.00"))
    done = await client.private_get_orderlist({"origClientOrderId": "tb-oco"})
    assert (done["listStatusType"], done["listOrderStatus"]) == ("ALL_DONE", "ALL_DONE")
    sl = await client.fetch_order(None, "BTC/USDT", {"origClientOrderId": "tb-sl"})
    tp = await client.fetch_order(None, "BTC/USDT", {"origClientOrderId": "tb-tp"})
    assert (sl["status"], tp["status"], tp["average"]) == ("expired", "closed", 43000.0)
    assert await client.private_get_openorderlist() == []


async def test_cancel_an_oco_list(server: ExchangeServer, client: ccxt_async.binance) -> None:
    await client.load_markets()
    await client.create_order("BTC/USDT", "market", "buy", "0.01", None, {"newClientOrderId": "tb-e"})
    await client.private_post_orderlist_oco(
        {
            "symbol": "BTCUSDT",
            "side": "SELL",
            "quantity": "0.009",
            "listClientOrderId": "tb-oco",
            "aboveType": "LIMIT_MAKER",
            "abovePrice": "43000.00",
            "belowType": "STOP_LOSS",
            "belowStopPrice": "41000.00",
        }
    )
    cancelled = await client.private_delete_orderlist({"symbol": "BTCUSDT", "listClientOrderId": "tb-oco"})
    assert cancelled["listOrderStatus"] == "ALL_DONE"
    assert {r["status"] for r in cancelled["orderReports"]} == {"CANCELED"}
    assert (await client.fetch_balance())["BTC"]["used"] == 0


async def test_ccxt_forwarding_take_profit_dicts_is_refused_as_unread_parameters(
    server: ExchangeServer, client: ccxt_async.binance
) -> None:
    await client.load_markets()
    with pytest.raises(ccxt.BadRequest, match="-1104"):
        await client.create_order("BTC/USDT", "market", "buy", "0.01", None, {"takeProfit": {"triggerPrice": 43000}})
    assert server.account.orders["BTCUSDT"] == []


async def test_how_ccxt_reports_each_fault(server: ExchangeServer) -> None:
    """What the live broker's error mapping has to work with (ccxt's classes, not ours)."""
    client = recipe_a(server, timeout=300)
    try:
        await client.load_markets()
        server.faults.timeout_after_accept()
        with pytest.raises(ccxt.RequestTimeout):
            await client.create_order("BTC/USDT", "market", "buy", "0.001", None, {"newClientOrderId": "f1"})
        server.faults.disconnect_after_accept()
        with pytest.raises(ccxt.ExchangeNotAvailable) as cut:
            await client.create_order("BTC/USDT", "market", "buy", "0.001", None, {"newClientOrderId": "f2"})
        assert isinstance(cut.value.__cause__, aiohttp.ServerDisconnectedError)
        server.faults.server_error(503, after_accept=True, path="/api/v3/order")
        # Binance's 5xx body carries code -1001, which ccxt maps before looking at the status:
        # OperationFailed, *not* a NetworkError subclass.
        with pytest.raises(ccxt.OperationFailed) as failed:
            await client.create_order("BTC/USDT", "market", "buy", "0.001", None, {"newClientOrderId": "f3"})
        assert not isinstance(failed.value, ccxt.NetworkError)
        server.faults.truncate_after_accept()
        # A 200 whose body is cut short: a plain ExchangeError, the network only in its cause.
        with pytest.raises(ccxt.ExchangeError) as truncated:
            await client.create_order("BTC/USDT", "market", "buy", "0.001", None, {"newClientOrderId": "f4"})
        assert isinstance(truncated.value.__cause__, aiohttp.ClientPayloadError)
        assert not isinstance(truncated.value, ccxt.NetworkError)
        placed = [o.client_order_id for o in server.account.orders["BTCUSDT"]]
        assert placed == ["f1", "f2", "f3", "f4"]  # all placed
        assert server.held == 1

        server.faults.order_not_found()
        with pytest.raises(ccxt.OrderNotFound, match="-2013"):
            await client.fetch_order(None, "BTC/USDT", {"origClientOrderId": "f1"})
        server.faults.insufficient_balance()
        with pytest.raises(ccxt.InsufficientFunds):
            await client.create_order("BTC/USDT", "market", "buy", "0.001", None, {"newClientOrderId": "f4"})
        with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
            await client.create_order("BTC/USDT", "limit", "buy", "0.001", "41000", {"newClientOrderId": "f5"})
            await client.create_order("BTC/USDT", "limit", "buy", "0.001", "40000", {"newClientOrderId": "f5"})
        with pytest.raises(ccxt.MarketClosed):
            await client.create_order("ETH/USDT", "market", "buy", "0.01")
    finally:
        await client.close()


async def test_429_then_418_reach_ccxt_as_ddos_protection_with_retry_after(
    server: ExchangeServer, client: ccxt_async.binance, limits_clock: object
) -> None:
    await client.load_markets()
    server.faults.too_many_requests(retry_after_s=30)
    with pytest.raises(ccxt.DDoSProtection, match="429"):
        await client.fetch_balance()
    assert client.last_response_headers["Retry-After"] == "30"
    with pytest.raises(ccxt.DDoSProtection, match="418"):
        await client.fetch_balance()  # did not wait: banned
    assert client.last_response_headers["Retry-After"] == "120"
    assert [r.status for r in server.requests[-2:]] == [429, 418]


async def test_a_client_id_with_reserved_characters_is_signed_over_its_encoding(
    server: ExchangeServer, client: ccxt_async.binance
) -> None:
    await client.load_markets()
    order = await client.create_order("BTC/USDT", "market", "buy", "0.001", None, {"newClientOrderId": "bot:grid/1.a"})
    assert order["clientOrderId"] == "bot:grid/1.a"
    assert (await client.fetch_order(None, "BTC/USDT", {"origClientOrderId": "bot:grid/1.a"}))["id"] == order["id"]


# -- on the replay server -----------------------------------------------------------------------


@pytest.fixture
async def replay_exchange() -> AsyncIterator[tuple[ReplayServer, ExchangeServer]]:
    replay = ReplayServer([series("BTCUSDT", count=60)], past=PAST, ping_interval_s=None)
    exchange = ExchangeServer.for_replay(
        replay, api_keys={"test-key": SECRET}, balances={"USDT": D("10000"), "BTC": D("0.01")}
    )
    async with replay:
        yield replay, exchange


def _levels(replay: ReplayServer, candles: int) -> tuple[D, D]:
    """The highest high and lowest low of the next ``candles`` replayed candles."""
    ahead = replay.series["BTCUSDT"].candles[PAST : PAST + candles]
    return max(c.high for c in ahead), min(c.low for c in ahead)


@pytest.mark.parametrize("leg", ["take_profit", "stop_loss"])
async def test_replayed_klines_trigger_oco_legs(replay_exchange: tuple[ReplayServer, ExchangeServer], leg: str) -> None:
    replay, exchange = replay_exchange
    price = exchange.account.prices["BTCUSDT"]
    high, low = _levels(replay, 10)
    assert low < price < high
    tp = high if leg == "take_profit" else price * 2
    sl = low if leg == "stop_loss" else (price / 2).quantize(D("0.01"))
    client = recipe_a(exchange)
    try:
        await client.load_markets()
        await client.private_post_orderlist_oco(
            {
                "symbol": "BTCUSDT",
                "side": "SELL",
                "quantity": "0.01",
                "listClientOrderId": "tb-oco",
                "aboveType": "LIMIT_MAKER",
                "abovePrice": str(tp),
                "aboveClientOrderId": "tb-tp",
                "belowType": "STOP_LOSS",
                "belowStopPrice": str(sl),
                "belowClientOrderId": "tb-sl",
            }
        )
        await replay.advance(10)
        listed = await client.private_get_orderlist({"origClientOrderId": "tb-oco"})
        filled, expired = ("tb-tp", "tb-sl") if leg == "take_profit" else ("tb-sl", "tb-tp")
        assert listed["listOrderStatus"] == "ALL_DONE"
        assert (await client.fetch_order(None, "BTC/USDT", {"origClientOrderId": filled}))["status"] == "closed"
        assert (await client.fetch_order(None, "BTC/USDT", {"origClientOrderId": expired}))["status"] == "expired"
    finally:
        await client.close()


async def test_one_port_two_clocks(replay_exchange: tuple[ReplayServer, ExchangeServer]) -> None:
    replay, exchange = replay_exchange
    async with aiohttp.ClientSession() as http:
        async with http.get(replay.rest_url + "/api/v3/time") as response:
            replay_time = orjson.loads(await response.read())["serverTime"]
        async with http.get(exchange.rest_url + "/api/v3/time") as response:
            exchange_time = orjson.loads(await response.read())["serverTime"]
        params = {"symbol": "BTCUSDT", "interval": "1m", "limit": "2"}
        async with http.get(replay.rest_url + "/api/v3/klines", params=params) as response:
            assert response.status == 200
    assert replay_time == replay.tape.now_ms  # the replay's past
    assert abs(exchange_time - exchange.api.now_ms()) < 5_000 and exchange_time > replay_time
    assert exchange.rest_url == replay.rest_url + "/exchange"


async def test_a_step_moves_the_exchange_price_before_the_kline_goes_out(
    replay_exchange: tuple[ReplayServer, ExchangeServer],
) -> None:
    replay, exchange = replay_exchange
    step = await replay.step()
    assert step is not None and step.stage == 1
    candle = replay.series["BTCUSDT"].candles[PAST]
    first_extreme = candle.low if candle.close >= candle.open else candle.high
    assert exchange.account.prices["BTCUSDT"] == first_extreme
    while (step := await replay.step()) is not None and step.stage != FINAL:
        pass
    assert exchange.account.prices["BTCUSDT"] == candle.close


async def test_replay_server_cli_serves_the_exchange_and_prints_what_to_use() -> None:
    out = Announcements()
    task = asyncio.create_task(serve_replay(None, past=50, exchange=ExchangeOptions(), out=out))
    try:
        async with asyncio.timeout(10):
            await out.port_printed.wait()
        settings = dict(line.split("=", 1) for line in out.getvalue().splitlines() if not line.startswith("#"))
        assert settings["TRADEBOTD_EXCHANGE__MODE"] == "testnet"
        assert settings["TRADEBOTD_EXCHANGE__REST_URL"] == f"http://127.0.0.1:{settings['PORT']}/exchange"
        client = ccxt_async.binance(
            {
                "apiKey": settings["TRADEBOTD_EXCHANGE__API_KEY"],
                "secret": settings["TRADEBOTD_EXCHANGE__API_SECRET"],
                "enableRateLimit": False,
                "options": {"fetchMarkets": {"types": ["spot"]}},
            }
        )
        base = settings["TRADEBOTD_EXCHANGE__REST_URL"]
        client.urls["test"] = {"public": f"{base}/api/v3", "private": f"{base}/api/v3", "v1": f"{base}/api/v1"}
        client.set_sandbox_mode(True)
        try:
            assert (await client.fetch_balance())["USDT"]["free"] == 10000.0
        finally:
            await client.close()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
