"""Issue 11: ``tradebotd backtest`` beside backtesting.py on the same candles, same strategy, same trades.

``python -m bench.versus [--data CSV] [--repeat N]`` (or ``make bench``, section ``versus``).

Each side runs as its own process, the way a user runs it:

* backtesting.py: ``python -m bench.backtesting_py_run CSV`` (see that module for how the strategy
  is written there); its throughput is candles / wall time of ``Backtest.run()``.
* tradebotd: ``python -m tradebotd backtest --strategy tradebotd/examples/sma_crossover.js --data CSV
  --out DIR`` (the example strategy in the QuickJS sandbox); its throughput is candles / the
  evaluation time that runs with ``--no-plot`` report (``summary.json``'s ``evaluation_time_s``:
  without the chart process, which on a busy machine takes CPU from the evaluation), and its fixed
  cost is the wall time of a whole run with equity.png minus that evaluation time: start-up and
  imports, reading the CSV, loading the strategy, the report, the plot.

Both compute SMA(fast) and SMA(slow) of the closes (5 and 20 by default), buy one unit when the
fast one crosses above the slow one and close on the cross below, filling at the signal candle's
close with a 0.1 % fee. The trades must agree (:func:`compare_trades`): the same number of closed
trades, each with the same entry and exit candle (open time, exactly) and the same entry and exit
price within a relative :data:`PRICE_TOLERANCE` (both are the CSV's close, a decimal string on one
side and its float64 on the other, so in practice they are equal).

Rows per series: candles/s of both, their ratio (target: tradebotd >= 1.5x), the fixed cost
(target: < 1 s), whole-process times, and whether the trades agree. Series: a synthetic one
(:mod:`tradebotd.examples.synthetic`, always), and real candles: ``--data CSV``, else
``/work/shared/data/BTCUSDT_5m.csv`` when it exists; when it does not, that series is skipped with
the reason printed. Without backtesting.py installed (``make bench`` installs
``bench/requirements-backtesting.txt``) the whole section is skipped, with the reason printed.
Each kind of run is repeated ``repeat`` times (3 by default) and the best counts: the machine is
shared.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from tradebotd.examples.synthetic import synthetic_candles

from .rows import Row

__all__ = [
    "PRICE_TOLERANCE",
    "REAL_CANDLES",
    "Agreement",
    "Trade",
    "compare_trades",
    "read_tradebotd_trades",
    "run",
    "write_candles_csv",
]

SECTION = "backtest vs backtesting.py (issue 11)"
ROOT = Path(__file__).resolve().parents[1]
STRATEGY = ROOT / "tradebotd" / "examples" / "sma_crossover.js"
REAL_CANDLES = Path("/work/shared/data/BTCUSDT_5m.csv")
SYNTHETIC_CANDLES = 65_741  # as many as the real series
PRICE_TOLERANCE = 1e-9  # relative; see the module docstring
FEE = "0.001"
TARGET_RATIO = 1.5
TARGET_FIXED_S = 1.0


@dataclass(frozen=True, slots=True)
class Trade:
    """A closed trade: entry and exit candle open times (ms) and prices."""

    entry_time: int
    exit_time: int
    entry_price: float
    exit_price: float


@dataclass(frozen=True, slots=True)
class Agreement:
    agree: bool
    ours: int  # tradebotd's closed trades
    theirs: int  # backtesting.py's
    matched: int  # leading trades that agree
    max_price_error: float  # largest relative price difference among the matched trades
    first_difference: str | None  # what differs first, for a human

    def describe(self) -> str:
        if self.agree:
            return f"{self.ours} trades agree (largest relative price difference {self.max_price_error:.1e})"
        return f"trades differ: {self.first_difference} ({self.ours} vs {self.theirs}, first {self.matched} agree)"


def _relative(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


def compare_trades(ours: Sequence[Trade], theirs: Sequence[Trade], tolerance: float = PRICE_TOLERANCE) -> Agreement:
    """Trade by trade, in entry order: same entry and exit candles exactly, prices within
    ``tolerance`` (relative), and the same count."""
    matched, worst = 0, 0.0
    difference: str | None = None
    for index, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if (a.entry_time, a.exit_time) != (b.entry_time, b.exit_time):
            difference = (
                f"trade {index}: tradebotd {a.entry_time}->{a.exit_time}, backtesting.py {b.entry_time}->{b.exit_time}"
            )
            break
        errors = (_relative(a.entry_price, b.entry_price), _relative(a.exit_price, b.exit_price))
        if max(errors) > tolerance:
            difference = (
                f"trade {index}: prices tradebotd {a.entry_price}->{a.exit_price}, "
                f"backtesting.py {b.entry_price}->{b.exit_price}"
            )
            break
        worst = max(worst, *errors)
        matched += 1
    if difference is None and len(ours) != len(theirs):
        difference = f"trade {matched}: only one side has it"
    return Agreement(difference is None, len(ours), len(theirs), matched, worst, difference)


def read_tradebotd_trades(path: Path) -> list[Trade]:
    """The closed trades of a ``trades.csv`` written by ``tradebotd backtest --out``."""
    with path.open(newline="", encoding="utf-8") as f:
        return [
            Trade(int(row["entry_time"]), int(row["exit_time"]), float(row["entry_price"]), float(row["exit_price"]))
            for row in csv.DictReader(f)
            if row["exit_time"]
        ]


def write_candles_csv(path: Path, candles: np.ndarray[Any, np.dtype[np.float64]]) -> None:
    """``time,open,high,low,close,volume`` rows; each float written as its ``repr``."""
    with path.open("w", encoding="utf-8") as f:
        f.write("time,open,high,low,close,volume\n")
        for row in candles.tolist():
            f.write(f"{int(row[0])},{row[1]!r},{row[2]!r},{row[3]!r},{row[4]!r},{row[5]!r}\n")


@dataclass(frozen=True, slots=True)
class _Theirs:
    candles: int
    run_s: float
    process_s: float
    trades: list[Trade]
    version: str


@dataclass(frozen=True, slots=True)
class _Ours:
    candles: int
    evaluation_s: float
    process_s: float
    cpu_s: float  # user + system time of the process: what the wall time would be on an idle machine
    trades: list[Trade]

    @property
    def fixed_s(self) -> float:
        return self.process_s - self.evaluation_s


def _backtesting_py(data: Path, fast: int, slow: int) -> _Theirs:
    command = [sys.executable, "-m", "bench.backtesting_py_run", str(data), "--fast", str(fast), "--slow", str(slow),
               "--commission", FEE]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    process_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"backtesting.py run failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    out = json.loads(done.stdout)
    times = np.loadtxt(data, delimiter=",", skiprows=1, usecols=0, dtype=np.float64, ndmin=1).astype(np.int64)
    trades = [Trade(int(times[e]), int(times[x]), ep, xp) for e, x, ep, xp in out["trades"]]
    return _Theirs(out["candles"], out["run_s"], process_s, trades, out["backtesting"])


def _tradebotd(data: Path, fast: int, slow: int, cash: Decimal, work: Path, *, plot: bool) -> _Ours:
    out = work / "out"
    command = [
        sys.executable, "-m", "tradebotd", "backtest", "--strategy", str(STRATEGY), "--data", str(data),
        "--param", f"fast={fast}", "--param", f"slow={slow}", "--param", "amount=1",
        "--cash", str(cash), "--fee", FEE, "--slippage-bps", "0", "--out", str(out),
        *(() if plot else ("--no-plot",)),
    ]
    # In an empty directory, so that no tradebotd.toml of the caller's changes the run.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)
    process_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"tradebotd backtest failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    trades = read_tradebotd_trades(out / "trades.csv")
    return _Ours(summary["candles"], summary["evaluation_time_s"], process_s, cpu_s, trades)


def _best_of(repeat: int, make: Any, key: Any) -> Any:
    return min((make() for _ in range(repeat)), key=key)


def _series_rows(name: str, data: Path, *, fast: int, slow: int, repeat: int) -> list[Row]:
    closes = np.loadtxt(data, delimiter=",", skiprows=1, usecols=4, dtype=np.float64, ndmin=1)
    cash = Decimal(int(closes.max()) * 100 + 1)  # one unit per buy, never refused
    theirs: _Theirs = _best_of(repeat, lambda: _backtesting_py(data, fast, slow), key=lambda r: r.run_s)
    with tempfile.TemporaryDirectory(prefix="tb-versus-") as tmp:
        # Evaluation measured without the plot: the chart process runs beside the evaluation and,
        # on a busy machine, takes CPU from it. The fixed cost is then the whole run with the plot
        # minus that undisturbed evaluation time.
        bare = [_tradebotd(data, fast, slow, cash, Path(tmp), plot=False) for _ in range(repeat)]
        runs = [_tradebotd(data, fast, slow, cash, Path(tmp), plot=True) for _ in range(repeat)]
    ours = min(bare, key=lambda r: r.evaluation_s)
    fixed = min(r.process_s for r in runs) - ours.evaluation_s
    fixed_cpu = min(r.cpu_s for r in runs) - ours.evaluation_s
    assert all(r.trades == ours.trades for r in runs)
    agreement = compare_trades(ours.trades, theirs.trades)
    their_rate = theirs.candles / theirs.run_s
    our_rate = ours.candles / ours.evaluation_s
    note = f"{ours.candles:,} candles, SMA({fast}) x SMA({slow})"
    return [
        Row(SECTION, f"{name}: backtesting.py {theirs.version} Backtest.run()", their_rate, "candles/s", note=note),
        Row(SECTION, f"{name}: tradebotd JS evaluation", our_rate, "candles/s", note="backtest --out --no-plot"),
        Row(SECTION, f"{name}: tradebotd JS / backtesting.py", our_rate / their_rate, "x", target=TARGET_RATIO,
            higher_is_better=True),
        Row(SECTION, f"{name}: tradebotd backtest --out, fixed cost", fixed, "s", target=TARGET_FIXED_S,
            note=f"whole process with equity.png minus the evaluation time above: start-up, imports, CSV, "
            f"report, plot; CPU time (both processes) minus evaluation {fixed_cpu:.3f} s"),
        Row(SECTION, f"{name}: tradebotd backtest --out, whole process", min(r.process_s for r in runs), "s"),
        Row(SECTION, f"{name}: backtesting.py, whole process", theirs.process_s, "s",
            note="start-up, imports, CSV into pandas, Backtest.run(); no plot"),
        Row(SECTION, f"{name}: trades agree", 1.0 if agreement.agree else 0.0, "bool", target=0.5,
            higher_is_better=True, note=agreement.describe()),
    ]


def backtesting_py_missing() -> str | None:
    """Why backtesting.py cannot run here, or None."""
    if importlib.util.find_spec("backtesting") is None:
        return "backtesting.py is not installed here (make bench installs bench/requirements-backtesting.txt)"
    return None


def run(data: Path | None = None, *, fast: int = 5, slow: int = 20, repeat: int = 3) -> list[Row]:
    missing = backtesting_py_missing()
    if missing is not None:
        print(f"versus: skipped: {missing}", file=sys.stderr)
        return []
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tb-versus-data-") as tmp:
        synthetic = Path(tmp) / "SYNTHETIC_5m.csv"
        write_candles_csv(synthetic, synthetic_candles(SYNTHETIC_CANDLES, 11, interval_ms=300_000))
        rows += _series_rows("synthetic 5m", synthetic, fast=fast, slow=slow, repeat=repeat)
    real = data if data is not None else REAL_CANDLES
    if real.exists():
        rows += _series_rows(real.stem, real, fast=fast, slow=slow, repeat=repeat)
    else:
        print(f"versus: real candles skipped: {real} does not exist (see /work/shared/data/README.md)",
              file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    from . import __main__ as bench

    parser = argparse.ArgumentParser(prog="python -m bench.versus", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help=f"real candles (default {REAL_CANDLES}, when it exists)")
    parser.add_argument("--fast", type=int, default=5)
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the best counts (default 3)")
    args = parser.parse_args(argv)
    rows = run(args.data, fast=args.fast, slow=args.slow, repeat=args.repeat)
    if not rows:
        return 0
    bench.print_table(rows)
    return 1 if any(r.verdict == "MISSED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
