"""The replay clock and what it shows on the stream and over REST (no event loop)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tradebotd.model import Candle, StreamKey
from tradebotd.replay.series import ReplayDataError, Series
from tradebotd.replay.tape import FINAL, ReplayTape, bucket_start, format_decimal

from .conftest import START_MS, series

BTC = StreamKey("BTCUSDT", "1m")
BTC_5M = StreamKey("BTCUSDT", "5m")
MIN = 60_000


def k(event: dict[str, object] | None) -> dict[str, object]:
    assert event is not None and event["e"] == "kline"
    body = event["k"]
    assert isinstance(body, dict)
    return body


def test_clock_moves_through_three_pushes_per_candle() -> None:
    tape = ReplayTape([series(count=5)], past=2)
    slot = START_MS + 2 * MIN
    assert (tape.cursor, tape.now_ms) == (2, slot)

    steps = [tape.step() for _ in range(3)]
    assert [(s.slot, s.stage, s.event_time) for s in steps if s] == [
        (slot, 1, slot + 20_000),
        (slot, 2, slot + 40_000),
        (slot, FINAL, slot + MIN),
    ]
    assert (tape.cursor, tape.now_ms) == (3, slot + MIN)
    for _ in range(6):
        tape.step()
    assert tape.finished and tape.step() is None and tape.now_ms == START_MS + 5 * MIN


@pytest.mark.parametrize("rising", [True, False])
def test_partial_updates_touch_both_extremes_before_the_final(rising: bool) -> None:
    o, c = (Decimal("100.00"), Decimal("103.00")) if rising else (Decimal("103.00"), Decimal("100.00"))
    candle = Candle("BTCUSDT", "1m", START_MS, o, Decimal("105.50"), Decimal("98.25"), c, Decimal("9.00000"))
    tape = ReplayTape([Series(BTC, (candle,))], past=0)

    pushes = [k(tape.kline_event(BTC, step)) for step in (tape.step(), tape.step(), tape.step()) if step]

    first, second = ("98.25", "105.50") if rising else ("105.50", "98.25")
    assert [p["c"] for p in pushes] == [f"{first}000000", f"{second}000000", f"{c}000000"]
    assert [p["x"] for p in pushes] == [False, False, True]
    assert [p["v"] for p in pushes] == ["3.00000000", "6.00000000", "9.00000000"]
    assert pushes[1]["h"] == "105.50000000" and pushes[1]["l"] == "98.25000000"
    assert all(p["t"] == START_MS and p["T"] == START_MS + MIN - 1 for p in pushes)


def test_longer_intervals_are_aggregated_and_close_with_their_last_slot() -> None:
    data = series(count=10)
    tape = ReplayTape([data], past=0)
    pushes: list[dict[str, object]] = []
    while (step := tape.step()) is not None and len(pushes) < 15:
        pushes.append(k(tape.kline_event(BTC_5M, step)))

    assert [p["x"] for p in pushes].count(True) == 1 and pushes[14]["x"] is True
    final = pushes[14]
    first_five = data.candles[:5]
    assert final["t"] == START_MS and final["i"] == "5m"
    assert final["o"] == format_decimal(first_five[0].open)
    assert final["c"] == format_decimal(first_five[-1].close)
    assert final["h"] == format_decimal(max(c.high for c in first_five))
    assert final["l"] == format_decimal(min(c.low for c in first_five))
    assert final["v"] == format_decimal(sum((c.volume for c in first_five), Decimal(0)))


def test_rest_rows_follow_binance_semantics_up_to_the_clock() -> None:
    data = series(count=30)
    tape = ReplayTape([data], past=20)
    tape.step()  # candle 20 has had its first update

    newest = tape.rows(BTC, limit=5)
    assert [r[0] for r in newest] == [START_MS + i * MIN for i in range(16, 21)]
    in_progress = data.candles[20]  # shown as of its first update: closed at its first extreme
    first_extreme = in_progress.low if in_progress.close >= in_progress.open else in_progress.high
    assert newest[-1][4] == format_decimal(first_extreme)
    assert newest[-2][1:6] == [format_decimal(v) for v in (data.candles[19].open, data.candles[19].high,
                                                          data.candles[19].low, data.candles[19].close,
                                                          data.candles[19].volume)]  # fmt: skip
    assert newest[-2][6] == START_MS + 20 * MIN - 1 and len(newest[-2]) == 12
    assert len(tape.rows(BTC)) == 21  # default limit 500, never past the clock

    from_start = tape.rows(BTC, start=START_MS + 3 * MIN + 1, limit=3)  # first open time >= start
    assert [r[0] for r in from_start] == [START_MS + i * MIN for i in (4, 5, 6)]
    up_to_end = tape.rows(BTC, end=START_MS + 7 * MIN, limit=2)  # newest with open time <= end
    assert [r[0] for r in up_to_end] == [START_MS + 6 * MIN, START_MS + 7 * MIN]
    both = tape.rows(BTC, start=START_MS, end=START_MS + 2 * MIN)
    assert len(both) == 3
    assert tape.rows(BTC_5M, limit=2)[-1][0] == START_MS + 20 * MIN  # the 5m candle in progress
    assert tape.rows(StreamKey("BTCUSDT", "1s")) == []  # finer than the data: not served


def test_holes_in_the_data_stay_holes() -> None:
    data = series(count=6)
    holed = Series(BTC, data.candles[:3] + data.candles[4:])
    tape = ReplayTape([holed], past=0)
    for _ in range(9):
        tape.step()
    step = tape.step()  # slot 3 has no candle: nothing to push
    assert step is not None and tape.kline_event(BTC, step) is None
    for _ in range(8):
        tape.step()
    assert [r[0] for r in tape.rows(BTC)] == [START_MS + i * MIN for i in (0, 1, 2, 4, 5)]


def test_week_buckets_open_on_monday_and_numbers_look_like_binance() -> None:
    monday = 1_704_067_200_000  # 2024-01-01T00:00Z, a Monday
    assert bucket_start(monday + 2 * 86_400_000 + 5, 604_800_000) == monday
    assert bucket_start(monday + 123_456, 60_000) == monday + 120_000
    assert format_decimal(Decimal("42000.1")) == "42000.10000000"
    assert format_decimal(Decimal("0.000000001")) == "0.000000001"


def test_unusable_series_are_refused() -> None:
    with pytest.raises(ReplayDataError, match="interval"):
        ReplayTape([series(), Series(StreamKey("ETHUSDT", "5m"), ())], past=0)
    with pytest.raises(ReplayDataError, match="no candles"):
        ReplayTape([Series(BTC, ())], past=0)
