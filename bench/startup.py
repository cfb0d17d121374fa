"""Issue 3: daemon start time with 100 JS strategies, the compiled sandbox module already cached.

Measured from constructing the daemon (store open, migrations, paper account) to every strategy
loaded in its own sandbox instance and warmed up with its history, against the replay server.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from tradebotd.daemon import Daemon
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer
from tradebotd.sandbox.wasm import WasmRuntime
from tradebotd.testing import replay_settings, until_stored

from .rows import Row

EXAMPLE = Path(__file__).resolve().parents[1] / "tradebotd" / "examples" / "sma_crossover.js"


async def _start(series: Series, strategies: int, history: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with ReplayServer([series], past=600, ping_interval_s=None) as server:
            settings = replay_settings(server, Path(tmp) / "start.db", history=history)
            setup = Daemon(settings)
            code = EXAMPLE.read_text()
            for i in range(strategies):
                setup.store.add_strategy(
                    name=f"s{i}",
                    user_id="bench",
                    code=code,
                    kind="js",
                    asset=series.key.symbol,
                    interval=series.key.interval,
                    parameters={"fast": 5, "slow": 20},
                    portfolio_id=setup.portfolio_id,
                    status="running",
                )
            setup.store.close()
            started = time.perf_counter()
            daemon = Daemon(settings)
            await daemon.start()
            await daemon.synced.wait()
            loaded = time.perf_counter() - started
            await until_stored(daemon, lambda: len(daemon.store.cursors()) == strategies, limit_s=120)
            warm = time.perf_counter() - started
            await daemon.shutdown()
            return loaded, warm


def run(series: Series, *, strategies: int = 100, history: int = 500) -> list[Row]:
    WasmRuntime.shared()  # compile and cache the module first, as any earlier run of the daemon has
    loaded, warm = asyncio.run(_start(series, strategies, history))
    section = "start-up (issue 3)"
    return [
        Row(
            section,
            f"daemon start, {strategies} JS strategies loaded",
            loaded,
            "s",
            target=1.0,
            note="module compiled and cached",
        ),
        Row(
            section,
            f"daemon start, {strategies} strategies warmed with {history} candles",
            warm,
            "s",
            note="includes REST warm-up from the replay server",
        ),
    ]
