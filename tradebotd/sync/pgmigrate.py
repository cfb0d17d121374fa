"""``tradebotd db migrate --dsn postgresql://...``: apply the Supabase migrations to a PostgreSQL.

The SQL lives in ``deploy/supabase/migrations/<version>_<name>.sql`` (the Supabase CLI layout, so
``supabase db push`` applies the same files; wheels carry them as ``tradebotd/sync/migrations``).
Each file is applied once, in version order, in its own transaction together with its ledger row.

The ledger is the Supabase CLI's own, ``supabase_migrations.schema_migrations (version, statements,
name)``: a database migrated by ``supabase db push`` is seen as migrated here and the other way
round. (The CLI stores a file split into statements; this stores the file as one element, which is
all either tool reads back: the version.) An advisory lock keeps two concurrent runs from applying
the same file twice.

Errors: :class:`MigrationError` (a ``StoreError``): unreachable database, a badly named file, a
failed file (nothing of it applied, and nothing after it tried).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import StoreError

__all__ = ["Migration", "MigrationError", "apply_migrations", "load_migrations", "migrations_dir"]

_FILE = re.compile(r"^(?P<version>[0-9]{14})_(?P<name>[a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x74726164  # "trad": pg_advisory_lock key for `db migrate`

_LEDGER = """
CREATE SCHEMA IF NOT EXISTS supabase_migrations;
CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations (version text NOT NULL PRIMARY KEY);
ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS statements text[];
ALTER TABLE supabase_migrations.schema_migrations ADD COLUMN IF NOT EXISTS name text;
"""


class MigrationError(StoreError):
    """The migrations could not be applied; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str


def migrations_dir() -> Path:
    """Where the SQL files are: inside the package when installed from a wheel, else the
    repository's ``deploy/supabase/migrations`` (editable installs, a checkout)."""
    packaged = Path(str(resources.files("tradebotd.sync") / "migrations"))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "deploy" / "supabase" / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Every migration file, in version order; a file not named ``<14 digits>_<name>.sql`` is an
    error (the Supabase CLI would skip it silently, and then the two tools would disagree)."""
    directory = directory or migrations_dir()
    found = []
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named <YYYYMMDDHHMMSS>_<name>.sql")
        found.append(Migration(match["version"], match["name"], path.read_text()))
    if not found:
        raise MigrationError(f"no migrations in {directory}")
    return found


def apply_migrations(dsn: str, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply the pending migrations; returns those applied now (empty when up to date)."""
    import psycopg  # only `db migrate` and the tests need a PostgreSQL driver loaded

    migrations = load_migrations() if migrations is None else migrations
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise MigrationError(f"cannot connect to the database: {_masked(_first_line(exc), dsn)}") from None
    applied: list[Migration] = []
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(_LEDGER)
            done = {row[0] for row in conn.execute("SELECT version FROM supabase_migrations.schema_migrations")}
            # Versions this list does not have are the web app's own migrations: not ours to judge.
            for migration in migrations:
                if migration.version in done:
                    continue
                try:
                    with conn.transaction():
                        conn.execute(migration.sql.encode())
                        conn.execute(
                            "INSERT INTO supabase_migrations.schema_migrations (version, statements, name) "
                            "VALUES (%s, %s, %s)",
                            (migration.version, [migration.sql], migration.name),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name}.sql failed (nothing of it was applied): "
                        f"{_first_line(exc)}"
                    ) from None
                applied.append(migration)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def _masked(message: str, dsn: str) -> str:
    """Errors are printed, not logged: take the DSN's password out of them here."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = str(conninfo_to_dict(dsn).get("password") or "")
    except Exception:
        return message.replace(dsn, "<dsn>")
    return message.replace(password, "**********") if password else message


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
