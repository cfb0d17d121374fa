"""The daemon's side of its evaluation processes (see the package docstring).

:class:`EvalPool` is a runtime factory: it places each strategy on the daemon itself or on one
of its evaluation processes, whichever holds the fewest, and returns a local runtime or a
:class:`RemoteRuntime`. Remote runtimes are evaluated per candle in one request per process
(:meth:`EvalProcess.begin`), while the daemon evaluates its own share.

A new process takes over from one that died: each remote runtime loads itself there again with
the history it keeps on this side (as an in-process sandbox does after a trap), and a step request
that found the process dead is sent once more, so a crash costs that candle time, not a candle.
A process that stops answering is killed after the sandbox's deadlines plus a margin; that
candle's evaluations of its strategies fail (one strategy error each), and the next request
starts a new one.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from tradebotd.config import SandboxSettings
from tradebotd.engine import Floats6, RuntimeFactory, StepOutcome, StrategyRuntime
from tradebotd.model import Decision, Position, StreamKey
from tradebotd.sandbox.errors import SandboxUnavailable, StrategyEvalError, StrategyLoadError
from tradebotd.sandbox.history import History
from tradebotd.store.base import StrategyRow
from tradebotd.workers import protocol as p

__all__ = ["EvalPool", "EvalProcess", "ProcessDied", "RemoteRuntime"]

log = structlog.get_logger(__name__)

START_TIMEOUT_S = 20.0  # a first start may compile the QuickJS module (~0.5 s); the loop waits this long at most
REQUEST_MARGIN_S = 5.0  # beyond the sandbox's own deadlines, before a process counts as hung
# What a child needs of the daemon's environment (to find Python, the package and the compiled
# module cache); nothing else, so no secret ever reaches a process that runs strategies.
_ENV_KEEP = (
    "PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_CACHE_HOME", "TRADEBOTD_CACHE_DIR", "PYTHONPATH", "VIRTUAL_ENV",
)


class ProcessDied(SandboxUnavailable):
    """The evaluation process exited or stopped answering (and could not be replaced in time)."""


class EvalProcess:
    """One child process and the connection to it. Requests are synchronous and one at a time
    (the event loop's thread is the only caller)."""

    def __init__(
        self, settings: SandboxSettings, index: int, *, log_level: str = "info", margin_s: float = REQUEST_MARGIN_S
    ) -> None:
        self.settings = settings
        self.index = index
        self.generation = 0  # bumped by every (re)start; runtimes reload when it changes
        self.strategies = 0  # placed here (the pool balances on it)
        self._log_level = log_level
        self._margin_s = margin_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._starting = False  # the init reply is still to be read (before any other reply)
        self._budget_s = settings.timeout_ms / 1000

    # -- life cycle

    def start(self) -> None:
        """Starts the process without waiting for it to be ready (the first request waits).
        Requests start it on their own; this is for callers that want it early."""
        if self._conn is None:
            self._start()

    def _start(self) -> Connection:
        ours, theirs = socket.socketpair()
        env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}  # no secrets for a child
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tradebotd.workers.child", "--fd", str(theirs.fileno()),
                 "--log-level", self._log_level],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise ProcessDied(f"cannot start an evaluation process: {exc}") from exc
        finally:
            theirs.close()
        conn = self._conn = Connection(ours.detach())
        self.generation += 1
        try:
            conn.send_bytes(p.dumps(["init", self.settings.model_dump(mode="json")]))
        except OSError as exc:
            raise self._failed(exc) from None
        self._starting = True
        return conn

    def close(self) -> None:
        """Closes the connection (the child exits when it sees that) and reaps the process."""
        conn, proc, self._conn, self._proc, self._starting = self._conn, self._proc, None, None, False
        if conn is not None:
            conn.close()
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    # -- requests

    def begin(
        self, work: Sequence[tuple[StrategyRuntime, Position | None]], floats: Floats6
    ) -> Callable[[], list[StepOutcome]]:
        """Sends one candle's evaluations of the remote runtimes in ``work`` and returns the
        function that waits for their outcomes (in order). A failing process or strategy never
        raises here: its failures are outcomes.

        If the process turns out to have died, the request is sent once more to a new one (its
        strategies reloaded with their history): a crash costs that candle time, not a candle.
        A process that stops answering is not asked again: its strategies' outcomes are errors."""
        runtimes: list[RemoteRuntime] = []
        for runtime, _ in work:
            if not isinstance(runtime, RemoteRuntime):
                raise TypeError("EvalProcess.begin takes RemoteRuntimes only")
            runtimes.append(runtime)
        step = _StepRequest(self, runtimes, [position for _, position in work], floats)
        step.send()
        return step.collect

    def _connection(self) -> Connection:
        return self._conn if self._conn is not None else self._start()

    def request(self, message: list[Any], payload: bytes | None = None, *, timeout_s: float | None = None) -> list[Any]:
        """Sends a request (starting the process if needed) and waits for its reply; an
        ``["error", ...]`` reply raises the error it carries."""
        try:
            conn = self._connection()
            conn.send_bytes(p.dumps(message))
            if payload is not None:
                conn.send_bytes(payload)
            reply = self._receive(self._budget_s + self._margin_s if timeout_s is None else timeout_s)
        except ProcessDied:
            raise
        except (OSError, EOFError, ValueError) as exc:
            raise self._failed(exc) from None
        if reply[0] == "error":
            raise p.decode_error(reply[1])
        return reply

    def _receive(self, timeout_s: float) -> list[Any]:
        conn = self._conn
        if conn is None:
            raise ProcessDied("the evaluation process is not running")
        if self._starting:  # replies come in order: the init reply first
            if not conn.poll(START_TIMEOUT_S):
                raise TimeoutError(f"the evaluation process did not start within {START_TIMEOUT_S:g} s")
            reply = p.loads(conn.recv_bytes())
            if reply[0] != "ok":
                raise ProcessDied(f"the evaluation process could not start: {p.decode_error(reply[1])}")
            self._starting = False
            log.info("evaluation process started", index=self.index, pid=reply[1], generation=self.generation)
        if not conn.poll(max(timeout_s, 0.0)):
            raise TimeoutError(f"no answer within {timeout_s:.1f} s")
        reply = p.loads(conn.recv_bytes())
        if not isinstance(reply, list) or not reply:
            raise p.RemoteFailure(f"malformed reply from an evaluation process: {reply!r:.200}")
        return reply

    def _failed(self, exc: BaseException) -> ProcessDied:
        """The process is unusable: kill it (the next request starts another) and say why."""
        proc = self._proc
        code = None
        if proc is not None:
            proc.kill()
            code = proc.wait()
        if self._conn is not None:
            self._conn.close()
        self._conn, self._proc, self._starting = None, None, False
        what = exc if isinstance(exc, ProcessDied) else f"{type(exc).__name__}: {exc}"
        log.error("evaluation process failed; it restarts on the next request", index=self.index, error=str(what),
                  exit_code=code)
        return exc if isinstance(exc, ProcessDied) else ProcessDied(f"the evaluation process failed ({what})")


class _StepRequest:
    """One candle's ``step`` request to one process (see :meth:`EvalProcess.begin`)."""

    def __init__(
        self, process: EvalProcess, runtimes: list[RemoteRuntime], positions: list[Position | None], floats: Floats6
    ) -> None:
        self._process = process
        self._runtimes = runtimes
        self._positions = positions
        self._floats = floats
        self._outcomes: list[StepOutcome | None] = [None] * len(runtimes)
        self._sent: list[int] = []  # indexes of the runtimes in the request in flight
        self._started = 0.0

    def send(self) -> None:
        items: list[list[Any]] = []
        self._sent = []
        dead: ProcessDied | None = None  # once no process can be had, do not try again per strategy
        for i, runtime in enumerate(self._runtimes):
            if self._outcomes[i] is not None:
                continue
            try:
                if dead is not None:
                    raise dead
                runtime.ensure_loaded()
            except ProcessDied as exc:
                self._outcomes[i] = dead = exc
                continue
            except Exception as exc:
                self._outcomes[i] = exc
                continue
            items.append([runtime.handle, p.encode_position(self._positions[i])])
            self._sent.append(i)
        if not items:
            return
        self._started = time.monotonic()
        try:
            self._process._connection().send_bytes(p.dumps(["step", list(self._floats), items]))
        except Exception as exc:  # a dead process is found out when the reply does not come
            if not isinstance(exc, OSError):
                self._fail(self._process._failed(exc))

    def collect(self) -> list[StepOutcome]:
        for attempt in (1, 2):
            if not self._sent:
                break
            timeout = self._process._budget_s * len(self._sent) + self._process._margin_s
            try:
                reply = self._process._receive(timeout - (time.monotonic() - self._started))
                if reply[0] != "ok" or len(reply[1]) != len(self._sent):
                    raise p.RemoteFailure(f"unexpected reply to a step request: {reply!r:.200}")
                for i, outcome in zip(self._sent, reply[1], strict=True):
                    self._outcomes[i] = self._runtimes[i].settle(outcome, self._floats)
                self._sent = []
            except p.RemoteFailure as exc:
                self._fail(exc)
            except Exception as exc:
                failure = self._process._failed(exc)
                if attempt == 1 and not isinstance(exc, TimeoutError):
                    self.send()  # died: once more, in a new process
                    continue
                self._fail(failure)
        return [o if o is not None else p.RemoteFailure("no outcome") for o in self._outcomes]

    def _fail(self, error: BaseException) -> None:
        for i in self._sent:
            if self._outcomes[i] is None:
                self._outcomes[i] = error
        self._sent = []


class RemoteRuntime:
    """A strategy loaded in an evaluation process. It keeps the strategy's candles on this side
    too (``max_candles`` of them), to load it again in a restarted process."""

    _handles = itertools.count(1)

    def __init__(self, process: EvalProcess, row: StrategyRow, key: StreamKey, max_candles: int) -> None:
        self.process = process
        self.step_group = process
        self.handle = next(self._handles)
        self._row = p.encode_row(row)
        self._key = key
        self._history = History(max_candles)
        self._generation = 0
        self._closed = False
        self._load()  # ProcessDied: the pool places the strategy elsewhere
        process.strategies += 1

    def _load(self) -> None:
        self.process.request(["load", self.handle, self._row, self._key.symbol, self._key.interval],
                             timeout_s=START_TIMEOUT_S)
        self._generation = self.process.generation

    def ensure_loaded(self) -> None:
        """Loads the strategy again, with its history, if its process was restarted."""
        if self._closed:
            raise RuntimeError("RemoteRuntime is closed")
        if self._generation == self.process.generation and self.process.pid is not None:
            return
        try:
            self._load()
            rows = self._history.ordered()
            if len(rows):
                self.process.request(["history", self.handle], rows.astype("<f8").tobytes())
        except StrategyLoadError as exc:  # it loaded before, so this is the process, not the code
            raise StrategyEvalError(f"reloading after the evaluation process restarted failed: {exc}") from None

    def push_history(self, candles: npt.NDArray[np.float64]) -> None:
        rows = np.ascontiguousarray(candles, dtype="<f8")
        for attempt in (1, 2):
            try:
                self.ensure_loaded()
                self.process.request(["history", self.handle], rows.tobytes())
                break
            except ProcessDied:
                # The engine disables a strategy whose history cannot be given to it; a process
                # that died is not the strategy's fault, so try once more in a new one.
                if attempt == 2:
                    raise
        self._history.extend(rows)

    def step(self, candle: Floats6, position: Position | None) -> tuple[Decision, Any]:
        outcome = self.process.begin([(self, position)], candle)()[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def settle(self, outcome: list[Any], floats: Floats6) -> StepOutcome:
        """One step outcome from the child, decoded; the candle joins the kept history when the
        child appended it."""
        if outcome[0] == "d":
            self._history.append(floats)
            return p.decode_decision(outcome[1], outcome[2])
        error = p.decode_error(outcome[1])
        if getattr(error, "consumed", 0):
            self._history.append(floats)
        return error

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.process.strategies -= 1
        if self._generation == self.process.generation and self.process.pid is not None:
            try:
                self.process.request(["close", self.handle])
            except Exception as exc:  # the strategy is gone either way
                log.warning("closing a remote strategy failed", handle=self.handle, error=str(exc))


class EvalPool:
    """A runtime factory that spreads strategies over the daemon and ``processes`` evaluation
    processes (started on first use), the least loaded first."""

    def __init__(
        self, settings: SandboxSettings, local: RuntimeFactory, processes: int, *, log_level: str = "info"
    ) -> None:
        self._settings = settings
        self._local = local
        self._local_count = 0
        self.processes = [EvalProcess(settings, i, log_level=log_level) for i in range(processes)]

    def __call__(self, row: StrategyRow, key: StreamKey) -> StrategyRuntime:
        target = min(self.processes, key=lambda proc: proc.strategies, default=None)
        if target is not None and self._local_count > target.strategies:
            try:
                return RemoteRuntime(target, row, key, self._settings.max_candles)
            except ProcessDied as exc:  # no process to run it in: run it here rather than not at all
                log.warning("evaluation process unavailable; strategy runs in the daemon", strategy_id=row.id,
                            error=str(exc))
        runtime = self._local(row, key)
        self._local_count += 1
        weakref.finalize(runtime, self._forget_local)
        return runtime

    def _forget_local(self) -> None:
        self._local_count -= 1

    def close(self) -> None:
        for process in self.processes:
            process.close()
