"""Evaluation scheduling: one closed candle's evaluations, spread over the event loop's thread,
worker threads and evaluation processes, settled in a deterministic order.

:meth:`Evaluator.begin` starts a candle's evaluations and returns its :class:`Round` at once:
each evaluation process has been sent its share (the child starts on it while the daemon goes
on) and the daemon's own share is evaluated. The engine settles a round when it is ``ready``,
so the daemon can start the next candle (another stream closing at the same minute) while the
processes still evaluate this one.

Settling (turning an outcome into records and orders) always happens on the event loop's thread,
one strategy at a time, in this order: strategies evaluated here, then each evaluation process's
share; or, with worker threads, in slot order. Cash is spent in settlement order, so when it runs
short the same strategies get their orders every time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from ..model import Position
from .runtime import Floats6, StepCollect, StepGroup, StepOutcome, StrategyRuntime, sandbox_pool, step, step_all

__all__ = ["PARALLEL_MIN_STRATEGIES", "Evaluator", "Round"]

PARALLEL_MIN_STRATEGIES = 4
"""Below this many strategies on a candle, handing work to threads costs more than it saves."""

Settle = Callable[[int, StepOutcome], None]


class Round:
    """One candle's evaluations under way: the outcomes evaluated here, and the shares on their
    way to evaluation processes (``remote``) or worker threads (``threads``)."""

    __slots__ = ("_local", "_remote", "_threads")

    def __init__(
        self,
        local: list[tuple[int, StepOutcome]],
        remote: Sequence[tuple[list[int], StepCollect]] = (),
        threads: Sequence[tuple[int, asyncio.Future[list[StepOutcome]]]] = (),
    ) -> None:
        self._local = local
        self._remote = remote
        self._threads = threads

    @property
    def remote(self) -> bool:
        """Part of the work is in evaluation processes (the engine need not wait for it)."""
        return bool(self._remote)

    @property
    def ready(self) -> bool:
        """Every outcome is in: :meth:`settle` does not block."""
        return all(collect.done for _, collect in self._remote) and all(f.done() for _, f in self._threads)

    async def wait(self) -> None:
        """Until :attr:`ready`, without blocking the event loop."""
        for _, collect in self._remote:
            await collect.wait()
        if self._threads:
            await asyncio.gather(*(future for _, future in self._threads))

    def settle(self, settle: Settle) -> None:
        """``settle(i, outcome)`` for every evaluation, in the order the module docstring
        describes (blocking for outcomes not in yet: await :meth:`wait` first to avoid that)."""
        for i, outcome in self._local:
            settle(i, outcome)
        for members, collect in self._remote:
            for i, outcome in zip(members, collect(), strict=True):
                settle(i, outcome)
        for start, future in self._threads:
            for i, outcome in enumerate(future.result(), start=start):
                settle(i, outcome)


class Evaluator:
    """``threads`` > 1: evaluate a candle's strategies in that many threads (wasm releases the
    GIL; each instance is used by one thread at a time)."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._pool = sandbox_pool(threads - 1) if threads > 1 else None

    def begin(
        self,
        work: Sequence[tuple[StrategyRuntime, Position | None]],
        groups: Sequence[StepGroup | None],
        floats: Floats6,
    ) -> Round:
        """Start evaluating ``work[i]`` (``groups[i]``: its evaluation process, if any) on one
        candle: each process is sent its share first, then the share of this thread is
        evaluated. Worker threads need a running event loop."""
        grouped: dict[StepGroup, list[int]] = {}
        for i, group in enumerate(groups):
            if group is not None:
                grouped.setdefault(group, []).append(i)
        if grouped:
            remote = [(members, group.begin([work[i] for i in members], floats)) for group, members in grouped.items()]
            local = [(i, step(runtime, floats, position)) for i, (runtime, position) in enumerate(work)
                     if groups[i] is None]
            return Round(local, remote)
        if self._pool is None or len(work) < PARALLEL_MIN_STRATEGIES:
            return Round(list(enumerate(step_all(work, floats))))
        # The event loop's thread evaluates the first share itself while the workers evaluate
        # theirs: a strategy's position only changes in its own settlement, so this overlap
        # changes nothing.
        loop = asyncio.get_running_loop()
        size = -(-len(work) // self.threads)
        threads = [
            (start, loop.run_in_executor(self._pool, step_all, work[start : start + size], floats))
            for start in range(size, len(work), size)
        ]
        return Round(list(enumerate(step_all(work[:size], floats))), threads=threads)

    async def evaluate(
        self,
        work: Sequence[tuple[StrategyRuntime, Position | None]],
        groups: Sequence[StepGroup | None],
        floats: Floats6,
        settle: Settle,
    ) -> None:
        """Evaluate ``work`` on one candle (:meth:`begin`) and call ``settle(i, outcome)`` for
        each, in the order the module docstring describes."""
        round_ = self.begin(work, groups, floats)
        if not round_.ready:
            await round_.wait()
        round_.settle(settle)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
