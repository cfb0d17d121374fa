"""Candle helpers shared by the sandbox tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from tradebotd.sandbox import JsStrategy

MIN = 60_000  # 1m candles

Candle = tuple[float, float, float, float, float, float]
MakeStrategy = Callable[..., JsStrategy]


def candle(i: int, close: float = 100.0) -> Candle:
    """Candle number i: open time i minutes, the given close."""
    return (float(i * MIN), close, close + 1, close - 1, close, 10.0)


def candles(start: int, n: int, close: float = 100.0) -> npt.NDArray[np.float64]:
    return np.array([candle(i, close + i) for i in range(start, start + n)], dtype=np.float64)
