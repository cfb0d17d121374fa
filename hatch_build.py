"""Hatchling build hook: builds the JS sandbox's wasm module for wheels and editable installs.

Runs ``tradebotd/sandbox/qjs/build.py`` (QuickJS-NG + our shim, compiled with the PyPI
``ziglang`` toolchain listed in ``[build-system].requires``), so installing tradebotd needs no
system compiler. The build is skipped when ``tb_qjs.wasm`` already matches its inputs. The
script is loaded by path: importing the ``tradebotd`` package here would need its runtime
dependencies, which pip's isolated build environment does not have.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

BUILD_SCRIPT = Path("tradebotd") / "sandbox" / "qjs" / "build.py"


class QuickJsWasmHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":  # the sdist ships sources; its wheel build runs this again
            return
        spec = importlib.util.spec_from_file_location("tradebotd_qjs_build", Path(self.root) / BUILD_SCRIPT)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load {BUILD_SCRIPT}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        try:
            module.build()
        except module.BuildError as exc:
            raise RuntimeError(f"building the JS sandbox wasm failed: {exc}") from None
