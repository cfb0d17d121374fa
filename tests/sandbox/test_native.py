"""Native wasm strategies (ABI v1, strategies_wasm/ABI.md): the WAT and AssemblyScript SMA
crossovers against the JS example, loading checks, limits, invalid outputs, batches."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tracemalloc
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from sandbox_helpers import MIN, candle, candles

from tradebotd.examples.reference import SmaCrossover
from tradebotd.examples.synthetic import synthetic_candles
from tradebotd.model import Decision, Position
from tradebotd.sandbox import (
    InvalidResult,
    JsStrategy,
    SandboxLimits,
    SandboxTrap,
    StrategyLoadError,
    StrategyMemoryError,
    StrategyTimeout,
    WasmRuntime,
)
from tradebotd.sandbox.native import WasmStrategy, load_wasm_source

ROOT = Path(__file__).resolve().parents[2]
WAT = ROOT / "strategies_wasm" / "sma_cross.wat"
AS_DIR = ROOT / "strategies_wasm" / "assemblyscript"
AS_WASM = AS_DIR / "sma_cross.wasm"
JS = ROOT / "tradebotd" / "examples" / "sma_crossover.js"
PARAMETERS = {"fast": 5, "slow": 20, "amount": 0.25}

MakeNative = Callable[..., WasmStrategy]


@pytest.fixture
def native(runtime: WasmRuntime, request: pytest.FixtureRequest) -> Iterator[MakeNative]:
    made: list[WasmStrategy] = []

    def factory(
        wasm: bytes | str,
        *,
        parameters: dict[str, object] | None = None,
        limits: SandboxLimits = SandboxLimits(),  # noqa: B008
    ) -> WasmStrategy:
        rt = request.getfixturevalue("fuel_runtime") if limits.fuel is not None else runtime
        strategy = WasmStrategy(wasm, parameters=parameters or {}, interval_ms=MIN, limits=limits, runtime=rt)
        made.append(strategy)
        return strategy

    yield factory
    for strategy in made:
        strategy.close()


def sma_modules() -> list[object]:
    return [
        pytest.param(WAT.read_text(), id="wat"),
        pytest.param(AS_WASM.read_bytes(), id="assemblyscript"),
    ]


def long_at(row: npt.NDArray[np.float64], amount: float) -> Position:
    return Position(amount=Decimal(repr(amount)), entry_price=Decimal(repr(float(row[4]))), entry_time=int(row[0]))


def same_decision(native: Decision, js: Decision) -> bool:
    """Equal but for the JS warm-up reason, which counts candles (a native reason is a fixed text)."""
    if native.reason == "warming up" and js.reason is not None and js.reason.startswith("warming up"):
        native = Decision(native.signal, native.amount, js.reason, native.indicators, native.take_profit,
                          native.stop_loss)
    return native == js


# ---------------------------------------------------------------------------- the SMA crossover


@pytest.mark.parametrize("module", sma_modules())
def test_sma_crossover_decides_like_the_js_example_step_by_step(
    module: bytes | str, native: MakeNative, runtime: WasmRuntime
) -> None:
    series = synthetic_candles(600, seed=3)
    wasm = native(module, parameters=PARAMETERS)
    js = JsStrategy(JS.read_text(), parameters=PARAMETERS, interval_ms=MIN, runtime=runtime)
    position: Position | None = None
    signals = []
    for row in series:
        values = tuple(float(x) for x in row)
        ours, info = wasm.step(values, position)  # type: ignore[arg-type]
        theirs, _ = js.step(values, position)  # type: ignore[arg-type]
        assert same_decision(ours, theirs), (row, ours, theirs)
        assert info.elapsed_us > 0 and not info.rebuilt
        if ours.signal != "hold":
            signals.append(ours.signal)
            position = long_at(row, 0.25) if ours.signal == "buy" else None
    js.close()
    assert signals.count("buy") >= 2 and signals.count("sell") >= 2
    assert signals[:4] == ["buy", "sell", "buy", "sell"]  # the position reached the strategy


@pytest.mark.parametrize("module", sma_modules())
def test_run_until_signal_finds_the_js_example_signals(
    module: bytes | str, native: MakeNative, runtime: WasmRuntime
) -> None:
    series = synthetic_candles(2_000, seed=5)
    batch = native(module, parameters=PARAMETERS)
    js = JsStrategy(JS.read_text(), parameters=PARAMETERS, interval_ms=MIN, runtime=runtime)
    expected: list[tuple[int, Decision]] = []
    position: Position | None = None
    for i, row in enumerate(series):
        decision, _ = js.step(tuple(float(x) for x in row), position)  # type: ignore[arg-type]
        if decision.signal != "hold":
            expected.append((i, decision))
            position = long_at(row, 0.25) if decision.signal == "buy" else None
    js.close()
    got: list[tuple[int, Decision]] = []
    done, position = 0, None
    while done < len(series):
        consumed, decision = batch.run_until_signal(series[done:done + 300], position)
        done += consumed
        if decision is not None:
            got.append((done - 1, decision))
            position = long_at(series[done - 1], 0.25) if decision.signal == "buy" else None
    assert got == expected
    assert len(expected) >= 4
    assert batch.history_length == 1000  # max_candles


def test_the_committed_assemblyscript_build_matches_its_source(tmp_path: Path) -> None:
    if shutil.which("npx") is None:
        pytest.skip("npx is not installed: cannot rebuild strategies_wasm/assemblyscript/sma_cross.wasm")
    if not (AS_DIR / "node_modules" / "assemblyscript").is_dir():
        pytest.skip("the AssemblyScript compiler is not installed: run `make -C strategies_wasm assemblyscript`")
    out = tmp_path / "sma_cross.wasm"
    subprocess.run(
        ["npx", "--no-install", "asc", "sma_cross.ts", "-O3", "--runtime", "incremental", "--noAssert", "-o", str(out)],
        cwd=AS_DIR, check=True, capture_output=True, timeout=300,
    )
    assert out.read_bytes() == AS_WASM.read_bytes(), "rebuild it: make -C strategies_wasm assemblyscript"


# ---------------------------------------------------------------------------- parameters


def test_parameters_are_set_by_name_and_default_to_the_module_globals(native: MakeNative) -> None:
    strategy = native(WAT.read_text(), parameters={"slow": 8, "amount": 2})
    assert strategy.parameters == {"fast": 5.0, "slow": 8.0, "amount": 2.0}
    assert strategy.lookback == 9
    assert strategy.indicator_names == ("fastSma", "slowSma")
    # Falling then rising closes: the first possible decision after the warm-up is a buy of 2.
    closes = [100.0 - i for i in range(9)] + [200.0]
    decisions = [strategy.step(candle(i, close), None)[0] for i, close in enumerate(closes)]
    assert [d.signal for d in decisions] == ["hold"] * 9 + ["buy"]
    assert decisions[0] == Decision(signal="hold", reason="warming up")
    assert decisions[-1].amount == 2.0
    assert decisions[-1].reason == "fast SMA crossed above slow SMA"


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"fsat": 3}, "unknown parameter(s) fsat; this module's parameters are: fast, slow, amount"),
        ({"fast": "5"}, "parameter fast must be a finite number (or a boolean), got '5'"),
        ({"amount": float("nan")}, "parameter amount must be a finite number (or a boolean), got nan"),
        ({"fast": 30}, "fast and slow must be whole numbers with 1 <= fast < slow <= 100000"),  # tb_init
        ({"amount": 0}, "amount must be a positive number"),
    ],
)
def test_bad_parameters_fail_the_load(parameters: dict[str, object], message: str, native: MakeNative) -> None:
    with pytest.raises(StrategyLoadError) as err:
        native(WAT.read_text(), parameters=parameters)
    assert err.value.name == "BadParameters"
    assert err.value.message == message


def test_a_lookback_beyond_max_candles_fails_the_load(native: MakeNative) -> None:
    with pytest.raises(StrategyLoadError, match="needs 51 candles of history; max_candles is 40") as err:
        native(WAT.read_text(), parameters={"slow": 50}, limits=SandboxLimits(max_candles=40))
    assert err.value.name == "BadParameters"


# ---------------------------------------------------------------------------- a probe module

# Reports what it sees as indicators: the candle count, the sum of the visible closes and the
# position slots. Misbehaves when the newest close asks it to (see the constants below).
SPIN, GROW, GROW_THEN_TRAP, UNREACHABLE, CODE_7, NAN_AMOUNT, INF_INDICATOR, ABORT = (
    666.0, 777.0, 778.0, 9.0, 7.0, 8.0, 10.0, 11.0
)
BUY_FROM = 1000.0  # closes at or above: buy 1
PROBE = r"""
(module
  (import "env" "abort" (func $abort (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 16)
    "{\"indicators\": [\"n\", \"sum\", \"held\", \"amount\", \"entryPrice\", \"entryTime\"],"
    " \"reasons\": [\"probe\"]}\00")
  ;; "boom" as AssemblyScript passes strings: UTF-16LE, byte length in the 4 bytes before it.
  (data (i32.const 508) "\08\00\00\00b\00o\00o\00m\00")
  (func (export "tb_abi_version") (result i32) (i32.const 1))
  (func (export "tb_meta") (result i32) (i32.const 16))
  (func (export "tb_alloc") (param $bytes i32) (result i32)
    (i32.shl (memory.grow (i32.shr_u (i32.add (local.get $bytes) (i32.const 65535)) (i32.const 16)))
             (i32.const 16)))
  (func (export "tb_evaluate")
      (param $n i32) (param $time i32) (param $open i32) (param $high i32) (param $low i32)
      (param $close i32) (param $volume i32) (param $position i32) (param $out i32) (result i32)
    (local $c f64) (local $i i32) (local $sum f64)
    (local.set $c
      (f64.load (i32.add (local.get $close) (i32.shl (i32.sub (local.get $n) (i32.const 1)) (i32.const 3)))))
    (if (f64.eq (local.get $c) (f64.const 666)) (then (loop $forever (br $forever))))
    (if (i32.or (f64.eq (local.get $c) (f64.const 777)) (f64.eq (local.get $c) (f64.const 778)))
      (then (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))))
    (if (f64.eq (local.get $c) (f64.const 778)) (then unreachable))
    (if (f64.eq (local.get $c) (f64.const 9)) (then unreachable))
    (if (f64.eq (local.get $c) (f64.const 11))
      (then (call $abort (i32.const 512) (i32.const 0) (i32.const 3) (i32.const 4))))
    (if (f64.eq (local.get $c) (f64.const 7)) (then (return (i32.const 7))))
    (if (f64.eq (local.get $c) (f64.const 8)) (then (f64.store (local.get $out) (f64.const nan))))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $sum (f64.add (local.get $sum)
        (f64.load (i32.add (local.get $close) (i32.shl (local.get $i) (i32.const 3))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (f64.store offset=32 (local.get $out) (f64.const 6))
    (f64.store offset=40 (local.get $out) (f64.convert_i32_s (local.get $n)))
    (f64.store offset=48 (local.get $out) (local.get $sum))
    (f64.store offset=56 (local.get $out) (f64.load (local.get $position)))
    (f64.store offset=64 (local.get $out) (f64.load offset=8 (local.get $position)))
    (f64.store offset=72 (local.get $out) (f64.load offset=16 (local.get $position)))
    (f64.store offset=80 (local.get $out) (f64.load offset=24 (local.get $position)))
    (if (f64.eq (local.get $c) (f64.const 10)) (then (f64.store offset=48 (local.get $out) (f64.const inf))))
    (if (f64.ge (local.get $c) (f64.const 1000))
      (then (f64.store (local.get $out) (f64.const 1)) (f64.store offset=24 (local.get $out) (f64.const 1))
            (return (i32.const 1))))
    (i32.const 0))
)
"""


def seen(decision: Decision) -> tuple[float, float]:
    """(candles visible, sum of their closes) as the probe reports them."""
    assert decision.indicators is not None
    return float(decision.indicators["n"]), float(decision.indicators["sum"])  # type: ignore[arg-type]


def test_the_position_reaches_the_strategy(native: MakeNative) -> None:
    probe = native(PROBE)
    flat, _ = probe.step(candle(0), None)
    position = Position(amount=Decimal("1.5"), entry_price=Decimal("101.25"), entry_time=42 * MIN)
    held, _ = probe.step(candle(1), position)
    assert flat.indicators is not None and held.indicators is not None
    keys = ("held", "amount", "entryPrice", "entryTime")
    assert [flat.indicators[k] for k in keys] == [0.0, 0.0, 0.0, 0.0]
    assert [held.indicators[k] for k in keys] == [1.0, 1.5, 101.25, 42.0 * MIN]


def test_push_history_feeds_the_columns_and_keeps_max_candles(native: MakeNative) -> None:
    probe = native(PROBE, limits=SandboxLimits(max_candles=300))
    series = candles(0, 1_000)  # closes 100..1099: the newest 300 are 800..1099 ...
    series[:, 4] = np.arange(1_000) % 500  # ... but keep them below BUY_FROM: 0..499
    probe.push_history(series)
    decision, _ = probe.step(candle(1_000, 0.0), None)
    window = [*series[-299:, 4], 0.0]
    assert seen(decision) == (300, sum(window))
    assert probe.history_length == 300


def test_the_window_slides_over_max_candles_across_buffer_shifts(native: MakeNative) -> None:
    # max_candles 50: the driver's columns hold 178 rows and move the newest 49 to the front
    # every 129 candles; each evaluation must still see exactly the newest 50, in order.
    probe = native(PROBE, limits=SandboxLimits(max_candles=50))
    closes = [0.5 + i for i in range(400)]  # never one of the probe's special values
    for i, close in enumerate(closes):
        decision, _ = probe.step(candle(i, close), None)
        window = closes[max(0, i - 49):i + 1]
        assert seen(decision) == (len(window), sum(window)), i


# ---------------------------------------------------------------------------- loading


def module(evaluate: str = "(i32.const 0)", *, version: int = 1, extra: str = "") -> str:
    return f"""(module
      (memory (export "memory") 4)
      (func (export "tb_abi_version") (result i32) (i32.const {version}))
      (func (export "tb_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "tb_evaluate") (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32) {evaluate})
      {extra})"""


@pytest.mark.parametrize(
    ("wasm", "name", "message"),
    [
        (module(version=2), "AbiMismatch",
         "the module implements native ABI version 2; this tradebotd supports version 1"),
        ('(module (memory (export "memory") 1) (func (export "tb_abi_version") (result i32) (i32.const 1)))',
         "MissingExport", "the module does not export tb_alloc (ABI v1)"),
        (module().replace('"tb_evaluate"', '"evaluate"'), "MissingExport",
         "the module does not export tb_evaluate (ABI v1)"),
        (module().replace('(memory (export "memory") 4)', "(memory 4)"), "MissingExport",
         "the module does not export its memory as 'memory'"),
        (module(extra='(func (export "tb_init") (param i32) (result i32) (i32.const 0))'), "BadExport",
         "tb_init must be a function () -> (i32)"),
        (module().replace("(module", '(module (import "wasi_snapshot_preview1" "fd_write" '
                                     "(func (param i32 i32 i32 i32) (result i32)))"),
         "ForbiddenImport", "the module imports wasi_snapshot_preview1.fd_write; a native strategy may import "
                            "only env.abort (AssemblyScript) and has no WASI"),
        (module().replace("(module", '(module (import "env" "abort" (func (param i32)))'), "ForbiddenImport",
         "env.abort must be a function (i32, i32, i32, i32) -> ()"),
        (module(extra='(func (export "tb_meta") (result i32) (i32.const 2048)) '
                      '(data (i32.const 2048) "{\\"indicator\\": []}\\00")'),
         "BadMetadata", 'tb_meta must be a JSON object with only "indicators" and "reasons"'),
        (module(extra='(func (export "tb_init") (result i32) (i32.const 3))'), "BadParameters",
         "tb_init rejected the parameters (status 3)"),
        (module().replace("(i32.const 1024))", "(i32.const 1028))"), "BadExport",
         "returned 1028: not an 8-aligned block inside memory"),
        ("(module (func $f (result i32)))", "CompileError", None),
    ],
    ids=["version", "no-alloc", "no-evaluate", "no-memory", "init-signature", "wasi", "abort-signature",
         "meta-keys", "init-status", "misaligned-block", "invalid"],
)
def test_modules_that_break_the_abi_fail_to_load_with_a_clear_error(
    wasm: str, name: str, message: str | None, native: MakeNative
) -> None:
    with pytest.raises(StrategyLoadError) as err:
        native(wasm)
    assert err.value.name == name
    if message is not None:
        assert message in err.value.message


def test_a_module_that_traps_or_loops_while_loading_fails_to_load(native: MakeNative) -> None:
    with pytest.raises(StrategyLoadError) as err:
        native(module(extra="(func $start unreachable) (start $start)"))
    assert err.value.name == "SandboxTrap"
    assert err.value.message == "the module failed while loading: wasm `unreachable` instruction executed"
    with pytest.raises(StrategyLoadError, match="loading ran longer than 30 ms") as err:
        native(module(extra="(func $start (loop $l (br $l))) (start $start)"),
               limits=SandboxLimits(load_timeout_ms=30))
    assert err.value.name == "Timeout"


def test_no_room_for_the_candle_buffer_fails_to_load(native: MakeNative) -> None:
    with pytest.raises(StrategyLoadError, match="no room for the candle buffer") as err:
        native(WAT.read_text(), limits=SandboxLimits(memory_bytes=1 << 20, max_candles=100_000))
    assert err.value.name == "OutOfMemory"


def test_load_wasm_source_accepts_wat_base64_and_paths(tmp_path: Path) -> None:
    wat = WAT.read_text()
    assert load_wasm_source(wat, None) == wat  # starts with ;; comments, then (module
    binary = AS_WASM.read_bytes()
    assert load_wasm_source(base64.b64encode(binary).decode(), None) == binary
    assert load_wasm_source(base64.encodebytes(binary).decode(), None) == binary  # line-wrapped
    (tmp_path / "s.wasm").write_bytes(binary)
    (tmp_path / "s.wat").write_text(wat)
    assert load_wasm_source("file:s.wasm", tmp_path) == binary
    assert load_wasm_source(f"file:{tmp_path / 's.wat'}", None) == wat
    assert load_wasm_source("s.wat", tmp_path) == wat
    with pytest.raises(StrategyLoadError) as err:
        load_wasm_source("file:missing.wasm", tmp_path)
    assert err.value.name == "SourceNotFound"
    with pytest.raises(StrategyLoadError) as err:
        load_wasm_source("function tradingStrategy() {}", None)
    assert err.value.name == "BadSource"
    with pytest.raises(StrategyLoadError) as err:
        load_wasm_source(base64.b64encode(b"not wasm").decode(), None)
    assert err.value.name == "BadSource"


# ---------------------------------------------------------------------------- limits and traps


def test_an_infinite_loop_times_out_and_the_next_call_has_the_whole_history(native: MakeNative) -> None:
    probe = native(PROBE, limits=SandboxLimits(timeout_ms=30))
    probe.step(candle(0, 1.0), None)
    with pytest.raises(StrategyTimeout) as err:
        probe.step(candle(1, SPIN), None)
    assert err.value.trapped and err.value.consumed == 1
    assert str(err.value) == "the strategy ran past its 30 ms deadline"
    decision, info = probe.step(candle(2, 2.0), None)
    assert info.rebuilt
    assert seen(decision) == (3, 1.0 + SPIN + 2.0)  # the failed candle is part of the history


def test_running_out_of_fuel_is_a_timeout(native: MakeNative) -> None:
    probe = native(PROBE, limits=SandboxLimits(fuel=1_000_000, timeout_ms=10_000))
    with pytest.raises(StrategyTimeout, match="ran out of fuel") as err:
        probe.step(candle(0, SPIN), None)
    assert err.value.trapped
    assert seen(probe.step(candle(1, 1.0), None)[0]) == (2, SPIN + 1.0)


@pytest.mark.parametrize("close", [GROW, GROW_THEN_TRAP], ids=["grow-until-refused", "grow-then-trap"])
def test_a_memory_bomb_is_a_memory_error_and_the_instance_is_rebuilt(close: float, native: MakeNative) -> None:
    probe = native(PROBE, limits=SandboxLimits(memory_bytes=4 << 20, timeout_ms=5_000))
    probe.step(candle(0, 1.0), None)
    with pytest.raises(StrategyMemoryError, match="reached its 8 MiB memory cap") as err:
        probe.step(candle(1, close), None)
    assert err.value.consumed == 1
    decision, info = probe.step(candle(2, 2.0), None)
    assert info.rebuilt and seen(decision) == (3, 1.0 + close + 2.0)
    assert probe.memory_bytes < 1 << 20


def test_a_trap_is_a_sandbox_trap_and_the_instance_is_rebuilt(native: MakeNative) -> None:
    probe = native(PROBE)
    with pytest.raises(SandboxTrap) as err:
        probe.step(candle(0, UNREACHABLE), None)
    assert str(err.value) == "the strategy trapped: wasm `unreachable` instruction executed"
    assert err.value.trap_code == "UNREACHABLE"
    decision, info = probe.step(candle(1, 1.0), None)
    assert info.rebuilt and seen(decision) == (2, UNREACHABLE + 1.0)


def test_env_abort_is_a_trap_with_the_assemblyscript_message(native: MakeNative) -> None:
    probe = native(PROBE)
    # The probe carries on after abort; the host reports it anyway and rebuilds.
    with pytest.raises(SandboxTrap, match=r"^the strategy aborted: boom$"):
        probe.step(candle(0, ABORT), None)
    assert probe.step(candle(1, 1.0), None)[1].rebuilt


@pytest.mark.parametrize(
    ("close", "message"),
    [
        (CODE_7, "invalid strategy result: signal code 7 (expected 0 hold, 1 buy, 2 sell)"),
        (NAN_AMOUNT, "invalid strategy result: amount: must be 0 (none) or positive and finite, got nan"),
        (INF_INDICATOR, "invalid strategy result: indicators.sum: must be finite, got inf"),
    ],
)
def test_invalid_outputs_are_invalid_results_and_the_instance_is_kept(
    close: float, message: str, native: MakeNative
) -> None:
    probe = native(PROBE)
    with pytest.raises(InvalidResult) as err:
        probe.step(candle(0, close), None)
    assert str(err.value) == message and err.value.consumed == 1
    decision, info = probe.step(candle(1, 1.0), None)
    assert not info.rebuilt and seen(decision) == (2, close + 1.0)


def test_a_batch_stops_at_an_invalid_hold_like_step_would(native: MakeNative) -> None:
    probe = native(PROBE)
    series = candles(0, 50, close=1.0)
    series[:, 4] = 1.0
    series[30, 4] = NAN_AMOUNT
    with pytest.raises(InvalidResult, match="amount") as err:
        probe.run_until_signal(series, None)
    assert err.value.consumed == 31
    assert probe.history_length == 31
    assert probe.run_until_signal(series[31:], None) == (19, None)


def test_a_trap_mid_batch_reports_the_candles_consumed(native: MakeNative) -> None:
    probe = native(PROBE)
    series = candles(0, 400, close=1.0)
    series[:, 4] = 1.0
    series[200, 4] = UNREACHABLE  # in the second 128-candle call
    with pytest.raises(SandboxTrap) as err:
        probe.run_until_signal(series, None)
    assert err.value.consumed == 201
    consumed, decision = probe.run_until_signal(series[201:], None)
    assert (consumed, decision) == (199, None)
    assert probe.history_length == 400
    decision, _ = probe.step(candle(400, 1.0), None)
    assert seen(decision) == (401, 399 * 1.0 + UNREACHABLE + 1.0)


def test_a_buy_in_a_batch_returns_its_decision(native: MakeNative) -> None:
    probe = native(PROBE)
    series = candles(0, 100, close=1.0)
    series[:, 4] = 1.0
    series[70, 4] = BUY_FROM
    consumed, decision = probe.run_until_signal(series, None)
    assert consumed == 71
    assert decision is not None and (decision.signal, decision.amount, decision.reason) == ("buy", 1.0, "probe")
    assert probe.run_until_signal(series[71:], None) == (29, None)


# ---------------------------------------------------------------------------- whole arrays


def test_large_arrays_go_through_without_a_python_object_per_candle(native: MakeNative) -> None:
    """60,000 candles through push_history and run_until_signal: the decisions are those of a
    plain-Python SMA crossover, and Python allocates far less than one object per candle would
    take (a 6-tuple of floats is ≈240 bytes: 14 MB here)."""
    series = synthetic_candles(61_000, seed=11)
    warm, rest = series[:1_000], series[1_000:]
    reference = SmaCrossover(fast=5, slow=20, amount=0.25, max_candles=1_000)
    for row in warm:
        reference.step(tuple(float(x) for x in row), None)  # type: ignore[arg-type]
    expected: list[tuple[int, str]] = []
    position: Position | None = None
    for i, row in enumerate(rest):
        decision, _ = reference.step(tuple(float(x) for x in row), position)  # type: ignore[arg-type]
        if decision.signal != "hold":
            expected.append((i, decision.signal))
            position = long_at(row, 0.25) if decision.signal == "buy" else None

    strategy = native(WAT.read_text(), parameters=PARAMETERS)
    got: list[tuple[int, str]] = []
    tracemalloc.start()
    try:
        strategy.push_history(warm)
        done, position = 0, None
        while done < len(rest):
            consumed, found = strategy.run_until_signal(rest[done:done + 20_000], position)
            done += consumed
            if found is not None:
                got.append((done - 1, found.signal))
                position = long_at(rest[done - 1], 0.25) if found.signal == "buy" else None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == expected and len(got) > 1_000
    assert peak < 2 << 20, f"Python allocated up to {peak} bytes"
