"""``tradebotd data download``: historical klines from Binance's REST API through ccxt, into the
store's ``market_data`` and/or a CSV (``time,open,high,low,close,volume,time_iso``, time = open time
in ms, time_iso the same for people; see ``tradebotd.candle_csv``).

    tradebotd data download SYMBOL INTERVAL --since DATE [--until DATE] [--out CSV] [--store]

Without ``--out`` candles go to the store (``store.path``); with ``--out`` to the CSV, and also to
the store when ``--store`` is given. The REST base is ``market.rest_url`` (tests point it at the
replay server).

* Paging is explicit, from ``since`` forward, 1000 klines per request (ccxt's ``paginate`` starts
  at the newest window instead). Only closed candles are kept: open time + interval <= the
  server's clock, read once at the start.
* Exact values: ccxt's ``fetch_ohlcv`` turns prices into floats. We call the raw endpoint
  (``publicGetKlines``), whose rows keep Binance's decimal strings, and store those strings as
  they are.
* Resumable: only what the outputs lack is fetched. For the CSV (append-only) that is everything
  after its last candle; for the store, every hole between stored candles in the range. A hole
  that is an exchange outage costs one request that returns nothing each time; nothing is ever
  invented to fill it. Each page is written before the next is requested, so an interrupted
  download keeps what it had.
* Errors from ccxt are translated in one place (:func:`_translated`) into
  :class:`~tradebotd.data.errors.DownloadRejected` (fix the command) or
  :class:`~tradebotd.data.errors.DownloadUnavailable` (retried ``retries`` times with backoff,
  then reported; re-running resumes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import ccxt.async_support as ccxt
import orjson
from tqdm import tqdm

from tradebotd.candle_csv import COLUMNS, ISO_COLUMN, WRITTEN_HEADER, header_problem
from tradebotd.cliargs import UsageError, standalone_parser, stream_key
from tradebotd.config import Settings, load_settings
from tradebotd.data.candles import stored_open_times
from tradebotd.data.errors import CandleDataError, DownloadError, DownloadRejected, DownloadUnavailable
from tradebotd.data.times import format_time, time_argument
from tradebotd.errors import ConfigError
from tradebotd.model import INTERVAL_MS, Candle, StreamKey
from tradebotd.store.base import WriteBatch
from tradebotd.store.sqlite import SqliteStore

__all__ = [
    "DESCRIPTION",
    "PAGE_LIMIT",
    "CcxtKlines",
    "CsvSink",
    "DownloadReport",
    "KlineSource",
    "Row",
    "StoreSink",
    "add_arguments",
    "download",
    "main",
    "run",
]

PAGE_LIMIT = 1000  # Binance's maximum klines per request
DESCRIPTION = "Download historical klines into the store's market_data and/or a CSV (resumable)."
_WEEK_OFFSET_MS = 4 * 86_400_000  # 1970-01-01 was a Thursday; Binance weeks open on Monday
_T = TypeVar("_T")


class Row(NamedTuple):
    """One closed kline: open time (ms) and Binance's decimal strings."""

    time: int
    open: str
    high: str
    low: str
    close: str
    volume: str


class KlineSource(Protocol):
    """Where klines come from (ccxt in production; anything speaking Binance's REST in tests)."""

    async def server_time(self) -> int: ...

    async def klines(self, key: StreamKey, start: int, end: int, limit: int) -> list[Any]:
        """Raw ``/api/v3/klines`` rows with ``start <= open time <= end``, oldest first."""
        ...

    async def close(self) -> None: ...


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """ccxt's exceptions -> ours, in one place. ccxt's messages are ``"binance {json}"``."""
    try:
        yield
    except ccxt.BadSymbol as exc:
        raise DownloadRejected(f"{what}: unknown symbol ({_message(exc)})") from None
    except (ccxt.OperationFailed, ccxt.BadResponse, ccxt.NullResponse) as exc:
        # Network errors, timeouts, 5xx, rate limits, maintenance, garbled answers: transient.
        raise DownloadUnavailable(f"{what}: {type(exc).__name__}: {_message(exc)}") from None
    except ccxt.ExchangeError as exc:  # bad interval or parameters, permissions, ...
        raise DownloadRejected(f"{what}: the exchange refused: {_message(exc)}") from None
    except ccxt.BaseError as exc:
        raise DownloadError(f"{what}: {type(exc).__name__}: {_message(exc)}") from None


def _message(exc: Exception) -> str:
    text = str(exc)
    _, _, body = text.partition(" ")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return text
    if isinstance(data, dict) and "msg" in data:
        return f"{data['msg']} (code {data.get('code')})"
    return text


class CcxtKlines:
    """Binance spot klines through ``ccxt.async_support.binance``'s raw endpoints."""

    def __init__(self, rest_url: str, *, rate_limit: bool = True, timeout_ms: int = 10_000) -> None:
        self.exchange = ccxt.binance(
            {
                "enableRateLimit": rate_limit,
                "timeout": timeout_ms,
                # Never load futures markets (a real request to other hosts; wire notes 2.2).
                "options": {"fetchMarkets": {"types": ["spot"]}},
            }
        )
        # Only the public spot family is used; for the real API this is the default URL.
        self.exchange.urls["api"]["public"] = f"{rest_url.rstrip('/')}/api/v3"

    async def server_time(self) -> int:
        with _translated("server time"):
            answer = await self.exchange.publicGetTime()
        try:
            return int(answer["serverTime"])
        except (TypeError, KeyError, ValueError):
            raise DownloadUnavailable(f"server time: unexpected answer {answer!r:.200}") from None

    async def klines(self, key: StreamKey, start: int, end: int, limit: int) -> list[Any]:
        params = {"symbol": key.symbol, "interval": key.interval, "startTime": start, "endTime": end, "limit": limit}
        with _translated(f"{key} klines from {format_time(start)}"):
            rows = await self.exchange.publicGetKlines(params)
        if not isinstance(rows, list):
            raise DownloadUnavailable(f"{key} klines: unexpected answer {rows!r:.200}")
        return rows

    async def close(self) -> None:
        await self.exchange.close()


def _parse(raw: Any, key: StreamKey) -> Row:
    """A raw kline row, checked; its strings are kept exactly as sent."""
    try:
        time = int(raw[0])
        strings = [str(cell) for cell in raw[1:6]]
        o, h, lo, c, v = (Decimal(s) for s in strings)
    except (TypeError, IndexError, ValueError, InvalidOperation):
        raise DownloadUnavailable(f"{key}: malformed kline row {raw!r:.200}") from None
    if len(strings) != 5 or not all(d.is_finite() and d >= 0 for d in (o, h, lo, c, v)):
        raise DownloadUnavailable(f"{key}: malformed kline row {raw!r:.200}")
    if not lo <= min(o, c) <= max(o, c) <= h:
        raise DownloadUnavailable(f"{key}: inconsistent kline row (low/high) {raw!r:.200}")
    return Row(time, *strings)


def _first_slot(time: int, step: int) -> int:
    """The first candle open time >= ``time`` (UTC-aligned; weeks open on Monday)."""
    offset = _WEEK_OFFSET_MS if step == INTERVAL_MS["1w"] else 0
    return time + (-(time - offset)) % step


def _slots(start: int, end: int, step: int) -> int:
    """Candle open times in ``[start, end)``."""
    first = _first_slot(start, step)
    return 0 if first >= end else (end - 1 - first) // step + 1


def _merge(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[0] < r[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


# -- outputs -------------------------------------------------------------------------------------


class CsvSink:
    """Append-only CSV; resumes after its last candle. A torn last line (an interrupted write) is cut off.

    A new file gets the ``time_iso`` column; a file begun without it (an older tradebotd) is
    continued in its own six columns, so every line of a file has the same columns."""

    def __init__(self, path: Path, key: StreamKey) -> None:
        self.path = path
        self.key = key
        self.iso = True
        self.last = self._prepare()
        self._file = path.open("a", encoding="utf-8", newline="")
        if self.last is None and path.stat().st_size == 0:
            self._file.write(WRITTEN_HEADER + "\n")
            self._file.flush()

    def __str__(self) -> str:
        return str(self.path)

    def _prepare(self) -> int | None:
        """The open time of the last complete row (None for a new or empty file)."""
        try:
            with self.path.open("rb+") as f:
                size = f.seek(0, os.SEEK_END)
                if size == 0:
                    return None
                f.seek(max(0, size - 4096))
                tail = f.read()
                if not tail.endswith(b"\n"):
                    cut = tail.rfind(b"\n")
                    if cut < 0:
                        raise CandleDataError(f"{self.path}: does not look like a candle CSV (no complete line)")
                    f.truncate(size - len(tail) + cut + 1)
                    tail = tail[: cut + 1]
                f.seek(0)
                header = f.readline().strip().decode("utf-8", errors="replace")
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return None
        except OSError as exc:
            raise CandleDataError(f"{self.path}: {exc.strerror}") from None
        columns = [cell.strip().lower() for cell in header.split(",")]
        if (problem := header_problem(columns)) is not None or columns[len(COLUMNS) :] not in ([], [ISO_COLUMN]):
            found = problem or f"expected the header {WRITTEN_HEADER}, found {header!r}"
            raise CandleDataError(f"{self.path}:1: {found}; not appending to it")
        self.iso = len(columns) > len(COLUMNS)
        last_line = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace")
        if last_line.strip().lower() == header.lower():
            return None
        try:
            return int(last_line.split(",", 1)[0])
        except ValueError:
            raise CandleDataError(f"{self.path}: cannot read the last candle's time from {last_line!r}") from None

    def missing(self, since: int, until: int) -> list[tuple[int, int]]:
        start = since if self.last is None else max(since, self.last + self.key.interval_ms)
        return [(start, until)] if start < until else []

    def write(self, rows: Sequence[Row]) -> None:
        fresh = [r for r in rows if self.last is None or r.time > self.last]
        if not fresh:
            return
        if self.iso:
            lines = (f"{r.time},{r.open},{r.high},{r.low},{r.close},{r.volume},{format_time(r.time)}\n" for r in fresh)
        else:
            lines = (f"{r.time},{r.open},{r.high},{r.low},{r.close},{r.volume}\n" for r in fresh)
        self._file.write("".join(lines))
        self._file.flush()
        self.last = fresh[-1].time

    def close(self) -> None:
        self._file.close()


class StoreSink:
    """The store's ``market_data`` (upserts: writing a candle twice is harmless); fills its holes."""

    def __init__(self, path: Path, key: StreamKey) -> None:
        self.path = path
        self.key = key
        self._store = SqliteStore(path)
        self._store.migrate()

    def __str__(self) -> str:
        return f"{self.path} (market_data)"

    def missing(self, since: int, until: int) -> list[tuple[int, int]]:
        step = self.key.interval_ms
        times = stored_open_times(self.path, self.key, since, until).tolist()
        if not times:
            return [(since, until)]
        holes = [(a + step, b) for a, b in pairwise(times) if b - a > step]
        if times[0] - since >= step:
            holes.insert(0, (since, times[0]))
        if times[-1] + step < until:
            holes.append((times[-1] + step, until))
        return holes

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        symbol, interval = self.key.symbol, self.key.interval
        candles = [
            Candle(
                symbol,
                interval,
                r.time,
                Decimal(r.open),
                Decimal(r.high),
                Decimal(r.low),
                Decimal(r.close),
                Decimal(r.volume),
            )
            for r in rows
        ]
        self._store.apply([WriteBatch(candles=candles)])

    def close(self) -> None:
        self._store.close()


class Sink(Protocol):
    def missing(self, since: int, until: int) -> list[tuple[int, int]]: ...

    def write(self, rows: Sequence[Row]) -> None: ...

    def close(self) -> None: ...


# -- the download --------------------------------------------------------------------------------


@dataclass(slots=True)
class DownloadReport:
    key: StreamKey
    since: int
    until: int  # exclusive; the live edge when --until was later
    requested: int = 0  # candle slots the outputs lacked
    downloaded: int = 0
    requests: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)
    first: int | None = None  # open times of the first and last candle downloaded
    last: int | None = None

    @property
    def missing(self) -> int:
        """Slots the exchange had no candle for (outages), within what was requested."""
        return self.requested - self.downloaded


async def _call(action: Callable[[], Awaitable[_T]], *, retries: int, delay_s: float) -> _T:
    """Await ``action()``; retry a transient failure ``retries`` times with doubling delays."""
    for attempt in range(retries + 1):
        try:
            return await action()
        except DownloadUnavailable:
            if attempt == retries:
                raise
            await asyncio.sleep(delay_s * 2**attempt)  # backoff before retrying, not synchronisation
    raise AssertionError("unreachable")


async def download(
    source: KlineSource,
    key: StreamKey,
    since: int,
    until: int | None,
    sinks: Sequence[Sink],
    *,
    progress: bool = False,
    retries: int = 3,
    retry_delay_s: float = 1.0,
) -> DownloadReport:
    """Fetch the closed candles of ``key`` with ``since <= open time < until`` that ``sinks`` lack."""
    step = key.interval_ms
    now = await _call(source.server_time, retries=retries, delay_s=retry_delay_s)
    if since > now:
        raise DownloadRejected(f"--since {format_time(since)} is in the future (exchange time {format_time(now)})")
    edge = _first_slot(now - step + 1, step)  # open time of the candle in progress: earlier ones closed
    end = edge if until is None else min(until, edge)
    report = DownloadReport(key, since, max(since, end))
    report.ranges = _merge([r for sink in sinks for r in sink.missing(since, end)])
    report.requested = sum(_slots(a, b, step) for a, b in report.ranges)
    with tqdm(total=report.requested, unit="candle", desc=str(key), disable=not progress, leave=False) as bar:
        for start, stop in report.ranges:
            cursor = start
            while cursor < stop:
                page_start = cursor
                fetch = partial(source.klines, key, page_start, stop - 1, PAGE_LIMIT)
                raw = await _call(fetch, retries=retries, delay_s=retry_delay_s)
                report.requests += 1
                rows = [row for row in (_parse(r, key) for r in raw) if page_start <= row.time < stop]
                if any(b.time <= a.time for a, b in pairwise(rows)):
                    raise DownloadUnavailable(f"{key}: klines out of order in the page from {format_time(page_start)}")
                for sink in sinks:
                    sink.write(rows)
                if rows:
                    report.downloaded += len(rows)
                    report.first = rows[0].time if report.first is None else report.first
                    report.last = rows[-1].time
                # A short page means the exchange has nothing more in this range (an outage
                # at the end is a gap, not an error).
                cursor = stop if len(raw) < PAGE_LIMIT or not rows else max(rows[-1].time + step, cursor + step)
                bar.update(_slots(page_start, cursor, step))
    return report


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``tradebotd data download``'s arguments to ``parser``."""
    parser.add_argument("symbol", metavar="SYMBOL", help="e.g. BTCUSDT (BTC/USDT and btc-usdt work too)")
    parser.add_argument("interval", metavar="INTERVAL", help=f"one of {', '.join(INTERVAL_MS)}")
    parser.add_argument(
        "--since", type=time_argument, required=True, metavar="DATE", help="first open time (UTC) or epoch ms"
    )
    parser.add_argument(
        "--until",
        type=time_argument,
        metavar="DATE",
        help="stop before this open time (default: the last closed candle)",
    )
    parser.add_argument("--out", type=Path, metavar="CSV", help="write a CSV (time,open,...,volume,time_iso)")
    parser.add_argument("--store", action="store_true", help="with --out: also write the store's market_data")


def _stream(args: argparse.Namespace) -> StreamKey:
    key = stream_key(args.symbol, args.interval)
    if args.until is not None and args.until <= args.since:
        raise UsageError("--until must be after --since")
    return key


async def run_async(
    args: argparse.Namespace,
    settings: Settings | None = None,
    *,
    progress: bool | None = None,
    retry_delay_s: float = 1.0,
) -> int:
    """The command (configuration from ``args.config`` unless ``settings`` are given); ``progress``
    None shows the bar when stderr is a terminal."""
    prog = "tradebotd data download"
    try:
        if settings is None:
            settings, _ = load_settings(getattr(args, "config", None))
        key = _stream(args)
    except (ConfigError, UsageError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    sinks: list[Sink] = []
    source = CcxtKlines(settings.market.rest_url)
    try:
        if args.out is not None:
            sinks.append(CsvSink(args.out, key))
        if args.out is None or args.store:
            sinks.append(StoreSink(settings.store.path, key))
        report = await download(
            source,
            key,
            args.since,
            args.until,
            sinks,
            progress=sys.stderr.isatty() if progress is None else progress,
            retry_delay_s=retry_delay_s,
        )
    except (CandleDataError, DownloadRejected) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except DownloadError as exc:
        print(f"{prog}: {exc}; what was downloaded is kept: run the same command again to resume", file=sys.stderr)
        return 1
    finally:
        for sink in sinks:
            sink.close()
        await source.close()
    _print_report(report, sinks)
    return 0


def _print_report(report: DownloadReport, sinks: Sequence[Sink]) -> None:
    where = " and ".join(str(s) for s in sinks)
    span = f"{format_time(report.since)} → {format_time(report.until)}"
    if not report.downloaded:
        gaps = f" (re-checked {report.missing:,} candle slots the exchange has no data for)" if report.missing else ""
        print(f"{report.key}: {span} is up to date in {where}{gaps}")
        return
    print(f"{report.key}: {report.downloaded:,} candles downloaded ({span}) in {report.requests} requests to {where}")
    if report.missing:
        print(f"{report.key}: {report.missing:,} candle slots had no data (exchange gaps; left as gaps)")


def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """``tradebotd data download`` with options from a parser set up by :func:`add_arguments`."""
    return asyncio.run(run_async(args, settings))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tradebotd.data.download``: the same command without the ``tradebotd`` wrapper."""
    parser = standalone_parser("python -m tradebotd.data.download", DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
