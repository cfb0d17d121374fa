"""The root of every exception tradebotd raises on purpose.

Each layer documents its own small tree at the top of its module and derives from one of these:

    TradebotdError
    ├── ConfigError          bad configuration: the operator must fix a file or an env var
    ├── StoreError           the embedded store (or later Supabase) failed
    ├── MarketDataError      the market feed or REST market data failed or sent nonsense
    ├── StrategyError        a strategy failed to load or evaluate (sandbox, bad result)
    └── BrokerError          an order could not be placed or its outcome is unknown
"""

from __future__ import annotations


class TradebotdError(Exception):
    """Base class for errors tradebotd raises deliberately."""


class ConfigError(TradebotdError):
    """The configuration is invalid; the message names the key and the file."""


class StoreError(TradebotdError):
    """A store operation failed."""


class MarketDataError(TradebotdError):
    """Market data could not be fetched or parsed."""


class StrategyError(TradebotdError):
    """A strategy could not be loaded or evaluated."""


class BrokerError(TradebotdError):
    """An order could not be placed, or its outcome is unknown."""
