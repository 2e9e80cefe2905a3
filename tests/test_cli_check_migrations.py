"""`dbscope check`'s migrations line when it cannot answer "at head": a version table the user
may not read, a POSTGRES_SCHEMA that does not exist, an alembic.ini whose sqlalchemy.url
names another database than the app's. Each in one line, no traceback, no password."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dbscope import Database
from dbscope import alembic as migrations
from tests.alembic_projects import write_project
from tests.cli_runs import SECRET, dbscope, output_of
from tests.documented import ROOT
from tests.helpers import admin, without_tables

EXAMPLE_INI = ROOT / "examples" / "notes" / "alembic.ini"


def migrations_line(output: str) -> str:
    """The value of `dbscope check`'s migrations line."""
    found = re.search(r"^migrations:\s+(.*)$", output, re.MULTILINE)
    assert found is not None, output
    return found[1]


@pytest.fixture
def example_tables(database_url: str) -> Iterator[str]:
    """The test database's URL, without the example's tables before and after the test."""
    yield from without_tables(database_url, "example_notes", "example_authors", "alembic_version")


@pytest.fixture
async def reader_url(example_tables: str) -> AsyncIterator[str]:
    """The URL as a role of the test's own, with a password, that may connect and nothing
    more: the version table is not its to read."""
    role = f"dbscope_check_{os.getpid()}"
    async with admin(example_tables) as connection:
        await connection.execute(text(f"DROP ROLE IF EXISTS {role}"))
        await connection.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'"))
    yield (
        make_url(example_tables)
        .set(username=role, password=SECRET)
        .render_as_string(hide_password=False)
    )
    async with admin(example_tables) as connection:
        await connection.execute(text(f"DROP ROLE {role}"))


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_check_reports_a_version_table_the_user_may_not_read_in_its_line(
    example_tables: str, reader_url: str
) -> None:
    """Permission denied on alembic_version: `migrations: FAIL` with the server's words, exit
    1, not three chained tracebacks."""
    async with Database(example_tables) as db:
        await migrations.upgrade(db, config=EXAMPLE_INI)
    done = await dbscope("check", "-c", str(EXAMPLE_INI), environment={"DATABASE_URL": reader_url})
    line = migrations_line(done.stdout.decode())
    assert done.returncode == 1, output_of(done)
    assert line.startswith("FAIL cannot read the version table"), line
    assert "permission denied for table alembic_version" in line
    assert "Traceback" not in output_of(done)
    assert SECRET not in output_of(done)


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_check_with_a_schema_that_does_not_exist_says_so_as_migrate_does(
    database_url: str,
) -> None:
    """POSTGRES_SCHEMA naming no schema: check gives migrate's line (the CREATE SCHEMA to run),
    not "never migrated, run: dbscope migrate upgrade head", which migrate then refuses."""
    schema = f"dbscope_nowhere_{os.getpid()}"
    environment = {"DATABASE_URL": database_url, "POSTGRES_SCHEMA": schema}
    config = ("-c", str(EXAMPLE_INI))
    checked = await dbscope("check", *config, environment=environment)
    migrated = await dbscope("migrate", *config, "upgrade", "head", environment=environment)
    said = checked.stderr.decode().splitlines()
    assert checked.returncode == 2, output_of(checked)
    assert said == migrated.stderr.decode().splitlines()[-1:]
    assert said[0].startswith(f"dbscope: error: The schema {schema!r} that the settings name")
    assert f"CREATE SCHEMA {schema};" in said[0]
    assert "not at head" not in output_of(checked)


async def test_check_of_an_alembic_ini_whose_url_names_another_database_fails_naming_both(
    tmp_path: Path, sqlite_url: str
) -> None:
    """sqlalchemy.url in alembic.ini, which migrate uses, names another database than the
    app's: check fails naming both places, without the password, not "at head" of the app's;
    naming the app's, it checks it as ever."""
    project = write_project(tmp_path, ini=f"sqlalchemy.url = {sqlite_url}\n")
    environment = {"DATABASE_URL": sqlite_url}
    migrated = await dbscope("migrate", "-c", str(project), "upgrade", "head", environment={})
    same = await dbscope("check", "-c", str(project), environment=environment)
    elsewhere = f"postgresql://app:{SECRET}@127.0.0.1:5999/elsewhere"
    project.write_text(project.read_text().replace(sqlite_url, elsewhere))
    other = await dbscope("check", "-c", str(project), environment=environment)
    line = migrations_line(other.stdout.decode())
    assert migrated.returncode == 0, output_of(migrated)
    assert same.returncode == 0, output_of(same)
    assert migrations_line(same.stdout.decode()).startswith("at head (0001;")
    assert other.returncode == 1, output_of(other)
    assert line.startswith(f"FAIL {project} sets sqlalchemy.url to another database"), line
    assert "(postgresql+asyncpg://app:***@127.0.0.1:5999/elsewhere)" in line
    assert f"({sqlite_url})" in line
    assert SECRET not in output_of(other)
