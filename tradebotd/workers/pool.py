"""The daemon's side of its evaluation processes (see the package docstring).

:class:`EvalPool` is a runtime factory: it places each strategy on the daemon itself or on one
of its evaluation processes, whichever holds the fewest, and returns a local runtime or a
:class:`RemoteRuntime`. Remote runtimes are evaluated per candle in one request per process
(:meth:`EvalProcess.begin`), while the daemon evaluates its own share. Requests are pipelined
(:mod:`tradebotd.workers.process`): the work of many candles can be on its way to a process
before the first answer is read, and ``StepTicket.wait`` awaits an answer without blocking the
event loop.

A new process takes over from one that died: each remote runtime loads itself there again with
the history it keeps on this side (as an in-process sandbox does after a trap), and a step request
that found the process dead is sent once more, so a crash costs that candle time, not a candle.
A process that stops answering is killed after the sandbox's deadlines plus a margin; that
candle's evaluations of its strategies fail (one strategy error each), and the next request
starts a new one.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from tradebotd.config import SandboxSettings
from tradebotd.engine import EvalReport, Floats6, RuntimeFactory, StepOutcome, StrategyRuntime
from tradebotd.errors import StrategyError
from tradebotd.model import Decision, Position, StreamKey
from tradebotd.sandbox.errors import StrategyEvalError, StrategyLoadError
from tradebotd.sandbox.history import History
from tradebotd.store.base import StrategyRow
from tradebotd.workers import protocol as p
from tradebotd.workers.process import (
    REQUEST_MARGIN_S,
    START_TIMEOUT_S,
    ChildProcess,
    Pending,
    ProcessDied,
    ProcessHung,
)

__all__ = ["STEPS_MAX", "EvalPool", "EvalProcess", "ProcessDied", "ProcessHung", "RemoteRuntime", "StepTicket"]

log = structlog.get_logger(__name__)


STEPS_MAX = 8
"""Candles' step requests coalesced into one ``steps`` frame at most (a few ms of a child's work)."""


class EvalProcess(ChildProcess):
    """One evaluation process: the pipelined connection (``ChildProcess``) plus the engine's
    ``StepGroup`` interface for the remote runtimes placed on it.

    Step requests are coalesced while the process is busy: a candle's request goes out at once
    when the process has nothing to answer (it waits for work), otherwise it joins an outbox
    that is sent as one ``steps`` frame at the end of the event loop's turn, or once it holds
    ``STEPS_MAX`` candles, or as soon as any of its tickets is waited for or asked whether it
    is done. At a minute boundary 150 candles closing together so cost the daemon a few writes
    instead of 150, each of which woke the child (a wake-up costs the writer 0.1-1 ms on a
    loaded 2-vCPU VM), and the requests in flight stay far below ``MAX_IN_FLIGHT``."""

    def __init__(
        self, settings: SandboxSettings, index: int, *, log_level: str = "info", margin_s: float = REQUEST_MARGIN_S
    ) -> None:
        super().__init__(settings, index, log_level=log_level, margin_s=margin_s)
        self._outbox: list[StepTicket] = []
        self._flush_soon = False

    def begin(self, work: Sequence[tuple[StrategyRuntime, Position | None]], floats: Floats6) -> StepTicket:
        """Sends one candle's evaluations of the remote runtimes in ``work`` (or queues them to
        be sent with others: see the class docstring) and returns the ticket for their outcomes
        (in order): call it to wait, or await ``ticket.wait()``. A failing process or strategy
        never raises here: its failures are outcomes.

        If the process turns out to have died, the request is sent once more to a new one (its
        strategies reloaded with their history): a crash costs that candle time, not a candle.
        A process that stops answering is not asked again: its strategies' outcomes are errors."""
        runtimes: list[RemoteRuntime] = []
        for runtime, _ in work:
            if not isinstance(runtime, RemoteRuntime):
                raise TypeError("EvalProcess.begin takes RemoteRuntimes only")
            runtimes.append(runtime)
        ticket = StepTicket(self, runtimes, [position for _, position in work], floats)
        if not self._outbox:
            if self.queued:
                self.read_ready()  # its answers may be in: then it waits for work
            if not self.queued:
                ticket.send()  # nothing to answer: the process waits for work, so wake it now
                return ticket
        ticket.queued = True
        self._outbox.append(ticket)
        if len(self._outbox) >= STEPS_MAX:
            self.flush()
        elif not self._flush_soon:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop to come back to: send now
                self.flush()
            else:
                self._flush_soon = True
                loop.call_soon(self._flush_later)
        return ticket

    def _flush_later(self) -> None:
        self._flush_soon = False
        self.flush()

    def flush(self) -> None:
        """Sends the queued candles' step requests, as one ``steps`` request (or a ``step``)."""
        tickets, self._outbox = self._outbox, []
        prepared: list[tuple[StepTicket, list[list[Any]]]] = []
        for ticket in tickets:
            ticket.queued = False
            items = ticket.prepare()
            if items:
                prepared.append((ticket, items))
        if len(prepared) == 1:
            ticket, items = prepared[0]
            ticket.transmit(items)
            return
        if not prepared:
            return
        count = sum(len(items) for _, items in prepared)
        message = ["steps", [[list(ticket.floats), items] for ticket, items in prepared]]
        try:
            pending = self.send(message, timeout_s=self.budget_s * count + self.margin_s)
        except ProcessDied as exc:  # found dead while sending: answered like a death found by reading
            for ticket, _ in prepared:
                ticket.lost(exc)
            return
        for part, (ticket, _) in enumerate(prepared):
            ticket.sent_in(pending, part)

    def close(self) -> None:
        for ticket in self._outbox:
            ticket.queued = False
            ticket.lost(ProcessDied("the evaluation process was closed"))
        self._outbox = []
        super().close()


class StepTicket:
    """One candle's ``step`` request to one process (see :meth:`EvalProcess.begin`)."""

    def __init__(
        self, process: EvalProcess, runtimes: list[RemoteRuntime], positions: list[Position | None], floats: Floats6
    ) -> None:
        self._process = process
        self._runtimes = runtimes
        self._positions = positions
        self.floats = floats
        self.queued = False  # in the process's outbox, not sent yet
        self._outcomes: list[StepOutcome | None] = [None] * len(runtimes)
        self._sent: list[int] = []  # indexes of the runtimes in the request in flight
        self._pending: Pending | None = None
        self._part: int | None = None  # its place in a ``steps`` request; None: a ``step`` of its own
        self._lost: ProcessDied | None = None  # the process could not be reached to send

    def send(self) -> None:
        """Sends this candle's request on its own (first, or again after a death)."""
        items = self.prepare()
        if items:
            self.transmit(items)

    def prepare(self) -> list[list[Any]]:
        """The request's items for the runtimes without an outcome yet (loading them again in a
        restarted process); those that cannot be asked get their failure as outcome."""
        items: list[list[Any]] = []
        self._sent = []
        self._pending = self._lost = None
        self._part = None
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
        return items

    def transmit(self, items: list[list[Any]]) -> None:
        """Sends the prepared ``items`` as a ``step`` request of its own."""
        process = self._process
        try:
            self._pending = process.send(
                ["step", list(self.floats), items], timeout_s=process.budget_s * len(items) + process.margin_s
            )
        except ProcessDied as exc:  # found dead while sending: answered like a death found by reading
            self._lost = exc

    def sent_in(self, pending: Pending, part: int) -> None:
        """The prepared items went out as part ``part`` of a ``steps`` request."""
        self._pending, self._part = pending, part

    def lost(self, exc: ProcessDied) -> None:
        """The request could not be sent (the process is gone)."""
        self._pending, self._lost = None, exc

    @property
    def done(self) -> bool:
        """The outcomes are in (reading the replies already there, without blocking): a call
        returns at once. After a death found here, a call sends the request again and waits."""
        if self.queued:
            self._process.flush()
        pending = self._pending
        if not self._sent or pending is None:
            return True
        if not pending.done:
            self._process.read_ready()
        return pending.done

    def __call__(self) -> list[StepOutcome]:
        """Waits (blocking) for the outcomes."""
        if self.queued:
            self._process.flush()
        for attempt in (1, 2):
            if not self._sent:
                break
            try:
                if self._pending is None:
                    raise self._lost or ProcessDied("the step request was not sent")
                reply = self._process.wait(self._pending)
            except Exception as exc:
                if self._failed(exc, attempt):
                    continue
            else:
                self._take(reply)
        return self._result()

    async def wait(self) -> list[StepOutcome]:
        """The outcomes, awaited without blocking the event loop."""
        if self.queued:
            self._process.flush()
        for attempt in (1, 2):
            if not self._sent:
                break
            try:
                if self._pending is None:
                    raise self._lost or ProcessDied("the step request was not sent")
                reply = await self._process.wait_async(self._pending)
            except Exception as exc:
                if self._failed(exc, attempt):
                    continue
            else:
                self._take(reply)
        return self._result()

    def _take(self, reply: list[Any]) -> None:
        try:
            outcomes = reply[1] if reply[0] == "ok" and len(reply) > 1 else None
            if self._part is not None:  # its share of a ``steps`` answer
                outcomes = outcomes[self._part] if isinstance(outcomes, list) and self._part < len(outcomes) else None
            if not isinstance(outcomes, list) or len(outcomes) != len(self._sent):
                raise p.RemoteFailure(f"unexpected reply to a step request: {reply!r:.200}")
            for i, outcome in zip(self._sent, outcomes, strict=True):
                self._outcomes[i] = self._runtimes[i].settle(outcome, self.floats)
        except p.RemoteFailure as exc:
            self._fail(exc)
        except Exception as exc:  # an outcome that does not decode: the child is not to be trusted
            self._fail(self._process.failed(exc))
        self._sent = []

    def _failed(self, exc: Exception, attempt: int) -> bool:
        """The request failed; True if it was sent again (once, to a new process, after a death)."""
        if isinstance(exc, p.RemoteFailure):
            self._fail(exc)
            return False
        failure = exc if isinstance(exc, ProcessDied) else self._process.failed(exc)
        if attempt == 1 and not isinstance(failure, ProcessHung):
            self.send()  # died: once more, in a new process
            return True
        self._fail(failure)
        return False

    def _result(self) -> list[StepOutcome]:
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

    def __init__(
        self, process: EvalProcess, row: StrategyRow, key: StreamKey, max_candles: int, *, load: bool = True
    ) -> None:
        """``load=False``: the caller loads it with :meth:`begin_load` (and counts it placed)."""
        self.process = process
        self.step_group = process
        self.handle = next(self._handles)
        self._row = p.encode_row(row)
        self._key = key
        self._history = History(max_candles, key.interval_ms)
        self._generation = 0
        self._closed = False
        if load:
            self._load()  # ProcessDied: the pool places the strategy elsewhere
            process.strategies += 1

    def _load(self) -> None:
        self.begin_load()()

    def begin_load(self) -> Callable[[], None]:
        """Sends the load request and returns the function that waits for its answer (raising
        the strategy's load error, or ``ProcessDied``). Raises ``ProcessDied`` at once if the
        process cannot be reached."""
        process = self.process
        pending = process.send(
            ["load", self.handle, self._row, self._key.symbol, self._key.interval], timeout_s=START_TIMEOUT_S
        )
        generation = process.generation

        def finish() -> None:
            reply = process.wait(pending)
            if reply[0] == "error":
                raise p.decode_error(reply[1])
            self._generation = generation

        return finish

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
        self.begin_history(candles)()

    def begin_history(self, candles: npt.NDArray[np.float64]) -> Callable[[], None]:
        """Sends the candles and returns the function that waits until the strategy has them
        (raising what giving them raised). Many strategies' histories can so be on their way to
        their processes at once, while the daemon gives its own strategies theirs."""
        rows = np.ascontiguousarray(candles, dtype="<f8")
        pending: Pending | None = None
        try:
            self.ensure_loaded()
            pending = self.process.send(
                ["history", self.handle], rows.tobytes(), timeout_s=self.process.budget_s + self.process.margin_s
            )
        except ProcessDied:
            pass  # tried once more below

        def finish() -> None:
            try:
                if pending is None:
                    raise ProcessDied("the evaluation process was not reachable")
                reply = self.process.wait(pending)
                if reply[0] == "error":
                    raise p.decode_error(reply[1])
            except ProcessDied:
                # The engine disables a strategy whose history cannot be given to it; a process
                # that died is not the strategy's fault, so try once more in a new one.
                self.ensure_loaded()
                self.process.request(["history", self.handle], rows.tobytes())
            self._history.extend(rows)

        return finish

    def step(self, candle: Floats6, position: Position | None) -> tuple[Decision, EvalReport]:
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
    processes (started on first use), the least loaded first. ``daemon_weight``: how much one
    strategy in the daemon counts against one in a process when balancing (above 1, the daemon
    takes fewer: it also settles, records and does the I/O of every strategy)."""

    def __init__(
        self,
        settings: SandboxSettings,
        local: RuntimeFactory,
        processes: int,
        *,
        log_level: str = "info",
        daemon_weight: float = 1.0,
    ) -> None:
        self._settings = settings
        self._local = local
        self._local_count = 0
        self._daemon_weight = daemon_weight
        self.processes = [EvalProcess(settings, i, log_level=log_level) for i in range(processes)]

    def __call__(self, row: StrategyRow, key: StreamKey) -> StrategyRuntime:
        target = self._place(self._local_count)
        if target is not None:
            try:
                return RemoteRuntime(target, row, key, self._settings.max_candles)
            except ProcessDied as exc:  # no process to run it in: run it here rather than not at all
                self._unavailable(row, exc)
        return self._load_local(row, key)

    def load_many(self, requests: Sequence[tuple[StrategyRow, StreamKey]]) -> list[StrategyRuntime | Exception]:
        """Loads many strategies at once: the processes load theirs while the daemon loads its
        own. Each result is the runtime, or the ``StrategyError`` / ``ValueError`` its loading
        raised (what ``__call__`` would raise), in the order asked."""
        results: list[StrategyRuntime | Exception | None] = [None] * len(requests)
        remote: list[tuple[int, RemoteRuntime, Callable[[], None]]] = []
        local: list[int] = []
        try:
            for i, (row, key) in enumerate(requests):
                target = self._place(self._local_count + len(local))
                if target is not None:
                    runtime = RemoteRuntime(target, row, key, self._settings.max_candles, load=False)
                    try:
                        remote.append((i, runtime, runtime.begin_load()))
                        target.strategies += 1  # placed now, so the next placement counts it
                        continue
                    except ProcessDied as exc:
                        self._unavailable(row, exc)
                local.append(i)
            for i in local:
                results[i] = self._try_local(*requests[i])
            for i, runtime, finish in remote:
                try:
                    finish()
                    results[i] = runtime
                except ProcessDied as exc:
                    runtime.process.strategies -= 1
                    self._unavailable(requests[i][0], exc)
                    results[i] = self._try_local(*requests[i])
                except (StrategyError, ValueError) as exc:
                    runtime.process.strategies -= 1
                    results[i] = exc
        except BaseException:
            for result in results:
                if result is not None and not isinstance(result, Exception):
                    result.close()
            raise
        assert all(result is not None for result in results)
        return [result for result in results if result is not None]

    def _place(self, local_count: int) -> EvalProcess | None:
        """The process for the next strategy, or None for the daemon."""
        target = min(self.processes, key=lambda proc: proc.strategies, default=None)
        if target is not None and local_count * self._daemon_weight > target.strategies:
            return target
        return None

    def _try_local(self, row: StrategyRow, key: StreamKey) -> StrategyRuntime | Exception:
        try:
            return self._load_local(row, key)
        except (StrategyError, ValueError) as exc:
            return exc

    def _load_local(self, row: StrategyRow, key: StreamKey) -> StrategyRuntime:
        runtime = self._local(row, key)
        self._local_count += 1
        weakref.finalize(runtime, self._forget_local)
        return runtime

    @staticmethod
    def _unavailable(row: StrategyRow, exc: ProcessDied) -> None:
        log.warning("evaluation process unavailable; strategy runs in the daemon", strategy_id=row.id, error=str(exc))

    def _forget_local(self) -> None:
        self._local_count -= 1

    def close(self) -> None:
        for process in self.processes:
            process.close()
