"""Binance answers (tests/fixtures/exchange/*.json) as the events of the broker seam.

This is what a broker on Binance reports through ``submit`` / ``protect`` results and its
inbox; here it only turns recorded answers into those values, so the sans-I/O order core can be
driven by what the exchange really says. Decimals are read from Binance's strings, never floats.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from tradebotd.orders.model import Accepted, BrokerEvent, Cancelled, Expired, Filled, MarketRules, Rejected

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "exchange"


def answer(name: str) -> Any:
    """The body of a recorded answer."""
    return json.loads((FIXTURES / f"{name}.json").read_text())["body"]


def rules(name: str) -> MarketRules:
    """``exchangeInfo``'s first symbol as market rules."""
    symbol = answer(name)["symbols"][0]
    filters = {f["filterType"]: f for f in symbol["filters"]}
    notional = filters.get("NOTIONAL") or filters.get("MIN_NOTIONAL") or {}
    lot = filters["LOT_SIZE"]
    return MarketRules(
        symbol["symbol"],
        symbol["baseAsset"],
        symbol["quoteAsset"],
        amount_step=Decimal(lot["stepSize"]),
        price_tick=Decimal(filters["PRICE_FILTER"]["tickSize"]),
        min_amount=Decimal(lot["minQty"]),
        min_notional=Decimal(notional.get("minNotional", "0")),
        max_amount=Decimal(lot["maxQty"]),
        trading=symbol["status"] == "TRADING",
    )


def order_events(report: dict[str, Any], trades: list[dict[str, Any]] | None = None) -> list[BrokerEvent]:
    """An order's answer (new order, query, cancel) as events: ``Accepted`` with the exchange's
    order id, a ``Filled`` per trade (the answer's ``fills``, or ``trades`` from myTrades), then
    how it ended (``CANCELED`` / ``EXPIRED`` / ``REJECTED``)."""
    coid = report.get("origClientOrderId") or report["clientOrderId"]
    oid = str(report["orderId"])
    at = int(report.get("updateTime") or report.get("transactTime") or report.get("time"))
    events: list[BrokerEvent] = [Accepted(coid, oid, at, Decimal(report["origQty"]))]
    fills = report.get("fills") or []
    items = [(str(f["tradeId"]), f["qty"], f["price"], f["commission"], f["commissionAsset"], at) for f in fills]
    if not items:
        items = [
            (str(t["id"]), t["qty"], t["price"], t["commission"], t["commissionAsset"], t["time"]) for t in trades or []
        ]
    executed, done = Decimal(0), Decimal(report["executedQty"])
    for trade_id, qty, price, fee, asset, when in items:
        executed += Decimal(qty)
        complete = report["status"] == "FILLED" and executed == done
        events.append(
            Filled(coid, oid, trade_id, Decimal(qty), Decimal(price), Decimal(fee), asset, int(when), complete)
        )
    status = report["status"]
    if status == "CANCELED":
        events.append(Cancelled(coid, "cancelled on the exchange", at))
    elif status == "EXPIRED":
        events.append(Expired(coid, f"{report.get('timeInForce', '')} order expired".strip(), at))
    elif status == "REJECTED":
        events.append(Rejected(coid, "rejected by the exchange", None, at))
    return events


def error_result(body: dict[str, Any], client_order_id: str, at_ms: int) -> Rejected:
    """A definitive error answer (4xx with ``{"code", "msg"}``) for an order."""
    return Rejected(client_order_id, body["msg"], str(body["code"]), at_ms)
