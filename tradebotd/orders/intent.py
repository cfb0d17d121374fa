"""Decision -> :class:`~tradebotd.orders.model.OrderIntent`: where a strategy's floats become exact
decimals. Shared by the daemon and the backtest (and ``strategy check``), so all of them ask the
broker for identical orders.

Levels: a buy without ``takeProfit`` / ``stopLoss`` gets them from the strategy's parameters
``takeProfitPct`` / ``stopLossPct`` when those are set: that many percent above / below the signal
candle's close (the reference price every broker sees; a fill with slippage is a little off it,
and a level on the wrong side of the fill is dropped with a note, as an explicit one would be).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..model import Candle, Decision, StreamKey
from .model import OrderIntent, client_order_id

__all__ = ["LevelDefaults", "level_defaults", "order_intent", "order_intent_at", "to_decimal"]

_HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class LevelDefaults:
    """Percent distances from the close (``takeProfitPct``, ``stopLossPct``)."""

    take_profit_pct: Decimal | None = None
    stop_loss_pct: Decimal | None = None


def level_defaults(parameters: Mapping[str, Any]) -> LevelDefaults | None:
    """The strategy's ``takeProfitPct`` / ``stopLossPct``, or None when it sets neither;
    ``ValueError`` with the parameter's name when one is not a number in the valid range."""
    found: dict[str, Decimal | None] = {}
    for name, upper in (("takeProfitPct", None), ("stopLossPct", _HUNDRED)):
        value = parameters.get(name)
        if value is None:
            found[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value in (
            float("inf"), float("-inf")
        ):
            raise ValueError(f"parameter {name} must be a number (percent), got {value!r}")
        pct = to_decimal(float(value))
        assert pct is not None
        if pct <= 0 or (upper is not None and pct >= upper):
            limit = f"between 0 and {upper}" if upper is not None else "above 0"
            raise ValueError(f"parameter {name} must be {limit} (percent), got {value!r}")
        found[name] = pct
    if found["takeProfitPct"] is None and found["stopLossPct"] is None:
        return None
    return LevelDefaults(found["takeProfitPct"], found["stopLossPct"])


def to_decimal(x: float | None) -> Decimal | None:
    # repr() gives the shortest string that round-trips, so 0.1 becomes Decimal("0.1").
    return None if x is None else Decimal(repr(x))


def order_intent(
    decision: Decision,
    *,
    strategy_id: str,
    portfolio_id: str | None,
    candle: Candle,
    defaults: LevelDefaults | None = None,
) -> OrderIntent:
    """The order a buy/sell decision on ``candle`` asks for."""
    return order_intent_at(
        decision,
        strategy_id=strategy_id,
        portfolio_id=portfolio_id,
        key=candle.key,
        candle_time=candle.open_time,
        close=candle.close,
        defaults=defaults,
    )


def order_intent_at(
    decision: Decision,
    *,
    strategy_id: str,
    portfolio_id: str | None,
    key: StreamKey,
    candle_time: int,
    close: Decimal,
    defaults: LevelDefaults | None = None,
) -> OrderIntent:
    """:func:`order_intent` from the only parts of the candle an order uses: its stream, open
    time and close. The backtest calls this directly, so a signal costs one decimal, not a
    :class:`~tradebotd.model.Candle` of five."""
    signal = decision.signal
    if signal == "hold":
        raise ValueError("a hold decision places no order")
    take_profit = stop_loss = None
    if signal == "buy":
        tp, sl = decision.take_profit, decision.stop_loss
        take_profit = None if tp is None else Decimal(repr(tp))
        stop_loss = None if sl is None else Decimal(repr(sl))
        if defaults is not None:
            if take_profit is None and defaults.take_profit_pct is not None:
                take_profit = close * (_HUNDRED + defaults.take_profit_pct) / _HUNDRED
            if stop_loss is None and defaults.stop_loss_pct is not None:
                stop_loss = close * (_HUNDRED - defaults.stop_loss_pct) / _HUNDRED
    amount = decision.amount
    limit = decision.limit_price
    return OrderIntent(
        client_order_id(strategy_id, candle_time, signal),
        strategy_id,
        portfolio_id,
        key,
        signal,
        None if amount is None else Decimal(repr(amount)),
        close,
        candle_time,
        decision.reason,
        take_profit,
        stop_loss,
        decision.order_type,
        None if limit is None else Decimal(repr(limit)),
    )
