"""The market feed's REST fetches: one task per tracker request (warm-up or backfill).

The tracker asks (``FetchHistory``, ``FetchRange``); a ``Fetcher`` task asks Binance through the
``KlinesClient`` (whose every request spends from the feed's request-weight budget), retries what
is retryable with backoff (at least as long as a ``Retry-After`` says), gives up on what the
server rejected (handing the processor a ``Refused`` with the server's answer, for the sink), and
hands the answer to the feed's processor through ``put``. A fetch whose
answer the tracker no longer wants (the stream was removed, or its connection replaced) stops
retrying.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from tradebotd.market.backoff import Backoff
from tradebotd.market.errors import MalformedMessage, RestRejected, RestUnavailable, describe
from tradebotd.market.rest import KlinesClient
from tradebotd.market.stats import FeedStats
from tradebotd.market.tracker import FetchHistory, FetchRange
from tradebotd.model import Candle, StreamKey

__all__ = ["Fetcher", "HistoryAnswer", "RangeAnswer", "Refused"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class HistoryAnswer:
    request: int
    candles: list[Candle]
    server_now_ms: int


@dataclass(slots=True)
class RangeAnswer:
    request: int
    candles: list[tuple[Candle, int]]
    server_now_ms: int


@dataclass(slots=True)
class Refused:
    """The exchange rejected the stream's request (e.g. ``Invalid symbol. (code -1121)``): the
    same request would fail again."""

    key: StreamKey
    reason: str


Answer = HistoryAnswer | RangeAnswer | Refused


class Fetcher:
    """Runs fetches in a task group, at most ``concurrency`` at a time."""

    def __init__(
        self,
        client: KlinesClient,
        group: asyncio.TaskGroup,
        *,
        put: Callable[[Answer], None],
        is_pending: Callable[[int], bool],
        backoff: Backoff,
        rng: random.Random,
        stats: FeedStats,
        concurrency: int,
    ) -> None:
        self._client = client
        self._group = group
        self._put = put
        self._is_pending = is_pending
        self._backoff = backoff
        self._rng = rng
        self._stats = stats
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, request: FetchHistory | FetchRange) -> None:
        task = self._group.create_task(self._fetch(request), name=f"market-fetch-{request.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _fetch(self, request: FetchHistory | FetchRange) -> None:
        if isinstance(request, FetchRange) and request.attempt:
            # An earlier answer left a gap: REST may lag the stream by a moment.
            await asyncio.sleep(self._backoff.delay(request.attempt, self._rng))
        failures = 0
        while self._is_pending(request.request):
            try:
                async with self._slots:
                    answer = await self._fetch_once(request)
            except RestRejected as exc:
                self._stats.rest_failures += 1
                log.error("market data request rejected", stream=str(request.key), error=describe(exc))
                self._put(Refused(request.key, exc.answer))
                return
            except (RestUnavailable, MalformedMessage) as exc:
                self._stats.rest_failures += 1
                failures += 1
                delay = self._backoff.delay(failures, self._rng)
                if isinstance(exc, RestUnavailable) and exc.retry_after_s is not None:
                    delay = max(delay, exc.retry_after_s)
                log.warning(
                    "market data request failed; retrying",
                    stream=str(request.key),
                    error=describe(exc),
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
            else:
                self._put(answer)
                return

    async def _fetch_once(self, request: FetchHistory | FetchRange) -> Answer:
        if isinstance(request, FetchHistory):
            candles, now = await self._client.recent_closed(request.key, request.count)
            return HistoryAnswer(request.request, candles, now)
        pairs, now = await self._client.closed_since(request.key, request.start)
        return RangeAnswer(request.request, pairs, now)
