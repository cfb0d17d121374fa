"""What a native module must offer (``strategies_wasm/ABI.md``, version :data:`ABI_VERSION`),
checked once per load: its imports and exports (:func:`inspect_module`), the JSON of ``tb_meta``
(:func:`parse_meta`) and the parameters given for its f64 globals (:func:`parameter_values`).

Errors: :class:`~tradebotd.sandbox.errors.StrategyLoadError`, ``name`` ForbiddenImport,
MissingExport, BadExport, BadMetadata or BadParameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
import wasmtime

from tradebotd.sandbox.errors import StrategyLoadError
from tradebotd.sandbox.result import MAX_REASON_CHARS

__all__ = [
    "ABI_VERSION",
    "MAX_INDICATORS",
    "MAX_META_BYTES",
    "MAX_NAME_CHARS",
    "MAX_REASONS",
    "PAGE",
    "Interface",
    "Meta",
    "inspect_module",
    "parameter_values",
    "parse_meta",
]

ABI_VERSION = 1
MAX_INDICATORS = 64
MAX_REASONS = 1000
MAX_NAME_CHARS = 100
MAX_META_BYTES = 64 << 10
PAGE = 65536  # the only memory page size the ABI allows

# Exports every module must have, with their signatures (parameter types, result types).
_REQUIRED = {
    "tb_abi_version": ((), ("i32",)),
    "tb_alloc": (("i32",), ("i32",)),
    "tb_evaluate": (("i32",) * 9, ("i32",)),
}
_OPTIONAL = {
    "tb_meta": ((), ("i32",)),
    "tb_init": ((), ("i32",)),
    "tb_lookback": ((), ("i32",)),
}
_ABORT = ("env", "abort")  # AssemblyScript's abort(message, file, line, column)


@dataclass(frozen=True, slots=True)
class Interface:
    """What a compiled module offers, checked once at load."""

    imports_abort: bool
    optional: frozenset[str]  # the optional exports present
    parameters: tuple[str, ...]  # exported mutable f64 globals, in export order


def inspect_module(module: wasmtime.Module) -> Interface:
    forbidden = [f"{imp.module}.{imp.name}" for imp in module.imports if (imp.module, imp.name) != _ABORT]
    if forbidden:
        raise StrategyLoadError(
            f"the module imports {', '.join(forbidden)}; a native strategy may import only env.abort "
            "(AssemblyScript) and has no WASI",
            name="ForbiddenImport",
        )
    imports_abort = False
    for imp in module.imports:
        if not isinstance(imp.type, wasmtime.FuncType) or _signature(imp.type) != (("i32",) * 4, ()):
            raise StrategyLoadError("env.abort must be a function (i32, i32, i32, i32) -> ()", name="ForbiddenImport")
        imports_abort = True

    exports = {exp.name: exp.type for exp in module.exports}
    memory = exports.get("memory")
    if not isinstance(memory, wasmtime.MemoryType):
        raise StrategyLoadError("the module does not export its memory as 'memory'", name="MissingExport")
    if memory.is_64 or memory.is_shared or memory.page_size != PAGE:
        raise StrategyLoadError("'memory' must be a 32-bit, unshared memory of 64 KiB pages", name="BadExport")
    for name in _REQUIRED:
        if name not in exports:
            raise StrategyLoadError(f"the module does not export {name} (ABI v{ABI_VERSION})", name="MissingExport")
    for name, signature in (_REQUIRED | _OPTIONAL).items():
        ty = exports.get(name)
        if ty is not None and (not isinstance(ty, wasmtime.FuncType) or _signature(ty) != signature):
            params, results = signature
            raise StrategyLoadError(
                f"{name} must be a function ({', '.join(params)}) -> ({', '.join(results)})", name="BadExport"
            )
    parameters = tuple(
        name for name, ty in exports.items()
        if isinstance(ty, wasmtime.GlobalType) and ty.mutable and str(ty.content) == "f64"
    )
    return Interface(imports_abort, frozenset(name for name in _OPTIONAL if name in exports), parameters)


def _signature(ty: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)


@dataclass(frozen=True, slots=True)
class Meta:
    indicators: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()


def parse_meta(raw: bytes) -> Meta:
    """``tb_meta``'s JSON: ``{"indicators": [names], "reasons": [texts]}``, both optional."""
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StrategyLoadError(f"tb_meta is not valid JSON: {exc}", name="BadMetadata") from None
    if not isinstance(meta, dict) or set(meta) - {"indicators", "reasons"}:
        raise StrategyLoadError(
            'tb_meta must be a JSON object with only "indicators" and "reasons"', name="BadMetadata"
        )
    indicators = meta.get("indicators", [])
    reasons = meta.get("reasons", [])
    if (
        not isinstance(indicators, list) or len(indicators) > MAX_INDICATORS
        or not all(isinstance(x, str) and 0 < len(x) <= MAX_NAME_CHARS for x in indicators)
        or len(set(indicators)) != len(indicators)
    ):
        raise StrategyLoadError(
            f'"indicators" must be at most {MAX_INDICATORS} distinct non-empty names of at most '
            f"{MAX_NAME_CHARS} characters", name="BadMetadata",
        )
    if (
        not isinstance(reasons, list) or len(reasons) > MAX_REASONS
        or not all(isinstance(x, str) and 0 < len(x) <= MAX_REASON_CHARS for x in reasons)
    ):
        raise StrategyLoadError(
            f'"reasons" must be at most {MAX_REASONS} non-empty texts of at most {MAX_REASON_CHARS} characters',
            name="BadMetadata",
        )
    return Meta(tuple(indicators), tuple(reasons))


def parameter_values(given: Mapping[str, object], accepted: tuple[str, ...]) -> dict[str, float]:
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        offered = ", ".join(accepted) or "none"
        raise StrategyLoadError(
            f"unknown parameter(s) {', '.join(unknown)}; this module's parameters are: {offered}",
            name="BadParameters",
        )
    values: dict[str, float] = {}
    for name, value in given.items():
        try:
            number = float(value) if isinstance(value, int | float) else math.nan  # bool is an int
        except OverflowError:  # an int beyond float range
            number = math.nan
        if not math.isfinite(number):
            raise StrategyLoadError(
                f"parameter {name} must be a finite number (or a boolean), got {value!r}", name="BadParameters"
            )
        values[name] = number
    return values
