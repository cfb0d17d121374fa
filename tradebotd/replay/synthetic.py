"""Synthetic candles for many symbols at once: the multi-symbol replay without data files.

``synthetic_market(n, candles)`` gives one seeded random walk per symbol (the demo series'
generator, ``tradebotd.replay.demo.generate``, with a seed and a start price of its own), all on
the same base interval and starting at the same open time, aligned to a UTC day. Served by
``ReplayServer``, the candles of every symbol close in the same step, and every longer interval
whose bucket ends there (5m, 15m, 1h over 1m data) closes with them, as real minute boundaries
align. Benches and tests use it for N symbols x intervals; ``tradebotd replay-server --symbols N``
serves it.

It is not market data: prices only need to move enough for strategies to trade now and then.

Errors: ``ValueError`` for a count below 1 or an unknown interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Final

from tradebotd.model import StreamKey, interval_ms
from tradebotd.replay.demo import generate
from tradebotd.replay.series import Series

__all__ = ["DAY_MS", "START_MS", "SYMBOLS", "symbol_names", "synthetic_market"]

DAY_MS: Final = 86_400_000
START_MS: Final = 1_704_067_200_000  # 2024-01-01T00:00:00Z: aligned to every interval up to 1d
# Real spot symbol names for the first 50 (so logs and configs look familiar); more are numbered.
SYMBOLS: Final = (
    "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "TRXUSDT", "AVAXUSDT",
    "LINKUSDT", "DOTUSDT", "TONUSDT", "MATICUSDT", "SHIBUSDT", "LTCUSDT", "BCHUSDT", "UNIUSDT", "NEARUSDT",
    "ATOMUSDT", "XLMUSDT", "ETCUSDT", "FILUSDT", "APTUSDT", "ARBUSDT", "OPUSDT", "INJUSDT", "SUIUSDT",
    "AAVEUSDT", "ALGOUSDT", "VETUSDT", "ICPUSDT", "HBARUSDT", "GRTUSDT", "SANDUSDT", "MANAUSDT", "AXSUSDT",
    "EGLDUSDT", "THETAUSDT", "XTZUSDT", "EOSUSDT", "FTMUSDT", "RUNEUSDT", "KAVAUSDT", "CRVUSDT", "MKRUSDT",
    "SNXUSDT", "COMPUSDT", "ZECUSDT", "DASHUSDT", "ENJUSDT",
)  # fmt: skip


def symbol_names(count: int) -> list[str]:
    """The first ``count`` names: ``SYMBOLS``, then ``SYM050USDT``, ``SYM051USDT``, ..."""
    if count < 1:
        raise ValueError("need at least one symbol")
    return [SYMBOLS[i] if i < len(SYMBOLS) else f"SYM{i:03d}USDT" for i in range(count)]


def synthetic_market(
    symbols: int | Sequence[str],
    candles: int,
    *,
    interval: str = "1m",
    start_ms: int = START_MS,
    seed: int = 1,
) -> list[Series]:
    """One series of ``candles`` closed candles per symbol, all opening at ``start_ms``."""
    names = symbol_names(symbols) if isinstance(symbols, int) else list(symbols)
    step = interval_ms(interval)
    if candles < 1:
        raise ValueError("need at least one candle per symbol")
    if start_ms % min(step, DAY_MS):
        raise ValueError(f"start_ms {start_ms} is not aligned to {interval}")
    series = []
    for i, name in enumerate(names):
        # Start prices from 100 to ~50,000 (the generator rounds to cents), different per symbol.
        start_price = Decimal(100 + (i * 7919 + 17) % 50_000)
        walk = generate(candles, seed=seed * 1_000_003 + i, start_ms=start_ms, symbol=name, interval=interval,
                        start_price=start_price)
        series.append(Series(StreamKey(name, interval), tuple(walk)))
    return series
