"""Loading a strategy: entry-function lookup, load errors with positions, parameters."""

from __future__ import annotations

import pytest
from sandbox_helpers import MakeStrategy, candle

from tradebotd.sandbox import SandboxLimits, StrategyLoadError


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("function tradingStrategy(c) { return {signal: 'hold', reason: 'tradingStrategy'} }", "tradingStrategy"),
        ("function evaluate(c) { return {signal: 'hold', reason: 'evaluate'} }", "evaluate"),
        ("function strategy(c) { return {signal: 'hold', reason: 'strategy'} }", "strategy"),
        ("const tradingStrategy = (c) => ({signal: 'hold', reason: 'const arrow'});", "const arrow"),
        ("let evaluate = function (c) { return {signal: 'hold', reason: 'let'} };", "let"),
        ("var strategy = async (c) => ({signal: 'hold', reason: 'var async'});", "var async"),
        (
            # all three defined: the documented order decides
            "function strategy() { return {signal: 'hold', reason: 'strategy'} }\n"
            "function evaluate() { return {signal: 'hold', reason: 'evaluate'} }\n"
            "function tradingStrategy() { return {signal: 'hold', reason: 'tradingStrategy'} }",
            "tradingStrategy",
        ),
        (
            # a non-function under an earlier name is skipped
            "const evaluate = 42;\nfunction strategy() { return {signal: 'hold', reason: 'strategy'} }",
            "strategy",
        ),
    ],
)
def test_entry_function_variants(make: MakeStrategy, source: str, expected: str) -> None:
    decision, _ = make(source).step(candle(1), None)
    assert decision.reason == expected


def test_syntax_error_reports_line_and_column(make: MakeStrategy) -> None:
    source = "function tradingStrategy(c) {\n  return {signal: 'hold'};\n}\nconst broken = ;\n"
    with pytest.raises(StrategyLoadError) as err:
        make(source)
    assert err.value.name == "SyntaxError"
    assert (err.value.line, err.value.column) == (4, 16)
    assert "line 4" in str(err.value)


def test_missing_entry_function(make: MakeStrategy) -> None:
    with pytest.raises(StrategyLoadError) as err:
        make("function helper() { return 1 }\nconst tradingStrategy = 5;")
    assert err.value.name == "NoEntryFunction"
    assert "tradingStrategy" in err.value.message


def test_top_level_exception_is_a_load_error_with_position(make: MakeStrategy) -> None:
    with pytest.raises(StrategyLoadError) as err:
        make("function tradingStrategy() { return {signal: 'hold'} }\nnull.boom;")
    assert err.value.name == "TypeError"
    assert err.value.line == 2


def test_top_level_infinite_loop_times_out(make: MakeStrategy) -> None:
    with pytest.raises(StrategyLoadError) as err:
        make("while (true) {}\nfunction tradingStrategy() {}", limits=SandboxLimits(load_timeout_ms=30))
    assert err.value.name == "Timeout"


def test_parameters_are_visible_and_deeply_frozen(make: MakeStrategy) -> None:
    source = """
    'use strict';
    function tradingStrategy({parameters: p}) {
      const attempts = [];
      for (const mutate of [() => { p.fast = 99 }, () => { p.nested.slow = 99 }, () => { p.list.push(1) }]) {
        try { mutate(); attempts.push('mutated') } catch (e) { attempts.push(e.name) }
      }
      return {signal: 'hold', reason: attempts.join(','), indicators: {
        fast: p.fast, slow: p.nested.slow, list: p.list, name: p.name,
        frozen: Object.isFrozen(p) && Object.isFrozen(p.nested) && Object.isFrozen(p.list),
      }};
    }"""
    strategy = make(source, parameters={"fast": 5, "nested": {"slow": 20}, "list": [1.5, 2], "name": "x"})
    decision, _ = strategy.step(candle(1), None)
    assert decision.reason == "TypeError,TypeError,TypeError"
    assert decision.indicators == {"fast": 5, "slow": 20, "list": [1.5, 2.0], "name": "x", "frozen": True}


def test_numeric_parameters_keep_their_values(make: MakeStrategy) -> None:
    # The prelude stores integral numbers as QuickJS small integers (faster indexing); that must
    # not change a single value, -0 and integers beyond int32 included.
    source = """
    function tradingStrategy({parameters: p}) {
      const same = [Object.is(p.negzero, -0), p.big === 2147483648, p.neg === -2147483648, p.n === 5,
                    p.half === 1.5, p.nested.list[0] === 3 && p.nested.list[1] === -0.25,
                    Number.isInteger(p.n), 1 / p.zero === Infinity];
      return {signal: 'hold', reason: same.join(',')};
    }"""
    parameters = {"negzero": -0.0, "big": 2**31, "neg": -(2**31), "n": 5, "half": 1.5, "zero": 0,
                  "nested": {"list": [3, -0.25]}}
    decision, _ = make(source, parameters=parameters).step(candle(1), None)
    assert decision.reason == ",".join(["true"] * 8)


def test_parameters_must_be_json(make: MakeStrategy) -> None:
    with pytest.raises(StrategyLoadError) as err:
        make("function tradingStrategy() {}", parameters={"when": object()})
    assert err.value.name == "BadParameters"


def test_top_level_console_output_is_kept(make: MakeStrategy) -> None:
    strategy = make("console.info('loading', 1 + 1, Date.now());\nfunction evaluate() { return {signal: 'hold'} }")
    # Date.now() is 0 before any candle has been seen.
    assert strategy.load_console == (("info", "loading 2 0"),)
