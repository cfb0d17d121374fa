"""Command-line entry for the replay server (``tradebotd replay-server``, ``python -m tradebotd.replay``).

    tradebotd replay-server [--data CSV ... | --symbols N] [--speed X] [--port N] [--past N]

Prints ``PORT=<n>`` once listening (for scripts and black-box tests that pass ``--port 0``), then
replays in real time, ``X`` times faster, and keeps serving after the data runs out until
interrupted. Without ``--data`` it replays the packaged synthetic demo series; ``--symbols N``
replays N synthetic symbols at once (``tradebotd.replay.synthetic``), their candles closing together.

Errors: ``ReplayDataError`` for unusable data (the message names the file and line), ``OSError``
when the port is taken; the CLI shows either as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from tradebotd.replay.series import ReplayDataError, Series, demo_csv, load_csv
from tradebotd.replay.server import ReplayServer
from tradebotd.replay.synthetic import synthetic_market

__all__ = ["add_arguments", "main", "run_from_args", "serve_replay"]


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
    out: TextIO = sys.stdout,
) -> None:
    """Serve the replay until cancelled; prints ``PORT=<n>`` to ``out`` once listening."""
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
    async with server:
        print(f"PORT={server.port}", file=out, flush=True)
        await server.play(speed)
        await asyncio.Event().wait()  # keep answering REST and holding connections


async def run_from_args(args: argparse.Namespace) -> None:
    """``serve_replay`` with options parsed by a parser that ``add_arguments`` set up."""
    await serve_replay(
        args.data,
        speed=args.speed,
        host=args.host,
        port=args.port,
        symbol=args.symbol,
        interval=args.interval,
        past=args.past,
        symbols=args.symbols,
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
