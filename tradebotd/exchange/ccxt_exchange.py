"""``CcxtExchange``: the :class:`~tradebotd.exchange.model.ExchangePort` on ``ccxt.async_support``
(pinned 4.5.90), spot only. With ``data/download.py`` the only module that imports ccxt.

How ccxt is set up, and why:

* ``options.fetchMarkets = {'types': ['spot']}`` (without it ``load_markets`` calls the futures
  hosts), ``fetchCurrencies``/``fetchMargins`` off (sapi calls we never need),
  ``adjustForTimeDifference`` (timestamps on the server's clock; re-measured after a -1021);
  ``recvWindow`` 5000, Binance's recommendation.
* ``mode = "testnet"``: ``set_sandbox_mode(True)`` (testnet.binance.vision); ``rest_url`` replaces
  the spot REST base in both modes (``urls['test']`` before sandbox mode, ``urls['api']`` in live
  mode; only the spot families remain, so nothing can leak to another host).
* ccxt's own rate limiter is off: every call first spends from our :class:`RequestBudget` (Binance
  request weights below) — the one of the port's REST host, which the market feed shares when it
  calls the same host — and every answer's headers go back to it (an ``on_rest_response`` hook).
* ``number = str``: ccxt parses amounts and prices into exact strings, not floats; we pass
  strings in (``format(Decimal, 'f')``) after rounding to the market's step and tick, so the
  digits on the wire are exactly ours. Market orders never get a price (ccxt would turn a market
  buy with a price into ``quoteOrderQty``).
* ccxt's ``decimal_to_precision`` sets the thread's decimal context to ROUND_HALF_UP and traps
  Underflow, for good; every ccxt call here runs in a ``decimal.localcontext()`` so the rest of
  the daemon keeps the default context.
* The HTTP session is ours, not ccxt's (``session`` in its config, made by ``_ensure_session``): the
  connector ccxt makes, except that idle connections are kept ``KEEPALIVE_S`` (aiohttp's default is 15 s, so
  with one-minute candles every candle's orders would wait for new TCP and TLS handshakes).
* OCO goes through the implicit ``private_post_orderlist_oco`` (ccxt's unified ``create_order``
  silently drops one leg when given both levels); its raw reports are parsed with ccxt's
  ``parse_order``.

Errors: only those of ``tradebotd.exchange.errors`` (translated once, in ``_call``, which also
parses the answer: a surprise in an order's answer is ``Ambiguous``, never a stray exception).
"""

from __future__ import annotations

import contextvars
import decimal
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import aiohttp
import ccxt
import ccxt.async_support as ccxt_async
import orjson
import structlog
from ccxt.base.precise import Precise

from tradebotd.exchange.errors import (
    BadSymbol,
    ClockSkew,
    ExchangeError,
    InvalidOrder,
    NotSupported,
    redact,
    translate,
)
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
from tradebotd.exchange.throttle import RequestBudget, RequestBudgets, retry_after_s
from tradebotd.logs import register_secret

__all__ = ["WEIGHTS", "CcxtExchange"]

log = structlog.get_logger(__name__)

# Idle connections to the exchange are kept this long: beyond a 1m candle, so the next candle's
# orders find them open (Binance keeps idle connections longer than aiohttp's 15 s default).
KEEPALIVE_S = 90.0

T = TypeVar("T")
Mode = Literal["testnet", "live"]

# Binance spot request weights (rest-api.md) per port operation; other exchanges count 1.
WEIGHTS: Mapping[str, int] = {
    "load_markets": 20,  # GET /api/v3/exchangeInfo
    "server_time": 1,  # GET /api/v3/time
    "create_order": 1,  # POST /api/v3/order (+1 order)
    "fetch_order": 4,  # GET /api/v3/order
    "cancel_order": 1,  # DELETE /api/v3/order
    "open_orders": 6,  # GET /api/v3/openOrders?symbol= (80 without a symbol)
    "create_oco": 1,  # POST /api/v3/orderList/oco (+2 orders)
    "cancel_oco": 1,  # DELETE /api/v3/orderList
    "fetch_oco": 4,  # GET /api/v3/orderList
    "open_ocos": 6,  # GET /api/v3/openOrderList
    "balances": 20,  # GET /api/v3/account
    "my_trades": 20,  # GET /api/v3/myTrades
}
_BINANCE_TYPES: Mapping[OrderKind, str] = {
    "market": "MARKET",
    "limit": "LIMIT",
    "stop_loss": "STOP_LOSS",
    "stop_loss_limit": "STOP_LOSS_LIMIT",
}
# ccxt's binance.parse_order_status, then _STATES: Binance's order status -> ours (None: open, or
# partially filled when something is).
_BINANCE_STATES: Mapping[str, OrderState | None] = {
    "NEW": None,
    "PARTIALLY_FILLED": None,
    "ACCEPTED": None,
    "TRIGGERING": None,
    "PENDING_CANCEL": None,
    "FILLED": "filled",
    "TRIGGERED": "filled",
    "FINISHED": "filled",
    "CANCELED": "cancelled",
    "CANCELLED": "cancelled",
    "REJECTED": "rejected",
    "F": "rejected",
    "EXPIRED": "expired",
    "EXPIRED_IN_MATCH": "expired",
}
_STATES: Mapping[str, OrderState] = {
    "closed": "filled",
    "canceled": "cancelled",
    "cancelled": "cancelled",
    "expired": "expired",
    "rejected": "rejected",
}


@dataclass(eq=False)
class _Answer:
    """The HTTP status and headers of the request a call made (set by the response hook)."""

    status: int | None = None
    headers: Mapping[str, str] | None = None
    body: str | None = None  # error answers only (Binance's {"code":..,"msg":..})


_ANSWER: contextvars.ContextVar[_Answer | None] = contextvars.ContextVar("tradebotd_exchange_answer", default=None)


class _Observed:
    """Mixed in front of a ccxt exchange class: every HTTP answer goes to the request budget and
    to the call that made it; ``exchangeInfo``'s ``rateLimits`` size the budget."""

    tb_budget: RequestBudget | None = None

    def on_rest_response(
        self,
        code: int,
        reason: str,
        url: str,
        method: str,
        response_headers: Mapping[str, str],
        response_body: str,
        request_headers: Any,
        request_body: Any,
    ) -> Any:
        answer = _ANSWER.get()
        if answer is not None:
            answer.status, answer.headers = code, response_headers
            answer.body = response_body[:1000] if code >= 400 else None
        if self.tb_budget is not None:
            self.tb_budget.observe(code, response_headers)
            if code == 200 and url.split("?")[0].endswith("/exchangeInfo"):
                try:
                    limits = orjson.loads(response_body).get("rateLimits")
                except (orjson.JSONDecodeError, AttributeError):
                    limits = None
                if isinstance(limits, list) and limits:
                    self.tb_budget.configure(limits)
        return super().on_rest_response(  # type: ignore[misc]
            code, reason, url, method, response_headers, response_body, request_headers, request_body
        )


def _rest_base(api_urls: object) -> str:
    """``scheme://host`` of the REST API ccxt will call (Binance: the spot ``private`` family)."""
    if isinstance(api_urls, Mapping):
        preferred = api_urls.get("private") or api_urls.get("rest")
        candidates = [preferred, *api_urls.values()] if preferred else list(api_urls.values())
        for url in candidates:
            found = _rest_base(url) if isinstance(url, Mapping) else url
            if isinstance(found, str) and found.startswith(("http://", "https://")):
                parts = urlsplit(found)
                return f"{parts.scheme}://{parts.netloc}"
    elif isinstance(api_urls, str) and api_urls.startswith(("http://", "https://")):
        parts = urlsplit(api_urls)
        return f"{parts.scheme}://{parts.netloc}"
    raise NotSupported(f"cannot tell the REST host from ccxt's urls {api_urls!r}")


def _client_class(exchange_id: str) -> type[Any]:
    base = getattr(ccxt_async, exchange_id, None)
    if not isinstance(base, type) or not issubclass(base, ccxt_async.Exchange):
        raise NotSupported(f"ccxt has no exchange {exchange_id!r}")
    return type(f"Tradebotd{base.__name__}", (_Observed, base), {})


class CcxtExchange:
    """The exchange port on ccxt; one instance per exchange account (see the module docstring).

    ``budgets``: the daemon's per-host request budgets; the port spends from the one of its REST
    host (``rest_base``), which the market feed shares when it calls the same host. ``budget``
    instead names the budget itself (tests); with neither, the port has one of its own.
    ``max_wait_s``: how long a call may wait for the budget before it fails with
    ``RateLimited`` unsent; ``timeout_s``: per HTTP request."""

    def __init__(
        self,
        *,
        api_key: str,
        api_secret: str,
        exchange_id: str = "binance",
        mode: Mode = "testnet",
        rest_url: str | None = None,
        budgets: RequestBudgets | None = None,
        budget: RequestBudget | None = None,
        timeout_s: float = 10.0,
        max_wait_s: float = 5.0,
        recv_window_ms: int = 5000,
    ) -> None:
        register_secret(api_key)
        register_secret(api_secret)
        self.id = exchange_id
        self.mode = mode
        if budget is not None and budgets is not None:
            raise ValueError("pass budget or budgets, not both")
        self._max_wait_s = max_wait_s
        self._binance = exchange_id == "binance"
        client = _client_class(exchange_id)(
            {
                "apiKey": api_key,
                "secret": api_secret,
                "session": None,  # ours (_ensure_session): ccxt then neither makes nor closes one
                "enableRateLimit": False,
                "timeout": int(timeout_s * 1000),
                "options": {
                    "defaultType": "spot",
                    "fetchMarkets": {"types": ["spot"]},
                    "fetchCurrencies": False,
                    "fetchMargins": False,
                    "adjustForTimeDifference": True,
                    "recvWindow": recv_window_ms,
                    "fetchOpenOrders": {"warnWithoutSymbol": False},
                },
            }
        )
        client.number = str
        if rest_url is not None and not self._binance:
            raise NotSupported("exchange.rest_url is supported for binance only")
        base = rest_url.rstrip("/") if rest_url is not None else None
        urls = {"public": f"{base}/api/v3", "private": f"{base}/api/v3", "v1": f"{base}/api/v1"} if base else None
        if mode == "testnet":
            if urls is not None:
                client.urls["test"] = urls
            if not client.urls.get("test"):
                raise NotSupported(f"ccxt has no testnet (sandbox) URLs for {exchange_id}")
            client.set_sandbox_mode(True)
        elif urls is not None:
            client.urls["api"] = urls
        self.rest_base = _rest_base(client.urls["api"]).replace("{hostname}", str(client.hostname or ""))
        if budget is None:
            budget = (budgets if budgets is not None else RequestBudgets()).for_url(self.rest_base)
        self.budget = budget
        client.tb_budget = self.budget
        self._client = client
        self._rules: dict[str, MarketRules] = {}
        self._unified: dict[str, str] = {}  # BTCUSDT -> BTC/USDT
        self._codes: dict[str, str] = {}  # Binance asset -> ccxt's currency code (fees)

    # -- the one place ccxt is called --------------------------------------------------------

    async def _call(
        self,
        operation: str,
        fn: Callable[[], Awaitable[Any]],
        parse: Callable[[Any], T],
        *,
        cost: int | None = None,
        orders: int = 0,
        order_request: bool = False,
    ) -> T:
        """Spend the budget, call ccxt, parse its answer, all failures translated. The answer is
        parsed in here, so that a surprise in it after an order request is ``Ambiguous`` (the
        order may exist) rather than an exception of no kind the broker knows."""
        weight = cost if cost is not None else (WEIGHTS.get(operation, 1) if self._binance else 1)
        await self.budget.acquire(weight, orders=orders, max_wait_s=self._max_wait_s)
        self._ensure_session()
        answer = _Answer()
        token = _ANSWER.set(answer)
        try:
            with decimal.localcontext():
                return parse(await fn())
        except Exception as exc:  # every failure becomes one of ours, here and only here
            if not isinstance(exc, ccxt.BaseError | aiohttp.ClientError | TimeoutError | OSError):
                log.error("unexpected error in an exchange call", operation=operation, error=redact(repr(exc)))
            retry_after = retry_after_s(answer.headers)
            error = translate(
                exc,
                operation=operation,
                order_request=order_request,
                status=answer.status,
                retry_after_s=retry_after,
                body=answer.body,
            )
        finally:
            _ANSWER.reset(token)
        if isinstance(error, ClockSkew):
            await self._resync_clock()
        log.debug("exchange call failed", operation=operation, error=str(error))
        raise error  # not chained: ccxt's message and URL stay out of tracebacks

    async def _resync_clock(self) -> None:
        try:
            with decimal.localcontext():
                await self.budget.acquire(WEIGHTS["server_time"], max_wait_s=self._max_wait_s)
                self._ensure_session()
                await self._client.load_time_difference()
        except (ccxt.BaseError, ExchangeError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("could not re-measure the exchange clock offset", error=type(exc).__name__)

    # -- markets -----------------------------------------------------------------------------

    async def load_markets(self, *, reload: bool = False) -> Mapping[str, MarketRules]:
        cost = WEIGHTS["load_markets"] + WEIGHTS["server_time"] if self._binance else 1
        markets = await self._call("load_markets", lambda: self._client.load_markets(reload), _markets, cost=cost)
        self._rules = {rules.symbol: rules for rules, _ in markets}
        self._unified = {rules.symbol: unified for rules, unified in markets}
        self._codes = {}
        return dict(self._rules)

    def rules(self, symbol: str) -> MarketRules:
        try:
            return self._rules[symbol]
        except KeyError:
            raise BadSymbol(f"{self.id} has no spot market {symbol!r} (or markets are not loaded)") from None

    def _market(self, symbol: str) -> tuple[str, MarketRules]:
        rules = self.rules(symbol)
        return self._unified[symbol], rules

    async def server_time(self) -> int:
        return await self._call("server_time", self._client.fetch_time, int)

    # -- orders ------------------------------------------------------------------------------

    async def create_order(
        self,
        symbol: str,
        side: Side,
        kind: OrderKind,
        amount: Decimal,
        *,
        client_order_id: str,
        price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> ExchangeOrder:
        unified, rules = self._market(symbol)
        quantity = rules.round_amount(amount)
        if quantity <= 0:
            raise InvalidOrder(f"amount {amount} rounds to 0 at the step {rules.amount_step}")
        limit: Decimal | None = None
        if kind in ("limit", "stop_loss_limit"):
            if price is None:
                raise InvalidOrder(f"a {kind} order needs a price")
            limit = rules.round_price(price)
        elif price is not None:
            raise InvalidOrder("a market order takes no price (ccxt would send quoteOrderQty)")
        stop: Decimal | None = None
        if kind in ("stop_loss", "stop_loss_limit"):
            if stop_price is None:
                raise InvalidOrder(f"a {kind} order needs a stop price")
            stop = rules.round_price(stop_price)
        if self._binance:
            return await self._binance_create_order(rules, side, kind, quantity, limit, stop, client_order_id)
        params: dict[str, str] = {"newClientOrderId": client_order_id}
        if limit is not None:
            params["timeInForce"] = "GTC"
        if stop is not None:
            params["stopLossPrice"] = _text(stop)
        ccxt_type = "limit" if limit is not None else "market"
        limit_text = _text(limit) if limit is not None else None
        return await self._call(
            "create_order",
            lambda: self._client.create_order(unified, ccxt_type, side, _text(quantity), limit_text, params),
            lambda answer: _order(answer, symbol),
            orders=1,
            order_request=True,
        )

    async def _binance_create_order(
        self,
        rules: MarketRules,
        side: Side,
        kind: OrderKind,
        quantity: Decimal,
        limit: Decimal | None,
        stop: Decimal | None,
        client_order_id: str,
    ) -> ExchangeOrder:
        """``POST /api/v3/order`` through ccxt's implicit ``private_post_order`` (ccxt still signs
        and sends it), with the request unified ``create_order`` builds for these arguments
        (amounts and prices already on the market's grid, in Decimal, written as ccxt writes
        them), and its answer read straight from Binance's JSON into the :class:`ExchangeOrder`
        that ccxt's ``parse_order`` would give. The unified layers (market lookups, option
        handling, re-rounding, the unified order) cost more CPU than signing and sending: issue
        8's 100 orders on one candle."""
        binance_type = _BINANCE_TYPES[kind]
        if rules.order_types and binance_type not in rules.order_types:
            raise InvalidOrder(f"{binance_type} is not a valid order type for the {rules.symbol} market")
        request: dict[str, str] = {
            "symbol": rules.symbol,
            "side": "BUY" if side == "buy" else "SELL",
            "newClientOrderId": client_order_id,
            "newOrderRespType": "FULL",
            "type": binance_type,
            "quantity": _wire(quantity),
        }
        if limit is not None:
            request["price"] = _wire(limit)
        if stop is not None:
            request["stopPrice"] = _wire(stop)
        if limit is not None:
            request["timeInForce"] = "GTC"
        symbol = rules.symbol
        return await self._call(
            "create_order",
            lambda: self._client.private_post_order(request),
            lambda answer: _binance_order(answer, symbol, self._currency_code),
            orders=1,
            order_request=True,
        )

    def _currency_code(self, asset: str) -> str:
        """ccxt's currency code of a Binance asset (a fee's), from a table built with the markets."""
        code = self._codes.get(asset)
        if code is None:
            code = self._codes[asset] = str(self._client.safe_currency_code(asset))
        return code

    async def fetch_order(self, symbol: str, client_order_id: str) -> ExchangeOrder:
        unified, _ = self._market(symbol)
        return await self._call(
            "fetch_order",
            lambda: self._client.fetch_order(None, unified, {"origClientOrderId": client_order_id}),
            lambda answer: _order(answer, symbol),
        )

    async def cancel_order(self, symbol: str, client_order_id: str) -> ExchangeOrder:
        unified, _ = self._market(symbol)
        return await self._call(
            "cancel_order",
            lambda: self._client.cancel_order(None, unified, {"origClientOrderId": client_order_id}),
            lambda answer: _order(answer, symbol),
        )

    async def open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        unified = self._market(symbol)[0] if symbol is not None else None
        cost = None if symbol is not None or not self._binance else 80
        return await self._call(
            "open_orders",
            lambda: self._client.fetch_open_orders(unified),
            lambda answer: [_order(order, self._id_of(order)) for order in answer],
            cost=cost,
        )

    def _id_of(self, parsed: Mapping[str, Any]) -> str:
        info = parsed.get("info") or {}
        symbol = info.get("symbol") if isinstance(info, Mapping) else None
        if isinstance(symbol, str):
            return symbol
        return next((sid for sid, unified in self._unified.items() if unified == parsed.get("symbol")), "")

    # -- OCO (Binance) -----------------------------------------------------------------------

    def _need_oco(self) -> None:
        if not self._binance:
            raise NotSupported(f"{self.id}: exchange-native OCO is implemented for binance only")

    async def create_oco(self, request: OcoRequest) -> OrderList:
        self._need_oco()
        _, rules = self._market(request.symbol)
        quantity = rules.round_amount(request.amount)
        if quantity <= 0:
            raise InvalidOrder(f"amount {request.amount} rounds to 0 at the step {rules.amount_step}")
        take = {"Type": "LIMIT_MAKER", "Price": _text(rules.round_price(request.take_profit))}
        take["ClientOrderId"] = request.tp_client_order_id
        stop = {"StopPrice": _text(rules.round_price(request.stop_price)), "ClientOrderId": request.sl_client_order_id}
        if request.stop_limit_price is None:
            stop["Type"] = "STOP_LOSS"
        else:
            stop |= {"Type": "STOP_LOSS_LIMIT", "Price": _text(rules.round_price(request.stop_limit_price))}
            stop["TimeInForce"] = "GTC"
        # Selling, the take-profit is above the market and the stop below; buying, the reverse.
        above, below = (take, stop) if request.side == "sell" else (stop, take)
        params = {
            "symbol": request.symbol,
            "side": request.side.upper(),
            "quantity": _text(quantity),
            "listClientOrderId": request.list_client_order_id,
            "newOrderRespType": "FULL",
            **{"above" + key: value for key, value in above.items()},
            **{"below" + key: value for key, value in below.items()},
        }
        return await self._call(
            "create_oco",
            lambda: self._client.private_post_orderlist_oco(params),
            self._order_list,
            orders=2,
            order_request=True,
        )

    async def cancel_oco(self, symbol: str, list_client_order_id: str) -> OrderList:
        self._need_oco()
        self._market(symbol)
        params = {"symbol": symbol, "listClientOrderId": list_client_order_id}
        return await self._call("cancel_oco", lambda: self._client.private_delete_orderlist(params), self._order_list)

    async def fetch_oco(self, list_client_order_id: str) -> OrderList:
        self._need_oco()
        params = {"origClientOrderId": list_client_order_id}
        return await self._call("fetch_oco", lambda: self._client.private_get_orderlist(params), self._order_list)

    async def open_ocos(self) -> list[OrderList]:
        self._need_oco()
        return await self._call(
            "open_ocos",
            lambda: self._client.private_get_openorderlist(),
            lambda answer: [self._order_list(entry) for entry in answer],
        )

    def _order_list(self, raw: object) -> OrderList:
        doc = cast(Mapping[str, Any], raw)
        symbol = str(doc["symbol"])
        reports = doc.get("orderReports") or []
        orders: tuple[ExchangeOrder, ...] = ()
        if reports:
            market = self._client.market(self._market(symbol)[0])
            orders = tuple(_order(self._client.parse_order(report, market), symbol) for report in reports)
        status_type, order_status = str(doc.get("listStatusType")), str(doc.get("listOrderStatus"))
        return OrderList(
            symbol=symbol,
            list_id=str(doc["orderListId"]),
            list_client_order_id=str(doc["listClientOrderId"]),
            is_open=order_status == "EXECUTING",
            status=f"{status_type}/{order_status}",
            legs=tuple(OrderRef(str(o["orderId"]), str(o["clientOrderId"])) for o in doc.get("orders") or []),
            orders=orders,
            raw=dict(doc),
        )

    # -- account -----------------------------------------------------------------------------

    async def balances(self) -> dict[str, Balance]:
        return await self._call("balances", self._client.fetch_balance, _balances)

    async def my_trades(
        self,
        symbol: str,
        *,
        from_id: str | None = None,
        since_ms: int | None = None,
        limit: int = 1000,
        order_id: str | None = None,
    ) -> list[ExchangeTrade]:
        unified, _ = self._market(symbol)
        params = {"fromId": from_id} if from_id is not None else {}
        if order_id is not None:  # one order's fills (Binance: weight 5 instead of 20)
            params = {"orderId": order_id}
        since = since_ms if from_id is None and order_id is None else None
        cost = 5 if order_id is not None and self._binance else None
        return await self._call(
            "my_trades",
            lambda: self._client.fetch_my_trades(unified, since, limit, params),
            lambda answer: sorted(
                (_trade(t, symbol) for t in answer), key=lambda t: (t.at_ms or 0, _numeric(t.trade_id))
            ),
            cost=cost,
        )

    def _ensure_session(self) -> None:
        """The session ccxt's ``open()`` would make (its SSL context, dual stack, Happy Eyeballs),
        with idle connections kept ``KEEPALIVE_S``; none after ``close()`` (ccxt then refuses the
        call)."""
        client = self._client
        if client.session is not None or client.closed_by_user:
            return
        context = ssl.create_default_context(cafile=client.cafile) if client.verify else False
        connector = aiohttp.TCPConnector(
            ssl=context,
            keepalive_timeout=KEEPALIVE_S,
            enable_cleanup_closed=True,
            family=socket.AF_UNSPEC,
            happy_eyeballs_delay=0,
        )
        client.session = aiohttp.ClientSession(connector=connector, trust_env=client.aiohttp_trust_env)

    async def close(self) -> None:
        session = self._client.session
        await self._client.close()  # forgets the session without closing it: not its own
        if session is not None:
            await session.close()


# -- parsing ccxt's unified structures (number = str) into ours ---------------------------------


def _text(value: Decimal) -> str:
    return format(value, "f")  # never an exponent: "0.00000001", not "1E-8"


def _wire(value: Decimal) -> str:
    """As ccxt's ``amount_to_precision``/``price_to_precision`` write a value already on the
    grid: no exponent, no trailing zeros ("41990", "0.00012")."""
    return format(value.normalize(), "f")


def _dec(value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(str(value))


def _numeric(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _filters(info: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(f.get("filterType")): f for f in info.get("filters") or [] if isinstance(f, Mapping)}


def _balances(answer: Mapping[str, Any]) -> dict[str, Balance]:
    info = answer.get("info")
    raw = info.get("balances") if isinstance(info, Mapping) else None
    if isinstance(raw, list):  # Binance: the exact strings
        return {
            str(b["asset"]): Balance(str(b["asset"]), Decimal(str(b["free"])), Decimal(str(b["locked"]))) for b in raw
        }
    free, used = answer.get("free") or {}, answer.get("used") or {}
    return {
        asset: Balance(asset, _dec(free.get(asset)) or Decimal(0), _dec(used.get(asset)) or Decimal(0))
        for asset in free
    }


def _markets(answer: Mapping[str, Mapping[str, Any]]) -> list[tuple[MarketRules, str]]:
    """Each spot market's rules and ccxt's unified symbol (BTC/USDT)."""
    return [(_rules(market), str(market["symbol"])) for market in answer.values() if market.get("spot")]


def _rules(market: Mapping[str, Any]) -> MarketRules:
    """Binance: exact values from the symbol's filters; others: ccxt's precision and limits."""
    info = market.get("info") or {}
    filters = _filters(info)
    lot, price_filter = filters.get("LOT_SIZE"), filters.get("PRICE_FILTER")
    notional = filters.get("NOTIONAL") or filters.get("MIN_NOTIONAL")
    limits = market.get("limits") or {}
    if lot is not None and price_filter is not None:
        step, min_amount = Decimal(str(lot["stepSize"])), Decimal(str(lot["minQty"]))
        max_amount, tick = _dec(lot.get("maxQty")), Decimal(str(price_filter["tickSize"]))
        min_price, max_price = _dec(price_filter.get("minPrice")), _dec(price_filter.get("maxPrice"))
    else:
        precision = market.get("precision") or {}
        step, tick = _dec(precision.get("amount")) or Decimal(1), _dec(precision.get("price")) or Decimal("0.00000001")
        min_amount = _dec((limits.get("amount") or {}).get("min")) or step
        max_amount = _dec((limits.get("amount") or {}).get("max"))
        min_price, max_price = (
            _dec((limits.get("price") or {}).get("min")),
            _dec((limits.get("price") or {}).get("max")),
        )
    if notional is not None:
        min_notional = _dec(notional.get("minNotional"))
        max_notional = _dec(notional.get("maxNotional"))
        for_market = bool(notional.get("applyMinToMarket", notional.get("applyToMarket", True)))
    else:
        min_notional, max_notional = _dec((limits.get("cost") or {}).get("min")), None
        for_market = True
    status = str(info.get("status") or ("TRADING" if market.get("active") else "UNKNOWN"))
    order_types = frozenset(str(t) for t in info.get("orderTypes") or [])
    return MarketRules(
        symbol=str(market["id"]),
        base=str(market["base"]),
        quote=str(market["quote"]),
        status=status,
        trading=bool(market.get("active")) and status in ("TRADING", "UNKNOWN"),
        amount_step=step,
        min_amount=min_amount,
        max_amount=max_amount if max_amount else None,
        price_tick=tick,
        min_price=min_price if min_price else None,
        max_price=max_price if max_price else None,
        min_notional=min_notional if min_notional else None,
        max_notional=max_notional if max_notional else None,
        min_notional_for_market=for_market,
        order_types=order_types,
        oco=bool(info.get("ocoAllowed", False)),
    )


def _order(parsed: object, symbol: str) -> ExchangeOrder:
    o = cast(Mapping[str, Any], parsed)
    info = o.get("info") if isinstance(o.get("info"), Mapping) else {}
    assert isinstance(info, Mapping)
    filled = _dec(o.get("filled")) or Decimal(0)
    status = o.get("status")
    state: OrderState = _STATES.get(str(status), "partially_filled" if filled > 0 else "open")
    if status == "open" and filled > 0:
        state = "partially_filled"
    raw_type = info.get("type")
    type_ = str(raw_type).lower() if raw_type else str(o.get("type") or "")
    side = str(o.get("side") or str(info.get("side") or "").lower())
    # The cancel answer's clientOrderId is the *cancel request's* id; the order's is origClientOrderId.
    client_id = info.get("origClientOrderId") or o.get("clientOrderId") or ""
    limit = _dec(info.get("price")) if "price" in info else (_dec(o.get("price")) if o.get("type") == "limit" else None)
    stop = _dec(o.get("triggerPrice")) or _dec(o.get("stopPrice"))
    list_id = info.get("orderListId")
    timestamp, updated = o.get("timestamp"), o.get("lastUpdateTimestamp")
    exchange_id = str(o.get("id") or "")
    trades = tuple(_fill(t, symbol, exchange_id, side) for t in o.get("trades") or [])
    return ExchangeOrder(
        symbol=symbol,
        exchange_order_id=exchange_id,
        client_order_id=str(client_id),
        side=cast(Side, side),
        type=type_,
        state=state,
        amount=_dec(o.get("amount")) or Decimal(0),
        filled=filled,
        cost=_dec(o.get("cost")) or Decimal(0),
        average=_dec(o.get("average")),
        price=limit if limit else None,
        stop_price=stop if stop else None,
        list_id=str(list_id) if list_id not in (None, -1, "-1") else None,
        created_ms=int(timestamp) if isinstance(timestamp, int) and timestamp > 0 else None,
        updated_ms=int(updated) if isinstance(updated, int) and updated > 0 else None,
        trades=trades,
        raw=dict(info),
    )


def _binance_order(raw: object, symbol: str, currency_code: Callable[[str], str]) -> ExchangeOrder:
    """A Binance spot order report (``POST /api/v3/order``'s FULL answer, or ``GET``'s) as
    :class:`ExchangeOrder`: what ``_order(ccxt.parse_order(raw))`` gives, without ccxt's unified
    order (tests/exchange/test_ccxt_exchange.py compares the two on the stand-in's answers)."""
    info = cast(Mapping[str, Any], raw)
    filled = _dec(info.get("executedQty")) or Decimal(0)
    state = _BINANCE_STATES.get(str(info.get("status")))
    if state is None:
        state = "partially_filled" if filled > 0 else "open"
    side = str(info.get("side") or "").lower()
    exchange_id = str(info.get("orderId") or "")
    timestamp = next((info[k] for k in ("time", "createTime", "workingTime", "transactTime", "updateTime",
                                        "createdAt") if info.get(k) is not None), None)
    updated = next((info[k] for k in ("transactTime", "updateTime", "updatedAt") if info.get(k) is not None), None)
    cost_text = info.get("cummulativeQuoteQty")
    cost = _dec(cost_text) or Decimal(0)
    average = _dec(info.get("avgPrice")) or None
    if average is None and filled > 0 and cost_text is not None:
        average = _dec(Precise.string_div(str(cost_text), str(info.get("executedQty"))))  # as ccxt's safe_order
    limit = _dec(info.get("price"))
    stop = _dec(info.get("stopPrice"))
    list_id = info.get("orderListId")
    trades: list[ExchangeTrade] = []
    for fill in info.get("fills") or ():
        asset = fill.get("commissionAsset")
        trades.append(
            ExchangeTrade(
                symbol=symbol,
                trade_id=str(fill.get("tradeId")),
                order_id=exchange_id,
                side=cast(Side, side) if side in ("buy", "sell") else None,
                amount=_dec(fill.get("qty")) or Decimal(0),
                price=_dec(fill.get("price")) or Decimal(0),
                fee=_dec(fill.get("commission")) or Decimal(0),
                fee_asset=currency_code(str(asset)) if asset else None,
                at_ms=None,
            )
        )
    return ExchangeOrder(
        symbol=symbol,
        exchange_order_id=exchange_id,
        client_order_id=str(info.get("origClientOrderId") or info.get("clientOrderId") or ""),
        side=cast(Side, side),
        type=str(info.get("type") or "").lower(),
        state=state,
        amount=_dec(info.get("origQty")) or Decimal(0),
        filled=filled,
        cost=cost,
        average=average,
        price=limit if limit else None,
        stop_price=stop if stop else None,
        list_id=str(list_id) if list_id not in (None, -1, "-1") else None,
        created_ms=int(timestamp) if isinstance(timestamp, int) and timestamp > 0 else None,
        updated_ms=int(updated) if isinstance(updated, int) and updated > 0 else None,
        trades=tuple(trades),
        raw=dict(info),
    )


def _fee(t: Mapping[str, Any]) -> tuple[Decimal, str | None]:
    fee = t.get("fee") or {}
    return _dec(fee.get("cost")) or Decimal(0), (str(fee["currency"]) if fee.get("currency") else None)


def _fill(t: Mapping[str, Any], symbol: str, order_id: str, side: str) -> ExchangeTrade:
    fee, fee_asset = _fee(t)
    timestamp = t.get("timestamp")
    return ExchangeTrade(
        symbol=symbol,
        trade_id=str(t.get("id")),
        order_id=str(t.get("order") or order_id),
        side=cast(Side, side) if side in ("buy", "sell") else None,
        amount=_dec(t.get("amount")) or Decimal(0),
        price=_dec(t.get("price")) or Decimal(0),
        fee=fee,
        fee_asset=fee_asset,
        at_ms=int(timestamp) if isinstance(timestamp, int) else None,
        maker=None if t.get("takerOrMaker") is None else t.get("takerOrMaker") == "maker",
    )


def _trade(t: Mapping[str, Any], symbol: str) -> ExchangeTrade:
    return _fill(t, symbol, str(t.get("order") or ""), str(t.get("side") or ""))


def _is_a_port(exchange: CcxtExchange) -> ExchangePort:
    return exchange  # mypy checks here that CcxtExchange implements the whole ExchangePort
