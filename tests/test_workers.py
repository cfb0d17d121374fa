"""Evaluation processes: the protocol's encodings, real child processes evaluating exactly as the
daemon's own sandboxes do, and what happens when a child dies or hangs."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from decimal import Decimal as D
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import numpy as np
import pytest

from tradebotd.config import SandboxSettings, default_eval_processes
from tradebotd.examples.synthetic import synthetic_candles
from tradebotd.model import Decision, Position, StreamKey
from tradebotd.runtimes import make_runtime_factory
from tradebotd.sandbox.errors import (
    InvalidResult,
    SandboxTrap,
    StrategyLoadError,
    StrategyRuntimeError,
    StrategyTimeout,
)
from tradebotd.sandbox.sandboxed import EvalInfo
from tradebotd.store.base import StrategyRow
from tradebotd.workers import protocol as p
from tradebotd.workers.pool import STEPS_MAX, EvalPool, EvalProcess, ProcessDied, ProcessHung, RemoteRuntime
from tradebotd.workers.process import MAX_IN_FLIGHT

EXAMPLE = Path(__file__).resolve().parents[1] / "tradebotd" / "examples" / "sma_crossover.js"
KEY = StreamKey("BTCUSDT", "1m")
SETTINGS = SandboxSettings(timeout_ms=50, max_candles=100)


def row(code: str, sid: str = "s1", **parameters: object) -> StrategyRow:
    return StrategyRow(
        id=sid, user_id="u", name=sid, python_code=None, typescript_code=code, asset="BTCUSDT", interval="1m",
        status="running", portfolio_id="p", parameters=parameters or {"fast": 3, "slow": 8, "amount": 0.5},
        last_run_at=None, last_signal_at=None, error_message=None, created_at="c", updated_at="u", kind="js",
    )


@pytest.fixture
def process() -> Iterator[EvalProcess]:
    proc = EvalProcess(SETTINGS, 0, margin_s=1.0)
    yield proc
    proc.close()


CANDLES = np.array(synthetic_candles(300, 7, interval_ms=KEY.interval_ms), dtype=np.float64)


HOLD = "function tradingStrategy(c) { return {signal: 'hold'}; }"
COUNT = "function tradingStrategy(c) { return {signal: 'hold', indicators: {n: c.candles.length}}; }"


def signal_child(process: EvalProcess, signum: int) -> int:
    """Sends ``signum`` to the running child; returns its pid."""
    pid = process.pid
    assert pid is not None
    os.kill(pid, signum)
    return pid


def floats(i: int) -> tuple[float, float, float, float, float, float]:
    c = CANDLES[i]
    return (float(c[0]), float(c[1]), float(c[2]), float(c[3]), float(c[4]), float(c[5]))


# -- the protocol ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        StrategyLoadError("Unexpected token", name="SyntaxError", stack="at 3", line=3, column=7),
        StrategyRuntimeError("TypeError", "x is undefined", "at tradingStrategy (strategy.js:4)", consumed=1),
        StrategyTimeout("the evaluation ran past 50 ms", trapped=True, stack="", consumed=1),
        InvalidResult("signal must be 'buy', 'sell' or 'hold'", consumed=1),
        SandboxTrap("the strategy trapped: out of bounds", trap_code="MEMORY_OUT_OF_BOUNDS", consumed=0),
    ],
)
def test_strategy_errors_cross_as_the_same_class_with_the_same_attributes(error: Exception) -> None:
    back = p.decode_error(p.loads(p.dumps(p.encode_error(error))))
    assert type(back) is type(error)
    assert str(back) == str(error) and vars(back) == vars(error)


def test_anything_else_arrives_as_a_remote_failure_and_malformed_errors_do_not_raise() -> None:
    back = p.decode_error(p.encode_error(KeyError(7)))
    assert isinstance(back, p.RemoteFailure) and "KeyError" in str(back)
    assert isinstance(p.decode_error({"type": "os.system", "text": "x"}), p.RemoteFailure)
    assert isinstance(p.decode_error("nonsense"), p.RemoteFailure)
    attrs = {"__class__": "x", "_x": 1, "ok": [1], "line": 3}
    odd = p.decode_error({"type": "InvalidResult", "text": "t", "attrs": attrs})
    assert type(odd) is InvalidResult and vars(odd) == {"line": 3}


def test_positions_decisions_and_rows_round_trip_exactly() -> None:
    position = Position(D("0.00100000"), D("30012.34"), 60_000, D("31000.1"), None)
    assert p.decode_position(p.loads(p.dumps(p.encode_position(position)))) == position
    assert p.decode_position(p.encode_position(None)) is None
    decision = Decision("buy", 0.1 + 0.2, "why", {"a": 1e-300, "b": "x", "c": [1.5, 2.0], "d": True}, 5.5, 0.25)
    info = EvalInfo(12.5, (("log", "hello"),), True, None)
    assert p.decode_decision(*p.loads(p.dumps(p.encode_decision(decision, info)))) == (decision, info)
    strategy = row("code", parameters_x=1)
    assert p.decode_row(p.loads(p.dumps(p.encode_row(strategy)))) == strategy


# -- a real child ------------------------------------------------------------------------------


def test_a_remote_strategy_decides_exactly_as_a_local_one(process: EvalProcess) -> None:
    code = EXAMPLE.read_text()
    local = make_runtime_factory(SETTINGS)(row(code), KEY)
    remote = RemoteRuntime(process, row(code), KEY, SETTINGS.max_candles)
    for runtime in (local, remote):
        runtime.push_history(CANDLES[:20])
    position: Position | None = None
    signals = 0
    for i in range(20, 300):
        (expected, _), (got, info) = local.step(floats(i), position), remote.step(floats(i), position)
        assert got == expected
        assert info.elapsed_us > 0
        if got.signal != "hold":
            signals += 1
            position = Position(D("0.5"), D(repr(floats(i)[4])), i) if got.signal == "buy" else None
    assert signals >= 6
    local.close()
    remote.close()


def test_load_and_evaluation_errors_arrive_as_in_process(process: EvalProcess) -> None:
    with pytest.raises(StrategyLoadError) as load:
        RemoteRuntime(process, row("function tradingStrategy(c) {\n  return {signal: 'hold'\n"), KEY, 100)
    assert load.value.name == "SyntaxError" and load.value.line == 3
    throws = RemoteRuntime(process, row("function tradingStrategy(c) { null.x; }"), KEY, 100)
    with pytest.raises(StrategyRuntimeError) as error:
        throws.step(floats(0), None)
    assert error.value.name == "TypeError" and "strategy.js" in error.value.stack
    spins = RemoteRuntime(process, row("function tradingStrategy(c) { for (;;) {} }"), KEY, 100)
    with pytest.raises(StrategyTimeout):
        spins.step(floats(1), None)
    # the process and its other strategies are unaffected
    assert throws.process.pid is not None and process.generation == 1


def test_a_killed_process_is_replaced_within_the_same_evaluation_with_the_history(process: EvalProcess) -> None:
    remote = RemoteRuntime(process, row(COUNT), KEY, SETTINGS.max_candles)
    remote.push_history(CANDLES[:10])
    assert remote.step(floats(10), None)[0].indicators == {"n": 11}
    pid = signal_child(process, signal.SIGKILL)
    # The step finds the process dead and is sent again to a new one, where the strategy was
    # loaded again with the 11 candles it had seen: nothing lost, not even this evaluation.
    assert remote.step(floats(11), None)[0].indicators == {"n": 12}
    assert process.pid not in (None, pid) and process.generation == 2


def test_a_process_that_dies_again_at_once_costs_the_evaluation_not_the_daemon(
    process: EvalProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = RemoteRuntime(process, row(HOLD), KEY, 100)
    signal_child(process, signal.SIGKILL)
    monkeypatch.setattr("sys.executable", "/nonexistent/python3")  # and no new one can start
    with pytest.raises(ProcessDied, match="cannot start"):
        remote.step(floats(0), None)
    monkeypatch.undo()
    assert remote.step(floats(1), None)[0] == Decision("hold")  # the next candle finds one again


def test_when_no_process_can_start_a_candle_tries_once_not_once_per_strategy(
    process: EvalProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    remotes = [RemoteRuntime(process, row(HOLD, f"s{i}"), KEY, 100) for i in range(3)]
    signal_child(process, signal.SIGKILL)
    import tradebotd.workers.process as process_module

    spawns: list[object] = []
    real_popen = process_module.subprocess.Popen

    def counting_popen(*args: Any, **kwargs: Any) -> Any:
        spawns.append(args)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(process_module.subprocess, "Popen", counting_popen)
    monkeypatch.setattr("sys.executable", "/nonexistent/python3")
    outcomes = process.begin([(r, None) for r in remotes], floats(0))()
    assert all(isinstance(o, ProcessDied) for o in outcomes)
    assert len(spawns) == 1  # the first strategy's reload found out; the others were not retried


def test_history_given_while_the_process_is_dead_arrives_in_a_new_one(process: EvalProcess) -> None:
    remote = RemoteRuntime(process, row(COUNT), KEY, SETTINGS.max_candles)
    pid = signal_child(process, signal.SIGKILL)
    remote.push_history(CANDLES[:10])  # not an error for the strategy: it gets its history anyway
    assert remote.step(floats(10), None)[0].indicators == {"n": 11}
    assert process.pid != pid


def test_a_hung_process_is_killed_after_the_deadline_and_replaced(process: EvalProcess) -> None:
    remote = RemoteRuntime(process, row(HOLD), KEY, SETTINGS.max_candles)
    pid = signal_child(process, signal.SIGSTOP)
    with pytest.raises(ProcessDied, match="no answer"):
        remote.step(floats(0), None)
    assert remote.step(floats(1), None)[0] == Decision("hold")
    assert process.pid != pid


def test_a_child_exits_cleanly_when_the_daemon_goes_away_before_reading_its_reply(process: EvalProcess) -> None:
    process.start()  # sends init; the reply is never read
    child = process._proc
    assert child is not None
    process.close()
    assert child.returncode == 0  # a traceback (broken pipe) would exit 1


def test_a_child_gets_no_secrets_in_its_environment(process: EvalProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBOTD_EXCHANGE__API_SECRET", "do-not-pass-me")
    RemoteRuntime(process, row(HOLD), KEY, 100)
    environ = Path(f"/proc/{process.pid}/environ").read_bytes()
    assert b"do-not-pass-me" not in environ and b"TRADEBOTD" not in environ


def test_the_pool_places_each_strategy_on_the_least_loaded_side() -> None:
    pool = EvalPool(SETTINGS, make_runtime_factory(SETTINGS), 1)
    code = EXAMPLE.read_text()
    try:
        first = [pool(row(code, f"s{i}"), KEY) for i in range(5)]
        assert [isinstance(r, RemoteRuntime) for r in first] == [False, True, False, True, False]
        assert pool.processes[0].strategies == 2
        # Two local strategies stop (the engine closes and drops them): 1 local, 2 remote.
        for gone in (first[0], first[2]):
            gone.close()
        del first[2], first[0], gone
        more = [pool(row(code, f"t{i}"), KEY) for i in range(3)]
        assert [isinstance(r, RemoteRuntime) for r in more] == [False, False, True]
        for r in first + more:
            r.close()
        assert pool.processes[0].strategies == 0
    finally:
        pool.close()


def test_strategies_run_in_the_daemon_when_no_process_can_start(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = EvalPool(SETTINGS, make_runtime_factory(SETTINGS), 1)
    monkeypatch.setattr("sys.executable", "/nonexistent/python3")
    try:
        code = EXAMPLE.read_text()
        runtimes = [pool(row(code, f"s{i}"), KEY) for i in range(3)]
        assert not any(isinstance(r, RemoteRuntime) for r in runtimes)
        assert runtimes[2].step(floats(0), None)[0].signal == "hold"  # and they work
    finally:
        pool.close()


@pytest.mark.parametrize(("cpus", "expected"), [(1, 0), (2, 1), (3, 2), (16, 4)])
def test_by_default_one_process_per_cpu_beyond_the_first_at_most_four(
    cpus: int, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert default_eval_processes() == expected
    assert SandboxSettings().eval_processes == expected and SandboxSettings(eval_processes=0).eval_processes == 0


# -- pipelined requests ------------------------------------------------------------------------


def test_many_candles_can_be_on_their_way_before_the_first_answer_is_read(process: EvalProcess) -> None:
    """Three candles' requests sent back to back; the answers come in order, to their tickets,
    whichever ticket is waited for first."""
    remotes = [RemoteRuntime(process, row(COUNT, f"s{i}"), KEY, SETTINGS.max_candles) for i in range(2)]
    tickets = [process.begin([(r, None) for r in remotes], floats(i)) for i in range(3)]
    assert process.queued == 3
    last = tickets[2]()  # reads the first two answers on its way and hands them over
    assert process.queued == 0
    assert [[o[0].indicators for o in t()] for t in tickets[:2]] == [[{"n": 1}, {"n": 1}], [{"n": 2}, {"n": 2}]]
    assert [o[0].indicators for o in last] == [{"n": 3}, {"n": 3}]



def _record_requests(process: EvalProcess, monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """Every request ``process`` sends, as sent."""
    sent: list[list[Any]] = []
    send = process.send

    def recording(message: list[Any], payload: bytes | None = None, *, timeout_s: float) -> Any:
        sent.append(message)
        return send(message, payload, timeout_s=timeout_s)

    monkeypatch.setattr(process, "send", recording)
    return sent


async def test_candles_that_close_while_the_process_is_busy_go_out_in_one_request(
    process: EvalProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first candle goes out at once (the process waits for work); those that follow while it
    is busy (stopped here, so that it certainly is) leave together, each answered in order."""
    remotes = [RemoteRuntime(process, row(COUNT, f"s{i}"), KEY, SETTINGS.max_candles) for i in range(2)]
    sent = _record_requests(process, monkeypatch)
    pid = signal_child(process, signal.SIGSTOP)
    try:
        tickets = [process.begin([(r, None) for r in remotes], floats(i)) for i in range(4)]
        assert [m[0] for m in sent] == ["step"] and process.queued == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    got = [await ticket.wait() for ticket in tickets]  # the first wait sends the others
    assert [m[0] for m in sent] == ["step", "steps"] and len(sent[1][1]) == 3
    assert [[o[0].indicators for o in outcomes] for outcomes in got] == [[{"n": n}, {"n": n}] for n in (1, 2, 3, 4)]
    assert process.queued == 0


def test_without_an_event_loop_every_candle_goes_out_at_once(
    process: EvalProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = RemoteRuntime(process, row(COUNT), KEY, SETTINGS.max_candles)
    sent = _record_requests(process, monkeypatch)
    tickets = [process.begin([(remote, None)], floats(i)) for i in range(3)]
    assert [m[0] for m in sent] == ["step"] * 3
    assert [t()[0][0].indicators for t in tickets] == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_a_full_outbox_goes_out_without_waiting_for_the_loop(
    process: EvalProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = RemoteRuntime(process, row(COUNT), KEY, SETTINGS.max_candles)
    sent = _record_requests(process, monkeypatch)
    pid = signal_child(process, signal.SIGSTOP)
    try:
        tickets = [process.begin([(remote, None)], floats(i)) for i in range(STEPS_MAX + 2)]
        assert [m[0] for m in sent] == ["step", "steps"] and len(sent[1][1]) == STEPS_MAX
    finally:
        os.kill(pid, signal.SIGCONT)
    got = [(await ticket.wait())[0] for ticket in tickets]
    assert [m[0] for m in sent] == ["step", "steps", "step"]
    assert [o[0].indicators for o in got] == [{"n": n} for n in range(1, STEPS_MAX + 3)]


async def test_a_death_with_candles_in_one_request_sends_each_again_in_order(process: EvalProcess) -> None:
    remote = RemoteRuntime(process, row(COUNT), KEY, SETTINGS.max_candles)
    remote.push_history(CANDLES[:10])
    pid = signal_child(process, signal.SIGSTOP)
    tickets = [process.begin([(remote, None)], floats(10 + i)) for i in range(3)]
    process.flush()  # the last two as one request, then the process dies with all of it unanswered
    os.kill(pid, signal.SIGKILL)
    got = [(await t.wait())[0] for t in tickets]
    assert [o[0].indicators for o in got if not isinstance(o, BaseException)] == [{"n": 11}, {"n": 12}, {"n": 13}]
    assert process.pid not in (None, pid)


async def test_awaiting_answers_leaves_the_event_loop_free() -> None:
    slow = "function tradingStrategy(c) { let x = 0; for (let i = 0; i < 3e6; i++) x += i; return {signal: 'hold'}; }"
    proc = EvalProcess(SandboxSettings(timeout_ms=5000, max_candles=100), 0, margin_s=5.0)
    try:
        remote = RemoteRuntime(proc, row(slow), KEY, 100)
        ticket = proc.begin([(remote, None)], floats(0))
        seen: list[int] = []

        async def meanwhile() -> None:
            seen.append(proc.queued)  # runs while the answer is still outstanding

        other = asyncio.create_task(meanwhile())
        outcomes = await ticket.wait()
        await other
        assert seen == [1]
        assert outcomes[0] == (Decision("hold"), ANY)
    finally:
        proc.close()


async def test_a_death_with_several_candles_in_flight_sends_each_again_in_order(process: EvalProcess) -> None:
    remote = RemoteRuntime(process, row(COUNT), KEY, SETTINGS.max_candles)
    remote.push_history(CANDLES[:10])
    pid = signal_child(process, signal.SIGKILL)
    tickets = [process.begin([(remote, None)], floats(10 + i)) for i in range(3)]
    got = [(await t.wait())[0] for t in tickets]
    # Each was sent again to the new process, where the strategy was reloaded with its history
    # as it stood: every candle evaluated once, in order.
    assert [o[0].indicators for o in got if not isinstance(o, BaseException)] == [{"n": 11}, {"n": 12}, {"n": 13}]
    assert process.pid not in (None, pid)


async def test_a_hang_fails_every_candle_waiting_on_it_and_the_next_request_starts_afresh(
    process: EvalProcess,
) -> None:
    remote = RemoteRuntime(process, row(HOLD), KEY, SETTINGS.max_candles)
    pid = signal_child(process, signal.SIGSTOP)
    tickets = [process.begin([(remote, None)], floats(i)) for i in range(2)]
    outcomes = [(await t.wait())[0] for t in tickets]
    assert all(isinstance(o, ProcessHung) and "no answer" in str(o) for o in outcomes)
    assert (await process.begin([(remote, None)], floats(2)).wait())[0] == (Decision("hold"), ANY)
    assert process.pid != pid


def test_load_many_loads_on_both_sides_at_once_and_returns_each_load_error_in_place() -> None:
    pool = EvalPool(SETTINGS, make_runtime_factory(SETTINGS), 1)
    bad = "function tradingStrategy(c) {\n  return {signal: 'hold'\n"
    codes = [COUNT, COUNT, bad, bad, COUNT, COUNT]  # local, remote, local, remote, ... as __call__ places
    try:
        results = pool.load_many([(row(code, f"s{i}"), KEY) for i, code in enumerate(codes)])
        assert [type(r).__name__ for r in results] == [
            "JsStrategy", "RemoteRuntime", "StrategyLoadError", "StrategyLoadError", "JsStrategy", "RemoteRuntime",
        ]  # fmt: skip
        assert all(r.line == 3 for r in results if isinstance(r, StrategyLoadError))
        assert pool.processes[0].strategies == 2
        runtimes = [r for r in results if not isinstance(r, Exception)]
        finishes = [r.begin_history(CANDLES[:10]) for r in runtimes if isinstance(r, RemoteRuntime)]
        for r in runtimes:
            if not isinstance(r, RemoteRuntime):
                r.push_history(CANDLES[:10])
        for finish in finishes:
            finish()
        assert [r.step(floats(10), None)[0].indicators for r in runtimes] == [{"n": 11}] * 4
        for r in runtimes:
            r.close()
    finally:
        pool.close()


def test_history_on_its_way_when_the_process_dies_arrives_in_a_new_one(process: EvalProcess) -> None:
    remotes = [RemoteRuntime(process, row(COUNT, f"s{i}"), KEY, SETTINGS.max_candles) for i in range(2)]
    pid = signal_child(process, signal.SIGKILL)
    finishes = [r.begin_history(CANDLES[:10]) for r in remotes]
    for finish in finishes:
        finish()
    assert [r.step(floats(10), None)[0].indicators for r in remotes] == [{"n": 11}, {"n": 11}]
    assert process.pid != pid


def test_more_requests_than_the_socket_buffers_hold_are_pipelined_without_a_deadlock() -> None:
    """The child stops reading while its answers fill the socket buffer; a daemon that only kept
    sending (750 strategies loaded at once) blocked forever on a full buffer the other way."""
    pool = EvalPool(SETTINGS, make_runtime_factory(SETTINGS), 1, daemon_weight=1000.0)
    try:
        code = COUNT + "\n// " + "x" * 4000  # 400 loads: 1.6 MB of requests, 400 answers
        results = pool.load_many([(row(code, f"s{i}"), KEY) for i in range(400)])
        remote = [r for r in results if isinstance(r, RemoteRuntime)]
        assert len(remote) == 399 and pool.processes[0].strategies == 399  # the first: in the daemon
        process = pool.processes[0]
        tickets = [process.begin([(r, None)], floats(0)) for r in remote]
        assert process.queued <= MAX_IN_FLIGHT
        assert [t()[0] for t in tickets] == [(Decision("hold", indicators={"n": 1}), ANY)] * 399
        for r in results:
            assert not isinstance(r, Exception)
            r.close()
    finally:
        pool.close()
