"""Host-side copy of a strategy's candle history, so a rebuilt instance can be given it again."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["History"]


class History:
    """Ring buffer of the newest ``capacity`` candles, shape (n, 6) float64."""

    __slots__ = ("_count", "_next", "_rows")

    def __init__(self, capacity: int) -> None:
        self._rows = np.zeros((capacity, 6), dtype=np.float64)
        self._next = 0  # row the next candle goes to
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, candle: tuple[float, ...]) -> None:
        self._rows[self._next] = candle
        self._next = (self._next + 1) % len(self._rows)
        self._count = min(self._count + 1, len(self._rows))

    def extend(self, candles: npt.NDArray[np.float64]) -> None:
        capacity = len(self._rows)
        candles = candles[-capacity:]
        n = len(candles)
        if n == 0:
            return
        first = min(n, capacity - self._next)
        self._rows[self._next:self._next + first] = candles[:first]
        self._rows[:n - first] = candles[first:]
        self._next = (self._next + n) % capacity
        self._count = min(self._count + n, capacity)

    def ordered(self) -> npt.NDArray[np.float64]:
        """The candles, oldest first (a copy)."""
        if self._count < len(self._rows):
            return self._rows[:self._count].copy()
        return np.concatenate((self._rows[self._next:], self._rows[:self._next]))
