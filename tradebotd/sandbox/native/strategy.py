"""The native strategy (:class:`WasmStrategy`): limits, the failure policy and the decisions;
the package docstring (``tradebotd.sandbox.native``) describes them and the error tree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import wasmtime

from tradebotd.model import Decision, IndicatorValue, Position, Signal
from tradebotd.sandbox.errors import (
    InvalidResult,
    SandboxTrap,
    StrategyEvalError,
    StrategyLoadError,
    StrategyMemoryError,
    StrategyTimeout,
)
from tradebotd.sandbox.native.abi import ABI_VERSION, MAX_META_BYTES, Meta, inspect_module, parameter_values, parse_meta
from tradebotd.sandbox.native.guest import RUN_CHUNK, WASM_ERRORS, Guest, Layout, WasmError
from tradebotd.sandbox.native.modules import compile_strategy, driver
from tradebotd.sandbox.sandboxed import (
    DEFAULT_LIMITS,
    Candle,
    EvalInfo,
    SandboxedStrategy,
    SandboxLimits,
    as_candles,
    check_candle,
)
from tradebotd.sandbox.wasm import WasmRuntime

__all__ = ["WasmStrategy"]

_LOAD_FUEL = 1_000_000_000  # loading is bounded by load_timeout_ms; fuel must merely not run out


_SIGNALS: dict[float, Signal] = {0.0: "hold", 1.0: "buy", 2.0: "sell"}
_HOLD = Decision(signal="hold")
_FLAT = (0.0, 0.0, 0.0, 0.0)


class WasmStrategy(SandboxedStrategy[Guest]):
    """One loaded native strategy in its own Store (the life cycle, limits and thread rules of
    :class:`~tradebotd.sandbox.sandboxed.SandboxedStrategy`).

    ``wasm`` is a binary module or WAT text (see :func:`load_wasm_source` for a strategy row's
    code). ``interval_ms`` is checked but otherwise unused: a native strategy has no clock, the
    candles' open times are in their ``time`` column.
    """

    FUEL_PER_CANDLE = 10_000  # the driver appends a candle for ≈90 fuel; a wide margin

    def __init__(
        self,
        wasm: bytes | str,
        *,
        parameters: Mapping[str, object],
        interval_ms: int,
        limits: SandboxLimits = DEFAULT_LIMITS,
        filename: str = "strategy.wasm",
        runtime: WasmRuntime | None = None,
    ) -> None:
        # The JS sandbox's engine (WasmRuntime.shared) has the flags native code needs too (epoch
        # interruption, fuel when asked, 2 MiB wasm stack), and its epoch thread then serves these
        # stores as well.
        super().__init__(interval_ms=interval_ms, limits=limits, runtime=runtime)
        self.filename = filename
        size = len(wasm.encode() if isinstance(wasm, str) else wasm)
        if size > limits.max_source_bytes:
            raise StrategyLoadError(
                f"{filename} is {size} bytes, the limit is {limits.max_source_bytes}", name="SourceTooLarge"
            )
        engine = self._runtime.engine
        self._module = compile_strategy(engine, wasm)
        self._driver = driver(engine)
        self._interface = inspect_module(self._module)
        self._given = parameter_values(parameters, self._interface.parameters)
        self._step_ticks = WasmRuntime.epoch_ticks(limits.timeout_ms / 1000)
        self._step_fuel = self._fuel(1, 1)
        self._chunk_ticks: dict[int, int] = {}  # run_until_signal's epoch deadline by batch length
        self.indicator_names: tuple[str, ...] = ()
        self.reasons: tuple[str, ...] = ()
        self.parameters: Mapping[str, float] = {}
        """Every parameter's value: the given ones and the module's defaults for the rest."""
        self.lookback: int | None = None
        """Candles the strategy needs before it can signal (``tb_lookback``), if it declares it."""
        self._reason_texts: dict[float, str | None] = {}  # reason slot value -> text
        self._runtime.start_ticker()
        self._start()

    # ------------------------------------------------------------------ public API

    def push_history(self, candles: npt.NDArray[np.float64]) -> None:
        rows = as_candles(candles)[-self._limits.max_candles:]
        guest, _ = self._acquire()
        try:
            self._push(guest, rows, record=True)
        finally:
            self._lock.release()

    def step(self, candle: Candle, position: Position | None) -> tuple[Decision, EvalInfo]:
        started = time.perf_counter_ns()
        check_candle(candle)
        guest, rebuilt = self._acquire()
        try:
            try:
                outputs = guest.step(_position(position), candle, self._step_ticks, self._step_fuel)
            except WASM_ERRORS as exc:
                raise self._failed(guest, exc, np.array([candle], dtype=np.float64)) from None
            self._history.append(candle)
            if guest.aborts or guest.at_cap:
                raise self._failed(guest, None, consumed=1)
            decision = self._decision(outputs, 1)
        finally:
            self._lock.release()
        return decision, EvalInfo((time.perf_counter_ns() - started) / 1000, (), rebuilt)

    def run_until_signal(
        self, candles: npt.NDArray[np.float64], position: Position | None
    ) -> tuple[int, Decision | None]:
        rows = as_candles(candles)
        held = _position(position)
        consumed = 0
        guest, _ = self._acquire()
        try:
            while consumed < len(rows):
                chunk = rows[consumed:consumed + RUN_CHUNK]
                guest.stage[:len(chunk)] = chunk
                guest.write_position(held)
                n = len(chunk)
                ticks = self._chunk_ticks.get(n)
                if ticks is None:  # a dict hit is 3x cheaper than the arithmetic, and n takes few values
                    ticks = self._chunk_ticks[n] = WasmRuntime.epoch_ticks(self._limits.timeout_ms / 1000 * n)
                guest.arm(ticks, self._fuel(n, n))
                try:
                    done = guest.run(len(chunk))
                except WASM_ERRORS as exc:
                    error = self._failed(guest, exc, chunk)
                    error.consumed += consumed
                    raise error from None
                self._history.extend(chunk[:done])
                consumed += done
                if guest.aborts or guest.at_cap:
                    raise self._failed(guest, None, consumed=consumed)
                outputs = guest.outputs()
                if outputs[1]:  # stopped: a signal, or an output the driver found invalid
                    decision = self._decision(outputs, consumed)
                    if decision.signal != "hold":
                        return consumed, decision
        finally:
            self._lock.release()
        return consumed, None

    # ------------------------------------------------------------------ instance management

    def _push(self, guest: Guest, rows: npt.NDArray[np.float64], *, record: bool) -> None:
        """Appends ``rows`` without evaluating; ``record``: also to the host's history (not when
        restoring it into a rebuilt instance)."""
        for start in range(0, len(rows), RUN_CHUNK):
            chunk = rows[start:start + RUN_CHUNK]
            guest.stage[:len(chunk)] = chunk
            guest.write_position(_FLAT)
            guest.arm(self._step_ticks, self._fuel(0, len(chunk)))
            try:
                guest.push(len(chunk))
            except WASM_ERRORS as exc:
                if not record:
                    raise SandboxTrap(f"the sandbox failed while restoring the history: {exc}") from None
                raise self._failed(guest, exc, chunk) from None
            if record:
                self._history.extend(chunk)

    def _build(self) -> Guest:
        """A new instance: ABI checked, metadata read, parameters set, buffer allocated, driver
        attached, and the history the host keeps re-sent."""
        limits = self._limits
        guest: Guest | None = None
        try:
            guest = Guest(
                self._runtime.engine, self._module, self._interface, memory_cap=2 * limits.memory_bytes,
                epoch_ticks=WasmRuntime.epoch_ticks(limits.load_timeout_ms / 1000),
                fuel=None if limits.fuel is None else _LOAD_FUEL,
            )
            self._configure(guest)
        except WASM_ERRORS as exc:
            raise self._load_error(guest, exc) from None
        if guest.aborts:
            raise StrategyLoadError(guest.abort_message(), name="SandboxTrap")
        self._push(guest, self._history.ordered(), record=False)
        return guest

    def _configure(self, guest: Guest) -> None:
        limits = self._limits
        version = guest.call("tb_abi_version")
        if version != ABI_VERSION:
            raise StrategyLoadError(
                f"the module implements native ABI version {version}; this tradebotd supports version {ABI_VERSION}",
                name="AbiMismatch",
            )
        meta = Meta()
        if "tb_meta" in self._interface.optional:
            raw = guest.read_cstring(guest.call("tb_meta"), MAX_META_BYTES)
            if raw is None:
                raise StrategyLoadError(
                    f"tb_meta must point at NUL-terminated JSON of at most {MAX_META_BYTES} bytes", name="BadMetadata"
                )
            meta = parse_meta(raw)
        values: dict[str, float] = {}
        for name in self._interface.parameters:
            parameter = guest.parameter(name)
            if name in self._given:
                parameter.set_value(guest.store, self._given[name])
            values[name] = float(parameter.value(guest.store))
        if "tb_init" in self._interface.optional:
            status = guest.call("tb_init")
            if status != 0:
                known = 1 <= status <= len(meta.reasons)
                raise StrategyLoadError(
                    meta.reasons[status - 1] if known else f"tb_init rejected the parameters (status {status})",
                    name="BadParameters",
                )
        lookback = guest.call("tb_lookback") if "tb_lookback" in self._interface.optional else None
        if lookback is not None and not 0 <= lookback <= limits.max_candles:
            raise StrategyLoadError(
                f"the strategy needs {lookback} candles of history; max_candles is {limits.max_candles}",
                name="BadParameters",
            )
        plan = Layout.plan(limits.max_candles, len(meta.indicators))
        block = guest.call("tb_alloc", plan.size) & 0xFFFF_FFFF
        if block == 0 or guest.at_cap:
            raise StrategyLoadError(
                f"no room for the candle buffer ({plan.size >> 10} KiB for max_candles={limits.max_candles}) "
                f"under the {guest.memory_cap >> 20} MiB memory cap",
                name="OutOfMemory",
            )
        if block % 8 or block + plan.size > guest.memory_bytes:
            raise StrategyLoadError(
                f"tb_alloc({plan.size}) returned {block}: not an 8-aligned block inside memory", name="BadExport"
            )
        guest.attach(self._driver, plan.at(block), limits.max_candles, len(meta.reasons), len(meta.indicators))
        self.indicator_names, self.reasons, self.lookback = meta.indicators, meta.reasons, lookback
        self.parameters = values
        self._reason_texts = {float(i): text for i, text in enumerate((None, *meta.reasons))}

    def _load_error(self, guest: Guest | None, exc: WasmError) -> StrategyLoadError:
        if isinstance(exc, wasmtime.Trap) and exc.trap_code is wasmtime.TrapCode.INTERRUPT:
            return StrategyLoadError(f"loading ran longer than {self._limits.load_timeout_ms} ms", name="Timeout")
        if guest is not None and guest.aborts:
            return StrategyLoadError(guest.abort_message(), name="SandboxTrap")
        if guest is not None and guest.near_cap:
            return StrategyLoadError("the module ran out of memory while loading", name="OutOfMemory")
        return StrategyLoadError(f"the module failed while loading: {_cause(exc)}", name="SandboxTrap")

    def _failed(
        self,
        guest: Guest,
        exc: WasmError | None,
        rows: npt.NDArray[np.float64] | None = None,
        *,
        consumed: int = 0,
    ) -> StrategyEvalError:
        """Discards ``guest`` (never reuse one after a trap, an abort or at its memory cap) and
        returns the error to raise. ``rows`` are the candles of a call that trapped: the ones the
        driver appended before it stopped are recorded, so the rebuilt instance gets them."""
        if rows is not None:
            consumed = min(guest.appended(), len(rows))
        self._discard(guest, rows, consumed)
        code = exc.trap_code if isinstance(exc, wasmtime.Trap) else None
        if code is wasmtime.TrapCode.INTERRUPT:
            return StrategyTimeout(
                f"the strategy ran past its {self._limits.timeout_ms} ms deadline", trapped=True, consumed=consumed
            )
        if code is wasmtime.TrapCode.OUT_OF_FUEL:
            return StrategyTimeout("the strategy ran out of fuel", trapped=True, consumed=consumed)
        if guest.at_cap or (exc is not None and guest.near_cap):
            return StrategyMemoryError(
                f"the strategy reached its {guest.memory_cap >> 20} MiB memory cap", consumed=consumed
            )
        if guest.aborts:
            return SandboxTrap(f"the strategy {guest.abort_message()}", trap_code="UNREACHABLE", consumed=consumed)
        if isinstance(exc, wasmtime.Trap):
            return SandboxTrap(f"the strategy trapped: {_cause(exc)}", trap_code=code.name if code else None,
                               consumed=consumed)
        return SandboxTrap(f"the sandbox failed: {_cause(exc)}", consumed=consumed)

    def _decision(self, outputs: tuple[float, ...], consumed: int) -> Decision:
        """The decision in the output slots. The driver checked every hold it did not stop at
        (same rules, our code, run after the strategy returned), so only a stop is validated
        here: that keeps the hold path of ``step``, by far the most common, short."""
        code, stopped, amount, take_profit, stop_loss, reason, count = outputs[:7]
        if stopped:
            problems = self._problems(outputs)
            if problems:
                raise InvalidResult(f"invalid strategy result: {'; '.join(problems)}", consumed=consumed)
        indicators: dict[str, IndicatorValue] | None = None
        if count:
            # zip stops after `count` values; strict=... would cost 0.2 µs of keyword handling.
            indicators = dict(zip(self.indicator_names, outputs[7:7 + int(count)]))  # noqa: B905
        elif not (code or amount or take_profit or stop_loss or reason):
            return _HOLD
        return Decision(
            signal=_SIGNALS[code],
            amount=amount or None,
            reason=self._reason_texts[reason],
            indicators=indicators,
            take_profit=take_profit or None,
            stop_loss=stop_loss or None,
        )

    def _problems(self, outputs: tuple[float, ...]) -> list[str]:
        """What is wrong with the output slots (the rules of ABI.md), if anything."""
        code, _, amount, take_profit, stop_loss, reason, count, *values = outputs
        problems = []
        if code not in _SIGNALS:
            problems.append(f"signal code {code:g} (expected 0 hold, 1 buy, 2 sell)")
        problems += [
            f"{name}: must be 0 (none) or positive and finite, got {value!r}"
            for name, value in (("amount", amount), ("takeProfit", take_profit), ("stopLoss", stop_loss))
            if not 0.0 <= value < math.inf  # NaN fails every comparison
        ]
        if not _whole(reason, len(self.reasons)):
            problems.append(f"reason: must be 0 (none) or a reason number 1..{len(self.reasons)}, got {reason!r}")
        if not _whole(count, len(self.indicator_names)):
            problems.append(f"indicator count: must be a whole number 0..{len(self.indicator_names)}, got {count!r}")
        else:
            problems += [
                f"indicators.{name}: must be finite, got {value!r}"
                for name, value in zip(self.indicator_names, values[:int(count)], strict=False)
                if not math.isfinite(value)
            ]
        return problems


def _whole(value: float, maximum: int) -> bool:
    """``value`` is a whole number in 0..maximum (NaN and infinities are not)."""
    return 0 <= value <= maximum and value == int(value)


def _cause(exc: WasmError | None) -> str:
    """The last line of a wasmtime error: the cause, without the backtrace before it."""
    text = exc.message if isinstance(exc, wasmtime.Trap) else str(exc)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("wasm trap: ") if lines else "unknown error"


def _position(position: Position | None) -> tuple[float, float, float, float]:
    if position is None:
        return _FLAT
    return 1.0, float(position.amount), float(position.entry_price), float(position.entry_time)
