"""``tradebotd run`` as a process: clear retry lines when Binance is unreachable, ``tradebotd orders``
beside it, exit 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "tradebotd" / "examples" / "sma_crossover.js"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_exchange_logs_one_line_per_retry_and_stops_cleanly(tmp_path: Path) -> None:
    port = closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEBOTD_")}
    env.update(
        {
            "TRADEBOTD_STORE__PATH": str(tmp_path / "run.db"),
            "TRADEBOTD_MARKET__WS_URL": f"ws://127.0.0.1:{port}",
            "TRADEBOTD_MARKET__REST_URL": f"http://127.0.0.1:{port}",
            "TRADEBOTD_MARKET__RECONNECT_MIN_S": "0.05",
            "TRADEBOTD_MARKET__RECONNECT_MAX_S": "0.2",
            "TRADEBOTD_EXCHANGE__API_SECRET": "do-not-print-me",
            "TRADEBOTD_HTTP__LISTEN": "127.0.0.1:0",
        }
    )
    cli = [sys.executable, "-m", "tradebotd"]
    subprocess.run(
        [*cli, "strategy", "add", "s", "--file", str(EXAMPLE), "--start"],
        env=env,
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    proc = subprocess.Popen(
        [*cli, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    assert proc.stdout is not None
    lines, retries = [], 0
    for line in proc.stdout:  # the process writes a line per event; stop reading after 3 retries
        lines.append(line)
        record = json.loads(line)  # not a TTY: every line is one JSON object
        if record["event"].startswith("market feed unreachable"):
            retries += 1
            assert "error" in record and "retry_in_s" in record
            if retries == 3:
                break
    # read-only commands work beside the running daemon, which holds the store's lock
    orders = subprocess.run([*cli, "orders", "--json"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert (orders.returncode, json.loads(orders.stdout)) == (0, []), orders.stderr
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    lines.extend(out.splitlines(keepends=True))
    text = "".join(lines) + err
    assert proc.returncode == 0, text
    assert retries == 3
    assert "Traceback" not in text
    assert "do-not-print-me" not in text
    assert any(json.loads(line)["event"] == "tradebotd stopped" for line in lines)
