"""Issue 2's end-to-end checks: Binance-protocol klines from the replay server -> the daemon ->
sandboxed JS -> paper fills -> SQLite, with exactly the trades the strategy's logic implies, through
dropped connections, lost frames, malformed frames and daemon restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer
from tradebotd.testing import until_stored

from .conftest import HISTORY, PAST, add_example, fills_of, make_daemon, reference_fills, started

LIVE = 150  # candles streamed after warm-up


async def test_known_crossings_give_exactly_the_expected_trades(
    server: ReplayServer, series: Series, tmp_path: Path
) -> None:
    daemon = make_daemon(server, tmp_path)
    sid = add_example(daemon)
    await started(daemon, sid)
    # warm-up history: the HISTORY candles before the replay cursor, nothing evaluated yet
    assert daemon.store.cursors()[sid] == series.candles[PAST - 1].open_time
    assert daemon.store.candle_count("BTCUSDT", "1m") == HISTORY

    await server.advance(LIVE)
    last = series.candles[PAST + LIVE - 1].open_time
    await until_stored(daemon, lambda: daemon.store.cursors()[sid] == last)
    expected = reference_fills(series, PAST, PAST + LIVE - 1)
    assert len(expected) >= 6, "the series must cross several times"
    assert fills_of(daemon, sid) == expected
    assert daemon.engine.stats.evaluations == LIVE
    assert daemon.store.candle_count("BTCUSDT", "1m") == HISTORY + LIVE
    # paper cash moved by exactly the fills and their 0.1 % fees
    trades = daemon.store.trades(sid)
    cash = daemon.store.portfolios()[0].cash
    spent = sum((t.price * t.amount * (1 if t.side == "buy" else -1) + t.fee for t in trades), start=0)
    assert cash == 10_000 - spent
    logs = [e for _, e in daemon.store.logs_after(sid)]
    assert sum(e.level == "trade" for e in logs) == len(expected)
    assert sum(e.level == "signal" for e in logs) == len(expected)
    # last_run_at is committed after the decisions, on its own (see tradebotd.store.writer)
    await until_stored(daemon, lambda: daemon.store.get_strategy(sid).last_run_at is not None)
    await daemon.shutdown()


async def test_dropped_connections_and_lost_frames_lose_and_duplicate_nothing(
    server: ReplayServer, series: Series, tmp_path: Path
) -> None:
    daemon = make_daemon(server, tmp_path)
    sid = add_example(daemon)
    await started(daemon, sid)
    stream = series.key.stream_name

    async def reconnected(count: int) -> None:
        async with asyncio.timeout(20):
            await server.wait_until(
                lambda: server.total_connections >= count and any(stream in s for s in server.subscriptions())
            )

    await server.advance(20)
    await server.drop_connections(clean=False)  # abnormal close right after a final kline
    await server.advance(15)  # streamed to nobody if the client has not reconnected: REST backfills
    await reconnected(2)
    await server.step()  # an in-progress update ...
    await server.drop_connections(clean=True)  # ... then a clean close mid-candle
    await reconnected(3)
    await server.advance(20)
    server.skip_messages(7)  # frames lost in transit, including finals
    await server.advance(25)
    await server.send_server_shutdown()
    await reconnected(4)
    await server.advance(LIVE - 20 - 15 - 20 - 25)
    last = series.candles[PAST + LIVE - 1].open_time
    await until_stored(daemon, lambda: daemon.store.cursors()[sid] == last)
    assert fills_of(daemon, sid) == reference_fills(series, PAST, PAST + LIVE - 1)
    assert daemon.engine.stats.evaluations == LIVE  # every candle exactly once
    assert daemon.store.candle_count("BTCUSDT", "1m") == HISTORY + LIVE
    assert daemon.feed.stats.reconnects == 3
    await daemon.shutdown()


async def test_malformed_frames_are_survived(server: ReplayServer, series: Series, tmp_path: Path) -> None:
    daemon = make_daemon(server, tmp_path)
    sid = add_example(daemon)
    await started(daemon, sid)
    await server.advance(30)
    await server.send_raw("{this is not json")
    await server.send_raw('{"stream":"btcusdt@kline_1m","data":{"e":"kline","k":{"t":"yesterday"}}}')
    await server.send_raw(b"\x00\x01binary")
    await server.advance(LIVE - 30)
    last = series.candles[PAST + LIVE - 1].open_time
    await until_stored(daemon, lambda: daemon.store.cursors()[sid] == last)
    assert fills_of(daemon, sid) == reference_fills(series, PAST, PAST + LIVE - 1)
    assert daemon.feed.stats.malformed >= 3
    await daemon.shutdown()


async def test_restart_resumes_without_missing_or_repeating(
    server: ReplayServer, series: Series, tmp_path: Path
) -> None:
    first = make_daemon(server, tmp_path)
    sid = add_example(first)
    await started(first, sid)
    await server.advance(70)
    await until_stored(first, lambda: first.store.cursors()[sid] == series.candles[PAST + 69].open_time)
    fills_before = fills_of(first, sid)
    await first.shutdown()

    await server.advance(10)  # closed while the daemon was down
    second = make_daemon(server, tmp_path)
    await started(second, sid)
    await until_stored(second, lambda: second.store.cursors()[sid] == series.candles[PAST + 79].open_time)
    assert second.engine.stats.evaluations == 10  # the missed candles, once each
    await server.advance(LIVE - 80)
    last = series.candles[PAST + LIVE - 1].open_time
    await until_stored(second, lambda: second.store.cursors()[sid] == last)
    fills = fills_of(second, sid)
    assert fills[: len(fills_before)] == fills_before
    assert fills == reference_fills(series, PAST, PAST + LIVE - 1)
    await second.shutdown()


async def test_strategies_started_stopped_and_edited_while_running(
    server: ReplayServer, series: Series, tmp_path: Path
) -> None:
    daemon = make_daemon(server, tmp_path)
    a = add_example(daemon, "a")
    b = add_example(daemon, "b", status="paused")
    await started(daemon, a)
    assert b not in daemon.engine.strategy_ids()

    daemon.store.update_strategy(b, status="running")  # what `tradebotd strategy start` does
    daemon.resync()
    await until_stored(daemon, lambda: b in daemon.store.cursors())
    await server.advance(5)
    t5 = series.candles[PAST + 4].open_time
    await until_stored(daemon, lambda: daemon.store.cursors() == {a: t5, b: t5})

    daemon.store.update_strategy(b, parameters={"fast": 3, "slow": 10, "amount": 0.02})  # hot reload
    daemon.store.update_strategy(a, status="paused")  # `tradebotd strategy stop`
    daemon.resync()
    await daemon.synced.wait()
    assert daemon.engine.strategy_ids() == {b}
    await server.advance(3)
    t8 = series.candles[PAST + 7].open_time
    await until_stored(daemon, lambda: daemon.store.cursors()[b] == t8)
    assert daemon.store.cursors()[a] == t5  # stopped: no more evaluations
    assert any(e.message == "strategy reloaded" for _, e in daemon.store.logs_after(b))
    await daemon.shutdown()
