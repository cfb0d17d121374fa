"""A local stand-in of Binance's spot REST API for trading (orders, OCO lists, balances, trades),
spoken to by the real ccxt (``urls['test']`` + ``set_sandbox_mode(True)``).

Modules, sans-I/O first:

* ``spec``       symbols: status, order types, PRICE_FILTER / LOT_SIZE / NOTIONAL, exchangeInfo entries
* ``matching``   the account: balances (free / locked), orders, OCO lists, fills and fees, the price driver
* ``endpoints``  strict parameters and Binance's JSON shapes, per endpoint
* ``api``        the request pipeline: IP weight limits and bans, HMAC signatures and recvWindow,
                 order rate limits, fault injection, the request log
* ``server``     the aiohttp shell, standalone or mounted on the replay server under ``/exchange``

``ExchangeServer`` is the entry point; ``tradebotd replay-server --exchange`` serves it next to the
replayed candles.
"""

from tradebotd.replay.exchange.api import ExchangeApi, Faults, LoggedRequest, RateLimits, RestRequest, RestResponse
from tradebotd.replay.exchange.matching import Account, Refusal, Trade
from tradebotd.replay.exchange.server import PREFIX, ExchangeServer
from tradebotd.replay.exchange.spec import SymbolSpec

__all__ = [
    "PREFIX",
    "Account",
    "ExchangeApi",
    "ExchangeServer",
    "Faults",
    "LoggedRequest",
    "RateLimits",
    "Refusal",
    "RestRequest",
    "RestResponse",
    "SymbolSpec",
    "Trade",
]
