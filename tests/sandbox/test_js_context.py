"""What a strategy sees: candles, position, clock, randomness, globals, console."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sandbox_helpers import MIN, MakeStrategy, candle, candles

from tradebotd.model import Position
from tradebotd.sandbox import SandboxLimits, StrategyRuntimeError

ECHO = """
function tradingStrategy(ctx) {
  const c = ctx.candles, last = c[c.length - 1];
  return {signal: 'hold', reason: JSON.stringify({n: c.length, first: c[0], last, price: ctx.currentPrice,
                                                  position: ctx.position, keys: Object.keys(last)})};
}"""


def _echo(make: MakeStrategy, **kwargs: object) -> dict[str, object]:
    import json

    strategy = make(ECHO, **kwargs)
    strategy.push_history(candles(0, 3))
    decision, _ = strategy.step(candle(3, close=123.5), None)
    assert decision.reason is not None
    return dict(json.loads(decision.reason))


def test_candles_are_oldest_first_objects_and_price_is_the_close(make: MakeStrategy) -> None:
    seen = _echo(make)
    assert seen["n"] == 4
    assert seen["keys"] == ["time", "open", "high", "low", "close", "volume"]
    assert seen["first"] == {"time": 0, "open": 100, "high": 101, "low": 99, "close": 100, "volume": 10}
    assert seen["last"] == {"time": 3 * MIN, "open": 123.5, "high": 124.5, "low": 122.5, "close": 123.5, "volume": 10}
    assert seen["price"] == 123.5
    assert seen["position"] is None


def test_position_is_passed_as_a_long_position(make: MakeStrategy) -> None:
    import json

    strategy = make(ECHO)
    position = Position(amount=Decimal("0.25"), entry_price=Decimal("101.5"), entry_time=7 * MIN)
    decision, _ = strategy.step(candle(9), position)
    assert decision.reason is not None
    assert json.loads(decision.reason)["position"] == {
        "side": "long", "amount": 0.25, "entryPrice": 101.5, "entryTime": 7 * MIN,
    }


def test_history_is_frozen_and_each_call_gets_a_fresh_array(make: MakeStrategy) -> None:
    source = """
    function tradingStrategy(ctx) {
      const c = ctx.candles, n = c.length, frozen = Object.isFrozen(c[0]);
      c.pop(); c.reverse(); c.push({close: -1}); c[0] = null;    // only this call's copy
      return {signal: 'hold', indicators: {n, frozen}};
    }"""
    strategy = make(source)
    for i in range(3):
        decision, _ = strategy.step(candle(i), None)
        assert decision.indicators == {"n": i + 1, "frozen": True}


def test_setters_on_object_prototype_do_not_intercept_the_context(make: MakeStrategy) -> None:
    # The shim defines the context's, position's and candles' properties (like an object literal);
    # it never assigns them, so inherited setters are not called.
    source = """
    let calls = 0;
    for (const key of ['candles', 'currentPrice', 'position', 'parameters', 'amount', 'close']) {
      Object.defineProperty(Object.prototype, key, {set() { calls++ }, configurable: true});
    }
    function tradingStrategy(ctx) {
      const own = ['candles', 'currentPrice', 'position', 'parameters'].every((k) => Object.hasOwn(ctx, k));
      return {signal: 'hold', reason: [own, calls, ctx.position.amount, ctx.candles[0].close,
                                       Object.isFrozen(ctx.candles[0])].join(',')};
    }"""
    position = Position(amount=Decimal("0.5"), entry_price=Decimal(100), entry_time=0)
    decision, _ = make(source).step(candle(1, close=101.0), position)
    assert decision.reason == "true,0,0.5,101,true"


def test_writing_a_candle_field_throws_in_strict_mode(make: MakeStrategy) -> None:
    strategy = make("'use strict'; function evaluate(ctx) { ctx.candles[0].close = 1; return {signal: 'hold'} }")
    with pytest.raises(StrategyRuntimeError) as err:
        strategy.step(candle(1), None)
    assert err.value.name == "TypeError"


def test_history_is_capped_oldest_dropped(make: MakeStrategy) -> None:
    source = "function evaluate(ctx) { return {signal: 'hold', indicators: {n: ctx.candles.length, " \
             "first: ctx.candles[0].time}} }"
    strategy = make(source, limits=SandboxLimits(max_candles=5))
    strategy.push_history(candles(0, 8))
    decision, _ = strategy.step(candle(8), None)
    assert decision.indicators == {"n": 5, "first": 4 * MIN}
    assert strategy.history_length == 5


def test_date_is_the_decision_time_of_the_newest_candle(make: MakeStrategy) -> None:
    source = """
    function evaluate(ctx) {
      return {signal: 'hold', indicators: {now: Date.now(), created: new Date().getTime(),
        explicit: new Date(5).getTime(), text: Date(), isDate: new Date() instanceof Date}};
    }"""
    strategy = make(source, interval_ms=5 * MIN)
    decision, _ = strategy.step(candle(12), None)
    decision_time = 12 * MIN + 5 * MIN  # open time + interval = the candle's close moment
    assert decision.indicators == {
        "now": decision_time, "created": decision_time, "explicit": 5,
        "text": "Thu Jan 01 1970 00:17:00 GMT+0000", "isDate": True,
    }


def test_math_random_is_seeded_and_identical_across_instances(make: MakeStrategy) -> None:
    source = "function evaluate() { return {signal: 'hold', indicators: {r: [Math.random(), Math.random()]}} }"
    first, second = make(source), make(source)
    a = [first.step(candle(i), None)[0].indicators for i in range(3)]
    b = [second.step(candle(i), None)[0].indicators for i in range(3)]
    assert a == b
    values = [x for row in a if row for x in row["r"]]  # type: ignore[union-attr]
    assert len(set(values)) == 6 and all(0 <= x < 1 for x in values)


@pytest.mark.parametrize(
    "name",
    ["std", "os", "require", "process", "fetch", "Deno", "print", "performance", "setTimeout",
     "setInterval", "scriptArgs", "XMLHttpRequest", "WebAssembly", "module", "exports", "gc"],
)
def test_host_facilities_are_absent(make: MakeStrategy, name: str) -> None:
    strategy = make(f"function evaluate() {{ return {{signal: 'hold', reason: typeof {name}}} }}")
    assert strategy.step(candle(1), None)[0].reason == "undefined"


def test_console_is_captured_bounded_and_per_call(make: MakeStrategy) -> None:
    source = """
    function evaluate(ctx) {
      if (ctx.candles.length === 1) {
        console.log('hello', 42, {a: [1, 2]}, null);
        console.warn('x'.repeat(2000));
        console.error(new RangeError('bad'));
        for (let i = 0; i < 50; i++) console.debug('spam', i);
      } else {
        console.info('second call');
      }
      return {signal: 'hold'};
    }"""
    strategy = make(source)
    _, info = strategy.step(candle(1), None)
    assert info.console[0] == ("log", 'hello 42 {"a":[1,2]} null')
    assert info.console[1][0] == "warn" and len(info.console[1][1]) == 500
    assert info.console[2][0] == "error" and info.console[2][1].startswith("RangeError: bad")
    assert len(info.console) == 21  # 20 kept + the marker
    assert info.console[-1] == ("warn", "(33 more console lines dropped)")
    _, info = strategy.step(candle(2), None)
    assert info.console == (("info", "second call"),)


def test_instances_do_not_share_globals(make: MakeStrategy) -> None:
    writer = make("function evaluate() { globalThis.shared = 'leak'; Array.prototype.leak = 1; "
                  "return {signal: 'hold'} }")
    reader = make("function evaluate() { return {signal: 'hold', reason: typeof shared + ' ' + typeof [].leak} }")
    writer.step(candle(1), None)
    assert reader.step(candle(1), None)[0].reason == "undefined undefined"


# The shim hands a strategy the same candles array again when nothing could tell it from a fresh
# one (tb_shim.c, "candles view"). Each case below keeps or changes its array in a way that must
# make the next evaluation get a fresh one; the strategy checks on every call that its array is
# exactly the history, clean, and not an array it could have seen before, and that arrays it kept
# were left alone. A failed check is a 'sell' carrying the details.
VIEW_CHECKER = """
const MAX = 4;
const kept = [];
let ref = null;
const wm = new WeakMap(), ws = new WeakSet(), registry = new FinalizationRegistry(() => {});
function clean(c) {
  const names = Object.getOwnPropertyNames(c);
  return Array.isArray(c) && Object.getPrototypeOf(c) === Array.prototype && Object.isExtensible(c) &&
    names.length === c.length + 1 && names[c.length] === 'length' &&
    Object.getOwnPropertyDescriptor(c, 'length').writable &&
    c.every((x, i) => Object.isFrozen(x) && x.time === c[c.length - 1].time - (c.length - 1 - i) * 60000);
}
function tradingStrategy(ctx) {
  const c = ctx.candles, last = c[c.length - 1];
  const problems = [];
  if (last.time !== Date.now() - 60000) problems.push('newest');
  if (c.length !== Math.min(MAX, last.time / 60000 + 1)) problems.push('length ' + c.length);
  if (!clean(c)) problems.push('not clean');
  if (kept.some(([a]) => a === c) || (ref && ref.deref() === c) || wm.has(c) || ws.has(c) ||
      (globalThis.kept_context && globalThis.kept_context.candles === c) ||
      (globalThis.getter && globalThis.getter() === c)) problems.push('seen before');
  if (!kept.every(([a, n, t]) => a.length === n && a[n - 1].time === t)) problems.push('kept changed');
  CHANGE;
  return problems.length ? {signal: 'sell', reason: problems.join(', ')} : {signal: 'hold'};
}"""

VIEW_CHANGES = {
    "nothing": "",
    "pop": "c.pop()",
    "reverse": "c.reverse()",
    "sort": "c.sort((a, b) => b.time - a.time)",
    "push the same candle": "c.push(c[0])",
    "truncate": "c.length = 0",
    "replace an element": "c[0] = c[c.length - 1]",
    "lengthen": "c.length += 3",
    "sparse element": "c[c.length + 100] = c[0]",
    "copyWithin": "c.copyWithin(0, 1)",
    "add a property": "c.extra = 1",
    "add and delete a property": "c.extra = 1; delete c.extra",
    "read-only length": "Object.defineProperty(c, 'length', {writable: false})",
    "freeze": "Object.freeze(c)",
    "prevent extensions": "Object.preventExtensions(c)",
    "new prototype": "Object.setPrototypeOf(c, null)",
    "used as a prototype": "Object.create(c)",
    "kept in a global": "kept.push([c, c.length, c[c.length - 1].time])",
    "context kept": "globalThis.kept_context = ctx",
    "closure kept": "globalThis.getter = () => c",
    "WeakRef": "ref = new WeakRef(c)",
    "WeakMap key": "wm.set(c, 1)",
    "WeakSet": "ws.add(c)",
    "FinalizationRegistry": "registry.register(c, 1)",
    "a dropped proxy": "new Proxy(c, {}).pop()",
}


@pytest.mark.parametrize("change", VIEW_CHANGES.values(), ids=VIEW_CHANGES.keys())
def test_each_evaluation_sees_a_fresh_array_of_the_history(make: MakeStrategy, change: str) -> None:
    strategy = make(VIEW_CHECKER.replace("CHANGE", change), limits=SandboxLimits(max_candles=4))
    strategy.push_history(candles(0, 2))
    for i in range(2, 7):  # the array grows to max_candles, then shifts
        decision, _ = strategy.step(candle(i), None)
        assert (decision.signal, decision.reason) == ("hold", None)
    assert strategy.run_until_signal(candles(7, 6), None) == (6, None)  # the same in one wasm call
    strategy.push_history(candles(13, 3))  # appended without an evaluation in between
    assert strategy.step(candle(16), None)[0].signal == "hold"


def test_an_array_changed_by_a_failed_evaluation_is_not_handed_out_again(make: MakeStrategy) -> None:
    source = VIEW_CHECKER.replace("CHANGE", "if (c.length === 3) { c.reverse(); throw c; }")
    strategy = make(source, limits=SandboxLimits(max_candles=4))
    assert strategy.step(candle(0), None)[0].signal == "hold"
    assert strategy.step(candle(1), None)[0].signal == "hold"
    with pytest.raises(StrategyRuntimeError):
        strategy.step(candle(2), None)
    assert strategy.run_until_signal(candles(3, 4), None) == (4, None)
