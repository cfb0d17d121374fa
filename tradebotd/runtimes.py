"""Which sandbox runs which strategy row (``strategies.kind``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import SandboxSettings
from .engine import RuntimeFactory, StrategyRuntime
from .model import StreamKey
from .sandbox.errors import StrategyLoadError
from .sandbox.js import JsStrategy
from .sandbox.native import WasmStrategy, load_wasm_source
from .sandbox.sandboxed import SandboxLimits
from .store.base import StrategyKind, StrategyRow

__all__ = ["load_code", "make_runtime_factory", "sandbox_limits"]


def sandbox_limits(settings: SandboxSettings, *, fuel: int | None = None) -> SandboxLimits:
    return SandboxLimits(
        timeout_ms=settings.timeout_ms,
        memory_bytes=settings.memory_mb << 20,
        max_result_bytes=settings.max_result_kb << 10,
        max_candles=settings.max_candles,
        fuel=fuel,
    )


def make_runtime_factory(settings: SandboxSettings, *, fuel: int | None = None) -> RuntimeFactory:
    """``fuel``: meter every evaluation with this budget (``tradebotd strategy check --fuel``)."""
    limits = sandbox_limits(settings, fuel=fuel)

    def load(row: StrategyRow, key: StreamKey) -> StrategyRuntime:
        if not row.source.strip():
            raise StrategyLoadError("the strategy has no code (typescript_code is empty)")
        if row.kind == "wasm":
            # WAT text, base64 of a binary module, or (embedded mode) a path to a .wasm/.wat file.
            return WasmStrategy(
                load_wasm_source(row.source), parameters=row.parameters, interval_ms=key.interval_ms, limits=limits
            )
        if row.kind == "js":
            source, filename = row.source, "strategy.js"
        elif row.kind == "ts":
            # Imported here: tree-sitter is for TypeScript only (a JS backtest does not load it).
            from .sandbox.typescript import erase_types

            # Types become spaces, so line and column numbers in JS errors match the user's TS.
            source, filename = erase_types(row.source), "strategy.ts"
        else:
            raise StrategyLoadError(f"strategy kind {row.kind!r} is not supported by this version")
        return JsStrategy(
            source, parameters=row.parameters, interval_ms=key.interval_ms, limits=limits, filename=filename
        )

    return load


def load_code(
    code: str,
    kind: StrategyKind,
    *,
    key: StreamKey,
    parameters: Mapping[str, Any],
    settings: SandboxSettings,
    name: str,
    fuel: int | None = None,
) -> StrategyRuntime:
    """Code that is not in the store (``strategy check``, ``backtest``), loaded as the daemon
    loads a strategy row holding it: same loader, same limits. ``name`` fills the row's names."""
    row = StrategyRow(
        id=name,
        user_id=name,
        name=name,
        python_code=None,
        typescript_code=code,
        asset=key.symbol,
        interval=key.interval,
        status="running",
        portfolio_id=name,
        parameters=dict(parameters),
        last_run_at=None,
        last_signal_at=None,
        error_message=None,
        created_at="",
        updated_at="",
        kind=kind,
    )
    return make_runtime_factory(settings, fuel=fuel)(row, key)
