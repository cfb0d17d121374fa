"""Process-wide Wasmtime state for the JS sandbox, and the fast call path into it.

One :class:`WasmRuntime` per process (per fuel setting) holds the Engine, the compiled Module,
a Linker with WASI and an InstancePre; each strategy only gets a Store and an Instance
(≈0.35 MiB each, against ≈2.8 MiB with an Engine per strategy). The compiled module is cached
as a ``.cwasm`` file in the user cache directory, keyed by the wasm's sha256, the wasmtime
version and the Engine flags, because a ``.cwasm`` only loads into an identical Engine:
compiling takes ≈0.5 s, loading the cache ≈0.3 ms. It also holds the snapshot of QuickJS's
initial state every new instance starts from (``snapshot.py``).

Hazards this module guards against (measured; each one kills the whole daemon):

* ``max_wasm_stack`` above 2 MiB aborts the process when the Engine is created.
* wasm running on a thread with less native stack than ``max_wasm_stack`` segfaults instead of
  trapping: :func:`check_thread_stack` refuses such threads.
* A Store configured with ``WasiConfig.stdout_custom`` alive at exit aborts: stores here get an
  empty ``WasiConfig`` (no stdio, env, args or preopens).
* ``Module.deserialize_file`` maps the ``.cwasm``: rewriting that file in place under a running
  process raises SIGBUS. The cache is only ever replaced atomically (new inode).

The direct call path (:class:`RawI32Call`, :class:`RawStore`) uses wasmtime-py's private
``_ffi`` module: its public ``Func.__call__`` costs 20-40 µs per call, this ≈1.1 µs. wasmtime is
pinned exactly in pyproject.toml; re-run tests/sandbox on every upgrade.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import importlib.metadata
import math
import os
import resource
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import structlog
import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._extern import wrap_extern

from tradebotd.sandbox.errors import SandboxUnavailable
from tradebotd.sandbox.qjs import WASM_PATH
from tradebotd.sandbox.snapshot import Snapshot, capture

__all__ = [
    "JS_STACK_BUDGET",
    "MAX_WASM_STACK",
    "RawI32Call",
    "RawStore",
    "WasmRuntime",
    "check_thread_stack",
    "default_cache_dir",
    "i32_export",
]

log = structlog.get_logger(__name__)

MAX_WASM_STACK = 2 << 20
"""Wasmtime's native stack for wasm code. Never more: above 2 MiB Engine creation aborts."""

JS_STACK_BUDGET = MAX_WASM_STACK // 21
"""QuickJS's recursion budget (linear stack). Some paths (JSON.stringify of deep objects) use up
to ~18x as much native stack as linear stack; at <= 1/20 every measured recursion bomb ended in
a catchable RangeError instead of a wasm stack-overflow trap."""

MIN_THREAD_STACK = 2 * MAX_WASM_STACK
"""Native stack a thread needs to call into wasm: max_wasm_stack plus Python's and wasmtime's."""

EPOCH_TICK_SECONDS = 0.010


def default_cache_dir() -> Path:
    """``$TRADEBOTD_CACHE_DIR``, else ``$XDG_CACHE_HOME/tradebotd``, else ``~/.cache/tradebotd``."""
    if env := os.environ.get("TRADEBOTD_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tradebotd"


class WasmRuntime:
    """Engine + Module + InstancePre + epoch ticker, shared by every strategy of a process.

    Use :meth:`shared`; constructing one directly is for tests and tools. Thread-safe: Engine,
    Module and InstancePre may be used from any thread (a Store may not).
    """

    _shared: ClassVar[dict[bool, WasmRuntime]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        *,
        fuel: bool = False,
        wasm_path: Path = WASM_PATH,
        cache_dir: Path | None = None,
        snapshot: bool = True,
    ) -> None:
        if not wasm_path.is_file():
            raise SandboxUnavailable(
                f"{wasm_path} is missing: build it with `make wasm` (or reinstall tradebotd)"
            )
        self.fuel = fuel
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = fuel
        config.max_wasm_stack = MAX_WASM_STACK
        self.engine = wasmtime.Engine(config)
        flags = f"epoch=1,fuel={int(fuel)},max_wasm_stack={MAX_WASM_STACK}"
        wasm = wasm_path.read_bytes()
        self.module, self.module_from_cache = _load_module(self.engine, wasm, cache_dir or default_cache_dir(), flags)
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        self._pre = linker.instantiate_pre(self.module)
        self._wasm = wasm if snapshot else None  # what the snapshot is made from, until it is
        self._snapshot: Snapshot | None = None
        self._snapshot_lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._ticker_stop = threading.Event()
        self._ticker_lock = threading.Lock()

    @property
    def snapshot(self) -> Snapshot | None:
        """QuickJS's initial state (``snapshot.py``), copied into every instance by
        :meth:`new_instance`: those instances start after ``tb_init`` and must not run
        ``_initialize``. None if not wanted or if it could not be made: every instance then
        makes it itself. Made on first use, which runs wasm: on a thread that passes
        :func:`check_thread_stack` (it raises ``SandboxUnavailable`` on any other)."""
        if self._wasm is not None:
            with self._snapshot_lock:
                if self._wasm is not None:
                    check_thread_stack()
                    try:
                        self._snapshot = capture(lambda: self._instantiate(64 << 20), self._wasm)
                    except (SandboxUnavailable, wasmtime.WasmtimeError, wasmtime.Trap) as exc:
                        log.warning("sandbox.snapshot_unavailable", error=str(exc))
                    self._wasm = None
        return self._snapshot

    @classmethod
    def shared(cls, *, fuel: bool = False) -> WasmRuntime:
        """The process-wide runtime for this fuel setting, created on first use."""
        with cls._shared_lock:
            runtime = cls._shared.get(fuel)
            if runtime is None:
                runtime = cls._shared[fuel] = cls(fuel=fuel)
            return runtime

    def new_instance(self, memory_cap: int) -> tuple[wasmtime.Store, wasmtime.Instance, wasmtime.Memory, bool]:
        """A fresh Store (no WASI capabilities, linear memory capped), an instance of the module,
        its memory, and whether that was initialised from :attr:`snapshot` (then ``_initialize``
        must not run; else the caller runs it). Not from a snapshot whose memory exceeds the cap."""
        self._start_ticker()
        store, instance = self._instantiate(memory_cap)
        memory = export(store, instance, "memory")
        if not isinstance(memory, wasmtime.Memory):
            raise SandboxUnavailable("tb_qjs.wasm does not export its memory")
        snapshot = self.snapshot
        restored = snapshot is not None and snapshot.memory_bytes <= memory_cap
        if snapshot is not None and restored:
            snapshot.restore(store, memory)
        return store, instance, memory, restored

    def _instantiate(self, memory_cap: int) -> tuple[wasmtime.Store, wasmtime.Instance]:
        store = wasmtime.Store(self.engine)
        store.set_wasi(wasmtime.WasiConfig())
        store.set_limits(memory_size=memory_cap)
        store.set_epoch_deadline(1 << 62)  # _initialize and lookups run unbounded but are tiny
        if self.fuel:
            store.set_fuel(1 << 62)
        instance = self._pre.instantiate(store)
        return store, instance

    @staticmethod
    def epoch_ticks(seconds: float) -> int:
        """Epoch deadline (in ticks) that expires no sooner than ``seconds`` from now."""
        return max(1, math.ceil(seconds / EPOCH_TICK_SECONDS)) + 1

    def start_ticker(self) -> None:
        """Starts the epoch thread unless it runs. For stores created on :attr:`engine` by other
        sandboxes (native wasm strategies), so one thread serves every store of the process."""
        self._start_ticker()

    def _start_ticker(self) -> None:
        if self._ticker is not None:
            return
        with self._ticker_lock:
            if self._ticker is None:
                thread = threading.Thread(target=self._tick, name="tradebotd-wasm-epoch", daemon=True)
                thread.start()
                self._ticker = thread
                # Stop ticking before interpreter teardown can free the Engine under the thread.
                atexit.register(self.stop_ticker)

    def _tick(self) -> None:
        # One thread serves every store of this engine; wasm runs without the GIL, so this
        # thread gets to run even while a strategy spins.
        while not self._ticker_stop.wait(EPOCH_TICK_SECONDS):
            self.engine.increment_epoch()

    def stop_ticker(self) -> None:
        """Stops the epoch thread (tests, shutdown; also run at exit). Epoch deadlines stop
        advancing, so only the interrupt deadline still stops runaway strategies."""
        self._ticker_stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join()


def _load_module(
    engine: wasmtime.Engine, wasm: bytes, cache_dir: Path, flags: str
) -> tuple[wasmtime.Module, bool]:
    """The compiled module from ``cache_dir`` if a matching ``.cwasm`` exists, else compiled
    and written there atomically. Returns (module, loaded_from_cache)."""
    key = hashlib.sha256()
    for part in (wasm, importlib.metadata.version("wasmtime").encode(), flags.encode()):
        key.update(hashlib.sha256(part).digest())
    path = cache_dir / f"tb_qjs-{key.hexdigest()[:32]}.cwasm"
    if path.is_file():
        try:
            return wasmtime.Module.deserialize_file(engine, str(path)), True
        except wasmtime.WasmtimeError as exc:  # truncated file, other CPU features, ...
            log.warning("sandbox.module_cache_unusable", path=str(path), error=str(exc))
    module = wasmtime.Module(engine, wasm)
    try:
        # 0700: deserializing a .cwasm runs its machine code, so only this user may write it.
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".tb_qjs-", delete=False) as tmp:
            tmp.write(module.serialize())
        os.replace(tmp.name, path)
    except OSError as exc:
        log.warning("sandbox.module_cache_write_failed", path=str(path), error=str(exc))
    return module, False


def export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> object:
    """One export by name. ``Instance.exports(store)`` wraps every export of the module at once,
    which cost 3.4 ms per instance on a QuickJS build; this costs ~10 µs."""
    item = ffi.wasmtime_extern_t()
    encoded = name.encode()
    found = ffi.wasmtime_instance_export_get(
        store._context(), ctypes.byref(instance._instance), encoded, len(encoded), ctypes.byref(item)
    )
    if not found:
        raise SandboxUnavailable(f"tb_qjs.wasm does not export {name!r}: rebuild it with `make wasm`")
    return wrap_extern(item)


def _prototype(name: str, restype: type | None, *argtypes: type) -> Callable[..., Any]:
    """Our own prototype of a C function (``dll[name]`` returns a fresh function object, so
    wasmtime-py's binding keeps its argtypes): addresses go in as plain ints, the cheapest
    conversion ctypes has (≈0.2 µs per call against ≈0.5 µs through wasmtime-py's bindings)."""
    func = ffi.dll[name]
    func.argtypes = list(argtypes)
    func.restype = restype
    return func


_func_call_unchecked = _prototype(
    "wasmtime_func_call_unchecked", ctypes.c_void_p,
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
)
_set_epoch_deadline = _prototype("wasmtime_context_set_epoch_deadline", None, ctypes.c_void_p, ctypes.c_uint64)
_memory_data = _prototype("wasmtime_memory_data", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
_memory_data_size = _prototype("wasmtime_memory_data_size", ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p)


class RawStore:
    """The per-call Store operations of a hot path through the prototypes above: the epoch
    deadline, and one linear memory's address and size (it can move only when it grows)."""

    __slots__ = ("_context", "_memory", "_memory_address", "_store")

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._store = store  # the context address lives as long as the store
        self._memory = memory  # keeps the wasmtime_memory_t behind _memory_address alive
        self._context = ctypes.cast(store._context(), ctypes.c_void_p).value
        self._memory_address = ctypes.addressof(memory._memory)

    def set_epoch_deadline(self, ticks: int) -> None:
        _set_epoch_deadline(self._context, ticks)

    def memory_size(self) -> int:
        return int(_memory_data_size(self._context, self._memory_address))

    def memory_address(self) -> int:
        return int(_memory_data(self._context, self._memory_address) or 0)


class RawI32Call:
    """An exported function of i32 parameters and results, called through
    ``wasmtime_func_call_unchecked`` with preallocated raw values: ≈1.1 µs per call against
    ≈2.7 µs through ``wasmtime_func_call`` with ``wasmtime_val_t`` arrays (no value conversion, no
    ctypes object created per call). Every hot path uses it: a native strategy's whole evaluation
    costs about one call, and a JS step's host side is a few µs.

    A call returns the first result (0 if there is none); :meth:`result` reads the others.
    Wasmtime does not check the signature on this path, so the constructor does. Raises
    ``wasmtime.Trap`` when the wasm traps (the instance must then be discarded).
    """

    __slots__ = ("_context", "_func", "_func_address", "_n_params", "_n_results", "_n_values", "_store", "_trap",
                 "_trap_address", "_values", "_values_address")

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func) -> None:
        ty = func.type(store)
        if any(str(kind) != "i32" for kind in (*ty.params, *ty.results)):
            raise TypeError("RawI32Call needs a function whose parameters and results are all i32")
        self._store = store  # the context address below lives as long as the store
        self._func = func  # keeps the wasmtime_func_t behind _func_address alive
        self._context = ctypes.cast(store._context(), ctypes.c_void_p).value
        self._func_address = ctypes.addressof(func._func)
        self._n_params = len(ty.params)
        self._n_results = len(ty.results)
        self._n_values = max(1, len(ty.params), len(ty.results))
        self._values = (ffi.wasmtime_val_raw * self._n_values)()
        self._values_address = ctypes.addressof(self._values)
        self._trap = ctypes.c_void_p()
        self._trap_address = ctypes.addressof(self._trap)

    def __call__(self, *args: int) -> int:
        if len(args) != self._n_params:
            raise TypeError(f"expected {self._n_params} arguments, got {len(args)}")
        values = self._values
        for i, value in enumerate(args):
            values[i].i32 = value
        error = _func_call_unchecked(
            self._context, self._func_address, self._values_address, self._n_values, self._trap_address
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, ctypes.POINTER(ffi.wasmtime_error_t)))
        if self._trap.value:
            self._raise_trap()
        return int(values[0].i32) if self._n_results else 0

    def call1(self, arg: int) -> int:
        """``self(arg)`` for a one-parameter function, minus the generic argument handling."""
        self._values[0].i32 = arg
        error = _func_call_unchecked(
            self._context, self._func_address, self._values_address, self._n_values, self._trap_address
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, ctypes.POINTER(ffi.wasmtime_error_t)))
        if self._trap.value:
            self._raise_trap()
        return int(self._values[0].i32) if self._n_results else 0

    def result(self, index: int) -> int:
        """Result ``index`` of the last call."""
        if not 0 <= index < self._n_results:
            raise IndexError(f"the function has {self._n_results} results")
        return int(self._values[index].i32)

    def _raise_trap(self) -> None:
        trap = ctypes.cast(ctypes.c_void_p(self._trap.value), ctypes.POINTER(ffi.wasm_trap_t))
        self._trap.value = None  # the Trap object owns it now
        raise wasmtime.Trap._from_ptr(trap)


def i32_export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> RawI32Call:
    """The JS sandbox's export ``name`` (all-i32 function) as a :class:`RawI32Call`;
    :class:`SandboxUnavailable` if tb_qjs.wasm has no such function (a stale build)."""
    func = export(store, instance, name)
    if not isinstance(func, wasmtime.Func):
        raise SandboxUnavailable(f"tb_qjs.wasm export {name!r} is not a function")
    try:
        return RawI32Call(store, func)
    except TypeError:
        raise SandboxUnavailable(f"tb_qjs.wasm export {name!r} has an unexpected signature") from None


# ---------------------------------------------------------------- thread stack check

_thread_ok = threading.local()


def _current_thread_stack_size() -> int | None:
    """Native stack size of the calling thread (Linux/glibc or musl), or None if unknown."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_ulong
        attr = ctypes.create_string_buffer(128)  # pthread_attr_t is 56 bytes on x86_64/aarch64
        if libc.pthread_getattr_np(ctypes.c_ulong(libc.pthread_self()), attr) != 0:
            return None
        try:
            addr, size = ctypes.c_void_p(), ctypes.c_size_t()
            if libc.pthread_attr_getstack(attr, ctypes.byref(addr), ctypes.byref(size)) != 0:
                return None
            return size.value
        finally:
            libc.pthread_attr_destroy(attr)
    except (AttributeError, OSError):
        return None


def check_thread_stack() -> None:
    """Raises :class:`SandboxUnavailable` if the calling thread's native stack is too small to run
    wasm safely (wasmtime would segfault the process, not trap). Cached per thread."""
    if getattr(_thread_ok, "checked", False):
        return
    size = _current_thread_stack_size()
    if threading.current_thread() is threading.main_thread():
        soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
        if soft == resource.RLIM_INFINITY:
            size = None  # the main thread's stack grows on demand
        elif size is None:
            size = soft
    if size is not None and size < MIN_THREAD_STACK:
        raise SandboxUnavailable(
            f"this thread has a {size >> 10} KiB native stack; wasm needs at least "
            f"{MIN_THREAD_STACK >> 20} MiB (call threading.stack_size({MIN_THREAD_STACK}) before "
            "creating executor threads)"
        )
    _thread_ok.checked = True
