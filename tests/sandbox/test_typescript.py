"""erase_types: TypeScript in, JavaScript with the same lines and columns out (or a TypeScriptError)."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from textwrap import dedent

import numpy as np
import pytest
import tree_sitter_javascript
from sandbox_helpers import MIN, MakeStrategy
from tree_sitter import Language, Node, Parser

from tradebotd.errors import StrategyError
from tradebotd.model import Decision, Position
from tradebotd.sandbox.errors import StrategyLoadError
from tradebotd.sandbox.typescript import TypeScriptError, erase_types

JAVASCRIPT = Language(tree_sitter_javascript.language())


def parse_js(source: str) -> Node:
    """The JavaScript grammar's tree of `source`; fails the test on any syntax error."""
    root = Parser(JAVASCRIPT).parse(source.encode()).root_node
    assert not root.has_error, f"not valid JavaScript: {root}"
    return root


def statements(source: str) -> list[str]:
    return [node.type for node in parse_js(source).named_children if node.type != "comment"]


def assert_erases_to(typescript: str, javascript: str) -> None:
    """`javascript` is the expected output without trailing spaces; every line keeps its length."""
    ts_lines = typescript.split("\n")
    js_lines = javascript.split("\n")
    assert len(js_lines) == len(ts_lines)
    expected = "\n".join(js.ljust(len(ts)) for js, ts in zip(js_lines, ts_lines, strict=True))
    assert erase_types(typescript) == expected
    parse_js(expected)


def blanked(typescript: str, *parts: str) -> str:
    """`typescript` with each of `parts`, found left to right, overwritten by spaces (line breaks kept)."""
    out, position = typescript, 0
    for part in parts:
        start = out.index(part, position)
        position = start + len(part)
        out = out[:start] + re.sub(r"[^\r\n]", " ", part) + out[position:]
    return out


def erase_error(typescript: str) -> TypeScriptError:
    with pytest.raises(TypeScriptError) as info:
        erase_types(typescript)
    return info.value


# ---------------------------------------------------------------- erased


@pytest.mark.parametrize(
    ("typescript", "erased"),
    [
        # annotations on variables, parameters and returns
        ("let x: number = 1;", [": number"]),
        ("const xs: Array<{ a: string }> = [];", [": Array<{ a: string }>"]),
        ("function f(a: number, b: string): boolean {}", [": number", ": string", ": boolean"]),
        ("const g = (a: number): number => a;", [": number", ": number"]),
        ("function h({ a }: Ctx, n: number = 1, ...r: number[]) {}", [": Ctx", ": number", ": number[]"]),
        ("try {} catch (e: unknown) {}", [": unknown"]),
        ("function isNum(x: unknown): x is number { return true; }", [": unknown", ": x is number"]),
        ("function check(x: unknown): asserts x {}", [": unknown", ": asserts x"]),
        ("function m(this: Window, a: number) {}", ["this: Window,", ": number"]),
        # optional parameters and definite assignment
        ("function o(x?: number, y?) {}", ["?: number", "?"]),
        ("let d!: number;", ["!: number"]),
        # generics
        ("function id<T extends object = {}>(x: T): T { return x; }", ["<T extends object = {}>", ": T", ": T"]),
        ("const id2 = <T,>(x: T) => x;", ["<T,>", ": T"]),
        ("const id3 = async <T,>(x: T): Promise<T> => x;", ["<T,>", ": T", ": Promise<T>"]),
        ("foo<number>(x);", ["<number>"]),
        ("const m = new Map<string, number[]>();", ["<string, number[]>"]),
        ("const f2 = foo<string>;", ["<string>"]),
        ("const o2 = { pick<K>(k: K): K { return k; } };", ["<K>", ": K", ": K"]),
        # as, satisfies, <T>expr, non-null
        ("const a = x as unknown as string[];", [" as unknown as string[]"]),
        ("const c = [1, 2] as const;", [" as const"]),
        ("const s = { fast: 5 } satisfies Record<string, number>;", [" satisfies Record<string, number>"]),
        ("const t = (y satisfies Y).z;", [" satisfies Y"]),
        ("const u = <number>y + (<any>w).v;", ["<number>", "<any>"]),
        ("a!.b![0]!();", ["!", "!", "!"]),
        ("for (const k of Object.keys(o) as Array<keyof typeof o>) {}", [" as Array<keyof typeof o>"]),
    ],
)
def test_erases_types_in_expressions_and_signatures(typescript: str, erased: list[str]) -> None:
    javascript = erase_types(typescript)
    assert javascript == blanked(typescript, *erased)
    parse_js(javascript)


def test_interfaces_type_aliases_and_declare_statements_become_blank_lines() -> None:
    assert_erases_to(
        dedent("""\
            interface Candle {
              close: number;
              [extra: string]: unknown;
            }
            type Signal =
              | 'buy'
              | 'sell';
            declare const host: { now(): number };
            declare function log(msg: string): void;
            declare global { interface Window { x: number } }
            const n = 1;"""),
        "\n" * 10 + "const n = 1;",
    )


def test_function_overload_signatures_are_erased() -> None:
    assert_erases_to(
        dedent("""\
            function pick(a: string): string;
            function pick(a: number): number;
            function pick(a: any): any { return a; }"""),
        "\n\nfunction pick(a     )      { return a; }",
    )


def test_class_types_modifiers_and_members() -> None:
    assert_erases_to(
        dedent("""\
            abstract class Base<T> extends Parent<T> implements A, B<T> {
              private readonly period: number = 3;
              protected cache?: Map<string, T>;
              public static count: number = 0;
              declare extra: string;
              override ready!: boolean;
              abstract compute(x: T): number;
              [key: string]: unknown;
              run(a: string): void;
              run(a: any) {}
              public get size(): number { return 1; }
              protected optional?(): void {}
              #secret?: number;
            }"""),
        dedent("""\
                     class Base    extends Parent                       {
                               period         = 3;
                        cache                 ;
                     static count         = 0;
              ;                    ;
                       ready          ;
              ;                             ;
                                    ;
                                  ;
              run(a     ) {}
                     get size()         { return 1; }
                        optional ()       {}
              #secret         ;
            }"""),
    )


def test_class_expressions_lose_their_type_parameters_and_implements() -> None:
    assert_erases_to("const K = class<T> implements I {};", "const K = class                 {};")


@pytest.mark.parametrize(
    ("typescript", "erased"),
    [
        ("export function tradingStrategy(c: Ctx): Res {}", ["export", ": Ctx", ": Res"]),
        ("export default function tradingStrategy() {}", ["export default"]),
        ("export async function f() {}", ["export"]),
        ("export const a = 1, b = 2;", ["export"]),
        ("export class C {}", ["export"]),
        ("export abstract class D {}", ["export abstract"]),
        ("export interface I { a: number }", ["export interface I { a: number }"]),
        ("export type T = number;", ["export type T = number;"]),
        ("export declare const z: number;", ["export declare const z: number;"]),
        ("export type { T } from './types';", ["export type { T } from './types';"]),
        ("import type { Candle } from './types';", ["import type { Candle } from './types';"]),
        ("import { type A, type B } from './types';", ["import { type A, type B } from './types';"]),
        ("export { a, b };", ["export { a, b };"]),
        ("export {};", ["export {};"]),
        ("export default tradingStrategy;", ["export default tradingStrategy;"]),
    ],
)
def test_export_and_type_only_imports(typescript: str, erased: list[str]) -> None:
    # A strategy is evaluated as a script, where `export` and `import` are syntax errors.
    javascript = erase_types(typescript)
    assert javascript == blanked(typescript, *erased)
    parse_js(javascript)


# ---------------------------------------------------------------- rejected


@pytest.mark.parametrize(
    ("typescript", "line", "column", "words"),
    [
        ("const a = 1;\nenum Side { Buy, Sell }", 2, 1, "`enum`"),
        ("const enum Side { Buy }", 1, 1, "`enum`"),
        ("export enum Side { Buy }", 1, 8, "`enum`"),
        ("function f() {\n  enum Inner { A }\n}", 2, 3, "`enum`"),
        ("namespace Util { export const a = 1; }", 1, 1, "`namespace`"),
        ("module Util { }", 1, 1, "`module`"),
        ("@sealed\nclass C {}", 1, 1, "decorators"),
        ("class C {\n  @memo get v() { return 1; }\n}", 2, 3, "decorators"),
        ("class C {\n  constructor(private x: number) {}\n}", 2, 15, "parameter properties"),
        ("class C { constructor(readonly x: number) {} }", 1, 23, "parameter properties"),
        ("class C { constructor(public x = 1) {} }", 1, 23, "parameter properties"),
        ("class C extends B { constructor(override x: number) { super(); } }", 1, 33, "parameter properties"),
        ("import { sma } from './indicators';", 1, 1, "cannot import"),
        ("import * as lib from 'lib';", 1, 1, "cannot import"),
        ("import 'polyfill';", 1, 1, "cannot import"),
        ("import { type A, b } from './x';", 1, 1, "cannot import"),
        ("import fs = require('fs');", 1, 1, "cannot import"),
        ("export { sma } from './indicators';", 1, 1, "re-export"),
        ("export * from './indicators';", 1, 1, "re-export"),
        ("export = tradingStrategy;", 1, 1, "`export`"),
        ("function run() {}\nexport { run as tradingStrategy };", 2, 10, "renaming exports"),
        ("export default function (context) {}", 1, 1, "anonymous"),
        ("export default class {}", 1, 1, "anonymous"),
        ("export default { signal: 'hold' };", 1, 1, "anonymous"),
        ("tag<string>`text`;", 1, 1, "tagged template"),
    ],
)
def test_rejects_typescript_with_runtime_semantics(typescript: str, line: int, column: int, words: str) -> None:
    error = erase_error(typescript)
    assert (error.line, error.column) == (line, column)
    assert words in error.message
    assert f"(line {line}, column {column})" in str(error)


def test_syntax_errors_point_at_the_first_error() -> None:
    error = erase_error("const ok = 1;\nfunction f(a: number {\n  return a;\n}\nconst bad = ;\n")
    assert error.message == "syntax error: missing `)`"
    assert (error.line, error.column) == (2, 21)  # right after `number`


def test_missing_token_is_named() -> None:
    error = erase_error("const a = [1, 2;\n")
    assert error.message == "syntax error: missing `]`"
    assert (error.line, error.column) == (1, 16)


def test_definite_assignment_with_initializer_is_a_syntax_error() -> None:
    # TypeScript forbids `let x!: T = v` too (TS1263); tree-sitter does not parse it.
    error = erase_error("let x!: number = 1;")
    assert (error.line, error.column) == (1, 5)


def test_typescript_left_over_after_erasing_fails_the_javascript_check() -> None:
    # `accessor` fields are not erased (they have runtime semantics) and QuickJS cannot run them.
    error = erase_error("class C {\n  accessor z = 1;\n}")
    assert error.message.startswith("unsupported TypeScript syntax")
    assert error.line == 2


def test_type_script_error_is_a_strategy_load_error() -> None:
    error = erase_error("enum E { A }")
    assert isinstance(error, StrategyLoadError)
    assert isinstance(error, StrategyError)
    assert error.name == "TypeScriptError"


# ---------------------------------------------------------------- automatic semicolon insertion


def test_annotation_before_a_parenthesised_line_keeps_two_statements() -> None:
    # TypeScript reads two statements; the written `;` keeps it so for every JavaScript parser.
    js = erase_types("let x: number\n(foo)()")
    assert js == "let x;       \n(foo)()"
    assert statements(js) == ["lexical_declaration", "expression_statement"]


def test_erased_statement_between_code_and_a_parenthesised_line_leaves_a_semicolon() -> None:
    js = erase_types("let a = 1\ntype T = number\n(foo)()")
    assert js == "let a = 1\n;              \n(foo)()"
    # The `;` ends the `let` (without it: `let a = 1(foo)()`).
    assert statements(js) == ["lexical_declaration", "expression_statement"]


def test_erased_statement_before_an_array_line() -> None:
    js = erase_types("let a = b\ninterface I {}\n[1, 2].forEach(f)")
    assert statements(js) == ["lexical_declaration", "expression_statement"]


def test_erased_statements_after_comments_or_each_other_need_no_semicolon() -> None:
    js = erase_types("// header\ninterface I {}\ntype T = 1\n(foo)()")
    assert js == "// header\n" + " " * 14 + "\n" + " " * 10 + "\n(foo)()"


def test_as_expression_ending_a_statement_gets_its_semicolon() -> None:
    js = erase_types("x = y as T\nfoo()")
    assert js == "x = y;    \nfoo()"
    assert statements(js) == ["expression_statement", "expression_statement"]


def test_unbraced_if_keeps_its_else() -> None:
    js = erase_types("if (a) b = c as any\nelse d = e!")
    assert js == "if (a) b = c;      \nelse d = e "
    assert statements(js) == ["if_statement"]


@pytest.mark.parametrize(
    ("typescript", "line", "column"),
    [
        ("x = y as T\n(foo)()", 2, 1),  # tree-sitter reads a call; TypeScript two statements
        ("x = y satisfies T\n(foo)()", 2, 1),
        ("x = y as T\n[1].map(f)", 2, 1),  # tree-sitter reads the type T[1]
        ("let m: Map\n<string, number>", 2, 1),
    ],
)
def test_rejects_a_line_that_tree_sitter_and_typescript_read_differently(
    typescript: str, line: int, column: int
) -> None:
    error = erase_error(typescript)
    assert (error.line, error.column) == (line, column)
    assert "`;`" in error.message


def test_as_expression_before_a_template_line_is_rejected() -> None:
    # tree-sitter cannot parse this one at all (TypeScript: `y as T;` then a template literal).
    assert erase_error("const z = y as T\n`tpl`").line == 1


def test_rejects_type_assertion_split_from_its_operand() -> None:
    # Erased, `return <T>⏎x` would be `return ⏎x`: undefined.
    error = erase_error("function f() {\n  return <number>\n    x;\n}")
    assert (error.line, error.column) == (2, 10)


def test_arrow_return_type_across_lines_moves_the_closing_parenthesis() -> None:
    js = erase_types("const f = (a: number):\n  number => a;")
    assert js == "const f = (a          \n       ) => a;"
    parse_js(js)


def test_erased_modifier_before_a_computed_member_leaves_a_semicolon() -> None:
    # Blanking `private` alone would give `x = a⏎[k] = 1`, i.e. `a[k] = 1`.
    js = erase_types("class M {\n  x = a\n  private ['k'] = 1\n}")
    assert js == "class M {\n  x = a\n  ;       ['k'] = 1\n}"
    parse_js(js)


# ---------------------------------------------------------------- positions


def test_non_ascii_keeps_columns_in_characters() -> None:
    ts = "const é: 'ünï' = 'ü' as string; let z = é!;"
    js = erase_types(ts)
    assert js == "const é        = 'ü'          ; let z = é ;"
    assert len(js) == len(ts)


def test_error_column_counts_characters() -> None:
    error = erase_error("const naïve = 'é'; enum E { A }")
    assert (error.line, error.column) == (1, 20)


def test_crlf_line_endings_are_kept() -> None:
    ts = "interface I {\r\n  a: number;\r\n}\r\nconst v: I = { a: 1 };\r\n"
    js = erase_types(ts)
    assert js == blanked(ts, "interface I {\r\n  a: number;\r\n}", ": I")


def test_deeply_nested_code_does_not_hit_the_recursion_limit() -> None:
    depth = 3000
    js = erase_types("const v = " + "(" * depth + "1 as number" + ")" * depth + ";")
    assert js == "const v = " + "(" * depth + "1          " + ")" * depth + ";"


def test_plain_javascript_passes_through_unchanged() -> None:
    example = Path(__file__).parents[2] / "tradebotd" / "examples" / "sma_crossover.js"
    js = example.read_text()
    assert erase_types(js) == js


# ---------------------------------------------------------------- end to end: an SMA crossover strategy

SMA_TS = """\
// SMA crossover, as the web app's translator writes it in TypeScript.
interface Candle {
  time: number;
  open: number;
  high: number;
  low: number;
  close: number;
  volume: number;
}

interface Position {
  amount: number;
  entryPrice: number;
}

type Signal = 'buy' | 'sell' | 'hold';

interface Result {
  signal: Signal;
  amount?: number;
  reason?: string;
  indicators?: Record<string, number>;
}

interface Context {
  candles: Candle[];
  position: Position | null;
  parameters: Partial<Record<'fast' | 'slow' | 'amount', number>>;
}

const DEFAULTS = { fast: 5, slow: 20, amount: 0.001 } satisfies Record<string, number>;

function lastN<T>(items: readonly T[], n: number): T[] {
  return items.slice(items.length - n);
}

const mean = <T extends number>(values: T[]): number =>
  values.reduce((sum: number, v: T) => sum + v, 0) / values.length;

class MovingAverage {
  private readonly period: number;
  private cache?: Map<number, number>;

  constructor(period: number) {
    this.period = period;
  }

  public at(closes: number[], offset: number = 0): number | undefined {
    const end: number = closes.length - offset;
    if (end < this.period) return undefined;
    return mean(lastN<number>(closes.slice(0, end), this.period));
  }
}

function crossed(prevFast: number, prevSlow: number, fast: number, slow: number): Signal {
  if (prevFast <= prevSlow && fast > slow) return 'buy';
  if (prevFast >= prevSlow && fast < slow) return <Signal>'sell';
  return 'hold' as Signal;
}

export function tradingStrategy(context: Context): Result {
  const { candles, position, parameters } = context;
  const fast = new MovingAverage(parameters.fast ?? DEFAULTS.fast);
  const slow = new MovingAverage(parameters.slow ?? DEFAULTS.slow);
  const closes = candles.map((c: Candle): number => c.close);
  const now = [fast.at(closes), slow.at(closes)] as const;
  const before = [fast.at(closes, 1), slow.at(closes, 1)] as const;
  if (before[1] === undefined) {
    return { signal: 'hold', reason: `warming up (${candles.length} candles)` };
  }
  const indicators: Record<string, number> = { fastSma: now[0]!, slowSma: now[1]! };
  const signal = crossed(before[0]!, before[1], now[0]!, now[1]!);
  if (signal === 'buy' && !position) {
    return { signal, amount: parameters.amount ?? DEFAULTS.amount, reason: 'fast SMA crossed above slow', indicators };
  }
  if (signal === 'sell' && position !== null) {
    return { signal, reason: 'fast SMA crossed below slow', indicators } satisfies Result;
  }
  return { signal: 'hold', indicators };
}
"""

SMA_JS = (
    "// SMA crossover, as the web app's translator writes it in TypeScript.\n"
    + "\n" * 29
    + """\
const DEFAULTS = { fast: 5, slow: 20, amount: 0.001 }                                 ;

function lastN   (items              , n        )      {
  return items.slice(items.length - n);
}

const mean =                   (values     )         =>
  values.reduce((sum        , v   ) => sum + v, 0) / values.length;

class MovingAverage {
                   period        ;
          cache                      ;

  constructor(period        ) {
    this.period = period;
  }

         at(closes          , offset         = 0)                     {
    const end         = closes.length - offset;
    if (end < this.period) return undefined;
    return mean(lastN        (closes.slice(0, end), this.period));
  }
}

function crossed(prevFast        , prevSlow        , fast        , slow        )         {
  if (prevFast <= prevSlow && fast > slow) return 'buy';
  if (prevFast >= prevSlow && fast < slow) return         'sell';
  return 'hold'          ;
}

       function tradingStrategy(context         )         {
  const { candles, position, parameters } = context;
  const fast = new MovingAverage(parameters.fast ?? DEFAULTS.fast);
  const slow = new MovingAverage(parameters.slow ?? DEFAULTS.slow);
  const closes = candles.map((c        )         => c.close);
  const now = [fast.at(closes), slow.at(closes)]         ;
  const before = [fast.at(closes, 1), slow.at(closes, 1)]         ;
  if (before[1] === undefined) {
    return { signal: 'hold', reason: `warming up (${candles.length} candles)` };
  }
  const indicators                         = { fastSma: now[0] , slowSma: now[1]  };
  const signal = crossed(before[0] , before[1], now[0] , now[1] );
  if (signal === 'buy' && !position) {
    return { signal, amount: parameters.amount ?? DEFAULTS.amount, reason: 'fast SMA crossed above slow', indicators };
  }
  if (signal === 'sell' && position !== null) {
    return { signal, reason: 'fast SMA crossed below slow', indicators }                 ;
  }
  return { signal: 'hold', indicators };
}
"""
)

# The same strategy written directly in JavaScript, without the classes and generics.
SMA_EQUIVALENT_JS = """\
const DEFAULTS = { fast: 5, slow: 20, amount: 0.001 };

function average(values, period, offset) {
  const end = values.length - offset;
  if (end < period) return undefined;
  let sum = 0;
  for (let i = end - period; i < end; i++) sum += values[i];
  return sum / period;
}

function tradingStrategy(context) {
  const { candles, position, parameters } = context;
  const fast = parameters.fast ?? DEFAULTS.fast;
  const slow = parameters.slow ?? DEFAULTS.slow;
  const closes = candles.map((c) => c.close);
  const fastNow = average(closes, fast, 0), slowNow = average(closes, slow, 0);
  const fastBefore = average(closes, fast, 1), slowBefore = average(closes, slow, 1);
  if (slowBefore === undefined) {
    return { signal: 'hold', reason: `warming up (${candles.length} candles)` };
  }
  const indicators = { fastSma: fastNow, slowSma: slowNow };
  let signal = 'hold';
  if (fastBefore <= slowBefore && fastNow > slowNow) signal = 'buy';
  else if (fastBefore >= slowBefore && fastNow < slowNow) signal = 'sell';
  if (signal === 'buy' && !position) {
    return { signal, amount: parameters.amount ?? DEFAULTS.amount, reason: 'fast SMA crossed above slow', indicators };
  }
  if (signal === 'sell' && position !== null) {
    return { signal, reason: 'fast SMA crossed below slow', indicators };
  }
  return { signal: 'hold', indicators };
}
"""


def test_sma_strategy_erases_to_the_expected_javascript() -> None:
    assert_erases_to(SMA_TS, SMA_JS)
    # The sandbox looks tradingStrategy up as a global: a plain function declaration, no `export`.
    top_level = parse_js(SMA_JS).named_children
    functions = [node.child_by_field_name("name") for node in top_level if node.type == "function_declaration"]
    assert [name.text for name in functions if name is not None] == [b"lastN", b"crossed", b"tradingStrategy"]


def run_signals(strategy_source: str, make: MakeStrategy) -> list[Decision]:
    """Steps the strategy through a wavy synthetic series, opening and closing a position on its signals."""
    strategy = make(strategy_source, parameters={"fast": 5, "slow": 20})
    position: Position | None = None
    decisions = []
    for i in range(150):
        close = 100 + 10 * np.sin(i / 9) + 3 * np.sin(i / 2.3)
        decision, _ = strategy.step((float(i * MIN), close, close + 1, close - 1, close, 10.0), position)
        decisions.append(decision)
        if decision.signal == "buy":
            position = Position(amount=Decimal("0.001"), entry_price=Decimal(str(close)), entry_time=i * MIN)
        elif decision.signal == "sell":
            position = None
    return decisions


def test_erased_sma_strategy_trades_like_its_javascript_twin(make: MakeStrategy) -> None:
    from_typescript = run_signals(erase_types(SMA_TS), make)
    from_javascript = run_signals(SMA_EQUIVALENT_JS, make)
    signals = [d.signal for d in from_typescript]
    assert signals.count("buy") >= 2 and signals.count("sell") >= 2
    assert from_typescript == from_javascript
