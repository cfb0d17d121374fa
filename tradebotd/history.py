"""Recent closed candles per stream, kept twice: exactly (the ``Candle`` values the broker and
the store are given, packed) and as a float64 ``(n, 6)`` array (time, open, high, low, close,
volume) that warms up a strategy in one copy. Bounded: the oldest candles fall off.

The exact values are packed as integer coefficient and exponent per price (a ``Decimal`` is its
coefficient times ten to its exponent): a ``Candle`` with five ``Decimal`` objects takes ≈670
bytes of Python heap, and a daemon with 150 streams of 500 candles held 50 MB of them for the
few it ever reads back (``after``). Unpacking gives equal ``Decimal`` values with the same
digits and exponent (the same ``str``); a candle whose values do not fit (a coefficient beyond
int64, a special value) is kept as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from .model import Candle

__all__ = ["CandleHistory"]

_INT64_MAX = (1 << 63) - 1
_EXP_MIN, _EXP_MAX = -128, 127


def _pack(value: Decimal) -> tuple[int, int] | None:
    """(signed coefficient, exponent) of a finite ``Decimal``, or None if it does not fit."""
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int) or not _EXP_MIN <= exponent <= _EXP_MAX or len(digits) > 18:
        return None
    coefficient = 0
    for digit in digits:
        coefficient = coefficient * 10 + digit
    if sign:
        if coefficient == 0:
            return None  # -0 has no signed-integer form
        coefficient = -coefficient
    return coefficient, exponent


def _unpack(coefficient: int, exponent: int) -> Decimal:
    return Decimal(f"{coefficient}E{exponent}")


class CandleHistory:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        # The exact candles: a ring of `capacity` slots, the oldest at `_head`.
        self._times = np.zeros(capacity, dtype=np.int64)
        self._coefficients = np.zeros((capacity, 5), dtype=np.int64)
        self._exponents = np.zeros((capacity, 5), dtype=np.int8)
        self._closed = np.zeros(capacity, dtype=np.bool_)
        self._unpacked: dict[int, Candle] = {}  # slot -> a candle kept as it is
        self._head = 0
        self._count = 0
        self._symbol = ""
        self._interval = ""
        # Twice the capacity so appends are O(1) amortised: shift only when the tail is reached.
        self._rows = np.zeros((2 * capacity, 6), dtype=np.float64)
        self._start = 0
        self._end = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Candle]:
        return iter(self._candles(0))

    @property
    def last_open_time(self) -> int | None:
        return int(self._times[(self._head + self._count - 1) % self.capacity]) if self._count else None

    @property
    def first_open_time(self) -> int | None:
        return int(self._times[self._head]) if self._count else None

    def extend(self, candles: Iterable[Candle]) -> None:
        for candle in candles:
            self.append(candle)

    def append(self, candle: Candle) -> None:
        """Add the next closed candle; older or duplicate open times are ignored."""
        last = self.last_open_time
        if last is not None and candle.open_time <= last:
            return
        self._store(candle)
        if self._end == len(self._rows):
            keep = self.capacity - 1
            self._rows[:keep] = self._rows[self._end - keep : self._end]
            self._start, self._end = 0, keep
        self._rows[self._end] = candle.as_floats()
        self._end += 1
        if self._end - self._start > self.capacity:
            self._start += 1

    def _store(self, candle: Candle) -> None:
        if self._count == self.capacity:  # the oldest falls off
            slot = self._head
            self._head = (self._head + 1) % self.capacity
        else:
            slot = (self._head + self._count) % self.capacity
            self._count += 1
        self._unpacked.pop(slot, None)
        self._times[slot] = candle.open_time
        self._closed[slot] = candle.closed
        if not self._symbol:
            self._symbol, self._interval = candle.symbol, candle.interval
        packed = [_pack(value) for value in (candle.open, candle.high, candle.low, candle.close, candle.volume)]
        if (
            candle.symbol != self._symbol
            or candle.interval != self._interval
            or any(p is None or abs(p[0]) > _INT64_MAX for p in packed)
        ):
            self._unpacked[slot] = candle
            return
        for field, p in enumerate(packed):
            assert p is not None
            self._coefficients[slot, field], self._exponents[slot, field] = p

    def _candle(self, slot: int) -> Candle:
        kept = self._unpacked.get(slot)
        if kept is not None:
            return kept
        coefficients = self._coefficients[slot].tolist()
        exponents = self._exponents[slot].tolist()
        o, h, lo, c, v = (_unpack(coefficients[i], exponents[i]) for i in range(5))
        return Candle(
            self._symbol, self._interval, int(self._times[slot]), o, h, lo, c, v, closed=bool(self._closed[slot])
        )

    def _candles(self, first: int) -> list[Candle]:
        """The candles from the ``first`` oldest on (0: all), oldest first."""
        return [self._candle((self._head + i) % self.capacity) for i in range(first, self._count)]

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
        times = np.concatenate((self._times[self._head :], self._times[: self._head]))[: self._count]
        return self._candles(int(np.searchsorted(times, open_time, side="right")))
