"""run_until_signal (backtests) and push_history (warm-up)."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from sandbox_helpers import MIN, MakeStrategy, candle, candles

from tradebotd.model import Decision, Position
from tradebotd.sandbox import SandboxLimits, StrategyRuntimeError, StrategyTimeout

# Buys on candles whose open time is a multiple of 7 minutes while flat, sells on multiples of
# 5 while long; throws on minute 13 (when asked to) so error handling can be checked.
SIGNALS = """
function evaluate(ctx) {
  const last = ctx.candles[ctx.candles.length - 1], minute = last.time / 60000;
  if (ctx.parameters.failAt === minute) throw new Error('failing at ' + minute);
  if (!ctx.position && minute % 7 === 0) return {signal: 'buy', amount: 1, reason: String(minute)};
  if (ctx.position && minute % 5 === 0) return {signal: 'sell', reason: String(minute)};
  return {signal: 'hold', indicators: {n: ctx.candles.length}};
}"""


def test_stops_at_the_first_signal_and_resumes(make: MakeStrategy) -> None:
    strategy = make(SIGNALS)
    series = candles(1, 30)  # minutes 1..30
    consumed, decision = strategy.run_until_signal(series, None)
    assert (consumed, decision) == (7, Decision(signal="buy", amount=1.0, reason="7"))
    position = Position(amount=Decimal(1), entry_price=Decimal(107), entry_time=7 * MIN)
    consumed2, decision2 = strategy.run_until_signal(series[consumed:], position)
    assert (consumed2, decision2) == (3, Decision(signal="sell", reason="10"))
    assert strategy.history_length == 10


def test_all_holds_consume_everything(make: MakeStrategy) -> None:
    strategy = make(SIGNALS)
    position = Position(amount=Decimal(1), entry_price=Decimal(100), entry_time=0)
    series = candles(1, 4)  # minutes 1..4: no multiple of 5
    assert strategy.run_until_signal(series, position) == (4, None)
    assert strategy.history_length == 4


def test_matches_step_by_step_evaluation_across_chunks(make: MakeStrategy) -> None:
    series = candles(1, 300)  # more than one wasm call's worth
    batch, stepwise = make(SIGNALS), make(SIGNALS)
    position: Position | None = None
    done = 0
    batch_signals: list[tuple[int, str]] = []
    while done < len(series):
        consumed, decision = batch.run_until_signal(series[done:], position)
        done += consumed
        if decision is not None:
            batch_signals.append((done, decision.signal))
            position = None if decision.signal == "sell" else Position(Decimal(1), Decimal(1), 0)
    position = None
    step_signals: list[tuple[int, str]] = []
    for i, row in enumerate(series, start=1):
        decision, _ = stepwise.step(tuple(row), position)  # type: ignore[arg-type]
        if decision.signal != "hold":
            step_signals.append((i, decision.signal))
            position = None if decision.signal == "sell" else Position(Decimal(1), Decimal(1), 0)
    assert batch_signals == step_signals
    assert len(batch_signals) > 10


def test_an_error_reports_how_many_candles_were_consumed(make: MakeStrategy) -> None:
    strategy = make(SIGNALS, parameters={"failAt": 83})
    position = Position(amount=Decimal(1), entry_price=Decimal(100), entry_time=0)
    series = np.array([candle(m) for m in range(71, 100) if m % 5], dtype=np.float64)  # no sells
    with pytest.raises(StrategyRuntimeError) as err:
        strategy.run_until_signal(series, position)
    assert err.value.consumed == 11  # 71-74, 76-79, 81, 82 and the failing 83
    assert err.value.message == "failing at 83"
    assert strategy.history_length == 11
    assert strategy.run_until_signal(series[11:], position) == (len(series) - 11, None)


def test_a_trap_mid_batch_keeps_the_history_consistent(make: MakeStrategy) -> None:
    source = """
    let calls = 0;  // starts again at 0 in a rebuilt instance
    function evaluate(ctx) {
      const n = ctx.candles.length;
      if (++calls === 100) { while (true) {} }
      return {signal: n === 120 ? 'buy' : 'hold', amount: 1, indicators: {n}};
    }"""
    strategy = make(source, limits=SandboxLimits(timeout_ms=60_000, epoch_backstop_ms=20))
    series = candles(0, 150)
    with pytest.raises(StrategyTimeout) as err:
        strategy.run_until_signal(series, None)
    assert err.value.trapped and err.value.consumed == 100
    assert strategy.history_length == 100
    consumed, decision = strategy.run_until_signal(series[100:], None)
    assert (consumed, decision is not None and decision.signal) == (20, "buy")


def test_push_history_in_one_call_beyond_the_input_buffer(make: MakeStrategy) -> None:
    source = "function evaluate(ctx) { return {signal: 'hold', indicators: " \
             "{n: ctx.candles.length, first: ctx.candles[0].time, sum: ctx.candles.reduce((s, c) => s + c.close, 0)}} }"
    strategy = make(source, limits=SandboxLimits(max_candles=3000))
    series = candles(0, 2500)
    strategy.push_history(series)
    decision, _ = strategy.step(candle(2500, close=1.0), None)
    assert decision.indicators == {"n": 2501, "first": 0, "sum": float(series[:, 4].sum()) + 1.0}


def test_bad_candles_are_rejected_before_reaching_the_sandbox(make: MakeStrategy) -> None:
    strategy = make(SIGNALS)
    with pytest.raises(ValueError, match="finite"):
        strategy.step((0.0, 1.0, 1.0, 1.0, float("nan"), 1.0), None)
    with pytest.raises(ValueError, match="shape"):
        strategy.push_history(np.zeros((3, 5)))
    assert strategy.history_length == 0


# A hold in a backtest run is checked natively when that cannot differ from the prelude's check
# (tb_shim.c, hold_is_plain); these holds must come out of run_until_signal exactly as they come
# out of step, which always uses the prelude: same decisions, same errors, and the same number of
# getter calls (the fourth candle's buy reports them).
HOLDS = {
    "plain": ("", "{signal: 'hold'}"),
    "plain indicators": ("", "{signal: 'hold', reason: 'r', indicators: {a: 1, b: 2.5, c: 'x', d: true}}"),
    "null and undefined levels": ("", "{signal: 'hold', amount: null, stopLoss: undefined, reason: null}"),
    "a computed 'hold'": ("", "{signal: ['ho', 'ld'].join('')}"),
    "a class instance": ("class R { constructor() { this.signal = 'hold'; } }", "new R()"),
    "a getter on the result": ("", "{signal: 'hold', get amount() { calls++; return undefined; }}"),
    "a getter on the indicators": ("", "{signal: 'hold', indicators: {get a() { calls++; return 1; }}}"),
    "a getter on Object.prototype": (
        "Object.defineProperty(Object.prototype, 'limitPrice', {get() { calls++; }, configurable: true});",
        "{signal: 'hold'}",
    ),
    "a level on Object.prototype": ("Object.prototype.takeProfit = -1;", "{signal: 'hold'}"),
    "a proxy": ("", "new Proxy({signal: 'hold'}, {get(t, k) { calls++; return t[k]; }})"),
    "a NaN indicator": ("", "{signal: 'hold', indicators: {a: NaN}}"),
    "an array indicator": ("", "{signal: 'hold', indicators: {a: [1, 2]}}"),
    "an object indicator": ("", "{signal: 'hold', indicators: {a: {}}}"),
    "indicators that are an array": ("", "{signal: 'hold', indicators: [1]}"),
    "an invalid amount": ("", "{signal: 'hold', amount: 0}"),
    "an order type": ("", "{signal: 'hold', orderType: 'limit'}"),
    "a long reason": ("", "{signal: 'hold', reason: 'x'.repeat(1001)}"),
    "a reason that is no string": ("", "{signal: 'hold', reason: 5}"),
    "indicators over the size limit": ("", "{signal: 'hold', indicators: {a: 'x'.repeat(70000)}}"),
    "hidden indicator keys": (
        "function hidden() { const o = {a: 1}; o[Symbol('s')] = {};"
        " Object.defineProperty(o, 'h', {get() { calls++; return {}; }, enumerable: false}); return o; }",
        "{signal: 'hold', indicators: hidden()}",
    ),
    "a deleted key": ("function gone() { const o = {signal: 'hold', amount: -1}; delete o.amount; return o; }",
                      "gone()"),
    "no signal": ("", "{indicators: {a: 1}}"),
}


def _outcome(run: object) -> tuple[str, str]:
    try:
        result = run()  # type: ignore[operator]
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return "ok", repr(result)


@pytest.mark.parametrize("name", sorted(HOLDS))
def test_holds_in_a_run_are_checked_as_in_a_step(make: MakeStrategy, name: str) -> None:
    setup, result = HOLDS[name]
    source = f"""
let calls = 0;
{setup}
function evaluate(ctx) {{
  if (ctx.candles.length === 4) return {{signal: 'buy', amount: 1, reason: 'calls ' + calls}};
  return {result};
}}"""
    series = candles(1, 4)
    batch, stepwise = make(source), make(source)

    def stepped() -> tuple[int, Decision | None]:
        for i, row in enumerate(series, start=1):
            decision, _ = stepwise.step(tuple(row), None)  # type: ignore[arg-type]
            if decision.signal != "hold":
                return i, decision
        return len(series), None

    assert _outcome(lambda: batch.run_until_signal(series, None)) == _outcome(stepped)
