"""The candle pipeline: candles whose strategies run in evaluation processes are in flight while
the next stream's candle starts; each is settled and handed to the writer in arrival order as soon
as its own outcomes are in; a stream's next candle and its updates wait for its candle in flight.
And fanned out over real evaluation processes, the engine decides exactly as in one process.

The held group below is a scripted stand-in for an evaluation process at the engine's
``StepGroup`` seam (as ``tests/test_engine.py`` scripts runtimes): it evaluates when told to, so
the order of events is set by the test, never by timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import numpy as np

from tradebotd.broker.paper import PaperBroker
from tradebotd.config import SandboxSettings
from tradebotd.engine import Engine, EngineConfig, RuntimeFactory, StepOutcome, StrategyRuntime
from tradebotd.examples.synthetic import synthetic_candles
from tradebotd.model import Candle, Decision, Position, StreamKey
from tradebotd.orders.ledger import Ledger
from tradebotd.orders.validate import OrderPolicy
from tradebotd.runtimes import make_runtime_factory
from tradebotd.store.base import StrategyRow, WriteBatch
from tradebotd.store.sqlite import SqliteStore
from tradebotd.workers.pool import EvalPool

MIN = 60_000


@dataclass
class Info:
    elapsed_us: float = 12.5
    console: tuple[tuple[str, str], ...] = ()


@dataclass
class Scripted:
    """A runtime whose decisions are a function of the candle's open time (as in test_engine)."""

    decide: Callable[[int, Position | None], Decision]
    evaluated: list[int] = field(default_factory=list)
    closed: bool = False

    def push_history(self, candles: np.ndarray) -> None:
        pass

    def step(self, candle: tuple[float, ...], position: Position | None) -> tuple[Decision, Any]:
        self.evaluated.append(int(candle[0]))
        return self.decide(int(candle[0]), position), Info()

    def close(self) -> None:
        self.closed = True


def row(sid: str, code: str = "v1", **kw: Any) -> StrategyRow:
    base: dict[str, Any] = dict(
        id=sid, user_id="u", name=sid, python_code=None, typescript_code=code, asset="btcusdt", interval="1m",
        status="running", portfolio_id="p", parameters={}, last_run_at=None, last_signal_at=None,
        error_message=None, created_at="c", updated_at="u1", kind="js",
    )
    base.update(kw)
    return StrategyRow(**base)

BTC = StreamKey("BTCUSDT", "1m")
ETH = StreamKey("ETHUSDT", "1m")
EXAMPLE = Path(__file__).resolve().parents[2] / "tradebotd" / "examples" / "sma_crossover.js"


def candle(key: StreamKey, i: int, close: str = "100") -> Candle:
    return Candle(key.symbol, key.interval, i * MIN, D(close), D(close), D(close), D(close), D("1"))


class Held:
    """One candle's work sent to the held group: outcomes once released."""

    def __init__(self, work: Sequence[tuple[StrategyRuntime, Position | None]], floats: Any) -> None:
        self.work = list(work)
        self.floats = floats
        self.released = asyncio.Event()
        self.outcomes: list[StepOutcome] = []

    def release(self) -> None:
        self.outcomes = [runtime.step(self.floats, position) for runtime, position in self.work]
        self.released.set()

    @property
    def done(self) -> bool:
        return self.released.is_set()

    def __call__(self) -> list[StepOutcome]:
        assert self.done, "the engine blocked on work that was not in"
        return self.outcomes

    async def wait(self) -> list[StepOutcome]:
        await self.released.wait()
        return self.outcomes


class HeldGroup:
    def __init__(self) -> None:
        self.sent: list[Held] = []

    def begin(self, work: Sequence[tuple[StrategyRuntime, Position | None]], floats: Any) -> Held:
        held = Held(work, floats)
        self.sent.append(held)
        return held


class Grouped(Scripted):
    group: HeldGroup

    @property
    def step_group(self) -> HeldGroup:
        return self.group


class Pipeline:
    """An engine over the real paper broker and SQLite store; strategies in ``remote`` go to the
    held group. Every batch handed to the writer is kept, in order."""

    def __init__(self, tmp_path: Path, scripts: dict[str, Any], remote: set[str]) -> None:
        self.store = SqliteStore(tmp_path / "p.db")
        self.store.migrate()
        self.group = HeldGroup()
        self.batches: list[WriteBatch] = []
        self.handed = asyncio.Event()
        self.runtimes: dict[str, Scripted] = {}

        def factory(r: StrategyRow, key: StreamKey) -> Scripted:
            rt: Scripted = Grouped(scripts[r.id]) if r.id in remote else Scripted(scripts[r.id])
            if isinstance(rt, Grouped):
                rt.group = self.group
            self.runtimes[r.id] = rt
            return rt

        self.engine = Engine(
            brokers={"paper": PaperBroker(fee_rate=D(0), slippage_bps=D(0), cash={"p": D(10_000)})},
            sink=self.sink,
            runtime_factory=factory,
            now_ms=lambda: 0,
            config=EngineConfig(max_candle_lag_ms=0),
            ledger=Ledger({"p": D(10_000)}),
            portfolios={"p": "paper"},
            policy=OrderPolicy(D("0.001")),
        )

    def sink(self, batch: WriteBatch) -> None:
        self.store.apply([batch])
        self.batches.append(batch)
        self.handed.set()

    async def next_batch(self) -> WriteBatch:
        while True:
            count = len(self.batches)
            self.handed.clear()
            await self.handed.wait()
            if len(self.batches) > count:
                return self.batches[count]

    def candle_batches(self) -> list[tuple[str, int]]:
        return [(c.symbol, c.open_time // MIN) for b in self.batches for c in b.candles if b.enqueued_ns]


def hold(t: int, p: Position | None) -> Decision:
    return Decision("hold")


async def warm(pipe: Pipeline, rows: list[StrategyRow], keys: list[StreamKey]) -> None:
    await pipe.engine.sync(rows)
    for key in keys:
        await pipe.engine.on_history(key, [candle(key, 1)])


async def test_each_streams_batch_is_handed_over_once_its_own_outcomes_are_in(tmp_path: Path) -> None:
    pipe = Pipeline(tmp_path, {"e": hold, "b": hold}, remote={"e", "b"})
    await warm(pipe, [row("e", asset="ethusdt"), row("b")], [ETH, BTC])
    await pipe.engine.on_closed(candle(ETH, 2), 1)  # returns with ETH's work in the "process"
    await pipe.engine.on_closed(candle(BTC, 2), 2)  # ... and BTC's started meanwhile
    assert len(pipe.group.sent) == 2 and pipe.candle_batches() == []
    pipe.group.sent[0].release()
    assert (await pipe.next_batch()).cursors == {"e": ("ETHUSDT", "1m", 2 * MIN)}
    assert pipe.candle_batches() == [("ETHUSDT", 2)]  # not waiting for BTC's evaluation
    pipe.group.sent[1].release()
    assert (await pipe.next_batch()).cursors == {"b": ("BTCUSDT", "1m", 2 * MIN)}
    await pipe.engine.drain()
    assert pipe.candle_batches() == [("ETHUSDT", 2), ("BTCUSDT", 2)]


async def test_a_later_stream_done_first_is_still_handed_over_in_arrival_order(tmp_path: Path) -> None:
    """Cash is spent in settlement order: arrival order keeps it the same whatever the timing."""
    pipe = Pipeline(tmp_path, {"e": hold, "b": hold}, remote={"e"})
    await warm(pipe, [row("e", asset="ethusdt"), row("b")], [ETH, BTC])
    await pipe.engine.on_closed(candle(ETH, 2), 1)
    await pipe.engine.on_closed(candle(BTC, 2), 2)  # evaluated in the daemon: its outcome is in
    assert pipe.runtimes["b"].evaluated == [2 * MIN] and pipe.candle_batches() == []
    pipe.group.sent[0].release()
    await pipe.engine.drain()
    assert pipe.candle_batches() == [("ETHUSDT", 2), ("BTCUSDT", 2)]


async def test_the_control_plane_waits_for_candles_in_flight(tmp_path: Path) -> None:
    pipe = Pipeline(tmp_path, {"b": hold}, remote={"b"})
    await warm(pipe, [row("b")], [BTC])
    await pipe.engine.on_closed(candle(BTC, 2), 1)
    stopping = asyncio.create_task(pipe.engine.sync([]))
    pipe.group.sent[0].release()
    await stopping
    assert pipe.runtimes["b"].closed and pipe.store.cursors() == {"b": 2 * MIN}



async def test_quiet_returns_once_the_candles_in_flight_are_handed_over(tmp_path: Path) -> None:
    """The control loop reads the store only then (not in the middle of a minute boundary)."""
    pipe = Pipeline(tmp_path, {"b": hold}, remote={"b"})
    await warm(pipe, [row("b")], [BTC])
    await pipe.engine.quiet()  # nothing in flight: at once
    await pipe.engine.on_closed(candle(BTC, 2), 1)
    asyncio.get_running_loop().call_soon(pipe.group.sent[0].release)  # runs only if quiet() waits
    await pipe.engine.quiet()
    assert pipe.candle_batches() == [("BTCUSDT", 2)]


async def test_a_streams_next_candle_sees_the_position_its_candle_in_flight_opened(tmp_path: Path) -> None:
    seen: list[tuple[int, Position | None]] = []

    def buy_once(t: int, p: Position | None) -> Decision:
        seen.append((t // MIN, p))
        return Decision("buy", amount=1) if p is None else Decision("hold")

    pipe = Pipeline(tmp_path, {"b": buy_once}, remote={"b"})
    await warm(pipe, [row("b")], [BTC])
    await pipe.engine.on_closed(candle(BTC, 2), 1)
    nxt = asyncio.create_task(pipe.engine.on_closed(candle(BTC, 3), 2))
    pipe.group.sent[0].release()
    await nxt  # it waited for candle 2 to be settled before it was sent
    assert len(pipe.group.sent) == 2 and pipe.candle_batches() == [("BTCUSDT", 2)]
    pipe.group.sent[1].release()
    await pipe.engine.drain()
    assert [t for t, _ in seen] == [2, 3]
    assert seen[0][1] is None and seen[1][1] is not None and seen[1][1].amount == D(1)
    assert [(t.side, t.candle_time // MIN) for t in pipe.store.trades()] == [("buy", 2)]


async def test_an_update_waits_for_its_streams_candle_in_flight(tmp_path: Path) -> None:
    """The candle's buy sets a stop; an update touching it that arrives while the candle is still
    being evaluated exits the position once the buy is settled, as if it had come after."""

    def buy(t: int, p: Position | None) -> Decision:
        return Decision("buy", amount=1, stop_loss=95.0) if t == 2 * MIN else Decision("hold")

    pipe = Pipeline(tmp_path, {"b": buy, "e": hold}, remote={"b"})
    await warm(pipe, [row("b"), row("e", asset="ethusdt")], [BTC, ETH])
    await pipe.engine.on_closed(candle(BTC, 2), 1)
    pipe.engine.on_update(replace(candle(BTC, 3, "96"), low=D("94"), closed=False))
    pipe.engine.on_update(replace(candle(ETH, 3, "96"), closed=False))  # other streams go on
    assert pipe.store.trades() == []
    pipe.group.sent[0].release()
    await pipe.engine.drain()
    trades = [(t.side, t.price, t.candle_time // MIN) for t in pipe.store.trades()]
    assert trades == [("buy", D("100"), 2), ("sell", D("95"), 3)]



async def test_the_daemons_own_share_is_evaluated_once_every_candles_share_is_handed_out(tmp_path: Path) -> None:
    """Candles closing together: the processes get every candle's share first, and the daemon
    evaluates its own share of each (oldest first) before it waits for theirs. The batches keep
    arrival order, each strategy evaluated once."""
    scripts = {"e": hold, "el": hold, "b": hold, "bl": hold}
    pipe = Pipeline(tmp_path, scripts, remote={"e", "b"})
    rows = [row("e", asset="ethusdt"), row("el", asset="ethusdt"), row("b"), row("bl")]
    await warm(pipe, rows, [ETH, BTC])
    local_when_awaited: list[tuple[list[int], list[int]]] = []

    def answer_when_awaited(held: Held) -> Callable[[], Any]:
        async def wait() -> list[StepOutcome]:
            local_when_awaited.append((list(pipe.runtimes["el"].evaluated), list(pipe.runtimes["bl"].evaluated)))
            held.release()
            return held.outcomes

        return wait

    await pipe.engine.on_closed(candle(ETH, 2), 1)
    await pipe.engine.on_closed(candle(BTC, 2), 2)
    assert len(pipe.group.sent) == 2  # both candles' shares handed out ...
    assert pipe.runtimes["el"].evaluated == [] and pipe.runtimes["bl"].evaluated == []  # ... before the daemon's
    for held in pipe.group.sent:
        held.wait = answer_when_awaited(held)  # type: ignore[method-assign]
    await pipe.engine.drain()
    assert local_when_awaited[0] == ([2 * MIN], [2 * MIN])  # both evaluated before waiting for the first
    assert pipe.candle_batches() == [("ETHUSDT", 2), ("BTCUSDT", 2)]
    assert [set(b.cursors) for b in pipe.batches if b.enqueued_ns] == [{"e", "el"}, {"b", "bl"}]
    assert all(len(pipe.runtimes[sid].evaluated) == 1 for sid in scripts)


# -- real evaluation processes --------------------------------------------------------------------


def _engine(store: SqliteStore, factory: RuntimeFactory) -> Engine:
    return Engine(
        brokers={"paper": PaperBroker(fee_rate=D("0.001"), slippage_bps=D(0), cash={"p": D(10_000_000)})},
        sink=lambda b: store.apply([b]),
        runtime_factory=factory,
        now_ms=lambda: 0,
        config=EngineConfig(max_candle_lag_ms=0, log_holds=True),
        ledger=Ledger({"p": D(10_000_000)}),
        portfolios={"p": "paper"},
        policy=OrderPolicy(D("0.001")),
    )


async def _run(tmp_path: Path, name: str, factory: RuntimeFactory) -> tuple[list[Any], list[Any]]:
    store = SqliteStore(tmp_path / f"{name}.db")
    store.migrate()
    engine = _engine(store, factory)
    keys = [StreamKey(s, i) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT") for i in ("1m", "5m")]
    code = EXAMPLE.read_text()
    rows = [
        row(f"s{i}", code=code, asset=keys[i % len(keys)].symbol.lower(), interval=keys[i % len(keys)].interval,
            parameters={"fast": 2 + i % 3, "slow": 5 + i % 4, "amount": 0.01})
        for i in range(12)
    ]
    series = {key: synthetic_candles(80, seed, interval_ms=key.interval_ms) for seed, key in enumerate(keys)}
    candles = {
        key: [Candle(key.symbol, key.interval, int(r[0]), *(D(f"{v:.4f}") for v in r[1:6])) for r in rows_]
        for key, rows_ in series.items()
    }
    await engine.sync(rows)
    for key in keys:
        await engine.on_history(key, candles[key][:20])
    for n in range(20, 80):  # every stream closes at once, as on a minute boundary
        for key in keys:
            await engine.on_closed(candles[key][n], 1)
    await engine.drain()
    engine.close()
    logs = [(sid, e.level, e.message, (e.data or {}).get("candle_time"))
            for sid in sorted(r.id for r in rows) for _, e in store.logs_after(sid)]
    trades = sorted((t.strategy_id, t.side, t.amount, t.price, t.candle_time) for t in store.trades())
    store.close()
    return logs, trades


async def test_fanned_out_over_evaluation_processes_the_engine_decides_as_in_one_process(tmp_path: Path) -> None:
    settings = SandboxSettings(max_candles=100)
    alone = await _run(tmp_path, "alone", make_runtime_factory(settings))
    pool = EvalPool(settings, make_runtime_factory(settings), 2)
    try:
        fanned = await _run(tmp_path, "fanned", pool)
        assert sum(process.strategies for process in pool.processes) == 0  # all closed again
    finally:
        pool.close()
    assert fanned == alone
    assert len(alone[1]) >= 6  # the series makes the strategies trade (buys and sells)
    assert np.unique([t[0] for t in alone[1]]).size >= 6
