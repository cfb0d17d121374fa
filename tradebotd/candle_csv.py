"""The candle CSV format, shared by its writer (``tradebotd data download --out``) and its readers
(``backtest --data``, ``strategy check --data``, ``replay-server --data``)::

    time,open,high,low,close,volume,time_iso
    1704067200000,42283.58,42554.57,42261.02,42475.23,1271.68108,2024-01-01T00:00:00Z

``time`` is the candle's open time in epoch milliseconds (UTC): what every reader uses.
``time_iso`` is the same instant for people (ISO-8601 UTC); readers ignore it and any other
column after the first six, so files written before it existed, and files a user annotated,
read the same. The first six header cells must be exactly these names (case and spaces aside):
a reader that guessed at ``Date,Open,...`` or at the units of a ``timestamp`` would quietly
backtest the wrong thing, so a wrong header is an error that shows what was found.

When neither the caller nor the file name says the interval, it is the smallest spacing of
consecutive open times (exchange outages only ever make a gap larger, never smaller). When
the interval *is* given, a spacing that contradicts it is an error that says so: candles closer
than one interval, or every gap larger than one (a ``_1m`` file holding hourly candles would
otherwise read as mostly missing candles).

No I/O here: readers pass in the header cells and open times they read.
"""

from __future__ import annotations

from collections.abc import Sequence

from .model import INTERVAL_MS

__all__ = [
    "COLUMNS",
    "HEADER",
    "ISO_COLUMN",
    "WRITTEN_HEADER",
    "header_problem",
    "infer_interval",
    "spacing_problem",
]

COLUMNS = ("time", "open", "high", "low", "close", "volume")
HEADER = ",".join(COLUMNS)
ISO_COLUMN = "time_iso"
WRITTEN_HEADER = f"{HEADER},{ISO_COLUMN}"
_BY_MS = {ms: name for name, ms in INTERVAL_MS.items()}


def header_problem(cells: Sequence[str]) -> str | None:
    """Why ``cells`` (the first line, split on commas) is not a candle header, naming what was
    found; None when it is one."""
    names = tuple(cell.strip().lower() for cell in cells)
    if names[: len(COLUMNS)] == COLUMNS:
        return None
    found = ",".join(cell.strip() for cell in cells)
    if len(found) > 120:
        found = found[:117] + "..."
    expected = f"expected the header {HEADER} (further columns such as {ISO_COLUMN} are ignored)"
    if names and _is_number(names[0]):
        return f"{expected}, found data and no header: {found!r}; add the header as the first line"
    return f"{expected}, found {found!r}"


def infer_interval(smallest_step_ms: int | None, where: str) -> str:
    """The interval whose length is the smallest spacing of the candles (None: fewer than two)."""
    if smallest_step_ms is None:
        raise ValueError(f"{where}: cannot infer the interval from fewer than two candles; give the interval")
    name = _BY_MS.get(smallest_step_ms)
    if name is None:
        raise ValueError(
            f"{where}: the candles are {smallest_step_ms} ms apart, which is not a kline interval "
            f"({', '.join(INTERVAL_MS)}); give the interval"
        )
    return name


def spacing_problem(interval: str, smallest_step_ms: int | None, steps: int) -> str | None:
    """Why candles whose smallest spacing is another interval (over ``steps`` gaps) are not
    ``interval`` candles: two closer than one interval, or every gap larger than one (one gap
    alone proves nothing: it may be an outage). A spacing that is no interval at all is left to
    the readers' line checks (``open times must increase by whole intervals``, with the line)."""
    actual = None if smallest_step_ms is None else _BY_MS.get(smallest_step_ms)
    length = INTERVAL_MS[interval]
    if smallest_step_ms is None or actual is None or actual == interval or (smallest_step_ms > length and steps < 2):
        return None
    spacing = f"{actual} ({smallest_step_ms} ms)"
    if smallest_step_ms < length:
        return f"the interval is {interval}, but candles are only {spacing} apart; give the right interval ({actual})"
    return (
        f"the interval is {interval}, but no two candles are closer than {spacing}: every candle would "
        f"be followed by missing ones; give the right interval ({actual})"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
