"""The stand-in's endpoints, sans-I/O: strict parameter checks, the account call, and the answer
in Binance's JSON shapes (``rest-api.md``; field sets as in its samples and ccxt's static
fixtures). Every refusal is a :class:`~tradebotd.replay.exchange.matching.Refusal` carrying
Binance's code and message; the request pipeline (``api.py``) turns it into the error JSON.

Parameters are strict the way Binance is: an unknown parameter is -1104 (this is what catches
ccxt forwarding junk such as ``takeProfit={...}``), a missing mandatory one -1102, a parameter the
order type does not take -1106 (-1114 for ``timeInForce``), a malformed number -1100.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from tradebotd.replay.exchange.matching import Account, NewOcoLeg, NewOrder, Order, OrderList, Refusal, Trade
from tradebotd.replay.exchange.spec import fmt, parse_decimal_param

__all__ = ["ENDPOINTS", "Endpoint", "Params", "order_json"]

Params = Mapping[str, str]
Json = dict[str, object] | list[object]

_INT = re.compile(r"^[0-9]{1,20}$")
_CLIENT_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
_CLIENT_ID_RANGE = r"^[\.A-Z\:/a-z0-9_-]{1,36}$"
_DECIMAL_RANGE = r"^([0-9]{1,20})(\.[0-9]{1,20})?$"
_SIGNED = frozenset({"timestamp", "recvWindow", "signature"})
_TIFS = frozenset({"GTC", "IOC", "FOK"})
_RESP_TYPES = frozenset({"ACK", "RESULT", "FULL"})
_STP_MODES = frozenset({"NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH", "DECREMENT"})
_UNSUPPORTED = frozenset({"trailingDelta", "icebergQty", "pegPriceType", "pegOffsetValue", "pegOffsetType"})
_NOT_SUPPORTED_MSG = {
    "MARKET": "Market orders are not supported for this symbol.",
    "STOP_LOSS": "Stop loss orders are not supported for this symbol.",
    "STOP_LOSS_LIMIT": "Stop loss limit orders are not supported for this symbol.",
    "TAKE_PROFIT": "Take profit orders are not supported for this symbol.",
    "TAKE_PROFIT_LIMIT": "Take profit limit orders are not supported for this symbol.",
}

# Per order type: (mandatory parameters, optional ones). Anything else among the order fields is
# "sent when not required". From rest-api.md "Additional mandatory parameters based on type".
_ORDER_FIELDS = frozenset({"timeInForce", "quantity", "quoteOrderQty", "price", "stopPrice"})
_TYPE_FIELDS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    "LIMIT": (frozenset({"timeInForce", "quantity", "price"}), frozenset()),
    "MARKET": (frozenset(), frozenset({"quantity", "quoteOrderQty"})),
    "STOP_LOSS": (frozenset({"quantity", "stopPrice"}), frozenset()),
    "STOP_LOSS_LIMIT": (frozenset({"timeInForce", "quantity", "price", "stopPrice"}), frozenset()),
    "TAKE_PROFIT": (frozenset({"quantity", "stopPrice"}), frozenset()),
    "TAKE_PROFIT_LIMIT": (frozenset({"timeInForce", "quantity", "price", "stopPrice"}), frozenset()),
    "LIMIT_MAKER": (frozenset({"quantity", "price"}), frozenset()),
}
_LEG_FIELDS: Mapping[str, frozenset[str]] = {
    "LIMIT_MAKER": frozenset({"Price"}),
    "STOP_LOSS": frozenset({"StopPrice"}),
    "STOP_LOSS_LIMIT": frozenset({"Price", "StopPrice", "TimeInForce"}),
    "TAKE_PROFIT": frozenset({"StopPrice"}),
    "TAKE_PROFIT_LIMIT": frozenset({"Price", "StopPrice", "TimeInForce"}),
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route: its parameters, whether it is signed, its request weight (which may depend on
    the parameters), how many orders it adds to the order-rate count, and its handler."""

    params: frozenset[str]
    signed: bool
    weight: Callable[[Params], int]
    handler: Callable[[Account, Params, int], Json]
    orders: int = 0


# -- parameter helpers -------------------------------------------------------------------------


def _mandatory(params: Params, name: str) -> str:
    value = params.get(name)
    if not value:
        raise Refusal(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return value


def _decimal(params: Params, name: str) -> Decimal | None:
    value = params.get(name)
    if value is None:
        return None
    parsed = parse_decimal_param(value)
    if parsed is None:
        raise Refusal(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{_DECIMAL_RANGE}'.")
    return parsed


def _int(params: Params, name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not _INT.match(value):
        raise Refusal(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    return int(value)


def _client_id(params: Params, name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not _CLIENT_ID.match(value):
        raise Refusal(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{_CLIENT_ID_RANGE}'.")
    return value


def _one_of(params: Params, name: str, allowed: frozenset[str], code: int, msg: str) -> str | None:
    value = params.get(name)
    if value is not None and value not in allowed:
        raise Refusal(code, msg)
    return value


def _generated_id() -> str:
    """Binance's own client ids: 22 characters of [A-Za-z0-9]."""
    return secrets.token_urlsafe(16).replace("-", "x").replace("_", "y")[:22]


def _symbol(account: Account, params: Params) -> str:
    return account.spec(_mandatory(params, "symbol")).symbol


def _either(params: Params, first: str, second: str) -> None:
    if not params.get(first) and not params.get(second):
        raise Refusal(-1102, f"Param '{second}' or '{first}' must be sent, but both were empty/null!")


# -- JSON shapes -------------------------------------------------------------------------------


def fill_json(trade: Trade) -> dict[str, object]:
    return {
        "price": fmt(trade.price),
        "qty": fmt(trade.qty),
        "commission": fmt(trade.commission),
        "commissionAsset": trade.commission_asset,
        "tradeId": trade.id,
    }


def order_json(order: Order, kind: str, *, cancel_client_id: str | None = None) -> dict[str, object]:
    """An order as ``POST /api/v3/order`` (``ack`` / ``result`` / ``full``), ``GET`` (``query``)
    or ``DELETE`` (``cancel``) shows it."""
    head: dict[str, object] = {"symbol": order.symbol}
    if kind == "cancel":
        head["origClientOrderId"] = order.client_order_id
    head |= {"orderId": order.order_id, "orderListId": order.order_list_id}
    head["clientOrderId"] = cancel_client_id if kind == "cancel" else order.client_order_id
    if kind == "ack":
        return head | {"transactTime": order.time}
    if kind != "query":
        head["transactTime"] = order.update_time if kind == "cancel" else order.time
    body: dict[str, object] = {
        "price": fmt(order.price),
        "origQty": fmt(order.quantity),
        "executedQty": fmt(order.executed),
        "origQuoteOrderQty": fmt(order.orig_quote_qty),
        "cummulativeQuoteQty": fmt(order.cum_quote),
        "status": order.status,
        "timeInForce": order.time_in_force or "GTC",
        "type": order.type,
        "side": order.side,
    }
    if kind == "query":
        body |= {
            "stopPrice": fmt(order.stop_price),
            "icebergQty": fmt(Decimal(0)),
            "time": order.time,
            "updateTime": order.update_time,
            "isWorking": order.working_time != -1,
            "workingTime": order.working_time,
        }
    else:
        if order.is_stop:
            body["stopPrice"] = fmt(order.stop_price)
        if kind != "cancel":
            body["workingTime"] = order.working_time
    body["selfTradePreventionMode"] = "EXPIRE_MAKER"
    if kind == "full":
        body["fills"] = [fill_json(trade) for trade in order.fills]
    return head | body


def list_json(order_list: OrderList, kind: str | None) -> dict[str, object]:
    """An order list; ``kind`` adds ``orderReports`` in that order format (None: without)."""
    doc: dict[str, object] = {
        "orderListId": order_list.order_list_id,
        "contingencyType": "OCO",
        "listStatusType": order_list.list_status_type,
        "listOrderStatus": order_list.list_order_status,
        "listClientOrderId": order_list.list_client_order_id,
        "transactionTime": order_list.transaction_time,
        "symbol": order_list.symbol,
        "orders": [
            {"symbol": o.symbol, "orderId": o.order_id, "clientOrderId": o.client_order_id} for o in order_list.orders
        ],
    }
    if kind is not None:
        doc["orderReports"] = [order_json(o, kind) for o in order_list.orders]
    return doc


def trade_json(trade: Trade) -> dict[str, object]:
    return {
        "symbol": trade.symbol,
        "id": trade.id,
        "orderId": trade.order_id,
        "orderListId": trade.order_list_id,
        "price": fmt(trade.price),
        "qty": fmt(trade.qty),
        "quoteQty": fmt(trade.quote_qty),
        "commission": fmt(trade.commission),
        "commissionAsset": trade.commission_asset,
        "time": trade.time,
        "isBuyer": trade.is_buyer,
        "isMaker": trade.is_maker,
        "isBestMatch": True,
    }


# -- handlers ----------------------------------------------------------------------------------


def new_order(account: Account, params: Params, now: int) -> Json:
    symbol = _symbol(account, params)
    side = _one_of(params, "side", frozenset({"BUY", "SELL"}), -1117, "Invalid side.")
    if side is None:
        _mandatory(params, "side")
    type_ = _mandatory(params, "type")
    if type_ not in _TYPE_FIELDS:
        raise Refusal(-1116, "Invalid orderType.")
    for name in _UNSUPPORTED & set(params):
        raise Refusal(-1130, f"Data sent for parameter '{name}' is not valid. (not supported by the stand-in)")
    mandatory, optional = _TYPE_FIELDS[type_]
    for name in sorted(_ORDER_FIELDS & set(params) - mandatory - optional):
        if name == "timeInForce":
            raise Refusal(-1114, "TimeInForce parameter sent when not required.")
        raise Refusal(-1106, f"Parameter '{name}' sent when not required.")
    for name in sorted(mandatory):
        _mandatory(params, name)
    if type_ == "MARKET":
        _either(params, "quoteOrderQty", "quantity")
        if "quantity" in params and "quoteOrderQty" in params:
            raise Refusal(-1106, "Parameter 'quoteOrderQty' sent when not required.")
    tif = _one_of(params, "timeInForce", _TIFS, -1115, "Invalid timeInForce.")
    resp = _one_of(
        params, "newOrderRespType", _RESP_TYPES, -1130, "Data sent for parameter 'newOrderRespType' is not valid."
    )
    _one_of(
        params,
        "selfTradePreventionMode",
        _STP_MODES,
        -1130,
        "Data sent for parameter 'selfTradePreventionMode' is not valid.",
    )
    spec = account.spec(symbol)
    if type_ not in spec.order_types:
        raise Refusal(-2010, _NOT_SUPPORTED_MSG.get(type_, "Unsupported order combination"))
    if "quoteOrderQty" in params and not spec.quote_order_qty_market_allowed:
        raise Refusal(-2010, "Quote order qty market orders are not support for this symbol.")
    order = account.place(
        NewOrder(
            symbol=symbol,
            side=side or "",
            type=type_,
            client_order_id=_client_id(params, "newClientOrderId") or _generated_id(),
            quantity=_decimal(params, "quantity"),
            quote_order_qty=_decimal(params, "quoteOrderQty"),
            price=_decimal(params, "price"),
            stop_price=_decimal(params, "stopPrice"),
            time_in_force=tif,
        )
    )
    kind = (resp or ("FULL" if type_ in ("MARKET", "LIMIT") else "ACK")).lower()
    return order_json(order, kind)


def _find_order(account: Account, params: Params) -> Order | None:
    symbol = _symbol(account, params)
    _either(params, "orderId", "origClientOrderId")
    return account.find_order(
        symbol, order_id=_int(params, "orderId"), client_order_id=_client_id(params, "origClientOrderId")
    )


def query_order(account: Account, params: Params, now: int) -> Json:
    order = _find_order(account, params)
    if order is None:
        raise Refusal(-2013, "Order does not exist.")
    return order_json(order, "query")


def cancel_order(account: Account, params: Params, now: int) -> Json:
    _one_of(
        params,
        "cancelRestrictions",
        frozenset({"ONLY_NEW", "ONLY_PARTIALLY_FILLED"}),
        -1145,
        "`cancelRestrictions` has to be either `ONLY_NEW` or `ONLY_PARTIALLY_FILLED`.",
    )
    new_id = _client_id(params, "newClientOrderId") or _generated_id()
    order = _find_order(account, params)
    if order is None:
        raise Refusal(-2011, "Unknown order sent.")
    restriction = params.get("cancelRestrictions")
    if restriction and order.is_open and order.status != restriction.removeprefix("ONLY_"):
        raise Refusal(-2011, "Order was not canceled due to cancel restrictions.")
    account.cancel(order)
    return order_json(order, "cancel", cancel_client_id=new_id)


def open_orders(account: Account, params: Params, now: int) -> Json:
    symbol = account.spec(params["symbol"]).symbol if params.get("symbol") else None
    return [order_json(order, "query") for order in account.open_orders(symbol)]


def _leg(params: Params, prefix: str) -> NewOcoLeg:
    name = f"{prefix}Type"
    type_ = _mandatory(params, name)
    if type_ not in _LEG_FIELDS:
        raise Refusal(-1158, "Order type not supported in OCO.")
    wanted = _LEG_FIELDS[type_]
    for suffix in ("Price", "StopPrice", "TimeInForce"):
        field_name = prefix + suffix
        if suffix in wanted:
            _mandatory(params, field_name)
        elif field_name in params:
            raise Refusal(-1106, f"Parameter '{field_name}' sent when not required.")
    for suffix in ("TrailingDelta", "IcebergQty", "PegPriceType", "PegOffsetType", "PegOffsetValue"):
        if prefix + suffix in params:
            raise Refusal(
                -1130, f"Data sent for parameter '{prefix + suffix}' is not valid. (not supported by the stand-in)"
            )
    return NewOcoLeg(
        type=type_,
        client_order_id=_client_id(params, f"{prefix}ClientOrderId") or _generated_id(),
        price=_decimal(params, f"{prefix}Price"),
        stop_price=_decimal(params, f"{prefix}StopPrice"),
        time_in_force=_one_of(params, f"{prefix}TimeInForce", _TIFS, -1115, "Invalid timeInForce."),
    )


def new_oco(account: Account, params: Params, now: int) -> Json:
    symbol = _symbol(account, params)
    side = _one_of(params, "side", frozenset({"BUY", "SELL"}), -1117, "Invalid side.") or _mandatory(params, "side")
    _mandatory(params, "quantity")
    quantity = _decimal(params, "quantity")
    assert quantity is not None
    resp = _one_of(
        params, "newOrderRespType", _RESP_TYPES, -1130, "Data sent for parameter 'newOrderRespType' is not valid."
    )
    above, below = _leg(params, "above"), _leg(params, "below")
    order_list = account.place_oco(
        symbol, side, quantity, _client_id(params, "listClientOrderId") or _generated_id(), above, below
    )
    kind = (resp or "FULL").lower()
    return list_json(order_list, None if kind == "ack" else kind)


def _find_list(account: Account, params: Params, client_param: str) -> OrderList | None:
    _either(params, "orderListId", client_param)
    return account.find_list(
        order_list_id=_int(params, "orderListId"), list_client_order_id=_client_id(params, client_param)
    )


def cancel_list(account: Account, params: Params, now: int) -> Json:
    symbol = _symbol(account, params)
    _client_id(params, "newClientOrderId")
    order_list = _find_list(account, params, "listClientOrderId")
    if order_list is None or order_list.symbol != symbol:
        raise Refusal(-2011, "Unknown order sent.")
    account.cancel_list(order_list)
    return list_json(order_list, "cancel")


def query_list(account: Account, params: Params, now: int) -> Json:
    order_list = _find_list(account, params, "origClientOrderId")
    if order_list is None:
        raise Refusal(-2018, "Order list does not exist.")
    return list_json(order_list, None)


def open_lists(account: Account, params: Params, now: int) -> Json:
    return [list_json(order_list, None) for order_list in account.lists if order_list.is_open]


def account_info(account: Account, params: Params, now: int) -> Json:
    omit_zero = _one_of(
        params,
        "omitZeroBalances",
        frozenset({"true", "false"}),
        -1130,
        "Data sent for parameter 'omitZeroBalances' is not valid.",
    )
    rate = fmt(account.fee_rate)
    balances = [
        {"asset": asset, "free": fmt(account.free[asset]), "locked": fmt(account.locked.get(asset, Decimal(0)))}
        for asset in sorted(account.free)
        if omit_zero != "true" or account.free[asset] or account.locked.get(asset)
    ]
    bps = int(account.fee_rate * 10_000)
    return {
        "makerCommission": bps,
        "takerCommission": bps,
        "buyerCommission": 0,
        "sellerCommission": 0,
        "commissionRates": {"maker": rate, "taker": rate, "buyer": fmt(Decimal(0)), "seller": fmt(Decimal(0))},
        "canTrade": True,
        "canWithdraw": True,
        "canDeposit": True,
        "brokered": False,
        "requireSelfTradePrevention": False,
        "preventSor": False,
        "updateTime": account.update_time,
        "accountType": "SPOT",
        "balances": balances,
        "permissions": ["SPOT"],
        "uid": 354937868,
    }


def my_trades(account: Account, params: Params, now: int) -> Json:
    symbol = _symbol(account, params)
    order_id, from_id = _int(params, "orderId"), _int(params, "fromId")
    start, end = _int(params, "startTime"), _int(params, "endTime")
    limit = _int(params, "limit") or 500
    if not 1 <= limit <= 1000:
        raise Refusal(-1130, "Data sent for parameter 'limit' is not valid.")
    if from_id is not None and (start is not None or end is not None):
        raise Refusal(-1128, "Combination of optional parameters invalid.")
    if start is not None and end is not None and end - start > 86_400_000:
        raise Refusal(-1127, "More than 24 hours between startTime and endTime.")
    trades = [
        t
        for t in account.trades[symbol]
        if (order_id is None or t.order_id == order_id)
        and (from_id is None or t.id >= from_id)
        and (start is None or t.time >= start)
        and (end is None or t.time <= end)
    ]
    # With fromId or startTime: the oldest from there; otherwise the most recent.
    chosen = trades[:limit] if from_id is not None or start is not None else trades[-limit:]
    return [trade_json(t) for t in chosen]


def _weight_open_orders(params: Params) -> int:
    return 6 if params.get("symbol") else 80


ENDPOINTS: Mapping[tuple[str, str], Endpoint] = {
    ("POST", "/api/v3/order"): Endpoint(
        frozenset(
            {
                "symbol",
                "side",
                "type",
                "timeInForce",
                "quantity",
                "quoteOrderQty",
                "price",
                "newClientOrderId",
                "strategyId",
                "strategyType",
                "stopPrice",
                "trailingDelta",
                "icebergQty",
                "newOrderRespType",
                "selfTradePreventionMode",
                "pegPriceType",
                "pegOffsetValue",
                "pegOffsetType",
            }
        )
        | _SIGNED,
        True,
        lambda p: 1,
        new_order,
        orders=1,
    ),
    ("GET", "/api/v3/order"): Endpoint(
        frozenset({"symbol", "orderId", "origClientOrderId"}) | _SIGNED, True, lambda p: 4, query_order
    ),
    ("DELETE", "/api/v3/order"): Endpoint(
        frozenset({"symbol", "orderId", "origClientOrderId", "newClientOrderId", "cancelRestrictions"}) | _SIGNED,
        True,
        lambda p: 1,
        cancel_order,
    ),
    ("GET", "/api/v3/openOrders"): Endpoint(frozenset({"symbol"}) | _SIGNED, True, _weight_open_orders, open_orders),
    ("POST", "/api/v3/orderList/oco"): Endpoint(
        frozenset(
            {"symbol", "listClientOrderId", "side", "quantity", "newOrderRespType", "selfTradePreventionMode"}
            | {
                prefix + suffix
                for prefix in ("above", "below")
                for suffix in (
                    "Type",
                    "ClientOrderId",
                    "IcebergQty",
                    "Price",
                    "StopPrice",
                    "TrailingDelta",
                    "TimeInForce",
                    "StrategyId",
                    "StrategyType",
                    "PegPriceType",
                    "PegOffsetType",
                    "PegOffsetValue",
                )
            }
        )
        | _SIGNED,
        True,
        lambda p: 1,
        new_oco,
        orders=2,
    ),
    ("DELETE", "/api/v3/orderList"): Endpoint(
        frozenset({"symbol", "orderListId", "listClientOrderId", "newClientOrderId"}) | _SIGNED,
        True,
        lambda p: 1,
        cancel_list,
    ),
    ("GET", "/api/v3/orderList"): Endpoint(
        frozenset({"orderListId", "origClientOrderId"}) | _SIGNED, True, lambda p: 4, query_list
    ),
    ("GET", "/api/v3/openOrderList"): Endpoint(_SIGNED, True, lambda p: 6, open_lists),
    ("GET", "/api/v3/account"): Endpoint(frozenset({"omitZeroBalances"}) | _SIGNED, True, lambda p: 20, account_info),
    ("GET", "/api/v3/myTrades"): Endpoint(
        frozenset({"symbol", "orderId", "startTime", "endTime", "fromId", "limit"}) | _SIGNED,
        True,
        lambda p: 5 if p.get("orderId") else 20,
        my_trades,
    ),
}
