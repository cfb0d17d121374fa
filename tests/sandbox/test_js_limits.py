"""Runaway strategies: deadlines, recursion, memory, traps, fuel. The daemon must survive all of
them and the strategy must work again on the next candle."""

from __future__ import annotations

import pytest
from sandbox_helpers import MakeStrategy, candle, candles

from tradebotd.sandbox import (
    SandboxLimits,
    StrategyMemoryError,
    StrategyRuntimeError,
    StrategyTimeout,
)


def _misbehaving_on_candle_2(action: str, at: int = 2) -> str:
    """A strategy that runs `action` when it sees its `at`-th candle and otherwise reports how
    many candles and how many calls it has seen (calls is global state)."""
    return f"""
    let calls = 0;
    function evaluate(ctx) {{
      calls++;
      if (ctx.candles.length === {at}) {{ {action} }}
      return {{signal: 'hold', indicators: {{n: ctx.candles.length, calls}}}};
    }}"""


def test_infinite_loop_times_out_and_the_instance_is_rebuilt(make: MakeStrategy) -> None:
    source = "function spin() { while (true) {} }\n" + _misbehaving_on_candle_2("spin();")
    strategy = make(source, limits=SandboxLimits(timeout_ms=20))
    strategy.step(candle(0), None)
    with pytest.raises(StrategyTimeout) as err:
        strategy.step(candle(1), None)
    assert not err.value.trapped  # QuickJS's interrupt handler, not a trap
    # Where the strategy was when it was stopped: in the message and the stack.
    assert str(err.value) == "the strategy ran longer than 20 ms in spin (strategy.js:1:1)"
    assert "at evaluate (strategy.js:" in err.value.stack
    decision, info = strategy.step(candle(2), None)
    # A fresh instance (globals start afresh), with the whole history.
    assert info.rebuilt
    assert decision.indicators == {"n": 3, "calls": 1}


def test_an_interrupt_skips_finally_blocks_so_the_instance_is_not_reused(make: MakeStrategy) -> None:
    # Why timeouts rebuild: the strategy cannot restore its own invariants on an interrupt.
    source = """
    let inside = false, calls = 0;
    function evaluate(ctx) {
      if (inside) throw new Error('state left half-updated by an earlier call');
      calls++;
      inside = true;
      try { if (ctx.candles.length === 2) while (true) {} } finally { inside = false; }
      return {signal: 'hold', indicators: {calls}};
    }"""
    strategy = make(source, limits=SandboxLimits(timeout_ms=20))
    strategy.step(candle(0), None)
    with pytest.raises(StrategyTimeout):
        strategy.step(candle(1), None)
    assert strategy.step(candle(2), None)[0].indicators == {"calls": 1}


def test_a_timeout_cannot_be_caught_by_the_strategy(make: MakeStrategy) -> None:
    action = "try { while (true) {} } catch (e) { return {signal: 'buy', amount: 1} } finally { }"
    strategy = make(_misbehaving_on_candle_2(action), limits=SandboxLimits(timeout_ms=20))
    strategy.step(candle(0), None)
    with pytest.raises(StrategyTimeout):
        strategy.step(candle(1), None)


def test_catastrophic_regex_times_out(make: MakeStrategy) -> None:
    strategy = make(_misbehaving_on_candle_2("/^(a|a)*$/.test('a'.repeat(40) + 'b');"),
                    limits=SandboxLimits(timeout_ms=20))
    strategy.step(candle(0), None)
    with pytest.raises(StrategyTimeout):
        strategy.step(candle(1), None)
    assert strategy.step(candle(2), None)[0].indicators == {"n": 3, "calls": 1}


def test_endless_microtasks_time_out(make: MakeStrategy) -> None:
    strategy = make("async function evaluate() { for (;;) await null; }", limits=SandboxLimits(timeout_ms=20))
    with pytest.raises(StrategyTimeout):
        strategy.step(candle(0), None)


@pytest.mark.parametrize(
    "action",
    [
        "function f(n) { return f(n + 1) + 1 } f(0);",
        "const g = { get x() { return this.x } }; g.x;",
        "let o = {}; for (let i = 0; i < 100000; i++) o = {o}; JSON.stringify(o);",
        "JSON.parse('['.repeat(100000));",
        "eval('('.repeat(100000));",
        "const a = []; a[0] = a; let x = [a]; for (let i = 0; i < 100000; i++) x = [x]; String(x);",
    ],
)
def test_deep_recursion_is_a_catchable_range_error(make: MakeStrategy, action: str) -> None:
    # A generous deadline: building the deep structures takes real time on a loaded machine,
    # and this test is about the stack, not the clock.
    strategy = make(_misbehaving_on_candle_2(action), limits=SandboxLimits(timeout_ms=10_000))
    strategy.step(candle(0), None)
    with pytest.raises(StrategyRuntimeError) as err:
        strategy.step(candle(1), None)
    assert err.value.name in {"RangeError", "SyntaxError"}
    decision, info = strategy.step(candle(2), None)
    assert decision.indicators == {"n": 3, "calls": 3}
    assert not info.rebuilt  # not a trap: the instance is reused


def test_the_strategy_can_catch_its_own_stack_overflow(make: MakeStrategy) -> None:
    source = """
    function depth(n) { try { return depth(n + 1) } catch (e) { return n } }
    function evaluate() { return {signal: 'hold', indicators: {depth: depth(0)}} }"""
    decision, _ = make(source).step(candle(0), None)
    assert decision.indicators is not None and 100 < float(decision.indicators["depth"]) < 10_000  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "action",
    [
        "const a = []; for (;;) a.push(new Array(1e5).fill(1.5));",
        "globalThis.kept = []; for (;;) kept.push(new Array(1e5).fill(1.5));",
        "'x'.repeat(50e6);",
        # Small objects: the heap fills up so exactly that even QuickJS's "out of memory" error
        # object cannot be allocated (it then throws null); still reported as out of memory.
        "const a = []; for (;;) a.push({x: 1});",
        "try { const a = []; for (;;) a.push({x: 1}); } catch (e) { return {signal: 'hold', reason: String(e)}; }",
    ],
)
def test_allocation_bomb_is_a_memory_error_and_the_strategy_recovers(make: MakeStrategy, action: str) -> None:
    limits = SandboxLimits(memory_bytes=8 << 20, timeout_ms=10_000)  # about memory, not time
    strategy = make(_misbehaving_on_candle_2(action), limits=limits)
    strategy.step(candle(0), None)
    with pytest.raises(StrategyMemoryError):
        strategy.step(candle(1), None)
    decision, info = strategy.step(candle(2), None)
    # Rebuilt to release linear memory (it never shrinks); the history came back with it.
    assert info.rebuilt
    assert decision.indicators == {"n": 3, "calls": 1}
    assert strategy.memory_bytes < 2 * limits.memory_bytes


def test_memory_error_says_where_the_allocation_failed(make: MakeStrategy) -> None:
    strategy = make("function evaluate() {\n  return {signal: 'hold', reason: 'x'.repeat(50e6)};\n}")
    with pytest.raises(StrategyMemoryError) as err:
        strategy.step(candle(0), None)
    assert str(err.value) == "the strategy exceeded its 32 MiB memory limit in evaluate (strategy.js:2:39)"
    assert err.value.stack.strip() == "at evaluate (strategy.js:2:39)"


def test_a_thrown_null_is_not_mistaken_for_out_of_memory(make: MakeStrategy) -> None:
    with pytest.raises(StrategyRuntimeError, match="uncaught object: null"):
        make("function evaluate() { throw null }").step(candle(0), None)


def test_a_trap_discards_the_instance_and_the_next_call_rebuilds_it(make: MakeStrategy) -> None:
    # Interrupt deadline far away, epoch backstop tiny: the spin ends in a wasm trap.
    limits = SandboxLimits(timeout_ms=60_000, epoch_backstop_ms=20)
    strategy = make(_misbehaving_on_candle_2("while (true) {}", at=5), limits=limits)
    strategy.push_history(candles(0, 3))
    strategy.step(candle(3), None)
    with pytest.raises(StrategyTimeout) as err:
        strategy.step(candle(4), None)
    assert err.value.trapped
    assert err.value.consumed == 1
    assert strategy.memory_bytes == 0  # no instance until the next call
    decision, info = strategy.step(candle(5), None)
    assert info.rebuilt
    # History intact (the trapping candle included); the strategy's globals started afresh.
    assert decision.indicators == {"n": 6, "calls": 1}


def test_fuel_budget_traps_a_spinning_strategy(make: MakeStrategy) -> None:
    limits = SandboxLimits(fuel=20_000_000)
    strategy = make(_misbehaving_on_candle_2("for (;;) {}"), limits=limits)
    strategy.step(candle(0), None)
    with pytest.raises(StrategyTimeout, match="fuel") as err:
        strategy.step(candle(1), None)
    assert err.value.trapped
    assert strategy.step(candle(2), None)[0].indicators == {"n": 3, "calls": 1}


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="timeout_ms"):
        SandboxLimits(timeout_ms=0)
    with pytest.raises(ValueError, match="memory_bytes"):
        SandboxLimits(memory_bytes=1024)
