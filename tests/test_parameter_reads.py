"""``tradebotd.parameter_reads``: which ``--param`` keys a JS/TS source reads, and when it cannot tell."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradebotd.parameter_reads import scan_parameter_reads, unread_parameters

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("source", "names"),
    [
        ("function tradingStrategy(c) { return c.parameters.fast + c.parameters?.slow }", {"fast", "slow"}),
        ("function tradingStrategy(c) { return c.parameters['fast'] + c['parameters'].slow }", {"fast", "slow"}),
        (
            "function tradingStrategy(context) { const { candles, parameters } = context; return parameters.fast }",
            {"fast"},
        ),
        ("function tradingStrategy({ parameters: { fast, slow: s = 3, 'amt': a } }) {}", {"fast", "slow", "amt"}),
        (
            "function evaluate(c) { const p = c.parameters || {}; const { x = 1, ...rest } = p; return rest.y }",
            {"x", "y"},
        ),
        (
            "function evaluate(c) { let p; p = c.parameters; if (typeof p.v === 'number') "
            "return (c.parameters ?? {}).w }",
            {"v", "w"},
        ),
        ("function evaluate(c) { return 1 } // c.parameters.commented", set()),
    ],
)
def test_reads_it_can_see(source: str, names: set[str]) -> None:
    reads = scan_parameter_reads(source, "js")
    assert reads is not None and reads.dynamic is None and reads.names == names


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ("function evaluate(c) {\n  const k = 'a';\n  return c.parameters[k] }", "line 3: c.parameters[k]"),
        ("function evaluate(c) { for (const k of Object.keys(c.parameters)) {} }", "line 1: Object.keys(c.parameters)"),
        ("function evaluate(c) { const p = c.parameters; return helper(p) }", "line 1: helper(p)"),
        ("function evaluate(c) { return {...c.parameters} }", "line 1: ...c.parameters"),
    ],
)
def test_uses_it_cannot_follow_make_it_say_so_and_warn_about_nothing(source: str, where: str) -> None:
    reads = scan_parameter_reads(source, "js")
    assert reads is not None and reads.dynamic == where
    assert unread_parameters({"anything": 1}, reads) == []


def test_the_examples_and_typescript() -> None:
    js = scan_parameter_reads((ROOT / "tradebotd/examples/sma_crossover.js").read_text(), "js")
    ts = scan_parameter_reads((ROOT / "tradebotd/examples/sma_crossover.ts").read_text(), "ts")
    assert js is not None and ts is not None and js.names == ts.names == {"fast", "slow", "amount"}
    assert unread_parameters({"fast": 5, "fsat": 5, "slow": 20}, js) == ["fsat"]
    assert scan_parameter_reads("(module)", "wasm") is None  # the native loader checks names itself
