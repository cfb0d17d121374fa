"""``tradebotd run`` as systemd runs it: a child process with ``NOTIFY_SOCKET`` (a datagram socket
this test owns) and ``WATCHDOG_USEC``, trading paper against the local Binance stand-in.

Synchronisation is by messages only: a notify datagram, a JSON log line, the process exiting.
While candles flow, the test moves the stand-in's clock one candle per ``WATCHDOG=1`` it receives.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import PAST, wave_series
from tradebotd.replay.server import ReplayServer

from .process import DaemonProcess, NotifySocket, add_strategy, daemon_env, status_command

SECRET = "test-cron-secret-0123456789abcdef"
WATCHDOG_USEC = "400000"  # pings every 0.2 s
PROGRESS_TIMEOUT_S = "2"  # a feed without a frame for this long is stalled


@pytest.fixture
async def server() -> AsyncIterator[ReplayServer]:
    async with ReplayServer([wave_series()], past=PAST, ping_interval_s=None) as replay:
        yield replay


@pytest.fixture
def notify() -> AsyncIterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def store_rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db, timeout=10) as conn:
        return conn.execute(sql).fetchall()


async def test_ready_watchdog_while_candles_flow_then_silence_stops_it_and_healthz_names_the_feed(
    server: ReplayServer, notify: NotifySocket, tmp_path: Path
) -> None:
    env = daemon_env(
        server,
        tmp_path / "run.db",
        NOTIFY_SOCKET=notify.path,
        WATCHDOG_USEC=WATCHDOG_USEC,
        TRADEBOTD_DAEMON__PROGRESS_TIMEOUT_S=PROGRESS_TIMEOUT_S,
    )
    await add_strategy(env, tmp_path)
    async with DaemonProcess(env, tmp_path) as daemon:
        ready = await notify.until(lambda m: "READY" in m)
        assert ready["READY"] == "1"
        assert "1 strategies running" in ready["STATUS"]
        status, body = await daemon.get("/healthz")
        assert status == 200, body

        # candles flow, one per watchdog round (its STATUS= comes whether it pinged or not), and
        # the pings keep coming
        pings = 0
        while pings < 6:
            message = await notify.next()
            pings += message.get("WATCHDOG") == "1"
            if "STATUS" in message:
                await server.advance(1)

        status, text = await daemon.get("/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        stream = (("interval", "1m"), ("symbol", "BTCUSDT"))
        assert samples[("tradebotd_candles_received_total", stream)] >= 5
        assert samples[("tradebotd_candles_evaluated_total", stream)] >= 5
        assert samples[("tradebotd_decisions_total", (("outcome", "hold"),))] >= 1
        assert samples[("tradebotd_decision_latency_seconds_count", (("kind", "js"),))] >= 5
        assert samples[("tradebotd_feed_connected", ())] == 1
        assert samples[("tradebotd_healthy", ())] == 1
        assert samples[("tradebotd_resident_memory_bytes", (("process", "daemon"),))] > 0
        assert ("tradebotd_queue_capacity", (("queue", "store-writer"),)) in samples
        assert ("tradebotd_task_restarts_total", (("task", "market-feed"),)) in samples

        # the stand-in goes silent: the feed stalls, the pings stop, /healthz names it
        server.go_silent()
        await notify.until(lambda m: "stalled: feed" in m.get("STATUS", ""))
        after = [await notify.next() for _ in range(3)]
        assert all("WATCHDOG" not in m for m in after), after
        assert all("stalled: feed" in m["STATUS"] for m in after)
        status, body = await daemon.get("/healthz")
        assert status == 503
        health = orjson.loads(body)
        assert health["status"] == "unhealthy"
        assert {"check": "stalled", "subject": "feed"} in [
            {k: p[k] for k in ("check", "subject")} for p in health["problems"]
        ]
        await daemon.logged(lambda r: r["event"] == "pipeline not progressing; withholding systemd watchdog pings")

        daemon.terminate()
        stopping = await notify.until(lambda m: "STOPPING" in m)
        assert stopping["STOPPING"] == "1"
        assert await daemon.exited() == 0, daemon.text()


async def test_sigterm_mid_stream_exits_0_with_every_decision_recorded_and_the_trigger_needs_the_secret(
    server: ReplayServer, notify: NotifySocket, tmp_path: Path
) -> None:
    db = tmp_path / "run.db"
    env = daemon_env(server, db, NOTIFY_SOCKET=notify.path, CRON_SECRET=SECRET)
    sid = await add_strategy(env, tmp_path)
    async with DaemonProcess(env, tmp_path) as daemon:
        await notify.until(lambda m: "READY" in m)
        for _ in range(4):
            await server.advance(1)
        decisions = lambda: [r["candle_time"] for r in daemon.records if r["event"] == "decision"]  # noqa: E731
        await daemon.logged(lambda r: len(decisions()) >= 4)
        newest = max(decisions())
        orders = store_rows(db, "SELECT count(*) FROM orders")[0][0]
        logs = store_rows(db, "SELECT count(*) FROM strategy_logs")[0][0]

        # wrong or missing secret: 401, nothing evaluated
        for headers in ({"Authorization": "Bearer not-the-secret-at-all-00"}, {}):
            status, _ = await daemon.post("/api/cron/strategies", headers=headers)
            assert status == 401
            status, _ = await daemon.post(f"/strategies/{sid}/run", headers=headers)
            assert status == 401
            status, _ = await daemon.get("/status", headers=headers)
            assert status == 401
        # the right one: every strategy was already evaluated on its latest candle; no order twice
        auth = {"Authorization": f"Bearer {SECRET}"}
        status, body = await daemon.post("/api/cron/strategies", headers=auth)
        assert status == 200, body
        summary = orjson.loads(body)
        assert (summary["strategies"], summary["already_evaluated"], summary["evaluated"]) == (1, 1, 0)
        assert summary["results"][0]["candle_time"] == newest
        status, body = await daemon.post(f"/strategies/{sid}/run", headers=auth)
        assert status == 200 and orjson.loads(body)["already_evaluated"] == 1
        status, _ = await daemon.post("/strategies/no-such-strategy/run", headers=auth)
        assert status == 404
        assert store_rows(db, "SELECT count(*) FROM orders")[0][0] == orders
        assert store_rows(db, "SELECT count(*) FROM strategy_logs")[0][0] == logs

        # tradebotd status, from the running daemon (with the secret) ...
        assert daemon.url is not None
        live = orjson.loads(await status_command(env, tmp_path, "--json", "--url", daemon.url))
        assert live["daemon"]["running"] and live["daemon"]["ready"]
        assert live["daemon"]["health"]["status"] == "ok"
        assert live["feed"]["connected"] and live["feed"]["streams"][0]["stream"] == "BTCUSDT/1m"
        (row,) = live["strategies"]
        assert (row["id"], row["status"], row["last_candle_time"]) == (sid, "running", newest)
        assert "realised_pnl" in row and "position" in row
        assert live["portfolios"][0]["type"] == "paper"
        table = await status_command(env, tmp_path, "--url", daemon.url)
        assert "running (pid" in table and "sma" in table and "connected" in table
        # ... and without it: the store's view, saying why
        no_secret = {k: v for k, v in env.items() if k != "CRON_SECRET"}
        stored = orjson.loads(await status_command(no_secret, tmp_path, "--json", "--url", daemon.url))
        assert not stored["daemon"]["running"] and "401" in stored["daemon"]["reason"]
        assert stored["strategies"][0]["id"] == sid

        # SIGTERM right after more candles went out: whatever the daemon decided is recorded
        for _ in range(3):
            await server.advance(1)
        daemon.terminate()
        assert await daemon.exited() == 0, daemon.text()
    stopped = [r for r in daemon.records if r["event"] == "tradebotd stopped"]
    assert stopped and stopped[0]["lost_batches"] == 0
    decided = {r["candle_time"] for r in daemon.records if r["event"] == "decision"}
    rows = store_rows(db, f"SELECT data FROM strategy_logs WHERE strategy_id = '{sid}' AND data IS NOT NULL")
    recorded = {orjson.loads(d)["candle_time"] for (d,) in rows if "candle_time" in orjson.loads(d)}
    assert decided and decided <= recorded
    cursor = store_rows(db, f"SELECT last_candle_time FROM strategy_cursors WHERE strategy_id = '{sid}'")[0][0]
    assert cursor == max(decided)

    # the daemon is down: tradebotd status reads the store
    down = orjson.loads(await status_command(env, tmp_path, "--json", "--url", daemon.url or ""))
    assert not down["daemon"]["running"] and down["feed"] is None
    assert down["strategies"][0]["last_candle_time"] == cursor
    assert down["stored_candles"][0]["stream"] == "BTCUSDT/1m"


async def test_a_task_that_keeps_crashing_makes_the_process_exit_non_zero(
    server: ReplayServer, notify: NotifySocket, tmp_path: Path
) -> None:
    """A real fault, not a hook: the store is damaged under the running daemon (a table its
    control loop reads every pass is dropped), so the control task crashes on every restart."""
    db = tmp_path / "run.db"
    env = daemon_env(server, db, NOTIFY_SOCKET=notify.path, TRADEBOTD_DAEMON__MAX_TASK_RESTARTS="1")
    await add_strategy(env, tmp_path)
    async with DaemonProcess(env, tmp_path) as daemon:
        await notify.until(lambda m: "READY" in m)
        store_rows(db, "DROP TABLE close_requests")
        assert await daemon.exited() == 1, daemon.text()
    events = [r["event"] for r in daemon.records]
    assert "task crashed; restarting" in events
    gave_up = next(r for r in daemon.records if r["event"].startswith("task keeps crashing"))
    assert gave_up["task"] == "control"
    stopped = next(r for r in daemon.records if r["event"] == "tradebotd stopped")
    assert stopped["lost_batches"] == 0
    assert any(r["event"] == "exiting non-zero" for r in daemon.records)
