"""Errors raised by the JavaScript strategy sandbox.

Every one of them is a :class:`tradebotd.errors.StrategyError`: the strategy, not the daemon,
is at fault (or, for ``SandboxUnavailable``, this machine cannot run strategies at all).

    StrategyError (tradebotd.errors)
    ├── StrategyLoadError       the source did not load: syntax error (line/column), top-level
    │                           throw or timeout, no entry function, bad parameters
    ├── StrategyEvalError       one evaluation failed; the strategy stays usable
    │   ├── StrategyRuntimeError    the JS threw (incl. RangeError from deep recursion)
    │   ├── StrategyTimeout         the wall-clock deadline (or the fuel budget) ran out;
    │   │                           the instance is rebuilt
    │   ├── StrategyMemoryError     the JS heap limit was reached; the instance is rebuilt
    │   ├── InvalidResult           the returned value is not a valid decision
    │   └── SandboxTrap             the wasm instance trapped; it is rebuilt for the next call
    └── SandboxUnavailable      the sandbox cannot run here (wasm missing or stale, thread
                                stack too small)

``StrategyEvalError.consumed`` says how many of the candles passed to the failing call were
appended to the strategy's history (the failing candle included), so a backtest can resume
right after it.
"""

from __future__ import annotations

from tradebotd.errors import StrategyError

__all__ = [
    "InvalidResult",
    "SandboxTrap",
    "SandboxUnavailable",
    "StrategyError",
    "StrategyEvalError",
    "StrategyLoadError",
    "StrategyMemoryError",
    "StrategyRuntimeError",
    "StrategyTimeout",
]


class StrategyLoadError(StrategyError):
    """The strategy source could not be loaded.

    ``name``/``message``/``stack`` describe the JS error (``name`` is ``"SyntaxError"`` for a
    parse error, ``"NoEntryFunction"`` when no entry function exists). ``line`` and ``column``
    (1-based) locate the error in the strategy's file when known.
    """

    def __init__(
        self,
        message: str,
        *,
        name: str = "Error",
        stack: str = "",
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"{name}: {message}{where}")
        self.name = name
        self.message = message
        self.stack = stack
        self.line = line
        self.column = column


class StrategyEvalError(StrategyError):
    """One evaluation failed; the strategy can be called again."""

    def __init__(self, message: str, *, consumed: int = 0) -> None:
        super().__init__(message)
        self.consumed = consumed


class StrategyRuntimeError(StrategyEvalError):
    """The strategy threw: ``name``, ``message`` and ``stack`` come from the JS error."""

    def __init__(self, name: str, message: str, stack: str = "", *, consumed: int = 0) -> None:
        super().__init__(f"{name}: {message}", consumed=consumed)
        self.name = name
        self.message = message
        self.stack = stack


class StrategyTimeout(StrategyEvalError):
    """The evaluation ran past its deadline; the instance is rebuilt for the next call.

    ``trapped`` is false when QuickJS's interrupt handler stopped it (the usual case; ``stack``
    then says where the strategy was) and true when the epoch backstop or the fuel budget
    trapped the instance.
    """

    def __init__(self, message: str, *, trapped: bool = False, stack: str = "", consumed: int = 0) -> None:
        super().__init__(message, consumed=consumed)
        self.trapped = trapped
        self.stack = stack


class StrategyMemoryError(StrategyEvalError):
    """The strategy reached its JS heap limit; the instance is rebuilt for the next call.
    ``stack`` says where the allocation failed, when QuickJS could still tell."""

    def __init__(self, message: str, *, stack: str = "", consumed: int = 0) -> None:
        super().__init__(message, consumed=consumed)
        self.stack = stack


class InvalidResult(StrategyEvalError):
    """The strategy returned something that is not ``{signal: 'buy'|'sell'|'hold', ...}``."""


class SandboxTrap(StrategyEvalError):
    """The wasm instance trapped (stack overflow, out-of-bounds access, ...).

    The instance is discarded; the next call rebuilds it and re-sends the history.
    """

    def __init__(self, message: str, *, trap_code: str | None = None, consumed: int = 0) -> None:
        super().__init__(message, consumed=consumed)
        self.trap_code = trap_code


class SandboxUnavailable(StrategyError):
    """The sandbox cannot run strategies in this process (see the message for the fix)."""
