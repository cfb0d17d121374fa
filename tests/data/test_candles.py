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
    with pytest.raises(CandleDataError, match=r":1: expected the header time,open,high,low,close,volume") as caught:
        read_csv(path, KEY)
    assert "found data and no header: '60000,1,1,1,1,1'" in str(caught.value)


def test_a_wrong_header_is_shown(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("Date,Open,High,Low,Close,Volume\n2024-01-01,1,1,1,1,1\n")
    with pytest.raises(CandleDataError, match=r"bad.csv:1: expected .* found 'Date,Open,High,Low,Close,Volume'$"):
        read_csv(path, KEY)


def test_the_iso_column_and_columns_after_the_six_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(
        "\ufefftime,open,high,low,close,volume,time_iso,note\n"  # a BOM, as spreadsheets write
        "60000,1,2,0.5,1.5,7,1970-01-01T00:01:00Z,\n"
        "120000,1.5,2,1,1,3,1970-01-01T00:02:00Z,dip\n"
    )
    table = read_csv(path, KEY)
    assert table.values.tolist() == [[60_000, 1, 2, 0.5, 1.5, 7], [120_000, 1.5, 2, 1, 1, 3]]
    assert str(table.close(1)) == "1"
    path.write_text("time,open,high,low,close,volume,time_iso\n60000,1,1,1,1,1,x\n120000,1,1,1,1,1\n")
    with pytest.raises(CandleDataError, match=":3: expected 7 columns, got 6"):
        read_csv(path, KEY)


def _spaced(tmp_path: Path, step_ms: int, count: int = 5, skip: int | None = None) -> Path:
    rows = [f"{i * step_ms},1,1,1,1,1" for i in range(count) if i != skip]
    path = tmp_path / "prices.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    return path


def test_without_a_key_the_interval_is_the_candles_spacing(tmp_path: Path) -> None:
    table = read_csv(_spaced(tmp_path, 3_600_000, skip=1), symbol="ETHUSDT")  # a hole does not fool it
    assert table.key == StreamKey("ETHUSDT", "1h") and table.missing == 1
    assert read_csv(_spaced(tmp_path, 900_000)).key == StreamKey("UNNAMED", "15m")
    with pytest.raises(CandleDataError, match="120000 ms apart, which is not a kline interval"):
        read_csv(_spaced(tmp_path, 120_000))
    with pytest.raises(CandleDataError, match="fewer than two candles"):
        read_csv(_spaced(tmp_path, 60_000, count=1))


def test_a_key_whose_interval_the_spacing_contradicts(tmp_path: Path) -> None:
    closer = r"prices.csv: the interval is 1m, but no two candles are closer than 1h \(3600000 ms\)"
    with pytest.raises(CandleDataError, match=closer):
        read_csv(_spaced(tmp_path, 3_600_000), KEY)


def test_a_table_without_strings_takes_each_float_as_its_shortest_repr() -> None:
    table = CandleTable.from_floats(KEY, [[0, 0.1, 0.4, 0.1, 0.30000000000000004, 2.5]])
    assert table.close(0) == Decimal("0.30000000000000004") == table.candle(0).close
    assert table.candle(0).open == Decimal("0.1")
