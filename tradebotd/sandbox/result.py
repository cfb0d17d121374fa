"""Host-side validation of what the sandbox returns: result JSON, error JSON, console JSON.

The guest (``qjs/tb_prelude.js``) already rejects bad results with precise messages, but it runs
inside the strategy's own JS realm, so the host validates the JSON again and is the authority:
the pydantic model ``_Result`` defines a valid result (a quicker check answers first for the
results it is certain about, see :func:`parse_decision`).
JSON has no NaN or Infinity (``JSON.stringify`` writes them as ``null``), so ``null`` inside
``indicators`` is invalid, and numbers must be finite and, for amounts and prices, positive.
``orderType`` is ``"market"`` (the default) or ``"limit"``, and ``limitPrice`` is given exactly
for a limit order. Unknown keys are ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

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
    orderType: Literal["market", "limit"] | None = None
    limitPrice: _PositiveFinite | None = None

    @model_validator(mode="after")
    def _limit_price_with_limit_orders(self) -> _Result:
        if self.orderType == "limit" and self.limitPrice is None:
            raise ValueError("orderType 'limit' needs a limitPrice")
        if self.orderType != "limit" and self.limitPrice is not None:
            raise ValueError("limitPrice is only for orderType 'limit'")
        return self


_HOLD_JSON = b'{"signal":"hold"}'
_HOLD = Decision(signal="hold")
_FIELDS = frozenset(_Result.model_fields) - {"orderType", "limitPrice"}
"""What the quick check handles; a limit order (rare) goes to the model."""
_SIGNALS = frozenset(("buy", "sell", "hold"))
_EXACT_INT = 2**53  # integers below it become the same float whoever converts them
_SCALARS = frozenset((bool, int, float, str))  # indicator values kept as they are


def parse_decision(output: bytes, *, consumed: int = 1) -> Decision:
    """The validated :class:`Decision` for a result JSON, or :class:`InvalidResult`.

    The model (``_Result``) is the definition of a valid result. A hand-written check answers
    first (≈1 µs against ≈3.5 µs): it accepts only what the model certainly accepts, with the
    same values and types, and hands everything else to the model, which then accepts or
    rejects with its messages. So the two never disagree; tests/sandbox/test_result_parity.py
    compares them on edge cases and random results.
    """
    if output == _HOLD_JSON:  # the common case, skip the validators
        return _HOLD
    decision = _certainly_valid(output)
    return decision if decision is not None else _validated_by_model(output, consumed)


class _Unsure(Exception):
    """Raised by the quick check: the model must decide."""


def _certainly_valid(output: bytes) -> Decision | None:
    """The decision if the model certainly accepts ``output``, else None.

    Only for JSON in orjson's own form (``orjson.dumps`` of what was read gives the same bytes):
    then nothing was lost in reading it (no duplicate keys, which the model validates one by one;
    no integer beyond 64 bits, which orjson reads as a float and the model as an int), and the
    values checked are all the model sees. The guest's ``JSON.stringify`` writes that form for
    the six known keys (it drops others), except for numbers below 1e-5 or integers of 2^64 and
    more, which the model then checks.
    """
    try:
        data = orjson.loads(output)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or not _FIELDS.issuperset(data):
        return None
    signal, reason = data.get("signal"), data.get("reason")
    if type(signal) is not str or signal not in _SIGNALS:
        return None
    if reason is not None and (type(reason) is not str or len(reason) > MAX_REASON_CHARS):
        return None
    amount, take_profit, stop_loss = data.get("amount"), data.get("takeProfit"), data.get("stopLoss")
    indicators = data.get("indicators")
    try:
        if amount is not None:
            amount = _positive(amount)
        if take_profit is not None:
            take_profit = _positive(take_profit)
        if stop_loss is not None:
            stop_loss = _positive(stop_loss)
        if indicators is not None:
            indicators = _indicators(indicators)
    except _Unsure:
        return None
    # Positional: keyword arguments cost a frozen dataclass's __init__ 1 µs more.
    decision = Decision(signal, amount, reason, indicators, take_profit, stop_loss)  # type: ignore[arg-type]
    return decision if orjson.dumps(data) == output else None


def _number(value: object) -> float:
    """A JSON number as the model's float (orjson reads no NaN or infinity), else :class:`_Unsure`."""
    if type(value) is float:
        return value
    if type(value) is int and -_EXACT_INT < value < _EXACT_INT:
        return float(value)
    raise _Unsure


def _positive(value: object) -> float:
    number = _number(value)
    if number > 0:
        return number
    raise _Unsure


def _indicators(value: object) -> dict[str, IndicatorValue]:
    """The model's indicators: bools, ints (kept ints), floats, strings, lists of floats."""
    if type(value) is not dict:
        raise _Unsure
    for item in value.values():
        if type(item) not in _SCALARS:  # a list (its ints become floats), or not an indicator
            return {key: _indicator(item) for key, item in value.items()}
    return value  # orjson's fresh dict, already what the model gives


def _indicator(value: object) -> IndicatorValue:
    kind = type(value)
    if kind is list:
        return [_number(x) for x in value]  # type: ignore[attr-defined]  # a list
    if kind in _SCALARS:
        return value  # type: ignore[return-value]  # one of _SCALARS
    raise _Unsure


def _validated_by_model(output: bytes, consumed: int) -> Decision:
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
        result.signal,
        result.amount,
        result.reason,
        indicators,
        result.takeProfit,
        result.stopLoss,
        result.orderType or "market",
        result.limitPrice,
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
