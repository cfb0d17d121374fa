"""Abuse suite: broken and hostile strategies beside a healthy one, through the real daemon.

Every offender runs in the daemon (replay server as Binance, the real JS sandbox, the SQLite
store, the paper broker) next to the example SMA strategy on the same candles. Whatever the
offender does:

* the healthy strategy evaluates every candle and makes exactly the decisions and trades it makes
  when it runs alone (the baseline run);
* the offender ends in status ``error`` with an ``error_message`` that says what it did, after
  ``sandbox.max_consecutive_errors`` failed evaluations (at once for a load error), and each failure
  is a ``strategy_logs`` row at level ``error`` carrying the JS message and, where the JS has one,
  its stack.

Two outcomes are deliberately *not* strategy errors:

* An absurd but well-formed amount (``amount: 1e12``, ``1e300``) is a valid decision: the sandbox
  checks the form of a result (finite, positive), the broker checks whether it can be executed.
  The paper broker rejects it (insufficient cash; above 1e12, not a plausible quantity), which is
  logged at level ``error`` for every such order; no trade happens and the strategy keeps
  running, as it would against a live exchange. Counting a rejection against the strategy would
  disable code for the account's state.
* Tampering with one's own globals (``globalThis``, ``Math``, ``JSON``, ``Array.prototype``, even
  the entry function) only changes the tamperer's own realm: every strategy has its own wasm
  instance and JS runtime, and the sandbox validates results with builtins captured before the
  strategy's code ran. Its neighbours see pristine builtins and nothing of its state.

The failure-policy details (released subscriptions, protective levels of a disabled strategy's
open position, rebuilding after a timeout, out-of-memory or trap) are at the end.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tradebotd.broker.paper import PaperBroker
from tradebotd.config import DaemonSettings, SandboxSettings
from tradebotd.daemon import Daemon
from tradebotd.engine import Engine, EngineConfig
from tradebotd.model import StreamKey
from tradebotd.replay.demo import generate
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer
from tradebotd.sandbox import JsStrategy, SandboxLimits
from tradebotd.store.base import LogEntry, StrategyRow, TradeRow
from tradebotd.store.sqlite import SqliteStore
from tradebotd.testing import replay_settings, until_stored

EXAMPLE = Path(__file__).resolve().parents[1] / "tradebotd" / "examples" / "sma_crossover.js"
MIN = 60_000
START = 1_700_000_000_000 - 1_700_000_000_000 % MIN
PAST = 60  # candles closed before the daemon starts
HISTORY = 40  # warm-up candles
LIVE = 40  # candles streamed afterwards; the healthy strategy trades five times in them
BTC = StreamKey("BTCUSDT", "1m")
ETH = StreamKey("ETHUSDT", "1m")
HEALTHY_PARAMETERS = {"fast": 3, "slow": 10, "amount": 0.01}
# A small deadline, so runaway offenders cost little test time; the healthy strategy needs ~0.1 ms
# per candle, which leaves it 500x headroom even on a loaded CI machine.
SANDBOX = SandboxSettings(timeout_ms=50)
MAX_ERRORS = SANDBOX.max_consecutive_errors


def series(key: StreamKey, seed: int) -> Series:
    candles = generate(PAST + LIVE + 10, seed=seed, start_ms=START, symbol=key.symbol)
    return Series(key, tuple(candles))


BTC_SERIES = series(BTC, seed=20240101)  # the demo series' seed: the 3/10 SMAs cross often
ETH_SERIES = series(ETH, seed=7)
LIVE_TIMES = [c.open_time for c in BTC_SERIES.candles[PAST : PAST + LIVE]]


def entry(body: str) -> str:
    """A strategy whose entry function runs ``body``: the body starts at line 2, column 3."""
    return f"function tradingStrategy(context) {{\n  {body}\n}}\n"


# -- running the daemon ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    source: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    key: StreamKey = BTC


HEALTHY = Spec(EXAMPLE.read_text(), HEALTHY_PARAMETERS)


@dataclass(frozen=True)
class Outcome:
    """What the store says about one strategy after a run."""

    status: str
    error_message: str | None
    logs: list[LogEntry]
    trades: list[TradeRow]

    @property
    def decisions(self) -> list[tuple[Any, ...]]:
        """(candle time, signal, amount, reason, indicators) of every evaluation (holds are logged)."""
        return [
            (d["candle_time"], d["signal"], d.get("amount"), d.get("reason"), d.get("indicators"))
            for e in self.logs
            if e.level in ("info", "signal") and (d := e.data) is not None and "signal" in d
        ]

    @property
    def fills(self) -> list[tuple[Any, ...]]:
        return [(t.side, t.amount, t.price, t.fee, t.candle_time, t.reason) for t in self.trades]

    @property
    def errors(self) -> list[LogEntry]:
        return [e for e in self.logs if e.level == "error"]


async def run_daemon(
    tmp_path: Path,
    specs: Mapping[str, Spec],
    *,
    sandbox: SandboxSettings = SANDBOX,
) -> dict[str, Outcome]:
    """Runs the daemon with ``specs`` (all 'running' from the start) over the LIVE candles after
    warm-up, until every strategy has evaluated the last one or is in status 'error'."""
    db = tmp_path / "abuse.db"
    async with ReplayServer([BTC_SERIES, ETH_SERIES], past=PAST, ping_interval_s=None) as server:
        settings = replay_settings(server, db, history=HISTORY, sandbox=sandbox)
        settings = settings.model_copy(update={"store": settings.store.model_copy(update={"log_holds": True})})
        daemon = Daemon(settings)
        ids = {name: add(daemon, name, spec) for name, spec in specs.items()}
        await daemon.start()
        try:
            store = daemon.store

            def settled(last: int) -> bool:
                cursors = store.cursors()
                return all(
                    cursors.get(sid) == last or store.get_strategy(sid).status == "error" for sid in ids.values()
                )

            await until_stored(daemon, lambda: settled(BTC_SERIES.candles[PAST - 1].open_time))  # warmed up
            await server.advance(LIVE)
            await until_stored(daemon, lambda: settled(LIVE_TIMES[-1]))
        finally:
            await daemon.shutdown()
    store = SqliteStore(db)
    try:
        outcomes = {}
        for name, sid in ids.items():
            row = store.get_strategy(sid)
            logs = [entry for _, entry in store.logs_after(sid, limit=100_000)]
            outcomes[name] = Outcome(row.status, row.error_message, logs, store.trades(sid))
        return outcomes
    finally:
        store.close()


def add(daemon: Daemon, name: str, spec: Spec) -> str:
    return daemon.store.add_strategy(
        name=name,
        user_id="u",
        code=spec.source,
        kind="js",
        asset=spec.key.symbol,
        interval=spec.key.interval,
        parameters=spec.parameters,
        portfolio_id=daemon.portfolio_id,
        status="running",
    )


_baseline: list[Outcome] = []


@pytest.fixture
async def baseline(tmp_path: Path) -> Outcome:
    """The healthy strategy alone (computed once per session)."""
    if not _baseline:
        outcome = (await run_daemon(tmp_path, {"healthy": HEALTHY}))["healthy"]
        assert [d[0] for d in outcome.decisions] == LIVE_TIMES
        assert len(outcome.trades) >= 4, "the healthy strategy must trade for the comparison to mean something"
        assert outcome.status == "running" and not outcome.errors
        _baseline.append(outcome)
    return _baseline[0]


def assert_unaffected(healthy: Outcome, baseline: Outcome) -> None:
    assert healthy.status == "running" and healthy.error_message is None
    assert not healthy.errors
    assert [d[0] for d in healthy.decisions] == LIVE_TIMES  # every candle, once
    assert healthy.decisions == baseline.decisions
    assert healthy.fills == baseline.fills


# -- offenders that fail every evaluation -----------------------------------------------------------

RECURSION = "function dive(n) {\n  return dive(n + 1) + 1;\n}\n" + entry("return dive(0);")


def case(source: str, message: str, *, stack: str | None = None, sandbox: SandboxSettings = SANDBOX, id: str) -> Any:
    return pytest.param(source, message, stack, sandbox, id=id)


EVALUATION_OFFENDERS = [
    case(
        entry("while (true) {}"),
        # QuickJS names the function it stopped; for the innermost frame of an interrupted
        # loop it gives the function's own position.
        "the strategy ran longer than 50 ms in tradingStrategy (strategy.js:1:1)",
        stack="at tradingStrategy (strategy.js:1:1)",
        id="infinite-loop",
    ),
    case(RECURSION, "RangeError: Maximum call stack size exceeded", stack="at dive (strategy.js:2:", id="recursion"),
    case(
        entry("const hoard = [];\n  for (;;) hoard.push({n: hoard.length});"),
        # Small objects fill the heap so completely that not even the error object fits, so
        # there is no stack to report; the shim's own heap accounting still names the cause.
        "the strategy exceeded its 4 MiB memory limit",
        # about memory, not time: a generous deadline so the heap fills before it passes
        sandbox=SandboxSettings(timeout_ms=2000, memory_mb=4),
        id="allocation-bomb",
    ),
    case(
        entry("return {signal: 'hold', reason: 'x'.repeat(50 * 1024 * 1024)};"),
        "the strategy exceeded its 32 MiB memory limit in tradingStrategy (strategy.js:2:",
        stack="at tradingStrategy (strategy.js:2:",
        id="50MB-reason",
    ),
    case(
        entry("return {signal: 'hold', reason: 'x'.repeat(100000)};"),
        "reason has 100000 characters, the limit is 1000",
        id="long-reason",
    ),
    case(entry("return;"), "the strategy must return an object like {signal: 'hold'}, got undefined", id="undefined"),
    case(entry("return 42;"), "the strategy must return an object like {signal: 'hold'}, got 42", id="number"),
    case(entry("return {signal: 'moon'};"), "signal must be 'buy', 'sell' or 'hold', got \"moon\"", id="moon"),
    case(
        entry("return {signal: 'buy', amount: NaN};"),
        "amount must be a finite positive number, got NaN",
        id="nan-amount",
    ),
    case(
        entry("return {signal: 'buy', amount: Infinity};"),
        "amount must be a finite positive number, got Infinity",
        id="infinite-amount",
    ),
    case(
        entry("return {signal: 'buy', amount: -0.5};"),
        "amount must be a finite positive number, got -0.5",
        id="negative-amount",
    ),
    case(
        entry("return {signal: 'hold', indicators: {rsi: NaN}};"),
        "indicators.rsi must be a finite number, got NaN",
        id="nan-indicator",
    ),
    case(
        entry("return {signal: 'hold', indicators: {bands: [1, Infinity]}};"),
        "indicators.bands[1] must be a finite number, got Infinity",
        id="infinite-indicator",
    ),
    case(
        entry("return {signal: 'buy', stopLoss: -Infinity};"),
        "stopLoss must be a finite positive number, got -Infinity",
        id="infinite-stop-loss",
    ),
    case(
        entry("return std.open('/etc/passwd', 'r');"),
        "ReferenceError: std is not defined",
        stack="at tradingStrategy (strategy.js:2:",
        id="std",
    ),
    case(entry("return os.exec(['/bin/sh']);"), "ReferenceError: os is not defined", stack="strategy.js:2:", id="os"),
    case(
        entry("return require('fs');"), "ReferenceError: require is not defined", stack="strategy.js:2:", id="require"
    ),
    case(
        entry("return import('os').then(() => ({signal: 'hold'}));"),
        "ReferenceError: could not load module 'os'",
        id="dynamic-import",
    ),
    case(
        entry("return fetch('https://example.com');"),
        "ReferenceError: fetch is not defined",
        stack="strategy.js:2:",
        id="fetch",
    ),
    case(
        entry("return process.exit(1);"), "ReferenceError: process is not defined", stack="strategy.js:2:", id="process"
    ),
    case(
        entry("return Deno.readTextFileSync('/etc/passwd');"),
        "ReferenceError: Deno is not defined",
        stack="strategy.js:2:",
        id="Deno",
    ),
    case(
        entry("throw new TypeError('boom');"),
        "TypeError: boom",
        stack="at tradingStrategy (strategy.js:2:",
        id="throws",
    ),
]


@pytest.mark.parametrize(("source", "message", "stack", "sandbox"), EVALUATION_OFFENDERS)
async def test_an_offender_is_disabled_and_its_neighbour_is_unaffected(
    tmp_path: Path, baseline: Outcome, source: str, message: str, stack: str | None, sandbox: SandboxSettings
) -> None:
    outcomes = await run_daemon(tmp_path, {"healthy": HEALTHY, "offender": Spec(source)}, sandbox=sandbox)
    assert_unaffected(outcomes["healthy"], baseline)
    offender = outcomes["offender"]
    assert offender.status == "error"
    assert offender.error_message is not None
    assert offender.error_message.startswith(f"{MAX_ERRORS} consecutive errors; last: {message}")
    # One error row per failed evaluation (the first MAX_ERRORS live candles), then the verdict.
    *failures, verdict = offender.errors
    assert [e.data and e.data["candle_time"] for e in failures] == LIVE_TIMES[:MAX_ERRORS]
    assert all(e.message.startswith(message) for e in failures)
    assert verdict.message == offender.error_message
    if stack is not None:
        assert all(e.data and stack in e.data["stack"] for e in failures)
    assert offender.decisions == [] and offender.trades == []


LOAD_OFFENDERS = [
    pytest.param(
        "function tradingStrategy(context) {\n  return {signal: 'hold'};\n}\nconst broken = ;\n",
        "SyntaxError: unexpected token in expression: ';' (line 4, column 16)",
        id="syntax-error",
    ),
    pytest.param(
        "function helper() {\n  return 1;\n}\n",
        "NoEntryFunction: define a function tradingStrategy(context), evaluate(context) or strategy(context)",
        id="no-entry-function",
    ),
    pytest.param(
        "import * as os from 'os';\n" + entry("return {signal: 'hold'};"),
        "SyntaxError: Unexpected token '*' (line 1, column 8)",
        id="static-import",
    ),
    pytest.param(
        "throw new Error('no configuration');\n", "Error: no configuration (line 1, column 11)", id="top-level-throw"
    ),
]


@pytest.mark.parametrize(("source", "message"), LOAD_OFFENDERS)
async def test_a_strategy_that_cannot_load_is_disabled_at_once(
    tmp_path: Path, baseline: Outcome, source: str, message: str
) -> None:
    outcomes = await run_daemon(tmp_path, {"healthy": HEALTHY, "offender": Spec(source)})
    assert_unaffected(outcomes["healthy"], baseline)
    offender = outcomes["offender"]
    assert offender.status == "error"
    assert offender.error_message is not None and offender.error_message.startswith(f"cannot load strategy: {message}")
    (error,) = offender.errors
    assert error.message == offender.error_message
    assert error.data is not None and error.data["error_type"] == "StrategyLoadError"
    if "(line" in message:
        line, column = map(int, re.findall(r"\(line (\d+), column (\d+)\)", message)[0])
        assert (error.data["line"], error.data["column"]) == (line, column)
    assert offender.decisions == []


HEAP_FILLER = """
function strategy() { return {signal: 'hold'}; }
const hoard = [];
// The sandbox looks the entry function up after the top-level code: this getter fills the heap
// (catching the error) right then, so the strategy loads with no room left for its history.
Object.defineProperty(globalThis, 'tradingStrategy', {get() {
  try { for (;;) hoard.push({n: hoard.length}); } catch (e) {}
  return strategy;
}});
"""


async def test_a_strategy_that_leaves_no_room_for_its_history_is_disabled(tmp_path: Path, baseline: Outcome) -> None:
    """Giving a strategy its warm-up history can fail too (here: its heap is full): that is the
    strategy's failure, never the feed's or the control loop's."""
    sandbox = SandboxSettings(timeout_ms=2000, memory_mb=4)
    outcomes = await run_daemon(tmp_path, {"healthy": HEALTHY, "filler": Spec(HEAP_FILLER)}, sandbox=sandbox)
    assert_unaffected(outcomes["healthy"], baseline)
    offender = outcomes["filler"]
    assert offender.status == "error"
    assert (
        offender.error_message == "cannot give the strategy its history: the strategy exceeded its 4 MiB memory limit"
    )
    (error,) = offender.errors
    assert error.data is not None and error.data["error_type"] == "StrategyMemoryError"
    assert offender.decisions == []


async def test_every_offender_at_once(tmp_path: Path, baseline: Outcome) -> None:
    """All of them in one daemon (evaluated in worker threads, as more than a few strategies on a
    candle are): the healthy strategy still makes exactly its baseline decisions and trades."""
    offenders = {f"offender-{i}": Spec(p.values[0]) for i, p in enumerate(EVALUATION_OFFENDERS + LOAD_OFFENDERS)}
    outcomes = await run_daemon(tmp_path, {"healthy": HEALTHY, **offenders})
    assert_unaffected(outcomes["healthy"], baseline)
    assert {name: o.status for name, o in outcomes.items() if name != "healthy"} == dict.fromkeys(offenders, "error")


# -- valid but absurd amounts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "rejection"),
    [
        ("1e12", "insufficient cash: need 4"),  # ~4.2e16 USDT
        ("1e300", "amount 1E+300 is not a plausible quantity (limit 1000000000000)"),
    ],
)
async def test_an_absurd_amount_is_rejected_by_the_broker_not_counted_against_the_strategy(
    tmp_path: Path, baseline: Outcome, amount: str, rejection: str
) -> None:
    big = Spec(entry(f"return {{signal: 'buy', amount: {amount}, reason: 'all in'}};"))
    outcomes = await run_daemon(tmp_path, {"healthy": HEALTHY, "big": big})
    assert_unaffected(outcomes["healthy"], baseline)
    offender = outcomes["big"]
    assert offender.status == "running" and offender.error_message is None
    assert offender.trades == []
    assert [d[:3] for d in offender.decisions] == [(t, "buy", float(amount)) for t in LIVE_TIMES]
    rejections = offender.errors
    assert len(rejections) == LIVE
    assert all(e.message.startswith(rejection) for e in rejections), rejections[0].message


# -- tampering with globals ----------------------------------------------------------------------------

TAMPERER = """
let calls = 0;
function tradingStrategy(context) {
  calls++;
  globalThis.x = 'tampered';
  globalThis.evaluations = (globalThis.evaluations || 0) + 1;
  Math.max = () => 42;
  Math.random = () => 0.5;
  JSON.stringify = () => '{"signal":"buy","amount":1000}';
  JSON.parse = () => ({signal: 'buy'});
  Array.prototype.map = function () { return []; };
  Array.prototype.slice = function () { return [1]; };
  Array.prototype.push = function () { throw new Error('push sabotaged'); };
  Object.prototype.toJSON = function () { return {signal: 'buy', amount: 1000}; };
  Number.isFinite = () => true;
  String.prototype.slice = () => 'sabotaged';
  // Re-pointing the entry function changes nothing: the sandbox keeps the one found at load.
  globalThis.tradingStrategy = () => ({signal: 'buy', amount: 1000});
  return {signal: 'hold', indicators: {calls, evaluations: globalThis.evaluations}};
}
"""

PROBE = entry(
    "globalThis.evaluations = (globalThis.evaluations || 0) + 1;\n"
    "  const a = [];\n"
    "  a.push(3);\n"
    "  const seen = {\n"
    "    x: typeof globalThis.x, max: Math.max(1, 2), stringify: JSON.stringify({a: 1}),\n"
    "    parse: JSON.parse('[7]')[0], map: [1, 2].map((v) => v * 2), slice: [1, 2, 3].slice(1),\n"
    "    push: a.length, toJSON: typeof Object.prototype.toJSON, isFinite: Number.isFinite(NaN),\n"
    "    strSlice: 'abc'.slice(1),\n"
    "  };\n"
    "  return {signal: 'hold', reason: JSON.stringify(seen), indicators: {evaluations: globalThis.evaluations}};"
)
PRISTINE = (
    '{"x":"undefined","max":2,"stringify":"{\\"a\\":1}","parse":7,"map":[2,4],"slice":[2,3],'
    '"push":1,"toJSON":"undefined","isFinite":false,"strSlice":"bc"}'
)


async def test_tampering_with_globals_stays_in_the_tamperers_own_instance(tmp_path: Path, baseline: Outcome) -> None:
    outcomes = await run_daemon(
        tmp_path, {"healthy": HEALTHY, "tamperer": Spec(TAMPERER), "probe": Spec(PROBE), "twin": Spec(TAMPERER)}
    )
    assert_unaffected(outcomes["healthy"], baseline)
    # The neighbours see pristine builtins, and their own globals only.
    probe = outcomes["probe"]
    assert probe.status == "running" and not probe.errors
    assert [(d[1], d[3]) for d in probe.decisions] == [("hold", PRISTINE)] * LIVE
    assert [d[4] for d in probe.decisions] == [{"evaluations": n} for n in range(1, LIVE + 1)]
    # The tamperer and its twin (same source, another instance) each count only their own calls;
    # the sabotaged JSON, toJSON and entry function could not turn a hold into a buy.
    for name in ("tamperer", "twin"):
        tamperer = outcomes[name]
        assert tamperer.status == "running" and not tamperer.errors and tamperer.trades == []
        assert [(d[1], d[4]) for d in tamperer.decisions] == [
            ("hold", {"calls": n, "evaluations": n}) for n in range(1, LIVE + 1)
        ]


# -- failure policy ------------------------------------------------------------------------------------


def prompt_daemon(server: ReplayServer, db: Path) -> Daemon:
    """A daemon that re-reads the strategies table only when told to: a stream released here was
    released because the engine said so, not by a periodic poll."""
    return Daemon(
        replay_settings(server, db, history=HISTORY, sandbox=SANDBOX, daemon=DaemonSettings(poll_interval_s=3600))
    )


async def test_a_disabled_strategy_releases_its_stream(tmp_path: Path) -> None:
    db = tmp_path / "release.db"
    async with ReplayServer([BTC_SERIES, ETH_SERIES], past=PAST, ping_interval_s=None) as server:
        daemon = prompt_daemon(server, db)
        healthy = add(daemon, "healthy", HEALTHY)
        offender = add(daemon, "offender", Spec(entry("throw new Error('broken');"), key=ETH))
        await daemon.start()
        try:
            subscribed = lambda: set().union(*server.subscriptions())  # noqa: E731
            await until_stored(daemon, lambda: {healthy, offender} <= set(daemon.store.cursors()))
            assert {BTC.stream_name, ETH.stream_name} <= subscribed()
            await server.advance(MAX_ERRORS)
            await until_stored(daemon, lambda: daemon.store.get_strategy(offender).status == "error")
            async with asyncio.timeout(20):
                await server.wait_until(lambda: ETH.stream_name not in subscribed())
            assert BTC.stream_name in subscribed()
            assert ETH not in daemon.engine.streams()
        finally:
            await daemon.shutdown()


async def test_an_open_position_keeps_its_protective_levels_after_the_strategy_is_disabled(tmp_path: Path) -> None:
    # Buys on its first live candle with a take-profit and a stop-loss 0.6 % away (in this series
    # the take-profit is reached 8 candles later), then throws.
    source = entry(
        "if (globalThis.bought) throw new Error('broken after buying');\n"
        "  globalThis.bought = true;\n"
        "  const price = context.currentPrice;\n"
        "  return {signal: 'buy', amount: 0.1, takeProfit: price * 1.006, stopLoss: price * 0.994};"
    )
    db = tmp_path / "protect.db"
    async with ReplayServer([BTC_SERIES, ETH_SERIES], past=PAST, ping_interval_s=None) as server:
        daemon = prompt_daemon(server, db)
        sid = add(daemon, "protected", Spec(source, key=ETH))
        await daemon.start()
        try:
            await until_stored(daemon, lambda: sid in daemon.store.cursors())
            await server.advance(1 + MAX_ERRORS)
            await until_stored(daemon, lambda: daemon.store.get_strategy(sid).status == "error")
            row = daemon.store.get_strategy(sid)
            assert row.error_message == f"{MAX_ERRORS} consecutive errors; last: Error: broken after buying"
            (buy,) = daemon.store.trades(sid)
            position = daemon.engine.position(sid)
            assert position is not None and position.take_profit and position.stop_loss
            # Still watched: the stream stays subscribed for the position alone ...
            assert ETH in daemon.engine.streams() and daemon.engine.strategy_ids() == set()
            assert any(ETH.stream_name in s for s in server.subscriptions())
            # ... and the next candle that reaches a level closes it.
            exit_candle = next(
                c
                for c in ETH_SERIES.candles[PAST + 1 + MAX_ERRORS :]
                if c.high >= position.take_profit or c.low <= position.stop_loss
            )
            await server.advance(PAST + LIVE)  # to the end of the data
            await until_stored(daemon, lambda: len(daemon.store.trades(sid)) == 2)
            _, exit_trade = daemon.store.trades(sid)
            assert (buy.side, exit_trade.side, exit_trade.candle_time) == ("buy", "sell", exit_candle.open_time)
            action = {position.take_profit: "tp", position.stop_loss: "sl"}[exit_trade.price]
            assert exit_trade.client_order_id.endswith(f"-{action}")
            assert daemon.engine.position(sid) is None
            # Nothing needs the stream any more: released.
            async with asyncio.timeout(20):
                await server.wait_until(lambda: not any(ETH.stream_name in s for s in server.subscriptions()))
            assert ETH not in daemon.engine.streams()
        finally:
            await daemon.shutdown()


REBUILD_PROBE = """
let calls = 0;  // per instance: starts again at 0 in a rebuilt one
function tradingStrategy(context) {
  calls++;
  const n = context.candles.length;
  if (n === %d) { %s }
  return {signal: 'hold', indicators: {calls, n}};
}
"""


@pytest.mark.parametrize(
    ("action", "limits", "error", "rebuilt"),
    [
        pytest.param(
            "while (true) {}", SandboxLimits(timeout_ms=50), "the strategy ran longer than 50 ms", True, id="timeout"
        ),
        pytest.param(
            "const a = []; for (;;) a.push({n: a.length});",
            SandboxLimits(timeout_ms=2000, memory_bytes=4 << 20),
            "the strategy exceeded its 4 MiB memory limit",
            True,
            id="out-of-memory",
        ),
        pytest.param(
            "while (true) {}",
            # The interrupt deadline far away, the epoch backstop close: the wasm instance traps.
            SandboxLimits(timeout_ms=60_000, epoch_backstop_ms=30),
            "the strategy passed the epoch backstop deadline",
            True,
            id="trap",
        ),
        pytest.param("throw new Error('once');", SandboxLimits(), "Error: once", False, id="exception"),
    ],
)
async def test_an_instance_is_never_reused_after_a_timeout_oom_or_trap(
    tmp_path: Path, action: str, limits: SandboxLimits, error: str, rebuilt: bool
) -> None:
    """Through the engine with the real sandbox and store (custom limits need a custom runtime
    factory). The strategy misbehaves on one candle only: that evaluation is an error row, the
    strategy keeps running, and the next evaluation runs in a fresh instance (its global ``calls``
    starts again) that has the whole history; after a plain exception the instance is reused."""
    store = SqliteStore(tmp_path / "engine.db")
    store.migrate()
    portfolio = store.ensure_paper_portfolio(user_id="u", cash=Decimal(10_000), currency="USDT")
    bad_at = HISTORY + 3  # the third live candle
    sid = store.add_strategy(
        name="once",
        user_id="u",
        code=REBUILD_PROBE % (bad_at, action),
        kind="js",
        asset="BTCUSDT",
        interval="1m",
        parameters={},
        portfolio_id=portfolio,
        status="running",
    )
    runtimes: list[JsStrategy] = []

    def factory(row: StrategyRow, key: StreamKey) -> JsStrategy:
        runtimes.append(JsStrategy(row.source, parameters=row.parameters, interval_ms=key.interval_ms, limits=limits))
        return runtimes[-1]

    broker = PaperBroker(fee_rate=Decimal("0.001"), slippage_bps=Decimal(0))
    engine = Engine(
        brokers={"paper": broker},
        sink=lambda batch: store.apply([batch]),
        runtime_factory=factory,
        now_ms=lambda: 0,
        config=EngineConfig(max_candle_lag_ms=0, log_holds=True),
    )
    try:
        await engine.sync(store.running_strategies())
        await engine.on_history(BTC, BTC_SERIES.candles[PAST - HISTORY : PAST])
        for candle in BTC_SERIES.candles[PAST : PAST + 6]:
            await engine.on_closed(candle, 1)
        (strategy,) = runtimes
        logs = [entry for _, entry in store.logs_after(sid)]
        (failure,) = [e for e in logs if e.level == "error"]
        assert failure.message.startswith(error)
        assert failure.data is not None and failure.data["candle_time"] == BTC_SERIES.candles[PAST + 2].open_time
        decisions = [e.data["indicators"] for e in logs if e.data and "indicators" in e.data]
        after = 1 if rebuilt else 4  # the failed call counted too
        assert decisions == [
            {"calls": 1, "n": HISTORY + 1},
            {"calls": 2, "n": HISTORY + 2},
            {"calls": after, "n": HISTORY + 4},
            {"calls": after + 1, "n": HISTORY + 5},
            {"calls": after + 2, "n": HISTORY + 6},
        ]
        assert store.get_strategy(sid).status == "running"
        # A rebuilt instance starts small again (linear memory never shrinks in place).
        assert strategy.memory_bytes < 2 << 20
    finally:
        engine.close()
        store.close()
