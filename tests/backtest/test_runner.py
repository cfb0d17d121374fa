"""The backtest loop: the live engine's per-candle rules (protective levels, then the strategy,
then the paper broker), batch evaluation, warm-up, gaps, errors and end of data."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from tradebotd.backtest.metrics import round_trips, summarize
from tradebotd.backtest.runner import BacktestError, BacktestSettings, run_backtest
from tradebotd.data.candles import CandleTable
from tradebotd.model import Candle, Decision, Position
from tradebotd.sandbox.js import JsStrategy

from .conftest import MIN, T0, at, fills_of, scripted, table


def account(**kw: Any) -> BacktestSettings:
    """1000 cash, 0.1 % fee, no slippage, every candle evaluated (unless ``kw`` says otherwise)."""
    return BacktestSettings(**{"cash": Decimal(1000), "fee_rate": Decimal("0.001"), **kw})


def test_orders_fill_at_the_signal_candles_close_with_fee_and_slippage(strategy: JsStrategy) -> None:
    candles = table(
        "0 100 101 99 100 5",
        "1 100 102 99 101.5 1",  # buy at this close
        "2 101 103 100 102 5",
        "3 102 104 101 103.25 2",  # sell at this close
    )
    result = run_backtest(strategy, candles, account(slippage_bps=Decimal(20)))
    # buy: 101.5 x 1.002 = 101.703; sell: 103.25 x 0.998 = 103.0435; fee 0.1 % of each
    assert fills_of(result) == [
        ("buy", 1, "101.70300000", "1.00000000", "0.10170300"),
        ("sell", 3, "103.04350000", "1.00000000", "0.10304350"),
    ]
    assert [f.reason for f in result.fills] == ["scripted buy, saw 2 candles", "scripted sell, saw 4 candles"]
    # 1000 - 101.703 - 0.101703 = 898.195297; + 103.0435 - 0.1030435 = 1001.1357535
    assert result.final_cash == Decimal("1001.13575350")
    assert result.position is None
    assert result.evaluated == 4


def test_take_profit_and_stop_loss_touch_later_candles_only_and_the_stop_wins_a_tie(strategy: JsStrategy) -> None:
    candles = table(
        "0 100 120 80 100 1",  # buy at 100 (tp 110, sl 95): its own range does not count
        "1 100 109 96 105 5",  # inside the levels
        "2 105 111 101 108 5",  # high reaches the take-profit: exit at 110
        "3 108 108 104 105 1",  # buy at 105 (tp 115, sl 100)
        "4 105 116 99 106 5",  # both levels touched: the stop wins, exit at 100
        "5 106 107 90 95 1",  # buy at 95 (tp 105, sl 90)
        "6 95 96 90 92 5",  # low exactly at the stop: touched
    )
    result = run_backtest(strategy, candles, account())
    assert fills_of(result) == [
        ("buy", 0, "100.00000000", "1.00000000", "0.10000000"),
        ("sell", 2, "110.0", "1.00000000", "0.11000000"),
        ("buy", 3, "105.00000000", "1.00000000", "0.10500000"),
        ("sell", 4, "100.0", "1.00000000", "0.10000000"),
        ("buy", 5, "95.00000000", "1.00000000", "0.09500000"),
        ("sell", 6, "90.0", "1.00000000", "0.09000000"),
    ]
    assert [f.client_order_id.rsplit("-", 1)[1] for f in result.fills] == ["buy", "tp", "buy", "sl", "buy", "sl"]
    assert result.fills[1].reason == "take-profit 110.0 touched"


def test_after_a_protective_exit_the_strategy_sees_that_candle_flat(strategy: JsStrategy) -> None:
    candles = table(
        "0 100 101 99 100 1",  # buy at 100 (tp 110, sl 95)
        "1 100 101 94 96 1",  # stop touched first (exit 95), then the strategy buys again at 96
        "2 96 97 95 96 5",
    )
    result = run_backtest(strategy, candles, account())
    assert fills_of(result)[1:] == [
        ("sell", 1, "95.0", "1.00000000", "0.09500000"),
        ("buy", 1, "96.00000000", "1.00000000", "0.09600000"),
    ]
    assert result.position == Position(
        Decimal("1.00000000"), Decimal("96.00000000"), at(1), Decimal("106.0"), Decimal("91.0")
    )


def test_a_float_touch_that_is_not_a_decimal_touch_does_not_exit() -> None:
    # 100.000000000000000001 is 100.0 as a float, so the vectorised scan flags the candle; the
    # broker compares exact decimals, as paper trading does live, and holds on.
    candles = table(
        "0 101 101 101 101 1",  # buy at 101, stop 100
        "1 101 101 100.000000000000000001 101 5",
        "2 101 101 99.5 100 5",  # a real touch
    )
    runtime = scripted(amount=1, sl=1)
    result = run_backtest(runtime, candles, account())
    assert [(side, minute) for side, minute, *_ in fills_of(result)] == [("buy", 0), ("sell", 2)]


def test_only_signal_and_touch_candles_leave_numpy(strategy: JsStrategy, monkeypatch: pytest.MonkeyPatch) -> None:
    # 2000 candles, 5 buys (each exits by take-profit 3 candles later, one candidate each): the
    # rest of the series never leaves numpy. A signal candle costs only its close as a Decimal;
    # a touch candle becomes a Candle (the broker compares its low and high).
    rows = [f"{i} 100 101 99 100 5" for i in range(2000)]
    for start in (100, 500, 900, 1300, 1700):
        rows[start] = f"{start} 100 101 99 100 1"
        rows[start + 3] = f"{start + 3} 100 111 99 100 5"
    built: list[int] = []
    closes: list[int] = []
    original_candle, original_close = CandleTable.candle, CandleTable.close

    def counting_candle(self: CandleTable, index: int) -> Candle:
        built.append(index)
        return original_candle(self, index)

    def counting_close(self: CandleTable, index: int) -> Decimal:
        closes.append(index)
        return original_close(self, index)

    monkeypatch.setattr(CandleTable, "candle", counting_candle)
    monkeypatch.setattr(CandleTable, "close", counting_close)
    result = run_backtest(strategy, table(*rows), account())
    assert len(result.fills) == 10
    assert closes == [100, 500, 900, 1300, 1700]
    assert built == [103, 503, 903, 1303, 1703]
    assert sorted(closes + built) == sorted(result.fill_index)


def test_warmup_pushes_history_and_evaluates_from_the_nth_candle() -> None:
    candles = table(*(f"{i} 100 101 99 100 {1 if i in (1, 3) else 5}" for i in range(6)))
    runtime = scripted(amount=1)
    result = run_backtest(runtime, candles, account(warmup=3))
    # candle 1's buy is history (never evaluated); the first evaluation is on candle 2 and sees 3
    assert result.first_evaluated == 2 and result.evaluated == 4
    assert [(f.side, f.candle_time, f.reason) for f in result.fills] == [("buy", at(3), "scripted buy, saw 4 candles")]
    assert run_backtest(scripted(), candles, account(warmup=1)).evaluated == 6
    with pytest.raises(BacktestError, match="nothing to evaluate"):
        run_backtest(scripted(), candles, account(warmup=7))


def test_gaps_are_passed_over_as_they_are(strategy: JsStrategy) -> None:
    candles = table(
        "0 100 101 99 100 1",  # buy at 100
        "1 100 101 99 100 5",
        "5 100 112 99 100 5",  # three candles missing, then the take-profit: exit at 110
        "6 100 101 99 100 5",
    )
    result = run_backtest(strategy, candles, account())
    assert [(side, minute, price) for side, minute, price, *_ in fills_of(result)] == [
        ("buy", 0, "100.00000000"),
        ("sell", 5, "110.0"),
    ]
    assert candles.missing == 3
    assert result.evaluated == 4  # one evaluation per candle that exists


def test_an_open_position_at_the_end_is_marked_to_the_last_close_and_reported(strategy: JsStrategy) -> None:
    candles = table("0 100 101 99 100 1", "1 100 104 99 103 5", "2 103 104 102 102.5 5")
    result = run_backtest(strategy, candles, account())
    trips, open_trip = round_trips(result)
    summary = summarize(result, trips, open_trip)
    assert trips == []
    assert summary["trades"] == 0 and summary["win_rate"] is None
    # cash 1000 - 100 - 0.1 = 899.9; marked: 899.9 + 102.5
    assert summary["final_cash"] == "899.90000000"
    assert summary["final_equity"] == "1002.40000000"
    assert summary["open_position"] == {
        "amount": "1.00000000",
        "entry_price": "100.00000000",
        "entry_time": at(0),
        "take_profit": "110.0",
        "stop_loss": "95.0",
        "mark_price": "102.5",
        "market_value": "102.50000000",
        "unrealised_pnl": "2.40000000",  # 102.5 - 100 - 0.1 fee
    }


def test_rejected_and_ignored_orders_are_counted_not_filled() -> None:
    candles = table("0 100 101 99 100 2", "1 100 101 99 100 1", "2 100 101 99 100 5")
    runtime = scripted(amount=20)  # 20 x 100 + fee > 1000 cash
    result = run_backtest(runtime, candles, account())
    assert result.fills == ()
    assert [(r.side, r.outcome) for r in result.refusals] == [("sell", "ignored"), ("buy", "rejected")]
    assert "insufficient cash" in result.refusals[1].reason


def test_strategy_errors_skip_the_candle_and_a_streak_stops_the_backtest(strategy: JsStrategy) -> None:
    candles = table("0 100 101 99 100 3", "1 100 101 99 100 1", "2 100 101 99 100 3", "3 100 101 99 100 2")
    result = run_backtest(strategy, candles, account())
    assert [f.candle_time for f in result.failures] == [at(0), at(2)]
    assert "scripted failure, saw 1 candles" in result.failures[0].message
    assert [(side, minute) for side, minute, *_ in fills_of(result)] == [("buy", 1), ("sell", 3)]
    streak = table(*(f"{i} 100 101 99 100 {3 if i >= 2 else 5}" for i in range(6)))
    with pytest.raises(BacktestError, match="failed on 3 consecutive candles"):
        run_backtest(scripted(), streak, account(max_consecutive_errors=3))


class StepOnly:
    """A runtime with ``step`` but no ``run_until_signal`` (the backtest evaluates it candle by candle)."""

    def __init__(self) -> None:
        self.history = 0
        self.seen: list[float] = []

    def push_history(self, candles: np.ndarray[Any, Any]) -> None:
        self.history += len(candles)

    def step(self, candle: tuple[float, ...], position: Position | None) -> tuple[Decision, None]:
        self.seen.append(candle[0])
        if candle[5] == 1 and position is None:
            return Decision("buy", amount=1.0, take_profit=candle[4] + 10), None
        return Decision("hold"), None

    def close(self) -> None:
        pass


def test_runtimes_without_batch_evaluation_are_stepped() -> None:
    candles = table("0 100 101 99 100 5", "1 100 101 99 100 1", "2 100 111 99 100 5", "3 100 101 99 100 5")
    runtime = StepOnly()
    result = run_backtest(runtime, candles, account(warmup=2))
    assert runtime.history == 1 and runtime.seen == [at(1), at(2), at(3)]
    assert [(side, minute, price) for side, minute, price, *_ in fills_of(result)] == [
        ("buy", 1, "100.00000000"),
        ("sell", 2, "110.0"),
    ]


def test_long_holds_scan_for_levels_in_growing_windows(strategy: JsStrategy) -> None:
    # The take-profit is touched 5000 candles after the entry: found although far beyond the
    # first scan window, and the strategy (which would sell on candle 6000) never got there.
    rows = [f"{i} 100 101 99 100 5" for i in range(7000)]
    rows[0] = "0 100 101 99 100 1"
    rows[5000] = "5000 100 110 99 100 5"
    rows[6000] = "6000 100 101 99 100 2"
    result = run_backtest(strategy, table(*rows), account())
    assert [(side, minute) for side, minute, *_ in fills_of(result)] == [("buy", 0), ("sell", 5000)]
    assert result.refusals[0].candle_time == T0 + 6000 * MIN  # the late sell found nothing to sell


class LimitBuyer(StepOnly):
    """Buys with a limit 5 below the close on a volume-1 candle; sells at market on volume 2."""

    def step(self, candle: tuple[float, ...], position: Position | None) -> tuple[Decision, None]:
        self.seen.append(candle[0])
        if candle[5] == 1:
            return Decision("buy", amount=1.0, order_type="limit", limit_price=candle[4] - 5), None
        if candle[5] == 2:
            return Decision("sell"), None
        return Decision("hold"), None


def test_a_limit_order_rests_until_a_later_candle_crosses_it_and_fills_at_the_limit() -> None:
    candles = table(
        "0 100 101 99 100 1",  # limit buy at 95: this candle's range does not count
        "1 100 101 96 100 5",  # not reached
        "2 100 101 94 97 5",  # low 94 crosses 95: filled at 95
        "3 97 99 96 98 2",  # sell at the close
    )
    runtime = LimitBuyer()
    result = run_backtest(runtime, candles, account())
    assert [(side, minute, price) for side, minute, price, *_ in fills_of(result)] == [
        ("buy", 2, "95.0"),
        ("sell", 3, "98.00000000"),
    ]
    assert runtime.seen == [at(i) for i in range(4)]


def test_percent_parameters_protect_the_entry_in_a_backtest() -> None:
    from tradebotd.orders.intent import level_defaults

    candles = table("0 100 101 99 100 1", "1 100 101 99 100 5", "2 100 111 99 100 5")
    result = run_backtest(StepOnlyNoLevels(), candles, account(), levels=level_defaults({"takeProfitPct": 10}))
    assert [(side, minute, price) for side, minute, price, *_ in fills_of(result)] == [
        ("buy", 0, "100.00000000"),
        ("sell", 2, "110.0"),  # the take-profit 10 % above the signal close
    ]


class StepOnlyNoLevels(StepOnly):
    def step(self, candle: tuple[float, ...], position: Position | None) -> tuple[Decision, None]:
        return (Decision("buy", amount=1.0) if candle[5] == 1 and position is None else Decision("hold")), None
