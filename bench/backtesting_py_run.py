"""backtesting.py's side of ``bench.versus``: ``python -m bench.backtesting_py_run CSV --fast F --slow S``.

Runs in its own process (``bench.versus`` starts it), so neither tradebotd nor the bench need
backtesting.py, pandas or bokeh importable: only ``make bench`` installs them, from
``bench/requirements-backtesting.txt``. Prints one JSON object on stdout: the versions, the
candles, ``run_s`` (wall time of ``Backtest.run()``: the strategy's ``init`` computing the
indicators, the bar loop and backtesting.py's statistics, which is what a user waits for) and the
closed trades as ``[entry_bar, exit_bar, entry_price, exit_price]``.

The strategy is the one ``tradebotd/examples/sma_crossover.js`` is, written the way backtesting.py
is meant to be used (indicators precomputed over the whole series with ``self.I``, decisions in
``next``):

* buy when there is no position, fast SMA <= slow SMA on the previous candle and fast > slow on
  this one; close the position when fast >= slow before and fast < slow now (the JS strategy's
  comparisons exactly: ``backtesting.lib.crossover`` is strict on the previous candle);
* the SMAs are summed oldest to newest and divided once, as the JS does, so both sides compute
  the same floats and a near-tie cannot cross on one side only (pandas' rolling mean rounds
  differently);
* ``trade_on_close=True``: a signal fills at its own candle's close, as tradebotd's paper broker
  does (backtesting.py's default is the next candle's open); no spread, so a fill's price is the
  close; ``commission`` as tradebotd's fee (it changes cash, not trade prices);
* a fixed size of one unit (``size=1``) with cash enough that no order is ever refused;
* ``finalize_trades=False``: a position still open at the end is not a trade (tradebotd's
  trades.csv has only round trips too).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


def sma(values: npt.ArrayLike, n: int) -> npt.NDArray[np.float64]:
    """Simple moving average, NaN for the first n - 1 values; each window summed oldest to newest
    (one vectorised add per position in the window) and divided once, like the JS strategy."""
    closes = np.asarray(values, dtype=np.float64)
    out = np.full(len(closes), np.nan)
    if len(closes) < n:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(closes, n)
    total = windows[:, 0].copy()
    for k in range(1, n):
        total += windows[:, k]
    out[n - 1:] = total / n
    return out


def run(csv: Path, fast: int, slow: int, commission: float) -> dict[str, Any]:
    import pandas as pd  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from backtesting import Backtest, Strategy  # type: ignore[import-untyped,import-not-found,unused-ignore]

    raw = np.loadtxt(csv, delimiter=",", skiprows=1, usecols=range(6), dtype=np.float64, ndmin=2)
    frame = pd.DataFrame(
        raw[:, 1:6],
        columns=["Open", "High", "Low", "Close", "Volume"],
        index=pd.to_datetime(raw[:, 0].astype(np.int64), unit="ms"),
    )

    class SmaCross(Strategy):  # type: ignore[misc]
        n_fast = fast
        n_slow = slow

        def init(self) -> None:
            self.fast = self.I(sma, self.data.Close, self.n_fast)
            self.slow = self.I(sma, self.data.Close, self.n_slow)

        def next(self) -> None:
            fast_prev, fast_now = self.fast[-2], self.fast[-1]
            slow_prev, slow_now = self.slow[-2], self.slow[-1]
            if not self.position:
                if fast_prev <= slow_prev and fast_now > slow_now:
                    self.buy(size=1)
            elif fast_prev >= slow_prev and fast_now < slow_now:
                self.position.close()

    cash = float(raw[:, 4].max()) * 100 if len(raw) else 1.0
    backtest = Backtest(
        frame, SmaCross, cash=cash, commission=commission, trade_on_close=True, finalize_trades=False
    )
    started = time.perf_counter()
    stats = backtest.run()
    run_s = time.perf_counter() - started
    trades = stats["_trades"]
    return {
        "backtesting": version("backtesting"),
        "pandas": version("pandas"),
        "numpy": version("numpy"),
        "candles": len(frame),
        "run_s": run_s,
        "trades": [
            [int(row.EntryBar), int(row.ExitBar), float(row.EntryPrice), float(row.ExitPrice)]
            for row in trades.itertuples()
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backtesting_py_run", description=__doc__.split("\n")[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--fast", type=int, default=5)
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--commission", type=float, default=0.001)
    args = parser.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")  # "some trades remain open": expected, see finalize_trades above
    print(json.dumps(run(args.csv, args.fast, args.slow, args.commission)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
