"""The versus bench's trades-agree check (bench/versus.py), without backtesting.py: its comparison
rules, and tradebotd's trades.csv from a real ``tradebotd backtest --out`` against the trades the
backtesting.py side's rules give on the same small series (computed here with that side's own
SMA, so the two sides' floats are shown to be the same)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np

from bench.backtesting_py_run import sma
from bench.versus import PRICE_TOLERANCE, STRATEGY, Trade, compare_trades, read_tradebotd_trades, write_candles_csv
from tradebotd.backtest.cli import main as backtest_main
from tradebotd.examples.synthetic import synthetic_candles

T = [Trade(0, 300, 100.0, 101.0), Trade(600, 1200, 99.5, 98.25), Trade(1500, 1800, 97.0, 97.0)]


def test_the_same_trades_agree() -> None:
    agreement = compare_trades(T, list(T))
    assert agreement.agree and agreement.matched == 3 and agreement.max_price_error == 0
    assert agreement.describe() == "3 trades agree (largest relative price difference 0.0e+00)"


def test_prices_agree_within_the_tolerance_only() -> None:
    close = [T[0], Trade(600, 1200, 99.5 * (1 + PRICE_TOLERANCE / 2), 98.25), T[2]]
    agreement = compare_trades(T, close)
    assert agreement.agree and 0 < agreement.max_price_error <= PRICE_TOLERANCE
    far = [T[0], Trade(600, 1200, 99.5, 98.25 * (1 + 3 * PRICE_TOLERANCE)), T[2]]
    agreement = compare_trades(T, far)
    assert not agreement.agree and agreement.matched == 1
    assert agreement.first_difference is not None and agreement.first_difference.startswith("trade 1: prices")


def test_another_entry_or_exit_candle_is_a_difference() -> None:
    moved = [T[0], Trade(600, 1500, 99.5, 98.25), T[2]]
    agreement = compare_trades(T, moved)
    assert not agreement.agree and agreement.matched == 1
    assert agreement.first_difference == "trade 1: tradebotd 600->1200, backtesting.py 600->1500"


def test_a_missing_trade_is_a_difference() -> None:
    for ours, theirs in ((T, T[:2]), (T[:2], T), ([], T)):
        agreement = compare_trades(ours, theirs)
        assert not agreement.agree and agreement.matched == min(len(ours), len(theirs))
        assert agreement.first_difference == f"trade {agreement.matched}: only one side has it"
        assert (agreement.ours, agreement.theirs) == (len(ours), len(theirs))


def _expected_trades(candles: np.ndarray, fast: int, slow: int) -> list[Trade]:
    """The backtesting.py side's rules (bench/backtesting_py_run.py's SmaCross.next), bar by bar."""
    closes = candles[:, 4]
    f, s = sma(closes, fast), sma(closes, slow)
    trades, entry = [], None
    for i in range(slow, len(closes)):  # backtesting.py's first next(): both SMAs defined on i - 1
        if entry is None and f[i - 1] <= s[i - 1] and f[i] > s[i]:
            entry = i
        elif entry is not None and f[i - 1] >= s[i - 1] and f[i] < s[i]:
            trades.append(Trade(int(candles[entry, 0]), int(candles[i, 0]), closes[entry], closes[i]))
            entry = None
    return trades


def test_tradebotd_trades_csv_agrees_with_the_other_sides_rules(tmp_path: Path) -> None:
    candles = synthetic_candles(3_000, 5, interval_ms=300_000)
    data = tmp_path / "SYNTH_5m.csv"
    write_candles_csv(data, candles)
    cash = Decimal(int(candles[:, 4].max()) * 100)
    out = tmp_path / "out"
    code = backtest_main(
        ["--strategy", str(STRATEGY), "--data", str(data), "--param", "fast=5", "--param", "slow=20",
         "--param", "amount=1", "--cash", str(cash), "--fee", "0.001", "--out", str(out), "--no-plot"]
    )
    assert code == 0
    ours = read_tradebotd_trades(out / "trades.csv")
    expected = _expected_trades(candles, 5, 20)
    assert len(expected) > 50
    agreement = compare_trades(ours, expected)
    assert agreement.agree, agreement.describe()


def test_sma_sums_oldest_to_newest_like_the_js_strategy() -> None:
    values = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    out = sma(values, 3)
    assert np.isnan(out[:2]).all()
    assert out[2] == ((0.1 + 0.2) + 0.3) / 3 and out[4] == ((0.3 + 0.4) + 0.5) / 3
    assert np.isnan(sma(values[:2], 3)).all()
