"""Candle series for replay, read from CSV: ``time,open,high,low,close,volume`` (the format of
``tradebotd.candle_csv``; further columns such as ``time_iso`` are ignored).

``time`` is the candle's open time in ms UTC; prices and volume are decimal strings kept exact.
The symbol and interval come from the file name (``BTCUSDT_1m.csv``, ``DEMO_BTCUSDT_1m.csv``) or
are given explicitly; without either, the interval is the candles' spacing.

Errors:

    MarketDataError
    └── ReplayDataError    the file is not a valid series; the message names the file and line
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from tradebotd.candle_csv import COLUMNS, HEADER, header_problem, infer_interval, spacing_problem
from tradebotd.errors import MarketDataError
from tradebotd.model import INTERVAL_MS, Candle, StreamKey, interval_ms, normalize_symbol

__all__ = ["HEADER", "ReplayDataError", "Series", "demo_csv", "format_csv", "load_csv", "names_from_path"]

_FILE_NAME = re.compile(r"(?:.*_)?([A-Za-z0-9]+)_([0-9]+[smhdw])\.csv")


class ReplayDataError(MarketDataError):
    """A replay CSV is malformed or inconsistent."""


@dataclass(frozen=True, slots=True)
class Series:
    """Closed candles of one symbol at one interval, oldest first, open times strictly increasing
    and spaced by whole intervals (a missing candle is a hole, as in Binance's own history)."""

    key: StreamKey
    candles: tuple[Candle, ...]

    def __post_init__(self) -> None:
        step = self.key.interval_ms
        previous: int | None = None
        for candle in self.candles:
            if candle.key != self.key or not candle.closed:
                raise ReplayDataError(f"{self.key}: candle {candle.open_time} does not belong to the series")
            if candle.open_time % step and step <= 86_400_000:
                raise ReplayDataError(f"{self.key}: open time {candle.open_time} is not aligned to {step} ms")
            if previous is not None and (candle.open_time <= previous or (candle.open_time - previous) % step):
                raise ReplayDataError(f"{self.key}: open time {candle.open_time} does not follow {previous}")
            previous = candle.open_time


def demo_csv() -> Path:
    """The synthetic demo series shipped with the package (see ``tradebotd.replay.demo``)."""
    return Path(__file__).with_name("data") / "DEMO_BTCUSDT_1m.csv"


def names_from_path(path: Path) -> tuple[str | None, str | None]:
    """``.../DEMO_BTCUSDT_1m.csv`` → ``("BTCUSDT", "1m")``; ``(None, None)`` if the name has no pattern."""
    match = _FILE_NAME.fullmatch(path.name)
    if match is None or match.group(2) not in INTERVAL_MS:
        return None, None
    return match.group(1).upper(), match.group(2)


def load_csv(path: Path, *, symbol: str | None = None, interval: str | None = None) -> Series:
    """Read a series; ``symbol`` / ``interval`` override what the file name says. Without an
    interval from either, it is the candles' spacing (``tradebotd.candle_csv``)."""
    named_symbol, named_interval = names_from_path(path)
    symbol = symbol or named_symbol
    interval = interval or named_interval
    if symbol is None:
        raise ReplayDataError(
            f"{path}: cannot tell the symbol from the file name; name it like BTCUSDT_1m.csv or pass it explicitly"
        )
    try:
        symbol = normalize_symbol(symbol)
        if interval is not None:
            interval_ms(interval)
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM from a spreadsheet
    except (ValueError, OSError) as exc:
        raise ReplayDataError(f"{path}: {exc}") from None
    rows = list(_parse(text, str(path)))
    times = [row[0] for row in rows]
    steps = [b - a for a, b in itertools.pairwise(times)]
    smallest = min((s for s in steps if s > 0), default=None)
    try:
        if interval is None:
            interval = infer_interval(smallest, str(path))
        elif (problem := spacing_problem(interval, smallest, len(steps))) is not None:
            raise ValueError(f"{path}: {problem}")
    except ValueError as exc:
        raise ReplayDataError(str(exc)) from None
    key = StreamKey(symbol, interval)
    return Series(key, tuple(Candle(key.symbol, key.interval, *row, closed=True) for row in rows))


_Row = tuple[int, Decimal, Decimal, Decimal, Decimal, Decimal]


def _parse(text: str, where: str) -> Iterable[_Row]:
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None:
        raise ReplayDataError(f"{where}:1: the file is empty; expected the header {HEADER}")
    if (problem := header_problem(header)) is not None:
        raise ReplayDataError(f"{where}:1: {problem}")
    width = len(header)
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != width:
            raise ReplayDataError(f"{where}:{line}: expected {width} columns, got {len(row)}")
        try:
            open_time = int(row[0])
            o, h, lo, c, v = (Decimal(cell.strip()) for cell in row[1 : len(COLUMNS)])
        except (ValueError, InvalidOperation):
            raise ReplayDataError(f"{where}:{line}: not a number in {','.join(row)}") from None
        if not all(value.is_finite() and value >= 0 for value in (o, h, lo, c, v)):
            raise ReplayDataError(f"{where}:{line}: prices and volume must be finite and >= 0")
        if not lo <= min(o, c) <= max(o, c) <= h:
            raise ReplayDataError(f"{where}:{line}: need low <= open, close <= high")
        yield open_time, o, h, lo, c, v


def format_csv(candles: Sequence[Candle]) -> str:
    """The CSV text for ``candles`` (the inverse of ``load_csv``)."""
    lines = [HEADER]
    lines += (f"{c.open_time},{c.open},{c.high},{c.low},{c.close},{c.volume}" for c in candles)
    return "\n".join(lines) + "\n"
