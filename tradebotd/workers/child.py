"""An evaluation process: ``python -m tradebotd.workers.child --fd N``.

It holds the sandboxed runtimes of the strategies placed on it and answers the daemon's requests
(:mod:`tradebotd.workers.protocol`) one at a time, on its main thread, until the daemon closes the
connection. It ignores SIGINT and SIGTERM: a Ctrl-C or a service stop reaches the whole process
group, and the daemon, which finishes its in-flight candle before it exits, still needs this
process for that; it ends when the daemon closes the socket (or dies).

Every request is answered, whatever happens while handling it: a strategy's failure is an
``error`` reply with the exception as the daemon would have seen it in-process.
"""

from __future__ import annotations

import argparse
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import structlog

from tradebotd.config import SandboxSettings
from tradebotd.engine import RuntimeFactory, StrategyRuntime
from tradebotd.logs import configure_logging
from tradebotd.model import StreamKey
from tradebotd.sandbox.sandboxed import EvalInfo
from tradebotd.workers import protocol as p

log = structlog.get_logger(__name__)


class Child:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._factory: RuntimeFactory | None = None
        self._runtimes: dict[int, StrategyRuntime] = {}

    def serve(self) -> None:
        while True:
            try:
                frame = self._conn.recv_bytes()
            except (EOFError, OSError):
                break
            try:
                reply = self._handle(p.loads(frame))
            except Exception as exc:  # every request gets its answer
                reply = ["error", p.encode_error(exc)]
            try:
                self._conn.send_bytes(p.dumps(reply))
            except OSError:  # the daemon went away (it closes the socket to stop us)
                break
        for runtime in self._runtimes.values():
            runtime.close()

    def _handle(self, request: list[Any]) -> list[Any]:
        kind = request[0]
        if kind == "step":
            return ["ok", self._step(request[1], request[2])]
        if kind == "steps":
            return ["ok", [self._step(floats, items) for floats, items in request[1]]]
        if kind == "init":
            self._factory = _factory(SandboxSettings.model_validate(request[1]))
            from os import getpid

            return ["ok", getpid()]
        if kind == "load":
            _, handle, row, symbol, interval = request
            if self._factory is None:
                raise RuntimeError("load before init")
            old = self._runtimes.pop(handle, None)
            if old is not None:
                old.close()
            self._runtimes[handle] = self._factory(p.decode_row(row), StreamKey(symbol, interval))
            return ["ok"]
        if kind == "history":
            rows = np.frombuffer(self._conn.recv_bytes(), dtype="<f8").reshape(-1, 6)
            self._runtimes[request[1]].push_history(rows)
            return ["ok"]
        if kind == "close":
            runtime = self._runtimes.pop(request[1], None)
            if runtime is not None:
                runtime.close()
            return ["ok"]
        raise ValueError(f"unknown request {kind!r:.40}")

    def _step(self, floats: list[float], items: list[list[Any]]) -> list[Any]:
        candle = (floats[0], floats[1], floats[2], floats[3], floats[4], floats[5])
        outcomes: list[Any] = []
        for handle, position in items:
            try:
                decision, info = self._runtimes[handle].step(candle, p.decode_position(position))
            except Exception as exc:
                outcomes.append(["e", p.encode_error(exc)])
            else:
                if not isinstance(info, EvalInfo):  # every sandbox reports an EvalInfo; others get one
                    info = EvalInfo(info.elapsed_us, tuple(info.console))
                outcomes.append(["d", *p.encode_decision(decision, info)])
        return outcomes


def _factory(settings: SandboxSettings) -> RuntimeFactory:
    from tradebotd.runtimes import make_runtime_factory

    return make_runtime_factory(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tradebotd.workers.child")
    parser.add_argument("--fd", type=int, required=True, help="the daemon's end of the socket pair")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(args.log_level, "json", stream=sys.stderr)
    Child(Connection(args.fd)).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
