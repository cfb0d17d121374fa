"""The candle CSV format's rules, shared by every reader: the header (and what a wrong one shows),
the interval from the spacing, and a given interval the spacing contradicts."""

from __future__ import annotations

import pytest

from tradebotd.candle_csv import header_problem, infer_interval, spacing_problem


@pytest.mark.parametrize(
    "cells",
    [
        ["time", "open", "high", "low", "close", "volume"],
        ["Time", " OPEN ", "high", "low", "close", "volume\r"],
        ["time", "open", "high", "low", "close", "volume", "time_iso"],
        ["time", "open", "high", "low", "close", "volume", "my note"],
    ],
)
def test_headers_that_read(cells: list[str]) -> None:
    assert header_problem(cells) is None


def test_a_wrong_header_says_what_it_found() -> None:
    problem = header_problem(["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"])
    assert problem == (
        "expected the header time,open,high,low,close,volume (further columns such as time_iso are ignored), "
        "found 'Date,Open,High,Low,Close,Adj Close,Volume'"
    )
    assert "found 'time,close,open" in str(header_problem(["time", "close", "open", "high", "low", "volume"]))


def test_data_without_a_header_is_named_as_such() -> None:
    problem = header_problem(["1704067200000", "42000.1", "42010", "41990", "42005", "3.2"])
    assert problem is not None
    assert problem.endswith("found data and no header: '1704067200000,42000.1,42010,41990,42005,3.2'; "
                            "add the header as the first line")  # fmt: skip


def test_a_very_long_header_is_cut_short() -> None:
    problem = header_problem(["x" * 200])
    assert problem is not None and problem.endswith("x...'") and len(problem) < 250


@pytest.mark.parametrize(("step", "interval"), [(1_000, "1s"), (60_000, "1m"), (3_600_000, "1h"), (604_800_000, "1w")])
def test_the_interval_is_the_smallest_spacing(step: int, interval: str) -> None:
    assert infer_interval(step, "f.csv") == interval


def test_a_spacing_that_is_no_interval_cannot_be_inferred() -> None:
    with pytest.raises(ValueError, match=r"f.csv: the candles are 120000 ms apart, which is not a kline interval"):
        infer_interval(120_000, "f.csv")
    with pytest.raises(ValueError, match="fewer than two candles"):
        infer_interval(None, "f.csv")


def test_a_given_interval_that_the_spacing_contradicts() -> None:
    problem = spacing_problem("1m", 3_600_000, steps=10)
    assert problem == (
        "the interval is 1m, but no two candles are closer than 1h (3600000 ms): every candle would be "
        "followed by missing ones; give the right interval (1h)"
    )
    assert spacing_problem("1m", 150_000, steps=10) is None  # no interval: the line checks name the line
    assert spacing_problem("1m", 30_000, steps=10) is None
    assert spacing_problem("1h", 60_000, steps=1) == (
        "the interval is 1h, but candles are only 1m (60000 ms) apart; give the right interval (1m)"
    )
    assert spacing_problem("1h", 3_600_000, steps=10) is None  # as said
    assert spacing_problem("1m", 120_000, steps=1) is None  # one gap (an outage) proves nothing
    assert spacing_problem("1m", None, steps=0) is None
