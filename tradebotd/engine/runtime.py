"""What the engine evaluates: strategy runtimes and the typed seams around them.

A runtime is a loaded strategy (a JS sandbox, a native wasm module, a runtime in an evaluation
process, a scripted test double). The engine and the backtest know them only through these
Protocols:

* :class:`StrategyRuntime`: history, one evaluation per closed candle, close;
* :class:`EvalReport`: what an evaluation reports besides its decision (time, console lines);
* :class:`BatchRuntime`: a runtime that evaluates many candles per call (backtests);
* :class:`GroupedRuntime`: a runtime evaluated together with others elsewhere (an evaluation
  process), through its :class:`StepGroup`.

The optional capabilities are ``runtime_checkable`` Protocols, checked once per strategy (when a
slot is made, when a backtest starts), never per candle: ``isinstance`` on a Protocol costs
microseconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ..model import Decision, Position, StreamKey
from ..store.base import StrategyRow

__all__ = [
    "BatchRuntime",
    "EvalReport",
    "Floats6",
    "GroupedRuntime",
    "RuntimeFactory",
    "StepCollect",
    "StepGroup",
    "StepOutcome",
    "StrategyRuntime",
    "sandbox_pool",
    "step",
    "step_all",
]

Floats6 = tuple[float, float, float, float, float, float]

WORKER_STACK_BYTES = 16 << 20
"""Native stack for sandbox worker threads: wasm needs max_wasm_stack (2 MiB) plus Python's."""


class EvalReport(Protocol):
    """What one evaluation reports besides its decision (``tradebotd.sandbox.EvalInfo``)."""

    @property
    def elapsed_us(self) -> float: ...

    @property
    def console(self) -> Sequence[tuple[str, str]]: ...


StepOutcome = tuple[Decision, EvalReport] | BaseException
"""A runtime's ``step`` result, or the exception it raised."""


class StrategyRuntime(Protocol):
    """A loaded strategy: the sandboxed JS instance, a native wasm module, ..."""

    def push_history(self, candles: npt.NDArray[np.float64]) -> None: ...

    def step(self, candle: Floats6, position: Position | None) -> tuple[Decision, EvalReport]: ...

    def close(self) -> None: ...


@runtime_checkable
class BatchRuntime(StrategyRuntime, Protocol):
    """A runtime that can evaluate many candles per call (backtests): push and evaluate each row
    in order, stopping after the first non-hold decision; returns (rows consumed, that decision)."""

    def run_until_signal(
        self, candles: npt.NDArray[np.float64], position: Position | None
    ) -> tuple[int, Decision | None]: ...


class StepCollect(Protocol):
    """One candle's work on its way to a group: call it to wait (blocking) for the outcomes, in
    order, or await :meth:`wait`; ``done`` says, without blocking, whether they are in (a call
    then returns at once). None of these raises: a failure is an exception in the list."""

    @property
    def done(self) -> bool: ...

    def __call__(self) -> list[StepOutcome]: ...

    async def wait(self) -> list[StepOutcome]: ...


class StepGroup(Protocol):
    """Runtimes evaluated together elsewhere (an evaluation process). ``begin`` sends one candle's
    work and returns its :class:`StepCollect`; it never raises."""

    def begin(self, work: Sequence[tuple[StrategyRuntime, Position | None]], floats: Floats6) -> StepCollect: ...


@runtime_checkable
class GroupedRuntime(StrategyRuntime, Protocol):
    """A runtime the engine evaluates through its group (one request per group and candle)."""

    @property
    def step_group(self) -> StepGroup: ...


RuntimeFactory = Callable[[StrategyRow, StreamKey], StrategyRuntime]


def sandbox_pool(threads: int) -> ThreadPoolExecutor:
    """Worker threads for sandbox calls, all started now with a known stack size (thread stack
    size is fixed at creation; wasm on a thread with too little native stack would crash)."""
    previous = threading.stack_size(WORKER_STACK_BYTES)
    try:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sandbox")
        barrier = threading.Barrier(threads)
        for future in [pool.submit(barrier.wait) for _ in range(threads)]:
            future.result()
    finally:
        threading.stack_size(previous)
    return pool


def step(runtime: StrategyRuntime, floats: Floats6, position: Position | None) -> StepOutcome:
    """One sandbox call; errors are returned, not raised, so a batch of calls always completes."""
    try:
        return runtime.step(floats, position)
    except Exception as exc:
        return exc


def step_all(work: Sequence[tuple[StrategyRuntime, Position | None]], floats: Floats6) -> list[StepOutcome]:
    """A worker thread's share of one candle's evaluations."""
    return [step(runtime, floats, position) for runtime, position in work]
