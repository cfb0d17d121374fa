"""The trading engine: closed candles in, decisions, orders and records out.

One code path serves the daemon (live market data, paper or live broker) and any replay: the
engine only sees candles, a :class:`~tradebotd.broker.base.Broker`, a strategy-runtime factory and
a sink for :class:`~tradebotd.store.base.WriteBatch` values. It does no I/O of its own.

Exactly once per strategy and candle: every strategy has a cursor (the open time of the last
candle it evaluated), persisted in the same batch as the trades that candle caused. Candles at or
before the cursor are history, never evaluated again; after a restart the candles that closed
while the daemon was down are evaluated in order (and the staleness guard keeps old ones from
trading).

Failure policy: a strategy error is logged to ``strategy_logs`` and counted; after
``max_consecutive_errors`` in a row the strategy goes to status ``error`` and its slot is released.
Other strategies are not affected; an open position keeps its protective levels.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from .broker.base import Broker, Fill, Ignored, OrderIntent, OrderOutcome, client_order_id
from .errors import StrategyError
from .history import CandleHistory
from .ids import trade_uuid
from .model import Candle, Decision, Position, StreamKey, interval_ms, normalize_symbol
from .store.base import CloseRequest, LogEntry, StrategyRow, TradeRow, WriteBatch
from .store.sqlite import utc_now

__all__ = [
    "BatchRuntime",
    "Engine",
    "EngineConfig",
    "RuntimeFactory",
    "StepGroup",
    "StepOutcome",
    "StrategyRuntime",
    "order_intent",
    "order_intent_at",
]

log = structlog.get_logger(__name__)

Floats6 = tuple[float, float, float, float, float, float]
StepOutcome = tuple[Decision, Any] | BaseException
"""A runtime's ``step`` result, or the exception it raised."""

PARALLEL_MIN_STRATEGIES = 4
"""Below this many strategies on a candle, handing work to threads costs more than it saves."""
WORKER_STACK_BYTES = 16 << 20
"""Native stack for sandbox worker threads: wasm needs max_wasm_stack (2 MiB) plus Python's."""


def sandbox_pool(threads: int) -> ThreadPoolExecutor:
    """Worker threads for sandbox calls, all started now with a known stack size (thread stack
    size is fixed at creation; wasm on a thread with too little native stack would crash)."""
    previous = threading.stack_size(WORKER_STACK_BYTES)
    try:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sandbox")
        barrier = threading.Barrier(threads)
        for future in [pool.submit(barrier.wait) for _ in range(threads)]:
            future.result()
    finally:
        threading.stack_size(previous)
    return pool


class StrategyRuntime(Protocol):
    """A loaded strategy: the sandboxed JS instance, a native wasm module, ..."""

    def push_history(self, candles: npt.NDArray[np.float64]) -> None: ...

    def step(
        self, candle: tuple[float, float, float, float, float, float], position: Position | None
    ) -> tuple[Decision, Any]: ...

    def close(self) -> None: ...


class BatchRuntime(StrategyRuntime, Protocol):
    """A runtime that can evaluate many candles per call (backtests): push and evaluate each row
    in order, stopping after the first non-hold decision; returns (rows consumed, that decision)."""

    def run_until_signal(
        self, candles: npt.NDArray[np.float64], position: Position | None
    ) -> tuple[int, Decision | None]: ...


RuntimeFactory = Callable[[StrategyRow, StreamKey], StrategyRuntime]


class StepGroup(Protocol):
    """Runtimes evaluated together elsewhere (an evaluation process): a runtime with a
    ``step_group`` attribute is evaluated through it. ``begin`` sends one candle's work and
    returns the function that waits for its outcomes, in order; neither raises (a failure is an
    exception in the list)."""

    def begin(
        self, work: Sequence[tuple[StrategyRuntime, Position | None]], floats: Floats6
    ) -> Callable[[], list[StepOutcome]]: ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    history: int = 500
    max_candle_lag_ms: int = 30_000  # 0 disables the staleness guard
    max_consecutive_errors: int = 3
    log_holds: bool = False
    record_candles: bool = True
    eval_threads: int = 1  # >1: evaluate a candle's strategies in this many worker threads


@dataclass(slots=True)
class _Slot:
    row: StrategyRow
    key: StreamKey
    fingerprint: str
    runtime: StrategyRuntime
    cursor: int | None
    warm: bool = False
    errors: int = 0


@dataclass(slots=True)
class EngineStats:
    candles: int = 0
    evaluations: int = 0
    strategy_errors: int = 0
    fills: int = 0
    stale_refusals: int = 0


def fingerprint(row: StrategyRow) -> str:
    """What makes a strategy need reloading when it changes in the store."""
    payload = json.dumps(
        [row.kind, row.source, dict(row.parameters), row.asset, row.interval, row.portfolio_id],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _decimal(x: float | None) -> Decimal | None:
    # repr() gives the shortest string that round-trips, so 0.1 becomes Decimal("0.1").
    return None if x is None else Decimal(repr(x))


def order_intent(decision: Decision, *, strategy_id: str, portfolio_id: str | None, candle: Candle) -> OrderIntent:
    """The order a buy/sell decision on ``candle`` asks for; floats become exact decimals here.
    Shared by the daemon and the backtest so both send the broker identical intents."""
    return order_intent_at(
        decision,
        strategy_id=strategy_id,
        portfolio_id=portfolio_id,
        key=candle.key,
        candle_time=candle.open_time,
        close=candle.close,
    )


def order_intent_at(
    decision: Decision, *, strategy_id: str, portfolio_id: str | None, key: StreamKey, candle_time: int, close: Decimal
) -> OrderIntent:
    """:func:`order_intent` from the only parts of the candle an order uses: its stream, open
    time and close. The backtest calls this directly, so a signal costs one decimal, not a
    :class:`~tradebotd.model.Candle` of five."""
    if decision.signal == "hold":
        raise ValueError("a hold decision places no order")
    return OrderIntent(
        client_order_id=client_order_id(strategy_id, candle_time, decision.signal),
        strategy_id=strategy_id,
        portfolio_id=portfolio_id,
        key=key,
        side=decision.signal,
        amount=_decimal(decision.amount),
        reference_price=close,
        candle_time=candle_time,
        reason=decision.reason,
        take_profit=_decimal(decision.take_profit),
        stop_loss=_decimal(decision.stop_loss),
    )


class Engine:
    def __init__(
        self,
        *,
        broker: Broker,
        sink: Callable[[WriteBatch], None],
        runtime_factory: RuntimeFactory,
        now_ms: Callable[[], int],
        config: EngineConfig = EngineConfig(),
        cursors: dict[str, int] | None = None,
        on_streams_changed: Callable[[], None] | None = None,
    ) -> None:
        self.broker = broker
        self.config = config
        self.stats = EngineStats()
        self._sink = sink
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
        self._pool = sandbox_pool(config.eval_threads - 1) if config.eval_threads > 1 else None
        # Close requests from the store (close_positions) waiting for a fresh price, the ids
        # carried out but maybe not committed yet, and the newest price seen per stream.
        self._closes: dict[int, CloseRequest] = {}
        self._closes_done: set[int] = set()
        self._last_price: dict[StreamKey, Candle] = {}
        # Log lines about decisions and fills, written after the batch is handed over (see _submit).
        self._narration: list[tuple[str, dict[str, Any]]] = []
        # Control-plane changes and candle processing never interleave mid-candle.
        self._lock = asyncio.Lock()

    # -- control plane -----------------------------------------------------------------------

    def streams(self) -> set[StreamKey]:
        """Streams the feed must deliver: running strategies', open protected positions' and
        those of positions waiting to be closed."""
        return set(self._by_key) | set(self.broker.protected_keys()) | {r.key for r in self._closes.values()}

    def strategy_ids(self) -> set[str]:
        return set(self._slots)

    def advance_cursor(self, strategy_id: str, open_time: int) -> None:
        """A strategy this engine does not run now resumes after ``open_time`` at the earliest
        (its cursor came with a lease from another instance: tradebotd.sync.leases)."""
        if strategy_id not in self._slots:
            self._cursors[strategy_id] = max(self._cursors.get(strategy_id, open_time), open_time)

    async def sync(self, rows: Sequence[StrategyRow]) -> bool:
        """Make the running set equal ``rows``: start new strategies, reload changed ones, stop
        the rest. Load failures put the strategy in status ``error``. True if anything changed."""
        changed = False
        async with self._lock:
            batch = WriteBatch()
            wanted = {row.id: row for row in rows}
            for sid in list(self._slots):
                if sid not in wanted:
                    self._remove(sid)
                    changed = True
                    log.info("strategy stopped", strategy_id=sid)
            for row in rows:
                if self._failed.get(row.id) == row.updated_at:
                    continue
                slot = self._slots.get(row.id)
                if slot is not None and slot.fingerprint == fingerprint(row):
                    continue
                await self._start(row, batch, reload=slot is not None)
                changed = True
            self._submit(batch)
        self._on_streams_changed()
        return changed

    async def close_positions(self, requests: Sequence[CloseRequest]) -> None:
        """Carry out the store's pending close requests (``strategy stop|remove --close-position``):
        sell the whole position through the normal order path at the newest fresh price of its
        stream (an in-progress kline's close, or a closed candle's; fresh = within
        ``max_candle_lag_ms`` of that candle's end, as for trading). The client order id is that
        candle's ``sell`` id, the one the strategy's own sell on it would carry, so a close and a
        strategy sell can never both trade, and a close re-done after a crash reuses its id. The
        request row is deleted in the sell's batch. Without a fresh price it waits (its stream is
        in :meth:`streams`; the first price wakes the control loop); for a flat strategy it is
        dropped with a log row."""
        async with self._lock:
            wanted = {r.id: r for r in requests}
            self._closes_done &= set(wanted)  # committed and gone from the store: forget them
            batch = WriteBatch()
            for rid, request in wanted.items():
                if rid in self._closes_done:
                    continue
                sid = request.strategy_id
                if self.broker.position(sid) is None:
                    batch.logs.append(_entry(sid, "info", "close requested: no open position", {"request": rid}))
                elif (candle := self._fresh_price(request.key)) is None:
                    continue  # stays pending
                else:
                    await self._close(request, candle, batch)
                batch.closes_done.append(rid)
                self._closes_done.add(rid)
            self._closes = {rid: r for rid, r in wanted.items() if rid not in self._closes_done}
            self._submit(batch)

    async def _close(self, request: CloseRequest, candle: Candle, batch: WriteBatch) -> None:
        sid = request.strategy_id
        intent = order_intent_at(
            Decision(signal="sell", reason=request.reason),
            strategy_id=sid,
            portfolio_id=request.portfolio_id,
            key=request.key,
            candle_time=candle.open_time,
            close=candle.close,
        )
        log.info("closing position on request", strategy_id=sid, client_order_id=intent.client_order_id)
        await self._place(intent, batch)

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

    async def _start(self, row: StrategyRow, batch: WriteBatch, *, reload: bool) -> None:
        try:
            key = StreamKey(normalize_symbol(row.asset), row.interval)
            interval_ms(row.interval)
            runtime = self._factory(row, key)
        except (StrategyError, ValueError) as exc:
            if reload:
                self._remove(row.id)
            self._failed[row.id] = row.updated_at
            self._fail(row.id, f"cannot load strategy: {exc}", batch, _error_data(exc))
            return
        old = self._slots.get(row.id)
        cursor = self._cursors.get(row.id)
        if old is not None:
            cursor = old.cursor if old.key == key else None
            self._remove(row.id, keep_history=old.key == key)
        slot = _Slot(row=row, key=key, fingerprint=fingerprint(row), runtime=runtime, cursor=cursor)
        self._slots[row.id] = slot
        self._by_key.setdefault(key, []).append(slot)
        log.info(
            "strategy reloaded" if reload else "strategy started",
            strategy_id=row.id,
            name=row.name,
            symbol=key.symbol,
            interval=key.interval,
        )
        batch.logs.append(
            _entry(
                row.id,
                "info",
                "strategy reloaded" if reload else "strategy started",
                {"symbol": key.symbol, "interval": key.interval},
            )
        )
        history = self._history.get(key)
        if history is not None and len(history):
            await self._warm(slot, history, batch)

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
            if not keep_history and slot.key not in set(self.broker.protected_keys()):
                self._history.pop(slot.key, None)
                if all(r.key != slot.key for r in self._closes.values()):
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
        batch.logs.append(_entry(strategy_id, "error", message, data))
        log.error("strategy disabled", strategy_id=strategy_id, error=message)

    async def _warm(self, slot: _Slot, history: CandleHistory, batch: WriteBatch) -> None:
        first, last = history.first_open_time, history.last_open_time
        assert first is not None and last is not None
        if slot.cursor is None or slot.cursor < first:
            if slot.cursor is not None:
                missed = (first - slot.cursor) // slot.key.interval_ms - 1
                log.warning(
                    "strategy resumes after a gap longer than the history",
                    strategy_id=slot.row.id,
                    missed_candles=missed,
                )
            if not self._push_history(slot, history.rows(), batch):
                return
            slot.cursor = last
            batch.cursors[slot.row.id] = (slot.key.symbol, slot.key.interval, last)
            slot.warm = True
            return
        if not self._push_history(slot, history.rows(up_to_open_time=slot.cursor), batch):
            return
        slot.warm = True
        # Candles that closed while this strategy was not running (a restart): evaluate them in
        # order; the staleness guard stops old ones from trading.
        for candle in history.after(slot.cursor):
            await self._evaluate(slot, candle, batch)

    def _push_history(self, slot: _Slot, rows: npt.NDArray[np.float64], batch: WriteBatch) -> bool:
        """Give a strategy its history. That can fail too (its top-level code left its heap full,
        a sandbox bug): it costs that strategy, never the feed or control loop calling this."""
        try:
            slot.runtime.push_history(rows)
        except Exception as exc:
            if not isinstance(exc, StrategyError):
                log.exception("strategy runtime failed unexpectedly", strategy_id=slot.row.id)
            self._failed[slot.row.id] = slot.row.updated_at
            self._fail(slot.row.id, f"cannot give the strategy its history: {exc}", batch, _error_data(exc))
            return False
        return True

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
            if self.config.record_candles:
                batch.candles.extend(candles)
            slots = list(self._by_key.get(key, []))
            if known_last is not None:
                for candle in candles:
                    if candle.open_time > known_last:
                        self._record_fills(self.broker.on_candle(candle), batch)
                        for slot in slots:
                            if slot.warm:
                                await self._evaluate(slot, candle, batch)
            if len(history):
                for slot in slots:
                    if not slot.warm:
                        await self._warm(slot, history, batch)
            self._submit(batch)
        if batch.strategy_errors:
            self._on_streams_changed()

    async def on_closed(self, candle: Candle, received_ns: int) -> None:
        async with self._lock:
            key = candle.key
            self.stats.candles += 1
            history = self._history.get(key)
            if history is None:
                history = self._history[key] = CandleHistory(self.config.history)
            history.append(candle)
            self._saw_price(candle)
            batch = WriteBatch(enqueued_ns=received_ns)
            if self.config.record_candles:
                batch.candles.append(candle)
            # Protective levels first: the candle touched them before it closed.
            self._record_fills(self.broker.on_candle(candle), batch)
            await self._evaluate_all([s for s in self._by_key.get(key, []) if s.warm], candle, batch)
            self._submit(batch)
        if batch.strategy_errors:
            self._on_streams_changed()

    def _submit(self, batch: WriteBatch) -> None:
        """Hand the batch to the writer, then narrate: the decision log lines (one per strategy and
        candle) are written right after the writer's commit had its turn, so logging 100 lines never
        delays recording 100 decisions."""
        self._sink(batch)
        if self._narration:
            lines, self._narration = self._narration, []
            asyncio.get_running_loop().call_soon(_narrate, lines)

    def on_update(self, candle: Candle) -> None:
        """An in-progress kline: only protective levels (and a waiting close) can react to it."""
        self._saw_price(candle)
        fills = self.broker.on_candle(candle)
        if fills:
            batch = WriteBatch()
            self._record_fills(fills, batch)
            self._submit(batch)

    # -- one strategy, one candle ------------------------------------------------------------

    async def _evaluate(self, slot: _Slot, candle: Candle, batch: WriteBatch) -> None:
        """Evaluate one strategy on one candle (warm-up catch-up and re-sent history)."""
        if self._claim(slot, candle, batch):
            floats = self._inputs(candle).floats
            await self._settle(slot, candle, _step(slot.runtime, floats, self.broker.position(slot.row.id)), batch)

    async def _evaluate_all(self, slots: Sequence[_Slot], candle: Candle, batch: WriteBatch) -> None:
        """Evaluate every strategy on a closed candle. With ``eval_threads`` > 1 the sandbox calls
        run in parallel worker threads (wasm releases the GIL; each instance is used by one thread
        at a time); everything that follows (orders, records) runs here, in slot order, so the
        outcome is the same as evaluating one after another."""
        claimed = [slot for slot in slots if self._claim(slot, candle, batch)]
        if not claimed:
            return
        floats = self._inputs(candle).floats
        work = [(slot.runtime, self.broker.position(slot.row.id)) for slot in claimed]
        groups: dict[StepGroup, list[int]] = {}
        for i, (runtime, _) in enumerate(work):
            group = getattr(runtime, "step_group", None)
            if group is not None:
                groups.setdefault(group, []).append(i)
        if groups:
            # Strategies in evaluation processes: send each process its share, then evaluate and
            # settle ours meanwhile, then settle theirs. So the order of settlement (which counts
            # when cash runs short) is: the daemon's own strategies, then each process's, each in
            # slot order; deterministic, like the threads' order below.
            collects = [(members, group.begin([work[i] for i in members], floats)) for group, members in groups.items()]
            remote = {i for members in groups.values() for i in members}
            for i, (runtime, position) in enumerate(work):
                if i not in remote:
                    await self._settle(claimed[i], candle, _step(runtime, floats, position), batch)
            for members, collect in collects:
                for i, outcome in zip(members, collect(), strict=True):
                    await self._settle(claimed[i], candle, outcome, batch)
            return
        if self._pool is None or len(work) < PARALLEL_MIN_STRATEGIES:
            for slot, outcome in zip(claimed, _step_all(work, floats), strict=True):
                await self._settle(slot, candle, outcome, batch)
            return
        # The event loop's thread evaluates the first share itself and settles it while the
        # workers are still evaluating theirs: a strategy's position only changes in its own
        # settle and cash is only spent in settle, in slot order, so this overlap changes nothing.
        loop = asyncio.get_running_loop()
        size = -(-len(work) // self.config.eval_threads)
        shares = [work[i : i + size] for i in range(0, len(work), size)]
        others = [loop.run_in_executor(self._pool, _step_all, share, floats) for share in shares[1:]]
        first = _step_all(shares[0], floats)
        for slot, outcome in zip(claimed, first, strict=False):
            await self._settle(slot, candle, outcome, batch)
        rest = [outcome for share in await asyncio.gather(*others) for outcome in share]
        for slot, outcome in zip(claimed[len(first) :], rest, strict=True):
            await self._settle(slot, candle, outcome, batch)

    def _claim(self, slot: _Slot, candle: Candle, batch: WriteBatch) -> bool:
        """Advance the strategy's cursor to ``candle``; False if it already evaluated it."""
        if slot.cursor is not None and candle.open_time <= slot.cursor:
            return False  # already evaluated (exactly once, across restarts too)
        slot.cursor = candle.open_time
        batch.cursors[slot.row.id] = (candle.symbol, candle.interval, candle.open_time)
        self.stats.evaluations += 1
        return True

    async def _settle(self, slot: _Slot, candle: Candle, outcome: StepOutcome, batch: WriteBatch) -> None:
        """Record one evaluation's outcome and place the order it asks for."""
        sid = slot.row.id
        inputs = self._inputs(candle)
        now_iso = inputs.now_iso
        if isinstance(outcome, StrategyError):
            self._strategy_error(slot, candle, str(outcome), _error_data(outcome), batch)
            return
        if isinstance(outcome, BaseException):  # a sandbox bug must cost one strategy, never the daemon
            log.error("strategy runtime failed unexpectedly", strategy_id=sid, error=repr(outcome), exc_info=outcome)
            self._strategy_error(slot, candle, f"internal sandbox error: {outcome!r}", None, batch)
            return
        decision, info = outcome
        slot.errors = 0
        eval_us = float(getattr(info, "elapsed_us", 0.0))
        console = list(getattr(info, "console", None) or [])
        self._narration.append(
            (
                "decision",
                {
                    "strategy_id": sid,
                    "symbol": candle.symbol,
                    "interval": candle.interval,
                    "candle_time": candle.open_time,
                    "signal": decision.signal,
                    "eval_us": round(eval_us, 1),
                    "reason": decision.reason,
                },
            )
        )
        batch.strategy_runs[sid] = (now_iso, now_iso if decision.signal != "hold" else None)
        if decision.signal == "hold" and not self.config.log_holds and not console:
            return  # the common case: nothing else to record
        data: dict[str, Any] = {
            "candle_time": candle.open_time,
            "close": inputs.close_text,
            "signal": decision.signal,
            "eval_us": round(eval_us, 1),
        }
        if decision.amount is not None:
            data["amount"] = decision.amount
        if decision.reason is not None:
            data["reason"] = decision.reason
        if decision.take_profit is not None:
            data["take_profit"] = decision.take_profit
        if decision.stop_loss is not None:
            data["stop_loss"] = decision.stop_loss
        if decision.indicators:
            data["indicators"] = dict(decision.indicators)
        if console:
            data["console"] = console
        if decision.signal == "hold":
            batch.logs.append(_entry(sid, "info", f"hold: {decision.reason or ''}".rstrip(": "), data))
            return
        batch.logs.append(
            _entry(
                sid, "signal", f"{decision.signal} signal" + (f": {decision.reason}" if decision.reason else ""), data
            )
        )
        lag_ms = inputs.lag_ms
        if self.config.max_candle_lag_ms > 0 and lag_ms > self.config.max_candle_lag_ms:
            self.stats.stale_refusals += 1
            message = (
                f"not trading on a stale candle: it closed {lag_ms / 1000:.1f} s ago "
                f"(market.max_candle_lag_s = {self.config.max_candle_lag_ms / 1000:g})"
            )
            log.warning("stale candle; not trading", strategy_id=sid, candle_time=candle.open_time, lag_ms=lag_ms)
            batch.logs.append(_entry(sid, "info", message, {"candle_time": candle.open_time, "lag_ms": lag_ms}))
            return
        intent = order_intent(decision, strategy_id=sid, portfolio_id=slot.row.portfolio_id, candle=candle)
        await self._place(intent, batch)

    async def _place(self, intent: OrderIntent, batch: WriteBatch) -> None:
        """Send one order to the broker and record what came of it."""
        sid = intent.strategy_id
        try:
            order = await self.broker.submit(intent)
        except Exception as exc:
            log.exception("order failed", strategy_id=sid, client_order_id=intent.client_order_id)
            batch.logs.append(_entry(sid, "error", f"order failed: {exc}", {"client_order_id": intent.client_order_id}))
            return
        self._record_outcome(order, sid, batch)

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
        batch.logs.append(_entry(sid, "error", message, details))
        batch.strategy_runs[sid] = (utc_now(), None)
        if slot.errors >= self.config.max_consecutive_errors:
            self._failed[sid] = slot.row.updated_at
            self._fail(sid, f"{slot.errors} consecutive errors; last: {message}", batch)

    def _record_outcome(self, outcome: OrderOutcome, strategy_id: str, batch: WriteBatch) -> None:
        if isinstance(outcome, Fill):
            self._record_fills([outcome], batch)
            return
        level = "info" if isinstance(outcome, Ignored) else "error"
        log.info(
            "order not placed", strategy_id=strategy_id, client_order_id=outcome.client_order_id, reason=outcome.reason
        )
        batch.logs.append(_entry(strategy_id, level, outcome.reason, {"client_order_id": outcome.client_order_id}))

    def _record_fills(self, fills: Iterable[Fill], batch: WriteBatch) -> None:
        for fill in fills:
            self.stats.fills += 1
            now_iso = utc_now()
            batch.trades.append(
                TradeRow(
                    id=trade_uuid(fill.client_order_id, fill.candle_time),
                    strategy_id=fill.strategy_id,
                    portfolio_id=fill.portfolio_id,
                    symbol=fill.key.symbol,
                    side=fill.side,
                    amount=fill.amount,
                    price=fill.price,
                    fee=fill.fee,
                    status=fill.status,
                    client_order_id=fill.client_order_id,
                    exchange_order_id=fill.exchange_order_id,
                    candle_time=fill.candle_time,
                    reason=fill.reason,
                    created_at=now_iso,
                )
            )
            batch.positions[fill.strategy_id] = (fill.portfolio_id, fill.key, fill.position_after)
            if fill.position_after is None and fill.key not in self._by_key:
                # Closed the position of a strategy no longer running on this stream (disabled or
                # stopped): it may have been the stream's last reason to be watched.
                self._on_streams_changed()
            if fill.cash_after is not None and fill.portfolio_id is not None:
                batch.cash[fill.portfolio_id] = fill.cash_after
            amount, price, fee = str(fill.amount), str(fill.price), str(fill.fee)
            verb = "bought" if fill.side == "buy" else "sold"
            message = f"{verb} {amount} {fill.key.symbol} at {price} (fee {fee})"
            fields = {
                "client_order_id": fill.client_order_id,
                "side": fill.side,
                "amount": amount,
                "price": price,
                "fee": fee,
                "candle_time": fill.candle_time,
            }
            batch.logs.append(_entry(fill.strategy_id, "trade", message, {**fields, "reason": fill.reason}))
            for note in fill.notes:
                batch.logs.append(_entry(fill.strategy_id, "info", note, {"client_order_id": fill.client_order_id}))
            self._narration.append(("fill", {"strategy_id": fill.strategy_id, **fields}))

    # -- shutdown ----------------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait for an in-flight candle to finish (the caller has stopped the feed)."""
        async with self._lock:
            pass

    def close(self) -> None:
        for sid in list(self._slots):
            self._remove(sid)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _narrate(lines: list[tuple[str, dict[str, Any]]]) -> None:
    for event, fields in lines:
        log.info(event, **fields)


@dataclass(frozen=True, slots=True)
class _CandleInputs:
    candle: Candle
    floats: Floats6
    now_iso: str
    close_text: str
    lag_ms: int


def _step(runtime: StrategyRuntime, floats: Floats6, position: Position | None) -> StepOutcome:
    """One sandbox call; errors are returned, not raised, so a batch of calls always completes."""
    try:
        return runtime.step(floats, position)
    except Exception as exc:
        return exc


def _step_all(work: Sequence[tuple[StrategyRuntime, Position | None]], floats: Floats6) -> list[StepOutcome]:
    """A worker thread's share of one candle's evaluations."""
    return [_step(runtime, floats, position) for runtime, position in work]


def _entry(strategy_id: str, level: Any, message: str, data: dict[str, Any] | None) -> LogEntry:
    return LogEntry(strategy_id=strategy_id, level=level, message=message, data=data, created_at=utc_now())


def _error_data(exc: BaseException) -> dict[str, Any]:
    data: dict[str, Any] = {"error_type": type(exc).__name__}
    for attr in ("name", "stack", "line", "column"):
        value = getattr(exc, attr, None)
        if value:
            data[attr] = value
    return data
