"""Paper trading: spot, long-only, filled against candles. The default broker, and the backtest's.

Rules (documented in the README; the backtest relies on them being exactly these):

* ``buy`` opens or adds to a long position: amount = result ``amount`` or ``paper.default_amount``;
  price = signal candle close x (1 + slippage_bps / 10 000); cash must cover price x amount + fee.
* ``sell`` closes the position (all of it, or ``amount`` if smaller); price = close x (1 - slippage);
  ``sell`` while flat is ignored.
* fee = price x amount x ``fee_rate``, in the quote currency, on every fill.
* A take-profit / stop-loss from the opening result is watched on every later kline update of the
  same stream: the position exits at the level when a candle's high reaches the take-profit or its
  low reaches the stop; if one candle touches both, the stop wins. (Levels on the wrong side of the
  fill price are dropped with a note.)
* Amounts are rounded down to 8 decimals, prices, fees and cash to 8 decimals half-even.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal

from ..model import Candle, Position, StreamKey
from .base import Fill, Ignored, OrderAction, OrderIntent, OrderOutcome, Rejected, client_order_id

__all__ = ["PaperBroker", "PaperPosition"]

EIGHT_DP = Decimal("0.00000001")
BPS = Decimal("10000")


MAX_AMOUNT = Decimal("1e12")
"""No real order is this large; above it an amount is a strategy bug, not an order (and quantizing
it to 8 decimals would overflow the decimal context's 28 digits)."""


def q_amount(x: Decimal) -> Decimal:
    return x.quantize(EIGHT_DP, rounding=ROUND_DOWN)


def _bad_amount(amount: Decimal) -> str | None:
    if not amount.is_finite() or amount > MAX_AMOUNT:
        return f"amount {amount} is not a plausible quantity (limit {MAX_AMOUNT:f})"
    if q_amount(amount) <= 0:
        return "amount rounds to zero at 8 decimals"
    return None


def q_money(x: Decimal) -> Decimal:
    return x.quantize(EIGHT_DP, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class PaperPosition:
    portfolio_id: str | None
    key: StreamKey
    position: Position


class PaperBroker:
    """An in-memory paper account. State is restored from the store at start-up and every change
    is reported in the returned :class:`Fill` (``position_after``, ``cash_after``) for the engine to
    persist together with the trade."""

    def __init__(
        self,
        *,
        fee_rate: Decimal,
        slippage_bps: Decimal,
        default_amount: Decimal,
        cash: Mapping[str | None, Decimal] | None = None,
        positions: Mapping[str, PaperPosition] | None = None,
    ) -> None:
        self.fee_rate = fee_rate
        self.slippage = slippage_bps / BPS
        self.default_amount = default_amount
        self._cash: dict[str | None, Decimal] = dict(cash or {})
        self._positions: dict[str, PaperPosition] = dict(positions or {})

    # -- queries -----------------------------------------------------------------------------

    def position(self, strategy_id: str) -> Position | None:
        held = self._positions.get(strategy_id)
        return held.position if held else None

    def add_portfolio(self, portfolio_id: str, cash: Decimal) -> None:
        """A portfolio that appeared after start-up (mirrored from Supabase); known ones keep
        their cash (the local store is the truth for it)."""
        self._cash.setdefault(portfolio_id, cash)

    def take_over(
        self, strategy_id: str, held: PaperPosition | None, portfolio_id: str | None, cash: Decimal | None
    ) -> None:
        """A strategy taken over from another instance sharing a Supabase project: its position
        and its portfolio's cash as that instance left them."""
        if held is None:
            self._positions.pop(strategy_id, None)
        else:
            self._positions[strategy_id] = held
        if portfolio_id is not None and cash is not None:
            self._cash[portfolio_id] = cash

    def cash(self, portfolio_id: str | None) -> Decimal:
        return self._cash.get(portfolio_id, Decimal(0))

    def protected_keys(self) -> set[StreamKey]:
        return {
            p.key
            for p in self._positions.values()
            if p.position.take_profit is not None or p.position.stop_loss is not None
        }

    # -- orders ------------------------------------------------------------------------------

    async def submit(self, intent: OrderIntent) -> OrderOutcome:
        return self.execute(intent)

    def execute(self, intent: OrderIntent) -> OrderOutcome:
        """Synchronous core of :meth:`submit` (the backtest calls it directly)."""
        if intent.side == "buy":
            return self._buy(intent)
        return self._sell(intent)

    def _buy(self, intent: OrderIntent) -> OrderOutcome:
        requested = intent.amount if intent.amount is not None else self.default_amount
        if problem := _bad_amount(requested):
            return Rejected(intent.client_order_id, problem)
        amount = q_amount(requested)
        price = q_money(intent.reference_price * (1 + self.slippage))
        fee = q_money(price * amount * self.fee_rate)
        cost = price * amount + fee
        cash = self.cash(intent.portfolio_id)
        if cost > cash:
            return Rejected(intent.client_order_id, f"insufficient cash: need {q_money(cost)}, have {cash}")
        held = self._positions.get(intent.strategy_id)
        notes: list[str] = []
        take_profit, stop_loss = self._levels(intent, price, notes)
        if held is None:
            position = Position(amount, price, intent.candle_time, take_profit, stop_loss)
        else:
            old = held.position
            total = old.amount + amount
            position = Position(
                amount=total,
                entry_price=q_money((old.amount * old.entry_price + amount * price) / total),
                entry_time=old.entry_time,
                take_profit=take_profit if take_profit is not None else old.take_profit,
                stop_loss=stop_loss if stop_loss is not None else old.stop_loss,
            )
        cash_after = q_money(cash - cost)
        self._cash[intent.portfolio_id] = cash_after
        self._positions[intent.strategy_id] = PaperPosition(intent.portfolio_id, intent.key, position)
        return Fill(
            client_order_id=intent.client_order_id,
            strategy_id=intent.strategy_id,
            portfolio_id=intent.portfolio_id,
            key=intent.key,
            side="buy",
            amount=amount,
            price=price,
            fee=fee,
            candle_time=intent.candle_time,
            reason=intent.reason,
            position_after=position,
            cash_after=cash_after,
            notes=tuple(notes),
        )

    @staticmethod
    def _levels(intent: OrderIntent, price: Decimal, notes: list[str]) -> tuple[Decimal | None, Decimal | None]:
        take_profit, stop_loss = intent.take_profit, intent.stop_loss
        if take_profit is not None and take_profit <= price:
            notes.append(f"takeProfit {take_profit} is not above the fill price {price}; ignored")
            take_profit = None
        if stop_loss is not None and stop_loss >= price:
            notes.append(f"stopLoss {stop_loss} is not below the fill price {price}; ignored")
            stop_loss = None
        return take_profit, stop_loss

    def _sell(self, intent: OrderIntent) -> OrderOutcome:
        held = self._positions.get(intent.strategy_id)
        if held is None:
            return Ignored(intent.client_order_id, "sell while flat: nothing to close")
        price = q_money(intent.reference_price * (1 - self.slippage))
        amount = held.position.amount
        if intent.amount is not None:
            if problem := _bad_amount(intent.amount):
                return Rejected(intent.client_order_id, problem)
            amount = min(amount, q_amount(intent.amount))
        return self._close(
            held, intent.strategy_id, intent.client_order_id, amount, price, intent.candle_time, intent.reason
        )

    def _close(
        self,
        held: PaperPosition,
        strategy_id: str,
        coid: str,
        amount: Decimal,
        price: Decimal,
        candle_time: int,
        reason: str | None,
    ) -> Fill:
        fee = q_money(price * amount * self.fee_rate)
        cash_after = q_money(self.cash(held.portfolio_id) + price * amount - fee)
        self._cash[held.portfolio_id] = cash_after
        remaining = held.position.amount - amount
        position: Position | None
        if remaining > 0:
            position = replace(held.position, amount=remaining)
            self._positions[strategy_id] = replace(held, position=position)
        else:
            position = None
            del self._positions[strategy_id]
        return Fill(
            client_order_id=coid,
            strategy_id=strategy_id,
            portfolio_id=held.portfolio_id,
            key=held.key,
            side="sell",
            amount=amount,
            price=price,
            fee=fee,
            candle_time=candle_time,
            reason=reason,
            position_after=position,
            cash_after=cash_after,
        )

    # -- protective levels -------------------------------------------------------------------

    def on_candle(self, candle: Candle) -> list[Fill]:
        """Exit positions on ``candle``'s stream whose take-profit or stop-loss it touches.

        Only candles after the entry candle count. ``candle`` may be an in-progress update: its
        high and low so far are what the market has touched.
        """
        fills: list[Fill] = []
        for strategy_id, held in list(self._positions.items()):
            pos = held.position
            if held.key.symbol != candle.symbol or held.key.interval != candle.interval:
                continue
            if candle.open_time <= pos.entry_time:
                continue
            # Stop first: when one candle touches both levels, the stop wins (we cannot know the
            # order inside the candle, so assume the worse outcome).
            action: OrderAction
            if pos.stop_loss is not None and candle.low <= pos.stop_loss:
                action, level, why = "sl", pos.stop_loss, f"stop-loss {pos.stop_loss} touched"
            elif pos.take_profit is not None and candle.high >= pos.take_profit:
                action, level, why = "tp", pos.take_profit, f"take-profit {pos.take_profit} touched"
            else:
                continue
            coid = client_order_id(strategy_id, candle.open_time, action)
            fills.append(self._close(held, strategy_id, coid, pos.amount, level, candle.open_time, why))
        return fills

    def positions(self) -> Iterable[tuple[str, PaperPosition]]:
        return self._positions.items()
