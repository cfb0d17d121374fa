"""Native strategy benchmark: ``python -m bench.sandbox_native`` (or :func:`main`).

Measures, for the SMA crossover (fast 5, slow 20) written in WAT and in AssemblyScript (when
``strategies_wasm/assemblyscript/sma_cross.wasm`` exists), with the default limits and the epoch
ticker running, on synthetic candles:

* ``step`` median / p99 with 200 and 500 candles of history, next to the plain-Python SMA
  crossover (:mod:`tradebotd.examples.reference`: the floor, the same decisions without a
  sandbox) measured in the same run,
* ``run_until_signal`` throughput over 100,000 candles, driven like the backtest runner drives
  it (batches that grow from 64 candles after each signal, the position flipping at every
  signal),
* compiling and loading the WAT strategy.

Targets: step median under 3x the Python floor; batch over 500,000 candles/s.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tradebotd.examples.reference import SmaCrossover
from tradebotd.examples.synthetic import synthetic_candles
from tradebotd.model import Position
from tradebotd.sandbox.native import WasmStrategy
from tradebotd.sandbox.sandboxed import Candle, SandboxLimits
from tradebotd.sandbox.wasm import WasmRuntime

from .harness import Target, bench_main, median_p99, timed_us

__all__ = ["TARGETS", "main", "run"]

ROOT = Path(__file__).resolve().parents[1]
WAT_PATH = ROOT / "strategies_wasm" / "sma_cross.wat"
AS_PATH = ROOT / "strategies_wasm" / "assemblyscript" / "sma_cross.wasm"
PARAMETERS = {"fast": 5, "slow": 20, "amount": 0.001}
INTERVAL_MS = 60_000
BATCH_CANDLES = 100_000
FIRST_BATCH, MAX_BATCH = 64, 16_384  # as tradebotd.backtest.runner


def _step_latency(step: Callable[[Candle], object], push: Callable[[npt.NDArray[np.float64]], object],
                  history: int, steps: int) -> tuple[float, float]:
    """(median, p99) of ``step`` after ``history`` candles were pushed and 500 warm-up steps."""
    series = synthetic_candles(history + 500 + steps, seed=history)
    push(series[:history])
    rows: list[Candle] = [tuple(row) for row in series[history:].tolist()]
    for row in rows[:500]:
        step(row)
    return median_p99(timed_us(step, rows[500:]))


def _python_floor(history: int, steps: int) -> tuple[float, float]:
    strategy = SmaCrossover(fast=5, slow=20, amount=0.001, max_candles=history)
    return _step_latency(lambda row: strategy.step(row, None), strategy.push_history, history, steps)


def _native_step(source: bytes | str, runtime: WasmRuntime, history: int, steps: int) -> tuple[float, float]:
    strategy = WasmStrategy(source, parameters=PARAMETERS, interval_ms=INTERVAL_MS,
                            limits=SandboxLimits(max_candles=history), runtime=runtime)
    try:
        return _step_latency(lambda row: strategy.step(row, None), strategy.push_history, history, steps)
    finally:
        strategy.close()


def _batch(source: bytes | str, runtime: WasmRuntime) -> tuple[float, int]:
    """(candles/s, signals) of run_until_signal over BATCH_CANDLES, as the backtest runner calls it."""
    strategy = WasmStrategy(source, parameters=PARAMETERS, interval_ms=INTERVAL_MS, runtime=runtime)
    series = synthetic_candles(BATCH_CANDLES, seed=7)
    signals, done, batch = 0, 0, FIRST_BATCH
    position: Position | None = None
    started = time.perf_counter()
    while done < len(series):
        consumed, decision = strategy.run_until_signal(series[done:done + batch], position)
        done += consumed
        batch = min(2 * batch, MAX_BATCH)
        if decision is not None:
            signals += 1
            batch = FIRST_BATCH
            entry = series[done - 1]
            opened = Position(Decimal("0.001"), Decimal(repr(float(entry[4]))), int(entry[0]))
            position = opened if decision.signal == "buy" else None
    elapsed = time.perf_counter() - started
    strategy.close()
    return len(series) / elapsed, signals


def run(steps: int = 20_000) -> dict[str, float]:
    """Runs every measurement; returns name -> value (units in the name)."""
    results: dict[str, float] = {}
    runtime = WasmRuntime.shared()
    runtime.start_ticker()
    modules: dict[str, bytes | str] = {"wat": WAT_PATH.read_text()}
    if AS_PATH.is_file():
        modules["as"] = AS_PATH.read_bytes()

    def load(source: bytes | str) -> float:
        started = time.perf_counter()
        WasmStrategy(source, parameters=PARAMETERS, interval_ms=INTERVAL_MS, runtime=runtime).close()
        return (time.perf_counter() - started) * 1000

    wat = WAT_PATH.read_text()
    results["wat_compile_and_load_ms"] = load(wat + "\n;; not in the compiled-module cache yet")
    results["wat_load_ms"] = statistics.median(load(wat) for _ in range(50))

    for history in (200, 500):
        median, p99 = _python_floor(history, steps)
        results[f"python_step_{history}_median_us"], results[f"python_step_{history}_p99_us"] = median, p99
        for name, source in modules.items():
            median, p99 = _native_step(source, runtime, history, steps)
            results[f"{name}_step_{history}_median_us"], results[f"{name}_step_{history}_p99_us"] = median, p99
            results[f"{name}_step_{history}_vs_python"] = median / results[f"python_step_{history}_median_us"]
    for name, source in modules.items():
        rate, signals = _batch(source, runtime)
        results[f"{name}_batch_candles_per_s"] = rate
        results[f"{name}_batch_signals"] = signals
    return results


TARGETS = {
    **{f"{name}_step_{history}_vs_python": Target(3) for name in ("wat", "as") for history in (200, 500)},
    **{f"{name}_batch_candles_per_s": Target(500_000, below=False) for name in ("wat", "as")},
}


def main(argv: list[str] | None = None) -> int:
    steps = {"type": int, "default": 20_000, "help": "timed steps per history size"}
    return bench_main(
        argv, description="native wasm strategy benchmark", options={"--steps": steps},
        run=lambda args: run(args.steps), targets=TARGETS,
    )


if __name__ == "__main__":
    sys.exit(main())
