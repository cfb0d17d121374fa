"""Health as a pure function: a :class:`~tradebotd.ops.status.StatusSnapshot` and the time in,
a verdict naming everything that is stale out. ``GET /healthz`` and ``tradebotd status`` show it;
tests call :func:`assess` with hand-made snapshots, no server, no clock.

Healthy means the pipeline *progresses*, not that the process is alive:

- ``stream``: for every wanted stream, the newest closed candle closed at most one interval
  plus ``grace_s`` ago (server time). Before the first candle, the clock starts when the stream
  was wanted. A 1-minute stream is red about ``60 + grace_s`` seconds after a candle went missing.
- ``evaluation``: no closed candle has waited longer than ``grace_s`` to be evaluated (a burst
  at the minute boundary is work in progress, not a backlog).
- ``stalled``: the progress watchdog's verdict (a part with work that did none for
  ``daemon.progress_timeout_s``: feed frames, evaluations, commits) -- the same one that
  withholds systemd's ``WATCHDOG=1``.
- ``outbox``: the Supabase outbox holds fewer than ``outbox_threshold`` rows.
- ``broker``: no broker is in an exchange ban (HTTP 418).
- ``supervisor``: no background task keeps crashing; the supervisor has not given up.
- ``startup``: the daemon has finished starting (``READY=1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .status import StatusSnapshot

__all__ = ["Health", "HealthPolicy", "Problem", "assess"]


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    grace_s: float = 60.0  # http.health_grace_s
    outbox_threshold: int = 10_000  # http.outbox_threshold


@dataclass(frozen=True, slots=True)
class Problem:
    check: str  # stream | evaluation | stalled | outbox | broker | supervisor | startup
    subject: str  # what is stale: a stream ("BTCUSDT/1m"), a part, a broker, a task
    detail: str  # one human-readable sentence with the numbers

    def as_json(self) -> dict[str, str]:
        return {"check": self.check, "subject": self.subject, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Health:
    problems: tuple[Problem, ...]
    streams: tuple[tuple[str, float | None], ...]  # (stream, seconds since its last candle closed)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "unhealthy",
            "problems": [p.as_json() for p in self.problems],
            "streams": {name: age for name, age in self.streams},
        }


def assess(snap: StatusSnapshot, now_ms: int, policy: HealthPolicy) -> Health:
    """Judge ``snap`` at server time ``now_ms``."""
    problems: list[Problem] = []
    grace_ms = int(policy.grace_s * 1000)
    if not snap.ready:
        problems.append(Problem("startup", "daemon", "still starting: not ready yet"))

    ages: list[tuple[str, float | None]] = []
    for stream in snap.streams:
        closed = stream.last_closed_close_ms
        age = None if closed is None else max(0, now_ms - closed) / 1000
        ages.append((str(stream.key), age))
        allowed_ms = stream.key.interval_ms + grace_ms
        reference = stream.wanted_since_ms if closed is None else closed
        if now_ms - reference > allowed_ms:
            what = "no closed candle yet" if closed is None else f"last closed candle {age:.0f} s ago"
            problems.append(Problem("stream", str(stream.key), f"{what}; expected within {allowed_ms / 1000:.0f} s"))

    if snap.evaluation_backlog and snap.evaluation_wait_s > policy.grace_s:
        problems.append(
            Problem(
                "evaluation",
                "engine",
                f"{snap.evaluation_backlog} closed candle(s) waiting, the oldest for {snap.evaluation_wait_s:.0f} s",
            )
        )
    for stall in snap.stalled:
        problems.append(Problem("stalled", stall.part, f"had work but made no progress for {stall.idle_s:.0f} s"))
    if snap.outbox_depth is not None and snap.outbox_depth >= policy.outbox_threshold:
        problems.append(
            Problem("outbox", "supabase", f"{snap.outbox_depth} rows waiting (threshold {policy.outbox_threshold})")
        )
    for broker, until_ms in snap.bans:
        if until_ms > now_ms:
            problems.append(
                Problem("broker", broker, f"exchange ban (HTTP 418) for {(until_ms - now_ms) / 1000:.0f} s more")
            )
    if snap.supervisor_gave_up:
        problems.append(Problem("supervisor", "daemon", "too many task crashes; the daemon is exiting"))
    for task in snap.tasks:
        if task.failing:
            state = "down, restarting" if task.down else "running again"
            problems.append(
                Problem(
                    "supervisor",
                    task.name,
                    f"{task.recent_crashes} crash(es) in the restart window, {state}; last: {task.last_error or '?'}",
                )
            )
    return Health(tuple(problems), tuple(ages))
