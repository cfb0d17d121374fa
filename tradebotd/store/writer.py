"""The store writer: the only task that writes trading-path data.

The engine hands over one :class:`WriteBatch` per candle and moves on; the writer applies every
pending batch in one transaction as soon as the event loop is free, in order. If the store is
unavailable the batches stay queued (nothing is dropped) and the writer retries with backoff,
logging once per attempt. ``flush()`` waits until everything handed over so far is durable, which
shutdown uses to keep its promise.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import structlog

from .base import Store, StoreUnavailable, WriteBatch

__all__ = ["StoreWriter"]

log = structlog.get_logger(__name__)


class StoreWriter:
    def __init__(
        self,
        store: Store,
        *,
        retry_min_s: float = 0.05,
        retry_max_s: float = 5.0,
        idle_checkpoint_s: float | None = None,
        on_committed: Callable[[WriteBatch, int], None] | None = None,
    ) -> None:
        self._store = store
        self._pending: deque[WriteBatch] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._on_committed = on_committed
        self._idle_checkpoint_s = idle_checkpoint_s
        self._dirty = False  # committed since the last checkpoint
        self._checkpoint_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._committed = asyncio.Event()
        self.committed_batches = 0
        self.failed_attempts = 0

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def submit(self, batch: WriteBatch) -> None:
        """Queue a batch; never blocks and never fails."""
        if not batch:
            return
        self._pending.append(batch)
        self._idle.clear()
        if self._timer is not None:  # not idle after all
            self._timer.cancel()
            self._timer = None
        self._wakeup.set()

    async def flush(self) -> None:
        """Wait until every batch submitted so far is committed (wrap in ``asyncio.timeout``)."""
        await self._idle.wait()

    def next_commit(self) -> asyncio.Event:
        """The event the next commit sets. Take it *before* checking a condition on the store, then
        wait on it: a commit in between cannot be missed."""
        return self._committed

    async def run(self) -> None:
        """Commit batches until :meth:`stop`; supervised by the daemon."""
        delay = self._retry_min_s
        while True:
            if not self._pending:
                self._idle.set()
                if self._stopping:
                    return
                if self._checkpoint_due:
                    self._checkpoint()
                self._wakeup.clear()
                if self._dirty and self._idle_checkpoint_s is not None and self._timer is None:
                    # Quiet for a while (candles close in bursts) is a good moment for housekeeping.
                    self._timer = asyncio.get_running_loop().call_later(self._idle_checkpoint_s, self._due)
                # Await the event itself (no wait_for wrapper): a submit resumes this task first.
                await self._wakeup.wait()
                continue
            batches = list(self._pending)
            try:
                self._store.apply(batches)
            except StoreUnavailable as exc:
                self.failed_attempts += 1
                log.warning("store write failed; will retry", error=str(exc), backlog=len(batches), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            delay = self._retry_min_s
            self._dirty = True
            for _ in batches:
                self._pending.popleft()
            self.committed_batches += len(batches)
            if self._on_committed is not None:
                now = time.monotonic_ns()
                for batch in batches:
                    self._on_committed(batch, now)
            self._committed.set()
            self._committed = asyncio.Event()
            # Let the trading path run before the next commit (writes never starve it).
            await asyncio.sleep(0)

    def _due(self) -> None:
        self._timer = None
        self._checkpoint_due = True
        self._wakeup.set()

    def _checkpoint(self) -> None:
        self._checkpoint_due = False
        try:
            self._store.checkpoint()
        except StoreUnavailable as exc:
            log.warning("store checkpoint failed; will retry when idle again", error=str(exc))
            return
        self._dirty = False

    def stop(self) -> None:
        """Finish what is queued, then return from :meth:`run`."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wakeup.set()
