"""One evaluation process and the connection to it: ``ChildProcess`` (the I/O core of
``pool.EvalProcess``).

Requests are pipelined: ``send()`` writes a request and returns at once with a ``Pending`` for
its reply, so the daemon can hand a process the work of many candles before it waits for the
first answer. The child answers in order, so every reply read belongs to the oldest request not
answered yet; whoever reads (a blocking ``wait`` or an awaiting ``wait_async``) hands each reply
to its own request. ``wait_async`` never blocks the event loop: it waits for the socket with
``loop.add_reader``, so the daemon settles, records and commits while a child evaluates.

Each request has a deadline: its own work's time budget plus a margin, counted from when the
child can start it (after the requests queued before it). A process that misses one is hung: it
is killed and every request still waiting on it fails with ``ProcessDied``. One that dies (EOF,
a broken pipe, a frame that is not JSON) is killed and reaped likewise; the next request starts
a new one (``generation`` tells runtimes to load themselves there again).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

import structlog

from tradebotd.config import SandboxSettings
from tradebotd.sandbox.errors import SandboxUnavailable
from tradebotd.workers import protocol as p

__all__ = [
    "MAX_IN_FLIGHT", "REQUEST_MARGIN_S", "START_TIMEOUT_S", "ChildProcess", "Pending", "ProcessDied", "ProcessHung",
]

log = structlog.get_logger(__name__)

START_TIMEOUT_S = 20.0  # a first start may compile the QuickJS module (~0.5 s); the loop waits this long at most
REQUEST_MARGIN_S = 5.0  # beyond the sandbox's own deadlines, before a process counts as hung
MAX_IN_FLIGHT = 32
"""Requests sent and not answered, at most: past this, ``send`` first reads the oldest replies.
The child answers in order and stops reading while its answers fill the socket's buffer (about
200 KiB on Linux, a few hundred small frames); a daemon that only kept sending would then block
forever on a full buffer the other way (750 strategies loaded at once did)."""
# What a child needs of the daemon's environment (to find Python, the package and the compiled
# module cache); nothing else, so no secret ever reaches a process that runs strategies.
_ENV_KEEP = (
    "PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XDG_CACHE_HOME", "TRADEBOTD_CACHE_DIR", "PYTHONPATH", "VIRTUAL_ENV",
)


class ProcessDied(SandboxUnavailable):
    """The evaluation process exited or stopped answering (and could not be replaced in time)."""


class ProcessHung(ProcessDied):
    """... it stopped answering: it was killed, and what it was asked is not asked again (the
    request may be what hangs it)."""


class Pending:
    """A request sent and not answered yet; ``result()`` is its reply or raises its failure."""

    __slots__ = ("_error", "_init", "_reply", "deadline")

    def __init__(self, deadline: float, *, init: bool = False) -> None:
        self.deadline = deadline  # time.monotonic() by which the reply is due
        self._reply: list[Any] | None = None
        self._error: BaseException | None = None
        self._init = init

    @property
    def done(self) -> bool:
        return self._reply is not None or self._error is not None

    def result(self) -> list[Any]:
        if self._error is not None:
            raise self._error
        assert self._reply is not None
        return self._reply

    def _answer(self, reply: list[Any]) -> None:
        if not self.done:
            self._reply = reply

    def _fail(self, error: BaseException) -> None:
        if not self.done:
            self._error = error


class ChildProcess:
    """One child process. Only the event loop's thread uses it."""

    def __init__(
        self, settings: SandboxSettings, index: int, *, log_level: str = "info", margin_s: float = REQUEST_MARGIN_S
    ) -> None:
        self.settings = settings
        self.index = index
        self.generation = 0  # bumped by every (re)start; runtimes reload when it changes
        self.strategies = 0  # placed here (the pool balances on it)
        self.budget_s = settings.timeout_ms / 1000  # one evaluation's deadline in the child
        self.margin_s = margin_s
        self._log_level = log_level
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._inflight: deque[Pending] = deque()  # oldest first: the next reply is the head's
        self._readable: asyncio.Event | None = None  # set by the event loop's reader on our socket
        self._reader_loop: asyncio.AbstractEventLoop | None = None

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
        self._inflight.append(Pending(time.monotonic() + START_TIMEOUT_S, init=True))
        try:
            conn.send_bytes(p.dumps(["init", self.settings.model_dump(mode="json")]))
        except OSError as exc:
            raise self.failed(exc) from None
        return conn

    def close(self) -> None:
        """Closes the connection (the child exits when it sees that) and reaps the process."""
        self._stop_reading()
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        self._fail_all(ProcessDied("the evaluation process was closed"))
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

    @property
    def queued(self) -> int:
        """Requests sent whose replies have not been read yet."""
        return sum(1 for pending in self._inflight if not pending._init)

    # -- requests

    def send(self, message: list[Any], payload: bytes | None = None, *, timeout_s: float) -> Pending:
        """Writes a request (starting the process if needed); its reply is due ``timeout_s`` after
        the child can start on it. Raises ``ProcessDied`` if the process cannot be reached."""
        if len(self._inflight) >= MAX_IN_FLIGHT:
            self._make_room()
        conn = self._conn if self._conn is not None else self._start()
        now = time.monotonic()
        start = max(now, self._inflight[-1].deadline - self.margin_s) if self._inflight else now
        pending = Pending(start + timeout_s)
        self._inflight.append(pending)
        try:
            conn.send_bytes(p.dumps(message))
            if payload is not None:
                conn.send_bytes(payload)
        except OSError as exc:
            raise self.failed(exc) from None
        return pending

    def _make_room(self) -> None:
        """Reads replies (blocking) until fewer than ``MAX_IN_FLIGHT`` requests wait for one."""
        while len(self._inflight) >= MAX_IN_FLIGHT:
            conn, head = self._conn, self._inflight[0]
            if conn is None:
                break
            if conn.poll(max(head.deadline - time.monotonic(), 0.0)):
                self._read_one(conn)
            else:
                self._hung()

    def request(self, message: list[Any], payload: bytes | None = None, *, timeout_s: float | None = None) -> list[Any]:
        """Sends a request and waits for its reply; an ``["error", ...]`` reply raises the error
        it carries."""
        budget = self.budget_s + self.margin_s if timeout_s is None else timeout_s
        pending = self.send(message, payload, timeout_s=budget)
        reply = self.wait(pending)
        if reply[0] == "error":
            raise p.decode_error(reply[1])
        return reply

    def wait(self, pending: Pending) -> list[Any]:
        """Blocks until ``pending`` is answered (reading, and handing over, the replies before it)."""
        while not pending.done:
            conn, head = self._conn, self._inflight[0] if self._inflight else None
            if conn is None or head is None:
                pending._fail(ProcessDied("the evaluation process is not running"))
                break
            if conn.poll(max(head.deadline - time.monotonic(), 0.0)):
                self._read_one(conn)
            else:
                self._hung()
        return pending.result()

    def read_ready(self) -> None:
        """Reads the replies that have arrived, without blocking, handing each to its request."""
        conn = self._conn
        while conn is not None and self._inflight and conn.poll(0):
            self._read_one(conn)
            conn = self._conn
        if not self._inflight:
            self._stop_reading()

    async def wait_async(self, pending: Pending) -> list[Any]:
        """``wait`` without blocking the event loop."""
        loop = asyncio.get_running_loop()
        while not pending.done:
            conn, head = self._conn, self._inflight[0] if self._inflight else None
            if conn is None or head is None:
                pending._fail(ProcessDied("the evaluation process is not running"))
                break
            if conn.poll(0):
                self._read_one(conn)
                continue
            remaining = head.deadline - time.monotonic()
            if remaining <= 0:
                self._hung()
                continue
            readable = self._watch(loop, conn)
            readable.clear()
            if not conn.poll(0):
                try:
                    await asyncio.wait_for(readable.wait(), remaining)
                except TimeoutError:
                    pass  # the loop above finds the deadline passed
        if not self._inflight:
            self._stop_reading()
        return pending.result()

    # -- reading

    def _read_one(self, conn: Connection) -> None:
        """Reads one reply and hands it to the oldest waiting request."""
        try:
            reply = p.loads(conn.recv_bytes())
        except (OSError, EOFError, ValueError) as exc:  # gone, or a frame that is not JSON
            self.failed(exc)
            return
        head = self._inflight.popleft()
        if head._init:
            if not isinstance(reply, list) or not reply or reply[0] != "ok":
                error = reply[1] if isinstance(reply, list) and len(reply) > 1 else reply
                self.failed(ProcessDied(f"the evaluation process could not start: {p.decode_error(error)}"))
                return
            log.info("evaluation process started", index=self.index, pid=reply[1], generation=self.generation)
            return
        if not isinstance(reply, list) or not reply:
            head._fail(p.RemoteFailure(f"malformed reply from an evaluation process: {reply!r:.200}"))
            return
        head._answer(reply)

    def _hung(self) -> None:
        head = self._inflight[0]
        what = "did not start" if head._init else "no answer"
        self.failed(TimeoutError(f"{what} within the deadline ({self.budget_s + self.margin_s:.1f} s and more)"))

    def _watch(self, loop: asyncio.AbstractEventLoop, conn: Connection) -> asyncio.Event:
        """The event the loop sets whenever our socket is readable (one reader per socket)."""
        if self._readable is None or self._reader_loop is not loop:
            self._stop_reading()
            readable = self._readable = asyncio.Event()
            loop.add_reader(conn.fileno(), readable.set)
            self._reader_loop = loop
        return self._readable

    def _stop_reading(self) -> None:
        if self._reader_loop is not None and self._conn is not None and not self._reader_loop.is_closed():
            self._reader_loop.remove_reader(self._conn.fileno())
        if self._readable is not None:
            self._readable.set()  # wake whoever waits, to see what happened
        self._readable = None
        self._reader_loop = None

    # -- failure

    def failed(self, exc: BaseException) -> ProcessDied:
        """The process is unusable: kill it (the next request starts another), fail every request
        still waiting on it, and say why."""
        self._stop_reading()
        proc = self._proc
        code = None
        if proc is not None:
            proc.kill()
            code = proc.wait()
        if self._conn is not None:
            self._conn.close()
        self._conn, self._proc = None, None
        what = exc if isinstance(exc, ProcessDied) else f"{type(exc).__name__}: {exc}"
        log.error("evaluation process failed; it restarts on the next request", index=self.index, error=str(what),
                  exit_code=code)
        kind = ProcessHung if isinstance(exc, TimeoutError) else ProcessDied
        error = exc if isinstance(exc, ProcessDied) else kind(f"the evaluation process failed ({what})")
        self._fail_all(error)
        return error

    def _fail_all(self, error: BaseException) -> None:
        while self._inflight:
            self._inflight.popleft()._fail(error)
