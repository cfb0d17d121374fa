"""Erase TypeScript types so a TypeScript strategy runs in the JavaScript-only QuickJS sandbox.

The approach is the one of ts-blank-space: parse the source with tree-sitter's TypeScript grammar and
overwrite every type-only byte range with spaces, keeping line breaks. No code moves, so a QuickJS
error's line and column point at the same spot in the user's TypeScript.

Erased: type annotations (variables, parameters, returns, fields, `catch`), type predicates, generics
(`<T>` on functions, arrows, classes, methods; `<number>` on calls, `new` and `extends`), `interface`,
`type`, `declare …`, overload signatures, index signatures, `implements`, `as` / `satisfies` (from the
end of the operand), the non-null `!`, `<Type>expr` assertions, `?` on parameters, fields and methods,
`let x!:` and `x!:`, the modifiers `public` / `private` / `protected` / `readonly` / `override` /
`abstract`, `declare` and `abstract` fields, `this` parameters, `import type` / `export type`, and the
`export` (and `export default`) in front of a declaration: the sandbox evaluates a plain script, where
`export` is a syntax error, and finds `tradingStrategy` as a global.

Rejected with a TypeScriptError pointing at the construct: anything that compiles to runtime code
(`enum`, `const enum`, `namespace` / `module`, decorators, constructor parameter properties), any
`import` that is not type-only (strategies cannot load modules), exports that are more than a keyword
(`export { a as b }`, `export … from`, `export =`, an anonymous `export default`), and any syntax error.

Automatic semicolon insertion: erasing can join two lines that TypeScript keeps apart.
  * An erased statement or class member that follows code is replaced by `;` plus spaces, so
    `let a = 1⏎type T = number⏎(f)()` does not turn into `1(f)()`.
  * A class member whose leading modifiers are erased and that then starts with `[`, `(` or `*`
    gets the same `;` (`x = a⏎private [k] = 1` would otherwise become `a[k] = 1`).
  * An arrow function whose return type puts a line break before `=>` gets its `)` moved to the end
    of the erased type, since JavaScript forbids a line break before `=>`.
  * Where tree-sitter itself reads the source differently from TypeScript, we reject rather than
    guess: `x as T⏎(f)()` (tree-sitter: a call; TypeScript: two statements), a type continued with
    `[` or `<` after a line break, and a `<Type>` assertion split from its operand by a line break
    (`return <T>⏎x` would return undefined once erased).
  * A statement without `;` that ends in an erased range gets the `;` written there:
    `let x: number⏎(f)()` becomes `let x;       ⏎(f)()`. JavaScript's ASI would end it at the line
    break as TypeScript does, but tree-sitter's JavaScript grammar (used below) would not.

The result is parsed again with the JavaScript grammar; whatever TypeScript syntax is not handled
here remains in it, fails that parse and is reported at its position.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import tree_sitter_javascript
import tree_sitter_typescript
from tree_sitter import Language, Node, Parser, Query, QueryCursor

from tradebotd.sandbox.errors import StrategyLoadError

__all__ = ["TypeScriptError", "erase_types"]

_TYPESCRIPT = Language(tree_sitter_typescript.language_typescript())
_JAVASCRIPT = Language(tree_sitter_javascript.language())

# TypeScript never continues a type past a line break with `[` (T[], T[K]) or `<` (Map<K, V>);
# tree-sitter does. Such a type swallows what TypeScript reads as the next statement.
_SPLIT_TYPES = Query(_TYPESCRIPT, "[(array_type) (lookup_type) (generic_type)] @type")

# Line terminators in the UTF-8 source; they survive blanking so line numbers do not move.
_LINE_BREAK = re.compile(rb"[\n\r]|\xe2\x80[\xa8\xa9]")
_NOT_LINE_BREAK = re.compile(r"[^\n\r\u2028\u2029]")


class TypeScriptError(StrategyLoadError):
    """The TypeScript source cannot become JavaScript; `line` and `column` (1-based) point at the cause."""

    line: int
    column: int

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message, name="TypeScriptError", line=line, column=column)


def erase_types(source: str) -> str:
    """Return `source` with its TypeScript types blanked out: JavaScript with the same lines and columns.

    Raises TypeScriptError for syntax errors and for TypeScript that has runtime semantics.
    """
    src = source.encode("utf-8")
    # A parser per call: tree-sitter parsers are not thread-safe, and creating one costs microseconds.
    root = Parser(_TYPESCRIPT).parse(src).root_node
    if root.has_error:
        _raise_syntax_error(src, _first_error(root), "syntax error")
    _reject_split_types(src, root)
    eraser = _Eraser(src)
    eraser.visit(root)
    javascript = _apply(src, eraser.blanks)
    out = javascript.encode("utf-8")
    js_root = Parser(_JAVASCRIPT).parse(out).root_node
    if js_root.has_error:
        # Positions in `out` have the same lines and columns as in `src` (blanking is per character).
        _raise_syntax_error(
            out, _first_error(js_root), "unsupported TypeScript syntax (not valid JavaScript once types are erased)"
        )
    return javascript


@dataclass(frozen=True, slots=True)
class _Blank:
    """Byte range of the source to overwrite with spaces; `lead` / `trail` replace its first / last character."""

    start: int
    end: int
    lead: str = ""
    trail: str = ""


_Handler = Callable[["_Eraser", Node], list[Node]]


class _Eraser:
    """Walks the TypeScript tree once and collects the ranges to blank."""

    def __init__(self, src: bytes) -> None:
        self.src = src
        self.blanks: list[_Blank] = []
        self.erased_statements: set[int] = set()  # node ids

    def visit(self, root: Node) -> None:
        # An explicit stack: generated strategies can nest deeper than Python's recursion limit.
        stack = [root]
        while stack:
            node = stack.pop()
            handler = _HANDLERS.get(node.type)
            children = node.named_children if handler is None else handler(self, node)
            stack.extend(reversed(children))

    # ---- helpers ----

    def blank(self, node: Node, lead: str = "") -> None:
        self.blanks.append(_Blank(node.start_byte, node.end_byte, lead))

    def reject(self, node: Node, message: str) -> NoReturn:
        raise TypeScriptError(message, *_position(self.src, node))

    def spans_lines(self, start: int, end: int) -> bool:
        return _LINE_BREAK.search(self.src, start, end) is not None

    # ---- handlers: each returns the children still to visit ----

    def erase(self, node: Node) -> list[Node]:
        self.blank(node, ";" if _ends_open_statement(node) else "")
        return []

    def erase_statement(self, node: Node) -> list[Node]:
        # `;` when code precedes: a blank would let that code run on into the next line's `(` or `[`.
        self.blank(node, ";" if self.follows_code(node) else "")
        self.erased_statements.add(node.id)
        return []

    def follows_code(self, node: Node) -> bool:
        """Whether the sibling before `node`, comments aside, is code that stays (siblings are visited first)."""
        previous = node.prev_named_sibling
        while previous is not None and previous.type == "comment":
            previous = previous.prev_named_sibling
        return previous is not None and previous.id not in self.erased_statements

    def parameter(self, node: Node) -> list[Node]:
        for child in node.children:
            if child.type in _MEMBER_MODIFIERS:
                return self.reject(
                    child,
                    "constructor parameter properties (`constructor(private x: T)`) are not supported: "
                    "declare the field in the class body and assign it in the constructor",
                )
        pattern = node.child_by_field_name("pattern")
        if pattern is not None and pattern.type == "this":
            # `function f(this: T, x)`: the `this` parameter is type-only, with its comma.
            after = node.next_sibling
            end = after.end_byte if after is not None and after.type == "," else node.end_byte
            self.blanks.append(_Blank(node.start_byte, end))
            return []
        for child in node.children:
            if child.type == "?":
                self.blank(child)
        return node.named_children

    def variable_declarator(self, node: Node) -> list[Node]:
        for child in node.children:
            if child.type == "!":  # let x!: number
                self.blank(child)
        return node.named_children

    def class_member(self, node: Node) -> list[Node]:
        if any(child.type in ("declare", "abstract") for child in node.children):
            return self.erase_statement(node)  # `declare x: T` and abstract members emit nothing
        erased = [child for child in node.children if child.type in _MEMBER_MODIFIERS or child.type in ("?", "!")]
        if not erased:
            return node.named_children
        kept = [child for child in node.children if child not in erased]
        # `x = a⏎private [k] = 1` would become `a[k] = 1`.
        lead = ""
        if erased[0] == node.children[0] and kept and self.src[kept[0].start_byte : kept[0].start_byte + 1] in b"[(*":
            lead = ";" if self.follows_code(node) else ""
        for i, child in enumerate(erased):
            self.blank(child, lead if i == 0 else "")
        return [child for child in kept if child.is_named]

    def abstract_class(self, node: Node) -> list[Node]:
        for child in node.children:
            if child.type == "abstract":
                self.blank(child)
        return node.named_children

    def arrow_function(self, node: Node) -> list[Node]:
        params = node.child_by_field_name("parameters")
        returns = node.child_by_field_name("return_type")
        arrow = next((child for child in node.children if child.type == "=>"), None)
        if (
            params is None
            or returns is None
            or arrow is None
            or not self.spans_lines(params.end_byte, arrow.start_byte)
        ):
            return node.named_children
        # `(a):⏎ T => a`: JavaScript forbids a line break before `=>`, so `)` moves to the end of the type.
        self.blanks.append(_Blank(params.end_byte - 1, returns.end_byte, trail=")"))
        return [child for child in node.named_children if child != returns]

    def as_expression(self, node: Node) -> list[Node]:
        parent = node.parent
        if parent is not None and parent.type in _CONTINUATIONS and parent.child(0) == node:
            keyword = "as" if node.type == "as_expression" else "satisfies"
            follower = parent.child(1)
            return self.reject(
                follower,
                f"`{keyword}` expression followed by `{chr(self.src[follower.start_byte])}`: "
                "TypeScript ends the expression after the type, but the JavaScript left after erasing it would "
                f"continue; end the statement with `;` or wrap the `{keyword}` expression in parentheses",
            )
        operand = node.named_children[0]
        self.blanks.append(_Blank(operand.end_byte, node.end_byte, ";" if _ends_open_statement(node) else ""))
        return [operand]

    def type_assertion(self, node: Node) -> list[Node]:
        type_arguments, operand = node.named_children[0], node.named_children[-1]
        if self.spans_lines(node.start_byte, operand.start_byte):
            return self.reject(
                node,
                "line break between a `<Type>` assertion and its operand: once the type is erased the line "
                "break could end the statement (`return <T>⏎x` returns undefined); use one line or `as`",
            )
        self.blank(type_arguments)
        return [operand]

    def non_null(self, node: Node) -> list[Node]:
        self.blanks.append(_Blank(node.end_byte - 1, node.end_byte))
        return node.named_children

    def binary_expression(self, node: Node) -> list[Node]:
        # tree-sitter reads `tag<T>`…`` as `(tag < T) > `…``; TypeScript reads a tagged template call.
        left, right = node.child_by_field_name("left"), node.child_by_field_name("right")
        operator = node.child_by_field_name("operator")
        if (
            operator is not None
            and operator.type == ">"
            and right is not None
            and right.type == "template_string"
            and left is not None
            and left.type == "binary_expression"
            and (inner := left.child_by_field_name("operator")) is not None
            and inner.type == "<"
        ):
            return self.reject(
                node, "type arguments on a tagged template (tag<T>`…`) are not supported: remove the `<…>`"
            )
        return node.named_children

    def export_statement(self, node: Node) -> list[Node]:
        declaration = node.child_by_field_name("declaration")
        if declaration is not None:
            if declaration.type in _TYPE_ONLY_STATEMENTS:
                return self.erase_statement(node)
            for child in node.children:
                if child.type in ("export", "default"):
                    self.blank(child)
            return [declaration]
        if any(child.type == "type" for child in node.children):  # export type { T }
            return self.erase_statement(node)
        if node.child_by_field_name("source") is not None:
            return self.reject(node, "strategies cannot re-export from other modules (`export … from`)")
        value = node.child_by_field_name("value")
        if value is not None:
            if value.type == "identifier":  # export default tradingStrategy;  (the function stays global)
                return self.erase_statement(node)
            return self.reject(
                node,
                "`export default` of an anonymous function, class or expression is not supported: declare a "
                "named function (`function tradingStrategy(context) {…}`)",
            )
        clause = next((child for child in node.named_children if child.type == "export_clause"), None)
        if clause is not None:
            for specifier in clause.named_children:
                if specifier.child_by_field_name("alias") is not None and specifier.children[0].type != "type":
                    return self.reject(
                        specifier,
                        "renaming exports (`export { a as b }`) is not supported: the sandbox finds functions "
                        "by their declared names",
                    )
            return self.erase_statement(node)  # export { a, b };  exports mean nothing in a script
        return self.reject(node, "this form of `export` is not supported in a strategy")

    def import_statement(self, node: Node) -> list[Node]:
        if any(child.type == "type" for child in node.children):
            return self.erase_statement(node)
        clause = next((child for child in node.named_children if child.type == "import_clause"), None)
        if clause is not None and all(child.type == "named_imports" for child in clause.named_children):
            specifiers = [s for named in clause.named_children for s in named.named_children]
            if specifiers and all(s.children[0].type == "type" for s in specifiers):
                return self.erase_statement(node)  # import { type A, type B } from '…'
        return self.reject(
            node, "strategies cannot import modules: remove the `import` (only `import type` is allowed, and erased)"
        )


def _rejecting(message: str) -> _Handler:
    def handler(eraser: _Eraser, node: Node) -> list[Node]:
        return eraser.reject(node, message)

    return handler


_RUNTIME_CODE = "it compiles to runtime code, which the sandbox does not generate"

# Erased on class members, rejected on parameters. `readonly` is an anonymous token, the others named nodes.
_MEMBER_MODIFIERS = frozenset({"accessibility_modifier", "override_modifier", "readonly"})

# Declarations that produce no JavaScript at all.
_TYPE_ONLY_STATEMENTS = frozenset(
    {
        "interface_declaration",
        "type_alias_declaration",
        "ambient_declaration",  # declare const / function / class / enum / namespace / module / global
        "function_signature",  # function overloads
        "method_signature",  # method overloads
        "abstract_method_signature",
        "index_signature",
    }
)

# Statements that end with `;`, written or inserted by ASI.
_SEMICOLON_STATEMENTS = frozenset(
    {
        "expression_statement",
        "lexical_declaration",
        "variable_declaration",
        "public_field_definition",
        "return_statement",
        "throw_statement",
    }
)

# Nodes whose first child, if it is an `as` / `satisfies` expression, shows tree-sitter continued it.
_CONTINUATIONS = frozenset({"call_expression", "member_expression", "subscript_expression"})

_HANDLERS: dict[str, _Handler] = {
    **dict.fromkeys(_TYPE_ONLY_STATEMENTS, _Eraser.erase_statement),
    **dict.fromkeys(
        (
            "type_annotation",
            "type_predicate_annotation",  # x is string
            "asserts_annotation",  # asserts x is string
            "type_parameters",
            "type_arguments",
            "implements_clause",
        ),
        _Eraser.erase,
    ),
    "required_parameter": _Eraser.parameter,
    "optional_parameter": _Eraser.parameter,
    "variable_declarator": _Eraser.variable_declarator,
    "public_field_definition": _Eraser.class_member,
    "method_definition": _Eraser.class_member,
    "abstract_class_declaration": _Eraser.abstract_class,
    "arrow_function": _Eraser.arrow_function,
    "as_expression": _Eraser.as_expression,
    "satisfies_expression": _Eraser.as_expression,
    "type_assertion": _Eraser.type_assertion,
    "non_null_expression": _Eraser.non_null,
    "binary_expression": _Eraser.binary_expression,
    "export_statement": _Eraser.export_statement,
    "import_statement": _Eraser.import_statement,
    "import_alias": _rejecting("`import X = …` is not supported: strategies cannot import modules"),
    "enum_declaration": _rejecting(
        f"`enum` is not supported: {_RUNTIME_CODE}; use a union of string literals "
        "(`type Side = 'buy' | 'sell'`) or a plain object"
    ),
    "internal_module": _rejecting(f"`namespace` is not supported: {_RUNTIME_CODE}; use plain objects or functions"),
    "module": _rejecting(f"`module` declarations are not supported: {_RUNTIME_CODE}; use plain objects or functions"),
    "decorator": _rejecting("decorators are not supported: they run code when the class is defined"),
}


def _ends_open_statement(node: Node) -> bool:
    """Whether `node` ends a statement that has no `;`: its erased range then starts with one.

    JavaScript would end `let x⏎(f)()` at the line break too, but the written `;` also makes it plain
    to tree-sitter's JavaScript grammar, which continues such a line into the next.
    """
    end = node.end_byte
    current = node
    while current.parent is not None and current.parent.end_byte == end:
        current = current.parent
        if current.type in _SEMICOLON_STATEMENTS:
            following = current.next_sibling  # a class field's `;` is its sibling, not its child
            return following is None or following.type != ";"
    return False


def _reject_split_types(src: bytes, root: Node) -> None:
    for node in QueryCursor(_SPLIT_TYPES).captures(root).get("type", []):
        head, bracket = node.children[0], node.children[1]
        if _LINE_BREAK.search(src, head.end_byte, bracket.start_byte):
            raise TypeScriptError(
                f"line break before `{chr(src[bracket.start_byte])}` inside a type: TypeScript ends the type at "
                "the line break, so this would not mean what it says; end the statement with `;` or keep the type "
                "on one line",
                *_position(src, bracket),
            )


def _apply(src: bytes, blanks: list[_Blank]) -> str:
    """Blank the ranges one character per character (so columns in characters stay put) and decode."""
    out: list[str] = []
    done = 0
    for blank in sorted(blanks, key=lambda b: b.start):
        if blank.start < done:  # cannot happen: handlers do not descend into what they blank
            raise AssertionError(f"overlapping erased ranges at byte {blank.start}")
        out.append(src[done : blank.start].decode("utf-8"))
        spaces = _NOT_LINE_BREAK.sub(" ", src[blank.start : blank.end].decode("utf-8"))
        # Both ranges start and end on a token, never on a line break, so the replaced characters are spaces.
        if blank.lead:
            spaces = blank.lead + spaces[1:]
        if blank.trail:
            spaces = spaces[:-1] + blank.trail
        out.append(spaces)
        done = blank.end
    out.append(src[done:].decode("utf-8"))
    return "".join(out)


def _raise_syntax_error(src: bytes, node: Node, prefix: str) -> NoReturn:
    line, column = _position(src, node)
    if node.is_missing:
        raise TypeScriptError(f"{prefix}: missing `{node.type}`", line, column)
    # From the error to the end of its line: tree-sitter's ERROR node alone can be a single token.
    rest = src[node.start_byte :].decode("utf-8", "replace").splitlines()
    near = rest[0].strip()[:40] if rest else ""
    raise TypeScriptError(f"{prefix} near `{near}`" if near else prefix, line, column)


def _first_error(root: Node) -> Node:
    """The first ERROR or MISSING node in source order (the root itself if tree-sitter gave nothing finer)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            return node
        stack.extend(reversed([child for child in node.children if child.has_error or child.is_missing]))
    return root


def _position(src: bytes, node: Node) -> tuple[int, int]:
    """`node`'s 1-based line and column, the column counted in characters (tree-sitter counts bytes)."""
    row, byte_column = node.start_point
    line_start = node.start_byte - byte_column
    return row + 1, len(src[line_start : node.start_byte].decode("utf-8", "replace")) + 1
