"""``python -m bench [--out FILE] [--data CSV] [--only SECTION]``: run every benchmark, print a
table, write JSON."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tradebotd.replay.series import Series, demo_csv, load_csv

from . import backtest, latency, live_orders, sandbox, scale, startup, sync, versus
from .rows import Row

SECTIONS: dict[str, Callable[[Series, Path | None], list[Row]]] = {
    "latency": lambda series, data: latency.run(series),
    "startup": lambda series, data: startup.run(series),
    "scale": lambda series, data: scale.run(),
    "sandbox": lambda series, data: sandbox.run(),
    "backtest": lambda series, data: backtest.run(data),
    "versus": lambda series, data: versus.run(data),
    "sync": lambda series, data: sync.run(series),
    "live-orders": lambda series, data: live_orders.run(),
}


def _calibration() -> Row:
    """How fast this machine is right now (shared VMs vary by 2x over an hour): compare runs
    relative to this, not only in absolute terms."""
    best = min(timeit.repeat("sum(range(1_000_000))", number=10, repeat=5)) / 10
    return Row("machine", "reference: sum(range(10**6)) in CPython", best * 1000, "ms")


def print_table(rows: list[Row]) -> None:
    width = max(len(r.name) for r in rows)
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            print(f"\n{section}")
            print(f"  {'measurement':{width}}  {'value':>12}  {'unit':8}  {'target':14}  verdict")
        value = f"{row.value:12.3f}" if abs(row.value) < 1e6 else f"{row.value:12.0f}"
        print(
            f"  {row.name:{width}}  {value}  {row.unit:8}  {row.target_text:14}  {row.verdict}"
            + (f"  ({row.note})" if row.note else "")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--data", type=Path, help="candle CSV (default: the bundled synthetic demo series)")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    args = parser.parse_args(argv)
    series = load_csv(args.data) if args.data else load_csv(demo_csv())
    rows: list[Row] = [_calibration()]
    started = time.monotonic()
    for name, section in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.extend(section(series, args.data))
    print_table(rows)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
        },
        "data": str(args.data or demo_csv()),
        "seconds": round(time.monotonic() - started, 1),
        "results": [r.as_json() for r in rows],
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    missed = [r for r in rows if r.verdict == "MISSED"]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
