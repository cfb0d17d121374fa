"""Replay CSV files and the packaged synthetic demo series."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tradebotd.model import StreamKey
from tradebotd.replay.demo import COUNT, generate
from tradebotd.replay.series import ReplayDataError, demo_csv, format_csv, load_csv, names_from_path


def test_round_trip_and_names_from_the_file_name(tmp_path: Path) -> None:
    candles = generate(5, symbol="ETHUSDT", start_price=Decimal("2000.00"))
    path = tmp_path / "ETHUSDT_1m.csv"
    path.write_text(format_csv(candles), encoding="utf-8")

    loaded = load_csv(path)

    assert loaded.key == StreamKey("ETHUSDT", "1m")
    assert list(loaded.candles) == candles
    assert str(loaded.candles[0].open) == "2000.00"  # exact, as written


def test_name_patterns() -> None:
    assert names_from_path(Path("BTCUSDT_1m.csv")) == ("BTCUSDT", "1m")
    assert names_from_path(Path("x/DEMO_BTCUSDT_1m.csv")) == ("BTCUSDT", "1m")
    assert names_from_path(Path("ethusdt_4h.csv")) == ("ETHUSDT", "4h")
    assert names_from_path(Path("prices.csv")) == (None, None)
    assert names_from_path(Path("BTCUSDT_7m.csv")) == (None, None)


def test_flags_override_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text(format_csv(generate(3, interval="5m", start_ms=1_704_067_200_000)), encoding="utf-8")
    with pytest.raises(ReplayDataError, match="file name"):
        load_csv(path)
    series = load_csv(path, symbol="btc/usdt", interval="5m")
    assert series.key == StreamKey("BTCUSDT", "5m")


def test_the_interval_from_the_spacing_and_the_iso_column_ignored(tmp_path: Path) -> None:
    candles = generate(4, interval="5m", start_ms=1_704_067_200_000)
    path = tmp_path / "prices.csv"
    lines = format_csv(candles).splitlines()
    path.write_text("\n".join([lines[0] + ",time_iso", *(f"{line},2024" for line in lines[1:])]) + "\n")
    series = load_csv(path, symbol="BTCUSDT")
    assert series.key == StreamKey("BTCUSDT", "5m") and list(series.candles) == candles
    with pytest.raises(ReplayDataError, match="the interval is 1m, but no two candles are closer than 5m"):
        load_csv(path, symbol="BTCUSDT", interval="1m")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", ":1: the file is empty"),
        ("time,open,high,low,close\n", ":1: expected the header .* found 'time,open,high,low,close'"),
        ("time,open,high,low,close,volume\n1,2,3,1,2\n", ":2: expected 6 columns"),
        ("time,open,high,low,close,volume\nsoon,2,3,1,2,1\n", ":2: not a number"),
        ("time,open,high,low,close,volume\n60000,2,3,1,NaN,1\n", ":2: prices and volume must be finite"),
        ("time,open,high,low,close,volume\n60000,2,3,2.5,2,1\n", ":2: need low"),
        ("time,open,high,low,close,volume\n120000,2,3,1,2,1\n60000,2,3,1,2,1\n", "does not follow"),
        ("time,open,high,low,close,volume\n60001,2,3,1,2,1\n", "not aligned"),
    ],
)
def test_bad_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "BTCUSDT_1m.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ReplayDataError, match=message):
        load_csv(path)


def test_packaged_demo_series_is_what_the_generator_makes() -> None:
    path = demo_csv()
    assert path.read_text(encoding="utf-8") == format_csv(generate())
    series = load_csv(path)
    assert series.key == StreamKey("BTCUSDT", "1m") and len(series.candles) == COUNT


def test_demo_series_makes_a_5_20_sma_cross_trade_early() -> None:
    """With the replay's default 600 candles of history, a 5/20 SMA cross happens a handful of
    times in the first three minutes at --speed 60 (180 candles), and within the first minute."""
    closes = [float(c.close) for c in load_csv(demo_csv()).candles]

    def fast_above_slow(i: int) -> bool:
        return sum(closes[i - 4 : i + 1]) / 5 > sum(closes[i - 19 : i + 1]) / 20

    crosses = [i for i in range(600, 780) if fast_above_slow(i) != fast_above_slow(i - 1)]
    assert 3 <= len(crosses) <= 12
    assert crosses[0] - 600 < 60
    prices = [Decimal(str(p)) for p in closes]
    assert Decimal(30_000) < min(prices) and max(prices) < Decimal(60_000)  # BTC-like, not wild
