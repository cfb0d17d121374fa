"""Health as a pure function of a status snapshot and the time: no server, no clock."""

from __future__ import annotations

from tradebotd.model import StreamKey
from tradebotd.ops.health import HealthPolicy, assess
from tradebotd.ops.sdnotify import Stall
from tradebotd.ops.status import StatusSnapshot, StreamProgress, TaskHealth

MIN = 60_000
T0 = 1_700_000_040_000  # a minute boundary
POLICY = HealthPolicy(grace_s=30, outbox_threshold=100)
BTC = StreamKey("BTCUSDT", "1m")
ETH = StreamKey("ETHUSDT", "1h")


def stream(key: StreamKey, last_open_ms: int | None, since_ms: int = T0 - 10 * MIN) -> StreamProgress:
    return StreamProgress(key, received=5, last_closed_open_ms=last_open_ms, wanted_since_ms=since_ms)


def checks(snap: StatusSnapshot, now_ms: int) -> list[tuple[str, str]]:
    return [(p.check, p.subject) for p in assess(snap, now_ms, POLICY).problems]


def test_a_fresh_pipeline_is_healthy_and_reports_candle_ages() -> None:
    snap = StatusSnapshot(streams=(stream(BTC, T0 - MIN),))  # closed at T0
    health = assess(snap, T0 + 5_000, POLICY)
    assert health.ok
    assert health.as_json() == {"status": "ok", "problems": [], "streams": {"BTCUSDT/1m": 5.0}}


def test_a_stream_is_stale_after_one_interval_plus_the_grace() -> None:
    snap = StatusSnapshot(streams=(stream(BTC, T0 - MIN), stream(ETH, T0 - 60 * MIN)))
    # BTC closed at T0: the next one is due at T0 + 1 min; red only after 1 min + 30 s
    assert checks(snap, T0 + MIN + 30_000) == []
    assert checks(snap, T0 + MIN + 30_001) == [("stream", "BTCUSDT/1m")]
    # the hourly stream is still fine at that time, and names itself when it goes stale
    assert checks(snap, T0 + 60 * MIN + 30_001) == [("stream", "BTCUSDT/1m"), ("stream", "ETHUSDT/1h")]
    problem = assess(snap, T0 + 2 * MIN, POLICY).problems[0]
    assert problem.detail == "last closed candle 120 s ago; expected within 90 s"


def test_before_its_first_candle_a_stream_counts_from_when_it_was_wanted() -> None:
    snap = StatusSnapshot(streams=(stream(BTC, None, since_ms=T0),))
    assert checks(snap, T0 + 90_000) == []
    assert checks(snap, T0 + 90_001) == [("stream", "BTCUSDT/1m")]
    assert assess(snap, T0 + 90_001, POLICY).problems[0].detail.startswith("no closed candle yet")


def test_an_evaluation_backlog_is_a_problem_only_once_a_candle_waited_past_the_grace() -> None:
    assert checks(StatusSnapshot(evaluation_backlog=200, evaluation_wait_s=0.6), T0) == []  # the minute burst
    assert checks(StatusSnapshot(evaluation_backlog=3, evaluation_wait_s=31), T0) == [("evaluation", "engine")]
    assert checks(StatusSnapshot(evaluation_backlog=0, evaluation_wait_s=99), T0) == []


def test_stalls_outbox_bans_and_startup() -> None:
    assert checks(StatusSnapshot(stalled=(Stall("writer", 120),)), T0) == [("stalled", "writer")]
    assert checks(StatusSnapshot(outbox_depth=99), T0) == []
    assert checks(StatusSnapshot(outbox_depth=100), T0) == [("outbox", "supabase")]
    assert checks(StatusSnapshot(outbox_depth=None), T0) == []
    banned = StatusSnapshot(bans=(("binance", T0 + 60_000),))
    assert checks(banned, T0) == [("broker", "binance")]
    assert checks(banned, T0 + 60_000) == []  # the ban has ended
    assert checks(StatusSnapshot(ready=False), T0) == [("startup", "daemon")]


def test_a_failing_task_and_a_supervisor_that_gave_up_are_red() -> None:
    ok = TaskHealth("market-feed", restarts=1, recent_crashes=1, down=False, failing=False, last_error="E: x")
    failing = TaskHealth("control", restarts=2, recent_crashes=2, down=False, failing=True, last_error="E: boom")
    assert checks(StatusSnapshot(tasks=(ok,)), T0) == []
    health = assess(StatusSnapshot(tasks=(ok, failing)), T0, POLICY)
    assert [(p.check, p.subject) for p in health.problems] == [("supervisor", "control")]
    assert health.problems[0].detail == "2 crash(es) in the restart window, running again; last: E: boom"
    assert checks(StatusSnapshot(supervisor_gave_up=True), T0) == [("supervisor", "daemon")]


def test_every_problem_is_in_the_json_body() -> None:
    snap = StatusSnapshot(streams=(stream(BTC, T0 - 10 * MIN),), stalled=(Stall("feed", 130),), outbox_depth=500)
    body = assess(snap, T0, POLICY).as_json()
    assert body["status"] == "unhealthy"
    assert [p["check"] for p in body["problems"]] == ["stream", "stalled", "outbox"]
    assert body["streams"] == {"BTCUSDT/1m": 540.0}
