"""Issue 11: 1,000 JS strategies over 50 symbols x 3 intervals whose candles close together.

The real daemon (multi-connection feed, engine, JS sandboxes in the daemon and its evaluation
processes, paper broker, SQLite writer) runs against a synthetic 50-symbol replay
(``tradebotd.replay.synthetic``) of 1m candles, with strategies on the 1m, 5m and 15m streams of
every symbol (150 streams, 6-7 strategies each, default settings: ``market.history`` 500,
``sandbox.eval_processes`` one per CPU beyond the first). Measured in one run:

- start-up: from constructing the daemon (the store already holds the 1,000 running strategies;
  the compiled sandbox module is cached, as after any earlier run) to every strategy loaded, and
  to every strategy warmed with its 500 candles of history (its cursor recorded);
- decision latency per closed kline: its frame received -> its decisions recorded (the commit of
  its batch), over the candles of the whole boundaries (150 streams, 1,000 strategies), and over
  every candle of every minute;
- per boundary: the first final kline of a minute received -> the last decision of that minute
  recorded. On the quarter hours all 150 streams close at once (1,000 strategies): the issue's
  "whole boundary", with the 50 ms target; the other minutes (50 or 100 streams) apart;
- memory: RSS of the daemon and its evaluation processes, summed, at the end (also PSS, which
  counts pages shared between the processes once). RSS counts a page once per mapping of it:
  every wasm instance maps the compiled module's data segments copy-on-write from the ``.cwasm``
  file, so the pages an instance only reads count once per instance in RSS, once in all in PSS.

The replay server runs in a process of its own: in the daemon's process, pushing 150 streams
would share the event loop and the CPU with what is measured. A minute is released (two updates
and the final kline of every stream) only after every decision of the previous one is recorded,
so each boundary is measured on its own.

This 2-vCPU VM is shared and its speed moves by 10-30% from run to run (more while others run
tests): compare with the machine reference row, and run it more than once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from tradebotd.config import DaemonSettings, LogSettings, MarketSettings, PaperSettings, Settings, StoreSettings
from tradebotd.daemon import Daemon
from tradebotd.model import StreamKey
from tradebotd.replay.server import ReplayServer
from tradebotd.replay.synthetic import symbol_names, synthetic_market
from tradebotd.sandbox.wasm import WasmRuntime
from tradebotd.testing import until_stored

from .harness import log_to_devnull
from .rows import Row, median, percentile

EXAMPLE = Path(__file__).resolve().parents[1] / "tradebotd" / "examples" / "sma_crossover.js"
SYMBOLS = 50
INTERVALS = ("1m", "5m", "15m")
STRATEGIES = 1000
HISTORY = 500
QUARTER = 15  # minutes: every 15th minute closes 1m, 5m and 15m candles together
# Enough 1m candles before the replay starts for 500 closed 15m candles.
PAST = HISTORY * QUARTER + QUARTER
SECTION = "scale (issue 11)"


@dataclass(frozen=True)
class Minute:
    closes: int  # streams whose candle closed at this minute boundary
    candle_ms: list[float]  # per closed kline: received -> recorded
    boundary_ms: float  # first kline received -> last decision recorded


# -- the replay server's process ------------------------------------------------------------------


def _serve(conn: multiprocessing.connection.Connection, symbols: int, candles: int, past: int) -> None:
    """The replay server's process: ``("advance", n)`` -> ``("done", closed)``; ``("stop",)`` ends it."""
    asyncio.run(_serve_async(conn, symbols, candles, past))


async def _serve_async(conn: multiprocessing.connection.Connection, symbols: int, candles: int, past: int) -> None:
    loop = asyncio.get_running_loop()
    async with ReplayServer(synthetic_market(symbols, candles), past=past, ping_interval_s=None) as server:
        # The stand-in formats each closed REST row once; do it now, so that the daemon's warm-up
        # measures the daemon, not the stand-in (Binance answers in tens of ms whatever we ask).
        for symbol in server.series:
            for interval in INTERVALS:
                server.tape.rows(StreamKey(symbol, interval), limit=HISTORY + 1)
        conn.send(("port", server.port))
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "stop":
                break
            conn.send(("done", await server.advance(command[1])))


class _Replay:
    """The bench's end of the replay server's process."""

    def __init__(self, symbols: int, candles: int, past: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, theirs = context.Pipe()
        self._process = context.Process(target=_serve, args=(theirs, symbols, candles, past), daemon=True)
        self._process.start()
        theirs.close()
        if not self._conn.poll(120):
            raise RuntimeError("the replay server did not start within 120 s")
        kind, port = self._conn.recv()
        assert kind == "port"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.rest_url = f"http://127.0.0.1:{port}"

    async def advance(self, candles: int = 1) -> None:
        self._conn.send(("advance", candles))
        reply = await asyncio.get_running_loop().run_in_executor(None, self._conn.recv)
        assert reply[0] == "done"

    def close(self) -> None:
        self._conn.send(("stop",))
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


# -- the daemon -----------------------------------------------------------------------------------


def _settings(replay: _Replay, db: Path) -> Settings:
    return Settings(
        market=MarketSettings(
            ws_url=replay.ws_url,
            rest_url=replay.rest_url,
            history=HISTORY,
            max_candle_lag_s=0,  # replayed candles carry historical times
            start_window_s=0,  # the tape stands still: no evaluation of the last warm-up candle
            reconnect_min_s=0.05,
            reconnect_max_s=1.0,
        ),
        store=StoreSettings(path=db),
        paper=PaperSettings(cash=Decimal(10_000_000)),  # so that 1,000 strategies can all buy
        daemon=DaemonSettings(),
        log=LogSettings(format="json"),
    )


def _add_strategies(settings: Settings, keys: list[StreamKey], count: int) -> None:
    setup = Daemon(settings)
    code = EXAMPLE.read_text()
    for i in range(count):
        key = keys[i % len(keys)]
        setup.store.add_strategy(
            name=f"sma-{i}",
            user_id="bench",
            code=code,
            kind="js",
            asset=key.symbol,
            interval=key.interval,
            parameters={"fast": 3 + i % 8, "slow": 15 + i % 20, "amount": 0.001},
            portfolio_id=setup.portfolio_id,
            status="running",
        )
    setup.store.close()


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of ``pid`` in KiB; zeros if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0

    def field(text: str, name: str) -> int:
        line = next((line for line in text.splitlines() if line.startswith(name + ":")), None)
        return int(line.split()[1]) if line else 0

    return field(status, "VmRSS"), field(rollup, "Pss")


async def _minute(daemon: Daemon, replay: _Replay, closes: int) -> Minute:
    daemon.latency.clear()
    await replay.advance(1)
    await until_stored(daemon, lambda: len(daemon.latency.samples_ns) >= closes, limit_s=120)
    samples = list(daemon.latency.samples_ns)
    committed = list(daemon.latency.committed_at_ns)
    first_received = min(at - sample for at, sample in zip(committed, samples, strict=True))
    return Minute(closes, [ns / 1e6 for ns in samples], (max(committed) - first_received) / 1e6)


def _closing(minute: int, keys: list[StreamKey]) -> int:
    """Streams whose candle closes at the end of 1m slot ``minute`` (0-based from the data's start)."""
    return sum(1 for key in keys if (minute + 1) % (key.interval_ms // 60_000) == 0)


async def _run(boundaries: int) -> tuple[float, float, list[Minute], dict[str, tuple[int, int]], int]:
    keys = [StreamKey(symbol, interval) for symbol in symbol_names(SYMBOLS) for interval in INTERVALS]
    minutes = boundaries * QUARTER
    replay = _Replay(SYMBOLS, PAST + minutes + 1, PAST)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = _settings(replay, Path(tmp) / "scale.db")
            _add_strategies(settings, keys, STRATEGIES)

            started = time.perf_counter()
            daemon = Daemon(settings)
            await daemon.start()
            await daemon.synced.wait()
            loaded = time.perf_counter() - started
            await until_stored(daemon, lambda: len(daemon.store.cursors()) == STRATEGIES, limit_s=300)
            warm = time.perf_counter() - started

            results: list[Minute] = []
            for minute in range(PAST, PAST + minutes):
                results.append(await _minute(daemon, replay, _closing(minute, keys)))
            pids = {"daemon": os.getpid()}
            for process in daemon.eval_pool.processes if daemon.eval_pool else []:
                if process.pid is not None:
                    pids[f"evaluation process {process.index}"] = process.pid
            memory = {name: _memory_kib(pid) for name, pid in pids.items()}
            connections = len([s for s in daemon.feed.connection_streams() if s])
            await daemon.shutdown()
            return loaded, warm, results, memory, connections
    finally:
        replay.close()


def run(*, boundaries: int = 40) -> list[Row]:
    """``boundaries`` quarter hours (15 minutes each, the last of them closing all 150 streams)."""
    log_to_devnull()
    WasmRuntime.shared()  # compile and cache the module first, as any earlier run of the daemon has
    load_before = os.getloadavg()[0]
    loaded, warm, minutes, memory, connections = asyncio.run(_run(boundaries))
    load = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (2 CPUs, shared)"
    full = [m for m in minutes if m.closes == len(INTERVALS) * SYMBOLS]
    partial = [m for m in minutes if m.closes < len(INTERVALS) * SYMBOLS]
    candles = [ms for m in minutes for ms in m.candle_ms]
    full_candles = [ms for m in full for ms in m.candle_ms]
    rss = sum(r for r, _ in memory.values()) / 1024
    pss = sum(p for _, p in memory.values()) / 1024
    shape = f"{STRATEGIES} JS strategies, {SYMBOLS} symbols x {'/'.join(INTERVALS)}"
    each = ", ".join(f"{name} {r / 1024:.0f}" for name, (r, _) in memory.items())
    return [
        Row(SECTION, f"daemon start, {STRATEGIES} JS strategies loaded", loaded, "s", note=f"module cached; {load}"),
        Row(
            SECTION,
            f"daemon start, {STRATEGIES} strategies warmed ({HISTORY} candles)",
            warm,
            "s",
            target=5.0,
            note=f"{SYMBOLS * len(INTERVALS)} streams warmed over REST on {connections} connection(s)",
        ),
        Row(SECTION, "whole boundary (150 streams close), median", median([m.boundary_ms for m in full]), "ms"),
        Row(
            SECTION,
            "whole boundary (150 streams close), p99",
            percentile([m.boundary_ms for m in full], 99),
            "ms",
            target=50.0,
            note=f"first kline in -> last of {STRATEGIES} decisions recorded; {len(full)} boundaries; {shape}",
        ),
        Row(SECTION, "decision latency on whole boundaries, median", median(full_candles), "ms"),
        Row(
            SECTION,
            "decision latency on whole boundaries, p99",
            percentile(full_candles, 99),
            "ms",
            note=f"closed kline received -> its decisions recorded; {len(full_candles)} candles",
        ),
        Row(SECTION, "kline->recorded, per candle, all minutes, median", median(candles), "ms"),
        Row(
            SECTION,
            "kline->recorded, per candle, all minutes, p99",
            percentile(candles, 99),
            "ms",
            note=f"{len(candles)} candles over {len(minutes)} minutes",
        ),
        Row(
            SECTION,
            "  other minutes (50-100 streams), boundary median",
            median([m.boundary_ms for m in partial]),
            "ms",
            note=f"{len(partial)} minutes",
        ),
        Row(SECTION, "  other minutes, boundary p99", percentile([m.boundary_ms for m in partial], 99), "ms"),
        Row(
            SECTION,
            "RSS, daemon + evaluation processes",
            rss,
            "MB",
            target=600.0,
            note=f"{each} MB; RSS counts shared pages once per mapping",
        ),
        Row(SECTION, "PSS, daemon + evaluation processes", pss, "MB", note="shared pages counted once"),
    ]


def _rows_main() -> None:  # pragma: no cover - manual runs: python -m bench.scale
    import sys

    from .__main__ import print_table

    boundaries = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    print_table(run(boundaries=boundaries))


if __name__ == "__main__":
    _rows_main()
