"""The daemon with store.backend = "supabase", end to end: the replay server as Binance, the real
daemon (feed, engine, JS sandbox, paper broker, SQLite store), the real supabase client, the
PostgREST stand-in on a real PostgreSQL as the Supabase project, and the web app played by a
Clerk user's JWT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from pydantic import SecretStr

from tests.e2e.conftest import HISTORY, PAST, reference_fills, wave_series
from tests.standins.postgrest import PostgrestStandin
from tradebotd.config import SandboxSettings, Settings, StoreSettings, WorkerSettings
from tradebotd.daemon import Daemon
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer
from tradebotd.store.sqlite import SqliteStore
from tradebotd.testing import replay_settings

from .conftest import ANON_KEY, SERVICE_KEY, client, user_jwt

EXAMPLE_TS = Path(__file__).resolve().parents[2] / "tradebotd" / "examples" / "sma_crossover.ts"
USER = "user_2trader"
PARAMS = {"fast": 5, "slow": 20, "amount": 0.01}
Events = Callable[[], asyncio.Event]


@pytest.fixture
def series() -> Series:
    return wave_series()


@pytest.fixture
async def server(series: Series) -> AsyncIterator[ReplayServer]:
    async with ReplayServer([series], past=PAST, ping_interval_s=None) as replay:
        yield replay


def sync_settings(
    server: ReplayServer, rest: PostgrestStandin, db: Path, *, worker: str = "w1", lease_s: float = 60
) -> Settings:
    store = StoreSettings(
        path=db, backend="supabase", supabase_url=rest.url, supabase_key=SecretStr(SERVICE_KEY), mirror_poll_s=0.1
    )
    return replay_settings(
        server, db, history=HISTORY, store=store, worker=WorkerSettings(id=worker, lease_s=lease_s),
        sandbox=SandboxSettings(eval_processes=0),
    )  # fmt: skip


async def until(predicate: Callable[[], bool], *sources: Events, limit_s: float = 20.0) -> None:
    """Wait until ``predicate()`` holds, re-checked whenever one of the sources' next events fires
    (store commits, sync passes, stand-in requests): condition waits, no sleeps."""
    async with asyncio.timeout(limit_s):
        while True:
            events = [source() for source in sources]
            if predicate():
                return
            waiters = [asyncio.ensure_future(e.wait()) for e in events]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()


def sources(daemon: Daemon, rest: PostgrestStandin) -> tuple[Events, ...]:
    assert daemon.sync is not None
    sync = daemon.sync
    return daemon.writer.next_commit, rest.next_request, lambda: sync.synced


async def app_strategy(rest: PostgrestStandin, code: str, *, status: str = "draft") -> tuple[str, str]:
    """What the web app does: a paper portfolio and a strategy with typescript_code, as the user."""
    app = await client(rest, ANON_KEY, jwt=user_jwt(USER))
    portfolio = {"user_id": USER, "name": "Paper", "type": "paper", "cash": "10000"}
    pid = (await app.table("portfolios").insert(portfolio).execute()).data[0]["id"]
    row = {"user_id": USER, "name": "SMA", "asset": "btcusdt", "interval": "1m", "typescript_code": code,
           "parameters": PARAMS, "portfolio_id": pid, "status": status}  # fmt: skip
    sid = (await app.table("strategies").insert(row).execute()).data[0]["id"]
    return str(sid), str(pid)


def pg_rows(pg: psycopg.Connection[Any], sql: str, *args: object) -> list[tuple[Any, ...]]:
    return pg.execute(sql, args).fetchall()


def local_rows(store: SqliteStore, sql: str, *args: object) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in store.execute(sql, args)]


def assert_replicated(store: SqliteStore, pg: psycopg.Connection[Any], sid: str) -> None:
    """Supabase holds exactly the local rows: none lost, none twice, decimals exact."""
    trades = "SELECT id, side, candle_time, amount, price, fee FROM trades WHERE strategy_id = ? ORDER BY candle_time"
    pg_trades = (
        "SELECT id::text, side, candle_time, amount::text, price::text, fee::text FROM trades "
        "WHERE strategy_id = %s ORDER BY candle_time"
    )
    assert pg_rows(pg, pg_trades, sid) == local_rows(store, trades, sid)
    logs = sorted(r[0] for r in local_rows(store, "SELECT id FROM strategy_logs WHERE strategy_id = ?", sid))
    assert sorted(r[0] for r in pg_rows(pg, "SELECT id::text FROM strategy_logs WHERE strategy_id = %s", sid)) == logs
    candles = local_rows(store, "SELECT open_time, close FROM market_data ORDER BY open_time")
    assert pg_rows(pg, "SELECT open_time, close::text FROM market_data ORDER BY open_time") == candles
    cursor = local_rows(store, "SELECT last_candle_time FROM strategy_cursors WHERE strategy_id = ?", sid)
    assert pg_rows(pg, "SELECT last_candle_time FROM strategy_cursors WHERE strategy_id = %s", sid) == cursor
    cash = local_rows(store, "SELECT id, cash FROM portfolios WHERE user_id = ?", USER)
    assert pg_rows(pg, "SELECT id::text, cash::text FROM portfolios WHERE user_id = %s", USER) == cash


async def drained(daemon: Daemon, rest: PostgrestStandin) -> None:
    assert daemon.sync is not None
    outbox = daemon.sync.outbox
    await until(lambda: outbox.backlog() == 0, *sources(daemon, rest))


async def test_the_web_app_flow_end_to_end(
    server: ReplayServer, series: Series, rest: PostgrestStandin, pg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    sid, _ = await app_strategy(rest, EXAMPLE_TS.read_text())
    app = await client(rest, ANON_KEY, jwt=user_jwt(USER))
    daemon = Daemon(sync_settings(server, rest, tmp_path / "d.db"))
    await daemon.start()
    wait = sources(daemon, rest)
    await app.table("strategies").update({"status": "running"}).eq("id", sid).execute()  # "Start" in the app
    await until(lambda: sid in daemon.store.cursors(), *wait)

    await server.advance(60)
    last = series.candles[PAST + 59].open_time
    await until(lambda: daemon.store.cursors().get(sid) == last, *wait)
    expected = reference_fills(series, PAST, PAST + 59)
    assert len(expected) >= 2
    await drained(daemon, rest)
    # what the Monitor tab reads, as the user: the trades and logs the daemon recorded, exact
    trades = (
        await app.table("trades")
        .select("side,candle_time,price::text,amount::text")
        .eq("strategy_id", sid)
        .order("candle_time")
        .execute()
    )
    assert [(t["side"], t["candle_time"], Decimal(t["price"]), Decimal(t["amount"])) for t in trades.data] == [
        (f.side, f.candle_time, f.price, f.amount) for f in expected
    ]
    logs = (
        await app.table("strategy_logs")
        .select("level,message,data")
        .eq("strategy_id", sid)
        .order("created_at")
        .execute()
    )
    assert sum(r["level"] == "trade" for r in logs.data) == len(expected)
    assert_replicated(daemon.store, pg, sid)
    running = (await app.table("strategies").select("status,last_run_at").eq("id", sid).single().execute()).data
    assert running["status"] == "running"

    await app.table("strategies").update({"status": "paused"}).eq("id", sid).execute()  # "Stop"
    await until(lambda: sid not in daemon.engine.strategy_ids(), *wait)
    await server.wait_until(lambda: not any(server.subscriptions()))  # stream released
    paused_at = daemon.store.cursors()[sid]
    await server.advance(5)

    v2 = "function tradingStrategy(ctx: any) {\n  console.log('v2');\n  return { signal: 'hold', reason: 'v2' };\n}\n"
    await app.table("strategies").update({"typescript_code": v2, "status": "running"}).eq("id", sid).execute()
    await until(lambda: sid in daemon.engine.strategy_ids(), *wait)
    await server.advance(3)
    last = series.candles[PAST + 67].open_time
    await until(lambda: daemon.store.cursors().get(sid) == last, *wait)
    await drained(daemon, rest)
    after = (
        await app.table("strategy_logs").select("message,data").eq("strategy_id", sid).order("created_at").execute()
    ).data
    v2_candles = [r["data"]["candle_time"] for r in after if r["message"] == "hold: v2"]
    # the new code evaluated every candle after the pause exactly once (the 5 closed while paused
    # are caught up on restart), and the old code nothing after it
    assert v2_candles == [c.open_time for c in series.candles if paused_at < c.open_time <= last]
    assert all(r["data"]["console"] == [["log", "v2"]] for r in after if r["message"] == "hold: v2")
    assert not [r for r in after if r["message"].startswith(("buy", "sell")) and r["data"]["candle_time"] > paused_at]
    assert_replicated(daemon.store, pg, sid)
    await daemon.shutdown()
    # released on shutdown, with the final cursor
    assert pg_rows(pg, "SELECT released FROM strategy_leases WHERE strategy_id = %s", sid) == [(True,)]


async def test_an_outage_loses_and_duplicates_nothing_and_trading_goes_on(
    server: ReplayServer, series: Series, rest: PostgrestStandin, pg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """The outage lasts 60 candles of the replay's manual clock, an hour of market time, during
    which the daemon trades on as the market moves; its length in wall time is whatever the
    replay takes (well under the 60 s lease), so the test measures behaviour across the outage,
    not the machine's speed. How an outage longer than the lease stops evaluation is covered by
    tests/sync/test_leases.py with an injected clock."""
    sid, _ = await app_strategy(rest, EXAMPLE_TS.read_text(), status="running")
    daemon = Daemon(sync_settings(server, rest, tmp_path / "d.db"))
    await daemon.start()
    assert daemon.sync is not None and daemon.sync.replicator is not None
    wait = sources(daemon, rest)
    await until(lambda: sid in daemon.store.cursors(), *wait)
    await server.advance(20)
    await until(lambda: daemon.store.cursors().get(sid) == series.candles[PAST + 19].open_time, *wait)
    await drained(daemon, rest)

    await rest.go_down()
    await server.advance(60)
    during = series.candles[PAST + 79].open_time
    await until(lambda: daemon.store.cursors().get(sid) == during, daemon.writer.next_commit)
    # trading unaffected: exactly the fills the strategy implies, recorded locally
    fills = [(t.side, t.candle_time, t.price) for t in daemon.store.trades(sid)]
    assert fills == [(f.side, f.candle_time, f.price) for f in reference_fills(series, PAST, PAST + 79)]
    backlog = daemon.sync.outbox.backlog()
    assert backlog > 60  # at least a cursor and a candle per candle, waiting
    replicator = daemon.sync.replicator
    await until(lambda: replicator.stats.failures > 0, replicator.next_attempt)  # it tried, kept everything

    await rest.come_up()
    daemon.sync.replicator.retry_now()
    await server.advance(20)
    await until(lambda: daemon.store.cursors().get(sid) == series.candles[PAST + 99].open_time, *wait)
    await drained(daemon, rest)
    assert_replicated(daemon.store, pg, sid)
    assert daemon.sync.outbox.dead() == 0
    await daemon.shutdown()


async def test_kill_9_with_a_full_outbox_then_restart_loses_and_doubles_nothing(
    server: ReplayServer, series: Series, rest: PostgrestStandin, pg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    sid, _ = await app_strategy(rest, EXAMPLE_TS.read_text(), status="running")
    db = tmp_path / "d.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEBOTD_", "SUPABASE_"))}
    env.update({
        "TRADEBOTD_STORE__PATH": str(db), "TRADEBOTD_STORE__BACKEND": "supabase",
        "TRADEBOTD_STORE__SUPABASE_URL": rest.url, "TRADEBOTD_STORE__SUPABASE_KEY": SERVICE_KEY,
        "TRADEBOTD_STORE__MIRROR_POLL_S": "0.1", "TRADEBOTD_WORKER__ID": "w1",
        "TRADEBOTD_MARKET__WS_URL": server.ws_url, "TRADEBOTD_MARKET__REST_URL": server.rest_url,
        "TRADEBOTD_MARKET__HISTORY": str(HISTORY), "TRADEBOTD_MARKET__MAX_CANDLE_LAG_S": "0",
        "TRADEBOTD_MARKET__START_WINDOW_S": "0",
        "TRADEBOTD_SANDBOX__EVAL_PROCESSES": "0", "TRADEBOTD_DAEMON__POLL_INTERVAL_S": "0.2",
        "TRADEBOTD_LOG__FORMAT": "json", "TRADEBOTD_HTTP__LISTEN": "127.0.0.1:0",
    })  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tradebotd", "run", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    stdout = proc.stdout

    seen: list[bytes] = []

    async def logged(predicate: Callable[[dict[str, Any]], bool]) -> None:
        async with asyncio.timeout(30):
            while True:
                line = await stdout.readline()
                assert line, "the daemon exited"
                seen.append(line)
                if predicate(orjson.loads(line)):
                    return

    try:
        await logged(lambda r: r.get("event") == "strategy started" and r.get("strategy_id") == sid)
        await logged(lambda r: r.get("event") == "market history loaded")  # warm: it evaluates what closes next
        async with asyncio.timeout(10):
            await server.wait_until(lambda: any(server.subscriptions()))
        await rest.go_down()  # from here on everything stays in the outbox
        await server.advance(40)
        last = series.candles[PAST + 39].open_time
        await logged(lambda r: r.get("event") == "decision" and r.get("candle_time") == last)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    local = SqliteStore(db)
    backlog = local.execute("SELECT count(*) FROM outbox")[0][0]
    local.close()
    assert backlog > 40

    await rest.come_up()
    daemon = Daemon(sync_settings(server, rest, db))  # same store, same worker: its lease comes back
    await daemon.start()
    await until(lambda: daemon.store.cursors().get(sid) == last, *sources(daemon, rest))
    await drained(daemon, rest)
    assert [(t.side, t.candle_time, t.price) for t in daemon.store.trades(sid)] == [
        (f.side, f.candle_time, f.price) for f in reference_fills(series, PAST, PAST + 39)
    ]
    assert_replicated(daemon.store, pg, sid)
    await daemon.shutdown()


async def crash(daemon: Daemon) -> None:
    """What kill -9 leaves behind, in process: nothing flushed, shipped or released."""
    await daemon.supervisor.cancel_all()
    daemon.engine.close()
    daemon.store.close()


async def test_two_instances_never_both_evaluate_and_a_crash_hands_over_within_the_lease(
    server: ReplayServer, series: Series, rest: PostgrestStandin, pg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    lease_s = 3.0
    sid, _ = await app_strategy(rest, EXAMPLE_TS.read_text(), status="running")
    a = Daemon(sync_settings(server, rest, tmp_path / "a.db", worker="a", lease_s=lease_s))
    await a.start()
    await until(lambda: sid in a.store.cursors(), *sources(a, rest))
    b = Daemon(sync_settings(server, rest, tmp_path / "b.db", worker="b", lease_s=lease_s))
    await b.start()
    assert b.sync is not None
    for _ in range(3):  # b polls and claims, and gets nothing
        await _next_pass(b)
    assert b.engine.strategy_ids() == set()

    await server.advance(30)
    half = series.candles[PAST + 29].open_time
    await until(lambda: a.store.cursors().get(sid) == half, *sources(a, rest))
    await drained(a, rest)
    assert b.store.cursors() == {} and b.engine.stats.evaluations == 0  # never both
    a_fills = [(t.side, t.candle_time, t.price) for t in a.store.trades(sid)]

    await crash(a)
    crashed = asyncio.get_running_loop().time()
    await until(lambda: sid in b.engine.strategy_ids(), *sources(b, rest), limit_s=lease_s * 3)
    handover_s = asyncio.get_running_loop().time() - crashed
    assert handover_s < lease_s + 1.0  # expiry plus a poll; generous for a loaded machine
    async with asyncio.timeout(10):  # b's feed subscribed (a's connection is gone)
        await server.wait_until(
            lambda: server.total_connections == 2 and [bool(s) for s in server.subscriptions()] == [True]
        )
    await until(lambda: b.store.candle_count("BTCUSDT", "1m") > 0, b.writer.next_commit)  # and warmed up
    await server.advance(30)
    last = series.candles[PAST + 59].open_time
    await until(lambda: b.store.cursors().get(sid) == last, *sources(b, rest))
    # b resumed after a's last candle: every candle evaluated once across the two, none twice
    assert b.engine.stats.evaluations == 30
    b_fills = [(t.side, t.candle_time, t.price) for t in b.store.trades(sid)]
    assert all(t > half for _, t, _ in b_fills)
    assert a_fills + b_fills == [(f.side, f.candle_time, f.price) for f in reference_fills(series, PAST, PAST + 59)]
    await drained(b, rest)
    assert pg_rows(pg, "SELECT worker_id, fence FROM strategy_leases") == [("b", 2)]
    await b.shutdown()


async def _next_pass(daemon: Daemon) -> None:
    assert daemon.sync is not None
    async with asyncio.timeout(5):
        await daemon.sync.synced.wait()
