"""Order handling: the engine's async shell around the order desk (:mod:`tradebotd.orders.desk`).

Per closed candle, *under the candle lock*, the engine evaluates every strategy and the desk turns
decisions into validated, recorded orders (``orders`` rows, status ``new``) and refusals. *After
the lock* :meth:`Orders.finish` dispatches the candle's jobs (one per trading strategy), results
and events are recorded in the jobs' order, and the batch goes to the writer:

* **Brokers without durable intents (paper).** Each command is awaited in turn, which completes
  without suspending: the paper exchange answers at once. So the decision, its intent, the
  exchange's answer and the fill reach the writer in one batch, and commit in one transaction.
  This is why paper needs no intent-first commit, although it sends before anything is durable:
  the paper exchange's whole state (balances = portfolios' cash and positions, resting orders =
  open ``orders`` rows) is written in that same transaction. A crash before the commit loses the
  intent *and* the exchange's memory of the order together; the restarted daemon re-evaluates
  the candle (its cursor was not committed either) and sends the same order, with the same client
  order id, to an exchange that never saw it. Atomicity replaces ordering, and the paper path
  keeps its one commit per candle.
* **Brokers with durable intents (live).** The batch holding the intents is handed to the writer
  with a future that the commit resolves; a task waits for it, then sends the jobs concurrently,
  at most ``max_in_flight`` exchange calls at a time, and records their results and events in
  one batch, in the jobs' order. This is the only place the trading path waits for the disk, and
  it waits outside the candle lock: other strategies' decisions never wait for it, nor for the
  exchange. What the orders will need to read first (the free balance an exit is sized from) a
  broker may start to read before the commit (:class:`~tradebotd.broker.base.Preparing`), and the
  candle's decision log lines are written once the orders are out.

Events that arrive on their own (a live broker's poller, reconciliation) are consumed by
:meth:`Orders.run`, a supervised task per broker, under the candle lock, so they never land in the
middle of a candle's evaluation. A strategy whose order awaits an answer gets no second order
until it has one (the desk logs and skips the decision).

An exception from a broker's ``submit`` or ``protect`` is treated as :class:`Unknown` (it may have
been sent); from ``cancel``, as a cancel that did not happen (the order is still open, and a
sell that needed it is not sent).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog

from ..broker.base import Broker, Preparing, Reconciling
from ..model import Candle
from ..orders.desk import CancelRequest, Command, Effects, Job, Note, OrderDesk
from ..orders.model import OrderRequest, ProtectRequest, SubmitResult, Unknown
from ..store.base import WriteBatch
from ..store.sqlite import utc_now
from .records import Recorder

__all__ = ["Orders"]

log = structlog.get_logger("tradebotd.engine")


class Orders:
    """The brokers (by name), the desk, and the dispatch of their commands."""

    def __init__(
        self,
        *,
        brokers: Sequence[Broker],
        desk: OrderDesk,
        recorder: Recorder,
        submit: Callable[[WriteBatch], None],
        lock: asyncio.Lock,
        now_ms: Callable[[], int],
        max_in_flight: int = 16,
    ) -> None:
        self.brokers: dict[str, Broker] = {broker.name: broker for broker in brokers}
        self.desk = desk
        self._recorder = recorder
        self._submit = submit
        self._lock = lock
        self._now_ms = now_ms
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._durable_venues = {broker.name for broker in brokers if broker.durable_intents}
        self._said: set[tuple[str | None, str]] = set()  # invariant notes already written (once each)
        self._after_sends: list[Callable[[], None]] = []  # for the dispatch that the next finish() spawns
        self._gc_holds = 0  # dispatches sending now (the cyclic GC waits for them)
        self._gc_was_enabled = True

    # -- under the candle lock -------------------------------------------------------------------

    def on_market(self, candle: Candle, out: Effects) -> None:
        """A kline update for every broker's price driver; the events it caused into ``out``."""
        for broker in self.brokers.values():
            broker.on_candle(candle)
            events = broker.drain()
            if events:
                now = utc_now()
                for event in events:
                    self.desk.on_event(event, now, out)

    # -- after the lock --------------------------------------------------------------------------

    async def run_inline(self, out: Effects) -> None:
        """Run the jobs in ``out`` that go to brokers without durable intents, and their
        follow-ups, now (paper: this never suspends); the others stay in ``out.jobs``."""
        kept: list[Job] = []
        jobs = out.jobs
        while jobs:
            venue, commands = jobs.pop(0)
            broker = self.brokers[venue]
            if broker.durable_intents:
                kept.append((venue, commands))
            else:
                await self._run(broker, commands, out)
        jobs.extend(kept)

    async def finish(self, out: Effects, batch: WriteBatch) -> None:
        """Dispatch ``out.jobs`` (see the module docstring), record ``out`` into ``batch`` and hand
        it to the writer. Returns once the batch is handed over; durable jobs go on in a task."""
        await self.run_inline(out)
        durable, out.jobs = out.jobs, []
        if durable and self._prepare(durable):
            # Two loop turns (measured: one is not enough for the read to be on the wire), so
            # the reads are out while the intents commit. Before recording, which writes the
            # state as it is when the batch is handed over (positions, cash).
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        self._recorder.record(out, batch)
        if not durable:
            self._submit(batch)
            return
        committed = self._durable(batch)
        self._submit(batch)
        later, self._after_sends = self._after_sends, []
        self._spawn(self._dispatch(committed, durable, later))

    def _prepare(self, jobs: list[Job]) -> bool:
        """Let each broker start the reads its jobs' orders will need (:class:`Preparing`): the
        orders that come first in their jobs (after a cancel, say, the balance is not what it was
        before: such an order reads it when it is sent)."""
        requests: dict[str, list[OrderRequest]] = {}
        for venue, commands in jobs:
            if commands and type(commands[0]) is OrderRequest:
                requests.setdefault(venue, []).append(commands[0])
        started = False
        for venue, orders in requests.items():
            broker = self.brokers[venue]
            if orders and isinstance(broker, Preparing):
                started |= broker.prepare(orders)
        return started

    def after_sends(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (the candle's decision log lines) once the orders that wait for the
        batch being submitted now are sent: only for :meth:`finish`'s ``submit`` callback."""
        self._after_sends.append(callback)

    def later(self, jobs: list[Job]) -> None:
        """Dispatch ``jobs`` from a task, under the candle lock (for callers that cannot await)."""

        async def run() -> None:
            async with self._lock:
                out = Effects()
                out.jobs = jobs
                await self.finish(out, WriteBatch())

        self._spawn(run())

    async def _dispatch(
        self, committed: asyncio.Future[None], jobs: list[Job], later: Sequence[Callable[[], None]] = ()
    ) -> None:
        """Send durable jobs once their intents are committed; record what came back in one
        batch, in the jobs' order; then the same for their follow-ups (protect a filled entry).
        ``later`` runs once the jobs have started (their requests built and handed to the HTTP
        client), not before."""
        held = False
        try:
            await committed
            held = self._gc_hold()
            outs = [Effects() for _ in jobs]
            # A broker's inbox is shared: whichever job drains it gets every job's events. Each is
            # recorded with its own strategy's job, so the batch keeps the jobs' order.
            by_strategy = {self._strategy_of(commands): o for (_, commands), o in zip(jobs, outs, strict=True)}
            runs = asyncio.gather(
                *(
                    self._run(self.brokers[venue], commands, o, limited=True, outs=by_strategy)
                    for (venue, commands), o in zip(jobs, outs, strict=True)
                )
            )
        finally:
            if later or held:
                # Two hops: the jobs' first steps run next (up to their requests), then the HTTP
                # client's writes that those steps scheduled, then ``later``.
                loop = asyncio.get_running_loop()
                loop.call_soon(loop.call_soon, self._started, later, held)
        await runs
        batch = WriteBatch()
        follow = Effects()
        for o in outs:
            follow.jobs.extend(o.jobs)
            o.jobs = []
            self._recorder.record(o, batch)
        await self.finish(follow, batch)

    def _gc_hold(self) -> bool:
        """Hold the cyclic GC off while a candle's orders are being built and sent (a few ms): a
        collection in the middle (one every ~20,000 allocations, 2-20 ms on a loaded 2-vCPU VM)
        would delay every order after it. True if this dispatch holds it (release: ``_started``)."""
        if self._gc_holds == 0:
            self._gc_was_enabled = gc.isenabled()
            if not self._gc_was_enabled:
                return False
            gc.disable()
        self._gc_holds += 1
        return True

    def _started(self, later: Sequence[Callable[[], None]], held: bool) -> None:
        if held:
            self._gc_holds -= 1
            if self._gc_holds == 0 and self._gc_was_enabled:
                gc.enable()
        for callback in later:
            callback()

    async def _run(
        self,
        broker: Broker,
        commands: list[Command],
        out: Effects,
        *,
        limited: bool = False,
        outs: dict[str, Effects] | None = None,
    ) -> None:
        """One job: its commands in order, each checked again just before it is sent; after each,
        the broker's events (into ``outs``' entry for the event's strategy, if it has one)."""
        desk = self.desk
        for command in commands:
            now = utc_now()
            if not desk.before(command, now, out):
                continue
            result: SubmitResult | None = None
            try:
                if limited:
                    async with self._in_flight:
                        result = await self._call(broker, command)
                else:
                    result = await self._call(broker, command)
            except Exception as exc:  # a broker bug or an unmapped error: ambiguous, never resent
                log.exception("broker call failed", broker=broker.name, command=type(command).__name__)
                if type(command) is CancelRequest:
                    out.notes.append(Note(command.strategy_id, "error",
                                          f"cancelling {command.client_order_id} failed: {exc!r}"))
                else:
                    coid = command.client_order_id if type(command) is OrderRequest else command.list_client_order_id  # type: ignore[union-attr]
                    result = Unknown(coid, f"broker error: {exc!r}", self._now_ms())
            if result is not None and type(command) is not CancelRequest:
                desk.on_result(command, result, now, out)  # type: ignore[arg-type]
            for event in broker.drain():
                target = out
                if outs is not None:
                    order = desk.book.get(event.client_order_id)
                    if order is not None:
                        target = outs.get(order.strategy_id, out)
                desk.on_event(event, now, target)

    @staticmethod
    def _strategy_of(commands: list[Command]) -> str:
        return commands[0].strategy_id

    @staticmethod
    async def _call(broker: Broker, command: Command) -> SubmitResult | None:
        if type(command) is OrderRequest:
            return await broker.submit(command)
        if type(command) is ProtectRequest:
            return await broker.protect(command)
        assert type(command) is CancelRequest
        await broker.cancel(command.client_order_id)
        return None

    # -- events that arrive on their own ---------------------------------------------------------

    async def run(self) -> None:
        """Consume every broker's inbox (supervised by the daemon)."""
        async with asyncio.TaskGroup() as group:
            for broker in self.brokers.values():
                group.create_task(self._consume(broker))

    async def _consume(self, broker: Broker) -> None:
        while True:
            await broker.inbox_ready.wait()
            broker.inbox_ready.clear()
            async with self._lock:
                events = broker.drain()
                if not events:
                    continue
                out = Effects()
                now = utc_now()
                for event in events:
                    self.desk.on_event(event, now, out)
                await self.finish(out, WriteBatch())

    async def reconcile(self) -> dict[str, str]:
        """Ask every broker about the orders it has open (start-up, before the feed starts), then
        make every position's protection match it. Returns the strategies whose state could not
        be reconciled (strategy id -> why): the engine does not trade them.

        An order of a broker with durable intents that the store still has as ``new`` had its
        intent committed and may have been sent before the daemon stopped: it is ``unknown`` now,
        and the broker asks the exchange about it (never sends it again)."""
        async with self._lock:
            out = Effects()
            unresolved: dict[str, str] = {}
            for broker in self.brokers.values():
                now = utc_now()
                if broker.durable_intents:
                    for order in self.desk.book.active():
                        if order.broker == broker.name and order.status == "new":
                            self.desk.book.sent(order.client_order_id, now)
                            self.desk.book.apply(Unknown(order.client_order_id, "the daemon stopped after recording "
                                                         "this order; it may have been sent", self._now_ms()), now)
                            out.orders[order.client_order_id] = order
                known = [order.record() for order in self.desk.book.active() if order.broker == broker.name]
                events = await broker.reconcile(known)
                now = utc_now()
                for event in events:
                    self.desk.on_event(event, now, out)
                unresolved.update(self._unresolved(broker))
            now = utc_now()
            self._check_protection(now, out)  # live positions (while their exchange can be reached)
            if self._durable_venues:
                desk = self.desk
                others = [sid for sid, holding in desk.ledger.holdings()
                          if (next((o.broker for o in desk.book.protection(sid)), None) or desk.venue_of(holding))
                          not in self._durable_venues]
                desk.ensure_protection(now, out, others)
            else:
                self.desk.ensure_protection(now, out)
            await self.finish(out, WriteBatch())
        return unresolved

    async def reconcile_durable(self) -> dict[str, str]:
        """The periodic reconciliation of brokers with durable intents (live): the exchange calls
        outside the candle lock, their events applied under it, then the protection invariant."""
        unresolved: dict[str, str] = {}
        for broker in self.brokers.values():
            if not broker.durable_intents:
                continue
            known = [order.record() for order in self.desk.book.active() if order.broker == broker.name]
            events = await broker.reconcile(known)
            async with self._lock:
                out = Effects()
                now = utc_now()
                for event in events:
                    self.desk.on_event(event, now, out)
                unresolved.update(self._unresolved(broker))
                self._check_protection(now, out)
                await self.finish(out, WriteBatch())
        return unresolved

    def _unresolved(self, broker: Broker) -> dict[str, str]:
        found: dict[str, str] = {}
        if isinstance(broker, Reconciling):
            for coid, why in broker.unresolved().items():
                order = self.desk.book.get(coid)
                if order is not None and order.active:
                    why = f"order {coid} could not be reconciled with {broker.name}: {why}"
                    found.setdefault(order.strategy_id, why)
        return found

    def check_protection(self, out: Effects) -> None:
        """The protection invariant after a closed candle (under the candle lock; see
        :meth:`_check_protection`). Nothing to do without a broker with durable intents."""
        if self._durable_venues:
            self._check_protection(utc_now(), out)

    def _check_protection(self, now: str, out: Effects) -> None:
        """Every open position on a broker whose exchange holds its protective orders (durable
        intents: live) has them live; the missing are placed again (new ids, ``-p<n>``) and the
        repair logged at ``error``."""
        venues = [
            broker.name for broker in self.brokers.values()
            if broker.durable_intents and not (isinstance(broker, Reconciling) and not broker.available())
        ]
        missing, notes = self.desk.unprotected(venues)
        for note in notes:
            said = (note.strategy_id, note.message)
            if said not in self._said:
                self._said.add(said)
                out.notes.append(note)
        if not missing:
            return
        for sid in missing:
            log.error("position not protected on the exchange; placing its protective orders again", strategy_id=sid)
            out.notes.append(Note(sid, "error", "the position's protective orders are not live on the exchange; "
                                  "placing them again"))
        self.desk.ensure_protection(now, out, missing)

    # -- plumbing --------------------------------------------------------------------------------

    def _durable(self, batch: WriteBatch) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def committed() -> None:
            if not future.done():
                future.set_result(None)

        batch.on_durable = committed
        return future

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        # Supervised by its done-callback: a dispatch is finite (one candle's orders), and a
        # failure must be seen, not restarted (its orders are unknown until reconciled).
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("order dispatch failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for dispatches in flight (shutdown; wrap in a timeout)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

