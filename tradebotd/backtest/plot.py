"""``equity.png``: price with entries and exits marked, the equity curve, and the drawdown below.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global state), so
it works on servers and in tests. matplotlib is imported here only: other commands don't pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tradebotd.backtest.metrics import EquityCurve
from tradebotd.backtest.runner import BacktestResult
from tradebotd.broker.base import Fill
from tradebotd.data.candles import CLOSE

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["write_equity_png"]

_MARKERS = {  # fill kind -> (marker, colour, label)
    "buy": ("^", "#1a9850", "buy"),
    "sell": ("v", "#d73027", "sell (signal)"),
    "tp": ("v", "#4575b4", "take-profit"),
    "sl": ("X", "#111111", "stop-loss"),
}


def _kind(fill: Fill) -> str:
    action = fill.client_order_id.rsplit("-", 1)[-1]
    return action if action in _MARKERS else fill.side


def write_equity_png(path: Path, result: BacktestResult, curve: EquityCurve, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = result.table
    start = result.first_evaluated
    times = table.values[start:, 0].astype("datetime64[ms]")
    closes = table.values[start:, CLOSE]
    points = curve.times.astype("datetime64[ms]")

    figure = Figure(figsize=(12, 8), layout="constrained")
    FigureCanvasAgg(figure)
    price_ax, equity_ax, drawdown_ax = figure.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2, 1]})
    price_ax.plot(times, closes, color="#555555", linewidth=0.8, label="close")
    _mark_fills(price_ax, result.fills)
    price_ax.set_ylabel("price")
    price_ax.set_title(title)
    price_ax.legend(loc="best", fontsize="small")

    equity_ax.plot(points, curve.equity, color="#2c7fb8", linewidth=1.0)
    equity_ax.axhline(float(result.settings.cash), color="#999999", linewidth=0.6, linestyle="--")
    equity_ax.set_ylabel("equity")

    drawdown = -curve.drawdown * 100
    drawdown_ax.fill_between(points, drawdown, 0, color="#d7301f", alpha=0.4, linewidth=0)
    drawdown_ax.set_ylabel("drawdown %")
    drawdown_ax.set_xlabel("time (UTC)")
    for ax in (price_ax, equity_ax, drawdown_ax):
        ax.grid(True, alpha=0.3)
    figure.savefig(path, dpi=100)


def _mark_fills(ax: Axes, fills: Sequence[Fill]) -> None:
    for kind, (marker, colour, label) in _MARKERS.items():
        chosen = [f for f in fills if _kind(f) == kind]
        if not chosen:
            continue
        when = np.array([f.candle_time for f in chosen], dtype="datetime64[ms]")
        price = np.array([float(f.price) for f in chosen])
        ax.scatter(when, price, marker=marker, color=colour, s=36, zorder=3, label=label)
