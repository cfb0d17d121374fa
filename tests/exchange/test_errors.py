"""The one translation of ccxt's exceptions into our tree (ccxt's classes as 4.5.90 raises them,
see test_ccxt_exchange.py and tests/replay/exchange/test_server.py for where each comes from)."""

from __future__ import annotations

import socket

import aiohttp
import ccxt
import pytest

from tradebotd.exchange import errors
from tradebotd.exchange.errors import redact, translate
from tradebotd.logs import register_secret


def caused(exc: Exception, cause: BaseException) -> Exception:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "order_request", "status", "expected"),
    [
        (ccxt.DDoSProtection("binance 429 Too Many Requests {}"), False, 429, errors.RateLimited),
        (ccxt.DDoSProtection("binance 418 I'm a Teapot {}"), True, 418, errors.Banned),
        (ccxt.RateLimitExceeded('binance {"code":-1015,"msg":"Too many new orders"}'), True, 429, errors.RateLimited),
        (ccxt.InvalidNonce('binance {"code":-1021}'), True, 400, errors.ClockSkew),
        (ccxt.AuthenticationError('binance {"code":-1022}'), False, 400, errors.AuthenticationFailed),
        (ccxt.InsufficientFunds("binance Account has insufficient balance"), True, 400, errors.InsufficientFunds),
        (ccxt.OrderNotFound('binance {"code":-2013}'), False, 400, errors.OrderNotFound),
        (
            ccxt.ExchangeError('binance {"code":-2018,"msg":"Order list does not exist."}'),
            False,
            400,
            errors.OrderNotFound,
        ),
        (ccxt.InvalidOrder('binance {"code":-2010,"msg":"Duplicate order sent."}'), True, 400, errors.DuplicateOrder),
        (ccxt.OrderImmediatelyFillable("binance Order would trigger immediately."), True, 400, errors.InvalidOrder),
        (ccxt.BadRequest('binance {"code":-1013,"msg":"Filter failure: NOTIONAL"}'), True, 400, errors.InvalidOrder),
        (
            ccxt.BadRequest('binance {"code":-1104,"msg":"Not all sent parameters were read"}'),
            True,
            400,
            errors.Rejected,
        ),
        (ccxt.MarketClosed("binance Market is closed."), True, 400, errors.MarketClosed),
        (ccxt.BadSymbol('binance {"code":-1121}'), False, 400, errors.BadSymbol),
        (
            ccxt.NotSupported("binance does not have a testnet/sandbox URL for sapi endpoints"),
            False,
            None,
            errors.NotSupported,
        ),
        # A lost answer: ambiguous after an order request, retryable otherwise.
        (ccxt.RequestTimeout("binance POST http://x/api/v3/order"), True, None, errors.Ambiguous),
        (ccxt.RequestTimeout("binance GET http://x/api/v3/order"), False, None, errors.Unavailable),
        (ccxt.OperationFailed('binance {"code":-1001,"msg":"Internal error"}'), True, 503, errors.Ambiguous),
        (ccxt.OperationFailed('binance {"code":-1001,"msg":"Internal error"}'), False, 503, errors.Unavailable),
        (ccxt.ExchangeNotAvailable("binance GET http://x 502"), False, 502, errors.Unavailable),
        (caused(ccxt.ExchangeNotAvailable("x"), aiohttp.ServerDisconnectedError()), True, None, errors.Ambiguous),
        # A body cut short: ccxt raises a plain ExchangeError, the network only in its cause.
        (caused(ccxt.ExchangeError("binance POST x"), aiohttp.ClientPayloadError("cut")), True, None, errors.Ambiguous),
        (
            caused(ccxt.ExchangeError("binance GET x"), aiohttp.ClientPayloadError("cut")),
            False,
            None,
            errors.Unavailable,
        ),
        # A surprise while parsing an answer (ccxt's or ours): the order may exist.
        (KeyError("orderId"), True, 200, errors.Ambiguous),
        (KeyError("orderId"), False, 200, errors.Unavailable),
        (ccxt.ExchangeError("binance 500 {}"), True, 500, errors.Ambiguous),
        (ccxt.ExchangeError('binance {"code":-9999,"msg":"new"}'), True, 400, errors.Rejected),
    ],
)
def test_translation(exc: Exception, order_request: bool, status: int | None, expected: type[Exception]) -> None:
    error = translate(exc, operation="op", order_request=order_request, status=status, retry_after_s=7.0)
    assert type(error) is expected
    if isinstance(error, errors.RateLimited):
        assert error.retry_after_s == 7.0


def test_an_order_whose_connection_never_opened_was_not_sent() -> None:
    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None), OSError(111, "refused")
    )
    for cause in (refused, aiohttp.ConnectionTimeoutError(), socket.gaierror(-2, "Name or service not known")):
        error = translate(caused(ccxt.ExchangeNotAvailable("x"), cause), operation="create_order", order_request=True)
        assert type(error) is errors.Unavailable
    read_timeout = caused(ccxt.RequestTimeout("x"), aiohttp.SocketTimeoutError())
    assert type(translate(read_timeout, operation="create_order", order_request=True)) is errors.Ambiguous


def test_codes_come_from_the_message_or_the_answer() -> None:
    assert (
        translate(ccxt.InvalidOrder('binance {"code": -2010, "msg": "x"}'), operation="o", order_request=True).code
        == -2010
    )
    quoted_text_only = ccxt.InsufficientFunds("binance Account has insufficient balance for requested action.")
    error = translate(quoted_text_only, operation="o", order_request=True, body='{"code":-2010,"msg":"Account has"}')
    assert error.code == -2010


def test_the_tree() -> None:
    assert issubclass(errors.Banned, errors.RateLimited) and issubclass(errors.RateLimited, errors.Retryable)
    assert issubclass(errors.ClockSkew, errors.Retryable) and issubclass(errors.Unavailable, errors.Retryable)
    assert issubclass(errors.DuplicateOrder, errors.InvalidOrder) and issubclass(errors.InvalidOrder, errors.Permanent)
    assert not issubclass(errors.Ambiguous, errors.Retryable | errors.Permanent)
    from tradebotd.errors import BrokerError

    assert issubclass(errors.ExchangeError, BrokerError)


def test_messages_lose_query_strings_and_registered_secrets() -> None:
    register_secret("k3y-that-must-not-leak")
    text = (
        "binance GET https://api.binance.com/api/v3/order?timestamp=1&symbol=BTCUSDT&signature=abcdef "
        "503 Service Unavailable k3y-that-must-not-leak"
    )
    cleaned = redact(text)
    assert "signature" not in cleaned and "timestamp=" not in cleaned and "k3y-that-must-not-leak" not in cleaned
    assert "https://api.binance.com/api/v3/order?…" in cleaned
    error = translate(ccxt.ExchangeNotAvailable(text), operation="fetch_order", order_request=False)
    assert "signature" not in str(error) and str(error).startswith("fetch_order: ExchangeNotAvailable: ")
