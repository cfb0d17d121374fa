"""Every number of ``summary.json`` for a small series, computed by hand (the arithmetic is in the
comments; nothing here re-runs the code under test to get an expected value)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from tradebotd.backtest.metrics import (
    EquityCurve,
    RoundTrip,
    equity_curve,
    monthly_returns,
    reason_kind,
    round_trips,
    summarize,
)
from tradebotd.backtest.runner import BacktestResult, BacktestSettings, run_backtest

from .conftest import T0, at, fills_of, scripted, table

# fee 0.1 %, no slippage, cash 1000; the strategy buys 1 unit with take-profit close + 10 and
# stop-loss close - 5 on volume 1, sells on volume 2. Warm-up 2: candle 0 is history only.
SERIES = table(
    "0  100 100 100 100 5",  # history
    "1  100 101  99 100 1",  # buy @100 (tp 110, sl 95), fee 0.1       cash 1000 - 100.1   =  899.9
    "2  100 104  98 103 5",  # hold
    "3  103 111 102 108 5",  # high 111 >= 110: take-profit @110, fee 0.11   899.9 + 109.89 = 1009.79
    "4  108 108 104 105 1",  # buy @105 (tp 115, sl 100), fee 0.105    1009.79 - 105.105 =  904.685
    "5  105 116  99 100 5",  # both levels touched: stop @100, fee 0.1  904.685 + 99.9   = 1004.585
    # minute 6 is missing (an outage): nothing happens there
    "7  100 101  99 101 1",  # buy @101 (tp 111, sl 96), fee 0.101     1004.585 - 101.101 = 903.484
    "8  101 103 100 102 5",  # hold
    "9  102 104 101 103 2",  # sell @103, fee 0.103                     903.484 + 102.897  = 1006.381
    "10 103 105 102 104 1",  # buy @104 (tp 114, sl 99), fee 0.104     1006.381 - 104.104 = 902.277
    "11 104 106 103 105 5",  # hold; the end: 1 unit open, marked at 105
)
SETTINGS = BacktestSettings(cash=Decimal(1000), fee_rate=Decimal("0.001"), warmup=2)

# Equity after each evaluated candle (cash + amount x close), after a start point of 1000:
EQUITY = [
    1000.0,
    999.9,  # 899.9 + 100
    1002.9,  # 899.9 + 103
    1009.79,  # flat
    1009.685,  # 904.685 + 105
    1004.585,  # flat
    1004.484,  # 903.484 + 101
    1005.484,  # 903.484 + 102
    1006.381,  # flat
    1006.277,  # 902.277 + 104
    1007.277,  # 902.277 + 105
]
# Per-candle returns E[i] / E[i-1] - 1:
#   -0.1/1000, 3/999.9, 6.89/1002.9, -0.105/1009.79, -5.1/1009.685, -0.101/1004.585, 1/1004.484,
#   0.897/1005.484, -0.104/1006.381, 1/1006.277
# = -0.0001, 0.0030003000300030, 0.0068700767773457, -0.0001039820160627, -0.0050510802874164,
#   -0.0001005390285541, 0.0009955360165020, 0.0008921076814748, -0.0001033405837352, 0.0009937621549534
# mean = sum / 10 = 0.007292840744510469 / 10 = 0.000729284074451047
# sample variance = sum((r - mean)^2) / 9 = 8.801191731377563e-06; deviation = 0.0029666802543209
SHARPE_PER_CANDLE = 0.000729284074451047 / 0.0029666802543209074  # = 0.2458249666
# 1m candles per year: 365 x 1440 = 525600
SHARPE_ANNUALISED = SHARPE_PER_CANDLE * math.sqrt(525_600)  # = 178.2188624
# Downside deviation: the negative returns squared, summed over all 10 returns:
#   1e-8 + 1.0812e-8 + 2.55134e-5 + 1.0108e-8 + 1.0679e-8 = 2.555501170210034e-05; / 10, square root
SORTINO_PER_CANDLE = 0.000729284074451047 / math.sqrt(2.555501170210034e-05 / 10)  # = 0.4562035787
SORTINO_ANNUALISED = SORTINO_PER_CANDLE * math.sqrt(525_600)  # = 330.7397289
# CAGR: 1007.277 / 1000 over 11 minutes (the open of candle 1 to the close of candle 11), in
# 365-day years: 1.007277 ^ (525600 / 11) - 1 (huge: an 11-minute backtest annualises badly)
CAGR = 1.007277 ** (525_600 / 11) - 1


@dataclass(frozen=True)
class Outcome:
    result: BacktestResult
    trips: list[RoundTrip]
    open_trip: RoundTrip | None
    summary: dict[str, Any]


@pytest.fixture(scope="module")
def outcome() -> Outcome:
    runtime = scripted(amount=1, tp=10, sl=5)
    result = run_backtest(runtime, SERIES, SETTINGS)
    runtime.close()
    trips, open_trip = round_trips(result)
    return Outcome(result, trips, open_trip, summarize(result, trips, open_trip))


def test_fills(outcome: Outcome) -> None:
    assert fills_of(outcome.result) == [
        ("buy", 1, "100.00000000", "1.00000000", "0.10000000"),
        ("sell", 3, "110.0", "1.00000000", "0.11000000"),
        ("buy", 4, "105.00000000", "1.00000000", "0.10500000"),
        ("sell", 5, "100.0", "1.00000000", "0.10000000"),
        ("buy", 7, "101.00000000", "1.00000000", "0.10100000"),
        ("sell", 9, "103.00000000", "1.00000000", "0.10300000"),
        ("buy", 10, "104.00000000", "1.00000000", "0.10400000"),
    ]


def test_round_trips(outcome: Outcome) -> None:
    rows = [
        (
            t.entry_time,
            t.exit_time,
            str(t.entry_price),
            str(t.exit_price),
            str(t.pnl),
            t.ret,
            str(t.fees),
            t.exit,
            t.candles,
        )
        for t in outcome.trips
    ]
    assert rows == [
        # pnl = cash after exit - cash before entry; return = pnl / (100 + 0.1 fee)
        (
            at(1),
            at(3),
            "100.00000000",
            "110.00000000",
            "9.79000000",
            Decimal("9.79") / Decimal("100.1"),
            "0.21000000",
            "take-profit",
            2,
        ),
        # 1004.585 - 1009.79 = -5.205; / 105.105
        (
            at(4),
            at(5),
            "105.00000000",
            "100.00000000",
            "-5.20500000",
            Decimal("-5.205") / Decimal("105.105"),
            "0.20500000",
            "stop-loss",
            1,
        ),
        # 1006.381 - 1004.585 = 1.796; / 101.101; candle 6 is missing but candles count indices
        (
            at(7),
            at(9),
            "101.00000000",
            "103.00000000",
            "1.79600000",
            Decimal("1.796") / Decimal("101.101"),
            "0.20400000",
            "signal",
            2,
        ),
    ]
    assert outcome.open_trip is not None
    assert str(outcome.open_trip.pnl) == "0.89600000"  # 902.277 + 105 - 1006.381


def test_equity_curve(outcome: Outcome) -> None:
    curve = equity_curve(outcome.result)
    assert curve.equity.tolist() == pytest.approx(EQUITY, abs=1e-9)
    assert curve.amount.tolist() == [0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1]


def test_every_summary_number(outcome: Outcome) -> None:
    summary = dict(outcome.summary)
    elapsed = summary.pop("evaluation_time_s")
    per_s = summary.pop("candles_per_s")
    assert elapsed > 0 and per_s == pytest.approx(10 / elapsed)
    assert summary == {
        "symbol": "BTCUSDT",
        "interval": "1m",
        "first_candle_time": T0,
        "last_candle_time": at(11),
        "candles": 11,
        "missing_candles": 1,  # minute 6
        "warmup": 2,
        "candles_evaluated": 10,  # candles 1..11 (10 exist)
        "initial_cash": "1000",
        "fee_rate": "0.001",
        "slippage_bps": "0",
        "final_cash": "902.27700000",
        "final_equity": "1007.27700000",  # 902.277 + 1 x 105
        "total_return": pytest.approx(0.007277),  # 1007.277 / 1000 - 1
        "buy_and_hold_return": pytest.approx(0.05),  # 105 (last close) / 100 (candle 1's close) - 1
        "period_days": pytest.approx(11 / 1440),
        "cagr": pytest.approx(CAGR),
        "trades": 3,
        "wins": 2,
        "win_rate": pytest.approx(2 / 3),
        # wins 9.79 + 1.796 = 11.586, losses -5.205
        "profit_factor": pytest.approx(11.586 / 5.205),
        "expectancy": "2.12700000",  # (9.79 - 5.205 + 1.796) / 3
        "average_win": "5.79300000",  # 11.586 / 2
        "average_loss": "-5.20500000",
        "exits": {"signal": 1, "take-profit": 1, "stop-loss": 1, "end": 1},
        # peak 1009.79 (after candle 3), trough 1004.484 (candle 7): 5.306 / 1009.79
        "max_drawdown": pytest.approx(0.00525455787837075),
        "sharpe_per_candle": pytest.approx(SHARPE_PER_CANDLE),
        "sharpe_annualised": pytest.approx(SHARPE_ANNUALISED),
        "sortino_per_candle": pytest.approx(SORTINO_PER_CANDLE),
        "sortino_annualised": pytest.approx(SORTINO_ANNUALISED),
        # long at the close of candles 1, 2, 4, 7, 8, 10, 11: 7 of 10
        "exposure": pytest.approx(0.7),
        "fees_paid": "0.72300000",  # 0.1 + 0.11 + 0.105 + 0.1 + 0.101 + 0.103 + 0.104
        "fills": 7,
        "orders_rejected": 0,
        "orders_rejected_by_reason": {},
        "orders_ignored": 0,
        "orders_ignored_by_reason": {},
        "strategy_errors": 0,
        "monthly_returns": [{"month": "2023-11", "return": pytest.approx(0.007277)}],  # all on 2023-11-14
        "open_position": {
            "amount": "1.00000000",
            "entry_price": "104.00000000",
            "entry_time": at(10),
            "take_profit": "114.0",
            "stop_loss": "99.0",
            "mark_price": "105",
            "market_value": "105.00000000",
            "unrealised_pnl": "0.89600000",  # 105 - 104 - 0.104 fee
        },
    }
    assert SHARPE_PER_CANDLE == pytest.approx(0.2458249666)
    assert SHARPE_ANNUALISED == pytest.approx(178.2188624)
    assert SORTINO_PER_CANDLE == pytest.approx(0.4562035787)


def _ms(day: str) -> int:
    return int(np.datetime64(day, "ms").astype(np.int64))


def test_monthly_returns_chain_month_ends_and_skip_months_without_candles() -> None:
    curve = EquityCurve(
        times=np.array([_ms(d) for d in ("2024-01-30", "2024-01-30", "2024-01-31T23:59", "2024-03-01", "2024-03-02")]),
        equity=np.array([100.0, 101.0, 110.0, 99.0, 121.0]),
        amount=np.zeros(5),
    )
    # January: 110 (its last point) / 100 (the start) - 1; no February; March: 121 / 110 - 1
    assert monthly_returns(curve) == [("2024-01", pytest.approx(0.1)), ("2024-03", pytest.approx(0.1))]


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("insufficient cash: need 105.10000000, have 3.2", "insufficient cash"),
        ("sell while flat: nothing to close", "sell while flat"),
        ("amount 1E+10 is not a plausible quantity (limit 1000000)", "amount … is not a plausible quantity (limit …)"),
        ("amount rounds to zero at 8 decimals", "amount rounds to zero at … decimals"),
    ],
)
def test_refusals_count_by_the_kind_of_message(message: str, kind: str) -> None:
    assert reason_kind(message) == kind


def test_rejections_by_reason_and_figures_without_losing_trades() -> None:
    # cash 150: one unit at a time fits, a second one does not
    series = table(
        "0  100 100 100 100 5",
        "1  100 101  99 100 1",  # buy @100, fee 0.1: cash 49.9
        "2  100 101  99 100 1",  # refused: need 100.1, have 49.9
        "3  100 111  99 110 2",  # sell @110, fee 0.11: cash 159.79; pnl 9.79
        "4  110 111 109 110 2",  # ignored: flat
        "5  110 111 109 110 1",  # buy @110, fee 0.11: cash 49.68; open at the end
        "6  110 111 109 110 1",  # refused: need 110.11, have 49.68
    )
    runtime = scripted(amount=1)
    result = run_backtest(runtime, series, BacktestSettings(cash=Decimal(150), fee_rate=Decimal("0.001"), warmup=2))
    runtime.close()
    trips, open_trip = round_trips(result)
    summary = summarize(result, trips, open_trip)
    assert summary["orders_rejected"] == 2 and summary["orders_rejected_by_reason"] == {"insufficient cash": 2}
    assert summary["orders_ignored_by_reason"] == {"sell while flat": 1}
    assert summary["profit_factor"] is None and summary["average_loss"] is None  # no losing trade
    assert summary["average_win"] == summary["expectancy"] == "9.79000000"
    assert summary["exits"] == {"signal": 1, "take-profit": 0, "stop-loss": 0, "end": 1}
