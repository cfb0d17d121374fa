"""``equity.png`` from plain arrays (:class:`ChartData`): price with the time in a position shaded
and entries and exits marked, the equity curve beside buy-and-hold of the same candles, and the
drawdown below. :mod:`tradebotd.backtest.plot` makes the arrays from a backtest result.

This module imports numpy and matplotlib only (matplotlib when drawing), so that it can run as its
own process: ``python -m tradebotd.backtest.chart OUT.png`` reads a :class:`ChartData` (npz) on stdin
and writes the PNG. ``tradebotd backtest`` starts it before evaluating, so matplotlib's import
(≈0.3 s) and the drawing happen on another core while the strategy runs and the report is written.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global state), so
it works on servers and in tests.

Readable with hundreds of trades: the time in a position is one shaded band (one artist however
many trades), the fill markers shrink as their number grows (down to a dot), and the legend has
one entry per kind of fill, never per trade. Beyond ``MAX_MARKED_FILLS`` fills the markers would
only be noise over the band, so only the band is drawn (and the title says so).

Fast with a year of 5m candles (≈0.2 s to draw, matplotlib's import aside): a series longer than
the chart is wide in pixels is drawn as its min/max envelope per pixel column
(:func:`envelope`, at most ``2 * ENVELOPE_COLUMNS`` points: the same picture, since a column can
show no more than its lowest and highest value), the band is one collection of rectangles, one per
run of candles in a position, and the legends have fixed places (``loc="best"`` tests every data
point against every candidate place: 90% of the time it took with 65,000 candles).
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ENVELOPE_COLUMNS",
    "FULL_SIZE",
    "MARKERS",
    "MAX_MARKED_FILLS",
    "ChartData",
    "envelope",
    "figure",
    "marker_size",
    "position_runs",
    "write_png",
]

MAX_MARKED_FILLS = 2_000
ENVELOPE_COLUMNS = 1_500  # more than the axes' width in pixels at figsize 12 in x dpi 100
FULL_SIZE = 36.0  # points², for up to _FEW fills
_FEW = 40
_SMALLEST = 4.0

# Fixed margins (fractions of the 12 x 8 in figure) rather than constrained layout, whose solver
# measured every tick label in a drawing of its own before the real one: a third of the time
# equity.png took with a year of 5m candles. They leave room for 7-digit prices and the labels.
MARGINS = {"left": 0.075, "right": 0.985, "top": 0.955, "bottom": 0.065, "hspace": 0.1}

MARKERS = {  # fill kind -> (marker, colour, label)
    "buy": ("^", "#1a9850", "buy"),
    "sell": ("v", "#d73027", "sell (signal)"),
    "tp": ("v", "#4575b4", "take-profit"),
    "sl": ("X", "#111111", "stop-loss"),
}


@dataclass(frozen=True)
class ChartData:
    """What the chart shows. Times are open times in ms; the curve has a start point first."""

    title: str
    cash: float  # starting cash (the dashed line)
    times: npt.NDArray[np.int64]  # evaluated candles
    closes: npt.NDArray[np.float64]
    held: npt.NDArray[np.bool_]  # in a position after each evaluated candle
    curve_times: npt.NDArray[np.int64]
    equity: npt.NDArray[np.float64]
    buy_and_hold: npt.NDArray[np.float64]
    drawdown: npt.NDArray[np.float64]  # 1 - equity / peak
    fill_kinds: npt.NDArray[np.str_]  # a MARKERS key per fill
    fill_times: npt.NDArray[np.int64]
    fill_prices: npt.NDArray[np.float64]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}
        np.savez(buffer, allow_pickle=False, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ChartData:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            values: dict[str, Any] = {name: arrays[name] for name in arrays.files}
        values["title"] = str(values["title"])
        values["cash"] = float(values["cash"])
        return cls(**values)


def marker_size(fills: int) -> float:
    """Marker area for ``fills`` markers: full size for a few, shrinking with their number (the
    area a chart gives them is fixed), never below a dot."""
    if fills <= _FEW:
        return FULL_SIZE
    return max(_SMALLEST, FULL_SIZE * _FEW / fills)


def position_runs(held: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(first, last) index of each run of True in ``held``."""
    edges = np.diff(np.concatenate(([0], held.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def figure(data: ChartData) -> Figure:
    """The figure ``equity.png`` is made of (separate so tests can look at what it holds)."""
    from matplotlib import dates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PathCollection, PolyCollection
    from matplotlib.figure import Figure

    times = data.times.astype("datetime64[ms]")
    points = data.curve_times.astype("datetime64[ms]")

    chart = Figure(figsize=(12, 8))
    FigureCanvasAgg(chart)
    price_ax, equity_ax, drawdown_ax = chart.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2, 1], **MARGINS}
    )
    price_ax.plot(*envelope(times, data.closes), color="#555555", linewidth=0.8, label="close")
    runs = position_runs(data.held)
    if runs:
        # A rectangle from each run's first to its last candle, all in one collection: what
        # fill_between(where=held, step="post") draws, without its units conversion and path
        # building per run.
        x = np.asarray(dates.date2num(times), dtype=np.float64)  # type: ignore[no-untyped-call]
        first, last = (np.array(side, dtype=np.int64) for side in zip(*runs, strict=True))
        left, right = x[first], x[last]
        bottom, top = np.zeros(len(runs)), np.ones(len(runs))
        corners = np.stack(
            [np.column_stack(pair) for pair in ((left, bottom), (right, bottom), (right, top), (left, top))], axis=1
        )
        band = PolyCollection(
            cast(Any, corners),  # an (n, 4, 2) array: the fast path, one Path array for all
            transform=price_ax.get_xaxis_transform(),
            facecolors="#1a9850",
            alpha=0.12,
            linewidths=0,
            label="in a position",
        )
        price_ax.add_collection(band, autolim=False)
    fills = len(data.fill_kinds)
    marked = fills <= MAX_MARKED_FILLS
    if marked:
        size = marker_size(fills)
        for kind, (marker, colour, label) in MARKERS.items():
            chosen = data.fill_kinds == kind
            if chosen.any():
                when = data.fill_times[chosen].astype("datetime64[ms]")
                price_ax.scatter(
                    when, data.fill_prices[chosen], marker=marker, color=colour, s=size, linewidths=0, zorder=3,
                    label=label,
                )
    price_ax.set_ylabel("price")
    suffix = "" if marked else f" — {fills:,} fills: shaded, not marked"
    price_ax.set_title(data.title + suffix)
    legend = price_ax.legend(loc="upper left", fontsize="small")
    for handle in legend.legend_handles:  # markers in the legend at full size, however small on the chart
        if isinstance(handle, PathCollection):
            handle.set_sizes([FULL_SIZE])

    equity_ax.plot(*envelope(points, data.equity), color="#2c7fb8", linewidth=1.0, label="strategy")
    equity_ax.plot(*envelope(points, data.buy_and_hold), color="#999999", linewidth=0.8, label="buy and hold")
    equity_ax.axhline(data.cash, color="#999999", linewidth=0.6, linestyle="--")
    equity_ax.set_ylabel("equity")
    equity_ax.legend(loc="upper left", fontsize="small")

    drawdown_ax.fill_between(*envelope(points, -data.drawdown * 100), 0, color="#d7301f", alpha=0.4, linewidth=0)
    drawdown_ax.set_ylabel("drawdown %")
    drawdown_ax.set_xlabel("time (UTC)")
    for ax in (price_ax, equity_ax, drawdown_ax):
        ax.grid(True, alpha=0.3)
    return chart


def envelope(
    x: npt.NDArray[Any], y: npt.NDArray[np.float64], columns: int = ENVELOPE_COLUMNS
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """``(x, y)`` unchanged when it has at most ``2 * columns`` points; else, for each of
    ``columns`` runs of consecutive points, its lowest and its highest point in their order (the
    first of equal ones), plus the first and last point of the series: what a line through all
    of them looks like at that resolution."""
    n = len(y)
    if n <= 2 * columns:
        return x, y
    bounds = np.linspace(0, n, columns + 1).astype(np.int64)
    starts = bounds[:-1]
    lows = np.minimum.reduceat(y, starts)
    highs = np.maximum.reduceat(y, starts)
    run = np.repeat(np.arange(columns), np.diff(bounds))  # the run each point belongs to
    # The first index of each run holding its low (high): points equal to it, first by position.
    low_at = _first_where(y == lows[run], run, columns)
    high_at = _first_where(y == highs[run], run, columns)
    keep = np.unique(np.concatenate(([0, n - 1], low_at, high_at)))
    return x[keep], y[keep]


def _first_where(mask: npt.NDArray[np.bool_], run: npt.NDArray[np.int64], columns: int) -> npt.NDArray[np.int64]:
    """Per run, the first index where ``mask`` holds (each run has one)."""
    hits = np.flatnonzero(mask)
    first = np.flatnonzero(np.append(True, run[hits][1:] != run[hits][:-1]))
    chosen = hits[first]
    assert len(chosen) == columns
    return chosen


def write_png(path: Path, data: ChartData) -> None:
    # zlib level 1: a tenth larger than the default level's file, in half the encoding time.
    figure(data).savefig(path, dpi=100, pil_kwargs={"compress_level": 1})


def _warm_up() -> None:
    """Import matplotlib and draw a small chart of the same kinds of artists, discarding it: what
    a first drawing costs once per process (fonts, text layout, date ticks), paid in advance."""
    times = np.arange(4, dtype=np.int64) * 86_400_000 + 1_700_000_000_000
    ones = np.ones(4)
    data = ChartData(
        title="warm-up", cash=1.0, times=times, closes=ones, held=np.array([False, True, True, False]),
        curve_times=times, equity=ones, buy_and_hold=ones, drawdown=ones * 0,
        fill_kinds=np.array(["buy", "sell"]), fill_times=times[1:3], fill_prices=ones[:2],
    )
    figure(data).savefig(io.BytesIO(), format="png", dpi=10)


def main(argv: list[str] | None = None) -> int:
    """``python -m tradebotd.backtest.chart OUT.png``: matplotlib is imported first, then the
    chart data is read from stdin (until EOF) and drawn."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tradebotd.backtest.chart OUT.png < chart.npz", file=sys.stderr)
        return 2
    _warm_up()  # while the parent still evaluates
    data = sys.stdin.buffer.read()
    if not data:  # the parent gave up (e.g. the strategy failed): nothing to draw
        return 0
    write_png(Path(args[0]), ChartData.from_bytes(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
