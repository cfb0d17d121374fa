"""The daemon's operations edge, wired: systemd notifications, the progress watchdog, ``/healthz``,
``/metrics``, ``/status`` and the manual trigger, over the status :class:`~.status.Sources` the
composition root (:mod:`tradebotd.app`) gathers.

- ``READY=1`` (with a ``STATUS=``) once the daemon is ready: strategies loaded and warm, the feed
  connected (:meth:`OpsService.mark_ready`).
- Every half ``$WATCHDOG_USEC`` (systemd's advice), :meth:`OpsService.watch` judges the pipeline
  with :func:`~.health.assess` and sends ``WATCHDOG=1`` only while nothing that a restart could
  cure is wrong: a stalled part (feed frames, evaluations, commits: :class:`~.sdnotify.
  ProgressWatchdog`), a stream whose candles stopped, an evaluation backlog. An outbox over its
  threshold, an exchange ban or a crashing task turn ``/healthz`` red but keep the pings (a
  restart cures none of them; the supervisor has its own limit). ``STATUS=`` every time: the
  strategies running, the last candle's age, orders today, the outbox depth, what is stalled.
- ``STOPPING=1`` when the shutdown starts.

Without ``$NOTIFY_SOCKET`` nothing is sent, and :meth:`watch` is not needed; the HTTP server runs
either way (``http.listen``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

import structlog

from tradebotd.engine.counters import ManualRun

from .health import Health, HealthPolicy, Problem, assess
from .http import OpsServer, Trigger, TriggerResult, cron_secret
from .metrics import build_registry
from .sdnotify import Notifier, ProgressWatchdog, watchdog_interval_s
from .status import Sources, snapshot

__all__ = ["RESTART_CURES", "EngineTrigger", "OpsService", "status_line"]

log = structlog.get_logger(__name__)

# Problems a restart by systemd's watchdog may cure: only these withhold WATCHDOG=1.
RESTART_CURES = frozenset({"stalled", "stream", "evaluation"})
STATUS_INTERVAL_S = 10.0  # STATUS= without a watchdog (NOTIFY_SOCKET set, WatchdogSec= not)


def status_line(
    sources: Sources, health: Health, *, orders_today: int | None, stalled: Sequence[Problem] = ()
) -> str:
    """``systemctl status``'s one line: ``3 strategies running, last candle 12 s ago, 4 orders
    today, outbox 0`` (and ``; stalled: feed`` while pings are withheld)."""
    parts = []
    engine = sources.engine
    if engine is not None:
        parts.append(f"{engine.strategies_running} strategies running")
    ages = [age for _, age in health.streams if age is not None]
    parts.append(f"last candle {min(ages):.0f} s ago" if ages else "no candle yet")
    if orders_today is not None:
        parts.append(f"{orders_today} orders today")
    parts.append(f"outbox {sources.outbox.depth}" if sources.outbox is not None else "outbox -")
    line = ", ".join(parts)
    if stalled:
        line += "; stalled: " + ", ".join(sorted({p.subject for p in stalled}))
    elif not health.ok:
        line += "; unhealthy: " + ", ".join(sorted({p.check for p in health.problems}))
    return line


class OpsService:
    """One per daemon. ``environ`` is read once (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``,
    ``CRON_SECRET``); the notify variables are removed from it so evaluation processes do not
    inherit them. ``ConfigError`` for an ``http.listen`` that must not be served."""

    def __init__(
        self,
        sources: Sources,
        *,
        listen: tuple[str, int],
        policy: HealthPolicy,
        progress_timeout_s: float,
        server_now_ms: Callable[[], int],
        trigger: Trigger | None,
        status: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
        orders_today: Callable[[], int] | None = None,
        environ: MutableMapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        interval = watchdog_interval_s(env)
        self.notifier = Notifier.from_environ(env, unset=True)
        self.ping_interval_s = None if interval is None else interval / 2
        self.sources = sources
        self.policy = policy
        self.watchdog = ProgressWatchdog(progress_timeout_s)
        self._server_now_ms = server_now_ms
        self._orders_today = orders_today
        self._clock = clock  # the watchdog's and the evaluation wait's (time.monotonic's scale)
        self.ready = False
        self.withheld: tuple[Problem, ...] = ()  # what keeps WATCHDOG=1 back now
        self.registry = build_registry(sources, server_now_ms=server_now_ms, health=self.health)
        host, port = listen
        self.server = OpsServer(
            host=host,
            port=port,
            health=self.health,
            registry=self.registry,
            trigger=trigger,
            secret=cron_secret(env),
            status=status,
        )

    def health(self) -> Health:
        now = self._clock()
        snap = snapshot(self.sources, watchdog=self.watchdog, now_s=now, now_ns=int(now * 1e9), ready=self.ready)
        return assess(snap, self._server_now_ms(), self.policy)

    def status_line(self, health: Health | None = None) -> str:
        health = self.health() if health is None else health
        today = None if self._orders_today is None else self._orders_today()
        return status_line(self.sources, health, orders_today=today, stalled=self.withheld)

    async def start(self) -> None:
        """Bind the HTTP server (``/healthz`` answers 503 ``startup`` until ready)."""
        await self.server.start()

    def mark_ready(self) -> None:
        self.ready = True
        if self.notifier is not None:
            self.notifier.ready(self.status_line())
            log.info("notified systemd: READY=1", watchdog_interval_s=self.ping_interval_s)

    @property
    def watching(self) -> bool:
        return self.notifier is not None

    async def watch(self) -> None:
        """Ping and report until cancelled (a supervised task, started once ready)."""
        notifier = self.notifier
        assert notifier is not None
        interval = self.ping_interval_s or STATUS_INTERVAL_S
        while True:
            self.check(notifier)
            await asyncio.sleep(interval)

    def check(self, notifier: Notifier) -> Health:
        """One round of :meth:`watch`: judge, ping or withhold, report."""
        health = self.health()
        blocking = tuple(p for p in health.problems if p.check in RESTART_CURES)
        if {(p.check, p.subject) for p in blocking} != {(p.check, p.subject) for p in self.withheld}:
            if blocking:
                log.error(
                    "pipeline not progressing; withholding systemd watchdog pings",
                    problems=[p.as_json() for p in blocking],
                )
            else:
                log.info(
                    "pipeline progressing again; watchdog pings resume",
                    was=[f"{p.check}:{p.subject}" for p in self.withheld],
                )
        self.withheld = blocking
        if not blocking and self.ping_interval_s is not None:
            notifier.watchdog()
        notifier.status(self.status_line(health))
        return health

    def stopping(self) -> None:
        if self.notifier is not None:
            self.notifier.stopping("stopping: finishing in-flight work and flushing writes")

    async def close(self) -> None:
        await self.server.close()
        if self.notifier is not None:
            self.notifier.close()


class EngineTrigger:
    """:class:`~.http.Trigger` over :meth:`tradebotd.engine.Engine.run_latest`."""

    def __init__(self, run_latest: Callable[[str | None], Awaitable[list[ManualRun] | None]]) -> None:
        self._run = run_latest

    async def run_all(self) -> Sequence[TriggerResult]:
        runs = await self._run(None)
        return [_result(r) for r in runs or ()]

    async def run_one(self, strategy_id: str) -> TriggerResult | None:
        runs = await self._run(strategy_id)
        return None if not runs else _result(runs[0])


def _result(run: ManualRun) -> TriggerResult:
    return TriggerResult(run.strategy_id, run.outcome, run.candle_time, run.signal, run.detail)
