"""``tradebotd strategy check``: load errors with positions, signals, indicators, timing, memory,
fuel, exit codes."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from tradebotd.cli import main
from tradebotd.model import Candle
from tradebotd.replay.series import format_csv

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tradebotd" / "examples" / "sma_crossover.js"
WAT_EXAMPLE = ROOT / "strategies_wasm" / "sma_cross.wat"
MIN = 60_000
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def strategy_check(tmp_path: Path, *argv: str | Path) -> int:
    """``tradebotd strategy check ...`` with an empty config file (no ./tradebotd.toml or
    environment leaks in)."""
    config = tmp_path / "empty.toml"
    config.touch()
    return main(["strategy", "check", "--config", str(config), *(str(a) for a in argv)])


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def csv_file(tmp_path: Path, closes: list[float], name: str = "BTCUSDT_1m.csv") -> Path:
    candles = [
        Candle("BTCUSDT", "1m", T0 + i * MIN, *(Decimal(str(c)) for c in (c, c + 1, c - 1, c)), Decimal(1))
        for i, c in enumerate(closes)
    ]
    return write(tmp_path, name, format_csv(candles))


THRESHOLDS = """
function tradingStrategy({currentPrice, position}) {
  if (!position && currentPrice > 105) return {signal: 'buy', amount: 0.5, reason: 'above 105'};
  if (position && currentPrice < 95) return {signal: 'sell', reason: 'below 95'};
  return {signal: 'hold', indicators: {price: currentPrice, long: position !== null}};
}
"""


def test_signals_indicators_and_figures_for_a_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = csv_file(tmp_path, [100, 106, 107, 94, 100, 110, 101])
    assert strategy_check(tmp_path, write(tmp_path, "thresholds.js", THRESHOLDS), "--data", data) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"check thresholds.js (js): 7 candles of {data} (BTCUSDT 1m)"
    assert out[1].startswith("loaded in ")
    assert out[2:6] == [
        "signals: 3",
        "  2024-01-01T00:01:00Z  buy        0.5  above 105  -> filled 0.5 at 106",
        "  2024-01-01T00:03:00Z  sell         -  below 95  -> filled 0.5 at 94",
        "  2024-01-01T00:05:00Z  buy        0.5  above 105  -> filled 0.5 at 110",
    ]
    assert "last indicators (2024-01-01T00:06:00Z): price=101, long=true" in out
    assert "evaluations: 7, errors: 0" in out
    assert any(line.startswith("evaluation time: median ") and line.endswith(" us") for line in out)
    assert any(line.startswith("peak linear memory: ") and line.endswith(" MiB") for line in out)
    assert "fuel per evaluation: not metered (--fuel N meters it)" in out
    assert out[-1] == "result: OK"


def test_the_example_on_the_built_in_series(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert strategy_check(tmp_path, EXAMPLE, "--param", "fast=5", "--param", "slow=20", "--param", "amount=0.01") == 0
    out = capsys.readouterr().out
    assert (
        "check sma_crossover.js (js): 1000 candles of the built-in synthetic series (BTCUSDT 1m), "
        'parameters {"fast": 5, "slow": 20, "amount": 0.01}'
    ) in out
    signals = int(out.split("signals: ")[1].split("\n")[0])
    assert signals > 10
    assert out.count("fast SMA crossed above slow SMA  -> filled 0.01 at ") >= signals // 2
    assert "last indicators (2024-01-01T16:39:00Z): fastSma=" in out
    assert "evaluations: 1000, errors: 0" in out


def test_a_native_strategy_gives_the_same_signals_as_its_js_twin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def signals(path: Path) -> list[str]:
        assert strategy_check(tmp_path, path, "--param", "fast=5", "--param", "slow=20", "--param", "amount=0.01") == 0
        out = capsys.readouterr().out.splitlines()
        count = int(out[2].removeprefix("signals: "))
        return out[3 : 3 + count]

    native = signals(WAT_EXAMPLE)
    assert len(native) > 10
    assert native == signals(EXAMPLE)


def test_a_syntax_error_shows_its_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = "function tradingStrategy(context) {\n  return {signal: 'hold'};\n}\nconst broken = ;\n"
    assert strategy_check(tmp_path, write(tmp_path, "broken.js", source)) == 1
    assert capsys.readouterr().out.splitlines()[1:] == [
        "broken.js:4:16: SyntaxError: unexpected token in expression: ';'",
        "     4 | const broken = ;",
        "       |                ^",
        "result: FAILED (the strategy does not load)",
    ]


def test_a_missing_entry_function_is_a_load_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert strategy_check(tmp_path, write(tmp_path, "helper.js", "function helper() {}\n")) == 1
    out = capsys.readouterr().out
    assert "helper.js: NoEntryFunction: define a function tradingStrategy(context)" in out


def test_typescript_runtime_errors_point_into_the_ts_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = (
        "interface Candle { close: number }\n"
        "function tradingStrategy(context: { candles: Candle[] }): { signal: 'hold' } {\n"
        "  const c: Candle[] = context.candles;\n"
        "  if (c.length === 4) { const missing: any = undefined; missing.close; }\n"
        "  return { signal: 'hold' };\n"
        "}\n"
    )
    data = csv_file(tmp_path, [100, 101, 102, 103, 104])
    assert strategy_check(tmp_path, write(tmp_path, "typed.ts", source), "--data", data) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("check typed.ts (ts): 5 candles")
    error = out.index("error at 2024-01-01T00:03:00Z (candle 4): TypeError: cannot read property 'close' of undefined")
    assert out[error + 1] == "  at tradingStrategy (typed.ts:4:57)"
    assert "evaluations: 5, errors: 1" in out
    assert out[-1] == "result: FAILED (1 evaluation error)"


def test_it_stops_where_the_daemon_would_disable_the_strategy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = "function tradingStrategy() {\n  return {signal: 'buy', amount: NaN};\n}\n"
    assert strategy_check(tmp_path, write(tmp_path, "nan.js", source)) == 1
    out = capsys.readouterr().out
    assert out.count("amount must be a finite positive number, got NaN") == 3
    assert "stopped after 3 consecutive errors, where the daemon would set the strategy to status 'error'" in out
    assert "evaluations: 3, errors: 3" in out


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = csv_file(tmp_path, [100, 106, 107, 94])
    strategy = write(tmp_path, "thresholds.js", "console.log('loaded');\n" + THRESHOLDS)
    assert strategy_check(tmp_path, strategy, "--data", data, "--json", "--param", "x=[1,2]") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["load_error"] is None and report["errors"] == []
    assert report["candles"] == {"source": str(data), "symbol": "BTCUSDT", "interval": "1m", "count": 4}
    assert report["parameters"] == {"x": [1, 2]}
    assert [(s["time"], s["signal"], s["amount"], s["outcome"]) for s in report["signals"]] == [
        (T0 + MIN, "buy", 0.5, "filled 0.5 at 106"),
        (T0 + 3 * MIN, "sell", None, "filled 0.5 at 94"),
    ]
    assert report["last_indicators"] == {"time": T0 + 2 * MIN, "values": {"price": 107, "long": True}}
    assert report["evaluations"] == 4
    assert set(report["eval_us"]) == {"median", "p99"}
    assert report["peak_memory_bytes"] > 0
    assert report["fuel"] is None


def test_fuel_is_reported_when_metered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert strategy_check(tmp_path, EXAMPLE, "--fuel", "50000000", "--json") == 0
    fuel = json.loads(capsys.readouterr().out)["fuel"]
    assert fuel["budget"] == 50_000_000
    assert 0 < fuel["median"] <= fuel["max"] < fuel["budget"]


def test_running_out_of_fuel_is_an_evaluation_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert strategy_check(tmp_path, EXAMPLE, "--fuel", "1000") == 1
    assert "the strategy ran out of fuel" in capsys.readouterr().out


def test_protective_levels_are_watched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = (
        "function tradingStrategy({position, currentPrice}) {\n"
        "  if (position) return {signal: 'hold'};\n"
        "  return {signal: 'buy', amount: 1, takeProfit: currentPrice + 5, stopLoss: currentPrice - 50};\n"
        "}\n"
    )
    data = csv_file(tmp_path, [100, 102, 104, 106])  # high = close + 1: 105 is touched by the 3rd
    assert strategy_check(tmp_path, write(tmp_path, "tp.js", source), "--data", data) == 0
    out = capsys.readouterr().out.splitlines()
    exits = out.index("protective exits: 1")
    assert out[exits + 1] == "  2024-01-01T00:02:00Z  take-profit 105.0 touched  -> filled 1 at 105"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.js"], "missing.js: cannot read the strategy"),
        (["strategy.py"], "strategy.py: unknown strategy file type '.py'"),
        (["ok.js", "--data", "broken.csv"], "broken.csv:2: expected 6 columns, got 3"),
        (["ok.js", "--warmup", "-1"], "--warmup must be >= 0"),
    ],
)
def test_bad_usage_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    write(tmp_path, "strategy.py", "")
    write(tmp_path, "ok.js", THRESHOLDS)
    write(tmp_path, "broken.csv", "time,open,high,low,close,volume\n1,2,3\n")
    files = [str(tmp_path / arg) if arg.endswith((".js", ".py", ".csv")) else arg for arg in argv]
    assert strategy_check(tmp_path, *files) == 2
    assert message in capsys.readouterr().err


def test_a_parameter_the_strategy_never_reads_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert strategy_check(tmp_path, EXAMPLE, "--param", "fast=5", "--param", "fsat=7") == 0  # a warning only
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "warning: parameter 'fsat' is never read by the strategy (it reads: amount, fast, slow)"
    assert out[-1] == "result: OK"
    assert strategy_check(tmp_path, EXAMPLE, "--param", "fsat=7", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["unread_parameters"] == ["fsat"]
    assert report["parameter_reads"] == {"names": ["amount", "fast", "slow"], "dynamic": None}
    dynamic = write(tmp_path, "dyn.js", "function evaluate(c) { return {signal: c.parameters[c.parameters.k]} }")
    assert strategy_check(tmp_path, dynamic, "--param", "zzz=1", "--json") == 1  # returns an invalid signal
    assert json.loads(capsys.readouterr().out)["unread_parameters"] == []


def test_a_csv_whose_name_says_nothing_is_read_at_its_spacing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candles = [
        Candle("BTCUSDT", "4h", T0 + i * 14_400_000, *(Decimal(c) for c in ("100", "101", "99", "100")), Decimal(1))
        for i in range(6)
    ]
    data = write(tmp_path, "export.csv", format_csv(candles))
    assert strategy_check(tmp_path, write(tmp_path, "ok.js", THRESHOLDS), "--data", data) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"check ok.js (js): 6 candles of {data} (CHECK 4h)"
