"""``equity.png``: buy-and-hold beside the equity curve, and readable with hundreds of trades
(one shaded band for the time in a position, markers that shrink, one legend entry per kind)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from tradebotd.backtest.metrics import buy_and_hold, equity_curve
from tradebotd.backtest.plot import MAX_MARKED_FILLS, equity_figure, marker_size, write_equity_png
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
