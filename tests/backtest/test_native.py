"""Native wasm strategies in the backtest: the WAT SMA crossover gives the JS example's fills."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradebotd.backtest.bench import AMOUNT, FAST, PARAMETERS, SLOW, PythonSmaCross, synthetic_candles
from tradebotd.backtest.runner import BacktestSettings, run_backtest
from tradebotd.backtest.strategy import declared_lookback
from tradebotd.sandbox.js import JsStrategy

native = pytest.importorskip("tradebotd.sandbox.native")

ROOT = Path(__file__).resolve().parents[2]
WAT = ROOT / "strategies_wasm" / "sma_cross.wat"
JS = ROOT / "tradebotd" / "examples" / "sma_crossover.js"


def test_wasm_js_and_python_sma_crossovers_fill_identically() -> None:
    table = synthetic_candles(5_000, seed=7)
    settings = BacktestSettings(warmup=21)
    wasm = native.WasmStrategy(WAT.read_text(), parameters=PARAMETERS, interval_ms=60_000)
    assert declared_lookback("", wasm) == 21  # tb_lookback: slow + 1
    runs = {
        "wasm": run_backtest(wasm, table, settings),
        "js": run_backtest(JsStrategy(JS.read_text(), parameters=PARAMETERS, interval_ms=60_000), table, settings),
        "python": run_backtest(PythonSmaCross(fast=FAST, slow=SLOW, amount=AMOUNT), table, settings),
    }
    fills = {name: [(f.side, f.candle_time, f.price, f.amount) for f in r.fills] for name, r in runs.items()}
    assert len(fills["js"]) > 100
    assert fills["wasm"] == fills["js"] == fills["python"]
