"""Binance kline market data: the live feed (``MarketFeed``) and its sans-I/O core.

Modules: ``wire`` (frame and REST parsing), ``tracker`` (per-stream candle state machine),
``plan`` (which connection carries which stream), ``pacing`` (rate budgets), ``rest`` (klines /
server time over aiohttp), ``backoff``, ``feed`` (the asyncio shell), ``connection`` (one
WebSocket connection's loop), ``fetch`` (REST warm-up and backfill tasks), ``stats``,
``errors`` (the error tree).
"""

from tradebotd.market.errors import MalformedMessage, RestError, RestRejected, RestUnavailable
from tradebotd.market.feed import FeedSink, FeedStats, MarketFeed

__all__ = [
    "FeedSink",
    "FeedStats",
    "MalformedMessage",
    "MarketFeed",
    "RestError",
    "RestRejected",
    "RestUnavailable",
]
