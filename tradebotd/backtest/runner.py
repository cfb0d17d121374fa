"""The backtest loop: the live engine's per-candle rules over a :class:`CandleTable`, in one call.

Per closed candle, in order, exactly as :class:`tradebotd.engine.Engine` does live:

1. protective orders first: the paper exchange's ``on_candle`` fills a take-profit or stop-loss
   the candle touched (only candles after the entry candle; the stop wins a tie);
2. the strategy is evaluated on the candle with the position as it is now (from the ledger);
3. a buy or sell becomes an order through :func:`tradebotd.orders.intent.order_intent_at` (the
   daemon's ``order_intent`` minus the :class:`~tradebotd.model.Candle`), is validated and
   recorded by the same :class:`~tradebotd.orders.desk.OrderDesk` the daemon uses, and is
   executed by the :class:`~tradebotd.broker.paper.PaperBroker` at the candle's close
   (± slippage, fee on the fill), through :func:`~tradebotd.orders.desk.run_sync`: the same
   commands, state machine, events and ledger as live, only without awaiting.

So the orders, prices, amounts and fees are those paper trading would produce; the parity test
replays the same candles through the daemon and compares fills. One difference is inherent: live,
protective levels also react to in-progress updates, so when one candle reaches both levels the
live exit is whichever the market touched first, while a backtest only has the closed candle and
applies the paper rule (the stop wins).

What makes it fast is doing per candle only what a candle needs. The strategy runs in batches
(``run_until_signal``: many candles per sandbox call, returning at the first buy or sell), and a
batch never runs past a candle that could touch a protective level: while a protected position is
open, the next candidate is found with numpy over a window that doubles until one is found. A
float comparison cannot miss a touch (``float()`` rounds monotonically, so ``low <= stop`` in
decimals implies it in floats), and the broker then checks each candidate with exact decimals.
A signal costs one ``Decimal`` (the close); only touch candles become :class:`~tradebotd.model.Candle` objects.

Strategy errors follow the daemon's policy: the candle is skipped (logged in the result), and
``max_consecutive_errors`` failures in a row stop the backtest with :class:`BacktestError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

import numpy as np
import numpy.typing as npt

from tradebotd.broker.paper import PAPER, PaperBroker
from tradebotd.data.candles import HIGH, LOW, TIME, CandleTable
from tradebotd.engine.runtime import BatchRuntime, StrategyRuntime
from tradebotd.errors import StrategyError, TradebotdError
from tradebotd.model import Decision, Position
from tradebotd.orders.desk import Effects, OrderDesk, Venue, run_sync
from tradebotd.orders.intent import LevelDefaults, order_intent_at
from tradebotd.orders.ledger import Fill, Ledger
from tradebotd.orders.state import OrderBook
from tradebotd.orders.validate import OrderPolicy
from tradebotd.sandbox.errors import StrategyEvalError

__all__ = [
    "PORTFOLIO_ID",
    "STRATEGY_ID",
    "BacktestError",
    "BacktestResult",
    "BacktestSettings",
    "EvalFailure",
    "Refusal",
    "run_backtest",
]

STRATEGY_ID = "backtest"
PORTFOLIO_ID = "backtest"
_FIRST_WINDOW = 64  # candles scanned for a protective touch before the window doubles
_FIRST_BATCH = 64  # candles per run_until_signal call after a signal; doubles up to _MAX_BATCH
_MAX_BATCH = 16_384
_DONE_KEPT = 64  # finished orders the order book remembers (nothing reports on them late here)


class BacktestError(TradebotdError):
    """The backtest cannot run or was stopped (no candles to evaluate, a strategy error streak)."""


@dataclass(frozen=True, slots=True)
class BacktestSettings:
    """The paper account and evaluation settings (``[paper]`` config values by default)."""

    fee_rate: Decimal = Decimal("0.001")
    slippage_bps: Decimal = Decimal(0)
    cash: Decimal = Decimal(10_000)
    default_amount: Decimal = Decimal("0.001")
    # The first evaluation is on the warmup-th candle, so it sees `warmup` candles; the ones before
    # it are pushed as history only. 0 and 1 both evaluate every candle.
    warmup: int = 0
    max_consecutive_errors: int = 3

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError("warmup must be >= 0")
        if self.cash <= 0:
            raise ValueError("cash must be > 0")
        if not 0 <= self.fee_rate < 1:
            raise ValueError("fee rate must be in [0, 1)")
        if not 0 <= self.slippage_bps < 10_000:
            raise ValueError("slippage must be in [0, 10000) basis points")
        if self.default_amount <= 0:
            raise ValueError("the default amount must be > 0")
        if self.max_consecutive_errors < 1:
            raise ValueError("max_consecutive_errors must be >= 1")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A buy or sell the broker did not fill (rejected: e.g. not enough cash; ignored: sell while flat)."""

    candle_time: int
    side: str
    outcome: Literal["rejected", "ignored"]
    reason: str


@dataclass(frozen=True, slots=True)
class EvalFailure:
    """A candle whose evaluation failed (the daemon logs these and moves on)."""

    candle_time: int
    message: str


@dataclass(frozen=True, slots=True)
class BacktestResult:
    table: CandleTable
    settings: BacktestSettings
    first_evaluated: int  # index of the first evaluated candle (candles before it were history)
    fills: tuple[Fill, ...]
    fill_index: tuple[int, ...]  # candle index of each fill
    refusals: tuple[Refusal, ...]
    failures: tuple[EvalFailure, ...]
    final_cash: Decimal
    position: Position | None  # open at the end (marked to the last close in the summary)
    elapsed_s: float  # wall time of the evaluation loop

    @property
    def evaluated(self) -> int:
        return len(self.table) - self.first_evaluated


class _Stepwise:
    """``run_until_signal`` for a runtime that only has ``step`` (one call per candle)."""

    def __init__(self, runtime: StrategyRuntime) -> None:
        self._runtime = runtime

    def push_history(self, candles: npt.NDArray[np.float64]) -> None:
        self._runtime.push_history(candles)

    def run_until_signal(
        self, candles: npt.NDArray[np.float64], position: Position | None
    ) -> tuple[int, Decision | None]:
        for done, row in enumerate(candles.tolist(), start=1):
            try:
                decision, _report = self._runtime.step((row[0], row[1], row[2], row[3], row[4], row[5]), position)
            except StrategyEvalError as exc:
                exc.consumed = done
                raise
            except StrategyError as exc:
                raise StrategyEvalError(str(exc), consumed=done) from exc
            if decision.signal != "hold":
                return done, decision
        return len(candles), None


class _Run:
    """State of one backtest (one strategy, one paper account, one series)."""

    def __init__(
        self, runtime: StrategyRuntime, table: CandleTable, settings: BacktestSettings, levels: LevelDefaults | None
    ) -> None:
        self.runtime: BatchRuntime | _Stepwise = runtime if isinstance(runtime, BatchRuntime) else _Stepwise(runtime)
        self.table = table
        self.settings = settings
        self.levels = levels
        self.values = table.values
        self.broker = PaperBroker(
            fee_rate=settings.fee_rate, slippage_bps=settings.slippage_bps, cash={PORTFOLIO_ID: settings.cash}
        )
        self.ledger = Ledger({PORTFOLIO_ID: settings.cash})
        self.desk = OrderDesk(
            ledger=self.ledger,
            policy=OrderPolicy(settings.default_amount),
            venues={PAPER: Venue(PAPER, self.broker.rules)},
            book=OrderBook(done_kept=_DONE_KEPT),
        )
        self._out = Effects()
        self.fills: list[Fill] = []
        self.fill_index: list[int] = []
        self.refusals: list[Refusal] = []
        self.failures: list[EvalFailure] = []
        self._streak = 0
        self._last_failure = -2

    def run(self, start: int) -> None:
        n = len(self.table)
        i = start  # next candle to evaluate
        scan = start  # first candle whose protective levels have not been checked
        window = _FIRST_WINDOW
        while i < n:
            if self.broker.limits_resting():
                # A resting limit order: any candle may fill it, so each goes to the exchange
                # before it is evaluated (its protective check included). Limit orders are rare;
                # the scan below serves the common case.
                self.broker.on_candle(self.table.candle(i))
                self._settle(i)
                signal = self._evaluate(i, i + 1, self.ledger.position(STRATEGY_ID))
                if signal is not None:
                    self._order(*signal)
                i = scan = i + 1
                window = _FIRST_WINDOW
                continue
            position = self.ledger.position(STRATEGY_ID)
            touch: int | None = None
            stop = n
            if position is not None and (position.stop_loss is not None or position.take_profit is not None):
                lo = max(i, scan)
                stop = min(n, lo + window)
                touch = _first_candidate(self.values, lo, stop, position)
                if touch is not None:
                    stop = touch
            if i < stop:
                signal = self._evaluate(i, stop, position)
                if signal is not None:
                    index, decision = signal
                    self._order(index, decision)
                    i = scan = index + 1
                    window = _FIRST_WINDOW
                    continue
                i = stop
            if touch is not None:  # i == touch: the candle's protective check comes first
                self.broker.on_candle(self.table.candle(touch))
                self._settle(touch)
                scan = touch + 1
                window = _FIRST_WINDOW
            elif i < n:
                scan = i
                window *= 2

    def _evaluate(self, lo: int, hi: int, position: Position | None) -> tuple[int, Decision] | None:
        """Evaluate candles ``lo..hi-1`` until the first buy or sell: (its index, decision)."""
        i = lo
        batch = _FIRST_BATCH
        while i < hi:
            # Batches grow while the strategy holds: runtimes check every row they are given,
            # so handing over the whole remaining series at each signal would cost O(n) per signal.
            stop = min(hi, i + batch)
            batch = min(batch * 2, _MAX_BATCH)
            try:
                consumed, decision = self.runtime.run_until_signal(self.values[i:stop], position)
            except StrategyError as exc:
                # The daemon logs a failed evaluation and goes on with the next candle; so do we.
                # ``consumed`` counts the candles the failing call took, the failing one included.
                failed = i + max(getattr(exc, "consumed", 1), 1) - 1
                self._failure(failed, str(exc))
                i = failed + 1
                continue
            self._streak = 0
            if decision is not None:
                return i + consumed - 1, decision
            i += consumed
        return None

    def _failure(self, index: int, message: str) -> None:
        self._streak = self._streak + 1 if index == self._last_failure + 1 else 1
        self._last_failure = index
        time_ms = int(self.values[index, 0])
        self.failures.append(EvalFailure(time_ms, message))
        if self._streak >= self.settings.max_consecutive_errors:
            raise BacktestError(
                f"the strategy failed on {self._streak} consecutive candles (the daemon would disable it); "
                f"last at {time_ms}: {message}"
            )

    def _order(self, index: int, decision: Decision) -> None:
        intent = order_intent_at(
            decision,
            strategy_id=STRATEGY_ID,
            portfolio_id=PORTFOLIO_ID,
            key=self.table.key,
            candle_time=int(self.values[index, TIME]),
            close=self.table.close(index),
            defaults=self.levels,
        )
        job = self.desk.decide(intent, PAPER, "", self._out)
        if job is not None:
            self._out.jobs.append((PAPER, job))
        self._settle(index)

    def _settle(self, index: int) -> None:
        """Run what is due on the paper exchange; collect its fills and refusals (candle ``index``)."""
        out = self._out
        run_sync(self.desk, self.broker, "", out)
        for fill, _ in out.fills:
            self.fills.append(fill)
            self.fill_index.append(index)
        for refusal in out.refusals:
            candle_time = int(self.values[index, TIME])
            self.refusals.append(Refusal(candle_time, refusal.side, refusal.outcome, refusal.reason))
        out.orders.clear()
        out.fills.clear()
        out.refusals.clear()
        out.notes.clear()


def _first_candidate(values: npt.NDArray[np.float64], lo: int, hi: int, position: Position) -> int | None:
    """First candle in ``lo..hi-1`` whose low/high may reach the stop/take-profit (a superset of
    the exact touches, see the module docstring); None if there is none."""
    rows = values[lo:hi]
    hits = np.zeros(len(rows), dtype=np.bool_)
    if position.stop_loss is not None:
        hits |= rows[:, LOW] <= float(position.stop_loss)
    if position.take_profit is not None:
        hits |= rows[:, HIGH] >= float(position.take_profit)
    found = np.flatnonzero(hits)
    return lo + int(found[0]) if len(found) else None


def run_backtest(
    runtime: StrategyRuntime, table: CandleTable, settings: BacktestSettings, *, levels: LevelDefaults | None = None
) -> BacktestResult:
    """Evaluate ``runtime`` over ``table``, from the ``settings.warmup``-th candle on. ``levels``:
    the strategy's ``takeProfitPct`` / ``stopLossPct`` (:func:`tradebotd.orders.intent.level_defaults`)."""
    first = max(settings.warmup - 1, 0)
    if first >= len(table):
        raise BacktestError(f"nothing to evaluate: {len(table)} candles and a warm-up of {settings.warmup}")
    run = _Run(runtime, table, settings, levels)
    if first:
        run.runtime.push_history(table.values[:first])
    started = time.perf_counter()
    run.run(first)
    elapsed = time.perf_counter() - started
    return BacktestResult(
        table=table,
        settings=settings,
        first_evaluated=first,
        fills=tuple(run.fills),
        fill_index=tuple(run.fill_index),
        refusals=tuple(run.refusals),
        failures=tuple(run.failures),
        final_cash=run.ledger.cash(PORTFOLIO_ID),
        position=run.ledger.position(STRATEGY_ID),
        elapsed_s=elapsed,
    )
