"""Instances started from the process's QuickJS snapshot (tradebotd/sandbox/snapshot.py) against
instances that make their QuickJS state themselves: the same results, the same limits, nothing
shared between strategies. The other sandbox tests run on snapshot-started instances too (the
``runtime`` fixture makes one)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import wasmtime
from sandbox_helpers import MIN, candle, candles

from tradebotd.sandbox import JsStrategy, SandboxLimits, WasmRuntime
from tradebotd.sandbox.errors import SandboxUnavailable, StrategyMemoryError, StrategyTimeout
from tradebotd.sandbox.qjs import WASM_PATH
from tradebotd.sandbox.snapshot import PAGE, capture, stack_top

EXAMPLES = Path(__file__).resolve().parents[2] / "tradebotd" / "examples"

# What a fresh QuickJS state could tell apart from a copied one, if anything did.
PROBE = """
let calls = 0;
const seen = new Map();
const order = new Set(['z', 'a', 'm']);
function tradingStrategy(context) {
  calls += 1;
  const closes = context.candles.map(c => c.close);
  seen.set(String(calls), closes.length);
  console.log('call', calls, Date.now(), new Date().toISOString());
  console.warn([...seen.keys()].join(','), [...order].join(''), Object.keys(globalThis).length);
  const r = Math.random();
  let frozen;
  try { context.parameters.fast = 1; frozen = 'no'; } catch (e) { frozen = e.constructor.name; }
  if (calls === 3) throw new RangeError('third call ' + r);
  return {
    signal: closes.length % 4 === 0 && !context.position ? 'buy' : 'hold',
    reason: `r=${r.toFixed(12)} frozen=${frozen} ${typeof performance} ${typeof require}`,
    indicators: { n: closes.length, last: closes[closes.length - 1], re: /a(b+)c/.exec('xabbbc')[1].length },
  };
}
"""


@pytest.fixture(scope="module")
def fresh_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WasmRuntime]:
    rt = WasmRuntime(cache_dir=tmp_path_factory.mktemp("wasm-cache-fresh"), snapshot=False)
    yield rt
    rt.stop_ticker()


def _run(strategy: JsStrategy, steps: int) -> list[object]:
    strategy.push_history(candles(0, 30))
    out: list[object] = [strategy.load_console]
    for i in range(30, 30 + steps):
        try:
            decision, info = strategy.step(candle(i, 100.0 + (i * 7919) % 13), None)
        except Exception as exc:  # compared like any outcome
            out.append((type(exc).__name__, str(exc)))
        else:
            out.append((decision, info.console, info.rebuilt))
    return out


def test_the_runtime_fixture_starts_instances_from_a_snapshot(runtime: WasmRuntime) -> None:
    assert runtime.snapshot is not None
    assert runtime.snapshot.size > 0
    # Nothing below the stack top (dead stack) is copied, and every run is whole pages.
    top = stack_top(WASM_PATH.read_bytes())
    assert all(address >= top and address % PAGE == 0 and len(data) % PAGE == 0
               for address, data in runtime.snapshot.runs)


@pytest.mark.parametrize("source", ["probe", "sma_crossover.js"])
def test_a_snapshot_started_strategy_behaves_exactly_like_a_fresh_one(
    runtime: WasmRuntime, fresh_runtime: WasmRuntime, source: str
) -> None:
    code = PROBE if source == "probe" else (EXAMPLES / source).read_text()
    parameters = {"fast": 3, "slow": 8, "amount": 0.5}
    results = []
    for rt in (runtime, fresh_runtime):
        with JsStrategy(code, parameters=parameters, interval_ms=MIN, runtime=rt) as strategy:
            results.append(_run(strategy, 12))
    assert results[0] == results[1]
    if source == "probe":
        errors = [(r[0], r[1][:22]) for r in results[0][1:] if isinstance(r, tuple) and isinstance(r[0], str)]
        assert ("StrategyRuntimeError", "RangeError: third call") in errors


def test_limits_are_the_strategys_own_not_the_snapshots(runtime: WasmRuntime) -> None:
    source = """
    function tradingStrategy() {
      for (let i = 0; i < 10; i++) console.log('x'.repeat(50));
      return { signal: 'hold' };
    }"""
    small = SandboxLimits(max_log_lines=2, max_log_chars=10)
    with (
        JsStrategy(source, parameters={}, interval_ms=MIN, limits=small, runtime=runtime) as a,
        JsStrategy(source, parameters={}, interval_ms=MIN, runtime=runtime) as b,
    ):
        _, info_a = a.step(candle(1), None)
        _, info_b = b.step(candle(1), None)
    assert len(info_b.console) > len(info_a.console) >= 2
    assert all(len(text) <= 10 for _, text in info_a.console[:2])
    assert any(len(text) == 50 for _, text in info_b.console)


def test_strategies_from_one_snapshot_share_nothing(runtime: WasmRuntime) -> None:
    writer = """
    globalThis.shared = 'from a'; Math.max = () => 42; Array.prototype.tag = 'a';
    function tradingStrategy() { return { signal: 'hold', reason: String(Math.max(1, 2)) }; }"""
    reader = """
    function tradingStrategy() {
      return { signal: 'hold', reason: `${typeof globalThis.shared} ${Math.max(1, 2)} ${[].tag}` };
    }"""
    with (
        JsStrategy(writer, parameters={}, interval_ms=MIN, runtime=runtime) as a,
        JsStrategy(reader, parameters={}, interval_ms=MIN, runtime=runtime) as b,
    ):
        assert a.step(candle(1), None)[0].reason == "42"
        assert b.step(candle(1), None)[0].reason == "undefined 2 undefined"


def test_timeouts_and_memory_limits_hold_and_rebuilds_start_from_the_snapshot(runtime: WasmRuntime) -> None:
    source = """
    let n = 0;
    function tradingStrategy(context) {
      n += 1;
      const mode = context.parameters.mode;
      if (n === 2 && mode === 'spin') for (;;) {}
      if (n === 2 && mode === 'grow') { const a = []; for (;;) a.push(new Array(1e5).fill(n)); }
      return { signal: 'hold', reason: `call ${n} candles ${context.candles.length}` };
    }"""
    limits = SandboxLimits(timeout_ms=30, memory_bytes=4 << 20)
    for mode, error in (("spin", StrategyTimeout), ("grow", StrategyMemoryError)):
        with JsStrategy(source, parameters={"mode": mode}, interval_ms=MIN, limits=limits, runtime=runtime) as s:
            s.push_history(candles(0, 5))
            assert s.step(candle(5), None)[0].reason == "call 1 candles 6"
            with pytest.raises(error):
                s.step(candle(6), None)
            decision, info = s.step(candle(7), None)
            # Rebuilt: globals start afresh, the host's history (the failed candle included) is back.
            assert info.rebuilt
            assert decision.reason == "call 1 candles 8"


def test_an_instance_capped_below_the_snapshot_is_not_restored(runtime: WasmRuntime) -> None:
    # Not reachable through SandboxLimits (the cap is at least 2 MiB): such an instance runs
    # _initialize and tb_init itself, and gets the memory error of a too small cap.
    assert runtime.snapshot is not None
    store, _, memory, restored = runtime.new_instance(runtime.snapshot.memory_bytes - 65536)
    assert not restored
    assert memory.data_len(store) < runtime.snapshot.memory_bytes


def test_a_module_without_tb_init_gets_no_snapshot(runtime: WasmRuntime) -> None:
    wat = '(module (memory (export "memory") 1) (global $sp (mut i32) (i32.const 4096))' \
          ' (func (export "_initialize")))'
    wasm = wasmtime.wat2wasm(wat)
    module = wasmtime.Module(runtime.engine, wasm)

    def new_instance() -> tuple[wasmtime.Store, wasmtime.Instance]:
        store = wasmtime.Store(runtime.engine)
        store.set_epoch_deadline(1 << 40)
        return store, wasmtime.Instance(store, module, [])

    assert stack_top(bytes(wasm)) == 4096
    with pytest.raises(SandboxUnavailable, match="tb_init"):
        capture(new_instance, bytes(wasm))


def test_restore_grows_memory_and_writes_the_captured_pages(runtime: WasmRuntime) -> None:
    snapshot = runtime.snapshot
    assert snapshot is not None
    store, _, memory, restored = runtime.new_instance(64 << 20)
    assert restored
    assert memory.data_len(store) == snapshot.memory_bytes
    for address, data in snapshot.runs:
        assert bytes(memory.read(store, address, address + len(data))) == data
    # The stack is not copied: a new instance's stack is all zero.
    assert not np.frombuffer(bytes(memory.read(store, 0, stack_top(WASM_PATH.read_bytes()))), np.uint8).any()


def test_the_snapshot_is_made_on_first_use_and_never_on_a_thread_too_small_for_wasm(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    outcome: list[object] = []

    def small_thread() -> None:
        rt = WasmRuntime(cache_dir=tmp_path_factory.mktemp("wasm-cache-thread"))  # runs no wasm
        try:
            rt.snapshot  # noqa: B018 - the property makes it
        except SandboxUnavailable as exc:
            outcome.append(exc)
        outcome.append(rt)

    previous = threading.stack_size(512 << 10)
    try:
        thread = threading.Thread(target=small_thread)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(previous)
    assert isinstance(outcome[0], SandboxUnavailable)
    rt = outcome[1]
    assert isinstance(rt, WasmRuntime)
    assert rt.snapshot is not None  # made here, on the main thread
    rt.stop_ticker()
