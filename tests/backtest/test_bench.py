"""The backtest benchmark runs on its own synthetic candles (no data files) and its three SMA
implementations agree."""

from __future__ import annotations

from bench import backtest_loop as bench


def test_bench_runs_and_its_strategies_agree() -> None:
    results = bench.run(candles=3_000)
    assert results["candles"] == 3_000 and results["data"] == "synthetic"
    assert results["signals"] > 50
    assert results["fills_identical"] is True
    for name in ("python", "js"):
        assert results[f"{name}_candles_per_s"] > 0
    assert results["per_signal_us"] > 0
