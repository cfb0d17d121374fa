"""One instance of ``tb_qjs.wasm``: the ABI of ``qjs/tb_shim.c`` seen from Python.

A :class:`Guest` knows the shim's structs and entry points and nothing about strategies'
semantics (errors, results, history policy live in ``js.py``). Every call is one host->wasm
call: the host writes packed f64 values into the shim's input buffer with ``ctypes.memmove``,
calls the entry, then reads the fixed result header and the output bytes it points at.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt
import wasmtime
from wasmtime import _ffi as ffi

from tradebotd.sandbox.errors import SandboxUnavailable
from tradebotd.sandbox.wasm import I32Export, WasmRuntime, export

__all__ = ["ABI_VERSION", "INPUT_CAPACITY", "CallResult", "Guest", "GuestConfig", "Status"]

ABI_VERSION = 1  # TB_ABI_VERSION in tb_shim.c
INPUT_CAPACITY = 1024  # TB_INPUT_CAPACITY: candles per call
CANDLE_FIELDS = 6


class Status(IntEnum):
    """Status codes of tb_shim.c (TB_OK ...)."""

    OK = 0
    JS_ERROR = 1
    BAD_RESULT = 2
    BAD_INPUT = 3
    NO_FUNCTION = 4
    OUT_OF_MEMORY = 5
    INTERRUPTED = 6
    STATE = 7


class GuestConfig(ctypes.Structure):
    """Mirror of ``tb_config_t``; written before ``tb_load``."""

    _fields_ = [
        ("interval_ms", ctypes.c_double),
        ("random_seed", ctypes.c_uint64),
        ("memory_limit", ctypes.c_uint32),
        ("stack_budget", ctypes.c_uint32),
        ("timeout_ms", ctypes.c_uint32),
        ("load_timeout_ms", ctypes.c_uint32),
        ("max_candles", ctypes.c_uint32),
        ("max_result_bytes", ctypes.c_uint32),
        ("max_reason_chars", ctypes.c_uint32),
        ("max_log_lines", ctypes.c_uint32),
        ("max_log_chars", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


# tb_input_t: 8 f64 header (has_position, amount, entry_price, entry_time, current_price,
# 3 reserved) followed by the packed candles.
_HEADER_DOUBLES = 8
_INPUT_SIZE = 8 * (_HEADER_DOUBLES + INPUT_CAPACITY * CANDLE_FIELDS)
_HEADER = struct.Struct("<5d")
_STEP_ONE = struct.Struct(f"<5d{8 * (_HEADER_DOUBLES - 5)}x6d")  # header + one candle
_CANDLES_OFFSET = 8 * _HEADER_DOUBLES
_RESULT = struct.Struct("<i5I")  # tb_result_t
_IO = struct.Struct("<8I")  # tb_io_t


@dataclass(frozen=True, slots=True)
class CallResult:
    status: Status
    output: bytes  # result JSON, error JSON, or b"" (all-hold run, push)
    logs: bytes  # console JSON array, or b""
    consumed: int  # candles appended to the history by this call


Position = tuple[float, float, float] | None  # (amount, entry_price, entry_time)


class Guest:
    """A Store + Instance of tb_qjs.wasm. Not thread-safe; discard it after a ``wasmtime.Trap``."""

    def __init__(self, runtime: WasmRuntime, memory_cap: int) -> None:
        self._runtime = runtime
        self.store, instance = runtime.new_instance(memory_cap)
        memory = export(self.store, instance, "memory")
        if not isinstance(memory, wasmtime.Memory):
            raise SandboxUnavailable("tb_qjs.wasm does not export its memory")
        self._memory = memory
        self._context = self.store._context()
        self._memory_ref = ctypes.byref(memory._memory)
        I32Export(self.store, instance, "_initialize")()
        io_addr = I32Export(self.store, instance, "tb_io")()
        self._alloc = I32Export(self.store, instance, "tb_alloc")
        self._free = I32Export(self.store, instance, "tb_free")
        self._load = I32Export(self.store, instance, "tb_load")
        self._push = I32Export(self.store, instance, "tb_push")
        self._step = I32Export(self.store, instance, "tb_step")
        self._run = I32Export(self.store, instance, "tb_run")
        abi, self._config, self._input, capacity, self._result, config_size, input_size, result_size = (
            _IO.unpack(ctypes.string_at(self._base() + io_addr, _IO.size))
        )
        expected = (ABI_VERSION, INPUT_CAPACITY, ctypes.sizeof(GuestConfig), _INPUT_SIZE, _RESULT.size)
        if (abi, capacity, config_size, input_size, result_size) != expected:
            raise SandboxUnavailable(
                "tb_qjs.wasm does not match this tradebotd version (ABI "
                f"{abi}, expected {ABI_VERSION}): rebuild it with `make wasm`"
            )

    # ------------------------------------------------------------------ memory

    def _base(self) -> int:
        # Re-read on every call: memory.grow may move linear memory.
        address = ctypes.cast(ffi.wasmtime_memory_data(self._context, self._memory_ref), ctypes.c_void_p)
        return address.value or 0

    @property
    def memory_bytes(self) -> int:
        """Current linear memory size (it never shrinks)."""
        return int(ffi.wasmtime_memory_data_size(self._context, self._memory_ref))

    def fuel_remaining(self) -> int:
        """Fuel left of what the last call was given (fuel-metered runtimes only)."""
        return int(self.store.get_fuel())

    def _arm(self, epoch_ticks: int, fuel: int | None) -> None:
        ffi.wasmtime_context_set_epoch_deadline(self._context, epoch_ticks)
        if fuel is not None:
            self.store.set_fuel(fuel)

    def _finish(self, base: int) -> CallResult:
        status, out_ptr, out_len, log_ptr, log_len, consumed = _RESULT.unpack(
            ctypes.string_at(base + self._result, _RESULT.size)
        )
        output = ctypes.string_at(base + out_ptr, out_len) if out_len else b""
        logs = ctypes.string_at(base + log_ptr, log_len) if log_len else b""
        return CallResult(Status(status), output, logs, consumed)

    def last_consumed(self) -> int:
        """Candles the last call appended before it stopped; readable even after a trap."""
        return int(_RESULT.unpack(ctypes.string_at(self._base() + self._result, _RESULT.size))[5])

    # ------------------------------------------------------------------ entry points

    def load(
        self, config: GuestConfig, source: bytes, parameters_json: bytes, filename: bytes,
        *, epoch_ticks: int, fuel: int | None,
    ) -> CallResult:
        ctypes.memmove(self._base() + self._config, ctypes.addressof(config), ctypes.sizeof(config))
        pointers = []
        try:
            for data in (source, parameters_json, filename):
                pointer = self._alloc(len(data))
                if pointer == 0:
                    raise MemoryError("the sandbox could not allocate memory for the strategy source")
                pointers.append(pointer)
                ctypes.memmove(self._base() + pointer, data, len(data))
            self._arm(epoch_ticks, fuel)
            self._load(pointers[0], len(source), pointers[1], len(parameters_json), pointers[2], len(filename))
            return self._finish(self._base())
        finally:
            for pointer in pointers:
                self._free(pointer)

    def _write_candles(self, base: int, candles: npt.NDArray[np.float64]) -> None:
        data = np.ascontiguousarray(candles, dtype=np.float64)
        ctypes.memmove(base + self._input + _CANDLES_OFFSET, data.ctypes.data, data.nbytes)

    def _write_position(self, base: int, position: Position, current_price: float) -> None:
        amount, entry_price, entry_time = position or (0.0, 0.0, 0.0)
        header = _HEADER.pack(1.0 if position else 0.0, amount, entry_price, entry_time, current_price)
        ctypes.memmove(base + self._input, header, len(header))

    def push(self, candles: npt.NDArray[np.float64], *, epoch_ticks: int, fuel: int | None) -> CallResult:
        """Appends up to INPUT_CAPACITY candles without evaluating."""
        base = self._base()
        self._write_candles(base, candles)
        self._arm(epoch_ticks, fuel)
        self._push(len(candles))
        return self._finish(self._base())

    def step(
        self, candle: tuple[float, float, float, float, float, float], position: Position,
        *, epoch_ticks: int, fuel: int | None,
    ) -> CallResult:
        """Appends one candle and evaluates with currentPrice = its close. The hot path."""
        base = self._base()
        amount, entry_price, entry_time = position or (0.0, 0.0, 0.0)
        packed = _STEP_ONE.pack(
            1.0 if position else 0.0, amount, entry_price, entry_time, candle[4], *candle
        )
        ctypes.memmove(base + self._input, packed, len(packed))
        self._arm(epoch_ticks, fuel)
        self._step(1)
        return self._finish(self._base())

    def run(
        self, candles: npt.NDArray[np.float64], position: Position, *, epoch_ticks: int, fuel: int | None,
    ) -> CallResult:
        """Appends and evaluates candles one by one until a non-hold result or the end."""
        base = self._base()
        self._write_position(base, position, 0.0)
        self._write_candles(base, candles)
        self._arm(epoch_ticks, fuel)
        self._run(len(candles))
        return self._finish(self._base())
