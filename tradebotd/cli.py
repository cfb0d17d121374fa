"""The ``tradebotd`` command line (also ``python -m tradebotd``).

Exit codes: 0 success, 1 a runtime failure, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, cliargs, order_commands, portfolio_commands, strategy_commands
from .config import Settings, load_settings
from .errors import ConfigError, TradebotdError
from .logs import configure_logging, register_secret
from .store.base import NotFound
from .store.lock import StoreLock, StoreLocked
from .store.sqlite import SqliteStore

__all__ = ["main"]

# numpy's OpenBLAS starts a worker thread per CPU when numpy is imported, and each spins for about
# 0.1 s of CPU before it sleeps (measured: `import numpy` 0.10-0.14 s user time, 0.05 with one
# thread). tradebotd does no linear algebra, so its processes run BLAS on the calling thread: set
# here, before anything imports numpy, it holds for this process and the evaluation and chart
# processes it starts. A value in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tradebotd", description="Real-time trading daemon with sandboxed strategies."
    )
    parser.add_argument("--version", action="version", version=f"tradebotd {__version__}")
    cliargs.add_config_option(parser)
    common = argparse.ArgumentParser(add_help=False)
    cliargs.add_config_option(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", parents=[common], help="run the daemon until SIGTERM/SIGINT")
    sub.add_parser("check-config", parents=[common], help="validate and print the effective config (secrets masked)")
    status = sub.add_parser(
        "status", parents=[common], help="one screen: the running daemon (http.listen), else the store"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--url", help="the daemon's HTTP server (default: from http.listen); without an answer, the store is read"
    )

    db = sub.add_parser("db", help="store administration").add_subparsers(dest="db_command", required=True)
    db.add_parser("init", parents=[common], help="create or migrate the store and the paper portfolio")
    migrate = db.add_parser(
        "migrate", parents=[common], help="apply the Supabase migrations to a PostgreSQL database (self-hosted)"
    )
    migrate.add_argument("--dsn", required=True, help="postgresql://user:password@host:5432/database")

    sync = sub.add_parser("sync", help="Supabase replication").add_subparsers(dest="sync_command", required=True)
    sync_status = sync.add_parser(
        "status", parents=[common], help="outbox backlog, rows refused by Supabase, the last error"
    )
    sync_status.add_argument("--json", action="store_true", help="machine-readable output")

    strategy = sub.add_parser("strategy", help="manage strategies").add_subparsers(
        dest="strategy_command", required=True
    )
    strategy_commands.add_arguments(strategy, common)
    check = strategy.add_parser(
        "check", parents=[common], help="load a strategy as the daemon would and run it over candles"
    )
    _lazy(check, "tradebotd.check", ("strategy", "check"), argv)
    portfolio_commands.add_arguments(sub, common)
    order_commands.add_arguments(sub, common)

    backtest = sub.add_parser(
        "backtest", parents=[common], help="replay candles through a strategy with the paper broker's rules"
    )
    _lazy(backtest, "tradebotd.backtest.cli", ("backtest",), argv)
    data = sub.add_parser("data", help="historical market data").add_subparsers(dest="data_command", required=True)
    download = data.add_parser("download", parents=[common], help="fetch historical klines (resumable)")
    _lazy(download, "tradebotd.data.download", ("data", "download"), argv)

    replay = sub.add_parser("replay-server", help="serve candle CSVs over Binance's WebSocket and REST protocols")
    _lazy(replay, "tradebotd.replay.cli", ("replay-server",), argv)
    return parser


def _command_words(argv: Sequence[str]) -> list[str]:
    """The positional words of a command line (``--config PATH`` skipped)."""
    words, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--config":
            skip = True
        elif not token.startswith("-"):
            words.append(token)
    return words


def _lazy(parser: argparse.ArgumentParser, module: str, words: tuple[str, ...], argv: Sequence[str] | None) -> None:
    """Give ``parser`` the arguments of ``module`` only when the command line selects it: backtest,
    download and check pull in ccxt, matplotlib and the replay server (about 0.8 s of imports)
    that ``strategy list`` should not pay for. Without ``argv`` (documentation) always load."""
    if argv is None or tuple(_command_words(argv)[: len(words)]) == words:
        _module(module).add_arguments(parser)
    else:
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _module(name: str) -> Any:
    return importlib.import_module(name)


def _open_store(settings: Settings) -> SqliteStore:
    store = SqliteStore(settings.store.path)
    store.migrate()
    return store


def cmd_run(settings: Settings) -> int:
    """``tradebotd run``: one daemon per store (``store.lock``), then the daemon until a signal."""
    lock = StoreLock(settings.store.path)
    try:
        lock.acquire()
    except StoreLocked as exc:
        print(f"tradebotd: {exc}", file=sys.stderr)
        return 1
    try:
        configure_logging(settings.log.level, settings.log.format)
        from .daemon import run_daemon

        return asyncio.run(run_daemon(settings))
    finally:
        lock.release()


def cmd_db_init(settings: Settings) -> int:
    store = SqliteStore(settings.store.path)
    try:
        version = store.migrate()
        portfolio = store.ensure_paper_portfolio(
            user_id=settings.store.user_id, cash=settings.paper.cash, currency=settings.paper.currency
        )
    finally:
        store.close()
    print(f"store {settings.store.path} ready (schema version {version}, paper portfolio {portfolio})")
    return 0


def cmd_db_migrate(dsn: str) -> int:
    from psycopg.conninfo import conninfo_to_dict

    from .sync.pgmigrate import apply_migrations, migrations_dir

    try:
        register_secret(str(conninfo_to_dict(dsn).get("password") or ""))
    except Exception:  # not a parsable DSN: psycopg says why when connecting; mask it all meanwhile
        register_secret(dsn)
    applied = apply_migrations(dsn)
    if applied:
        print(f"applied {len(applied)} migrations from {migrations_dir()}: " + ", ".join(m.version for m in applied))
    else:
        print("database is up to date")
    return 0


def cmd_sync_status(settings: Settings, *, as_json: bool) -> int:
    import sqlite3

    from .store.outbox import DDL, Outbox

    path = settings.store.path
    if not Path(path).exists():
        print(f"tradebotd: no store at {path}", file=sys.stderr)
        return 1
    outbox = Outbox(str(path))
    try:
        try:
            status = outbox.status()
        except sqlite3.OperationalError:  # never ran with store.backend = "supabase"
            outbox.db.executescript(DDL)
            status = outbox.status()
    finally:
        outbox.close()
    status["backend"] = settings.store.backend
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"backend      {status['backend']}")
    by_table = ", ".join(f"{t} {n}" for t, n in status["backlog_by_table"].items())
    print(f"backlog      {status['backlog']} rows" + (f" ({by_table}; oldest {status['oldest']})" if by_table else ""))
    print(f"refused      {status['dead']} rows (kept in outbox_dead)")
    error = status["last_error"]
    print(f"last error   {'none' if error is None else error['error']}")
    print(f"mirrored to  {status['mirror_updated_at'] or 'never polled'}")
    return 0


def cmd_replay_server(args: argparse.Namespace) -> int:
    from .replay.cli import run_from_args
    from .replay.series import ReplayDataError

    try:
        asyncio.run(run_from_args(args))
    except KeyboardInterrupt:
        pass
    except (ReplayDataError, OSError) as exc:
        print(f"tradebotd replay-server: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    if args.command == "replay-server":
        configure_logging("info", "auto", stream=sys.stderr, cache=False)
        return cmd_replay_server(args)
    try:
        settings, config_file = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"tradebotd: {exc}", file=sys.stderr)
        return 2
    for secret in (settings.exchange.api_key, settings.exchange.api_secret, settings.store.resolved_supabase_key()):
        if secret is not None:
            register_secret(secret.get_secret_value())
    register_secret(os.environ.get("CRON_SECRET"))  # the trigger's bearer token (tradebotd.ops.http)

    try:
        if args.command == "check-config":
            print(f"# config file: {config_file or 'none (defaults and environment)'}")
            print(json.dumps(settings.masked(), indent=2, default=str))
            return 0
        if args.command == "run":
            return cmd_run(settings)
        configure_logging(settings.log.level, settings.log.format, stream=sys.stderr, cache=False)
        if args.command == "db":
            return cmd_db_migrate(args.dsn) if args.db_command == "migrate" else cmd_db_init(settings)
        if args.command == "sync":
            return cmd_sync_status(settings, as_json=args.json)
        if args.command == "strategy" and args.strategy_command == "check":
            return int(_module("tradebotd.check").run(args))
        if args.command == "strategy":
            return strategy_commands.run(args, settings)
        if args.command == "status":
            return int(_module("tradebotd.status_report").run(args, settings))
        if args.command == "positions":
            return portfolio_commands.run_positions(args, settings)
        if args.command == "portfolio":
            return portfolio_commands.run_portfolio(args, settings)
        if args.command == "orders":
            return order_commands.run_orders(args, settings)
        if args.command == "backtest":
            return int(_module("tradebotd.backtest.cli").run(args, settings))
        if args.command == "data":
            return int(_module("tradebotd.data.download").run(args, settings))
    except NotFound as exc:
        print(f"tradebotd: {exc}", file=sys.stderr)
        return 2
    except TradebotdError as exc:
        print(f"tradebotd: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
