"""Binance kline wire format, sans-I/O: frames and REST bodies in, typed values out.

WebSocket frames (Binance ``web-socket-streams.md``, "Kline/Candlestick Streams"):

    combined   {"stream":"btcusdt@kline_1m","data":{"e":"kline","E":...,"s":"BTCUSDT","k":{...}}}
    raw        {"e":"kline","E":...,"s":"BTCUSDT","k":{...}}
    reply      {"result":null,"id":1}                answer to SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS
    error      {"code":2,"msg":"Invalid request: ...","id":1}   (``id`` is not always present)
    shutdown   {"e":"serverShutdown","E":...}        (combined: stream ``!serverShutdown``): reconnect now

REST: ``/api/v3/klines`` rows ``[openTime,"o","h","l","c","v",closeTime,...]``,
``/api/v3/time`` ``{"serverTime": ms}`` and ``/api/v3/exchangeInfo?symbol=S``
``{"symbols": [{"symbol": S, "status": "TRADING", ...}], ...}``.

Prices arrive as strings and become ``Decimal`` without passing through float. Every ``parse_*``
function returns a value or raises ``MalformedMessage``; nothing here does I/O or reads a clock.

Errors:

    MarketDataError
    └── MalformedMessage    raised by every parse_* function
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, TypeVar

import orjson

from tradebotd.market.errors import MalformedMessage
from tradebotd.model import INTERVAL_MS, Candle, StreamKey

__all__ = [
    "ControlError",
    "ControlReply",
    "KlineMessage",
    "Message",
    "RequestId",
    "ServerShutdown",
    "closed_candles",
    "encode_control",
    "parse_frame",
    "parse_kline_rows",
    "parse_rest_error",
    "parse_server_time",
    "parse_symbol_status",
    "stream_key",
]

_T = TypeVar("_T")

RequestId = int | str | None
ControlMethod = Literal["SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS"]

# Binance writes decimals as plain digit strings ("0.00100000"). Anything else (exponents,
# "NaN", "Infinity", signs, underscores, which Decimal() would accept) is a malformed message.
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_STREAM = re.compile(r"([a-z0-9]+)@kline_([0-9]+[smhdwM])")


@dataclass(frozen=True, slots=True)
class KlineMessage:
    """One kline event. ``candle.closed`` is Binance's ``k.x``: true only on the final update."""

    key: StreamKey
    event_time: int  # "E", ms
    candle: Candle


@dataclass(frozen=True, slots=True)
class ControlReply:
    """``{"result": ..., "id": ...}``: a control request succeeded (``result`` is null for SUBSCRIBE)."""

    id: RequestId
    result: object


@dataclass(frozen=True, slots=True)
class ControlError:
    """``{"code": ..., "msg": ...}``: a control request (or the frame we sent) was rejected."""

    id: RequestId
    code: int
    msg: str


@dataclass(frozen=True, slots=True)
class ServerShutdown:
    """Binance is about to disconnect for maintenance; reconnecting at once avoids the gap."""

    event_time: int | None


Message = KlineMessage | ControlReply | ControlError | ServerShutdown


def parse_frame(frame: str | bytes) -> Message:
    """Decode one WebSocket text frame."""
    doc = _loads(frame)
    if type(doc) is dict:
        kline = _combined_kline(doc)
        if kline is not None:
            return kline
    if not isinstance(doc, dict):
        raise MalformedMessage(f"expected a JSON object, got {type(doc).__name__}")
    if "stream" in doc or "data" in doc:
        stream = _get(doc, "stream", str)
        return _event(_get(doc, "data", dict), stream)
    if "result" in doc:
        return ControlReply(id=_request_id(doc), result=doc["result"])
    if "code" in doc and "e" not in doc:
        return ControlError(id=_request_id(doc), code=_get_int(doc, "code"), msg=_get(doc, "msg", str))
    if "e" in doc:
        return _event(doc, None)
    raise MalformedMessage(f"unrecognised message with keys {sorted(doc)[:8]}")


def _event(event: dict[str, object], stream: str | None) -> Message:
    kind = _get(event, "e", str)
    if kind == "kline":
        return _kline(event, stream)
    if kind == "serverShutdown":
        event_time = event.get("E")
        return ServerShutdown(event_time if type(event_time) is int else None)
    raise MalformedMessage(f"unexpected event type {kind!r}")


# (stream, k.s, k.i) -> the key of a stream whose klines passed every check once: such frames
# take _combined_kline. Bounded: a server naming endless symbols only stops being cached.
_KNOWN_STREAMS: dict[tuple[str, str, str], StreamKey] = {}
_KNOWN_STREAMS_MAX = 4096
# Five decimals joined by single spaces (no decimal contains a space), in one match.
_DECIMALS5 = re.compile(r"[0-9]+(?:\.[0-9]+)?(?: [0-9]+(?:\.[0-9]+)?){4}")


def _combined_kline(doc: dict[str, object]) -> KlineMessage | None:
    """The frame nearly every frame is (a combined-stream kline of a known stream, every field as
    Binance writes it), checked and built with fewer steps: the same checks (exact JSON types,
    plain decimal strings, low <= high) and the same value as ``_kline``. None for anything
    else, which the full path then parses or reports."""
    data = doc.get("data")
    if type(data) is not dict or data.get("e") != "kline":
        return None
    k = data.get("k")
    if type(k) is not dict:
        return None
    stream, symbol, interval = doc.get("stream"), k.get("s"), k.get("i")
    if type(stream) is not str or type(symbol) is not str or type(interval) is not str:
        return None
    key = _KNOWN_STREAMS.get((stream, symbol, interval))
    open_time, event_time, closed = k.get("t"), data.get("E"), k.get("x")
    if key is None or type(open_time) is not int or type(event_time) is not int or type(closed) is not bool:
        return None
    o, h, lo, c, v = k.get("o"), k.get("h"), k.get("l"), k.get("c"), k.get("v")
    if type(o) is not str or type(h) is not str or type(lo) is not str or type(c) is not str or type(v) is not str:
        return None
    if _DECIMALS5.fullmatch(f"{o} {h} {lo} {c} {v}") is None:
        return None
    high, low = Decimal(h), Decimal(lo)
    if low > high:
        return None
    candle = Candle(key.symbol, key.interval, open_time, Decimal(o), high, low, Decimal(c), Decimal(v), closed)
    return KlineMessage(key=key, event_time=event_time, candle=candle)


def _kline(event: dict[str, object], stream: str | None) -> KlineMessage:
    k = _get(event, "k", dict)
    key = _key(_get(k, "s", str), _get(k, "i", str))
    if stream is not None and stream != key.stream_name:
        raise MalformedMessage(f"kline for {key} arrived on stream {stream!r}")
    if stream is not None and len(_KNOWN_STREAMS) < _KNOWN_STREAMS_MAX:
        _KNOWN_STREAMS[(stream, key.symbol, key.interval)] = key
    candle = Candle(
        symbol=key.symbol,
        interval=key.interval,
        open_time=_get_int(k, "t"),
        open=_decimal(k, "o"),
        high=_decimal(k, "h"),
        low=_decimal(k, "l"),
        close=_decimal(k, "c"),
        volume=_decimal(k, "v"),
        closed=_get(k, "x", bool),
    )
    if candle.low > candle.high:
        raise MalformedMessage(f"kline {key}@{candle.open_time} has low {candle.low} > high {candle.high}")
    return KlineMessage(key=key, event_time=_get_int(event, "E"), candle=candle)


def parse_kline_rows(key: StreamKey, body: object) -> list[Candle]:
    """REST ``/api/v3/klines`` rows as candles, oldest first, all with ``closed=False``.

    Whether a row is closed depends on the server's clock; ``closed_candles`` decides that.
    """
    if not isinstance(body, list):
        raise MalformedMessage(f"klines: expected a JSON array, got {type(body).__name__}")
    candles: list[Candle] = []
    for row in body:
        if not isinstance(row, list) or len(row) < 7:
            raise MalformedMessage(f"klines: bad row {str(row)[:80]}")
        open_time = row[0]
        if type(open_time) is not int:
            raise MalformedMessage(f"klines: open time {open_time!r} is not an integer")
        if candles and open_time <= candles[-1].open_time:
            raise MalformedMessage(f"klines: rows out of order at {open_time}")
        o, h, lo, c, v = (_decimal_value(value, f"klines[{open_time}]") for value in row[1:6])
        candles.append(Candle(key.symbol, key.interval, open_time, o, h, lo, c, v, closed=False))
    return candles


def closed_candles(candles: Sequence[Candle], server_now_ms: int) -> list[Candle]:
    """The rows that are final: a later row exists, or the close time is before the server's now.

    ``server_now_ms`` must have been read *before* the rows were fetched; then a row that closed
    while the request was in flight is treated as still open (safe: the stream or the next
    backfill delivers it), never the other way round.
    """
    closed: list[Candle] = []
    for i, candle in enumerate(candles):
        has_successor = i + 1 < len(candles)
        if has_successor or candle.close_time < server_now_ms:
            closed.append(dataclasses.replace(candle, closed=True))
    return closed


def parse_server_time(body: object) -> int:
    """``/api/v3/time`` → ``serverTime`` in ms."""
    if not isinstance(body, dict):
        raise MalformedMessage("time: expected a JSON object")
    return _get_int(body, "serverTime")


def parse_symbol_status(body: object, symbol: str) -> str:
    """``/api/v3/exchangeInfo?symbol=S`` → S's ``status`` (``TRADING``, ``BREAK``, ...)."""
    if not isinstance(body, dict) or not isinstance(body.get("symbols"), list):
        raise MalformedMessage("exchangeInfo: expected an object with a symbols list")
    for entry in body["symbols"]:
        if isinstance(entry, dict) and entry.get("symbol") == symbol:
            return _get(entry, "status", str)
    raise MalformedMessage(f"exchangeInfo: {symbol} is not in the answer")


def parse_rest_error(body: object) -> tuple[int | None, str]:
    """Binance's ``{"code": -1121, "msg": "Invalid symbol."}``; ``(None, text)`` for anything else."""
    if isinstance(body, dict) and type(body.get("code")) is int and isinstance(body.get("msg"), str):
        return body["code"], body["msg"]
    return None, str(body)[:200]


def encode_control(method: ControlMethod, params: Iterable[str], request_id: int) -> str:
    """A SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS request frame."""
    doc: dict[str, object] = {"method": method, "id": request_id}
    if method != "LIST_SUBSCRIPTIONS":
        doc["params"] = list(params)
    return orjson.dumps(doc).decode()


def stream_key(name: str) -> StreamKey | None:
    """``btcusdt@kline_1m`` → ``StreamKey("BTCUSDT", "1m")``; None for anything else."""
    match = _STREAM.fullmatch(name)
    if match is None or match.group(2) not in INTERVAL_MS:
        return None
    return StreamKey(match.group(1).upper(), match.group(2))


# -- field access --------------------------------------------------------------------------------


def _loads(frame: str | bytes) -> object:
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None


def _get(doc: Mapping[str, object], name: str, kind: type[_T]) -> _T:
    value = doc.get(name)
    if not isinstance(value, kind):
        if name not in doc:
            raise MalformedMessage(f"missing field {name!r}")
        raise MalformedMessage(f"field {name!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def _get_int(doc: Mapping[str, object], name: str) -> int:
    value = doc.get(name)
    if type(value) is not int:  # JSON true/false are ints in Python; reject them here
        if name not in doc:
            raise MalformedMessage(f"missing field {name!r}")
        raise MalformedMessage(f"field {name!r} is {type(value).__name__}, expected an integer")
    return value


def _decimal(doc: Mapping[str, object], name: str) -> Decimal:
    if name not in doc:
        raise MalformedMessage(f"missing field {name!r}")
    return _decimal_value(doc[name], f"field {name!r}")


def _decimal_value(value: object, what: str) -> Decimal:
    if not isinstance(value, str) or _DECIMAL.fullmatch(value) is None:
        raise MalformedMessage(f"{what}: {value!r} is not a decimal string")
    return Decimal(value)


def _key(symbol: str, interval: str) -> StreamKey:
    if interval not in INTERVAL_MS:
        raise MalformedMessage(f"unsupported kline interval {interval!r}")
    if not symbol.isalnum() or symbol != symbol.upper():
        raise MalformedMessage(f"bad symbol {symbol!r}")
    return StreamKey(symbol, interval)


def _request_id(doc: Mapping[str, object]) -> RequestId:
    value = doc.get("id")
    if value is None or isinstance(value, str) or type(value) is int:
        return value
    raise MalformedMessage(f"request id {value!r} is neither an integer, a string nor null")
