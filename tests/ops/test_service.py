"""The wired operations edge with stand-in sources and a hand-moved clock: when WATCHDOG=1 is
sent and when it is held back, what STATUS= says, and the notify variables children never see."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tradebotd.model import StreamKey
from tradebotd.ops.health import HealthPolicy
from tradebotd.ops.service import OpsService
from tradebotd.ops.status import Sources, StreamProgress
from tradebotd.supervisor import Supervisor

from .process import NotifySocket
from .test_status import Broker, Engine, Feed, Writer

BTC = StreamKey("BTCUSDT", "1m")
NOW_MS = 1_700_000_040_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def service(sources: Sources, notify: NotifySocket, clock: Clock, **env: str) -> tuple[OpsService, dict[str, str]]:
    environ = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000", **env}
    ops = OpsService(
        sources,
        listen=("127.0.0.1", 0),
        policy=HealthPolicy(grace_s=30, outbox_threshold=100),
        progress_timeout_s=10,
        server_now_ms=lambda: NOW_MS,
        trigger=None,
        orders_today=lambda: 4,
        environ=environ,
        clock=clock,
    )
    return ops, environ


async def test_pings_while_frames_arrive_and_holds_them_back_while_the_feed_is_stalled(notify: NotifySocket) -> None:
    feed = Feed(streams=[StreamProgress(BTC, 3, NOW_MS - 60_000, NOW_MS - 600_000)])  # closed at NOW_MS
    clock = Clock()
    ops, environ = service(Sources(feed=feed, engine=Engine(strategies_running=3), writer=Writer()), notify, clock)
    assert ops.ping_interval_s == 1.0  # half of WATCHDOG_USEC
    assert "NOTIFY_SOCKET" not in environ and "WATCHDOG_USEC" not in environ  # not inherited
    ops.mark_ready()
    ready = await notify.next()
    assert ready == {"READY": "1", "STATUS": "3 strategies running, last candle 0 s ago, 4 orders today, outbox -"}
    assert ops.notifier is not None

    for _ in range(3):  # frames keep arriving: a ping, then the status, every round
        feed.stats.messages += 1
        clock.now += 9
        ops.check(ops.notifier)
        assert await notify.next() == {"WATCHDOG": "1"}
        assert "STATUS" in await notify.next()

    clock.now += 9  # no frame for 9 s: still within progress_timeout_s
    ops.check(ops.notifier)
    assert await notify.next() == {"WATCHDOG": "1"}
    await notify.next()
    clock.now += 2  # 11 s: stalled
    health = ops.check(ops.notifier)
    assert [(p.check, p.subject) for p in health.problems] == [("stalled", "feed")]
    status = await notify.next()
    assert status == {"STATUS": "3 strategies running, last candle 0 s ago, 4 orders today, outbox -; stalled: feed"}
    feed.stats.messages += 1  # a frame: pings resume
    ops.check(ops.notifier)
    assert await notify.next() == {"WATCHDOG": "1"}
    await ops.close()


async def test_a_ban_or_a_crashing_task_turns_health_red_but_keeps_the_pings(notify: NotifySocket) -> None:
    """A restart by systemd cures neither: the supervisor has its own limit, a ban its end."""
    supervisor = Supervisor()
    clock = Clock()
    sources = Sources(brokers=[Broker("live", NOW_MS + 60_000)], supervisor=supervisor)
    ops, _ = service(sources, notify, clock)
    ops.ready = True
    assert ops.notifier is not None
    health = ops.check(ops.notifier)
    assert [(p.check, p.subject) for p in health.problems] == [("broker", "live")]
    assert await notify.next() == {"WATCHDOG": "1"}
    assert (await notify.next())["STATUS"].endswith("; unhealthy: broker")
    await ops.close()


async def test_before_ready_healthz_says_startup_and_without_a_socket_nothing_is_sent() -> None:
    ops = OpsService(
        Sources(),
        listen=("127.0.0.1", 0),
        policy=HealthPolicy(),
        progress_timeout_s=10,
        server_now_ms=lambda: NOW_MS,
        trigger=None,
        environ={},
    )
    assert ops.notifier is None and not ops.watching
    assert [p.check for p in ops.health().problems] == ["startup"]
    ops.mark_ready()
    assert ops.health().ok
    await ops.close()
