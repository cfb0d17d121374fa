"""``tradebotd strategy add|update|show|remove|stop`` through ``tradebotd.cli.main``: the checks on
add and update, and every refusal (the daemon's side of them is in tests/e2e/test_cli_daemon.py)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from decimal import Decimal as D
from pathlib import Path

import pytest

from tradebotd.cli import main
from tradebotd.model import Candle, Position, StreamKey
from tradebotd.replay.demo import generate
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer
from tradebotd.store.base import LogEntry, TradeRow, WriteBatch
from tradebotd.store.lock import StoreLock
from tradebotd.store.sqlite import SqliteStore

EXAMPLE = Path(__file__).resolve().parents[1] / "tradebotd" / "examples" / "sma_crossover.js"
KEY = StreamKey("BTCUSDT", "1m")
T0 = 1_704_067_200_000


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("TRADEBOTD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRADEBOTD_STORE__PATH", str(tmp_path / "cli.db"))
    monkeypatch.setenv("TRADEBOTD_MARKET__REST_URL", f"http://127.0.0.1:{closed_port()}")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "cli.db")
    s.migrate()
    return s


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def add_example(capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code, out, err = run(capsys, "strategy", "add", "sma", "--file", str(EXAMPLE), *extra)
    assert code == 0, err
    return out.strip()


def hold_position(tmp_path: Path, sid: str, amount: str = "0.5", price: str = "100") -> None:
    """What the daemon records when the strategy buys: the trade and the position, one batch."""
    s = store(tmp_path)
    pid = s.get_strategy(sid).portfolio_id
    position = Position(D(amount), D(price), T0, None, D("90"))
    s.apply(
        [
            WriteBatch(
                trades=[
                    TradeRow(
                        f"t-{sid}",
                        sid,
                        pid,
                        "BTCUSDT",
                        "buy",
                        D(amount),
                        D(price),
                        D("0.05"),
                        "filled",
                        f"tb-{T0}-{sid[:12]}-buy",
                        None,
                        T0,
                        "cross",
                        "2024-01-01T00:01:00.000Z",
                    )
                ],
                positions={sid: (pid, KEY, position)},
                cash={pid: D("10000") - D(amount) * D(price) - D("0.05")} if pid else {},
                candles=[Candle("BTCUSDT", "1m", T0 + 60_000, D("110"), D("110"), D("110"), D("110"), D("1"))],
                logs=[
                    LogEntry(
                        sid,
                        "signal",
                        "buy signal: cross",
                        {"candle_time": T0, "close": price},
                        "2024-01-01T00:01:00.000Z",
                    )
                ],
            )
        ]
    )
    s.close()


# -- add ---------------------------------------------------------------------------------------


def test_add_refuses_code_that_strategy_check_refuses_with_its_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = write(tmp_path, "bad.js", "function tradingStrategy(c) {\n  return {signal: 'buy'; };\n}\n")
    code, out, err = run(capsys, "strategy", "add", "x", "--file", str(bad))
    assert code == 1 and out == ""
    assert "bad.js does not pass `tradebotd strategy check` (--no-check stores it anyway)" in err
    code, check_out, _ = run(capsys, "strategy", "check", str(bad))
    located = [line for line in check_out.splitlines() if line.startswith("bad.js:2:")]
    assert code == 1 and len(located) == 1 and located[0] in err.splitlines()  # check's file:line:column message
    assert "     2 |   return {signal: 'buy'; };" in err.splitlines()  # and the source line
    assert store(tmp_path).list_strategies() == []
    code, out, _ = run(capsys, "strategy", "add", "x", "--file", str(bad), "--no-check")
    assert code == 0 and store(tmp_path).get_strategy(out.strip()).status == "draft"


def test_add_refuses_typescript_runtime_syntax_and_a_missing_entry_function(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    enum = write(tmp_path, "e.ts", "enum Side { Buy }\nfunction tradingStrategy(c: any) { return {signal: 'hold'} }\n")
    code, _, err = run(capsys, "strategy", "add", "x", "--file", str(enum))
    assert code == 1 and "e.ts:1:" in err and "enum" in err
    none = write(tmp_path, "none.js", "function notTheEntry() {}\n")
    code, _, err = run(capsys, "strategy", "add", "x", "--file", str(none))
    assert code == 1 and "tradingStrategy" in err
    throws = write(tmp_path, "t.js", "function tradingStrategy(c) { return c.candles[-1].close.x.y }\n")
    code, _, err = run(capsys, "strategy", "add", "x", "--file", str(throws))
    assert code == 1 and "error at 2024-01-01T00:00:00Z (candle 1): TypeError" in err
    assert store(tmp_path).list_strategies() == []


def test_add_warns_about_an_unread_parameter_and_when_the_exchange_cannot_be_asked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(
        capsys, "strategy", "add", "x", "--file", str(EXAMPLE), "--param", "fsat=5", "--param", "label=x y"
    )
    assert code == 0
    assert "warning: parameter 'fsat' is never read by the strategy (it reads: amount, fast, slow)" in err
    assert "warning: could not check BTCUSDT against http://127.0.0.1:" in err and "stored without this check" in err
    row = store(tmp_path).get_strategy(out.strip())
    assert row.status == "draft" and row.parameters == {"fsat": 5, "label": "x y"}


@pytest.fixture
async def exchange(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ReplayServer]:
    """The replay server as Binance's REST API: it lists BTCUSDT and ETHUSDT only."""
    series = [
        Series(StreamKey(symbol, "1m"), tuple(generate(50, symbol=symbol, start_ms=T0)))
        for symbol in ("BTCUSDT", "ETHUSDT")
    ]
    async with ReplayServer(series, past=40, ping_interval_s=None) as server:
        monkeypatch.setenv("TRADEBOTD_MARKET__REST_URL", server.rest_url)
        yield server


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI while a server runs on this event loop: in a thread (it runs its own loop)."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_add_checks_the_asset_with_the_exchange(
    exchange: ReplayServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = await cli(capsys, "strategy", "add", "x", "--file", str(EXAMPLE), "--asset", "BTC-USD", "--start")
    assert code == 1
    assert "the exchange refused BTCUSD: Invalid symbol. (code -1121); stored with status 'error'" in err
    row = store(tmp_path).get_strategy(out.strip())
    assert row.status == "error" and row.error_message == "the exchange refused BTCUSD: Invalid symbol. (code -1121)"
    code, out, err = await cli(capsys, "strategy", "add", "y", "--file", str(EXAMPLE), "--asset", "ethusdt")
    assert code == 0 and err == "" and store(tmp_path).get_strategy(out.strip()).status == "draft"
    # update --asset is checked too, and a refusal changes nothing
    sid = out.strip()
    code, _, err = await cli(capsys, "strategy", "update", sid, "--asset", "dogeusdt")
    assert code == 1 and "the exchange refused DOGEUSDT: Invalid symbol. (code -1121); nothing changed" in err
    assert store(tmp_path).get_strategy(sid).asset == "ethusdt"
    code, _, err = await cli(capsys, "strategy", "update", sid, "--asset", "btcusdt")
    assert code == 0 and err == "" and store(tmp_path).get_strategy(sid).asset == "btcusdt"


def test_add_into_a_portfolio(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "portfolio", "add", "small", "--type", "paper", "--cash", "500")
    pid = out.strip()
    sid = add_example(capsys, "--portfolio", pid[:8])
    assert store(tmp_path).get_strategy(sid).portfolio_id == pid
    code, _, err = run(capsys, "strategy", "add", "z", "--file", str(EXAMPLE), "--portfolio", "nope")
    assert code == 2 and "no portfolio with id 'nope'" in err


# -- update -----------------------------------------------------------------------------------------


def test_update_merges_parameters_and_changes_what_it_is_told(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sid = add_example(capsys, "--param", "fast=5", "--param", "slow=20")
    before = store(tmp_path).get_strategy(sid)
    code, out, _ = run(
        capsys,
        "strategy",
        "update",
        sid[:8],
        "--param",
        "slow=30",
        "--param",
        "amount=0.5",
        "--param",
        "note=not json",
        "--unset-param",
        "fast",
        "--interval",
        "5m",
        "--name",
        "sma slow",
    )
    assert code == 0
    assert out.splitlines()[0] == (
        f'{sid} updated: parameters {{"slow": 30, "amount": 0.5, "note": "not json"}}; '
        "interval 1m -> 5m; name sma -> sma slow"
    )
    row = store(tmp_path).get_strategy(sid)
    assert row.parameters == {"slow": 30, "amount": 0.5, "note": "not json"}
    assert (row.interval, row.name, row.asset, row.source) == ("5m", "sma slow", "btcusdt", before.source)
    assert row.updated_at > before.updated_at  # what makes the daemon reload it
    code, out, _ = run(capsys, "strategy", "update", sid, "--name", "sma slow")
    assert code == 0 and out.strip() == f"{sid}: nothing to change"
    code, _, err = run(capsys, "strategy", "update", sid, "--unset-param", "nope")
    assert code == 1 and "has no parameter 'nope'" in err


def test_update_with_code_that_fails_the_check_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sid = add_example(capsys)
    ts = write(tmp_path, "new.ts", "function tradingStrategy(c: any) {\n  return {signal: 'hold' as const}\n}\n")
    bad = write(tmp_path, "bad.js", "function tradingStrategy(c) {\n  return {signal: \n}\n")
    code, _, err = run(capsys, "strategy", "update", sid, "--file", str(bad), "--param", "fast=3")
    assert code == 1 and "bad.js:" in err and "SyntaxError" in err
    row = store(tmp_path).get_strategy(sid)
    assert row.source == EXAMPLE.read_text() and row.parameters == {} and row.kind == "js"
    code, out, _ = run(capsys, "strategy", "update", sid, "--file", str(ts))
    assert code == 0 and "code from" in out
    row = store(tmp_path).get_strategy(sid)
    assert row.kind == "ts" and row.source == ts.read_text()


def test_update_refuses_a_new_asset_or_portfolio_under_an_open_position(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sid = add_example(capsys)
    hold_position(tmp_path, sid)
    code, _, err = run(capsys, "strategy", "update", sid, "--asset", "ethusdt")
    assert code == 1 and f"{sid} holds 0.5 BTCUSDT: its asset cannot change under an open position" in err
    pid = run(capsys, "portfolio", "add", "other", "--type", "paper")[1].strip()
    code, _, err = run(capsys, "strategy", "update", sid, "--portfolio", pid)
    assert code == 1 and "its portfolio cannot change" in err
    row = store(tmp_path).get_strategy(sid)
    assert row.asset == "btcusdt" and row.portfolio_id != pid
    assert run(capsys, "strategy", "update", sid, "--interval", "15m")[0] == 0  # same market: allowed


# -- stop / remove ------------------------------------------------------------------------------------


def test_remove_refuses_an_open_position_unless_it_is_closed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    flat = add_example(capsys, "--start")
    holding = run(capsys, "strategy", "add", "b", "--file", str(EXAMPLE), "--start")[1].strip()
    hold_position(tmp_path, holding)
    code, _, err = run(capsys, "strategy", "remove", holding)
    assert code == 1 and f"{holding} holds 0.5 BTCUSDT; nothing changed" in err and "--close-position" in err
    assert store(tmp_path).get_strategy(holding).status == "running"
    assert store(tmp_path).close_requests() == []

    assert run(capsys, "strategy", "remove", flat) == (0, f"{flat} archived\n", "")
    ids = [r["id"] for r in json.loads(run(capsys, "strategy", "list", "--json")[1])]
    assert ids == [holding]  # archived strategies are hidden ...
    assert [r["id"] for r in json.loads(run(capsys, "strategy", "list", "--json", "--all")[1])] == [flat, holding]

    code, out, _ = run(capsys, "strategy", "remove", holding, "--close-position")
    assert code == 0 and out.splitlines() == [
        f"{holding} archived",
        "closing the position of 0.5 BTCUSDT: no daemon is running on this store now: "
        "`tradebotd run` sells it when it starts",
    ]
    (request,) = store(tmp_path).close_requests()
    assert request.strategy_id == holding and request.key == KEY
    assert request.reason == "close requested (tradebotd strategy remove --close-position)"


def test_stop_close_position_leaves_a_request_for_the_running_daemon(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sid = add_example(capsys, "--start")
    assert run(capsys, "strategy", "stop", sid, "--close-position")[1].splitlines() == [
        f"{sid} paused",
        "no open position to close",
    ]
    assert store(tmp_path).close_requests() == []
    hold_position(tmp_path, sid)
    with StoreLock(tmp_path / "cli.db"):  # a daemon holds the store
        code, out, _ = run(capsys, "strategy", "stop", sid, "--close-position")
    assert code == 0 and out.splitlines()[1] == (
        f"closing the position of 0.5 BTCUSDT: the daemon (pid {os.getpid()}) sells it at the next price it sees "
        "for BTCUSDT"
    )
    (request,) = store(tmp_path).close_requests()
    assert request.reason == "close requested (tradebotd strategy stop --close-position)"
    assert store(tmp_path).get_strategy(sid).status == "paused"


# -- show --------------------------------------------------------------------------------------------------


def test_show_gives_code_parameters_status_position_pnl_and_last_decisions(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sid = add_example(capsys, "--param", "fast=5")
    hold_position(tmp_path, sid)
    code, out, _ = run(capsys, "strategy", "show", sid[:6])
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"id          {sid}" and lines[2] == "status      draft"
    assert 'parameters  {"fast": 5}' in lines
    assert "position    0.5 BTCUSDT since 2024-01-01T00:00:00Z, entry 100, stop-loss 90" in lines
    assert (
        "p&l         marked at 110 (2024-01-01T00:01:00Z candle): value 55, realised +0, "
        "unrealised +4.95, fees 0.05, 1 fills" in out
    )
    assert (
        '2024-01-01T00:01:00.000Z  signal  buy signal: cross  {"candle_time": "2024-01-01T00:00:00Z", "close": "100"}'
        in out
    )
    assert "   1 | // SMA crossover" in out
    doc = json.loads(run(capsys, "strategy", "show", sid, "--json")[1])
    assert doc["code"] == EXAMPLE.read_text() and doc["parameters"] == {"fast": 5} and doc["status"] == "draft"
    assert doc["position"]["amount"] == "0.5" and doc["position"]["entry_time"] == T0
    assert doc["position"]["entry_time_iso"] == "2024-01-01T00:00:00Z" and doc["position"]["stop_loss"] == "90"
    (pnl,) = doc["pnl"]
    assert pnl["unrealised_pnl"] == "4.95" and pnl["value"] == "55" and pnl["mark_candle_time"] == T0 + 60_000
    assert [d["message"] for d in doc["last_decisions"]] == ["buy signal: cross"]
    assert doc["last_decisions"][0]["data"]["candle_time"] == T0  # epoch ms in machine output
