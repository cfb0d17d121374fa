"""The trading engine: closed candles in, decisions, orders and records out.

One code path serves the daemon (live market data, paper or live brokers) and any replay: the
engine only sees candles, brokers (:class:`~tradebotd.broker.base.Broker`), a strategy-runtime
factory and a sink for :class:`~tradebotd.store.base.WriteBatch` values. It does no I/O of its own.
Evaluation scheduling is :mod:`.evaluation`, order handling :mod:`.orders` (around the sans-I/O
:mod:`tradebotd.orders.desk`), record formatting :mod:`.records`.

Exactly once per strategy and candle: every strategy has a cursor (the open time of the last
candle it evaluated), persisted in the same batch as the orders that candle caused. Candles at or
before the cursor are history, never evaluated again; after a restart the candles that closed
while the daemon was down are evaluated in order (and the staleness guard keeps old ones from
trading).

Per closed candle, under the candle lock: the brokers' price drivers (protective levels, resting
orders) first, since the candle touched them before it closed; then every strategy is evaluated
and its decision becomes a validated, recorded order or a logged refusal. After the lock the
orders are dispatched (:mod:`.orders`); exchange calls never run under the lock.

Many streams close at the same instant (every minute boundary). A candle whose strategies are
partly evaluated in evaluation processes is *in flight* (:class:`_Flight`) from when their shares
are sent until their outcomes are in: meanwhile ``on_closed`` returns, so the next stream's
candle is started while the processes still evaluate this one. The daemon's own share of a
candle in flight is evaluated after that, one candle at a time between the feed's next candles
(or when the candle is settled): so a burst of candles is handed to the processes first, and
the daemon evaluates its share while they evaluate theirs. Candles are settled and their
batches handed to the writer in the order they arrived, each as soon as its own outcomes (and
those of the candles before it) are in, not when the whole boundary is done. While any candle is
in flight the candle pipeline holds the candle lock, so the control plane still never
interleaves with a candle; a stream's next candle, and its in-progress updates, wait for its
candle in flight to be settled.

Portfolios: a strategy trades in the portfolio its ``portfolio_id`` names (none: the default
portfolio); the portfolio's type (``paper`` | ``live``) picks the broker. A portfolio that does
not exist, or whose type has no broker, keeps the strategy from loading (status ``error``).

Failure policy: a strategy error is logged to ``strategy_logs`` and counted; after
``max_consecutive_errors`` in a row the strategy goes to status ``error`` and its slot is released.
Other strategies are not affected; an open position keeps its protective orders.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import structlog

from ..broker.base import Broker, SimulatedBalances
from ..errors import StrategyError
from ..history import CandleHistory
from ..model import Candle, Decision, Position, StreamKey, interval_ms, normalize_symbol
from ..orders.desk import Effects, Note, OrderDesk, Venue
from ..orders.intent import LevelDefaults, level_defaults, order_intent, order_intent_at
from ..orders.ledger import Holding, Ledger
from ..orders.state import Order, OrderBook
from ..orders.validate import OrderPolicy
from ..store.base import CloseRequest, StrategyRow, WriteBatch
from ..store.sqlite import utc_now
from .counters import EngineCounters, ManualRun
from .evaluation import Evaluator, Round
from .orders import Orders
from .records import Narration, Recorder, decision_data, entry, error_data, narrate
from .runtime import Floats6, GroupedRuntime, RuntimeFactory, StepGroup, StepOutcome, StrategyRuntime, step

__all__ = ["Engine", "EngineConfig", "EngineStats", "fingerprint"]

log = structlog.get_logger("tradebotd.engine")

DEFAULT_POLICY = OrderPolicy(Decimal("0.001"))


@dataclass(frozen=True, slots=True)
class EngineConfig:
    history: int = 500
    max_candle_lag_ms: int = 30_000  # 0 disables the staleness guard
    start_window_ms: int = 0  # a starting strategy evaluates a last candle this fresh at once; 0: never
    max_consecutive_errors: int = 3
    log_holds: bool = False
    record_candles: bool = True
    eval_threads: int = 1  # >1: evaluate a candle's strategies in this many worker threads
    max_in_flight: int = 50  # exchange calls at a time, for brokers with durable intents (exchange.max_in_flight)


@dataclass(slots=True)
class _Slot:
    row: StrategyRow
    key: StreamKey
    fingerprint: tuple[object, ...]
    runtime: StrategyRuntime
    cursor: int | None
    venue: str  # the broker it trades through
    portfolio_id: str | None
    group: StepGroup | None  # its evaluation process, if it runs in one
    levels: LevelDefaults | None  # takeProfitPct / stopLossPct
    warm: bool = False
    errors: int = 0


@dataclass(slots=True)
class EngineStats:
    candles: int = 0
    evaluations: int = 0
    strategy_errors: int = 0
    fills: int = 0
    stale_refusals: int = 0


def fingerprint(row: StrategyRow) -> tuple[object, ...]:
    """What makes a strategy need reloading when it changes in the store, as a value compared with
    ``==`` (the control loop compares every running strategy's on every poll: hashing 1,000 sources
    took 7-15 ms of the event loop). Parameters as sorted JSON, so equal values of different JSON
    types (1, 1.0, true) are different parameters."""
    parameters = orjson.dumps(dict(row.parameters), option=orjson.OPT_SORT_KEYS, default=str)
    return (row.kind, row.source, row.asset, row.interval, row.portfolio_id, parameters)


class Engine:
    """``brokers``: by portfolio type (``"paper"``, ``"live"``). ``portfolios``: portfolio id ->
    type; None trades every strategy through the ``"paper"`` broker (tests, tools). ``ledger`` and
    ``orders`` (the active orders) are restored from the store; ``policy`` holds the default buy
    amount."""

    def __init__(
        self,
        *,
        brokers: Mapping[str, Broker],
        sink: Callable[[WriteBatch], None],
        runtime_factory: RuntimeFactory,
        now_ms: Callable[[], int],
        config: EngineConfig = EngineConfig(),
        cursors: dict[str, int] | None = None,
        on_streams_changed: Callable[[], None] | None = None,
        ledger: Ledger | None = None,
        orders: Iterable[Order] = (),
        portfolios: Mapping[str, str] | None = None,
        default_portfolio: str | None = None,
        policy: OrderPolicy = DEFAULT_POLICY,
    ) -> None:
        self.config = config
        self.stats = EngineStats()
        self._sink = sink
        self.counters = EngineCounters(
            lambda: len(self._slots), lambda: sum(1 for slot in self._slots.values() if not slot.warm)
        )
        self._factory = runtime_factory
        self._now_ms = now_ms
        self._cursors: dict[str, int] = dict(cursors or {})
        self._on_streams_changed = on_streams_changed or (lambda: None)
        self._slots: dict[str, _Slot] = {}
        self._by_key: dict[StreamKey, list[_Slot]] = {}
        self._history: dict[StreamKey, CandleHistory] = {}
        # strategy id -> updated_at of the row that failed: not retried until the row changes
        # (the store may still say 'running' until the writer has committed the error).
        self._failed: dict[str, str] = {}
        self._last_inputs: _CandleInputs | None = None
        self._evaluator = Evaluator(config.eval_threads)
        # Close requests from the store (close_positions) waiting for a fresh price, the ids
        # carried out but maybe not committed yet, and the newest price seen per stream.
        self._closes: dict[int, CloseRequest] = {}
        self._closes_done: set[int] = set()
        self._last_price: dict[StreamKey, Candle] = {}
        # Log lines about decisions and fills, written after the batch is handed over (see _submit).
        self._narration: Narration = []
        # Control-plane changes and candle processing never interleave mid-candle.
        self._lock = asyncio.Lock()
        self._held: dict[str, str] = {}  # strategies not traded: their state could not be reconciled
        # Candles in flight (see the module docstring), oldest first; while there are any, or an
        # on_closed is under way, the candle pipeline holds self._lock (_holding).
        self._flights: deque[_Flight] = deque()
        self._flying: dict[StreamKey, _Flight] = {}  # the candle in flight of each stream (one at most)
        self._local_todo: deque[_Flight] = deque()  # flights whose daemon share may be pending, oldest first
        self._holding = False
        self._entered = 0  # on_closed calls under way
        self._publishing = asyncio.Lock()  # one settler of flights at a time
        self._drainer: asyncio.Task[None] | None = None
        # strategy id -> (rows, wait): warm-up candles sent ahead to an evaluation process
        self._histories_sent: dict[str, tuple[npt.NDArray[np.float64], Callable[[], None]]] = {}
        self._brokers = dict(brokers)  # by portfolio type
        self._portfolios = None if portfolios is None else dict(portfolios)
        self._default_portfolio = default_portfolio
        venues = {b.name: Venue(b.name, b.rules, b.order_cap, b.durable_intents) for b in self._brokers.values()}
        self.desk = OrderDesk(ledger=ledger or Ledger(), policy=policy, venues=venues, book=OrderBook(orders))
        if self._portfolios is not None:
            self.desk.portfolio_venues = {
                pid: self._brokers[kind].name for pid, kind in self._portfolios.items() if kind in self._brokers
            }
        elif "paper" in self._brokers:
            self.desk.default_venue = self._brokers["paper"].name
        self._recorder = Recorder(self._narration, self._position_closed)
        self.orders = Orders(
            brokers=list(self._brokers.values()),
            desk=self.desk,
            recorder=self._recorder,
            submit=self._submit,
            lock=self._lock,
            now_ms=now_ms,
            max_in_flight=config.max_in_flight,
        )

    # -- control plane -----------------------------------------------------------------------

    @property
    def ledger(self) -> Ledger:
        return self.desk.ledger

    async def quiet(self) -> None:
        """Until no candle, strategy sync or close is being worked on (at once if none is)."""
        if self._lock.locked():
            async with self._lock:
                pass

    @property
    def busy(self) -> bool:
        """A candle, a strategy sync or a close is being worked on under the candle lock (the
        sync's replicator holds its network work back meanwhile)."""
        return self._lock.locked()

    def position(self, strategy_id: str) -> Position | None:
        return self.desk.ledger.position(strategy_id)

    def streams(self) -> set[StreamKey]:
        """Streams the feed must deliver: running strategies', those of orders resting on a
        simulated exchange (protective levels) and those of positions waiting to be closed."""
        keys = set(self._by_key)
        for broker in self._brokers.values():
            keys.update(broker.watched_keys())
        keys.update(r.key for r in self._closes.values())
        return keys

    def strategy_ids(self) -> set[str]:
        return set(self._slots)

    def advance_cursor(self, strategy_id: str, open_time: int) -> None:
        """A strategy this engine does not run now resumes after ``open_time`` at the earliest
        (its cursor came with a lease from another instance: tradebotd.sync.leases)."""
        if strategy_id not in self._slots:
            self._cursors[strategy_id] = max(self._cursors.get(strategy_id, open_time), open_time)

    def add_portfolio(self, portfolio_id: str, type: str, cash: Decimal) -> None:
        """A portfolio that appeared after start-up (``tradebotd portfolio add``, or mirrored from
        Supabase): its strategies can load from now on. A known one keeps its cash (the ledger
        is the truth for it)."""
        if self._portfolios is None or portfolio_id in self._portfolios:
            return
        self._portfolios[portfolio_id] = type
        broker = self._brokers.get(type)
        if broker is not None:
            self.desk.portfolio_venues[portfolio_id] = broker.name
            if isinstance(broker, SimulatedBalances):
                broker.add_portfolio(portfolio_id, cash)
        if not self.desk.ledger.has_cash(portfolio_id):
            self.desk.ledger.set_cash(portfolio_id, cash)

    def take_over(
        self, strategy_id: str, portfolio_id: str | None, key: StreamKey, position: Position | None,
        cash: Decimal | None,
    ) -> None:
        """A strategy taken over from another instance sharing a Supabase project: its position
        and its portfolio's cash as that instance left them replace the local ones, in the
        ledger and in the broker's balances (the caller records them)."""
        ledger = self.desk.ledger
        previous = ledger.holding(strategy_id)
        holding = None if position is None else Holding(portfolio_id, key, position)
        ledger.replace(strategy_id, holding)
        if portfolio_id is not None and cash is not None:
            ledger.set_cash(portfolio_id, cash)
        venue = self.desk.portfolio_venues.get(portfolio_id) if portfolio_id is not None else None
        for broker in self._brokers.values():
            if (venue is None or broker.name == venue) and isinstance(broker, SimulatedBalances):
                broker.take_over(previous, holding, portfolio_id, cash)
        # Its protection here: a simulated exchange's resting orders were the other instance's.
        out = Effects()
        self.desk.ensure_protection(utc_now(), out, [strategy_id])
        if out:
            jobs, out.jobs = out.jobs, []
            batch = WriteBatch()
            self._recorder.record(out, batch)
            self._submit(batch)
            if jobs:
                self.orders.later(jobs)

    async def reconcile(self) -> None:
        """Bring the orders and positions restored from the store in line with every broker
        (start-up, before the feed starts). A strategy whose orders could not be reconciled is
        not traded: it is not loaded (status ``error``, saying why) until it is started again."""
        self._held = await self.orders.reconcile()
        for sid, why in self._held.items():
            log.error("strategy not traded: its state could not be reconciled", strategy_id=sid, reason=why)

    async def reconcile_every(self, seconds: float) -> None:
        """Reconcile the brokers with durable intents (live) every ``seconds`` (supervised by the
        daemon). A strategy whose orders are resolved since start-up can be started again."""
        while True:
            await asyncio.sleep(seconds)
            try:
                unresolved = await self.orders.reconcile_durable()
            except Exception:  # one failed round must not end the reconciliation
                log.exception("periodic reconciliation failed")
                continue
            for sid, why in unresolved.items():
                log.warning("orders not reconciled yet", strategy_id=sid, reason=why)
            self._held = {sid: why for sid, why in self._held.items() if sid in unresolved}

    async def run(self) -> None:
        """Consume brokers' events that arrive on their own (supervised by the daemon)."""
        await self.orders.run()

    async def sync(self, rows: Sequence[StrategyRow]) -> bool:
        """Make the running set equal ``rows``: start new strategies, reload changed ones, stop
        the rest. Load failures put the strategy in status ``error``. True if anything changed."""
        changed = False
        async with self._lock:
            batch = WriteBatch()
            out = Effects()
            wanted = {row.id: row for row in rows}
            for sid in list(self._slots):
                if sid not in wanted:
                    self._remove(sid)
                    changed = True
                    log.info("strategy stopped", strategy_id=sid)
            starts: list[StrategyRow] = []
            for row in rows:
                if self._failed.get(row.id) == row.updated_at:
                    continue
                slot = self._slots.get(row.id)
                if slot is not None and slot.fingerprint == fingerprint(row):
                    continue
                starts.append(row)
            loaded = self._load_many(starts)
            for row in starts:
                self._start(row, batch, out, reload=row.id in self._slots, loaded=loaded.get(row.id))
                changed = True
        await self.orders.finish(out, batch)
        self._on_streams_changed()
        return changed

    async def close_positions(self, requests: Sequence[CloseRequest]) -> None:
        """Carry out the store's pending close requests (``strategy stop|remove --close-position``):
        sell the whole position through the normal order path at the newest fresh price of its
        stream (an in-progress kline's close, or a closed candle's; fresh = within
        ``max_candle_lag_ms`` of that candle's end, as for trading). The client order id is that
        candle's ``sell`` id, the one the strategy's own sell on it would carry, so a close and a
        strategy sell can never both trade, and a close re-done after a crash reuses its id. The
        request row is deleted in the batch that records the sell's intent. Without a fresh price,
        or while the strategy's previous order still awaits an answer, it waits (its stream is in
        :meth:`streams`; the first price wakes the control loop); for a flat strategy it is
        dropped with a log row."""
        async with self._lock:
            wanted = {r.id: r for r in requests}
            self._closes_done &= set(wanted)  # committed and gone from the store: forget them
            batch = WriteBatch()
            out = Effects()
            for rid, request in wanted.items():
                if rid in self._closes_done:
                    continue
                sid = request.strategy_id
                if self.desk.ledger.position(sid) is None:
                    batch.logs.append(entry(sid, "info", "close requested: no open position", {"request": rid}))
                elif (candle := self._fresh_price(request.key)) is None or self.desk.book.awaiting(sid) is not None:
                    continue  # stays pending
                else:
                    self._close(request, candle, out)
                batch.closes_done.append(rid)
                self._closes_done.add(rid)
            self._closes = {rid: r for rid, r in wanted.items() if rid not in self._closes_done}
        await self.orders.finish(out, batch)

    def _close(self, request: CloseRequest, candle: Candle, out: Effects) -> None:
        sid = request.strategy_id
        holding = self.desk.ledger.holding(sid)
        portfolio = holding.portfolio_id if holding is not None else request.portfolio_id
        venue = self._venue_of(portfolio)
        if venue is None:
            out.notes.append(Note(sid, "error", f"cannot close the position: portfolio {portfolio} has no broker"))
            return
        intent = order_intent_at(
            Decision(signal="sell", reason=request.reason),
            strategy_id=sid,
            portfolio_id=portfolio,
            key=request.key,
            candle_time=candle.open_time,
            close=candle.close,
        )
        log.info("closing position on request", strategy_id=sid, client_order_id=intent.client_order_id)
        job = self.desk.decide(intent, venue, utc_now(), out)
        if job is not None:
            out.jobs.append((venue, job))

    def _fresh_price(self, key: StreamKey) -> Candle | None:
        candle = self._last_price.get(key)
        if candle is None:
            return None
        lag_ms = self._now_ms() - (candle.open_time + key.interval_ms)
        if self.config.max_candle_lag_ms > 0 and lag_ms > self.config.max_candle_lag_ms:
            return None
        return candle

    def _saw_price(self, candle: Candle) -> None:
        """Remember the newest price of a stream; wake the control loop for a waiting close."""
        key = candle.key
        first = key not in self._last_price
        self._last_price[key] = candle
        if self._closes and any(r.key == key for r in self._closes.values()):
            if first or self._fresh_price(key) is candle:
                self._on_streams_changed()

    async def on_refused(self, key: StreamKey, reason: str) -> None:
        """The exchange refused this stream's market data for good (Binance -1121 "Invalid
        symbol."): its strategies can never be evaluated, so they go to status ``error`` with
        the exchange's message, instead of staying ``running`` without candles."""
        async with self._lock:
            batch = WriteBatch()
            for slot in list(self._by_key.get(key, [])):
                self._failed[slot.row.id] = slot.row.updated_at
                self._fail(slot.row.id, f"the exchange refused {key.symbol} {key.interval}: {reason}", batch)
            self._submit(batch)
        if batch.strategy_errors:
            self._on_streams_changed()

    def _venue_of(self, portfolio_id: str | None) -> str | None:
        """The broker a portfolio trades through (every portfolio: paper, without a mapping)."""
        if self._portfolios is None:
            paper = self._brokers.get("paper")
            return None if paper is None else paper.name
        kind = self._portfolios.get(portfolio_id or self._default_portfolio or "")
        broker = None if kind is None else self._brokers.get(kind)
        return None if broker is None else broker.name

    def _trades_in(self, row: StrategyRow) -> tuple[str, str | None]:
        """(broker name, portfolio id) for a strategy row; ``ValueError`` says why it cannot trade."""
        portfolio = row.portfolio_id or self._default_portfolio
        if self._portfolios is None:
            kind = "paper"
        else:
            if portfolio is None or portfolio not in self._portfolios:
                raise ValueError(f"portfolio {portfolio!r} does not exist")
            kind = self._portfolios[portfolio]
        broker = self._brokers.get(kind)
        if broker is None:
            if kind == "live":  # the live broker connects (keys, markets, reconciliation) at start-up
                raise ValueError(
                    f"portfolio {portfolio} is a live portfolio, and this daemon started without one, so it has no "
                    "live broker: restart the daemon to trade it"
                )
            raise ValueError(f"portfolio {portfolio} is a {kind} portfolio, and {kind} trading is not configured")
        return broker.name, portfolio

    def _load_many(self, rows: Sequence[StrategyRow]) -> dict[str, StrategyRuntime | Exception]:
        """Many strategies loaded at once, where the factory can (``EvalPool.load_many``: the
        evaluation processes load theirs while the daemon loads its own); by strategy id, the
        runtime or what loading it raised. Rows that cannot trade are left to ``_start``."""
        load_many = getattr(self._factory, "load_many", None)
        if load_many is None or len(rows) < 2:
            return {}
        requests: list[tuple[StrategyRow, StreamKey]] = []
        for row in rows:
            try:
                key = StreamKey(normalize_symbol(row.asset), row.interval)
                interval_ms(row.interval)
                self._trades_in(row)
                level_defaults(row.parameters)
            except ValueError:
                continue
            requests.append((row, key))
        results: list[StrategyRuntime | Exception] = load_many(requests)
        return {row.id: result for (row, _), result in zip(requests, results, strict=True)}

    def _start(
        self, row: StrategyRow, batch: WriteBatch, out: Effects, *, reload: bool,
        loaded: StrategyRuntime | Exception | None = None,
    ) -> None:
        """``loaded``: the strategy's runtime (or its load error) if ``_load_many`` made it."""
        try:
            key = StreamKey(normalize_symbol(row.asset), row.interval)
            interval_ms(row.interval)
            venue, portfolio = self._trades_in(row)
            if row.id in self._held:
                raise ValueError(f"not trading: its state could not be reconciled ({self._held[row.id]})")
            levels = level_defaults(row.parameters)
            if isinstance(loaded, Exception):
                raise loaded
            runtime = self._factory(row, key) if loaded is None else loaded
        except (StrategyError, ValueError) as exc:
            if reload:
                self._remove(row.id)
            self._failed[row.id] = row.updated_at
            self._fail(row.id, f"cannot load strategy: {exc}", batch, error_data(exc))
            return
        old = self._slots.get(row.id)
        cursor = self._cursors.get(row.id)
        if old is not None:
            cursor = old.cursor if old.key == key else None
            self._remove(row.id, keep_history=old.key == key)
        group = runtime.step_group if isinstance(runtime, GroupedRuntime) else None
        slot = _Slot(row, key, fingerprint(row), runtime, cursor, venue, portfolio, group, levels)
        self._slots[row.id] = slot
        self._by_key.setdefault(key, []).append(slot)
        message = "strategy reloaded" if reload else "strategy started"
        log.info(message, strategy_id=row.id, name=row.name, symbol=key.symbol, interval=key.interval)
        batch.logs.append(entry(row.id, "info", message, {"symbol": key.symbol, "interval": key.interval}))
        history = self._history.get(key)
        if history is not None and len(history):
            self._warm(slot, history, batch, out)

    def _remove(self, strategy_id: str, *, keep_history: bool = False) -> None:
        slot = self._slots.pop(strategy_id, None)
        if slot is None:
            return
        peers = self._by_key.get(slot.key, [])
        if slot in peers:
            peers.remove(slot)
        if not peers:
            self._by_key.pop(slot.key, None)
            # The feed warms a stream up again when it is next subscribed, so forget it.
            if not keep_history and slot.key not in self.streams():
                self._history.pop(slot.key, None)
                self._last_price.pop(slot.key, None)  # no longer fed: would only go stale
        if slot.cursor is not None:
            self._cursors[strategy_id] = slot.cursor
        try:
            slot.runtime.close()
        except Exception:  # closing a broken sandbox must not break the engine
            log.exception("closing strategy runtime failed", strategy_id=strategy_id)

    def _fail(self, strategy_id: str, message: str, batch: WriteBatch, data: dict[str, Any] | None = None) -> None:
        """Put a strategy in status 'error' and release it."""
        self._remove(strategy_id)
        batch.strategy_errors[strategy_id] = message
        batch.logs.append(entry(strategy_id, "error", message, data))
        log.error("strategy disabled", strategy_id=strategy_id, error=message)

    def _history_end(self, slot: _Slot, history: CandleHistory) -> int | None:
        """The open time of the last candle a starting strategy takes as history; None: all of it.

        A strategy that has evaluated no candle of this history (new, or back after a gap longer
        than the history) takes it all as history, except a last candle that closed at most
        ``start_window_ms`` ago: that one it evaluates at once, as if it had been running when
        the candle closed (a strategy set running in the web app then decides within the mirror
        poll, not one candle later). A strategy with a cursor inside the history takes up to its
        cursor and evaluates the rest (a restart)."""
        first, last = history.first_open_time, history.last_open_time
        assert first is not None and last is not None
        if slot.cursor is not None and slot.cursor >= first:
            return slot.cursor
        window = self.config.start_window_ms
        if window > 0 and len(history) > 1:
            age_ms = self._now_ms() - (last + slot.key.interval_ms)
            if 0 <= age_ms <= window:
                return last - slot.key.interval_ms
        return None

    def _warm(self, slot: _Slot, history: CandleHistory, batch: WriteBatch, out: Effects) -> None:
        first, last = history.first_open_time, history.last_open_time
        assert first is not None and last is not None
        end = self._history_end(slot, history)
        if slot.cursor is None or slot.cursor < first:
            if slot.cursor is not None:
                missed = (first - slot.cursor) // slot.key.interval_ms - 1
                log.warning(
                    "strategy resumes after a gap longer than the history",
                    strategy_id=slot.row.id,
                    missed_candles=missed,
                )
            if not self._push_history(slot, history.rows(up_to_open_time=end), batch):
                return
            slot.cursor = last if end is None else end
            batch.cursors[slot.row.id] = (slot.key.symbol, slot.key.interval, slot.cursor)
            slot.warm = True
            if end is not None:
                log.info("strategy evaluates the candle that just closed", strategy_id=slot.row.id, candle_time=last)
                for candle in history.after(end):
                    self._evaluate(slot, candle, batch, out)
            return
        if not self._push_history(slot, history.rows(up_to_open_time=slot.cursor), batch):
            return
        slot.warm = True
        # Candles that closed while this strategy was not running (a restart): evaluate them in
        # order; the staleness guard stops old ones from trading. Their orders are dispatched
        # with the batch (a strategy with one awaiting an answer gets no second one meanwhile).
        for candle in history.after(slot.cursor):
            self._evaluate(slot, candle, batch, out)

    def _push_history(self, slot: _Slot, rows: npt.NDArray[np.float64], batch: WriteBatch) -> bool:
        """Give a strategy its history. That can fail too (its top-level code left its heap full,
        a sandbox bug): it costs that strategy, never the feed or control loop calling this."""
        try:
            sent = self._histories_sent.pop(slot.row.id, None)
            if sent is not None and len(sent[0]) == len(rows) and (not len(rows) or sent[0][-1, 0] == rows[-1, 0]):
                sent[1]()  # sent ahead (_send_histories): wait for it to arrive
            else:
                slot.runtime.push_history(rows)
        except Exception as exc:
            if not isinstance(exc, StrategyError):
                log.exception("strategy runtime failed unexpectedly", strategy_id=slot.row.id)
            self._failed[slot.row.id] = slot.row.updated_at
            self._fail(slot.row.id, f"cannot give the strategy its history: {exc}", batch, error_data(exc))
            return False
        return True

    def _send_histories(self, slots: Sequence[_Slot], history: CandleHistory) -> None:
        """Send the warm-up candles ahead to the strategies in evaluation processes
        (``begin_history``), so that the processes take them in while the daemon gives its own
        strategies theirs; ``_push_history`` then only waits for each to arrive."""
        first = history.first_open_time
        for slot in slots:
            begin = getattr(slot.runtime, "begin_history", None)
            if begin is None or first is None:
                continue
            rows = history.rows(up_to_open_time=self._history_end(slot, history))
            try:
                self._histories_sent[slot.row.id] = (rows, begin(rows))
            except Exception:  # _push_history gives it the normal way, and reports what fails
                continue

    # -- market data (the feed's sink) -------------------------------------------------------

    async def on_history(self, key: StreamKey, candles: Sequence[Candle]) -> None:
        """Warm-up candles for a stream. The feed sends them again after it restarts: candles that
        are new to us then are handled like closed candles (protective levels, evaluation)."""
        async with self._lock:
            history = self._history.get(key)
            if history is None:
                history = self._history[key] = CandleHistory(self.config.history)
            known_last = history.last_open_time
            history.extend(candles)
            if candles:
                self._saw_price(candles[-1])
            batch = WriteBatch()
            out = Effects()
            if self.config.record_candles:
                batch.candles.extend(candles)
            slots = list(self._by_key.get(key, []))
            if known_last is not None:
                for candle in candles:
                    if candle.open_time > known_last:
                        self.orders.on_market(candle, out)
                        for slot in slots:
                            if slot.warm:
                                self._evaluate(slot, candle, batch, out)
                        await self.orders.run_inline(out)  # this candle's paper orders before the next candle
            if len(history):
                self._send_histories([slot for slot in slots if not slot.warm], history)
                for slot in slots:
                    if not slot.warm:
                        self._warm(slot, history, batch, out)
                        await self.orders.run_inline(out)
                self._histories_sent.clear()
        await self.orders.finish(out, batch)
        if batch.strategy_errors:
            self._on_streams_changed()

    async def on_closed(self, candle: Candle, received_ns: int) -> None:
        """A closed candle: started now, settled and recorded once its outcomes are in (which may
        be after this returns: see the module docstring)."""
        key = candle.key
        self.counters.candle_in(received_ns)
        self._entered += 1
        started = False  # its flight exists: the counters hear of it when it is settled
        try:
            if not self._holding:
                await self._lock.acquire()
                self._holding = True
            while key in self._flying:
                await self._settle_oldest()  # the stream's previous candle first
            self.stats.candles += 1
            history = self._history.get(key)
            if history is None:
                history = self._history[key] = CandleHistory(self.config.history)
            history.append(candle)
            self._saw_price(candle)
            batch = WriteBatch(enqueued_ns=received_ns)
            out = Effects()
            if self.config.record_candles:
                batch.candles.append(candle)
            # The brokers' price drivers first: the candle touched its levels before it closed.
            self.orders.on_market(candle, out)
            claimed = [slot for slot in self._by_key.get(key, []) if slot.warm and self._claim(slot, candle, batch)]
            inputs = self._inputs(candle)
            round_ = None
            if claimed:
                ledger = self.desk.ledger
                work = [(slot.runtime, ledger.position(slot.row.id)) for slot in claimed]
                round_ = self._evaluator.begin(work, [slot.group for slot in claimed], inputs.floats)
            flight = _Flight(key, inputs, claimed, round_, batch, out)
            self._flights.append(flight)
            self._flying[key] = flight
            if round_ is not None and round_.local_pending:
                self._local_todo.append(flight)
            started = True
            await self._settle_flights()
            # Worker threads: their candle is settled before the next one starts.
            while round_ is not None and not round_.remote and not round_.ready and flight in self._flights:
                await self._settle_oldest()
        finally:
            if not started:
                self.counters.candle_done(key)
            self._entered -= 1
            self._after_candle()

    async def _settle_flights(self) -> None:
        """Settle and hand over the candles in flight whose outcomes are in, oldest first."""
        async with self._publishing:
            while self._flights:
                flight = self._flights[0]
                if flight.round is not None and not flight.round.ready:
                    return
                self._flights.popleft()
                del self._flying[flight.key]
                try:
                    if flight.round is not None:
                        flight.round.settle(flight.settler(self._settle))
                    self.orders.check_protection(flight.out)  # every live position's protective orders are live
                    # Dispatch, record, hand to the writer (paper orders run inline here).
                    await self.orders.finish(flight.out, flight.batch)
                finally:
                    self.counters.candle_done(flight.key)
                for update in flight.updates:
                    self._on_update(update)
                if flight.batch.strategy_errors:
                    self._on_streams_changed()

    async def _settle_oldest(self) -> None:
        """Wait (without blocking the event loop) for the oldest candle in flight, then settle."""
        flight = self._flights[0]
        if flight.round is not None and not flight.round.ready:
            flight.round.evaluate_local()  # the daemon's own share while the processes do theirs
            await flight.round.wait()
        await self._settle_flights()

    def _evaluate_one_local(self) -> bool:
        """Evaluate the daemon's own share of the oldest candle in flight that still has one;
        False if none has."""
        while self._local_todo:
            flight = self._local_todo.popleft()
            if flight.round is not None and flight.round.local_pending:  # not settled meanwhile
                flight.round.evaluate_local()
                return True
        return False

    def _after_candle(self) -> None:
        """Release the candle lock once no candle is in flight, or make sure one task waits for
        those that are."""
        if self._flights:
            if self._drainer is None:
                self._drainer = asyncio.get_running_loop().create_task(self._drain_flights())
        elif self._holding and self._entered == 0:
            self._holding = False
            self._lock.release()

    async def _drain_flights(self) -> None:
        try:
            while self._flights:
                if self._evaluate_one_local():
                    # One candle's share at a time: the feed's next candles, if any arrived
                    # meanwhile, are handed to the evaluation processes first.
                    await asyncio.sleep(0)
                    await self._settle_flights()
                    continue
                await self._settle_oldest()
        except Exception:  # the feed's next candle would meet the same; keep the lock's promise
            log.exception("settling candles in flight failed")
            while self._flights:
                self.counters.candle_done(self._flights.popleft().key)
            self._flying.clear()
            self._local_todo.clear()
        finally:
            self._drainer = None
            self._after_candle()

    def _submit(self, batch: WriteBatch) -> None:
        """Hand the batch to the writer, then narrate: the decision log lines (one per strategy and
        candle) are written right after the writer's commit had its turn, so logging 100 lines never
        delays recording 100 decisions; and when orders wait for this commit (live), after they are
        sent, so that it never delays sending them either."""
        self.stats.fills = self._recorder.fills
        if batch.orders:
            self.counters.order_states({cid: record.status for cid, record in batch.orders.items()})
        self._sink(batch)
        if self._narration:
            lines = self._narration[:]
            self._narration.clear()
            if batch.on_durable is not None:
                self.orders.after_sends(partial(narrate, lines))
            else:
                asyncio.get_running_loop().call_soon(narrate, lines)

    def on_update(self, candle: Candle) -> None:
        """An in-progress kline: only the brokers' price drivers react to it (protective levels,
        resting limit orders). What that causes is recorded at once; follow-up orders (protecting
        an entry a resting limit filled) go out in a task, under the candle lock. A waiting
        close request may take its price. While the stream's previous candle is in flight, this
        waits for it to be settled (its decisions may open the positions these levels guard)."""
        flight = self._flying.get(candle.key)
        if flight is not None:
            flight.updates.append(candle)
            return
        self._on_update(candle)

    def _on_update(self, candle: Candle) -> None:
        self._saw_price(candle)
        out = Effects()
        self.orders.on_market(candle, out)
        if out:
            jobs, out.jobs = out.jobs, []
            batch = WriteBatch()
            self._recorder.record(out, batch)
            self._submit(batch)
            if jobs:
                self.orders.later(jobs)

    def _position_closed(self, strategy_id: str, key: StreamKey) -> None:
        if key not in self._by_key:
            # Closed the position of a strategy no longer running on this stream (disabled or
            # stopped): it may have been the stream's last reason to be watched.
            self._on_streams_changed()

    # -- one strategy, one candle ------------------------------------------------------------

    def _evaluate(self, slot: _Slot, candle: Candle, batch: WriteBatch, out: Effects) -> None:
        """Evaluate one strategy on one candle (warm-up catch-up and re-sent history)."""
        if self._claim(slot, candle, batch):
            floats = self._inputs(candle).floats
            outcome = step(slot.runtime, floats, self.desk.ledger.position(slot.row.id))
            self._settle(slot, candle, outcome, batch, out)

    def _claim(self, slot: _Slot, candle: Candle, batch: WriteBatch) -> bool:
        """Advance the strategy's cursor to ``candle``; False if it already evaluated it."""
        if slot.cursor is not None and candle.open_time <= slot.cursor:
            return False  # already evaluated (exactly once, across restarts too)
        slot.cursor = candle.open_time
        batch.cursors[slot.row.id] = (candle.symbol, candle.interval, candle.open_time)
        self.stats.evaluations += 1
        return True

    def _settle(
        self, slot: _Slot, candle: Candle, outcome: StepOutcome, batch: WriteBatch, out: Effects,
        inputs: _CandleInputs | None = None,
    ) -> None:
        """Record one evaluation's outcome and turn its decision into an order (or a refusal).
        ``inputs``: the candle's, as taken when it was started (default: now)."""
        sid = slot.row.id
        inputs = inputs or self._inputs(candle)
        now_iso = inputs.now_iso
        if isinstance(outcome, BaseException):
            self.counters.failed(sid, outcome)
            if isinstance(outcome, StrategyError):
                self._strategy_error(slot, candle, str(outcome), error_data(outcome), batch)
                return
            # a sandbox bug must cost one strategy, never the daemon
            log.error("strategy runtime failed unexpectedly", strategy_id=sid, error=repr(outcome), exc_info=outcome)
            self._strategy_error(slot, candle, f"internal sandbox error: {outcome!r}", None, batch)
            return
        decision, report = outcome
        slot.errors = 0
        eval_us = report.elapsed_us
        console = report.console
        signal = decision.signal
        self.counters.decided(sid, slot.row.kind, signal, candle.open_time, batch.enqueued_ns)
        self._narration.append(
            (
                "decision",
                {
                    "strategy_id": sid,
                    "symbol": candle.symbol,
                    "interval": candle.interval,
                    "candle_time": candle.open_time,
                    "signal": signal,
                    "eval_us": round(eval_us, 1),
                    "reason": decision.reason,
                },
            )
        )
        batch.strategy_runs[sid] = (now_iso, now_iso if signal != "hold" else None)
        if signal == "hold" and not self.config.log_holds and not console:
            return  # the common case: nothing else to record
        data = decision_data(decision, candle, inputs.close_text, eval_us, list(console))
        if signal == "hold":
            batch.logs.append(entry(sid, "info", f"hold: {decision.reason or ''}".rstrip(": "), data))
            return
        message = f"{signal} signal" + (f": {decision.reason}" if decision.reason else "")
        batch.logs.append(entry(sid, "signal", message, data))
        lag_ms = inputs.lag_ms
        if self.config.max_candle_lag_ms > 0 and lag_ms > self.config.max_candle_lag_ms:
            self.stats.stale_refusals += 1
            self.counters.skipped()
            message = (
                f"not trading on a stale candle: it closed {lag_ms / 1000:.1f} s ago "
                f"(market.max_candle_lag_s = {self.config.max_candle_lag_ms / 1000:g})"
            )
            log.warning("stale candle; not trading", strategy_id=sid, candle_time=candle.open_time, lag_ms=lag_ms)
            batch.logs.append(entry(sid, "info", message, {"candle_time": candle.open_time, "lag_ms": lag_ms}))
            return
        intent = order_intent(decision, strategy_id=sid, portfolio_id=slot.portfolio_id, candle=candle,
                              defaults=slot.levels)
        job = self.desk.decide(intent, slot.venue, now_iso, out)
        if job is not None:
            out.jobs.append((slot.venue, job))

    def _inputs(self, candle: Candle) -> _CandleInputs:
        """Per-candle values every strategy shares, computed once per candle, not per strategy.
        The candle's lag is taken when the candle is first used: it is stale or not for all of its
        strategies alike."""
        cached = self._last_inputs
        if cached is None or cached.candle is not candle:
            lag_ms = self._now_ms() - (candle.open_time + candle.key.interval_ms)
            cached = self._last_inputs = _CandleInputs(candle, candle.as_floats(), utc_now(), str(candle.close), lag_ms)
        return cached

    def _strategy_error(
        self, slot: _Slot, candle: Candle, message: str, data: dict[str, Any] | None, batch: WriteBatch
    ) -> None:
        sid = slot.row.id
        slot.errors += 1
        self.stats.strategy_errors += 1
        details = {"candle_time": candle.open_time, "consecutive_errors": slot.errors, **(data or {})}
        log.warning(
            "strategy error",
            strategy_id=sid,
            candle_time=candle.open_time,
            error=message,
            consecutive_errors=slot.errors,
        )
        batch.logs.append(entry(sid, "error", message, details))
        batch.strategy_runs[sid] = (utc_now(), None)
        if slot.errors >= self.config.max_consecutive_errors:
            self._failed[sid] = slot.row.updated_at
            self._fail(sid, f"{slot.errors} consecutive errors; last: {message}", batch)

    # -- the manual trigger (POST /api/cron/strategies) ----------------------------------------

    async def run_latest(self, strategy_id: str | None = None) -> list[ManualRun] | None:
        """Evaluate every running strategy (or the one whose id or unique id prefix is
        ``strategy_id``; ``None`` if there is none) on its stream's latest closed candle, as the
        candle path does: through the cursor, so a candle already evaluated is not evaluated
        again, and with the candle's client order ids, so no order is ever placed twice. Candles
        a strategy has not evaluated yet are evaluated in order, the latest last."""
        results: list[ManualRun] = []
        out = Effects()
        batch = WriteBatch()
        async with self._lock:
            if strategy_id is None:
                slots = list(self._slots.values())
            else:
                found = [s for sid, s in self._slots.items() if sid == strategy_id or sid.startswith(strategy_id)]
                exact = self._slots.get(strategy_id)
                if exact is not None:
                    found = [exact]
                if len(found) != 1:
                    return None
                slots = found
            for slot in slots:
                sid = slot.row.id
                history = self._history.get(slot.key)
                last = None if history is None else history.last_open_time
                if not slot.warm or history is None or last is None:
                    results.append(ManualRun(sid, "no_candle", detail="no closed candle yet (warming up)"))
                    continue
                if slot.cursor is not None and last <= slot.cursor:
                    signal = self.counters.last_signal.get(sid)
                    results.append(
                        ManualRun(sid, "already_evaluated", last, signal[0] if signal and signal[1] == last else None)
                    )
                    continue
                errors = self.stats.strategy_errors
                for candle in history.after(slot.cursor) if slot.cursor is not None else [history_last(history)]:
                    self._evaluate(slot, candle, batch, out)
                    await self.orders.run_inline(out)
                signal = self.counters.last_signal.get(sid)
                if self.stats.strategy_errors > errors:
                    results.append(ManualRun(sid, "error", last, detail="the strategy failed; see its logs"))
                else:
                    results.append(ManualRun(sid, "evaluated", last, signal[0] if signal else None))
        await self.orders.finish(out, batch)
        if batch.strategy_errors:
            self._on_streams_changed()
        return results

    # -- shutdown ----------------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait for an in-flight candle and the order dispatches it started (the caller has
        stopped the feed; wrap in a timeout)."""
        async with self._lock:
            pass
        await self.orders.drain()

    def close(self) -> None:
        for sid in list(self._slots):
            self._remove(sid)
        self._evaluator.close()


def history_last(history: CandleHistory) -> Candle:
    last = history.last_open_time
    assert last is not None
    return history.after(last - 1)[-1]


@dataclass(slots=True, eq=False)
class _Flight:
    """A closed candle started and not settled yet (see the module docstring)."""

    key: StreamKey
    inputs: _CandleInputs
    slots: list[_Slot]  # the strategies it is evaluated for, as claimed
    round: Round | None  # None: no strategy evaluates it
    batch: WriteBatch
    out: Effects
    updates: list[Candle] = field(default_factory=list)  # the stream's updates that came meanwhile

    def settler(self, settle: Callable[..., None]) -> Callable[[int, StepOutcome], None]:
        """``Engine._settle`` for outcome ``i`` of this candle."""

        def one(i: int, outcome: StepOutcome) -> None:
            settle(self.slots[i], self.inputs.candle, outcome, self.batch, self.out, self.inputs)

        return one


@dataclass(frozen=True, slots=True)
class _CandleInputs:
    candle: Candle
    floats: Floats6
    now_iso: str
    close_text: str
    lag_ms: int
