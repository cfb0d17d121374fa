"""Parity: the same candles through the live path and through the backtest give identical fills.

Live: the replay server (Binance's WebSocket and REST on 127.0.0.1) -> the daemon in-process
(feed, engine, JS sandbox, paper broker, SQLite store). Backtest: the candles downloaded from the
same server with ``tradebotd data download`` into a CSV -> ``tradebotd backtest``'s loop.

The series exercises signal fills, take-profit and stop-loss exits, a candle touching both levels,
a gap-up through the take-profit, adding to a position, a sell while flat, a strategy error and
a missing candle.

Why the tie rule cannot diverge here: live, protective levels also react to in-progress updates.
The replay server shows each candle's range in two steps before it closes (open -> low -> high
for a rising candle, open -> high -> low for a falling one), so a rising candle touches the stop
first and a falling one touches the take-profit first. The backtest only sees the closed candle
and applies the paper rule "the stop wins a tie". The two agree on every candle that touches one
level, and on rising candles that touch both; they could only disagree on a *falling* candle that
touches both, which this series avoids on purpose (and ``test_the_series_has_no_falling_tie``
checks). Exit prices are the levels in both paths, and the candle time is the touching candle's
open time in both.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from tradebotd.backtest.runner import BacktestSettings, run_backtest
from tradebotd.backtest.strategy import load_strategy
from tradebotd.config import PaperSettings
from tradebotd.daemon import Daemon
from tradebotd.data import download
from tradebotd.data.candles import read_csv
from tradebotd.model import Candle
from tradebotd.replay.series import Series
from tradebotd.replay.server import ReplayServer
from tradebotd.testing import replay_settings, until_stored

from .conftest import KEY, MIN, SCRIPTED, T0

PAST = 30  # candles closed before the daemon starts
HISTORY = 20  # of which the daemon loads this many as warm-up
PARAMETERS = {"amount": 0.01, "tp": 2, "sl": 2}
PAPER = PaperSettings(fee_rate=Decimal("0.001"), slippage_bps=Decimal(5), cash=Decimal(10_000))

# (open, high, low, close, volume) after the PAST flat candles; volume is the instruction
# (1 buy with tp/sl at close +/- 2, 2 sell, 3 throw). None is a missing candle.
LIVE: list[tuple[str, str, str, str, str] | None] = [
    ("100", "100.5", "99.5", "100", "5"),
    ("100", "100.5", "99.5", "100", "1"),  # buy 100 (tp 102, sl 98)
    ("100", "101", "99", "101", "5"),
    ("101", "103", "100.5", "102.5", "5"),  # rising, take-profit only -> 102
    ("102.5", "103", "102", "103", "1"),  # buy 103 (tp 105, sl 101)
    ("103", "103.5", "100.5", "101", "5"),  # falling, stop only -> 101
    ("101", "101.5", "100.5", "101", "1"),  # buy 101 (tp 103, sl 99)
    ("101", "104", "98", "103", "5"),  # rising, touches both: stop -> 99 in both paths
    ("103", "103.5", "102.5", "103", "1"),  # buy 103 (tp 105, sl 101)
    ("103", "104", "102", "103.5", "1"),  # buy again while long: adds, levels 105.5 / 101.5
    ("103.5", "104", "103", "103.5", "2"),  # sell everything at the close
    ("103.5", "104", "103", "103.5", "2"),  # sell while flat: ignored
    ("103.5", "104", "103", "104", "1"),  # buy 104 (tp 106, sl 102)
    ("107", "108", "106.5", "107.5", "5"),  # gaps up through the take-profit: exit at the level, 106
    ("107.5", "108", "107", "107.5", "3"),  # the strategy throws
    ("107.5", "108", "107", "107.5", "1"),  # buy 107.5 (tp 109.5, sl 105.5)
    None,  # an outage: no candle
    ("107.5", "110", "107", "107.2", "5"),  # falling, take-profit only -> 109.5
    ("107.2", "107.5", "107", "107.2", "1"),  # buy 107.2 (tp 109.2, sl 105.2)
    ("107.2", "108", "107", "107.8", "5"),  # still open at the end
]


def parity_series() -> Series:
    candles = [
        Candle("BTCUSDT", "1m", T0 + i * MIN, Decimal(100), Decimal("100.5"), Decimal("99.5"), Decimal(100), Decimal(5))
        for i in range(PAST)
    ]
    for k, row in enumerate(LIVE):
        if row is not None:
            o, h, lo, c, v = (Decimal(x) for x in row)
            candles.append(Candle("BTCUSDT", "1m", T0 + (PAST + k) * MIN, o, h, lo, c, v))
    return Series(KEY, tuple(candles))


@pytest.fixture
async def server() -> AsyncIterator[ReplayServer]:
    async with ReplayServer([parity_series()], past=PAST, ping_interval_s=None) as replay:
        yield replay


def test_the_series_has_no_falling_tie() -> None:
    """Replay the series' levels by hand: every candle that touches both levels of the position
    open at the time is rising (see the module docstring)."""
    levels: tuple[Decimal, Decimal] | None = None
    ties = 0
    for row in LIVE:
        if row is None:
            continue
        o, h, lo, c, v = (Decimal(x) for x in row)
        if levels is not None:
            tp, sl = levels
            if h >= tp and lo <= sl:
                ties += 1
                assert c >= o, f"a falling candle touches both levels: {row}"
            if h >= tp or lo <= sl:
                levels = None
        if v == 1:
            levels = (c + 2, c - 2)
        elif v == 2:
            levels = None
    assert ties == 1


async def test_live_and_backtest_fills_are_identical(server: ReplayServer, tmp_path: Path) -> None:
    # -- live ------------------------------------------------------------------------------------
    settings = replay_settings(server, tmp_path / "live.db", history=HISTORY, paper=PAPER)
    daemon = Daemon(settings)
    sid = daemon.store.add_strategy(
        name="scripted",
        user_id="u",
        code=SCRIPTED,
        kind="js",
        asset="btcusdt",
        interval="1m",
        parameters=PARAMETERS,
        portfolio_id=daemon.portfolio_id,
        status="running",
    )
    await daemon.start()
    try:
        await until_stored(daemon, lambda: sid in daemon.store.cursors())
        await server.advance(len(LIVE))
        last = T0 + (PAST + len(LIVE) - 1) * MIN
        await until_stored(daemon, lambda: daemon.store.cursors()[sid] == last)
        live = [(t.side, t.candle_time, t.price, t.amount, t.fee) for t in daemon.store.trades(sid)]
        live_actions = [t.client_order_id.rsplit("-", 1)[1] for t in daemon.store.trades(sid)]
        live_errors = sum(e.level == "error" for _, e in daemon.store.logs_after(sid))
        live_evaluations = daemon.engine.stats.evaluations
    finally:
        await daemon.shutdown()

    # -- download from the same server, then backtest ---------------------------------------------
    csv = tmp_path / "BTCUSDT_1m.csv"
    config = tmp_path / "download.toml"
    config.write_text(f'[market]\nrest_url = "{server.rest_url}"\n[store]\npath = "{tmp_path / "data.db"}"\n')
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    download.add_arguments(parser)
    since = str(T0 + (PAST - HISTORY) * MIN)
    args = parser.parse_args(["--config", str(config), "BTCUSDT", "1m", "--since", since, "--out", str(csv)])
    assert await download.run_async(args, progress=False) == 0

    table = read_csv(csv, KEY)
    assert len(table) == HISTORY + len(LIVE) - 1 and table.missing == 1
    strategy_file = tmp_path / "scripted.js"
    strategy_file.write_text(SCRIPTED)
    loaded = load_strategy(strategy_file, key=KEY, parameters=PARAMETERS, sandbox=settings.sandbox)
    backtest = BacktestSettings(
        fee_rate=PAPER.fee_rate,
        slippage_bps=PAPER.slippage_bps,
        cash=PAPER.cash,
        default_amount=PAPER.default_amount,
        warmup=HISTORY + 1,  # live, the first evaluation sees the warm-up history and the new candle
    )
    result = run_backtest(loaded.runtime, table, backtest)
    loaded.runtime.close()
    replayed = [(f.side, f.candle_time, f.price, f.amount, f.fee) for f in result.fills]

    # -- the same fills ---------------------------------------------------------------------------
    assert replayed == live
    assert [f.client_order_id.rsplit("-", 1)[1] for f in result.fills] == live_actions
    assert live_actions.count("tp") == 3 and live_actions.count("sl") == 2  # protective exits covered
    assert result.evaluated == live_evaluations == len(LIVE) - 1
    assert len(result.failures) == 1 == live_errors
    assert [r.outcome for r in result.refusals] == ["ignored"]
    assert result.position is not None and result.position.entry_time == T0 + (PAST + len(LIVE) - 2) * MIN
