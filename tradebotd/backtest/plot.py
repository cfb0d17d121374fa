"""``equity.png``: price with the time in a position shaded and entries and exits marked, the
equity curve beside buy-and-hold of the same candles, and the drawdown below.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global state), so
it works on servers and in tests. matplotlib is imported here only: other commands don't pay for it.

Readable with hundreds of trades: the time in a position is one shaded band (one artist however
many trades), the fill markers shrink as their number grows (down to a dot), and the legend has
one entry per kind of fill, never per trade. Beyond ``MAX_MARKED_FILLS`` fills the markers would
only be noise over the band, so only the band is drawn (and the title says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tradebotd.backtest.metrics import EquityCurve, buy_and_hold
from tradebotd.backtest.runner import BacktestResult
from tradebotd.broker.base import Fill
from tradebotd.data.candles import CLOSE

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["MAX_MARKED_FILLS", "equity_figure", "marker_size", "write_equity_png"]

MAX_MARKED_FILLS = 2_000
_FULL_SIZE = 36.0  # points², for up to _FEW fills
_FEW = 40
_SMALLEST = 4.0

_MARKERS = {  # fill kind -> (marker, colour, label)
    "buy": ("^", "#1a9850", "buy"),
    "sell": ("v", "#d73027", "sell (signal)"),
    "tp": ("v", "#4575b4", "take-profit"),
    "sl": ("X", "#111111", "stop-loss"),
}


def _kind(fill: Fill) -> str:
    action = fill.client_order_id.rsplit("-", 1)[-1]
    return action if action in _MARKERS else fill.side


def marker_size(fills: int) -> float:
    """Marker area for ``fills`` markers: full size for a few, shrinking with their number (the
    area a chart gives them is fixed), never below a dot."""
    if fills <= _FEW:
        return _FULL_SIZE
    return max(_SMALLEST, _FULL_SIZE * _FEW / fills)


def equity_figure(result: BacktestResult, curve: EquityCurve, title: str) -> Figure:
    """The figure ``equity.png`` is made of (separate so tests can look at what it holds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PathCollection
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
    held = curve.amount[1:] > 0
    if held.any():
        price_ax.fill_between(
            times,
            0,
            1,
            where=held,
            step="post",
            transform=price_ax.get_xaxis_transform(),
            color="#1a9850",
            alpha=0.12,
            linewidth=0,
            label="in a position",
        )
    marked = len(result.fills) <= MAX_MARKED_FILLS
    if marked:
        _mark_fills(price_ax, result.fills)
    price_ax.set_ylabel("price")
    suffix = "" if marked else f" — {len(result.fills):,} fills: shaded, not marked"
    price_ax.set_title(title + suffix)
    legend = price_ax.legend(loc="best", fontsize="small")
    for handle in legend.legend_handles:  # markers in the legend at full size, however small on the chart
        if isinstance(handle, PathCollection):
            handle.set_sizes([_FULL_SIZE])

    equity_ax.plot(points, curve.equity, color="#2c7fb8", linewidth=1.0, label="strategy")
    equity_ax.plot(points, buy_and_hold(result), color="#999999", linewidth=0.8, label="buy and hold")
    equity_ax.axhline(float(result.settings.cash), color="#999999", linewidth=0.6, linestyle="--")
    equity_ax.set_ylabel("equity")
    equity_ax.legend(loc="best", fontsize="small")

    drawdown = -curve.drawdown * 100
    drawdown_ax.fill_between(points, drawdown, 0, color="#d7301f", alpha=0.4, linewidth=0)
    drawdown_ax.set_ylabel("drawdown %")
    drawdown_ax.set_xlabel("time (UTC)")
    for ax in (price_ax, equity_ax, drawdown_ax):
        ax.grid(True, alpha=0.3)
    return figure


def write_equity_png(path: Path, result: BacktestResult, curve: EquityCurve, title: str) -> None:
    equity_figure(result, curve, title).savefig(path, dpi=100)


def _mark_fills(ax: Axes, fills: Sequence[Fill]) -> None:
    size = marker_size(len(fills))
    for kind, (marker, colour, label) in _MARKERS.items():
        chosen = [f for f in fills if _kind(f) == kind]
        if not chosen:
            continue
        when = np.array([f.candle_time for f in chosen], dtype="datetime64[ms]")
        price = np.array([float(f.price) for f in chosen])
        ax.scatter(when, price, marker=marker, color=colour, s=size, linewidths=0, zorder=3, label=label)
