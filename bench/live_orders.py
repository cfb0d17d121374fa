"""Issue 8: live orders. Time from a closed kline arriving to its orders' requests leaving the
daemon, with 1 and 100 strategies trading on one candle; and the decision latency of strategies
that do not trade, with and without 100 orders in flight.

The real daemon (feed, engine, JS sandboxes, the live broker on the real ccxt, SQLite writer)
trades a ``live`` portfolio against the local Binance spot stand-in
(``tradebotd.replay.exchange``), served with the candles by the replay server in a process of its
own (``tradebotd replay-server --exchange``'s setup: HMAC signatures and ``recvWindow`` checked,
orders matched at the replayed price, fees in the quote asset), with its rate limits raised far
above Binance's (see ``LIMITS``): candles are released back to back here, so a minute's weight
and the account's 50 orders per 10 s would otherwise be spent in a second, and the request
budget would pace the orders (as it must on the real exchange: with Binance's limits only 45 of
a candle's 100 orders, 90% of 50, could leave within 10 s of one account, so the 100-order
target is about the daemon's own path on an exchange that takes them, as here). The daemon
sizes its request budget from the stand-in's ``exchangeInfo`` as it does from Binance's, and
runs with ``exchange.max_in_flight = 100`` (``IN_FLIGHT``; the default 50 is Binance's order
limit): all of a candle's orders at once. In the daemon process every
order request is stamped with ``time.monotonic_ns()`` right before ccxt hands it to aiohttp
(``ClientSession._request``, a POST to ``/api/v3/order``); the stand-in stamps its arrival (the
same clock: ``CLOCK_MONOTONIC`` is system-wide); the kline's arrival is the feed's stamp
(``received_ns``, what the engine gets). A sell first reads the account's free balance (the live
broker sizes exits from it), so sells carry one more round trip than buys.

* **kline -> order sent**: each candle released alone; every trader buys on one candle and sells
  on the next, so every candle has 1 (or 100) orders; the next candle is released only when the
  previous one's orders are all answered and recorded. One sample per order; for 100 also the
  last order of each candle (when the whole candle's orders are out). A candle's orders wait for
  their intents' commit (intent first, one commit for the candle's decisions and intents), then
  go out at once, up to ``IN_FLIGHT``; a sell candle's orders wait for one balance read first.
* **decisions while orders are in flight**: 100 traders and 100 strategies that never trade on
  one stream; traders buy on one candle in 8 and sell four candles later; the candles in between
  are hold candles for everyone, and their kline -> recorded latency is measured (the daemon's
  ``LatencyRecorder``) with every order answered before (no orders in flight), and with the
  stand-in holding each order's answer for ``DELAY_S`` (the hold candles released while the
  trade candle's 100 orders are outstanding at the stand-in).

This 2-vCPU VM is shared: compare with the machine reference row and run it more than once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from tradebotd.config import DaemonSettings, ExchangeSettings, LogSettings, MarketSettings, Settings, StoreSettings
from tradebotd.daemon import Daemon
from tradebotd.model import Candle, StreamKey
from tradebotd.replay.demo import generate
from tradebotd.replay.exchange import ExchangeServer, RateLimits
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer
from tradebotd.store.sqlite import SqliteStore
from tradebotd.testing import until_stored

from .harness import log_to_devnull
from .rows import Row, median, percentile

SECTION = "live orders (issue 8)"
KEY = StreamKey("BTCUSDT", "1m")
PAST = 200
HISTORY = 50
ORDER_PATH = "/api/v3/order"
# Binance lets one account place 50 orders per 10 s (and an IP spend 6000 weight a
# minute): 100 strategies trading on one candle would be paced over 20 s by the
# request budget, and candles released back to back (one a second, not one a minute)
# spend a minute's weight in seconds. Raised here, so that the bench measures the
# daemon's path, not the account's limits (which the request budget sizes itself to).
LIMITS = RateLimits(
    weight_per_minute=100_000_000, orders_per_10s=1_000_000, orders_per_day=100_000_000, raw_requests_per_5m=100_000_000
)
IN_FLIGHT = 100  # exchange.max_in_flight here (default 50)
DELAY_S = 0.25  # the stand-in's answer delay while orders are in flight

# Buys on candles whose minute % period == 0, sells on those at period / 2; holds otherwise.
TRADER = """
function tradingStrategy({ candles, position, parameters }) {
  const n = Math.floor(candles[candles.length - 1].time / 60000) % parameters.period;
  if (n === 0 && !position) return { signal: 'buy', amount: parameters.amount };
  if (n === parameters.period / 2 && position) return { signal: 'sell' };
  return { signal: 'hold' };
}
"""
WATCHER = "function tradingStrategy() { return { signal: 'hold' }; }\n"


# -- the replay server and exchange stand-in's process ------------------------------------------


class _Exchange(ExchangeServer):
    """The stand-in, stamping each new order's arrival and holding its answer ``delay_s``."""

    delay_s = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[str, int]] = []
        self.answered = 0
        self.arrived = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        order = request.method == "POST" and request.path.endswith(ORDER_PATH)
        arrived = time.monotonic_ns()
        response = await super()._handle(request)
        if order:
            body = (await request.read()).decode()
            coid = (parse_qs(body).get("newClientOrderId") or [""])[0]
            self.arrivals.append((coid, arrived))
            self.arrived.set()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)  # processed (the order exists), answered later
            self.answered += 1
        return response


def _serve(
    conn: multiprocessing.connection.Connection, key: str, secret: str, candles: int, limits: RateLimits
) -> None:
    asyncio.run(_serve_async(conn, key, secret, candles, limits))


async def _serve_async(
    conn: multiprocessing.connection.Connection, key: str, secret: str, candles: int, limits: RateLimits
) -> None:
    loop = asyncio.get_running_loop()
    series = Series(KEY, tuple(generate(PAST + candles, seed=8)))
    server = ReplayServer([series], past=PAST, ping_interval_s=None)
    exchange = cast(
        _Exchange,
        _Exchange.for_replay(  # mounted before the replay server starts
            server,
            api_keys={key: secret},
            balances={"USDT": Decimal(10_000_000)},
            fee_mode="quote",
            limits=limits,
        ),
    )
    async with server:
        conn.send(("port", server.port, exchange.rest_url))
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            match command:
                case ("stop",):
                    break
                case ("advance", n):
                    conn.send(await server.advance(n))
                case ("delay", seconds):
                    exchange.delay_s = seconds
                    conn.send(True)
                case ("arrivals",):
                    arrivals, exchange.arrivals = exchange.arrivals, []
                    conn.send(arrivals)
                case ("wait_arrivals", n):
                    async with asyncio.timeout(60):
                        while len(exchange.arrivals) < n:
                            exchange.arrived.clear()
                            await exchange.arrived.wait()
                    conn.send(len(exchange.arrivals))
                case ("answered",):
                    conn.send(exchange.answered)


class _StandIn:
    """The bench's end of the stand-in's process."""

    def __init__(self, candles: int, limits: RateLimits = LIMITS) -> None:
        self.key, self.secret = secrets.token_hex(32), secrets.token_hex(32)
        context = multiprocessing.get_context("spawn")
        self._conn, theirs = context.Pipe()
        self._process = context.Process(target=_serve, args=(theirs, self.key, self.secret, candles, limits),
                                             daemon=True)
        self._process.start()
        theirs.close()
        if not self._conn.poll(120):
            raise RuntimeError("the stand-in did not start within 120 s")
        _, port, self.exchange_url = self._conn.recv()
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.rest_url = f"http://127.0.0.1:{port}"

    async def ask(self, *command: object) -> Any:
        self._conn.send(command)
        return await asyncio.get_running_loop().run_in_executor(None, self._conn.recv)

    def close(self) -> None:
        self._conn.send(("stop",))
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


# -- the daemon's process -------------------------------------------------------------------------


class _Sends:
    """Every order request's send time in this process, by client order id."""

    def __init__(self) -> None:
        self._raw: list[tuple[object, int]] = []
        self._original: Callable[..., Awaitable[aiohttp.ClientResponse]] | None = None

    @property
    def sent(self) -> list[tuple[str, int]]:
        """(client order id, send time) of each order request, in sending order."""
        out = []
        for data, stamp in self._raw:
            text = data.decode() if isinstance(data, bytes) else str(data or "")
            out.append(((parse_qs(text).get("newClientOrderId") or [""])[0], stamp))
        return out

    def clear(self) -> None:
        self._raw.clear()

    def __enter__(self) -> _Sends:
        original = self._original = aiohttp.ClientSession._request
        raw = self._raw

        async def _request(session: aiohttp.ClientSession, method: str, url: Any, **kwargs: Any) -> Any:
            if method == "POST" and str(url).endswith(ORDER_PATH):
                # The stamp and the body only: parsed afterwards (``sent``), so the measuring
                # adds no work to the orders that are still being sent.
                raw.append((kwargs.get("data"), time.monotonic_ns()))
            return await original(session, method, url, **kwargs)

        aiohttp.ClientSession._request = _request  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._original is not None:
            aiohttp.ClientSession._request = self._original  # type: ignore[method-assign,assignment]


def _settings(stand_in: _StandIn, db: Path, in_flight: int = IN_FLIGHT) -> Settings:
    return Settings(
        market=MarketSettings(
            ws_url=stand_in.ws_url,
            rest_url=stand_in.rest_url,
            history=HISTORY,
            max_candle_lag_s=0,  # replayed candles carry historical times
            start_window_s=0,  # the tape stands still: no evaluation of the last warm-up candle
            reconnect_min_s=0.05,
            reconnect_max_s=1.0,
        ),
        exchange=ExchangeSettings(
            mode="testnet",
            rest_url=stand_in.exchange_url,
            api_key=SecretStr(stand_in.key),
            api_secret=SecretStr(stand_in.secret),
            poll_s=3600.0,  # no polling inside a measurement: orders are answered by their requests
            reconcile_s=3600.0,
            # All of a candle's 100 orders at once: the stand-in's limits allow it (see LIMITS).
            # The default, 50, is Binance's 50 orders per 10 s.
            max_in_flight=in_flight,
        ),
        store=StoreSettings(path=db),
        daemon=DaemonSettings(),
        log=LogSettings(format="json"),
    )


class _Run:
    """A daemon trading a live portfolio against the stand-in."""

    def __init__(
        self, stand_in: _StandIn, db: Path, traders: int, watchers: int, period: int, in_flight: int = IN_FLIGHT
    ) -> None:
        self.stand_in = stand_in
        # The portfolio and strategies first: the daemon builds its brokers from the store's portfolios.
        store = SqliteStore(db)
        store.migrate()
        live = store.add_portfolio(name="live", user_id="bench", type="live", cash=Decimal(0), currency="USDT")
        self.traders = [
            store.add_strategy(
                name=f"trader-{i}", user_id="bench", code=TRADER, kind="js", asset=KEY.symbol, interval=KEY.interval,
                parameters={"period": period, "amount": 0.001}, portfolio_id=live, status="running",
            )
            for i in range(traders)
        ]  # fmt: skip
        self.watchers = [
            store.add_strategy(
                name=f"watcher-{i}", user_id="bench", code=WATCHER, kind="js", asset=KEY.symbol,
                interval=KEY.interval, parameters={}, portfolio_id=live, status="running",
            )
            for i in range(watchers)
        ]  # fmt: skip
        store.close()
        self.daemon = Daemon(_settings(stand_in, db, in_flight))
        self.arrived_ns: dict[int, int] = {}  # candle open time -> its final kline's arrival
        self.period = period

    async def start(self) -> None:
        daemon = self.daemon
        engine = daemon.engine
        on_closed = engine.on_closed
        arrived = self.arrived_ns

        async def stamped(candle: Candle, received_ns: int) -> None:
            arrived.setdefault(candle.open_time, received_ns)
            await on_closed(candle, received_ns)

        engine.on_closed = stamped  # type: ignore[method-assign]
        await daemon.start()
        everyone = set(self.traders) | set(self.watchers)
        await until_stored(daemon, lambda: everyone <= set(daemon.store.cursors()), limit_s=180)

    def last_candle(self) -> int:
        """The newest candle every strategy's decision is recorded for. One cheap query: the
        waits below run on the daemon's event loop, and a slow predicate after a commit would
        delay what is measured (the orders' dispatch right after the intents' commit)."""
        rows = self.daemon.store.execute("SELECT min(last_candle_time) AS t FROM strategy_cursors")
        return int(rows[0]["t"])

    async def candle(self, orders_by_then: int | None = None) -> int:
        """Release one candle; return its open time once every strategy's decision is recorded.
        ``orders_by_then``: first wait (in the stand-in's process) until it has received that
        many orders since its arrivals were last taken: the candle's orders are all sent."""
        daemon, before = self.daemon, self.last_candle()
        await self.stand_in.ask("advance", 1)
        if orders_by_then is not None:
            await self.stand_in.ask("wait_arrivals", orders_by_then)
        await until_stored(daemon, lambda: self.last_candle() > before, limit_s=60)
        return self.last_candle()

    def orders_done(self, candle_time: int) -> bool:
        rows = self.daemon.store.execute(
            "SELECT count(*) AS n, sum(status IN ('filled', 'cancelled', 'rejected')) AS done FROM orders "
            "WHERE candle_time = ?",
            (candle_time,),
        )
        return bool(rows[0]["n"]) and rows[0]["n"] == rows[0]["done"]

    async def settle(self, candle_time: int) -> None:
        await until_stored(self.daemon, lambda: self.orders_done(candle_time), limit_s=120)

    def trades_on(self, candle_time: int) -> bool:
        return candle_time // 60_000 % self.period in (0, self.period // 2)

    async def to_trade_candle(self) -> None:
        """Release hold candles until the next one is a trade candle."""
        while not self.trades_on(self.last_candle() + 60_000):
            await self.candle()

    async def close(self) -> None:
        await self.daemon.shutdown()


@dataclass(frozen=True)
class _Sent:
    sent: list[float]  # per order: kline -> request sent (ms)
    arrived: list[float]  # per order: kline -> arrived at the stand-in (ms)
    first: list[float]  # per candle: kline -> its first order sent
    last: list[float]  # per candle: kline -> its last order sent
    committed: list[float]  # per candle: kline -> its batch (decisions and intents) committed
    unfilled: int


async def _send_latency(traders: int, candles: int) -> _Sent:
    stand_in = _StandIn(candles + 40)
    try:
        with tempfile.TemporaryDirectory() as tmp, _Sends() as sends:
            run = _Run(stand_in, Path(tmp) / "bench.db", traders, 0, period=2)
            await run.start()
            for _ in range(4):  # warm-up (not measured): the first orders open connections, load paths
                await run.settle(await run.candle())
            sends.clear()
            await stand_in.ask("arrivals")
            run.daemon.latency.clear()
            times = []
            for i in range(candles):
                t = await run.candle(orders_by_then=traders * (i + 1))
                await run.settle(t)
                times.append(t)
            arrivals = dict(await stand_in.ask("arrivals"))
            committed = [ns / 1e6 for ns in run.daemon.latency.samples_ns]
            unfilled = run.daemon.store.execute(
                "SELECT count(*) AS n FROM orders WHERE status != 'filled' AND candle_time >= ?", (times[0],)
            )[0]["n"]
            await run.close()
    finally:
        stand_in.close()
    sent_ms: list[float] = []
    arrived_ms: list[float] = []
    by_candle: dict[int, list[float]] = {}
    for coid, ns in sends.sent:
        candle_time = int(coid.split("-")[1])
        start = run.arrived_ns[candle_time]
        ms = (ns - start) / 1e6
        sent_ms.append(ms)
        by_candle.setdefault(candle_time, []).append(ms)
        if coid in arrivals:
            arrived_ms.append((arrivals[coid] - start) / 1e6)
    first = [min(v) for v in by_candle.values()]
    last = [max(v) for v in by_candle.values()]
    return _Sent(sent_ms, arrived_ms, first, last, committed, int(unfilled))


@dataclass(frozen=True)
class _AtLimits:
    on_time: int  # sent within 1 s of the kline
    late: list[float]  # kline -> sent (s) of those sent later
    refused: int  # rejected unsent: the request budget said wait longer than exchange calls may
    reason: str


async def _at_binance_limits() -> _AtLimits:
    """100 strategies trading on one candle on one account at Binance's own limits (the
    stand-in's defaults: 50 orders per 10 s, 6000 weight a minute), with the default
    ``exchange.max_in_flight`` (50): what the request budget lets out, and when."""
    stand_in = _StandIn(40, RateLimits())
    try:
        with tempfile.TemporaryDirectory() as tmp, _Sends() as sends:
            run = _Run(stand_in, Path(tmp) / "bench.db", 100, 0, period=2, in_flight=50)
            await run.start()
            sends.clear()
            traded = await run.candle()
            await run.settle(traded)
            start = run.arrived_ns[traded]
            sent = [(ns - start) / 1e9 for coid, ns in sends.sent if int(coid.split("-")[1]) == traded]
            rows = run.daemon.store.execute(
                "SELECT error FROM orders WHERE candle_time = ? AND status = 'rejected'", (traded,)
            )
            await run.close()
    finally:
        stand_in.close()
    reason = str(rows[0]["error"] or "") if rows else ""
    return _AtLimits(sum(1 for s in sent if s < 1), [s for s in sent if s >= 1], len(rows), reason)


async def _in_flight(cycles: int) -> tuple[list[float], list[float], list[int]]:
    """Hold-candle latencies (ms) with no orders in flight, and with the trade candle's orders
    in flight; how many orders were still unanswered after each in-flight measurement."""
    stand_in = _StandIn(cycles * 2 * 8 + 60)
    idle_ms: list[float] = []
    busy_ms: list[float] = []
    outstanding: list[int] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run = _Run(stand_in, Path(tmp) / "bench.db", 100, 100, period=8)
            daemon = run.daemon
            await run.start()
            for phase in ("idle", "busy", "idle", "busy"):  # interleaved: the machine's speed drifts
                await stand_in.ask("delay", DELAY_S if phase == "busy" else 0.0)
                for _ in range(cycles // 2):
                    await run.to_trade_candle()
                    answered = await stand_in.ask("answered")
                    await stand_in.ask("arrivals")
                    traded = await run.candle()
                    if phase == "idle":
                        await run.settle(traded)
                    else:
                        await stand_in.ask("wait_arrivals", min(IN_FLIGHT, 100))  # at the stand-in
                    daemon.latency.clear()
                    for _ in range(3):
                        await run.candle()
                    samples = [ns / 1e6 for ns in daemon.latency.samples_ns]
                    if phase == "busy":
                        outstanding.append(100 - (await stand_in.ask("answered") - answered))
                        busy_ms.extend(samples)
                        await run.settle(traded)
                    else:
                        idle_ms.extend(samples)
            await run.close()
    finally:
        stand_in.close()
    return idle_ms, busy_ms, outstanding


def run(*, candles: int = 100, cycles: int = 10) -> list[Row]:
    log_to_devnull()
    rows: list[Row] = []
    for traders, target in ((1, 5.0), (100, 25.0)):
        r = asyncio.run(_send_latency(traders, candles))
        label = f"{traders} strateg{'y' if traders == 1 else 'ies'}"
        note = f"{len(r.sent)} orders over {candles} candles" + (f", {r.unfilled} not filled" if r.unfilled else "")
        if traders > 1:
            note += f"; max_in_flight {IN_FLIGHT}, the stand-in's order limit raised (Binance's: 50 per 10 s)"
        rows.append(Row(SECTION, f"kline->order sent, {label}, median", median(r.sent), "ms"))
        rows.append(Row(SECTION, f"kline->order sent, {label}, p99", percentile(r.sent, 99), "ms", target, note=note))
        rows.append(Row(SECTION, "  arrived at the stand-in, median", median(r.arrived), "ms"))
        rows.append(Row(SECTION, "  arrived at the stand-in, p99", percentile(r.arrived, 99), "ms"))
        rows.append(
            Row(SECTION, "  kline->decisions and intents committed, median", median(r.committed), "ms",
                note="the commit the orders wait for (intent first)")
        )  # fmt: skip
        if traders > 1:
            rows.append(Row(SECTION, "  first order of the candle sent, median", median(r.first), "ms"))
            rows.append(Row(SECTION, "  last order of the candle sent, median", median(r.last), "ms"))
            rows.append(Row(SECTION, "  last order of the candle sent, p99", percentile(r.last, 99), "ms"))
    limited = asyncio.run(_at_binance_limits())
    late = f"{len(limited.late)} sent {min(limited.late):.1f}-{max(limited.late):.1f} s late" if limited.late else ""
    why = "request budget exhausted" if "request budget exhausted" in limited.reason else limited.reason[:60]
    note = (
        "100 strategies, one account, Binance's limits (50 orders per 10 s; the budget keeps 90%), max_in_flight 50: "
        f"{limited.refused} refused unsent ({why} after waiting 5 s)" + (f", {late}" if late else "")
    )
    rows.append(
        Row(SECTION, "orders sent within 1 s of the kline at Binance's order limit", limited.on_time, "orders",
            note=note)
    )  # fmt: skip
    idle, busy, outstanding = asyncio.run(_in_flight(cycles))
    note = f"100 traders + 100 holders on one stream; {len(idle)} hold candles"
    rows.append(Row(SECTION, "hold candle kline->recorded, no orders in flight, median", median(idle), "ms", note=note))
    rows.append(Row(SECTION, "hold candle kline->recorded, no orders in flight, p99", percentile(idle, 99), "ms"))
    note = (
        f"{len(busy)} hold candles; stand-in answers after {DELAY_S:g} s; "
        f"unanswered after each: min {min(outstanding, default=0)} of 100"
    )
    name = "hold candle kline->recorded, 100 orders in flight"
    rows.append(Row(SECTION, f"{name}, median", median(busy), "ms", note=note))
    rows.append(Row(SECTION, f"{name}, p99", percentile(busy, 99), "ms"))
    return rows
