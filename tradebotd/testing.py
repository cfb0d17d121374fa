"""Helpers for driving the real daemon against a local replay (tests, benchmarks, tools).

    async with ReplayServer([series], past=100, ping_interval_s=None) as server:
        daemon = Daemon(replay_settings(server, tmp_path / "t.db"))
        await daemon.start()
        await until_stored(daemon, lambda: sid in daemon.store.cursors())
        await server.advance(10)
        ...
        await daemon.shutdown()

Waits are condition waits on store commits, never sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import DaemonSettings, MarketSettings, SandboxSettings, Settings, StoreSettings
from .daemon import Daemon
from .replay.server import ReplayServer

__all__ = ["replay_settings", "until_stored"]


def replay_settings(server: ReplayServer, db: Path, *, history: int = 50, **sections: Any) -> Settings:
    """Settings for a daemon that trades paper against ``server``; replayed candles carry
    historical timestamps, so the staleness guard is off."""
    market = MarketSettings(
        ws_url=server.ws_url,
        rest_url=server.rest_url,
        history=history,
        max_candle_lag_s=0,
        start_window_s=0,
        reconnect_min_s=0.02,
        reconnect_max_s=0.2,
    )
    values: dict[str, Any] = {
        "market": market,
        "store": StoreSettings(path=db),
        "daemon": DaemonSettings(poll_interval_s=0.2),
        "sandbox": SandboxSettings(),
    }
    values.update(sections)
    return Settings(**values)


async def until_stored(daemon: Daemon, predicate: Callable[[], bool], limit_s: float = 20.0) -> None:
    """Wait until ``predicate()`` (usually a query on ``daemon.store``) holds, re-checking after
    every store commit."""
    async with asyncio.timeout(limit_s):
        while True:
            committed = daemon.writer.next_commit()
            if predicate():
                return
            await committed.wait()
