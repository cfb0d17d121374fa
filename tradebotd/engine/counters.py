"""The engine's plain counters, read by ``/metrics``, ``/healthz``, ``STATUS=`` and ``tradebotd
status`` through :class:`tradebotd.ops.status.EngineStatus` (which :class:`EngineCounters`
satisfies). The candle path only adds to dicts here: no Prometheus, no locks, no I/O.

Also :class:`ManualRun`, what the manual trigger (``POST /api/cron/strategies``) did for one
strategy, as plain data the HTTP layer turns into its JSON.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from ..model import StreamKey
from ..ops.status import LatencyHistogram, sandbox_error_kind

__all__ = ["EngineCounters", "ManualRun"]

ManualOutcome = Literal["evaluated", "already_evaluated", "no_candle", "error"]


@dataclass(frozen=True, slots=True)
class ManualRun:
    strategy_id: str
    outcome: ManualOutcome
    candle_time: int | None = None
    signal: str | None = None
    detail: str | None = None


def _utc_day(now_s: float) -> int:
    return int(now_s // 86_400)


class EngineCounters:
    """Counts since start-up (Prometheus counters only grow), plus the candles in flight."""

    def __init__(self, running: Callable[[], int], warming: Callable[[], int]) -> None:
        self._running = running
        self._warming = warming
        self._evaluated: Counter[StreamKey] = Counter()
        self._decisions: Counter[str] = Counter()
        self._orders: Counter[str] = Counter()
        self._sandbox_errors: Counter[str] = Counter()
        self._latency: dict[str, LatencyHistogram] = {}
        self._waiting: deque[int] = deque()  # monotonic receive times of closed candles in evaluation
        self.candles_evaluated = 0
        self.last_signal: dict[str, tuple[str, int]] = {}  # strategy id -> (signal, candle open time)
        self._seen_orders: set[str] = set()  # client order ids counted today
        self._day = _utc_day(time.time())
        self.orders_today = 0

    # -- EngineStatus --------------------------------------------------------------------------

    @property
    def strategies_running(self) -> int:
        return self._running()

    @property
    def warming(self) -> int:
        """Strategies loaded that have not had their history yet."""
        return self._warming()

    @property
    def evaluation_backlog(self) -> int:
        return len(self._waiting)

    @property
    def oldest_waiting_ns(self) -> int | None:
        return self._waiting[0] if self._waiting else None

    def evaluated_by_stream(self) -> Mapping[StreamKey, int]:
        return dict(self._evaluated)

    def decisions(self) -> Mapping[str, int]:
        return dict(self._decisions)

    def orders(self) -> Mapping[str, int]:
        return dict(self._orders)

    def sandbox_errors(self) -> Mapping[str, int]:
        return dict(self._sandbox_errors)

    def decision_latency(self) -> Mapping[str, LatencyHistogram]:
        return dict(self._latency)

    # -- what the engine tells ------------------------------------------------------------------

    def candle_in(self, received_ns: int) -> None:
        self._waiting.append(received_ns)

    def candle_done(self, key: StreamKey) -> None:
        if self._waiting:
            self._waiting.popleft()
        self._evaluated[key] += 1
        self.candles_evaluated += 1

    def decided(self, strategy_id: str, kind: str, signal: str, candle_time: int, received_ns: int) -> None:
        self._decisions[signal] += 1
        self.last_signal[strategy_id] = (signal, candle_time)
        if received_ns:
            histogram = self._latency.get(kind)
            if histogram is None:
                histogram = self._latency[kind] = LatencyHistogram()
            histogram.observe((time.monotonic_ns() - received_ns) / 1e9)

    def failed(self, strategy_id: str, error: BaseException) -> None:
        self._decisions["error"] += 1
        self._sandbox_errors[sandbox_error_kind(error)] += 1

    def skipped(self) -> None:
        self._decisions["skipped"] += 1

    def order_states(self, states: Mapping[str, str]) -> None:
        """client order id -> status, for the orders a batch records."""
        day = _utc_day(time.time())
        if day != self._day:
            self._day, self.orders_today = day, 0
            self._seen_orders.clear()
        for client_order_id, status in states.items():
            self._orders[status] += 1
            if client_order_id not in self._seen_orders:
                self._seen_orders.add(client_order_id)
                self.orders_today += 1

    def forget(self, strategy_id: str) -> None:
        self.last_signal.pop(strategy_id, None)
