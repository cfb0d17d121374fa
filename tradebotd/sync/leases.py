"""Leases: which instance evaluates which strategy, when several share one Supabase project.

An instance claims running strategies nobody holds (``tradebotd_claim_strategies``, FOR UPDATE
SKIP LOCKED in the database), renews its leases every third of the lease time, and releases them
with its final cursors on shutdown. It evaluates a strategy only while it holds the lease *by
its own clock*: the deadline is measured from before the claim or renewal was sent, and a sixth
of the lease time earlier than the database's expiry, so an instance has stopped evaluating
before anyone else can take the strategy over. An instance that cannot renew (Supabase
unreachable for longer than that) stops evaluating its strategies: it cannot know whether
another instance took them over, and trading a candle twice is worse than missing one.

The cursor travels with the lease (:func:`start_cursor`): the new owner starts after the
strategy's cursor in the database, or, when the previous owner did not release the lease
(crashed or cut off), after the last candle that closed before that lease expired, since the
previous owner may have traded candles up to then whose rows have not reached the database.

Time is injected (``clock``): tests drive deadlines without waiting.

Errors: ``SupabaseUnavailable`` from claim/renew/release; the caller retries on its schedule.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from .client import SupabaseGateway

__all__ = ["ClaimAnswer", "Claimed", "Leases", "start_cursor"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Claimed:
    strategy_id: str
    cursor: int | None  # open time of the last candle the strategy may be taken to have evaluated
    taken_over: bool  # from another instance: its position and cash come from the database too


@dataclass(frozen=True, slots=True)
class ClaimAnswer:
    sent_at: float  # the lease clock before the request went out (deadlines count from here)
    rows: list[dict[str, Any]]


def start_cursor(row: Mapping[str, Any], interval_ms: int, market_now_ms: int | None) -> int | None:
    """Where a newly claimed strategy resumes (see the module docstring). The old lease's expiry
    is placed on the market's clock (the feed's server time) by its age on the database's clock
    (``now - previous_expires_at``, both the database's, so no clock skew enters)."""
    cursor = row.get("last_candle_time")
    cursor = None if cursor is None else int(cursor)
    expired, db_now = row.get("previous_expires_at"), row.get("now")
    if market_now_ms is not None and row.get("taken_over") and not row.get("previous_released") and expired and db_now:
        age_ms = (datetime.fromisoformat(str(db_now)) - datetime.fromisoformat(str(expired))).total_seconds() * 1000
        expired_market_ms = market_now_ms - max(0, int(age_ms))
        # the newest candle that had closed when the old lease expired
        floor = (expired_market_ms // interval_ms) * interval_ms - interval_ms
        cursor = floor if cursor is None else max(cursor, floor)
    return cursor


class Leases:
    def __init__(
        self,
        gateway: SupabaseGateway,
        *,
        worker_id: str,
        lease_s: float,
        symbols: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        market_now_ms: Callable[[], int] | None = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        """``market_now_ms``: the market's clock (candle times), for the crash floor; None when
        candle times are not live times (a replay with the staleness guard off): then only the
        database's cursor is used."""
        self._gateway = gateway
        self.worker_id = worker_id
        self.lease_s = lease_s
        self._symbols = list(symbols) if symbols else None
        self._clock = clock
        self._market_now_ms = market_now_ms
        self._deadlines: dict[str, float] = {}
        self._renewed_at = clock()

    # -- what the engine may evaluate --------------------------------------------------------

    def owns(self, strategy_id: str) -> bool:
        deadline = self._deadlines.get(strategy_id)
        return deadline is not None and self._clock() < deadline

    def held(self) -> set[str]:
        now = self._clock()
        return {sid for sid, deadline in self._deadlines.items() if now < deadline}

    def ids(self) -> set[str]:
        """Every lease this instance has not given up or lost (deadline passed or not)."""
        return set(self._deadlines)

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    def expire(self) -> list[str]:
        """Forget leases whose deadline passed (not renewed in time); returns their ids."""
        now = self._clock()
        lost = [sid for sid, deadline in self._deadlines.items() if now >= deadline]
        for sid in lost:
            del self._deadlines[sid]
            log.warning("lease lost: not renewed in time; strategy not evaluated here any more", strategy_id=sid)
        return lost

    def _deadline(self, sent_at: float) -> float:
        return sent_at + self.lease_s * 5 / 6

    # -- talking to the database -------------------------------------------------------------

    async def claim(self, intervals: Mapping[str, int], limit: int = 1000) -> list[Claimed]:
        """Take free running strategies (and this worker's own leases, as after a restart: those
        it already holds here are simply renewed); returns the newly held ones. ``intervals``:
        strategy id -> candle interval in ms (from the local store), for the cursor rule."""
        return self.accept(await self.request_claims(limit), intervals)

    async def request_claims(self, limit: int = 1000) -> ClaimAnswer:
        """The claim's request alone (:meth:`claim` = this, then :meth:`accept`): it needs nothing
        from the local store, so it can go out together with the mirror's poll."""
        sent_at = self._clock()
        params: dict[str, Any] = {"p_worker_id": self.worker_id, "p_lease_s": _seconds(self.lease_s), "p_limit": limit}
        if self._symbols is not None:
            params["p_symbols"] = self._symbols
        rows = await self._gateway.rpc("tradebotd_claim_strategies", params)
        return ClaimAnswer(sent_at, list(rows or []))

    def accept(self, answer: ClaimAnswer, intervals: Mapping[str, int]) -> list[Claimed]:
        """Hold what a claim's answer granted; returns the newly held ones (see :meth:`claim`)."""
        sent_at = answer.sent_at
        claimed = []
        for row in answer.rows:
            sid = str(row["strategy_id"])
            known = sid in self._deadlines
            self._deadlines[sid] = self._deadline(sent_at)
            if known:
                continue
            now_ms = None if self._market_now_ms is None else self._market_now_ms()
            cursor = start_cursor(row, intervals.get(sid, 60_000), now_ms)
            claimed.append(Claimed(sid, cursor, bool(row.get("taken_over"))))
            log.info(
                "lease acquired",
                strategy_id=sid,
                taken_over_from=row.get("previous_worker_id") if row.get("taken_over") else None,
                cursor=cursor,
            )
        return claimed

    def renewal_due(self) -> bool:
        return bool(self._deadlines) and self._clock() - self._renewed_at >= self.lease_s / 3

    async def renew(self) -> list[str]:
        """Extend every lease held; returns the ids the database says are no longer ours."""
        if not self._deadlines:
            return []
        sent_at = self._clock()
        ids = sorted(self._deadlines)
        rows = await self._gateway.rpc(
            "tradebotd_renew_leases",
            {"p_worker_id": self.worker_id, "p_lease_s": _seconds(self.lease_s), "p_strategy_ids": ids},
        )
        kept = {str(r["strategy_id"]) for r in rows or []}
        self._renewed_at = sent_at
        for sid in kept:
            self._deadlines[sid] = self._deadline(sent_at)
        lost = [sid for sid in ids if sid not in kept]
        for sid in lost:
            self._deadlines.pop(sid, None)
            log.warning("lease lost: held elsewhere now", strategy_id=sid)
        return lost

    async def release(self, cursors: Iterable[tuple[str, str, str, int]], ids: Sequence[str] | None = None) -> int:
        """Give leases up (all when ``ids`` is None) with the final cursors
        (strategy id, symbol, interval, open time), so the next owner resumes exactly there."""
        payload = [
            {"strategy_id": sid, "symbol": symbol, "interval": interval, "last_candle_time": t}
            for sid, symbol, interval, t in cursors
        ]
        params: dict[str, Any] = {"p_worker_id": self.worker_id, "p_cursors": payload}
        if ids is not None:
            params["p_strategy_ids"] = list(ids)
        released = int(await self._gateway.rpc("tradebotd_release_leases", params) or 0)
        for sid in list(self._deadlines) if ids is None else ids:
            self._deadlines.pop(sid, None)
        return released


def _seconds(lease_s: float) -> int:
    return max(1, round(lease_s))
