"""The messages between the daemon and an evaluation process, and their encoding.

Framing is :class:`multiprocessing.connection.Connection` (length-prefixed frames) over a socket
pair. Every frame is JSON (orjson), except the candle rows of a ``history`` request, which follow
it as one frame of raw little-endian float64. Nothing is pickled: a child runs untrusted code
(inside wasm), so what it sends back is parsed as data, never executed.

Requests (daemon -> child); each gets exactly one reply, ``["ok", ...]`` or ``["error", error]``:

    ["init", sandbox_settings]                     -> ["ok", pid]
    ["load", handle, strategy_row, symbol, interval] -> ["ok"]
    ["history", handle] + rows frame               -> ["ok"]
    ["step", candle_floats, [[handle, position], ...]] -> ["ok", [outcome, ...]]
    ["steps", [[candle_floats, [[handle, position], ...]], ...]] -> ["ok", [[outcome, ...], ...]]
    ["close", handle]                              -> ["ok"]

``steps`` is many candles' ``step`` requests in one frame (the candles of a minute boundary
that closed while the process was busy), answered together, in order.

``position`` is null or ``[amount, entry_price, entry_time, take_profit, stop_loss]`` (decimals
as strings). An ``outcome`` is ``["d", decision, info, consumed]`` or ``["e", error]``.
An ``error`` is ``{"type", "text", "attrs"}``: the exception's class name, ``str()`` and its
attributes, rebuilt on this side as the same class (:func:`decode_error`).
"""

from __future__ import annotations

from dataclasses import asdict
from decimal import Decimal
from typing import Any

import orjson

from tradebotd.errors import StrategyError
from tradebotd.model import Decision, Position
from tradebotd.sandbox import errors as sandbox_errors
from tradebotd.sandbox.sandboxed import EvalInfo
from tradebotd.store.base import StrategyRow

__all__ = [
    "RemoteFailure",
    "decode_decision",
    "decode_error",
    "decode_position",
    "decode_row",
    "dumps",
    "encode_decision",
    "encode_error",
    "encode_position",
    "encode_row",
    "loads",
]

dumps = orjson.dumps
loads = orjson.loads


class RemoteFailure(RuntimeError):
    """An exception in an evaluation process that is not a strategy's fault (a bug): the engine
    logs it as an internal sandbox error, as it does for the same failure in-process."""


_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        StrategyError,
        sandbox_errors.StrategyLoadError,
        sandbox_errors.StrategyEvalError,
        sandbox_errors.StrategyRuntimeError,
        sandbox_errors.StrategyTimeout,
        sandbox_errors.StrategyMemoryError,
        sandbox_errors.InvalidResult,
        sandbox_errors.SandboxTrap,
        sandbox_errors.SandboxUnavailable,
    )
}


def encode_error(exc: BaseException) -> dict[str, Any]:
    attrs = {k: v for k, v in getattr(exc, "__dict__", {}).items() if isinstance(v, str | int | float | bool | None)}
    name = type(exc).__name__ if type(exc).__name__ in _ERRORS else f"{type(exc).__module__}.{type(exc).__name__}"
    return {"type": name, "text": str(exc), "attrs": attrs}


def decode_error(error: Any) -> Exception:
    """The exception a child reported, as the class it was (strategy errors keep their
    attributes: line, stack, consumed, ...); anything else becomes :class:`RemoteFailure`."""
    if not isinstance(error, dict) or not isinstance(error.get("text"), str):
        return RemoteFailure(f"malformed error from an evaluation process: {error!r:.200}")
    cls = _ERRORS.get(error.get("type", ""))
    if cls is None:
        return RemoteFailure(f"{error.get('type')}: {error['text']}")
    exc = cls.__new__(cls)
    Exception.__init__(exc, error["text"])
    attrs = error.get("attrs")
    if isinstance(attrs, dict):  # plain public data attributes only (line, stack, consumed, ...)
        exc.__dict__.update(
            {k: v for k, v in attrs.items() if not k.startswith("_") and isinstance(v, str | int | float | bool | None)}
        )
    return exc


def encode_position(position: Position | None) -> list[Any] | None:
    if position is None:
        return None
    tp, sl = position.take_profit, position.stop_loss
    return [
        str(position.amount),
        str(position.entry_price),
        position.entry_time,
        None if tp is None else str(tp),
        None if sl is None else str(sl),
    ]


def decode_position(data: Any) -> Position | None:
    if data is None:
        return None
    amount, entry_price, entry_time, tp, sl = data
    return Position(
        Decimal(amount),
        Decimal(entry_price),
        int(entry_time),
        None if tp is None else Decimal(tp),
        None if sl is None else Decimal(sl),
    )


def encode_decision(decision: Decision, info: EvalInfo) -> list[Any]:
    return [
        [
            decision.signal,
            decision.amount,
            decision.reason,
            None if decision.indicators is None else dict(decision.indicators),
            decision.take_profit,
            decision.stop_loss,
            decision.order_type,
            decision.limit_price,
        ],
        [info.elapsed_us, [list(line) for line in info.console], info.rebuilt, info.fuel],
    ]


def decode_decision(decision: Any, info: Any) -> tuple[Decision, EvalInfo]:
    signal, amount, reason, indicators, take_profit, stop_loss, order_type, limit_price = decision
    if signal not in ("buy", "sell", "hold"):
        raise RemoteFailure(f"an evaluation process reported signal {signal!r:.40}")
    if order_type not in ("market", "limit"):
        raise RemoteFailure(f"an evaluation process reported order type {order_type!r:.40}")
    elapsed_us, console, rebuilt, fuel = info
    return (
        Decision(signal, amount, reason, indicators, take_profit, stop_loss, order_type, limit_price),
        EvalInfo(float(elapsed_us), tuple((str(level), str(text)) for level, text in console), bool(rebuilt), fuel),
    )


def encode_row(row: StrategyRow) -> dict[str, Any]:
    data = asdict(row)
    data["parameters"] = dict(row.parameters)
    return data


def decode_row(data: dict[str, Any]) -> StrategyRow:
    return StrategyRow(**data)
