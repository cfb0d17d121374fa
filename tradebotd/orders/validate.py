"""Decision -> order: an :class:`~tradebotd.orders.model.OrderIntent` checked against the market's
rules and the strategy's position, becoming an :class:`~tradebotd.orders.model.OrderRequest` or
a :class:`Refusal` with a reason a strategy's author can act on (a ``strategy_logs`` row).

No I/O. In order:

1. the market must be trading;
2. amounts: a buy buys ``amount`` (default ``OrderPolicy.default_amount``); a sell sells the
   whole position, or ``amount`` if that is smaller; a sell while flat is *ignored* (nothing to
   do, not an error); an amount above ``OrderPolicy.max_amount`` is no quantity but a bug;
3. rounding: the amount down to the market's quantity step; a limit price down (buy) or up
   (sell) to its tick, so rounding never makes an order worse than asked; a take-profit down and
   a stop-loss up, so a level is reached no later than asked;
4. minimums: the market's minimum quantity and minimum notional (amount x price, the limit
   price or the signal candle's close);
5. the cap hook (:data:`OrderCap`), e.g. :func:`max_quote_cap`, which the live broker configures
   from ``exchange.max_order_quote``.

Everything refused is ``rejected`` (the strategy asked for something that cannot be executed),
except a sell while flat, which is ``ignored``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Literal

from .ledger import Holding
from .model import MarketRules, OrderIntent, OrderRequest, Side, round_step

__all__ = ["MAX_AMOUNT", "OrderCap", "OrderPolicy", "Refusal", "max_quote_cap", "validate"]

MAX_AMOUNT = Decimal("1e12")
"""No real order is this large; above it an amount is a strategy bug, not an order (and
rounding it to 8 decimals would overflow the decimal context's 28 digits)."""


@dataclass(frozen=True, slots=True)
class OrderPolicy:
    default_amount: Decimal  # bought when a buy result has no amount
    max_amount: Decimal = MAX_AMOUNT


@dataclass(frozen=True, slots=True)
class Refusal:
    """A decision that places no order, and why."""

    client_order_id: str
    strategy_id: str
    side: Side
    outcome: Literal["ignored", "rejected"]
    reason: str


OrderCap = Callable[[OrderRequest, MarketRules], str | None]
"""A last check on a valid request: a refusal reason, or None to let it through."""


def max_quote_cap(limit: Decimal) -> OrderCap:
    """Refuse entries worth more than ``limit`` in the quote asset (amount x limit price, or x
    the signal candle's close for a market order). Exits are not capped: they sell what the
    position holds, and capping them would trap a position bought in several smaller orders."""

    def cap(request: OrderRequest, rules: MarketRules) -> str | None:
        if request.side != "buy":
            return None
        value = request.amount * (request.limit_price or request.reference_price)
        if value > limit:
            return (
                f"order value {value.normalize():f} {rules.quote_asset} is above the per-order cap of "
                f"{limit.normalize():f} {rules.quote_asset} (exchange.max_order_quote)"
            )
        return None

    return cap


def validate(
    intent: OrderIntent,
    *,
    holding: Holding | None,
    rules: MarketRules,
    policy: OrderPolicy,
    cap: OrderCap | None = None,
) -> OrderRequest | Refusal:
    """The request ``intent`` becomes, or why it cannot be placed (see the module docstring)."""
    side = intent.side
    if not rules.trading:
        return _refuse(intent, "rejected", f"{rules.symbol} is not trading on the exchange now")
    if holding is not None and holding.key.symbol != intent.key.symbol:
        other, wanted = holding.key.symbol, intent.key.symbol
        return _refuse(intent, "rejected", f"the strategy holds a {other} position; it cannot trade {wanted}")
    requested = intent.amount
    if side == "buy":
        if requested is None:
            requested = policy.default_amount
        elif problem := _implausible(requested, policy):
            return _refuse(intent, "rejected", problem)
        amount = rules.amount(requested)
        if amount <= 0:
            return _refuse(intent, "rejected", f"amount rounds to zero at {_step_text(rules.amount_step)}")
    else:
        if holding is None:
            return _refuse(intent, "ignored", "sell while flat: nothing to close")
        held = holding.position.amount
        if requested is not None:
            if problem := _implausible(requested, policy):
                return _refuse(intent, "rejected", problem)
            amount = min(held, rules.amount(requested))
            if amount <= 0:
                return _refuse(intent, "rejected", f"amount rounds to zero at {_step_text(rules.amount_step)}")
        else:
            amount = rules.amount(held)
            if amount <= 0:
                return _refuse(
                    intent, "rejected", f"the position ({held}) is dust: less than the market's quantity step "
                    f"({rules.amount_step.normalize():f}); it cannot be sold",
                )
    limit_price = None
    if intent.type == "limit":
        if intent.limit_price is None or not intent.limit_price > 0:
            return _refuse(intent, "rejected", "a limit order needs a positive limitPrice")
        limit_price = round_step(intent.limit_price, rules.price_tick, ROUND_FLOOR if side == "buy" else ROUND_CEILING)
        if limit_price <= 0:
            tick = rules.price_tick.normalize()
            return _refuse(intent, "rejected", f"limitPrice rounds to zero at the tick {tick:f}")
    if rules.min_amount and amount < rules.min_amount:
        what = "the position" if side == "sell" and requested is None else "amount"
        least = rules.min_amount.normalize()
        return _refuse(intent, "rejected", f"{what} {amount} is below the market's minimum quantity {least:f}")
    if rules.max_amount is not None and amount > rules.max_amount:
        most = rules.max_amount.normalize()
        return _refuse(intent, "rejected", f"amount {amount} is above the market's maximum quantity {most:f}")
    if rules.min_notional:
        value = amount * (limit_price or intent.reference_price)
        if value < rules.min_notional:
            return _refuse(
                intent,
                "rejected",
                f"order value {value.normalize():f} {rules.quote_asset} is below the market's minimum of "
                f"{rules.min_notional.normalize():f} {rules.quote_asset}",
            )
    take_profit = stop_loss = None
    if side == "buy":
        if intent.take_profit is not None:
            take_profit = round_step(intent.take_profit, rules.price_tick, ROUND_FLOOR)
        if intent.stop_loss is not None:
            stop_loss = round_step(intent.stop_loss, rules.price_tick, ROUND_CEILING)
    request = OrderRequest(
        intent.client_order_id,
        intent.strategy_id,
        intent.portfolio_id,
        intent.key,
        side,
        intent.type,
        "entry" if side == "buy" else "exit",
        amount,
        limit_price,
        intent.reference_price,
        intent.candle_time,
        intent.reason,
        take_profit,
        stop_loss,
    )
    if cap is not None and (problem := cap(request, rules)):
        return _refuse(intent, "rejected", problem)
    return request


def _implausible(amount: Decimal, policy: OrderPolicy) -> str | None:
    if not amount.is_finite() or amount > policy.max_amount:
        return f"amount {amount} is not a plausible quantity (limit {policy.max_amount:f})"
    return None


def _step_text(step: Decimal) -> str:
    exponent = step.normalize().as_tuple().exponent
    if step.normalize().as_tuple().digits == (1,) and isinstance(exponent, int) and exponent < 0:
        return f"{-exponent} decimals"
    return f"the market's quantity step {step.normalize():f}"


def _refuse(intent: OrderIntent, outcome: Literal["ignored", "rejected"], reason: str) -> Refusal:
    return Refusal(intent.client_order_id, intent.strategy_id, intent.side, outcome, reason)

