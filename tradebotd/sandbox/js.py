"""JavaScript strategies in the Wasmtime + QuickJS-NG sandbox.

A strategy is JavaScript defining ``tradingStrategy(context)``, ``evaluate(context)`` or
``strategy(context)`` (the first that is a function wins; top-level ``const``/``let`` work). It
is called once per closed candle with::

    context = {
      candles:      [{time, open, high, low, close, volume}, ...],  // oldest first, frozen,
                                                                   // a fresh array every call
      currentPrice: <close of the newest candle>,
      position:     null | {side: 'long', amount, entryPrice, entryTime},
      parameters:   <the strategy's parameters, deep-frozen>,
    }

and returns (or resolves to) ``{signal: 'buy'|'sell'|'hold', amount?, reason?, indicators?,
takeProfit?, stopLoss?, orderType?, limitPrice?}``, validated into a :class:`tradebotd.model.Decision`.

Determinism: ``Date.now()`` and ``new Date()`` return the newest candle's open time +
``interval_ms`` (the moment the decision is taken; 0 before any candle); ``Math.random`` is a
splitmix64 PRNG seeded with :data:`RANDOM_SEED` at load. There is no ``performance``, ``std``,
``os``, ``require``, ``process``, ``fetch``, ``print`` or timer. ``console.*`` output is captured
(at most 20 lines of 500 characters per call) and returned in :class:`EvalInfo`.

Failure policy (measured in the sandbox notes):

* JS exception (RangeError from deep recursion included), invalid result: the strategy saw the
  error with its own ``catch``/``finally`` blocks, so its state is whatever it made of it; the
  instance is reused.
* Deadline stopped by QuickJS's interrupt handler (``StrategyTimeout``): QuickJS itself is
  clean, but the interrupt is uncatchable and skips the strategy's ``finally`` blocks too, so
  its globals may be half-updated; and a loop that allocated until stopped leaves linear memory
  grown for good. The instance is rebuilt before the next call.
* JS heap limit (``StrategyMemoryError``): linear memory never shrinks, so the instance is
  rebuilt before the next call.
* ``wasmtime.Trap`` (epoch backstop, fuel, stack overflow, out-of-bounds): QuickJS's state is
  left mid-operation; the instance is discarded.

Rebuilding is transparent to the caller: new instance, source loaded again, the history kept on
the host re-sent (≈1-3 ms). The strategy's own global variables start afresh, exactly as after a
daemon restart, and Math.random restarts from its seed. An instance is never reused after a
timeout, an out-of-memory or a trap.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import orjson
import wasmtime

from tradebotd.model import Decision, Position
from tradebotd.sandbox.errors import (
    InvalidResult,
    SandboxTrap,
    StrategyEvalError,
    StrategyLoadError,
    StrategyMemoryError,
    StrategyRuntimeError,
    StrategyTimeout,
)
from tradebotd.sandbox.guest import INPUT_CAPACITY, CallResult, Guest, GuestConfig, Status
from tradebotd.sandbox.guest import Position as GuestPosition
from tradebotd.sandbox.result import MAX_REASON_CHARS, ConsoleLine, parse_console, parse_decision, parse_error
from tradebotd.sandbox.sandboxed import (
    DEFAULT_LIMITS,
    Candle,
    EvalInfo,
    SandboxedStrategy,
    SandboxLimits,
    as_candles,
    check_candle,
)
from tradebotd.sandbox.wasm import JS_STACK_BUDGET, WasmRuntime

# EvalInfo, SandboxLimits and Candle are the sandboxes' shared interface (sandboxed.py); they are
# importable from here too, where they were defined before the native sandbox existed.
__all__ = ["RANDOM_SEED", "Candle", "EvalInfo", "JsStrategy", "SandboxLimits"]

RANDOM_SEED = 0x7472_6164_6562_6F74  # b"tradebot": Math.random's seed after every load
RUN_CHUNK = 64  # candles per wasm call in run_until_signal; bounds the epoch backstop per call
_LOAD_FUEL = 2_000_000_000  # loading is bounded by load_timeout_ms; fuel must merely not run out


class JsStrategy(SandboxedStrategy[Guest]):
    """One loaded JS strategy in its own wasm instance (the life cycle, limits and thread rules of
    :class:`~tradebotd.sandbox.sandboxed.SandboxedStrategy`)."""

    FUEL_PER_CANDLE = 100_000  # appending one candle uses ≈7 k

    def __init__(
        self,
        source: str,
        *,
        parameters: Mapping[str, object],
        interval_ms: int,
        limits: SandboxLimits = DEFAULT_LIMITS,
        filename: str = "strategy.js",
        runtime: WasmRuntime | None = None,
    ) -> None:
        super().__init__(interval_ms=interval_ms, limits=limits, runtime=runtime)
        self._filename = filename
        self._source = source.encode("utf-8", errors="surrogatepass")
        if len(self._source) > limits.max_source_bytes:
            raise StrategyLoadError(
                f"the source is {len(self._source)} bytes, the limit is {limits.max_source_bytes}",
                name="SourceTooLarge",
            )
        try:
            self._parameters = orjson.dumps(dict(parameters))
        except TypeError as exc:
            raise StrategyLoadError(f"parameters are not JSON-serialisable: {exc}", name="BadParameters") from None
        self._config = GuestConfig(
            interval_ms=float(interval_ms),
            random_seed=RANDOM_SEED,
            memory_limit=limits.memory_bytes,
            stack_budget=JS_STACK_BUDGET,
            timeout_ms=limits.timeout_ms,
            load_timeout_ms=limits.load_timeout_ms,
            max_candles=limits.max_candles,
            max_result_bytes=limits.max_result_bytes,
            max_reason_chars=MAX_REASON_CHARS,
            max_log_lines=limits.max_log_lines,
            max_log_chars=limits.max_log_chars,
        )
        self._eval_ticks = WasmRuntime.epoch_ticks(limits.backstop_seconds)
        self._step_fuel = self._fuel(1, 1)
        self.load_console: tuple[ConsoleLine, ...] = ()
        """Console output of the strategy's top-level code at the last (re)load."""
        self._start()

    # ------------------------------------------------------------------ public API

    def push_history(self, candles: npt.NDArray[np.float64]) -> None:
        rows = as_candles(candles)[-self._limits.max_candles:]
        guest, _ = self._acquire()
        try:
            for start in range(0, len(rows), INPUT_CAPACITY):
                chunk = rows[start:start + INPUT_CAPACITY]
                try:
                    result = guest.push(chunk, epoch_ticks=self._eval_ticks, fuel=self._fuel(0, len(chunk)))
                except wasmtime.Trap as trap:
                    raise self._trapped(guest, trap, chunk) from None
                self._history.extend(chunk[:result.consumed])
                if result.status is not Status.OK:
                    raise self._eval_error(result, result.consumed)
        finally:
            self._lock.release()

    def step(self, candle: Candle, position: Position | None) -> tuple[Decision, EvalInfo]:
        # The strategy's currentPrice is the candle's close.
        started = time.perf_counter_ns()
        check_candle(candle)
        pos = _position(position)
        guest, rebuilt = self._acquire()
        budget = self._step_fuel
        try:
            try:
                result = guest.step(candle, pos, epoch_ticks=self._eval_ticks, fuel=budget)
            except wasmtime.Trap as trap:
                raise self._trapped(guest, trap, np.array([candle], dtype=np.float64)) from None
            if result.consumed:
                self._history.append(candle)
            if result.status is not Status.OK:
                raise self._eval_error(result, result.consumed)
            decision = parse_decision(result.output)
            fuel = None if budget is None else budget - guest.fuel_remaining()
        finally:
            self._lock.release()
        elapsed = (time.perf_counter_ns() - started) / 1000
        return decision, EvalInfo(elapsed, parse_console(result.logs), rebuilt, fuel)

    def run_until_signal(
        self, candles: npt.NDArray[np.float64], position: Position | None
    ) -> tuple[int, Decision | None]:
        rows = as_candles(candles)
        pos = _position(position)
        consumed = 0
        backstop = self._limits.backstop_seconds
        metered = self._limits.fuel is not None
        guest, _ = self._acquire()
        try:
            for start in range(0, len(rows), RUN_CHUNK):
                chunk = rows[start:start + RUN_CHUNK]
                n = len(chunk)
                ticks = WasmRuntime.epoch_ticks(backstop * n)
                try:
                    result = guest.run(chunk, pos, epoch_ticks=ticks, fuel=self._fuel(n, n) if metered else None)
                except wasmtime.Trap as trap:
                    error = self._trapped(guest, trap, chunk)
                    error.consumed += consumed
                    raise error from None
                self._history.extend(chunk[:result.consumed])
                consumed += result.consumed
                if result.status is not Status.OK:
                    raise self._eval_error(result, consumed)
                if result.output:
                    return consumed, parse_decision(result.output, consumed=consumed)
        finally:
            self._lock.release()
        return consumed, None

    # ------------------------------------------------------------------ instance management

    def _build(self) -> Guest:
        """New instance with the strategy loaded and the host's history re-sent."""
        guest = Guest(self._runtime, 2 * self._limits.memory_bytes)
        try:
            result = guest.load(
                self._config, self._source, self._parameters, self._filename.encode(),
                epoch_ticks=WasmRuntime.epoch_ticks(3 * self._limits.load_timeout_ms / 1000),
                fuel=None if self._limits.fuel is None else _LOAD_FUEL,
            )
        except wasmtime.Trap as trap:
            raise StrategyLoadError(f"the sandbox trapped while loading: {trap.message}", name="SandboxTrap") from None
        self.load_console = parse_console(result.logs)
        if result.status is not Status.OK:
            raise self._load_error(result)
        ordered = self._history.ordered()
        for start in range(0, len(ordered), INPUT_CAPACITY):
            chunk = ordered[start:start + INPUT_CAPACITY]
            try:
                pushed = guest.push(chunk, epoch_ticks=self._eval_ticks, fuel=self._fuel(0, len(chunk)))
            except wasmtime.Trap as trap:
                raise SandboxTrap(f"the sandbox trapped while restoring history: {trap.message}") from None
            if pushed.status is not Status.OK:
                raise self._eval_error(pushed, 0)
        return guest

    def _trapped(self, guest: Guest, trap: wasmtime.Trap, rows: npt.NDArray[np.float64]) -> StrategyEvalError:
        """Discards a trapped instance (keeping the candles of ``rows`` it had appended) and
        returns the error to raise."""
        consumed = guest.last_consumed()
        self._discard(guest, rows, consumed)
        return _trap_error(trap, consumed)

    def _load_error(self, result: CallResult) -> StrategyLoadError:
        if result.status is Status.INTERRUPTED:
            return StrategyLoadError(
                f"the top-level code ran longer than {self._limits.load_timeout_ms} ms", name="Timeout"
            )
        if result.status is Status.OUT_OF_MEMORY:
            return StrategyLoadError("the top-level code ran out of memory", name="OutOfMemory")
        error = parse_error(result.output, "the strategy could not be loaded")
        line, column = error.location(self._filename)
        return StrategyLoadError(error.message, name=error.name, stack=error.stack, line=line, column=column)

    def _eval_error(self, result: CallResult, consumed: int) -> StrategyEvalError:
        status = result.status
        if status in _REBUILD_AFTER:
            self._guest = None
        error = parse_error(result.output, status.name.lower().replace("_", " "))
        if status is Status.INTERRUPTED:
            return StrategyTimeout(
                f"the strategy ran longer than {self._limits.timeout_ms} ms{error.where(self._filename)}",
                stack=error.stack, consumed=consumed,
            )
        if status is Status.OUT_OF_MEMORY:
            return StrategyMemoryError(
                f"the strategy exceeded its {self._limits.memory_bytes >> 20} MiB memory limit"
                f"{error.where(self._filename)}",
                stack=error.stack, consumed=consumed,
            )
        if status is Status.BAD_RESULT:
            return InvalidResult(error.message, consumed=consumed)
        if status is Status.JS_ERROR:
            return StrategyRuntimeError(error.name, error.message, error.stack, consumed=consumed)
        return SandboxTrap(f"sandbox error ({status.name}): {error.message}", consumed=consumed)


# Statuses after which the instance is not reused (see the module docstring): an interrupted
# strategy may have half-updated globals, linear memory never shrinks after an OOM, and a
# STATE error means the shim lost its loaded strategy.
_REBUILD_AFTER = frozenset({Status.INTERRUPTED, Status.OUT_OF_MEMORY, Status.STATE})


def _trap_error(trap: wasmtime.Trap, consumed: int) -> StrategyEvalError:
    code = trap.trap_code
    if code is wasmtime.TrapCode.INTERRUPT:
        return StrategyTimeout("the strategy passed the epoch backstop deadline", trapped=True, consumed=consumed)
    if code is wasmtime.TrapCode.OUT_OF_FUEL:
        return StrategyTimeout("the strategy ran out of fuel", trapped=True, consumed=consumed)
    name = code.name if code is not None else None
    return SandboxTrap(f"the sandbox trapped: {trap.message}", trap_code=name, consumed=consumed)


def _position(position: Position | None) -> GuestPosition:
    if position is None:
        return None
    return float(position.amount), float(position.entry_price), float(position.entry_time)
