"""ccxt stays behind the port: only ``tradebotd.exchange`` (and ``data/download.py``) import it, and
importing the port's model does not load it (the engine and the paper broker use those types)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tradebotd"
ALLOWED = {"exchange/errors.py", "exchange/ccxt_exchange.py", "data/download.py"}
IMPORT = re.compile(r"^\s*(import ccxt|from ccxt\b)", re.MULTILINE)


def test_only_the_port_imports_ccxt() -> None:
    importing = {
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if IMPORT.search(path.read_text("utf-8"))
    }
    assert importing <= ALLOWED, importing - ALLOWED
    assert "exchange/ccxt_exchange.py" in importing


def test_the_model_the_errors_and_the_budget_load_without_ccxt() -> None:
    """The market feed shares the request budget in paper mode too: it must not pay for ccxt."""
    code = (
        "import sys, tradebotd.exchange, tradebotd.exchange.errors, tradebotd.exchange.throttle, tradebotd.daemon; "
        "from tradebotd.exchange import MarketRules; print('ccxt' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
