"""``tradebotd orders [--strategy ID] [--open] [--json]`` reading the orders the real daemon placed:
the daemon runs in-process (paper broker) against the replay server and holds the store's lock as
``tradebotd run`` does; the CLI is ``tradebotd.cli.main`` in a thread, on the same store file."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from tradebotd.cli import main
from tradebotd.daemon import Daemon
from tradebotd.isotime import format_time
from tradebotd.model import StreamKey
from tradebotd.orders.model import client_order_id
from tradebotd.replay.demo import generate
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer
from tradebotd.store.lock import StoreLock
from tradebotd.testing import replay_settings, until_stored

START = 1_700_000_040_000 - 600 * 60_000
PAST = 120
# Buys once and keeps the position, protected by a take-profit and a stop-loss far from the
# price: an OCO list whose two legs stay open.
PROTECTED = """
function tradingStrategy({ candles, position }) {
  const close = candles[candles.length - 1].close;
  if (position) return { signal: 'hold' };
  return { signal: 'buy', amount: 0.01, takeProfit: close * 2, stopLoss: close / 2, reason: 'entry' };
}
"""
# Buys with a stop-loss only (one conditional order, no list), sells on the next candle: the
# stop is cancelled first, then the exit fills.
ROUNDTRIP = """
function tradingStrategy({ candles, position }) {
  const close = candles[candles.length - 1].close;
  if (position) return { signal: 'sell', reason: 'out' };
  return { signal: 'buy', amount: 0.02, stopLoss: close / 2, reason: 'in' };
}
"""
# A limit buy far below the market: rests, open.
LIMIT = """
function tradingStrategy({ candles, position }) {
  const close = candles[candles.length - 1].close;
  return { signal: 'buy', amount: 0.01, orderType: 'limit', limitPrice: Math.round(close / 2) };
}
"""
# More than the paper portfolio's cash: the paper exchange rejects it.
GREEDY = "function tradingStrategy() { return { signal: 'buy', amount: 1000 }; }\n"


@pytest.fixture
async def market() -> AsyncIterator[ReplayServer]:
    series = Series(StreamKey("BTCUSDT", "1m"), tuple(generate(400, seed=3, start_ms=START)))
    async with ReplayServer([series], past=PAST, ping_interval_s=None) as server:
        yield server


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, market: ReplayServer) -> Path:
    for name in list(os.environ):
        if name.startswith("TRADEBOTD_"):
            monkeypatch.delenv(name)
    db = tmp_path / "d.db"
    config = tmp_path / "cli.toml"
    config.write_text(f'[store]\npath = "{db}"\n[market]\nrest_url = "{market.rest_url}"\n')
    monkeypatch.setenv("TRADEBOTD_CONFIG", str(config))
    return db


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def add(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, code: str) -> str:
    path = tmp_path / f"{name}.js"
    path.write_text(code)
    result, out, err = await cli(capsys, "strategy", "add", name, "--file", str(path), "--start")
    assert result == 0, err
    return out.strip()


async def test_orders_lists_what_the_daemon_placed_with_filters_and_json(
    market: ReplayServer, env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = {
        name: await add(tmp_path, capsys, name, code)
        for name, code in (("protected", PROTECTED), ("roundtrip", ROUNDTRIP), ("limit", LIMIT), ("greedy", GREEDY))
    }
    assert (await cli(capsys, "orders"))[1] == "no orders\n"
    lock = StoreLock(env)  # as `tradebotd run` holds it: a read-only command must not care
    lock.acquire()
    daemon = Daemon(replay_settings(market, env, history=30))
    try:
        await daemon.start()
        await until_stored(daemon, lambda: set(ids.values()) <= set(daemon.store.cursors()))
        await market.advance(2)
        sid = ids["roundtrip"]
        await until_stored(daemon, lambda: len(daemon.store.trades(sid)) == 2)
        candles = market.series["BTCUSDT"].candles
        first, second = candles[PAST].open_time, candles[PAST + 1].open_time
        await until_stored(daemon, lambda: daemon.store.cursors()[ids["greedy"]] == second)

        code, out, _ = await cli(capsys, "orders", "--json")
        assert code == 0
        listing = json.loads(out)
        stored = daemon.store.orders()
        assert [o["client_order_id"] for o in listing] == [o.client_order_id for o in stored]
        by_id = {o["client_order_id"]: o for o in listing}

        def coid(name: str, t: int, action: str) -> str:
            return client_order_id(ids[name], t, action)  # type: ignore[arg-type]

        # every order of the two candles, in the order they were recorded
        assert {(o["strategy_name"], o["kind"], o["status"]) for o in listing} == {
            ("protected", "market", "filled"),
            ("protected", "OCO take-profit", "open"),
            ("protected", "OCO stop-loss", "open"),
            ("roundtrip", "market", "filled"),
            ("roundtrip", "stop-loss", "cancelled"),
            ("limit", "limit", "open"),
            ("greedy", "market", "rejected"),
        }
        assert len(listing) == 9  # 3 + 3 + 1, and the greedy strategy was refused on both candles

        entry = by_id[coid("protected", first, "buy")]
        fill = daemon.store.trades(ids["protected"])[0]
        assert entry == {
            "client_order_id": coid("protected", first, "buy"),
            "strategy_id": ids["protected"],
            "strategy_name": "protected",
            "portfolio_id": daemon.store.portfolios()[0].id,
            "broker": "paper",
            "symbol": "BTCUSDT",
            "interval": "1m",
            "side": "buy",
            "type": "market",
            "leg": "entry",
            "kind": "market",
            "status": "filled",
            "amount": "0.01",
            "limit_price": None,
            "stop_price": None,
            "reference_price": f"{candles[PAST].close.normalize():f}",
            "filled_amount": "0.01",
            "average_price": f"{fill.price.normalize():f}",
            "fee": f"{fill.fee.normalize():f}",
            "fee_asset": "USDT",
            "exchange_order_id": coid("protected", first, "buy"),  # paper: the client order id
            "list_id": None,
            "parent_id": None,
            "candle_time": first,  # epoch ms kept
            "candle_time_iso": format_time(first),
            "reason": "entry",
            "error": None,
            "raw": None,
            "created_at": entry["created_at"],
            "updated_at": entry["updated_at"],
        }
        assert entry["created_at"].endswith("Z") and Decimal(entry["fee"]) > 0
        tp, sl = by_id[coid("protected", first, "tp")], by_id[coid("protected", first, "sl")]
        assert tp["list_id"] == sl["list_id"] == coid("protected", first, "oco")
        assert tp["parent_id"] == sl["parent_id"] == entry["client_order_id"]
        assert Decimal(tp["limit_price"]) == candles[PAST].close * 2 and tp["stop_price"] is None
        assert Decimal(sl["stop_price"]) == candles[PAST].close / 2 and sl["limit_price"] is None
        stop = by_id[coid("roundtrip", first, "sl")]
        assert (stop["list_id"], stop["error"], stop["filled_amount"]) == (None, "cancelled on request", "0")
        exit_ = by_id[coid("roundtrip", second, "sell")]
        assert (exit_["leg"], exit_["status"], exit_["amount"], exit_["reason"]) == ("exit", "filled", "0.02", "out")
        greedy = by_id[coid("greedy", first, "buy")]
        assert greedy["status"] == "rejected" and greedy["error"].startswith("insufficient cash")

        code, out, _ = await cli(capsys, "orders")
        header, *lines = out.splitlines()
        assert code == 0 and re.split(r"\s{2,}", header) == [
            "CREATED (UTC)", "CANDLE (UTC)", "CLIENT ORDER ID", "STRATEGY", "NAME", "SYMBOL", "SIDE", "KIND", "STATUS",
            "AMOUNT", "PRICE", "FILLED", "AVG PRICE", "FEE", "EXCHANGE ID", "LIST ID", "NOTE",
        ]  # fmt: skip
        assert len(lines) == 9
        row = next(line for line in lines if entry["client_order_id"] in line).split()
        assert row == [
            entry["created_at"],
            format_time(first),
            entry["client_order_id"],
            ids["protected"][:8],
            "protected",
            "BTCUSDT",
            "buy",
            "market",
            "filled",
            "0.01",
            "-",
            "0.01",
            entry["average_price"],
            entry["fee"],
            "USDT",
            entry["client_order_id"],
            "-",
        ]
        row = next(line for line in lines if sl["client_order_id"] in line).split()
        assert row[5:14] == ["BTCUSDT", "sell", "OCO", "stop-loss", "open", "0.01", sl["stop_price"], "0", "-"]
        assert row[-1] == tp["list_id"]
        row = next(line for line in lines if greedy["client_order_id"] in line)
        assert "rejected" in row and row.endswith(greedy["error"])

        # --open: what is not finished; --strategy: one strategy (id prefix), both together
        code, out, _ = await cli(capsys, "orders", "--open", "--json")
        assert code == 0 and sorted(o["client_order_id"] for o in json.loads(out)) == sorted(
            [coid("protected", first, "tp"), coid("protected", first, "sl"), coid("limit", first, "buy")]
        )
        assert len((await cli(capsys, "orders", "--open"))[1].splitlines()) == 4
        code, out, _ = await cli(capsys, "orders", "--strategy", ids["roundtrip"][:8], "--json")
        assert code == 0 and [o["client_order_id"] for o in json.loads(out)] == [
            coid("roundtrip", first, "buy"),
            coid("roundtrip", first, "sl"),
            coid("roundtrip", second, "sell"),
        ]
        assert (await cli(capsys, "orders", "--strategy", ids["roundtrip"], "--open"))[1] == (
            f"no open orders for strategy {ids['roundtrip']}\n"
        )
        code, out, _ = await cli(capsys, "orders", "--strategy", ids["limit"], "--open", "--json")
        assert [o["kind"] for o in json.loads(out)] == ["limit"]
        assert json.loads(out)[0]["limit_price"] == f"{Decimal(round(candles[PAST].close / 2)):f}"

        code, out, err = await cli(capsys, "orders", "--strategy", "nope")
        assert (code, out, err) == (2, "", "tradebotd: no strategy with id 'nope'\n")
    finally:
        await daemon.shutdown()
        lock.release()
