"""Row ids sort by time; trade ids and client order ids are deterministic."""

from __future__ import annotations

import time
import uuid

from tradebotd.broker.base import client_order_id
from tradebotd.ids import strategy_digest, trade_uuid, uuid7


def test_log_ids_are_version_7_and_time_ordered() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid.UUID(uuid7()) for _ in range(100)]
    after = time.time_ns() // 1_000_000
    assert {u.version for u in ids} == {7} and {u.variant for u in ids} == {uuid.RFC_4122}
    stamps = [u.int >> 80 for u in ids]  # the leading 48 bits are the creation time in ms
    assert before <= min(stamps) and max(stamps) <= after and stamps == sorted(stamps)
    assert len(set(ids)) == 100


def test_trade_ids_are_deterministic_version_8_with_the_candle_time_first() -> None:
    coid = client_order_id("strategy-a", 1_700_000_040_000, "buy")
    a, b = uuid.UUID(trade_uuid(coid, 1_700_000_040_000)), uuid.UUID(trade_uuid(coid, 1_700_000_040_000))
    assert a == b and a.version == 8 and a.variant == uuid.RFC_4122 and a.int >> 80 == 1_700_000_040_000
    assert trade_uuid(client_order_id("strategy-a", 1_700_000_040_000, "sell"), 1_700_000_040_000) != str(a)
    assert trade_uuid(coid, 1_700_000_100_000) > str(a)  # later candles sort later


def test_client_order_ids_embed_time_and_strategy() -> None:
    coid = client_order_id("strategy-a", 1_700_000_040_000, "tp")
    assert coid == f"tb-1700000040000-{strategy_digest('strategy-a')}-tp"
    assert len(strategy_digest("strategy-a")) == 12 and strategy_digest("a") != strategy_digest("b")
