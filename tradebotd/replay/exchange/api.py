"""The stand-in's request pipeline, sans-I/O: one :class:`RestRequest` in, one :class:`RestResponse`
out. No sockets and no clock of its own (both clocks are passed in), so every rule is testable
without a server.

For each request, in Binance's order:

1. IP limits: during a ban every request gets 418 with ``Retry-After`` (seconds left). A request
   after a 429 but before its ``Retry-After`` has passed starts a ban (``ban_s``), as Binance
   bans clients that do not back off. Over ``weight_limit`` per minute: 429, ``Retry-After`` to
   the end of the minute. Every answer carries ``X-MBX-USED-WEIGHT-1M``.
2. Signed endpoints: ``X-MBX-APIKEY`` (-2014 missing, -2015 unknown), ``signature`` = hex
   HMAC-SHA256 over the *raw* bytes (query string, then body, without ``&signature=``; -1022),
   ``timestamp`` / ``recvWindow`` (default 5000, at most 60000; -1021 unless
   ``timestamp < serverTime + 1000`` and ``serverTime - timestamp <= recvWindow``).
3. Parameters: duplicates -1101, unknown -1104, then the endpoint's own checks (``endpoints.py``).
4. Order rate limits per account: ``orders_10s`` / ``orders_1d`` (429 -1015, no ``Retry-After``);
   successful order answers carry ``X-MBX-ORDER-COUNT-10S`` / ``-1D``.

Faults (:class:`Faults`) are armed by tests and consumed by the next matching request. Three of
them are not answers but instructions to the I/O shell (``RestResponse.action``): ``"hold"`` (the
order was placed, the client never hears back), ``"disconnect"`` (placed, then the connection
is cut) and ``"truncate"`` (placed, the answer's headers and half its body sent, then the
connection is cut: the client reads a 200 it cannot finish).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal
from urllib.parse import parse_qsl

from tradebotd.replay.exchange.endpoints import ENDPOINTS, Endpoint
from tradebotd.replay.exchange.matching import INSUFFICIENT, Account, Refusal

__all__ = ["Action", "ExchangeApi", "Faults", "LoggedRequest", "RestRequest", "RestResponse"]

Action = Literal["respond", "hold", "disconnect", "truncate"]
_PUBLIC = frozenset({"/api/v3/ping", "/api/v3/time", "/api/v3/exchangeInfo"})
_INTERNAL = "Internal error; unable to process your request. Please try again."


@dataclass(frozen=True, slots=True)
class RestRequest:
    method: str
    path: str  # without any mount prefix, e.g. "/api/v3/order"
    query: str  # the raw query string as sent (still percent-encoded), without "?"
    body: bytes
    headers: Mapping[str, str]  # header names lower case


@dataclass(frozen=True, slots=True)
class RestResponse:
    status: int
    body: object  # JSON-able; None for an empty body
    headers: dict[str, str] = field(default_factory=dict)
    action: Action = "respond"


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """What a request asked and what it got, for tests' assertions."""

    method: str
    path: str
    params: dict[str, str]  # decoded, query and body merged
    status: int
    code: int | None  # Binance's error code, if the answer was an error
    action: Action
    at_ms: int
    api_key: str | None


@dataclass(eq=False)
class _Fault:
    kind: str
    method: str | None
    path: str | None
    count: int
    status: int = 503
    retry_after_s: float = 0.0
    code: int = 0
    msg: str = ""

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (self.path is None or self.path == path)


class Faults:
    """Armed faults; each applies to the next ``count`` requests it matches."""

    def __init__(self) -> None:
        self._pending: list[_Fault] = []

    def _arm(self, fault: _Fault) -> None:
        if fault.count < 1:
            raise ValueError("count must be >= 1")
        self._pending.append(fault)

    def timeout_after_accept(self, *, method: str = "POST", path: str = "/api/v3/order", count: int = 1) -> None:
        """Process the request (the order exists) but never answer it."""
        self._arm(_Fault("hold", method, path, count))

    def disconnect_after_accept(self, *, method: str = "POST", path: str = "/api/v3/order", count: int = 1) -> None:
        """Process the request, then cut the connection without an answer."""
        self._arm(_Fault("disconnect", method, path, count))

    def truncate_after_accept(self, *, method: str = "POST", path: str = "/api/v3/order", count: int = 1) -> None:
        """Process the request, start a 200 answer, cut the connection half-way through its body."""
        self._arm(_Fault("truncate", method, path, count))

    def server_error(
        self,
        status: int = 503,
        *,
        method: str | None = None,
        path: str | None = None,
        after_accept: bool = False,
        count: int = 1,
    ) -> None:
        """Answer ``status`` with Binance's -1001 JSON; ``after_accept``: process it first (Binance:
        a 5xx means "execution status UNKNOWN")."""
        self._arm(_Fault("error_after" if after_accept else "error", method, path, count, status=status))

    def too_many_requests(self, retry_after_s: float = 30.0, *, count: int = 1) -> None:
        """Answer 429 as if the weight limit were reached; a request before ``retry_after_s`` has
        passed is then banned (418)."""
        self._arm(_Fault("429", None, None, count, retry_after_s=retry_after_s))

    def ban(self, retry_after_s: float = 120.0) -> None:
        """Ban the IP now: every request gets 418 until ``retry_after_s`` has passed."""
        self._arm(_Fault("418", None, None, 1, retry_after_s=retry_after_s))

    def order_not_found(self, *, count: int = 1) -> None:
        """The next order queries (``GET /api/v3/order``) answer -2013 even if the order exists
        (Binance's query can lag behind the matching engine)."""
        self._arm(_Fault("not_found", "GET", "/api/v3/order", count))

    def insufficient_balance(self, *, count: int = 1) -> None:
        """The next new orders (single or OCO) are refused for insufficient balance."""
        self._arm(_Fault("reject", "POST", None, count, code=-2010, msg=INSUFFICIENT))

    def reject_oco(
        self,
        *,
        code: int = -2010,
        msg: str = "The relationship of the prices for the orders is not correct.",
        count: int = 1,
    ) -> None:
        self._arm(_Fault("reject", "POST", "/api/v3/orderList/oco", count, code=code, msg=msg))

    def reject(
        self, code: int, msg: str, *, method: str | None = None, path: str | None = None, count: int = 1
    ) -> None:
        """Any Binance error answer for the next matching requests."""
        self._arm(_Fault("reject", method, path, count, code=code, msg=msg))

    def take(self, kinds: Sequence[str], method: str, path: str) -> _Fault | None:
        for fault in self._pending:
            if fault.kind in kinds and fault.matches(method, path):
                fault.count -= 1
                if fault.count == 0:
                    self._pending.remove(fault)
                return fault
        return None

    @property
    def pending(self) -> int:
        return sum(f.count for f in self._pending)


@dataclass(frozen=True, slots=True)
class RateLimits:
    weight_per_minute: int = 6000
    orders_per_10s: int = 50
    orders_per_day: int = 160_000
    raw_requests_per_5m: int = 61_000

    def as_json(self) -> list[dict[str, object]]:
        return [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": self.weight_per_minute,
            },
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": self.orders_per_10s},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": self.orders_per_day},
            {
                "rateLimitType": "RAW_REQUESTS",
                "interval": "MINUTE",
                "intervalNum": 5,
                "limit": self.raw_requests_per_5m,
            },
        ]


class ExchangeApi:
    """Binance spot REST for one account. ``clock()``: exchange time in ms (signatures, order
    times); ``limits_clock()``: seconds, monotonic (weight windows, bans) — separate so a test can
    move past a ban without the client's timestamps falling outside ``recvWindow``."""

    def __init__(
        self,
        account: Account,
        *,
        api_keys: Mapping[str, str],
        clock: Callable[[], int],
        limits_clock: Callable[[], float],
        limits: RateLimits = RateLimits(),
        ban_s: float = 120.0,
        log_size: int = 10_000,
    ) -> None:
        self.account = account
        self.api_keys = dict(api_keys)
        self.limits = limits
        self.ban_s = ban_s
        self.faults = Faults()
        self.requests: deque[LoggedRequest] = deque(maxlen=log_size)
        self.skew_ms = 0  # the server's clock runs this far ahead of ``clock`` (-1021 tests)
        self._clock = clock
        self._limits_clock = limits_clock
        self._weight_window = -1
        self._weight_used = 0
        self._backoff_until = -math.inf  # after a 429: requests before this start a ban
        self._ban_until = -math.inf
        self._orders: deque[float] = deque()  # limits-clock times of accepted orders, last day
        self._orders_10s: deque[float] = deque()  # the same, last 10 s

    def now_ms(self) -> int:
        return self._clock() + self.skew_ms

    @property
    def used_weight(self) -> int:
        """Weight used in the current minute."""
        self._roll_window(self._limits_clock())
        return self._weight_used

    def lift_ban(self) -> None:
        """End any ban or back-off now (for a test that has seen what it wanted)."""
        self._ban_until = self._backoff_until = -math.inf

    # -- the pipeline ----------------------------------------------------------------------------

    def handle(self, request: RestRequest) -> RestResponse:
        params: dict[str, str] = {}
        api_key = request.headers.get("x-mbx-apikey")
        try:
            query, body = _pairs(request.query), _pairs(request.body.decode("utf-8", "replace"))
            params = dict(body) | dict(query)  # a parameter in both: the query string's (rest-api.md)
            response = self._handle(request, (query, body), params, api_key)
        except Refusal as refusal:
            response = self._error(refusal.status, refusal.code, refusal.msg)
        code = response.body.get("code") if isinstance(response.body, dict) and response.status >= 400 else None
        self.requests.append(
            LoggedRequest(
                request.method,
                request.path,
                {k: v for k, v in params.items() if k != "signature"},
                response.status,
                code if isinstance(code, int) else None,
                response.action,
                self.now_ms(),
                api_key,
            )
        )
        return response

    def _handle(
        self,
        request: RestRequest,
        parts: tuple[list[tuple[str, str]], list[tuple[str, str]]],
        params: dict[str, str],
        api_key: str | None,
    ) -> RestResponse:
        method, path = request.method, request.path
        endpoint = ENDPOINTS.get((method, path))
        if endpoint is None and not (method == "GET" and path in _PUBLIC):
            return RestResponse(404, None)
        weight = endpoint.weight(params) if endpoint is not None else (20 if path.endswith("exchangeInfo") else 1)
        limited = self._ip_limits(method, path, weight)
        if limited is not None:
            return limited
        headers = {"X-MBX-USED-WEIGHT-1M": str(self._weight_used)}
        fault = self.faults.take(("error",), method, path)
        if fault is not None:
            return self._error(fault.status, -1001, _INTERNAL, headers)
        if endpoint is None:
            return RestResponse(200, self._public(path, params), headers)
        if endpoint.signed:
            self._authenticate(request, params, api_key)
        if any(n > 1 for part in parts for n in Counter(name for name, _ in part).values()):
            raise Refusal(-1101, "Duplicate values for a parameter detected.")
        unknown = set(params) - endpoint.params
        if unknown:
            read = len(params) - len(unknown)
            raise Refusal(
                -1104, f"Not all sent parameters were read; read '{read}' parameter(s) but was sent '{len(params)}'."
            )
        return self._call(endpoint, method, path, params, headers)

    def _call(
        self, endpoint: Endpoint, method: str, path: str, params: dict[str, str], headers: dict[str, str]
    ) -> RestResponse:
        if endpoint.orders:
            self._check_order_rate(endpoint.orders)
        if self.faults.take(("not_found",), method, path) is not None:
            raise Refusal(-2013, "Order does not exist.")
        rejected = self.faults.take(("reject",), method, path)
        if rejected is not None:
            raise Refusal(rejected.code, rejected.msg)
        body = endpoint.handler(self.account, params, self.now_ms())
        if endpoint.orders:
            now = self._limits_clock()
            self._orders.extend([now] * endpoint.orders)
            self._orders_10s.extend([now] * endpoint.orders)
            headers = headers | self._order_count_headers(now)
        after = self.faults.take(("hold", "disconnect", "truncate", "error_after"), method, path)
        if after is None:
            return RestResponse(200, body, headers)
        if after.kind == "error_after":
            return self._error(after.status, -1001, _INTERNAL, headers)
        if after.kind == "truncate":
            return RestResponse(200, body, headers, action="truncate")
        return RestResponse(0, None, headers, action="hold" if after.kind == "hold" else "disconnect")

    # -- limits ----------------------------------------------------------------------------------

    def _roll_window(self, now: float) -> None:
        window = int(now // 60)
        if window != self._weight_window:
            self._weight_window, self._weight_used = window, 0

    def _ip_limits(self, method: str, path: str, weight: int) -> RestResponse | None:
        now = self._limits_clock()
        self._roll_window(now)
        forced = self.faults.take(("429", "418"), method, path)
        if forced is not None and forced.kind == "418":
            self._ban_until = now + forced.retry_after_s
        if now < self._ban_until:
            return self._banned(now)
        if now < self._backoff_until:  # did not back off after a 429
            self._ban_until = now + self.ban_s
            return self._banned(now)
        if forced is not None or self._weight_used + weight > self.limits.weight_per_minute:
            retry_after = forced.retry_after_s if forced is not None else 60 - now % 60
            self._backoff_until = now + retry_after
            msg = (
                f"Too much request weight used; current limit is {self.limits.weight_per_minute} request weight "
                "per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API."
            )
            return self._error(429, -1003, msg, self._limit_headers(retry_after))
        self._weight_used += weight
        return None

    def _banned(self, now: float) -> RestResponse:
        until_ms = self.now_ms() + int((self._ban_until - now) * 1000)
        msg = (
            f"Way too much request weight used; IP banned until {until_ms}. "
            "Please use WebSocket Streams for live updates to avoid bans."
        )
        return self._error(418, -1003, msg, self._limit_headers(self._ban_until - now))

    def _limit_headers(self, retry_after_s: float) -> dict[str, str]:
        return {"X-MBX-USED-WEIGHT-1M": str(self._weight_used), "Retry-After": str(max(1, math.ceil(retry_after_s)))}

    def _check_order_rate(self, count: int) -> None:
        now = self._limits_clock()
        while self._orders and now - self._orders[0] >= 86_400:
            self._orders.popleft()
        in_10s = self._in_10s(now)
        if in_10s + count > self.limits.orders_per_10s:
            raise Refusal(
                -1015, f"Too many new orders; current limit is {self.limits.orders_per_10s} orders per 10 SECOND.", 429
            )
        if len(self._orders) + count > self.limits.orders_per_day:
            raise Refusal(
                -1015, f"Too many new orders; current limit is {self.limits.orders_per_day} orders per 1 DAY.", 429
            )

    def _in_10s(self, now: float) -> int:
        window = self._orders_10s
        while window and now - window[0] >= 10:
            window.popleft()
        return len(window)

    def _order_count_headers(self, now: float) -> dict[str, str]:
        in_10s = self._in_10s(now)
        return {"X-MBX-ORDER-COUNT-10S": str(in_10s), "X-MBX-ORDER-COUNT-1D": str(len(self._orders))}

    # -- authentication --------------------------------------------------------------------------

    def _authenticate(self, request: RestRequest, params: Mapping[str, str], api_key: str | None) -> None:
        if not api_key:
            raise Refusal(-2014, "API-key format invalid.", 401)
        secret = self.api_keys.get(api_key)
        if secret is None:
            raise Refusal(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        signature = params.get("signature")
        if not signature:
            raise Refusal(-1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
        # totalParams = query string concatenated with the body, as sent, minus the signature.
        payload = _without_signature(request.query) + _without_signature(request.body.decode("utf-8", "replace"))
        expected = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise Refusal(-1022, "Signature for this request is not valid.")
        timestamp = params.get("timestamp")
        if not timestamp:
            raise Refusal(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
        if not timestamp.isdigit():
            raise Refusal(-1100, "Illegal characters found in parameter 'timestamp'; legal range is '^[0-9]{1,20}$'.")
        window_text = params.get("recvWindow", "5000")
        try:
            window = Decimal(window_text)
        except ArithmeticError:
            raise Refusal(-1100, "Illegal characters found in parameter 'recvWindow'.") from None
        if window > 60_000 or window < 0:
            raise Refusal(-1131, "recvWindow must be less than 60000")
        server = self.now_ms()
        if int(timestamp) >= server + 1000:
            raise Refusal(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if server - int(timestamp) > window:
            raise Refusal(-1021, "Timestamp for this request is outside of the recvWindow.")

    # -- public endpoints ------------------------------------------------------------------------

    def _public(self, path: str, params: Mapping[str, str]) -> object:
        if path == "/api/v3/time":
            return {"serverTime": self.now_ms()}
        if path == "/api/v3/ping":
            return {}
        specs = list(self.account.specs.values())
        if "symbol" in params:
            specs = [self.account.spec(params["symbol"])]
        elif "symbols" in params:
            names = params["symbols"].strip("[]").replace('"', "").split(",")
            specs = [self.account.spec(name.strip()) for name in names if name.strip()]
        status = params.get("symbolStatus")
        if status is not None:
            specs = [spec for spec in specs if spec.status == status]
        return {
            "timezone": "UTC",
            "serverTime": self.now_ms(),
            "rateLimits": self.limits.as_json(),
            "exchangeFilters": [],
            "symbols": [spec.exchange_info() for spec in specs],
        }

    def _error(self, status: int, code: int, msg: str, headers: dict[str, str] | None = None) -> RestResponse:
        base = {"X-MBX-USED-WEIGHT-1M": str(self._weight_used)}
        return RestResponse(status, {"code": code, "msg": msg}, base | (headers or {}))


def _pairs(raw: str) -> list[tuple[str, str]]:
    if not raw:
        return []
    return parse_qsl(raw, keep_blank_values=True)


def _without_signature(raw: str) -> str:
    return "&".join(part for part in raw.split("&") if not part.startswith("signature=")) if raw else ""
