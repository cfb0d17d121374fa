"""Sandboxed strategy execution: JavaScript strategies in QuickJS-NG compiled to wasm, run by Wasmtime.

Entry points: :class:`JsStrategy` (``js.py``) and ``native.WasmStrategy`` (native wasm
strategies), both :class:`~tradebotd.sandbox.sandboxed.SandboxedStrategy` with
:class:`SandboxLimits`. Errors: ``errors.py``. The JS sandbox's wasm module is built from ``qjs/``
by ``qjs/build.py``.
"""

from tradebotd.sandbox.errors import (
    InvalidResult,
    SandboxTrap,
    SandboxUnavailable,
    StrategyEvalError,
    StrategyLoadError,
    StrategyMemoryError,
    StrategyRuntimeError,
    StrategyTimeout,
)
from tradebotd.sandbox.js import RANDOM_SEED, JsStrategy
from tradebotd.sandbox.sandboxed import EvalInfo, SandboxLimits
from tradebotd.sandbox.wasm import WasmRuntime

__all__ = [
    "RANDOM_SEED",
    "EvalInfo",
    "InvalidResult",
    "JsStrategy",
    "SandboxLimits",
    "SandboxTrap",
    "SandboxUnavailable",
    "StrategyEvalError",
    "StrategyLoadError",
    "StrategyMemoryError",
    "StrategyRuntimeError",
    "StrategyTimeout",
    "WasmRuntime",
]
