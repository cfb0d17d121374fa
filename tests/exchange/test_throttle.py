"""The request budget: limits from exchangeInfo, Retry-After on 429, 418 bans (one log line), the
server-reported weight. Manual clocks; nothing here waits."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from tradebotd.exchange.errors import Banned, RateLimited
from tradebotd.exchange.throttle import Limits, RequestBudget

from .conftest import SecondsClock

BINANCE_RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
]


class Wall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_limits_from_exchange_info() -> None:
    assert Limits.from_rate_limits(BINANCE_RATE_LIMITS) == Limits(6000, 100, 200_000, 60.0, 10.0, 86_400.0)
    assert Limits.from_rate_limits([]) == Limits()  # the defaults when absent
    odd = [{"rateLimitType": "REQUEST_WEIGHT", "interval": "SECOND", "intervalNum": 30, "limit": 900}]
    assert Limits.from_rate_limits(odd).weight_window_s == 30.0


async def test_a_429_blocks_for_retry_after_then_lets_requests_go() -> None:
    clock = SecondsClock()
    budget = RequestBudget(monotonic=clock)
    with capture_logs() as logs:
        budget.observe(429, {"Retry-After": "30", "X-MBX-USED-WEIGHT-1M": "10"})
    assert [e["log_level"] for e in logs] == ["warning"]
    with pytest.raises(RateLimited) as err:
        await budget.acquire(1, max_wait_s=0)
    assert err.value.retry_after_s == 30 and not isinstance(err.value, Banned)
    clock.t += 29.5
    with pytest.raises(RateLimited):
        await budget.acquire(1, orders=1, max_wait_s=0.1)
    clock.t += 0.5
    assert await budget.acquire(1, orders=1, max_wait_s=0) is False


async def test_a_429_without_retry_after_backs_off_ten_seconds() -> None:
    clock = SecondsClock()
    budget = RequestBudget(monotonic=clock)
    budget.observe(429, {})  # Binance's order-count 429s carry no Retry-After
    assert budget.status().blocked_for_s == 10.0


async def test_a_418_bans_everything_with_one_log_line_until_it_ends() -> None:
    clock, wall = SecondsClock(), Wall(1_700_000_000.0)
    budget = RequestBudget(monotonic=clock, wall=wall)
    with capture_logs() as logs:
        budget.observe(418, {"Retry-After": "120"})
        budget.observe(418, {"Retry-After": "119"})  # an answer already on its way: same ban
        for _ in range(3):
            with pytest.raises(Banned) as err:
                await budget.acquire(1, orders=1, max_wait_s=0)
        assert err.value.retry_after_s == 120
        assert budget.status().banned
        clock.t += 120
        await budget.acquire(1, orders=1, max_wait_s=0)
        assert not budget.status().banned
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["event"].startswith("exchange banned this IP (HTTP 418) for 120 s, until 2023-11-14T22:15:20")
    assert [e["event"] for e in logs if e["log_level"] == "info"] == ["exchange ban over; requests resume"]


async def test_weight_used_by_others_on_the_ip_makes_us_wait_for_the_next_minute() -> None:
    wall = Wall(1_699_999_990.0)  # 50 s before a minute boundary
    budget = RequestBudget(monotonic=SecondsClock(), wall=wall)
    budget.observe(200, {"X-MBX-USED-WEIGHT-1M": "5990"})
    assert budget.status().server_used_weight == 5990
    await budget.acquire(10, max_wait_s=0)  # 6000: still fits
    with pytest.raises(RateLimited) as err:
        await budget.acquire(11, max_wait_s=0)
    assert err.value.retry_after_s == pytest.approx(50.0)
    wall.t += 50  # the server's counter started over
    await budget.acquire(11, max_wait_s=0)
    assert budget.status().server_used_weight is None


async def test_our_own_windows_refuse_what_cannot_fit_in_time() -> None:
    budget = RequestBudget(Limits(weight=10, orders_short=2), share=1.0)
    await budget.acquire(4, orders=1)
    await budget.acquire(4, orders=1)
    with pytest.raises(RateLimited):
        await budget.acquire(1, orders=1, max_wait_s=0.05)  # a third order within 10 s
    with pytest.raises(RateLimited):
        await budget.acquire(4, max_wait_s=0.05)  # 12 > 10 weight within the minute


async def test_a_request_that_fits_every_window_is_booked_at_once() -> None:
    """While the windows have room (a candle's 100 orders) a request is booked without
    suspending, and what is booked so counts as the throttlers' own bookings do."""
    budget = RequestBudget(Limits(weight=10, orders_short=2), share=1.0)
    for _ in range(2):
        booking = budget.acquire(4, orders=1, max_wait_s=5.0)
        with pytest.raises(StopIteration) as done:
            booking.send(None)  # completes without suspending
        assert done.value.value is False  # did not wait
    with pytest.raises(RateLimited):
        await budget.acquire(1, orders=1, max_wait_s=0.05)  # a third order within 10 s
    with pytest.raises(RateLimited):
        await budget.acquire(4, max_wait_s=0.05)  # 12 > 10 weight within the minute


def test_share_leaves_room_for_others() -> None:
    with pytest.raises(ValueError, match="share"):
        RequestBudget(share=0)


async def test_new_limits_resize_the_windows_and_keep_what_they_booked() -> None:
    budget = RequestBudget(Limits(weight=10), share=1.0)
    await budget.acquire(8)
    budget.configure(Limits(weight=12))  # e.g. exchangeInfo's rateLimits, read after requests went out
    await budget.acquire(4, max_wait_s=0)  # 8 + 4 = 12
    budget.configure(Limits(weight=13))
    with pytest.raises(RateLimited):
        await budget.acquire(2, max_wait_s=0)  # 12 + 2 > 13: what was booked still counts


async def test_a_cost_above_the_whole_window_waits_for_an_empty_window_not_forever() -> None:
    budget = RequestBudget(Limits(weight=5), share=1.0)
    assert await budget.acquire(20, max_wait_s=0) is False  # the window is empty: it may go
    with pytest.raises(RateLimited):
        await budget.acquire(1, max_wait_s=0)
