"""The trading engine (:mod:`.core`), split into evaluation scheduling (:mod:`.evaluation`), order
handling (:mod:`.orders`) and record formatting (:mod:`.records`); the runtime seams are in
:mod:`.runtime`. ``from tradebotd.engine import Engine, EngineConfig, order_intent, ...`` is the
public interface."""

from ..orders.intent import order_intent, order_intent_at, to_decimal
from .core import Engine, EngineConfig, EngineStats, fingerprint
from .evaluation import PARALLEL_MIN_STRATEGIES, Evaluator, Round
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
