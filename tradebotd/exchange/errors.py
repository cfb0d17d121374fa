"""The exchange port's errors, and the one place ccxt's exceptions are translated into them.

    BrokerError (tradebotd.errors)
    └── ExchangeError            every error the port raises; ``code`` is the exchange's error
        │                        code when it sent one (Binance: -2010, -1013, ...)
        ├── Retryable            nothing happened, or a read failed: the same call may succeed later
        │   ├── Unavailable      network error, timeout or 5xx on a read; a connection that never
        │   │                    opened (refused, DNS, connect timeout) even for an order
        │   ├── ClockSkew        -1021, timestamp outside recvWindow: rejected before matching, so
        │   │                    nothing was placed; the port re-measures the clock offset
        │   └── RateLimited      429, or our own budget said wait; ``retry_after_s`` when known
        │       └── Banned       418: the IP is banned for ``retry_after_s``; no request is sent
        │                        (order traffic included) until it ends
        ├── Ambiguous            an order request (new order, OCO) was sent and its answer was lost:
        │                        timeout, cut connection or body, 5xx / -1001 / -1006 / -1007, or
        │                        an answer that could not be parsed. The order may exist: resolve
        │                        by querying its client order id, never by sending it again
        └── Permanent            the exchange refused; the same request will be refused again
            ├── InsufficientFunds
            ├── InvalidOrder     a filter (LOT_SIZE, PRICE_FILTER, NOTIONAL), an order type, an OCO
            │   │                price relationship, "Order would trigger immediately", ...
            │   └── DuplicateOrder  "Duplicate order sent.": an open order already has this client
            │                    id (so the earlier request did arrive)
            ├── OrderNotFound    -2013 / -2011 / -2018: no such order (or list), or not open to cancel
            ├── MarketClosed     the symbol is not trading
            ├── BadSymbol        no such market
            ├── AuthenticationFailed  key, signature or permissions (-1022, -2014, -2015)
            ├── NotSupported     this exchange cannot do it (e.g. OCO outside Binance)
            └── Rejected         any other refusal

Why the order of checks in :func:`translate` matters (ccxt 4.5.90's own classes, see the tests):
``InvalidNonce`` (-1021) is a ``NetworkError`` in ccxt but certain (the request was refused);
Binance's 5xx body ``{"code":-1001}`` reaches us as ``OperationFailed``, *not* a ``NetworkError``;
429 and 418 both arrive as ``DDoSProtection`` (told apart by the HTTP status); a Binance
``-2015`` after an earlier success also arrives as ``DDoSProtection`` (ccxt's guess at a
temporary ban); ``NOTIONAL`` failures are ``BadRequest`` while LOT_SIZE / PRICE_FILTER are
``InvalidOrder``; ``-2018`` is a plain ``ExchangeError``.

A lost answer is told by the exception *and* its cause: ccxt turns a read error other than a
connection error (a body cut short: ``aiohttp.ClientPayloadError``) into a plain ``ExchangeError``
whose only trace of the network is ``__cause__``; after an order request that is ``Ambiguous``,
never a refusal.

Messages never carry secrets: ccxt's messages can echo request URLs, whose query string holds the
signature and every parameter, so query strings are cut and registered secrets masked.

ccxt is imported by :func:`translate` only (the exception it translates came from ccxt, so ccxt is
loaded by then): the tree and the request budget (``throttle``) stay cheap to import for the
market feed, which shares the budget.
"""

from __future__ import annotations

import re
import socket

import aiohttp

from tradebotd.errors import BrokerError
from tradebotd.logs import mask_secrets

__all__ = [
    "Ambiguous",
    "AuthenticationFailed",
    "BadSymbol",
    "Banned",
    "ClockSkew",
    "DuplicateOrder",
    "ExchangeError",
    "InsufficientFunds",
    "InvalidOrder",
    "MarketClosed",
    "NotSupported",
    "OrderNotFound",
    "Permanent",
    "RateLimited",
    "Rejected",
    "Retryable",
    "Unavailable",
    "redact",
    "translate",
]


class ExchangeError(BrokerError):
    """Something the exchange (or the way to it) said no to; see the module docstring."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Retryable(ExchangeError):
    """Nothing was done (or only read): the same call may succeed later."""


class Unavailable(Retryable):
    """Network trouble, a timeout or a 5xx on a request that changes nothing (or never left)."""


class ClockSkew(Retryable):
    """The request's timestamp was outside the exchange's recvWindow; nothing was placed."""


class RateLimited(Retryable):
    """Too much request weight or too many orders: wait ``retry_after_s`` (None: unknown)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, code: int | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Banned(RateLimited):
    """HTTP 418: the IP is banned for ``retry_after_s``; nothing may be sent until then."""


class Ambiguous(ExchangeError):
    """An order request was sent and the answer was lost: the order may or may not exist."""


class Permanent(ExchangeError):
    """The exchange refused; the same request will be refused again."""


class InsufficientFunds(Permanent):
    pass


class InvalidOrder(Permanent):
    pass


class DuplicateOrder(InvalidOrder):
    """An open order already carries this client order id."""


class OrderNotFound(Permanent):
    pass


class MarketClosed(Permanent):
    pass


class BadSymbol(Permanent):
    pass


class AuthenticationFailed(Permanent):
    pass


class NotSupported(Permanent):
    pass


class Rejected(Permanent):
    pass


_QUERY = re.compile(r"(https?://[^\s?\"']+)\?[^\s\"']*")
_CODE = re.compile(r'"code"\s*:\s*(-?\d+)')
_NOT_FOUND_CODES = frozenset({-2011, -2013, -2018})


def redact(text: str) -> str:
    """``text`` without URL query strings (signatures, parameters) and without registered secrets."""
    return mask_secrets(_QUERY.sub(r"\1?…", text))


def exchange_code(text: str) -> int | None:
    """The exchange's error code in a ccxt message (which quotes Binance's JSON body)."""
    match = _CODE.search(text)
    return int(match.group(1)) if match else None


_NETWORK = (aiohttp.ClientError, TimeoutError, OSError)


def _never_left(exc: BaseException) -> bool:
    """The connection was never made, so the request cannot have reached the exchange."""
    cause = exc.__cause__
    return isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError | socket.gaierror)


def _answer_lost(exc: BaseException) -> bool:
    """The request may have left and no complete answer came back."""
    import ccxt

    return isinstance(exc, (ccxt.OperationFailed, *_NETWORK)) or isinstance(exc.__cause__, _NETWORK)


def translate(
    exc: Exception,
    *,
    operation: str,
    order_request: bool,
    status: int | None = None,
    retry_after_s: float | None = None,
    body: str | None = None,
) -> ExchangeError:
    """Our error for an exception raised while ``operation`` ran ccxt (ccxt's, aiohttp's, or an
    unexpected one from parsing the answer).

    ``order_request``: the request creates something (new order, OCO), so a lost answer is
    ``Ambiguous``; for reads and cancels it is ``Unavailable`` (a cancel may simply be repeated:
    a second cancel answers "unknown order" if the first arrived). ``status``/``retry_after_s``:
    the HTTP answer, when there was one; ``body``: an error answer's body (where the exchange's
    code is when ccxt's message quotes only the text)."""
    import ccxt  # loaded already: ``exc`` came from it (or from aiohttp underneath it)

    text = f"{operation}: {type(exc).__name__}: {redact(str(exc)).strip() or '(no message)'}"
    code = exchange_code(text)
    if code is None and body is not None:
        code = exchange_code(body)
    if isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded):
        if status == 418 or " 418 " in text:
            return Banned(text, retry_after_s=retry_after_s, code=code)
        return RateLimited(text, retry_after_s=retry_after_s, code=code)
    if isinstance(exc, ccxt.InvalidNonce):
        return ClockSkew(text, code=code)
    if isinstance(exc, ccxt.AuthenticationError):
        return AuthenticationFailed(text, code=code)
    if isinstance(exc, ccxt.InsufficientFunds):
        return InsufficientFunds(text, code=code)
    if isinstance(exc, ccxt.OrderNotFound) or code in _NOT_FOUND_CODES:
        return OrderNotFound(text, code=code)
    if isinstance(exc, ccxt.InvalidOrder):
        return (DuplicateOrder if "Duplicate order sent" in text else InvalidOrder)(text, code=code)
    if isinstance(exc, ccxt.BadSymbol):
        return BadSymbol(text, code=code)
    if isinstance(exc, ccxt.MarketClosed):
        return MarketClosed(text, code=code)
    if isinstance(exc, ccxt.NotSupported):
        return NotSupported(text, code=code)
    if isinstance(exc, ccxt.BadRequest):
        return (InvalidOrder if code == -1013 else Rejected)(text, code=code)
    if _answer_lost(exc) or (status is not None and status >= 500):
        if order_request and not _never_left(exc):
            return Ambiguous(text, code=code)
        return Unavailable(text, code=code)
    if not isinstance(exc, ccxt.BaseError):
        # Not the exchange's verdict but a surprise while reading its answer (a parsing bug in
        # ccxt or in the port): after an order request, the order may well exist.
        return (Ambiguous if order_request else Unavailable)(text, code=code)
    return Rejected(text, code=code)
