"""The daemon's small HTTP server (``http.listen``, default ``127.0.0.1:8787``), a thin aiohttp
shell over pure parts:

- ``GET /healthz``: 200 while :func:`tradebotd.ops.health.assess` finds nothing stale, else 503;
  the JSON body names every problem (``{"status", "problems": [{"check", "subject", "detail"}],
  "streams"}``).
- ``GET /metrics``: the registry of :mod:`tradebotd.ops.metrics`, Prometheus text format.
- ``GET /status``: the JSON ``tradebotd status`` shows (strategies, feed, outbox, health); with
  ``CRON_SECRET`` set it needs the bearer token, like the trigger.
- ``POST /api/cron/strategies`` (the web app's existing call) and ``POST /strategies/{id}/run``:
  evaluate every running strategy, or one, on its latest closed candle through a :class:`Trigger`
  (the engine). The decision ids are the candle path's, so a trigger after the candle was
  evaluated changes nothing and an order is never placed twice. They need
  ``Authorization: Bearer <CRON_SECRET>``, compared in constant time; a wrong or missing secret
  gets 401 and evaluates nothing. Without ``CRON_SECRET`` in the environment they answer 404.

The server refuses to bind a non-loopback address without ``CRON_SECRET`` (:func:`check_exposure`):
a public ``/metrics`` and ``/healthz`` are a choice an operator makes by setting a secret, not a
default. Request lines and headers (4 KiB each, 32 headers) and bodies (16 KiB) are bounded.

Errors: :class:`tradebotd.errors.ConfigError` for an address that cannot be served (exposure
without a secret, a weak secret, the port in use); nothing else escapes a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from tradebotd.errors import ConfigError
from tradebotd.logs import mask_secrets, register_secret

from .health import Health

__all__ = [
    "CRON_SECRET_ENV",
    "OpsServer",
    "Trigger",
    "TriggerResult",
    "check_exposure",
    "cron_secret",
    "is_loopback",
]

log = structlog.get_logger(__name__)

CRON_SECRET_ENV = "CRON_SECRET"
CRON_SECRET_MIN_CHARS = 16
MAX_BODY_BYTES = 16 * 1024
MAX_LINE_BYTES = 4096  # request line, and each header line
MAX_HEADERS = 32


TriggerOutcome = Literal["evaluated", "already_evaluated", "no_candle", "error"]


@dataclass(frozen=True, slots=True)
class TriggerResult:
    """What a manual trigger did for one strategy."""

    strategy_id: str
    outcome: TriggerOutcome  # already_evaluated: the candle path got there first, nothing changed
    candle_time: int | None = None  # open time (ms) of the candle it was evaluated on
    signal: str | None = None  # buy | sell | hold, when evaluated
    detail: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "strategy_id": self.strategy_id,
            "outcome": self.outcome,
            "candle_time": self.candle_time,
            "signal": self.signal,
            "detail": None if self.detail is None else mask_secrets(self.detail),
        }


class Trigger(Protocol):
    """Evaluate strategies now, on their stream's latest closed candle, exactly as the candle
    path would (same cursor, same client order ids). The engine implements it."""

    async def run_all(self) -> Sequence[TriggerResult]: ...

    async def run_one(self, strategy_id: str) -> TriggerResult | None:
        """``None``: no running strategy has this id (or unique id prefix)."""
        ...


def cron_secret(environ: Mapping[str, str]) -> str | None:
    """``$CRON_SECRET``, registered so it never reaches a log line; ``None`` when unset or empty.
    Environment only, like every secret. ``ConfigError`` if it is too short to be a secret."""
    value = environ.get(CRON_SECRET_ENV, "").strip()
    if not value:
        return None
    register_secret(value)
    if len(value) < CRON_SECRET_MIN_CHARS:
        raise ConfigError(
            f"{CRON_SECRET_ENV} is {len(value)} characters; use at least {CRON_SECRET_MIN_CHARS} random ones "
            "(e.g. openssl rand -hex 32)"
        )
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything


def check_exposure(host: str, port: int, secret: str | None) -> None:
    """``ConfigError`` for a non-loopback ``http.listen`` without ``CRON_SECRET``."""
    if secret is None and not is_loopback(host):
        raise ConfigError(
            f"http.listen = {host}:{port} is reachable from other machines, and {CRON_SECRET_ENV} is not set: "
            f"set {CRON_SECRET_ENV} in the environment (the trigger endpoints need it) or listen on 127.0.0.1"
        )


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def bearer_matches(header: str | None, secret_digest: bytes) -> bool:
    """``Authorization: Bearer <token>`` against the secret's SHA-256, in constant time (the
    digests have one length whatever the token's, so not even the length leaks)."""
    if header is None:
        return False
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(_digest(token.strip()), secret_digest)


def _json(body: object, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


class OpsServer:
    """``start()`` binds (errors are clear ``ConfigError``s), ``close()`` stops; no task of its own."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        health: Callable[[], Health],
        registry: CollectorRegistry,
        trigger: Trigger | None,
        secret: str | None,
        status: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
    ) -> None:
        check_exposure(host, port, secret)
        self._host, self._port = host, port
        self._health = health
        self._registry = registry
        self._trigger = trigger
        self._status = status
        self._secret_digest = None if secret is None else _digest(secret)
        self._trigger_lock = asyncio.Lock()  # one trigger at a time; a second one waits its turn
        self._runner: web.AppRunner | None = None
        self.port: int | None = None  # the bound port (http.listen may say 0)

        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status_json)
        app.router.add_post("/api/cron/strategies", self._run_all)
        app.router.add_post("/strategies/{id}/run", self._run_one)
        self._app = app

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        runner = web.AppRunner(
            self._app,
            access_log=None,  # a line per health check every few seconds is noise; triggers log themselves
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            max_headers=MAX_HEADERS,
            keepalive_timeout=15,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"http.listen = {self._host}:{self._port}: cannot listen: {exc.strerror or exc}"
            ) from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])  # the port actually bound when http.listen asks for 0
        log.info("http server listening", url=self.url, trigger=self._secret_digest is not None)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ----------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        health = self._health()
        return _json(health.as_json(), status=200 if health.ok else 503, headers={"Cache-Control": "no-store"})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status_json(self, request: web.Request) -> web.Response:
        """What ``tradebotd status`` shows. Strategy names and P&L are more private than
        metrics: with ``CRON_SECRET`` set it needs the bearer token too."""
        if self._status is None:
            return _json({"error": "not found"}, status=404)
        if self._secret_digest is not None and not bearer_matches(
            request.headers.get("Authorization"), self._secret_digest
        ):
            return _json(
                {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="tradebotd"'}
            )
        try:
            body = await self._status()
        except Exception:
            log.exception("status report failed")
            return _json({"error": "status failed; see the daemon's log"}, status=500)
        return _json(body, headers={"Cache-Control": "no-store"})

    async def _authorize(self, request: web.Request) -> web.Response | None:
        """The answer to send instead of running the trigger, or None to go ahead."""
        if self._secret_digest is None or self._trigger is None:
            return _json({"error": "not found"}, status=404)  # as if the route did not exist
        if not bearer_matches(request.headers.get("Authorization"), self._secret_digest):
            log.warning("trigger refused: wrong or missing bearer token", path=request.path, peer=request.remote)
            return _json(
                {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="tradebotd"'}
            )
        await request.read()  # bounded by client_max_size: 413 for a body over MAX_BODY_BYTES
        return None

    async def _run_all(self, request: web.Request) -> web.Response:
        refused = await self._authorize(request)
        if refused is not None:
            return refused
        assert self._trigger is not None
        try:
            async with self._trigger_lock:
                results = list(await self._trigger.run_all())
        except Exception:
            log.exception("manual trigger failed")
            return _json({"error": "trigger failed; see the daemon's log"}, status=500)
        summary = _summary(results)
        log.info("manual trigger: all running strategies", **{k: v for k, v in summary.items() if k != "results"})
        return _json(summary)

    async def _run_one(self, request: web.Request) -> web.Response:
        refused = await self._authorize(request)
        if refused is not None:
            return refused
        assert self._trigger is not None
        strategy_id = request.match_info["id"]
        try:
            async with self._trigger_lock:
                result = await self._trigger.run_one(strategy_id)
        except Exception:
            log.exception("manual trigger failed", strategy_id=strategy_id)
            return _json({"error": "trigger failed; see the daemon's log"}, status=500)
        if result is None:
            return _json({"error": f"no running strategy {strategy_id!r}"}, status=404)
        log.info("manual trigger: one strategy", strategy_id=result.strategy_id, outcome=result.outcome)
        return _json(_summary([result]))


def _summary(results: Sequence[TriggerResult]) -> dict[str, object]:
    counts = {outcome: 0 for outcome in ("evaluated", "already_evaluated", "no_candle", "error")}
    for result in results:
        counts[result.outcome] += 1
    return {"strategies": len(results), **counts, "results": [r.as_json() for r in results]}
