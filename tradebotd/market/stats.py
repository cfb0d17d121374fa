"""``FeedStats``: the market feed's counters, shared by its connections, fetches and processor."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FeedStats"]


@dataclass(slots=True)
class FeedStats:
    """Counters since the feed was created (never reset), summed over its connections."""

    messages: int = 0  # WebSocket frames received
    malformed: int = 0  # frames that did not decode: bad JSON, missing fields, unknown events
    control_sent: int = 0  # SUBSCRIBE / UNSUBSCRIBE frames sent
    control_errors: int = 0  # {"code", "msg"} answers to them
    connects: int = 0  # successful connections
    reconnects: int = 0  # successful connections of a connection slot after its first
    connect_failures: int = 0  # connection attempts that failed
    connect_waits: int = 0  # connection attempts held back by the connection budget
    closed: int = 0  # closed candles delivered, from the stream or REST
    backfilled: int = 0  # ... of which came from REST backfill
    history_candles: int = 0  # warm-up candles delivered
    duplicates_dropped: int = 0  # second copies of a closed candle
    stale_dropped: int = 0  # klines older than the last delivered candle
    untracked_dropped: int = 0  # klines for streams no longer wanted (unsubscribe in flight)
    future_dropped: int = 0  # final klines the server clock had not reached (corrupt)
    gaps_skipped: int = 0  # holes REST confirmed or could not fill
    rest_failures: int = 0  # REST requests that failed (each is retried or logged)
