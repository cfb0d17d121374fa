"""Positions and P&L per strategy and per portfolio, from the store's trades (no I/O here).

Shared by ``tradebotd positions``, ``tradebotd portfolio list`` and ``tradebotd strategy show``.
Exact decimals throughout (strings in JSON), in the portfolio's quote currency.

Per strategy (and portfolio it traded in), walking its fills in order, average cost:

    buy  a at p, fee f     cost += a·p + f;  held += a
    sell a at p, fee f     basis = cost · a / held (all of cost when it sells everything)
                           realised += a·p − f − basis;  cost −= basis;  held −= a

    realised     closed P&L, every fee included (a buy's fee is part of the cost it sells)
    unrealised   held · mark − cost: what selling the rest at the mark would add, before its fee
    fees         every fill's fee
    value        held · mark
    mark         the last close of the position's stream in the store's ``market_data`` (what
                 the daemon recorded), with its open time; without one, value and unrealised
                 are unknown (None)

so realised + unrealised = sells − buys − fees + held · mark, the cash the strategy made or lost
if it sold at the mark without a fee. The same definitions as the backtest's round trips
(``tradebotd.backtest.metrics``: pnl = sells − buys − fees).

Per portfolio: cash (the portfolios row), positions value (sum of the marked values), value =
cash + positions value, and the sums of realised, unrealised and fees over the strategies that
traded in it. A position without a mark leaves the portfolio's value unknown too.

Fees are taken to be in the quote currency, as paper fills and Binance's quote-asset fees are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from .isotime import format_time
from .store.base import PortfolioRow, TradeRow

__all__ = ["Mark", "PortfolioPnl", "StrategyPnl", "portfolio_pnl", "strategy_pnl"]

_EIGHT_DP = Decimal("0.00000001")
ZERO = Decimal(0)


def _money(x: Decimal) -> Decimal:
    return x.quantize(_EIGHT_DP, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class Mark:
    """The price a position is valued at: a candle's close and that candle's open time (ms)."""

    price: Decimal
    candle_time: int


@dataclass(frozen=True, slots=True)
class StrategyPnl:
    strategy_id: str
    portfolio_id: str | None
    symbol: str
    held: Decimal
    cost: Decimal  # cost basis of what is held, buy fees included
    realised: Decimal
    fees: Decimal
    fills: int
    mark: Mark | None

    @property
    def average_cost(self) -> Decimal | None:
        return _money(self.cost / self.held) if self.held else None

    @property
    def value(self) -> Decimal | None:
        if not self.held:
            return ZERO
        return None if self.mark is None else _money(self.held * self.mark.price)

    @property
    def unrealised(self) -> Decimal | None:
        if not self.held:
            return ZERO
        value = self.value
        return None if value is None else _money(value - self.cost)

    def as_json(self) -> dict[str, Any]:
        return {
            "strategy_id": self.strategy_id,
            "portfolio_id": self.portfolio_id,
            "symbol": self.symbol,
            "amount": _text(self.held),
            "average_cost": _text(self.average_cost),
            "mark_price": None if self.mark is None else _text(self.mark.price),
            "mark_candle_time": None if self.mark is None else self.mark.candle_time,
            "mark_candle_time_iso": None if self.mark is None else format_time(self.mark.candle_time),
            "value": _text(self.value),
            "realised_pnl": _text(_money(self.realised)),
            "unrealised_pnl": _text(self.unrealised),
            "fees": _text(self.fees),
            "fills": self.fills,
        }


@dataclass(frozen=True, slots=True)
class PortfolioPnl:
    portfolio: PortfolioRow
    strategies: tuple[StrategyPnl, ...]

    @property
    def positions_value(self) -> Decimal | None:
        values = [s.value for s in self.strategies]
        return None if any(v is None for v in values) else sum((v for v in values if v is not None), ZERO)

    @property
    def value(self) -> Decimal | None:
        positions = self.positions_value
        return None if positions is None else self.portfolio.cash + positions

    @property
    def realised(self) -> Decimal:
        return _money(sum((s.realised for s in self.strategies), ZERO))

    @property
    def unrealised(self) -> Decimal | None:
        values = [s.unrealised for s in self.strategies]
        return None if any(v is None for v in values) else sum((v for v in values if v is not None), ZERO)

    @property
    def fees(self) -> Decimal:
        return sum((s.fees for s in self.strategies), ZERO)

    @property
    def open_positions(self) -> int:
        return sum(1 for s in self.strategies if s.held)

    def as_json(self) -> dict[str, Any]:
        p = self.portfolio
        return {
            "id": p.id,
            "name": p.name,
            "type": p.type,
            "currency": p.currency,
            "cash": _text(p.cash),
            "positions": self.open_positions,
            "positions_value": _text(self.positions_value),
            "value": _text(self.value),
            "realised_pnl": _text(self.realised),
            "unrealised_pnl": _text(self.unrealised),
            "fees": _text(self.fees),
            "created_at": p.created_at,
        }


def _text(value: Decimal | None) -> str | None:
    """Plain decimal text without exponent or trailing zeros (``0``, ``12.3``), as trades hold."""
    return None if value is None else f"{value.normalize():f}"


def strategy_pnl(trades: Iterable[TradeRow], marks: Mapping[str, Mark | None] | None = None) -> list[StrategyPnl]:
    """One entry per (strategy, portfolio) in ``trades`` (in first-fill order). ``marks``: the
    mark per strategy id (its position's stream's last close)."""
    books: dict[tuple[str, str | None], _Book] = {}
    for trade in trades:
        book = books.get((trade.strategy_id, trade.portfolio_id))
        if book is None:
            book = books[(trade.strategy_id, trade.portfolio_id)] = _Book(trade.symbol)
        book.add(trade)
    marks = marks or {}
    return [
        StrategyPnl(
            strategy_id=sid,
            portfolio_id=pid,
            symbol=book.symbol,
            held=book.held,
            cost=book.cost,
            realised=book.realised,
            fees=book.fees,
            fills=book.fills,
            mark=marks.get(sid) if book.held else None,
        )
        for (sid, pid), book in books.items()
    ]


def portfolio_pnl(portfolios: Sequence[PortfolioRow], strategies: Sequence[StrategyPnl]) -> list[PortfolioPnl]:
    """Each portfolio with the strategies that traded in it."""
    return [PortfolioPnl(p, tuple(s for s in strategies if s.portfolio_id == p.id)) for p in portfolios]


class _Book:
    """One strategy's fills in one portfolio, booked at average cost."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.held = ZERO
        self.cost = ZERO
        self.realised = ZERO
        self.fees = ZERO
        self.fills = 0

    def add(self, trade: TradeRow) -> None:
        self.fills += 1
        self.fees += trade.fee
        if trade.side == "buy":
            self.held += trade.amount
            self.cost += trade.amount * trade.price + trade.fee
            return
        sold = min(trade.amount, self.held)
        basis = self.cost if sold == self.held else self.cost * sold / self.held if self.held else ZERO
        self.realised += trade.amount * trade.price - trade.fee - basis
        self.cost -= basis
        self.held -= sold
