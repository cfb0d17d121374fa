"""The process-wide runtime (module cache), the shipped wasm, and host-side guards."""

from __future__ import annotations

import importlib.util
import os
import random
import struct
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest
from sandbox_helpers import MakeStrategy, candle

from tradebotd.sandbox import SandboxUnavailable, WasmRuntime
from tradebotd.sandbox.qjs import LICENSE_PATH, WASM_PATH

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "tradebotd" / "sandbox" / "qjs" / "build.py"


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tb_qjs_build_under_test", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_compiled_module_is_cached_and_a_corrupt_cache_is_replaced(tmp_path: Path) -> None:
    first = WasmRuntime(cache_dir=tmp_path)
    assert not first.module_from_cache
    (cached,) = tmp_path.glob("*.cwasm")
    second = WasmRuntime(cache_dir=tmp_path)
    assert second.module_from_cache
    # Replaced, never rewritten in place: `second` has the file mmapped (SIGBUS otherwise).
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"garbage")
    os.replace(garbage, cached)
    third = WasmRuntime(cache_dir=tmp_path)
    assert not third.module_from_cache
    assert cached.stat().st_size > 1_000_000
    fuel = WasmRuntime(fuel=True, cache_dir=tmp_path)  # other Engine flags: its own cache entry
    assert not fuel.module_from_cache
    assert len(list(tmp_path.glob("*.cwasm"))) == 2
    for runtime in (first, second, third, fuel):
        runtime.stop_ticker()


def test_shipped_wasm_matches_its_sources_and_has_its_licence() -> None:
    build = _build_module()
    assert build.build_id(WASM_PATH) == build.inputs_hash(build.QUICKJS), "stale tb_qjs.wasm: run `make wasm`"
    assert "QuickJS-NG" in LICENSE_PATH.read_text() and "Fabrice Bellard" in LICENSE_PATH.read_text()


def test_custom_section_round_trip() -> None:
    build = _build_module()
    module = b"\0asm\x01\0\0\0" + build.custom_section("other", b"x") + build.custom_section("tradebotd-build", b"{}")
    assert build.read_custom_section(module, "tradebotd-build") == b"{}"
    assert build.read_custom_section(module, "missing") is None


def test_json_numbers_parse_exactly(make: MakeStrategy) -> None:
    # JSON.parse goes through tb_strtod.c's fast path (or its fallback). Every number must come
    # back bit-identical to Python's correctly rounded float(). (-0 is left out: JSON.stringify
    # writes it as 0.)
    rng = random.Random(7)
    texts = ["0", "1e22", "1e23", "9007199254740993", "0.1", "2.2250738585072014e-308", "5e-324",
             "1.7976931348623157e308", "123456789012345678901234567890", "0.000001234", "-42.5e-3",
             "100.25", "0e999", "1E+2", "-0.5"]
    texts += [f"{rng.randint(0, 10**rng.randint(1, 17))}e{rng.randint(-30, 30)}" for _ in range(300)]
    texts += [f"{rng.randint(1, 10**8)}.{rng.randint(0, 10**8):08d}" for _ in range(300)]  # price-like
    texts += [repr(struct.unpack("<d", rng.randbytes(8))[0]) for _ in range(300)]
    texts = [t for t in texts if t not in ("nan", "inf", "-inf", "-0.0")]
    source = "function evaluate(ctx) { return {signal: 'hold', indicators: {v: JSON.parse(ctx.parameters.text)}} }"
    decision, _ = make(source, parameters={"text": "[" + ",".join(texts) + "]"}).step(candle(1), None)
    assert decision.indicators is not None
    got = decision.indicators["v"]
    assert isinstance(got, list)
    assert [struct.pack("<d", x) for x in got] == [struct.pack("<d", float(t)) for t in texts]


def test_a_thread_with_a_small_stack_is_refused(make: MakeStrategy) -> None:
    strategy = make("function evaluate() { return {signal: 'hold'} }")
    outcome: list[BaseException | str] = []

    def worker() -> None:
        try:
            strategy.step(candle(1), None)
            outcome.append("ran")
        except BaseException as exc:  # reported to the test thread
            outcome.append(exc)

    previous = threading.stack_size(512 << 10)
    try:
        thread = threading.Thread(target=worker)
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join()
    assert len(outcome) == 1 and isinstance(outcome[0], SandboxUnavailable)
    big = threading.Thread(target=worker)  # default stack: fine
    big.start()
    big.join()
    assert outcome[1] == "ran"


def test_close_is_idempotent_and_final(make: MakeStrategy) -> None:
    strategy = make("function evaluate() { return {signal: 'hold'} }")
    _, info = strategy.step(candle(1), None)
    assert info.elapsed_us > 0 and strategy.memory_bytes > 1 << 20
    strategy.close()
    strategy.close()
    assert strategy.memory_bytes == 0
    with pytest.raises(RuntimeError, match="closed"):
        strategy.step(candle(2), None)


def test_missing_wasm_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable, match="make wasm"):
        WasmRuntime(wasm_path=tmp_path / "nope.wasm", cache_dir=tmp_path)
