"""Times on the command line: read ``2024-01-01``, ``2024-01-01T12:30``, ``2024-01-01 12:30:00+02:00``
or epoch milliseconds (a date or time without an offset is UTC: candle times are UTC); shown as
ISO-8601 UTC (``2024-01-01T12:30:00Z``)."""

from __future__ import annotations

from datetime import UTC, datetime

from tradebotd.cliargs import argument
from tradebotd.isotime import format_time

__all__ = ["format_time", "parse_time", "time_argument"]


def parse_time(text: str) -> int:
    """Epoch milliseconds for ``text``; ``ValueError`` says what is accepted."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a date: {text!r}; use YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS][+HH:MM] (UTC unless an offset is given) "
            "or epoch milliseconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def time_argument(text: str) -> int:
    """:func:`parse_time` as an argparse type (``--since``, ``--until``)."""
    return argument(parse_time, text)
