"""``tradebotd db migrate``: the Supabase migrations apply on an empty PostgreSQL, once each."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tradebotd.cli import main
from tradebotd.sync.pgmigrate import MigrationError, apply_migrations, load_migrations, migrations_dir

from .conftest import Databases


def _schema(dsn: str) -> list[tuple[object, ...]]:
    """Everything a migration can change that matters here: columns, constraints, indexes,
    policies, functions, triggers, roles' grants."""
    with psycopg.connect(dsn) as conn:
        return [
            *conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2"
            ).fetchall(),
            *conn.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint ORDER BY 1, 2").fetchall(),
            *conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall(),
            *conn.execute("SELECT tablename, policyname, qual, with_check FROM pg_policies ORDER BY 1, 2").fetchall(),
            *conn.execute(
                "SELECT p.proname, pg_get_function_identity_arguments(p.oid), p.proacl::text FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname IN ('public', 'auth') ORDER BY 1, 2"
            ).fetchall(),
            *conn.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1").fetchall(),
            *conn.execute(
                "SELECT table_name, grantee, privilege_type FROM information_schema.role_table_grants "
                "WHERE table_schema = 'public' ORDER BY 1, 2, 3"
            ).fetchall(),
        ]


def test_migrations_apply_on_an_empty_database_and_twice_without_change(databases: Databases) -> None:
    dsn = databases.create("migrate")
    files = load_migrations()
    applied = apply_migrations(dsn)
    assert [m.version for m in applied] == [m.version for m in files]
    after_first = _schema(dsn)
    assert apply_migrations(dsn) == []  # nothing pending: nothing run
    assert _schema(dsn) == after_first
    with psycopg.connect(dsn) as conn:
        ledger = conn.execute("SELECT version, name FROM supabase_migrations.schema_migrations ORDER BY 1").fetchall()
    assert ledger == [(m.version, m.name) for m in files]


def test_the_supabase_cli_ledger_is_respected(databases: Databases) -> None:
    """A version `supabase db push` recorded is not applied again (the CLI's ledger is ours)."""
    dsn = databases.create("ledger")
    first = load_migrations()[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA supabase_migrations")
        # the table as the Supabase CLI creates it, with a version it applied
        conn.execute(
            "CREATE TABLE supabase_migrations.schema_migrations "
            "(version text PRIMARY KEY, statements text[], name text)"
        )
        conn.execute(first.sql)
        conn.execute(
            "INSERT INTO supabase_migrations.schema_migrations VALUES (%s, '{}', %s)", (first.version, first.name)
        )
    applied = apply_migrations(dsn)
    assert first.version not in [m.version for m in applied]
    assert len(applied) == len(load_migrations()) - 1


def test_a_failing_migration_applies_nothing_of_itself(databases: Databases, tmp_path: Path) -> None:
    dsn = databases.create("broken")
    (tmp_path / "20990101000000_good.sql").write_text("CREATE TABLE good (x int);")
    (tmp_path / "20990101000001_bad.sql").write_text("CREATE TABLE half (x int); SELECT no_such_function();")
    with pytest.raises(MigrationError, match=r"20990101000001_bad\.sql failed"):
        apply_migrations(dsn, load_migrations(tmp_path))
    with psycopg.connect(dsn) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        versions = [r[0] for r in conn.execute("SELECT version FROM supabase_migrations.schema_migrations")]
    assert tables == {"good"}
    assert versions == ["20990101000000"]


def test_misnamed_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "001_init.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="YYYYMMDDHHMMSS"):
        load_migrations(tmp_path)


def test_files_are_in_the_supabase_cli_layout() -> None:
    directory = migrations_dir()
    assert directory.parts[-3:] == ("deploy", "supabase", "migrations")
    assert all(p.name.endswith(".sql") for p in directory.iterdir())


def test_cli_db_migrate(databases: Databases, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = databases.create("cli")
    assert main(["db", "migrate", "--dsn", dsn]) == 0
    out = capsys.readouterr().out
    assert f"applied {len(load_migrations())} migrations" in out
    assert main(["db", "migrate", "--dsn", dsn]) == 0
    assert "up to date" in capsys.readouterr().out


def test_cli_db_migrate_unreachable_database_hides_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["db", "migrate", "--dsn", "postgresql://me:hunter2-secret@127.0.0.1:1/nowhere?connect_timeout=2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot connect" in err
    assert "hunter2-secret" not in err
