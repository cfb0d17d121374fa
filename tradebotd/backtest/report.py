"""Backtest outputs: ``fills.csv``, ``trades.csv``, ``summary.json`` (figures defined in
``tradebotd.backtest.metrics``), the terminal table, and ``equity.png`` via ``plot``.

``fills.csv``: ``side,candle_time,price,amount,fee,reason,candle_time_iso``, one row per fill, in
order; ``candle_time`` is the open time (ms) of the candle whose close filled the order, or of the
candle that touched the take-profit / stop-loss.

``trades.csv``: ``entry_time,exit_time,entry_price,exit_price,amount,pnl,return,fees,exit,candles,reason,
entry_time_iso,exit_time_iso``, one row per closed round trip.

``rejected.csv``: ``candle_time,side,outcome,reason,candle_time_iso``, one row per buy or sell the
paper broker did not fill: ``rejected`` (not enough cash, an implausible amount) or ``ignored``
(a sell while flat), with the broker's whole message (``summary.json`` counts them by reason).

Times are epoch milliseconds (machine-readable, exact); each has an ``*_iso`` column after the
others (ISO-8601 UTC, for people), at the end so that columns read by position keep their place.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from tradebotd.backtest.metrics import RoundTrip
from tradebotd.backtest.runner import Refusal
from tradebotd.broker.base import Fill
from tradebotd.isotime import format_time

__all__ = [
    "FILLS_HEADER",
    "REJECTED_HEADER",
    "TRADES_HEADER",
    "format_monthly",
    "format_summary",
    "write_fills",
    "write_rejected",
    "write_summary",
    "write_trades",
]

FILLS_HEADER = ("side", "candle_time", "price", "amount", "fee", "reason", "candle_time_iso")
TRADES_HEADER = (
    "entry_time",
    "exit_time",
    "entry_price",
    "exit_price",
    "amount",
    "pnl",
    "return",
    "fees",
    "exit",
    "candles",
    "reason",
    "entry_time_iso",
    "exit_time_iso",
)
REJECTED_HEADER = ("candle_time", "side", "outcome", "reason", "candle_time_iso")
_RETURN_DP = Decimal("0.00000001")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def write_fills(path: Path, fills: Sequence[Fill]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(FILLS_HEADER)
        for fill in fills:
            out.writerow(
                (
                    fill.side,
                    fill.candle_time,
                    fill.price,
                    fill.amount,
                    fill.fee,
                    fill.reason or "",
                    format_time(fill.candle_time),
                )
            )


def write_trades(path: Path, trips: Sequence[RoundTrip]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(TRADES_HEADER)
        for t in trips:
            out.writerow(
                (
                    t.entry_time,
                    t.exit_time,
                    t.entry_price,
                    t.exit_price,
                    t.amount,
                    t.pnl,
                    t.ret.quantize(_RETURN_DP),
                    t.fees,
                    t.exit,
                    t.candles,
                    t.reason or "",
                    format_time(t.entry_time),
                    "" if t.exit_time is None else format_time(t.exit_time),
                )
            )


def write_rejected(path: Path, refusals: Sequence[Refusal]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(REJECTED_HEADER)
        for r in refusals:
            out.writerow((r.candle_time, r.side, r.outcome, r.reason, format_time(r.candle_time)))


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:,.2f} %"


def _num(value: float | str | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{float(value):,.{digits}f}"


def _market(summary: dict[str, Any]) -> str:
    notes = ["from the candles' spacing"] if summary.get("interval_inferred") else []
    if summary["symbol"] is None:
        notes.append("no symbol given")
    market = summary["interval"] if summary["symbol"] is None else f"{summary['symbol']} {summary['interval']}"
    return market + (f" ({'; '.join(notes)})" if notes else "")


def _ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def _money_text(value: str | None) -> str:
    return "n/a" if value is None else f"{float(value):+,.4f}"


def _exits(summary: dict[str, Any]) -> str:
    exits = summary["exits"]
    parts = [f"{exits[kind]} {kind}" for kind in ("signal", "take-profit", "stop-loss")]
    if exits["end"]:
        parts.append("1 still open at the end")
    return ", ".join(parts)


def _reasons(name: str, counts: dict[str, int]) -> list[tuple[str, str]]:
    return [(f"  {name}" if i == 0 else "", f"{n:,} × {reason}") for i, (reason, n) in enumerate(counts.items())]


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as an aligned two-column table for the terminal, then the monthly returns."""
    rows = [
        ("market", _market(summary)),
        (
            "period",
            f"{format_time(summary['first_candle_time'])} → {format_time(summary['last_candle_time'])} (opens)",
        ),
        (
            "candles",
            f"{summary['candles']:,} ({summary['candles_evaluated']:,} evaluated, warm-up {summary['warmup']:,}, "
            f"{summary['missing_candles']:,} missing)",
        ),
        ("initial cash", _num(summary["initial_cash"])),
        ("final equity", _num(summary["final_equity"])),
        ("total return", f"{_pct(summary['total_return'])} (buy and hold {_pct(summary['buy_and_hold_return'])})"),
        ("CAGR", f"{_pct(summary['cagr'])} (over {summary['period_days']:,.1f} days)"),
        ("trades", f"{summary['trades']} ({summary['wins']} won, win rate {_pct(summary['win_rate'])})"),
        ("profit factor", _ratio_text(summary["profit_factor"])),
        (
            "expectancy",
            f"{_money_text(summary['expectancy'])} per trade (average win {_money_text(summary['average_win'])}, "
            f"average loss {_money_text(summary['average_loss'])})",
        ),
        ("exits", _exits(summary)),
        ("max drawdown", _pct(summary["max_drawdown"])),
        (
            "sharpe",
            f"{_num(summary['sharpe_annualised'])} annualised ({_num(summary['sharpe_per_candle'], 4)} per candle)",
        ),
        (
            "sortino",
            f"{_num(summary['sortino_annualised'])} annualised ({_num(summary['sortino_per_candle'], 4)} per candle)",
        ),
        ("exposure", _pct(summary["exposure"])),
        ("fees paid", _num(summary["fees_paid"], 4)),
        (
            "orders",
            f"{summary['fills']} fills, {summary['orders_rejected']} rejected, {summary['orders_ignored']} ignored",
        ),
        *_reasons("rejected", summary["orders_rejected_by_reason"]),
        *_reasons("ignored", summary["orders_ignored_by_reason"]),
        ("strategy errors", str(summary["strategy_errors"])),
        (
            "evaluation",
            f"{summary['evaluation_time_s']:.3f} s ({_num(summary['candles_per_s'], 0)} candles/s)",
        ),
    ]
    position = summary["open_position"]
    if position is not None:
        rows.append(
            (
                "open position",
                f"{position['amount']} @ {position['entry_price']} since {format_time(position['entry_time'])}, "
                f"marked at {position['mark_price']}: unrealised {_num(position['unrealised_pnl'], 4)}",
            )
        )
    width = max(len(name) for name, _ in rows)
    table = "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
    monthly = format_monthly(summary["monthly_returns"])
    return table if not monthly else f"{table}\n\n{monthly}"


def format_monthly(months: Sequence[dict[str, Any]]) -> str:
    """Monthly returns (%) as a year × month grid, with each year's compounded return."""
    by_year: dict[int, dict[int, float]] = {}
    for entry in months:
        year, month = (int(part) for part in entry["month"].split("-"))
        by_year.setdefault(year, {})[month] = entry["return"]
    if not by_year:
        return ""
    lines = ["monthly returns (%)", "      " + " ".join(f"{m:>6}" for m in (*_MONTHS, "year"))]
    for year, returns in by_year.items():
        compounded = 1.0
        for r in returns.values():
            compounded *= 1.0 + r
        cells = [f"{returns[m] * 100:+6.2f}" if m in returns else f"{'':6}" for m in range(1, 13)]
        lines.append(f"{year:<5} " + " ".join([*cells, f"{(compounded - 1.0) * 100:+6.2f}"]))
    return "\n".join(lines)
