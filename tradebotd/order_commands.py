"""``tradebotd orders [--strategy ID] [--open] [--json]``: the ``orders`` table, for people and
for scripts.

Every order the daemon placed is a row there, recorded before it was sent (paper and live alike;
see :mod:`tradebotd.engine.orders`), and updated as the broker's answers and fills arrive, so
this shows what the exchange was asked, what it did, and what is still outstanding:

* ``--strategy ID``: one strategy's orders (its id or a unique prefix; an unknown one exits 2);
* ``--open``: only orders that are not finished: ``new`` / ``pending`` (recorded, on their way),
  ``open`` / ``partially_filled`` (resting on the exchange: limits, take-profit and stop-loss
  legs) and ``unknown`` (an answer that was lost; reconciliation asks the exchange, never resends);
* ``--json``: a JSON array, one object per order with every column: decimals as exact strings,
  ``candle_time`` in epoch milliseconds (and ``candle_time_iso``), ``created_at`` /
  ``updated_at`` as the store keeps them (ISO-8601 UTC).

The table shows times in ISO-8601 UTC and decimals exactly (no rounding, no exponent, no
trailing zeros). KIND is ``market``, ``limit``, ``take-profit`` or ``stop-loss``; a take-profit or
stop-loss leg of a two-leg order list (an OCO: one leg filling cancels the other) is
``OCO take-profit`` / ``OCO stop-loss``, and LIST ID is the exchange's list id. PRICE is a
limit order's limit, a take-profit's level or a stop's trigger; AVG PRICE and FEE are what the
fills so far came to. NOTE is why an order was rejected, cancelled or became unknown.

Read-only: safe while ``tradebotd run`` holds the store (SQLite's WAL lets this read during the
daemon's writes; the schema is only migrated when the file is older than this tradebotd).
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from typing import Any

from .config import Settings
from .isotime import format_time
from .orders.model import OrderRecord
from .store.sqlite import SCHEMA_VERSION, SqliteStore

__all__ = ["add_arguments", "kind_of", "order_json", "run_orders"]

_KINDS = {"market": "market", "limit": "limit", "take_profit": "take-profit", "stop_loss": "stop-loss"}


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    orders = sub.add_parser("orders", parents=[common], help="orders placed, their status, fills and exchange ids")
    orders.add_argument("--strategy", metavar="ID", help="only this strategy's orders (id or unique prefix)")
    orders.add_argument(
        "--open", action="store_true", help="only orders not finished (new, pending, open, partially filled, unknown)"
    )
    orders.add_argument("--json", action="store_true", help="a JSON array (epoch ms, decimals as strings)")


def kind_of(order: OrderRecord) -> str:
    """``market``, ``limit``, ``take-profit``, ``stop-loss``; a leg of an OCO list says so."""
    kind = _KINDS.get(order.type, order.type)
    if order.leg in ("tp", "sl") and order.list_id is not None:
        return f"OCO {kind}"
    return kind


def _exact(value: Decimal | None) -> str | None:
    """The exact value without trailing zeros or an exponent (``0.01000000`` is ``0.01``, ``1E-8``
    is ``0.00000001``), as ``positions`` writes decimals."""
    return None if value is None else f"{value.normalize():f}" if value else "0"


def order_json(order: OrderRecord, name: str | None) -> dict[str, Any]:
    return {
        "client_order_id": order.client_order_id,
        "strategy_id": order.strategy_id,
        "strategy_name": name,
        "portfolio_id": order.portfolio_id,
        "broker": order.broker,
        "symbol": order.symbol,
        "interval": order.interval,
        "side": order.side,
        "type": order.type,
        "leg": order.leg,
        "kind": kind_of(order),
        "status": order.status,
        "amount": _exact(order.amount),
        "limit_price": _exact(order.limit_price),
        "stop_price": _exact(order.stop_price),
        "reference_price": _exact(order.reference_price),
        "filled_amount": _exact(order.filled_amount),
        "average_price": _exact(order.average_price),
        "fee": _exact(order.fee),
        "fee_asset": order.fee_asset,
        "exchange_order_id": order.exchange_order_id,
        "list_id": order.list_id,
        "parent_id": order.parent_id,
        "candle_time": order.candle_time,
        "candle_time_iso": format_time(order.candle_time),
        "reason": order.reason,
        "error": order.error,
        "raw": order.raw,
        "created_at": order.created_at,
        "updated_at": order.updated_at,
    }


def run_orders(args: argparse.Namespace, settings: Settings) -> int:
    store = SqliteStore(settings.store.path)
    try:
        if store.schema_version() < SCHEMA_VERSION:
            store.migrate()  # a new or older store; a current one is only read
        sid = None if args.strategy is None else store.resolve_strategy_id(args.strategy)
        rows = store.orders(sid, active=args.open)
        names = {r.id: r.name for r in store.list_strategies()}
    finally:
        store.close()
    if args.json:
        print(json.dumps([order_json(o, names.get(o.strategy_id)) for o in rows], indent=2))
        return 0
    if not rows:
        print(("no open orders" if args.open else "no orders") + ("" if sid is None else f" for strategy {sid}"))
        return 0
    table: list[tuple[str, ...]] = [
        (
            "CREATED (UTC)",
            "CANDLE (UTC)",
            "CLIENT ORDER ID",
            "STRATEGY",
            "NAME",
            "SYMBOL",
            "SIDE",
            "KIND",
            "STATUS",
            "AMOUNT",
            "PRICE",
            "FILLED",
            "AVG PRICE",
            "FEE",
            "EXCHANGE ID",
            "LIST ID",
            "NOTE",
        )
    ]
    for o in rows:
        price = o.stop_price if o.leg == "sl" else o.limit_price
        fee = _exact(o.fee) or "0"
        table.append(
            (
                o.created_at,
                format_time(o.candle_time),
                o.client_order_id,
                o.strategy_id[:8],
                names.get(o.strategy_id, "?"),
                o.symbol,
                o.side,
                kind_of(o),
                o.status,
                _exact(o.amount) or "",
                _exact(price) or "-",
                _exact(o.filled_amount) or "",
                _exact(o.average_price) or "-",
                fee if o.fee_asset is None else f"{fee} {o.fee_asset}",
                o.exchange_order_id or "-",
                o.list_id or "-",
                o.error or "",
            )
        )
    print(_columns(table))
    return 0


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)
