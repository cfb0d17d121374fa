"""Sandbox benchmark: ``python -m bench.sandbox_js`` (or ``main()`` from ``make bench``).

Measures, for a 20-period SMA-cross JS strategy with the default limits (interrupt deadline,
memory cap, epoch backstop ticker running), on synthetic candles:

* module load from the ``.cwasm`` cache (and the one-off compile when the cache is cold),
* instantiate + load of one strategy, and of 100 strategies,
* RSS per instance with 100 instances holding 200 candles each,
* ``step`` median / p99 with 200 and 500 candles of history, and ``run_until_signal`` per candle,
* ``step`` median / p99 of the example strategy (``tradebotd/examples/sma_crossover.js``, 200
  candles), which returns indicators on every candle as real strategies tend to: the result
  validation shows there (the SMA cross above mostly returns a bare hold).

Targets: step median < 60 µs and p99 < 200 µs at 200 candles; < 0.5 MiB per instance;
100 strategies loaded in < 1 s once the module is cached.
"""

from __future__ import annotations

import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

from tradebotd.examples.synthetic import synthetic_candles
from tradebotd.model import Position
from tradebotd.sandbox.js import JsStrategy
from tradebotd.sandbox.sandboxed import Candle, SandboxLimits
from tradebotd.sandbox.wasm import WasmRuntime, default_cache_dir

from .harness import Target, bench_main, median_p99, timed_us

__all__ = ["SMA_CROSS", "main", "run"]

SMA_CROSS = """
function sma(candles, period, end) {
  let sum = 0;
  for (let i = end - period; i < end; i++) sum += candles[i].close;
  return sum / period;
}
function tradingStrategy({candles, currentPrice, position, parameters}) {
  const n = candles.length, period = parameters.period;
  if (n < period + 1) return {signal: 'hold'};
  const now = sma(candles, period, n), before = sma(candles, period, n - 1);
  const previousClose = candles[n - 2].close;
  if (!position && previousClose <= before && currentPrice > now) {
    return {signal: 'buy', amount: 1, reason: 'price crossed above SMA', indicators: {sma: now}};
  }
  if (position && previousClose >= before && currentPrice < now) {
    return {signal: 'sell', reason: 'price crossed below SMA', indicators: {sma: now}};
  }
  return {signal: 'hold'};
}
"""
PARAMETERS = {"period": 20}
INTERVAL_MS = 60_000
EXAMPLE = Path(__file__).resolve().parents[1] / "tradebotd" / "examples" / "sma_crossover.js"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _step_latency(
    runtime: WasmRuntime,
    history: int,
    steps: int,
    source: str = SMA_CROSS,
    parameters: Mapping[str, object] = PARAMETERS,
) -> tuple[float, float]:
    series = synthetic_candles(history + steps + 100)
    strategy = JsStrategy(source, parameters=parameters, interval_ms=INTERVAL_MS,
                          limits=SandboxLimits(max_candles=history), runtime=runtime)
    strategy.push_history(series[:history])
    rows: list[Candle] = [tuple(row) for row in series[history:].tolist()]
    for row in rows[:100]:  # warm-up
        strategy.step(row, None)
    times = timed_us(lambda row: strategy.step(row, None), rows[100:])
    strategy.close()
    return median_p99(times)


def run(steps: int = 5000) -> dict[str, float]:
    """Runs every measurement; returns name -> value (units in the name)."""
    results: dict[str, float] = {}
    cache_dir = default_cache_dir()
    started = time.perf_counter()
    WasmRuntime(cache_dir=cache_dir).stop_ticker()  # compiles and fills the cache if cold
    results["module_first_load_ms"] = (time.perf_counter() - started) * 1000
    with tempfile.TemporaryDirectory() as cold:
        started = time.perf_counter()
        WasmRuntime(cache_dir=Path(cold)).stop_ticker()
        results["module_compile_cold_ms"] = (time.perf_counter() - started) * 1000
    loads = timed_us(lambda _: WasmRuntime(cache_dir=cache_dir).stop_ticker(), range(20))
    results["module_load_from_cache_ms"] = statistics.median(loads) / 1000

    runtime = WasmRuntime(cache_dir=cache_dir)
    history = synthetic_candles(200)

    def new_strategy() -> JsStrategy:
        return JsStrategy(SMA_CROSS, parameters=PARAMETERS, interval_ms=INTERVAL_MS, runtime=runtime)

    new_strategy().close()  # first instance: ticker thread, lazy imports
    results["instantiate_load_ms"] = statistics.median(timed_us(lambda _: new_strategy().close(), range(50))) / 1000

    gc.collect()
    before = _rss_bytes()
    started = time.perf_counter()
    fleet = [new_strategy() for _ in range(100)]
    results["load_100_strategies_s"] = time.perf_counter() - started
    for i, strategy in enumerate(fleet):
        strategy.push_history(history)
        for row in synthetic_candles(5, seed=i).tolist():
            strategy.step(tuple(row), None)
    gc.collect()
    results["rss_per_instance_mib"] = (_rss_bytes() - before) / 100 / (1 << 20)
    results["linear_memory_per_instance_mib"] = fleet[0].memory_bytes / (1 << 20)
    for strategy in fleet:
        strategy.close()
    del fleet

    for size in (200, 500):
        median, p99 = _step_latency(runtime, size, steps)
        results[f"step_{size}_median_us"] = median
        results[f"step_{size}_p99_us"] = p99
    example = EXAMPLE.read_text()
    median, p99 = _step_latency(runtime, 200, steps, example, {"fast": 5, "slow": 20})
    results["example_step_200_median_us"], results["example_step_200_p99_us"] = median, p99

    batch = JsStrategy(SMA_CROSS, parameters=PARAMETERS, interval_ms=INTERVAL_MS,
                       limits=SandboxLimits(max_candles=200), runtime=runtime)
    series = synthetic_candles(20_200)
    batch.push_history(series[:200])
    started = time.perf_counter()
    done, position = 200, None
    while done < len(series):  # a backtest: flip between flat and long at every signal
        consumed, decision = batch.run_until_signal(series[done:], position)
        done += consumed
        if decision is not None:
            entry = series[done - 1]
            opened = Position(Decimal(1), Decimal(str(entry[4])), int(entry[0]))
            position = opened if decision.signal == "buy" else None
    results["run_until_signal_per_candle_us"] = (time.perf_counter() - started) / 20_000 * 1e6
    batch.close()
    runtime.stop_ticker()
    return results


TARGETS = {
    "step_200_median_us": Target(60),
    "step_200_p99_us": Target(200),
    "rss_per_instance_mib": Target(0.5),
    "load_100_strategies_s": Target(1),
}


def main(argv: list[str] | None = None) -> int:
    steps = {"type": int, "default": 5000, "help": "timed steps per history size"}
    return bench_main(
        argv, description="JS sandbox benchmark", options={"--steps": steps}, run=lambda args: run(args.steps),
        targets=TARGETS,
    )


if __name__ == "__main__":
    sys.exit(main())
