"""The shipped example strategies load in the sandbox and agree with each other."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np

from tradebotd.model import Position
from tradebotd.sandbox.js import JsStrategy
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
