"""Issue 4: backtest throughput on 100,000 candles, JS and native wasm beside plain Python.

Runs :mod:`bench.backtest_loop`: the same SMA crossover through the same backtest loop
(batch evaluation, paper broker) in three runtimes on the same candles, fills checked identical.
"""

from __future__ import annotations

from pathlib import Path

from . import backtest_loop as backtest_bench
from .rows import Row

SECTION = "backtest throughput (issue 4)"


def run(data: Path | None, *, candles: int = 100_000) -> list[Row]:
    results = backtest_bench.run(candles, data)
    note = f"{results['candles']:,} candles ({results['data']}), {results['signals']} signals"
    rows = [Row(SECTION, "plain Python SMA, same loop", results["python_candles_per_s"], "candles/s", note=note)]
    for name, label, target in (("js", "JS SMA", 20_000.0), ("wasm", "native wasm (WAT) SMA", 500_000.0)):
        value = results.get(f"{name}_candles_per_s")
        if value is None:
            continue
        rows.append(Row(SECTION, label, value, "candles/s", target=target, higher_is_better=True))
    rows.append(Row(SECTION, "fixed cost per buy/sell (order path)", results["per_signal_us"], "us"))
    rows.append(
        Row(
            SECTION,
            "fills identical across runtimes",
            1.0 if results["fills_identical"] else 0.0,
            "bool",
            target=0.5,
            higher_is_better=True,
        )
    )
    return rows
