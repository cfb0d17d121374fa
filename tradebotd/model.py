"""Domain values shared by every layer: intervals, stream keys, candles, positions, decisions.

Everything here is an immutable value without I/O. Prices and quantities that reach a broker are
``Decimal``; strategies see floats (``Candle.as_floats``), which is fine for indicators.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, NewType

__all__ = [
    "INTERVAL_MS",
    "Candle",
    "Decision",
    "IndicatorValue",
    "OrderKind",
    "Position",
    "Signal",
    "StrategyId",
    "StreamKey",
    "interval_ms",
    "normalize_symbol",
    "stream_key",
]

StrategyId = NewType("StrategyId", str)
Signal = Literal["buy", "sell", "hold"]
OrderKind = Literal["market", "limit"]
IndicatorValue = float | int | str | bool | list[float]

# Binance kline intervals with a fixed length. "1M" (calendar month) is deliberately absent:
# its close time depends on the calendar and no strategy in the web app uses it.
INTERVAL_MS: Mapping[str, int] = {
    "1s": 1_000,
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
    "3d": 259_200_000,
    "1w": 604_800_000,
}


def interval_ms(interval: str) -> int:
    """Length of a kline interval in milliseconds; ``ValueError`` names the valid ones."""
    try:
        return INTERVAL_MS[interval]
    except KeyError:
        raise ValueError(f"unsupported kline interval {interval!r}; expected one of {', '.join(INTERVAL_MS)}") from None


def normalize_symbol(asset: str) -> str:
    """``btcusdt``, ``BTC/USDT`` and ``btc-usdt`` all mean Binance's ``BTCUSDT``."""
    symbol = asset.replace("/", "").replace("-", "").replace("_", "").strip().upper()
    if not symbol.isalnum() or not 2 <= len(symbol) <= 20:
        raise ValueError(f"not a Binance spot symbol: {asset!r}")
    return symbol


@dataclass(frozen=True, slots=True, order=True)
class StreamKey:
    """One kline stream: a symbol (upper case, as REST wants it) and an interval."""

    symbol: str
    interval: str

    def __post_init__(self) -> None:
        interval_ms(self.interval)  # validate early
        if self.symbol != self.symbol.upper():
            raise ValueError(f"StreamKey symbol must be upper case, got {self.symbol!r}")

    @property
    def stream_name(self) -> str:
        """Binance WebSocket stream name, e.g. ``btcusdt@kline_1m`` (symbol lower case)."""
        return f"{self.symbol.lower()}@kline_{self.interval}"

    @property
    def interval_ms(self) -> int:
        return INTERVAL_MS[self.interval]

    def __str__(self) -> str:
        return f"{self.symbol}/{self.interval}"


@functools.lru_cache(maxsize=1024)
def stream_key(symbol: str, interval: str) -> StreamKey:
    """The (validated, immutable) key, made once per stream: ``Candle.key`` is on hot paths."""
    return StreamKey(symbol, interval)


@dataclass(frozen=True, slots=True)
class Candle:
    """One kline. ``open_time`` is the open time in ms (UTC), as Binance and the web app use it.

    ``closed`` is true only for a final kline (``k.x`` on the stream, or a REST row whose close
    time has passed). Prices are exact decimals parsed from Binance's strings.
    """

    symbol: str
    interval: str
    open_time: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    closed: bool = True

    @property
    def key(self) -> StreamKey:
        return stream_key(self.symbol, self.interval)

    @property
    def close_time(self) -> int:
        """Binance's close time: open time + interval - 1 ms."""
        return self.open_time + INTERVAL_MS[self.interval] - 1

    def as_floats(self) -> tuple[float, float, float, float, float, float]:
        """``(time, open, high, low, close, volume)`` for a strategy (floats are fine there)."""
        return (
            float(self.open_time),
            float(self.open),
            float(self.high),
            float(self.low),
            float(self.close),
            float(self.volume),
        )


@dataclass(frozen=True, slots=True)
class Position:
    """An open long spot position held by one strategy."""

    amount: Decimal
    entry_price: Decimal
    entry_time: int  # open time (ms) of the candle whose close opened the position
    take_profit: Decimal | None = None
    stop_loss: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """A validated strategy result: ``{signal, amount?, reason?, indicators?, takeProfit?, stopLoss?,
    orderType?, limitPrice?}``.

    Numbers are finite floats (the sandbox rejects NaN, Infinity and ``null`` numbers); amounts and
    prices are positive when present; ``limit_price`` is set exactly when ``order_type`` is
    ``"limit"``. Conversion to ``Decimal`` happens at the order boundary (``tradebotd.orders.intent``).
    """

    signal: Signal
    amount: float | None = None
    reason: str | None = None
    indicators: Mapping[str, IndicatorValue] | None = None
    take_profit: float | None = None
    stop_loss: float | None = None
    order_type: OrderKind = "market"
    limit_price: float | None = None


HOLD = Decision(signal="hold")
