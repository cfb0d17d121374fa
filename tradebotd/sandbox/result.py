"""Host-side validation of what the sandbox returns: result JSON, error JSON, console JSON.

The guest (``qjs/tb_prelude.js``) already rejects bad results with precise messages, but it runs
inside the strategy's own JS realm, so the host validates the JSON again and is the authority.
JSON has no NaN or Infinity (``JSON.stringify`` writes them as ``null``), so ``null`` inside
``indicators`` is invalid, and numbers must be finite and, for amounts and prices, positive.
Unknown keys are ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from tradebotd.model import Decision, IndicatorValue
from tradebotd.sandbox.errors import InvalidResult

__all__ = ["MAX_REASON_CHARS", "ConsoleLine", "JsError", "parse_console", "parse_decision", "parse_error"]

MAX_REASON_CHARS = 1000

ConsoleLine = tuple[str, str]
"""(level, text): level is log, info, warn, error or debug."""

_FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False)]
_PositiveFinite = Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)]
# Order matters: bool before int (JSON true is not 1), int before float (keep integers exact).
_Indicator = Annotated[
    StrictBool | StrictInt | _FiniteFloat | StrictStr | list[_FiniteFloat],
    Field(union_mode="left_to_right"),
]


class _Result(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    signal: Literal["buy", "sell", "hold"]
    amount: _PositiveFinite | None = None
    reason: Annotated[str, Field(max_length=MAX_REASON_CHARS)] | None = None
    indicators: dict[str, _Indicator] | None = None
    takeProfit: _PositiveFinite | None = None
    stopLoss: _PositiveFinite | None = None


_HOLD_JSON = b'{"signal":"hold"}'
_HOLD = Decision(signal="hold")


def parse_decision(output: bytes, *, consumed: int = 1) -> Decision:
    """The validated :class:`Decision` for a result JSON, or :class:`InvalidResult`."""
    if output == _HOLD_JSON:  # the common case, skip the validator
        return _HOLD
    try:
        result = _Result.model_validate_json(output)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'result'}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidResult(f"invalid strategy result: {problems}", consumed=consumed) from None
    indicators: dict[str, IndicatorValue] | None = None
    if result.indicators is not None:
        indicators = {
            key: [float(x) for x in value] if isinstance(value, list) else value
            for key, value in result.indicators.items()
        }
    return Decision(
        signal=result.signal,
        amount=result.amount,
        reason=result.reason,
        indicators=indicators,
        take_profit=result.takeProfit,
        stop_loss=result.stopLoss,
    )


class JsError:
    """The ``{"error": {name, message, stack}}`` object the shim writes for a failure."""

    __slots__ = ("message", "name", "stack")

    def __init__(self, name: str, message: str, stack: str) -> None:
        self.name = name
        self.message = message
        self.stack = stack

    def where(self, filename: str) -> str:
        """``" in spin (strategy.js:3:5)"``: the innermost stack frame in ``filename`` (frames in
        the sandbox's own prelude mean nothing to the strategy's author), or ``""``."""
        for line in self.stack.splitlines():
            frame = line.strip().removeprefix("at ").strip()
            if f"({filename}:" in frame or frame.startswith(f"{filename}:"):
                return f" in {frame}"
        return ""

    def location(self, filename: str) -> tuple[int | None, int | None]:
        """(line, column) of the innermost stack frame in ``filename``, if any."""
        match = re.search(rf"{re.escape(filename)}:(\d+)(?::(\d+))?", self.stack)
        if match is None:
            return None, None
        column = match.group(2)
        return int(match.group(1)), int(column) if column else None


def parse_error(output: bytes, fallback: str) -> JsError:
    """The error the shim described; ``fallback`` is the message if it wrote none (OOM)."""
    try:
        error = orjson.loads(output)["error"]
        return JsError(str(error.get("name", "Error")), str(error.get("message", "")), str(error.get("stack", "")))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return JsError("Error", fallback, "")


def parse_console(logs: bytes) -> tuple[ConsoleLine, ...]:
    """Console lines captured by the prelude: a JSON array of [level, text] pairs."""
    if not logs:
        return ()
    try:
        entries = orjson.loads(logs)
        return tuple((str(level), str(text)) for level, text in entries)
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return (("warn", "(console output could not be decoded)"),)
