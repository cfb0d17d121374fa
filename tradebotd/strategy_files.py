"""Strategy files given on the command line: the kind a file's suffix says, and its code as a
strategy row holds it (``strategies.typescript_code``, what the daemon's loader reads), for
``strategy add``, ``strategy check`` and ``backtest``.

    suffix          kind    code
    .js .mjs .cjs   js      the text
    .ts .mts        ts      the text (the loader erases the types)
    .wat            wasm    the text
    .wasm           wasm    base64 of the bytes (the store's column is text, as in the web app)

A native module can instead be referred to by path (``file:<absolute path>``): the loader
(``sandbox.native.load_wasm_source``) reads and compiles it when the strategy loads.

Errors::

    TradebotdError (tradebotd.errors)
    └── StrategyFileError   an unknown suffix, or a file that cannot be read (as UTF-8 text
                            where text is expected)

Light on purpose, like ``cliargs``: ``tradebotd.cli`` imports it for every command.
"""

from __future__ import annotations

import base64
from pathlib import Path

from tradebotd.errors import TradebotdError
from tradebotd.store.base import StrategyKind

__all__ = ["SUFFIXES", "StrategyFileError", "strategy_code", "strategy_kind"]

SUFFIXES: dict[str, StrategyKind] = {
    ".js": "js",
    ".mjs": "js",
    ".cjs": "js",
    ".ts": "ts",
    ".mts": "ts",
    ".wat": "wasm",
    ".wasm": "wasm",
}


class StrategyFileError(TradebotdError):
    """The file is not a strategy this version can load, or cannot be read."""


def strategy_kind(path: Path, *, suffixless: StrategyKind | None = None) -> StrategyKind:
    """The kind ``path``'s suffix says (case-insensitive). ``suffixless`` is the kind of a file
    without a suffix (``strategy add`` takes one as JavaScript); None refuses such a file."""
    suffix = path.suffix.lower()
    if not suffix and suffixless is not None:
        return suffixless
    try:
        return SUFFIXES[suffix]
    except KeyError:
        raise StrategyFileError(
            f"{path}: unknown strategy file type {path.suffix!r} (expected one of {', '.join(SUFFIXES)})"
        ) from None


def strategy_code(path: Path, kind: StrategyKind, *, wasm_by_path: bool = False) -> str:
    """``path``'s code as a strategy row of ``kind`` holds it (see the table above).
    ``wasm_by_path``: refer to a native module by its absolute path instead of embedding it
    (the file must exist now; it is read when the strategy loads)."""
    if kind == "wasm" and wasm_by_path:
        if not path.is_file():
            raise StrategyFileError(f"{path}: cannot read the strategy: no such file")
        return f"file:{path.resolve()}"
    try:
        if kind == "wasm" and path.suffix.lower() == ".wasm":
            return base64.b64encode(path.read_bytes()).decode()
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StrategyFileError(f"{path}: cannot read the strategy: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise StrategyFileError(f"{path}: cannot read the strategy: not UTF-8 text ({exc.reason})") from None
