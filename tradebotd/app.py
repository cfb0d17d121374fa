"""The composition root: the daemon's parts built from config, in one place.

:func:`build_daemon` is what ``tradebotd run`` calls; :func:`compose_parts` builds the parts (store,
brokers, store writer, runtimes and evaluation pool, engine, market feed, Supabase sync) for a
:class:`~tradebotd.daemon.Daemon`, which only runs their lifecycle. The daemon hands in the few
callbacks the parts need to reach it (:class:`Hooks`), so nothing here knows how it is run.

Start-up is logged as phases (``"startup phase"`` with ``phase=``): ``config`` (by the caller,
before anything is built), ``store`` (open and migrate, restore the ledger and active orders:
here), then ``reconcile``, ``warm-up``, ``feed`` and ``ready`` (the daemon's ``start`` and
``wait_ready``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, cast

import structlog

from .broker.base import Broker
from .broker.factory import build_brokers
from .broker.paper import PaperBroker
from .config import Settings
from .engine import Engine, EngineConfig, RuntimeFactory
from .exchange.throttle import RequestBudgets
from .market.feed import MarketFeed
from .model import Position, StreamKey
from .ops.health import HealthPolicy
from .ops.service import EngineTrigger, OpsService
from .ops.status import BrokerStatus, Sources
from .orders.ledger import Holding, Ledger
from .orders.state import Order
from .orders.validate import OrderPolicy
from .runtimes import make_runtime_factory
from .status_report import live_report
from .store.base import PortfolioRow, WriteBatch
from .store.outbox import uninstall_at as uninstall_outbox
from .store.sqlite import SqliteStore
from .store.writer import StoreWriter
from .workers.pool import EvalPool

if TYPE_CHECKING:
    from .daemon import Daemon
    from .sync.service import SyncService

__all__ = ["WRITE_QUEUE_CAPACITY", "Components", "Hooks", "build_daemon", "compose_parts", "log_phase"]

log = structlog.get_logger("tradebotd.app")

# Write batches waiting for the store before the writer's queue counts as full (a warning and
# tradebotd_queue_full_total; never a dropped decision). About a minute of 1,000 strategies'
# candles while the disk is stuck.
WRITE_QUEUE_CAPACITY = 10_000


def log_phase(phase: str, started_ns: int | None = None, **fields: object) -> None:
    """One ``startup phase`` line: ``config``, ``store``, ``reconcile``, ``warm-up``, ``feed``, ``ready``."""
    if started_ns is not None:
        fields["took_s"] = round((time.monotonic_ns() - started_ns) / 1e9, 3)
    log.info("startup phase", phase=phase, **fields)


class Hooks(Protocol):
    """What the parts call back into the daemon for."""

    def committed(self, batch: WriteBatch, committed_ns: int) -> None: ...
    def streams_changed(self) -> None: ...
    def resync(self) -> None: ...
    def server_now_ms(self) -> int: ...
    def leased_cursor(self, strategy_id: str, symbol: str, interval: str, open_time: int) -> None: ...
    def taken_over(
        self, strategy_id: str, portfolio_id: str | None, key: StreamKey, position: Position | None,
        cash: Decimal | None,
    ) -> None: ...
    def portfolio_added(self, portfolio_id: str, cash: Decimal) -> None: ...


@dataclass(slots=True)
class Components:
    store: SqliteStore
    portfolio_id: str  # the default paper portfolio
    brokers: dict[str, Broker]  # by portfolio type
    writer: StoreWriter
    runtimes: RuntimeFactory
    eval_pool: EvalPool | None
    request_budgets: RequestBudgets
    engine: Engine
    feed: MarketFeed
    sync: SyncService | None

    @property
    def paper(self) -> PaperBroker:
        broker = self.brokers["paper"]
        assert isinstance(broker, PaperBroker)
        return broker


def build_daemon(settings: Settings, environ: MutableMapping[str, str] | None = None) -> Daemon:
    """The daemon ``tradebotd run`` serves, built from ``settings``, with its operations edge
    (systemd notifications from ``environ``'s ``NOTIFY_SOCKET``, the HTTP server on
    ``http.listen``, the trigger with ``CRON_SECRET``)."""
    from .daemon import Daemon

    daemon = Daemon(settings, compose=compose_parts)
    try:
        daemon.ops = make_ops(settings, daemon, environ)
    except BaseException:
        daemon.store.close()
        raise
    return daemon


class _Outbox:
    """:class:`~tradebotd.ops.status.OutboxStatus` of the Supabase outbox."""

    def __init__(self, sync: SyncService) -> None:
        self._sync = sync

    @property
    def depth(self) -> int:
        return self._sync.outbox.backlog()


class _Processes:
    """:class:`~tradebotd.ops.status.ProcessTree`: the daemon and its evaluation processes."""

    def __init__(self, pool: EvalPool | None) -> None:
        self._pool = pool

    def processes(self) -> dict[str, int]:
        out = {"daemon": os.getpid()}
        for process in self._pool.processes if self._pool is not None else ():
            if process.pid is not None:
                out[f"eval-{process.index}"] = process.pid
        return out


def sources_of(daemon: Daemon) -> Sources:
    """Every status source of a daemon (tradebotd.ops.status)."""
    # A broker reports a ban when it knows of one (the live broker: HTTP 418); paper never is.
    bans = [cast(BrokerStatus, b) for b in daemon.brokers.values() if hasattr(b, "banned_until_ms")]
    return Sources(
        feed=daemon.feed,
        engine=daemon.engine.counters,
        writer=daemon.writer,
        brokers=bans,
        outbox=None if daemon.sync is None else _Outbox(daemon.sync),
        supervisor=daemon.supervisor,
        queues=[daemon.writer, daemon.feed],
        processes=_Processes(daemon.eval_pool),
    )


def make_ops(settings: Settings, daemon: Daemon, environ: MutableMapping[str, str] | None = None) -> OpsService:
    counters = daemon.engine.counters
    return OpsService(
        sources_of(daemon),
        listen=settings.http.address,
        policy=HealthPolicy(grace_s=settings.http.health_grace_s, outbox_threshold=settings.http.outbox_threshold),
        progress_timeout_s=settings.daemon.progress_timeout_s,
        server_now_ms=daemon.server_now_ms,
        trigger=EngineTrigger(daemon.engine.run_latest),
        status=lambda: live_report(daemon),
        orders_today=lambda: counters.orders_today,
        environ=environ,
    )


def make_brokers(
    settings: Settings, portfolios: list[PortfolioRow], holdings: dict[str, Holding], budgets: RequestBudgets
) -> dict[str, Broker]:
    """The brokers by portfolio type: paper always, live when a portfolio is (DESIGN.md §2;
    :func:`tradebotd.broker.factory.build_brokers`)."""
    return build_brokers(settings, portfolios, holdings, budgets)


def engine_config(settings: Settings) -> EngineConfig:
    """The engine's settings, from the daemon's."""
    market = settings.market
    return EngineConfig(
        history=market.history,
        max_candle_lag_ms=int(market.max_candle_lag_s * 1000),
        start_window_ms=int(market.start_window_s * 1000),
        max_consecutive_errors=settings.sandbox.max_consecutive_errors,
        log_holds=settings.store.log_holds,
        eval_threads=1 if settings.sandbox.eval_processes else settings.sandbox.eval_threads,
        max_in_flight=settings.exchange.max_in_flight,
    )


def compose_parts(settings: Settings, hooks: Hooks) -> Components:
    """Build every part of the daemon from ``settings`` (the ``store`` start-up phase included:
    the store is opened and migrated, the ledger and active orders restored from it)."""
    started = time.monotonic_ns()
    store = SqliteStore(settings.store.path, busy_timeout_ms=200, auto_checkpoint=False)
    version = store.migrate()
    paper = settings.paper
    portfolio_id = store.ensure_paper_portfolio(
        user_id=settings.store.user_id, cash=paper.cash, currency=paper.currency
    )
    portfolios = store.portfolios()
    cash: dict[str | None, Decimal] = {p.id: p.cash for p in portfolios}
    types = {p.id: p.type for p in portfolios}
    holdings = {sid: Holding(pid, key, pos) for sid, (pid, key, pos) in store.positions().items()}
    ledger = Ledger(cash, holdings)
    active = [Order.from_record(record, trades) for record, trades in store.active_orders()]
    log_phase(
        "store",
        started,
        path=str(settings.store.path),
        schema_version=version,
        portfolios=len(portfolios),
        positions=len(holdings),
        active_orders=len(active),
    )

    # One request budget per REST host (Binance counts weight per IP): the feed's klines and,
    # through CcxtExchange(budgets=...), the exchange port's orders when they call one host.
    request_budgets = RequestBudgets()
    try:
        brokers = make_brokers(settings, portfolios, holdings, request_budgets)
    except BaseException:
        store.close()
        raise
    writer = StoreWriter(
        store, checkpoint_when_idle=True, on_committed=hooks.committed, queue_capacity=WRITE_QUEUE_CAPACITY
    )
    local = make_runtime_factory(settings.sandbox)
    runtimes: RuntimeFactory = local
    eval_pool: EvalPool | None = None
    processes = settings.sandbox.eval_processes
    if processes:
        eval_pool = EvalPool(
            settings.sandbox, local, processes, log_level=settings.log.level,
            daemon_weight=settings.sandbox.daemon_weight,
        )
        runtimes = eval_pool
    market = settings.market
    engine = Engine(
        brokers=brokers,
        sink=writer.submit,
        runtime_factory=runtimes,
        now_ms=hooks.server_now_ms,
        config=engine_config(settings),
        cursors=store.cursors(),
        on_streams_changed=hooks.streams_changed,
        ledger=ledger,
        orders=active,
        portfolios=types,
        default_portfolio=portfolio_id,
        policy=OrderPolicy(paper.default_amount),
    )
    feed = MarketFeed(
        ws_url=market.ws_url,
        rest_url=market.rest_url,
        sink=engine,
        history=market.history,
        streams_per_connection=market.streams_per_connection,
        rest_weight_per_minute=market.rest_weight_per_minute,
        connects_per_5min=market.connects_per_5min,
        rest_budget=request_budgets.for_url(market.rest_url),
        rotate_after_s=market.rotate_after_s,
        backoff_initial_s=market.reconnect_min_s,
        backoff_max_s=market.reconnect_max_s,
    )
    return Components(
        store=store,
        portfolio_id=portfolio_id,
        brokers=brokers,
        writer=writer,
        runtimes=runtimes,
        eval_pool=eval_pool,
        request_budgets=request_budgets,
        engine=engine,
        feed=feed,
        # The sync's tasks hold their work back while a candle is evaluated or waits for its commit.
        sync=make_sync(settings, store, hooks, busy=lambda: engine.busy or writer.queued > 0),
    )


def make_sync(
    settings: Settings, store: SqliteStore, hooks: Hooks, busy: Callable[[], bool] | None = None
) -> SyncService | None:
    """store.backend = "supabase": the outbox, mirror and leases (tradebotd.sync.service)."""
    if settings.store.backend != "supabase":
        uninstall_outbox(store.path)
        return None
    from .sync.service import SyncService  # the supabase client: only imported when used

    return SyncService(
        settings,
        on_strategies_changed=hooks.resync,
        on_cursor=hooks.leased_cursor,
        on_takeover=hooks.taken_over,
        on_portfolio=hooks.portfolio_added,
        market_now_ms=hooks.server_now_ms,
        busy=busy,
        store_connection=store.connection,
    )
