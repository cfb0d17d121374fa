"""``sma_crossover.js`` in plain Python: what the sandboxes are checked and benchmarked against
(the floor of the native benchmark, the third edition in the backtest benchmark's parity check).

It decides exactly as the JS does: the same warm-up, conditions, reasons and indicators, and the
same floats. Every average is summed oldest to newest in a loop and divided once, as the JS (and
the WAT and AssemblyScript editions) do; ``sum()`` would not do, since Python 3.12 it adds floats
with compensated summation, which can differ from the JS in the last bit.

It is a :class:`tradebotd.engine.BatchRuntime`, so the backtest runner drives it like a sandbox.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tradebotd.model import Decision, Position, Signal
from tradebotd.sandbox.sandboxed import EvalInfo

__all__ = ["SmaCrossover"]

Candle = tuple[float, float, float, float, float, float]
_Averages = tuple[float, float, float, float]  # fast now, slow now, fast before, slow before
_NO_INFO = EvalInfo(0.0)  # plain Python: no sandbox, nothing timed or captured


class SmaCrossover:
    """Buy when the fast SMA of the closes crosses above the slow one, sell on the cross below.

    The parameters and their defaults are the JS's (``fast`` 5, ``slow`` 20, ``amount`` 0.001);
    ``max_candles`` is the history the sandbox would keep (it shows only in the warm-up reason).
    """

    def __init__(self, *, fast: int = 5, slow: int = 20, amount: float = 0.001, max_candles: int = 1000) -> None:
        self.fast, self.slow, self.amount, self.max_candles = fast, slow, amount, max_candles
        self._closes: list[float] = []

    def push_history(self, candles: npt.NDArray[np.float64]) -> None:
        for close in np.asarray(candles, dtype=np.float64)[:, 4].tolist():
            self._append(close)

    def step(self, candle: Candle, position: Position | None) -> tuple[Decision, EvalInfo]:
        self._append(candle[4])
        averages = self._averages()
        if averages is None:
            seen = min(len(self._closes), self.max_candles)
            return Decision("hold", reason=f"warming up ({seen}/{self.slow + 1} candles)"), _NO_INFO
        return self._decision(_signal(averages, position), averages), _NO_INFO

    def run_until_signal(
        self, candles: npt.NDArray[np.float64], position: Position | None
    ) -> tuple[int, Decision | None]:
        """Only a signal's decision is built: holds cost the averages alone (the backtest path)."""
        for done, close in enumerate(np.asarray(candles, dtype=np.float64)[:, 4].tolist(), start=1):
            self._append(close)
            averages = self._averages()
            if averages is not None and (signal := _signal(averages, position)) != "hold":
                return done, self._decision(signal, averages)
        return len(candles), None

    def close(self) -> None:
        self._closes.clear()

    def _append(self, close: float) -> None:
        closes = self._closes
        closes.append(close)
        if len(closes) > 2 * self.max_candles:  # trimmed in halves: amortised O(1) per candle
            del closes[: len(closes) - self.max_candles]

    def _averages(self) -> _Averages | None:
        closes, fast, slow = self._closes, self.fast, self.slow
        n = len(closes)
        if min(n, self.max_candles) < slow + 1:
            return None
        return _mean(closes, n, fast), _mean(closes, n, slow), _mean(closes, n - 1, fast), _mean(closes, n - 1, slow)

    def _decision(self, signal: Signal, averages: _Averages) -> Decision:
        indicators = {"fastSma": averages[0], "slowSma": averages[1]}
        if signal == "buy":
            return Decision("buy", amount=self.amount, reason="fast SMA crossed above slow SMA", indicators=indicators)
        if signal == "sell":
            return Decision("sell", reason="fast SMA crossed below slow SMA", indicators=indicators)
        return Decision("hold", indicators=indicators)


def _signal(averages: _Averages, position: Position | None) -> Signal:
    fast_now, slow_now, fast_before, slow_before = averages
    if position is None and fast_before <= slow_before and fast_now > slow_now:
        return "buy"
    if position is not None and fast_before >= slow_before and fast_now < slow_now:
        return "sell"
    return "hold"


def _mean(values: list[float], end: int, n: int) -> float:
    """The mean of ``values[end - n:end]``, summed oldest to newest like the JS (see above)."""
    total = 0.0
    for i in range(end - n, end):
        total += values[i]
    return total / n
