"""Strategy files on the command line (``tradebotd.strategy_files``): the kind a suffix says and
the code a strategy row holds, shared by ``strategy add``, ``strategy check`` and ``backtest``."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tradebotd.cli import main
from tradebotd.strategy_files import StrategyFileError, strategy_code, strategy_kind


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.js", "js"), ("a.MJS", "js"), ("a.cjs", "js"), ("a.ts", "ts"), ("a.mts", "ts"), ("a.wat", "wasm"),
     ("a.Wasm", "wasm")],
)
def test_the_suffix_says_the_kind(name: str, kind: str) -> None:
    assert strategy_kind(Path(name)) == kind


def test_a_file_without_a_suffix_has_a_kind_only_when_the_caller_gives_one() -> None:
    assert strategy_kind(Path("strategy"), suffixless="js") == "js"
    with pytest.raises(StrategyFileError, match="unknown strategy file type ''"):
        strategy_kind(Path("strategy"))
    with pytest.raises(StrategyFileError, match=r"a\.py: unknown strategy file type '\.py' \(expected one of"):
        strategy_kind(Path("a.py"), suffixless="js")


def test_the_code_is_what_a_strategy_row_holds(tmp_path: Path) -> None:
    js, wat, wasm = tmp_path / "s.js", tmp_path / "s.wat", tmp_path / "s.wasm"
    js.write_text("function tradingStrategy() {}\n")
    wat.write_text("(module)\n")
    wasm.write_bytes(b"\0asm\x01\0\0\0")
    assert strategy_code(js, "js") == "function tradingStrategy() {}\n"
    assert strategy_code(wat, "wasm") == "(module)\n"
    assert base64.b64decode(strategy_code(wasm, "wasm")) == b"\0asm\x01\0\0\0"
    assert strategy_code(wasm, "wasm", wasm_by_path=True) == f"file:{wasm.resolve()}"
    assert strategy_code(wat, "wasm", wasm_by_path=True) == f"file:{wat.resolve()}"
    assert strategy_code(js, "js", wasm_by_path=True) == "function tradingStrategy() {}\n"


@pytest.mark.parametrize("by_path", [False, True])
def test_a_missing_file_cannot_be_read(tmp_path: Path, by_path: bool) -> None:
    with pytest.raises(StrategyFileError, match=r"missing\.wasm: cannot read the strategy"):
        strategy_code(tmp_path / "missing.wasm", "wasm", wasm_by_path=by_path)


def test_text_that_is_not_utf8_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "latin1.js"
    path.write_bytes(b"// caf\xe9\n")
    with pytest.raises(StrategyFileError, match=r"latin1\.js: cannot read the strategy: not UTF-8 text"):
        strategy_code(path, "js")


def test_strategy_add_reports_an_unreadable_file_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRADEBOTD_STORE__PATH", str(tmp_path / "t.db"))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "latin1.js"
    path.write_bytes(b"// caf\xe9\n")
    assert main(["strategy", "add", "x", "--file", str(path)]) == 1
    assert "latin1.js: cannot read the strategy: not UTF-8 text" in capsys.readouterr().err
