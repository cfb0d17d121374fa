"""PostgreSQL fixtures for the Supabase tests: a fresh database per test run (migrated once,
dropped at the end), the PostgREST stand-in on it per test, and signed keys.

The server is ``TRADEBOTD_TEST_PG_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
which these machines run). Without a reachable PostgreSQL every test using these fixtures is
skipped with the reason (``-ra`` prints it in the summary), never silently passed.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from tests.standins.postgrest import PostgrestStandin, sign_jwt
from tradebotd.sync.pgmigrate import apply_migrations

ADMIN_DSN = os.environ.get("TRADEBOTD_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
JWT_SECRET = "tradebotd-test-jwt-secret-with-at-least-32-chars"
SERVICE_KEY = sign_jwt({"iss": "supabase", "role": "service_role"}, JWT_SECRET)
ANON_KEY = sign_jwt({"iss": "supabase", "role": "anon"}, JWT_SECRET)
TABLES = (
    "strategy_leases, order_fills, orders, strategy_cursors, positions, trades, strategy_logs, market_data, "
    "strategies, portfolios"
)


def user_jwt(sub: str) -> str:
    """What Clerk (via Supabase third-party auth) gives a signed-in user."""
    return sign_jwt({"sub": sub, "role": "authenticated", "exp": int(time.time()) + 3600}, JWT_SECRET)


def dsn_for(database: str) -> str:
    params = conninfo_to_dict(ADMIN_DSN)
    params["dbname"] = database
    return make_conninfo(**params)  # type: ignore[arg-type]


class Databases:
    """Creates databases on the test server and drops them all at the end of the run."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self, label: str) -> str:
        name = f"tradebotd_test_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return dsn_for(name)

    def drop_all(self) -> None:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    try:
        psycopg.connect(ADMIN_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL reachable at TRADEBOTD_TEST_PG_DSN={ADMIN_DSN!r}: {str(exc).strip()}")
    dbs = Databases()
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def pg_dsn(databases: Databases) -> str:
    """A database of this test run with every migration applied."""
    dsn = databases.create("run")
    apply_migrations(dsn)
    return dsn


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A superuser connection to the run's database, emptied before the test."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        yield conn


@pytest.fixture
async def rest(pg_dsn: str, pg: psycopg.Connection[tuple[object, ...]]) -> AsyncIterator[PostgrestStandin]:
    async with PostgrestStandin(pg_dsn, jwt_secret=JWT_SECRET) as standin:
        yield standin


async def client(
    rest: PostgrestStandin, key: str = SERVICE_KEY, *, jwt: str | None = None, retry: bool = False
) -> AsyncClient:
    """The real async supabase client on the stand-in; ``jwt`` signs requests as a user (the web
    app passes Clerk's token the same way)."""
    options = AsyncClientOptions(postgrest_client_retry=retry)
    if jwt is not None:
        options.headers["Authorization"] = f"Bearer {jwt}"
    return await acreate_client(rest.url, key, options=options)
