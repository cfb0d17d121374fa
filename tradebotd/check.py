"""``tradebotd strategy check FILE``: load a strategy as the daemon would and run it over candles.

The strategy is loaded by the daemon's own loader (``runtimes.make_runtime_factory`` with the
configured ``[sandbox]`` limits): ``.js`` as is, ``.ts`` through the type eraser, ``.wat``/``.wasm``
as native modules. It then gets one evaluation per candle (after
``--warmup`` candles of history), with orders going to a paper broker with the configured
``[paper]`` rules, so a ``sell`` sees the position its ``buy`` opened and take-profit/stop-loss
levels are watched, as in the daemon. Like the daemon, it stops after
``sandbox.max_consecutive_errors`` failed evaluations in a row.

Candles: ``--data CSV`` (header ``time,open,high,low,close,volume``, time = open time in ms UTC;
the symbol and interval come from a file name like ``BTCUSDT_1m.csv``, ``--interval`` overrides;
without either, the interval is the candles' spacing),
else a built-in synthetic series (a seeded random walk around 42,000; not market data).

Text output (``--json``: the same as one JSON object)::

    check sma_crossover.js (js): 1000 candles of the built-in synthetic series (BTCUSDT 1m), parameters {...}
    warning: parameter 'fsat' is never read by the strategy (it reads: amount, fast, slow)
    loaded in 2.1 ms
    signals: 7
      2024-01-01T00:21:00Z  buy   0.01  fast SMA crossed above slow SMA  -> filled 0.01 at 42012.5
      ...
    last indicators (2024-01-01T16:39:00Z): fastSma=42011.2, slowSma=41987.3
    evaluations: 1000, errors: 0
    evaluation time: median 41.3 us, p99 120.7 us
    peak linear memory: 1.9 MiB
    fuel per evaluation: not metered (--fuel N meters it)
    result: OK

A load error shows the file, line and column with the offending source line; an evaluation
error shows the candle, the JS message and its stack. A ``--param`` the strategy never reads is
warned about (``tradebotd.parameter_reads``: a scan of the source, not a failure).

Exit codes: 0 OK, 1 the strategy failed to load or any evaluation failed, 2 bad usage (unreadable
file, bad CSV or configuration).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from . import cliargs
from .broker.paper import PAPER, PaperBroker
from .cliargs import UsageError
from .config import Settings, load_settings
from .engine import StrategyRuntime
from .errors import ConfigError, StrategyError
from .isotime import format_time
from .model import Candle, Decision, IndicatorValue, StreamKey
from .orders.desk import Effects, OrderDesk, Venue, run_sync
from .orders.intent import LevelDefaults, level_defaults, order_intent
from .orders.ledger import Fill, Ledger
from .orders.state import OrderBook
from .orders.validate import OrderPolicy
from .parameter_reads import ParameterReads, scan_parameter_reads, unread_parameters
from .replay.demo import generate
from .replay.series import ReplayDataError, load_csv, names_from_path
from .runtimes import load_code
from .sandbox.errors import StrategyLoadError
from .store.base import StrategyKind
from .strategy_files import StrategyFileError, strategy_code, strategy_kind

__all__ = [
    "Report",
    "add_arguments",
    "check_source",
    "failure_lines",
    "parameter_warnings",
    "run",
    "synthetic_candles",
]

SYNTHETIC_CANDLES = 1000
SYNTHETIC_SYMBOL = "BTCUSDT"
CSV_SYMBOL = "CHECK"  # when the CSV's file name does not say
STRATEGY_ID = "check"
PORTFOLIO_ID = "check"
_DONE_KEPT = 64  # finished orders the order book remembers (nothing reports on them late here)
MAX_CONSOLE_LINES = 20  # shown in text output; --json has them all

# The file names the daemon's loader gives sources, as they appear in JS stacks and messages.
_LOADER_FILENAME = re.compile(r"(?<![\w.-])strategy\.(?:js|ts|wasm|wat):")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the strategy: .js, .ts, or .wat/.wasm (native)")
    parser.add_argument(
        "--data",
        type=Path,
        metavar="CSV",
        help="candles: a CSV with header time,open,high,low,close,volume (default: a built-in synthetic series)",
    )
    cliargs.add_parameter_option(parser)
    parser.add_argument(
        "--interval",
        type=cliargs.interval,
        help="kline interval (default: from the CSV's file name, else its spacing; synthetic series: 1m)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        metavar="N",
        help="candles given as history before the first evaluation (default 0: every candle is evaluated)",
    )
    parser.add_argument(
        "--fuel",
        type=int,
        metavar="N",
        help="meter fuel (a deterministic cost) with a budget of N per evaluation; running out is an error",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    try:
        path: Path = args.file
        # A native module is referred to by path, as the backtest does: the loader reads it.
        kind = strategy_kind(path)
        code = strategy_code(path, kind, wasm_by_path=True)
        settings, _ = load_settings(getattr(args, "config", None))
        if args.warmup < 0:
            raise UsageError("--warmup must be >= 0")
        if args.fuel is not None and args.fuel <= 0:
            raise UsageError("--fuel must be > 0")
        candles, source = _candles(args.data, args.interval)
    except (UsageError, StrategyFileError, ConfigError, ReplayDataError) as exc:
        print(f"tradebotd strategy check: {exc}", file=sys.stderr)
        return 2
    report = check_source(
        code,
        kind,
        file=path.name,
        parameters=dict(args.param),
        settings=settings,
        candles=candles,
        source=source,
        warmup=args.warmup,
        fuel=args.fuel,
    )
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        _print_text(report, _source_lines(code, kind))
    return 0 if report.ok else 1


def check_source(
    code: str,
    kind: StrategyKind,
    *,
    file: str,
    parameters: Mapping[str, Any],
    settings: Settings,
    candles: Sequence[Candle],
    source: str,
    warmup: int = 0,
    fuel: int | None = None,
) -> Report:
    """Load ``code`` as the daemon would and evaluate it over ``candles`` (what ``strategy check``
    and ``strategy add`` run); ``file`` is the name messages show for the loader's."""
    report = Report(
        file=file,
        kind=kind,
        source=source,
        key=candles[0].key,
        candles=len(candles),
        parameters=dict(parameters),
        fuel_budget=fuel,
    )
    _check(report, code, candles, settings, warmup=min(warmup, len(candles)), fuel=fuel)
    if report.load_error is None:  # code that loads parses (TypeScript's erasure included)
        report.parameter_reads = scan_parameter_reads(code, kind)
        report.unread_parameters = unread_parameters(report.parameters, report.parameter_reads)
    return report


def synthetic_candles(interval: str = "1m") -> tuple[list[Candle], str]:
    """The built-in synthetic series (candles, and how to name them)."""
    return _candles(None, interval)


def failure_lines(report: Report, code: str) -> list[str]:
    """Why the check failed, as ``strategy check`` prints it (empty if it did not): a load error
    with file, line, column and the offending source line, or the evaluation errors."""
    lines = _source_lines(code, report.kind)
    if report.load_error is not None:
        return _load_error_text(report.file, report.load_error, lines)
    return _errors_text(report)


def parameter_warnings(report: Report) -> list[str]:
    """``warning: ...`` lines for parameters the strategy never reads."""
    reads = report.parameter_reads
    known = ", ".join(sorted(reads.names)) if reads is not None and reads.names else "none"
    return [
        f"warning: parameter {key!r} is never read by the strategy (it reads: {known})"
        for key in report.unread_parameters
    ]


# -- running --------------------------------------------------------------------------------------


@dataclass
class Report:
    file: str
    kind: StrategyKind
    source: str  # where the candles came from
    key: StreamKey
    candles: int
    parameters: Mapping[str, Any]
    fuel_budget: int | None
    load_ms: float | None = None
    load_error: dict[str, Any] | None = None
    evaluations: int = 0
    signals: list[dict[str, Any]] = field(default_factory=list)
    exits: list[dict[str, Any]] = field(default_factory=list)  # take-profit / stop-loss fills
    errors: list[dict[str, Any]] = field(default_factory=list)
    stopped_after: int | None = None  # consecutive errors that ended the run before the last candle
    last_indicators: Mapping[str, IndicatorValue] | None = None
    last_time: int | None = None
    eval_us: list[float] = field(default_factory=list)
    fuel: list[int] = field(default_factory=list)
    peak_memory_bytes: int = 0
    console: list[tuple[int, str, str]] = field(default_factory=list)  # (candle time, level, text)
    parameter_reads: ParameterReads | None = None  # None: not scanned (native modules)
    unread_parameters: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.load_error is None and not self.errors

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "kind": self.kind,
            "candles": {
                "source": self.source,
                "symbol": self.key.symbol,
                "interval": self.key.interval,
                "count": self.candles,
            },
            "parameters": dict(self.parameters),
            "parameter_reads": None
            if self.parameter_reads is None
            else {"names": sorted(self.parameter_reads.names), "dynamic": self.parameter_reads.dynamic},
            "unread_parameters": self.unread_parameters,
            "ok": self.ok,
            "load_ms": self.load_ms,
            "load_error": self.load_error,
            "evaluations": self.evaluations,
            "signals": self.signals,
            "protective_exits": self.exits,
            "errors": self.errors,
            "stopped_after_consecutive_errors": self.stopped_after,
            "last_indicators": None
            if self.last_time is None
            else {"time": self.last_time, "values": dict(self.last_indicators or {})},
            "eval_us": _percentiles(self.eval_us),
            "peak_memory_bytes": self.peak_memory_bytes,
            "fuel": None if self.fuel_budget is None else {"budget": self.fuel_budget, **_fuel_figures(self.fuel)},
            "console": [{"time": t, "level": level, "text": text} for t, level, text in self.console],
        }


def _check(
    report: Report, code: str, candles: Sequence[Candle], settings: Settings, *, warmup: int, fuel: int | None
) -> None:
    key = candles[0].key
    started = time.perf_counter()
    try:
        levels = level_defaults(report.parameters)  # the daemon refuses to load with a bad one too
    except ValueError as exc:
        report.load_error = _load_error(StrategyLoadError(str(exc), name="InvalidParameter"), report.file)
        return
    try:
        runtime = load_code(
            code, report.kind, key=key, parameters=report.parameters, settings=settings.sandbox, name=STRATEGY_ID,
            fuel=fuel,
        )
    except StrategyError as exc:
        report.load_error = _load_error(exc, report.file)
        return
    report.load_ms = (time.perf_counter() - started) * 1000
    try:
        _evaluate(report, runtime, candles, settings, warmup, levels)
    finally:
        runtime.close()


def _evaluate(
    report: Report,
    runtime: StrategyRuntime,
    candles: Sequence[Candle],
    settings: Settings,
    warmup: int,
    levels: LevelDefaults | None,
) -> None:
    paper = settings.paper
    account = _Account(
        PaperBroker(fee_rate=paper.fee_rate, slippage_bps=paper.slippage_bps, cash={PORTFOLIO_ID: paper.cash}),
        paper.cash,
        paper.default_amount,
        levels,
    )
    if warmup:
        runtime.push_history(np.array([c.as_floats() for c in candles[:warmup]], dtype=np.float64))
    consecutive = 0
    for index, candle in enumerate(candles[warmup:], start=warmup):
        # As the engine does: protective orders first (the candle touched them before it closed).
        for outcome in account.on_candle(candle):
            report.exits.append({"time": candle.open_time, "reason": outcome[0], "outcome": outcome[1]})
        report.evaluations += 1
        try:
            decision, info = runtime.step(candle.as_floats(), account.desk.position(STRATEGY_ID))
        except StrategyError as exc:
            report.errors.append(_eval_error(exc, index, candle.open_time, report.file))
            consecutive += 1
            if consecutive >= settings.sandbox.max_consecutive_errors:
                if index + 1 < len(candles):
                    report.stopped_after = consecutive
                break
            continue
        consecutive = 0
        report.eval_us.append(info.elapsed_us)
        used = getattr(info, "fuel", None)
        if isinstance(used, int):
            report.fuel.append(used)
        report.peak_memory_bytes = max(report.peak_memory_bytes, int(getattr(runtime, "memory_bytes", 0)))
        for level, text in info.console:
            report.console.append((candle.open_time, level, _rename(text, report.file)))
        if decision.indicators is not None:
            report.last_indicators, report.last_time = decision.indicators, candle.open_time
        if decision.signal != "hold":
            report.signals.append(_signal(decision, candle, account))


class _Account:
    """The paper exchange and the order desk, driven synchronously as the backtest drives them."""

    def __init__(self, broker: PaperBroker, cash: Decimal, default_amount: Decimal, levels: LevelDefaults | None):
        self.broker = broker
        self.levels = levels
        self.desk = OrderDesk(
            ledger=Ledger({PORTFOLIO_ID: cash}),
            policy=OrderPolicy(default_amount),
            venues={PAPER: Venue(PAPER, broker.rules)},
            book=OrderBook(done_kept=_DONE_KEPT),
        )

    def on_candle(self, candle: Candle) -> list[tuple[str | None, str]]:
        self.broker.on_candle(candle)
        return self._settle()

    def order(self, decision: Decision, candle: Candle) -> list[tuple[str | None, str]]:
        intent = order_intent(
            decision, strategy_id=STRATEGY_ID, portfolio_id=PORTFOLIO_ID, candle=candle, defaults=self.levels
        )
        out = Effects()
        job = self.desk.decide(intent, PAPER, "", out)
        if job is not None:
            out.jobs.append((PAPER, job))
        return self._settle(out)

    def _settle(self, out: Effects | None = None) -> list[tuple[str | None, str]]:
        """(reason, outcome text) of every fill and refusal this caused."""
        out = out if out is not None else Effects()
        run_sync(self.desk, self.broker, "", out)
        outcomes = [(fill.reason, _filled(fill)) for fill, _ in out.fills]
        outcomes += [(None, f"{refusal.outcome}: {refusal.reason}") for refusal in out.refusals]
        outcomes += [(None, f"not placed: {note.message}") for note in out.notes if note.level == "info"]
        return outcomes


def _signal(decision: Decision, candle: Candle, account: _Account) -> dict[str, Any]:
    outcomes = account.order(decision, candle)
    return {
        "time": candle.open_time,
        "signal": decision.signal,
        "amount": decision.amount,
        "reason": decision.reason,
        "take_profit": decision.take_profit,
        "stop_loss": decision.stop_loss,
        "outcome": "; ".join(text for _, text in outcomes) or "no order",
    }


def _filled(fill: Fill) -> str:
    return f"filled {fill.amount.normalize():f} at {fill.price.normalize():f}"


def _load_error(exc: StrategyError, file: str) -> dict[str, Any]:
    if isinstance(exc, StrategyLoadError):
        return {
            "name": exc.name,
            "message": _rename(exc.message, file),
            "line": exc.line,
            "column": exc.column,
            "stack": _rename(exc.stack, file),
        }
    return {"name": type(exc).__name__, "message": _rename(str(exc), file), "line": None, "column": None, "stack": ""}


def _eval_error(exc: StrategyError, index: int, candle_time: int, file: str) -> dict[str, Any]:
    return {
        "time": candle_time,
        "candle": index + 1,
        "type": type(exc).__name__,
        "message": _rename(str(exc), file),
        "stack": _rename(str(getattr(exc, "stack", "") or ""), file),
    }


def _rename(text: str, file: str) -> str:
    """The loader's file name in messages and stacks (``strategy.js:3:5``) -> the user's."""
    return _LOADER_FILENAME.sub(lambda _: f"{file}:", text)


# -- input ----------------------------------------------------------------------------------------


def _candles(data: Path | None, interval: str | None) -> tuple[list[Candle], str]:
    if data is None:
        candles = generate(SYNTHETIC_CANDLES, interval=interval or "1m", symbol=SYNTHETIC_SYMBOL)
        return candles, "the built-in synthetic series"
    named_symbol, _ = names_from_path(data)
    series = load_csv(data, symbol=named_symbol or CSV_SYMBOL, interval=interval)
    if not series.candles:
        raise UsageError(f"{data}: no candles")
    return list(series.candles), str(data)


def _source_lines(code: str, kind: StrategyKind) -> list[str]:
    return code.splitlines() if kind in ("js", "ts") else []


# -- output ---------------------------------------------------------------------------------------


def _print_text(report: Report, lines: list[str]) -> None:
    out: list[str] = []
    parameters = f", parameters {json.dumps(dict(report.parameters))}" if report.parameters else ""
    out.append(
        f"check {report.file} ({report.kind}): {report.candles} candles of {report.source} "
        f"({report.key.symbol} {report.key.interval}){parameters}"
    )
    out += parameter_warnings(report)
    if report.load_error is not None:
        out += _load_error_text(report.file, report.load_error, lines)
        out.append("result: FAILED (the strategy does not load)")
        print("\n".join(out))
        return
    out.append(f"loaded in {report.load_ms:.1f} ms")
    out.append(f"signals: {len(report.signals)}")
    for s in report.signals:
        amount = "-" if s["amount"] is None else f"{s['amount']:g}"
        reason = f"  {s['reason']}" if s["reason"] else ""
        out.append(f"  {_time(s['time'])}  {s['signal']:4}  {amount:>8}{reason}  -> {s['outcome']}")
    if report.exits:
        out.append(f"protective exits: {len(report.exits)}")
        out += [f"  {_time(e['time'])}  {e['reason']}  -> {e['outcome']}" for e in report.exits]
    out += _errors_text(report)
    if report.last_time is not None:
        values = ", ".join(f"{k}={_value(v)}" for k, v in (report.last_indicators or {}).items())
        out.append(f"last indicators ({_time(report.last_time)}): {values}")
    else:
        out.append("last indicators: none")
    out.append(f"evaluations: {report.evaluations}, errors: {len(report.errors)}")
    if (figures := _percentiles(report.eval_us)) is not None:
        out.append(f"evaluation time: median {figures['median']:.1f} us, p99 {figures['p99']:.1f} us")
    out.append(f"peak linear memory: {report.peak_memory_bytes / (1 << 20):.1f} MiB")
    if report.fuel_budget is None:
        out.append("fuel per evaluation: not metered (--fuel N meters it)")
    elif report.fuel:
        fuel = _fuel_figures(report.fuel)
        out.append(
            f"fuel per evaluation: median {fuel['median']:,}, max {fuel['max']:,} (budget {report.fuel_budget:,})"
        )
    elif report.eval_us:
        out.append(f"fuel per evaluation: not reported by this runtime (budget {report.fuel_budget:,})")
    else:
        out.append(f"fuel per evaluation: no successful evaluation (budget {report.fuel_budget:,})")
    if report.console:
        out.append(f"console: {len(report.console)} lines")
        out += [f"  {_time(t)}  {level:5}  {text}" for t, level, text in report.console[:MAX_CONSOLE_LINES]]
        if len(report.console) > MAX_CONSOLE_LINES:
            out.append(f"  ... {len(report.console) - MAX_CONSOLE_LINES} more (--json shows all)")
    failed = len(report.errors)
    out.append("result: OK" if report.ok else f"result: FAILED ({failed} evaluation error{'s' if failed > 1 else ''})")
    print("\n".join(out))


def _errors_text(report: Report) -> list[str]:
    out: list[str] = []
    for e in report.errors:
        out.append(f"error at {_time(e['time'])} (candle {e['candle']}): {e['message']}")
        out += [f"  {frame.strip()}" for frame in e["stack"].splitlines()[:10] if frame.strip()]
    if report.stopped_after is not None:
        out.append(
            f"stopped after {report.stopped_after} consecutive errors, where the daemon would set the "
            "strategy to status 'error'"
        )
    return out


def _load_error_text(file: str, error: Mapping[str, Any], lines: list[str]) -> list[str]:
    line, column = error["line"], error["column"]
    where = f"{file}:{line}:{column}" if line is not None and column is not None else file
    out = [f"{where}: {error['name']}: {error['message']}"]
    if line is not None and 1 <= line <= len(lines):
        text = lines[line - 1]
        out.append(f"  {line:4} | {text}")
        if column is not None and column >= 1:
            out.append(f"  {'':4} | {' ' * (column - 1)}^")
    return out


def _time(ms: int) -> str:
    return format_time(ms)


def _value(value: IndicatorValue) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(f"{x:.6g}" for x in value) + "]"
    return json.dumps(value)


def _percentiles(samples: Sequence[float]) -> dict[str, float] | None:
    if not samples:
        return None
    return {"median": statistics.median(samples), "p99": float(np.percentile(samples, 99))}


def _fuel_figures(samples: Sequence[int]) -> dict[str, int]:
    if not samples:
        return {}
    return {"median": int(statistics.median(samples)), "max": max(samples)}
