"""Compiled modules, per Engine: the driver (``driver.wat``, shipped as package data, compiled
once) and the strategies' (the last :data:`COMPILED_KEPT`, keyed by their bytes' sha256).

Errors: :class:`~tradebotd.sandbox.errors.StrategyLoadError` named ``CompileError`` for a
strategy module that does not compile.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from importlib import resources

import wasmtime

from tradebotd.sandbox.errors import StrategyLoadError

__all__ = ["COMPILED_KEPT", "compile_strategy", "driver"]

COMPILED_KEPT = 32
_lock = threading.Lock()
_drivers: weakref.WeakKeyDictionary[wasmtime.Engine, wasmtime.Module] = weakref.WeakKeyDictionary()
_compiled: weakref.WeakKeyDictionary[wasmtime.Engine, OrderedDict[bytes, wasmtime.Module]] = weakref.WeakKeyDictionary()


def driver(engine: wasmtime.Engine) -> wasmtime.Module:
    """The driver compiled for ``engine``."""
    with _lock:
        module = _drivers.get(engine)
        if module is None:
            wat = resources.files("tradebotd.sandbox.native").joinpath("driver.wat").read_text(encoding="utf-8")
            module = _drivers[engine] = wasmtime.Module(engine, wat)
        return module


def compile_strategy(engine: wasmtime.Engine, wasm: bytes | str) -> wasmtime.Module:
    """The compiled module. The last 32 compiled per engine are kept, so strategies sharing code,
    reloads and backtest sweeps compile it once (2-3 ms for the examples, more for big modules)."""
    key = hashlib.sha256(wasm.encode() if isinstance(wasm, str) else wasm).digest()
    with _lock:
        cache = _compiled.setdefault(engine, OrderedDict())
        module = cache.get(key)
        if module is not None:
            cache.move_to_end(key)
            return module
    try:  # outside the lock: other strategies load meanwhile
        module = wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        raise StrategyLoadError(str(exc).strip(), name="CompileError") from None
    with _lock:
        cache[key] = module
        while len(cache) > COMPILED_KEPT:
            cache.popitem(last=False)
    return module
