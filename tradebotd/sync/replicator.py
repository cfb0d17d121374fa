"""The replicator: ships the outbox to Supabase, in order, batched, exactly once in effect.

Planning is sans-I/O (:func:`plan`): a chunk of outbox rows (in ``seq`` order) becomes requests.
Rows of one table row (same key) are coalesced first, the last change winning (an upsert carries
the whole row; a patch merges into what came before it; a delete wins), so a chunk never sends a
row twice and the order of a row's changes is kept. Tables then go out parents first
(``outbox.REPLICATED``'s order), each as few requests as possible: bulk upserts on the table's
key (idempotent: a chunk re-sent after a failure changes nothing), one delete per table, one RPC
for the strategies' patches. Chunks ship strictly one after another, so per table the order is
the outbox's.

The shell (:class:`Replicator`) sends a chunk's requests, and only when all succeeded deletes
its outbox rows. Failures:

* ``SupabaseUnavailable`` (network, 5xx, keys, schema): back off (0.5 s doubling to 30 s), keep
  everything, record the error for ``tradebotd sync status``; trading is never touched;
* ``SupabaseRejected`` (the remote database refuses a row for good: 22xxx/23xxx): the request is
  retried row by row, and the rows still refused move to ``outbox_dead`` with the error (kept,
  logged, counted), so one bad row never blocks the rest.

The replicator yields to the candle path (it shares the daemon's event loop): it reads,
encodes and sends nothing while a candle is being evaluated or committed (``busy``), nor until the
last commit is ``gather_s`` old, so the rest of a candle burst is evaluated and committed first
and its rows go out as one chunk; it checks again before each request of a chunk and before
trimming the outbox. It never holds back longer than ``max_defer_s`` at a time, so a daemon that
is never quiet still ships. Deferring delays rows, never drops or reorders them.

The outbox is bounded by the disk only: past ``store.outbox_warn_rows`` a warning is logged (once
per crossing) and ``over_warn`` is set for the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from ..store.outbox import REPLICATED, Outbox, OutboxRow
from .client import SupabaseGateway, SupabaseRejected, SupabaseUnavailable

__all__ = ["Delete", "Patch", "PatchStrategies", "Replicator", "ReplicatorStats", "Upsert", "plan"]

log = structlog.get_logger(__name__)

PATCH_RPC = "tradebotd_patch_strategies"
IMMUTABLE = {"strategy_logs", "order_fills"}  # rows never change once written: skip duplicates


Sources = tuple[tuple[OutboxRow, ...], ...]
"""Per row of a request, the outbox rows it stands for (coalescing folds several into one)."""


@dataclass(frozen=True, slots=True)
class Upsert:
    table: str
    rows: tuple[dict[str, Any], ...]
    on_conflict: tuple[str, ...]
    ignore_duplicates: bool
    groups: Sources = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Delete:
    table: str
    column: str
    values: tuple[str, ...]
    groups: Sources = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class PatchStrategies:
    rows: tuple[dict[str, Any], ...]
    groups: Sources = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Patch:
    table: str
    key: str
    value: str
    fields: dict[str, Any]
    groups: Sources = field(default=(), compare=False)


Request = Upsert | Delete | PatchStrategies | Patch


def sources(request: Request) -> list[OutboxRow]:
    return [row for group in request.groups for row in group]


def plan(rows: Sequence[OutboxRow], *, max_rows: int = 500) -> list[Request]:
    """The requests that ship ``rows`` (a chunk of the outbox, in seq order)."""
    merged: dict[tuple[str, bytes], tuple[str, dict[str, Any], tuple[OutboxRow, ...]]] = {}
    for row in rows:
        if row.table not in REPLICATED:
            raise ValueError(f"outbox row {row.seq} is for table {row.table!r}, which is not replicated")
        key = row.table, orjson.dumps(row.pk, option=orjson.OPT_SORT_KEYS)
        before = merged.get(key)
        group = (*(before[2] if before else ()), row)
        if row.op == "delete":
            merged[key] = ("delete", dict(row.pk), group)
        elif row.op == "upsert":
            merged[key] = ("upsert", dict(row.row or {}), group)
        elif before is not None and before[0] in ("upsert", "patch"):
            merged[key] = (before[0], {**before[1], **(row.row or {})}, group)
        else:  # a patch alone (or after a delete, where it has nothing to patch remotely either)
            merged[key] = ("patch", {**row.pk, **(row.row or {})}, group)
    requests: list[Request] = []
    for table, spec in REPLICATED.items():
        found: dict[str, list[tuple[dict[str, Any], tuple[OutboxRow, ...]]]] = {"upsert": [], "delete": [], "patch": []}
        for (t, _), (op, data, group) in merged.items():
            if t == table:
                found[op].append((data, group))
        upserts = found["upsert"]
        for i in range(0, len(upserts), max_rows):
            part = upserts[i : i + max_rows]
            requests.append(
                Upsert(table, tuple(d for d, _ in part), spec.key, table in IMMUTABLE, tuple(g for _, g in part))
            )
        patches = found["patch"]
        if patches and table == "strategies":
            requests.append(PatchStrategies(tuple(d for d, _ in patches), tuple(g for _, g in patches)))
        elif patches:
            (column,) = spec.key
            for data, group in patches:
                fields = {k: v for k, v in data.items() if k != column}
                requests.append(Patch(table, column, str(data[column]), fields, (group,)))
        if found["delete"]:
            (column,) = spec.key  # only single-column keys are ever deleted (positions)
            deletes = found["delete"]
            requests.append(
                Delete(table, column, tuple(str(d[column]) for d, _ in deletes), tuple(g for _, g in deletes))
            )
    return requests


def split(request: Request) -> list[Request]:
    """One request per row (to find the rows a database refuses)."""
    if isinstance(request, Upsert):
        return [
            Upsert(request.table, (row,), request.on_conflict, request.ignore_duplicates, (group,))
            for row, group in zip(request.rows, request.groups, strict=True)
        ]
    if isinstance(request, PatchStrategies):
        return [PatchStrategies((row,), (group,)) for row, group in zip(request.rows, request.groups, strict=True)]
    return [request]


@dataclass(slots=True)
class ReplicatorStats:
    shipped_rows: int = 0
    requests: int = 0
    failures: int = 0
    dead_rows: int = 0
    backlog: int = 0
    over_warn: bool = False
    last_error: str | None = None
    last_error_at: float | None = None
    last_shipped_at: float | None = None
    deferrals: int = 0  # times it held back for the candle path
    forced: int = 0  # times it went ahead after max_defer_s although the candle path was busy


class Replicator:
    """Ships the outbox until stopped; supervised by the daemon (through the sync service)."""

    def __init__(
        self,
        outbox: Outbox,
        gateway: SupabaseGateway,
        *,
        chunk_rows: int = 2000,
        warn_rows: int = 100_000,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
        idle_check_s: float = 1.0,
        gather_s: float = 0.01,
        busy: Callable[[], bool] | None = None,
        max_defer_s: float = 1.0,
    ) -> None:
        """``busy``: whether the candle path is at work now (the daemon: a candle under the
        engine's lock, or batches waiting for the store writer)."""
        self._outbox = outbox
        self._gateway = gateway
        self._chunk_rows = chunk_rows
        self._warn_rows = warn_rows
        self._retry_min_s, self._retry_max_s = retry_min_s, retry_max_s
        self._idle_check_s = idle_check_s
        self._gather_s = gather_s
        self._busy = busy or (lambda: False)
        self._max_defer_s = max_defer_s
        self._active_at = float("-inf")  # time.monotonic() of the last commit notified
        self._deferred = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._retry = asyncio.Event()
        self._drained = asyncio.Event()
        self._attempted = asyncio.Event()
        self._stopping = False
        self.stats = ReplicatorStats()

    def notify(self) -> None:
        """Something may have been written to the outbox (the store writer committed)."""
        self._active_at = time.monotonic()
        self._wakeup.set()

    def next_deferral(self) -> asyncio.Event:
        """The event set the next time the replicator holds back for the candle path (tests)."""
        return self._deferred

    async def yield_to_candles(self) -> None:
        """Return once the candle path is quiet: not ``busy`` and the last commit ``gather_s``
        old; or after ``max_defer_s`` regardless."""
        give_up = time.monotonic() + self._max_defer_s
        while True:
            now = time.monotonic()
            settle = self._active_at + self._gather_s - now
            if settle <= 0 and not self._busy():
                return
            if now >= give_up:
                self.stats.forced += 1
                return
            self.stats.deferrals += 1
            self._deferred.set()
            self._deferred = asyncio.Event()
            # Busy: look again soon (its commit will also push the settling time on).
            await asyncio.sleep(min(give_up - now, settle if settle > 0 else self._gather_s / 2))

    def next_attempt(self) -> asyncio.Event:
        """The event the next shipping attempt sets, shipped or failed (health, tests)."""
        return self._attempted

    def _signal_attempt(self) -> None:
        self._attempted.set()
        self._attempted = asyncio.Event()

    def retry_now(self) -> None:
        """Cut the current backoff short (Supabase is known to be back)."""
        self._retry.set()

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        self._retry.set()

    async def drained(self) -> None:
        """Wait until the outbox was seen empty (wrap in ``asyncio.timeout``)."""
        self._drained.clear()
        self._wakeup.set()
        await self._drained.wait()

    async def run(self) -> None:
        delay = self._retry_min_s
        while not self._stopping:
            rows = self._outbox.pending(self._chunk_rows)
            if not rows:
                self._note_backlog(0)
                self._drained.set()
                self._wakeup.clear()
                # On timeout: another process (the CLI) may have written; look again.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._idle_check_s)
                # Let the rest of a candle burst commit first: its rows go out in one chunk, and
                # this task's work stays off the candles' path.
                await self.yield_to_candles()
                continue
            try:
                await self.ship(rows)
            except SupabaseUnavailable as exc:
                self._failed(str(exc))
                self._signal_attempt()
                log.warning(
                    "supabase unreachable; outbox kept", error=str(exc), backlog=self.stats.backlog, retry_in_s=delay
                )
                self._retry.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._retry.wait(), delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            delay = self._retry_min_s
            self._signal_attempt()
            if len(rows) == self._chunk_rows:
                self._note_backlog(self._outbox.backlog())

    async def ship(self, rows: Sequence[OutboxRow]) -> None:
        """Ship one chunk and forget it; ``SupabaseUnavailable`` leaves it all queued."""
        for request in plan(rows):
            await self.yield_to_candles()
            try:
                await self._send(request)
            except SupabaseRejected as exc:
                await self._isolate(request, exc)
        # The trim commits on the outbox's connection, which makes the store's connection drop its
        # page cache: not in the middle of a candle either.
        await self.yield_to_candles()
        self._outbox.remove_through(rows[-1].seq)
        self.stats.shipped_rows += len(rows)
        self.stats.last_shipped_at = time.time()

    async def _isolate(self, request: Request, refused: SupabaseRejected) -> None:
        parts = split(request)
        for part in parts:
            try:
                if len(parts) == 1:
                    raise refused  # already the single row that was refused
                await self._send(part)
            except SupabaseRejected as exc:
                rows = sources(part)
                self._outbox.bury(rows, str(exc))
                self.stats.dead_rows += len(rows)
                self._failed(str(exc))
                log.error("supabase refused rows for good; kept in outbox_dead", error=str(exc), rows=len(rows))

    async def _send(self, request: Request) -> None:
        self.stats.requests += 1
        if isinstance(request, Upsert):
            await self._gateway.upsert(
                request.table,
                request.rows,
                on_conflict=request.on_conflict,
                ignore_duplicates=request.ignore_duplicates,
            )
        elif isinstance(request, Delete):
            await self._gateway.delete_in(request.table, request.column, request.values)
        elif isinstance(request, PatchStrategies):
            await self._gateway.rpc(PATCH_RPC, {"p_rows": list(request.rows)})
        else:
            await self._gateway.patch(request.table, request.key, request.value, request.fields)

    def _failed(self, error: str) -> None:
        self.stats.failures += 1
        self.stats.last_error, self.stats.last_error_at = error, time.time()
        self._outbox.set_state("last_error", orjson.dumps({"error": error, "at": self.stats.last_error_at}).decode())
        self._note_backlog(self._outbox.backlog())

    def _note_backlog(self, backlog: int) -> None:
        self.stats.backlog = backlog
        over = backlog > self._warn_rows
        if over and not self.stats.over_warn:
            log.warning(
                "outbox is growing past store.outbox_warn_rows; nothing is dropped",
                backlog=backlog,
                outbox_warn_rows=self._warn_rows,
            )
        self.stats.over_warn = over
