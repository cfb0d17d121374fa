"""Evaluation scheduling: one closed candle's evaluations, spread over the event loop's thread,
worker threads and evaluation processes, settled in a deterministic order.

Settling (turning an outcome into records and orders) always happens on the event loop's thread,
one strategy at a time, in this order: strategies evaluated here, then each evaluation process's
share; or, with worker threads, in slot order. Cash is spent in settlement order, so when it runs
short the same strategies get their orders every time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from ..model import Position
from .runtime import Floats6, StepGroup, StepOutcome, StrategyRuntime, sandbox_pool, step, step_all

__all__ = ["PARALLEL_MIN_STRATEGIES", "Evaluator"]

PARALLEL_MIN_STRATEGIES = 4
"""Below this many strategies on a candle, handing work to threads costs more than it saves."""

Settle = Callable[[int, StepOutcome], None]


class Evaluator:
    """``threads`` > 1: evaluate a candle's strategies in that many threads (wasm releases the
    GIL; each instance is used by one thread at a time)."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._pool = sandbox_pool(threads - 1) if threads > 1 else None

    async def evaluate(
        self,
        work: Sequence[tuple[StrategyRuntime, Position | None]],
        groups: Sequence[StepGroup | None],
        floats: Floats6,
        settle: Settle,
    ) -> None:
        """Evaluate ``work[i]`` (``groups[i]``: its evaluation process, if any) on one candle and
        call ``settle(i, outcome)`` for each, in the order the module docstring describes."""
        grouped: dict[StepGroup, list[int]] = {}
        for i, group in enumerate(groups):
            if group is not None:
                grouped.setdefault(group, []).append(i)
        if grouped:
            # Send each process its share, then evaluate and settle ours meanwhile, then settle theirs.
            collects = [
                (members, group.begin([work[i] for i in members], floats)) for group, members in grouped.items()
            ]
            for i, (runtime, position) in enumerate(work):
                if groups[i] is None:
                    settle(i, step(runtime, floats, position))
            for members, collect in collects:
                for i, outcome in zip(members, collect(), strict=True):
                    settle(i, outcome)
            return
        if self._pool is None or len(work) < PARALLEL_MIN_STRATEGIES:
            for i, outcome in enumerate(step_all(work, floats)):
                settle(i, outcome)
            return
        # The event loop's thread evaluates the first share itself and settles it while the
        # workers are still evaluating theirs: a strategy's position only changes in its own
        # settlement, so this overlap changes nothing.
        loop = asyncio.get_running_loop()
        size = -(-len(work) // self.threads)
        shares = [work[i : i + size] for i in range(0, len(work), size)]
        others = [loop.run_in_executor(self._pool, step_all, share, floats) for share in shares[1:]]
        first = step_all(shares[0], floats)
        for i, outcome in enumerate(first):
            settle(i, outcome)
        rest = [outcome for share in await asyncio.gather(*others) for outcome in share]
        for i, outcome in enumerate(rest, start=len(first)):
            settle(i, outcome)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
