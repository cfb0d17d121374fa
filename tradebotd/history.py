"""Recent closed candles per stream, kept twice: as ``Candle`` values (exact, for the broker and
the store) and as a float64 ``(n, 6)`` array (time, open, high, low, close, volume) that warms
up a strategy in one copy. Bounded: the oldest candles fall off.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from .model import Candle

__all__ = ["CandleHistory"]


class CandleHistory:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._candles: deque[Candle] = deque(maxlen=capacity)
        # Twice the capacity so appends are O(1) amortised: shift only when the tail is reached.
        self._rows = np.zeros((2 * capacity, 6), dtype=np.float64)
        self._start = 0
        self._end = 0

    def __len__(self) -> int:
        return len(self._candles)

    def __iter__(self) -> Iterator[Candle]:
        return iter(self._candles)

    @property
    def last_open_time(self) -> int | None:
        return self._candles[-1].open_time if self._candles else None

    @property
    def first_open_time(self) -> int | None:
        return self._candles[0].open_time if self._candles else None

    def extend(self, candles: Iterable[Candle]) -> None:
        for candle in candles:
            self.append(candle)

    def append(self, candle: Candle) -> None:
        """Add the next closed candle; older or duplicate open times are ignored."""
        last = self.last_open_time
        if last is not None and candle.open_time <= last:
            return
        self._candles.append(candle)
        if self._end == len(self._rows):
            keep = self.capacity - 1
            self._rows[:keep] = self._rows[self._end - keep : self._end]
            self._start, self._end = 0, keep
        self._rows[self._end] = candle.as_floats()
        self._end += 1
        if self._end - self._start > self.capacity:
            self._start += 1

    def rows(self, up_to_open_time: int | None = None) -> npt.NDArray[np.float64]:
        """A read-only view of the rows, oldest first, optionally only up to an open time."""
        view = self._rows[self._start : self._end]
        if up_to_open_time is not None:
            count = int(np.searchsorted(view[:, 0], float(up_to_open_time), side="right"))
            view = view[:count]
        view = view.view()
        view.flags.writeable = False
        return view

    def after(self, open_time: int) -> list[Candle]:
        """Candles with an open time after ``open_time``, oldest first."""
        return [c for c in self._candles if c.open_time > open_time]
