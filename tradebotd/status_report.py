"""``tradebotd status [--json]``: one screen on what the daemon is doing.

From the running daemon's ``GET /status`` (:func:`live_report`, served on ``http.listen``) or,
when no daemon answers there, from the store alone (:func:`store_report`): every strategy with
its status, stream, last evaluated candle, last signal, position, P&L (:mod:`tradebotd.pnl`) and
last error; the portfolios; the feed (live: connected, per-stream candle age; from the store:
the newest stored candle per stream) and the outbox. A table with rich, or the same data as
JSON (decimals as strings, times ISO-8601 UTC and epoch ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import urllib.error
import urllib.request
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Settings
from .isotime import format_time
from .model import StreamKey, normalize_symbol
from .pnl import Mark, StrategyPnl, portfolio_pnl, strategy_pnl
from .store.sqlite import SqliteStore

if TYPE_CHECKING:
    from .daemon import Daemon

__all__ = ["live_report", "run", "store_report"]

HTTP_TIMEOUT_S = 3.0


def _text(value: Decimal | None) -> str | None:
    return None if value is None else f"{value.normalize():f}"


def _marks(store: SqliteStore, keys: dict[str, StreamKey | None]) -> dict[str, Mark | None]:
    cache: dict[StreamKey, Mark | None] = {}
    marks: dict[str, Mark | None] = {}
    for sid, key in keys.items():
        if key is None:
            marks[sid] = None
            continue
        if key not in cache:
            last = store.last_close(key.symbol, key.interval)
            cache[key] = None if last is None else Mark(last[1], last[0])
        marks[sid] = cache[key]
    return marks


def store_report(store: SqliteStore, settings: Settings) -> dict[str, Any]:
    """Everything the store knows (the part of the report that needs no daemon)."""
    rows = store.list_strategies(archived=False)
    positions = store.positions()
    cursors = store.cursors()
    keys: dict[str, StreamKey | None] = {}
    for row in rows:
        held = positions.get(row.id)
        try:
            keys[row.id] = held[1] if held is not None else StreamKey(normalize_symbol(row.asset), row.interval)
        except ValueError:
            keys[row.id] = None
    marks = _marks(store, keys)
    pnls = strategy_pnl(store.trades(), marks)
    by_strategy: dict[str, list[StrategyPnl]] = defaultdict(list)
    for p in pnls:
        by_strategy[p.strategy_id].append(p)

    strategies = []
    for row in rows:
        key = keys[row.id]
        cursor = cursors.get(row.id)
        signal = store.recent_logs(row.id, levels=["signal"], limit=1)
        error = store.recent_logs(row.id, levels=["error"], limit=1)
        held = positions.get(row.id)
        mine = by_strategy.get(row.id, [])
        unrealised = [p.unrealised for p in mine if p.held]
        strategies.append(
            {
                "id": row.id,
                "name": row.name,
                "status": row.status,
                "kind": row.kind,
                "stream": None if key is None else str(key),
                "last_candle_time": cursor,
                "last_candle_time_iso": None if cursor is None else format_time(cursor),
                "last_run_at": row.last_run_at,
                "last_signal": None
                if not signal
                else {"message": signal[-1].message, "at": signal[-1].created_at},
                "position": None
                if held is None
                else {
                    "amount": _text(held[2].amount),
                    "entry_price": _text(held[2].entry_price),
                    "entry_time_iso": format_time(held[2].entry_time),
                },
                "realised_pnl": _text(sum((p.realised for p in mine), Decimal(0))),
                "unrealised_pnl": None
                if any(u is None for u in unrealised)
                else _text(sum((u for u in unrealised if u is not None), Decimal(0))),
                "error": row.error_message
                or (None if not error else error[-1].message if row.status == "error" else None),
                "last_error": None if not error else {"message": error[-1].message, "at": error[-1].created_at},
            }
        )
    streams = sorted({k for k in keys.values() if k is not None}, key=str)
    stored = []
    for key in streams:
        last = store.last_close(key.symbol, key.interval)
        stored.append(
            {
                "stream": str(key),
                "last_candle_time": None if last is None else last[0],
                "last_candle_time_iso": None if last is None else format_time(last[0]),
            }
        )
    return {
        "strategies": strategies,
        "portfolios": [p.as_json() for p in portfolio_pnl(store.portfolios(), pnls)],
        "stored_candles": stored,
        "outbox": _stored_outbox(settings),
    }


def _stored_outbox(settings: Settings) -> dict[str, Any] | None:
    if settings.store.backend != "supabase" or not Path(settings.store.path).exists():
        return None
    from .store.outbox import Outbox

    outbox = Outbox(str(settings.store.path))
    try:
        return {"depth": outbox.backlog(), "dead": outbox.dead()}
    except sqlite3.OperationalError:  # never ran with store.backend = "supabase"
        return {"depth": 0, "dead": 0}
    finally:
        outbox.close()


def _store_report_at(path: Path, settings: Settings) -> dict[str, Any]:
    store = SqliteStore(path, auto_checkpoint=False)  # a reader of its own: WAL readers never block the writer
    try:
        return store_report(store, settings)
    finally:
        store.close()


async def live_report(daemon: Daemon) -> dict[str, Any]:
    """``GET /status`` of a running daemon: the store's part plus what only it knows. The store's
    part is read in a thread on a connection of its own (about 15 ms for 100 strategies: not on
    the event loop, where candles are evaluated)."""
    report = await asyncio.to_thread(_store_report_at, daemon.store.path, daemon.settings)
    ops = daemon.ops
    health = ops.health() if ops is not None else None
    feed = daemon.feed
    now = daemon.server_now_ms()
    report["daemon"] = {
        "running": True,
        "pid": os.getpid(),
        "ready": daemon.ready,
        "health": None if health is None else health.as_json(),
        "summary": None if ops is None else ops.status_line(health),
        "orders_today": daemon.engine.counters.orders_today,
        "tasks": [
            {"name": t.name, "restarts": t.restarts, "failing": t.failing, "last_error": t.last_error}
            for t in daemon.supervisor.task_health()
        ],
    }
    stats = feed.stats
    report["feed"] = {
        "connected": feed.connected,
        "messages": stats.messages,
        "reconnects": stats.reconnects,
        "backfilled": stats.backfilled,
        "streams": [
            {
                "stream": str(p.key),
                "received": p.received,
                "last_candle_time": p.last_closed_open_ms,
                "last_candle_time_iso": None if p.last_closed_open_ms is None else format_time(p.last_closed_open_ms),
                "age_s": None if p.last_closed_close_ms is None else max(0, now - p.last_closed_close_ms) / 1000,
            }
            for p in sorted(feed.stream_progress(), key=lambda p: str(p.key))
        ],
    }
    if daemon.sync is not None:
        report["outbox"] = {"depth": daemon.sync.outbox.backlog(), "dead": daemon.sync.outbox.dead()}
    return report


# -- the command -----------------------------------------------------------------------------


def daemon_url(settings: Settings) -> str | None:
    host, port = settings.http.address
    if port == 0:
        return None  # any free port: only the daemon knows which
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def fetch(url: str, environ: dict[str, str] | os._Environ[str]) -> tuple[dict[str, Any] | None, str]:
    """The daemon's ``/status``, or None and why not."""
    request = urllib.request.Request(url.rstrip("/") + "/status")
    secret = environ.get("CRON_SECRET", "").strip()
    if secret:
        request.add_header("Authorization", f"Bearer {secret}")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body, ""
    except urllib.error.HTTPError as exc:
        hint = " (set CRON_SECRET to the daemon's)" if exc.code == 401 else ""
        return None, f"{url} answered {exc.code}{hint}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"no daemon answers at {url} ({reason})"


def run(args: argparse.Namespace, settings: Settings) -> int:
    url = args.url or daemon_url(settings)
    report, why = fetch(url, os.environ) if url else (None, "http.listen uses any free port (0)")
    if report is None:
        path = Path(settings.store.path)
        if not path.exists():
            print(f"tradebotd status: {why}, and there is no store at {path}", file=sys.stderr)
            return 1
        store = SqliteStore(path)
        try:
            store.migrate()
            report = store_report(store, settings)
        finally:
            store.close()
        report["daemon"] = {"running": False, "reason": why}
        report["feed"] = None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report)
    return 0


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=False)
    daemon = report["daemon"]
    if daemon["running"]:
        health = daemon.get("health") or {}
        state = "healthy" if health.get("status") == "ok" else "UNHEALTHY"
        started = "ready" if daemon["ready"] else "starting"
        console.print(f"[bold]daemon[/]   running (pid {daemon['pid']}), {started}, {state}")
        if daemon.get("summary"):
            console.print(f"         {daemon['summary']}")
        for problem in health.get("problems", []):
            console.print(f"         [red]{problem['check']}[/] {problem['subject']}: {problem['detail']}")
        for task in daemon.get("tasks", []):
            if task["restarts"] or task["failing"]:
                console.print(
                    f"         task {task['name']}: {task['restarts']} restart(s), last: {task['last_error']}"
                )
    else:
        console.print(f"[bold]daemon[/]   not running: {daemon['reason']}; from the store")
    feed = report.get("feed")
    if feed is not None:
        streams = feed["streams"]
        ages = [s["age_s"] for s in streams if s["age_s"] is not None]
        age = f", last candle {min(ages):.0f} s ago" if ages else ""
        console.print(
            f"[bold]feed[/]     {'connected' if feed['connected'] else 'NOT connected'}, "
            f"{len(streams)} stream(s){age}, {feed['reconnects']} reconnect(s), {feed['backfilled']} backfilled"
        )
    else:
        stored = report.get("stored_candles", [])
        last = ", ".join(f"{s['stream']} {s['last_candle_time_iso'] or 'none'}" for s in stored) or "no streams"
        console.print(f"[bold]feed[/]     down; newest stored candles: {last}")
    outbox = report.get("outbox")
    console.print(
        "[bold]outbox[/]   none (store.backend = sqlite)"
        if outbox is None
        else f"[bold]outbox[/]   {outbox['depth']} row(s) waiting, {outbox['dead']} refused"
    )
    for p in report.get("portfolios", []):
        console.print(
            f"[bold]portfolio[/] {p['name']} ({p['type']}): cash {p['cash']} {p['currency']}, "
            f"value {p['value'] or '?'}, realised {p['realised_pnl']}, unrealised {p['unrealised_pnl'] or '?'}"
        )

    table = Table(show_lines=False, pad_edge=False, box=None, header_style="bold")
    wide = console.width >= 130  # a narrow terminal gets the columns that fit in 80
    columns = ["id", "status", "stream"] + (["last candle"] if wide else []) + ["position", "realised"]
    columns += ["unrealised", "name", "last signal", "error"] if wide else ["unrealised", "error"]
    for column in columns:
        if column in ("name", "last signal", "error"):  # long text: cut, the JSON has all of it
            table.add_column(column, overflow="ellipsis", no_wrap=True, max_width=32)
        else:
            table.add_column(column, no_wrap=True)
    for s in report["strategies"]:
        position = s["position"]
        signal = s["last_signal"]
        cells = {
            "id": s["id"][:8],
            "status": s["status"],
            "stream": s["stream"] or "?",
            "last candle": s["last_candle_time_iso"] or "-",
            "position": "flat" if position is None else f"{position['amount']} @ {position['entry_price']}",
            "realised": s["realised_pnl"],
            "unrealised": s["unrealised_pnl"] or "?",
            "name": s["name"],
            "last signal": "-" if signal is None else f"{signal['at']} {signal['message']}",
            "error": s["error"] or "",
        }
        table.add_row(*(cells[c] for c in columns))
    if report["strategies"]:
        console.print(table)
    else:
        console.print("no strategies (tradebotd strategy add ...)")
