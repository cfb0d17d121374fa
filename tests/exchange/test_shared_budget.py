"""One request budget per REST host: the market feed's REST calls and the exchange port's orders
draw on the same windows when they call one host (here: the replay server with the exchange
stand-in mounted, as ``tradebotd replay-server --exchange`` serves them), and a 429 or 418 that
either one hears holds back both. Real ccxt, real aiohttp, nothing waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal as D

import aiohttp
import pytest

from tests.market.conftest import PAST, WAIT_S, RecordingSink, make_series
from tradebotd.config import ExchangeSettings, MarketSettings
from tradebotd.exchange import errors
from tradebotd.exchange.ccxt_exchange import CcxtExchange
from tradebotd.exchange.throttle import Limits, RequestBudgets
from tradebotd.market import MarketFeed
from tradebotd.market.errors import RestUnavailable
from tradebotd.market.rest import WEIGHTS, KlinesClient
from tradebotd.model import StreamKey
from tradebotd.replay.exchange import ExchangeServer, RateLimits
from tradebotd.replay.server import ReplayServer

from .conftest import KEY, SECRET, SecondsClock

WEIGHT = 30  # per minute, advertised by the stand-in's exchangeInfo and ours from the start
KEY_1M = StreamKey("BTCUSDT", "1m")


@pytest.fixture
async def one_host() -> AsyncIterator[tuple[ReplayServer, ExchangeServer]]:
    replay = ReplayServer([make_series("BTCUSDT", 200)], past=PAST, ping_interval_s=None)
    exchange = ExchangeServer.for_replay(
        replay, api_keys={KEY: SECRET}, balances={"USDT": D("10000")}, limits=RateLimits(weight_per_minute=WEIGHT)
    )
    async with replay:
        yield replay, exchange


def port_on(exchange: ExchangeServer, budgets: RequestBudgets) -> CcxtExchange:
    return CcxtExchange(
        api_key=KEY, api_secret=SECRET, mode="testnet", rest_url=exchange.rest_url, budgets=budgets, max_wait_s=0
    )


def test_one_budget_per_host() -> None:
    budgets = RequestBudgets()
    api = budgets.for_url("https://api.binance.com")
    assert budgets.for_url("https://API.binance.com/api/v3/klines") is api  # any path, any case
    assert budgets.for_url("https://testnet.binance.vision") is not api
    assert budgets.for_url("http://127.0.0.1:8000/exchange") is budgets.for_url("http://127.0.0.1:8000")
    assert budgets.for_url("http://127.0.0.1:8001") is not budgets.for_url("http://127.0.0.1:8000")
    with pytest.raises(ValueError, match="absolute"):
        budgets.for_url("api.binance.com")


async def test_live_trading_shares_the_market_feeds_budget_and_the_testnet_does_not() -> None:
    """The default market REST URL and a live Binance port are one host, so one budget; the
    testnet is another server with its own counters. (Constructing the port sends nothing.)"""
    budgets = RequestBudgets()
    feed_budget = budgets.for_url(MarketSettings().rest_url)
    assert ExchangeSettings().mode == "testnet"
    live = CcxtExchange(api_key=KEY, api_secret=SECRET, mode="live", budgets=budgets)
    testnet = CcxtExchange(api_key=KEY, api_secret=SECRET, mode="testnet", budgets=budgets)
    try:
        assert live.rest_base == "https://api.binance.com" and live.budget is feed_budget
        assert testnet.rest_base == "https://testnet.binance.vision" and testnet.budget is not feed_budget
    finally:
        await live.close()
        await testnet.close()


async def test_weight_the_feed_spent_is_not_there_for_orders(one_host: tuple[ReplayServer, ExchangeServer]) -> None:
    replay, exchange = one_host
    budgets = RequestBudgets(Limits(weight=WEIGHT), share=1.0, monotonic=SecondsClock())
    sink = RecordingSink()
    feed = MarketFeed(
        ws_url=replay.ws_url,
        rest_url=replay.rest_url,
        sink=sink,
        history=10,
        rest_budget=budgets.for_url(replay.rest_url),
        silence_timeout_s=None,
    )
    port = port_on(exchange, budgets)
    assert port.budget is feed.rest_budget
    task = asyncio.create_task(feed.run())
    try:
        await feed.set_streams([KEY_1M])
        await sink.wait_for(lambda: KEY_1M in sink.history)  # the warm-up: /api/v3/time, /api/v3/klines
    finally:
        await feed.stop()
        await task
    feed_weight = sum(WEIGHTS[record.path] for record in replay.rest_log)
    assert feed_weight == 3
    try:
        await port.load_markets()  # 21: exchangeInfo and time; 24 of 30 booked now
        await port.create_order("BTCUSDT", "buy", "market", D("0.01"), client_order_id="tb-1-buy")  # 25
        await port.fetch_order("BTCUSDT", "tb-1-buy")  # 29
        sent = len(exchange.requests)
        # Without the feed's 3 this would fit (26 + 4 = 30); with them it does not, and waits
        # for nobody (max_wait_s=0): refused unsent.
        with pytest.raises(errors.RateLimited):
            await port.fetch_order("BTCUSDT", "tb-1-buy")
        assert len(exchange.requests) == sent
    finally:
        await port.close()


async def test_a_418_heard_by_the_feed_stops_order_traffic(one_host: tuple[ReplayServer, ExchangeServer]) -> None:
    replay, exchange = one_host
    clock = SecondsClock()
    budgets = RequestBudgets(share=1.0, monotonic=clock)  # all 30 weight ours
    port = port_on(exchange, budgets)
    try:
        await port.load_markets()
        async with aiohttp.ClientSession() as session:
            klines = KlinesClient(session, replay.rest_url, shared=budgets.for_url(replay.rest_url))
            replay.fail_rest(1, status=418)
            with pytest.raises(RestUnavailable):
                await klines.server_time()
        assert port.budget.status().banned
        sent = len(exchange.requests)
        with pytest.raises(errors.Banned) as err:
            await port.create_order("BTCUSDT", "buy", "market", D("0.01"), client_order_id="tb-1-buy")
        assert err.value.retry_after_s == 120  # no Retry-After: Binance's shortest ban
        assert len(exchange.requests) == sent  # the exchange saw nothing
        clock.t += 120
        await port.create_order("BTCUSDT", "buy", "market", D("0.01"), client_order_id="tb-1-buy")
        assert exchange.requests[-1].status == 200
    finally:
        await port.close()


async def test_a_429_heard_by_the_port_holds_back_the_feed(one_host: tuple[ReplayServer, ExchangeServer]) -> None:
    replay, exchange = one_host
    clock = SecondsClock()
    budgets = RequestBudgets(share=1.0, monotonic=clock)  # all 30 weight ours
    port = port_on(exchange, budgets)
    feed_budget = budgets.for_url(replay.rest_url)
    try:
        await port.load_markets()
        exchange.faults.too_many_requests(retry_after_s=30)
        with pytest.raises(errors.RateLimited):
            await port.open_orders("BTCUSDT")
        assert exchange.requests[-1].status == 429  # the exchange's answer, not our budget's
    finally:
        await port.close()
    assert feed_budget.status().blocked_for_s == 30
    with pytest.raises(errors.RateLimited):  # what the feed's next klines request waits on
        await feed_budget.acquire(WEIGHTS["/api/v3/klines"], max_wait_s=0)
    clock.t += 30
    async with asyncio.timeout(WAIT_S), aiohttp.ClientSession() as session:
        klines = KlinesClient(session, replay.rest_url, shared=feed_budget)
        assert await klines.klines(KEY_1M, limit=5)
