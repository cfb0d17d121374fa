"""REST market data for warm-up and backfill: ``/api/v3/klines`` and ``/api/v3/time`` over aiohttp,
and ``/api/v3/exchangeInfo`` for one symbol (``strategy add`` checks the asset with it).

Whether the newest kline row is closed is decided against the *server's* clock, read before the
rows are fetched (see ``wire.closed_candles``). A warm-up of many streams is a burst of requests,
so one reading of ``/api/v3/time`` serves every request of the next second, advanced by the
local monotonic clock: still a lower bound of the server's time when the rows are read, so a row
is never taken for closed too early, for one request instead of two. Paging is explicit: ccxt's
``paginate`` fetches the newest window instead of starting at ``since`` (wire-protocols notes,
section 4).

Every request first spends its Binance request weight from the ``Pacer`` given (klines 2, time 1),
so a warm-up of hundreds of streams stays within the IP's budget instead of running into 429s,
then from the ``SharedBudget`` given (the host's whole budget, shared with the exchange port),
which also hears every answer's status and headers.

Errors:

    MarketDataError
    ├── MalformedMessage    a 200 answer whose body is not what Binance sends
    └── RestError
        ├── RestUnavailable network error, timeout, HTTP 5xx, 429 or 418 (``retry_after_s``
        │                   from the ``Retry-After`` header when present)
        └── RestRejected    another HTTP 4xx, with Binance's error code
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import orjson
import structlog

from tradebotd.market.errors import MalformedMessage, RestRejected, RestUnavailable, describe
from tradebotd.market.pacing import Pacer, SharedBudget
from tradebotd.market.wire import (
    closed_candles,
    parse_kline_rows,
    parse_rest_error,
    parse_server_time,
    parse_symbol_status,
)
from tradebotd.model import Candle, StreamKey

__all__ = ["MAX_LIMIT", "WEIGHTS", "KlinesClient", "ServerClock"]

log = structlog.get_logger(__name__)

MAX_LIMIT = 1000  # Binance's maximum rows per klines request
# Binance spot request weights (rest-api.md): klines 2 whatever the limit, time 1.
WEIGHTS: Mapping[str, int] = {"/api/v3/klines": 2, "/api/v3/time": 1, "/api/v3/exchangeInfo": 20}
SERVER_TIME_REUSE_S = 1.0  # a server-time reading serves the requests of the next second


@dataclass(frozen=True, slots=True)
class ServerClock:
    """One server-time reading, anchored to the local monotonic clock (immune to wall-clock jumps)."""

    server_ms: int
    monotonic_ns: int  # local monotonic time half-way through the request
    answered_ns: int  # local monotonic time the answer arrived (the server read its clock before)

    def now_ms(self, monotonic_ns: int) -> int:
        return self.server_ms + (monotonic_ns - self.monotonic_ns) // 1_000_000

    def lower_bound_ms(self, monotonic_ns: int) -> int:
        """A time the server's clock has certainly reached at ``monotonic_ns`` (>= the answer):
        the server read ``server_ms`` before we got it, and clocks drift far less than 0.1%."""
        elapsed_ms = (monotonic_ns - self.answered_ns) // 1_000_000
        return self.server_ms + elapsed_ms - elapsed_ms // 1000


class KlinesClient:
    """Binance spot market-data REST calls on a caller-owned ``aiohttp.ClientSession``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        pacer: Pacer | None = None,
        shared: SharedBudget | None = None,
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._pacer = pacer
        self._shared = shared
        self.clock: ServerClock | None = None  # the latest reading of /api/v3/time

    async def server_time(self) -> int:
        """The server's clock in ms, read now; also updates ``clock``."""
        before = time.monotonic_ns()
        server_ms = parse_server_time(await self._get("/api/v3/time", {}))
        after = time.monotonic_ns()
        self.clock = ServerClock(server_ms, (before + after) // 2, after)
        return server_ms

    async def server_now_lower_bound(self) -> int:
        """A time the server's clock has reached: the last reading advanced by the local clock if
        it is younger than ``SERVER_TIME_REUSE_S``, else a new reading."""
        clock, now_ns = self.clock, time.monotonic_ns()
        if clock is not None and now_ns - clock.answered_ns < SERVER_TIME_REUSE_S * 1e9:
            return clock.lower_bound_ms(now_ns)
        return await self.server_time()

    async def symbol_status(self, symbol: str) -> str:
        """``/api/v3/exchangeInfo`` for one symbol: its status (``TRADING`` when it trades).
        An unknown symbol is ``RestRejected`` (Binance: -1121 "Invalid symbol.")."""
        return parse_symbol_status(await self._get("/api/v3/exchangeInfo", {"symbol": symbol}), symbol)

    async def klines(
        self,
        key: StreamKey,
        *,
        start_time: int | None = None,
        end_time: int | None = None,
        limit: int = 500,
    ) -> list[Candle]:
        """One ``/api/v3/klines`` page as candles with ``closed=False``, oldest first."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}")
        params = {"symbol": key.symbol, "interval": key.interval, "limit": str(limit)}
        if start_time is not None:
            params["startTime"] = str(start_time)
        if end_time is not None:
            params["endTime"] = str(end_time)
        return parse_kline_rows(key, await self._get("/api/v3/klines", params))

    async def recent_closed(self, key: StreamKey, count: int) -> tuple[list[Candle], int]:
        """The newest ``count`` closed candles (at least one when any exist), and the server time
        they were judged against. Pages backwards with ``endTime`` when ``count`` > 1000."""
        server_now = await self.server_now_lower_bound()
        wanted = max(count, 1) + 1  # +1: the newest row is usually the candle still in progress
        limit = min(wanted, MAX_LIMIT)
        rows = await self.klines(key, limit=limit)
        more = len(rows) == limit  # a short page means the market has no older candles
        while more and len(rows) < wanted:
            limit = min(wanted - len(rows), MAX_LIMIT)
            page = await self.klines(key, end_time=rows[0].open_time - 1, limit=limit)
            more = len(page) == limit
            rows = page + rows
        return closed_candles(rows, server_now), server_now

    async def closed_since(self, key: StreamKey, start: int) -> tuple[list[tuple[Candle, int]], int]:
        """Every closed candle with open time >= ``start``, each with the monotonic time its page
        arrived, and the server time they were judged against. Pages forwards with ``startTime``."""
        server_now = await self.server_now_lower_bound()
        rows: list[tuple[Candle, int]] = []
        cursor = start
        while True:
            page = await self.klines(key, start_time=cursor, limit=MAX_LIMIT)
            received_ns = time.monotonic_ns()
            rows += ((candle, received_ns) for candle in page)
            if len(page) < MAX_LIMIT or page[-1].close_time >= server_now:
                break  # the live edge
            cursor = page[-1].open_time + key.interval_ms
        closed = closed_candles([candle for candle, _ in rows], server_now)
        # Only the newest row can still be open, so the closed ones are a prefix of `rows`.
        return [(candle, rows[i][1]) for i, candle in enumerate(closed)], server_now

    async def _get(self, path: str, params: Mapping[str, str]) -> object:
        weight = WEIGHTS.get(path, 1)
        if self._pacer is not None:
            await self._pacer.acquire(weight)
        if self._shared is not None:
            await self._shared.acquire(weight)
        url = self._base_url + path
        try:
            async with self._session.get(url, params=params, timeout=self._timeout) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                if self._shared is not None:
                    self._shared.observe(status, response.headers)
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RestUnavailable(f"GET {path}: {describe(exc)}") from exc
        try:
            doc: object = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = body.decode("utf-8", "replace")
        if status == 200:
            if isinstance(doc, str):
                raise MalformedMessage(f"GET {path}: answer is not JSON: {doc[:80]!r}")
            return doc
        code, msg = parse_rest_error(doc)
        text = f"GET {path}: HTTP {status}" + (f" code {code}" if code is not None else "") + f": {msg}"
        if status in (418, 429) or status >= 500:
            raise RestUnavailable(text, retry_after_s=_seconds(retry_after))
        answer = msg + (f" (code {code})" if code is not None else f" (HTTP {status})")
        raise RestRejected(text, status=status, code=code, answer=answer)


def _seconds(header: str | None) -> float | None:
    try:
        return float(header) if header is not None else None
    except ValueError:
        return None
