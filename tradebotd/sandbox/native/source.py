"""A native strategy row's code (``strategies.typescript_code`` of kind ``wasm``) -> the module:
WAT text, a path to a ``.wasm``/``.wat`` file, or base64 of a binary module.

Errors: :class:`~tradebotd.sandbox.errors.StrategyLoadError` named ``BadSource`` (none of the
three) or ``SourceNotFound`` (the file cannot be read).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from tradebotd.sandbox.errors import StrategyLoadError

__all__ = ["load_wasm_source"]


def load_wasm_source(code: str, base_dir: Path | None = None) -> bytes | str:
    """A strategy row's ``typescript_code`` for kind ``wasm`` as :class:`WasmStrategy` takes it:
    WAT text (first token ``(module``) as is, a ``file:`` or plain path to a ``.wasm``/``.wat``
    file (relative to ``base_dir``) read from disk, or base64 of a binary module decoded."""
    if _is_wat(code):
        return code
    stripped = code.strip()
    path_text = stripped.removeprefix("file:")
    if path_text != stripped or ("\n" not in stripped and stripped.endswith((".wasm", ".wat"))):
        path = Path(path_text).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if path.suffix not in (".wasm", ".wat"):
            raise StrategyLoadError(f"{path} is neither a .wasm nor a .wat file", name="BadSource")
        try:
            return path.read_text(encoding="utf-8") if path.suffix == ".wat" else path.read_bytes()
        except (OSError, UnicodeDecodeError) as exc:
            raise StrategyLoadError(f"cannot read {path}: {exc}", name="SourceNotFound") from None
    try:
        wasm = base64.b64decode("".join(stripped.split()), validate=True)
    except (binascii.Error, ValueError):
        wasm = b""
    if not wasm.startswith(b"\0asm"):
        raise StrategyLoadError(
            "the code is neither WAT text, a path to a .wasm/.wat file, nor base64 of a wasm module",
            name="BadSource",
        )
    return wasm


def _is_wat(code: str) -> bool:
    """True if the first token after whitespace and ``;;`` line comments is ``(module``."""
    for line in code.splitlines():
        text = line.strip()
        if text and not text.startswith(";;"):
            return text.startswith("(module")
    return False
