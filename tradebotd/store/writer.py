"""The store writer: the only task that writes trading-path data.

The engine hands over one :class:`WriteBatch` per candle and moves on; the writer applies every
pending batch in one transaction as soon as the event loop is free, in order. If the store is
unavailable the batches stay queued (nothing is dropped) and the writer retries with backoff,
logging once per attempt. ``flush()`` waits until everything handed over so far is durable, which
shutdown uses to keep its promise. A batch with ``on_durable`` set has it called right after the
commit that holds it (the engine sends a live order only then); batches without it cost nothing
more.

Housekeeping waits for a quiet moment (``idle_s`` without a batch; candles close in bursts):

* ``strategy_runs`` (``last_run_at`` / ``last_signal_at``: a timestamp per strategy per candle)
  are taken out of each batch, merged, and committed on their own when the writer has been idle
  for ``idle_s``, or once the oldest has waited ``runs_max_age_s`` if it never is. Each of those
  updates rewrites the strategy's whole row, code included: with 100 strategies they were a third
  of every candle's commit, and they record no decision. The decision itself (trades, logs,
  cursor, position, cash) stays one atomic batch. A crash in between loses only timestamps,
  which the next candle writes again.
* with ``checkpoint_when_idle``, the WAL is copied into the database (SQLite's own checkpoint,
  switched off by the daemon, would run inside whichever commit crosses its threshold).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import structlog

from ..ops.status import QueueStats
from .base import Store, StoreUnavailable, WriteBatch

__all__ = ["StoreWriter"]

log = structlog.get_logger(__name__)

Runs = dict[str, tuple[str, str | None]]


class StoreWriter:
    def __init__(
        self,
        store: Store,
        *,
        retry_min_s: float = 0.05,
        retry_max_s: float = 5.0,
        idle_s: float = 1.0,
        runs_max_age_s: float = 5.0,
        checkpoint_when_idle: bool = False,
        on_committed: Callable[[WriteBatch, int], None] | None = None,
        queue_capacity: int = 10_000,
    ) -> None:
        self._store = store
        # A soft bound: a decision is never dropped (submit cannot block the candle path), but a
        # queue past it is logged once per crossing and counted (tradebotd_queue_full_total).
        self.queue_capacity = queue_capacity
        self.queue_full = 0
        self._over_capacity = False
        self._pending: deque[WriteBatch] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()  # nothing owed to the store: no batch, no run times
        self._idle.set()
        self._stopping = False
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._idle_s = idle_s
        self._runs_max_age_ns = int(runs_max_age_s * 1e9)
        self._checkpoint_when_idle = checkpoint_when_idle
        self._on_committed = on_committed
        self._dirty = False  # committed since the last checkpoint
        self._housekeeping_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._committed = asyncio.Event()
        self._attempted = asyncio.Event()
        self._runs: Runs = {}  # set-aside strategy_runs, merged
        self._runs_since_ns = 0  # when the oldest of them was set aside
        self._runs_now = False  # flush(): commit them without waiting for a quiet moment
        self.committed_batches = 0
        self.failed_attempts = 0

    @property
    def queued(self) -> int:
        """Batches waiting for their commit (set-aside run times not counted: they wait for a
        quiet moment on purpose)."""
        return len(self._pending)

    @property
    def backlog(self) -> int:
        """Batches not yet committed (set-aside run times count as one)."""
        return len(self._pending) + (1 if self._runs else 0)

    def submit(self, batch: WriteBatch) -> None:
        """Queue a batch; never blocks and never fails. The writer owns the batch from here on:
        its ``strategy_runs`` are taken out of it (see the module docstring)."""
        if batch.strategy_runs:
            self._set_aside(batch.strategy_runs)
            batch.strategy_runs = {}
        elif not batch:
            if batch.on_durable is not None:
                batch.on_durable()  # nothing to write is durable at once
            return
        if batch:
            self._pending.append(batch)
            if len(self._pending) >= self.queue_capacity and not self._over_capacity:
                self._over_capacity = True
                self.queue_full += 1
                log.warning(
                    "store write queue full; the store is not keeping up (nothing is dropped)",
                    queue="store-writer",
                    depth=len(self._pending),
                    capacity=self.queue_capacity,
                )
        elif batch.on_durable is not None:
            batch.on_durable()
        self._idle.clear()
        if self._timer is not None:  # not idle after all
            self._timer.cancel()
            self._timer = None
        self._wakeup.set()

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed, run times included (wrap in
        ``asyncio.timeout``)."""
        if self._runs:
            self._runs_now = True
            self._wakeup.set()
        await self._idle.wait()

    def next_commit(self) -> asyncio.Event:
        """The event the next commit sets. Take it *before* checking a condition on the store, then
        wait on it: a commit in between cannot be missed."""
        return self._committed

    def next_attempt(self) -> asyncio.Event:
        """The event the next write attempt sets, whether it commits or fails (health checks, tests)."""
        return self._attempted

    async def run(self) -> None:
        """Commit batches until :meth:`stop`; supervised by the daemon."""
        delay = self._retry_min_s
        while True:
            if not self._pending and self._runs and self._runs_are_due():
                self._pending.append(WriteBatch(strategy_runs=self._runs))
                self._runs, self._runs_now = {}, False
            if not self._pending:
                if not self._runs:
                    self._idle.set()
                    if self._stopping:
                        return
                if self._housekeeping_due:
                    self._housekeeping_due = False
                    if self._checkpoint_when_idle and self._dirty:
                        self._checkpoint()
                self._wakeup.clear()
                if self._timer is None and (self._runs or (self._dirty and self._checkpoint_when_idle)):
                    self._timer = asyncio.get_running_loop().call_later(self._idle_s, self._due)
                # Await the event itself (no wait_for wrapper): a submit resumes this task first.
                await self._wakeup.wait()
                continue
            batches = list(self._pending)
            try:
                self._store.apply(batches)
            except StoreUnavailable as exc:
                self.failed_attempts += 1
                self._signal_attempt()
                log.warning("store write failed; will retry", error=str(exc), backlog=len(batches), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            delay = self._retry_min_s
            self._dirty = True
            for _ in batches:
                self._pending.popleft()
            if self._over_capacity and len(self._pending) < self.queue_capacity // 2:
                self._over_capacity = False
            self.committed_batches += len(batches)
            if self._on_committed is not None:
                now = time.monotonic_ns()
                for batch in batches:
                    self._on_committed(batch, now)
            for batch in batches:
                if batch.on_durable is not None:
                    batch.on_durable()
            self._committed.set()
            self._committed = asyncio.Event()
            self._signal_attempt()
            # Let the trading path run before the next commit (writes never starve it).
            await asyncio.sleep(0)

    def queue_stats(self) -> QueueStats:
        return QueueStats("store-writer", len(self._pending), self.queue_capacity, self.queue_full)

    def flush_now(self) -> bool:
        """Commit everything queued at once, synchronously, outside :meth:`run` (the last resort
        when the writer task is gone: the supervisor gave up). True if nothing is left."""
        if self._runs:
            self._pending.append(WriteBatch(strategy_runs=self._runs))
            self._runs = {}
        if not self._pending:
            return True
        batches = list(self._pending)
        try:
            self._store.apply(batches)
        except StoreUnavailable as exc:
            log.error("final store flush failed", error=str(exc), backlog=len(batches))
            return False
        self._pending.clear()
        self._over_capacity = False
        self.committed_batches += len(batches)
        for batch in batches:
            if batch.on_durable is not None:
                batch.on_durable()
        return True

    def stop(self) -> None:
        """Finish what is queued (run times included), then return from :meth:`run`."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wakeup.set()

    def _set_aside(self, runs: Runs) -> None:
        if not self._runs:
            self._runs_since_ns = time.monotonic_ns()
        merged = self._runs
        for sid, (run_at, signal_at) in runs.items():
            earlier = merged.get(sid)
            # None keeps the last signal time: a hold after a buy must not forget the buy.
            merged[sid] = (run_at, signal_at if signal_at is not None or earlier is None else earlier[1])

    def _runs_are_due(self) -> bool:
        return (
            self._stopping
            or self._runs_now
            or self._housekeeping_due
            or time.monotonic_ns() - self._runs_since_ns >= self._runs_max_age_ns
        )

    def _signal_attempt(self) -> None:
        self._attempted.set()
        self._attempted = asyncio.Event()

    def _due(self) -> None:
        self._timer = None
        self._housekeeping_due = True
        self._wakeup.set()

    def _checkpoint(self) -> None:
        try:
            self._store.checkpoint()
        except StoreUnavailable as exc:
            log.warning("store checkpoint failed; will retry when idle again", error=str(exc))
            return
        self._dirty = False
