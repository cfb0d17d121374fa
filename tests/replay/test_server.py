"""The replay server speaks Binance's protocols: real websockets and aiohttp clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from tradebotd.replay.server import ReplayServer
from tradebotd.replay.tape import format_decimal

from .conftest import PAST, START_MS, series

MIN = 60_000


async def recv(ws: ClientConnection) -> object:
    async with asyncio.timeout(5):
        return orjson.loads(await ws.recv())


async def request(ws: ClientConnection, doc: object) -> object:
    await ws.send(doc if isinstance(doc, str) else orjson.dumps(doc).decode())
    return await recv(ws)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(http: aiohttp.ClientSession, server: ReplayServer, path: str, **params: str) -> tuple[int, object]:
    async with http.get(server.rest_url + path, params=params) as response:
        return response.status, orjson.loads(await response.read())


# -- WebSocket ------------------------------------------------------------------------------------


async def test_combined_stream_wraps_events_and_advance_returns_once_written(server: ReplayServer) -> None:
    async with connect(f"{server.ws_url}/stream?streams=btcusdt@kline_1m/ethusdt@kline_5m") as ws:
        await server.advance(1)
        frames = [await recv(ws) for _ in range(6)]

    assert all(isinstance(f, dict) and set(f) == {"stream", "data"} for f in frames)
    btc = [f["data"] for f in frames if isinstance(f, dict) and f["stream"] == "btcusdt@kline_1m"]
    eth = [f["data"] for f in frames if isinstance(f, dict) and f["stream"] == "ethusdt@kline_5m"]
    assert [e["k"]["x"] for e in btc] == [False, False, True]
    assert [e["k"]["x"] for e in eth] == [False, False, False]  # candle 10 of 15 minutes: 5m still open
    final = btc[-1]["k"]
    candle = server.series["BTCUSDT"].candles[PAST]
    assert final["t"] == candle.open_time and final["c"] == format_decimal(candle.close)
    assert btc[-1]["E"] == candle.open_time + MIN


async def test_raw_stream_is_not_wrapped(server: ReplayServer) -> None:
    async with connect(f"{server.ws_url}/ws/btcusdt@kline_1m") as ws:
        await server.step()
        event = await recv(ws)
    assert isinstance(event, dict) and event["e"] == "kline" and event["k"]["x"] is False


async def test_subscribe_list_unsubscribe_and_properties() -> None:
    # More control frames than Binance's 5 per second: this test is about the answers.
    relaxed = ReplayServer([series()], past=PAST, ping_interval_s=None, max_messages_per_s=100)
    async with (
        relaxed as server,
        connect(f"{server.ws_url}/ws/1") as ws,
    ):  # ccxt.pro's style: no stream in the path  # ccxt.pro's style: no stream in the path
        assert await request(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 1}) == {
            "result": None,
            "id": 1,
        }
        await server.step()
        assert (await recv(ws))["s"] == "BTCUSDT"  # type: ignore[index]
        assert await request(ws, {"method": "SET_PROPERTY", "params": ["combined", True], "id": "p1"}) == {
            "result": None,
            "id": "p1",
        }
        assert await request(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 2}) == {
            "result": True,
            "id": 2,
        }
        await server.step()
        assert (await recv(ws))["stream"] == "btcusdt@kline_1m"  # type: ignore[index]
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3}) == {"result": ["btcusdt@kline_1m"], "id": 3}
        assert await request(ws, {"method": "UNSUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 4}) == {
            "result": None,
            "id": 4,
        }
        await server.advance(1)  # nothing for us any more: the next frame is the answer below
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": None}) == {"result": [], "id": None}


BAD_ID = {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}


@pytest.mark.parametrize(
    ("frame", "answer"),
    [
        ("not json", {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}),
        ('{"params":[],"id":1}', {"code": 2, "msg": "Invalid request: missing field `method` at line 1 column 20"}),
        ('{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"]}', BAD_ID),
        ('{"method":"LIST_SUBSCRIPTIONS","id":1.5}', BAD_ID),
        ('{"method":"LIST_SUBSCRIPTIONS","id":"not-alnum"}', BAD_ID),
        (
            '{"method":"LIST_SUBSCRIPTIONS","id":3,"extra":1}',
            {"code": 2, "msg": "Invalid request: too many parameters"},
        ),
        (
            '{"method":"SET_PROPERTY","params":["compressed",true],"id":5}',
            {"code": 0, "msg": "Unknown property", "id": 5},
        ),
        (
            '{"method":"SET_PROPERTY","params":["combined","yes"],"id":5}',
            {"code": 1, "msg": "Invalid value type: expected Boolean"},
        ),
        (
            '{"method":"GET_PROPERTY","params":[7],"id":5}',
            {"code": 2, "msg": "Invalid request: property name must be a string"},
        ),
    ],
)
async def test_control_errors_are_binance_s(server: ReplayServer, frame: str, answer: object) -> None:
    async with connect(f"{server.ws_url}/ws") as ws:
        assert await request(ws, frame) == answer


async def test_unknown_method_and_bad_stream_names(server: ReplayServer) -> None:
    async with connect(f"{server.ws_url}/ws") as ws:
        reply = await request(ws, {"method": "SUBSCRIB", "params": [], "id": 1})
        assert isinstance(reply, dict) and reply["code"] == 2 and "unknown variant `SUBSCRIB`" in reply["msg"]
        reply = await request(ws, {"method": "SUBSCRIBE", "params": ["BTCUSDT@kline_1m"], "id": 2})
        assert isinstance(reply, dict) and reply["code"] == 2 and reply["id"] == 2
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{server.ws_url}/stream?streams=btcusdt@kline_7m"):
            pass
    assert refused.value.response.status_code == 400


async def test_more_than_five_messages_a_second_disconnects(server: ReplayServer) -> None:
    async with connect(f"{server.ws_url}/ws") as ws:
        for i in range(5):
            await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}).decode())
        assert [await recv(ws) for _ in range(5)] == [{"result": [], "id": i} for i in range(5)]
        await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 5}).decode())
        with pytest.raises(ConnectionClosedError) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert server.rate_limited == 1


async def test_pings_every_interval_and_the_connection_age_limit() -> None:
    async with ReplayServer([series()], past=PAST, ping_interval_s=0.05, max_connection_s=0.3) as server:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{server.ws_url}/ws", autoping=False) as ws:
            message = await ws.receive(timeout=5)
            assert message.type is aiohttp.WSMsgType.PING
            await ws.pong(message.data)
        async with connect(f"{server.ws_url}/ws/btcusdt@kline_1m") as ws2:
            async with asyncio.timeout(5):
                async for _ in ws2:  # a clean close ends the iteration without an exception
                    pass
            assert ws2.close_code == 1000 and ws2.close_reason == "connection age limit"


# -- fault injection ------------------------------------------------------------------------------


@pytest.mark.parametrize("clean", [True, False])
async def test_drop_connections(server: ReplayServer, clean: bool) -> None:
    async with connect(f"{server.ws_url}/ws/btcusdt@kline_1m") as ws:
        await server.wait_until(lambda: server.connections == 1)
        assert await server.drop_connections(clean=clean) == 1
        assert server.connections == 0
        expected = ConnectionClosedOK if clean else ConnectionClosedError
        with pytest.raises(expected) as closed:
            await recv(ws)
    if clean:
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    else:
        assert closed.value.rcvd is None  # no close frame: 1006


async def test_skip_raw_and_shutdown_notice(server: ReplayServer) -> None:
    async with connect(f"{server.ws_url}/stream?streams=btcusdt@kline_1m") as ws:
        await server.wait_until(lambda: server.connections == 1)
        server.skip_messages(2)
        await server.advance(1)  # both updates are lost; the final arrives
        final = await recv(ws)
        assert isinstance(final, dict) and final["data"]["k"]["x"] is True
        await server.send_raw('{"broken":')
        assert (await ws.recv()) == '{"broken":'
        await server.send_raw(b"\x00\x01")
        assert (await ws.recv()) == b"\x00\x01"
        await server.send_server_shutdown()
        notice = await recv(ws)
    assert notice == {"stream": "!serverShutdown", "data": {"e": "serverShutdown", "E": server.tape.now_ms}}


async def test_go_silent_starves_current_clients_only(server: ReplayServer) -> None:
    async with connect(f"{server.ws_url}/ws/btcusdt@kline_1m"):
        await server.wait_until(lambda: server.connections == 1)
        server.go_silent()
        async with connect(f"{server.ws_url}/ws/btcusdt@kline_1m") as fresh:
            await server.wait_until(lambda: server.connections == 2)
            sent_before = server.messages_sent
            await server.advance(1)
            assert [(await recv(fresh))["k"]["x"] for _ in range(3)] == [False, False, True]  # type: ignore[index]
            assert server.messages_sent - sent_before == 3  # none for the silent client


# -- REST -----------------------------------------------------------------------------------------


async def test_klines_up_to_the_replay_clock(server: ReplayServer, http: aiohttp.ClientSession) -> None:
    status, rows = await get(http, server, "/api/v3/klines", symbol="BTCUSDT", interval="1m")
    assert status == 200 and isinstance(rows, list)
    assert len(rows) == PAST + 1 and rows[-1][0] == START_MS + PAST * MIN  # the newest is in progress
    status, rows = await get(
        http, server, "/api/v3/klines", symbol="BTCUSDT", interval="1m", startTime=str(START_MS + MIN), limit="2"
    )
    assert isinstance(rows, list) and [r[0] for r in rows] == [START_MS + MIN, START_MS + 2 * MIN]
    _, time_doc = await get(http, server, "/api/v3/time")
    assert time_doc == {"serverTime": START_MS + PAST * MIN}
    await server.advance(2)
    _, time_doc = await get(http, server, "/api/v3/time")
    assert time_doc == {"serverTime": START_MS + (PAST + 2) * MIN}
    assert (await get(http, server, "/api/v3/ping")) == (200, {})


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"interval": "1m"}, -1102),
        ({"symbol": "BTCUSDT"}, -1102),
        ({"symbol": "DOGEUSDT", "interval": "1m"}, -1121),
        ({"symbol": "BTCUSDT", "interval": "7m"}, -1120),
        ({"symbol": "BTCUSDT", "interval": "1s"}, -1120),  # finer than the data
        ({"symbol": "BTCUSDT", "interval": "1m", "limit": "1001"}, -1130),
        ({"symbol": "BTCUSDT", "interval": "1m", "startTime": "yesterday"}, -1100),
        ({"symbol": "BTCUSDT", "interval": "1m", "startTime": "5", "endTime": "4"}, -1023),
        ({"symbol": "BTCUSDT", "interval": "1m", "paginate": "true"}, -1104),
    ],
)
async def test_klines_errors_are_binance_s(
    server: ReplayServer, http: aiohttp.ClientSession, params: dict[str, str], code: int
) -> None:
    status, body = await get(http, server, "/api/v3/klines", **params)
    assert status == 400 and isinstance(body, dict) and body["code"] == code and body["msg"]


async def test_exchange_info_and_injected_failures(server: ReplayServer, http: aiohttp.ClientSession) -> None:
    status, info = await get(http, server, "/api/v3/exchangeInfo", symbol="BTCUSDT")
    assert status == 200 and isinstance(info, dict)
    [symbol] = info["symbols"]
    assert (symbol["symbol"], symbol["baseAsset"], symbol["quoteAsset"], symbol["status"]) == (
        "BTCUSDT",
        "BTC",
        "USDT",
        "TRADING",
    )
    assert "STOP_LOSS_LIMIT" in symbol["orderTypes"]
    filters = {f["filterType"]: f for f in symbol["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.01000000" and filters["LOT_SIZE"]["stepSize"] == "0.00001000"
    status, body = await get(http, server, "/api/v3/exchangeInfo", symbols='["BTCUSDT","XRPUSDT"]')
    assert (status, body) == (400, {"code": -1121, "msg": "Invalid symbol."})

    server.fail_rest(1, status=503)
    status, body = await get(http, server, "/api/v3/time")
    assert status == 503 and isinstance(body, dict) and body["code"] == -1001
    assert (await get(http, server, "/api/v3/time"))[0] == 200
    assert [path for path, _ in server.rest_requests][-2:] == ["/api/v3/time", "/api/v3/time"]
