"""The CLI's strategy and store commands, through ``tradebotd.cli.main`` (what users type)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tradebotd.cli import main
from tradebotd.store.base import LogEntry, WriteBatch
from tradebotd.store.sqlite import SCHEMA_VERSION, SqliteStore

EXAMPLE = Path(__file__).resolve().parents[1] / "tradebotd" / "examples" / "sma_crossover.js"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import os

    for name in list(os.environ):
        if name.startswith("TRADEBOTD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRADEBOTD_STORE__PATH", str(tmp_path / "cli.db"))
    # Nothing listens there: `strategy add` cannot ask the exchange and says so (never Binance).
    monkeypatch.setenv("TRADEBOTD_MARKET__REST_URL", f"http://127.0.0.1:{closed_port()}")
    return tmp_path


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_db_init_is_idempotent(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "db", "init")[0] == 0
    code, out, _ = run(capsys, "db", "init")
    assert code == 0 and f"schema version {SCHEMA_VERSION}" in out
    store = SqliteStore(tmp_path / "cli.db")
    assert len(store.portfolios()) == 1 and store.portfolios()[0].cash == 10_000


def test_add_list_start_stop(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "strategy",
        "add",
        "my sma",
        "--file",
        str(EXAMPLE),
        "--asset",
        "ethusdt",
        "--interval",
        "5m",
        "--param",
        "fast=3",
        "--param",
        "label=x y",
        "--param",
        "on=true",
    )
    sid = out.strip()
    assert code == 0 and len(sid) == 36
    code, out, _ = run(capsys, "strategy", "list", "--json")
    (row,) = json.loads(out)
    assert row["id"] == sid and row["status"] == "draft" and row["asset"] == "ethusdt" and row["interval"] == "5m"
    assert row["parameters"] == {"fast": 3, "label": "x y", "on": True} and row["kind"] == "js"
    assert run(capsys, "strategy", "start", sid[:8])[0] == 0
    assert json.loads(run(capsys, "strategy", "list", "--json")[1])[0]["status"] == "running"
    assert run(capsys, "strategy", "stop", sid)[0] == 0
    code, out, _ = run(capsys, "strategy", "list")
    assert sid in out and "paused" in out


def test_add_if_missing_and_start_flag(capsys: pytest.CaptureFixture[str]) -> None:
    first = run(capsys, "strategy", "add", "x", "--file", str(EXAMPLE), "--start")[1].strip()
    again = run(capsys, "strategy", "add", "x", "--file", str(EXAMPLE), "--if-missing")[1].strip()
    assert first == again
    assert json.loads(run(capsys, "strategy", "list", "--json")[1])[0]["status"] == "running"


def test_bad_input_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "strategy", "start", "nope")
    assert code == 2 and "no strategy" in err
    code, _, err = run(capsys, "strategy", "add", "x", "--file", str(tmp_path / "missing.js"))
    assert code == 1 and "missing.js" in err
    with pytest.raises(SystemExit) as exc:
        main(["strategy", "add", "x", "--file", str(EXAMPLE), "--interval", "7m"])
    assert exc.value.code == 2
    assert "unsupported kline interval" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["strategy", "add", "x", "--file", str(EXAMPLE), "--param", "novalue"])


def test_logs_prints_entries_in_order(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sid = run(capsys, "strategy", "add", "x", "--file", str(EXAMPLE))[1].strip()
    store = SqliteStore(tmp_path / "cli.db")
    store.apply(
        [
            WriteBatch(
                logs=[
                    LogEntry(sid, "signal", "buy signal", {"close": "1"}, "2026-01-01T00:00:00.000Z"),
                    LogEntry(sid, "trade", "bought", None, "2026-01-01T00:00:01.000Z"),
                ]
            )
        ]
    )
    code, out, _ = run(capsys, "strategy", "logs", sid)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and "buy signal" in lines[0] and "bought" in lines[1]
    code, out, _ = run(capsys, "strategy", "logs", sid, "--json")
    assert [json.loads(line)["level"] for line in out.splitlines()] == ["signal", "trade"]


def test_strategy_list_does_not_import_the_heavy_dependencies() -> None:
    """``cli._lazy``: the shared helpers (``cliargs``, ``strategy_files``) must stay light too."""
    import subprocess
    import sys

    code = (
        "import sys, tradebotd.cli; tradebotd.cli.build_parser(['strategy', 'list']); "
        "print(sorted(m for m in ('numpy', 'wasmtime', 'ccxt', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_sync_status_of_a_store_that_never_synced(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "sync", "status")[0] == 1  # no store yet: says so
    assert run(capsys, "db", "init")[0] == 0
    code, out, _ = run(capsys, "sync", "status", "--json")
    status = json.loads(out)
    assert code == 0 and status["backlog"] == 0 and status["dead"] == 0 and status["backend"] == "sqlite"
    code, out, _ = run(capsys, "sync", "status")
    assert code == 0 and "backlog      0 rows" in out


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("3", "3")])
def test_the_command_line_runs_numpy_without_blas_worker_threads(given: str | None, expected: str) -> None:
    """tradebotd.cli sets OPENBLAS_NUM_THREADS=1 (unless the environment has a value) before anything
    imports numpy, so numpy starts no BLAS worker threads, in this process or the ones it starts."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    code = (
        "import os, sys\n"
        "import tradebotd.cli\n"
        "assert 'numpy' not in sys.modules, 'tradebotd.cli imports numpy before the setting'\n"
        "threads = len(os.listdir('/proc/self/task'))\n"
        "import numpy\n"
        "print(os.environ['OPENBLAS_NUM_THREADS'], len(os.listdir('/proc/self/task')) - threads)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    setting, started = result.stdout.split()
    assert setting == expected
    if given is None:
        assert started == "0"
