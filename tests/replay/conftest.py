"""Fixtures for the replay tests: small synthetic series and a running server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tradebotd.model import StreamKey
from tradebotd.replay.demo import generate
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer

START_MS = 1_700_000_000_000 - 1_700_000_000_000 % 300_000  # aligned to 5 minutes
PAST = 10


def series(symbol: str = "BTCUSDT", count: int = 60, *, seed: int = 7, start_ms: int = START_MS) -> Series:
    return Series(StreamKey(symbol, "1m"), tuple(generate(count, seed=seed, start_ms=start_ms, symbol=symbol)))


@pytest.fixture
async def server() -> AsyncIterator[ReplayServer]:
    async with ReplayServer([series("BTCUSDT"), series("ETHUSDT", seed=8)], past=PAST, ping_interval_s=None) as replay:
        yield replay
