"""Which parameter keys a JavaScript / TypeScript strategy reads, found by reading its source.

``strategy check`` (and ``strategy add``) warn about a ``--param`` the strategy never reads: a
typo (``--param fsat=5``) or a parameter of another strategy silently does nothing otherwise.

Why a static scan, not a recording proxy in the sandbox: a proxy sees only the reads that happen
on the candles of the check, so a key read only in a branch those candles never reach
(``stopLossPct`` once a position is open, a regime filter) would be reported as unread, a false
warning; and the sandbox's parameters object is deep-frozen by the QuickJS shim, which the check
should not load differently from the daemon. The scan sees every branch. It is built to err on
the side of silence: it names the keys it can see being read, and when the parameters object is
used in a way it cannot follow, it says so and no key is called unread.

What counts as reading key ``k`` (anywhere in the file; scopes are not tracked, which can only add
reads or make the scan give up, never invent a warning):

* ``X.parameters.k``, ``X.parameters?.k``, ``X.parameters["k"]``, ``X["parameters"].k``;
* destructuring: ``const {k, j: alias, m = 1} = X.parameters``, ``function f({parameters: {k}})``;
* the same through a name bound to the parameters object: ``const p = ctx.parameters; p.k``,
  ``const {parameters} = ctx; parameters.k``, ``const {k, ...rest} = parameters; rest.j``;
* ``(X.parameters || {}).k`` and ``(X.parameters ?? {}).k``.

Any other use of the parameters object (``p[name]``, ``Object.keys(p)``, ``{...p}``, passing it
to a function, ``JSON.stringify(context)``-style uses of a holder) makes the result *dynamic*:
the scan records where and warns about nothing. Known limits: a strategy that reaches the
parameters without ever writing ``parameters`` (``context[name]`` with a computed name, a whole
``context`` handed to ``JSON.stringify``) can read keys the scan does not see; words in comments
and strings other than the forms above do not count as reads.

Native WebAssembly strategies need no scan: their parameters are exported globals, and the loader
refuses a name the module does not export (``BadParameters``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import tree_sitter_javascript
from tree_sitter import Language, Node, Parser

from .sandbox.typescript import erase_types
from .store.base import StrategyKind

__all__ = ["ParameterReads", "scan_parameter_reads", "unread_parameters"]

_JAVASCRIPT = Language(tree_sitter_javascript.language())
_NAME = "parameters"


@dataclass(frozen=True, slots=True)
class ParameterReads:
    """Keys the source visibly reads; ``dynamic``: where it uses the parameters object in a way
    the scan cannot follow (``"line 12: p[name]"``), or None."""

    names: frozenset[str]
    dynamic: str | None


def unread_parameters(parameters: Mapping[str, object], reads: ParameterReads | None) -> list[str]:
    """The given keys the strategy never reads (none when the scan cannot tell)."""
    if reads is None or reads.dynamic is not None:
        return []
    return [key for key in parameters if key not in reads.names]


def scan_parameter_reads(source: str, kind: StrategyKind) -> ParameterReads | None:
    """The scan for a JS / TS source; None for kinds it does not apply to (native modules)."""
    if kind == "wasm":
        return None
    if kind == "ts":
        source = erase_types(source)  # positions preserved, so line numbers match the user's file
    root = Parser(_JAVASCRIPT).parse(source.encode()).root_node
    return _Scan(root).run()


def _text(node: Node | None) -> str:
    return "" if node is None or node.text is None else node.text.decode()


def _string_value(node: Node) -> str | None:
    """The value of a plain string literal (no escapes), else None."""
    if node.type != "string":
        return None
    parts = node.named_children
    if any(part.type != "string_fragment" for part in parts):
        return None
    return "".join(_text(part) for part in parts)


def _walk(node: Node) -> Iterator[Node]:
    cursor = node.walk()
    while True:
        current = cursor.node
        if current is not None:
            yield current
        if cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return


_BINDING_PARENTS = {"formal_parameters", "array_pattern", "rest_pattern", "required_parameter"}


class _Scan:
    def __init__(self, root: Node) -> None:
        self.root = root
        self.names: set[str] = set()
        self.aliases: set[str] = set()
        self.dynamic: str | None = None

    def run(self) -> ParameterReads:
        nodes = list(_walk(self.root))
        for node in nodes:
            if node.type == "object_pattern":
                self._pattern_bindings(node)
        done: set[tuple[int, int]] = set()
        while True:
            before = len(self.aliases)
            for node in nodes:
                span = (node.start_byte, node.end_byte)
                if span in done or not self._is_holder(node):
                    continue
                done.add(span)
                self._use(node)
            if len(self.aliases) == before:
                break
        return ParameterReads(frozenset(self.names), self.dynamic)

    # -- what evaluates to the parameters object ---------------------------------------------

    def _is_holder(self, node: Node) -> bool:
        if node.type == "member_expression":
            return _text(node.child_by_field_name("property")) == _NAME
        if node.type == "subscript_expression":
            index = node.child_by_field_name("index")
            return index is not None and _string_value(index) == _NAME
        if node.type == "identifier" and _text(node) in self.aliases:
            return not self._is_binding(node)
        if node.type == "shorthand_property_identifier" and _text(node) in self.aliases:
            return True  # `{parameters}` in an object literal hands the object on
        return False

    @staticmethod
    def _is_binding(node: Node) -> bool:
        parent = node.parent
        if parent is None:
            return False
        if parent.type == "variable_declarator" and parent.child_by_field_name("name") == node:
            return True
        if parent.type in ("assignment_pattern", "assignment_expression"):
            return parent.child_by_field_name("left") == node
        if parent.type == "pair_pattern" and parent.child_by_field_name("value") == node:
            return True
        return parent.type in _BINDING_PARENTS

    # -- how it is used ----------------------------------------------------------------------

    def _use(self, holder: Node) -> None:
        node, parent = holder, holder.parent
        # `(p)`, `p || {}`, `p ?? {}` are still the parameters object.
        while parent is not None and (
            parent.type == "parenthesized_expression"
            or (parent.type == "binary_expression" and _text(parent.child_by_field_name("operator")) in ("||", "??"))
        ):
            node, parent = parent, parent.parent
        if parent is None:
            return
        if parent.type == "member_expression" and parent.child_by_field_name("object") == node:
            self.names.add(_text(parent.child_by_field_name("property")))
            return
        if parent.type == "subscript_expression" and parent.child_by_field_name("object") == node:
            index = parent.child_by_field_name("index")
            key = None if index is None else _string_value(index)
            if key is not None:
                self.names.add(key)
            else:
                self._give_up(parent)
            return
        if parent.type == "variable_declarator" and parent.child_by_field_name("value") == node:
            self._bind(parent.child_by_field_name("name"), parent)
            return
        if parent.type == "assignment_expression" and parent.child_by_field_name("right") == node:
            self._bind(parent.child_by_field_name("left"), parent)
            return
        if parent.type == "expression_statement":
            return  # a bare `p;` reads nothing
        if parent.type == "unary_expression" and _text(parent.child_by_field_name("operator")) in ("typeof", "!"):
            return
        self._give_up(parent)

    def _bind(self, target: Node | None, where: Node) -> None:
        """``target = <the parameters object>``."""
        if target is None:
            return
        if target.type == "identifier":
            self.aliases.add(_text(target))
        elif target.type == "object_pattern":
            self._destructure(target)
        else:
            self._give_up(where)

    def _destructure(self, pattern: Node) -> None:
        """``{k, j: x, m = 1, ...rest} = <the parameters object>``: the keys are read."""
        for child in pattern.named_children:
            if child.type == "shorthand_property_identifier_pattern":
                self.names.add(_text(child))
            elif child.type == "object_assignment_pattern":
                self.names.add(_text(child.child_by_field_name("left")))
            elif child.type == "pair_pattern":
                key = child.child_by_field_name("key")
                if key is None:
                    continue
                if key.type in ("property_identifier", "number"):
                    self.names.add(_text(key))
                elif (value := _string_value(key)) is not None:
                    self.names.add(value)
                else:
                    self._give_up(child)
            elif child.type == "rest_pattern":
                rest = child.named_children[0] if child.named_children else None
                if rest is not None and rest.type == "identifier":
                    self.aliases.add(_text(rest))  # the other keys, read through `rest.k`
                else:
                    self._give_up(child)

    def _pattern_bindings(self, pattern: Node) -> None:
        """``{parameters}``, ``{parameters: p}``, ``{parameters: {k}}`` in any pattern (declarations,
        function parameters) bind the parameters object of whatever is destructured."""
        for child in pattern.named_children:
            if child.type == "shorthand_property_identifier_pattern" and _text(child) == _NAME:
                self.aliases.add(_NAME)
            elif child.type == "object_assignment_pattern":
                left = child.child_by_field_name("left")
                if left is not None and _text(left) == _NAME:
                    self.aliases.add(_NAME)
            elif child.type == "pair_pattern":
                key = child.child_by_field_name("key")
                if key is None or (_text(key) != _NAME and _string_value(key) != _NAME):
                    continue
                value = child.child_by_field_name("value")
                if value is not None and value.type == "assignment_pattern":
                    value = value.child_by_field_name("left")
                self._bind(value, child)

    def _give_up(self, where: Node) -> None:
        if where.type == "arguments" and where.parent is not None:
            where = where.parent  # `Object.keys(p)`, not `(p)`
        if self.dynamic is None:
            line = where.start_point[0] + 1
            snippet = " ".join(_text(where).split())
            if len(snippet) > 60:
                snippet = snippet[:57] + "..."
            self.dynamic = f"line {line}: {snippet}"
