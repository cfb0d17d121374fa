"""``equity.png``: buy-and-hold beside the equity curve, and readable with hundreds of trades
(one shaded band for the time in a position, markers that shrink, one legend entry per kind)."""

from __future__ import annotations

import itertools
import os
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from tradebotd.backtest.chart import ChartData
from tradebotd.backtest.metrics import buy_and_hold, equity_curve
from tradebotd.backtest.plot import (
    MAX_MARKED_FILLS,
    BackgroundChart,
    chart_data,
    envelope,
    equity_figure,
    marker_size,
    spare_core,
    write_equity_png,
)
from tradebotd.backtest.runner import BacktestResult, BacktestSettings, run_backtest

from .conftest import scripted, table


def alternating(candles: int) -> BacktestResult:
    """Buy on one candle, sell on the next: a fill per candle, half of them round trips."""
    lines = [f"{i} 100 110 90 {100 + i % 5} {1 if i % 2 else 2}" for i in range(candles)]
    runtime = scripted(amount=0.01)
    try:
        return run_backtest(runtime, table(*lines), BacktestSettings(cash=Decimal(10_000)))
    finally:
        runtime.close()


def test_hundreds_of_trades_stay_readable_and_buy_and_hold_is_beside_equity(tmp_path: Path) -> None:
    result = alternating(1_200)  # 600 round trips
    assert len(result.fills) == 1_199
    curve = equity_curve(result)
    figure = equity_figure(result, curve, "many")
    price_ax, equity_ax, _ = figure.axes
    labels = [t.get_text() for t in price_ax.get_legend().get_texts()]
    assert labels == ["close", "in a position", "buy", "sell (signal)"]  # per kind, never per trade
    markers = [c for c in price_ax.collections if c.get_label() in ("buy", "sell (signal)")]
    assert len(markers) == 2 and all(m.get_sizes()[0] == marker_size(1_199) < 36 for m in markers)
    assert marker_size(10) == 36 and marker_size(100) == pytest.approx(36 * 40 / 100)  # shrinking ...
    assert marker_size(1_199) == 4.0  # ... down to a dot
    band = [c for c in price_ax.collections if c.get_label() == "in a position"]
    assert len(band) == 1  # one artist for the 600 holding periods
    lines = {line.get_label(): line for line in equity_ax.get_lines()}
    assert np.array_equal(lines["buy and hold"].get_ydata(), buy_and_hold(result))
    assert np.array_equal(lines["strategy"].get_ydata(), curve.equity)
    assert buy_and_hold(result)[0] == 10_000 and buy_and_hold(result)[-1] == pytest.approx(10_000 * 104 / 100)
    write_equity_png(tmp_path / "e.png", result, curve, "many")
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_beyond_the_marker_limit_only_the_band_is_drawn() -> None:
    result = alternating(MAX_MARKED_FILLS + 2)
    figure = equity_figure(result, equity_curve(result), "more")
    price_ax = figure.axes[0]
    assert [c.get_label() for c in price_ax.collections] == ["in a position"]
    assert price_ax.get_title() == f"more — {len(result.fills):,} fills: shaded, not marked"


def test_every_label_fits_in_the_fixed_margins() -> None:
    """The chart has fixed margins, not a layout solver: the widest labels it gets (7-digit prices
    and equity, a long title) must still lie inside the figure."""
    lines = [f"{i} 1500000 1650000 1400000 {1500000 + 1000 * (i % 7)} {1 if i % 2 else 2}" for i in range(400)]
    runtime = scripted(amount=5)
    try:
        result = run_backtest(runtime, table(*lines), BacktestSettings(cash=Decimal(9_000_000)))
    finally:
        runtime.close()
    figure = equity_figure(result, equity_curve(result), "a_strategy_with_a_long_name.js on BTCUSDT/5m (199 trades)")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    inside = figure.bbox
    # Each panel with all it draws (title, tick labels, axis labels, offset texts, legend).
    boxes = [ax.get_tightbbox(renderer) for ax in figure.axes]
    for box in boxes:
        assert box is not None
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, box
    for upper, lower in itertools.pairwise(boxes):  # and none reaches into the panel below
        assert upper is not None and lower is not None and lower.y1 <= upper.y0 + 1, (upper, lower)


def test_a_long_series_is_drawn_as_its_envelope_per_column() -> None:
    rng = np.random.default_rng(7)
    y = rng.normal(size=10_000).cumsum()
    x = np.arange(10_000) * 60_000
    ex, ey = envelope(x, y, columns=100)
    assert len(ex) <= 2 * 100 + 2 and ex[0] == x[0] and ex[-1] == x[-1]
    assert np.all(np.diff(ex) > 0)  # in their order, none twice
    for run in np.array_split(np.arange(10_000), 100):  # each column's lowest and highest point is kept
        assert y[run].min() in ey and y[run].max() in ey
    assert set(ey) <= set(y)
    short_x, short_y = envelope(x[:200], y[:200], columns=100)
    assert np.array_equal(short_x, x[:200]) and np.array_equal(short_y, y[:200])  # as many as columns show


def test_the_band_drawn_from_run_ends_is_the_band_drawn_from_every_candle() -> None:
    # In a position for 1, 2, 3, ... candles, out of it for 3.
    lines, minute = [], 0
    for held in range(1, 30):
        for volume in [1] + [4] * (held - 1) + [2] + [4] * 3:
            lines.append(f"{minute} 100 110 90 {100 + minute % 7} {volume}")
            minute += 1
    runtime = scripted(amount=0.01)
    try:
        result = run_backtest(runtime, table(*lines), BacktestSettings(cash=Decimal(10_000)))
    finally:
        runtime.close()
    assert len(result.fills) == 2 * 29
    figure = equity_figure(result, equity_curve(result), "band")
    band = next(c for c in figure.axes[0].collections if c.get_label() == "in a position")
    from matplotlib.figure import Figure

    held = equity_curve(result).amount[1:] > 0
    times = result.table.values[result.first_evaluated :, 0].astype("datetime64[ms]")
    ax = Figure().subplots()
    full = ax.fill_between(times, 0, 1, where=held, step="post", transform=ax.get_xaxis_transform())
    # The same polygons: the same outline, the full one with extra points along its straight edges.
    ours = [p.get_extents().bounds for p in band.get_paths()]
    theirs = [p.get_extents().bounds for p in full.get_paths()]
    assert len(ours) == len(theirs) == 29
    assert ours == theirs
    assert sum(len(p.vertices) for p in band.get_paths()) < sum(len(p.vertices) for p in full.get_paths())


def _chart(result: BacktestResult) -> ChartData:
    return chart_data(result, equity_curve(result), "background")


def test_chart_data_crosses_a_pipe_unchanged() -> None:
    data = _chart(alternating(50))
    again = ChartData.from_bytes(data.to_bytes())
    assert again.title == "background" and again.cash == 10_000
    for name in ("times", "closes", "held", "curve_times", "equity", "buy_and_hold", "drawdown", "fill_kinds",
                 "fill_times", "fill_prices"):
        assert np.array_equal(getattr(again, name), getattr(data, name)), name
    assert list(again.fill_kinds[:2]) == ["buy", "sell"]


def test_the_background_process_draws_equity_png(tmp_path: Path) -> None:
    chart = BackgroundChart(tmp_path / "equity.png")
    chart.send(_chart(alternating(200)))
    chart.finish()
    assert chart.fallback_reason is None
    assert (tmp_path / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_the_background_process_the_chart_is_drawn_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BackgroundChart, "COMMAND", (str(tmp_path / "no-such-python"),))
    chart = BackgroundChart(tmp_path / "a.png")
    chart.send(_chart(alternating(20)))
    chart.finish()
    assert chart.fallback_reason is not None and chart.fallback_reason.startswith("could not start")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    script = "import sys; sys.stdin.buffer.read(); print('no luck', file=sys.stderr); sys.exit(3)"
    failing = (sys.executable, "-c", script)
    monkeypatch.setattr(BackgroundChart, "COMMAND", failing)
    chart = BackgroundChart(tmp_path / "b.png")
    chart.send(_chart(alternating(20)))
    chart.finish()
    assert chart.fallback_reason == "the chart process failed (3): no luck"
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cancelled_chart_draws_nothing(tmp_path: Path) -> None:
    chart = BackgroundChart(tmp_path / "equity.png")
    chart.cancel()
    assert not (tmp_path / "equity.png").exists()


def test_without_a_spare_core_the_chart_is_drawn_here(tmp_path: Path) -> None:
    chart = BackgroundChart(tmp_path / "equity.png", spawn=False)
    chart.send(_chart(alternating(20)))
    assert not (tmp_path / "equity.png").exists()  # not before finish(): after the report
    chart.finish()
    assert chart.fallback_reason is None
    assert (tmp_path / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("cpus", "load", "spare"), [(2, 0.2, True), (2, 1.5, True), (2, 1.6, False), (1, 0.0, False),
                                                     (4, 3.4, True), (4, 3.6, False)])
def test_a_spare_core_is_half_a_cpu_left_by_the_load_average(
    monkeypatch: pytest.MonkeyPatch, cpus: int, load: float, spare: bool
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert spare_core() is spare
