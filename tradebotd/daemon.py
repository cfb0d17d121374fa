"""The daemon's lifecycle: one event loop, one place that starts and stops everything. The parts
it runs are built from config by the composition root (:mod:`tradebotd.app`).

Start-up, in phases each logged as ``startup phase``: ``config`` and ``store`` (open, migrate,
restore the ledger, active orders and cursors: the composition root), ``reconcile`` (open
orders checked with their brokers), ``warm-up`` (the running strategies loaded and their
streams wanted), ``feed`` (the supervised tasks: store writer, broker events, market feed,
control loop), then ``ready`` once every strategy is warm and the feed is connected. The control
loop re-reads the ``strategies``, ``portfolios`` and ``close_requests`` tables every
``daemon.poll_interval_s`` (and at once when the engine disables a strategy or a waiting close
gets a price), so ``tradebotd strategy start|stop``, ``--close-position``, ``portfolio add`` and
edits made while the daemon runs take effect within seconds.

Shutdown (SIGTERM / SIGINT), two phases of at most ``daemon.shutdown_timeout_s`` each: intake
(stop taking candles, let the in-flight candle and its orders finish), then flush (every queued
write, the outbox, the leases); exit 0 when nothing was lost. When the supervisor gives up on a
task that keeps crashing, the same shutdown runs (the writer's queue committed directly if the
writer is the task that died) and the exit status is 1.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine
from contextlib import suppress
from decimal import Decimal
from typing import Any

import structlog

from .app import Components, Hooks, build_daemon, compose_parts, log_phase
from .broker.factory import broker_tasks, live_trading
from .config import Settings
from .engine import RuntimeFactory
from .model import Position, StreamKey
from .ops.service import OpsService
from .store.base import WriteBatch
from .supervisor import Supervisor

Compose = Callable[[Settings, Hooks], Components]

__all__ = ["Daemon", "LatencyRecorder", "run_daemon"]

log = structlog.get_logger(__name__)

GC_GEN0_THRESHOLD = 20_000  # measured: p99 of a 100-strategy candle 10.7 -> 3.6 ms (engine alone)


class LatencyRecorder:
    """Time from a closed kline arriving to its batch being committed, for metrics and the bench."""

    def __init__(self, keep: int = 100_000) -> None:
        self.samples_ns: deque[int] = deque(maxlen=keep)
        self.trades: deque[int] = deque(maxlen=keep)  # trades recorded with each sample's candle
        # time.monotonic_ns() of each sample's commit: with samples_ns, when its kline arrived, so
        # a whole minute boundary (first kline in, last decision recorded) can be measured too.
        self.committed_at_ns: deque[int] = deque(maxlen=keep)

    def __call__(self, batch: WriteBatch, committed_ns: int) -> None:
        if batch.enqueued_ns:
            self.samples_ns.append(committed_ns - batch.enqueued_ns)
            self.trades.append(len(batch.trades))
            self.committed_at_ns.append(committed_ns)

    def clear(self) -> None:
        self.samples_ns.clear()
        self.trades.clear()
        self.committed_at_ns.clear()


class Daemon:
    """The lifecycle of the parts :func:`tradebotd.app.compose` builds (``compose`` defaults to
    it: ``Daemon(settings)`` is what tests and benchmarks construct)."""

    def __init__(self, settings: Settings, *, compose: Compose | None = None) -> None:
        self.settings = settings
        self.latency = LatencyRecorder()
        self.supervisor = Supervisor(
            max_restarts=settings.daemon.max_task_restarts, window_s=settings.daemon.restart_window_s
        )
        self._stop = asyncio.Event()
        self._control_wakeup = asyncio.Event()
        self._passed = asyncio.Event()  # replaced after each control-loop pass (readiness waits on it)
        self.synced = asyncio.Event()  # set after each control-loop pass (tests wait on it)
        self._started = False
        self.ready = False
        self.lost_batches = 0  # write batches still not committed after the shutdown

        parts = (compose or compose_parts)(settings, self)
        self.parts = parts
        self.store = parts.store
        self.portfolio_id = parts.portfolio_id
        self.brokers = parts.brokers
        self.broker = parts.paper
        self.writer = parts.writer
        self.runtimes: RuntimeFactory = parts.runtimes
        self.eval_pool = parts.eval_pool
        self.request_budgets = parts.request_budgets
        self.engine = parts.engine
        self.feed = parts.feed
        self.sync = parts.sync
        self.ops: OpsService | None = None  # the HTTP server and systemd notifications (build_daemon)

    # -- hooks: what the parts call back into (tradebotd.app.Hooks) ---------------------------

    def streams_changed(self) -> None:
        self._control_wakeup.set()

    def leased_cursor(self, strategy_id: str, symbol: str, interval: str, open_time: int) -> None:
        self.engine.advance_cursor(strategy_id, open_time)
        self.writer.submit(WriteBatch(cursors={strategy_id: (symbol, interval, open_time)}))

    def taken_over(
        self,
        strategy_id: str,
        portfolio_id: str | None,
        key: StreamKey,
        position: Position | None,
        cash: Decimal | None,
    ) -> None:
        self.engine.take_over(strategy_id, portfolio_id, key, position, cash)
        batch = WriteBatch(positions={strategy_id: (portfolio_id, key, position)})
        if portfolio_id is not None and cash is not None:
            batch.cash[portfolio_id] = cash
        self.writer.submit(batch)

    def portfolio_added(self, portfolio_id: str, cash: Decimal) -> None:
        """A portfolio mirrored from Supabase (its row is in the local store already)."""
        self._add_portfolios()

    def _add_portfolios(self) -> None:
        for p in self.store.portfolios():
            self.engine.add_portfolio(p.id, p.type, p.cash)

    def committed(self, batch: WriteBatch, committed_ns: int) -> None:
        self.latency(batch, committed_ns)
        if self.sync is not None:
            self.sync.notify()

    def server_now_ms(self) -> int:
        return self.feed.server_now_ms()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """The start-up phases after ``store`` (done by the composition root): ``reconcile``
        (orders the store holds as open, checked with their brokers before any candle),
        ``warm-up`` (the running strategies loaded, their streams wanted), ``feed`` (the market
        feed started). :meth:`wait_ready` then waits for the ``ready`` phase."""
        # The cyclic GC's default (a collection every 700 net allocations) fires inside the
        # per-candle burst; reference counting frees almost everything anyway, so collect rarely.
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
        log.info(
            "tradebotd starting",
            store=str(self.settings.store.path),
            ws_url=self.settings.market.ws_url,
            rest_url=self.settings.market.rest_url,
            brokers=sorted(self.brokers),
        )
        if self.ops is not None:
            await self.ops.start()  # /healthz says 503 "startup" until ready
        self.supervisor.start("store-writer", self.writer.run)
        phase = time.monotonic_ns()
        await self.engine.reconcile()
        log_phase("reconcile", phase, brokers=sorted(self.brokers))
        self.supervisor.start("broker-events", self.engine.run)
        for name, task in broker_tasks(self.brokers):  # the live broker's poller
            self.supervisor.start(name, task)
        if live_trading(self.brokers):
            every = self.settings.exchange.reconcile_s
            self.supervisor.start("reconcile", lambda: self.engine.reconcile_every(every))
        if self.sync is not None:
            await self.sync.start(self.supervisor)
        phase = time.monotonic_ns()
        await self._pass()
        log_phase("warm-up", phase, strategies=self.engine.counters.strategies_running, streams=len(self.feed.streams))
        self.supervisor.start("market-feed", self.feed.run)
        log_phase("feed", ws_url=self.settings.market.ws_url, streams=len(self.feed.streams))
        self.supervisor.start("control", self._control_loop)
        self._started = True

    async def _close_brokers(self) -> None:
        for broker in self.brokers.values():
            try:
                await broker.close()
            except Exception:  # a connection that will not close must not keep the store open
                log.exception("closing a broker failed", broker=broker.name)

    def is_ready(self) -> bool:
        """Strategies loaded and warm, and the feed connected (when any stream is wanted)."""
        if self.engine.counters.warming:
            return False
        return not self.feed.streams or self.feed.connected

    async def wait_ready(self) -> bool:
        """Until :meth:`is_ready` (the ``ready`` phase, logged; True) or a stop is requested or
        the supervisor gives up (False). Re-checked after every store commit (warm-up records
        the strategies' cursors) and every control-loop pass."""
        started = time.monotonic_ns()
        while not self.is_ready():
            commit = self.writer.next_commit()
            passed = self._passed
            if await _first(self._stop.wait(), self.supervisor.given_up.wait(), commit.wait(), passed.wait()) < 2:
                return False
        self.ready = True
        if self.ops is not None:
            self.ops.mark_ready()
            if self.ops.watching:
                self.supervisor.start("watchdog", self.ops.watch)
        log_phase(
            "ready",
            started,
            strategies=self.engine.counters.strategies_running,
            streams=len(self.feed.streams),
            connected=self.feed.connected,
        )
        return True

    def request_stop(self) -> None:
        if self._stop.is_set():
            log.info("already stopping", grace_s=2 * self.settings.daemon.shutdown_timeout_s)
        self._stop.set()

    async def wait_stopped(self) -> None:
        """Until a stop is requested or the supervisor gives up on a task that keeps crashing."""
        await _first(self._stop.wait(), self.supervisor.given_up.wait())

    async def shutdown(self) -> None:
        """Two phases of at most ``daemon.shutdown_timeout_s`` each. Intake: stop taking
        candles (the feed, the control loop), let the in-flight candle and the order dispatches
        it started finish. Flush: commit every queued write, ship the outbox and release the
        leases (Supabase). Then close everything. What could not be committed is counted in
        :attr:`lost_batches` (``run_daemon`` exits non-zero then)."""
        if self.ops is not None:
            self.ops.stopping()
            await self.ops.close()  # no trigger, no scrape from here on
        if not self._started:
            if self.sync is not None:
                await self.sync.stop(0)
            await self._close_brokers()
            self.store.close()
            return
        grace = self.settings.daemon.shutdown_timeout_s
        started = time.monotonic_ns()
        log.info("tradebotd stopping", phase="intake", grace_s=grace)
        self.supervisor.stopping()
        deadline = asyncio.get_running_loop().time() + grace
        with suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self.feed.stop()
        await self.supervisor.wait("market-feed", max(0.0, deadline - asyncio.get_running_loop().time()))
        control = self.supervisor.task("control")
        control.cancel()
        await asyncio.gather(control, return_exceptions=True)
        try:
            async with asyncio.timeout_at(deadline):
                await self.engine.drain()
        except TimeoutError:
            log.error("in-flight candle or orders did not finish within the grace period", grace_s=grace)

        log.info("tradebotd stopping", phase="flush", backlog=self.writer.backlog, grace_s=grace)
        self.writer.stop()
        flushed = await self.supervisor.wait("store-writer", grace)
        if self.writer.backlog:
            # The writer task is gone (it crashed for good, or was cancelled at the deadline):
            # commit what it still holds directly, once.
            log.warning("flushing the store writer's queue directly", backlog=self.writer.backlog, writer_ran=flushed)
            self.writer.flush_now()
        self.lost_batches = self.writer.backlog
        if self.lost_batches:
            log.error("could not flush all writes before the shutdown timeout", backlog=self.lost_batches)
        if self.sync is not None:
            await self.sync.stop(grace)
        await self.supervisor.cancel_all()
        await self._close_brokers()
        self.engine.close()
        if self.eval_pool is not None:
            self.eval_pool.close()
        self.store.close()
        log.info(
            "tradebotd stopped",
            committed_batches=self.writer.committed_batches,
            lost_batches=self.lost_batches,
            took_s=round((time.monotonic_ns() - started) / 1e9, 3),
        )
        self._started = False

    async def _pass(self) -> bool:
        """One control pass: close requests, new portfolios, the running set, the wanted streams.
        It starts once no candle is being worked on: reading 1,000 strategies from the store takes
        10-20 ms of the event loop, which in the middle of a minute boundary would delay it."""
        await self.engine.quiet()
        # Close requests first: a strategy stopped with --close-position still has its
        # stream's latest price then (sync forgets the stream of a strategy that stops).
        await self.engine.close_positions(self.store.close_requests())
        self._add_portfolios()  # `tradebotd portfolio add` while running
        rows = self.store.running_strategies()
        if self.sync is not None:
            rows = self.sync.filter(rows)
        changed = await self.engine.sync(rows)
        await self.feed.set_streams(self.engine.streams())
        return changed

    async def _control_loop(self) -> None:
        interval = self.settings.daemon.poll_interval_s
        settle_gc = False
        while True:
            changed = await self._pass()
            if settle_gc and not changed:
                # One quiet poll after the strategy set changed (they are warm by now): collect,
                # then move what survives out of the cyclic GC's sight, so collections on the
                # candle path only look at new objects (p99 latency). Not on every poll: frozen
                # objects are never collected, so only freeze right after a full collection.
                gc.collect()
                gc.freeze()
            settle_gc = changed
            self.synced.set()
            self._passed.set()
            self._passed = asyncio.Event()
            self._control_wakeup.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._control_wakeup.wait(), interval)

    def resync(self) -> None:
        """Re-read the strategies table now instead of at the next poll."""
        self.synced.clear()
        self._control_wakeup.set()


async def _first(*waits: Coroutine[Any, Any, Any]) -> int:
    """Await the first of ``waits`` to finish (the others are cancelled); its index."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return min(i for i, t in enumerate(tasks) if t in done)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_daemon(settings: Settings, *, daemon: Daemon | None = None) -> int:
    """``tradebotd run``: serve until SIGTERM or SIGINT. 0 on a clean stop; 1 when the
    supervisor gave up on a task that kept crashing, or when writes could not be committed
    within the grace period (after a shutdown that still flushes what it can), so systemd's
    ``Restart=on-failure`` or the platform starts a clean process."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    log_phase("config", store=str(settings.store.path), backend=settings.store.backend, http=settings.http.listen)
    if daemon is None:
        daemon = build_daemon(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    try:
        await daemon.start()
        if await daemon.wait_ready():
            await daemon.wait_stopped()
    finally:
        await daemon.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if daemon.supervisor.gave_up:
        log.error("exiting non-zero", reason=daemon.supervisor.give_up_reason)
        return 1
    if daemon.lost_batches:
        log.error("exiting non-zero", reason=f"{daemon.lost_batches} write batch(es) not committed")
        return 1
    log.info("bye", uptime_s=round(time.monotonic() - started, 1))
    return 0
