"""Helpers for the backtest tests: a scripted JS strategy and small candle tables written as text."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from tradebotd.data.candles import CandleTable
from tradebotd.model import StreamKey
from tradebotd.sandbox.js import JsStrategy

KEY = StreamKey("BTCUSDT", "1m")
MIN = 60_000
T0 = 1_700_000_040_000  # a whole minute

# Each candle's volume is an instruction, so a test's series spells out what the strategy does:
#   1 buy (amount, and takeProfit / stopLoss at close +/- tp / sl, when those parameters are set)
#   2 sell, 3 throw, anything else hold. The reason says how many candles the strategy saw.
SCRIPTED = """
function tradingStrategy({ candles, position, parameters }) {
  const c = candles[candles.length - 1];
  const seen = `saw ${candles.length} candles`;
  if (c.volume === 1) {
    const order = { signal: 'buy', reason: `scripted buy, ${seen}` };
    if (parameters.amount !== undefined) order.amount = parameters.amount;
    if (parameters.tp !== undefined) order.takeProfit = c.close + parameters.tp;
    if (parameters.sl !== undefined) order.stopLoss = c.close - parameters.sl;
    return order;
  }
  if (c.volume === 2) return { signal: 'sell', reason: `scripted sell, ${seen}` };
  if (c.volume === 3) throw new Error(`scripted failure, ${seen}`);
  return { signal: 'hold' };
}
"""


def table(*lines: str, key: StreamKey = KEY) -> CandleTable:
    """Candles from ``"minute open high low close volume"`` lines (minute = offset from T0)."""
    rows = [line.split() for line in lines]
    text = np.array([row[1:] for row in rows], dtype=np.bytes_)
    values = np.empty((len(rows), 6))
    values[:, 0] = [T0 + int(row[0]) * MIN for row in rows]
    values[:, 1:] = text.astype(np.float64)
    return CandleTable(key, values, text)


def scripted(**parameters: Any) -> JsStrategy:
    return JsStrategy(SCRIPTED, parameters=parameters, interval_ms=MIN)


@pytest.fixture
def strategy() -> Iterator[JsStrategy]:
    runtime = scripted(amount=1, tp=10, sl=5)
    yield runtime
    runtime.close()


def D(x: str | int) -> Decimal:
    return Decimal(x)


def at(minute: int) -> int:
    return T0 + minute * MIN


def fills_of(result: Any) -> list[tuple[str, int, str, str, str]]:
    """(side, minute, price, amount, fee) per fill."""
    return [(f.side, (f.candle_time - T0) // MIN, str(f.price), str(f.amount), str(f.fee)) for f in result.fills]
