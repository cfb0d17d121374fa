"""The shipped example strategies load in the sandbox and agree with each other."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np

from tradebotd.examples.reference import SmaCrossover
from tradebotd.examples.synthetic import synthetic_candles
from tradebotd.model import Decision, Position
from tradebotd.sandbox.js import JsStrategy, SandboxLimits
from tradebotd.sandbox.typescript import erase_types

EXAMPLES = Path(__file__).resolve().parents[1] / "tradebotd" / "examples"


def test_typescript_example_decides_exactly_like_the_javascript_one() -> None:
    params = {"fast": 5, "slow": 20, "amount": 0.01}
    js = JsStrategy((EXAMPLES / "sma_crossover.js").read_text(), parameters=params, interval_ms=60_000)
    ts = JsStrategy(
        erase_types((EXAMPLES / "sma_crossover.ts").read_text()),
        parameters=params,
        interval_ms=60_000,
        filename="strategy.ts",
    )
    closes = 100 + np.cumsum(np.random.default_rng(3).normal(0, 1, 400))
    position: Position | None = None
    signals = []
    for i, close in enumerate(closes.tolist()):
        row = (i * 60_000.0, close, close, close, close, 1.0)
        a, _ = js.step(row, position)
        b, _ = ts.step(row, position)
        assert a == b, i
        if a.signal != "hold":
            signals.append(a.signal)
            position = Position(Decimal("0.01"), Decimal(repr(close)), i * 60_000) if a.signal == "buy" else None
    assert signals.count("buy") >= 5 and signals.count("sell") >= 5


def test_the_python_reference_decides_exactly_like_the_javascript_example() -> None:
    """Every decision equal, warm-up reasons and indicator floats included; a short history
    (max_candles 30) shows in the warm-up reason of both."""
    params = {"fast": 5, "slow": 20, "amount": 0.01}
    js = JsStrategy(
        (EXAMPLES / "sma_crossover.js").read_text(),
        parameters=params,
        interval_ms=60_000,
        limits=SandboxLimits(max_candles=30),
    )
    python = SmaCrossover(fast=5, slow=20, amount=0.01, max_candles=30)
    series = synthetic_candles(1_500, seed=4)
    js.push_history(series[:3])
    python.push_history(series[:3])
    position: Position | None = None
    signals = []
    for row in series[3:].tolist():
        candle = (row[0], row[1], row[2], row[3], row[4], row[5])
        ours, _ = python.step(candle, position)
        theirs, _ = js.step(candle, position)
        assert ours == theirs, row
        if ours.signal != "hold":
            signals.append(ours.signal)
            position = Position(Decimal("0.01"), Decimal(repr(row[4])), int(row[0])) if ours.signal == "buy" else None
    js.close()
    assert signals.count("buy") >= 5 and signals.count("sell") >= 5


def test_the_python_reference_finds_in_a_batch_the_signals_it_gives_step_by_step() -> None:
    series = synthetic_candles(3_000, seed=6)
    stepped = SmaCrossover()
    expected = []
    for i, row in enumerate(series.tolist()):
        decision, _ = stepped.step(tuple(row), None)
        if decision.signal != "hold":
            expected.append((i, decision))
    batch = SmaCrossover()
    got: list[tuple[int, Decision]] = []
    done = 0
    while done < len(series):
        consumed, found = batch.run_until_signal(series[done:done + 500], None)
        done += consumed
        if found is not None:
            got.append((done - 1, found))
    assert got == expected and len(expected) >= 10
