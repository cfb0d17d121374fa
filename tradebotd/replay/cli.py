"""Command-line entry for the replay server (``tradebotd replay-server``, ``python -m tradebotd.replay``).

    tradebotd replay-server [--data CSV ... | --symbols N] [--speed X] [--port N] [--past N]
                            [--exchange [--balance ASSET=AMOUNT ...] [--fee-rate R] [--fee-asset received|quote]]

Prints ``PORT=<n>`` once listening (for scripts and black-box tests that pass ``--port 0``), then
replays in real time, ``X`` times faster, and keeps serving after the data runs out until
interrupted. Without ``--data`` it replays the packaged synthetic demo series; ``--symbols N``
replays N synthetic symbols at once (``tradebotd.replay.synthetic``), their candles closing together.

``--exchange`` also serves the Binance spot trading stand-in (``tradebotd.replay.exchange``) on
the same port under ``/exchange``, trading at the replayed prices. Before ``PORT=`` it prints the
settings the daemon needs (``TRADEBOTD_EXCHANGE__REST_URL`` and the API key and secret; keys
already in the environment are used, otherwise fresh ones are made up and printed).

Errors: ``ReplayDataError`` for unusable data (the message names the file and line), ``OSError``
when the port is taken; the CLI shows either as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TextIO

from tradebotd.replay.series import ReplayDataError, Series, demo_csv, load_csv
from tradebotd.replay.server import ReplayServer
from tradebotd.replay.synthetic import synthetic_market

__all__ = ["ExchangeOptions", "add_arguments", "main", "run_from_args", "serve_replay"]

_KEY_ENV = "TRADEBOTD_EXCHANGE__API_KEY"
_SECRET_ENV = "TRADEBOTD_EXCHANGE__API_SECRET"


@dataclass(frozen=True, slots=True)
class ExchangeOptions:
    """What ``--exchange`` serves: one account with these balances and fees."""

    balances: Mapping[str, Decimal] = field(default_factory=lambda: {"USDT": Decimal("10000")})
    fee_rate: Decimal = Decimal("0.001")
    fee_asset: str = "received"


def _balance(text: str) -> tuple[str, Decimal]:
    asset, _, amount = text.partition("=")
    try:
        value = Decimal(amount)
    except InvalidOperation:
        value = Decimal(-1)
    if not asset.isalnum() or not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"expected ASSET=AMOUNT (e.g. USDT=10000), got {text!r}")
    return asset.upper(), value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the replay server's options to ``parser`` (for a ``replay-server`` subcommand)."""
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        metavar="CSV",
        help="candles as time,open,high,low,close,volume, named like BTCUSDT_1m.csv; repeat for "
        "more symbols (same interval). Default: the packaged synthetic demo series",
    )
    parser.add_argument(
        "--symbols",
        type=int,
        metavar="N",
        help="instead of --data: N synthetic symbols of 1m candles (past + 3000 each), served together",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="replay X times faster than real time (default 1)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="listen port; 0 picks a free one (default 0)")
    parser.add_argument("--symbol", help="symbol of the single --data file, if its name does not say")
    parser.add_argument("--interval", help="interval of the single --data file, if its name does not say")
    parser.add_argument(
        "--past", type=int, default=600, help="candles already closed at the start, for warm-up history (default 600)"
    )
    parser.add_argument(
        "--exchange",
        action="store_true",
        help="also serve the Binance spot trading stand-in under /exchange (prints the settings to use)",
    )
    parser.add_argument(
        "--balance",
        type=_balance,
        action="append",
        metavar="ASSET=AMOUNT",
        help="with --exchange: a starting balance; repeat for more assets (default USDT=10000)",
    )
    parser.add_argument("--fee-rate", type=Decimal, default=Decimal("0.001"), help="with --exchange: fee per fill")
    parser.add_argument(
        "--fee-asset",
        choices=("received", "quote"),
        default="received",
        help="with --exchange: fees in the asset received (Binance's default: base on buys) or always in quote",
    )


async def serve_replay(
    data: Path | Sequence[Path] | None = None,
    *,
    speed: float = 1.0,
    host: str = "127.0.0.1",
    port: int = 0,
    symbol: str | None = None,
    interval: str | None = None,
    past: int = 600,
    symbols: int | None = None,
    ping_interval_s: float | None = 20.0,
    max_connection_s: float | None = 24 * 3600,
    exchange: ExchangeOptions | None = None,
    out: TextIO = sys.stdout,
) -> None:
    """Serve the replay until cancelled; prints ``PORT=<n>`` to ``out`` once listening (after
    the exchange settings, with ``exchange``)."""
    series: list[Series]
    if symbols is not None:
        if data is not None or symbol or interval:
            raise ReplayDataError("--symbols replaces --data (and --symbol / --interval)")
        if not 1 <= symbols <= 1000:
            raise ReplayDataError("--symbols must be 1..1000")
        series = synthetic_market(symbols, past + 3000)
    else:
        paths = [demo_csv()] if data is None else [data] if isinstance(data, Path) else list(data)
        if (symbol or interval) and len(paths) != 1:
            raise ReplayDataError("--symbol and --interval apply to a single --data file")
        series = [load_csv(path, symbol=symbol, interval=interval) for path in paths]
    server = ReplayServer(
        series,
        past=past,
        host=host,
        port=port,
        ping_interval_s=ping_interval_s,
        max_connection_s=max_connection_s,
    )
    announce = _serve_exchange(server, exchange) if exchange is not None else None
    async with server:
        if announce is not None:
            announce(out)
        print(f"PORT={server.port}", file=out, flush=True)
        await server.play(speed)
        await asyncio.Event().wait()  # keep answering REST and holding connections


def _serve_exchange(server: ReplayServer, options: ExchangeOptions) -> Callable[[TextIO], None]:
    """Attach the exchange stand-in to ``server``; returns what prints its settings once listening."""
    from tradebotd.replay.exchange import ExchangeServer

    key, secret = os.environ.get(_KEY_ENV), os.environ.get(_SECRET_ENV)
    from_env = bool(key and secret)
    if not (key and secret):
        key, secret = secrets.token_hex(32), secrets.token_hex(32)
    exchange = ExchangeServer.for_replay(
        server,
        api_keys={key: secret},
        balances=options.balances,
        fee_rate=options.fee_rate,
        fee_mode="quote" if options.fee_asset == "quote" else "received",
    )

    def announce(out: TextIO) -> None:
        lines = ["TRADEBOTD_EXCHANGE__MODE=testnet", f"TRADEBOTD_EXCHANGE__REST_URL={exchange.rest_url}"]
        if from_env:
            lines.append(f"# API key and secret: the ones in {_KEY_ENV} / {_SECRET_ENV}")
        else:  # throwaway keys of a local stand-in trading play money
            lines += [f"{_KEY_ENV}={key}", f"{_SECRET_ENV}={secret}"]
        balances = ", ".join(f"{asset} {amount}" for asset, amount in sorted(options.balances.items()))
        lines.append(f"# exchange stand-in: {balances}; market data on this port as before")
        print("\n".join(lines), file=out, flush=True)

    return announce


async def run_from_args(args: argparse.Namespace) -> None:
    """``serve_replay`` with options parsed by a parser that ``add_arguments`` set up."""
    exchange = None
    if args.exchange:
        balances = dict(args.balance) if args.balance else ExchangeOptions().balances
        exchange = ExchangeOptions(balances=balances, fee_rate=args.fee_rate, fee_asset=args.fee_asset)
    await serve_replay(
        args.data,
        speed=args.speed,
        host=args.host,
        port=args.port,
        symbol=args.symbol,
        interval=args.interval,
        past=args.past,
        symbols=args.symbols,
        exchange=exchange,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tradebotd.replay", description="Binance stand-in replaying recorded candles."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        asyncio.run(run_from_args(args))
    except KeyboardInterrupt:
        return 0
    except (ReplayDataError, OSError) as exc:
        print(f"replay-server: {exc}", file=sys.stderr)
        return 2
    return 0
