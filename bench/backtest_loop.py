"""Backtest throughput: ``python -m bench.backtest_loop [--candles N] [--csv FILE] [--json OUT]``.

The same SMA crossover (buy when the fast SMA of the closes crosses above the slow one, sell on the
cross below; 5/20 by default) runs three ways through the same backtest loop
(:func:`~tradebotd.backtest.runner.run_backtest`: batch evaluation, paper broker, orders through
``order_intent``), on the same candles, in one run:

* ``python``: the plain-Python edition (:mod:`tradebotd.examples.reference`), the reference point;
* ``js``: ``tradebotd/examples/sma_crossover.js`` in the QuickJS sandbox;
* ``wasm``: ``strategies_wasm/sma_cross.wat`` as a native wasm strategy (when the native sandbox
  is available).

All three sum oldest to newest and divide once, so they produce the same floats and must produce
the same fills; ``fills_identical`` checks it. Candles are synthetic (a seeded geometric random
walk with cent prices, :mod:`tradebotd.examples.synthetic`, so the bench needs no data files)
unless ``--csv`` names a ``time,open,high,low,close,volume`` file. Throughput is candles evaluated per second of the
evaluation loop (loading and outputs excluded). Targets: JS > 20,000 candles/s, native wasm
> 500,000 candles/s on 100,000 candles.

Where the time goes: between signals a candle costs well under a microsecond in wasm; each buy or
sell costs a fixed amount (the runtime call that returned it, a ``Candle``, ``order_intent`` and
the paper broker), reported as ``per_signal_us`` from a run with an instant scripted runtime.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tradebotd.backtest.runner import BacktestResult, BacktestSettings, run_backtest
from tradebotd.data.candles import CandleTable, read_csv
from tradebotd.engine import EvalReport, StrategyRuntime
from tradebotd.examples.reference import SmaCrossover
from tradebotd.examples.synthetic import synthetic_candles
from tradebotd.model import Decision, Position, StreamKey
from tradebotd.replay.series import names_from_path
from tradebotd.sandbox.js import JsStrategy

from .harness import Target, bench_main

__all__ = ["AMOUNT", "FAST", "PARAMETERS", "SLOW", "TARGETS", "main", "run", "synthetic_table"]

ROOT = Path(__file__).resolve().parents[1]
JS_SOURCE = ROOT / "tradebotd" / "examples" / "sma_crossover.js"
WAT_SOURCE = ROOT / "strategies_wasm" / "sma_cross.wat"
FAST, SLOW, AMOUNT = 5, 20, 0.01
PARAMETERS = {"fast": FAST, "slow": SLOW, "amount": AMOUNT}
KEY = StreamKey("BTCUSDT", "1m")
TARGETS = {"js_candles_per_s": Target(20_000, below=False), "wasm_candles_per_s": Target(500_000, below=False)}


def synthetic_table(n: int, seed: int = 1, key: StreamKey = KEY) -> CandleTable:
    """:func:`~tradebotd.examples.synthetic.synthetic_candles` as a table of ``key``."""
    return CandleTable.from_floats(key, synthetic_candles(n, seed, interval_ms=key.interval_ms))


class _Scripted:
    """Signals at fixed distances, instantly: what one signal costs outside the strategy."""

    def __init__(self, every: int) -> None:
        self.every, self.since = every, 0

    def push_history(self, candles: npt.NDArray[np.float64]) -> None:
        pass

    def step(self, candle: tuple[float, ...], position: Position | None) -> tuple[Decision, EvalReport]:
        raise NotImplementedError

    def run_until_signal(
        self, candles: npt.NDArray[np.float64], position: Position | None
    ) -> tuple[int, Decision | None]:
        need = self.every - self.since
        if need > len(candles):
            self.since += len(candles)
            return len(candles), None
        self.since = 0
        return need, Decision("sell" if position is not None else "buy", amount=0.01)

    def close(self) -> None:
        pass


def _settings() -> BacktestSettings:
    # Enough cash that no buy is ever refused: every signal becomes a fill in every runtime.
    return BacktestSettings(cash=Decimal(10) ** 12, warmup=SLOW + 1)


def _timed(make: Callable[[], StrategyRuntime], table: CandleTable) -> BacktestResult:
    runtime = make()
    try:
        return run_backtest(runtime, table, _settings())
    finally:
        runtime.close()


def _wasm_factory(interval_ms: int) -> Callable[[], StrategyRuntime] | None:
    try:
        from tradebotd.sandbox.native import WasmStrategy
    except ImportError:
        return None
    if not WAT_SOURCE.exists():
        return None
    source = WAT_SOURCE.read_text()
    return lambda: WasmStrategy(source, parameters=PARAMETERS, interval_ms=interval_ms)


def run(candles: int = 100_000, csv: Path | None = None) -> dict[str, Any]:
    """Every measurement on the same candles; returns name -> value (units in the names)."""
    if csv is not None:
        symbol, named_interval = names_from_path(csv)
        table = read_csv(csv, StreamKey(symbol or "BTCUSDT", named_interval or "1m")).first(candles)
    else:
        table = synthetic_table(candles)
    interval = table.key.interval_ms
    js_source = JS_SOURCE.read_text()
    makers: dict[str, Callable[[], StrategyRuntime] | None] = {
        "python": lambda: SmaCrossover(fast=FAST, slow=SLOW, amount=AMOUNT),
        "js": lambda: JsStrategy(js_source, parameters=PARAMETERS, interval_ms=interval),
        "wasm": _wasm_factory(interval),
    }
    results: dict[str, Any] = {"candles": len(table), "data": str(csv) if csv else "synthetic"}
    fills: dict[str, list[tuple[str, int, Decimal]]] = {}
    for name, make in makers.items():
        if make is None:
            results[f"{name}_candles_per_s"] = None
            continue
        result = _timed(make, table)
        results[f"{name}_candles_per_s"] = result.evaluated / result.elapsed_s
        results[f"{name}_evaluation_s"] = result.elapsed_s
        fills[name] = [(f.side, f.candle_time, f.price) for f in result.fills]
    reference = fills["python"]
    results["signals"] = len(reference)
    results["candles_per_signal"] = (len(table) - _settings().warmup + 1) / max(len(reference), 1)
    results["fills_identical"] = all(f == reference for f in fills.values())
    scripted = run_backtest(_Scripted(16), table, _settings())
    results["per_signal_us"] = scripted.elapsed_s / max(len(scripted.fills), 1) * 1e6
    return results


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        argv,
        prog="python -m bench.backtest_loop",
        description=__doc__.split("\n")[0],
        options={
            "--candles": {"type": int, "default": 100_000, "help": "candles to evaluate (default 100,000)"},
            "--csv": {"type": Path, "help": "candles from this CSV instead of synthetic ones"},
        },
        run=lambda args: run(args.candles, args.csv),
        targets=TARGETS,
    )


if __name__ == "__main__":
    sys.exit(main())
