"""Fixtures for the market tests: recorded frames, a recording sink, a replay server."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tradebotd.market import MarketFeed
from tradebotd.model import Candle, StreamKey
from tradebotd.replay.demo import generate
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ws"
START_MS = 1_700_000_040_000 - 600 * 60_000  # a whole minute
PAST = 120  # candles already closed when a test starts
WAIT_S = 10.0  # upper bound for any wait; a test that needs it has failed


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8").strip()


def fixture_lines(name: str) -> list[str]:
    return [line for line in fixture_text(name).splitlines() if line]


def make_series(symbol: str, count: int = 400, *, seed: int = 1, start_ms: int = START_MS) -> Series:
    candles = generate(count, seed=seed, start_ms=start_ms, symbol=symbol)
    return Series(StreamKey(symbol, "1m"), tuple(candles))


class RecordingSink:
    """Records what the feed delivers and checks the sink contract as it goes; tests await
    conditions on it instead of sleeping."""

    def __init__(self) -> None:
        self.history: dict[StreamKey, list[Candle]] = {}
        self.history_calls: list[StreamKey] = []
        self.closed: list[Candle] = []
        self.updates: list[Candle] = []
        self.refused: list[tuple[StreamKey, str]] = []
        self.fail_on_closed: Exception | None = None
        self._last_open: dict[StreamKey, int] = {}
        self._changed = asyncio.Event()

    async def on_history(self, key: StreamKey, candles: Sequence[Candle]) -> None:
        assert all(c.closed and c.key == key for c in candles)
        assert [c.open_time for c in candles] == sorted({c.open_time for c in candles})
        self.history[key] = list(candles)
        self.history_calls.append(key)
        self._last_open[key] = candles[-1].open_time if candles else -1
        self._notify()

    async def on_closed(self, candle: Candle, received_ns: int) -> None:
        assert candle.closed and received_ns > 0
        assert candle.key in self._last_open, f"on_closed before on_history for {candle.key}"
        assert candle.open_time > self._last_open[candle.key], f"{candle.key} out of order or repeated"
        self._last_open[candle.key] = candle.open_time
        if self.fail_on_closed is not None:
            raise self.fail_on_closed
        self.closed.append(candle)
        self._notify()

    async def on_refused(self, key: StreamKey, reason: str) -> None:
        self.refused.append((key, reason))
        self._notify()

    def on_update(self, candle: Candle) -> None:
        assert not candle.closed
        self.updates.append(candle)
        self._notify()

    def closed_for(self, key: StreamKey) -> list[Candle]:
        return [c for c in self.closed if c.key == key]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


FeedFactory = Callable[..., MarketFeed]


@contextlib.asynccontextmanager
async def feeds_against(server: ReplayServer, sink: RecordingSink, **defaults: Any) -> AsyncIterator[FeedFactory]:
    """A factory of running feeds against ``server`` (options: ``defaults``, then each call's);
    each is stopped, and its run() awaited, on exit."""
    running: list[tuple[MarketFeed, asyncio.Task[None]]] = []

    def start(**overrides: Any) -> MarketFeed:
        options: dict[str, Any] = {
            "ws_url": server.ws_url,
            "rest_url": server.rest_url,
            "sink": sink,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            "silence_timeout_s": None,  # the server only speaks when a test advances it
            **defaults,
            **overrides,
        }
        feed = MarketFeed(**options)
        running.append((feed, asyncio.create_task(feed.run())))
        return feed

    try:
        yield start
    finally:
        for feed, task in running:
            await feed.stop()
            await task


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def server() -> AsyncIterator[ReplayServer]:
    series = [make_series("BTCUSDT", seed=1), make_series("ETHUSDT", seed=2)]
    async with ReplayServer(series, past=PAST, ping_interval_s=None) as replay:
        yield replay


class ManualClock:
    """A ``tradebotd.market.pacing.Clock`` that only moves when the test says so: sleepers wake
    when ``advance_to_next()`` reaches their deadline. The replay server stamps its records with
    ``now``, so a test asserts on exact moments instead of wall-clock sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = 0
        self._sleeping = asyncio.Event()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count += 1
        heapq.heappush(self._sleepers, (deadline, self._count, future))
        self._sleeping.set()
        await future

    def _live(self) -> list[tuple[float, int, asyncio.Future[None]]]:
        self._sleepers = [entry for entry in self._sleepers if not entry[2].done()]
        heapq.heapify(self._sleepers)
        return self._sleepers

    async def wait_for_sleeper(self) -> None:
        while not self._live():
            self._sleeping.clear()
            await self._sleeping.wait()

    def advance_to_next(self) -> float:
        """Move to the earliest deadline and wake everyone due then; returns the new time."""
        sleepers = self._live()
        self._now = sleepers[0][0]
        while sleepers and sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(sleepers)
            future.set_result(None)
        return self._now
