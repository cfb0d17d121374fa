"""The sync service: everything ``store.backend = "supabase"`` adds to the daemon, behind one
object with ``start`` / ``stop`` and two questions the daemon asks (``filter``: which running
strategies are ours to evaluate; ``notify``: the writer committed).

It owns two supervised tasks:

* ``sync-replicator`` ships the outbox (:mod:`tradebotd.sync.replicator`);
* ``sync-control`` polls the mirror, expires, renews and claims leases, every
  ``store.mirror_poll_s`` (sooner when a lease deadline comes first), and tells the daemon when
  its set of strategies changed.

Neither is on the trading path: the engine reads the local store; a Supabase outage shows as
a growing outbox and warnings, never as a slower candle. (An outage longer than most of the
lease time does stop evaluation, by design: see :mod:`tradebotd.sync.leases`.)

Shutdown (after the store writer flushed): stop polling, give the replicator
``shutdown_timeout_s`` to empty the outbox, then release the leases with the final cursors so
another instance resumes exactly there. What did not ship stays in the outbox for the next start.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from decimal import Decimal
from pathlib import Path

import structlog

from ..config import Settings
from ..errors import ConfigError
from ..model import Position, StreamKey, interval_ms, normalize_symbol
from ..store.base import StrategyRow
from ..store.outbox import Outbox, install
from ..supervisor import Supervisor
from .client import SupabaseGateway, SupabaseUnavailable
from .leases import Leases
from .mirror import Mirror
from .replicator import Replicator

__all__ = ["SyncService"]

log = structlog.get_logger(__name__)

CursorSink = Callable[[str, str, str, int], None]
"""(strategy id, symbol, interval, open time): a cursor that came with a lease."""
TakeoverSink = Callable[[str, str | None, StreamKey, Position | None, Decimal | None], None]
"""(strategy id, portfolio id, stream, position or None, the portfolio's cash or None): the state
of a strategy taken over from another instance, as the database has it."""


class SyncService:
    def __init__(
        self,
        settings: Settings,
        *,
        on_strategies_changed: Callable[[], None],
        on_cursor: CursorSink,
        on_takeover: TakeoverSink,
        on_portfolio: Callable[[str, Decimal], None],
        market_now_ms: Callable[[], int],
        busy: Callable[[], bool] | None = None,
        store_connection: sqlite3.Connection | None = None,
    ) -> None:
        """``busy``: whether the candle path is at work (a candle being evaluated or committed);
        the sync's tasks hold their work back meanwhile (:class:`Replicator`). ``store_connection``:
        the store writer's, for the outbox's trims (:class:`Outbox`)."""
        store = settings.store
        self._url = store.resolved_supabase_url()
        key = store.resolved_supabase_key()
        if not self._url or key is None:
            raise ConfigError(
                "store.backend = 'supabase' needs store.supabase_url (or SUPABASE_URL / NEXT_PUBLIC_SUPABASE_URL) "
                "and the service-role key in TRADEBOTD_STORE__SUPABASE_KEY or SUPABASE_SERVICE_ROLE_KEY"
            )
        self._key = key.get_secret_value()
        self._settings = settings
        self._changed = on_strategies_changed
        self._on_cursor = on_cursor
        self._on_takeover = on_takeover
        self._on_portfolio = on_portfolio
        self._market_now_ms = market_now_ms
        self._busy = busy
        self.worker_id = settings.worker.resolved_id(Path(store.path))
        # Triggers first: from here on every committed change is in the outbox.
        self.outbox = Outbox(str(store.path), trim_on=store_connection)
        install(self.outbox.db, market_data=store.sync_market_data)
        self._gateway: SupabaseGateway | None = None
        self.replicator: Replicator | None = None
        self.mirror: Mirror | None = None
        self.leases: Leases | None = None
        self._supervisor: Supervisor | None = None
        self._wakeup = asyncio.Event()
        self.synced = asyncio.Event()  # set after each control pass (tests wait on it)

    async def start(self, supervisor: Supervisor) -> None:
        assert self._url is not None
        self._gateway = await SupabaseGateway.connect(self._url, self._key)
        self.replicator = Replicator(
            self.outbox, self._gateway, warn_rows=self._settings.store.outbox_warn_rows, busy=self._busy
        )
        self.mirror = Mirror(self.outbox, self._gateway, on_portfolio=self._on_portfolio)
        worker = self._settings.worker
        self.leases = Leases(
            self._gateway,
            worker_id=self.worker_id,
            lease_s=worker.lease_s,
            symbols=worker.symbols,
            # Candle times are live times only with the staleness guard on (replays turn it off).
            market_now_ms=self._market_now_ms if self._settings.market.max_candle_lag_s > 0 else None,
        )
        self._supervisor = supervisor
        supervisor.start("sync-replicator", self.replicator.run)
        supervisor.start("sync-control", self._control)
        log.info("supabase sync started", url=self._url, worker_id=self.worker_id, lease_s=worker.lease_s)

    # -- what the daemon asks --------------------------------------------------------------------

    def filter(self, rows: Sequence[StrategyRow]) -> list[StrategyRow]:
        """The running strategies this instance holds the lease of (none before the first claim)."""
        leases = self.leases
        return [] if leases is None else [r for r in rows if leases.owns(r.id)]

    def notify(self) -> None:
        if self.replicator is not None:
            self.replicator.notify()

    # -- the control task ------------------------------------------------------------------------

    async def _control(self) -> None:
        assert self.mirror is not None and self.leases is not None
        poll_s = self._settings.store.mirror_poll_s
        delay = poll_s
        while True:
            started = time.monotonic()  # polls start every poll_s, however long a pass takes
            try:
                changed = await self._pass()
                delay = poll_s
            except SupabaseUnavailable as exc:
                changed = bool(self.leases.expire())
                log.warning("supabase unreachable; strategies and leases not refreshed", error=str(exc))
                delay = min(max(delay * 2, poll_s), 30.0)
            if changed:
                self._changed()
            self.synced.set()
            self.synced = asyncio.Event()
            wake_at = started + delay
            deadline = self.leases.next_deadline()
            if deadline is not None:
                wake_at = min(wake_at, deadline)
            self._wakeup.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), max(0.0, wake_at - time.monotonic()))

    async def _pass(self) -> bool:
        assert self.mirror is not None and self.leases is not None and self.replicator is not None
        # The pass shares the event loop with the candles too: it starts when they are done.
        await self.replicator.yield_to_candles()
        # The claim goes out with the poll (one round trip, not two): a strategy the web app set
        # running is claimed in the pass that mirrors it; the cursor rule needs its interval
        # from the local store, so the answer is taken once the mirror has applied the change.
        mirrored, answer = await asyncio.gather(self.mirror.poll(), self.leases.request_claims())
        lost = self.leases.expire()
        if self.leases.renewal_due():
            lost += await self.leases.renew()
        rows = self.outbox.db.execute("SELECT id, asset, interval FROM strategies WHERE status = 'running'").fetchall()
        streams = {sid: (normalize_symbol(asset), interval) for sid, asset, interval in rows}
        claimed = self.leases.accept(answer, {sid: _interval_ms(i) for sid, (_, i) in streams.items()})
        taken = [c.strategy_id for c in claimed if c.taken_over]
        if taken:
            await self._take_over(taken, streams)
        for c in claimed:
            if c.cursor is not None and c.strategy_id in streams:
                symbol, interval = streams[c.strategy_id]
                self._on_cursor(c.strategy_id, symbol, interval, c.cursor)
        return bool(mirrored.changed or lost or claimed)

    async def _take_over(self, ids: list[str], streams: dict[str, tuple[str, str]]) -> None:
        """Another instance had these: their position and their portfolio's cash are what it
        shipped (the local copies are older or missing)."""
        assert self._gateway is not None
        positions = {
            str(p["strategy_id"]): p
            for p in await self._gateway.select(
                "positions",
                "strategy_id,portfolio_id,symbol,interval,amount:amount::text,entry_price:entry_price::text,"
                "entry_time,take_profit:take_profit::text,stop_loss:stop_loss::text",
                in_={"strategy_id": ids},
            )
        }
        owners = dict(
            self.outbox.db.execute(
                f"SELECT id, portfolio_id FROM strategies WHERE id IN ({','.join('?' * len(ids))})", ids
            ).fetchall()
        )
        pids = sorted({str(pid) for pid in owners.values() if pid})
        cash = {
            str(p["id"]): Decimal(p["cash"])
            for p in (await self._gateway.select("portfolios", "id,cash:cash::text", in_={"id": pids}) if pids else [])
        }
        for sid in ids:
            pid = owners.get(sid)
            row = positions.get(sid)
            if row is not None:
                key = StreamKey(str(row["symbol"]), str(row["interval"]))
                position: Position | None = Position(
                    amount=Decimal(row["amount"]),
                    entry_price=Decimal(row["entry_price"]),
                    entry_time=int(row["entry_time"]),
                    take_profit=None if row["take_profit"] is None else Decimal(row["take_profit"]),
                    stop_loss=None if row["stop_loss"] is None else Decimal(row["stop_loss"]),
                )
            elif sid in streams:
                key, position = StreamKey(*streams[sid]), None
            else:
                continue
            self._on_takeover(sid, pid, key, position, cash.get(pid) if pid else None)

    def poll_now(self) -> None:
        """Run the control pass now instead of at the next interval."""
        self._wakeup.set()

    # -- shutdown --------------------------------------------------------------------------------

    async def stop(self, timeout_s: float) -> None:
        if self._supervisor is None:
            self.outbox.close()
            return
        control = self._supervisor.task("sync-control")
        control.cancel()
        await asyncio.gather(control, return_exceptions=True)
        assert self.replicator is not None and self.leases is not None and self._gateway is not None
        try:
            async with asyncio.timeout(timeout_s):
                await self.replicator.drained()
        except TimeoutError:
            log.warning("outbox not empty at shutdown; it ships at the next start", backlog=self.outbox.backlog())
        held = self.leases.ids()
        cursors = [
            (sid, symbol, interval, int(t))
            for sid, symbol, interval, t in self.outbox.db.execute(
                "SELECT strategy_id, symbol, interval, last_candle_time FROM strategy_cursors"
            )
            if sid in held
        ]
        try:
            released = await self.leases.release(cursors)
            log.info("leases released", released=released)
        except SupabaseUnavailable as exc:
            log.warning("could not release leases; they expire on their own", error=str(exc))
        self.replicator.stop()
        await self._supervisor.wait("sync-replicator", timeout_s)
        await self._gateway.close()
        self.outbox.close()


def _interval_ms(interval: str) -> int:
    try:
        return interval_ms(interval)
    except ValueError:
        return 60_000
