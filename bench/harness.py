"""What the benchmark modules (``bench.sandbox_js``, ``bench.sandbox_native``,
``bench.sandbox_isolation``, ``bench.backtest_loop``) share: timing one call per item, median and
99th percentile, and their command line (a table of results with verdicts, ``--json OUT``).

Each benchmark's ``run()`` returns name -> value with the unit in the name; ``make bench``
(``bench/__main__.py``) calls those directly, the command line here is for running one on its own.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

__all__ = ["Target", "bench_main", "median_p99", "print_results", "timed_us"]

_T = TypeVar("_T")
Results = Mapping[str, object]


def timed_us(call: Callable[[_T], object], items: Iterable[_T]) -> list[float]:
    """Wall time of ``call(item)`` for each item, in µs, with the GC off while timing (a
    collection would land on whichever call triggered it)."""
    times = []
    gc.collect()
    gc.disable()
    try:
        for item in items:
            started = time.perf_counter_ns()
            call(item)
            times.append((time.perf_counter_ns() - started) / 1000)
    finally:
        gc.enable()
    return times


def median_p99(samples: Sequence[float]) -> tuple[float, float]:
    return statistics.median(samples), float(np.percentile(samples, 99))


@dataclass(frozen=True, slots=True)
class Target:
    """What a measurement should stay under (``below``) or over."""

    bound: float
    below: bool = True

    def met(self, value: float) -> bool:
        return value < self.bound if self.below else value > self.bound

    def __str__(self) -> str:
        return f"< {self.bound:g}" if self.below else f"> {self.bound:,.0f}"


def print_results(results: Results, targets: Mapping[str, Target], *, width: int = 34) -> None:
    """One line per result: name, value, and against its target (if any) ``ok`` or ``MISSED``."""
    for name, value in results.items():
        shown = f"{value:14,.3f}" if isinstance(value, float) else f"{value!s:>14}"
        target = targets.get(name)
        verdict = ""
        if target is not None:
            if not isinstance(value, int | float):
                verdict = "  (not available)"
            else:
                verdict = f"  {'ok' if target.met(value) else 'MISSED'} (target {target})"
        print(f"{name:{width}} {shown}{verdict}")


def bench_main(
    argv: Sequence[str] | None,
    *,
    description: str,
    options: Mapping[str, Mapping[str, Any]],
    run: Callable[[argparse.Namespace], Results],
    targets: Mapping[str, Target],
    prog: str | None = None,
) -> int:
    """A benchmark's ``main()``: ``options`` (flag -> ``add_argument`` keywords) and ``--json
    OUT``; prints the table of ``run(args)``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for flag, keywords in options.items():
        parser.add_argument(flag, **keywords)
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    args = parser.parse_args(argv)
    results = run(args)
    print_results(results, targets)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


# One /dev/null for every section's decision log lines, open for the whole process. Loggers cache
# their output on first use (logs.configure_logging), so a section that opened its own file and
# dropped it would close the buffer that loggers cached by an earlier section still write to.
_DEVNULL = open(os.devnull, "w")


def log_to_devnull() -> None:
    """Render log lines as in production (JSON), into /dev/null."""
    from tradebotd.logs import configure_logging

    configure_logging("info", "json", stream=_DEVNULL)
