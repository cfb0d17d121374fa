"""Host-side copy of a strategy's candle history, so a rebuilt instance can be given it again.

Every strategy of a stream is given the same candles, and a daemon keeps a history per strategy
(a second one in the evaluation process of those that run there): 1,000 strategies on 150
streams held 1,000 copies of 150 distinct histories (25 KiB each at 500 candles). So a history
is kept as chunks of up to :data:`CHUNK` candles, and a chunk once complete is shared with
every history of the process that completed an identical one (same bytes: compared exactly,
never by float equality). With ``interval_ms`` given, chunks end at multiples of
``CHUNK * interval_ms`` of open time, so the histories of one stream line up whenever they
started; without, every :data:`CHUNK` candles.
"""

from __future__ import annotations

import bisect
import ctypes
import struct
import threading
import weakref
from collections import deque

import numpy as np
import numpy.typing as npt

__all__ = ["CHUNK", "History"]

CHUNK = 32  # candles per chunk (1.5 KiB); the incomplete newest chunk is each history's own
_CANDLE = struct.Struct("<6d")
_ROW_BYTES = 48

# Complete chunks by (first row's bytes, size): weak, so a chunk goes when the last history
# holding it drops it. The first row (open time and prices) tells one stream's chunk from another
# stream's of the same time; the whole chunk is then compared byte for byte before it is shared.
_chunks: weakref.WeakValueDictionary[tuple[bytes, int], npt.NDArray[np.float64]] = weakref.WeakValueDictionary()
_chunks_lock = threading.Lock()


def _shared(data: bytes) -> npt.NDArray[np.float64]:
    """A read-only (n, 6) array of ``data``, the process's existing one if it has the same bytes."""
    key = (data[:_ROW_BYTES], len(data))
    with _chunks_lock:
        chunk = _chunks.get(key)
        if chunk is not None and chunk.tobytes() == data:
            return chunk
        chunk = np.frombuffer(data, dtype=np.float64).reshape(-1, 6)  # read-only: it views bytes
        _chunks[key] = chunk
        return chunk


class History:
    """The newest ``capacity`` candles, shape (n, 6) float64, oldest first.

    ``append`` (one candle per ``step``, the hot path) packs the candle into the history's own
    newest chunk (``pack_into``: ≈0.3 µs, against ≈0.6 µs for a numpy row assignment); the
    oldest candles are dropped a chunk at a time, when a chunk completes.
    """

    __slots__ = ("_capacity", "_chunks", "_sealed", "_skip", "_span", "_tail", "_tail_buffer", "_tail_count",
                 "_tail_end", "_tail_start")

    def __init__(self, capacity: int, interval_ms: int | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._capacity = capacity
        self._span = CHUNK * interval_ms if interval_ms else 0  # open-time span of a chunk; 0: by count
        self._chunks: deque[npt.NDArray[np.float64]] = deque()  # complete chunks, shared
        self._sealed = 0  # rows in _chunks
        self._skip = 0  # rows of _chunks[0] that fell off
        self._tail_buffer = (ctypes.c_double * (CHUNK * 6))()
        self._tail: npt.NDArray[np.float64] = np.ctypeslib.as_array(self._tail_buffer).reshape(CHUNK, 6)
        self._tail_count = 0
        self._tail_start = self._tail_end = 0.0  # open times the tail's chunk covers: [start, end)

    def __len__(self) -> int:
        return min(self._sealed - self._skip + self._tail_count, self._capacity)

    def append(self, candle: tuple[float, ...]) -> None:
        count = self._tail_count
        time = candle[0]
        if count == 0 or count == CHUNK or not self._tail_start <= time < self._tail_end:
            if count:
                self._seal()
                count = 0
            self._open_tail(time)
        _CANDLE.pack_into(self._tail_buffer, _ROW_BYTES * count, *candle)
        self._tail_count = count + 1

    def extend(self, candles: npt.NDArray[np.float64]) -> None:
        rows = candles if candles.ndim == 2 else candles.reshape(-1, 6)
        if len(rows) > self._capacity:
            rows = rows[-self._capacity:]
        n = len(rows)
        times = rows[:, 0].tolist()  # Python floats: the checks below are per chunk, not per row
        i = 0
        while i < n:
            count = self._tail_count
            if count == 0 or count == CHUNK or not self._tail_start <= times[i] < self._tail_end:
                if count:
                    self._seal()
                    count = 0
                self._open_tail(times[i])
            j = min(n, i + CHUNK - count)
            # Candles come oldest first, so the chunk's rows are those before the first one at or
            # past the chunk's end (a row out of order only costs sharing, never correctness).
            if times[j - 1] >= self._tail_end:
                j = bisect.bisect_left(times, self._tail_end, i, j)
            self._tail[count:count + j - i] = rows[i:j]
            self._tail_count = count + j - i
            i = j

    def ordered(self) -> npt.NDArray[np.float64]:
        """The candles, oldest first (a copy)."""
        parts = [*self._chunks, self._tail[:self._tail_count]]
        rows = np.concatenate(parts)[self._skip:]
        return rows[-self._capacity:] if len(rows) > self._capacity else rows

    def _open_tail(self, time: float) -> None:
        if self._span:
            start = int(time) // self._span * self._span
            self._tail_start, self._tail_end = float(start), float(start + self._span)
        else:
            self._tail_start, self._tail_end = -np.inf, np.inf

    def _seal(self) -> None:
        """The tail becomes a complete (shared) chunk; whole chunks beyond the capacity go."""
        chunk = _shared(bytes(memoryview(self._tail_buffer).cast("B")[:_ROW_BYTES * self._tail_count]))
        self._chunks.append(chunk)
        self._sealed += len(chunk)
        self._tail_count = 0
        excess = self._sealed - self._skip - self._capacity
        while excess > 0:
            left = len(self._chunks[0]) - self._skip
            if excess < left:
                self._skip += excess
                return
            self._sealed -= len(self._chunks.popleft())
            self._skip = 0
            excess -= left
