"""Evaluation scheduling: one closed candle's evaluations, spread over the event loop's thread,
worker threads and evaluation processes, settled in a deterministic order.

:meth:`Evaluator.begin` starts a candle's evaluations and returns its :class:`Round` at once:
each evaluation process has been handed its share (the child starts on it while the daemon goes
on). When part of the work went to processes, the daemon's own share is evaluated later, by
:meth:`Round.evaluate_local` or when the round is settled: so at a minute boundary the daemon
first hands every candle's share to the processes, keeping them busy, and evaluates its own
while they evaluate theirs. The engine settles a round when it is ``ready``, so the daemon can
start the next candle (another stream closing at the same minute) while the processes still
evaluate this one. Every evaluation of a round uses the positions given to :meth:`Evaluator.begin`,
wherever and whenever it runs.

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

    __slots__ = ("_floats", "_local", "_remote", "_threads", "_todo")

    def __init__(
        self,
        local: list[tuple[int, StepOutcome]],
        remote: Sequence[tuple[list[int], StepCollect]] = (),
        threads: Sequence[tuple[int, asyncio.Future[list[StepOutcome]]]] = (),
        *,
        todo: Sequence[tuple[int, StrategyRuntime, Position | None]] = (),
        floats: Floats6 | None = None,
    ) -> None:
        self._local = local
        self._remote = remote
        self._threads = threads
        self._todo = list(todo)  # the daemon's own share, not evaluated yet (on ``floats``)
        self._floats = floats

    @property
    def local_pending(self) -> bool:
        """The daemon's own share is still to be evaluated (:meth:`evaluate_local`)."""
        return bool(self._todo)

    def evaluate_local(self) -> None:
        """Evaluates the daemon's own share now, if it is still to be (settling does it too)."""
        todo, self._todo = self._todo, []
        floats = self._floats
        for i, runtime, position in todo:
            assert floats is not None
            self._local.append((i, step(runtime, floats, position)))

    @property
    def remote(self) -> bool:
        """Part of the work is in evaluation processes (the engine need not wait for it)."""
        return bool(self._remote)

    @property
    def ready(self) -> bool:
        """Every outcome from elsewhere is in: :meth:`settle` does not block (it may still
        evaluate the daemon's own share)."""
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
        self.evaluate_local()
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
        candle: each process is handed its share, and the share of this thread is left to the
        round (:meth:`Round.evaluate_local`); without processes, the share of this thread is
        evaluated now, the rest in worker threads. Worker threads need a running event loop."""
        grouped: dict[StepGroup, list[int]] = {}
        for i, group in enumerate(groups):
            if group is not None:
                grouped.setdefault(group, []).append(i)
        if grouped:
            remote = [(members, group.begin([work[i] for i in members], floats)) for group, members in grouped.items()]
            todo = [(i, runtime, position) for i, (runtime, position) in enumerate(work) if groups[i] is None]
            return Round([], remote, todo=todo, floats=floats)
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
