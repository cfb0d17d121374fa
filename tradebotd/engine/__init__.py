"""The trading engine (:mod:`.core`), split into evaluation scheduling (:mod:`.evaluation`), order
handling (:mod:`.orders`) and record formatting (:mod:`.records`); the runtime seams are in
:mod:`.runtime`. ``from tradebotd.engine import Engine, EngineConfig, order_intent, ...`` is the
public interface.

The engine itself (:mod:`.core`, :mod:`.evaluation` and what they import: asyncio's engine
machinery, the order pipeline, the status counters) is imported on first use of one of its names
(PEP 562 ``__getattr__``): ``tradebotd backtest`` needs only the runtime seams, and importing the
engine with them cost it ~30 ms of its start-up."""

import importlib
from typing import TYPE_CHECKING, Any

from ..orders.intent import order_intent, order_intent_at, to_decimal
from .runtime import (
    BatchRuntime,
    EvalReport,
    Floats6,
    GroupedRuntime,
    RuntimeFactory,
    StepCollect,
    StepGroup,
    StepOutcome,
    StrategyRuntime,
    sandbox_pool,
)

if TYPE_CHECKING:
    from .core import Engine, EngineConfig, EngineStats, fingerprint
    from .evaluation import PARALLEL_MIN_STRATEGIES, Evaluator, Round

_LAZY = {
    "Engine": ".core",
    "EngineConfig": ".core",
    "EngineStats": ".core",
    "fingerprint": ".core",
    "PARALLEL_MIN_STRATEGIES": ".evaluation",
    "Evaluator": ".evaluation",
    "Round": ".evaluation",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


_decimal = to_decimal  # the name tests and callers of the single-module engine used

__all__ = [
    "PARALLEL_MIN_STRATEGIES",
    "BatchRuntime",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "EvalReport",
    "Evaluator",
    "Floats6",
    "GroupedRuntime",
    "Round",
    "RuntimeFactory",
    "StepCollect",
    "StepGroup",
    "StepOutcome",
    "StrategyRuntime",
    "fingerprint",
    "order_intent",
    "order_intent_at",
    "sandbox_pool",
]
