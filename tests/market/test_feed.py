"""MarketFeed against the replay server: the real websockets client and aiohttp on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import structlog

from tradebotd.market import MarketFeed
from tradebotd.model import Candle, StreamKey
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer

from .conftest import PAST, WAIT_S, FeedFactory, RecordingSink, feeds_against, fixture_text, make_series

BTC = StreamKey("BTCUSDT", "1m")
ETH = StreamKey("ETHUSDT", "1m")
BTC_5M = StreamKey("BTCUSDT", "5m")
HISTORY = 50

@pytest.fixture
async def start_feed(server: ReplayServer, sink: RecordingSink) -> AsyncIterator[FeedFactory]:
    """Start feeds against ``server``; each is stopped (and its run() awaited) at teardown."""
    async with feeds_against(server, sink, history=HISTORY) as start:
        yield start


def expected(series: Series, first: int, count: int) -> list[Candle]:
    """Candles ``first .. first+count-1`` of a replayed series, as the feed must deliver them."""
    return list(series.candles[first : first + count])


def btc(server: ReplayServer) -> Series:
    return server.series["BTCUSDT"]


async def subscribed(server: ReplayServer, *keys: StreamKey) -> None:
    names = frozenset(key.stream_name for key in keys)
    async with asyncio.timeout(10):
        await server.wait_until(lambda: server.subscriptions() == [names])


async def warm(feed: MarketFeed, server: ReplayServer, sink: RecordingSink, *keys: StreamKey) -> None:
    await feed.set_streams(set(keys))
    await subscribed(server, *keys)
    await sink.wait_for(lambda: all(key in sink.history for key in keys))


async def test_warm_up_history_then_live_candles_exactly_once(
    server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory
) -> None:
    feed = start_feed()
    await warm(feed, server, sink, BTC)

    assert sink.history[BTC] == expected(btc(server), PAST - HISTORY, HISTORY)
    assert sink.closed == []
    # The server's clock as measured over REST (the replay clock here, which stands still).
    assert abs(feed.server_now_ms() - server.tape.now_ms) < 5_000

    await server.advance(3)
    await sink.wait_for(lambda: len(sink.closed) == 3)
    assert sink.closed == expected(btc(server), PAST, 3)
    # The stream showed each candle in progress too: the partial updates reach the range's extremes.
    first = btc(server).candles[PAST]
    seen = [u for u in sink.updates if u.open_time == first.open_time]
    assert len(seen) == 2
    assert {first.low, first.high} <= {seen[-1].low, seen[-1].high} | {seen[0].low, seen[0].high}
    assert feed.stats.connects == 1 and feed.stats.backfilled == 0


async def test_history_longer_than_one_page_is_paged_backwards(sink: RecordingSink) -> None:
    series = make_series("BTCUSDT", 1400)
    async with ReplayServer([series], past=1300, ping_interval_s=None) as server:
        feed = MarketFeed(ws_url=server.ws_url, rest_url=server.rest_url, sink=sink, history=1200)
        task = asyncio.create_task(feed.run())
        await warm(feed, server, sink, BTC)
        await feed.stop()
        await task

    assert sink.history[BTC] == list(series.candles[100:1300])
    klines = [query for path, query in server.rest_requests if path == "/api/v3/klines"]
    assert [q.get("limit") for q in klines] == ["1000", "201"]
    assert "endTime" in klines[1] and "startTime" not in klines[0]


@pytest.mark.parametrize("clean", [False, True], ids=["abnormal-close", "clean-close"])
@pytest.mark.parametrize("mid_candle", [True, False], ids=["between-updates", "after-final"])
async def test_dropped_connection_loses_and_duplicates_nothing(
    server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory, clean: bool, mid_candle: bool
) -> None:
    feed = start_feed()
    await warm(feed, server, sink, BTC)
    await server.advance(2)
    if mid_candle:
        await server.step()  # the next candle's first update is out, its final is not
    await server.drop_connections(clean=clean)
    await server.advance(3)  # nobody is connected: these reach the feed only through backfill
    await subscribed(server, BTC)  # reconnected
    await server.advance(3)

    await sink.wait_for(lambda: len(sink.closed) == 8)
    assert sink.closed == expected(btc(server), PAST, 8)
    assert feed.stats.reconnects == 1
    assert feed.stats.backfilled >= 3


async def test_lost_frames_are_filled_by_backfill(
    server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory
) -> None:
    feed = start_feed()
    await warm(feed, server, sink, BTC)
    await server.advance(1)
    await server.step()
    await server.step()
    server.skip_messages(1)  # the next final is lost ...
    await server.advance(1)
    await server.advance(1)  # ... and noticed when the following candle's first update arrives
    server.skip_messages(7)  # two whole candles and an update are lost
    await server.advance(4)

    await sink.wait_for(lambda: len(sink.closed) == 7)
    assert sink.closed == expected(btc(server), PAST, 7)
    assert feed.stats.backfilled >= 3
    assert feed.stats.connects == 1  # no reconnect was needed


async def test_malformed_frames_are_counted_and_survived(
    server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory
) -> None:
    feed = start_feed()
    await warm(feed, server, sink, BTC)
    bad: list[str | bytes] = [
        fixture_text("malformed/truncated.txt"),
        fixture_text("malformed/price_not_numeric.txt"),
        fixture_text("malformed/unknown_event.txt"),
        b"\x89PNG binary junk",
    ]
    with structlog.testing.capture_logs() as logs:
        await server.advance(1)
        for frame in bad:
            await server.send_raw(frame)
        await server.advance(2)
        await sink.wait_for(lambda: len(sink.closed) == 3)  # frames are processed in order

    assert feed.stats.malformed == len(bad)
    assert sink.closed == expected(btc(server), PAST, 3)
    warnings = [e for e in logs if e["event"] == "market frame malformed; ignored"]
    assert len(warnings) == len(bad) and all(e["log_level"] == "warning" for e in warnings)
    assert feed.stats.connects == 1


async def test_server_shutdown_notice_reconnects_at_once_and_backfills(
    server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory
) -> None:
    feed = start_feed()
    await warm(feed, server, sink, BTC)
    await server.advance(1)
    await server.send_server_shutdown()
    await server.advance(2)  # may reach the old connection, the new one, both or neither
    async with asyncio.timeout(10):
        await server.wait_until(lambda: server.total_connections == 2 and server.subscriptions() == [{BTC.stream_name}])
    await server.advance(2)

    await sink.wait_for(lambda: len(sink.closed) == 5)
    assert sink.closed == expected(btc(server), PAST, 5)
    assert feed.stats.reconnects == 1


async def test_live_subscription_changes_keep_the_connection_and_the_rate_limit(
    server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory
) -> None:
    feed = start_feed()
    await warm(feed, server, sink, BTC)

    # A burst of changes in one go coalesces into a few control frames ...
    for i in range(30):
        await feed.set_streams({BTC, ETH} if i % 2 else {BTC, BTC_5M})
    await feed.set_streams({BTC, ETH, BTC_5M})
    await subscribed(server, BTC, ETH, BTC_5M)
    # ... and changes that each need their own frame are paced under 5 messages per second.
    for i in range(3):  # two frames each (UNSUBSCRIBE, SUBSCRIBE)
        wanted = {BTC, ETH} if i % 2 else {BTC, BTC_5M}
        await feed.set_streams(wanted)
        await subscribed(server, *wanted)
    await feed.set_streams({BTC, ETH, BTC_5M})
    await subscribed(server, BTC, ETH, BTC_5M)
    await sink.wait_for(lambda: ETH in sink.history and BTC_5M in sink.history)

    assert server.total_connections == 1 and server.rate_limited == 0
    assert feed.stats.control_sent >= 6
    assert sink.history[ETH] == expected(server.series["ETHUSDT"], PAST - HISTORY, HISTORY)

    before = len(sink.closed_for(BTC))
    await server.advance(5)
    await sink.wait_for(lambda: len(sink.closed_for(ETH)) == 5 and len(sink.closed_for(BTC)) == before + 5)
    assert sink.closed_for(ETH) == expected(server.series["ETHUSDT"], PAST, 5)
    assert [c.open_time % 300_000 for c in sink.closed_for(BTC_5M)] == [0] * len(sink.closed_for(BTC_5M))


async def test_no_streams_no_connection(server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory) -> None:
    feed = start_feed()
    await warm(feed, server, sink, BTC)
    await feed.set_streams(set())
    async with asyncio.timeout(10):
        await server.wait_until(lambda: server.connections == 0)

    await feed.set_streams({BTC})  # added again: a new warm-up, then live candles
    await subscribed(server, BTC)
    await sink.wait_for(lambda: sink.history_calls == [BTC, BTC])
    await server.advance(1)
    await sink.wait_for(lambda: len(sink.closed) == 1)
    assert sink.closed == expected(btc(server), PAST, 1)


async def test_silent_server_is_noticed_and_replaced(
    server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory
) -> None:
    feed = start_feed(silence_timeout_s=0.2)
    await warm(feed, server, sink, BTC)
    server.go_silent()
    await server.advance(2)  # the silent connection delivers none of this
    async with asyncio.timeout(10):
        await server.wait_until(lambda: server.total_connections >= 2 and server.subscriptions() == [{BTC.stream_name}])
    await server.advance(1)

    await sink.wait_for(lambda: len(sink.closed) == 3)
    assert sink.closed == expected(btc(server), PAST, 3)


async def test_connection_is_rotated_before_its_age_limit(
    server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory
) -> None:
    feed = start_feed(rotate_after_s=0.3)
    await warm(feed, server, sink, BTC)
    await server.advance(1)
    async with asyncio.timeout(10):
        await server.wait_until(lambda: server.total_connections >= 2)
    await subscribed(server, BTC)
    await server.advance(1)

    await sink.wait_for(lambda: len(sink.closed) == 2)
    assert sink.closed == expected(btc(server), PAST, 2)
    assert feed.stats.reconnects >= 1


async def test_rest_failures_are_retried(server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory) -> None:
    server.fail_rest(2, status=503)
    with structlog.testing.capture_logs() as logs:
        feed = start_feed()
        await warm(feed, server, sink, BTC)

    assert sink.history[BTC] == expected(btc(server), PAST - HISTORY, HISTORY)
    assert feed.stats.rest_failures == 2
    retries = [e for e in logs if e["event"] == "market data request failed; retrying"]
    assert len(retries) == 2 and "HTTP 503" in retries[0]["error"]


async def test_hole_in_binance_history_is_skipped_once(sink: RecordingSink) -> None:
    full = make_series("BTCUSDT", 200)
    holed = Series(full.key, full.candles[:150] + full.candles[151:])  # candle 150 never existed
    async with ReplayServer([holed], past=140, ping_interval_s=None) as server:
        feed = MarketFeed(ws_url=server.ws_url, rest_url=server.rest_url, sink=sink, history=10, silence_timeout_s=None)
        task = asyncio.create_task(feed.run())
        await warm(feed, server, sink, BTC)
        await server.advance(15)
        await sink.wait_for(lambda: len(sink.closed) == 14)
        await feed.stop()
        await task

    assert sink.closed == list(full.candles[140:150] + full.candles[151:155])
    assert feed.stats.gaps_skipped == 1


async def test_sink_error_ends_run_and_a_restart_starts_afresh(server: ReplayServer, sink: RecordingSink) -> None:
    sink.fail_on_closed = LookupError("engine bug")
    feed = MarketFeed(ws_url=server.ws_url, rest_url=server.rest_url, sink=sink, history=5, silence_timeout_s=None)
    task = asyncio.create_task(feed.run())
    await warm(feed, server, sink, BTC)
    await server.advance(1)

    with pytest.raises(LookupError, match="engine bug"):
        async with asyncio.timeout(10):
            await task
    async with asyncio.timeout(10):
        await server.wait_until(lambda: server.connections == 0)

    # What a supervisor does: run it again. The stream is warmed up again, then goes live.
    sink.fail_on_closed = None
    task = asyncio.create_task(feed.run())
    await sink.wait_for(lambda: sink.history_calls == [BTC, BTC])
    assert sink.history[BTC] == expected(btc(server), PAST + 1 - 5, 5)
    await subscribed(server, BTC)
    await server.advance(1)
    await sink.wait_for(lambda: len(sink.closed) == 1)
    assert sink.closed == expected(btc(server), PAST + 1, 1)
    await feed.stop()
    await task


async def test_unreachable_endpoint_retries_with_one_line_per_retry(sink: RecordingSink) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    feed = MarketFeed(
        ws_url=f"ws://127.0.0.1:{port}",
        rest_url=f"http://127.0.0.1:{port}",
        sink=sink,
        backoff_initial_s=0.001,
        backoff_max_s=0.01,
    )
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(feed.run())
        await feed.set_streams({BTC})
        async with asyncio.timeout(WAIT_S):
            await feed.wait_until(lambda: feed.stats.connect_failures >= 4)
        await feed.stop()
        await task

    retries = [e for e in logs if e["event"] == "market feed unreachable; retrying"]
    assert len(retries) == feed.stats.connect_failures
    assert [e["attempt"] for e in retries] == list(range(1, len(retries) + 1))
    for entry in retries:
        assert entry["log_level"] == "warning"
        assert str(port) in entry["error"]  # the OS's text, e.g. "Connect call failed ('127.0.0.1', port)"
        assert 0 <= entry["retry_in_s"] <= 0.01
        assert "exc_info" not in entry  # one line, never a traceback
    assert sink.history == {} and feed.stats.connects == 0


async def test_raw_stream_endpoint_in_the_config_is_accepted(
    server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory
) -> None:
    feed = start_feed(ws_url=server.ws_url + "/ws/")  # as Binance's testnet docs write it
    await warm(feed, server, sink, BTC)
    assert feed.stats.connects == 1


def test_bad_urls_are_refused_up_front(sink: RecordingSink) -> None:
    with pytest.raises(ValueError, match="ws_url"):
        MarketFeed(ws_url="http://example.com", rest_url="http://example.com", sink=sink)
    with pytest.raises(ValueError, match="rest_url"):
        MarketFeed(ws_url="ws://example.com", rest_url="example.com", sink=sink)


async def test_a_symbol_the_exchange_refuses_reaches_the_sink_once_and_others_go_on(
    server: ReplayServer, sink: RecordingSink, start_feed: FeedFactory
) -> None:
    feed = start_feed()
    bogus = StreamKey("BTCUSD", "1m")  # what "BTC-USD" normalises to; Binance: -1121 Invalid symbol.
    await feed.set_streams({BTC, bogus})
    await sink.wait_for(lambda: bool(sink.refused) and BTC in sink.history)
    assert sink.refused == [(bogus, "Invalid symbol. (code -1121)")]
    assert bogus not in sink.history
    await server.advance(1)  # both streams are named in the connection URL: no SUBSCRIBE to wait for
    await sink.wait_for(lambda: len(sink.closed) == 1)
    assert sink.refused == [(bogus, "Invalid symbol. (code -1121)")] and feed.stats.rest_failures == 1
