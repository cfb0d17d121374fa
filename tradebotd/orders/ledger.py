"""The ledger: per-strategy positions and per-portfolio cash, changed only by applied fills.

No I/O. The engine reads positions from here for ``context.position`` (not from a broker), and a
write batch persists what each fill changed (``positions``, ``portfolios.cash``) with the trade.
At start-up it is restored from the store.

Arithmetic (exact ``Decimal``; it is the paper broker's, so paper trading, backtests and live
trading keep the same books):

* buy: the position grows by the fill's amount (less a fee in the base asset), the entry price
  becomes the average of the fill prices weighted by what each added to the position (rounded
  half-even to 8 decimals), the entry time stays the first entry's candle;
  cash falls by price x amount;
* sell: the position shrinks by the amount (its entry price and time stay); cash rises by
  price x amount; a position sold to zero is gone;
* the fee is taken in its asset: in the quote asset from cash (paper: always), in the base asset
  from the position (Binance charges a buy's fee in what was bought, so a position is smaller
  than the amount bought, and an exit must sell what is left, not what was ordered), in any other
  asset (BNB) from neither (it is recorded with the trade, and a note says so);
* cash is rounded half-even to 8 decimals after each fill.

Take-profit and stop-loss levels ride on the position (they are what protects it) but are not
money: the caller sets them with an entry's fill (:meth:`Ledger.apply`) and they are kept on
sells and adds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from decimal import ROUND_HALF_EVEN, Decimal
from typing import NamedTuple

from ..model import Position, StreamKey
from .model import Filled, Side

__all__ = ["EIGHT_DP", "Fill", "Holding", "Ledger", "q_money"]

EIGHT_DP = Decimal("0.00000001")
_new = tuple.__new__  # a NamedTuple without its generated (Python-level) __new__: once per fill
_ZERO = Decimal(0)


def q_money(x: Decimal) -> Decimal:
    """Prices, fees and cash: half-even to 8 decimals."""
    return x.quantize(EIGHT_DP, rounding=ROUND_HALF_EVEN)


class Holding(NamedTuple):
    """A strategy's open position, with the portfolio it is in and the stream it trades (a
    NamedTuple for the reason given in :mod:`tradebotd.orders.model`)."""

    portfolio_id: str | None
    key: StreamKey
    position: Position


class Fill(NamedTuple):
    """One applied fill: the trade and the account right after it (what the engine records and
    a backtest reports)."""

    client_order_id: str
    strategy_id: str
    portfolio_id: str | None
    key: StreamKey
    side: Side
    amount: Decimal
    price: Decimal
    fee: Decimal
    candle_time: int  # the signal candle's open time; for a protective exit, the candle that touched the level
    reason: str | None
    position_after: Position | None
    cash_after: Decimal | None
    exchange_order_id: str | None = None
    status: str = "filled"  # the order's status after this fill: filled or partially_filled
    notes: tuple[str, ...] = ()
    """remarks worth logging (a level that was dropped, a fee in a third asset, ...)"""
    fee_asset: str | None = None
    trade_id: str | None = None


class Ledger:
    """Positions by strategy, cash by portfolio (``None`` is the portfolio of strategies that
    name none)."""

    __slots__ = ("_cash", "_holdings")

    def __init__(
        self, cash: Mapping[str | None, Decimal] | None = None, holdings: Mapping[str, Holding] | None = None
    ) -> None:
        self._cash: dict[str | None, Decimal] = dict(cash or {})
        self._holdings: dict[str, Holding] = dict(holdings or {})

    # -- queries ---------------------------------------------------------------------------------

    def position(self, strategy_id: str) -> Position | None:
        held = self._holdings.get(strategy_id)
        return None if held is None else held.position

    def holding(self, strategy_id: str) -> Holding | None:
        return self._holdings.get(strategy_id)

    def cash(self, portfolio_id: str | None) -> Decimal:
        return self._cash.get(portfolio_id, _ZERO)

    def holdings(self) -> Iterable[tuple[str, Holding]]:
        return self._holdings.items()

    def has_cash(self, portfolio_id: str | None) -> bool:
        """Whether the ledger keeps this portfolio's cash (a portfolio it was told about)."""
        return portfolio_id in self._cash

    def set_cash(self, portfolio_id: str | None, cash: Decimal) -> None:
        """A portfolio's cash as the store has it (start-up, a portfolio added while running, a
        strategy taken over from another instance)."""
        self._cash[portfolio_id] = cash

    def replace(self, strategy_id: str, holding: Holding | None) -> None:
        """Set a strategy's position from outside the fills (a strategy taken over from another
        instance, with the position that instance recorded)."""
        if holding is None:
            self._holdings.pop(strategy_id, None)
        else:
            self._holdings[strategy_id] = holding

    # -- fills -----------------------------------------------------------------------------------

    def apply(
        self,
        fill: Filled,
        strategy_id: str,
        portfolio_id: str | None,
        key: StreamKey,
        side: Side,
        candle_time: int,
        reason: str | None,
        base_asset: str | None,
        quote_asset: str | None,
        status: str = "filled",
        take_profit: Decimal | None = None,
        stop_loss: Decimal | None = None,
        notes: tuple[str, ...] = (),
    ) -> Fill:
        """Apply one fill of ``strategy_id``'s order; returns what it changed. ``candle_time`` is
        a buy's entry time if it opens the position; ``take_profit`` / ``stop_loss`` (buys) are
        the position's levels after it (None keeps the current one)."""
        amount, price, fee, fee_asset = fill.amount, fill.price, fill.fee, fill.fee_asset
        value = price * amount
        fee_quote = fee_base = _ZERO
        if fee_asset is None or fee_asset == quote_asset:
            fee_quote = fee
        elif fee_asset == base_asset:
            fee_base = fee
        elif fee:
            notes = (*notes, f"fee {fee} {fee_asset} paid in neither {base_asset} nor {quote_asset}")
        held = self._holdings.get(strategy_id)
        cash = self._cash.get(portfolio_id, _ZERO)
        position: Position | None
        if side == "buy":
            cash_after = q_money(cash - (value + fee_quote))
            bought = amount - fee_base
            if held is None:
                position = Position(bought, price, candle_time, take_profit, stop_loss)
            else:
                old = held.position
                total = old.amount + bought
                position = Position(
                    total,
                    q_money((old.amount * old.entry_price + bought * price) / total) if total else old.entry_price,
                    old.entry_time,
                    take_profit if take_profit is not None else old.take_profit,
                    stop_loss if stop_loss is not None else old.stop_loss,
                )
            self._holdings[strategy_id] = Holding(portfolio_id, key, position)
        else:
            cash_after = q_money(cash + value - fee_quote)
            sold = amount + fee_base
            if held is None:
                notes = (*notes, f"sold {amount} while the ledger held nothing of it")
                position = None
            else:
                remaining = held.position.amount - sold
                if remaining > 0:
                    position = replace(held.position, amount=remaining)
                    self._holdings[strategy_id] = held._replace(position=position)
                else:
                    if remaining < 0:
                        notes = (*notes, f"sold {sold} but the ledger held {held.position.amount}")
                    position = None
                    del self._holdings[strategy_id]
        self._cash[portfolio_id] = cash_after
        return _new(Fill, (
            fill.client_order_id,
            strategy_id,
            portfolio_id,
            key,
            side,
            amount,
            price,
            fee,
            candle_time,
            reason,
            position,
            cash_after,
            fill.exchange_order_id,
            status,
            notes,
            fee_asset,
            fill.trade_id,
        ))
