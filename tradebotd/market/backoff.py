"""Exponential backoff with jitter, as a value: ``Backoff(...).delay(attempt, rng)``.

websockets 15 has its own reconnect loop, but its delays can only be tuned through
``WEBSOCKETS_BACKOFF_*`` environment variables (``reconnect_delays=`` arrived in 17.0, which the
supabase pin excludes), and it logs in its own words. The feed needs configurable delays (tests
use milliseconds) and one line of its own per retry, so it runs its own loop with this policy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """``initial_s * factor**(attempt-1)``, capped at ``max_s``, then scaled by a random factor in
    ``[1 - jitter, 1]`` so that many daemons cut off together do not reconnect in lockstep."""

    initial_s: float = 1.0
    max_s: float = 60.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 <= self.initial_s <= self.max_s and self.factor >= 1 and 0 <= self.jitter <= 1):
            raise ValueError(f"invalid backoff {self}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        exponent = min(max(attempt - 1, 0), 64)  # 2.0**64 is finite; the cap applies long before
        base = min(self.max_s, self.initial_s * self.factor**exponent)
        return base * (1.0 - self.jitter * rng.random())
