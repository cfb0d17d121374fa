"""The daemon with an evaluation process (``sandbox.eval_processes``, on by default): strategies
placed on the child trade exactly like those in the daemon, and a child that dies is replaced
within the candle that finds it dead: nobody loses a candle."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tradebotd.config import SandboxSettings
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer
from tradebotd.testing import until_stored
from tradebotd.workers.pool import RemoteRuntime

from .conftest import PAST, add_example, fills_of, make_daemon, reference_fills, started

LIVE = 120


async def test_strategies_in_a_child_trade_like_those_in_the_daemon_and_survive_its_death(
    server: ReplayServer, series: Series, tmp_path: Path
) -> None:
    daemon = make_daemon(server, tmp_path, sandbox=SandboxSettings(eval_processes=1))
    sids = [add_example(daemon, f"sma-{i}") for i in range(4)]
    await started(daemon, *sids)
    assert daemon.eval_pool is not None
    child = daemon.eval_pool.processes[0]
    remote = [sid for sid, slot in daemon.engine._slots.items() if isinstance(slot.runtime, RemoteRuntime)]
    # sandbox.daemon_weight (6 by default): the daemon takes a sixth as many as the child (1 of 4).
    assert len(remote) == 3 and child.strategies == 3

    await server.advance(LIVE // 2)
    half = series.candles[PAST + LIVE // 2 - 1].open_time
    await until_stored(daemon, lambda: all(daemon.store.cursors()[s] == half for s in sids))
    expected = reference_fills(series, PAST, PAST + LIVE // 2 - 1)
    assert all(fills_of(daemon, s) == expected for s in sids)

    pid = child.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await server.advance(LIVE // 2)
    last = series.candles[PAST + LIVE - 1].open_time
    await until_stored(daemon, lambda: all(daemon.store.cursors()[s] == last for s in sids))

    # The first candle after the kill found the child dead, started a new one, reloaded its three
    # strategies with their history and evaluated them there: no error, no candle lost.
    expected = reference_fills(series, PAST, PAST + LIVE - 1)
    for sid in sids:
        assert [e for _, e in daemon.store.logs_after(sid) if e.level == "error"] == []
        assert fills_of(daemon, sid) == expected
    assert child.pid not in (None, pid)
    assert daemon.store.get_strategy(remote[0]).status == "running"
    await daemon.shutdown()
    assert child.pid is None  # shut down with the daemon


async def test_without_processes_threads_evaluate_and_every_strategy_trades_the_reference(
    server: ReplayServer, series: Series, tmp_path: Path
) -> None:
    daemon = make_daemon(server, tmp_path, sandbox=SandboxSettings(eval_processes=0, eval_threads=2))
    sids = [add_example(daemon, f"sma-{i}") for i in range(6)]  # enough for the thread pool to be used
    await started(daemon, *sids)
    assert daemon.eval_pool is None
    assert not any(isinstance(slot.runtime, RemoteRuntime) for slot in daemon.engine._slots.values())
    await server.advance(LIVE)
    last = series.candles[PAST + LIVE - 1].open_time
    await until_stored(daemon, lambda: all(daemon.store.cursors()[s] == last for s in sids))
    expected = reference_fills(series, PAST, PAST + LIVE - 1)
    assert all(fills_of(daemon, s) == expected for s in sids)
    await daemon.shutdown()


async def test_unset_eval_processes_means_none_on_a_one_cpu_machine(
    server: ReplayServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    daemon = make_daemon(server, tmp_path, sandbox=SandboxSettings())
    assert daemon.settings.sandbox.eval_processes == 0 and daemon.eval_pool is None
    assert daemon.engine.config.eval_threads == 2  # the thread path, as configured
    await daemon.shutdown()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    daemon = make_daemon(server, tmp_path, sandbox=SandboxSettings())
    assert daemon.eval_pool is not None and len(daemon.eval_pool.processes) == 2
    await daemon.shutdown()
