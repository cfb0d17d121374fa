"""Engine: exactly-once evaluation, restarts, staleness, failure policy, hot reload.

Strategies here are scripted Python runtimes (the engine's StrategyRuntime seam); the broker and
the store are the real paper broker and SQLite store. The JS sandbox has its own tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import numpy as np

from tradebotd.broker.base import client_order_id
from tradebotd.broker.paper import PaperBroker
from tradebotd.engine import Engine, EngineConfig
from tradebotd.errors import StrategyError
from tradebotd.ids import trade_uuid
from tradebotd.model import Candle, Decision, Position, StreamKey
from tradebotd.orders.ledger import Ledger
from tradebotd.orders.validate import OrderPolicy
from tradebotd.store.base import CloseRequest, StrategyRow
from tradebotd.store.sqlite import SqliteStore

MIN = 60_000
KEY = StreamKey("BTCUSDT", "1m")


def candle(i: int, close: str = "100") -> Candle:
    return Candle("BTCUSDT", "1m", i * MIN, D(close), D(close), D(close), D(close), D("1"))


@dataclass
class Info:
    elapsed_us: float = 12.5
    console: tuple[tuple[str, str], ...] = ()


@dataclass
class Scripted:
    """A runtime whose decisions are a function of the candle's open time."""

    decide: Callable[[int, Position | None], Decision]
    history: list[float] = field(default_factory=list)
    evaluated: list[int] = field(default_factory=list)
    closed: bool = False

    def push_history(self, candles: np.ndarray) -> None:
        self.history.extend(candles[:, 0].tolist())

    def step(self, candle: tuple[float, ...], position: Position | None) -> tuple[Decision, Any]:
        t = int(candle[0])
        self.evaluated.append(t)
        return self.decide(t, position), Info()

    def close(self) -> None:
        self.closed = True


def hold(t: int, p: Position | None) -> Decision:
    return Decision("hold")


def row(sid: str = "s1", code: str = "v1", **kw: Any) -> StrategyRow:
    base = dict(
        id=sid,
        user_id="u",
        name=sid,
        python_code=None,
        typescript_code=code,
        asset="btcusdt",
        interval="1m",
        status="running",
        portfolio_id="p",
        parameters={},
        last_run_at=None,
        last_signal_at=None,
        error_message=None,
        created_at="c",
        updated_at="u1",
        kind="js",
    )
    base.update(kw)
    return StrategyRow(**base)  # type: ignore[arg-type]


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        *,
        now_ms: int = 10**9 * MIN,
        cursors: dict[str, int] | None = None,
        config: EngineConfig | None = None,
    ) -> None:
        self.store = SqliteStore(tmp_path / "e.db")
        self.store.migrate()
        self.runtimes: dict[str, Scripted] = {}
        self.scripts: dict[str, Callable[[int, Position | None], Decision]] = {}
        self.now = now_ms
        self.stream_changes = 0
        self.cursors = cursors
        self.config = config or EngineConfig(max_candle_lag_ms=0)
        self.account(cash=D("10000"), fee_rate=D("0.001"), default_amount=D("0.001"))

    def account(self, *, cash: D, fee_rate: D, default_amount: D) -> None:
        """A paper account (portfolio "p") and an engine trading in it."""
        self.broker = PaperBroker(fee_rate=fee_rate, slippage_bps=D(0), cash={"p": cash})
        self.engine = Engine(
            brokers={"paper": self.broker},
            sink=lambda b: self.store.apply([b]),
            runtime_factory=self.factory,
            now_ms=lambda: self.now,
            config=self.config,
            cursors=self.cursors,
            on_streams_changed=self.changed,
            ledger=Ledger({"p": cash}),
            portfolios={"p": "paper"},
            policy=OrderPolicy(default_amount),
        )

    def changed(self) -> None:
        self.stream_changes += 1

    def factory(self, r: StrategyRow, key: StreamKey) -> Scripted:
        if r.source == "broken":
            raise StrategyError("SyntaxError: unexpected token at line 3")
        rt = Scripted(self.scripts.get(r.id, hold))
        self.runtimes[r.id] = rt
        return rt


async def test_history_then_each_closed_candle_exactly_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.engine.sync([row()])
    assert h.engine.streams() == {KEY}
    await h.engine.on_history(KEY, [candle(i) for i in range(1, 6)])
    rt = h.runtimes["s1"]
    assert rt.history == [i * MIN for i in range(1, 6)] and rt.evaluated == []
    for i in (6, 7, 7, 5, 8):  # a duplicate and an old candle are ignored
        await h.engine.on_closed(candle(i), 0)
    assert rt.evaluated == [6 * MIN, 7 * MIN, 8 * MIN]
    assert h.store.cursors() == {"s1": 8 * MIN}
    assert h.store.candle_count("BTCUSDT", "1m") == 8


async def test_signals_become_trades_with_deterministic_ids(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.scripts["s1"] = lambda t, p: (
        Decision("buy", amount=0.5)
        if t == 6 * MIN
        else (Decision("sell", reason="done") if t == 8 * MIN else Decision("hold"))
    )
    await h.engine.sync([row()])
    await h.engine.on_history(KEY, [candle(i) for i in range(1, 6)])
    await h.engine.on_closed(candle(6, "100"), 0)
    await h.engine.on_closed(candle(7, "105"), 0)
    await h.engine.on_closed(candle(8, "110"), 0)
    trades = h.store.trades("s1")
    assert [(t.side, t.amount, t.price, t.candle_time) for t in trades] == [
        ("buy", D("0.5"), D("100"), 6 * MIN),
        ("sell", D("0.5"), D("110"), 8 * MIN),
    ]
    assert trades[0].client_order_id == client_order_id("s1", 6 * MIN, "buy")
    assert trades[0].id == trade_uuid(trades[0].client_order_id, 6 * MIN)
    assert uuid.UUID(trades[0].id).version == 8 and uuid.UUID(trades[0].id).int >> 80 == 6 * MIN
    levels = [e.level for _, e in h.store.logs_after("s1")]
    assert levels.count("signal") == 2 and levels.count("trade") == 2


async def test_restart_evaluates_missed_candles_once(tmp_path: Path) -> None:
    h = Harness(tmp_path, cursors={"s1": 3 * MIN})
    await h.engine.sync([row()])
    await h.engine.on_history(KEY, [candle(i) for i in range(1, 6)])
    rt = h.runtimes["s1"]
    assert rt.history == [MIN, 2 * MIN, 3 * MIN]
    assert rt.evaluated == [4 * MIN, 5 * MIN]  # closed while the daemon was down


async def test_restart_after_a_long_outage_resumes_from_history(tmp_path: Path) -> None:
    h = Harness(tmp_path, cursors={"s1": 1})
    await h.engine.sync([row()])
    await h.engine.on_history(KEY, [candle(i) for i in range(10, 13)])
    assert h.runtimes["s1"].evaluated == [] and h.store.cursors() == {"s1": 12 * MIN}


async def test_stale_candle_is_evaluated_but_not_traded(tmp_path: Path) -> None:
    h = Harness(tmp_path, now_ms=7 * MIN + 45_000, config=EngineConfig(max_candle_lag_ms=30_000))
    h.scripts["s1"] = lambda t, p: Decision("buy")
    await h.engine.sync([row()])
    await h.engine.on_history(KEY, [candle(5)])
    await h.engine.on_closed(candle(6), 0)  # closed at 7:00, now 7:45 -> stale
    assert h.store.trades() == [] and h.engine.stats.stale_refusals == 1
    assert any("stale" in e.message for _, e in h.store.logs_after("s1"))
    h.now = 8 * MIN + 1_000
    await h.engine.on_closed(candle(7), 0)
    assert len(h.store.trades()) == 1


def started(tmp_path: Path, *, age_ms: int, cursors: dict[str, int] | None = None) -> Harness:
    """An engine whose clock says candle 5 (closing at 6:00) closed ``age_ms`` ago, with a 10 s
    start window."""
    return Harness(
        tmp_path,
        now_ms=6 * MIN + age_ms,
        cursors=cursors,
        config=EngineConfig(max_candle_lag_ms=30_000, start_window_ms=10_000),
    )


async def test_a_new_strategy_evaluates_a_just_closed_last_candle_at_once_and_only_once(tmp_path: Path) -> None:
    h = started(tmp_path, age_ms=2_000)
    h.scripts["s1"] = lambda t, p: Decision("buy") if t == 5 * MIN else Decision("hold")
    await h.engine.sync([row()])
    await h.engine.on_history(KEY, [candle(i) for i in range(1, 6)])
    rt = h.runtimes["s1"]
    assert rt.history == [i * MIN for i in range(1, 5)] and rt.evaluated == [5 * MIN]
    assert [(t.side, t.candle_time) for t in h.store.trades("s1")] == [("buy", 5 * MIN)]
    assert h.store.cursors() == {"s1": 5 * MIN}
    await h.engine.on_closed(candle(5), 0)  # the stream delivers the same candle: already evaluated
    h.now = 7 * MIN + 500
    await h.engine.on_closed(candle(6), 0)
    assert rt.evaluated == [5 * MIN, 6 * MIN] and len(h.store.trades("s1")) == 1


async def test_a_strategy_started_on_a_warm_stream_evaluates_its_fresh_last_candle(tmp_path: Path) -> None:
    h = started(tmp_path, age_ms=9_000)
    await h.engine.sync([row("a")])
    await h.engine.on_history(KEY, [candle(i) for i in range(1, 6)])
    assert h.runtimes["a"].evaluated == [5 * MIN]
    await h.engine.sync([row("a"), row("b")])  # set running later: warmed from the stream's history
    assert h.runtimes["b"].history == [i * MIN for i in range(1, 5)] and h.runtimes["b"].evaluated == [5 * MIN]
    h.now = 6 * MIN + 11_000  # outside the window: the next one starts with all of it as history
    await h.engine.sync([row("a"), row("b"), row("c")])
    assert h.runtimes["c"].history == [i * MIN for i in range(1, 6)] and h.runtimes["c"].evaluated == []


async def test_the_start_window_leaves_older_candles_and_restarts_alone(tmp_path: Path) -> None:
    h = started(tmp_path, age_ms=10_001)
    await h.engine.sync([row()])
    await h.engine.on_history(KEY, [candle(i) for i in range(1, 6)])
    assert h.runtimes["s1"].evaluated == [] and h.store.cursors() == {"s1": 5 * MIN}
    # a restart: the cursor decides, the window does not add or skip anything
    r = started(tmp_path / "r", age_ms=1_000, cursors={"s1": 3 * MIN})
    await r.engine.sync([row()])
    await r.engine.on_history(KEY, [candle(i) for i in range(1, 6)])
    assert r.runtimes["s1"].history == [MIN, 2 * MIN, 3 * MIN] and r.runtimes["s1"].evaluated == [4 * MIN, 5 * MIN]


async def test_consecutive_errors_disable_only_the_offender(tmp_path: Path) -> None:
    h = Harness(tmp_path, config=EngineConfig(max_candle_lag_ms=0, max_consecutive_errors=3))

    def boom(t: int, p: Position | None) -> Decision:
        raise StrategyError(f"TypeError: x is undefined at {t}")

    h.scripts["bad"] = boom
    await h.engine.sync([row("good"), row("bad")])
    await h.engine.on_history(KEY, [candle(1)])
    before = h.stream_changes
    for i in range(2, 6):
        await h.engine.on_closed(candle(i), 0)
    assert h.runtimes["good"].evaluated == [2 * MIN, 3 * MIN, 4 * MIN, 5 * MIN]
    assert h.runtimes["bad"].evaluated == [2 * MIN, 3 * MIN, 4 * MIN]
    assert h.runtimes["bad"].closed and h.engine.strategy_ids() == {"good"}
    assert h.stream_changes > before
    errors = [e for _, e in h.store.logs_after("bad") if e.level == "error"]
    assert len(errors) == 4 and "3 consecutive errors" in errors[-1].message
    # the failed row is not restarted until it changes
    await h.engine.sync([row("good"), row("bad")])
    assert h.engine.strategy_ids() == {"good"}
    await h.engine.sync([row("good"), row("bad", updated_at="u2")])
    assert h.engine.strategy_ids() == {"good", "bad"}


async def test_an_error_streak_is_reset_by_success(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.scripts["s1"] = lambda t, p: (_ for _ in ()).throw(StrategyError("odd")) if (t // MIN) % 2 else Decision("hold")
    await h.engine.sync([row()])
    await h.engine.on_history(KEY, [candle(1)])
    for i in range(2, 12):
        await h.engine.on_closed(candle(i), 0)
    assert h.engine.strategy_ids() == {"s1"}


async def test_load_error_sets_status_error(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.engine.sync([row(code="broken")])
    assert h.engine.strategy_ids() == set()
    (entry,) = [e for _, e in h.store.logs_after("s1")]
    assert entry.level == "error" and "SyntaxError" in entry.message


async def test_hot_reload_keeps_cursor_and_history(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.engine.sync([row()])
    await h.engine.on_history(KEY, [candle(i) for i in range(1, 4)])
    await h.engine.on_closed(candle(4), 0)
    first = h.runtimes["s1"]
    await h.engine.sync([row(code="v2", parameters={"fast": 3})])
    second = h.runtimes["s1"]
    assert second is not first and first.closed
    assert second.history == [MIN, 2 * MIN, 3 * MIN, 4 * MIN] and second.evaluated == []
    await h.engine.on_closed(candle(5), 0)
    assert second.evaluated == [5 * MIN]
    # unchanged rows are not reloaded
    await h.engine.sync([row(code="v2", parameters={"fast": 3}, last_run_at="later")])
    assert h.runtimes["s1"] is second



async def test_a_parameter_changed_only_in_its_json_type_reloads_the_strategy(tmp_path: Path) -> None:
    """Rows re-read unchanged are compared as they are, without hashing them; values that are
    equal in Python but different parameters (1, 1.0, true) still make a reload."""
    h = Harness(tmp_path)
    await h.engine.sync([row(parameters={"fast": 1, "nested": {"b": [1, 2], "a": None}})])
    first = h.runtimes["s1"]
    await h.engine.sync([row(parameters={"nested": {"a": None, "b": [1, 2]}, "fast": 1})])  # same, other order
    assert h.runtimes["s1"] is first
    for fast in (1.0, True):
        changed = {"fast": fast, "nested": {"b": [1, 2], "a": None}}
        previous = h.runtimes["s1"]
        await h.engine.sync([row(parameters=changed)])
        assert h.runtimes["s1"] is not previous and previous.closed


async def test_stop_releases_the_stream(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.engine.sync([row()])
    await h.engine.sync([])
    assert h.engine.streams() == set() and h.runtimes["s1"].closed


async def test_protective_exit_on_in_progress_update_and_stream_kept(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.scripts["s1"] = lambda t, p: Decision("buy", amount=1, stop_loss=95.0) if p is None else Decision("hold")
    await h.engine.sync([row()])
    await h.engine.on_history(KEY, [candle(1)])
    await h.engine.on_closed(candle(2, "100"), 0)
    await h.engine.sync([])  # stopped with an open protected position: keep watching it
    assert h.engine.streams() == {KEY}
    update = replace(candle(3, "96"), low=D("94"), closed=False)
    h.engine.on_update(update)
    sides = [(t.side, t.price, t.candle_time) for t in h.store.trades()]
    assert sides == [("buy", D("100"), 2 * MIN), ("sell", D("95"), 3 * MIN)]
    assert h.engine.streams() == set()


def test_float_amounts_become_exact_decimals() -> None:
    from tradebotd.engine import _decimal

    assert _decimal(0.1) == D("0.1") and _decimal(1e-8) == D("1E-8") and _decimal(None) is None


async def test_history_sent_again_after_a_feed_restart_evaluates_only_new_candles(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.engine.sync([row()])
    await h.engine.on_history(KEY, [candle(i) for i in range(1, 4)])
    await h.engine.on_closed(candle(4), 0)
    # the feed restarted and warms the stream up again: 5 and 6 closed while it was down
    await h.engine.on_history(KEY, [candle(i) for i in range(2, 7)])
    assert h.runtimes["s1"].evaluated == [4 * MIN, 5 * MIN, 6 * MIN]


async def test_parallel_evaluation_settles_in_slot_order(tmp_path: Path) -> None:
    """With worker threads the outcome is the sequential one: cash for five buys goes to the first
    five strategies in slot order, every time."""
    h = Harness(tmp_path, config=EngineConfig(max_candle_lag_ms=0, eval_threads=2))
    h.account(cash=D(500), fee_rate=D(0), default_amount=D(1))
    ids = [f"s{i}" for i in range(8)]
    for sid in ids:
        h.scripts[sid] = lambda t, p: Decision("buy") if t == 2 * MIN else Decision("hold")
    await h.engine.sync([row(sid) for sid in ids])
    await h.engine.on_history(KEY, [candle(1)])
    await h.engine.on_closed(candle(2, "100"), 0)
    assert [t.strategy_id for t in h.store.trades()] == ids[:5]
    rejected = [sid for sid in ids if any("insufficient cash" in e.message for _, e in h.store.logs_after(sid))]
    assert rejected == ids[5:]
    assert all(h.runtimes[sid].evaluated == [2 * MIN] for sid in ids)
    h.engine.close()


def close_request(rid: int = 1, sid: str = "s1") -> CloseRequest:
    return CloseRequest(rid, sid, "p", KEY, "close requested (tradebotd strategy stop --close-position)", "now")


async def test_a_close_request_sells_at_the_newest_price_with_that_candles_sell_id(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.scripts["s1"] = lambda t, p: Decision("buy", amount=0.5) if t == 6 * MIN else Decision("hold")
    await h.engine.sync([row()])
    await h.engine.on_history(KEY, [candle(i) for i in range(1, 6)])
    await h.engine.on_closed(candle(6, "100"), 0)
    h.engine.on_update(replace(candle(7, "120"), closed=False))  # candle 7 in progress
    await h.engine.close_positions([close_request()])
    await h.engine.sync([])  # what the CLI did: status paused
    sell = h.store.trades("s1")[-1]
    assert (sell.side, sell.amount, sell.price, sell.candle_time) == ("sell", D("0.5"), D("120"), 7 * MIN)
    assert sell.client_order_id == client_order_id("s1", 7 * MIN, "sell")
    assert sell.reason == "close requested (tradebotd strategy stop --close-position)"
    assert h.engine.position("s1") is None
    # The store still returns the request until the batch that deletes it commits: not sold twice.
    await h.engine.close_positions([close_request()])
    assert len(h.store.trades("s1")) == 2 and h.engine.streams() == set()


async def test_a_close_request_waits_for_a_fresh_price_on_its_stream(tmp_path: Path) -> None:
    h = Harness(tmp_path, config=EngineConfig(max_candle_lag_ms=30_000))
    h.now = 7 * MIN + 1_000
    h.scripts["s1"] = lambda t, p: Decision("buy", amount=0.5) if t == 6 * MIN else Decision("hold")
    await h.engine.sync([row()])
    await h.engine.on_history(KEY, [candle(i) for i in range(1, 6)])
    await h.engine.on_closed(candle(6, "100"), 0)
    await h.engine.sync([])  # stopped first: the engine forgets the stream's price
    h.now = 9 * MIN  # candle 6 closed 2 minutes ago: too old to sell at
    await h.engine.close_positions([close_request()])
    assert len(h.store.trades("s1")) == 1 and h.engine.streams() == {KEY}  # the stream is kept for it
    woken = h.stream_changes
    h.engine.on_update(replace(candle(9, "90"), closed=False))
    assert h.stream_changes == woken + 1  # the control loop is woken to carry it out
    await h.engine.close_positions([close_request()])
    sell = h.store.trades("s1")[-1]
    assert (sell.side, sell.price, sell.client_order_id) == ("sell", D("90"), client_order_id("s1", 9 * MIN, "sell"))
    await h.engine.close_positions([])
    assert h.engine.streams() == set()


async def test_a_close_request_for_a_flat_strategy_is_dropped_with_a_log_row(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.engine.close_positions([close_request(rid=7)])
    assert h.store.trades("s1") == []
    assert [e.message for _, e in h.store.logs_after("s1")] == ["close requested: no open position"]
    assert h.engine.streams() == set()


async def test_a_stream_the_exchange_refuses_puts_its_strategies_in_error(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.engine.sync([row("s1"), row("s2", asset="ethusdt")])
    woken = h.stream_changes
    await h.engine.on_refused(KEY, "Invalid symbol. (code -1121)")
    assert h.engine.strategy_ids() == {"s2"} and h.stream_changes == woken + 1
    (error,) = [e for _, e in h.store.logs_after("s1") if e.level == "error"]
    assert error.message == "the exchange refused BTCUSDT 1m: Invalid symbol. (code -1121)"
    await h.engine.sync([row("s1"), row("s2", asset="ethusdt")])  # the store may still say running
    assert h.engine.strategy_ids() == {"s2"}


async def test_a_live_portfolio_added_while_running_says_the_daemon_needs_a_restart(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.engine.add_portfolio("L", "live", D(0))
    await h.engine.sync([row(portfolio_id="L")])
    assert h.engine.strategy_ids() == set()
    (entry,) = [e for _, e in h.store.logs_after("s1")]
    assert entry.level == "error" and "live portfolio" in entry.message and "restart the daemon" in entry.message


async def test_a_parameter_changing_json_type_reloads_and_a_run_time_does_not(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.engine.sync([row(parameters={"fast": 1})])
    first = h.runtimes["s1"]
    await h.engine.sync([row(parameters={"fast": 1}, last_run_at="later")])
    assert h.runtimes["s1"] is first
    await h.engine.sync([row(parameters={"fast": 1.0})])  # 1 == 1.0 in Python, not to the strategy
    assert h.runtimes["s1"] is not first and first.closed
