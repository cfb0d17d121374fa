"""``tradebotd positions`` and ``tradebotd portfolio add|list``: what is held, what it is worth,
what was made, from the store (definitions in ``tradebotd.pnl``).

    tradebotd positions [--all] [--json]     open positions per strategy (--all: every strategy that
                                             traded), then each portfolio's totals
    tradebotd portfolio add NAME --type paper|live [--cash X] [--currency C]    prints the new id
    tradebotd portfolio list [--json]        cash, positions, value, realised and unrealised P&L, fees

Positions are marked to the last close the store holds for their stream (the daemon records
every closed candle), and that candle's time is shown: a mark from a daemon that stopped a day
ago says so. Exit codes: 0 done, 1 refused, 2 bad usage or unknown id.
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal, InvalidOperation

from .config import Settings
from .isotime import format_time
from .pnl import PortfolioPnl, StrategyPnl, portfolio_pnl, strategy_pnl
from .store.sqlite import SqliteStore
from .strategy_commands import strategy_marks

__all__ = ["add_arguments", "run_portfolio", "run_positions"]


def _cash(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    positions = sub.add_parser("positions", parents=[common], help="open positions and P&L per strategy and portfolio")
    positions.add_argument("--all", action="store_true", help="also strategies that are flat now but traded")
    positions.add_argument("--json", action="store_true", help="one JSON object")
    portfolio = sub.add_parser("portfolio", help="portfolios").add_subparsers(dest="portfolio_command", required=True)
    add = portfolio.add_parser("add", parents=[common], help="add a portfolio; prints its id")
    add.add_argument("name")
    add.add_argument("--type", required=True, choices=("paper", "live"), help="paper: simulated; live: the exchange")
    add.add_argument("--cash", type=_cash, help="paper: starting cash (default: [paper] cash)")
    add.add_argument("--currency", help="quote currency (default: [paper] currency)")
    listing = portfolio.add_parser("list", parents=[common], help="portfolios with cash, value and P&L")
    listing.add_argument("--json", action="store_true", help="machine-readable output")


def _book(store: SqliteStore) -> tuple[list[StrategyPnl], list[PortfolioPnl], dict[str, str]]:
    rows = store.list_strategies()
    names = {r.id: r.name for r in rows}
    strategies = strategy_pnl(store.trades(), strategy_marks(store, rows))
    return strategies, portfolio_pnl(store.portfolios(), strategies), names


def run_positions(args: argparse.Namespace, settings: Settings) -> int:
    store = SqliteStore(settings.store.path)
    try:
        store.migrate()
        strategies, portfolios, names = _book(store)
        levels = store.positions()
    finally:
        store.close()
    shown = [s for s in strategies if s.held or args.all]
    if args.json:
        entries = []
        for s in shown:
            entry = {"name": names.get(s.strategy_id), **s.as_json()}
            held = levels.get(s.strategy_id)
            entry["take_profit"] = None if held is None or held[2].take_profit is None else str(held[2].take_profit)
            entry["stop_loss"] = None if held is None or held[2].stop_loss is None else str(held[2].stop_loss)
            entries.append(entry)
        print(json.dumps({"positions": entries, "portfolios": [p.as_json() for p in portfolios]}, indent=2))
        return 0
    if not shown:
        print("no open positions" + ("" if args.all else " (--all shows strategies that traded)"))
    else:
        table: list[tuple[str, ...]] = [
            (
                "STRATEGY",
                "NAME",
                "SYMBOL",
                "AMOUNT",
                "AVG COST",
                "LAST CLOSE",
                "CANDLE (UTC)",
                "VALUE",
                "UNREALISED",
                "REALISED",
                "FEES",
            ),
        ]
        for s in shown:
            table.append(
                (
                    s.strategy_id[:8],
                    names.get(s.strategy_id, "?"),
                    s.symbol,
                    f"{s.held.normalize():f}",
                    _dec(s.average_cost),
                    "-" if s.mark is None else f"{s.mark.price.normalize():f}",
                    "-" if s.mark is None else format_time(s.mark.candle_time),
                    _dec(s.value),
                    _signed(s.unrealised),
                    _signed(s.realised),
                    _dec(s.fees),
                )
            )
        print(_columns(table))
    for p in portfolios:
        if p.strategies:
            print(_portfolio_line(p))
    return 0


def _portfolio_line(p: PortfolioPnl) -> str:
    c = p.portfolio.currency
    return (
        f"portfolio {p.portfolio.name} ({p.portfolio.type}, {p.portfolio.id[:8]}): cash {_dec(p.portfolio.cash)} {c}, "
        f"positions {_dec(p.positions_value)}, value {_dec(p.value)}; realised {_signed(p.realised)}, "
        f"unrealised {_signed(p.unrealised)}, fees {_dec(p.fees)}"
    )


def run_portfolio(args: argparse.Namespace, settings: Settings) -> int:
    store = SqliteStore(settings.store.path)
    try:
        store.migrate()
        if args.portfolio_command == "add":
            if args.type == "live" and args.cash is not None:
                print(
                    "tradebotd portfolio add: a live portfolio's cash is its exchange balance; drop --cash",
                    file=sys.stderr,
                )
                return 2
            cash = args.cash if args.cash is not None else settings.paper.cash if args.type == "paper" else Decimal(0)
            pid = store.add_portfolio(
                name=args.name,
                user_id=settings.store.user_id,
                type=args.type,
                cash=cash,
                currency=args.currency or settings.paper.currency,
            )
            print(pid)
            return 0
        _, portfolios, _ = _book(store)
    finally:
        store.close()
    if args.json:
        print(json.dumps([p.as_json() for p in portfolios], indent=2))
        return 0
    table: list[tuple[str, ...]] = [
        ("ID", "NAME", "TYPE", "CURRENCY", "CASH", "POSITIONS", "VALUE", "REALISED", "UNREALISED", "FEES", "CREATED")
    ]
    for p in portfolios:
        row = p.portfolio
        table.append(
            (
                row.id,
                row.name,
                row.type,
                row.currency,
                _dec(row.cash),
                f"{p.open_positions} ({_dec(p.positions_value)})",
                _dec(p.value),
                _signed(p.realised),
                _signed(p.unrealised),
                _dec(p.fees),
                row.created_at,
            )
        )
    print(_columns(table))
    return 0


def _dec(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value.normalize():f}" if value else "0"


def _signed(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value.normalize():+f}" if value else "0"


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)
