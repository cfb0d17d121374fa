"""``tradebotd positions`` and ``tradebotd portfolio add|list`` through ``tradebotd.cli.main``."""

from __future__ import annotations

import json
import os
from decimal import Decimal as D
from pathlib import Path

import pytest

from tradebotd.cli import main
from tradebotd.model import Candle, Position, StreamKey
from tradebotd.store.base import TradeRow, WriteBatch
from tradebotd.store.sqlite import SqliteStore

KEY = StreamKey("BTCUSDT", "1m")
T0 = 1_704_067_200_000


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("TRADEBOTD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRADEBOTD_STORE__PATH", str(tmp_path / "p.db"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fill(sid: str, pid: str, side: str, amount: str, price: str, fee: str, t: int) -> TradeRow:
    return TradeRow(
        f"{sid}-{t}",
        sid,
        pid,
        "BTCUSDT",
        side,
        D(amount),
        D(price),
        D(fee),
        "filled",  # type: ignore[arg-type]
        f"tb-{t}-{sid[:12]}-{side}",
        None,
        t,
        None,
        "2024-01-01T00:00:00.000Z",
    )


def book(tmp_path: Path) -> tuple[str, str, str]:
    """Two strategies in the default paper portfolio: one holds 0.5 BTC, one traded and is flat."""
    store = SqliteStore(tmp_path / "p.db")
    store.migrate()
    pid = store.ensure_paper_portfolio(user_id="u", cash=D("10000"), currency="USDT")
    ids = []
    for name in ("holder", "trader"):
        ids.append(
            store.add_strategy(
                name=name,
                user_id="u",
                code="x",
                kind="js",
                asset="btcusdt",
                interval="1m",
                parameters={},
                portfolio_id=pid,
            )
        )
    holder, trader = ids
    store.apply(
        [
            WriteBatch(
                trades=[
                    fill(holder, pid, "buy", "0.5", "100", "0.05", T0),
                    fill(trader, pid, "buy", "1", "100", "0.1", T0),
                    fill(trader, pid, "sell", "1", "120", "0.12", T0 + 60_000),
                ],
                positions={holder: (pid, KEY, Position(D("0.5"), D("100"), T0, D("150"), None))},
                cash={pid: D("10000") - D("50.05") - D("100.1") + D("119.88")},
                candles=[Candle("BTCUSDT", "1m", T0 + 120_000, D("1"), D("1"), D("1"), D("110"), D("1"))],
            )
        ]
    )
    store.close()
    return pid, holder, trader


def test_positions_table_and_json_mark_to_the_last_stored_close(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(capsys, "positions")[1] == "no open positions (--all shows strategies that traded)\n"
    pid, holder, _ = book(tmp_path)
    code, out, _ = run(capsys, "positions")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == [
        "STRATEGY",
        "NAME",
        "SYMBOL",
        "AMOUNT",
        "AVG",
        "COST",
        "LAST",
        "CLOSE",
        "CANDLE",
        "(UTC)",
        "VALUE",
        "UNREALISED",
        "REALISED",
        "FEES",
    ]
    assert lines[1].split() == [
        holder[:8],
        "holder",
        "BTCUSDT",
        "0.5",
        "100.1",
        "110",
        "2024-01-01T00:02:00Z",
        "55",
        "+4.95",
        "0",
        "0.05",
    ]
    assert len(lines) == 3 and lines[2] == (
        f"portfolio Paper (paper, {pid[:8]}): cash 9969.73 USDT, positions 55, value 10024.73; realised +19.78, "
        "unrealised +4.95, fees 0.27"
    )
    assert len(run(capsys, "positions", "--all")[1].splitlines()) == 4  # the flat one too
    doc = json.loads(run(capsys, "positions", "--json")[1])
    (position,) = doc["positions"]
    assert position == {
        "name": "holder",
        "strategy_id": holder,
        "portfolio_id": pid,
        "symbol": "BTCUSDT",
        "amount": "0.5",
        "average_cost": "100.1",
        "mark_price": "110",
        "mark_candle_time": T0 + 120_000,
        "mark_candle_time_iso": "2024-01-01T00:02:00Z",
        "value": "55",
        "realised_pnl": "0",
        "unrealised_pnl": "4.95",
        "fees": "0.05",
        "fills": 1,
        "take_profit": "150",
        "stop_loss": None,
    }
    (portfolio,) = doc["portfolios"]
    assert (portfolio["value"], portfolio["realised_pnl"], portfolio["unrealised_pnl"]) == ("10024.73", "19.78", "4.95")


def test_portfolio_add_prints_the_id_and_list_shows_cash_value_and_pnl(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pid, _, _ = book(tmp_path)
    code, out, _ = run(capsys, "portfolio", "add", "Binance", "--type", "live")
    live = out.strip()
    assert code == 0 and len(live) == 36
    code, out, _ = run(capsys, "portfolio", "add", "small", "--type", "paper", "--cash", "250.5", "--currency", "USDC")
    small = out.strip()
    code, _, err = run(capsys, "portfolio", "add", "x", "--type", "live", "--cash", "5")
    assert code == 2 and "a live portfolio's cash is its exchange balance" in err
    with pytest.raises(SystemExit):
        main(["portfolio", "add", "x", "--type", "margin"])
    with pytest.raises(SystemExit):
        main(["portfolio", "add", "x", "--type", "paper", "--cash", "-1"])
    capsys.readouterr()
    listing = json.loads(run(capsys, "portfolio", "list", "--json")[1])
    assert [(p["id"], p["type"], p["cash"], p["currency"]) for p in listing] == [
        (pid, "paper", "9969.73", "USDT"),
        (live, "live", "0", "USDT"),
        (small, "paper", "250.5", "USDC"),
    ]
    assert listing[0]["positions"] == 1 and listing[0]["value"] == "10024.73" and listing[0]["fees"] == "0.27"
    assert listing[2]["realised_pnl"] == "0" and listing[2]["value"] == "250.5"
    lines = run(capsys, "portfolio", "list")[1].splitlines()
    assert lines[0].split()[:5] == ["ID", "NAME", "TYPE", "CURRENCY", "CASH"]
    assert lines[1].split()[:10] == [
        pid,
        "Paper",
        "paper",
        "USDT",
        "9969.73",
        "1",
        "(55)",
        "10024.73",
        "+19.78",
        "+4.95",
    ]
