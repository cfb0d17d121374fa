"""One daemon per store (``tradebotd.store.lock``): in-process rules, then real ``tradebotd run``
processes: the second refuses and names the first's pid; after ``kill -9`` the lock is free."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tradebotd.store.lock import StoreLock, StoreLocked, holder_pid, lock_path


def test_second_holder_is_refused_with_the_pid_and_release_frees(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    first = StoreLock(db)
    first.acquire()
    assert lock_path(db).read_text() == f"{os.getpid()}\n"
    assert holder_pid(db) == os.getpid()
    with pytest.raises(StoreLocked) as refused:
        StoreLock(db).acquire()  # a second open file description: flock conflicts in-process too
    assert refused.value.pid == os.getpid() and f"pid {os.getpid()}" in str(refused.value)
    first.release()
    assert lock_path(db).read_text() == "" and holder_pid(db) is None
    with StoreLock(db) as again:
        assert again.held
    assert not again.held


def test_a_dead_pid_in_the_file_is_no_holder(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(child.stdout)
    lock_path(db).write_text(f"{dead}\n")  # what a crashed daemon leaves behind
    assert holder_pid(db) is None
    with StoreLock(db):
        assert lock_path(db).read_text() == f"{os.getpid()}\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path) -> dict[str, str]:
    port = _closed_port()  # nothing listens: the feed retries, the daemon keeps running
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEBOTD_")}
    env.update(
        {
            "TRADEBOTD_STORE__PATH": str(tmp_path / "run.db"),
            "TRADEBOTD_MARKET__WS_URL": f"ws://127.0.0.1:{port}",
            "TRADEBOTD_MARKET__REST_URL": f"http://127.0.0.1:{port}",
            "TRADEBOTD_SANDBOX__EVAL_PROCESSES": "0",
            "TRADEBOTD_HTTP__LISTEN": "127.0.0.1:0",
        }
    )
    return env


def _start(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """``tradebotd run``, returned once it has logged that it started (it holds the lock then)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tradebotd", "run"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["event"] == "tradebotd starting":
            return proc
    raise AssertionError(f"the daemon ended before starting: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}")


def test_two_real_daemons_on_one_store(tmp_path: Path) -> None:
    env = _env(tmp_path)
    procs = [_start(env, tmp_path)]
    first = procs[0]
    try:
        second = subprocess.run(
            [sys.executable, "-m", "tradebotd", "run"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert f"another tradebotd is already running on {tmp_path / 'run.db'} (pid {first.pid}" in second.stderr
        assert "tradebotd starting" not in second.stdout  # refused before anything started
        # A crash leaves the pid in the file but no lock: the next daemon starts.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert lock_path(tmp_path / "run.db").read_text() == f"{first.pid}\n"
        third = _start(env, tmp_path)
        procs.append(third)
        assert lock_path(tmp_path / "run.db").read_text() == f"{third.pid}\n"
        third.send_signal(signal.SIGTERM)
        third.communicate(timeout=30)
        assert third.returncode == 0
        assert lock_path(tmp_path / "run.db").read_text() == ""  # released on a clean exit
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
