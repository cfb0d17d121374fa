"""The CLI's requests as the running daemon carries them out: a symbol the exchange refuses puts
the strategy in ``error``; ``strategy stop --close-position`` becomes a sell through the normal
order path; ``strategy update --asset/--interval`` is hot-reloaded onto the new stream.

The daemon runs in-process against the replay server; the CLI is ``tradebotd.cli.main`` in a
thread (it runs its own event loop), on the same store file, as a user's shell would."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from tradebotd.broker.base import client_order_id
from tradebotd.cli import main
from tradebotd.daemon import Daemon
from tradebotd.model import StreamKey
from tradebotd.replay.demo import generate
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer
from tradebotd.testing import replay_settings, until_stored

BUY_ONCE = """
function tradingStrategy({ position }) {
  return position ? { signal: 'hold' } : { signal: 'buy', amount: 0.01, reason: 'entry' };
}
"""
HOLD = "function tradingStrategy() { return { signal: 'hold' }; }\n"
START = 1_700_000_040_000 - 600 * 60_000


@pytest.fixture
async def two_markets() -> AsyncIterator[ReplayServer]:
    series = [
        Series(StreamKey(symbol, "1m"), tuple(generate(400, seed=seed, start_ms=START, symbol=symbol)))
        for symbol, seed in (("BTCUSDT", 1), ("ETHUSDT", 2))
    ]
    async with ReplayServer(series, past=120, ping_interval_s=None) as server:
        yield server


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, two_markets: ReplayServer) -> Path:
    """The CLI's config file: the daemon's store, the replay server as the exchange."""
    for name in list(os.environ):
        if name.startswith("TRADEBOTD_"):
            monkeypatch.delenv(name)
    db = tmp_path / "d.db"
    config = tmp_path / "cli.toml"
    config.write_text(f'[store]\npath = "{db}"\n[market]\nrest_url = "{two_markets.rest_url}"\n')
    monkeypatch.setenv("TRADEBOTD_CONFIG", str(config))
    return db


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


def daemon_for(server: ReplayServer, db: Path) -> Daemon:
    return Daemon(replay_settings(server, db, history=30))


async def add(tmp_path: Path, capsys: pytest.CaptureFixture[str], code: str, *extra: str) -> str:
    path = tmp_path / "s.js"
    path.write_text(code)
    assert await cli("strategy", "add", "s", "--file", str(path), *extra) == 0, capsys.readouterr().err
    return capsys.readouterr().out.strip()


async def test_a_symbol_the_exchange_refuses_puts_the_running_strategy_in_error(
    two_markets: ReplayServer, env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sid = await add(tmp_path, capsys, HOLD, "--asset", "BTC-USD", "--start", "--no-check")  # skips the exchange
    good = await add(tmp_path, capsys, HOLD, "--start")
    daemon = daemon_for(two_markets, env)
    await daemon.start()
    await until_stored(daemon, lambda: daemon.store.get_strategy(sid).status == "error")
    assert (
        daemon.store.get_strategy(sid).error_message == "the exchange refused BTCUSD 1m: Invalid symbol. (code -1121)"
    )
    await until_stored(daemon, lambda: good in daemon.store.cursors())
    assert daemon.engine.strategy_ids() == {good}
    daemon.resync()
    await daemon.synced.wait()
    assert StreamKey("BTCUSD", "1m") not in daemon.feed.streams  # released
    await daemon.shutdown()


async def test_stop_close_position_sells_through_the_order_path(
    two_markets: ReplayServer, env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sid = await add(tmp_path, capsys, BUY_ONCE, "--start")
    daemon = daemon_for(two_markets, env)
    await daemon.start()
    await until_stored(daemon, lambda: sid in daemon.store.cursors())
    await two_markets.advance(1)
    await until_stored(daemon, lambda: len(daemon.store.trades(sid)) == 1)
    (buy,) = daemon.store.trades(sid)
    cash_after_buy = daemon.store.portfolios()[0].cash

    assert await cli("strategy", "stop", sid[:8], "--close-position") == 0
    # The daemon in this test takes no lock (that is `tradebotd run`'s job): the CLI says none runs.
    assert capsys.readouterr().out.splitlines()[1].startswith("closing the position of 0.01 BTCUSDT: no daemon")
    daemon.resync()
    await until_stored(daemon, lambda: len(daemon.store.trades(sid)) == 2)
    sell = daemon.store.trades(sid)[1]
    candle = two_markets.series["BTCUSDT"].candles[120]  # the last closed candle: the newest price
    assert (sell.side, sell.amount, sell.candle_time, sell.price) == (
        "sell",
        buy.amount,
        candle.open_time,
        candle.close,
    )
    assert sell.client_order_id == client_order_id(sid, candle.open_time, "sell")
    assert sell.reason == "close requested (tradebotd strategy stop --close-position)"
    assert daemon.store.close_requests() == [] and daemon.store.positions() == {}
    fee = (sell.price * sell.amount * Decimal("0.001")).quantize(Decimal("0.00000001"))
    assert daemon.store.portfolios()[0].cash == cash_after_buy + sell.price * sell.amount - fee
    assert daemon.store.get_strategy(sid).status == "paused" and daemon.engine.strategy_ids() == set()
    await daemon.shutdown()


async def test_update_asset_and_interval_are_hot_reloaded_onto_the_new_stream(
    two_markets: ReplayServer, env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sid = await add(tmp_path, capsys, HOLD, "--start")
    daemon = daemon_for(two_markets, env)
    await daemon.start()
    await until_stored(daemon, lambda: sid in daemon.store.cursors())

    def cursor() -> tuple[str, str, int]:
        (row,) = daemon.store.execute("SELECT symbol, interval, last_candle_time FROM strategy_cursors")
        return row["symbol"], row["interval"], row["last_candle_time"]

    assert cursor()[:2] == ("BTCUSDT", "1m")
    assert await cli("strategy", "update", sid, "--asset", "ethusdt") == 0
    await until_stored(daemon, lambda: cursor()[0] == "ETHUSDT")
    assert daemon.feed.streams == {StreamKey("ETHUSDT", "1m")}
    await two_markets.advance(1)
    eth = two_markets.series["ETHUSDT"].candles
    await until_stored(daemon, lambda: cursor() == ("ETHUSDT", "1m", eth[120].open_time))

    assert await cli("strategy", "update", sid, "--interval", "5m") == 0
    await until_stored(daemon, lambda: cursor()[1] == "5m")
    assert daemon.feed.streams == {StreamKey("ETHUSDT", "5m")}
    assert cursor()[2] % 300_000 == 0  # a 5-minute candle's open time
    logs = [e.message for _, e in daemon.store.logs_after(sid)]
    assert logs.count("strategy reloaded") == 2
    await daemon.shutdown()
