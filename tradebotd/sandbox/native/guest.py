"""One live native strategy: a Store with the strategy's instance and, next to it, the driver
(``driver.wat``), and the host's views into their linear memory. Knows the layout of the host's
block and the driver's entry points; nothing about limits, history or decisions (``strategy.py``).

Errors: a call raises what wasmtime raises (:data:`WASM_ERRORS`); the instance must then be
discarded.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import wasmtime

from tradebotd.sandbox.native.abi import PAGE, Interface
from tradebotd.sandbox.sandboxed import Candle
from tradebotd.sandbox.wasm import RawI32Call, RawStore

__all__ = ["RUN_CHUNK", "WASM_ERRORS", "Guest", "Layout", "WasmError"]

RUN_CHUNK = 128
"""Candles per wasm call in ``push_history``/``run_until_signal`` (the host's staging rows).
A batch call's deadline is ``timeout_ms`` per candle, so this bounds how long a runaway
strategy runs in a backtest (6.4 s at the default 50 ms) while keeping the per-call cost
(≈3 µs) at ≈25 ns per candle."""

# What a call into wasm raises besides Python errors (a Trap is not a WasmtimeError).
WasmError = wasmtime.Trap | wasmtime.WasmtimeError
WASM_ERRORS = (wasmtime.Trap, wasmtime.WasmtimeError)

_HOST_WRITE = struct.Struct("<4d")  # the position
_STEP_WRITE = struct.Struct("<10d")  # the position and staged candle 0, which follows it
_OUT_FIXED = 5  # amount, take profit, stop loss, reason, indicator count


@dataclass(frozen=True, slots=True)
class Layout:
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
    def plan(cls, capacity: int, indicators: int) -> Layout:
        """Offsets from the block's start. ``rows`` >= 2 * capacity keeps shifting amortised O(1)."""
        stage = 32
        result = stage + RUN_CHUNK * 48
        columns = result + 8 * (2 + _OUT_FIXED + indicators)
        rows = max(2 * capacity, capacity + RUN_CHUNK)
        return cls(0, stage, result, columns, rows, columns + 48 * rows)

    def at(self, block: int) -> Layout:
        return Layout(block, block + self.stage, block + self.result, block + self.columns, self.rows, self.size)


class Guest:
    """A Store with the strategy's instance and, once attached, ours (the driver). Not
    thread-safe; discard it after a trap. The views into linear memory are re-made whenever the
    memory has grown (only then can it move)."""

    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module, interface: Interface, *,
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
        self._layout: Layout | None = None
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
        self.at_cap = size + PAGE > self.memory_cap
        # Close enough to the cap that a trap is most likely a refused allocation: runtimes trap
        # when memory.grow fails (AssemblyScript's allocator executes `unreachable`), having
        # asked for as many pages as the allocation needs, which can be many.
        self.near_cap = size > self.memory_cap - max(PAGE, self.memory_cap // 16)
        self._base = self._raw.memory_address()
        if self._layout is not None:
            self._views(self._layout)

    def _views(self, layout: Layout) -> None:
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

    def attach(self, driver: wasmtime.Module, layout: Layout, capacity: int, reasons: int, indicators: int) -> None:
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
        except WASM_ERRORS:
            self._refresh()
            raise
        self._appended_before += consumed
        self._resize(entry.result(1) * PAGE)
        return consumed

    def outputs(self) -> tuple[float, ...]:
        """signal, stopped, amount, take profit, stop loss, reason, indicator count, values..."""
        return self._outputs.unpack_from(self._result)

    def appended(self) -> int:
        """Candles the last driver call appended before it trapped."""
        assert self._appended is not None
        return int(self._appended.value(self.store)) - self._appended_before
