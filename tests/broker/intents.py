"""The order intent a strategy's decision becomes, for the broker tests (paper and live)."""

from __future__ import annotations

from decimal import Decimal as D

from tradebotd.broker.base import client_order_id
from tradebotd.model import StreamKey
from tradebotd.orders.model import OrderIntent


def decision_intent(
    sid: str,
    t: int,
    side: str,
    price: str,
    *,
    portfolio_id: str,
    key: StreamKey,
    amount: str | None = None,
    tp: str | None = None,
    sl: str | None = None,
    limit: str | None = None,
) -> OrderIntent:
    """``side`` on candle ``t`` at ``price``: market unless ``limit``, with optional levels."""
    return OrderIntent(
        client_order_id=client_order_id(sid, t, side),  # type: ignore[arg-type]
        strategy_id=sid,
        portfolio_id=portfolio_id,
        key=key,
        side=side,  # type: ignore[arg-type]
        amount=None if amount is None else D(amount),
        reference_price=D(price),
        candle_time=t,
        take_profit=None if tp is None else D(tp),
        stop_loss=None if sl is None else D(sl),
        type="limit" if limit is not None else "market",
        limit_price=None if limit is None else D(limit),
    )
