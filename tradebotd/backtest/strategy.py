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
from tradebotd.runtimes import load_code
from tradebotd.store.base import StrategyKind
from tradebotd.strategy_files import StrategyFileError, strategy_code, strategy_kind

__all__ = ["LoadedStrategy", "declared_lookback", "load_strategy"]

_LOOKBACK = re.compile(r"^(?:export\s+)?(?:const|let|var)\s+lookback\s*(?::\s*number\s*)?=\s*(\d+)\s*;?", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class LoadedStrategy:
    runtime: StrategyRuntime
    kind: StrategyKind
    lookback: int | None  # declared lookback, if any


def declared_lookback(source: str, runtime: object) -> int | None:
    value = getattr(runtime, "lookback", None)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _LOOKBACK.search(source)
    return int(match.group(1)) if match else None


def load_strategy(
    path: Path, *, key: StreamKey, parameters: Mapping[str, Any], sandbox: SandboxSettings
) -> LoadedStrategy:
    """Load ``path`` as the daemon would load a strategy row with this code and these parameters.
    ``StrategyFileError`` for an unknown suffix; ``StrategyError`` if it cannot be read or loaded."""
    kind = strategy_kind(path)
    try:
        # A native module is referred to by path (a strategy row may hold WAT text, a path or
        # base64); the sandbox reads and compiles it.
        source = strategy_code(path, kind, wasm_by_path=True)
    except StrategyFileError as exc:
        raise StrategyError(str(exc)) from None
    runtime = load_code(source, kind, key=key, parameters=parameters, settings=sandbox, name="backtest")
    return LoadedStrategy(runtime, kind, declared_lookback(source, runtime))
