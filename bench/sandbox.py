"""Issue 3: the sandbox. Per-evaluation time at 200 and 500 candles of history for the same SMA
crossover as plain Python (the floor), JS, TypeScript, WAT and AssemblyScript; memory and load
time of JS instances; a healthy strategy's evaluation time beside misbehaving neighbours.

Reuses the benchmark modules beside it (``bench.sandbox_js``, ``.sandbox_native``,
``.sandbox_isolation``); the example strategy (``tradebotd/examples/sma_crossover.js`` / ``.ts``)
is what the JS and TS rows run.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from tradebotd.examples.synthetic import synthetic_candles
from tradebotd.sandbox.js import JsStrategy
from tradebotd.sandbox.sandboxed import SandboxLimits
from tradebotd.sandbox.typescript import erase_types
from tradebotd.sandbox.wasm import WasmRuntime

from . import sandbox_isolation as isolation_bench
from . import sandbox_js as js_bench
from . import sandbox_native as native_bench
from .rows import Row

EXAMPLES = Path(__file__).resolve().parents[1] / "tradebotd" / "examples"
PARAMETERS = {"fast": 5, "slow": 20, "amount": 0.001}
STEP = "per evaluation (issue 3)"
MEMORY = "instances (issue 3)"
ISOLATION = "isolation (issue 3)"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _memory_per_instance(source: str, history: int, count: int = 100) -> tuple[float, float]:
    """RSS growth per instance (MiB) with ``count`` example strategies holding ``history`` candles,
    and the time to load them all (s)."""
    rows = synthetic_candles(history + 5)
    gc.collect()
    before = _rss_bytes()
    started = time.perf_counter()
    fleet = [
        JsStrategy(source, parameters=PARAMETERS, interval_ms=60_000, limits=SandboxLimits(max_candles=history))
        for _ in range(count)
    ]
    loaded = time.perf_counter() - started
    for strategy in fleet:
        strategy.push_history(rows[:history])
        for row in rows[history:].tolist():
            strategy.step(tuple(row), None)
    gc.collect()
    per_instance = (_rss_bytes() - before) / count / (1 << 20)
    for strategy in fleet:
        strategy.close()
    return per_instance, loaded


def run(steps: int = 5000) -> list[Row]:
    rows: list[Row] = []
    runtime = WasmRuntime.shared()
    js_source = (EXAMPLES / "sma_crossover.js").read_text()
    ts_source = erase_types((EXAMPLES / "sma_crossover.ts").read_text())
    native = native_bench.run()
    for history in (200, 500):
        floor = native[f"python_step_{history}_median_us"]
        rows.append(Row(STEP, f"plain Python SMA, {history} candles, median", floor, "us", note="the floor"))
        for label, source in (("JS", js_source), ("TypeScript", ts_source)):
            median, p99 = js_bench._step_latency(runtime, history, steps, source, PARAMETERS)
            strict = label == "JS" and history == 200
            rows.append(
                Row(
                    STEP,
                    f"{label} SMA, {history} candles, median",
                    median,
                    "us",
                    target=60.0 if strict else None,
                    note="limits on" if strict else "",
                )
            )
            rows.append(Row(STEP, f"{label} SMA, {history} candles, p99", p99, "us", target=200.0 if strict else None))
        for name, label in (("wat", "WAT"), ("as", "AssemblyScript")):
            if f"{name}_step_{history}_median_us" not in native:
                continue
            rows.append(
                Row(STEP, f"{label} SMA, {history} candles, median", native[f"{name}_step_{history}_median_us"], "us")
            )
            rows.append(
                Row(
                    STEP,
                    f"{label} SMA, {history} candles, x plain Python",
                    native[f"{name}_step_{history}_vs_python"],
                    "x",
                    target=3.0,
                )
            )
    for name, label in (("wat", "WAT"), ("as", "AssemblyScript")):
        if f"{name}_batch_candles_per_s" in native:
            rows.append(
                Row(
                    STEP,
                    f"{label} batch (run_until_signal), 100k candles",
                    native[f"{name}_batch_candles_per_s"],
                    "candles/s",
                )
            )

    js = js_bench.run(steps=2000)
    for history in (200, 500):
        rows.append(
            Row(
                STEP,
                f"JS minimal SMA (bare hold results), {history} candles, median",
                js[f"step_{history}_median_us"],
                "us",
                note="bench.sandbox_js.SMA_CROSS",
            )
        )
    rows.append(Row(MEMORY, "compiled module load from cache", js["module_load_from_cache_ms"], "ms"))
    rows.append(Row(MEMORY, "compile (cold cache, once per wasmtime version)", js["module_compile_cold_ms"], "ms"))
    rows.append(Row(MEMORY, "instantiate + load one JS strategy", js["instantiate_load_ms"], "ms"))
    for history in (200, 500):
        per_instance, loaded = _memory_per_instance(js_source, history)
        rows.append(
            Row(MEMORY, f"RSS per JS instance, 100 instances, {history} candles each", per_instance, "MiB", target=0.5)
        )
        if history == 500:
            rows.append(Row(MEMORY, "load 100 JS strategies", loaded, "s", target=1.0))

    iso = isolation_bench.run()
    rows.append(Row(ISOLATION, "healthy strategy alone, median", iso["baseline_median_us"], "us"))
    for kind in isolation_bench.NEIGHBOURS:
        rows.append(Row(ISOLATION, f"beside a neighbour that {kind}s: median", iso[f"{kind}_median_us"], "us"))
        rows.append(Row(ISOLATION, f"beside a neighbour that {kind}s: x alone", iso[f"{kind}_ratio"], "x", target=2.0))
    return rows
