"""MarketFeed over several connections, against the multi-symbol replay server: placement of
streams on connections, and reconnects of one connection while the others keep flowing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tradebotd.market import MarketFeed
from tradebotd.model import StreamKey
from tradebotd.replay.server import ReplayServer
from tradebotd.replay.synthetic import symbol_names, synthetic_market

from .conftest import PAST, WAIT_S, FeedFactory, RecordingSink, feeds_against

HISTORY = 20
SYMBOLS = symbol_names(4)
KEYS = sorted(StreamKey(symbol, "1m") for symbol in SYMBOLS)  # the order the feed places them in

@pytest.fixture
async def server() -> AsyncIterator[ReplayServer]:
    # The server refuses a third stream on one connection, as Binance refuses a 1025th.
    series = synthetic_market(SYMBOLS, 400)
    async with ReplayServer(series, past=PAST, ping_interval_s=None, max_streams_per_connection=2) as replay:
        yield replay


@pytest.fixture
async def start_feed(server: ReplayServer, sink: RecordingSink) -> AsyncIterator[FeedFactory]:
    async with feeds_against(server, sink, history=HISTORY, streams_per_connection=2) as start:
        yield start


def names(keys: list[StreamKey] | frozenset[StreamKey]) -> frozenset[str]:
    return frozenset(key.stream_name for key in keys)


def expected(server: ReplayServer, key: StreamKey, count: int) -> list[Any]:
    return list(server.series[key.symbol].candles[PAST : PAST + count])


async def connected(server: ReplayServer, feed: MarketFeed) -> None:
    """Every connection slot with streams has a connection carrying exactly those streams."""
    async with asyncio.timeout(WAIT_S):
        await server.wait_until(
            lambda: sorted(map(sorted, server.subscriptions()))
            == sorted(sorted(names(s)) for s in feed.connection_streams() if s)
        )


def number_of(server: ReplayServer, keys: frozenset[StreamKey]) -> int:
    [number] = [n for n, streams in server.subscriptions_by_connection().items() if streams == names(keys)]
    return number


async def two_connections(
    server: ReplayServer, sink: RecordingSink, feed: MarketFeed
) -> tuple[frozenset[StreamKey], frozenset[StreamKey], int]:
    """All of KEYS on two connections, warmed up: (first's streams, second's, second's number)."""
    await feed.set_streams(KEYS)
    await connected(server, feed)
    await sink.wait_for(lambda: all(key in sink.history for key in KEYS))
    first, second = (frozenset(s) for s in feed.connection_streams())
    return first, second, number_of(server, second)


def range_requests(server: ReplayServer) -> list[str]:
    """Symbols of the klines requests that backfilled from a start time (not warm-ups)."""
    klines = [query for path, query in server.rest_requests if path == "/api/v3/klines"]
    return [query["symbol"] for query in klines if "startTime" in query]


async def test_streams_that_do_not_fit_on_one_connection_go_to_the_next(
    server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory
) -> None:
    bnb, btc, eth, sol = KEYS
    btc_5m, eth_5m = StreamKey("BTCUSDT", "5m"), StreamKey("ETHUSDT", "5m")
    feed = start_feed()
    await feed.set_streams([bnb, btc, eth])
    await connected(server, feed)
    assert feed.connection_streams() == [{bnb, btc}, {eth}]
    await sink.wait_for(lambda: all(key in sink.history for key in (bnb, btc, eth)))

    # A fourth stream fits on the second connection (a SUBSCRIBE there); a fifth needs a third.
    await feed.set_streams([*KEYS, btc_5m])
    await connected(server, feed)
    assert feed.connection_streams() == [{bnb, btc}, {eth, btc_5m}, {sol}]
    assert server.total_connections == 3 and feed.stats.control_sent == 1
    await sink.wait_for(lambda: all(key in sink.history for key in [*KEYS, btc_5m]))

    await server.advance(5)
    await sink.wait_for(lambda: all(len(sink.closed_for(key)) == 5 for key in KEYS))
    for key in KEYS:
        assert sink.closed_for(key) == expected(server, key, 5)
    assert len(sink.closed_for(btc_5m)) == 1 and sink.closed_for(btc_5m)[0].open_time % 300_000 == 0
    assert feed.stats.control_errors == 0 and server.rate_limited == 0

    # A removal frees a place that the next new stream takes; a connection left with nothing closes.
    await feed.set_streams([bnb, eth, btc_5m, eth_5m])
    await connected(server, feed)
    assert feed.connection_streams() == [{bnb, eth_5m}, {eth, btc_5m}, set()]
    assert server.connections == 2 and server.total_connections == 3


async def test_a_dropped_connection_backfills_only_its_own_streams(
    server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory
) -> None:
    feed = start_feed()
    first, second, other = await two_connections(server, sink, feed)
    await server.advance(2)
    await sink.wait_for(lambda: all(len(sink.closed_for(key)) == 2 for key in KEYS))
    assert range_requests(server) == []

    assert await server.drop_connection(number_of(server, first))
    await server.advance(3)  # the first connection's streams may miss these: backfill brings them
    await connected(server, feed)
    await server.advance(2)

    await sink.wait_for(lambda: all(len(sink.closed_for(key)) == 7 for key in KEYS))
    for key in KEYS:
        assert sink.closed_for(key) == expected(server, key, 7)
    assert set(range_requests(server)) == {key.symbol for key in first}
    assert number_of(server, second) == other  # the second connection was never replaced
    assert feed.stats.reconnects == 1


@pytest.mark.parametrize("clean", [False, True], ids=["abnormal-close", "clean-close"])
async def test_exactly_once_per_stream_across_reconnects_of_one_connection(
    server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory, clean: bool
) -> None:
    """One connection is dropped again and again, between updates and after finals, while the
    other keeps flowing: every stream still sees every candle once, in order."""
    feed = start_feed()
    first, second, other = await two_connections(server, sink, feed)

    total = 0
    for round_ in range(6):
        await server.advance(1)
        if round_ % 2:
            await server.step()  # the next candle's first update is out, its final is not
        assert await server.drop_connection(number_of(server, first), clean=clean)
        total += await server.advance(2)
        total += 1
        await connected(server, feed)
    await server.advance(1)
    total += 1

    await sink.wait_for(lambda: all(len(sink.closed_for(key)) == total for key in KEYS))
    for key in KEYS:
        assert sink.closed_for(key) == expected(server, key, total)
    assert feed.stats.reconnects == 6 and number_of(server, second) == other
    assert set(range_requests(server)) == {key.symbol for key in first}
