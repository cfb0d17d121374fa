"""``tradebotd backtest`` as a user runs it: files in, outputs and a summary out, clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tradebotd.backtest.cli import main
from tradebotd.data.download import Row, StoreSink
from tradebotd.replay.series import format_csv

from .conftest import KEY, MIN, SCRIPTED, T0, table

LINES = [
    "0 100 101 99 100 5",
    "1 100 101 99 100 1",  # buy (tp +10, sl -5)
    "2 100 111 99 105 5",  # take-profit
    "3 105 106 104 105 1",  # buy
    "4 105 106 104 106 2",  # sell
    "5 106 107 105 106 1",  # buy, open at the end
]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "BTCUSDT_1m.csv"
    candles = table(*LINES)
    data.write_text(format_csv([candles.candle(i) for i in range(len(candles))]))
    strategy = tmp_path / "scripted.js"
    strategy.write_text(SCRIPTED)
    return data, strategy


def test_outputs_and_summary(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, strategy = files
    out = tmp_path / "out"
    argv = [
        "--strategy",
        str(strategy),
        "--data",
        str(data),
        "--param",
        "amount=1",
        "--param",
        "tp=10",
        "--param",
        "sl=5",
        "--fee",
        "0.001",
        "--cash",
        "1000",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # 904.473 cash + 1 x 106 (see the fills below) = 1010.473 / 1000; buy and hold 106 / 100
    assert "total return     1.05 % (buy and hold 6.00 %)" in printed
    assert "exits            1 signal, 1 take-profit, 0 stop-loss, 1 still open at the end" in printed
    assert "profit factor    n/a" in printed  # no losing trade
    assert "open position" in printed and f"outputs in {out}/" in printed
    grid = printed.split("monthly returns (%)\n", 1)[1].splitlines()
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    assert grid[0].split() == [*months, "year"]
    assert grid[1].split() == ["2023", "+1.05", "+1.05"]  # November only
    assert grid[1].index("+1.05") + len("+1.05") == grid[0].index("Nov") + len("Nov")  # right under Nov
    with (out / "fills.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["side", "candle_time", "price", "amount", "fee", "reason", "candle_time_iso"]
    assert rows[1][6] == "2023-11-14T22:15:00Z"  # T0 + 1 min, for people
    assert [(r[0], int(r[1]), r[2]) for r in rows[1:]] == [
        ("buy", T0 + MIN, "100.00000000"),
        ("sell", T0 + 2 * MIN, "110.0"),
        ("buy", T0 + 3 * MIN, "105.00000000"),
        ("sell", T0 + 4 * MIN, "106.00000000"),
        ("buy", T0 + 5 * MIN, "106.00000000"),
    ]
    assert rows[2][5] == "take-profit 110.0 touched"
    with (out / "trades.csv").open() as f:
        trades = list(csv.DictReader(f))
    assert [(t["exit"], t["pnl"], t["candles"]) for t in trades] == [
        ("take-profit", "9.79000000", "1"),  # 110 - 100 - 0.1 - 0.11
        ("signal", "0.78900000", "1"),  # 106 - 105 - 0.105 - 0.106
    ]
    assert (trades[0]["entry_time_iso"], trades[0]["exit_time_iso"]) == ("2023-11-14T22:15:00Z", "2023-11-14T22:16:00Z")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trades"] == 2 and summary["open_position"]["entry_time"] == T0 + 5 * MIN
    assert (out / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_refused_orders_by_reason_in_the_table_and_in_rejected_csv(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, strategy = files
    out = tmp_path / "out"
    # 50 of cash never buys one unit at 100: every buy is refused, and the sell finds nothing to sell
    argv = ["--strategy", str(strategy), "--data", str(data), "--param", "amount=1", "--cash", "50", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "orders           0 fills, 3 rejected, 1 ignored" in printed
    assert printed[printed.index("orders           0 fills, 3 rejected, 1 ignored") + 1 :][:2] == [
        "  rejected       3 × insufficient cash",
        "  ignored        1 × sell while flat",
    ]
    assert "exits            0 signal, 0 take-profit, 0 stop-loss" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["orders_rejected_by_reason"] == {"insufficient cash": 3}
    with (out / "rejected.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["candle_time"]), r["side"], r["outcome"]) for r in rows] == [
        (T0 + MIN, "buy", "rejected"),
        (T0 + 3 * MIN, "buy", "rejected"),
        (T0 + 4 * MIN, "sell", "ignored"),
        (T0 + 5 * MIN, "buy", "rejected"),
    ]
    assert rows[0]["reason"] == "insufficient cash: need 100.10000000, have 50"
    assert rows[0]["candle_time_iso"] == "2023-11-14T22:15:00Z"


def test_json_summary_on_stdout(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, strategy = files
    assert main(["--strategy", str(strategy), "--data", str(data), "--param", "amount=1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fills"] == 4 and summary["candles_evaluated"] == 6


def test_declared_lookback_is_the_default_warmup(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = files
    strategy = tmp_path / "with_lookback.js"
    strategy.write_text("const lookback = 4;  // candles needed\n" + SCRIPTED)
    assert main(["--strategy", str(strategy), "--data", str(data), "--param", "amount=1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["warmup"] == 4 and summary["candles_evaluated"] == 3  # candles 3, 4, 5
    assert main(["--strategy", str(strategy), "--data", str(data), "--warmup", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["candles_evaluated"] == 6


def test_a_file_whose_name_says_nothing(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, strategy = files
    hourly = tmp_path / "prices.csv"
    lines = data.read_text().splitlines()
    # the same candles an hour apart, with a hole: the interval is the smallest spacing
    rows = [line.split(",", 1) for line in lines[1:]]
    hours = [f"{T0 + i * 60 * MIN},{rest}" for i, (_, rest) in enumerate(rows) if i != 3]
    hourly.write_text("\n".join([lines[0], *hours]) + "\n")
    assert main(["--strategy", str(strategy), "--data", str(hourly), "--param", "amount=1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["symbol"], summary["interval"], summary["interval_inferred"]) == (None, "1h", True)
    assert summary["candles"] == 5 and summary["missing_candles"] == 1
    assert main(["--strategy", str(strategy), "--data", str(hourly), "--symbol", "ethusdt", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["symbol"] == "ETHUSDT"
    assert main(["--strategy", str(strategy), "--data", str(hourly)]) == 0
    assert capsys.readouterr().out.startswith("market           1h (from the candles' spacing; no symbol given)")


def test_candles_from_the_store_between_dates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "store.db"
    sink = StoreSink(db, KEY)
    candles = table(*LINES)
    sink.write(
        [
            Row(c.open_time, str(c.open), str(c.high), str(c.low), str(c.close), str(c.volume))
            for c in (candles.candle(i) for i in range(len(candles)))
        ]
    )
    sink.close()
    config = tmp_path / "t.toml"
    config.write_text(f'[store]\npath = "{db}"\n[paper]\ncash = "1000"\n')
    strategy = tmp_path / "s.js"
    strategy.write_text(SCRIPTED)
    argv = [
        "--config",
        str(config),
        "--strategy",
        str(strategy),
        "--symbol",
        "btcusdt",
        "--interval",
        "1m",
        "--since",
        str(T0 + MIN),
        "--until",
        str(T0 + 5 * MIN),
        "--param",
        "amount=1",
        "--json",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["first_candle_time"], summary["last_candle_time"]) == (T0 + MIN, T0 + 4 * MIN)
    assert summary["initial_cash"] == "1000" and summary["fills"] == 3


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--data", "{tmp}/missing.csv", "--symbol", "BTCUSDT", "--interval", "1m"], 2, "cannot read"),
        (["--data", "{tmp}/BTCUSDT_1h.csv"], 2, "the interval is 1h, but candles are only 1m (60000 ms) apart"),
        (["--data", "{tmp}/header.csv"], 2, "header.csv:1: expected the header time,open,high,low,close,volume"),
        (["--data", "{tmp}/prices.csv", "--symbol", "b?t"], 2, "not a Binance spot symbol"),
        ([], 2, "give --data CSV, or --symbol and --interval"),
        (["--symbol", "BTCUSDT", "--interval", "1m"], 2, "no store here"),
        (["--data", "{data}", "--interval", "7m"], 2, "unsupported kline interval"),
        (["--data", "{data}", "--since", "2030-01-01"], 2, "no candles between --since and --until"),
        (["--data", "{data}", "--warmup", "99"], 1, "nothing to evaluate"),
    ],
)
def test_usage_and_data_errors(
    files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    code: int,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # the default store path is relative
    data, strategy = files
    (tmp_path / "prices.csv").write_text(data.read_text())
    (tmp_path / "BTCUSDT_1h.csv").write_text(data.read_text())  # named wrong
    (tmp_path / "header.csv").write_text("Date,Open,High,Low,Close,Volume\n" + data.read_text().split("\n", 1)[1])
    argv = [a.format(tmp=tmp_path, data=data) for a in argv]
    assert main(["--strategy", str(strategy), *argv]) == code
    assert message in capsys.readouterr().err


def test_a_strategy_that_does_not_load(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = files
    broken = tmp_path / "broken.js"
    broken.write_text("function tradingStrategy( {\n")
    assert main(["--strategy", str(broken), "--data", str(data)]) == 1
    assert "SyntaxError" in capsys.readouterr().err
    other = tmp_path / "strategy.py"
    other.write_text("print('hi')")
    assert main(["--strategy", str(other), "--data", str(data)]) == 2
    assert "unknown strategy file type '.py'" in capsys.readouterr().err


def test_a_backtest_imports_no_exchange_store_sync_or_server_code_and_plots_in_a_child(tmp_path: Path) -> None:
    """What ``tradebotd backtest --out`` loads in its own process: not ccxt, supabase, aiohttp (the
    replay server), the daemon's engine (only its runtime seams) or matplotlib, which draws
    equity.png in the chart process."""
    import subprocess
    import sys

    from bench.versus import write_candles_csv
    from tradebotd.examples.synthetic import synthetic_candles

    data = tmp_path / "SYNTH_1m.csv"
    write_candles_csv(data, synthetic_candles(300, 3))
    example = Path(__file__).resolve().parents[2] / "tradebotd" / "examples" / "sma_crossover.js"
    code = (
        "import sys, contextlib, io\n"
        "import tradebotd.backtest.plot\n"
        "tradebotd.backtest.plot.spare_core = lambda: True  # however busy the machine is\n"
        "from tradebotd.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    code = main(['backtest', '--strategy', {str(example)!r}, '--data', {str(data)!r}, "
        f"'--out', {str(tmp_path / 'out')!r}])\n"
        "heavy = ('ccxt', 'supabase', 'aiohttp', 'matplotlib', 'psycopg', 'tree_sitter',\n"
        "         'tradebotd.engine.core', 'tradebotd.engine.evaluation')\n"
        "print(code, sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert result.stdout.strip() == "0 []", result.stderr
    assert (tmp_path / "out" / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "drawn in-process" not in result.stderr
