"""Log lines: ``info_lines`` (many lines written at once) gives the lines ``log.info`` gives."""

from __future__ import annotations

import io
from typing import Any

import orjson
import structlog
import structlog.testing

from tradebotd.logs import _secrets, configure_logging, info_lines, register_secret


class _Stream(io.StringIO):
    """A binary-backed stream, as stdout is (the daemon's JSON lines go to ``.buffer``)."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = io.BytesIO()

    def isatty(self) -> bool:
        return False

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.buffer.getvalue().splitlines()]


def _configure(level: str = "info") -> _Stream:
    stream = _Stream()
    configure_logging(level, "json", stream=stream, cache=False)
    return stream


FIELDS = {"strategy_id": "s1", "symbol": "BTCUSDT", "candle_time": 60_000, "signal": "hold", "reason": None}


def test_the_same_lines_as_one_call_per_line() -> None:
    stream = _configure()
    log = structlog.get_logger("tradebotd.engine")
    for fields in (FIELDS, {**FIELDS, "strategy_id": "s2", "eval_us": 41.5}):
        log.info("decision", **fields)
    one_by_one = stream.lines()
    stream.buffer.seek(0)
    stream.buffer.truncate()
    info_lines(log, [("decision", FIELDS), ("decision", {**FIELDS, "strategy_id": "s2", "eval_us": 41.5})])
    together = stream.lines()
    assert [list(line) for line in together] == [list(line) for line in one_by_one]  # same keys, same order
    for a, b in zip(together, one_by_one, strict=True):
        assert a.pop("timestamp").endswith("Z") and b.pop("timestamp").endswith("Z")
        assert a == b


def test_secrets_are_masked() -> None:
    stream = _configure()
    secret = "s3cret-that-must-not-leak"
    register_secret(secret)
    try:
        info_lines(structlog.get_logger("t"), [("decision", {"reason": f"saw {secret}", "api_key": "abc"})])
    finally:
        _secrets.discard(secret)
    (line,) = stream.lines()
    assert line["reason"] == "saw **********"
    assert line["api_key"] == "**********"


def test_below_the_level_nothing_is_written() -> None:
    stream = _configure("warning")
    info_lines(structlog.get_logger("t"), [("decision", FIELDS)])
    assert stream.buffer.getvalue() == b""


def test_a_reconfigured_structlog_gets_the_lines_one_by_one() -> None:
    stream = _configure()
    with structlog.testing.capture_logs() as captured:
        info_lines(structlog.get_logger("t"), [("decision", FIELDS), ("fill", {"strategy_id": "s1"})])
    assert [entry["event"] for entry in captured] == ["decision", "fill"]
    assert stream.buffer.getvalue() == b""
