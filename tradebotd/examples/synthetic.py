"""Seeded synthetic candles for benchmarks and tests (not market data)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["FIRST_OPEN_TIME", "synthetic_candles"]

FIRST_OPEN_TIME = 1_700_000_040_000  # 2023-11-14 22:14 UTC, a whole minute


def synthetic_candles(n: int, seed: int = 1, *, interval_ms: int = 60_000) -> npt.NDArray[np.float64]:
    """``n`` rows of (open time, open, high, low, close, volume), ``interval_ms`` apart: a geometric
    random walk from 30,000 with 0.1 % moves and wicks. Prices are whole cents and volumes whole
    thousandths, so each float's ``repr`` is its exact decimal (a backtest's fills compare exactly)."""
    rng = np.random.default_rng(seed)
    close = np.round(30_000 * np.exp(np.cumsum(rng.normal(0, 0.001, n))), 2)
    open_ = np.concatenate(([30_000.0], close[:-1]))
    high = np.round(np.maximum(open_, close) + np.abs(rng.normal(0, 10, n)), 2)
    low = np.round(np.minimum(open_, close) - np.abs(rng.normal(0, 10, n)), 2)
    volume = np.round(rng.uniform(1, 10, n), 3)
    times = FIRST_OPEN_TIME + np.arange(n, dtype=np.float64) * interval_ms
    return np.column_stack([times, open_, high, low, close, volume])
