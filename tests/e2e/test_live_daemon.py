"""The daemon trading a ``live`` portfolio: the replay server's klines, the real JS sandbox, the
live broker through the real ccxt against the Binance spot stand-in mounted on the same port
(``/exchange``, trading at the replayed prices), and SQLite.

The kill -9 test runs ``tradebotd run`` as a process and kills it while the stand-in holds the
answer to its order (placed, never answered): the restarted daemon asks the exchange by client
order id and ends with exactly one order, the right position and balance. Every wait is on the
stand-in's requests or the store's commits, never on time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal as D
from pathlib import Path

import pytest
from pydantic import SecretStr

from tradebotd.broker.base import client_order_id
from tradebotd.cli import main
from tradebotd.config import ExchangeSettings
from tradebotd.daemon import Daemon
from tradebotd.errors import ConfigError
from tradebotd.orders.model import OrderRecord
from tradebotd.replay.exchange import ExchangeServer
from tradebotd.replay.server import ReplayServer
from tradebotd.store.base import WriteBatch
from tradebotd.store.sqlite import SqliteStore
from tradebotd.testing import replay_settings, until_stored

from .conftest import EXAMPLE, HISTORY, PAST, fills_of, reference_fills, wave_series

API_KEY, API_SECRET = "live-test-key", "live-test-secret"
# Buys once with a take-profit 1 % above the close and a stop 5 % below; then holds.
BUY_PROTECTED = """
function tradingStrategy({ candles, position }) {
  if (position) return { signal: 'hold' };
  const close = candles[candles.length - 1].close;
  return { signal: 'buy', amount: 0.01, takeProfit: close * 1.01, stopLoss: close * 0.95, reason: 'entry' };
}
"""


@pytest.fixture
async def market() -> AsyncIterator[tuple[ReplayServer, ExchangeServer]]:
    replay = ReplayServer([wave_series()], past=PAST, ping_interval_s=None)
    exchange = ExchangeServer.for_replay(replay, api_keys={API_KEY: API_SECRET}, balances={"USDT": D("10000")})
    async with replay:
        yield replay, exchange


def live_store(db: Path, code: str = BUY_PROTECTED, parameters: dict[str, object] | None = None) -> tuple[str, str]:
    """A store with a live portfolio and one running strategy in it: (portfolio id, strategy id)."""
    store = SqliteStore(db)
    try:
        store.migrate()
        pid = store.add_portfolio(name="live", user_id="u", type="live", cash=D("10000"), currency="USDT")
        sid = store.add_strategy(
            name="live-s", user_id="u", code=code, kind="js", asset="btcusdt", interval="1m",
            parameters=parameters or {},
            portfolio_id=pid, status="running",
        )
    finally:
        store.close()
    return pid, sid


def exchange_settings(exchange: ExchangeServer, **kw: object) -> ExchangeSettings:
    values: dict[str, object] = {
        "mode": "testnet", "rest_url": exchange.rest_url, "poll_s": 0.05, "reconcile_s": 0.5,
        "api_key": SecretStr(API_KEY), "api_secret": SecretStr(API_SECRET),
    }
    values.update(kw)
    return ExchangeSettings(**values)  # type: ignore[arg-type]


async def test_a_live_portfolio_trades_through_the_exchange_with_native_protection(
    market: tuple[ReplayServer, ExchangeServer], tmp_path: Path
) -> None:
    replay, exchange = market
    db = tmp_path / "live.db"
    _, sid = live_store(db)
    daemon = Daemon(replay_settings(replay, db, history=HISTORY, exchange=exchange_settings(exchange)))
    assert set(daemon.brokers) == {"paper", "live"} and daemon.brokers["live"].name == "binance"
    await daemon.start()
    try:
        await until_stored(daemon, lambda: sid in daemon.store.cursors())
        await replay.advance(1)  # the first live candle: the strategy buys
        await until_stored(daemon, lambda: len(daemon.store.trades(sid)) == 1)
        [buy] = daemon.store.trades(sid)
        assert (buy.side, buy.amount, buy.fee_asset) == ("buy", D("0.01"), "BTC")
        async with asyncio.timeout(20):
            await exchange.wait_until(lambda: len(exchange.requests_to("/api/v3/orderList/oco", "POST")) == 1)
        position = daemon.engine.position(sid)
        assert position is not None and position.amount == D("0.00999")
        take_profit = position.take_profit
        assert take_profit is not None
        # The market rises through the take-profit: the exchange fills the leg, the poller learns it.
        await replay.advance(12)
        await until_stored(daemon, lambda: len(daemon.store.trades(sid)) == 2)
        sell = daemon.store.trades(sid)[-1]
        assert (sell.side, sell.price, sell.fee_asset) == ("sell", take_profit, "USDT")
        assert sell.client_order_id.endswith("-tp") and sell.exchange_order_id is not None
        await until_stored(daemon, lambda: daemon.store.positions().get(sid) is None)
        assert exchange.account.open_orders() == []
        assert len(exchange.requests_to("/api/v3/order", "POST")) == 1  # the entry; the exit was the OCO's
    finally:
        await daemon.shutdown()


async def test_a_live_portfolio_without_keys_is_a_clear_config_error(
    market: tuple[ReplayServer, ExchangeServer], tmp_path: Path
) -> None:
    replay, exchange = market
    db = tmp_path / "nokeys.db"
    live_store(db)
    settings = replay_settings(
        replay, db, history=HISTORY, exchange=exchange_settings(exchange, api_key=None, api_secret=None)
    )
    with pytest.raises(ConfigError) as err:
        Daemon(settings)
    text = str(err.value)
    assert "TRADEBOTD_EXCHANGE__API_KEY" in text and "TRADEBOTD_EXCHANGE__API_SECRET" in text
    assert "'live' is a live portfolio" in text
    assert exchange.requests == []


def test_tradebotd_run_without_keys_names_the_variables(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    live_store(db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEBOTD_")}
    env |= {"TRADEBOTD_STORE__PATH": str(db), "TRADEBOTD_EXCHANGE__API_SECRET": "do-not-print-me"}
    done = subprocess.run([sys.executable, "-m", "tradebotd", "run"], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode != 0
    assert "TRADEBOTD_EXCHANGE__API_KEY" in done.stderr and "do-not-print-me" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


async def test_kill_9_between_sending_an_order_and_recording_it(
    market: tuple[ReplayServer, ExchangeServer], tmp_path: Path
) -> None:
    replay, exchange = market
    db = tmp_path / "kill.db"
    _, sid = live_store(db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEBOTD_")}
    env |= {
        "TRADEBOTD_STORE__PATH": str(db),
        "TRADEBOTD_MARKET__WS_URL": replay.ws_url,
        "TRADEBOTD_MARKET__REST_URL": replay.rest_url,
        "TRADEBOTD_MARKET__HISTORY": str(HISTORY),
        "TRADEBOTD_MARKET__MAX_CANDLE_LAG_S": "0",
        "TRADEBOTD_MARKET__START_WINDOW_S": "0",
        "TRADEBOTD_MARKET__RECONNECT_MIN_S": "0.02",
        "TRADEBOTD_MARKET__RECONNECT_MAX_S": "0.2",
        "TRADEBOTD_DAEMON__POLL_INTERVAL_S": "0.2",
        "TRADEBOTD_EXCHANGE__MODE": "testnet",
        "TRADEBOTD_EXCHANGE__REST_URL": exchange.rest_url,
        "TRADEBOTD_EXCHANGE__POLL_S": "0.1",
        "TRADEBOTD_EXCHANGE__API_KEY": API_KEY,
        "TRADEBOTD_EXCHANGE__API_SECRET": API_SECRET,
        "TRADEBOTD_LOG__FORMAT": "json",
    }

    def run() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "tradebotd", "run"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    exchange.faults.timeout_after_accept()  # the order is placed; its answer never comes
    first = run()
    try:
        async with asyncio.timeout(60):
            await replay.wait_until(lambda: _warmed_up(replay))
            await replay.advance(1)  # the first live candle: the strategy buys
            await exchange.wait_until(lambda: exchange.held > 0)
    finally:
        first.send_signal(signal.SIGKILL)  # between sending the order and recording its result
        await asyncio.to_thread(first.wait)
    [placed] = [o for o in exchange.account.orders["BTCUSDT"]]
    coid = placed.client_order_id
    store = SqliteStore(db)
    try:
        [(record, _)] = [(r, t) for r, t in store.active_orders() if r.client_order_id == coid]
        assert record.status == "new"  # the intent was committed; its result never was
        assert store.positions().get(sid) is None
    finally:
        store.close()

    second = run()
    try:
        async with asyncio.timeout(60):
            # reconciled by origClientOrderId, filled, then protected: the OCO follows the fill's commit
            await exchange.wait_until(lambda: bool(exchange.requests_to("/api/v3/orderList/oco", "POST")))
    finally:
        second.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(second.wait, 60)
    assert code == 0
    posts = [r for r in exchange.requests_to("/api/v3/order", "POST") if r.params.get("newClientOrderId") == coid]
    assert len(posts) == 1 and len(exchange.account.orders["BTCUSDT"]) == 3  # the entry and the OCO's two legs
    assert [r.params.get("origClientOrderId") for r in exchange.requests_to("/api/v3/order", "GET")].count(coid) >= 1
    store = SqliteStore(db)
    try:
        position = store.positions()[sid][2]
        assert position is not None and position.amount == D("0.00999")  # 0.01 less the fee in BTC
        [trade] = store.trades(sid)
        assert (trade.client_order_id, trade.amount, trade.fee) == (coid, D("0.01"), D("0.00001"))
        assert trade.fee_asset == "BTC"
        [portfolio] = [p for p in store.portfolios() if p.type == "live"]
        assert portfolio.cash == D("10000") - trade.price * trade.amount
    finally:
        store.close()
    assert exchange.account.free["BTC"] == 0 and exchange.account.locked["BTC"] == D("0.00999")  # held by the OCO
    assert exchange.account.free["USDT"] == D("10000") - placed.cum_quote


def _warmed_up(replay: ReplayServer) -> bool:
    """The daemon has subscribed to BTCUSDT 1m and fetched its warm-up history: a candle closed
    from now on is a live one, evaluated (the history answer is computed as the request arrives)."""
    subscribed = any("btcusdt@kline_1m" in streams for streams in replay.subscriptions())
    fetched = any(path.endswith("/klines") and q.get("symbol") == "BTCUSDT" for path, q in replay.rest_requests)
    return subscribed and fetched


async def test_a_strategy_whose_orders_cannot_be_reconciled_is_not_traded_and_says_why(
    market: tuple[ReplayServer, ExchangeServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    replay, exchange = market
    db = tmp_path / "held.db"
    pid, sid = live_store(db)
    coid = client_order_id(sid, 1_700_000_000_000, "buy")
    store = SqliteStore(db)
    try:  # an order whose answer was lost: the daemon must ask the exchange before trading again
        store.apply([WriteBatch(orders={coid: OrderRecord(
            coid, sid, pid, "binance", "BTCUSDT", "1m", "buy", "market", "entry", D("0.01"), None, None,
            D("30000"), "unknown", None, None, None, D(0), None, D(0), None, 1_700_000_000_000, None,
            "timed out", None, "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00.000Z",
        )})])
    finally:
        store.close()
    exchange.faults.server_error(503, method="GET", path="/api/v3/order", count=1_000)  # it cannot answer
    daemon = Daemon(replay_settings(replay, db, history=HISTORY, exchange=exchange_settings(exchange)))
    await daemon.start()
    try:
        await until_stored(daemon, lambda: daemon.store.get_strategy(sid).status == "error")
        row = daemon.store.get_strategy(sid)
        assert row.error_message is not None and "could not be reconciled" in row.error_message
        assert coid in row.error_message
        logs = [e for _, e in daemon.store.logs_after(sid)]
        assert any(e.level == "error" and "could not be reconciled" in e.message for e in logs)
        assert exchange.requests_to("/api/v3/order", "POST") == []  # nothing traded
    finally:
        await daemon.shutdown()
    for name in list(os.environ):
        if name.startswith("TRADEBOTD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TRADEBOTD_STORE__PATH", str(db))
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["strategy", "list"]) == 0
    listed = capsys.readouterr().out
    assert "error" in listed and "could not be reconciled" in listed


async def test_live_and_paper_give_the_same_trades_on_the_same_candles(tmp_path: Path) -> None:
    """One engine path: the example strategy on a live portfolio (the stand-in charging its fee in
    the quote asset, as paper does) makes exactly the trades of the reference implementation,
    which paper trading makes too (tests/e2e/test_live_paper.py)."""
    series = wave_series()
    replay = ReplayServer([series], past=PAST, ping_interval_s=None)
    exchange = ExchangeServer.for_replay(
        replay, api_keys={API_KEY: API_SECRET}, balances={"USDT": D("10000")}, fee_mode="quote"
    )
    live = 60
    expected = reference_fills(series, PAST, PAST + live - 1)
    assert len(expected) >= 3
    async with replay:
        db = tmp_path / "parity.db"
        _, sid = live_store(db, EXAMPLE.read_text(), {"fast": 5, "slow": 20, "amount": 0.01})
        daemon = Daemon(replay_settings(replay, db, history=HISTORY, exchange=exchange_settings(exchange)))
        await daemon.start()
        try:
            await until_stored(daemon, lambda: sid in daemon.store.cursors())
            for i in range(PAST, PAST + live):
                await replay.advance(1)  # the stand-in trades at this candle's close until the next
                due = sum(f.candle_time <= series.candles[i].open_time for f in expected)
                await until_stored(daemon, lambda: daemon.store.cursors()[sid] == series.candles[i].open_time  # noqa: B023
                                   and len(daemon.store.trades(sid)) == due)  # noqa: B023
            assert fills_of(daemon, sid) == expected
            trades = daemon.store.trades(sid)
            assert {t.fee_asset for t in trades} == {"USDT"} and all(t.exchange_order_id for t in trades)
            [portfolio] = [p for p in daemon.store.portfolios() if p.type == "live"]
            spent = sum((t.price * t.amount * (1 if t.side == "buy" else -1) + t.fee for t in trades), start=D(0))
            assert portfolio.cash == D("10000") - spent
            assert exchange.account.free["USDT"] == portfolio.cash  # the exchange's books and ours agree
        finally:
            await daemon.shutdown()
