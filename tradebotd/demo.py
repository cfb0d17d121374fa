"""``make demo``: the real daemon against a local replay of the bundled candle series.

Runs exactly what a user would run, as separate processes: ``tradebotd replay-server`` (Binance's
WebSocket and REST protocols on 127.0.0.1), then ``tradebotd strategy add ... --start`` and
``tradebotd run`` with a throwaway config pointing at the replay. Trades are printed as the daemon
records them in SQLite. No network needed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .store.sqlite import SqliteStore

EXAMPLE = Path(__file__).resolve().parent / "examples" / "sma_crossover.js"


def _start_replay(speed: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tradebotd", "replay-server", "--speed", str(speed), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        match = re.match(r"PORT=(\d+)", line.strip())
        if match:
            threading.Thread(target=lambda: [None for _ in proc.stdout or []], daemon=True).start()
            return proc, int(match.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("replay server did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tradebotd.demo")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    parser.add_argument("--speed", type=float, default=60.0, help="replay speed (default 60: a 1m candle per second)")
    args = parser.parse_args(argv)

    replay, port = _start_replay(args.speed)
    workdir = Path(tempfile.mkdtemp(prefix="tradebotd-demo-"))
    config = workdir / "demo.toml"
    db = workdir / "demo.db"
    config.write_text(
        "[market]\n"
        f'ws_url = "ws://127.0.0.1:{port}"\n'
        f'rest_url = "http://127.0.0.1:{port}"\n'
        "history = 100\n"
        "# replayed candles carry their historical timestamps: the staleness guard would refuse them\n"
        "max_candle_lag_s = 0\n"
        "reconnect_min_s = 0.5\n"
        "[store]\n"
        f'path = "{db}"\n'
        "[daemon]\n"
        "poll_interval_s = 1.0\n"
        "[http]\n"
        "# any free port: the demo must not collide with a daemon already on 8787\n"
        'listen = "127.0.0.1:0"\n'
        "[log]\n"
        'format = "console"\n'
    )
    env = {**os.environ, "TRADEBOTD_CONFIG": str(config)}
    cli = [sys.executable, "-m", "tradebotd"]
    sid = subprocess.run(
        [
            *cli,
            "strategy",
            "add",
            "SMA 5/20 demo",
            "--file",
            str(EXAMPLE),
            "--asset",
            "btcusdt",
            "--interval",
            "1m",
            "--param",
            "fast=5",
            "--param",
            "slow=20",
            "--param",
            "amount=0.01",
            "--start",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"demo: replay on 127.0.0.1:{port} at {args.speed:g}x, store {db}, strategy {sid}", flush=True)
    daemon = subprocess.Popen([*cli, "run"], env=env)
    seen = 0
    try:
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.5)
            if not db.exists():
                continue
            store = SqliteStore(db)
            trades = store.trades(sid)
            store.close()
            for t in trades[seen:]:
                print(
                    f"demo: TRADE {t.side:4} {t.amount} {t.symbol} at {t.price} (fee {t.fee}) "
                    f"candle {t.candle_time} id {t.client_order_id}",
                    flush=True,
                )
            seen = len(trades)
    except KeyboardInterrupt:
        pass
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
        replay.terminate()
        replay.wait(timeout=10)
    print(f"demo: daemon exited with {code}; {seen} trades recorded in {db}", flush=True)
    return 0 if code == 0 and seen > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
