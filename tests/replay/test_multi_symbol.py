"""The replay server with many symbols and intervals at once, from the synthetic generator: aligned
closes, per-connection faults and the records tests assert pacing on (real websockets clients)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError

from tradebotd.model import StreamKey
from tradebotd.replay.server import ReplayServer
from tradebotd.replay.synthetic import START_MS, SYMBOLS, symbol_names, synthetic_market
from tradebotd.replay.tape import FINAL

MIN = 60_000
INTERVALS = ("1m", "5m", "15m")


def names(symbols: list[str], intervals: tuple[str, ...] = INTERVALS) -> list[str]:
    return [StreamKey(s, i).stream_name for s in symbols for i in intervals]


async def frames_until_final(ws: ClientConnection, count: int) -> list[dict[str, object]]:
    """Read combined-stream frames until ``count`` final (x=true) klines have arrived."""
    finals: list[dict[str, object]] = []
    async with asyncio.timeout(10):
        while len(finals) < count:
            frame = orjson.loads(await ws.recv())
            data = frame["data"]
            if data["k"]["x"]:
                finals.append(data)
    return finals


def test_synthetic_market_is_aligned_reproducible_and_distinct() -> None:
    market = synthetic_market(60, 30)
    assert [s.key.symbol for s in market[:50]] == list(SYMBOLS)
    assert market[50].key.symbol == "SYM050USDT" and len(set(symbol_names(60))) == 60
    assert {s.candles[0].open_time for s in market} == {START_MS}
    assert {len(s.candles) for s in market} == {30}
    assert len({s.candles[-1].close for s in market}) > 50  # every symbol walks its own way
    assert synthetic_market(3, 30)[2] == market[2]  # seeded: the same series every time
    with pytest.raises(ValueError, match="aligned"):
        synthetic_market(1, 10, start_ms=START_MS + 1)


async def test_every_symbol_and_interval_closes_in_the_same_step() -> None:
    """50 symbols x (1m, 5m, 15m) on one connection: at a quarter hour all 150 candles close in one
    step, with the same event time; in between only the intervals whose bucket ends there close."""
    symbols = symbol_names(50)
    past = 14  # the 15th candle of the first quarter hour is in progress
    async with (
        ReplayServer(synthetic_market(symbols, 60), past=past, ping_interval_s=None) as server,
        connect(f"{server.ws_url}/stream?streams=" + "/".join(names(symbols))) as ws,
    ):
        step = await server.step()
        while step is not None and step.stage != FINAL:
            step = await server.step()
        finals = await frames_until_final(ws, 150)
        await server.advance(1)  # minute 16: only the 1m candles close
        later = await frames_until_final(ws, 50)

    assert step is not None
    boundary = START_MS + 15 * MIN
    assert {(f["s"], f["k"]["i"]) for f in finals} == {(s, i) for s in symbols for i in INTERVALS}
    assert {f["E"] for f in finals} == {boundary}
    assert {f["k"]["T"] for f in finals} == {boundary - 1}
    opens = defaultdict(set)
    for f in finals:
        opens[f["k"]["i"]].add(f["k"]["t"])
    assert opens == {"1m": {boundary - MIN}, "5m": {boundary - 5 * MIN}, "15m": {START_MS}}
    assert {f["k"]["i"] for f in later} == {"1m"} and {f["E"] for f in later} == {boundary + MIN}
    # The final 15m kline aggregates the symbol's first fifteen 1m candles.
    btc = server.series["BTCUSDT"].candles[:15]
    [btc_15m] = [f for f in finals if f["s"] == "BTCUSDT" and f["k"]["i"] == "15m"]
    assert btc_15m["k"]["h"] == f"{max(c.high for c in btc):.8f}"
    assert btc_15m["k"]["c"] == f"{btc[-1].close:.8f}"


async def test_dropping_one_connection_leaves_the_others_streaming() -> None:
    symbols = symbol_names(4)
    async with (
        ReplayServer(synthetic_market(symbols, 40), past=10, ping_interval_s=None) as server,
        connect(f"{server.ws_url}/stream?streams=" + "/".join(names(symbols[:2], ("1m",)))) as first,
        connect(f"{server.ws_url}/stream?streams=" + "/".join(names(symbols[2:], ("1m",)))) as second,
    ):
        assert server.subscriptions_by_connection() == {
            1: frozenset(names(symbols[:2], ("1m",))),
            2: frozenset(names(symbols[2:], ("1m",))),
        }
        assert await server.drop_connection(1)
        assert not await server.drop_connection(1)  # gone already
        with pytest.raises(ConnectionClosedError):
            async with asyncio.timeout(10):
                await first.recv()
        await server.advance(1)
        finals = await frames_until_final(second, 2)

    assert {f["s"] for f in finals} == set(symbols[2:])
    assert [record.number for record in server.connection_log] == [1, 2]


async def test_connections_and_rest_requests_are_recorded_with_the_injected_clock() -> None:
    now = [100.0]
    async with ReplayServer(synthetic_market(2, 20), past=5, ping_interval_s=None, clock=lambda: now[0]) as server:
        async with connect(f"{server.ws_url}/stream?streams=btcusdt@kline_1m"):
            now[0] = 130.5
            async with connect(f"{server.ws_url}/ws/ethusdt@kline_1m"):
                pass
    assert [(r.at, r.number, sorted(r.streams)) for r in server.connection_log] == [
        (100.0, 1, ["btcusdt@kline_1m"]),
        (130.5, 2, ["ethusdt@kline_1m"]),
    ]


async def test_a_connection_never_carries_more_than_the_stream_limit() -> None:
    async with (
        ReplayServer(synthetic_market(3, 20), past=5, ping_interval_s=None, max_streams_per_connection=2) as server,
        connect(f"{server.ws_url}/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m") as ws,
    ):
        await ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": ["bnbusdt@kline_1m"], "id": 7}).decode())
        async with asyncio.timeout(10):
            answer = orjson.loads(await ws.recv())
    assert answer == {"code": 2, "msg": "Invalid request: too many streams", "id": 7}
