"""Native wasm strategies in the backtest: the WAT SMA crossover gives the JS example's fills."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.backtest_loop import AMOUNT, FAST, PARAMETERS, SLOW, synthetic_table
from tradebotd.backtest.cli import main
from tradebotd.backtest.runner import BacktestSettings, run_backtest
from tradebotd.backtest.strategy import declared_lookback, load_strategy
from tradebotd.config import SandboxSettings
from tradebotd.examples.reference import SmaCrossover
from tradebotd.replay.series import format_csv
from tradebotd.sandbox.js import JsStrategy

native = pytest.importorskip("tradebotd.sandbox.native")

ROOT = Path(__file__).resolve().parents[2]
WAT = ROOT / "strategies_wasm" / "sma_cross.wat"
JS = ROOT / "tradebotd" / "examples" / "sma_crossover.js"


def test_wasm_js_and_python_sma_crossovers_fill_identically() -> None:
    table = synthetic_table(5_000, seed=7)
    settings = BacktestSettings(warmup=21)
    wasm = native.WasmStrategy(WAT.read_text(), parameters=PARAMETERS, interval_ms=60_000)
    assert declared_lookback("", wasm) == 21  # tb_lookback: slow + 1
    runs = {
        "wasm": run_backtest(wasm, table, settings),
        "js": run_backtest(JsStrategy(JS.read_text(), parameters=PARAMETERS, interval_ms=60_000), table, settings),
        "python": run_backtest(SmaCrossover(fast=FAST, slow=SLOW, amount=AMOUNT), table, settings),
    }
    fills = {name: [(f.side, f.candle_time, f.price, f.amount) for f in r.fills] for name, r in runs.items()}
    assert len(fills["js"]) > 100
    assert fills["wasm"] == fills["js"] == fills["python"]


def test_the_backtest_command_runs_a_wat_file_with_its_declared_lookback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = synthetic_table(2_000, seed=3)
    data = tmp_path / "BTCUSDT_1m.csv"
    data.write_text(format_csv([table.candle(i) for i in range(len(table))]))
    params = [f"--param={k}={v}" for k, v in PARAMETERS.items()]
    loaded = load_strategy(WAT, key=table.key, parameters=PARAMETERS, sandbox=SandboxSettings())
    loaded.runtime.close()
    assert loaded.lookback == 21
    assert main(["--strategy", str(WAT), "--data", str(data), *params, "--json"]) == 0
    wasm = json.loads(capsys.readouterr().out)
    assert main(["--strategy", str(JS), "--data", str(data), *params, "--warmup", "21", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert wasm["warmup"] == 21 and wasm["fills"] == js["fills"] > 20
    assert wasm["final_cash"] == js["final_cash"]
