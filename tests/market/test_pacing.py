"""Rate budgets: the sliding window as numbers, and the feed's pacing of warm-up requests and new
connections as the replay server recorded it, on a manual clock (no wall-clock sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from tradebotd.market import MarketFeed
from tradebotd.market.pacing import SlidingWindow
from tradebotd.market.rest import WEIGHTS
from tradebotd.model import StreamKey
from tradebotd.replay.server import ReplayServer
from tradebotd.replay.synthetic import symbol_names, synthetic_market

from .conftest import PAST, WAIT_S, ManualClock, RecordingSink

T0 = 1000.0

# -- the window as numbers -------------------------------------------------------------------------


def test_sliding_window_books_in_order_and_frees_a_booking_one_window_later() -> None:
    window = SlidingWindow(capacity=5, window_s=60)
    assert [window.reserve(2, T0) for _ in range(2)] == [T0, T0]
    assert window.reserve(2, T0 + 10) == T0 + 60  # 4 + 2 > 5 until the bookings at T0 leave
    assert window.reserve(1, T0 + 11) == T0 + 60  # fits beside it, but never before an earlier booking
    assert window.used(T0 + 60) == 3  # the two bookings at T0 have left the window (T0, T0 + 60]
    assert window.reserve(1, T0 + 200) == T0 + 200  # long after: nothing left in the window
    assert window.used(T0 + 200) == 1


def test_sliding_window_never_exceeds_its_capacity_in_any_window() -> None:
    window = SlidingWindow(capacity=10, window_s=60)
    booked = [(window.reserve(cost, T0 + i * 0.5), cost) for i, cost in enumerate([1, 2, 2, 2] * 25)]
    assert booked == sorted(booked, key=lambda b: b[0])
    for at, _ in booked:
        assert sum(cost for t, cost in booked if at - 60 < t <= at) <= 10


def test_a_cost_larger_than_the_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        SlidingWindow(capacity=2, window_s=1).reserve(3, T0)
    with pytest.raises(ValueError):
        SlidingWindow(capacity=0, window_s=1)


# -- the feed against the stand-in -----------------------------------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def server(clock: ManualClock) -> AsyncIterator[ReplayServer]:
    series = synthetic_market(6, 300)
    async with ReplayServer(series, past=PAST, ping_interval_s=None, clock=clock.now) as replay:
        yield replay


@contextlib.asynccontextmanager
async def driven(clock: ManualClock, server: ReplayServer, feed: MarketFeed) -> AsyncIterator[None]:
    """Advance the manual clock whenever someone sleeps on it and every request and connection
    the feed's budgets let go has reached the server: so each one is recorded at the very moment
    it was granted, and the records show the pacing exactly."""

    def all_arrived() -> bool:
        return (
            len(server.rest_log) == feed.rest_pacer.granted
            and server.total_connections == feed.connect_pacer.granted
        )

    async def drive() -> None:
        while True:
            await clock.wait_for_sleeper()
            await server.wait_until(all_arrived)
            clock.advance_to_next()

    task = asyncio.create_task(drive())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run_feed(feed: MarketFeed, keys: list[StreamKey], sink: RecordingSink) -> None:
    task = asyncio.create_task(feed.run())
    try:
        await feed.set_streams(keys)
        await sink.wait_for(lambda: all(key in sink.history for key in keys))
    finally:
        await feed.stop()
        await task


def make_feed(server: ReplayServer, sink: RecordingSink, clock: ManualClock, **options: object) -> MarketFeed:
    return MarketFeed(
        ws_url=server.ws_url,
        rest_url=server.rest_url,
        sink=sink,
        history=10,
        clock=clock,
        silence_timeout_s=None,
        **options,  # type: ignore[arg-type]
    )


def windows_within(records: list[tuple[float, int]], capacity: int, window_s: float) -> bool:
    return all(sum(cost for t, cost in records if at - window_s < t <= at) <= capacity for at, _ in records)


async def test_warm_up_requests_stay_within_the_request_weight_budget(
    server: ReplayServer, sink: RecordingSink, clock: ManualClock
) -> None:
    """Six streams warm up at once with a budget of 10 weight per minute (klines cost 2, time 1):
    the requests the budget cannot take now go out a minute later, in the order they asked."""
    keys = [StreamKey(symbol, "1m") for symbol in symbol_names(6)]
    feed = make_feed(server, sink, clock, rest_weight_per_minute=10)
    async with driven(clock, server, feed), asyncio.timeout(WAIT_S):
        await run_feed(feed, keys, sink)

    records = [(record.at, WEIGHTS[record.path]) for record in server.rest_log]
    assert sum(cost for _, cost in records) > 10  # more than one window's worth was needed ...
    assert windows_within(records, 10, 60)  # ... and no minute ever saw more than 10
    assert [at for at, _ in records] == sorted(at for at, _ in records)
    assert records[0][0] == T0 and records[-1][0] >= T0 + 60
    assert feed.rest_pacer.waited > 0
    klines = [record for record in server.rest_log if record.path == "/api/v3/klines"]
    assert sorted(record.query["symbol"] for record in klines) == sorted(key.symbol for key in keys)
    assert all(len(sink.history[key]) == 10 for key in keys)


async def test_new_connections_stay_within_the_connection_budget(
    server: ReplayServer, sink: RecordingSink, clock: ManualClock
) -> None:
    """Three connections (one stream each) with a budget of 2 per 5 minutes: the third connects
    when the first attempt leaves the window, 300 s later on the clock."""
    keys = [StreamKey(symbol, "1m") for symbol in symbol_names(3)]
    feed = make_feed(server, sink, clock, streams_per_connection=1, connects_per_5min=2)
    async with driven(clock, server, feed), asyncio.timeout(WAIT_S):
        await run_feed(feed, keys, sink)

    assert [record.at for record in server.connection_log] == [T0, T0, T0 + 300]
    assert sorted(len(record.streams) for record in server.connection_log) == [1, 1, 1]
    assert feed.stats.connect_waits == 1 and feed.connect_pacer.waited == 1


async def test_reconnects_spend_from_the_same_connection_budget(
    server: ReplayServer, sink: RecordingSink, clock: ManualClock
) -> None:
    """A server that keeps dropping a connection cannot make the feed exceed the budget."""
    key = StreamKey("BTCUSDT", "1m")
    feed = make_feed(server, sink, clock, connects_per_5min=3, backoff_initial_s=0.001, backoff_max_s=0.002)
    done: Callable[[], bool] = lambda: server.total_connections >= 5  # noqa: E731
    async with driven(clock, server, feed), asyncio.timeout(WAIT_S):
        task = asyncio.create_task(feed.run())
        await feed.set_streams([key])
        while not done():
            await server.wait_until(lambda: server.connections == 1 or done())
            if server.connections:
                await server.drop_connections()
        await feed.stop()
        await task

    moments = [record.at for record in server.connection_log]
    assert moments[:5] == [T0, T0, T0, T0 + 300, T0 + 300]
    assert windows_within([(at, 1) for at in moments], 3, 300)
