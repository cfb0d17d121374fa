"""Which connection carries which stream: a sans-I/O placement of streams on connections.

Binance takes at most 1024 streams per connection (``market.streams_per_connection`` is the
daemon's own, lower cap). A stream is placed on the lowest-numbered connection with room and
stays there until it is removed: moving a live stream would mean subscribing it elsewhere first
and unsubscribing it here, two control frames and a window with two copies, for no gain. So a
subscription that does not fit on one connection goes to the next, a removal frees a place that
the next new stream takes, and a connection left with no streams closes.

No rebalancing: after removals, connections may carry fewer streams than they could. Each costs
one socket; one left with no streams closes.
"""

from __future__ import annotations

from collections.abc import Iterable

from tradebotd.model import StreamKey

__all__ = ["StreamPlan"]


class StreamPlan:
    """Stream -> connection index, at most ``per_connection`` streams each."""

    def __init__(self, per_connection: int) -> None:
        if not 1 <= per_connection <= 1024:
            raise ValueError("streams per connection must be 1..1024 (Binance's limit)")
        self.per_connection = per_connection
        self._link_of: dict[StreamKey, int] = {}
        self._streams: list[set[StreamKey]] = []  # index -> its streams

    @property
    def connections(self) -> int:
        """How many connection indexes exist (some may carry no stream now)."""
        return len(self._streams)

    def link_of(self, key: StreamKey) -> int | None:
        return self._link_of.get(key)

    def streams(self, link: int) -> frozenset[StreamKey]:
        return frozenset(self._streams[link])

    def place(self, keys: Iterable[StreamKey]) -> dict[int, list[StreamKey]]:
        """Place new streams (in sorted order, so placement is reproducible); returns the streams
        each connection gained. Streams already placed are left where they are."""
        gained: dict[int, list[StreamKey]] = {}
        link = 0
        for key in sorted(set(keys)):
            if key in self._link_of:
                continue
            while link < len(self._streams) and len(self._streams[link]) >= self.per_connection:
                link += 1
            if link == len(self._streams):
                self._streams.append(set())
            self._streams[link].add(key)
            self._link_of[key] = link
            gained.setdefault(link, []).append(key)
        return gained

    def release(self, keys: Iterable[StreamKey]) -> dict[int, list[StreamKey]]:
        """Remove streams; returns the streams each connection lost."""
        lost: dict[int, list[StreamKey]] = {}
        for key in keys:
            link = self._link_of.pop(key, None)
            if link is not None:
                self._streams[link].discard(key)
                lost.setdefault(link, []).append(key)
        return lost
