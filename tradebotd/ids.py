"""Identifiers the daemon makes: time-ordered UUIDs for rows, deterministic client order ids.

Rows get ids whose first 48 bits are a time in ms (RFC 9562 layout), so every primary-key index
grows at its end: a candle on which 100 strategies trade writes a few index pages, not hundreds
of random ones.
"""

from __future__ import annotations

import functools
import hashlib
import random
import time

__all__ = ["strategy_digest", "time_ordered_uuid", "trade_uuid", "uuid7"]

_VERSION_MASK = ~(0xF << 76)
_VARIANT_MASK = ~(0x3 << 62)
_RFC_VARIANT = 0x2 << 62
_LOW_80 = (1 << 80) - 1


def time_ordered_uuid(ms: int, low_bits: int, version: int) -> str:
    """``ms`` in the top 48 bits, ``low_bits`` below; the version and RFC 4122 variant bits then
    replace 6 of those, leaving 74 of them."""
    value = (ms & ((1 << 48) - 1)) << 80 | (low_bits & _LOW_80)
    value = (value & _VERSION_MASK) | (version << 76)
    value = (value & _VARIANT_MASK) | _RFC_VARIANT
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7() -> str:
    """A version-7 UUID: creation time in ms, then random bits (uniqueness, not secrecy: ids are
    not secrets, so the fast PRNG is enough)."""
    return time_ordered_uuid(time.time_ns() // 1_000_000, random.getrandbits(80), 7)


def trade_uuid(client_order_id: str, candle_time: int) -> str:
    """A trade's id: the same decision always gets the same id (any store can upsert it), and ids
    sort by candle time. Version 8 (custom): candle time, then 74 bits of sha256(client order id)."""
    digest = int.from_bytes(hashlib.sha256(client_order_id.encode()).digest()[:10], "big")
    return time_ordered_uuid(candle_time, digest, 8)


@functools.lru_cache(maxsize=4096)
def strategy_digest(strategy_id: str) -> str:
    """12 hex characters of sha256(strategy id), the strategy's part of its client order ids."""
    return hashlib.sha256(strategy_id.encode()).hexdigest()[:12]
