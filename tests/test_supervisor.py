"""The supervisor restarts a crashing task with backoff, turns health red on repeated crashes, and
gives up (so the daemon exits non-zero) after ``max_restarts`` within the window."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tradebotd.config import DaemonSettings
from tradebotd.daemon import Daemon
from tradebotd.logs import register_secret
from tradebotd.ops.health import HealthPolicy, assess
from tradebotd.ops.status import StatusSnapshot
from tradebotd.replay.series import demo_csv, load_csv
from tradebotd.replay.server import ReplayServer
from tradebotd.supervisor import Supervisor
from tradebotd.testing import replay_settings


class Crasher:
    """Crashes on every run until told to behave; counts runs; lets a test wait for the n-th."""

    def __init__(self, message: str = "boom") -> None:
        self.runs = 0
        self.message = message
        self.behave = False
        self.ran = asyncio.Condition()
        self.forever = asyncio.Event()

    async def __call__(self) -> None:
        async with self.ran:
            self.runs += 1
            self.ran.notify_all()
        if self.behave:
            await self.forever.wait()
            return
        raise RuntimeError(self.message)

    async def until_runs(self, n: int) -> None:
        async with asyncio.timeout(10), self.ran:
            await self.ran.wait_for(lambda: self.runs >= n)


async def test_gives_up_after_max_restarts_within_the_window() -> None:
    sup = Supervisor(restart_min_s=0.001, restart_max_s=0.002, max_restarts=3, window_s=300)
    crasher = Crasher()
    sup.start("loop", crasher)
    async with asyncio.timeout(10):
        await sup.given_up.wait()
    assert crasher.runs == 4  # the first run and 3 restarts; the 4th crash in the window gives up
    assert sup.restarts == {"loop": 3}
    assert sup.gave_up and sup.give_up_reason is not None and "'loop' crashed 4 times" in sup.give_up_reason
    assert sup.task("loop").done()  # not restarted again
    (health,) = sup.task_health()
    assert health.down and health.failing and health.recent_crashes == 4
    assert health.last_error == "RuntimeError: boom"
    await sup.cancel_all()


async def test_health_is_red_from_the_second_crash_in_the_window_and_green_again_after_it() -> None:
    now = [0.0]
    sup = Supervisor(restart_min_s=0.001, restart_max_s=0.002, max_restarts=5, window_s=100, clock=lambda: now[0])
    crasher = Crasher()
    sup.start("feed", crasher)
    await crasher.until_runs(2)  # crashed once, restarted
    crasher.behave = True
    now[0] = 1.0
    await crasher.until_runs(3)  # crashed a second time, restarted, now runs fine
    (health,) = sup.task_health()
    assert health.recent_crashes == 2 and health.failing and not health.down and health.restarts == 2
    snap = StatusSnapshot(tasks=tuple(sup.task_health()))
    assert [(p.check, p.subject) for p in assess(snap, 0, HealthPolicy()).problems] == [("supervisor", "feed")]
    now[0] = 102.0  # both crashes have left the window
    (health,) = sup.task_health()
    assert health.recent_crashes == 0 and not health.failing
    assert not sup.gave_up
    await sup.cancel_all()


async def test_crashes_outside_the_window_do_not_add_up() -> None:
    now = [0.0]
    sup = Supervisor(restart_min_s=0.001, restart_max_s=0.002, max_restarts=2, window_s=10, clock=lambda: now[0])
    crasher = Crasher()

    async def crash_slowly() -> None:
        now[0] += 6.0  # each run starts 6 s after the previous one: at most 2 crashes per 10 s
        await crasher()

    sup.start("slow", crash_slowly)
    await crasher.until_runs(8)
    assert not sup.gave_up
    assert sup.restarts["slow"] >= 7
    await sup.cancel_all()


async def test_the_last_error_is_masked() -> None:
    secret = "sup3r-secret-token-value"
    register_secret(secret)
    sup = Supervisor(restart_min_s=0.001, restart_max_s=0.002, max_restarts=0)
    sup.start("t", Crasher(f"auth failed for {secret}"))
    async with asyncio.timeout(10):
        await sup.given_up.wait()
    assert sup.task_health()[0].last_error == "RuntimeError: auth failed for **********"
    await sup.cancel_all()


async def test_the_daemon_stops_waiting_when_the_supervisor_gives_up(tmp_path: Path) -> None:
    """``run_daemon`` exits non-zero after this; the shutdown that follows still flushes."""
    async with ReplayServer([load_csv(demo_csv())], past=60, ping_interval_s=None) as server:
        daemon_settings = DaemonSettings(poll_interval_s=0.2, max_task_restarts=2, restart_window_s=300)
        daemon = Daemon(replay_settings(server, tmp_path / "s.db", daemon=daemon_settings))
        await daemon.start()
        daemon.supervisor.start("doomed", Crasher())
        async with asyncio.timeout(20):
            await daemon.wait_stopped()
        assert daemon.supervisor.gave_up
        await daemon.shutdown()
        assert daemon.writer.backlog == 0

