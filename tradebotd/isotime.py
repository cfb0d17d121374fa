"""Epoch milliseconds as ISO-8601 UTC for people: ``2024-01-01T00:00:00Z``.

Every time a person reads (terminal output, the ISO columns of CSVs) goes through
:func:`format_time`; machine formats (``--json``, the store, CSV time columns) keep epoch
milliseconds. Its own module, with no dependencies, because the light commands (``strategy
list``, ``positions``) must not import ``tradebotd.data``, whose package pulls in numpy.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_time"]


def format_time(ms: int) -> str:
    """``2024-01-01T00:00:00Z``; milliseconds only when not zero (``...T00:00:00.250Z``)."""
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    if ms % 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
