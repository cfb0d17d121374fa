"""The replay clock, sans-I/O: what Binance's kline stream and klines REST show at each moment.

Recorded candles share one *base* interval B (the CSV's). The clock moves through each base
candle in four stages, like a live market::

    stage 0  opened       clock = open time          REST shows it as the newest row, o=h=l=c=open
    stage 1  first touch  clock = open + B/3         push x=false: the first extreme (low if the
    stage 2  other touch  clock = open + 2B/3        push x=false: the other extreme   candle rises)
    final                 clock = open + B           push x=true: the recorded candle; next opens

So take-profit and stop-loss levels inside a candle's range are touched live before it closes.
Longer intervals that are multiples of B (5m over 1m data, 1h, 1d, ...) are aggregated on the
fly, both on the stream (an x=false update at every stage, x=true when the last base slot of the
bucket closes) and over REST. REST never shows a candle beyond the clock.

``ReplayTape`` is pure: ``step()`` moves the clock one stage and the caller asks ``kline_event``
for each subscribed stream; ``rows`` answers ``/api/v3/klines``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from tradebotd.model import INTERVAL_MS, Candle, StreamKey
from tradebotd.replay.series import ReplayDataError, Series

__all__ = ["FINAL", "ReplayTape", "Step", "bucket_start", "format_decimal"]

FINAL = 3  # stage number of the final (x=true) push
_WEEK_MS = INTERVAL_MS["1w"]
_WEEK_OFFSET_MS = 4 * 86_400_000  # 1970-01-01 was a Thursday; Binance weeks open on Monday
_EIGHT_PLACES = Decimal("0.00000001")


def bucket_start(time_ms: int, interval_ms: int) -> int:
    """Open time of the ``interval_ms`` candle containing ``time_ms`` (UTC, weeks from Monday)."""
    offset = _WEEK_OFFSET_MS if interval_ms == _WEEK_MS else 0
    return time_ms - (time_ms - offset) % interval_ms


def format_decimal(value: Decimal) -> str:
    """Binance's number format: fixed point with 8 decimals (more only if the data has more)."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= -8:
        return format(value.quantize(_EIGHT_PLACES), "f")
    return format(value, "f")


@dataclass(frozen=True, slots=True)
class Step:
    """One move of the clock: base slot ``slot`` reached ``stage`` (1, 2 or FINAL) at ``event_time``."""

    slot: int
    stage: int
    event_time: int


@dataclass(frozen=True, slots=True)
class _Symbol:
    times: list[int]  # open times, sorted
    candles: list[Candle]


class ReplayTape:
    """Replay clock over one or more symbols' base candles (same base interval)."""

    def __init__(self, series: Sequence[Series], *, past: int) -> None:
        """``past``: how many base slots are already closed when the replay starts (warm-up history)."""
        if not series or not any(s.candles for s in series):
            raise ReplayDataError("nothing to replay: no candles")
        intervals = {s.key.interval for s in series}
        if len(intervals) != 1:
            raise ReplayDataError(f"all series must share one interval, got {sorted(intervals)}")
        if len({s.key.symbol for s in series}) != len(series):
            raise ReplayDataError("one series per symbol")
        self.base_interval = intervals.pop()
        self.base_ms = INTERVAL_MS[self.base_interval]
        self._symbols = {
            s.key.symbol: _Symbol([c.open_time for c in s.candles], list(s.candles)) for s in series if s.candles
        }
        self._first = min(data.times[0] for data in self._symbols.values())
        last = max(data.times[-1] for data in self._symbols.values())
        self.slots = (last - self._first) // self.base_ms + 1
        self._cursor = max(0, min(past, self.slots))  # index of the slot in progress
        self._stage = 0
        # REST rows of closed candles, formatted once: a warm-up of many streams asks for the
        # same hundreds of rows per stream, and formatting Decimals is the stand-in's slow part.
        self._closed_rows: dict[StreamKey, dict[int, list[object]]] = {}

    # -- the clock -------------------------------------------------------------------------------

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(self._symbols)

    @property
    def cursor(self) -> int:
        """Index of the base slot in progress (== ``slots`` when the replay is over)."""
        return self._cursor

    @property
    def finished(self) -> bool:
        return self._cursor >= self.slots

    @property
    def now_ms(self) -> int:
        """The replay clock, as ``/api/v3/time`` reports it."""
        return self._slot_time(self._cursor) + self._stage * self.base_ms // FINAL

    def step(self) -> Step | None:
        """Move one stage; None when the replay is over."""
        if self.finished:
            return None
        slot = self._slot_time(self._cursor)
        if self._stage < FINAL - 1:
            self._stage += 1
            return Step(slot, self._stage, self.now_ms)
        self._cursor += 1
        self._stage = 0
        return Step(slot, FINAL, self.now_ms)

    def supports(self, key: StreamKey) -> bool:
        """Whether ``key`` can be served: a known symbol, an interval that is a multiple of B."""
        return key.symbol in self._symbols and key.interval_ms % self.base_ms == 0

    # -- what the stream pushes ------------------------------------------------------------------

    def kline_event(self, key: StreamKey, step: Step) -> dict[str, object] | None:
        """The raw kline event (``{"e":"kline",...}``) for ``key`` at ``step``; None when the
        symbol has no candle in that bucket yet (a hole in the data) or ``key`` is not served."""
        if not self.supports(key):
            return None
        bucket = bucket_start(step.slot, key.interval_ms)
        candle = self._aggregate(key, bucket, step.slot, step.stage)
        if candle is None:
            return None
        return {"e": "kline", "E": step.event_time, "s": key.symbol, "k": _kline_body(candle, key)}

    # -- what REST shows -------------------------------------------------------------------------

    def rows(
        self, key: StreamKey, *, start: int | None = None, end: int | None = None, limit: int = 500
    ) -> list[list[object]]:
        """``/api/v3/klines`` rows up to the clock: with ``start`` the oldest ``limit`` candles
        from there, otherwise the newest ``limit`` up to ``end``; the newest row may be open."""
        if not self.supports(key):
            return []
        data = self._symbols[key.symbol]
        step = key.interval_ms
        visible_to = self._slot_time(self._cursor) if not self.finished else self._slot_time(self.slots - 1)
        newest = bucket_start(min(visible_to, data.times[-1]), step)
        oldest = bucket_start(data.times[0], step)
        if end is not None:
            newest = min(newest, bucket_start(end, step))
        if start is not None:
            first = bucket_start(start, step)
            oldest = max(oldest, first if first == start else first + step)
        buckets = range(oldest, newest + 1, step) if start is not None else range(newest, oldest - 1, -step)
        rows: list[list[object]] = []
        cache = self._closed_rows.setdefault(key, {})
        for bucket in buckets:
            if len(rows) >= limit:
                break
            row = cache.get(bucket)
            if row is None:
                candle = self._visible(key, bucket)
                if candle is None:
                    continue
                row = _row(candle, key)
                if candle.closed:  # a closed candle never changes: format it once
                    cache[bucket] = row
            rows.append(row)
        if start is None:
            rows.reverse()
        return rows

    def _visible(self, key: StreamKey, bucket: int) -> Candle | None:
        last_slot = bucket + key.interval_ms - self.base_ms
        if self.finished or last_slot < self._slot_time(self._cursor):
            return self._aggregate(key, bucket, last_slot, FINAL)
        return self._aggregate(key, bucket, self._slot_time(self._cursor), self._stage)

    # -- candles ---------------------------------------------------------------------------------

    def _slot_time(self, index: int) -> int:
        return self._first + index * self.base_ms

    def _aggregate(self, key: StreamKey, bucket: int, upto: int, stage: int) -> Candle | None:
        """The ``key`` candle opening at ``bucket`` as seen when base slot ``upto`` is at ``stage``."""
        data = self._symbols[key.symbol]
        last_slot = bucket + key.interval_ms - self.base_ms
        lo = bisect.bisect_left(data.times, bucket)
        hi = bisect.bisect_right(data.times, min(upto, last_slot))
        if lo == hi:
            return None
        parts = data.candles[lo:hi]
        if parts[-1].open_time == upto and stage < FINAL:
            parts = [*parts[:-1], _partial(parts[-1], stage)]
        return Candle(
            symbol=key.symbol,
            interval=key.interval,
            open_time=bucket,
            open=parts[0].open,
            high=max(p.high for p in parts),
            low=min(p.low for p in parts),
            close=parts[-1].close,
            volume=sum((p.volume for p in parts), Decimal(0)),
            closed=stage == FINAL and upto >= last_slot,
        )


def _partial(candle: Candle, stage: int) -> Candle:
    """A base candle part-way: the price went open → first extreme → other extreme → close."""
    rising = candle.close >= candle.open
    path = [candle.open, candle.low, candle.high] if rising else [candle.open, candle.high, candle.low]
    seen = path[: stage + 1]
    quantum = Decimal(1).scaleb(_exponent(candle.volume))
    volume = (candle.volume * stage / FINAL).quantize(quantum, rounding=ROUND_DOWN)
    return Candle(
        symbol=candle.symbol,
        interval=candle.interval,
        open_time=candle.open_time,
        open=candle.open,
        high=max(seen),
        low=min(seen),
        close=seen[-1],
        volume=volume,
        closed=False,
    )


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return exponent if isinstance(exponent, int) else 0


def _trades(candle: Candle) -> int:
    # Synthetic but plausible: more volume, more trades; zero volume, no trades.
    return int(candle.volume * 40) + (1 if candle.volume > 0 else 0)


def _kline_body(candle: Candle, key: StreamKey) -> dict[str, object]:
    trades = _trades(candle)
    first_trade = candle.open_time // 1000 if trades else -1
    quote = candle.volume * candle.close
    return {
        "t": candle.open_time,
        "T": candle.close_time,
        "s": key.symbol,
        "i": key.interval,
        "f": first_trade,
        "L": first_trade + trades - 1 if trades else -1,
        "o": format_decimal(candle.open),
        "c": format_decimal(candle.close),
        "h": format_decimal(candle.high),
        "l": format_decimal(candle.low),
        "v": format_decimal(candle.volume),
        "n": trades,
        "x": candle.closed,
        "q": format_decimal(quote.quantize(_EIGHT_PLACES)),
        "V": format_decimal((candle.volume / 2).quantize(_EIGHT_PLACES)),
        "Q": format_decimal((quote / 2).quantize(_EIGHT_PLACES)),
        "B": "0",
    }


def _row(candle: Candle, key: StreamKey) -> list[object]:
    quote = candle.volume * candle.close
    return [
        candle.open_time,
        format_decimal(candle.open),
        format_decimal(candle.high),
        format_decimal(candle.low),
        format_decimal(candle.close),
        format_decimal(candle.volume),
        candle.close_time,
        format_decimal(quote.quantize(_EIGHT_PLACES)),
        _trades(candle),
        format_decimal((candle.volume / 2).quantize(_EIGHT_PLACES)),
        format_decimal((quote / 2).quantize(_EIGHT_PLACES)),
        "0",
    ]
