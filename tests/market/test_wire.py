"""The kline wire parser against recorded Binance frames (no event loop)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from tradebotd.market.errors import MalformedMessage
from tradebotd.market.wire import (
    ControlError,
    ControlReply,
    KlineMessage,
    ServerShutdown,
    closed_candles,
    encode_control,
    parse_frame,
    parse_kline_rows,
    parse_rest_error,
    parse_server_time,
    stream_key,
)
from tradebotd.model import StreamKey

from .conftest import FIXTURES, fixture_text

BTC_1M = StreamKey("BTCUSDT", "1m")


def test_update_on_combined_stream() -> None:
    message = parse_frame(fixture_text("kline_update_combined.json"))

    assert isinstance(message, KlineMessage)
    assert message.key == BTC_1M
    assert message.event_time == 1700000042019
    candle = message.candle
    assert (candle.symbol, candle.interval, candle.open_time, candle.closed) == ("BTCUSDT", "1m", 1700000040000, False)
    assert candle.open == Decimal("37215.01000000")
    assert candle.high == Decimal("37222.00000000")
    assert candle.low == Decimal("37190.12000000")
    assert candle.close == Decimal("37198.55000000")
    assert candle.volume == Decimal("12.84210000")
    assert str(candle.close) == "37198.55000000"  # exact: never went through float


def test_final_update_is_the_closed_candle() -> None:
    message = parse_frame(fixture_text("kline_final_combined.json").encode())  # bytes work too

    assert isinstance(message, KlineMessage)
    assert message.candle.closed is True
    assert message.candle.close == Decimal("37231.40000000")
    assert message.candle.close_time == 1700000099999


def test_raw_stream_event_is_not_wrapped() -> None:
    message = parse_frame(fixture_text("kline_raw_ethusdt_5m.json"))

    assert isinstance(message, KlineMessage)
    assert message.key == StreamKey("ETHUSDT", "5m")
    assert message.candle.open_time == 1700000100000


def test_control_replies() -> None:
    assert parse_frame(fixture_text("subscribe_reply.json")) == ControlReply(id=1, result=None)
    assert parse_frame(fixture_text("list_subscriptions_reply.json")) == ControlReply(
        id=3, result=["btcusdt@kline_1m", "ethusdt@kline_5m"]
    )


@pytest.mark.parametrize(
    ("name", "code", "request_id"),
    [
        ("error_unknown_method.json", 2, 7),
        ("error_invalid_json.json", 3, None),
        ("error_unknown_property.json", 0, "abc123"),
    ],
)
def test_control_errors(name: str, code: int, request_id: object) -> None:
    message = parse_frame(fixture_text(name))

    assert isinstance(message, ControlError)
    assert (message.code, message.id) == (code, request_id)
    assert message.msg


@pytest.mark.parametrize("name", ["server_shutdown_raw.json", "server_shutdown_combined.json"])
def test_server_shutdown(name: str) -> None:
    assert parse_frame(fixture_text(name)) == ServerShutdown(event_time=1700000123456)


@pytest.mark.parametrize("path", sorted((FIXTURES / "malformed").iterdir()), ids=lambda p: p.stem)
def test_malformed_frames_are_rejected(path: Path) -> None:
    with pytest.raises(MalformedMessage):
        parse_frame(path.read_bytes())


def test_rest_rows_and_closedness() -> None:
    rows = orjson.loads(fixture_text("rest_klines_btcusdt_1m.json"))
    candles = parse_kline_rows(BTC_1M, rows)

    assert [c.open_time for c in candles] == [1700000100000, 1700000160000, 1700000220000]
    assert not any(c.closed for c in candles)
    assert candles[0].volume == Decimal("35.00917000")

    # The newest row is open until the server clock passes its close time ...
    during = closed_candles(candles, server_now_ms=1700000250000)
    assert [c.open_time for c in during] == [1700000100000, 1700000160000]
    assert all(c.closed for c in during)
    # ... and closed once it has (rows before it are closed because a successor exists).
    assert len(closed_candles(candles, server_now_ms=1700000280000)) == 3
    assert len(closed_candles(candles, server_now_ms=1700000279999)) == 2
    assert len(closed_candles(candles[:1], server_now_ms=0)) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"not": "a list"},
        [[1700000100000, "1", "2", "0.5", "1.5"]],  # too short
        [["1700000100000", "1", "2", "0.5", "1.5", "3", 1700000159999]],  # open time as string
        [[1700000100000, "1", "2", "0.5", "x", "3", 1700000159999]],
        [[2, "1", "2", "0.5", "1", "3", 3], [1, "1", "2", "0.5", "1", "3", 3]],  # out of order
    ],
)
def test_bad_rest_rows(body: object) -> None:
    with pytest.raises(MalformedMessage):
        parse_kline_rows(BTC_1M, body)


def test_small_helpers() -> None:
    assert parse_server_time({"serverTime": 1700000000123}) == 1700000000123
    with pytest.raises(MalformedMessage):
        parse_server_time({"serverTime": "soon"})
    assert parse_rest_error({"code": -1121, "msg": "Invalid symbol."}) == (-1121, "Invalid symbol.")
    assert parse_rest_error("<html>bad gateway</html>") == (None, "<html>bad gateway</html>")
    assert orjson.loads(encode_control("SUBSCRIBE", ["btcusdt@kline_1m"], 4)) == {
        "method": "SUBSCRIBE",
        "params": ["btcusdt@kline_1m"],
        "id": 4,
    }
    assert orjson.loads(encode_control("LIST_SUBSCRIPTIONS", [], 5)) == {"method": "LIST_SUBSCRIPTIONS", "id": 5}
    assert stream_key("btcusdt@kline_1m") == BTC_1M
    assert stream_key("BTCUSDT@kline_1m") is None  # Binance stream names are lower case
    assert stream_key("btcusdt@kline_7m") is None
    assert stream_key("btcusdt@trade") is None


# -- the fast path of a known stream's kline frames ---------------------------------------------

_MUTATIONS: list[tuple[str, object]] = [
    ("o", "1e5"), ("h", "NaN"), ("l", " 1"), ("c", "1_000"), ("v", 12.5), ("o", "1 2"), ("c", ""),
    ("l", "99999999"),  # low above high
    ("t", 1.5), ("t", True), ("x", 1), ("x", None), ("s", "ETHUSDT"), ("s", "btcusdt"), ("i", "7m"),
    ("E", "1"), ("o", None), ("k", None), ("e", "trade"), ("stream", "ethusdt@kline_1m"), ("stream", None),
]


@pytest.mark.parametrize(("field", "value"), _MUTATIONS)
def test_a_known_streams_frames_are_checked_as_strictly_as_the_first(field: str, value: object) -> None:
    """Frames of a stream already seen take a shorter path: a frame with any field wrong is
    refused there as on the first frame, and a good one gives the same message."""
    frame = orjson.loads(fixture_text("kline_final_combined.json"))
    first = parse_frame(orjson.dumps(frame))  # now a known stream
    assert parse_frame(orjson.dumps(frame)) == first
    if field in ("stream",):
        frame[field] = value
    elif field in ("e", "E", "k"):
        frame["data"][field] = value
    else:
        frame["data"]["k"][field] = value
    if field == "stream" and value is not None:  # another known stream's name: still refused
        parse_frame(orjson.dumps({**frame, "data": {**frame["data"], "s": "ETHUSDT",
                                                     "k": {**frame["data"]["k"], "s": "ETHUSDT"}}}))
    with pytest.raises(MalformedMessage):
        parse_frame(orjson.dumps(frame))
