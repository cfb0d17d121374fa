"""CandleHistory keeps candles packed; what comes back out must be the candles that went in."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tradebotd.history import CandleHistory
from tradebotd.model import Candle


def _candle(i: int, *, price: str = "43123.45000000", volume: str = "12.34500000", symbol: str = "BTCUSDT") -> Candle:
    p = Decimal(price)
    return Candle(symbol, "1m", 1_700_000_000_000 + i * 60_000, p, p + 1, p - 1, p, Decimal(volume))


def _same(a: Candle, b: Candle) -> bool:
    """Equal, and every Decimal with the same digits and exponent (so the same str)."""
    fields = ("open", "high", "low", "close", "volume")
    return a == b and all(getattr(a, f).as_tuple() == getattr(b, f).as_tuple() for f in fields)


@pytest.mark.parametrize(
    ("price", "volume"),
    [
        ("43123.45000000", "12.34500000"),  # Binance's 8 decimals, trailing zeros kept
        ("0.00000123", "0E-8"),
        ("1", "0"),
        ("123456789012345678", "1.5"),  # 18 digits: still packed
        ("1234567890123456789", "12345678901234567890.12345678"),  # too many digits: kept as is
        ("1E+5", "7.0E-3"),
    ],
)
def test_values_come_back_exactly(price: str, volume: str) -> None:
    history = CandleHistory(10)
    candles = [_candle(i, price=price, volume=volume) for i in range(3)]
    history.extend(candles)
    out = history.after(0)
    assert len(out) == 3
    assert all(_same(a, b) for a, b in zip(out, candles, strict=True))
    assert [str(c.volume) for c in out] == [str(Decimal(volume))] * 3


def test_ring_keeps_the_newest_and_after_selects_by_open_time() -> None:
    history = CandleHistory(4)
    candles = [_candle(i, price=f"{100 + i}.{i:02d}") for i in range(7)]
    history.extend(candles)
    assert len(history) == 4
    assert history.first_open_time == candles[3].open_time
    assert history.last_open_time == candles[6].open_time
    assert list(history) == candles[3:]
    assert history.after(candles[4].open_time) == candles[5:]
    assert history.after(candles[6].open_time) == []
    assert history.after(0) == candles[3:]
    assert history.rows()[:, 0].tolist() == [float(c.open_time) for c in candles[3:]]


def test_old_and_duplicate_candles_are_ignored() -> None:
    history = CandleHistory(5)
    history.extend([_candle(1), _candle(2)])
    history.append(_candle(2, price="1"))
    history.append(_candle(0))
    assert [c.open_time for c in history] == [_candle(1).open_time, _candle(2).open_time]
    assert history.after(0)[1].open == Decimal("43123.45000000")


def test_a_candle_that_cannot_be_packed_is_kept_and_dropped_with_its_slot() -> None:
    history = CandleHistory(2)
    odd = _candle(0, price="-0")  # -0 has no signed-integer coefficient
    history.append(odd)
    assert _same(history.after(-1)[0], odd)
    history.extend([_candle(1), _candle(2)])  # the odd one's slot is reused
    assert list(history) == [_candle(1), _candle(2)]
    assert not history._unpacked
