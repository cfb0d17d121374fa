"""Fixtures for the exchange stand-in: manual clocks, a signed-request helper for the sans-I/O
pipeline, and a running server with a real ccxt client pointed at it (recipe A of the notes)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
from urllib.parse import urlencode

import ccxt.async_support as ccxt_async
import pytest

from tradebotd.replay.exchange import ExchangeApi, ExchangeServer, RestRequest, RestResponse, SymbolSpec
from tradebotd.replay.exchange.matching import Account

KEY, SECRET = "test-key", "test-secret"
T0 = 1_700_000_000_000


class MsClock:
    """A clock in ms that moves only when told to."""

    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


class SecondsClock:
    """A monotonic clock in seconds that moves only when told to (weight windows, bans)."""

    def __init__(self, t: float = 6_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def btc(**overrides: object) -> SymbolSpec:
    return SymbolSpec.named("BTCUSDT", **overrides)


def make_account(
    specs: Sequence[SymbolSpec] | None = None,
    *,
    balances: Mapping[str, Decimal] | None = None,
    price: str = "42000.00",
    clock: MsClock | None = None,
    **kwargs: object,
) -> Account:
    chosen = list(specs) if specs is not None else [btc()]
    return Account(
        chosen,
        balances=balances if balances is not None else {"USDT": Decimal("10000")},
        clock=clock or MsClock(),
        prices={spec.symbol: Decimal(price) for spec in chosen},
        **kwargs,  # type: ignore[arg-type]
    )


def make_api(account: Account | None = None, *, clock: MsClock | None = None, **kwargs: object) -> ExchangeApi:
    ms = clock or MsClock()
    return ExchangeApi(
        account or make_account(clock=ms),
        api_keys={KEY: SECRET},
        clock=ms,
        limits_clock=kwargs.pop("limits_clock", SecondsClock()),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def sign(payload: str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def call(
    api: ExchangeApi,
    method: str,
    path: str,
    params: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    *,
    signed: bool = True,
    secret: str = SECRET,
    key: str | None = KEY,
    timestamp: int | None = None,
    recv_window: int | None = None,
) -> RestResponse:
    """One request as ccxt sends it: GET/DELETE all in the query string, POST all in the body."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    if signed:
        pairs = [("timestamp", str(timestamp if timestamp is not None else api.now_ms())), *pairs]
        if recv_window is not None:
            pairs.append(("recvWindow", str(recv_window)))
    text = urlencode(pairs)
    if signed:
        text += "&signature=" + sign(text, secret)
    headers = {"x-mbx-apikey": key} if key is not None and signed else {}
    if method == "POST":
        return api.handle(RestRequest(method, path, "", text.encode(), headers))
    return api.handle(RestRequest(method, path, text, b"", headers))


def error_code(response: RestResponse) -> object:
    assert isinstance(response.body, dict), response
    return response.body.get("code")


def recipe_a(server: ExchangeServer, *, secret: str = SECRET, **config: object) -> ccxt_async.binance:
    """A real ccxt binance client on the stand-in: spot only, sandbox URLs, own limiter off."""
    client = ccxt_async.binance(
        {
            "apiKey": KEY,
            "secret": secret,
            "enableRateLimit": False,
            "options": {"fetchMarkets": {"types": ["spot"]}},
            **config,
        }
    )
    base = server.rest_url
    client.urls["test"] = {"public": f"{base}/api/v3", "private": f"{base}/api/v3", "v1": f"{base}/api/v1"}
    client.set_sandbox_mode(True)
    return client


@pytest.fixture
def limits_clock() -> SecondsClock:
    return SecondsClock()


@pytest.fixture
async def server(limits_clock: SecondsClock) -> AsyncIterator[ExchangeServer]:
    specs = [btc(), SymbolSpec.named("ETHUSDT", status="BREAK")]
    async with ExchangeServer(
        specs,
        api_keys={KEY: SECRET},
        balances={"USDT": Decimal("10000")},
        prices={"BTCUSDT": Decimal("42000.00"), "ETHUSDT": Decimal("2000.00")},
        limits_clock=limits_clock,
    ) as exchange:
        yield exchange


@pytest.fixture
async def client(server: ExchangeServer) -> AsyncIterator[ccxt_async.binance]:
    exchange = recipe_a(server)
    try:
        yield exchange
    finally:
        await exchange.close()
