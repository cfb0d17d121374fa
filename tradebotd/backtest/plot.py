"""``equity.png`` of a backtest: :func:`chart_data` turns a result into the arrays
:mod:`tradebotd.backtest.chart` draws (see there for what the chart shows and why it is fast).

:class:`BackgroundChart` draws it in a child process (``python -m tradebotd.backtest.chart``),
started before the backtest runs: matplotlib's import and the drawing then overlap the evaluation
and the report instead of following them. That only pays when a CPU is otherwise idle; on a busy
machine the child would take CPU from the evaluation and the whole run would take longer, so
without a spare core (:func:`spare_core`: the 1-minute load average leaves less than half a CPU of
those this process may use) the chart is drawn here, after the report. If the child cannot be
started, or fails, the chart is drawn here too, so equity.png never depends on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tradebotd.backtest.chart import (
    ENVELOPE_COLUMNS,
    MARKERS,
    MAX_MARKED_FILLS,
    ChartData,
    envelope,
    figure,
    marker_size,
    write_png,
)
from tradebotd.backtest.metrics import EquityCurve, buy_and_hold
from tradebotd.backtest.runner import BacktestResult
from tradebotd.broker.base import Fill
from tradebotd.data.candles import CLOSE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ENVELOPE_COLUMNS",
    "MAX_MARKED_FILLS",
    "SPARE_CPU",
    "BackgroundChart",
    "chart_data",
    "envelope",
    "equity_figure",
    "marker_size",
    "spare_core",
    "write_equity_png",
]

SPARE_CPU = 0.5  # idle CPUs (by the load average) needed to draw in a child process


def _kind(fill: Fill) -> str:
    action = fill.client_order_id.rsplit("-", 1)[-1]
    return action if action in MARKERS else fill.side


def chart_data(result: BacktestResult, curve: EquityCurve, title: str) -> ChartData:
    table = result.table
    start = result.first_evaluated
    fills = result.fills
    return ChartData(
        title=title,
        cash=float(result.settings.cash),
        times=table.values[start:, 0].astype(np.int64),
        closes=np.ascontiguousarray(table.values[start:, CLOSE]),
        held=curve.amount[1:] > 0,
        curve_times=curve.times,
        equity=curve.equity,
        buy_and_hold=buy_and_hold(result),
        drawdown=curve.drawdown,
        fill_kinds=np.array([_kind(f) for f in fills], dtype=np.str_).reshape(len(fills)),
        fill_times=np.array([f.candle_time for f in fills], dtype=np.int64),
        fill_prices=np.array([float(f.price) for f in fills], dtype=np.float64),
    )


def equity_figure(result: BacktestResult, curve: EquityCurve, title: str) -> Figure:
    """The figure ``equity.png`` is made of (separate so tests can look at what it holds)."""
    return figure(chart_data(result, curve, title))


def write_equity_png(path: Path, result: BacktestResult, curve: EquityCurve, title: str) -> None:
    write_png(path, chart_data(result, curve, title))


def spare_core() -> bool:
    """Whether a CPU is idle enough for the chart process to run beside the evaluation."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cpus >= 2
    return cpus >= 2 and cpus - load >= SPARE_CPU


class BackgroundChart:
    """``equity.png`` drawn by a child process started now: :meth:`send` hands it the data,
    :meth:`finish` waits for the file (drawing it here if the child could not);
    :meth:`cancel` if there is nothing to draw after all. With ``spawn=False`` there is no child:
    :meth:`finish` draws here."""

    COMMAND = (sys.executable, "-m", "tradebotd.backtest.chart")  # + the PNG's path

    def __init__(self, path: Path, *, spawn: bool = True) -> None:
        self.path = path
        self.fallback_reason: str | None = None  # why the child failed, if it did (then drawn here)
        self._data: ChartData | None = None
        self._child: subprocess.Popen[bytes] | None = None
        # Its errors go to a file, not a pipe: a pipe it filled could block it before it reads.
        self._errors = tempfile.TemporaryFile()
        if not spawn:
            return
        try:
            self._child = subprocess.Popen(
                [*self.COMMAND, str(path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._errors,
            )
        except OSError as exc:
            self._child = None
            self.fallback_reason = f"could not start the chart process: {exc}"

    def send(self, data: ChartData) -> None:
        """Hand over the data (the child draws while the caller goes on)."""
        self._data = data
        child = self._child
        if child is None or child.stdin is None:
            return
        try:
            child.stdin.write(data.to_bytes())
            child.stdin.close()
        except OSError as exc:  # it died before reading all of it (a broken pipe)
            self._fail(child, f"{exc}")

    def finish(self) -> None:
        """Wait until equity.png is written."""
        child, self._child = self._child, None
        if child is not None:
            self._close_stdin(child)
            child.wait()
            if child.returncode == 0 and self.path.exists():
                self._errors.close()
                return
            self._errors.seek(0)
            lines = self._errors.read().decode(errors="replace").strip().splitlines()
            self.fallback_reason = f"the chart process failed ({child.returncode}): {lines[-1] if lines else ''}"
        self._errors.close()
        if self._data is not None:
            write_png(self.path, self._data)

    @staticmethod
    def _close_stdin(child: subprocess.Popen[bytes]) -> None:
        if child.stdin is not None and not child.stdin.closed:
            try:
                child.stdin.close()
            except OSError:
                pass

    def _fail(self, child: subprocess.Popen[bytes], why: str) -> None:
        child.kill()
        self._close_stdin(child)
        child.wait()
        self._child = None
        self.fallback_reason = f"the chart process failed: {why}"

    def cancel(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            self._close_stdin(child)  # EOF without data: the child exits without drawing
            child.wait()
        self._errors.close()

    def __del__(self) -> None:
        child = getattr(self, "_child", None)
        if child is not None and child.poll() is None:
            child.kill()
            self._close_stdin(child)
            child.wait()
