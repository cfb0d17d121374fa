"""What the stand-in knows about a symbol: status, order types and the three filters it applies
(``PRICE_FILTER``, ``LOT_SIZE``, ``NOTIONAL``), as Binance's ``filters.md`` defines them, plus the
``exchangeInfo`` entry that advertises them.

Numbers are ``Decimal`` throughout and printed the way Binance prints them (8 decimals).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from tradebotd.replay.series import Series
from tradebotd.replay.tape import format_decimal

__all__ = ["ORDER_TYPES", "SymbolSpec", "filter_failure", "fmt", "parse_decimal_param", "specs_for", "split_symbol"]

ORDER_TYPES = ("LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT")
_QUOTES = ("FDUSD", "USDT", "USDC", "TUSD", "BUSD", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL", "JPY", "DAI")
_ZERO = Decimal(0)


def fmt(value: Decimal) -> str:
    """Binance's decimal format (``"0.05000000"``)."""
    return format_decimal(value)


def split_symbol(symbol: str) -> tuple[str, str]:
    """``BTCUSDT`` -> (``BTC``, ``USDT``), by the usual quote assets."""
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol[: len(symbol) // 2], symbol[len(symbol) // 2 :]


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One spot symbol. ``status`` other than ``TRADING`` refuses new orders ("Market is closed.")."""

    symbol: str
    base: str
    quote: str
    tick_size: Decimal = Decimal("0.01")
    min_price: Decimal = Decimal("0.01")
    max_price: Decimal = Decimal("1000000")
    step_size: Decimal = Decimal("0.00001")
    min_qty: Decimal = Decimal("0.00001")
    max_qty: Decimal = Decimal("9000")
    min_notional: Decimal = Decimal("5")
    max_notional: Decimal = Decimal("9000000")
    apply_min_to_market: bool = True
    apply_max_to_market: bool = False
    status: str = "TRADING"
    order_types: tuple[str, ...] = ORDER_TYPES
    oco_allowed: bool = True
    quote_order_qty_market_allowed: bool = True
    extra_filters: tuple[dict[str, object], ...] = field(default=())

    @classmethod
    def named(cls, symbol: str, **overrides: object) -> SymbolSpec:
        base, quote = split_symbol(symbol)
        return cls(symbol, base, quote, **overrides)  # type: ignore[arg-type]

    @classmethod
    def for_series(cls, series: Series, **overrides: object) -> SymbolSpec:
        """A spec whose tick size matches the decimals of the recorded prices (as the replay's
        own ``exchangeInfo`` does), so every replayed price is a valid order price."""
        places = max(
            (
                -exp
                for c in series.candles[:1000]
                for p in (c.open, c.high, c.low, c.close)
                if isinstance(exp := p.as_tuple().exponent, int)
            ),
            default=2,
        )
        tick = Decimal(1).scaleb(-max(places, 0))
        fields: dict[str, object] = {"tick_size": tick, "min_price": tick, **overrides}
        return cls.named(series.key.symbol, **fields)

    @property
    def trading(self) -> bool:
        return self.status == "TRADING"

    def exchange_info(self) -> dict[str, object]:
        """The ``symbols[]`` entry of ``/api/v3/exchangeInfo`` (field set of Binance's sample)."""
        return {
            "symbol": self.symbol,
            "status": self.status,
            "baseAsset": self.base,
            "baseAssetPrecision": 8,
            "quoteAsset": self.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": list(self.order_types),
            "icebergAllowed": True,
            "ocoAllowed": self.oco_allowed,
            "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": self.quote_order_qty_market_allowed,
            "allowTrailingStop": False,
            "cancelReplaceAllowed": False,
            "amendAllowed": False,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": fmt(self.min_price),
                    "maxPrice": fmt(self.max_price),
                    "tickSize": fmt(self.tick_size),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": fmt(self.min_qty),
                    "maxQty": fmt(self.max_qty),
                    "stepSize": fmt(self.step_size),
                },
                {
                    "filterType": "NOTIONAL",
                    "minNotional": fmt(self.min_notional),
                    "applyMinToMarket": self.apply_min_to_market,
                    "maxNotional": fmt(self.max_notional),
                    "applyMaxToMarket": self.apply_max_to_market,
                    "avgPriceMins": 5,
                },
                *self.extra_filters,
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }


def filter_failure(
    spec: SymbolSpec, *, quantity: Decimal, price: Decimal | None, notional_price: Decimal | None, market: bool
) -> str | None:
    """The ``Filter failure: ...`` message for an order, or None when it passes (``filters.md``).

    ``price``: the order's limit or stop price (checked against PRICE_FILTER); ``notional_price``:
    the price its notional is judged at (the limit price, or for a market order the current
    price, where Binance uses the average price over ``avgPriceMins``)."""
    for value in (price,) if price is not None else ():
        if value < spec.min_price or value > spec.max_price or value % spec.tick_size != _ZERO:
            return "Filter failure: PRICE_FILTER"
    if quantity < spec.min_qty or quantity > spec.max_qty or (quantity - spec.min_qty) % spec.step_size != _ZERO:
        return "Filter failure: LOT_SIZE"
    if notional_price is not None:
        notional = quantity * notional_price
        if (not market or spec.apply_min_to_market) and notional < spec.min_notional:
            return "Filter failure: NOTIONAL"
        if (not market or spec.apply_max_to_market) and notional > spec.max_notional:
            return "Filter failure: NOTIONAL"
    return None


_DECIMAL_PARAM = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")


def parse_decimal_param(value: str) -> Decimal | None:
    """A decimal request parameter in Binance's grammar, or None when it does not match."""
    return Decimal(value) if _DECIMAL_PARAM.match(value) else None


def specs_for(series: Sequence[Series]) -> list[SymbolSpec]:
    return [SymbolSpec.for_series(s) for s in series]
