"""Backtest results as figures: round trips, the equity curve and ``summary.json``.

Money figures are exact decimals from the paper account (strings in JSON); ratios are floats.

Equity curve
    Equity at a candle = cash + position amount × that candle's close, after everything that
    happened on the candle (protective exit, then the strategy's order). The curve starts with one
    point for the starting cash, then one point per evaluated candle; warm-up candles are not on
    it, and a missing candle is simply not a point (the next return spans the hole).

Round trips (``trades.csv``)
    From a buy while flat to the fill (strategy sell, take-profit or stop-loss) that makes the
    position flat again; buys in between add to it, partial sells reduce it.

    ``entry_price`` / ``exit_price``  amount-weighted average buy / sell price (8 decimals)
    ``amount``   total amount bought
    ``pnl``      cash after the closing fill − cash before the opening fill: sells − buys − fees,
                 exactly as the paper account booked them (quote currency)
    ``return``   pnl / cash spent on the trade's buys (price × amount + fee)
    ``fees``     sum of the trade's fill fees
    ``exit``     ``signal``, ``take-profit`` or ``stop-loss`` (``end`` for the position still open
                 at the end, which is not written as a trade)
    ``candles``  candles from the entry candle to the exit candle (0: entered and left on one)

Summary (``summary.json``)
    ``trades``             closed round trips (an open position at the end is not one)
    ``wins``, ``win_rate`` round trips with pnl > 0, and wins / trades (null without trades)
    ``profit_factor``      sum of the winning trades' pnl / −sum of the losing trades' pnl (null
                           without a losing trade: it would be infinite)
    ``expectancy``         mean pnl per closed trade (quote currency; null without trades)
    ``average_win``, ``average_loss``  mean pnl of the trades with pnl > 0 / pnl < 0 (the loss
                           is negative; null without such trades)
    ``exits``              closing fills by kind: ``signal`` (a strategy sell), ``take-profit``,
                           ``stop-loss``, and ``end``: 1 when a position is still open at the end
    ``fees_paid``          sum of every fill's fee
    ``final_cash``         cash after the last fill
    ``final_equity``       final_cash + open amount × last close (no exit fee is assumed)
    ``total_return``       final_equity / initial_cash − 1
    ``buy_and_hold_return`` the same candles held instead: last close / close of the first
                           evaluated candle − 1 (the first close the strategy could have bought
                           at; before fees and slippage, which would lower it by about two fees)
    ``period_days``        days from the first evaluated candle's open to the last candle's close
    ``cagr``               (final_equity / initial_cash) ^ (365 / period_days) − 1 (365-day years,
                           as the annualisation below); −1 when the equity is gone; null when it
                           overflows. Over a short period it says little: 1 % in a week is 68 %
    ``max_drawdown``       largest 1 − equity / (highest equity so far) on the curve (0 if it never fell)
    ``sharpe_per_candle``  mean / sample standard deviation (ddof 1) of the per-candle returns
                           r = equity / previous equity − 1 along the curve, risk-free rate 0;
                           null with fewer than two returns or no variation
    ``sharpe_annualised``  sharpe_per_candle × √(candles per year), where candles per year =
                           365 × 86 400 000 / interval in ms (crypto trades all day, every day)
    ``sortino_per_candle`` mean of the same returns / downside deviation √(mean(min(r, 0)²)) over
                           all of them (target 0); null with fewer than two returns or none below 0
    ``sortino_annualised`` sortino_per_candle × √(candles per year)
    ``monthly_returns``    per calendar month (UTC) of the candles' open times, oldest first:
                           ``{"month": "2024-01", "return": r}`` with r = equity after the month's
                           last candle / equity after the previous month's (the starting cash for
                           the first month) − 1; a month without candles has no entry
    ``exposure``           fraction of evaluated candles at whose close a position was open
    ``candles``            candles in the data; ``missing_candles`` holes between them
    ``warmup``             the first evaluation was on this candle (it saw ``warmup`` candles)
    ``candles_evaluated``  candles from there to the end: one strategy evaluation each
    ``evaluation_time_s``  wall time of the evaluation loop (strategy and broker, not loading or
                           output); ``candles_per_s`` = candles_evaluated / evaluation_time_s
    ``fills``, ``orders_rejected``, ``orders_ignored``, ``strategy_errors``  counts
    ``orders_rejected_by_reason``, ``orders_ignored_by_reason``  the same counts by reason, most
                           frequent first: the broker's message up to its first ": " (where the
                           messages put their particulars: "insufficient cash: need 105.1, have
                           3.2" counts as "insufficient cash"), else the message with its numbers
                           written as "…"
    ``open_position``      null, or the position left open: amount, entry_price (average),
                           entry_time, take_profit, stop_loss, mark_price (last close),
                           market_value = amount × mark_price, unrealised_pnl = what pnl would be
                           if it were sold at mark_price without a fee
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from tradebotd.backtest.runner import BacktestResult
from tradebotd.broker.base import Fill
from tradebotd.data.candles import CLOSE

__all__ = [
    "EXIT_REASONS",
    "EquityCurve",
    "RoundTrip",
    "buy_and_hold",
    "equity_curve",
    "monthly_returns",
    "reason_kind",
    "round_trips",
    "summarize",
]

_EIGHT_DP = Decimal("0.00000001")
_YEAR_MS = 365 * 86_400_000
_EXIT_KINDS = {"tp": "take-profit", "sl": "stop-loss"}
EXIT_REASONS = ("signal", "take-profit", "stop-loss", "end")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _money(x: Decimal) -> Decimal:
    return x.quantize(_EIGHT_DP, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class RoundTrip:
    entry_time: int
    exit_time: int | None  # None: still open at the end
    entry_index: int  # candle indices, for plots and holding times
    exit_index: int | None
    entry_price: Decimal
    exit_price: Decimal | None
    amount: Decimal
    pnl: Decimal
    ret: Decimal
    fees: Decimal
    exit: str  # signal | take-profit | stop-loss | end (still open at the end)
    reason: str | None

    @property
    def candles(self) -> int | None:
        return None if self.exit_index is None else self.exit_index - self.entry_index


class _Trip:
    """A round trip being built from fills."""

    def __init__(self, fill: Fill, index: int, cash_before: Decimal) -> None:
        self.entry_time = fill.candle_time
        self.entry_index = index
        self.cash_before = cash_before
        self.bought = Decimal(0)
        self.buy_value = Decimal(0)
        self.sold = Decimal(0)
        self.sell_value = Decimal(0)
        self.spent = Decimal(0)
        self.fees = Decimal(0)

    def add(self, fill: Fill, cash_before: Decimal) -> None:
        assert fill.cash_after is not None
        self.fees += fill.fee
        if fill.side == "buy":
            self.bought += fill.amount
            self.buy_value += fill.price * fill.amount
            self.spent += cash_before - fill.cash_after
        else:
            self.sold += fill.amount
            self.sell_value += fill.price * fill.amount

    def finish(
        self,
        exit_time: int | None,
        exit_index: int | None,
        cash_now: Decimal,
        mark: Decimal,
        exit: str,
        reason: str | None,
    ) -> RoundTrip:
        held = self.bought - self.sold
        pnl = cash_now + held * mark - self.cash_before
        return RoundTrip(
            entry_time=self.entry_time,
            exit_time=exit_time,
            entry_index=self.entry_index,
            exit_index=exit_index,
            entry_price=_money(self.buy_value / self.bought),
            exit_price=_money(self.sell_value / self.sold) if self.sold else None,
            amount=self.bought,
            pnl=_money(pnl),
            ret=pnl / self.spent,
            fees=self.fees,
            exit=exit,
            reason=reason,
        )


def round_trips(result: BacktestResult) -> tuple[list[RoundTrip], RoundTrip | None]:
    """Closed round trips, and the open one marked to the last close (None when flat)."""
    trips: list[RoundTrip] = []
    trip: _Trip | None = None
    cash = result.settings.cash
    for fill, index in zip(result.fills, result.fill_index, strict=True):
        assert fill.cash_after is not None  # the paper broker always reports it
        if trip is None:
            trip = _Trip(fill, index, cash)
        trip.add(fill, cash)
        cash = fill.cash_after
        if fill.position_after is None:
            kind = _EXIT_KINDS.get(fill.client_order_id.rsplit("-", 1)[-1], "signal")
            trips.append(trip.finish(fill.candle_time, index, cash, Decimal(0), kind, fill.reason))
            trip = None
    if trip is None:
        return trips, None
    last = result.table.candle(len(result.table) - 1)
    return trips, trip.finish(None, None, cash, last.close, "end", None)


@dataclass(frozen=True, slots=True)
class EquityCurve:
    """One point per evaluated candle (``times`` = open times), after a start point at index 0
    (time = the first evaluated candle's open time, equity = starting cash)."""

    times: npt.NDArray[np.int64]
    equity: npt.NDArray[np.float64]
    amount: npt.NDArray[np.float64]  # position held at each point

    @property
    def drawdown(self) -> npt.NDArray[np.float64]:
        """1 − equity / highest equity so far, per point (>= 0)."""
        peak = np.maximum.accumulate(self.equity)
        return np.asarray(1.0 - self.equity / peak, dtype=np.float64)

    @property
    def returns(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.equity[1:] / self.equity[:-1] - 1.0, dtype=np.float64)


def equity_curve(result: BacktestResult) -> EquityCurve:
    """Built with numpy from the fills: cash and amount only change on fill candles."""
    start, n = result.first_evaluated, len(result.table)
    candles = np.arange(start, n)
    # State after each fill candle (the last fill of a candle wins), plus the starting state.
    changed = np.asarray(result.fill_index, dtype=np.int64)
    cash = np.array([float(result.settings.cash)] + [float(f.cash_after or 0) for f in result.fills])
    held = np.array([0.0] + [float(f.position_after.amount) if f.position_after else 0.0 for f in result.fills])
    which = np.searchsorted(changed, candles, side="right")  # fills on or before each candle
    closes = result.table.values[start:n, CLOSE]
    equity = cash[which] + held[which] * closes
    times = result.table.times[start:n]
    return EquityCurve(
        times=np.concatenate((times[:1], times)),
        equity=np.concatenate(([float(result.settings.cash)], equity)),
        amount=np.concatenate(([0.0], held[which])),
    )


def buy_and_hold(result: BacktestResult) -> npt.NDArray[np.float64]:
    """The starting cash held in the asset from the first evaluated candle's close, at each point
    of the equity curve (the start point included, at the starting cash)."""
    closes = result.table.values[result.first_evaluated :, CLOSE]
    cash = float(result.settings.cash)
    return np.concatenate(([cash], cash * closes / closes[0]))


def monthly_returns(curve: EquityCurve) -> list[tuple[str, float]]:
    """(``"2024-01"``, return) per calendar month of the curve's points, oldest first."""
    months = curve.times.astype("datetime64[ms]").astype("datetime64[M]")
    last = np.flatnonzero(np.append(months[1:] != months[:-1], True))  # each month's last point
    ends = curve.equity[last]
    starts = np.concatenate((curve.equity[:1], ends[:-1]))
    return [(str(month), float(r)) for month, r in zip(months[last], ends / starts - 1.0, strict=True)]


def reason_kind(message: str) -> str:
    """What a refusal counts as (see ``orders_rejected_by_reason`` in the module docstring)."""
    head, sep, _ = message.partition(": ")
    return head if sep else _NUMBER.sub("…", message)


def _by_reason(messages: Iterable[str]) -> dict[str, int]:
    return dict(Counter(reason_kind(m) for m in messages).most_common())


def _ratio(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _sharpe(returns: npt.NDArray[np.float64]) -> float | None:
    if len(returns) < 2:
        return None
    deviation = float(np.std(returns, ddof=1))
    if deviation == 0.0:
        return None
    return _ratio(float(np.mean(returns)) / deviation)


def _sortino(returns: npt.NDArray[np.float64]) -> float | None:
    if len(returns) < 2:
        return None
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
    if downside == 0.0:
        return None
    return _ratio(float(np.mean(returns)) / downside)


def _cagr(final_equity: Decimal, cash: Decimal, years: float) -> float | None:
    if final_equity <= 0:
        return -1.0
    try:
        return _ratio(math.pow(float(final_equity / cash), 1.0 / years) - 1.0)
    except OverflowError:
        return None


def _mean(values: Sequence[Decimal]) -> str | None:
    return str(_money(sum(values, Decimal(0)) / len(values))) if values else None


def summarize(result: BacktestResult, trips: Sequence[RoundTrip], open_trip: RoundTrip | None) -> dict[str, Any]:
    """The summary (see the module docstring for each figure)."""
    table, settings = result.table, result.settings
    curve = equity_curve(result)
    last = table.candle(len(table) - 1)
    position = result.position
    held = position.amount if position is not None else Decimal(0)
    final_equity = result.final_cash + held * last.close
    wins = [t.pnl for t in trips if t.pnl > 0]
    losses = [t.pnl for t in trips if t.pnl < 0]
    per_candle = _sharpe(curve.returns)
    sortino = _sortino(curve.returns)
    per_year = math.sqrt(_YEAR_MS / table.key.interval_ms)
    first_close = float(table.values[result.first_evaluated, CLOSE])
    span_ms = last.open_time + table.key.interval_ms - int(table.values[result.first_evaluated, 0])
    exits = dict.fromkeys(EXIT_REASONS, 0)
    for t in trips:
        exits[t.exit] += 1
    exits["end"] = 0 if open_trip is None else 1
    open_position: dict[str, Any] | None = None
    if position is not None:
        assert open_trip is not None
        open_position = {
            "amount": str(position.amount),
            "entry_price": str(position.entry_price),
            "entry_time": position.entry_time,
            "take_profit": None if position.take_profit is None else str(position.take_profit),
            "stop_loss": None if position.stop_loss is None else str(position.stop_loss),
            "mark_price": str(last.close),
            "market_value": str(_money(position.amount * last.close)),
            "unrealised_pnl": str(open_trip.pnl),
        }
    evaluated = result.evaluated
    return {
        "symbol": table.key.symbol,
        "interval": table.key.interval,
        "first_candle_time": int(table.values[0, 0]),
        "last_candle_time": last.open_time,
        "candles": len(table),
        "missing_candles": table.missing,
        "warmup": result.settings.warmup,
        "candles_evaluated": evaluated,
        "initial_cash": str(settings.cash),
        "fee_rate": str(settings.fee_rate),
        "slippage_bps": str(settings.slippage_bps),
        "final_cash": str(result.final_cash),
        "final_equity": str(_money(final_equity)),
        "total_return": float(final_equity / settings.cash - 1),
        "buy_and_hold_return": float(last.close) / first_close - 1.0,
        "period_days": span_ms / 86_400_000,
        "cagr": _cagr(final_equity, settings.cash, span_ms / _YEAR_MS),
        "trades": len(trips),
        "wins": len(wins),
        "win_rate": len(wins) / len(trips) if trips else None,
        "profit_factor": float(sum(wins, Decimal(0)) / -sum(losses, Decimal(0))) if losses else None,
        "expectancy": _mean([t.pnl for t in trips]),
        "average_win": _mean(wins),
        "average_loss": _mean(losses),
        "exits": exits,
        "max_drawdown": float(np.max(curve.drawdown)),
        "sharpe_per_candle": per_candle,
        "sharpe_annualised": None if per_candle is None else per_candle * per_year,
        "sortino_per_candle": sortino,
        "sortino_annualised": None if sortino is None else sortino * per_year,
        "exposure": float(np.count_nonzero(curve.amount[1:] > 0)) / evaluated,
        "fees_paid": str(sum((f.fee for f in result.fills), Decimal(0))),
        "fills": len(result.fills),
        "orders_rejected": sum(1 for r in result.refusals if r.outcome == "rejected"),
        "orders_rejected_by_reason": _by_reason(r.reason for r in result.refusals if r.outcome == "rejected"),
        "orders_ignored": sum(1 for r in result.refusals if r.outcome == "ignored"),
        "orders_ignored_by_reason": _by_reason(r.reason for r in result.refusals if r.outcome == "ignored"),
        "strategy_errors": len(result.failures),
        "evaluation_time_s": result.elapsed_s,
        "candles_per_s": evaluated / result.elapsed_s if result.elapsed_s > 0 else None,
        "monthly_returns": [{"month": month, "return": r} for month, r in monthly_returns(curve)],
        "open_position": open_position,
    }
