"""Fixtures for the JS sandbox tests: a real wasm runtime (module cache in a temp dir) and a
factory for strategies that closes them after each test."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from sandbox_helpers import MIN, MakeStrategy

from tradebotd.sandbox import JsStrategy, SandboxLimits, WasmRuntime


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WasmRuntime]:
    rt = WasmRuntime(cache_dir=tmp_path_factory.mktemp("wasm-cache"))
    yield rt
    rt.stop_ticker()


@pytest.fixture(scope="session")
def fuel_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WasmRuntime]:
    rt = WasmRuntime(fuel=True, cache_dir=tmp_path_factory.mktemp("wasm-cache-fuel"))
    yield rt
    rt.stop_ticker()


@pytest.fixture
def make(runtime: WasmRuntime, request: pytest.FixtureRequest) -> Iterator[MakeStrategy]:
    made: list[JsStrategy] = []

    def factory(
        source: str,
        *,
        parameters: Mapping[str, object] | None = None,
        limits: SandboxLimits = SandboxLimits(),  # noqa: B008
        interval_ms: int = MIN,
    ) -> JsStrategy:
        # The fuel runtime compiles its own module: only tests that ask for fuel pay for it.
        rt = request.getfixturevalue("fuel_runtime") if limits.fuel is not None else runtime
        strategy = JsStrategy(source, parameters=parameters or {}, interval_ms=interval_ms, limits=limits, runtime=rt)
        made.append(strategy)
        return strategy

    yield factory
    for strategy in made:
        strategy.close()
