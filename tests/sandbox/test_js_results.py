"""Result validation: the guest's checks, the host's own checks, and the mapping to Decision."""

from __future__ import annotations

import pytest
from sandbox_helpers import MakeStrategy, candle

from tradebotd.model import Decision
from tradebotd.sandbox import InvalidResult, SandboxLimits, StrategyRuntimeError
from tradebotd.sandbox.result import parse_decision


def _returning(expression: str) -> str:
    # Candle 1 returns the expression under test, later candles a healthy hold.
    return f"function evaluate(ctx) {{ if (ctx.candles.length === 1) return {expression}; return {{signal: 'hold'}} }}"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("undefined", "must return an object"),
        ("42", "must return an object"),
        ("null", "must return an object"),
        ("'buy'", "must return an object"),
        ("[{signal: 'buy'}]", "must return an object"),
        ("{}", "signal must be"),
        ("{signal: 'moon'}", "signal must be 'buy', 'sell' or 'hold', got \"moon\""),
        ("{signal: 'BUY'}", "signal must be"),
        ("{signal: 'buy', amount: NaN}", "amount must be a finite positive number, got NaN"),
        ("{signal: 'buy', amount: Infinity}", "amount must be a finite positive number, got Infinity"),
        ("{signal: 'buy', amount: -1}", "amount must be a finite positive number, got -1"),
        ("{signal: 'buy', amount: 0}", "amount must be a finite positive number, got 0"),
        ("{signal: 'buy', amount: '1'}", "amount must be a finite positive number"),
        ("{signal: 'buy', takeProfit: -5}", "takeProfit must be"),
        ("{signal: 'buy', stopLoss: NaN}", "stopLoss must be"),
        ("{signal: 'hold', indicators: {rsi: Infinity}}", "indicators.rsi must be a finite number, got Infinity"),
        ("{signal: 'hold', indicators: {rsi: NaN}}", "indicators.rsi must be a finite number, got NaN"),
        ("{signal: 'hold', indicators: {rsi: null}}", "indicators.rsi must be a number, string, boolean"),
        ("{signal: 'hold', indicators: {o: {nested: 1}}}", "indicators.o must be a number, string, boolean"),
        ("{signal: 'hold', indicators: {band: [1, NaN]}}", "indicators.band[1] must be a finite number"),
        ("{signal: 'hold', indicators: [1, 2]}", "indicators must be an object"),
        ("{signal: 'hold', reason: 42}", "reason must be a string"),
        ("{signal: 'hold', reason: 'x'.repeat(5000)}", "reason has 5000 characters, the limit is 1000"),
        ("{signal: 'hold', indicators: {a: new Array(1e6).fill(1)}}", "result too large"),
        ("{get signal() { return 'buy' }, amount: -2}", "amount must be"),
        ("{signal: 'buy', orderType: 'stop'}", "orderType must be 'market' or 'limit', got \"stop\""),
        ("{signal: 'buy', orderType: 'limit'}", "orderType 'limit' needs a limitPrice"),
        ("{signal: 'buy', limitPrice: 99}", "limitPrice is only for orderType 'limit'"),
        ("{signal: 'buy', orderType: 'market', limitPrice: 99}", "limitPrice is only for orderType 'limit'"),
        ("{signal: 'buy', orderType: 'limit', limitPrice: 0}", "limitPrice must be a finite positive number"),
    ],
)
def test_invalid_results_are_rejected_and_the_strategy_keeps_working(
    make: MakeStrategy, expression: str, message: str
) -> None:
    strategy = make(_returning(expression), limits=SandboxLimits(timeout_ms=10_000))
    with pytest.raises(InvalidResult) as err:
        strategy.step(candle(1), None)
    assert message in str(err.value)
    assert err.value.consumed == 1
    assert strategy.step(candle(2), None)[0] == Decision(signal="hold")


def test_result_size_limit(make: MakeStrategy) -> None:
    strategy = make(_returning("{signal: 'hold', reason: 'y'.repeat(900)}"), limits=SandboxLimits(max_result_bytes=512))
    with pytest.raises(InvalidResult) as err:
        strategy.step(candle(1), None)
    assert "the limit is 512" in str(err.value)


def test_a_full_result_maps_to_a_decision(make: MakeStrategy) -> None:
    expression = """{signal: 'buy', amount: 0.5, reason: 'cross', takeProfit: 110, stopLoss: 95.5, extra: 'ignored',
                     indicators: {sma: 101.25, period: 20, trend: 'up', crossed: true, band: [99, 103.5]}}"""
    decision, _ = make(_returning(expression)).step(candle(1), None)
    assert decision == Decision(
        signal="buy", amount=0.5, reason="cross", take_profit=110.0, stop_loss=95.5,
        indicators={"sma": 101.25, "period": 20, "trend": "up", "crossed": True, "band": [99.0, 103.5]},
    )
    assert decision.indicators is not None
    assert type(decision.indicators["crossed"]) is bool and type(decision.indicators["period"]) is int


def test_a_limit_order_result_maps_to_a_decision(make: MakeStrategy) -> None:
    decision, _ = make(_returning("{signal: 'buy', orderType: 'limit', limitPrice: 99.5}")).step(candle(1), None)
    assert decision == Decision(signal="buy", order_type="limit", limit_price=99.5)
    decision, _ = make(_returning("{signal: 'sell', orderType: 'market'}")).step(candle(1), None)
    assert decision == Decision(signal="sell", order_type="market")


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (b'{"signal":"buy","orderType":"limit"}', "orderType 'limit' needs a limitPrice"),
        (b'{"signal":"buy","limitPrice":5}', "limitPrice is only for orderType 'limit'"),
        (b'{"signal":"buy","orderType":"stop","limitPrice":5}', "orderType"),
    ],
)
def test_the_host_checks_limit_orders_too(output: bytes, message: str) -> None:
    with pytest.raises(InvalidResult, match=message):
        parse_decision(output)
    assert parse_decision(b'{"signal":"buy","orderType":"limit","limitPrice":5}') == Decision(
        signal="buy", order_type="limit", limit_price=5.0
    )


def test_null_optional_fields_mean_absent(make: MakeStrategy) -> None:
    decision, _ = make(_returning("{signal: 'sell', amount: null, reason: undefined, indicators: null}")).step(
        candle(1), None
    )
    assert decision == Decision(signal="sell")


def test_async_strategies_are_awaited(make: MakeStrategy) -> None:
    source = "async function evaluate() { await null; const x = await Promise.resolve(3); " \
             "return {signal: 'buy', amount: x} }"
    assert make(source).step(candle(1), None)[0] == Decision(signal="buy", amount=3.0)


def test_a_promise_that_never_settles_is_invalid(make: MakeStrategy) -> None:
    with pytest.raises(InvalidResult, match="never settled"):
        make("function evaluate() { return new Promise(() => {}) }").step(candle(1), None)


def test_a_rejected_promise_is_a_runtime_error(make: MakeStrategy) -> None:
    with pytest.raises(StrategyRuntimeError) as err:
        make("async function evaluate() { await null; throw new TypeError('nope') }").step(candle(1), None)
    assert (err.value.name, err.value.message) == ("TypeError", "nope")


def test_thrown_errors_carry_name_message_and_stack(make: MakeStrategy) -> None:
    source = "function helper() {\n  throw new RangeError('too far');\n}\nfunction evaluate() { helper() }"
    with pytest.raises(StrategyRuntimeError) as err:
        make(source).step(candle(1), None)
    assert (err.value.name, err.value.message) == ("RangeError", "too far")
    assert "at helper (strategy.js:2:" in err.value.stack


def test_throwing_a_non_error_value(make: MakeStrategy) -> None:
    with pytest.raises(StrategyRuntimeError, match="uncaught string: plain"):
        make("function evaluate() { throw 'plain' }").step(candle(1), None)


def test_prototype_tampering_does_not_reach_the_sandbox_serialisation(make: MakeStrategy) -> None:
    # A strategy owns its realm. Recursive toJSON hooks would make JSON.stringify of the result
    # (and of console lines) emit attacker-chosen JSON, or run for a long time without polling
    # the interrupt handler; the prelude serialises only null-prototype values.
    source = """
    Object.prototype.toJSON = function () { return {signal: 'buy', amount: -5, nested: {x: null}}; };
    Array.prototype.toJSON = function () { return 'tampered'; };
    function evaluate() { console.log('still fine'); return {signal: 'sell', indicators: {band: [1, 2]}} }"""
    decision, info = make(source).step(candle(1), None)
    assert decision == Decision(signal="sell", indicators={"band": [1.0, 2.0]})
    assert info.console == (("log", "still fine"),)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"signal":"buy","amount":-1}',
        b'{"signal":"buy","amount":null,"indicators":{"x":null}}',
        b'{"signal":"buy","stopLoss":0}',
        b'{"signal":"buy","amount":"1"}',
        b'{"signal":"wait"}',
        b'{"signal":"hold","indicators":{"x":[1,null]}}',
        b'{"signal":"hold","reason":"' + b"r" * 1001 + b'"}',
        b"[]",
        b"not json",
    ],
)
def test_host_validation_rejects_bad_json(payload: bytes) -> None:
    with pytest.raises(InvalidResult):
        parse_decision(payload)


# Results that tb_shim.c's signal_json() writes itself (plain buys and sells) or hands to the
# prelude's finish() (everything else), each compared with finish()'s own output for it.
_SIGNAL_RESULTS = [
    "{signal: 'buy'}",
    "{signal: 'sell'}",
    "{signal: 'buy', amount: 1}",
    "{signal: 'buy', amount: 0.1, takeProfit: 1e21, stopLoss: 1.5e-7}",
    "{signal: 'buy', amount: 2**31, takeProfit: 2**31 - 1, stopLoss: 0.1 + 0.2}",
    "{signal: 'buy', amount: 123456789.123456789, reason: 'he said \"x\"\\n\\u2028 é 😀 \\u0001 \\ud800'}",
    "{signal: 'sell', reason: '', indicators: {}}",
    "{signal: 'buy', indicators: {a: 1, b: -0, c: 'x\"y', d: true, e: false, f: 1e-7, g: -1.5e300}}",
    "{indicators: {z: 1, a: 2}, signal: 'sell', amount: 2, reason: 'r'}",
    "{signal: 'buy', amount: undefined, takeProfit: null, stopLoss: undefined, limitPrice: null,"
    " orderType: undefined, reason: null, indicators: null}",
    "{signal: 'buy', extra: {a: 1}, junk: [1, 2]}",
    "{signal: 'buy', indicators: {'1': 1, a: 2, '0': 3}}",
    "{signal: 'buy', indicators: {arr: [1, 2]}}",
    "{signal: 'buy', orderType: 'market'}",
    "{signal: 'buy', orderType: 'limit', limitPrice: 5}",
    "{signal: 'b' + 'uy', amount: 3}",
    "Object.assign(Object.create({amount: 3}), {signal: 'buy'})",
    "Object.assign(Object.create(null), {signal: 'sell', amount: 4})",
    "(() => { const o = {signal: 'buy'}; Object.defineProperty(o, 'amount', {value: 7}); return o; })()",
    "(() => { const i = {a: 1}; Object.defineProperty(i, 'h', {value: 7}); i[Symbol('s')] = 3;"
    " return {signal: 'buy', indicators: i}; })()",
    "(() => { const o = {signal: 'buy', amount: 1, x: 1}; delete o.x; return o; })()",
    "{signal: 'buy', amount: -1}",
    "{signal: 'sell', amount: NaN}",
    "{signal: 'buy', amount: '1'}",
    "{signal: 'buy', reason: 'x'.repeat(1001)}",
    "{signal: 'buy', indicators: {k: 'x'.repeat(70000)}}",
    "{signal: 'sell', indicators: {k: NaN}}",
    "{signal: 'buy', indicators: {k: null}}",
]


def test_buys_and_sells_serialised_in_the_shim_match_the_prelude(make: MakeStrategy) -> None:
    cases = ", ".join(f"() => ({expression})" for expression in _SIGNAL_RESULTS)
    # Each result twice: as it is, then with a non-enumerable getter that finish() never reads,
    # which makes the shim hand the result to finish() instead of writing it itself.
    strategy = make(
        f"const cases = [{cases}];\n"
        "let k = 0;\n"
        "function tradingStrategy(ctx) {\n"
        "  const r = cases[k >> 1]();\n"
        "  if (k++ & 1) Object.defineProperty(r, 'zzz', { get() { throw new Error('read'); } });\n"
        "  return r;\n"
        "}\n"
    )
    guest, _ = strategy._acquire()
    try:
        for i, expression in enumerate(_SIGNAL_RESULTS):
            shim, prelude = (
                guest.step(candle(2 * i + j), None, epoch_ticks=1 << 40, fuel=None) for j in range(2)
            )
            assert (shim.status, shim.output) == (prelude.status, prelude.output), expression
    finally:
        strategy._lock.release()
