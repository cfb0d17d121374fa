"""Host-side copy of a strategy's candle history, so a rebuilt instance can be given it again."""

from __future__ import annotations

import ctypes
import struct

import numpy as np
import numpy.typing as npt

__all__ = ["History"]

_PENDING = 16  # single candles buffered before they move into the ring (768 bytes per history:
# a daemon keeps one history per strategy, twice for those in evaluation processes)
_CANDLE = struct.Struct("<6d")


class History:
    """Ring buffer of the newest ``capacity`` candles, shape (n, 6) float64.

    ``append`` (one candle per ``step``, the hot path) packs the candle into a small buffer that
    moves into the ring in bulk: a numpy row assignment from a tuple costs ≈0.6 µs, ``pack_into``
    ≈0.3 µs. Everything else sees the buffered candles as if they were in the ring.
    """

    __slots__ = ("_count", "_next", "_pending", "_pending_buffer", "_pending_count", "_rows")

    def __init__(self, capacity: int) -> None:
        self._rows = np.zeros((capacity, 6), dtype=np.float64)
        self._next = 0  # row the next candle goes to
        self._count = 0
        self._pending_buffer = (ctypes.c_double * (_PENDING * 6))()
        self._pending: npt.NDArray[np.float64] = np.ctypeslib.as_array(self._pending_buffer).reshape(_PENDING, 6)
        self._pending_count = 0

    def __len__(self) -> int:
        self._flush()
        return self._count

    def append(self, candle: tuple[float, ...]) -> None:
        _CANDLE.pack_into(self._pending_buffer, 48 * self._pending_count, *candle)
        self._pending_count += 1
        if self._pending_count == _PENDING:
            self._flush()

    def extend(self, candles: npt.NDArray[np.float64]) -> None:
        self._flush()
        self._extend(candles)

    def ordered(self) -> npt.NDArray[np.float64]:
        """The candles, oldest first (a copy)."""
        self._flush()
        if self._count < len(self._rows):
            return self._rows[:self._count].copy()
        return np.concatenate((self._rows[self._next:], self._rows[:self._next]))

    def _flush(self) -> None:
        if self._pending_count:
            count, self._pending_count = self._pending_count, 0
            self._extend(self._pending[:count])

    def _extend(self, candles: npt.NDArray[np.float64]) -> None:
        n, at = len(candles), self._next
        capacity = len(self._rows)
        if 0 < n < capacity - at:  # the usual batch: fits before the ring wraps (0.4 µs, not 1.2)
            self._rows[at:at + n] = candles
            self._next = at + n
            if self._count < capacity:
                self._count = min(self._count + n, capacity)
            return
        candles = candles[-capacity:]
        n = len(candles)
        if n == 0:
            return
        first = min(n, capacity - self._next)
        self._rows[self._next:self._next + first] = candles[:first]
        self._rows[:n - first] = candles[first:]
        self._next = (self._next + n) % capacity
        self._count = min(self._count + n, capacity)
