"""The exchange port: how the live broker talks to a real exchange (ccxt underneath).

Modules:

* ``model``          the values (``MarketRules``, ``ExchangeOrder``, ``ExchangeTrade``, ``OrderList``,
                     ``OcoRequest``, ``Balance``) and the ``ExchangePort`` protocol; no ccxt
* ``errors``         the error tree and the one translation of ccxt's exceptions into it
* ``throttle``       ``RequestBudget``: one request-weight and order-rate budget per account,
                     honouring Retry-After, 429 and 418; the market feed can share it
* ``ccxt_exchange``  ``CcxtExchange``, the port on ``ccxt.async_support`` (spot only)

Only ``ccxt_exchange`` and ``errors`` import ccxt (about half a second); they load on first use
of their names here, so importing the model stays cheap for the engine and the paper broker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tradebotd.exchange.model import (
    Balance,
    ExchangeOrder,
    ExchangePort,
    ExchangeTrade,
    MarketRules,
    OcoRequest,
    OrderKind,
    OrderList,
    OrderRef,
    OrderState,
    Side,
)

if TYPE_CHECKING:
    from tradebotd.exchange.ccxt_exchange import CcxtExchange
    from tradebotd.exchange.throttle import Limits, RequestBudget

__all__ = [
    "Balance",
    "CcxtExchange",
    "ExchangeOrder",
    "ExchangePort",
    "ExchangeTrade",
    "Limits",
    "MarketRules",
    "OcoRequest",
    "OrderKind",
    "OrderList",
    "OrderRef",
    "OrderState",
    "RequestBudget",
    "Side",
]

_LAZY = {
    "CcxtExchange": "tradebotd.exchange.ccxt_exchange",
    "Limits": "tradebotd.exchange.throttle",
    "RequestBudget": "tradebotd.exchange.throttle",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
