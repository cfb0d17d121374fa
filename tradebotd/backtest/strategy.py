"""Load a strategy file for a backtest with the daemon's own loader (``runtimes.make_runtime_factory``),
so the sandbox, its limits and the history it keeps are those of live trading.

Declared lookback (the default ``--warmup``): how many candles the strategy needs to see before a
signal is possible; the backtest first evaluates it on that candle.

* JavaScript / TypeScript: a top-level ``const lookback = <integer literal>;`` at the start of a
  line (``let``/``var``, ``export`` and a ``: number`` annotation are accepted). It is read from the
  source text, not by running it, so it must be a literal.
* Any runtime exposing an integer ``lookback`` attribute (native wasm modules can export one).

Without a declaration the warm-up is 0: every candle is evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tradebotd.config import SandboxSettings
from tradebotd.engine import StrategyRuntime
from tradebotd.errors import StrategyError
from tradebotd.model import StreamKey
from tradebotd.runtimes import make_runtime_factory
from tradebotd.store.base import StrategyKind, StrategyRow

__all__ = ["LoadedStrategy", "declared_lookback", "kind_of", "load_strategy"]

_KINDS: dict[str, StrategyKind] = {
    ".js": "js",
    ".mjs": "js",
    ".cjs": "js",
    ".ts": "ts",
    ".mts": "ts",
    ".wat": "wasm",
    ".wasm": "wasm",
}
_LOOKBACK = re.compile(r"^(?:export\s+)?(?:const|let|var)\s+lookback\s*(?::\s*number\s*)?=\s*(\d+)\s*;?", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class LoadedStrategy:
    runtime: StrategyRuntime
    kind: StrategyKind
    lookback: int | None  # declared lookback, if any


def kind_of(path: Path) -> StrategyKind:
    """The strategy kind a file name says; ``ValueError`` for an unknown suffix."""
    try:
        return _KINDS[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"{path}: unknown strategy file type {path.suffix!r} (expected one of {', '.join(sorted(_KINDS))})"
        ) from None


def declared_lookback(source: str, runtime: object) -> int | None:
    value = getattr(runtime, "lookback", None)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _LOOKBACK.search(source)
    return int(match.group(1)) if match else None


def load_strategy(
    path: Path, *, key: StreamKey, parameters: Mapping[str, Any], sandbox: SandboxSettings
) -> LoadedStrategy:
    """Load ``path`` as the daemon would load a strategy row with this code and these parameters."""
    kind = kind_of(path)
    if kind == "wasm":
        # A native module is referred to by path (a strategy row may hold WAT text, a path or
        # base64); the sandbox reads and compiles it.
        source = f"file:{path.resolve()}"
    else:
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StrategyError(f"{path}: cannot read the strategy: {exc}") from None
    row = StrategyRow(
        id="backtest",
        user_id="backtest",
        name=path.stem,
        python_code=None,
        typescript_code=source,
        asset=key.symbol,
        interval=key.interval,
        status="running",
        portfolio_id="backtest",
        parameters=dict(parameters),
        last_run_at=None,
        last_signal_at=None,
        error_message=None,
        created_at="",
        updated_at="",
        kind=kind,
    )
    runtime = make_runtime_factory(sandbox)(row, key)
    return LoadedStrategy(runtime, kind, declared_lookback(source, runtime))
