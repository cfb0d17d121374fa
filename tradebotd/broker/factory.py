"""Which brokers a daemon trades through, built from the settings and the store's portfolios.

``build_brokers`` answers the engine's mapping *portfolio type -> broker*: ``"paper"`` is always
the paper exchange; ``"live"`` is the live broker on ``[exchange]`` when any portfolio is of type
``live``. Live trading needs the exchange's API key and secret, from the environment only
(``TRADEBOTD_EXCHANGE__API_KEY``, ``TRADEBOTD_EXCHANGE__API_SECRET``): without them start-up fails
with a :class:`~tradebotd.errors.ConfigError` that names the variables (never their values).

``broker_tasks`` lists the brokers' own tasks (the live broker's poller) for the daemon's
supervisor; the periodic reconciliation is the engine's (``Engine.reconcile_every``, every
``exchange.reconcile_s``), started when ``live_trading`` says a broker needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from ..config import ExchangeSettings, Settings
from ..errors import ConfigError
from ..exchange.throttle import RequestBudgets
from ..orders.ledger import Holding
from ..store.base import PortfolioRow
from .base import Broker, Polling
from .live import LiveBroker
from .paper import PaperBroker

__all__ = ["KEY_ENV", "SECRET_ENV", "broker_tasks", "build_brokers", "build_live_broker", "live_trading"]

KEY_ENV = "TRADEBOTD_EXCHANGE__API_KEY"
SECRET_ENV = "TRADEBOTD_EXCHANGE__API_SECRET"


def build_brokers(
    settings: Settings,
    portfolios: Iterable[PortfolioRow],
    holdings: Mapping[str, Holding],
    budgets: RequestBudgets,
) -> dict[str, Broker]:
    """The brokers by portfolio type. ``holdings``: the strategies' open positions from the
    store (the paper exchange's base balances are those of paper portfolios); ``budgets``: the
    daemon's per-host request budgets, shared with the market feed."""
    rows = list(portfolios)
    types = {p.id: p.type for p in rows}
    paper = settings.paper
    brokers: dict[str, Broker] = {
        "paper": PaperBroker(
            fee_rate=paper.fee_rate,
            slippage_bps=paper.slippage_bps,
            currency=paper.currency,
            cash={p.id: p.cash for p in rows if p.type == "paper"},
            holdings=[h for h in holdings.values() if types.get(h.portfolio_id or "", "paper") == "paper"],
        )
    }
    live = [p.name for p in rows if p.type == "live"]
    if live:
        why = f"portfolio {live[0]!r} is a live portfolio"
        brokers["live"] = build_live_broker(settings.exchange, budgets, why=why)
    return brokers


def build_live_broker(exchange: ExchangeSettings, budgets: RequestBudgets, *, why: str = "live trading") -> LiveBroker:
    """The live broker on ``[exchange]`` (the ccxt port, spot only). Raises ``ConfigError`` when
    the keys are missing from the environment."""
    missing = [name for name, value in ((KEY_ENV, exchange.api_key), (SECRET_ENV, exchange.api_secret))
               if value is None or not value.get_secret_value()]
    if missing:
        raise ConfigError(
            f"{why}, so {exchange.id} ({exchange.mode}) needs API keys: set {' and '.join(missing)} in the "
            "environment (keys are read from the environment only, never from the config file)"
        )
    from ..exchange.ccxt_exchange import CcxtExchange  # ccxt: imported only for live trading

    assert exchange.api_key is not None and exchange.api_secret is not None
    port = CcxtExchange(
        api_key=exchange.api_key.get_secret_value(),
        api_secret=exchange.api_secret.get_secret_value(),
        exchange_id=exchange.id,
        mode=exchange.mode,
        rest_url=exchange.rest_url,
        budgets=budgets,
    )
    return LiveBroker(port, max_order_quote=exchange.max_order_quote, poll_s=exchange.poll_s, budget=port.budget)


def live_trading(brokers: Mapping[str, Broker]) -> bool:
    """Whether a broker needs the periodic reconciliation (one with durable intents: live)."""
    return any(broker.durable_intents for broker in brokers.values())


def broker_tasks(brokers: Mapping[str, Broker]) -> list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]:
    """(task name, coroutine function) of each broker's own task, for the supervisor."""
    return [(f"broker-{broker.name}", broker.run) for broker in brokers.values() if isinstance(broker, Polling)]
