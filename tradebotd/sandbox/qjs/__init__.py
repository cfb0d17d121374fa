"""QuickJS-NG built as a wasm32-wasi reactor with tradebotd's shim (see build.py, tb_shim.c)."""

from pathlib import Path

WASM_PATH = Path(__file__).resolve().parent / "tb_qjs.wasm"
LICENSE_PATH = Path(__file__).resolve().parent / "LICENSE.quickjs-ng.txt"
