"""One instance of ``tb_qjs.wasm``: the ABI of ``qjs/tb_shim.c`` seen from Python.

A :class:`Guest` knows the shim's structs and entry points and nothing about strategies'
semantics (errors, results, history policy live in ``js.py``). Every call is one host->wasm
call: the host writes packed f64 values into the shim's input buffer with ``ctypes.memmove``,
calls the entry, then reads the fixed result header and the output bytes it points at.
"""

from __future__ import annotations

import ctypes
import struct
from enum import IntEnum
from typing import NamedTuple, cast

import numpy as np
import numpy.typing as npt

from tradebotd.sandbox.errors import SandboxUnavailable
from tradebotd.sandbox.wasm import RawI32Call, RawStore, WasmRuntime, i32_export

__all__ = ["ABI_VERSION", "INPUT_CAPACITY", "CallResult", "Guest", "GuestConfig", "Status"]

ABI_VERSION = 2  # TB_ABI_VERSION in tb_shim.c
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


class CallResult(NamedTuple):
    status: Status
    output: bytes  # result JSON, error JSON, or b"" (all-hold run, push)
    logs: bytes  # console JSON array, or b""
    consumed: int  # candles appended to the history by this call


Position = tuple[float, float, float] | None  # (amount, entry_price, entry_time)
_FLAT = (0.0, 0.0, 0.0)
_STATUSES = {int(status): status for status in Status}


class Guest:
    """A Store + Instance of tb_qjs.wasm. Not thread-safe; discard it after a ``wasmtime.Trap``.

    The hot path (``step``) costs a few µs on the host: raw calls (:class:`RawI32Call`,
    :class:`RawStore`), and ctypes views of the input and result structs and of linear memory
    that are made again only when linear memory has moved. It can move only while wasm runs
    (``memory.grow``), so its address is read again after every call, trapped or not.
    """

    def __init__(self, runtime: WasmRuntime, memory_cap: int) -> None:
        self._runtime = runtime
        self.store, instance, memory, restored = runtime.new_instance(memory_cap)
        self._raw = RawStore(self.store, memory)
        self._base = -1  # linear memory's address when the views below were made
        self._config = self._input = self._result = 0  # the structs' addresses, from tb_io
        if not restored:  # an instance from the snapshot starts initialised, tb_init done
            i32_export(self.store, instance, "_initialize")()
        io = i32_export(self.store, instance, "tb_io")
        self._alloc = i32_export(self.store, instance, "tb_alloc")
        self._free = i32_export(self.store, instance, "tb_free")
        self._load = i32_export(self.store, instance, "tb_load")
        self._push = i32_export(self.store, instance, "tb_push")
        self._step = i32_export(self.store, instance, "tb_step")
        self._run = i32_export(self.store, instance, "tb_run")
        io_addr = self._call(io)
        abi, self._config, self._input, capacity, self._result, config_size, input_size, result_size = (
            _IO.unpack(self._read(io_addr, _IO.size))
        )
        expected = (ABI_VERSION, INPUT_CAPACITY, ctypes.sizeof(GuestConfig), _INPUT_SIZE, _RESULT.size)
        if (abi, capacity, config_size, input_size, result_size) != expected:
            raise SandboxUnavailable(
                "tb_qjs.wasm does not match this tradebotd version (ABI "
                f"{abi}, expected {ABI_VERSION}): rebuild it with `make wasm`"
            )
        self._refresh(force=True)

    # ------------------------------------------------------------------ memory

    def _refresh(self, *, force: bool = False) -> None:
        """Makes the views again if linear memory moved (or ``force``)."""
        base = self._raw.memory_address()
        if base == self._base and not force:
            return
        self._base = base
        self._memory = (ctypes.c_char * self._raw.memory_size()).from_address(base)
        self._step_input = (ctypes.c_char * _STEP_ONE.size).from_address(base + self._input)
        self._result_view = (ctypes.c_char * _RESULT.size).from_address(base + self._result)
        # The input's candles as a numpy array: writing a batch is one array assignment (≈0.5 µs)
        # instead of ascontiguousarray + the .ctypes address + memmove (≈2 µs).
        candles = (ctypes.c_double * (INPUT_CAPACITY * CANDLE_FIELDS)).from_address(
            base + self._input + _CANDLES_OFFSET
        )
        self._candles_view = np.ctypeslib.as_array(candles).reshape(INPUT_CAPACITY, CANDLE_FIELDS)

    def _read(self, address: int, size: int) -> bytes:
        """Bytes of linear memory (clamped to it)."""
        end = address + size
        if end > len(self._memory):  # it grew since the view was made (in place: same address)
            self._memory = (ctypes.c_char * self._raw.memory_size()).from_address(self._base)
        return cast(bytes, self._memory[address:end])  # a c_char array's slice is bytes

    def _call(self, entry: RawI32Call, *args: int) -> int:
        try:
            return entry(*args)
        finally:
            self._refresh()

    @property
    def memory_bytes(self) -> int:
        """Current linear memory size (it never shrinks)."""
        return self._raw.memory_size()

    def fuel_remaining(self) -> int:
        """Fuel left of what the last call was given (fuel-metered runtimes only)."""
        return int(self.store.get_fuel())

    def _arm(self, epoch_ticks: int, fuel: int | None) -> None:
        self._raw.set_epoch_deadline(epoch_ticks)
        if fuel is not None:
            self.store.set_fuel(fuel)

    def _finish(self) -> CallResult:
        status, out_ptr, out_len, log_ptr, log_len, consumed = _RESULT.unpack_from(self._result_view)
        known = _STATUSES.get(status)  # not `or`: Status.OK is 0, falsy
        return CallResult(
            known if known is not None else Status(status),  # an unknown code raises ValueError
            self._read(out_ptr, out_len) if out_len else b"",
            self._read(log_ptr, log_len) if log_len else b"",
            consumed,
        )

    def last_consumed(self) -> int:
        """Candles the last call appended before it stopped; readable even after a trap."""
        self._refresh()
        return int(_RESULT.unpack_from(self._result_view)[5])

    # ------------------------------------------------------------------ entry points

    def load(
        self, config: GuestConfig, source: bytes, parameters_json: bytes, filename: bytes,
        *, epoch_ticks: int, fuel: int | None,
    ) -> CallResult:
        ctypes.memmove(self._base + self._config, ctypes.addressof(config), ctypes.sizeof(config))
        pointers = []
        try:
            for data in (source, parameters_json, filename):
                pointer = self._call(self._alloc, len(data))
                if pointer == 0:
                    raise MemoryError("the sandbox could not allocate memory for the strategy source")
                pointers.append(pointer)
                ctypes.memmove(self._base + pointer, data, len(data))
            self._arm(epoch_ticks, fuel)
            self._call(self._load, pointers[0], len(source), pointers[1], len(parameters_json), pointers[2],
                       len(filename))
            return self._finish()
        finally:
            for pointer in pointers:
                self._call(self._free, pointer)

    def _write_candles(self, candles: npt.NDArray[np.float64]) -> None:
        self._candles_view[:len(candles)] = candles

    def _write_position(self, position: Position, current_price: float) -> None:
        amount, entry_price, entry_time = position or _FLAT
        _HEADER.pack_into(self._step_input, 0, 1.0 if position else 0.0, amount, entry_price, entry_time,
                          current_price)

    def push(self, candles: npt.NDArray[np.float64], *, epoch_ticks: int, fuel: int | None) -> CallResult:
        """Appends up to INPUT_CAPACITY candles without evaluating."""
        self._write_candles(candles)
        self._arm(epoch_ticks, fuel)
        self._call(self._push, len(candles))
        return self._finish()

    def step(
        self, candle: tuple[float, float, float, float, float, float], position: Position,
        *, epoch_ticks: int, fuel: int | None,
    ) -> CallResult:
        """Appends one candle and evaluates with currentPrice = its close. The hot path."""
        amount, entry_price, entry_time = position or _FLAT
        _STEP_ONE.pack_into(
            self._step_input, 0, 1.0 if position else 0.0, amount, entry_price, entry_time, candle[4], *candle
        )
        self._raw.set_epoch_deadline(epoch_ticks)
        if fuel is not None:
            self.store.set_fuel(fuel)
        try:
            self._step.call1(1)
        finally:
            self._refresh()
        return self._finish()

    def run(
        self, candles: npt.NDArray[np.float64], position: Position, *, epoch_ticks: int, fuel: int | None,
    ) -> CallResult:
        """Appends and evaluates candles one by one until a non-hold result or the end."""
        self._write_position(position, 0.0)
        self._write_candles(candles)
        self._arm(epoch_ticks, fuel)
        self._call(self._run, len(candles))
        return self._finish()
