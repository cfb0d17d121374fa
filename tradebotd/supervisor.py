"""Supervised background tasks: a crash is logged with its traceback and the task restarted with
backoff, so a bug in one loop never leaves a zombie daemon that looks alive but does nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import structlog

__all__ = ["Supervisor"]

log = structlog.get_logger(__name__)


class Supervisor:
    def __init__(self, *, restart_min_s: float = 0.5, restart_max_s: float = 30.0) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._min = restart_min_s
        self._max = restart_max_s
        self.restarts: dict[str, int] = {}

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` until :meth:`stop`; restart it whenever it raises."""
        self._tasks[name] = asyncio.create_task(self._keep_running(name, factory), name=name)

    async def _keep_running(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        delay = self._min
        while True:
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping:
                    log.exception("task failed during shutdown", task=name)
                    return
                self.restarts[name] = self.restarts.get(name, 0) + 1
                wait = delay * (0.5 + random.random())
                log.exception(
                    "task crashed; restarting", task=name, restart_in_s=round(wait, 2), restarts=self.restarts[name]
                )
                await asyncio.sleep(wait)
                delay = min(delay * 2, self._max)
                continue
            return  # a clean return means the task finished its work (e.g. after stop())

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
