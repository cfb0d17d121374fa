"""Synthetic candles for many symbols at once: the multi-symbol replay without data files.

``synthetic_market(n, candles)`` gives one seeded random walk per symbol (alternating up and down
trends of 15-45 candles plus noise, like the demo series, with a seed and a start price of its
own; numpy draws the walk, so 50 symbols x 10,000 candles take about a second), all on the same
base interval and starting at the same open time, aligned to a UTC day. Served by
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

import numpy as np

from tradebotd.model import Candle, StreamKey, interval_ms
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
    return [
        Series(StreamKey(name, interval), _walk(name, interval, start_ms, step, candles, seed * 1_000_003 + i, i))
        for i, name in enumerate(names)
    ]


def _walk(
    symbol: str, interval: str, start_ms: int, step: int, count: int, seed: int, index: int
) -> tuple[Candle, ...]:
    rng = np.random.default_rng(seed)
    # Trends: a direction that flips every 15-45 candles, a strength of 2-6 bp per candle.
    lengths = rng.integers(15, 46, size=count // 15 + 2)
    strengths = 0.0002 + 0.0004 * rng.random(len(lengths))
    signs = np.where(np.arange(len(lengths)) % 2 == 0, 1.0, -1.0)
    drift = np.repeat(signs * strengths, lengths)[:count]
    returns = drift + 0.0006 * rng.standard_normal(count)
    # Start prices from 100 to ~50,000, different per symbol; prices are in cents.
    start = 100 + (index * 7919 + 17) % 50_000
    closes = np.maximum(start * np.cumprod(1.0 + returns), 0.01)
    opens = np.concatenate(([float(start)], closes[:-1]))
    wicks = np.abs(0.0003 * rng.standard_normal((2, count))) * opens
    highs = np.maximum(opens, closes) + wicks[0]
    lows = np.maximum(np.minimum(opens, closes) - wicks[1], 0.0)
    volumes = 3.0 + 25.0 * rng.random(count) * rng.random(count)
    rows = zip(
        np.round(opens, 2).tolist(),
        np.round(highs, 2).tolist(),
        np.round(lows, 2).tolist(),
        np.round(closes, 2).tolist(),
        np.round(volumes, 5).tolist(),
        strict=True,
    )
    candles = []
    for i, (o, h, lo, c, v) in enumerate(rows):
        open_, close = Decimal(f"{o:.2f}"), Decimal(f"{c:.2f}")
        high = max(Decimal(f"{h:.2f}"), open_, close)
        low = min(Decimal(f"{lo:.2f}"), open_, close)
        candles.append(Candle(symbol, interval, start_ms + i * step, open_, high, low, close, Decimal(f"{v:.5f}")))
    return tuple(candles)
