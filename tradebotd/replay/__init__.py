"""Replay server: a Binance stand-in that replays recorded candles on 127.0.0.1.

It serves the kline WebSocket and market-data REST protocols the feed uses, from a replay clock,
either in real time (the demo, ``tradebotd replay-server``) or driven step by step by tests, with
fault injection. Modules: ``series`` (CSV), ``tape`` (the sans-I/O replay clock), ``server``
(aiohttp), ``cli``, ``demo`` (generates the packaged synthetic series).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tradebotd.replay.cli import add_arguments, run_from_args, serve_replay
    from tradebotd.replay.series import ReplayDataError, Series, demo_csv, load_csv
    from tradebotd.replay.server import ReplayServer
    from tradebotd.replay.tape import ReplayTape, Step

# Imported when first named: ``tradebotd.replay.series`` (CSV reading, used by ``tradebotd
# backtest``) must not bring in the server and aiohttp (0.2 s) with it.
_WHERE = {
    "add_arguments": "cli",
    "run_from_args": "cli",
    "serve_replay": "cli",
    "ReplayDataError": "series",
    "Series": "series",
    "demo_csv": "series",
    "load_csv": "series",
    "ReplayServer": "server",
    "ReplayTape": "tape",
    "Step": "tape",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "ReplayDataError",
    "ReplayServer",
    "ReplayTape",
    "Series",
    "Step",
    "add_arguments",
    "demo_csv",
    "load_csv",
    "run_from_args",
    "serve_replay",
]
