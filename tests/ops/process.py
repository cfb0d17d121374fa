"""``tradebotd run`` as a child process, for the process tests: its JSON log lines read as they
come, a fake ``NOTIFY_SOCKET`` (a Unix datagram socket the test owns) and its HTTP server.
Every wait is on a message (a log line, a datagram, the process ending), never a sleep; each is
bounded by ``LIMIT_S`` so a broken daemon fails the test instead of hanging it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

from tradebotd.replay.server import ReplayServer

EXAMPLE = Path(__file__).resolve().parents[2] / "tradebotd" / "examples" / "sma_crossover.js"
LIMIT_S = 60.0
CLI = (sys.executable, "-m", "tradebotd")
Record = dict[str, Any]


def daemon_env(server: ReplayServer, db: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEBOTD_") and k != "CRON_SECRET"}
    env.update(
        {
            "TRADEBOTD_STORE__PATH": str(db),
            "TRADEBOTD_STORE__LOG_HOLDS": "true",  # a strategy_logs row for every decision
            "TRADEBOTD_MARKET__WS_URL": server.ws_url,
            "TRADEBOTD_MARKET__REST_URL": server.rest_url,
            "TRADEBOTD_MARKET__HISTORY": "30",
            "TRADEBOTD_MARKET__MAX_CANDLE_LAG_S": "0",  # replayed candles are historical
            "TRADEBOTD_MARKET__START_WINDOW_S": "0",  # and the tape stands still: no evaluation at start
            "TRADEBOTD_SANDBOX__EVAL_PROCESSES": "0",
            "TRADEBOTD_DAEMON__POLL_INTERVAL_S": "0.2",
            "TRADEBOTD_HTTP__LISTEN": "127.0.0.1:0",
            "TRADEBOTD_LOG__FORMAT": "json",
        }
    )
    env.update(extra)
    return env


async def add_strategy(env: Mapping[str, str], cwd: Path) -> str:
    """``tradebotd strategy add ... --start`` (through the CLI, as a user would); its id."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, "strategy", "add", "sma", "--file", str(EXAMPLE), "--asset", "btcusdt", "--interval", "1m",
        "--param", "fast=5", "--param", "slow=20", "--param", "amount=0.01", "--start", "--no-check",
        env=dict(env), cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), LIMIT_S)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip().split()[-1]


async def status_command(env: Mapping[str, str], cwd: Path, *args: str) -> str:
    """``tradebotd status ...``: its stdout (it must succeed)."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, "status", *args, env={**env, "COLUMNS": "200"}, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), LIMIT_S)
    assert proc.returncode == 0, err.decode()
    return out.decode()


class NotifySocket:
    """The systemd side of ``sd_notify``: a datagram socket; each message as ``{KEY: value}``."""

    def __init__(self) -> None:
        # sun_path holds 108 bytes: pytest's tmp_path can be longer, so a short directory of its own
        self._dir = tempfile.mkdtemp(prefix="tbn-", dir="/tmp")
        self.path = os.path.join(self._dir, "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.setblocking(False)
        self.received: list[dict[str, str]] = []

    async def next(self) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self._sock, 65536), LIMIT_S)
        message = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.received.append(message)
        return message

    async def until(self, predicate: Callable[[dict[str, str]], bool]) -> dict[str, str]:
        while True:
            message = await self.next()
            if predicate(message):
                return message

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class DaemonProcess:
    """``tradebotd run`` with ``env``; its stdout parsed line by line in the background."""

    def __init__(self, env: Mapping[str, str], cwd: Path) -> None:
        self._env = dict(env)
        self._cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.records: list[Record] = []
        self.stderr = b""
        self._new_line = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.url: str | None = None  # of its HTTP server, once it listens

    async def __aenter__(self) -> Self:
        self.proc = await asyncio.create_subprocess_exec(
            *CLI, "run", env=self._env, cwd=self._cwd,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        listening = await self.logged(lambda r: r["event"] == "http server listening")
        self.url = listening["url"]
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None and self.proc.stderr is not None
        async for line in self.proc.stdout:
            self.records.append(json.loads(line))  # not a TTY: every line is one JSON object
            self._new_line.set()
            self._new_line = asyncio.Event()
        self.stderr = await self.proc.stderr.read()
        self._new_line.set()

    def text(self) -> str:
        return "\n".join(json.dumps(r) for r in self.records) + "\n" + self.stderr.decode(errors="replace")

    async def logged(self, predicate: Callable[[Record], bool], *, after: int = 0) -> Record:
        """The first log record from index ``after`` on that matches, waiting for it."""
        async with asyncio.timeout(LIMIT_S):
            seen = after
            while True:
                new_line = self._new_line
                for record in self.records[seen:]:
                    if predicate(record):
                        return record
                seen = max(seen, len(self.records))
                if self._reader is not None and self._reader.done():
                    raise AssertionError(f"the daemon ended without logging it:\n{self.text()}")
                await new_line.wait()

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def exited(self) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), LIMIT_S)
        if self._reader is not None:
            await self._reader
        return code

    async def get(self, path: str, **kw: Any) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}{path}", **kw) as response:
            return response.status, await response.text()

    async def post(self, path: str, **kw: Any) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.post(f"{self.url}{path}", **kw) as response:
            return response.status, await response.text()
