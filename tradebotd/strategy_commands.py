"""``tradebotd strategy add|update|show|remove|stop|start|list|logs``: strategies without SQL.

What each command promises (exit codes: 0 done, 1 refused or failed, 2 bad usage or unknown id):

* ``add`` loads the code exactly as ``strategy check`` does (``check.check_source`` over the
  built-in synthetic series at the strategy's interval) and refuses it with check's message
  (file:line:column, the source line) unless ``--no-check``; warns about parameters the code
  never reads; asks the exchange about the asset (``symbol_check``): a symbol it refuses is stored
  in status ``error`` with the exchange's message (exit 1), no answer is a warning.
* ``update`` changes code, parameters (merged; ``--unset-param`` removes), asset, interval, name
  or portfolio, checked the same way; nothing is changed when a check fails. The daemon reloads
  the strategy within ``daemon.poll_interval_s`` (``updated_at`` changes its fingerprint). The
  asset and the portfolio cannot change under an open position: a sell would be priced on the
  new market, or booked in the other portfolio.
* ``stop ID --close-position`` pauses the strategy and, in the same transaction, asks the
  daemon to close its position (a ``close_requests`` row, see ``Engine.close_positions``): the
  daemon sells it through the normal order path at the next fresh price of its stream.
* ``remove`` archives (the row and its history stay; ``list`` hides it unless ``--all``); it
  refuses while a position is open, unless ``--close-position`` (archive and close).
* ``show`` prints the code, parameters, status, the position with its P&L (``tradebotd.pnl``),
  pending close requests and the last decisions; ``--json`` the same as one object.

Times people read are ISO-8601 UTC; ``--json`` keeps epoch milliseconds where the store has them
(and adds ``*_iso``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import cliargs
from .config import Settings
from .errors import TradebotdError
from .isotime import format_time
from .model import StreamKey, normalize_symbol
from .pnl import Mark, StrategyPnl, strategy_pnl
from .store.base import LogEntry, StrategyKind, StrategyRow, StrategyStatus
from .store.lock import holder_pid
from .store.sqlite import SqliteStore
from .strategy_files import strategy_code, strategy_kind

__all__ = ["add_arguments", "run"]

LAST_DECISIONS = 10
STOP_REASON = "close requested (tradebotd strategy stop --close-position)"
REMOVE_REASON = "close requested (tradebotd strategy remove --close-position)"


class Refused(TradebotdError):
    """The command refuses to do what was asked; the message says why and what to do (exit 1)."""


def add_arguments(
    strategy: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """The ``strategy`` subcommands (``check`` is added by ``cli``: its module is heavy)."""
    add = strategy.add_parser("add", parents=[common], help="add a strategy from a file (checked first); prints its id")
    add.add_argument("name")
    add.add_argument("--file", required=True, type=Path, help="strategy source: .js, .ts, or native .wasm/.wat")
    add.add_argument(
        "--by-path", action="store_true", help="native strategies: store the file's path instead of its contents"
    )
    add.add_argument("--asset", default="btcusdt", type=cliargs.symbol, help="symbol (default: btcusdt)")
    add.add_argument("--interval", default="1m", type=cliargs.interval, help="kline interval (default: 1m)")
    cliargs.add_parameter_option(add)
    add.add_argument("--portfolio", metavar="ID", help="portfolio to trade in (id or prefix; default: the paper one)")
    add.add_argument("--start", action="store_true", help="set status 'running' right away")
    add.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing (and print the existing id) if a strategy with this name exists",
    )
    add.add_argument(
        "--no-check", action="store_true", help="store the code without loading it and without asking the exchange"
    )

    update = strategy.add_parser("update", parents=[common], help="change a strategy; the daemon reloads it")
    update.add_argument("id", help="strategy id (or a unique prefix)")
    update.add_argument("--file", type=Path, help="new code: .js, .ts, or native .wasm/.wat")
    update.add_argument("--by-path", action="store_true", help="with --file: store a native module's path")
    cliargs.add_parameter_option(update)
    update.add_argument("--unset-param", action="append", default=[], metavar="KEY", help="remove a parameter")
    update.add_argument("--asset", type=cliargs.symbol, help="new symbol (not while a position is open)")
    update.add_argument("--interval", type=cliargs.interval, help="new kline interval")
    update.add_argument("--name", help="new name")
    update.add_argument("--portfolio", metavar="ID", help="new portfolio (not while a position is open)")
    update.add_argument("--no-check", action="store_true", help="skip loading the code and asking the exchange")

    listing = strategy.add_parser("list", parents=[common], help="list strategies")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--all", action="store_true", help="include archived (removed) strategies")

    show = strategy.add_parser("show", parents=[common], help="code, parameters, status, position, last decisions")
    show.add_argument("id", help="strategy id (or a unique prefix)")
    show.add_argument("--json", action="store_true", help="one JSON object")

    start = strategy.add_parser("start", parents=[common], help="set status 'running'")
    start.add_argument("id", help="strategy id (or a unique prefix)")
    stop = strategy.add_parser("stop", parents=[common], help="set status 'paused'")
    stop.add_argument("id", help="strategy id (or a unique prefix)")
    stop.add_argument(
        "--close-position", action="store_true", help="also have the daemon sell the open position at market"
    )

    remove = strategy.add_parser("remove", parents=[common], help="archive a strategy (refused with an open position)")
    remove.add_argument("id", help="strategy id (or a unique prefix)")
    remove.add_argument(
        "--close-position", action="store_true", help="archive it and have the daemon sell the open position"
    )

    logs = strategy.add_parser("logs", parents=[common], help="print a strategy's log")
    logs.add_argument("id", help="strategy id (or a unique prefix)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    logs.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args: argparse.Namespace, settings: Settings) -> int:
    store = SqliteStore(settings.store.path)
    try:
        store.migrate()
        command = args.strategy_command
        if command == "add":
            return _add(args, settings, store)
        if command == "update":
            return _update(args, settings, store)
        if command == "list":
            return _list(store, as_json=args.json, archived=args.all)
        if command == "show":
            return _show(store, store.resolve_strategy_id(args.id), as_json=args.json)
        if command == "start":
            sid = store.resolve_strategy_id(args.id)
            store.update_strategy(sid, status="running")
            print(f"{sid} running")
            return 0
        if command in ("stop", "remove"):
            return _stop(store, settings, store.resolve_strategy_id(args.id), command, args.close_position)
        if command == "logs":
            return _print_logs(store, store.resolve_strategy_id(args.id), follow=args.follow, as_json=args.json)
        raise AssertionError(f"unhandled strategy command {command}")
    except Refused as exc:
        print(f"tradebotd strategy {args.strategy_command}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _warn(text: str) -> None:
    print(text, file=sys.stderr)


# -- add / update: the checks ---------------------------------------------------------------------


def _check_code(
    file: Path, code: str, kind: StrategyKind, interval: str, parameters: Mapping[str, Any], settings: Settings
) -> None:
    """``strategy check``'s load and run over the synthetic series; ``Refused`` with its message."""
    from .check import check_source, failure_lines, parameter_warnings, synthetic_candles

    candles, source = synthetic_candles(interval)
    report = check_source(
        code, kind, file=file.name, parameters=parameters, settings=settings, candles=candles, source=source
    )
    for line in parameter_warnings(report):
        _warn(line)
    if not report.ok:
        details = "\n".join(failure_lines(report, code))
        raise Refused(f"{file} does not pass `tradebotd strategy check` (--no-check stores it anyway):\n{details}")


def _check_asset(asset: str, settings: Settings) -> str | None:
    """The exchange's refusal of ``asset``, or None (a warning is printed when it cannot tell)."""
    from .symbol_check import check_symbol

    result = check_symbol(settings.market.rest_url, normalize_symbol(asset))
    if result.outcome == "refused":
        return result.message
    if result.outcome == "unreachable":
        _warn(f"warning: {result.message}; stored without this check")
    elif result.outcome == "not_trading":
        _warn(f"warning: {result.message}")
    return None


def _code_of(file: Path, by_path: bool, *, suffixless: StrategyKind | None) -> tuple[StrategyKind, str]:
    kind = strategy_kind(file, suffixless=suffixless)
    if by_path and kind != "wasm":
        raise Refused("--by-path is for native .wasm/.wat strategies")
    return kind, strategy_code(file, kind, wasm_by_path=by_path)


def _add(args: argparse.Namespace, settings: Settings, store: SqliteStore) -> int:
    if args.if_missing:
        existing = store.find_strategy_by_name(args.name)
        if existing is not None:
            print(existing.id)
            return 0
    kind, code = _code_of(args.file, args.by_path, suffixless="js")
    parameters = dict(args.param)
    refusal: str | None = None
    if not args.no_check:
        _check_code(args.file, code, kind, args.interval, parameters, settings)
        refusal = _check_asset(args.asset, settings)
    if args.portfolio is not None:
        portfolio = store.resolve_portfolio_id(args.portfolio)
    else:
        portfolio = store.ensure_paper_portfolio(
            user_id=settings.store.user_id, cash=settings.paper.cash, currency=settings.paper.currency
        )
    sid = store.add_strategy(
        name=args.name,
        user_id=settings.store.user_id,
        code=code,
        kind=kind,
        asset=args.asset,
        interval=args.interval,
        parameters=parameters,
        portfolio_id=portfolio,
        status="error" if refusal else "running" if args.start else "draft",
        error_message=refusal,
    )
    print(sid)
    if refusal is not None:
        _warn(f"tradebotd strategy add: {refusal}; stored with status 'error' (fix it with strategy update --asset)")
        return 1
    return 0


def _update(args: argparse.Namespace, settings: Settings, store: SqliteStore) -> int:
    sid = store.resolve_strategy_id(args.id)
    row = store.get_strategy(sid)
    changes: list[str] = []
    kind: StrategyKind | None = None
    code: str | None = None
    if args.file is not None:
        kind, code = _code_of(args.file, args.by_path, suffixless=row.kind)
        if code != row.source or kind != row.kind:
            changes.append(f"code from {args.file}")
    parameters = dict(row.parameters)
    for key in args.unset_param:
        if key not in parameters:
            raise Refused(f"--unset-param {key}: the strategy has no parameter {key!r}")
        del parameters[key]
    parameters.update(dict(args.param))
    if parameters != dict(row.parameters):
        changes.append(f"parameters {json.dumps(parameters)}")
    asset = args.asset if args.asset is not None and args.asset != row.asset else None
    interval = args.interval if args.interval is not None and args.interval != row.interval else None
    name = args.name if args.name is not None and args.name != row.name else None
    portfolio = store.resolve_portfolio_id(args.portfolio) if args.portfolio is not None else None
    portfolio = portfolio if portfolio != row.portfolio_id else None
    changes += [
        f"{what} {row_value} -> {new}"
        for what, row_value, new in (
            ("asset", row.asset, asset),
            ("interval", row.interval, interval),
            ("name", row.name, name),
            ("portfolio", row.portfolio_id, portfolio),
        )
        if new is not None
    ]
    if not changes:
        print(f"{sid}: nothing to change")
        return 0
    position = store.positions().get(sid)
    if position is not None and (asset is not None or portfolio is not None):
        _, key, held = position
        raise Refused(
            f"{sid} holds {_d(held.amount)} {key.symbol}: its {'asset' if asset else 'portfolio'} cannot change "
            f"under an open position; close it first (tradebotd strategy stop {sid[:8]} --close-position)"
        )
    if not args.no_check:
        if code is not None or parameters != dict(row.parameters) or interval is not None:
            _check_code(
                args.file or Path(f"strategy.{kind or row.kind}"),
                code if code is not None else row.source,
                kind or row.kind,
                interval or row.interval,
                parameters,
                settings,
            )
        if asset is not None and (refusal := _check_asset(asset, settings)) is not None:
            raise Refused(f"{refusal}; nothing changed")
    store.update_strategy(
        sid,
        code=code,
        kind=kind,
        parameters=parameters if parameters != dict(row.parameters) else None,
        asset=asset,
        interval=interval,
        name=name,
        portfolio_id=portfolio,
    )
    print(f"{sid} updated: {'; '.join(changes)}")
    if row.status == "running":
        print(f"the daemon reloads it within daemon.poll_interval_s ({settings.daemon.poll_interval_s:g} s)")
    return 0


# -- stop / remove ----------------------------------------------------------------------------------


def _stop(store: SqliteStore, settings: Settings, sid: str, command: str, close: bool) -> int:
    position = store.positions().get(sid)
    status: StrategyStatus = "paused" if command == "stop" else "archived"
    if position is not None and command == "remove" and not close:
        _, key, held = position
        raise Refused(
            f"{sid} holds {_d(held.amount)} {key.symbol}; nothing changed. Close the position with "
            f"--close-position (the daemon sells it), or keep the strategy (tradebotd strategy stop {sid[:8]})"
        )
    reason = (STOP_REASON if command == "stop" else REMOVE_REASON) if close and position is not None else None
    store.update_strategy(sid, status=status, close_position=reason)
    print(f"{sid} {status}")
    if close and position is None:
        print("no open position to close")
    elif reason is not None and position is not None:
        _, key, held = position
        pid = holder_pid(settings.store.path)
        who = (
            f"the daemon (pid {pid}) sells it at the next price it sees for {key.symbol}"
            if pid is not None
            else "no daemon is running on this store now: `tradebotd run` sells it when it starts"
        )
        print(f"closing the position of {_d(held.amount)} {key.symbol}: {who}")
    return 0


# -- list / show -------------------------------------------------------------------------------------


def _list(store: SqliteStore, *, as_json: bool, archived: bool) -> int:
    rows = store.list_strategies(archived=archived)
    if as_json:
        print(json.dumps([_row_json(r) for r in rows], indent=2))
        return 0
    print(f"{'ID':36}  {'STATUS':8}  {'ASSET':10}  {'INT':4}  NAME")
    for r in rows:
        print(f"{r.id:36}  {r.status:8}  {r.asset:10}  {r.interval:4}  {r.name}")
        if r.error_message:
            print(f"{'':36}  error: {r.error_message}")
    return 0


def _row_json(r: StrategyRow) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "asset": r.asset,
        "interval": r.interval,
        "status": r.status,
        "kind": r.kind,
        "parameters": dict(r.parameters),
        "last_run_at": r.last_run_at,
        "last_signal_at": r.last_signal_at,
        "error_message": r.error_message,
        "portfolio_id": r.portfolio_id,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    }


def strategy_marks(store: SqliteStore, rows: Sequence[StrategyRow]) -> dict[str, Mark | None]:
    """Each strategy's mark: the last stored close of its position's stream (else of its own)."""
    positions = store.positions()
    marks: dict[str, Mark | None] = {}
    for row in rows:
        held = positions.get(row.id)
        if held is not None:
            key = held[1]
        else:
            try:
                key = StreamKey(normalize_symbol(row.asset), row.interval)
            except ValueError:
                marks[row.id] = None
                continue
        last = store.last_close(key.symbol, key.interval)
        marks[row.id] = None if last is None else Mark(last[1], last[0])
    return marks


def _show(store: SqliteStore, sid: str, *, as_json: bool) -> int:
    row = store.get_strategy(sid)
    pnl = strategy_pnl(store.trades(sid), strategy_marks(store, [row]))
    position = store.positions().get(sid)
    closes = [r for r in store.close_requests() if r.strategy_id == sid]
    decisions = store.recent_logs(sid, levels=("signal", "trade", "error"), limit=LAST_DECISIONS)
    if as_json:
        doc = _row_json(row)
        doc["code"] = row.source
        doc["position"] = None
        if position is not None:
            _, key, held = position
            doc["position"] = {
                "symbol": key.symbol,
                "interval": key.interval,
                "amount": str(held.amount),
                "entry_price": str(held.entry_price),
                "entry_time": held.entry_time,
                "entry_time_iso": format_time(held.entry_time),
                "take_profit": None if held.take_profit is None else str(held.take_profit),
                "stop_loss": None if held.stop_loss is None else str(held.stop_loss),
            }
        doc["pnl"] = [p.as_json() for p in pnl]
        doc["close_requests"] = [{"id": r.id, "reason": r.reason, "requested_at": r.requested_at} for r in closes]
        doc["last_decisions"] = [_log_json(e) for e in decisions]
        print(json.dumps(doc, indent=2))
        return 0
    out = [
        f"id          {row.id}",
        f"name        {row.name}",
        f"status      {row.status}" + (f" (error: {row.error_message})" if row.error_message else ""),
        f"market      {row.asset} {row.interval}",
        f"kind        {row.kind}",
        f"portfolio   {row.portfolio_id or '-'}",
        f"parameters  {json.dumps(dict(row.parameters))}",
        f"created     {row.created_at}   updated {row.updated_at}",
        f"last run    {row.last_run_at or '-'}   last signal {row.last_signal_at or '-'}",
    ]
    if position is not None:
        _, key, held = position
        levels = ", ".join(
            f"{name} {_d(value)}"
            for name, value in (("take-profit", held.take_profit), ("stop-loss", held.stop_loss))
            if value is not None
        )
        out.append(
            f"position    {_d(held.amount)} {key.symbol} since {format_time(held.entry_time)}, "
            f"entry {_d(held.entry_price)}" + (f", {levels}" if levels else "")
        )
    else:
        out.append("position    none")
    out += [f"p&l         {_pnl_text(p)}" for p in pnl]
    out += [f"closing     requested {r.requested_at}: waiting for the daemon" for r in closes]
    out.append(f"last decisions ({len(decisions)}):" if decisions else "last decisions: none")
    out += [f"  {_log_text(e)}" for e in decisions]
    out.append(f"code ({len(row.source.splitlines())} lines):")
    out += _code_lines(row)
    print("\n".join(out))
    return 0


def _pnl_text(p: StrategyPnl) -> str:
    if p.mark is not None and p.held:
        mark = f"marked at {_d(p.mark.price)} ({format_time(p.mark.candle_time)} candle): value {_d(p.value)}, "
    elif p.held:
        mark = "no stored close to mark it at, "
    else:
        mark = ""
    unrealised = "n/a" if p.unrealised is None else f"{p.unrealised.normalize():+f}"
    realised = f"{p.realised.normalize():+f}"
    portfolio = f" (portfolio {p.portfolio_id})" if p.portfolio_id else ""
    return f"{mark}realised {realised}, unrealised {unrealised}, fees {_d(p.fees)}, {p.fills} fills{portfolio}"


def _d(value: Decimal | None) -> str:
    """A decimal as people write it: ``0.01``, not ``0.01000000`` or ``1E+1``."""
    return "-" if value is None else f"{value.normalize():f}"


def _code_lines(row: StrategyRow) -> list[str]:
    source = row.source
    if row.kind == "wasm" and not source.lstrip().startswith("("):
        return [f"  {source}" if source.startswith("file:") else f"  (native module, {len(source)} base64 characters)"]
    lines = source.splitlines()
    width = len(str(len(lines)))
    return [f"  {i:>{width}} | {line}" for i, line in enumerate(lines, start=1)]


# -- logs ----------------------------------------------------------------------------------------------

_TIME_FIELDS = ("candle_time", "entry_time", "exit_time")


def _log_json(entry: LogEntry) -> dict[str, Any]:
    return {"created_at": entry.created_at, "level": entry.level, "message": entry.message, "data": entry.data}


def _log_text(entry: LogEntry) -> str:
    data = dict(entry.data or {})
    for name in _TIME_FIELDS:  # epoch ms in the row, ISO-8601 for people
        if isinstance(data.get(name), int):
            data[name] = format_time(data[name])
    tail = f"  {json.dumps(data)}" if data else ""
    return f"{entry.created_at}  {entry.level:6}  {entry.message}{tail}"


def _print_logs(store: SqliteStore, strategy_id: str, *, follow: bool, as_json: bool) -> int:
    after = 0
    try:
        while True:
            for rowid, entry in store.logs_after(strategy_id, after):
                after = rowid
                print(json.dumps(_log_json(entry)) if as_json else _log_text(entry), flush=True)
            if not follow:
                return 0
            time.sleep(0.5)  # polling a local file; a follow is interactive
    except KeyboardInterrupt:
        return 0
