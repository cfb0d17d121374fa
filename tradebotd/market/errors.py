"""Errors of the market-data layer.

    MarketDataError (tradebotd.errors)
    ├── MalformedMessage    a WebSocket frame or REST body that does not parse as Binance sends it;
    │                       the feed logs it, counts it and carries on
    └── RestError           a REST market-data request failed
        ├── RestUnavailable network error, timeout, HTTP 5xx, 429/418: retry later
        │                   (``retry_after_s`` is set when the server said how long to wait)
        └── RestRejected    HTTP 4xx with a Binance error code (bad symbol, bad interval, ...):
                            the same request will fail again

None of these escapes ``MarketFeed.run()``: the feed retries what is retryable and logs the rest.
They are public for the REST client and the parser, which callers may use on their own.
"""

from __future__ import annotations

from tradebotd.errors import MarketDataError

__all__ = [
    "MalformedMessage",
    "MarketDataError",
    "RestError",
    "RestRejected",
    "RestUnavailable",
    "describe",
]


def describe(exc: BaseException) -> str:
    """One line for a log: the message, or the class name when there is none (``TimeoutError()``)."""
    text = str(exc).strip().replace("\n", " ")
    return text if text else type(exc).__name__


class MalformedMessage(MarketDataError):
    """A frame or response body is not what Binance documents; the message says what is wrong."""


class RestError(MarketDataError):
    """A REST market-data request failed."""


class RestUnavailable(RestError):
    """The request may succeed later: network trouble, a 5xx, or a rate limit (429/418)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RestRejected(RestError):
    """Binance rejected the request itself (HTTP 4xx with ``{"code": ..., "msg": ...}``)."""

    def __init__(self, message: str, *, status: int, code: int | None, answer: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        # The exchange's own words, e.g. "Invalid symbol. (code -1121)" (for users; the message
        # also names the request).
        self.answer = answer if answer is not None else message
