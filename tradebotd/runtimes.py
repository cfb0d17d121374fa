"""Which sandbox runs which strategy row (``strategies.kind``)."""

from __future__ import annotations

from .config import SandboxSettings
from .engine import RuntimeFactory, StrategyRuntime
from .model import StreamKey
from .sandbox.errors import StrategyLoadError
from .sandbox.js import JsStrategy, SandboxLimits
from .store.base import StrategyRow

__all__ = ["make_runtime_factory", "sandbox_limits"]


def sandbox_limits(settings: SandboxSettings) -> SandboxLimits:
    return SandboxLimits(
        timeout_ms=settings.timeout_ms,
        memory_bytes=settings.memory_mb << 20,
        max_result_bytes=settings.max_result_kb << 10,
        max_candles=settings.max_candles,
    )


def make_runtime_factory(settings: SandboxSettings) -> RuntimeFactory:
    limits = sandbox_limits(settings)

    def load(row: StrategyRow, key: StreamKey) -> StrategyRuntime:
        if row.kind != "js":
            raise StrategyLoadError(f"strategy kind {row.kind!r} is not supported by this version")
        if not row.source.strip():
            raise StrategyLoadError("the strategy has no code (typescript_code is empty)")
        return JsStrategy(row.source, parameters=row.parameters, interval_ms=key.interval_ms, limits=limits)

    return load
