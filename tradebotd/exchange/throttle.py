"""One request budget per exchange account, in front of ccxt (whose own limiter is off): Binance's
limits, what the server says about them, and what to do when it says stop.

Binance (``rest-api.md`` LIMITS) counts request weight per IP (REQUEST_WEIGHT, 6000 per minute)
and new orders per account (ORDERS, 50 per 10 s and 160 000 per day here; ``exchangeInfo``'s
``rateLimits`` gives the real numbers, which :meth:`RequestBudget.configure` applies). Beyond the
weight limit come 429s with ``Retry-After``; a client that keeps sending is banned (418, 2 minutes
to 3 days).

* Sliding windows (asyncio-throttle's ``Throttler``, one per limit, a booked unit per weight)
  pace requests under ``share`` of each limit.
* Every answer's ``X-MBX-USED-WEIGHT-1M`` is observed: when other clients on the IP have used
  the minute's weight, requests wait for the next minute instead of running into a 429.
* A 429 blocks every request for its ``Retry-After`` (10 s without one: Binance's order-count
  429s carry none). A 418 blocks every request until the ban ends and says so in one log line.
  While blocked, :meth:`acquire` waits if the block ends within ``max_wait_s``, else raises
  ``RateLimited`` / ``Banned`` at once: nothing is sent.

One budget per IP, shared: Binance counts request weight per IP, so everything the daemon sends
to one host spends from one budget. :class:`RequestBudgets` hands out one ``RequestBudget`` per
REST host: the exchange port takes the one for its host, and the market feed's REST client the
one for its own (``tradebotd.market.pacing.SharedBudget``: ``acquire(cost)`` before each request,
``observe(status, headers)`` after each answer). When both call ``api.binance.com`` (live mode),
or one local replay server, klines and orders draw on the same windows, and a 429 or 418 that
either one hears holds back both — order traffic included. The feed keeps its own, smaller cap
(``market.rest_weight_per_minute``) on top, so a warm-up of many streams cannot take the whole
minute from the orders. The testnet is another host with its own counters, so it gets its own
budget. (Should two budgets still end up on one IP, through two host names, the used weight that
every Binance answer reports keeps each of them within what the IP has left.)

Imports no ccxt (the error classes do not need it), so the market feed can use it in paper mode.

Errors: ``RateLimited`` and ``Banned`` from ``tradebotd.exchange.errors``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import structlog
from asyncio_throttle.throttler import Throttler

from tradebotd.exchange.errors import Banned, RateLimited

__all__ = ["BudgetStatus", "Limits", "RequestBudget", "RequestBudgets", "retry_after_s"]

log = structlog.get_logger(__name__)

_DEFAULT_429_BACKOFF_S = 10.0  # a 429 without Retry-After (order count): Binance's shortest window
_DEFAULT_BAN_S = 120.0  # a 418 without Retry-After: Binance's shortest ban
_INTERVAL_S = {"SECOND": 1.0, "MINUTE": 60.0, "HOUR": 3600.0, "DAY": 86_400.0}


@dataclass(frozen=True, slots=True)
class Limits:
    """Request weight per ``weight_window_s`` and new orders per two windows. The defaults are
    Binance spot's (per minute, per 10 s, per day); ``from_rate_limits`` reads ``exchangeInfo``."""

    weight: int = 6000
    orders_short: int = 50
    orders_long: int = 160_000
    weight_window_s: float = 60.0
    orders_short_window_s: float = 10.0
    orders_long_window_s: float = 86_400.0

    @classmethod
    def from_rate_limits(cls, rate_limits: Sequence[Mapping[str, object]], default: Limits | None = None) -> Limits:
        """The REQUEST_WEIGHT and ORDERS entries of ``rateLimits``; what is missing stays ``default``."""
        base = default or cls()
        weight = (base.weight, base.weight_window_s)
        orders: list[tuple[int, float]] = []
        for entry in rate_limits:
            kind, number, limit = entry.get("rateLimitType"), entry.get("intervalNum"), entry.get("limit")
            unit = _INTERVAL_S.get(str(entry.get("interval")))
            if not isinstance(number, int) or not isinstance(limit, int) or limit <= 0 or unit is None:
                continue
            if kind == "REQUEST_WEIGHT":
                weight = (limit, unit * number)
            elif kind == "ORDERS":
                orders.append((limit, unit * number))
        orders.sort(key=lambda pair: pair[1])
        short = orders[0] if orders else (base.orders_short, base.orders_short_window_s)
        long = orders[-1] if len(orders) > 1 else (base.orders_long, base.orders_long_window_s)
        return cls(weight[0], short[0], long[0], weight[1], short[1], long[1])


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """For health and metrics."""

    limits: Limits
    server_used_weight: int | None  # the last X-MBX-USED-WEIGHT-1M seen (this minute), if any
    blocked_for_s: float  # 0 when requests may go
    banned: bool


class RequestBudget:
    """The request budget of one REST host: the IP's request weight and the account's new
    orders (see the module docstring).

    ``monotonic`` times 429/418 blocks; ``wall`` (Unix seconds) finds Binance's minute
    boundaries; both are injectable for tests. The sliding windows themselves run on
    asyncio-throttle's clock (``time.monotonic``)."""

    def __init__(
        self,
        limits: Limits = Limits(),
        *,
        share: float = 0.9,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        name: str = "binance",
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        self.name = name
        self._monotonic = monotonic
        self._wall = wall
        self._blocked_until = -math.inf
        self._banned = False
        self._server_used: int | None = None
        self._server_minute = -1
        # One sliding window per limit, one booked unit per weight (or order); sized by configure.
        self._weight, self._orders_short, self._orders_long = Throttler(1), Throttler(1), Throttler(1)
        self.configure(limits)

    def configure(self, limits: Limits | Sequence[Mapping[str, object]]) -> None:
        """Size the windows from ``limits`` or an ``exchangeInfo`` ``rateLimits`` list. Existing
        windows are resized in place (``rate_limit`` and ``period`` are the throttler's public
        settings), so what they have booked — the ``exchangeInfo`` request itself, the feed's
        warm-up — still counts."""
        if not isinstance(limits, Limits):
            limits = Limits.from_rate_limits(limits, getattr(self, "limits", None))
        self.limits = limits
        for throttler, limit, period in (
            (self._weight, limits.weight, limits.weight_window_s),
            (self._orders_short, limits.orders_short, limits.orders_short_window_s),
            (self._orders_long, limits.orders_long, limits.orders_long_window_s),
        ):
            throttler.rate_limit, throttler.period = max(1, int(limit * self.share)), period

    # -- spending --------------------------------------------------------------------------------

    async def acquire(self, cost: float = 1.0, *, orders: int = 0, max_wait_s: float | None = None) -> bool:
        """Return when a request of weight ``cost`` (adding ``orders`` new orders) may be sent;
        True if it had to wait. With ``max_wait_s``, raise ``RateLimited``/``Banned`` instead of
        waiting longer than that: the request must not be sent then (what was booked while
        waiting stays booked, which only errs on the safe side). A cost above the whole window
        waits for an empty window rather than forever."""
        units = min(math.ceil(cost), self._weight.rate_limit)
        if self._book_now(units, orders):
            return False
        waited = await self._wait_unblocked(max_wait_s)
        if self._server_used is not None and self.limits.weight_window_s == 60.0:  # the header counts per minute
            minute = int(self._wall() // 60)
            if minute == self._server_minute and self._server_used + cost > self.limits.weight:
                delay = 60 - self._wall() % 60  # the server's counter resets with the minute
                if max_wait_s is not None and delay > max_wait_s:
                    raise RateLimited(
                        f"{self.name}: the IP's request weight for this minute is used up "
                        f"({self._server_used}/{self.limits.weight})",
                        retry_after_s=delay,
                    )
                await asyncio.sleep(delay)
                waited = True
        try:
            async with asyncio.timeout(max_wait_s):
                started = self._monotonic()
                for _ in range(units):
                    async with self._weight:
                        pass
                for _ in range(orders):
                    async with self._orders_short, self._orders_long:
                        pass
                waited = waited or self._monotonic() - started > 0.005
        except TimeoutError:
            raise RateLimited(
                f"{self.name}: request budget exhausted (weight {self.limits.weight} per "
                f"{self.limits.weight_window_s:g} s, orders {self.limits.orders_short} per "
                f"{self.limits.orders_short_window_s:g} s)",
                retry_after_s=None,
            ) from None
        return waited

    def _book_now(self, units: int, orders: int) -> bool:
        """Book ``units`` of weight and ``orders`` at once if nothing blocks them and every window
        has room (the common case: a candle's orders well within the limits): the same entries
        the throttlers' own ``acquire`` makes, without a task switch or a timeout per unit."""
        if self._banned or self._blocked_until > self._monotonic():
            return False  # (a ban that just ended is said to be over by the slow path)
        if self._server_used is not None and self._server_used + units > self.limits.weight:
            return False  # maybe this minute's: the slow path looks at the clock
        windows = ((self._weight, units), (self._orders_short, orders), (self._orders_long, orders))
        for throttler, n in windows:
            if n:
                throttler.flush()  # type: ignore[no-untyped-call]
                if len(throttler._task_logs) + n > throttler.rate_limit:
                    return False
        now = time.monotonic()  # asyncio-throttle's clock
        for throttler, n in windows:
            if n:
                throttler._task_logs.extend([now] * n)
        return True

    async def _wait_unblocked(self, max_wait_s: float | None) -> bool:
        remaining = self._blocked_until - self._monotonic()
        if remaining <= 0:
            if self._banned:
                self._banned = False
                log.info("exchange ban over; requests resume", exchange=self.name)
            return False
        if max_wait_s is not None and remaining > max_wait_s:
            error = Banned if self._banned else RateLimited
            what = "banned (HTTP 418)" if self._banned else "rate limited (HTTP 429)"
            raise error(f"{self.name}: {what} for {remaining:.0f} s more; not sent", retry_after_s=remaining)
        await asyncio.sleep(remaining)
        return True

    # -- listening -------------------------------------------------------------------------------

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Learn from one answer: the IP's used weight, and 429 / 418 with ``Retry-After``."""
        used = _header(headers, "X-MBX-USED-WEIGHT-1M")
        if used is not None and used.isdigit():
            self._server_used, self._server_minute = int(used), int(self._wall() // 60)
        if status not in (418, 429):
            return
        retry_after = retry_after_s(headers)
        now = self._monotonic()
        if status == 429:
            until = now + (retry_after if retry_after is not None else _DEFAULT_429_BACKOFF_S)
            if until > self._blocked_until:
                self._blocked_until = until
                log.warning("exchange rate limit hit (HTTP 429); backing off", exchange=self.name, seconds=until - now)
            return
        seconds = retry_after if retry_after is not None else _DEFAULT_BAN_S
        until = now + seconds
        if until > self._blocked_until + 1 or not self._banned:
            ends = datetime.fromtimestamp(self._wall() + seconds, UTC).isoformat(timespec="seconds")
            log.error(
                f"exchange banned this IP (HTTP 418) for {seconds:.0f} s, until {ends}: "
                "no orders or other requests are sent until then",
                exchange=self.name,
                seconds=seconds,
                until=ends,
            )
        self._blocked_until = max(self._blocked_until, until)
        self._banned = True

    def status(self) -> BudgetStatus:
        minute = int(self._wall() // 60)
        used = self._server_used if minute == self._server_minute else None
        blocked = max(0.0, self._blocked_until - self._monotonic())
        return BudgetStatus(self.limits, used, blocked, self._banned and blocked > 0)


class RequestBudgets:
    """One :class:`RequestBudget` per REST host (``scheme://host:port``), created on first use with
    the options given here; see the module docstring for why per host."""

    def __init__(
        self,
        limits: Limits = Limits(),
        *,
        share: float = 0.9,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._limits, self._share, self._monotonic, self._wall = limits, share, monotonic, wall
        self._by_host: dict[str, RequestBudget] = {}

    def for_url(self, url: str) -> RequestBudget:
        """The budget of the host ``url`` names (any path)."""
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            raise ValueError(f"not an absolute URL: {url!r}")
        host = f"{parts.scheme}://{parts.netloc}".lower()
        budget = self._by_host.get(host)
        if budget is None:
            budget = RequestBudget(
                self._limits, share=self._share, monotonic=self._monotonic, wall=self._wall, name=parts.netloc
            )
            self._by_host[host] = budget
        return budget


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """The ``Retry-After`` header in seconds, if the answer had one."""
    value = _header(headers, "Retry-After") if headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
