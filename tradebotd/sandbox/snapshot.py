"""The JS sandbox's initial QuickJS state, made once per process and copied into every instance.

Every JS strategy's instance used to create its QuickJS runtime, context and prelude itself
(``tb_init``, run by ``tb_load``): about 60% of a load's time. That state depends neither on
the strategy nor on its limits (tb_shim.c, "init"), so a process makes it once:
:func:`capture` instantiates the module, runs ``_initialize`` and ``tb_init``, and keeps the
4 KiB pages of linear memory that differ from a new instance's (wizer-style, done by the host).
:meth:`Snapshot.restore` then grows a new instance's memory to the captured size and writes those
pages: ≈0.1 ms instead of ≈0.7 ms.

Why the copy is valid: wasm addresses linear memory from 0 in every instance, so every pointer
in it means the same in a copy; the shim's init holds no host state (no open file, no host
reference; the clock is read anew on every call); the only mutable global of the module is
wasm-ld's ``__stack_pointer``, which every export restores before it returns, and the stack
below it is dead between calls, so it is not copied. A snapshot-started instance differs from a
fresh one only in QuickJS's Map hash salt (one per process instead of one per instance; Map and
Set iterate in insertion order either way): tests/sandbox/test_snapshot.py runs the same
strategies both ways and compares everything they return.

Measured on the scale bench's instances: the pages written are the ones a fresh instance's own
init would have written (private either way), and the module's data segment stays mapped
copy-on-write from the ``.cwasm`` file as before. A module whose data segments *are* the
snapshot (memory_init_cow sharing the heap pages between instances) was measured too: 110 KiB
less PSS per instance but 60-100 KiB more RSS, because every read of a file-backed page maps
its page-cache neighbours too (the kernel's fault-around), zero pages included.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import wasmtime

from tradebotd.sandbox.errors import SandboxUnavailable

__all__ = ["Snapshot", "capture"]

PAGE = 4096
_WASM_PAGE = 65536
_SEC_GLOBAL = 6


def _read_leb(data: bytes, pos: int, *, signed: bool = False) -> tuple[int, int]:
    """An LEB128 integer at ``pos``: (value, position after it)."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if signed and byte & 0x40:
                result -= 1 << shift
            return result, pos


def stack_top(wasm: bytes) -> int:
    """The initial ``__stack_pointer`` of a module linked by wasm-ld (its only mutable global,
    an i32 constant); :class:`SandboxUnavailable` for any other layout of globals."""
    if wasm[:8] != b"\0asm\x01\0\0\0":
        raise SandboxUnavailable("not a wasm module (version 1)")
    pos = 8
    while pos < len(wasm):
        section_id = wasm[pos]
        size, body = _read_leb(wasm, pos + 1)
        if section_id == _SEC_GLOBAL:
            count, at = _read_leb(wasm, body)
            # i32, mutable, i32.const N, end
            if count == 1 and wasm[at:at + 3] == b"\x7f\x01\x41":
                value, at = _read_leb(wasm, at + 3, signed=True)
                if wasm[at] == 0x0B:
                    return value
            break
        pos = body + size
    raise SandboxUnavailable("tb_qjs.wasm's globals are not wasm-ld's lone __stack_pointer")


@dataclass(frozen=True)
class Snapshot:
    """The pages of linear memory ``tb_init`` changed, and the size it left memory at."""

    memory_bytes: int
    runs: tuple[tuple[int, bytes], ...]  # (address, page-aligned bytes), ascending

    @property
    def size(self) -> int:
        """Bytes :meth:`restore` writes per instance."""
        return sum(len(data) for _, data in self.runs)

    def restore(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        """Makes a new instance's memory (not yet initialised: no ``_initialize`` run) what
        :func:`capture` saw after ``tb_init``."""
        grow = -(-(self.memory_bytes - memory.data_len(store)) // _WASM_PAGE)
        if grow > 0:
            memory.grow(store, grow)
        base = ctypes.addressof(memory.data_ptr(store).contents)
        for address, data in self.runs:
            ctypes.memmove(base + address, data, len(data))


def capture(new_instance: Callable[[], tuple[wasmtime.Store, wasmtime.Instance]], wasm: bytes) -> Snapshot:
    """Runs ``_initialize`` and ``tb_init`` in an instance from ``new_instance()`` and returns the
    pages above the stack that differ from those of a second, untouched instance."""
    top = stack_top(wasm)
    if top % PAGE:
        raise SandboxUnavailable(f"the stack top {top:#x} is not page-aligned")
    store, instance = new_instance()
    exports = instance.exports(store)
    for name in ("_initialize", "tb_init"):
        func = exports.get(name)
        if not isinstance(func, wasmtime.Func):
            raise SandboxUnavailable(f"tb_qjs.wasm has no function {name}: rebuild it with `make wasm`")
        status = func(store)
        if name == "tb_init" and status != 0:
            raise SandboxUnavailable(f"tb_init failed with status {status}")
    memory = exports["memory"]
    assert isinstance(memory, wasmtime.Memory)
    after = bytes(memory.read(store, 0, memory.data_len(store)))
    blank_store, blank = new_instance()
    blank_memory = blank.exports(blank_store)["memory"]
    assert isinstance(blank_memory, wasmtime.Memory)
    before = bytes(blank_memory.read(blank_store, 0, blank_memory.data_len(blank_store)))
    before += bytes(len(after) - len(before))
    runs: list[tuple[int, bytes]] = []
    start = None
    for address in range(top, len(after) + PAGE, PAGE):
        changed = address < len(after) and after[address:address + PAGE] != before[address:address + PAGE]
        if changed and start is None:
            start = address
        elif not changed and start is not None:
            runs.append((start, after[start:address]))
            start = None
    return Snapshot(len(after), tuple(runs))
