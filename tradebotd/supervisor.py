"""Supervised background tasks: a crash is logged with its traceback and the task restarted with
backoff, so a bug in one loop never leaves a zombie daemon that looks alive but does nothing.

Restarts are not forever. A task may be restarted ``max_restarts`` times within any
``window_s`` (``daemon.max_task_restarts``, 5, within ``daemon.restart_window_s``, 300 s); the
next crash in that window makes the supervisor give up: it stops restarting, logs one error and
sets :attr:`Supervisor.given_up`, on which the daemon shuts down and exits non-zero, so systemd
(``Restart=on-failure``) or the platform starts a clean process. Before that, health turns red:
a task that is down waiting for its restart, or that crashed more than once within the window,
is reported as failing (:meth:`Supervisor.task_health`, read by ``/healthz``).

The backoff doubles from ``restart_min_s`` up to ``restart_max_s`` with jitter, and starts
again from the bottom once a task has gone a whole window without crashing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from .logs import mask_secrets
from .ops.status import TaskHealth

__all__ = ["Supervisor"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Record:
    restarts: int = 0
    crashes: deque[float] = field(default_factory=deque)  # monotonic times within the window
    down: bool = False
    last_error: str | None = None


class Supervisor:
    def __init__(
        self,
        *,
        restart_min_s: float = 0.5,
        restart_max_s: float = 30.0,
        max_restarts: int = 5,
        window_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._records: dict[str, _Record] = {}
        self._stopping = False
        self._min = restart_min_s
        self._max = restart_max_s
        self._max_restarts = max_restarts
        self._window_s = window_s
        self._clock = clock
        self.given_up = asyncio.Event()  # set when a task crashed too often: exit non-zero
        self.give_up_reason: str | None = None

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts per task since start-up."""
        return {name: r.restarts for name, r in self._records.items()}

    @property
    def gave_up(self) -> bool:
        return self.given_up.is_set()

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` until :meth:`stop`; restart it whenever it raises."""
        self._records.setdefault(name, _Record())
        self._tasks[name] = asyncio.create_task(self._keep_running(name, factory), name=name)

    async def _keep_running(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        record = self._records[name]
        delay = self._min
        while True:
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:
                    log.exception("task failed during shutdown", task=name)
                    return
                now = self._clock()
                crashes = record.crashes
                while crashes and now - crashes[0] > self._window_s:
                    crashes.popleft()
                if not crashes:
                    delay = self._min  # a whole window without a crash: start the backoff over
                crashes.append(now)
                record.last_error = mask_secrets(f"{type(exc).__name__}: {exc}")
                if len(crashes) > self._max_restarts:
                    self._give_up(name, record)
                    return
                record.restarts += 1
                record.down = True
                wait = delay * (0.5 + random.random())
                log.exception(
                    "task crashed; restarting",
                    task=name,
                    restart_in_s=round(wait, 2),
                    restarts=record.restarts,
                    crashes_in_window=len(crashes),
                    max_task_restarts=self._max_restarts,
                )
                try:
                    await asyncio.sleep(wait)
                finally:
                    record.down = False
                delay = min(delay * 2, self._max)
                continue
            return  # a clean return means the task finished its work (e.g. after stop())

    def _give_up(self, name: str, record: _Record) -> None:
        record.down = True
        self.give_up_reason = (
            f"task {name!r} crashed {len(record.crashes)} times within {self._window_s:g} s "
            f"(daemon.max_task_restarts = {self._max_restarts})"
        )
        log.exception(
            "task keeps crashing; giving up so the service manager restarts the daemon",
            task=name,
            reason=self.give_up_reason,
        )
        self.given_up.set()

    def task_health(self) -> list[TaskHealth]:
        now = self._clock()
        out = []
        for name, record in self._records.items():
            recent = sum(1 for t in record.crashes if now - t <= self._window_s)
            out.append(
                TaskHealth(
                    name=name,
                    restarts=record.restarts,
                    recent_crashes=recent,
                    down=record.down,
                    failing=record.down or recent >= 2,
                    last_error=record.last_error,
                )
            )
        return out

    def task(self, name: str) -> asyncio.Task[None]:
        return self._tasks[name]

    async def wait(self, name: str, grace_s: float) -> bool:
        """Wait for one task to finish on its own; cancel it after ``grace_s``. True if it finished."""
        task = self._tasks.get(name)
        if task is None:
            return True
        done, _ = await asyncio.wait({task}, timeout=grace_s)
        if not done:
            log.warning("task did not finish in time; cancelling", task=name, grace_s=grace_s)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return False
        return True

    async def cancel_all(self) -> None:
        self._stopping = True
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def stopping(self) -> None:
        self._stopping = True
