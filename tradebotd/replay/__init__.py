"""Replay server: a Binance stand-in that replays recorded candles on 127.0.0.1.

It serves the kline WebSocket and market-data REST protocols the feed uses, from a replay clock,
either in real time (the demo, ``tradebotd replay-server``) or driven step by step by tests, with
fault injection. Modules: ``series`` (CSV), ``tape`` (the sans-I/O replay clock), ``server``
(aiohttp), ``cli``, ``demo`` (generates the packaged synthetic series).
"""

from tradebotd.replay.cli import add_arguments, run_from_args, serve_replay
from tradebotd.replay.series import ReplayDataError, Series, demo_csv, load_csv
from tradebotd.replay.server import ReplayServer
from tradebotd.replay.tape import ReplayTape, Step

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
