"""Isolation benchmark: does a misbehaving neighbour slow a healthy strategy down?

``python -m bench.sandbox_isolation`` prints the table; ``run()`` returns it as a dict
for ``make bench`` (``tests/test_isolation.py`` checks the same neighbours for decisions and errors, not times).

Set-up, as in the daemon: one process, one :class:`WasmRuntime` (Engine, compiled module, epoch
ticker) shared by a healthy 20-period SMA-cross strategy (200 candles of history) and one
neighbour per kind, each in its own instance:

* ``loop``      ``while (true) {}`` on every candle: stopped by the interrupt deadline, rebuilt;
* ``allocate``  allocates small objects until its heap limit stops it, rebuilt;
* ``recurse``   unbounded recursion: a RangeError, instance reused;
* ``throw``     throws on every candle.

What is compared is the healthy strategy's own evaluation time (``EvalInfo.elapsed_us``, host
side included) with and without a neighbour: the interference that goes through the shared
process (CPU caches after a neighbour spun or filled its heap, the allocator, Python's GC,
instance rebuilds, the epoch ticker).

Cadence matters more than anything a neighbour does: evaluated back to back, a strategy's step
takes ~25 µs on the reference machine, but ~85 µs once 7 ms have passed since its last one, whether
the CPU slept or did unrelated Python work in between (its code and data are no longer in the CPU
caches; after an idle pause the CPU also has to wake up: ~140 µs). In the daemon a strategy runs
once per closed candle, so it is always in that situation. Every healthy evaluation here therefore
ends a fixed *slot* (``slot_ms``) that starts with the neighbour's call (none for the baseline) and
is filled up with a busy wait, so the CPU is equally awake in every phase. Baseline and neighbour
phases then differ only in what ran before the healthy strategy, never in timing or CPU state.
Phases alternate in rounds (baseline, loop, allocate, ..., baseline, loop, ...) so that a change
in machine load hits every phase alike; figures are medians and 99th percentiles over all rounds.

Not measured here: the *delay* a neighbour adds before the healthy strategy is even called when
both are evaluated one after the other. That is the neighbour's own evaluation time, reported as
``<kind>_neighbour_call_us`` (bounded by its deadline, and by ``max_consecutive_errors`` in the
engine, which then disables it).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from tradebotd.errors import StrategyError
from tradebotd.examples.synthetic import synthetic_candles
from tradebotd.sandbox.js import JsStrategy
from tradebotd.sandbox.sandboxed import Candle, SandboxLimits
from tradebotd.sandbox.wasm import WasmRuntime

from .harness import Target, bench_main, median_p99
from .sandbox_js import INTERVAL_MS, PARAMETERS, SMA_CROSS

__all__ = ["NEIGHBOURS", "IsolationResult", "Timing", "main", "measure", "run"]

NEIGHBOURS: dict[str, tuple[str, SandboxLimits]] = {
    # Tight limits keep a run short: a misbehaving call costs its deadline (or a filled heap).
    "loop": ("function tradingStrategy() { while (true) {} }", SandboxLimits(timeout_ms=2)),
    "allocate": (
        "function tradingStrategy() { const a = []; for (;;) a.push({n: a.length}); }",
        SandboxLimits(timeout_ms=1000, memory_bytes=1 << 20),  # stopped by the heap, not the clock
    ),
    "recurse": (
        "function dive(n) { return dive(n + 1) + 1; }\nfunction tradingStrategy() { return dive(0); }",
        SandboxLimits(timeout_ms=50),
    ),
    "throw": (
        "function tradingStrategy() { throw new Error('broken on every candle'); }",
        SandboxLimits(timeout_ms=50),
    ),
}
"""Kind -> (source, limits). Every neighbour call takes well under ``SLOT_MS`` (~2-4 ms at most,
a rebuild included)."""

SLOT_MS = 8.0
HISTORY = 200


@dataclass(frozen=True, slots=True)
class Timing:
    median_us: float
    p99_us: float
    samples: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Timing:
        return cls(*median_p99(samples), len(samples))


@dataclass(frozen=True, slots=True)
class IsolationResult:
    baseline: Timing  # the healthy strategy alone
    beside: dict[str, Timing]  # the healthy strategy after each kind of neighbour
    neighbour_call_us: dict[str, float]  # median time of the neighbour's own (failing) call
    overruns: int  # neighbour calls that took longer than the slot (the comparison is then biased)

    def ratio(self, kind: str) -> float:
        """Healthy median beside ``kind`` over the healthy median alone."""
        return self.beside[kind].median_us / self.baseline.median_us


def measure(
    *,
    rounds: int = 5,
    per_round: int = 40,
    kinds: Sequence[str] = tuple(NEIGHBOURS),
    slot_ms: float = SLOT_MS,
    runtime: WasmRuntime | None = None,
) -> IsolationResult:
    """Alternates ``rounds`` times through the baseline and every neighbour kind, timing
    ``per_round`` healthy evaluations per phase, one per slot of ``slot_ms``."""
    runtime = runtime or WasmRuntime.shared()
    phases = [None, *kinds]
    candles = _candles(HISTORY + rounds * len(phases) * per_round)
    history = np.array([next(candles) for _ in range(HISTORY)])
    healthy = JsStrategy(
        SMA_CROSS,
        parameters=PARAMETERS,
        interval_ms=INTERVAL_MS,
        limits=SandboxLimits(max_candles=HISTORY),
        runtime=runtime,
    )
    neighbours: dict[str, JsStrategy] = {}
    healthy_us: dict[str | None, list[float]] = {phase: [] for phase in phases}
    neighbour_us: dict[str, list[float]] = {kind: [] for kind in kinds}
    overruns = 0
    try:
        healthy.push_history(history)
        for kind in kinds:
            source, limits = NEIGHBOURS[kind]
            neighbours[kind] = JsStrategy(
                source, parameters={}, interval_ms=INTERVAL_MS, limits=limits, runtime=runtime
            )
            neighbours[kind].push_history(history)
        for _ in range(rounds):
            for phase in phases:
                for _ in range(per_round):
                    candle = next(candles)
                    slot_end = time.perf_counter() + slot_ms / 1000
                    if phase is not None:
                        neighbour_us[phase].append(_call_us(neighbours[phase], candle))
                    if time.perf_counter() > slot_end:
                        overruns += 1
                    while time.perf_counter() < slot_end:  # busy: sleeping would let the CPU idle
                        pass
                    _, info = healthy.step(candle, None)
                    healthy_us[phase].append(info.elapsed_us)
    finally:
        healthy.close()
        for neighbour in neighbours.values():
            neighbour.close()
    return IsolationResult(
        baseline=Timing.of(healthy_us[None]),
        beside={kind: Timing.of(healthy_us[kind]) for kind in kinds},
        neighbour_call_us={kind: statistics.median(times) for kind, times in neighbour_us.items()},
        overruns=overruns,
    )


def _candles(n: int) -> Iterator[Candle]:
    for row in synthetic_candles(n).tolist():
        yield tuple(row)


def _call_us(neighbour: JsStrategy, candle: Candle) -> float:
    """Wall time of one neighbour evaluation, which is expected to fail."""
    started = time.perf_counter_ns()
    try:
        neighbour.step(candle, None)
    except StrategyError:
        pass
    return (time.perf_counter_ns() - started) / 1000


def run(rounds: int = 10, per_round: int = 40) -> dict[str, float]:
    """The benchmark for ``make bench``: name -> value, units in the name. ``<kind>_ratio`` is
    the healthy median beside that neighbour over the healthy median alone (target < 2)."""
    result = measure(rounds=rounds, per_round=per_round)
    results = {"baseline_median_us": result.baseline.median_us, "baseline_p99_us": result.baseline.p99_us}
    for kind, timing in result.beside.items():
        results[f"{kind}_median_us"] = timing.median_us
        results[f"{kind}_p99_us"] = timing.p99_us
        results[f"{kind}_ratio"] = result.ratio(kind)
        results[f"{kind}_neighbour_call_us"] = result.neighbour_call_us[kind]
    results["slot_overruns"] = float(result.overruns)
    return results


TARGETS = {f"{kind}_ratio": Target(2) for kind in NEIGHBOURS}


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        argv,
        description=__doc__.splitlines()[0],
        options={"--rounds": {"type": int, "default": 10}, "--per-round": {"type": int, "default": 40}},
        run=lambda args: run(args.rounds, args.per_round),
        targets=TARGETS,
    )


if __name__ == "__main__":
    sys.exit(main())
