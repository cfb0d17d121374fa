"""The per-stream candle state machine, driven by recorded frames and REST answers (no event loop)."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import TypeVar

import orjson

from tradebotd.market.tracker import (
    CandleTracker,
    Closed,
    Dropped,
    Event,
    FetchHistory,
    FetchRange,
    GapSkipped,
    History,
    Malformed,
    Phase,
    Update,
)
from tradebotd.market.wire import ControlReply, ServerShutdown, closed_candles, parse_kline_rows
from tradebotd.model import Candle, StreamKey

from .conftest import fixture_lines, fixture_text

T = TypeVar("T")
BTC = StreamKey("BTCUSDT", "1m")
MIN = 60_000
A, B, C, D = 1700000040000, 1700000100000, 1700000160000, 1700000220000


def candle(open_time: int, key: StreamKey = BTC, *, closed: bool = True, close: str = "100.5") -> Candle:
    price = Decimal(close)
    return Candle(key.symbol, key.interval, open_time, price, price + 1, price - 1, price, Decimal("2.5"), closed)


def frame(open_time: int, *, closed: bool, key: StreamKey = BTC, close: str = "100.5") -> str:
    """A combined-stream kline frame in Binance's format (for generated scenarios)."""
    c = candle(open_time, key, closed=closed, close=close)
    k = {
        "t": c.open_time, "T": c.close_time, "s": key.symbol, "i": key.interval, "f": 1, "L": 2,
        "o": str(c.open), "c": str(c.close), "h": str(c.high), "l": str(c.low), "v": str(c.volume),
        "n": 2, "x": closed, "q": "0", "V": "0", "Q": "0", "B": "0",
    }  # fmt: skip
    event = {"e": "kline", "E": open_time + 1000, "s": key.symbol, "k": k}
    return orjson.dumps({"stream": key.stream_name, "data": event}).decode()


def warmed(history: int = 2, baseline: int = A - MIN) -> CandleTracker:
    """A tracker whose BTC stream is LIVE, warm-up ending with the candle at ``baseline``."""
    tracker = CandleTracker(history=history)
    tracker.add([BTC])
    fetch = one(tracker.subscribed([BTC]), FetchHistory)
    assert fetch.count == history
    events = tracker.receive_history(
        fetch.request, [candle(baseline - 2 * MIN), candle(baseline - MIN), candle(baseline)], A
    )
    assert events == [History(BTC, (candle(baseline - MIN), candle(baseline)))]
    assert tracker.phase(BTC) is Phase.LIVE
    return tracker


def feed(tracker: CandleTracker, frames: list[str], start_ns: int = 1) -> list[Event]:
    events: list[Event] = []
    for i, text in enumerate(frames):
        events += tracker.receive_frame(text, start_ns + i)
    return events


def one(events: list[Event], kind: type[T]) -> T:
    """The single event of ``kind`` among ``events``."""
    [event] = [e for e in events if isinstance(e, kind)]
    return event


def delivered(events: list[Event]) -> list[int]:
    return [e.candle.open_time for e in events if isinstance(e, Closed)]


def test_recorded_session_delivers_each_closed_candle_once_in_order() -> None:
    tracker = warmed()
    events = feed(tracker, fixture_lines("session_btcusdt_1m.jsonl"))

    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "ControlReply", "Update", "Update", "Closed", "Update", "Dropped",
        "Update", "Dropped", "Closed", "Update", "Closed", "Dropped",
    ]  # fmt: skip
    assert events[0] == ControlReply(id=1, result=None)
    assert delivered(events) == [A, B, C]
    assert [e.reason for e in events if isinstance(e, Dropped)] == ["duplicate", "stale", "stale"]
    closed_a = next(e for e in events if isinstance(e, Closed))
    assert closed_a.candle.close == Decimal("37231.40000000") and not closed_a.backfilled
    assert closed_a.received_ns == 4  # the frame's arrival stamp is kept
    assert tracker.last_closed(BTC) == C


def test_recorded_gap_is_backfilled_and_held_candles_released_in_order() -> None:
    tracker = warmed()
    events = feed(tracker, fixture_lines("gap_btcusdt_1m.jsonl"))

    # The update for C proves B closed unseen: a range fetch from B, at once (attempt 0).
    fetches = [e for e in events if isinstance(e, FetchRange)]
    assert [(f.key, f.start, f.attempt) for f in fetches] == [(BTC, B, 0)]
    assert delivered(events) == [A]  # C and D are held until B arrives
    assert tracker.phase(BTC) is Phase.CATCHING_UP

    rows = parse_kline_rows(BTC, orjson.loads(fixture_text("rest_klines_btcusdt_1m.json")))
    server_now = D + 30_000  # D still open on the server when REST answered
    answer = [(c, 1000) for c in closed_candles(rows, server_now)]
    events = tracker.receive_range(fetches[0].request, answer, server_now)

    assert [(type(e).__name__, getattr(e, "backfilled", None)) for e in events] == [
        ("Closed", True),  # B from REST
        ("Closed", True),  # C from REST, which is the record ...
        ("Dropped", None),  # ... so the held stream copy of C is a duplicate
        ("Closed", False),  # D, held, released
    ]
    assert delivered(events) == [B, C, D]
    assert events[0].received_ns == 1000  # type: ignore[union-attr]
    assert tracker.phase(BTC) is Phase.LIVE


def test_final_frames_during_warm_up_are_held_until_history_arrives() -> None:
    tracker = CandleTracker(history=3)
    tracker.add([BTC])
    assert tracker.receive_frame(frame(A, closed=True), 1) == []  # not subscribed yet: held
    fetch = one(tracker.subscribed([BTC]), FetchHistory)
    assert [type(e) for e in tracker.receive_frame(frame(B, closed=False), 2)] == [Update]  # updates flow
    assert tracker.receive_frame(frame(B, closed=True), 3) == []

    # History was read before A closed on the server: it ends at A - 1 min.
    events = tracker.receive_history(fetch.request, [candle(A - 2 * MIN), candle(A - MIN)], A + 1)

    assert isinstance(events[0], History) and len(events[0].candles) == 2
    assert delivered(events) == [A, B]


def test_history_overlapping_held_frames_drops_the_copies() -> None:
    tracker = CandleTracker(history=1)
    tracker.add([BTC])
    fetch = one(tracker.subscribed([BTC]), FetchHistory)
    tracker.receive_frame(frame(A, closed=True), 1)
    events = tracker.receive_history(fetch.request, [candle(A - MIN), candle(A)], B)  # REST already has A

    assert events[0] == History(BTC, (candle(A),))
    assert events[1:] == [Dropped(BTC, A, "duplicate")]
    assert tracker.last_closed(BTC) == A


def test_zero_history_still_sets_a_baseline() -> None:
    tracker = CandleTracker(history=0)
    tracker.add([BTC])
    fetch = one(tracker.subscribed([BTC]), FetchHistory)
    assert tracker.receive_history(fetch.request, [candle(A)], B) == [History(BTC, ())]
    assert delivered(tracker.receive_frame(frame(B, closed=True), 1)) == [B]


def test_young_market_without_history_starts_with_the_first_live_candle() -> None:
    tracker = CandleTracker(history=5)
    tracker.add([BTC])
    fetch = one(tracker.subscribed([BTC]), FetchHistory)
    assert tracker.receive_history(fetch.request, [], A) == [History(BTC, ())]
    assert delivered(tracker.receive_frame(frame(C, closed=True), 1)) == [C]


def test_reconnect_backfills_from_the_last_delivered_candle() -> None:
    tracker = warmed()
    feed(tracker, [frame(A, closed=True)])
    tracker.connection_made([BTC])
    assert tracker.phase(BTC) is Phase.WAITING
    # Frames on the new connection before the backfill is even requested are held.
    assert tracker.receive_frame(frame(D, closed=True), 5) == []
    fetch = one(tracker.subscribed([BTC]), FetchRange)
    assert isinstance(fetch, FetchRange) and (fetch.start, fetch.attempt) == (B, 0)

    events = tracker.receive_range(fetch.request, [(candle(B), 7), (candle(C), 7), (candle(D), 7)], D + MIN)

    assert delivered(events) == [B, C, D]
    assert [e.backfilled for e in events if isinstance(e, Closed)] == [True, True, True]
    assert events[-1] == Dropped(BTC, D, "duplicate")


def test_a_new_connection_resets_only_the_streams_it_carries() -> None:
    """Streams spread over two connections: replacing one connection re-subscribes and backfills
    its streams only; the other connection's stream stays LIVE and keeps delivering at once."""
    eth = StreamKey("ETHUSDT", "1m")
    tracker = CandleTracker(history=1)
    tracker.add([BTC, eth])
    fetches = [e for e in tracker.subscribed([BTC, eth]) if isinstance(e, FetchHistory)]
    for fetch in fetches:
        tracker.receive_history(fetch.request, [candle(A - MIN, fetch.key)], A)
    assert delivered(tracker.receive_frame(frame(A, closed=True), 1)) == [A]
    assert delivered(tracker.receive_frame(frame(A, closed=True, key=eth), 2)) == [A]

    tracker.connection_made([BTC])  # BTC's connection dropped and came back; ETH's did not

    assert (tracker.phase(BTC), tracker.phase(eth)) == (Phase.WAITING, Phase.LIVE)
    assert tracker.receive_frame(frame(B, closed=True), 3) == []  # held until the backfill
    assert delivered(tracker.receive_frame(frame(B, closed=True, key=eth), 4)) == [B]
    fetch = one(tracker.subscribed([BTC]), FetchRange)
    assert (fetch.key, fetch.start) == (BTC, B)
    assert delivered(tracker.receive_range(fetch.request, [(candle(B), 5)], C)) == [B]
    assert tracker.phase(BTC) is Phase.LIVE


def test_answers_to_superseded_requests_are_ignored() -> None:
    tracker = warmed()
    tracker.connection_made([BTC])
    first = one(tracker.subscribed([BTC]), FetchRange)
    tracker.connection_made([BTC])  # replaced again before the answer came
    second = one(tracker.subscribed([BTC]), FetchRange)
    assert not tracker.is_pending(first.request) and tracker.is_pending(second.request)
    assert tracker.receive_range(first.request, [(candle(A), 1)], B) == []
    assert delivered(tracker.receive_range(second.request, [(candle(A), 1)], B)) == [A]


def test_gap_rest_has_not_caught_up_with_is_retried_then_skipped() -> None:
    tracker = warmed()
    feed(tracker, [frame(A, closed=True)])
    fetch = one(tracker.receive_frame(frame(C, closed=True), 2), FetchRange)

    attempts = []
    for _ in range(3):  # REST keeps answering without B
        events = tracker.receive_range(fetch.request, [], C + MIN)
        fetch = one(events, FetchRange)
        attempts.append(fetch.attempt)
    assert attempts == [1, 2, 3]

    events = tracker.receive_range(fetch.request, [], C + MIN)
    assert events[0] == GapSkipped(BTC, B, B, confirmed=False)
    assert delivered(events) == [C]


def test_hole_confirmed_by_rest_is_skipped_at_once() -> None:
    tracker = warmed()
    feed(tracker, [frame(A, closed=True)])
    fetch = one(tracker.receive_frame(frame(C, closed=True), 2), FetchRange)

    events = tracker.receive_range(fetch.request, [(candle(C), 9)], D)  # REST has no B either

    assert events[0] == GapSkipped(BTC, B, B, confirmed=True)
    assert delivered(events) == [C]
    assert events[-1] == Dropped(BTC, C, "duplicate")


def test_corrupt_final_from_the_future_is_dropped_not_trusted() -> None:
    tracker = warmed()
    far = A + 10_000 * MIN
    fetch = one(tracker.receive_frame(frame(far, closed=True), 1), FetchRange)
    for _ in range(4):  # REST (at server time B) never has anything near it
        events = tracker.receive_range(fetch.request, [], B)
        if any(isinstance(e, FetchRange) for e in events):
            fetch = one(events, FetchRange)
    assert events == [Dropped(BTC, far, "future")]
    assert delivered(tracker.receive_frame(frame(A, closed=True), 2)) == [A]  # the stream lives on


def test_malformed_unknown_and_control_frames() -> None:
    tracker = warmed()
    [event] = tracker.receive_frame(b"\x00\xff not json", 1)
    assert isinstance(event, Malformed) and "not JSON" in event.error
    assert tracker.receive_frame(frame(A, closed=True, key=StreamKey("ETHUSDT", "1m")), 2) == [
        Dropped(StreamKey("ETHUSDT", "1m"), A, "untracked")
    ]
    assert tracker.receive_frame(fixture_text("server_shutdown_combined.json"), 3) == [ServerShutdown(1700000123456)]
    assert delivered(tracker.receive_frame(frame(A, closed=True), 4)) == [A]  # state untouched


def test_removed_stream_ignores_its_pending_answer() -> None:
    tracker = CandleTracker(history=1)
    tracker.add([BTC])
    fetch = one(tracker.subscribed([BTC]), FetchHistory)
    tracker.remove([BTC])
    assert tracker.receive_history(fetch.request, [candle(A)], B) == []
    assert not tracker.is_pending(fetch.request)


def test_random_loss_duplication_and_reordering_never_break_exactly_once() -> None:
    """Whatever the stream does, with REST as the record the sink sees 0..N-1 once, in order."""
    count = 60
    for seed in range(200):
        rng = random.Random(seed)
        truth = [candle(A + i * MIN, close=f"{100 + i}.5") for i in range(count)]
        frames: list[str] = []
        for i in range(count):  # updates then the final; some lost, some repeated, some late
            for text in (frame(A + i * MIN, closed=False), frame(A + i * MIN, closed=True, close=f"{100 + i}.5")):
                roll = rng.random()
                if roll < 0.15:
                    continue
                frames.append(text)
                if roll > 0.9:
                    frames.insert(rng.randrange(max(0, len(frames) - 5), len(frames)), text)
        tracker = CandleTracker(history=0, max_gap_retries=3)
        tracker.add([BTC])
        out: list[Event] = list(tracker.subscribed([BTC]))
        out += tracker.receive_history(one(out, FetchHistory).request, [candle(A - MIN)], A)
        sent = 0
        pending = [e for e in out if isinstance(e, FetchRange)]
        while sent < len(frames) or pending:
            if pending and (sent >= len(frames) or rng.random() < 0.3):
                request = pending.pop(0)
                now = A + (count if sent >= len(frames) else rng.randrange(count)) * MIN
                answer = [(c, 0) for c in truth if c.open_time >= request.start and c.close_time < now]
                events = tracker.receive_range(request.request, answer, now)
            else:
                events = tracker.receive_frame(frames[sent], sent)
                sent += 1
            out += events
            pending += [e for e in events if isinstance(e, FetchRange)]
        # Whatever was not delivered by now would come with the next frame or reconnect; what was
        # delivered must be a gap-free, duplicate-free prefix of the truth.
        got = delivered(out)
        assert got == [c.open_time for c in truth[: len(got)]], f"seed {seed}"
        assert len(got) >= count - 1, f"seed {seed}: only {len(got)} delivered"
        assert not any(isinstance(e, GapSkipped) for e in out), f"seed {seed}"
