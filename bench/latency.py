"""Issue 2: time from a closed-kline frame arriving to the decision being recorded.

The real daemon (feed, engine, JS sandbox, paper broker, SQLite writer) runs against the replay
server on 127.0.0.1. Each candle is released alone (``server.advance(1)``) and the next one only
after the previous decision was committed, so every sample is one candle's full path: frame
received (the feed stamps ``time.monotonic_ns()`` on arrival) -> parsed -> evaluated by every
strategy -> paper fills -> batch committed to SQLite (WAL). The same candles run with 1 and with
100 strategies on one symbol, with the default settings: the 100 are spread over the daemon and
one evaluation process (``sandbox.eval_processes = 1``). "Recorded" is the commit holding the
decision's trades, logs, cursor, position and cash; ``last_run_at`` follows when the writer is
idle (:mod:`tradebotd.store.writer`).

Back to back, each candle finds the previous one's code and data in the CPU caches. Live, candles
of an interval arrive once per interval and the machine does other things in between, so a few
more candles are released after a second of quiet each and reported apart ("after 1 s idle", no
target). This measurement found that the first commit after the writer's idle checkpoint synced
the WAL header (~1 ms); the checkpoint now restarts the WAL itself. What remains is the machine
going cold: on this 2-vCPU VM every part of the path (sandbox, Python, SQLite) runs 2-3x slower
after a quiet second, and the same 100 evaluations need three passes to be fast again. It is not
data-cache misses (reading every instance's memory first did not help), and neither a dummy
instance's evaluations nor a real evaluation 5 ms before a candle recovered much of it, so the
daemon does not try to pre-warm.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from tradebotd.config import LogSettings
from tradebotd.daemon import Daemon
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer
from tradebotd.testing import replay_settings, until_stored

from .harness import log_to_devnull
from .rows import Row, median, percentile

EXAMPLE = Path(__file__).resolve().parents[1] / "tradebotd" / "examples" / "sma_crossover.js"
PAST = 600
IDLE_S = 1.0


Sample = tuple[float, int]  # latency in ms, trades recorded


async def _run(
    series: Series, strategies: int, candles: int, history: int, idle: int
) -> tuple[list[Sample], list[Sample], int]:
    """Samples for ``candles`` candles back to back, then for ``idle`` candles each released after
    IDLE_S of quiet; and how many strategies ran in an evaluation process."""
    with tempfile.TemporaryDirectory() as tmp:
        async with ReplayServer([series], past=PAST, ping_interval_s=None) as server:
            daemon = Daemon(
                replay_settings(server, Path(tmp) / "bench.db", history=history, log=LogSettings(format="json"))
            )
            code = EXAMPLE.read_text()
            sids = [
                daemon.store.add_strategy(
                    name=f"sma-{i}",
                    user_id="bench",
                    code=code,
                    kind="js",
                    asset=series.key.symbol,
                    interval=series.key.interval,
                    parameters={"fast": 5, "slow": 20, "amount": 0.001},
                    portfolio_id=daemon.portfolio_id,
                    status="running",
                )
                for i in range(strategies)
            ]
            await daemon.start()
            await until_stored(daemon, lambda: len(daemon.store.cursors()) == len(sids), limit_s=120)
            for _ in range(20):  # warm the JIT-less paths and caches: not measured
                await _one(daemon, server, series, sids[0])
            daemon.latency.clear()
            for _ in range(candles):
                await _one(daemon, server, series, sids[0])
            samples = _samples(daemon)
            daemon.latency.clear()
            for _ in range(idle):
                await asyncio.sleep(IDLE_S)  # the quiet between live candles is what is measured here
                await _one(daemon, server, series, sids[0])
            after_idle = _samples(daemon)
            remote = sum(p.strategies for p in daemon.eval_pool.processes) if daemon.eval_pool else 0
            await daemon.shutdown()
            return samples, after_idle, remote


def _samples(daemon: Daemon) -> list[Sample]:
    return [(ns / 1e6, trades) for ns, trades in zip(daemon.latency.samples_ns, daemon.latency.trades, strict=True)]


async def _one(daemon: Daemon, server: ReplayServer, series: Series, sid: str) -> None:
    before = daemon.store.cursors()[sid]
    await server.advance(1)
    await until_stored(daemon, lambda: daemon.store.cursors()[sid] > before, limit_s=60)


def run(series: Series, *, candles: int = 300, history: int = 500, idle: int = 20) -> list[Row]:
    # Decision log lines are part of the path: render them as in production, into /dev/null
    # (left open: loggers stay bound to it for the rest of the process).
    log_to_devnull()
    section = "latency (issue 2)"
    rows: list[Row] = []
    for strategies, target in ((1, 1.0), (100, 10.0)):
        samples, after_idle, remote = asyncio.run(_run(series, strategies, candles, history, idle))
        all_ms = [ms for ms, _ in samples]
        trading = [ms for ms, trades in samples if trades]
        label = f"{strategies} JS strateg{'y' if strategies == 1 else 'ies'}"
        note = f"{len(samples)} candles, history {history}, {remote} in an evaluation process"
        rows.append(Row(section, f"kline->recorded, {label}, median", median(all_ms), "ms"))
        rows.append(Row(section, f"kline->recorded, {label}, p99", percentile(all_ms, 99), "ms", target, note=note))
        if trading:
            rows.append(
                Row(
                    section,
                    f"  candles where all {strategies} trade, median",
                    median(trading),
                    "ms",
                    note=f"{len(trading)} of {len(samples)} candles; {strategies} fills each",
                )
            )
        if after_idle:
            idle_ms = [ms for ms, _ in after_idle]
            rows.append(
                Row(
                    section,
                    f"  after {IDLE_S:g} s idle, median",
                    median(idle_ms),
                    "ms",
                    note=f"{len(idle_ms)} candles, each after {IDLE_S:g} s of quiet, as live (bench/latency.py)",
                )
            )
            rows.append(Row(section, f"  after {IDLE_S:g} s idle, max", max(idle_ms), "ms"))
    return rows
