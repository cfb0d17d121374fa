"""``tradebotd.pnl``: average-cost P&L per strategy and per portfolio, exact decimals."""

from __future__ import annotations

from decimal import Decimal as D

from tradebotd.pnl import Mark, portfolio_pnl, strategy_pnl
from tradebotd.store.base import PortfolioRow, TradeRow


def trade(sid: str, side: str, amount: str, price: str, fee: str, t: int, pid: str = "p") -> TradeRow:
    return TradeRow(
        id=f"{sid}-{t}",
        strategy_id=sid,
        portfolio_id=pid,
        symbol="BTCUSDT",
        side=side,  # type: ignore[arg-type]
        amount=D(amount),
        price=D(price),
        fee=D(fee),
        status="filled",
        client_order_id=f"tb-{t}-{sid}-{side}",
        exchange_order_id=None,
        candle_time=t,
        reason=None,
        created_at="now",
    )


def test_average_cost_realised_unrealised_and_the_cash_identity() -> None:
    trades = [
        trade("a", "buy", "1", "100", "0.1", 1),
        trade("a", "buy", "1", "110", "0.11", 2),  # average cost 105.105 per unit, fees included
        trade("a", "sell", "0.5", "120", "0.06", 3),
    ]
    (a,) = strategy_pnl(trades, {"a": Mark(D("90"), 4)})
    assert a.held == D("1.5") and a.fills == 3 and a.fees == D("0.27")
    assert a.realised == D("0.5") * D("120") - D("0.06") - D("210.21") / 4  # 7.4025
    assert a.cost == D("210.21") * 3 / 4 and a.average_cost == D("105.105")
    assert a.value == D("135") and a.unrealised == D("135") - D("157.6575")
    # realised + unrealised = sells - buys - fees + held * mark
    assert a.realised + a.unrealised == D("60") - D("210") - D("0.27") + D("135")
    closed = strategy_pnl([*trades, trade("a", "sell", "1.5", "100", "0.15", 5)], {"a": Mark(D("1"), 6)})[0]
    assert closed.held == 0 and closed.cost == 0 and closed.unrealised == 0 and closed.value == 0
    assert closed.mark is None  # flat: nothing to mark
    assert closed.realised == D("60") + D("150") - D("210") - (D("0.27") + D("0.15"))


def test_portfolios_sum_their_strategies_and_an_unmarked_position_is_unknown() -> None:
    cash = PortfolioRow("p", "u", "Paper", "paper", D("9000"), "USDT", "c")
    other = PortfolioRow("q", "u", "Other", "paper", D("50"), "USDT", "c")
    trades = [
        trade("a", "buy", "2", "100", "0.2", 1),
        trade("b", "buy", "1", "100", "0", 1),
        trade("b", "sell", "1", "150", "0", 2),
        trade("c", "buy", "1", "10", "0", 1, pid="q"),
    ]
    strategies = strategy_pnl(trades, {"a": Mark(D("110"), 9), "c": None})
    p, q = portfolio_pnl([cash, other], strategies)
    assert [s.strategy_id for s in p.strategies] == ["a", "b"] and p.open_positions == 1
    assert p.positions_value == D("220") and p.value == D("9220")
    assert p.realised == D("50") and p.unrealised == D("19.8") and p.fees == D("0.2")
    assert q.positions_value is None and q.value is None and q.unrealised is None  # no close to mark c at
    doc = p.as_json()
    assert doc["value"] == "9220" and doc["realised_pnl"] == "50" and doc["unrealised_pnl"] == "19.8"
    assert strategies[0].as_json()["mark_candle_time_iso"] == "1970-01-01T00:00:00.009Z"
