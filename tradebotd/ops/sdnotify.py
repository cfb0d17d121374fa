"""systemd's notify protocol, spoken directly, and the progress watchdog that decides when to ping.

The protocol (``sd_notify(3)``) is one datagram per message on the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace), holding newline-separated
``KEY=value`` assignments: ``READY=1`` once start-up is done, ``STATUS=`` a one-line summary shown
by ``systemctl status``, ``WATCHDOG=1`` to reset the watchdog timer (``WatchdogSec=``, passed to
us as ``$WATCHDOG_USEC``), ``STOPPING=1`` at shutdown, ``EXTEND_TIMEOUT_USEC=`` while a long
start-up or shutdown is still making progress. Twenty lines of socket code do not justify the
systemd Python bindings (a compiler at install time) or a dependency.

:class:`Notifier` never raises and never blocks the event loop: the socket is non-blocking, a
message that cannot be sent is dropped, and the first failure is logged once. Without
``$NOTIFY_SOCKET`` (a terminal, Docker, Fly.io, Railway) :meth:`Notifier.from_environ` returns
``None`` and the daemon simply does not notify.

:class:`ProgressWatchdog` is the sans-I/O decision: given, for each part of the pipeline, whether
it has work (``busy``) and a count of work done, it reports the parts that have had work but
done none for ``timeout_s``. The daemon pings ``WATCHDOG=1`` only while that list is empty, so
systemd restarts a process that is alive but no longer trading (a silent feed, a wedged
evaluation, a writer that stopped draining), not only one whose event loop is blocked
(``freqtrade/freqtrade#11957``: a watchdog that pings from a heartbeat loop keeps a zombie alive).
:func:`keep_watch` is the thin asyncio shell around both.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import NoReturn

import structlog

__all__ = [
    "Notifier",
    "Progress",
    "ProgressWatchdog",
    "Stall",
    "keep_watch",
    "socket_address",
    "watchdog_interval_s",
]

log = structlog.get_logger(__name__)

STATUS_MAX_CHARS = 200  # systemctl status shows one line; keep the datagram small


def socket_address(value: str) -> str | None:
    """``$NOTIFY_SOCKET`` as an address for ``sendto``: an absolute path as it is, ``@name`` as
    the abstract-namespace name ``\\0name``; ``None`` for what we do not speak (``vsock:...``,
    relative paths, empty)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def watchdog_interval_s(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog timeout systemd expects pings within (``$WATCHDOG_USEC``), in seconds, or
    ``None`` when there is none for this process: unset, not a positive integer, or
    ``$WATCHDOG_PID`` naming another process (as ``sd_watchdog_enabled(3)`` decides)."""
    raw = environ.get("WATCHDOG_USEC", "")
    if not raw.isdigit() or int(raw) == 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(raw) / 1_000_000


class Notifier:
    """Sends notify messages to one socket. Use :meth:`from_environ`."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._warned = False
        self.sent = 0  # messages handed to the kernel
        self.dropped = 0  # messages that could not be sent

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str], *, unset: bool = False) -> Notifier | None:
        """A notifier for ``$NOTIFY_SOCKET``, or ``None`` when it is unset or not a socket
        address we can use. ``unset=True`` removes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
        ``WATCHDOG_PID`` from ``environ`` (read the watchdog interval first), so child processes
        do not inherit them, like ``sd_notify(unset_environment=1)``."""
        value = environ.get("NOTIFY_SOCKET", "")
        if unset:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                environ.pop(name, None)
        if not value:
            return None
        address = socket_address(value)
        if address is None:
            log.warning("NOTIFY_SOCKET is not a path or @abstract name; not notifying systemd", notify_socket=value)
            return None
        return cls(address)

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments as one message. True if the kernel took it."""
        payload = "\n".join(assignments).encode()
        try:
            self._sock.sendto(payload, self.address)
        except OSError as exc:  # ENOENT / ECONNREFUSED (no listener), EAGAIN (its queue is full)
            self.dropped += 1
            if not self._warned:
                self._warned = True
                log.warning("could not notify systemd; continuing", error=str(exc), notify_socket=self.address)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *(() if status is None else (_status(status),)))

    def status(self, text: str) -> bool:
        return self.notify(_status(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *(() if status is None else (_status(status),)))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before systemd gives up on a start-up or shutdown in progress."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1_000_000))}")

    def close(self) -> None:
        self._sock.close()


def _status(text: str) -> str:
    line = " ".join(text.split())  # one line: newlines would end the assignment
    return "STATUS=" + line[:STATUS_MAX_CHARS]


@dataclass(frozen=True, slots=True)
class Progress:
    """One pipeline part as the watchdog sees it: whether it has work to do now, and a count
    that grows whenever it does some (frames received, candles evaluated, batches committed)."""

    busy: bool
    done: int


@dataclass(frozen=True, slots=True)
class Stall:
    part: str
    idle_s: float  # how long it has had work without doing any


class ProgressWatchdog:
    """Which parts had work but did none for ``timeout_s``. No I/O, no clock: time is passed in.

    A part that is not busy is never stalled (no strategies, no streams: nothing to wait for);
    the timer starts when it becomes busy and restarts whenever its count moves. Calling
    :meth:`observe` more or less often does not change the answer, so the watchdog shell and
    the health endpoint can share one instance."""

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.timeout_s = timeout_s
        # part -> (its count, since when it has been busy without that count moving, busy then)
        self._since: dict[str, tuple[int, float, bool]] = {}

    def observe(self, now_s: float, parts: Mapping[str, Progress]) -> tuple[Stall, ...]:
        stalls = []
        for name, progress in parts.items():
            seen = self._since.get(name)
            if seen is None or not progress.busy or not seen[2] or progress.done != seen[0]:
                self._since[name] = (progress.done, now_s, progress.busy)
                continue
            idle = now_s - seen[1]
            if idle >= self.timeout_s:
                stalls.append(Stall(name, idle))
        for gone in self._since.keys() - parts.keys():
            del self._since[gone]
        return tuple(stalls)

    def should_ping(self, now_s: float, parts: Mapping[str, Progress]) -> bool:
        return not self.observe(now_s, parts)


async def keep_watch(
    notifier: Notifier,
    watchdog: ProgressWatchdog,
    progress: Callable[[], Mapping[str, Progress]],
    *,
    interval_s: float,
    status: Callable[[], str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> NoReturn:
    """Every ``interval_s`` (half of ``WatchdogSec=``, as systemd recommends): ping
    ``WATCHDOG=1`` if nothing is stalled, and send ``STATUS=``. One log line when pings stop
    and one when they resume, naming the stalled parts. Runs until cancelled (supervise it)."""
    withheld: tuple[str, ...] = ()
    while True:
        stalls = watchdog.observe(clock(), progress())
        names = tuple(s.part for s in stalls)
        if names != withheld:
            if names:
                log.error(
                    "pipeline stalled; withholding systemd watchdog pings",
                    stalled={s.part: round(s.idle_s, 1) for s in stalls},
                )
            else:
                log.info("pipeline progressing again; watchdog pings resume", was_stalled=list(withheld))
            withheld = names
        if not stalls:
            notifier.watchdog()
        if status is not None:
            notifier.status(status())
        await asyncio.sleep(interval_s)
