"""``tradebotd backtest``: a strategy file over historical candles, with the paper broker's rules.

    tradebotd backtest --strategy FILE (--data CSV | --symbol S --interval I) [--since DATE] [--until DATE]
                       [--param K=V ...] [--fee 0.001] [--slippage-bps 0] [--cash 10000] [--amount A]
                       [--warmup N] [--out DIR] [--no-plot] [--json]

Candles come from a CSV (``time,open,high,low,close,volume``, see ``tradebotd.candle_csv``;
symbol and interval from ``--symbol``/``--interval`` or a file name like ``BTCUSDT_1m.csv``, else
the interval from the candles' spacing and no symbol: a backtest does not need one) or from the
store's ``market_data`` (``tradebotd data download``). Fee, slippage, cash and the default buy amount
default to the ``[paper]`` config, so a backtest matches what paper trading would do.

``--warmup N``: evaluation starts once N candles are available: the first evaluation is on the N-th
candle and sees N candles (the N − 1 before it are pushed as history only); 0 evaluates every
candle. Default: the strategy's declared lookback (see ``tradebotd.backtest.strategy``), else 0.

Outputs (``--out DIR``): ``fills.csv``, ``trades.csv``, ``rejected.csv``, ``summary.json``,
``equity.png`` (see ``report`` and ``metrics`` for columns and definitions). The summary is
printed as a table with the monthly returns below it, or as JSON on stdout with ``--json``.

Exit codes: 0 done, 1 the strategy failed (did not load, or an error streak stopped it),
2 bad usage, configuration or data.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tradebotd import cliargs
from tradebotd.backtest.metrics import equity_curve, round_trips, summarize
from tradebotd.backtest.report import format_summary, write_fills, write_rejected, write_summary, write_trades
from tradebotd.backtest.runner import BacktestError, BacktestResult, BacktestSettings, run_backtest
from tradebotd.backtest.strategy import load_strategy
from tradebotd.cliargs import UsageError
from tradebotd.config import Settings, load_settings
from tradebotd.data.candles import UNNAMED_SYMBOL, CandleTable, read_csv, read_store
from tradebotd.data.errors import CandleDataError
from tradebotd.data.times import time_argument
from tradebotd.errors import ConfigError, StrategyError
from tradebotd.model import normalize_symbol
from tradebotd.orders.intent import level_defaults
from tradebotd.replay.series import names_from_path
from tradebotd.strategy_files import StrategyFileError, strategy_kind

if TYPE_CHECKING:
    from tradebotd.backtest.plot import BackgroundChart

__all__ = ["DESCRIPTION", "add_arguments", "backtest", "main", "run"]

_PROG = "tradebotd backtest"
DESCRIPTION = "Run a strategy over historical candles with the paper broker's rules."


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``tradebotd backtest``'s options to ``parser``."""
    parser.add_argument("--strategy", required=True, type=Path, metavar="FILE", help="strategy (.js, .ts, .wat, .wasm)")
    parser.add_argument("--data", type=Path, metavar="CSV", help="candles as time,open,high,low,close,volume")
    parser.add_argument("--symbol", help="symbol (required without --data: read from the store)")
    parser.add_argument("--interval", help="kline interval, e.g. 1m (required without --data)")
    parser.add_argument(
        "--since", type=time_argument, metavar="DATE", help="first candle open time (UTC date or epoch ms)"
    )
    parser.add_argument("--until", type=time_argument, metavar="DATE", help="stop before this open time")
    cliargs.add_parameter_option(parser)
    parser.add_argument("--fee", type=_decimal, metavar="RATE", help="fee rate per fill (default: [paper] fee_rate)")
    parser.add_argument("--slippage-bps", type=_decimal, metavar="BPS", help="default: [paper] slippage_bps")
    parser.add_argument("--cash", type=_decimal, help="starting cash (default: [paper] cash)")
    parser.add_argument("--amount", type=_decimal, help="buy amount when a result has none ([paper] default_amount)")
    parser.add_argument(
        "--warmup",
        type=_count,
        metavar="N",
        help="evaluate from the N-th candle on (default: declared lookback, else 0)",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="write fills.csv, trades.csv, rejected.csv, summary.json, equity.png"
    )
    parser.add_argument("--no-plot", action="store_true", help="with --out: skip equity.png")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


@dataclass(frozen=True, slots=True)
class _Candles:
    table: CandleTable
    symbol_given: bool  # False: a file read without a symbol (the table's is a placeholder)
    interval_inferred: bool  # True: from the candles' spacing


def _candles(args: argparse.Namespace, settings: Settings) -> _Candles:
    if args.since is not None and args.until is not None and args.until <= args.since:
        raise UsageError("--until must be after --since")
    if args.data is None:
        if args.symbol is None or args.interval is None:
            raise UsageError("give --data CSV, or --symbol and --interval to read candles from the store")
        key = cliargs.stream_key(args.symbol, args.interval)
        return _Candles(read_store(settings.store.path, key, args.since, args.until), True, False)
    named_symbol, named_interval = names_from_path(args.data)
    symbol = args.symbol or named_symbol
    interval = args.interval or named_interval
    if interval is not None:
        table = read_csv(args.data, cliargs.stream_key(symbol or UNNAMED_SYMBOL, interval))
    else:
        try:
            name = normalize_symbol(symbol or UNNAMED_SYMBOL)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        table = read_csv(args.data, symbol=name)
    table = table.between(args.since, args.until)
    if not len(table):
        raise CandleDataError(f"{args.data}: no candles between --since and --until")
    return _Candles(table, symbol is not None, interval is None)


def backtest(args: argparse.Namespace, settings: Settings) -> tuple[BacktestResult, dict[str, Any]]:
    """Load candles and strategy, run, write the outputs; returns the result and the summary."""
    try:
        strategy_kind(args.strategy)  # before the candles: a wrong file is the quicker fix
    except StrategyFileError as exc:
        raise UsageError(str(exc)) from None
    chart = None
    if args.out is not None and not args.no_plot:
        from tradebotd.backtest.plot import BackgroundChart, spare_core

        # Started first: it imports matplotlib and warms up on another core while the backtest
        # runs (when there is one to spare; else equity.png is drawn here after the report).
        chart = BackgroundChart(args.out / "equity.png", spawn=spare_core())
    try:
        result, summary = _backtest(args, settings, chart)
    except BaseException:
        if chart is not None:
            chart.cancel()
        raise
    if chart is not None:
        chart.finish()
        if chart.fallback_reason is not None:
            print(f"{_PROG}: equity.png drawn in-process: {chart.fallback_reason}", file=sys.stderr)
    return result, summary


def _backtest(
    args: argparse.Namespace, settings: Settings, chart: BackgroundChart | None
) -> tuple[BacktestResult, dict[str, Any]]:
    candles = _candles(args, settings)
    table = candles.table
    paper = settings.paper
    loaded = load_strategy(args.strategy, key=table.key, parameters=dict(args.param), sandbox=settings.sandbox)
    try:
        warmup = args.warmup if args.warmup is not None else (loaded.lookback or 0)
        try:
            config = BacktestSettings(
                fee_rate=paper.fee_rate if args.fee is None else args.fee,
                slippage_bps=paper.slippage_bps if args.slippage_bps is None else args.slippage_bps,
                cash=paper.cash if args.cash is None else args.cash,
                default_amount=paper.default_amount if args.amount is None else args.amount,
                warmup=warmup,
                max_consecutive_errors=settings.sandbox.max_consecutive_errors,
            )
            levels = level_defaults(dict(args.param))  # takeProfitPct / stopLossPct, as the daemon reads them
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        result = run_backtest(loaded.runtime, table, config, levels=levels)
    finally:
        loaded.runtime.close()
    trips, open_trip = round_trips(result)
    if chart is not None:  # drawn while the report is written
        from tradebotd.backtest.plot import chart_data

        market = str(table.key) if candles.symbol_given else f"{args.data.name} ({table.key.interval})"
        chart.send(chart_data(result, equity_curve(result), f"{args.strategy.name} on {market} ({len(trips)} trades)"))
    summary = summarize(result, trips, open_trip)
    if not candles.symbol_given:
        summary["symbol"] = None
    summary["interval_inferred"] = candles.interval_inferred
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_fills(args.out / "fills.csv", result.fills)
        write_trades(args.out / "trades.csv", trips)
        write_rejected(args.out / "rejected.csv", result.refusals)
        write_summary(args.out / "summary.json", summary)
    return result, summary


def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """``tradebotd backtest`` with options from a parser set up by :func:`add_arguments`; the
    configuration is loaded from ``args.config`` unless ``settings`` are given."""
    try:
        if settings is None:
            settings, _ = load_settings(getattr(args, "config", None))
        _, summary = backtest(args, settings)
    except (UsageError, ConfigError, CandleDataError) as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 2
    except (StrategyError, BacktestError) as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
        if args.out is not None:
            print(f"\noutputs in {args.out}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tradebotd.backtest``: the same command without the ``tradebotd`` wrapper."""
    parser = cliargs.standalone_parser("python -m tradebotd.backtest", DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
