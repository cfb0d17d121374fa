"""Native WebAssembly strategies (hand-written WAT, AssemblyScript, anything that targets core
wasm) behind the same interface as :class:`tradebotd.sandbox.js.JsStrategy`.

The contract with the module is ``strategies_wasm/ABI.md`` (version :data:`ABI_VERSION`). In
short: the module exports ``memory``, ``tb_abi_version``, ``tb_alloc`` and ``tb_evaluate``
(optionally ``tb_meta``, ``tb_init``, ``tb_lookback``); its parameters are its exported mutable
f64 globals; it may import nothing but AssemblyScript's ``env.abort``. ``tb_evaluate`` sees the
history as six f64 columns (time, open, high, low, close, volume) of ``n`` candles, oldest first.

How a call runs: the host owns the history layout. At load the module allocates one block for
the host (``tb_alloc``); the host writes candles there, row-major as its own arrays are, with one
copy per call (a ``struct.pack_into`` for ``step``, a numpy view for batches: no Python object per
candle). A small driver module of ours, instantiated in the same Store, appends them to the
columns (shifting the newest ``max_candles`` to the front when the buffer fills), zeroes the
output slots, calls ``tb_evaluate`` for each candle and stops at the first non-hold or invalid
output. So ``step`` and ``run_until_signal`` run the very same code path, and a strategy author
writes one pure function per evaluation.

Limits (:class:`SandboxLimits`): the epoch deadline is the only stop there is for native code, so
it is ``timeout_ms`` itself (``epoch_backstop_ms`` does not apply); a batch call gets
``timeout_ms`` per candle in it, at most :data:`RUN_CHUNK` candles per call. Linear memory is
capped at ``2 * memory_bytes``, like a JS strategy's. ``fuel`` works as for JS. The Engine and
the epoch thread are the JS sandbox's (:class:`WasmRuntime`), so one thread serves all stores.

Failure policy: a trap (deadline, fuel, out-of-bounds, ``env.abort``, ...) or linear memory at
its cap discards the instance; the next call rebuilds it from the compiled module and re-sends
the history the host keeps. An invalid output keeps the instance.

The package: ``source.py`` (a strategy row's code -> the module), ``abi.py`` (the checks of a
compiled module against the ABI: exports, imports, metadata, parameters), ``modules.py`` (the
compiled modules per engine, the driver's ``driver.wat`` among them), ``guest.py`` (one live
Store: the strategy's instance, the driver, the host's views into linear memory) and
``strategy.py`` (:class:`WasmStrategy`: limits, failure policy, decisions; the instance's life
cycle is the one it shares with the JS sandbox, ``sandbox/sandboxed.py``).

Errors (the tree is in ``sandbox/errors.py``)::

    StrategyLoadError       the module did not load; ``name`` says which check failed:
                            CompileError, ForbiddenImport, MissingExport, BadExport,
                            AbiMismatch, BadMetadata, BadParameters, OutOfMemory, Timeout,
                            SandboxTrap, SourceTooLarge (and from load_wasm_source:
                            BadSource, SourceNotFound)
    StrategyEvalError       one call failed; ``consumed`` counts the candles it appended,
    │                       the failing one included
    ├── StrategyTimeout         past the deadline, or out of fuel (always ``trapped``)
    ├── StrategyMemoryError     linear memory reached its cap (or trapped next to it)
    ├── InvalidResult           unknown signal code, NaN amount, non-finite indicator, ...
    └── SandboxTrap             any other trap, or ``env.abort``; ``trap_code``
    SandboxUnavailable      this process cannot run wasm (see ``wasm.py``)

Bad input from the caller (candles of the wrong shape or not finite) raises ``ValueError``;
using a closed strategy, or one strategy from two threads at once, ``RuntimeError``.
"""

from tradebotd.sandbox.native.abi import ABI_VERSION
from tradebotd.sandbox.native.guest import RUN_CHUNK
from tradebotd.sandbox.native.source import load_wasm_source
from tradebotd.sandbox.native.strategy import WasmStrategy

__all__ = ["ABI_VERSION", "RUN_CHUNK", "WasmStrategy", "load_wasm_source"]
