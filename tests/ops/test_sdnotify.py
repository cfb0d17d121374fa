"""sd_notify over a real AF_UNIX datagram socket the test owns (path and abstract namespace), the
watchdog interval from the environment, and the progress watchdog's decisions."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tradebotd.ops.sdnotify import (
    Notifier,
    Progress,
    ProgressWatchdog,
    Stall,
    keep_watch,
    socket_address,
    watchdog_interval_s,
)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_socket_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@tradebotd-test") == "\0tradebotd-test"
    assert socket_address("@") is None
    assert socket_address("relative/path") is None
    assert socket_address("vsock:2:1234") is None
    assert socket_address("") is None


def test_watchdog_interval_from_the_environment() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None  # another process's
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({}) is None


def test_messages_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier is not None
    assert notifier.ready("2 strategies running")
    assert receive(sock) == "READY=1\nSTATUS=2 strategies running"
    notifier.watchdog()
    assert receive(sock) == "WATCHDOG=1"
    notifier.status("line one\nline two")  # STATUS= is one line: a newline would end the assignment
    assert receive(sock) == "STATUS=line one line two"
    notifier.extend_timeout(1.5)
    assert receive(sock) == "EXTEND_TIMEOUT_USEC=1500000"
    notifier.stopping()
    assert receive(sock) == "STOPPING=1"
    assert notifier.sent == 5 and notifier.dropped == 0
    notifier.close()


def test_messages_reach_an_abstract_socket() -> None:
    name = f"tradebotd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier is not None
        notifier.ready()
        assert receive(sock) == "READY=1"
        notifier.close()


def test_no_socket_means_no_notifier_and_unset_clears_the_environment(tmp_path: Path) -> None:
    assert Notifier.from_environ({}) is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:99"}) is None
    environ = {"NOTIFY_SOCKET": str(tmp_path / "x"), "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1", "HOME": "/h"}
    notifier = Notifier.from_environ(environ, unset=True)
    assert notifier is not None
    assert environ == {"HOME": "/h"}  # children (evaluation processes) must not inherit them
    notifier.close()


def test_a_missing_listener_is_dropped_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.dropped == 2 and notifier.sent == 0
    notifier.close()


# -- the progress watchdog ---------------------------------------------------------------------


def test_a_part_with_work_and_no_progress_stalls_after_the_timeout() -> None:
    dog = ProgressWatchdog(timeout_s=10)
    assert dog.observe(0, {"feed": Progress(busy=True, done=5)}) == ()
    assert dog.observe(9.9, {"feed": Progress(busy=True, done=5)}) == ()
    assert dog.observe(10, {"feed": Progress(busy=True, done=5)}) == (Stall("feed", 10),)
    assert not dog.should_ping(15, {"feed": Progress(busy=True, done=5)})
    # one frame arrives: progress again, and the timer restarts from there
    assert dog.should_ping(16, {"feed": Progress(busy=True, done=6)})
    assert dog.observe(25, {"feed": Progress(busy=True, done=6)}) == ()
    assert dog.observe(26, {"feed": Progress(busy=True, done=6)}) == (Stall("feed", 10),)


def test_a_part_without_work_never_stalls_and_its_timer_starts_when_work_arrives() -> None:
    dog = ProgressWatchdog(timeout_s=10)
    assert dog.observe(0, {"writer": Progress(busy=False, done=3)}) == ()
    assert dog.observe(100, {"writer": Progress(busy=False, done=3)}) == ()  # idle for long: fine
    assert dog.observe(101, {"writer": Progress(busy=True, done=3)}) == ()  # a batch waits from now on
    assert dog.observe(110, {"writer": Progress(busy=True, done=3)}) == ()
    assert dog.observe(111, {"writer": Progress(busy=True, done=3)}) == (Stall("writer", 10),)


def test_parts_are_judged_separately_and_forgotten_when_gone() -> None:
    dog = ProgressWatchdog(timeout_s=5)
    parts = {"feed": Progress(True, 1), "evaluation": Progress(True, 1)}
    dog.observe(0, parts)
    stalls = dog.observe(6, {"feed": Progress(True, 2), "evaluation": Progress(True, 1)})
    assert [s.part for s in stalls] == ["evaluation"]
    assert dog.observe(7, {"feed": Progress(True, 2)}) == ()
    assert dog.observe(8, {"feed": Progress(True, 2), "evaluation": Progress(True, 1)}) == ()  # new again


def test_the_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ProgressWatchdog(timeout_s=0)


async def test_keep_watch_pings_while_progressing_and_stops_when_stalled(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    notifier = Notifier(path)
    now = [0.0]
    frames = [0]

    def progress() -> dict[str, Progress]:
        now[0] += 1.0  # each tick is one second of watchdog time
        return {"feed": Progress(busy=True, done=frames[0])}

    task = asyncio.create_task(
        keep_watch(
            notifier,
            ProgressWatchdog(timeout_s=3),
            progress,
            interval_s=0.001,
            status=lambda: "ok",
            clock=lambda: now[0],
        )
    )
    try:
        seen: list[str] = []
        async with asyncio.timeout(10):
            while seen.count("WATCHDOG=1") < 3:  # progressing: the first ticks ping
                seen.append((await loop.sock_recv(sock, 4096)).decode())
            # no frame arrives any more: after 3 s of watchdog time only STATUS= keeps coming
            tail: list[str] = []
            while len(tail) < 10:
                tail.append((await loop.sock_recv(sock, 4096)).decode())
                if "WATCHDOG=1" in tail[-1]:
                    tail.clear()
            assert set(tail) == {"STATUS=ok"}
            frames[0] += 1  # progress: pings resume
            while (await loop.sock_recv(sock, 4096)).decode() != "WATCHDOG=1":
                pass
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        notifier.close()
