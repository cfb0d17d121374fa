"""What the two sandboxes share: their limits (:class:`SandboxLimits`), what a call reports
(:class:`EvalInfo`), the checks of the candles they are given, and the life cycle of a strategy's
wasm instance (:class:`SandboxedStrategy`, the base of ``JsStrategy`` and ``WasmStrategy``).

The life cycle: one instance (a *guest*) per strategy, kept between calls and used by one thread
at a time; after a trap (or anything else that leaves it unusable) it is discarded, and the next
call rebuilds it, loading the strategy again and re-sending the history the host keeps.

Errors: bad input from the caller (candles of the wrong shape, not finite) raises ``ValueError``;
using a closed strategy, or one strategy from two threads at once, ``RuntimeError``; ``limits``
out of range, ``ValueError``. The sandboxes' own errors are in ``errors.py``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from tradebotd.model import Decision, Position
from tradebotd.sandbox.history import History
from tradebotd.sandbox.result import ConsoleLine
from tradebotd.sandbox.wasm import WasmRuntime, check_thread_stack

__all__ = ["DEFAULT_LIMITS", "Candle", "EvalInfo", "SandboxLimits", "SandboxedStrategy", "as_candles", "check_candle"]

Candle = tuple[float, float, float, float, float, float]
"""(open time in ms, open, high, low, close, volume)."""


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Per-strategy limits.

    ``fuel`` is an optional deterministic budget in wasm fuel units per evaluation (an SMA step
    over 200 candles uses ≈0.16 M). It needs a separately compiled module (≈20% slower code),
    and running out of fuel traps, so the instance is rebuilt. In ``run_until_signal`` the
    budget applies per wasm call, i.e. ``fuel`` times the candles in that call.
    """

    timeout_ms: int = 50  # wall-clock deadline per evaluation (QuickJS interrupt handler)
    memory_bytes: int = 32 << 20  # JS heap limit; the linear-memory cap is 2x this
    max_result_bytes: int = 64 << 10
    max_candles: int = 1000  # history kept inside the instance
    fuel: int | None = None
    load_timeout_ms: int = 1000  # top-level code of the strategy
    epoch_backstop_ms: int | None = None  # trap deadline; default 3x timeout_ms (min 30 ms)
    max_log_lines: int = 20  # console lines kept per call
    max_log_chars: int = 500  # characters kept per console line
    max_source_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        checks = {
            "timeout_ms": 1 <= self.timeout_ms <= 600_000,
            "memory_bytes": 1 << 20 <= self.memory_bytes <= 1 << 30,
            "max_result_bytes": 256 <= self.max_result_bytes <= 16 << 20,
            "max_candles": 1 <= self.max_candles <= 100_000,
            "fuel": self.fuel is None or self.fuel > 0,
            "load_timeout_ms": 1 <= self.load_timeout_ms <= 600_000,
            "epoch_backstop_ms": self.epoch_backstop_ms is None or self.epoch_backstop_ms >= 1,
            "max_log_lines": 0 <= self.max_log_lines <= 10_000,
            "max_log_chars": 1 <= self.max_log_chars <= 100_000,
            "max_source_bytes": 1 <= self.max_source_bytes <= 64 << 20,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"SandboxLimits out of range: {', '.join(bad)}")

    @property
    def backstop_seconds(self) -> float:
        ms = self.epoch_backstop_ms if self.epoch_backstop_ms is not None else max(30, 3 * self.timeout_ms)
        return ms / 1000


DEFAULT_LIMITS = SandboxLimits()


@dataclass(frozen=True, slots=True)
class EvalInfo:
    """What happened around one evaluation."""

    elapsed_us: float  # wall time of the call, host side included
    console: tuple[ConsoleLine, ...] = ()  # captured console output
    rebuilt: bool = False  # the instance was rebuilt first (after a timeout, OOM or trap)
    fuel: int | None = None  # fuel the call used, when metered (appending the candle included)


def check_candle(candle: Sequence[float]) -> None:
    """``ValueError`` unless ``candle`` is six finite numbers (a :data:`Candle`)."""
    if len(candle) != 6 or not all(map(math.isfinite, candle)):
        raise ValueError(f"a candle is 6 finite numbers (time, open, high, low, close, volume), got {candle}")


def as_candles(candles: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``candles`` as a C-contiguous float64 array of shape (n, 6); ``ValueError`` unless it has
    that shape and every value is finite."""
    rows = np.ascontiguousarray(candles, dtype=np.float64)
    if rows.size == 0:
        return rows.reshape(0, 6)
    if rows.ndim != 2 or rows.shape[1] != 6:
        raise ValueError(f"candles must have shape (n, 6), got {rows.shape}")
    if not np.isfinite(rows).all():
        raise ValueError("candle values must be finite")
    return rows


class _Guest(Protocol):
    @property
    def memory_bytes(self) -> int: ...


GuestT = TypeVar("GuestT", bound=_Guest)


class SandboxedStrategy(Generic[GuestT]):
    """A strategy in its own wasm instance (``GuestT``): see the module docstring. Not
    thread-safe: use it from one thread at a time (concurrent use raises ``RuntimeError``
    rather than corrupting the Store).

    A subclass sets :attr:`FUEL_PER_CANDLE`, implements :meth:`_build`, calls :meth:`_start` at
    the end of its ``__init__``, and brackets every call into the guest with :meth:`_acquire`
    and ``self._lock.release()``.
    """

    FUEL_PER_CANDLE: ClassVar[int]
    """Fuel allowed for appending one candle, on top of ``limits.fuel`` per evaluation."""

    def __init__(self, *, interval_ms: int, limits: SandboxLimits, runtime: WasmRuntime | None) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive, got {interval_ms}")
        self._limits = limits
        self._runtime = runtime or WasmRuntime.shared(fuel=limits.fuel is not None)
        if self._runtime.fuel != (limits.fuel is not None):
            raise ValueError("limits.fuel requires a WasmRuntime created with fuel=True (and only then)")
        self._history = History(limits.max_candles, interval_ms)
        self._lock = threading.Lock()
        self._closed = False
        self._guest: GuestT | None = None

    # -- the runtime interface (tradebotd.engine.BatchRuntime), each sandbox's own

    def push_history(self, candles: npt.NDArray[np.float64]) -> None:
        """Appends candles (shape (n, 6), oldest first) to the history without evaluating."""
        raise NotImplementedError

    def step(self, candle: Candle, position: Position | None) -> tuple[Decision, EvalInfo]:
        """Appends one closed candle and evaluates the strategy on it."""
        raise NotImplementedError

    def run_until_signal(
        self, candles: npt.NDArray[np.float64], position: Position | None
    ) -> tuple[int, Decision | None]:
        """Backtest helper: appends and evaluates ``candles`` one by one, stopping at the first
        result that is not a hold. Returns (candles consumed, that decision), or
        (len(candles), None) if all were holds. Errors carry ``consumed`` (failing candle
        included); the caller resumes after it."""
        raise NotImplementedError

    # -- the life cycle

    def _start(self) -> None:
        """Builds the first instance (load errors surface from the constructor)."""
        check_thread_stack()
        self._guest = self._build()

    def _build(self) -> GuestT:
        """A new instance with the strategy loaded and the host's history re-sent."""
        raise NotImplementedError

    @property
    def memory_bytes(self) -> int:
        """Linear memory of the instance (it never shrinks; 0 while no instance exists)."""
        return self._guest.memory_bytes if self._guest is not None else 0

    @property
    def history_length(self) -> int:
        """Candles the host holds for this strategy (what a rebuilt instance is given)."""
        return len(self._history)

    def close(self) -> None:
        """Drops the instance. Idempotent; later calls raise RuntimeError."""
        self._closed = True
        self._guest = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _acquire(self) -> tuple[GuestT, bool]:
        """Takes the strategy's lock and returns a live instance (rebuilt if needed) and whether
        it was rebuilt. The caller releases ``self._lock``."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        if not self._lock.acquire(False):  # the keyword form costs 0.1 µs more
            raise RuntimeError(f"{type(self).__name__} used from two threads at once")
        try:
            check_thread_stack()
            if self._guest is not None:
                return self._guest, False
            self._guest = self._build()
            return self._guest, True
        except BaseException:
            self._lock.release()
            raise

    def _fuel(self, evaluations: int, candles: int) -> int | None:
        """Fuel for a call that appends ``candles`` and runs ``evaluations`` evaluations."""
        fuel = self._limits.fuel
        return None if fuel is None else fuel * evaluations + self.FUEL_PER_CANDLE * candles

    def _discard(self, guest: GuestT, rows: npt.NDArray[np.float64] | None = None, consumed: int = 0) -> None:
        """Drops ``guest``: never reuse an instance after a trap (or whatever else left it
        unusable); the next call rebuilds it. The first ``consumed`` of ``rows``, the candles it
        appended before it stopped, join the host's history, so the rebuilt instance gets them."""
        if rows is not None:
            self._history.extend(rows[:consumed])
        if self._guest is guest:
            self._guest = None
