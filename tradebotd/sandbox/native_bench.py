"""Native strategy benchmark: ``python -m tradebotd.sandbox.native_bench`` (or :func:`main`).

Measures, for the SMA crossover (fast 5, slow 20) written in WAT and in AssemblyScript (when
``strategies_wasm/assemblyscript/sma_cross.wasm`` exists), with the default limits and the epoch
ticker running, on synthetic candles:

* ``step`` median / p99 with 200 and 500 candles of history, next to a plain-Python SMA
  crossover (the floor: the same decisions, no sandbox) measured in the same run,
* ``run_until_signal`` throughput over 100,000 candles, driven like the backtest runner drives
  it (batches that grow from 64 candles after each signal, the position flipping at every
  signal),
* compiling and loading the WAT strategy.

Targets: step median under 3x the Python floor; batch over 500,000 candles/s.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tradebotd.model import Decision, IndicatorValue, Position
from tradebotd.sandbox.js import SandboxLimits
from tradebotd.sandbox.native import WasmStrategy
from tradebotd.sandbox.wasm import WasmRuntime

__all__ = ["TARGETS", "PythonSmaCross", "main", "run", "synthetic_candles"]

ROOT = Path(__file__).resolve().parents[2]
WAT_PATH = ROOT / "strategies_wasm" / "sma_cross.wat"
AS_PATH = ROOT / "strategies_wasm" / "assemblyscript" / "sma_cross.wasm"
PARAMETERS = {"fast": 5, "slow": 20, "amount": 0.001}
INTERVAL_MS = 60_000
BATCH_CANDLES = 100_000
FIRST_BATCH, MAX_BATCH = 64, 16_384  # as tradebotd.backtest.runner

Candle = tuple[float, float, float, float, float, float]


def synthetic_candles(n: int, seed: int = 1) -> npt.NDArray[np.float64]:
    """A random walk around 100: (time, open, high, low, close, volume) rows, 1m apart."""
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(0, 0.5, n))
    open_ = np.concatenate(([100.0], close[:-1]))
    spread = np.abs(rng.normal(0, 0.3, n))
    return np.column_stack([
        np.arange(n, dtype=np.float64) * INTERVAL_MS, open_,
        np.maximum(open_, close) + spread, np.minimum(open_, close) - spread, close,
        rng.uniform(1, 10, n),
    ])


class PythonSmaCross:
    """``tradebotd/examples/sma_crossover.js`` in plain Python: the floor a sandboxed strategy
    is compared with. History as a list of closes, SMAs summed over slices like the JS (up to
    Python 3.11, ``sum`` adds floats in order, so the averages are bit-identical)."""

    def __init__(self, *, fast: int, slow: int, amount: float, capacity: int = 1000) -> None:
        self.fast, self.slow, self.amount, self.capacity = fast, slow, amount, capacity
        self.closes: list[float] = []

    def step(self, candle: Candle, position: Position | None) -> Decision:
        closes = self.closes
        closes.append(candle[4])
        if len(closes) > self.capacity:
            del closes[0]
        n, fast, slow = len(closes), self.fast, self.slow
        if n < slow + 1:
            return Decision(signal="hold", reason="warming up")
        fast_now = sum(closes[n - fast:]) / fast
        slow_now = sum(closes[n - slow:]) / slow
        fast_prev = sum(closes[n - 1 - fast:n - 1]) / fast
        slow_prev = sum(closes[n - 1 - slow:n - 1]) / slow
        indicators: dict[str, IndicatorValue] = {"fastSma": fast_now, "slowSma": slow_now}
        if position is None and fast_prev <= slow_prev and fast_now > slow_now:
            return Decision(signal="buy", amount=self.amount, reason="fast SMA crossed above slow SMA",
                            indicators=indicators)
        if position is not None and fast_prev >= slow_prev and fast_now < slow_now:
            return Decision(signal="sell", reason="fast SMA crossed below slow SMA", indicators=indicators)
        return Decision(signal="hold", indicators=indicators)


def _timed(fn: Callable[[Candle], object], rows: list[Candle]) -> list[float]:
    """Wall time of ``fn(row)`` per row in µs, GC disabled while timing."""
    times = []
    gc.collect()
    gc.disable()
    try:
        for row in rows:
            started = time.perf_counter_ns()
            fn(row)
            times.append((time.perf_counter_ns() - started) / 1000)
    finally:
        gc.enable()
    return times


def _step_latency(step: Callable[[Candle], object], push: Callable[[npt.NDArray[np.float64]], object],
                  history: int, steps: int) -> tuple[float, float]:
    """(median, p99) of ``step`` after ``history`` candles were pushed and 500 warm-up steps."""
    series = synthetic_candles(history + 500 + steps, seed=history)
    push(series[:history])
    rows: list[Candle] = [tuple(row) for row in series[history:].tolist()]
    for row in rows[:500]:
        step(row)
    times = _timed(step, rows[500:])
    return statistics.median(times), float(np.percentile(times, 99))


def _python_floor(history: int, steps: int) -> tuple[float, float]:
    strategy = PythonSmaCross(fast=5, slow=20, amount=0.001, capacity=history)

    def push(candles: npt.NDArray[np.float64]) -> None:
        for row in candles.tolist():
            strategy.step(tuple(row), None)

    return _step_latency(lambda row: strategy.step(row, None), push, history, steps)


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
    **{f"{name}_step_{history}_vs_python": 3.0 for name in ("wat", "as") for history in (200, 500)},
}
FLOORS = {f"{name}_batch_candles_per_s": 500_000.0 for name in ("wat", "as")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="native wasm strategy benchmark")
    parser.add_argument("--steps", type=int, default=20_000, help="timed steps per history size")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = run(args.steps)
    for name, value in results.items():
        verdict = ""
        if name in TARGETS:
            verdict = "  ok" if value < TARGETS[name] else f"  MISSED (target < {TARGETS[name]:g})"
        elif name in FLOORS:
            verdict = "  ok" if value > FLOORS[name] else f"  MISSED (target > {FLOORS[name]:,.0f})"
        print(f"{name:34} {value:14,.3f}{verdict}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
