"""Backtests on the live engine's rules: ``run_backtest`` (the loop), ``metrics`` (figures),
``report`` and ``plot`` (outputs), ``cli`` (``tradebotd backtest``), ``bench`` (throughput)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tradebotd.backtest.runner import BacktestError, BacktestResult, BacktestSettings, run_backtest

__all__ = ["BacktestError", "BacktestResult", "BacktestSettings", "run_backtest"]


def __getattr__(name: str) -> Any:
    # Imported when first named, so that the chart process (python -m tradebotd.backtest.chart)
    # does not load the runner, the sandbox and wasmtime.
    if name in __all__:
        from tradebotd.backtest import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
