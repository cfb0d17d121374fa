"""Historical candles as arrays: what backtests evaluate without one Python object per candle.

A :class:`CandleTable` holds one stream's candles, oldest first, as an ``(n, 6)`` float64 array
``time, open, high, low, close, volume`` (``time`` = open time in ms UTC) -- exactly the floats a
strategy gets live from :meth:`tradebotd.model.Candle.as_floats`, because both come from
correctly rounded conversions of the same decimal strings -- plus those decimal strings, kept as
bytes. Only a candle that fills an order or touches a protective level becomes a
:class:`~tradebotd.model.Candle` with exact ``Decimal`` prices (:meth:`CandleTable.candle`).

Sources: a CSV file with the header ``time,open,high,low,close,volume`` (the format of
``tradebotd.candle_csv``: what ``tradebotd data download --out`` writes and the replay server
reads; the interval inferred from the spacing when nobody says it), or the store's
``market_data`` table.

Missing candles (exchange outages) stay missing: open times must increase by whole intervals,
and :attr:`CandleTable.missing` counts the holes. Nothing is ever filled in.

Errors: :class:`~tradebotd.data.errors.CandleDataError`, naming the file and line.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import NoReturn

import numpy as np
import numpy.typing as npt

from tradebotd.candle_csv import HEADER, header_problem, infer_interval, spacing_problem
from tradebotd.data.errors import CandleDataError
from tradebotd.model import Candle, StreamKey

__all__ = ["HEADER", "UNNAMED_SYMBOL", "CandleTable", "read_csv", "read_store", "stored_open_times"]

UNNAMED_SYMBOL = "UNNAMED"  # a file read without a symbol (backtests do not need one)
_FIELDS = 6
TIME, OPEN, HIGH, LOW, CLOSE, VOLUME = range(_FIELDS)


@dataclass(frozen=True, slots=True, eq=False)
class CandleTable:
    """Closed candles of one stream, oldest first (see the module docstring).

    ``text`` is ``(n, 5)`` bytes, the exact decimal strings of open, high, low, close, volume; it
    may be None for synthetic float data (benchmarks), where ``repr`` of each float is the value.
    """

    key: StreamKey
    values: npt.NDArray[np.float64]
    text: npt.NDArray[np.bytes_] | None = None

    def __post_init__(self) -> None:
        values = self.values
        if values.ndim != 2 or values.shape[1] != _FIELDS or values.dtype != np.float64:
            raise CandleDataError(f"{self.key}: candles must be an (n, 6) float64 array, got {values.shape}")
        if self.text is not None and self.text.shape != (len(values), _FIELDS - 1):
            raise CandleDataError(f"{self.key}: decimal strings do not match the candles ({self.text.shape})")
        problem = _problem(values, self.key.interval_ms)
        if problem is not None:
            row, what = problem
            raise CandleDataError(f"{self.key}: candle {row + 1} (open time {int(values[row, TIME])}): {what}")

    @classmethod
    def from_floats(cls, key: StreamKey, values: npt.ArrayLike) -> CandleTable:
        """A table without source strings: each float's ``repr`` is taken as its exact value."""
        return cls(key, np.ascontiguousarray(values, dtype=np.float64))

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def times(self) -> npt.NDArray[np.int64]:
        return self.values[:, TIME].astype(np.int64)

    @property
    def missing(self) -> int:
        """Candles absent between the first and the last (exchange outages)."""
        if len(self) < 2:
            return 0
        steps = np.diff(self.values[:, TIME]) // self.key.interval_ms
        return int(steps.sum() - len(steps))

    def candle(self, index: int) -> Candle:
        """Candle ``index`` with exact decimal prices (for the broker)."""
        time = int(self.values[index, TIME])
        if self.text is None:
            o, h, lo, c, v = map(Decimal, map(repr, self.values[index, OPEN:].tolist()))
        else:
            o, h, lo, c, v = map(Decimal, map(bytes.decode, self.text[index].tolist()))
        return Candle(self.key.symbol, self.key.interval, time, o, h, lo, c, v, closed=True)

    def close(self, index: int) -> Decimal:
        """The exact close of candle ``index``: all an order at that candle needs of it."""
        if self.text is None:
            return Decimal(repr(float(self.values[index, CLOSE])))
        return Decimal(self.text[index, CLOSE - 1].decode())

    def first(self, count: int) -> CandleTable:
        """The oldest ``count`` candles."""
        return CandleTable(self.key, self.values[:count], None if self.text is None else self.text[:count])

    def between(self, since: int | None = None, until: int | None = None) -> CandleTable:
        """Candles with ``since <= open time < until`` (either bound optional)."""
        times = self.values[:, TIME]
        lo = 0 if since is None else int(np.searchsorted(times, since, side="left"))
        hi = len(self) if until is None else int(np.searchsorted(times, until, side="left"))
        text = None if self.text is None else self.text[lo:hi]
        return CandleTable(self.key, self.values[lo:hi], text)


def _problem(values: npt.NDArray[np.float64], step: int | None) -> tuple[int, str] | None:
    """The first row that breaks a rule, vectorised (None if all is well); ``step`` None: the
    rows' own rules only, not their spacing."""
    if not len(values):
        return None
    checks: list[tuple[npt.NDArray[np.bool_], str]] = [
        (np.asarray(~np.isfinite(values).all(axis=1)), "values must be finite"),
        (np.asarray((values < 0).any(axis=1)), "values must be >= 0"),
        (values[:, TIME] != np.floor(values[:, TIME]), "the time must be whole milliseconds"),
        (values[:, LOW] > np.minimum(values[:, OPEN], values[:, CLOSE]), "low is above open or close"),
        (values[:, HIGH] < np.maximum(values[:, OPEN], values[:, CLOSE]), "high is below open or close"),
    ]
    if step is not None:
        steps = np.diff(values[:, TIME])
        bad_step = np.concatenate(([False], (steps <= 0) | (steps % step != 0)))
        checks.append((bad_step, f"open times must increase by whole intervals of {step} ms"))
    first: tuple[int, str] | None = None
    for mask, what in checks:
        hits = np.flatnonzero(mask)
        if len(hits) and (first is None or hits[0] < first[0]):
            first = (int(hits[0]), what)
    return first


def read_csv(path: Path, key: StreamKey | None = None, *, symbol: str = UNNAMED_SYMBOL) -> CandleTable:
    """Read a candle CSV (``tradebotd.candle_csv``: ``time,open,high,low,close,volume``, further
    columns ignored) as ``key``'s candles; ``key`` None: ``symbol``'s, at the interval the
    candles' spacing shows."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CandleDataError(f"{path}: cannot read: {exc.strerror}") from None
    header, _, body = data.partition(b"\n")
    columns = header.decode("utf-8-sig", errors="replace").split(",")  # -sig: a BOM from a spreadsheet
    if (problem := header_problem(columns)) is not None:
        raise CandleDataError(f"{path}:1: {problem}")
    raw = _cells(path, body, len(columns))
    try:
        values = raw.astype(np.float64)
    except ValueError:
        _raise_first_bad_line(path, body, len(columns))
    if (row_problem := _problem(values, None)) is not None:
        row, what = row_problem
        raise CandleDataError(f"{path}:{row + 2}: {what}")
    steps = np.diff(values[:, TIME])
    positive = steps[steps > 0]
    smallest = int(positive.min()) if len(positive) else None
    if key is None:
        try:
            key = StreamKey(symbol, infer_interval(smallest, str(path)))
        except ValueError as exc:
            raise CandleDataError(str(exc)) from None
    elif (spacing := spacing_problem(key.interval, smallest, len(steps))) is not None:
        raise CandleDataError(f"{path}: {spacing}")
    if (row_problem := _problem(values, key.interval_ms)) is not None:
        row, what = row_problem
        raise CandleDataError(f"{path}:{row + 2}: {what}")
    return CandleTable(key, values, raw[:, OPEN:])


def _cells(path: Path, body: bytes, width: int) -> npt.NDArray[np.bytes_]:
    """The body's first six columns as an ``(n, 6)`` bytes array (of ``width`` per line).

    Fast path: one split and one reshape for the whole file. Any irregularity sends us to the
    line-by-line parser, which exists to name the offending line."""
    lines = body.replace(b"\r", b"").strip(b"\n")
    cells = lines.replace(b"\n", b",").split(b",") if lines else []
    if len(cells) % width == 0:
        table = np.array(cells, dtype=np.bytes_).reshape(-1, width)[:, :_FIELDS]
        if not (table == b"").any():
            return table
    _raise_first_bad_line(path, body, width)


def _raise_first_bad_line(path: Path, body: bytes, width: int) -> NoReturn:
    for number, line in enumerate(body.decode("utf-8", errors="replace").splitlines(), start=2):
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != width:
            raise CandleDataError(f"{path}:{number}: expected {width} columns, got {len(cells)}")
        try:
            int(cells[0])
            decimals = [Decimal(cell) for cell in cells[1:_FIELDS]]
        except (ValueError, InvalidOperation):
            raise CandleDataError(f"{path}:{number}: not a number in {line!r}") from None
        if not all(d.is_finite() for d in decimals):
            raise CandleDataError(f"{path}:{number}: values must be finite in {line!r}")
    raise CandleDataError(f"{path}: cannot parse the candles")


def _connect(db: Path) -> sqlite3.Connection:
    if not db.exists():
        raise CandleDataError(f"{db}: no store here; download candles first (tradebotd data download)")
    try:
        return sqlite3.connect(db)
    except sqlite3.Error as exc:
        raise CandleDataError(f"{db}: cannot open the store: {exc}") from None


def read_store(db: Path, key: StreamKey, since: int | None = None, until: int | None = None) -> CandleTable:
    """The store's ``market_data`` rows for ``key`` with ``since <= open time < until``."""
    # A plain read on its own connection: the daemon may be writing the same file (WAL).
    sql = "SELECT open_time, open, high, low, close, volume FROM market_data WHERE symbol = ? AND interval = ?"
    args: list[object] = [key.symbol, key.interval]
    if since is not None:
        sql, args = sql + " AND open_time >= ?", [*args, since]
    if until is not None:
        sql, args = sql + " AND open_time < ?", [*args, until]
    connection = _connect(db)
    try:
        rows = connection.execute(sql + " ORDER BY open_time", args).fetchall()
    except sqlite3.Error as exc:
        raise CandleDataError(f"{db}: cannot read market_data: {exc}") from None
    finally:
        connection.close()
    if not rows:
        raise CandleDataError(
            f"{db}: no {key} candles stored in that range; download them first (tradebotd data download)"
        )
    text = np.array([row[1:] for row in rows], dtype=np.bytes_)
    values = np.empty((len(rows), _FIELDS), dtype=np.float64)
    values[:, TIME] = np.fromiter((row[0] for row in rows), dtype=np.float64, count=len(rows))
    values[:, OPEN:] = text.astype(np.float64)
    try:
        return CandleTable(key, values, text)
    except CandleDataError as exc:
        raise CandleDataError(f"{db} market_data: {exc}") from None


def stored_open_times(db: Path, key: StreamKey, since: int, until: int) -> npt.NDArray[np.int64]:
    """Open times of the stored ``key`` candles in ``[since, until)``, ascending (empty if no store)."""
    if not db.exists():
        return np.empty(0, dtype=np.int64)
    connection = _connect(db)
    try:
        rows = connection.execute(
            "SELECT open_time FROM market_data WHERE symbol = ? AND interval = ? AND open_time >= ? "
            "AND open_time < ? ORDER BY open_time",
            (key.symbol, key.interval, since, until),
        ).fetchall()
    except sqlite3.OperationalError:  # a store not migrated yet has no market_data
        rows = []
    finally:
        connection.close()
    return np.array([row[0] for row in rows], dtype=np.int64)
