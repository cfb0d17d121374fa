"""The argparse pieces that several ``tradebotd`` commands share: ``--config``, ``--param KEY=VALUE``,
value types for intervals and symbols, and the error for usage that argparse cannot check.

Light on purpose: ``tradebotd.cli`` imports this before it knows which command runs, and
``strategy list`` must not pay for numpy, ccxt, matplotlib or wasmtime (see ``cli._lazy``).

Errors: the value types raise ``argparse.ArgumentTypeError`` (argparse prints the message and
exits with code 2). :class:`UsageError` is for the checks a command makes itself; each command
prints it and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, TypeVar

from tradebotd.model import StreamKey, interval_ms, normalize_symbol

__all__ = [
    "CONFIG_HELP",
    "UsageError",
    "add_config_option",
    "add_parameter_option",
    "argument",
    "interval",
    "parameter",
    "standalone_parser",
    "stream_key",
    "symbol",
]

CONFIG_HELP = "config file (default: $TRADEBOTD_CONFIG, else ./tradebotd.toml)"
_T = TypeVar("_T")


class UsageError(Exception):
    """Bad command-line usage that argparse could not see: the command exits with code 2."""


def argument(parse: Callable[[str], _T], text: str) -> _T:
    """``parse(text)`` for an argparse type: its ``ValueError`` becomes the usage message."""
    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parameter(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``; the value is JSON when it parses (numbers, booleans, lists), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def interval(text: str) -> str:
    """A kline interval (``1m``, ``4h``, ...), kept as typed."""
    argument(interval_ms, text)
    return text


def symbol(text: str) -> str:
    """A symbol in any spelling the store accepts (``btcusdt``, ``BTC/USDT``), kept as typed."""
    argument(normalize_symbol, text)
    return text


def stream_key(symbol: str, interval: str) -> StreamKey:
    """The stream for a symbol and an interval given separately; :class:`UsageError` if either is bad."""
    try:
        interval_ms(interval)
        return StreamKey(normalize_symbol(symbol), interval)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def add_parameter_option(parser: argparse.ArgumentParser) -> None:
    """``--param KEY=VALUE`` (repeatable); the parsed ``args.param`` is a list of (key, value)."""
    parser.add_argument(
        "--param",
        action="append",
        type=parameter,
        default=[],
        metavar="KEY=VALUE",
        help="strategy parameter (repeatable; JSON values allowed)",
    )


def add_config_option(parser: argparse.ArgumentParser, *, default: object = None) -> None:
    """``--config PATH``. ``default=argparse.SUPPRESS`` for a subcommand's copy, so that it does
    not overwrite a ``--config`` given before the subcommand."""
    parser.add_argument("--config", metavar="PATH", default=default, help=CONFIG_HELP)


def standalone_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of a command run without the ``tradebotd`` wrapper (``python -m ...``): the
    command's own arguments go after ``--config``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_option(parser)
    return parser
