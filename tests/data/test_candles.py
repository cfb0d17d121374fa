"""Candle tables from CSV: exact strings kept, floats as the live path computes them, and errors
that name the line."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tradebotd.data.candles import CandleTable, read_csv
from tradebotd.data.errors import CandleDataError
from tradebotd.model import Candle, StreamKey

KEY = StreamKey("BTCUSDT", "1m")
HEADER = "time,open,high,low,close,volume\n"


def test_values_are_the_live_floats_and_candles_the_exact_decimals(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(HEADER + "60000,0.1,0.30000000000000004,0.1,0.2,1e3\r\n180000,0.2,0.2,0.2,0.2,0\r\n")
    table = read_csv(path, KEY)
    candle = Candle(
        "BTCUSDT",
        "1m",
        60_000,
        Decimal("0.1"),
        Decimal("0.30000000000000004"),
        Decimal("0.1"),
        Decimal("0.2"),
        Decimal("1e3"),
    )
    assert table.candle(0) == candle
    assert table.close(0) == candle.close and str(table.close(1)) == "0.2"  # the source string, not a float's
    assert tuple(table.values[0]) == candle.as_floats()  # what a strategy sees live
    assert table.missing == 1
    assert len(table.between(120_000)) == 1 and len(table.between(None, 60_001)) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("60000,1,1,1,1\n", ":2: expected 6 columns, got 5"),
        ("60000,1,1,1,1,1\n120000,1,x,1,1,1\n", ":3: not a number"),
        ("60000,1,1,1,1,1\n120000,1,1,1,1,nan\n", ":3: values must be finite"),
        ("60000,1,2,1.5,1,1\n", ":2: low is above open or close"),
        ("60000,1,1,1,1,1\n60000,1,1,1,1,1\n", ":3: open times must increase by whole intervals"),
        ("60000,1,1,1,1,1\n90000,1,1,1,1,1\n", ":3: open times must increase by whole intervals"),
        ("60000,1,1,1,1,-1\n", ":2: values must be >= 0"),
    ],
)
def test_errors_name_the_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + body)
    with pytest.raises(CandleDataError, match=message):
        read_csv(path, KEY)


def test_a_missing_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("60000,1,1,1,1,1\n")
    with pytest.raises(CandleDataError, match=r":1: expected the header time,open,high,low,close,volume"):
        read_csv(path, KEY)


def test_a_table_without_strings_takes_each_float_as_its_shortest_repr() -> None:
    table = CandleTable.from_floats(KEY, [[0, 0.1, 0.4, 0.1, 0.30000000000000004, 2.5]])
    assert table.close(0) == Decimal("0.30000000000000004") == table.candle(0).close
    assert table.candle(0).open == Decimal("0.1")
