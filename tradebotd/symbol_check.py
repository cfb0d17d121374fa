"""Is a strategy's asset a symbol the exchange trades? ``strategy add`` / ``update`` ask
``/api/v3/exchangeInfo`` at ``market.rest_url`` before storing it.

Three answers, each with a line for the user:

* ``ok``: the exchange lists the symbol (``not_trading`` if its status is not ``TRADING``, e.g.
  ``BREAK``: a warning, the daemon would get no candles until it trades again);
* ``refused``: the exchange does not know the symbol (Binance -1121 ``Invalid symbol.``): the
  strategy is stored in status ``error`` with the exchange's message, as the daemon does when
  the same answer comes to its klines request;
* ``unreachable``: no answer (offline, timeout, 5xx, rate limit): a warning, the strategy is
  stored as asked; the daemon reports a refusal later if there is one.

``python -m tradebotd.symbol_check [SYMBOL]`` asks about one symbol (default ``BTCUSDT``) at the
configured ``market.rest_url`` and exits 0 (listed), 1 (refused) or 3 (no answer), printing the
message on stderr: ``make run`` uses it to say once, before the daemon starts retrying, that
``make demo`` works without network.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import aiohttp

from .market.errors import MalformedMessage, RestRejected, RestUnavailable, describe
from .market.rest import KlinesClient

__all__ = ["SymbolCheck", "check_symbol"]

TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class SymbolCheck:
    outcome: Literal["ok", "not_trading", "refused", "unreachable"]
    message: str  # for the user ("" when ok)


async def _status(rest_url: str, symbol: str, timeout_s: float) -> str:
    async with aiohttp.ClientSession() as session:
        return await KlinesClient(session, rest_url, timeout_s=timeout_s).symbol_status(symbol)


def check_symbol(rest_url: str, symbol: str, *, timeout_s: float = TIMEOUT_S) -> SymbolCheck:
    """Ask the exchange about ``symbol`` (normalised, e.g. ``BTCUSDT``)."""
    try:
        status = asyncio.run(_status(rest_url, symbol, timeout_s))
    except RestRejected as exc:
        return SymbolCheck("refused", f"the exchange refused {symbol}: {exc.answer}")
    except (RestUnavailable, MalformedMessage) as exc:
        return SymbolCheck("unreachable", f"could not check {symbol} against {rest_url}: {describe(exc)}")
    if status != "TRADING":
        return SymbolCheck("not_trading", f"{symbol} is not trading on the exchange now (status {status})")
    return SymbolCheck("ok", "")


EXIT_CODES = {"ok": 0, "not_trading": 0, "refused": 1, "unreachable": 3}


def main(argv: Sequence[str] | None = None) -> int:
    from .config import load_settings
    from .errors import ConfigError
    from .model import normalize_symbol

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings, _ = load_settings(None)
        symbol = normalize_symbol(args[0] if args else "BTCUSDT")
    except (ConfigError, ValueError) as exc:
        print(f"tradebotd.symbol_check: {exc}", file=sys.stderr)
        return 2
    result = check_symbol(settings.market.rest_url, symbol)
    if result.message:
        print(result.message, file=sys.stderr)
    return EXIT_CODES[result.outcome]


if __name__ == "__main__":
    raise SystemExit(main())
