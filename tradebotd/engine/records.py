"""Record formatting: what the engine writes about decisions, orders and fills.

Pure functions and one small class that turn engine outcomes into store rows
(:class:`~tradebotd.store.base.WriteBatch` fields) and log lines; no decisions are made here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from ..ids import trade_uuid
from ..logs import info_lines
from ..model import Candle, Decision
from ..orders.desk import Effects
from ..store.base import LogEntry, LogLevel, TradeRow, WriteBatch
from ..store.sqlite import utc_now

__all__ = ["Narration", "Recorder", "decision_data", "entry", "error_data", "narrate"]

log = structlog.get_logger("tradebotd.engine")

Narration = list[tuple[str, dict[str, Any]]]
"""Log lines (event, fields) written after the batch they describe was handed to the writer."""


def entry(strategy_id: str, level: LogLevel, message: str, data: dict[str, Any] | None) -> LogEntry:
    return LogEntry(strategy_id=strategy_id, level=level, message=message, data=data, created_at=utc_now())


def error_data(exc: BaseException) -> dict[str, Any]:
    data: dict[str, Any] = {"error_type": type(exc).__name__}
    for attr in ("name", "stack", "line", "column"):
        value = getattr(exc, attr, None)  # the sandbox's errors carry these; others do not
        if value:
            data[attr] = value
    return data


def decision_data(
    decision: Decision, candle: Candle, close_text: str, eval_us: float, console: list[tuple[str, str]]
) -> dict[str, Any]:
    """The ``data`` of a decision's ``strategy_logs`` row."""
    data: dict[str, Any] = {
        "candle_time": candle.open_time,
        "close": close_text,
        "signal": decision.signal,
        "eval_us": round(eval_us, 1),
    }
    if decision.amount is not None:
        data["amount"] = decision.amount
    if decision.reason is not None:
        data["reason"] = decision.reason
    if decision.take_profit is not None:
        data["take_profit"] = decision.take_profit
    if decision.stop_loss is not None:
        data["stop_loss"] = decision.stop_loss
    if decision.order_type != "market":
        data["order_type"] = decision.order_type
    if decision.limit_price is not None:
        data["limit_price"] = decision.limit_price
    if decision.indicators:
        data["indicators"] = dict(decision.indicators)
    if console:
        data["console"] = console
    return data


def narrate(lines: Narration) -> None:
    info_lines(log, lines)


class Recorder:
    """Writes what the order desk produced (:class:`~tradebotd.orders.desk.Effects`) into a batch:
    ``orders`` rows (one per changed order), ``order_fills``, ``trades`` (one per order that
    filled, with its totals), positions, cash and ``strategy_logs``. ``closed`` is called with the
    strategy id of every position a fill closed (its stream may no longer be needed)."""

    def __init__(self, narration: Narration, closed: Callable[[str, Any], None]) -> None:
        self._narration = narration
        self._closed = closed
        self.fills = 0

    def record(self, effects: Effects, batch: WriteBatch) -> None:
        for coid, order in effects.orders.items():
            batch.orders[coid] = order.record()
        now_iso = utc_now() if effects.fills else ""
        for fill, event in effects.fills:
            self.fills += 1
            order = effects.orders[fill.client_order_id]
            batch.order_fills.append(event)
            batch.trades.append(
                TradeRow(
                    id=trade_uuid(fill.client_order_id, fill.candle_time),
                    strategy_id=fill.strategy_id,
                    portfolio_id=fill.portfolio_id,
                    symbol=fill.key.symbol,
                    side=fill.side,
                    amount=order.filled_amount,
                    price=order.average_price if order.average_price is not None else fill.price,
                    fee=order.fee,
                    status="filled" if order.status == "filled" else "partially_filled",
                    client_order_id=fill.client_order_id,
                    exchange_order_id=order.exchange_order_id,
                    candle_time=fill.candle_time,
                    reason=fill.reason,
                    created_at=now_iso,
                    fee_asset=order.fee_asset,
                )
            )
            batch.positions[fill.strategy_id] = (fill.portfolio_id, fill.key, fill.position_after)
            if fill.position_after is None:
                self._closed(fill.strategy_id, fill.key)
            if fill.cash_after is not None and fill.portfolio_id is not None:
                batch.cash[fill.portfolio_id] = fill.cash_after
            amount, price, fee = str(fill.amount), str(fill.price), str(fill.fee)
            verb = "bought" if fill.side == "buy" else "sold"
            fields = {
                "client_order_id": fill.client_order_id,
                "side": fill.side,
                "amount": amount,
                "price": price,
                "fee": fee,
                "candle_time": fill.candle_time,
            }
            message = f"{verb} {amount} {fill.key.symbol} at {price} (fee {fee})"
            batch.logs.append(entry(fill.strategy_id, "trade", message, {**fields, "reason": fill.reason}))
            for remark in fill.notes:
                batch.logs.append(entry(fill.strategy_id, "info", remark, {"client_order_id": fill.client_order_id}))
            self._narration.append(("fill", {"strategy_id": fill.strategy_id, **fields}))
        for refusal in effects.refusals:
            log.info("order not placed", strategy_id=refusal.strategy_id, client_order_id=refusal.client_order_id,
                     reason=refusal.reason)
            level: LogLevel = "info" if refusal.outcome == "ignored" else "error"
            batch.logs.append(
                entry(refusal.strategy_id, level, refusal.reason, {"client_order_id": refusal.client_order_id})
            )
        for note in effects.notes:
            if note.level == "error":
                log.error("order problem", strategy_id=note.strategy_id, message=note.message)
            if note.strategy_id is not None:
                batch.logs.append(entry(note.strategy_id, note.level, note.message, dict(note.data or {})))
