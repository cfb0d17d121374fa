"""The mirror: strategies (and the portfolios they name) edited in the web app come down into the
local store, so the engine and control loop keep reading SQLite and never wait on the network.

Each poll reads the rows changed since the newest ``updated_at`` seen, with keyset paging on
``(updated_at, id)`` (pages of ``page`` rows, none skipped or read twice within a poll), starting
``overlap_s`` before that mark: a transaction that committed late with an earlier timestamp is
still seen, and reading a row twice is harmless because applying is idempotent.

Applying is a three-way merge per field (:func:`merge`), against ``base``, the row as last seen
remotely (kept in ``sync_strategy_base``): a field the remote side changed since then is taken;
a field it did not change keeps the local value. So the app's edits (start, stop, code,
parameters, archive, new strategies) arrive, while the daemon's own writes (status ``error``,
``error_message``; run times are not mirrored at all) never bounce back as edits: when they come
back from Supabase they equal the local value, and while they are still in the outbox the
remote value equals ``base`` and is ignored. The mirror's local writes are taken out of the
outbox in the same transaction (they came from Supabase; shipping them back would echo).

Errors: ``SupabaseUnavailable`` from a poll (the caller retries on its schedule).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import structlog

from ..store.outbox import Outbox
from .client import SupabaseGateway

__all__ = ["MIRRORED", "Mirror", "merge"]

log = structlog.get_logger(__name__)

MIRRORED = (
    "user_id", "name", "python_code", "typescript_code", "asset", "interval", "status", "portfolio_id",
    "parameters", "kind", "error_message",
)  # fmt: skip
"""The fields of a strategy row the web app owns (or may set): compared and copied."""
_SELECT = "id," + ",".join(MIRRORED) + ",created_at,updated_at"
_HW = "mirror_updated_at"


def merge(local: Mapping[str, Any] | None, base: Mapping[str, Any] | None, remote: Mapping[str, Any]) -> dict[str, Any]:
    """The local fields to change so the local row reflects the remote side's edits: every field
    whose remote value differs from ``base`` (all of them for a row never seen) and from the
    local value."""
    changes = {}
    for name in MIRRORED:
        value = remote.get(name)
        if base is not None and name in base and base[name] == value:
            continue  # not edited remotely since last seen: local wins (it may be newer)
        if local is None or local.get(name) != value:
            changes[name] = value
    if changes.get("status") == "running" and "error_message" not in changes and local and local.get("error_message"):
        changes["error_message"] = None  # restarted in the app: the old error no longer applies
    return changes


@dataclass(frozen=True, slots=True)
class MirrorResult:
    changed: tuple[str, ...]  # strategy ids whose local row changed
    seen: int


class Mirror:
    def __init__(
        self,
        outbox: Outbox,
        gateway: SupabaseGateway,
        *,
        page: int = 200,
        overlap_s: float = 5.0,
        on_portfolio: Callable[[str, Decimal], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._gateway = gateway
        self._page = page
        self._overlap = timedelta(seconds=overlap_s)
        self._on_portfolio = on_portfolio or (lambda pid, cash: None)
        self.polls = 0

    async def poll(self) -> MirrorResult:
        """Read every row changed since the last poll and apply it."""
        mark = self._outbox.get_state(_HW)
        start = None if mark is None else (datetime.fromisoformat(mark) - self._overlap).isoformat()
        after: tuple[str, str] | None = None
        changed: list[str] = []
        seen = 0
        newest = mark
        while True:
            if after is not None:
                at, sid = after
                where = f'updated_at.gt."{at}",and(updated_at.eq."{at}",id.gt.{sid})'
            elif start is not None:
                where = f'updated_at.gte."{start}"'
            else:
                where = None
            rows = await self._gateway.select(
                "strategies", _SELECT, or_=where, order=("updated_at", "id"), limit=self._page
            )
            await self._portfolios(rows)
            changed.extend(self._apply(rows))
            seen += len(rows)
            if rows:
                after = (str(rows[-1]["updated_at"]), str(rows[-1]["id"]))
                if newest is None or datetime.fromisoformat(after[0]) > datetime.fromisoformat(newest):
                    newest = after[0]
            if len(rows) < self._page:
                break
        if newest is not None and newest != mark:
            self._outbox.set_state(_HW, newest)
        self.polls += 1
        return MirrorResult(tuple(changed), seen)

    async def _portfolios(self, rows: list[dict[str, Any]]) -> None:
        """Portfolios the strategies name that the local store lacks come down first (the
        local store's foreign key, and the paper account's cash, need them)."""
        wanted = {str(r["portfolio_id"]) for r in rows if r.get("portfolio_id")}
        if not wanted:
            return
        db = self._outbox.db
        known = {
            r[0]
            for r in db.execute(f"SELECT id FROM portfolios WHERE id IN ({','.join('?' * len(wanted))})", tuple(wanted))
        }
        missing = sorted(wanted - known)
        if not missing:
            return
        found = await self._gateway.select(
            "portfolios", "id,user_id,name,type,cash:cash::text,currency,created_at", in_={"id": missing}
        )
        with self._outbox.transaction():
            for p in found:
                db.execute(
                    "INSERT OR IGNORE INTO portfolios (id, user_id, name, type, cash, currency, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (p["id"], p["user_id"], p["name"], p["type"], p["cash"], p["currency"], p["created_at"]),
                )
        for p in found:
            self._on_portfolio(str(p["id"]), Decimal(p["cash"]))
            log.info("portfolio mirrored from supabase", portfolio_id=p["id"], name=p["name"])

    def _apply(self, rows: list[dict[str, Any]]) -> list[str]:
        if not rows:
            return []
        db = self._outbox.db
        changed = []
        with self._outbox.transaction():
            (before,) = db.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()
            for remote in rows:
                sid = str(remote["id"])
                base_row = db.execute("SELECT fields FROM sync_strategy_base WHERE strategy_id = ?", (sid,)).fetchone()
                base = None if base_row is None else orjson.loads(base_row[0])
                local_row = db.execute(f"SELECT {','.join(MIRRORED)} FROM strategies WHERE id = ?", (sid,)).fetchone()
                local = None if local_row is None else _local(local_row)
                fields = {name: remote.get(name) for name in MIRRORED}
                changes = merge(local, base, fields)
                if local is None:
                    db.execute(
                        f"INSERT INTO strategies (id, {','.join(MIRRORED)}, created_at, updated_at) "
                        f"VALUES (?, {','.join('?' * len(MIRRORED))}, ?, ?)",
                        (sid, *(_sql(n, fields[n]) for n in MIRRORED), remote["created_at"], remote["updated_at"]),
                    )
                elif changes:
                    sets = ", ".join(f"{n} = ?" for n in changes)
                    db.execute(
                        f"UPDATE strategies SET {sets}, updated_at = ? WHERE id = ?",
                        (*(_sql(n, v) for n, v in changes.items()), remote["updated_at"], sid),
                    )
                if local is None or changes:
                    changed.append(sid)
                    log.info("strategy mirrored from supabase", strategy_id=sid, fields=sorted(changes))
                db.execute(
                    "INSERT INTO sync_strategy_base (strategy_id, fields) VALUES (?, ?) "
                    "ON CONFLICT (strategy_id) DO UPDATE SET fields = excluded.fields",
                    (sid, orjson.dumps(fields).decode()),
                )
            # What came from Supabase does not go back to it.
            db.execute("DELETE FROM outbox WHERE seq > ?", (before,))
        return changed


def _local(row: tuple[Any, ...]) -> dict[str, Any]:
    values = dict(zip(MIRRORED, row, strict=True))
    values["parameters"] = orjson.loads(values["parameters"] or "{}")
    return values


def _sql(name: str, value: Any) -> Any:
    if name == "parameters":
        return orjson.dumps(value if value is not None else {}).decode()
    return value
