"""The shipped package holds no benchmark code: that lives in ``bench/`` (``make bench``)."""

from __future__ import annotations

from pathlib import Path

import tradebotd

PACKAGE = Path(tradebotd.__file__).resolve().parent


def test_no_benchmark_modules_in_the_package() -> None:
    offenders = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "bench" in p.stem)
    assert offenders == []


def test_benchmark_helpers_import_from_the_repository_root() -> None:
    from bench import backtest_loop, harness, sandbox_isolation, sandbox_js, sandbox_native

    assert callable(harness.bench_main)
    for module in (backtest_loop, sandbox_isolation, sandbox_js, sandbox_native):
        assert callable(module.main) and callable(module.run)
