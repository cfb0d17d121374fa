"""Rate budgets: how much may start when, as a sans-I/O value and a thin asyncio shell.

Binance limits a client IP in sliding or fixed windows (wire-protocols notes, sections 3.3 and 4):

- REST request weight, 6000 per minute (``/api/v3/klines`` costs 2, ``/api/v3/time`` 1); beyond
  it come 429s and then a 418 IP ban;
- new WebSocket connections, 300 per 5 minutes.

``SlidingWindow`` books a cost at the earliest moment when the window ending there still holds
at most ``capacity``, in the order asked (first come, first served). A sliding window is at least
as strict as Binance's per-minute counter, so any fixed minute stays within the budget too. It
has no clock: the time is passed in, so tests drive it with numbers.

``Pacer`` is the shell: ``await pacer.acquire(cost)`` returns when the booked moment has come on
its ``Clock``. The clock is injected so that tests run on a manual clock and assert on the
moments a stand-in recorded, never on wall-clock sleeps.

``SharedBudget`` is the IP's whole REST budget, which the feed shares with the other clients of
the same host (the exchange port's ``tradebotd.exchange.throttle.RequestBudget``): each request
also spends from it, and each answer is reported to it, so that a 429 or 418 the feed hears
holds back order traffic too, and the other way round. The feed's ``Pacer`` then caps only the
feed's part of that budget.

Errors: ``ValueError`` for a cost larger than the whole budget (it could never be granted).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from typing import Protocol

__all__ = ["Clock", "MonotonicClock", "Pacer", "SharedBudget", "SlidingWindow"]


class Clock(Protocol):
    """Monotonic seconds, and a way to wait for a moment on the same clock."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class SharedBudget(Protocol):
    """A host's request budget shared with other clients (see the module docstring)."""

    async def acquire(self, cost: float = 1.0) -> bool:
        """Wait until ``cost`` may be spent (also while the host has told us to stop)."""
        ...

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Learn from one answer: used weight, 429 / 418 with ``Retry-After``."""
        ...


class MonotonicClock:
    """The production clock: ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class SlidingWindow:
    """At most ``capacity`` (weight, or a count with cost 1) in any ``window_s`` seconds."""

    __slots__ = ("_booked", "_in_window", "_last", "capacity", "window_s")

    def __init__(self, capacity: float, window_s: float) -> None:
        if capacity <= 0 or window_s <= 0:
            raise ValueError("capacity and window_s must be > 0")
        self.capacity = capacity
        self.window_s = window_s
        self._booked: deque[tuple[float, float]] = deque()  # (moment, cost), oldest first
        self._in_window = 0.0  # sum of the costs in _booked
        self._last = float("-inf")  # bookings never go back in time: first come, first served

    def reserve(self, cost: float, now: float) -> float:
        """Book ``cost`` and return the moment (>= ``now``) it may be spent."""
        if not 0 <= cost <= self.capacity:
            raise ValueError(f"cost {cost} does not fit a budget of {self.capacity}")
        at = max(now, self._last)
        while True:
            # A booking at t counts in every window (s - window_s, s] with t in it, so it stops
            # counting at t + window_s.
            while self._booked and self._booked[0][0] <= at - self.window_s:
                self._in_window -= self._booked.popleft()[1]
            if self._in_window + cost <= self.capacity:
                break
            at = self._booked[0][0] + self.window_s
        self._booked.append((at, cost))
        self._in_window += cost
        self._last = at
        return at

    def used(self, now: float) -> float:
        """Cost booked in the window ending at ``now`` (bookings ahead of ``now`` included)."""
        return sum(cost for moment, cost in self._booked if moment > now - self.window_s)


class Pacer:
    """``acquire(cost)`` waits until ``cost`` fits the budget. Shared by every task that spends
    from the same budget (all REST fetches of a feed; all its connection attempts)."""

    def __init__(self, capacity: float, window_s: float, *, clock: Clock | None = None) -> None:
        self.window = SlidingWindow(capacity, window_s)
        self.clock: Clock = clock or MonotonicClock()
        self.granted = 0  # acquisitions that have returned (the request may go now)
        self.waited = 0  # ... of which had to wait for the budget

    async def acquire(self, cost: float = 1.0) -> bool:
        """Wait until ``cost`` may be spent; True if the budget made us wait."""
        now = self.clock.now()
        at = self.window.reserve(cost, now)
        waited = at > now
        if waited:
            self.waited += 1
            # Cancelled while waiting, the booking stays spent: conservative, and simple.
            await self.clock.sleep_until(at)
        self.granted += 1
        return waited
