"""The aiohttp shell of the exchange stand-in: bytes in, :class:`ExchangeApi` decides, bytes out.

Two ways to serve it:

* standalone on its own port (``async with ExchangeServer(...)``), prices moved by ``set_price``;
* on a :class:`~tradebotd.replay.server.ReplayServer`'s port under ``/exchange`` (``attach``), prices
  moved by the replay's kline updates, so one process serves market data and the exchange. The
  prefix keeps the exchange's ``/api/v3/time`` (the exchange clock, which signatures are checked
  against) apart from the replay's (the replay clock, in the past).

The shell passes the raw query string (``request.raw_path``; aiohttp's ``query_string`` is
percent-decoded and would break signatures over ids such as ``bot:grid/1.a``) and the raw body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Self

import orjson
import structlog
from aiohttp import web

from tradebotd.model import StreamKey
from tradebotd.replay.exchange.api import ExchangeApi, LoggedRequest, RateLimits, RestRequest
from tradebotd.replay.exchange.matching import Account, FeeMode, Trade
from tradebotd.replay.exchange.spec import SymbolSpec
from tradebotd.replay.tape import ReplayTape, Step

if TYPE_CHECKING:
    from tradebotd.replay.server import ReplayServer

__all__ = ["PREFIX", "ExchangeServer"]

log = structlog.get_logger(__name__)

PREFIX = "/exchange"  # where the exchange lives on a replay server's port


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class ExchangeServer:
    """A Binance spot REST stand-in for one account with ``balances`` on ``specs``.

    ``api_keys`` maps API keys to secrets. ``clock`` (ms) is the exchange's time, ``limits_clock``
    (seconds) times weight windows and bans; both default to the real clocks."""

    def __init__(
        self,
        specs: Sequence[SymbolSpec],
        *,
        api_keys: Mapping[str, str],
        balances: Mapping[str, Decimal],
        prices: Mapping[str, Decimal] | None = None,
        fee_rate: Decimal = Decimal("0.001"),
        fee_mode: FeeMode = "received",
        limits: RateLimits = RateLimits(),  # noqa: B008 - frozen
        ban_s: float = 120.0,
        clock: Callable[[], int] = wall_clock_ms,
        limits_clock: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        port: int = 0,
        keep_alive: bool = True,
    ) -> None:
        """``keep_alive=False`` closes every connection after its answer (as some proxies do), so
        a client never reuses one: its next request opens a new connection."""
        self.account = Account(
            specs, balances=balances, clock=clock, fee_rate=fee_rate, fee_mode=fee_mode, prices=prices
        )
        self.api = ExchangeApi(
            self.account, api_keys=api_keys, clock=clock, limits_clock=limits_clock, limits=limits, ban_s=ban_s
        )
        self.faults = self.api.faults
        self.prefix = ""
        self._host = host
        self._requested_port = port
        self._keep_alive = keep_alive
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._changed = asyncio.Event()
        self._release = asyncio.Event()
        self.held = 0  # requests processed but never answered (timeout_after_accept), so far

    # -- lifecycle -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application (every path goes to the API, which answers 404 for unknown ones)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def start(self) -> None:
        """Listen on our own port (standalone)."""
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._requested_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._base_url = f"http://{self._host}:{int(runner.addresses[0][1])}"
        log.info("exchange stand-in listening", url=self._base_url, symbols=sorted(self.account.specs))

    def attach(self, replay: ReplayServer) -> None:
        """Serve on ``replay``'s port under ``/exchange`` and follow its kline prices (call before
        the replay starts)."""
        self.prefix = PREFIX
        self._replay = replay
        replay.mount(self)

    async def close(self) -> None:
        self._release.set()  # held requests end (their clients have long given up)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def rest_url(self) -> str:
        """The base URL for ``exchange.rest_url`` (ccxt then calls ``<rest_url>/api/v3/...``)."""
        if self.prefix:
            return self._replay.rest_url + self.prefix
        if self._base_url is None:
            raise RuntimeError("ExchangeServer is not started")
        return self._base_url

    @classmethod
    def for_replay(
        cls, replay: ReplayServer, *, specs: Sequence[SymbolSpec] | None = None, **kwargs: object
    ) -> ExchangeServer:
        """An exchange on ``replay``'s symbols (tick sizes from the data), priced at the replay's
        current closes, attached to it."""
        tape = replay.tape
        chosen = list(specs) if specs is not None else [SymbolSpec.for_series(s) for s in replay.series.values()]
        prices = {spec.symbol: p for spec in chosen if (p := _current_close(tape, spec.symbol)) is not None}
        server = cls(chosen, prices=prices, **kwargs)  # type: ignore[arg-type]
        server.attach(replay)
        return server

    # -- driving prices --------------------------------------------------------------------------

    def set_price(self, symbol: str, price: Decimal) -> list[Trade]:
        """Move ``symbol``'s market price: stops trigger and orders fill (see ``matching``)."""
        trades = self.account.set_price(symbol, price)
        self._notify()
        return trades

    def on_step(self, tape: ReplayTape, step: Step) -> None:
        """The replay moved: every symbol with a kline in this step trades at its close so far."""
        for symbol in self.account.specs:
            event = tape.kline_event(StreamKey(symbol, tape.base_interval), step)
            if event is not None:
                body = event["k"]
                assert isinstance(body, dict)
                self.account.set_price(symbol, Decimal(str(body["c"])))
        self._notify()

    # -- observing -------------------------------------------------------------------------------

    @property
    def requests(self) -> list[LoggedRequest]:
        """Every request answered (or held) so far, oldest first (bounded)."""
        return list(self.api.requests)

    def requests_to(self, path: str, method: str | None = None) -> list[LoggedRequest]:
        return [r for r in self.api.requests if r.path == path and (method is None or r.method == method)]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; checked after every request and price move. Bound it
        with ``asyncio.timeout``."""
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- HTTP ------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path, _, query = request.raw_path.partition("?")
        path = raw_path.removeprefix(self.prefix) if self.prefix else raw_path
        rest_request = RestRequest(
            method=request.method,
            path=path,
            query=query,
            body=await request.read(),
            headers={name.lower(): value for name, value in request.headers.items()},
        )
        response = self.api.handle(rest_request)
        self._notify()
        if response.action == "hold":
            self.held += 1
            self._notify()
            await self._release.wait()
        if response.action == "truncate":
            body = orjson.dumps(response.body)
            started = web.StreamResponse(status=200, headers=response.headers)
            started.content_type, started.content_length = "application/json", len(body)
            await started.prepare(request)
            await started.write(body[: len(body) // 2])
        if response.action != "respond":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing more to say on a dead connection
        if response.body is None:
            answer = web.Response(status=response.status, headers=response.headers)
        else:
            answer = web.Response(
                body=orjson.dumps(response.body),
                status=response.status,
                content_type="application/json",
                headers=response.headers,
            )
        if not self._keep_alive:
            answer.force_close()
        return answer


def _current_close(tape: ReplayTape, symbol: str) -> Decimal | None:
    rows = tape.rows(StreamKey(symbol, tape.base_interval), limit=1)
    return Decimal(str(rows[-1][4])) if rows else None
