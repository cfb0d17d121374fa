"""Backtests on the live engine's rules: ``run_backtest`` (the loop), ``metrics`` (figures),
``report`` and ``plot`` (outputs), ``cli`` (``tradebotd backtest``), ``bench`` (throughput)."""

from tradebotd.backtest.runner import BacktestError, BacktestResult, BacktestSettings, run_backtest

__all__ = ["BacktestError", "BacktestResult", "BacktestSettings", "run_backtest"]
