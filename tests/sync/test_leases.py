"""Leases with an injected clock: evaluation stops before the database would let another
instance take over; the cursor rule when a strategy is taken over."""

from __future__ import annotations

from typing import Any

import pytest

from tradebotd.sync.client import SupabaseUnavailable
from tradebotd.sync.leases import Leases, start_cursor

MIN = 60_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Gateway:
    """Answers the lease RPCs as the database would for one strategy, or fails (an outage)."""

    def __init__(self) -> None:
        self.down = False
        self.calls: list[str] = []

    async def rpc(self, function: str, params: dict[str, Any]) -> Any:
        self.calls.append(function)
        if self.down:
            raise SupabaseUnavailable("rpc: ConnectError")
        if function == "tradebotd_claim_strategies":
            return [{"strategy_id": "s1", "taken_over": False, "last_candle_time": 5 * MIN}]
        if function == "tradebotd_renew_leases":
            return [{"strategy_id": sid} for sid in params["p_strategy_ids"]]
        return 1


async def test_evaluation_stops_before_the_lease_can_expire_when_renewals_fail() -> None:
    clock, gateway = FakeClock(), Gateway()
    leases = Leases(gateway, worker_id="w", lease_s=120, clock=clock)  # type: ignore[arg-type]
    claimed = await leases.claim({"s1": MIN})
    assert [(c.strategy_id, c.cursor) for c in claimed] == [("s1", 5 * MIN)]
    assert leases.owns("s1")
    clock.now += 40
    assert leases.renewal_due()
    await leases.renew()  # extended from the time the renewal was sent
    gateway.down = True  # Supabase unreachable from here on
    clock.now += 40
    with pytest.raises(SupabaseUnavailable):
        await leases.renew()
    clock.now += 59  # 99 s after the last renewal: still within 5/6 of 120 s
    assert leases.owns("s1") and leases.expire() == []
    clock.now += 2  # 101 s: past 100 s, well before the database's 120 s
    assert not leases.owns("s1")
    assert leases.expire() == ["s1"]
    gateway.down = False
    assert [c.strategy_id for c in await leases.claim({"s1": MIN})] == ["s1"]  # nobody took it: back


def test_cursor_rule_on_takeover() -> None:
    row = {"taken_over": True, "previous_released": False, "last_candle_time": 10 * MIN,
           "previous_expires_at": "2026-01-01T00:20:30+00:00", "now": "2026-01-01T00:21:00+00:00"}  # fmt: skip
    market_now = 21 * MIN  # the market's clock agrees with the database's here
    # the old owner may have traded every candle that closed by 00:20:30: the one opened at 00:19
    assert start_cursor(row, MIN, market_now) == 19 * MIN
    assert start_cursor({**row, "previous_released": True}, MIN, market_now) == 10 * MIN  # clean: exact
    assert start_cursor({**row, "taken_over": False}, MIN, market_now) == 10 * MIN  # our own lease back
    assert start_cursor(row, MIN, None) == 10 * MIN  # replay: candle times are not live times
    assert start_cursor({**row, "last_candle_time": None}, MIN, market_now) == 19 * MIN


async def test_a_claim_sent_before_the_local_store_knows_the_strategy_counts_from_its_sending() -> None:
    """The claim goes out with the mirror's poll (request_claims), and is taken once the mirror
    applied the strategy (accept, with its interval): the lease's deadline counts from when the
    request was sent, not from when its answer was taken."""
    clock, gateway = FakeClock(), Gateway()
    leases = Leases(gateway, worker_id="w", lease_s=120, clock=clock)  # type: ignore[arg-type]
    answer = await leases.request_claims()
    assert not leases.owns("s1")  # nothing held before the answer is taken
    clock.now += 30  # the mirror's poll and apply
    claimed = leases.accept(answer, {"s1": MIN})
    assert [(c.strategy_id, c.cursor) for c in claimed] == [("s1", 5 * MIN)]
    clock.now += 69  # 99 s after the request went out
    assert leases.owns("s1")
    clock.now += 2  # 101 s: past 5/6 of 120 s from the sending
    assert not leases.owns("s1")
    assert gateway.calls == ["tradebotd_claim_strategies"]
