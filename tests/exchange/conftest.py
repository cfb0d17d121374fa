"""Fixtures for the exchange port: the Binance stand-in on an ephemeral port and a ``CcxtExchange``
(the real ccxt underneath) pointed at it through ``exchange.rest_url``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from tests.replay.exchange.conftest import KEY, SECRET, SecondsClock
from tradebotd.exchange.ccxt_exchange import CcxtExchange
from tradebotd.exchange.throttle import RequestBudget
from tradebotd.replay.exchange import ExchangeServer, SymbolSpec

__all__ = ["KEY", "SECRET", "SecondsClock", "make_port"]


def make_port(
    server: ExchangeServer, *, secret: str = SECRET, budget: RequestBudget | None = None, **kw: object
) -> CcxtExchange:
    return CcxtExchange(
        api_key=KEY,
        api_secret=secret,
        mode="testnet",
        rest_url=server.rest_url,
        budget=budget or RequestBudget(),
        max_wait_s=kw.pop("max_wait_s", 0.0),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def budget_clock() -> SecondsClock:
    """Monotonic seconds for both our budget and the stand-in's weight windows and bans."""
    return SecondsClock()


@pytest.fixture
def budget(budget_clock: SecondsClock) -> RequestBudget:
    return RequestBudget(monotonic=budget_clock)


@pytest.fixture
async def server(budget_clock: SecondsClock) -> AsyncIterator[ExchangeServer]:
    specs = [
        SymbolSpec.named("BTCUSDT"),
        SymbolSpec.named("ETHUSDT", status="BREAK"),
        # Satoshi steps: an amount like 0.00012345 is valid as it is.
        SymbolSpec.named(
            "SATSUSDT", step_size=Decimal("0.00000001"), min_qty=Decimal("0.00000001"), min_notional=Decimal("1")
        ),
    ]
    async with ExchangeServer(
        specs,
        api_keys={KEY: SECRET},
        balances={"USDT": Decimal("10000")},
        prices={"BTCUSDT": Decimal("42000.00"), "ETHUSDT": Decimal("2000.00"), "SATSUSDT": Decimal("42000.00")},
        limits_clock=budget_clock,
    ) as exchange:
        yield exchange


@pytest.fixture
async def port(server: ExchangeServer, budget: RequestBudget) -> AsyncIterator[CcxtExchange]:
    exchange = make_port(server, budget=budget)
    try:
        await exchange.load_markets()
        yield exchange
    finally:
        await exchange.close()
