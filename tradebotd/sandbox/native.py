"""Native WebAssembly strategies (hand-written WAT, AssemblyScript, anything that targets core
wasm) behind the same interface as :class:`tradebotd.sandbox.js.JsStrategy`.

The contract with the module is ``strategies_wasm/ABI.md`` (version :data:`ABI_VERSION`). In
short: the module exports ``memory``, ``tb_abi_version``, ``tb_alloc`` and ``tb_evaluate``
(optionally ``tb_meta``, ``tb_init``, ``tb_lookback``); its parameters are its exported mutable
f64 globals; it may import nothing but AssemblyScript's ``env.abort``. ``tb_evaluate`` sees the
history as six f64 columns (time, open, high, low, close, volume) of ``n`` candles, oldest first.

How a call runs: the host owns the history layout. At load the module allocates one block for
the host (``tb_alloc``); the host writes candles there, row-major as its own arrays are, with one
copy per call (a ``struct.pack_into`` for ``step``, a numpy view for batches: no Python object per
candle). A small driver module of ours, instantiated in the same Store, appends them to the
columns (shifting the newest ``max_candles`` to the front when the buffer fills), zeroes the
output slots, calls ``tb_evaluate`` for each candle and stops at the first non-hold or invalid
output. So ``step`` and ``run_until_signal`` run the very same code path, and a strategy author
writes one pure function per evaluation.

Limits (:class:`SandboxLimits`): the epoch deadline is the only stop there is for native code, so
it is ``timeout_ms`` itself (``epoch_backstop_ms`` does not apply); a batch call gets
``timeout_ms`` per candle in it, at most :data:`RUN_CHUNK` candles per call. Linear memory is
capped at ``2 * memory_bytes``, like a JS strategy's. ``fuel`` works as for JS. The Engine and
the epoch thread are the JS sandbox's (:class:`WasmRuntime`), so one thread serves all stores.

Failure policy: a trap (deadline, fuel, out-of-bounds, ``env.abort``, ...) or linear memory at
its cap discards the instance; the next call rebuilds it from the compiled module and re-sends
the history the host keeps. An invalid output keeps the instance.

Errors (the tree is in ``errors.py``)::

    StrategyLoadError       the module did not load; ``name`` says which check failed:
                            CompileError, ForbiddenImport, MissingExport, BadExport,
                            AbiMismatch, BadMetadata, BadParameters, OutOfMemory, Timeout,
                            SandboxTrap, SourceTooLarge (and from load_wasm_source:
                            BadSource, SourceNotFound)
    StrategyEvalError       one call failed; ``consumed`` counts the candles it appended,
    │                       the failing one included
    ├── StrategyTimeout         past the deadline, or out of fuel (always ``trapped``)
    ├── StrategyMemoryError     linear memory reached its cap (or trapped next to it)
    ├── InvalidResult           unknown signal code, NaN amount, non-finite indicator, ...
    └── SandboxTrap             any other trap, or ``env.abort``; ``trap_code``
    SandboxUnavailable      this process cannot run wasm (see ``wasm.py``)

Bad input from the caller (candles of the wrong shape or not finite) raises ``ValueError``;
using a closed strategy, or one strategy from two threads at once, ``RuntimeError``.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import hashlib
import math
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
import wasmtime

from tradebotd.model import Decision, IndicatorValue, Position, Signal
from tradebotd.sandbox.errors import (
    InvalidResult,
    SandboxTrap,
    StrategyEvalError,
    StrategyLoadError,
    StrategyMemoryError,
    StrategyTimeout,
)
from tradebotd.sandbox.history import History
from tradebotd.sandbox.js import EvalInfo, SandboxLimits
from tradebotd.sandbox.result import MAX_REASON_CHARS
from tradebotd.sandbox.wasm import RawI32Call, RawStore, WasmRuntime, check_thread_stack

__all__ = ["ABI_VERSION", "RUN_CHUNK", "WasmStrategy", "load_wasm_source"]

ABI_VERSION = 1
RUN_CHUNK = 128
"""Candles per wasm call in ``push_history``/``run_until_signal`` (the host's staging rows).
A batch call's deadline is ``timeout_ms`` per candle, so this bounds how long a runaway
strategy runs in a backtest (6.4 s at the default 50 ms) while keeping the per-call cost
(≈3 µs) at ≈25 ns per candle."""

MAX_INDICATORS = 64
MAX_REASONS = 1000
MAX_NAME_CHARS = 100
MAX_META_BYTES = 64 << 10
_PAGE = 65536
# What a call into wasm raises besides Python errors (a Trap is not a WasmtimeError).
_WasmError = wasmtime.Trap | wasmtime.WasmtimeError
_WASM_ERRORS = (wasmtime.Trap, wasmtime.WasmtimeError)
_FUEL_PER_CANDLE = 10_000  # the driver appends a candle for ≈90 fuel; a wide margin
_LOAD_FUEL = 1_000_000_000  # loading is bounded by load_timeout_ms; fuel must merely not run out

Candle = tuple[float, float, float, float, float, float]

# ----------------------------------------------------------------------------- sources


def load_wasm_source(code: str, base_dir: Path | None = None) -> bytes | str:
    """A strategy row's ``typescript_code`` for kind ``wasm`` as :class:`WasmStrategy` takes it:
    WAT text (first token ``(module``) as is, a ``file:`` or plain path to a ``.wasm``/``.wat``
    file (relative to ``base_dir``) read from disk, or base64 of a binary module decoded."""
    if _is_wat(code):
        return code
    stripped = code.strip()
    path_text = stripped.removeprefix("file:")
    if path_text != stripped or ("\n" not in stripped and stripped.endswith((".wasm", ".wat"))):
        path = Path(path_text).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if path.suffix not in (".wasm", ".wat"):
            raise StrategyLoadError(f"{path} is neither a .wasm nor a .wat file", name="BadSource")
        try:
            return path.read_text(encoding="utf-8") if path.suffix == ".wat" else path.read_bytes()
        except (OSError, UnicodeDecodeError) as exc:
            raise StrategyLoadError(f"cannot read {path}: {exc}", name="SourceNotFound") from None
    try:
        wasm = base64.b64decode("".join(stripped.split()), validate=True)
    except (binascii.Error, ValueError):
        wasm = b""
    if not wasm.startswith(b"\0asm"):
        raise StrategyLoadError(
            "the code is neither WAT text, a path to a .wasm/.wat file, nor base64 of a wasm module",
            name="BadSource",
        )
    return wasm


def _is_wat(code: str) -> bool:
    """True if the first token after whitespace and ``;;`` line comments is ``(module``."""
    for line in code.splitlines():
        text = line.strip()
        if text and not text.startswith(";;"):
            return text.startswith("(module")
    return False


# ----------------------------------------------------------------------------- the module's interface

# Exports every module must have, with their signatures (parameter types, result types).
_REQUIRED = {
    "tb_abi_version": ((), ("i32",)),
    "tb_alloc": (("i32",), ("i32",)),
    "tb_evaluate": (("i32",) * 9, ("i32",)),
}
_OPTIONAL = {
    "tb_meta": ((), ("i32",)),
    "tb_init": ((), ("i32",)),
    "tb_lookback": ((), ("i32",)),
}
_ABORT = ("env", "abort")  # AssemblyScript's abort(message, file, line, column)


@dataclass(frozen=True, slots=True)
class _Interface:
    """What a compiled module offers, checked once at load."""

    imports_abort: bool
    optional: frozenset[str]  # the optional exports present
    parameters: tuple[str, ...]  # exported mutable f64 globals, in export order


def _inspect(module: wasmtime.Module) -> _Interface:
    forbidden = [f"{imp.module}.{imp.name}" for imp in module.imports if (imp.module, imp.name) != _ABORT]
    if forbidden:
        raise StrategyLoadError(
            f"the module imports {', '.join(forbidden)}; a native strategy may import only env.abort "
            "(AssemblyScript) and has no WASI",
            name="ForbiddenImport",
        )
    imports_abort = False
    for imp in module.imports:
        if not isinstance(imp.type, wasmtime.FuncType) or _signature(imp.type) != (("i32",) * 4, ()):
            raise StrategyLoadError("env.abort must be a function (i32, i32, i32, i32) -> ()", name="ForbiddenImport")
        imports_abort = True

    exports = {exp.name: exp.type for exp in module.exports}
    memory = exports.get("memory")
    if not isinstance(memory, wasmtime.MemoryType):
        raise StrategyLoadError("the module does not export its memory as 'memory'", name="MissingExport")
    if memory.is_64 or memory.is_shared or memory.page_size != _PAGE:
        raise StrategyLoadError("'memory' must be a 32-bit, unshared memory of 64 KiB pages", name="BadExport")
    for name in _REQUIRED:
        if name not in exports:
            raise StrategyLoadError(f"the module does not export {name} (ABI v{ABI_VERSION})", name="MissingExport")
    for name, signature in (_REQUIRED | _OPTIONAL).items():
        ty = exports.get(name)
        if ty is not None and (not isinstance(ty, wasmtime.FuncType) or _signature(ty) != signature):
            params, results = signature
            raise StrategyLoadError(
                f"{name} must be a function ({', '.join(params)}) -> ({', '.join(results)})", name="BadExport"
            )
    parameters = tuple(
        name for name, ty in exports.items()
        if isinstance(ty, wasmtime.GlobalType) and ty.mutable and str(ty.content) == "f64"
    )
    return _Interface(imports_abort, frozenset(name for name in _OPTIONAL if name in exports), parameters)


def _signature(ty: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)


@dataclass(frozen=True, slots=True)
class _Meta:
    indicators: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()


def _parse_meta(raw: bytes) -> _Meta:
    """``tb_meta``'s JSON: ``{"indicators": [names], "reasons": [texts]}``, both optional."""
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StrategyLoadError(f"tb_meta is not valid JSON: {exc}", name="BadMetadata") from None
    if not isinstance(meta, dict) or set(meta) - {"indicators", "reasons"}:
        raise StrategyLoadError(
            'tb_meta must be a JSON object with only "indicators" and "reasons"', name="BadMetadata"
        )
    indicators = meta.get("indicators", [])
    reasons = meta.get("reasons", [])
    if (
        not isinstance(indicators, list) or len(indicators) > MAX_INDICATORS
        or not all(isinstance(x, str) and 0 < len(x) <= MAX_NAME_CHARS for x in indicators)
        or len(set(indicators)) != len(indicators)
    ):
        raise StrategyLoadError(
            f'"indicators" must be at most {MAX_INDICATORS} distinct non-empty names of at most '
            f"{MAX_NAME_CHARS} characters", name="BadMetadata",
        )
    if (
        not isinstance(reasons, list) or len(reasons) > MAX_REASONS
        or not all(isinstance(x, str) and 0 < len(x) <= MAX_REASON_CHARS for x in reasons)
    ):
        raise StrategyLoadError(
            f'"reasons" must be at most {MAX_REASONS} non-empty texts of at most {MAX_REASON_CHARS} characters',
            name="BadMetadata",
        )
    return _Meta(tuple(indicators), tuple(reasons))


def _parameter_values(given: Mapping[str, object], accepted: tuple[str, ...]) -> dict[str, float]:
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        offered = ", ".join(accepted) or "none"
        raise StrategyLoadError(
            f"unknown parameter(s) {', '.join(unknown)}; this module's parameters are: {offered}",
            name="BadParameters",
        )
    values: dict[str, float] = {}
    for name, value in given.items():
        try:
            number = float(value) if isinstance(value, int | float) else math.nan  # bool is an int
        except OverflowError:  # an int beyond float range
            number = math.nan
        if not math.isfinite(number):
            raise StrategyLoadError(
                f"parameter {name} must be a finite number (or a boolean), got {value!r}", name="BadParameters"
            )
        values[name] = number
    return values


# ----------------------------------------------------------------------------- the driver

# Ours, not the strategy's: instantiated next to it in the same Store, it appends staged candles
# to the columns and calls tb_evaluate. Being wasm, it loops over a batch at wasm speed, and it
# enforces the semantics (fresh outputs per evaluation, history capped at max_candles, stop at
# the first non-hold or invalid output) whatever the strategy does.
_DRIVER_WAT = r"""
(module
  (import "strategy" "memory" (memory 0))
  (import "strategy" "tb_evaluate" (func $evaluate (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (global $position (mut i32) (i32.const 0))  ;; f64[4] written by the host
  (global $stage (mut i32) (i32.const 0))     ;; f64[RUN_CHUNK][6] candles, written by the host
  (global $result (mut i32) (i32.const 0))    ;; f64[2]: signal, stopped; then the strategy's outputs
  (global $out (mut i32) (i32.const 0))       ;; f64[5 + indicators]: the strategy's outputs
  (global $columns (mut i32) (i32.const 0))   ;; f64[6][rows]
  (global $rows (mut i32) (i32.const 0))
  (global $capacity (mut i32) (i32.const 0))  ;; max_candles
  (global $reasons (mut i32) (i32.const 0))
  (global $indicators (mut i32) (i32.const 0))
  (global $filled (mut i32) (i32.const 0))    ;; rows of the columns in use
  ;; Candles appended since instantiation, for the host after a trap. A global of ours, so the
  ;; strategy cannot touch it (it can write anywhere in its memory).
  (global $appended (export "appended") (mut i64) (i64.const 0))

  (func (export "setup") (param $position i32) (param $stage i32) (param $result i32) (param $columns i32)
      (param $rows i32) (param $capacity i32) (param $reasons i32) (param $indicators i32)
    (global.set $position (local.get $position))
    (global.set $stage (local.get $stage))
    (global.set $result (local.get $result))
    (global.set $out (i32.add (local.get $result) (i32.const 16)))
    (global.set $columns (local.get $columns))
    (global.set $rows (local.get $rows))
    (global.set $capacity (local.get $capacity))
    (global.set $reasons (local.get $reasons))
    (global.set $indicators (local.get $indicators))
    (global.set $filled (i32.const 0)))

  ;; Appends staged candle $i; when the columns are full, first moves the newest capacity - 1
  ;; rows of each column to its front (rows >= 2 * capacity, so this is amortised O(1)).
  (func $append (param $i i32)
    (local $column_bytes i32) (local $keep i32) (local $c i32) (local $src i32) (local $dst i32)
    (local.set $column_bytes (i32.shl (global.get $rows) (i32.const 3)))
    (if (i32.eq (global.get $filled) (global.get $rows))
      (then
        (local.set $keep (i32.sub (global.get $capacity) (i32.const 1)))
        (loop $shift
          (local.set $dst (i32.add (global.get $columns) (i32.mul (local.get $c) (local.get $column_bytes))))
          (memory.copy (local.get $dst)
            (i32.add (local.get $dst) (i32.shl (i32.sub (global.get $rows) (local.get $keep)) (i32.const 3)))
            (i32.shl (local.get $keep) (i32.const 3)))
          (local.set $c (i32.add (local.get $c) (i32.const 1)))
          (br_if $shift (i32.lt_u (local.get $c) (i32.const 6))))
        (global.set $filled (local.get $keep))))
    (local.set $src (i32.add (global.get $stage) (i32.mul (local.get $i) (i32.const 48))))
    (local.set $dst (i32.add (global.get $columns) (i32.shl (global.get $filled) (i32.const 3))))
    (f64.store (local.get $dst) (f64.load (local.get $src)))
    (local.set $dst (i32.add (local.get $dst) (local.get $column_bytes)))
    (f64.store (local.get $dst) (f64.load offset=8 (local.get $src)))
    (local.set $dst (i32.add (local.get $dst) (local.get $column_bytes)))
    (f64.store (local.get $dst) (f64.load offset=16 (local.get $src)))
    (local.set $dst (i32.add (local.get $dst) (local.get $column_bytes)))
    (f64.store (local.get $dst) (f64.load offset=24 (local.get $src)))
    (local.set $dst (i32.add (local.get $dst) (local.get $column_bytes)))
    (f64.store (local.get $dst) (f64.load offset=32 (local.get $src)))
    (local.set $dst (i32.add (local.get $dst) (local.get $column_bytes)))
    (f64.store (local.get $dst) (f64.load offset=40 (local.get $src)))
    (global.set $filled (i32.add (global.get $filled) (i32.const 1)))
    (global.set $appended (i64.add (global.get $appended) (i64.const 1))))

  ;; push and run also return the memory size in pages: the host learns whether memory grew
  ;; (and may have moved) without another call into wasmtime.
  (func (export "push") (param $n i32) (result i32 i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (call $append (local.get $i))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $n) (memory.size))

  ;; tb_evaluate on the newest min(filled, capacity) rows, with zeroed outputs.
  (func $evaluate_newest (result i32)
    (local $n i32) (local $first i32) (local $column_bytes i32)
    (local.set $n (select (global.get $filled) (global.get $capacity)
                          (i32.lt_u (global.get $filled) (global.get $capacity))))
    (local.set $column_bytes (i32.shl (global.get $rows) (i32.const 3)))
    (local.set $first (i32.add (global.get $columns)
                               (i32.shl (i32.sub (global.get $filled) (local.get $n)) (i32.const 3))))
    (memory.fill (global.get $out) (i32.const 0)
                 (i32.shl (i32.add (global.get $indicators) (i32.const 5)) (i32.const 3)))
    (call $evaluate
      (local.get $n)
      (local.get $first)
      (i32.add (local.get $first) (local.get $column_bytes))
      (i32.add (local.get $first) (i32.mul (local.get $column_bytes) (i32.const 2)))
      (i32.add (local.get $first) (i32.mul (local.get $column_bytes) (i32.const 3)))
      (i32.add (local.get $first) (i32.mul (local.get $column_bytes) (i32.const 4)))
      (i32.add (local.get $first) (i32.mul (local.get $column_bytes) (i32.const 5)))
      (global.get $position)
      (global.get $out)))

  ;; 0 (none) or positive and finite; NaN fails every comparison.
  (func $optional_positive (param $x f64) (result i32)
    (i32.or (f64.eq (local.get $x) (f64.const 0))
            (i32.and (f64.gt (local.get $x) (f64.const 0)) (f64.lt (local.get $x) (f64.const inf)))))

  (func $whole_up_to (param $x f64) (param $max i32) (result i32)
    (i32.and (f64.eq (local.get $x) (f64.trunc (local.get $x)))
             (i32.and (f64.ge (local.get $x) (f64.const 0))
                      (f64.le (local.get $x) (f64.convert_i32_u (local.get $max))))))

  ;; The host validates every output it reports; this cheap check makes a batch stop at an
  ;; invalid hold too, so run_until_signal fails exactly where step would.
  (func $valid (result i32)
    (local $p i32) (local $end i32) (local $x f64)
    (local.set $p (global.get $out))
    (if (i32.eqz
          (i32.and
            (i32.and (call $optional_positive (f64.load (local.get $p)))
                     (call $optional_positive (f64.load offset=8 (local.get $p))))
            (i32.and (call $optional_positive (f64.load offset=16 (local.get $p)))
                     (i32.and (call $whole_up_to (f64.load offset=24 (local.get $p)) (global.get $reasons))
                              (call $whole_up_to (f64.load offset=32 (local.get $p)) (global.get $indicators))))))
      (then (return (i32.const 0))))
    (local.set $end (i32.add (local.get $p)
                             (i32.shl (i32.trunc_f64_u (f64.load offset=32 (local.get $p))) (i32.const 3))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $x (f64.load offset=40 (local.get $p)))
        (if (f64.ne (f64.sub (local.get $x) (local.get $x)) (f64.const 0)) (then (return (i32.const 0))))
        (local.set $p (i32.add (local.get $p) (i32.const 8)))
        (br $next)))
    (i32.const 1))

  ;; Appends and evaluates staged candles one by one until a non-hold or invalid output.
  ;; Returns the candles consumed (the stopping one included); result: signal, stopped.
  (func (export "run") (param $n i32) (result i32 i32)
    (local $i i32) (local $signal i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (call $append (local.get $i))
        (local.set $signal (call $evaluate_newest))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (if (i32.or (local.get $signal) (i32.eqz (call $valid)))
          (then
            (f64.store (global.get $result) (f64.convert_i32_s (local.get $signal)))
            (f64.store offset=8 (global.get $result) (f64.const 1))
            (return (local.get $i) (memory.size))))
        (br $next)))
    (f64.store (global.get $result) (f64.const 0))
    (f64.store offset=8 (global.get $result) (f64.const 0))
    (local.get $n) (memory.size))
)
"""

_COMPILED_KEPT = 32
_compile_lock = threading.Lock()
_drivers: weakref.WeakKeyDictionary[wasmtime.Engine, wasmtime.Module] = weakref.WeakKeyDictionary()
_compiled: weakref.WeakKeyDictionary[wasmtime.Engine, OrderedDict[bytes, wasmtime.Module]] = weakref.WeakKeyDictionary()


def _driver(engine: wasmtime.Engine) -> wasmtime.Module:
    with _compile_lock:
        module = _drivers.get(engine)
        if module is None:
            module = _drivers[engine] = wasmtime.Module(engine, _DRIVER_WAT)
        return module


def _compile(engine: wasmtime.Engine, wasm: bytes | str) -> wasmtime.Module:
    """The compiled module. The last 32 compiled per engine are kept, so strategies sharing code,
    reloads and backtest sweeps compile it once (2-3 ms for the examples, more for big modules)."""
    key = hashlib.sha256(wasm.encode() if isinstance(wasm, str) else wasm).digest()
    with _compile_lock:
        cache = _compiled.setdefault(engine, OrderedDict())
        module = cache.get(key)
        if module is not None:
            cache.move_to_end(key)
            return module
    try:  # outside the lock: other strategies load meanwhile
        module = wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        raise StrategyLoadError(str(exc).strip(), name="CompileError") from None
    with _compile_lock:
        cache[key] = module
        while len(cache) > _COMPILED_KEPT:
            cache.popitem(last=False)
    return module


# ----------------------------------------------------------------------------- one live instance

_HOST_WRITE = struct.Struct("<4d")  # the position
_STEP_WRITE = struct.Struct("<10d")  # the position and staged candle 0, which follows it
_CANDLE = struct.Struct("<6d")
_OUT_FIXED = 5  # amount, take profit, stop loss, reason, indicator count


@dataclass(frozen=True, slots=True)
class _Layout:
    """The host's block (from ``tb_alloc``), private to host and driver; addresses in linear memory.

    position f64[4] | stage f64[RUN_CHUNK][6] | signal, stopped f64[2] |
    outputs f64[5 + indicators] | columns f64[6][rows]
    """

    position: int
    stage: int
    result: int
    columns: int
    rows: int
    size: int

    @classmethod
    def plan(cls, capacity: int, indicators: int) -> _Layout:
        """Offsets from the block's start. ``rows`` >= 2 * capacity keeps shifting amortised O(1)."""
        stage = 32
        result = stage + RUN_CHUNK * 48
        columns = result + 8 * (2 + _OUT_FIXED + indicators)
        rows = max(2 * capacity, capacity + RUN_CHUNK)
        return cls(0, stage, result, columns, rows, columns + 48 * rows)

    def at(self, block: int) -> _Layout:
        return _Layout(block, block + self.stage, block + self.result, block + self.columns, self.rows, self.size)


class _Guest:
    """A Store with the strategy's instance and, once attached, ours (the driver). Not
    thread-safe; discard it after a trap. The views into linear memory are re-made whenever the
    memory has grown (only then can it move)."""

    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module, interface: _Interface, *,
                 memory_cap: int, epoch_ticks: int, fuel: int | None) -> None:
        self.store = wasmtime.Store(engine)
        self.store.set_limits(memory_size=memory_cap)
        self.memory_cap = memory_cap
        self.aborts: list[tuple[int, int, int, int]] = []
        self.store.set_epoch_deadline(epoch_ticks)  # the start function runs on instantiation
        if fuel is not None:
            self.store.set_fuel(fuel)
        imports: list[wasmtime.Func] = []
        if interface.imports_abort:
            aborts = self.aborts

            def abort(message: int, filename: int, line: int, column: int) -> None:
                # Never raise here: wasmtime-py parks the exception in a process-wide slot that a
                # later, unrelated call would re-raise. AssemblyScript follows every abort call
                # with `unreachable`; for a module that carries on, the host reports it after the call.
                if not aborts:  # the first says why; a module looping over abort must not fill memory
                    aborts.append((message, filename, line, column))

            imports.append(wasmtime.Func(self.store, wasmtime.FuncType([wasmtime.ValType.i32()] * 4, []), abort))
        self.instance = wasmtime.Instance(self.store, module, imports)
        self.exports = self.instance.exports(self.store)
        memory = self.exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self._raw = RawStore(self.store, memory)
        self.at_cap = self.near_cap = False
        self._size = -1
        self._base = 0
        self._layout: _Layout | None = None
        self._run: RawI32Call | None = None
        self._push: RawI32Call | None = None
        self._appended: wasmtime.Global | None = None  # the driver's count
        self._appended_before = 0  # its value before the current call
        self._refresh()

    # -- memory

    def _refresh(self) -> None:
        """Asks wasmtime for the memory size (after a load-time call or a trap)."""
        self._resize(self._raw.memory_size())

    def _resize(self, size: int) -> None:
        if size == self._size:
            return
        self._size = size
        # Not one more page fits: every memory.grow fails (returns -1) from here on.
        self.at_cap = size + _PAGE > self.memory_cap
        # Close enough to the cap that a trap is most likely a refused allocation: runtimes trap
        # when memory.grow fails (AssemblyScript's allocator executes `unreachable`), having
        # asked for as many pages as the allocation needs, which can be many.
        self.near_cap = size > self.memory_cap - max(_PAGE, self.memory_cap // 16)
        self._base = self._raw.memory_address()
        if self._layout is not None:
            self._views(self._layout)

    def _views(self, layout: _Layout) -> None:
        base = self._base
        self._host_write = (ctypes.c_char * _STEP_WRITE.size).from_address(base + layout.position)
        result_size = layout.columns - layout.result
        self._result = (ctypes.c_char * result_size).from_address(base + layout.result)
        self._outputs = struct.Struct(f"<{result_size // 8}d")
        stage = (ctypes.c_double * (RUN_CHUNK * 6)).from_address(base + layout.stage)
        self.stage: npt.NDArray[np.float64] = np.ctypeslib.as_array(stage).reshape(RUN_CHUNK, 6)

    @property
    def memory_bytes(self) -> int:
        return self._size

    def read(self, address: int, size: int) -> bytes:
        """Bytes of linear memory, clamped to it."""
        end = min(address + size, self._size)
        return ctypes.string_at(self._base + address, end - address) if 0 <= address < end else b""

    def read_cstring(self, address: int, limit: int) -> bytes | None:
        data = self.read(address, limit + 1)
        end = data.find(b"\0")
        return None if end < 0 else data[:end]

    def abort_message(self) -> str:
        """The first ``env.abort`` call, decoded as AssemblyScript passes it (UTF-16 strings whose
        byte length precedes them)."""
        message, filename, line, column = self.aborts[0]

        def text(address: int) -> str:
            length = int.from_bytes(self.read(address - 4, 4), "little") if address >= 4 else 0
            return self.read(address, min(length, 2000)).decode("utf-16-le", errors="replace")

        where = f" ({text(filename)}:{line}:{column})" if filename else ""
        return f"aborted: {text(message) or '(no message)'}{where}"

    # -- calls

    def arm(self, epoch_ticks: int, fuel: int | None) -> None:
        self._raw.set_epoch_deadline(epoch_ticks)
        if fuel is not None:
            self.store.set_fuel(fuel)

    def parameter(self, name: str) -> wasmtime.Global:
        parameter = self.exports[name]
        assert isinstance(parameter, wasmtime.Global)
        return parameter

    def call(self, name: str, *args: int) -> int:
        """A load-time call of the strategy's export (the slower, checked path)."""
        try:
            func = self.exports[name]
            assert isinstance(func, wasmtime.Func)
            return int(func(self.store, *args))
        finally:
            self._refresh()

    def attach(self, driver: wasmtime.Module, layout: _Layout, capacity: int, reasons: int, indicators: int) -> None:
        """Instantiates the driver over the strategy's memory and ``tb_evaluate``."""
        instance = wasmtime.Instance(self.store, driver, [self.memory, self.exports["tb_evaluate"]])
        exports = instance.exports(self.store)
        setup, run, push, appended = exports["setup"], exports["run"], exports["push"], exports["appended"]
        assert isinstance(setup, wasmtime.Func) and isinstance(run, wasmtime.Func) and isinstance(push, wasmtime.Func)
        assert isinstance(appended, wasmtime.Global)
        self._appended = appended
        setup(self.store, layout.position, layout.stage, layout.result, layout.columns, layout.rows, capacity,
              reasons, indicators)
        self._run = RawI32Call(self.store, run)
        self._push = RawI32Call(self.store, push)
        self._layout = layout
        self._views(layout)

    def step(self, position: tuple[float, float, float, float], candle: Candle, epoch_ticks: int,
             fuel: int | None) -> tuple[float, ...]:
        """Stages one candle, runs the driver over it and returns the output slots (see
        :meth:`outputs`). One method for the hot path: every Python call costs ≈0.1 µs here."""
        assert self._run is not None
        _STEP_WRITE.pack_into(self._host_write, 0, *position, *candle)
        self._raw.set_epoch_deadline(epoch_ticks)
        if fuel is not None:
            self.store.set_fuel(fuel)
        self._call(self._run, 1)
        return self._outputs.unpack_from(self._result)

    def write_position(self, position: tuple[float, float, float, float]) -> None:
        _HOST_WRITE.pack_into(self._host_write, 0, *position)

    def run(self, n: int) -> int:
        """The driver's ``run`` over the first ``n`` staged candles. Raises on a trap."""
        assert self._run is not None
        return self._call(self._run, n)

    def push(self, n: int) -> int:
        assert self._push is not None
        return self._call(self._push, n)

    def _call(self, entry: RawI32Call, n: int) -> int:
        """Calls a driver entry point; its second result is the memory size in pages."""
        try:
            consumed = entry.call1(n)
        except _WASM_ERRORS:
            self._refresh()
            raise
        self._appended_before += consumed
        self._resize(entry.result(1) * _PAGE)
        return consumed

    def outputs(self) -> tuple[float, ...]:
        """signal, stopped, amount, take profit, stop loss, reason, indicator count, values..."""
        return self._outputs.unpack_from(self._result)

    def appended(self) -> int:
        """Candles the last driver call appended before it trapped."""
        assert self._appended is not None
        return int(self._appended.value(self.store)) - self._appended_before


# ----------------------------------------------------------------------------- the strategy


class _HostHistory:
    """The host's copy of the history, what a rebuilt instance is given: a :class:`History`, with
    ``step``'s single candles packed into a small buffer and moved into it in bulk (a numpy row
    assignment from a tuple costs ≈0.6 µs, a tenth of a whole step; ``pack_into`` ≈0.3 µs)."""

    __slots__ = ("_history", "_pending", "_pending_buffer", "_pending_count")

    def __init__(self, capacity: int) -> None:
        self._history = History(capacity)
        self._pending_buffer = (ctypes.c_double * (RUN_CHUNK * 6))()
        self._pending: npt.NDArray[np.float64] = np.ctypeslib.as_array(self._pending_buffer).reshape(RUN_CHUNK, 6)
        self._pending_count = 0

    def append(self, candle: Candle) -> None:
        _CANDLE.pack_into(self._pending_buffer, 48 * self._pending_count, *candle)
        self._pending_count += 1
        if self._pending_count == RUN_CHUNK:
            self._flush()

    def extend(self, rows: npt.NDArray[np.float64]) -> None:
        self._flush()
        self._history.extend(rows)

    def ordered(self) -> npt.NDArray[np.float64]:
        self._flush()
        return self._history.ordered()

    def __len__(self) -> int:
        self._flush()
        return len(self._history)

    def _flush(self) -> None:
        if self._pending_count:
            self._history.extend(self._pending[:self._pending_count])
            self._pending_count = 0


_SIGNALS: dict[float, Signal] = {0.0: "hold", 1.0: "buy", 2.0: "sell"}
_DEFAULT_LIMITS = SandboxLimits()
_HOLD = Decision(signal="hold")
_FLAT = (0.0, 0.0, 0.0, 0.0)


class WasmStrategy:
    """One loaded native strategy in its own Store. Not thread-safe: use it from one thread at a
    time (concurrent use raises ``RuntimeError`` rather than corrupting the Store).

    ``wasm`` is a binary module or WAT text (see :func:`load_wasm_source` for a strategy row's
    code). ``interval_ms`` is checked but otherwise unused: a native strategy has no clock, the
    candles' open times are in their ``time`` column.
    """

    def __init__(
        self,
        wasm: bytes | str,
        *,
        parameters: Mapping[str, object],
        interval_ms: int,
        limits: SandboxLimits = _DEFAULT_LIMITS,
        filename: str = "strategy.wasm",
        runtime: WasmRuntime | None = None,
    ) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive, got {interval_ms}")
        self._limits = limits
        # The JS sandbox's engine has the flags native code needs too (epoch interruption, fuel
        # when asked, 2 MiB wasm stack), and its epoch thread then serves these stores as well.
        self._runtime = runtime or WasmRuntime.shared(fuel=limits.fuel is not None)
        if self._runtime.fuel != (limits.fuel is not None):
            raise ValueError("limits.fuel requires a WasmRuntime created with fuel=True (and only then)")
        self.filename = filename
        size = len(wasm.encode() if isinstance(wasm, str) else wasm)
        if size > limits.max_source_bytes:
            raise StrategyLoadError(
                f"{filename} is {size} bytes, the limit is {limits.max_source_bytes}", name="SourceTooLarge"
            )
        engine = self._runtime.engine
        self._module = _compile(engine, wasm)
        self._driver = _driver(engine)
        self._interface = _inspect(self._module)
        self._given = _parameter_values(parameters, self._interface.parameters)
        self._step_ticks = WasmRuntime.epoch_ticks(limits.timeout_ms / 1000)
        self._step_fuel = self._fuel(1, 1)
        self._history = _HostHistory(limits.max_candles)
        self._lock = threading.Lock()
        self._closed = False
        self.indicator_names: tuple[str, ...] = ()
        self.reasons: tuple[str, ...] = ()
        self.parameters: Mapping[str, float] = {}
        """Every parameter's value: the given ones and the module's defaults for the rest."""
        self.lookback: int | None = None
        """Candles the strategy needs before it can signal (``tb_lookback``), if it declares it."""
        self._reason_texts: dict[float, str | None] = {}  # reason slot value -> text
        check_thread_stack()
        self._runtime.start_ticker()
        self._guest: _Guest | None = self._build()

    # ------------------------------------------------------------------ public API

    def push_history(self, candles: npt.NDArray[np.float64]) -> None:
        """Appends candles (shape (n, 6), oldest first) to the history without evaluating."""
        rows = _as_candles(candles)[-self._limits.max_candles:]
        guest, _ = self._acquire()
        try:
            self._push(guest, rows, record=True)
        finally:
            self._lock.release()

    def step(self, candle: Candle, position: Position | None) -> tuple[Decision, EvalInfo]:
        """Appends one closed candle and evaluates the strategy on it."""
        started = time.perf_counter_ns()
        if len(candle) != 6 or not all(map(math.isfinite, candle)):
            raise ValueError(f"a candle is 6 finite numbers (time, open, high, low, close, volume), got {candle}")
        guest, rebuilt = self._acquire()
        try:
            try:
                outputs = guest.step(_position(position), candle, self._step_ticks, self._step_fuel)
            except _WASM_ERRORS as exc:
                raise self._failed(guest, exc, np.array([candle], dtype=np.float64)) from None
            self._history.append(candle)
            if guest.aborts or guest.at_cap:
                raise self._failed(guest, None, consumed=1)
            decision = self._decision(outputs, 1)
        finally:
            self._lock.release()
        return decision, EvalInfo((time.perf_counter_ns() - started) / 1000, (), rebuilt)

    def run_until_signal(
        self, candles: npt.NDArray[np.float64], position: Position | None
    ) -> tuple[int, Decision | None]:
        """Backtest helper: appends and evaluates ``candles`` one by one, stopping at the first
        result that is not a hold. Returns (candles consumed, that decision), or
        (len(candles), None) if all were holds. Errors carry ``consumed`` (failing candle
        included); the caller resumes after it."""
        rows = _as_candles(candles)
        held = _position(position)
        consumed = 0
        guest, _ = self._acquire()
        try:
            while consumed < len(rows):
                chunk = rows[consumed:consumed + RUN_CHUNK]
                guest.stage[:len(chunk)] = chunk
                guest.write_position(held)
                guest.arm(WasmRuntime.epoch_ticks(self._limits.timeout_ms / 1000 * len(chunk)),
                          self._fuel(len(chunk), len(chunk)))
                try:
                    done = guest.run(len(chunk))
                except _WASM_ERRORS as exc:
                    error = self._failed(guest, exc, chunk)
                    error.consumed += consumed
                    raise error from None
                self._history.extend(chunk[:done])
                consumed += done
                if guest.aborts or guest.at_cap:
                    raise self._failed(guest, None, consumed=consumed)
                outputs = guest.outputs()
                if outputs[1]:  # stopped: a signal, or an output the driver found invalid
                    decision = self._decision(outputs, consumed)
                    if decision.signal != "hold":
                        return consumed, decision
        finally:
            self._lock.release()
        return consumed, None

    @property
    def memory_bytes(self) -> int:
        """Linear memory of the instance (it never shrinks; 0 while no instance exists)."""
        return self._guest.memory_bytes if self._guest is not None else 0

    @property
    def history_length(self) -> int:
        """Candles the host holds for this strategy (what a rebuilt instance is given)."""
        return len(self._history)

    def close(self) -> None:
        """Drops the instance. Idempotent; later calls raise RuntimeError."""
        self._closed = True
        self._guest = None

    def __enter__(self) -> WasmStrategy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ instance management

    def _acquire(self) -> tuple[_Guest, bool]:
        """Takes the strategy's lock and returns a live instance (rebuilt if needed) and whether
        it was rebuilt. The caller releases ``self._lock``."""
        if self._closed:
            raise RuntimeError("WasmStrategy is closed")
        if not self._lock.acquire(False):  # the keyword form costs 0.1 µs more
            raise RuntimeError("WasmStrategy used from two threads at once")
        try:
            check_thread_stack()
            if self._guest is not None:
                return self._guest, False
            self._guest = self._build()
            return self._guest, True
        except BaseException:
            self._lock.release()
            raise

    def _fuel(self, evaluations: int, candles: int) -> int | None:
        fuel = self._limits.fuel
        return None if fuel is None else fuel * evaluations + _FUEL_PER_CANDLE * candles

    def _push(self, guest: _Guest, rows: npt.NDArray[np.float64], *, record: bool) -> None:
        """Appends ``rows`` without evaluating; ``record``: also to the host's history (not when
        restoring it into a rebuilt instance)."""
        for start in range(0, len(rows), RUN_CHUNK):
            chunk = rows[start:start + RUN_CHUNK]
            guest.stage[:len(chunk)] = chunk
            guest.write_position(_FLAT)
            guest.arm(self._step_ticks, self._fuel(0, len(chunk)))
            try:
                guest.push(len(chunk))
            except _WASM_ERRORS as exc:
                if not record:
                    raise SandboxTrap(f"the sandbox failed while restoring the history: {exc}") from None
                raise self._failed(guest, exc, chunk) from None
            if record:
                self._history.extend(chunk)

    def _build(self) -> _Guest:
        """A new instance: ABI checked, metadata read, parameters set, buffer allocated, driver
        attached, and the history the host keeps re-sent."""
        limits = self._limits
        guest: _Guest | None = None
        try:
            guest = _Guest(
                self._runtime.engine, self._module, self._interface, memory_cap=2 * limits.memory_bytes,
                epoch_ticks=WasmRuntime.epoch_ticks(limits.load_timeout_ms / 1000),
                fuel=None if limits.fuel is None else _LOAD_FUEL,
            )
            self._configure(guest)
        except _WASM_ERRORS as exc:
            raise self._load_error(guest, exc) from None
        if guest.aborts:
            raise StrategyLoadError(guest.abort_message(), name="SandboxTrap")
        self._push(guest, self._history.ordered(), record=False)
        return guest

    def _configure(self, guest: _Guest) -> None:
        limits = self._limits
        version = guest.call("tb_abi_version")
        if version != ABI_VERSION:
            raise StrategyLoadError(
                f"the module implements native ABI version {version}; this tradebotd supports version {ABI_VERSION}",
                name="AbiMismatch",
            )
        meta = _Meta()
        if "tb_meta" in self._interface.optional:
            raw = guest.read_cstring(guest.call("tb_meta"), MAX_META_BYTES)
            if raw is None:
                raise StrategyLoadError(
                    f"tb_meta must point at NUL-terminated JSON of at most {MAX_META_BYTES} bytes", name="BadMetadata"
                )
            meta = _parse_meta(raw)
        values: dict[str, float] = {}
        for name in self._interface.parameters:
            parameter = guest.parameter(name)
            if name in self._given:
                parameter.set_value(guest.store, self._given[name])
            values[name] = float(parameter.value(guest.store))
        if "tb_init" in self._interface.optional:
            status = guest.call("tb_init")
            if status != 0:
                known = 1 <= status <= len(meta.reasons)
                raise StrategyLoadError(
                    meta.reasons[status - 1] if known else f"tb_init rejected the parameters (status {status})",
                    name="BadParameters",
                )
        lookback = guest.call("tb_lookback") if "tb_lookback" in self._interface.optional else None
        if lookback is not None and not 0 <= lookback <= limits.max_candles:
            raise StrategyLoadError(
                f"the strategy needs {lookback} candles of history; max_candles is {limits.max_candles}",
                name="BadParameters",
            )
        plan = _Layout.plan(limits.max_candles, len(meta.indicators))
        block = guest.call("tb_alloc", plan.size) & 0xFFFF_FFFF
        if block == 0 or guest.at_cap:
            raise StrategyLoadError(
                f"no room for the candle buffer ({plan.size >> 10} KiB for max_candles={limits.max_candles}) "
                f"under the {guest.memory_cap >> 20} MiB memory cap",
                name="OutOfMemory",
            )
        if block % 8 or block + plan.size > guest.memory_bytes:
            raise StrategyLoadError(
                f"tb_alloc({plan.size}) returned {block}: not an 8-aligned block inside memory", name="BadExport"
            )
        guest.attach(self._driver, plan.at(block), limits.max_candles, len(meta.reasons), len(meta.indicators))
        self.indicator_names, self.reasons, self.lookback = meta.indicators, meta.reasons, lookback
        self.parameters = values
        self._reason_texts = {float(i): text for i, text in enumerate((None, *meta.reasons))}

    def _load_error(self, guest: _Guest | None, exc: _WasmError) -> StrategyLoadError:
        if isinstance(exc, wasmtime.Trap) and exc.trap_code is wasmtime.TrapCode.INTERRUPT:
            return StrategyLoadError(f"loading ran longer than {self._limits.load_timeout_ms} ms", name="Timeout")
        if guest is not None and guest.aborts:
            return StrategyLoadError(guest.abort_message(), name="SandboxTrap")
        if guest is not None and guest.near_cap:
            return StrategyLoadError("the module ran out of memory while loading", name="OutOfMemory")
        return StrategyLoadError(f"the module failed while loading: {_cause(exc)}", name="SandboxTrap")

    def _failed(
        self,
        guest: _Guest,
        exc: _WasmError | None,
        rows: npt.NDArray[np.float64] | None = None,
        *,
        consumed: int = 0,
    ) -> StrategyEvalError:
        """Discards ``guest`` (never reuse one after a trap, an abort or at its memory cap) and
        returns the error to raise. ``rows`` are the candles of a call that trapped: the ones the
        driver appended before it stopped are recorded, so the rebuilt instance gets them."""
        if rows is not None:
            consumed = min(guest.appended(), len(rows))
            self._history.extend(rows[:consumed])
        if self._guest is guest:
            self._guest = None
        code = exc.trap_code if isinstance(exc, wasmtime.Trap) else None
        if code is wasmtime.TrapCode.INTERRUPT:
            return StrategyTimeout(
                f"the strategy ran past its {self._limits.timeout_ms} ms deadline", trapped=True, consumed=consumed
            )
        if code is wasmtime.TrapCode.OUT_OF_FUEL:
            return StrategyTimeout("the strategy ran out of fuel", trapped=True, consumed=consumed)
        if guest.at_cap or (exc is not None and guest.near_cap):
            return StrategyMemoryError(
                f"the strategy reached its {guest.memory_cap >> 20} MiB memory cap", consumed=consumed
            )
        if guest.aborts:
            return SandboxTrap(f"the strategy {guest.abort_message()}", trap_code="UNREACHABLE", consumed=consumed)
        if isinstance(exc, wasmtime.Trap):
            return SandboxTrap(f"the strategy trapped: {_cause(exc)}", trap_code=code.name if code else None,
                               consumed=consumed)
        return SandboxTrap(f"the sandbox failed: {_cause(exc)}", consumed=consumed)

    def _decision(self, outputs: tuple[float, ...], consumed: int) -> Decision:
        """The decision in the output slots. The driver checked every hold it did not stop at
        (same rules, our code, run after the strategy returned), so only a stop is validated
        here: that keeps the hold path of ``step``, by far the most common, short."""
        code, stopped, amount, take_profit, stop_loss, reason, count = outputs[:7]
        if stopped:
            problems = self._problems(outputs)
            if problems:
                raise InvalidResult(f"invalid strategy result: {'; '.join(problems)}", consumed=consumed)
        indicators: dict[str, IndicatorValue] | None = None
        if count:
            # zip stops after `count` values; strict=... would cost 0.2 µs of keyword handling.
            indicators = dict(zip(self.indicator_names, outputs[7:7 + int(count)]))  # noqa: B905
        elif not (code or amount or take_profit or stop_loss or reason):
            return _HOLD
        return Decision(
            signal=_SIGNALS[code],
            amount=amount or None,
            reason=self._reason_texts[reason],
            indicators=indicators,
            take_profit=take_profit or None,
            stop_loss=stop_loss or None,
        )

    def _problems(self, outputs: tuple[float, ...]) -> list[str]:
        """What is wrong with the output slots (the rules of ABI.md), if anything."""
        code, _, amount, take_profit, stop_loss, reason, count, *values = outputs
        problems = []
        if code not in _SIGNALS:
            problems.append(f"signal code {code:g} (expected 0 hold, 1 buy, 2 sell)")
        problems += [
            f"{name}: must be 0 (none) or positive and finite, got {value!r}"
            for name, value in (("amount", amount), ("takeProfit", take_profit), ("stopLoss", stop_loss))
            if not 0.0 <= value < math.inf  # NaN fails every comparison
        ]
        if not _whole(reason, len(self.reasons)):
            problems.append(f"reason: must be 0 (none) or a reason number 1..{len(self.reasons)}, got {reason!r}")
        if not _whole(count, len(self.indicator_names)):
            problems.append(f"indicator count: must be a whole number 0..{len(self.indicator_names)}, got {count!r}")
        else:
            problems += [
                f"indicators.{name}: must be finite, got {value!r}"
                for name, value in zip(self.indicator_names, values[:int(count)], strict=False)
                if not math.isfinite(value)
            ]
        return problems


def _whole(value: float, maximum: int) -> bool:
    """``value`` is a whole number in 0..maximum (NaN and infinities are not)."""
    return 0 <= value <= maximum and value == int(value)


def _cause(exc: _WasmError | None) -> str:
    """The last line of a wasmtime error: the cause, without the backtrace before it."""
    text = exc.message if isinstance(exc, wasmtime.Trap) else str(exc)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("wasm trap: ") if lines else "unknown error"


def _position(position: Position | None) -> tuple[float, float, float, float]:
    if position is None:
        return _FLAT
    return 1.0, float(position.amount), float(position.entry_price), float(position.entry_time)


def _as_candles(candles: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    rows = np.asarray(candles, dtype=np.float64)
    if rows.size == 0:
        return rows.reshape(0, 6)
    if rows.ndim != 2 or rows.shape[1] != 6:
        raise ValueError(f"candles must have shape (n, 6), got {rows.shape}")
    if not np.isfinite(rows).all():
        raise ValueError("candle values must be finite")
    return rows
