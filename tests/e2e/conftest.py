"""End-to-end fixtures: a candle series with known SMA crossings, the replay server as Binance,
the real daemon with the real JS sandbox and SQLite store, and a reference implementation of the
example strategy to compute the trades that must come out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from tradebotd.daemon import Daemon
from tradebotd.model import Candle, StreamKey
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer
from tradebotd.testing import replay_settings, until_stored

EXAMPLE = Path(__file__).resolve().parents[2] / "tradebotd" / "examples" / "sma_crossover.js"
MIN = 60_000
START = 1_700_000_000_000 - 1_700_000_000_000 % MIN
PAST = 60  # candles already closed when the daemon starts
HISTORY = 30  # warm-up candles the daemon fetches
AMOUNT = Decimal("0.01")
KEY = StreamKey("BTCUSDT", "1m")


def wave_closes(count: int) -> list[Decimal]:
    """Up 17 candles, down 13, repeat, with small steps that vary: the 5/20 SMAs cross a few times
    per cycle, never with a near-tie."""
    closes, price = [], Decimal("30000")
    for i in range(count):
        phase = i % 30
        step = Decimal(40 + (i * 7) % 23) if phase < 17 else -Decimal(55 + (i * 5) % 19)
        price += step
        closes.append(price)
    return closes


def wave_series(count: int = 260) -> Series:
    candles, prev = [], Decimal("30000")
    for i, close in enumerate(wave_closes(count)):
        candles.append(
            Candle(
                "BTCUSDT",
                "1m",
                START + i * MIN,
                prev,
                max(prev, close) + 5,
                min(prev, close) - 5,
                close,
                Decimal("1.5"),
            )
        )
        prev = close
    return Series(KEY, tuple(candles))


@dataclass(frozen=True)
class ExpectedFill:
    side: str
    candle_time: int
    price: Decimal
    amount: Decimal


def reference_fills(series: Series, first: int, last: int, fast: int = 5, slow: int = 20) -> list[ExpectedFill]:
    """The example strategy, re-implemented in Python (same summation order as the JS, so the
    same floats), evaluated on candles ``first..last``; fills at the close, as paper trading does."""

    def sma(values: list[float], n: int) -> float:
        total = 0.0
        for v in values[len(values) - n :]:
            total += v
        return total / n

    closes = [float(c.close) for c in series.candles]
    fills, long = [], False
    for i in range(first, last + 1):
        window = closes[: i + 1]
        if len(window) < slow + 1:
            continue
        fast_now, slow_now = sma(window, fast), sma(window, slow)
        fast_prev, slow_prev = sma(window[:-1], fast), sma(window[:-1], slow)
        candle = series.candles[i]
        if not long and fast_prev <= slow_prev and fast_now > slow_now:
            fills.append(ExpectedFill("buy", candle.open_time, candle.close, AMOUNT))
            long = True
        elif long and fast_prev >= slow_prev and fast_now < slow_now:
            fills.append(ExpectedFill("sell", candle.open_time, candle.close, AMOUNT))
            long = False
    return fills


def fills_of(daemon: Daemon, sid: str) -> list[ExpectedFill]:
    return [ExpectedFill(t.side, t.candle_time, t.price, t.amount) for t in daemon.store.trades(sid)]


@pytest.fixture
def series() -> Series:
    return wave_series()


@pytest.fixture
async def server(series: Series) -> AsyncIterator[ReplayServer]:
    async with ReplayServer([series], past=PAST, ping_interval_s=None) as replay:
        yield replay


def add_example(daemon: Daemon, name: str = "sma", status: str = "running") -> str:
    return daemon.store.add_strategy(
        name=name,
        user_id="u",
        code=EXAMPLE.read_text(),
        kind="js",
        asset="btcusdt",
        interval="1m",
        parameters={"fast": 5, "slow": 20, "amount": 0.01},
        portfolio_id=daemon.portfolio_id,
        status=status,  # type: ignore[arg-type]
    )


async def started(daemon: Daemon, *sids: str) -> Daemon:
    """Start the daemon and wait until every strategy is warmed up (its cursor is stored)."""
    await daemon.start()
    await until_stored(daemon, lambda: all(s in daemon.store.cursors() for s in sids))
    return daemon


def make_daemon(server: ReplayServer, tmp_path: Path, **kw: object) -> Daemon:
    return Daemon(replay_settings(server, tmp_path / "e2e.db", history=HISTORY, **kw))
