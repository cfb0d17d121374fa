"""Sandboxed strategy execution: JavaScript strategies in QuickJS-NG compiled to wasm, run by Wasmtime.

Entry point: :class:`JsStrategy` (``js.py``). Errors: ``errors.py``. The wasm module is built
from ``qjs/`` by ``qjs/build.py``.
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
from tradebotd.sandbox.js import RANDOM_SEED, EvalInfo, JsStrategy, SandboxLimits
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
