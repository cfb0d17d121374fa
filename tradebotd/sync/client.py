"""The Supabase gateway: the only module that calls the ``supabase`` client, and the one place its
exceptions become ours.

It wraps ``supabase.acreate_client`` (async; PostgREST over httpx) with the few calls the sync
makes. The client's own GET retries are off (``postgrest_client_retry=False``): the replicator,
the mirror and the leases each retry on their own schedule with backoff, and a client retrying
behind them would only hide an outage for seven seconds per call.

Errors (a ``StoreError``):

    SupabaseError
    ├── SupabaseUnavailable  network error, timeout, 5xx, a bad key or missing migration: retry
    │                        later (the request is fine, the other end is not)
    └── SupabaseRejected     the row itself is refused for good (PostgreSQL data exception 22xxx
                             or integrity violation 23xxx): retrying cannot help
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
from postgrest import APIError
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from ..errors import StoreError

__all__ = ["SupabaseError", "SupabaseGateway", "SupabaseRejected", "SupabaseUnavailable"]


class SupabaseError(StoreError):
    """A call to Supabase failed."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class SupabaseUnavailable(SupabaseError):
    """Try again later; nothing is wrong with what was sent."""


class SupabaseRejected(SupabaseError):
    """The rows sent are refused for good (bad data, integrity)."""


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except APIError as exc:
        code = exc.code or ""
        message = f"{what}: {exc.message or exc}" + (f" ({exc.details})" if exc.details else "")
        if code[:2] in ("22", "23"):
            raise SupabaseRejected(message, code) from None
        raise SupabaseUnavailable(message, code or None) from None
    except (httpx.HTTPError, OSError) as exc:
        raise SupabaseUnavailable(f"{what}: {type(exc).__name__}: {exc}") from None


class SupabaseGateway:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @classmethod
    async def connect(cls, url: str, key: str, *, timeout_s: float = 10.0) -> SupabaseGateway:
        """Makes no request (the client connects lazily)."""
        options = AsyncClientOptions(postgrest_client_retry=False, postgrest_client_timeout=timeout_s)
        with _translated("supabase client"):
            return cls(await acreate_client(url, key, options=options))

    async def upsert(
        self, table: str, rows: Sequence[Mapping[str, Any]], *, on_conflict: Sequence[str], ignore_duplicates: bool
    ) -> None:
        with _translated(f"upsert into {table}"):
            await (
                self._client.table(table)
                .upsert(
                    [dict(r) for r in rows],
                    on_conflict=",".join(on_conflict),
                    ignore_duplicates=ignore_duplicates,
                    returning="minimal",  # type: ignore[arg-type]
                )
                .execute()
            )

    async def delete_in(self, table: str, column: str, values: Sequence[str]) -> None:
        with _translated(f"delete from {table}"):
            await self._client.table(table).delete(returning="minimal").in_(column, list(values)).execute()  # type: ignore[arg-type]

    async def patch(self, table: str, key: str, value: str, fields: Mapping[str, Any]) -> None:
        with _translated(f"update {table}"):
            await self._client.table(table).update(dict(fields), returning="minimal").eq(key, value).execute()  # type: ignore[arg-type]

    async def rpc(self, function: str, params: Mapping[str, Any]) -> Any:
        with _translated(f"rpc {function}"):
            return (await self._client.rpc(function, dict(params)).execute()).data

    async def select(
        self,
        table: str,
        columns: str,
        *,
        eq: Mapping[str, str] | None = None,
        in_: Mapping[str, Sequence[str]] | None = None,
        or_: str | None = None,
        order: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        with _translated(f"select from {table}"):
            query = self._client.table(table).select(columns)
            for column, value in (eq or {}).items():
                query = query.eq(column, value)
            for column, values in (in_ or {}).items():
                query = query.in_(column, list(values))
            if or_ is not None:
                query = query.or_(or_)
            for column in order:
                query = query.order(column)
            if limit is not None:
                query = query.limit(limit)
            data = (await query.execute()).data
        return [dict(r) for r in data if isinstance(r, dict)]

    async def close(self) -> None:
        """Close the HTTP connections (the client has no close of its own in 2.34)."""
        session = getattr(self._client.postgrest, "session", None)
        if session is not None:
            await session.aclose()
