"""The `dbscope` command, run as a subprocess with nothing but the settings each test gives.

Every run starts from this process's environment without any database setting
(tests/cli_runs.py). `dbscope check`, `dbscope migrate` and the guide's lines here;
`dbscope shell` in tests/test_cli_shell.py.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import make_url

from dbscope import Database
from dbscope import alembic as migrations
from dbscope._cli import main
from dbscope.testing import own_database
from tests.cli_runs import DBSCOPE, SECRET, dbscope, nowhere, output_of
from tests.documented import ROOT, block_containing
from tests.helpers import (
    postgres_parts,
    without_settings,
    without_tables,
)

# The fixture secret_url.
pytest_plugins = ["tests.cli_fixtures"]

EXAMPLE_INI = ROOT / "examples" / "notes" / "alembic.ini"


def lines(text: str) -> dict[str, str]:
    """`name: value` lines of `dbscope check`, by name."""
    found = (re.match(r"(\w+):\s+(.*)", line) for line in text.splitlines())
    return {match[1]: match[2] for match in found if match}


@pytest.fixture
def example_clean(database_url: str) -> Iterator[str]:
    """The URL of an empty database made for the test (``<name>_test``), dropped after it:
    `alembic check` compares the whole database with the models, so another test's tables in
    the shared one would read as a change."""
    with own_database(database_url) as url:
        yield url


@pytest.fixture
def example_tables(database_url: str) -> Iterator[str]:
    """The test database's URL, without the example's tables before and after the test."""
    yield from without_tables(database_url, "example_notes", "example_authors", "alembic_version")


# -- dbscope check -----------------------------------------------------------------------------


async def test_check_with_only_database_url_succeeds_and_shows_no_password(
    secret_url: str,
) -> None:
    """DATABASE_URL alone: exit 0, the server and latency shown, the password nowhere."""
    done = await dbscope("check", environment={"DATABASE_URL": secret_url})
    shown = lines(done.stdout.decode())
    assert done.returncode == 0, output_of(done)
    assert shown["server"].split()[-1][0].isdigit()
    assert "median of 5 round trips" in shown["latency"]
    assert SECRET not in output_of(done)
    assert shown["database"] == make_url(secret_url).render_as_string(hide_password=True)


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_check_with_only_the_postgres_parts_succeeds(database_url: str) -> None:
    """POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_HOST, POSTGRES_PORT, POSTGRES_DB alone."""
    parts = postgres_parts(database_url, SECRET)
    done = await dbscope("check", environment=parts)
    assert done.returncode == 0, output_of(done)
    assert lines(done.stdout.decode())["server"].startswith("PostgreSQL ")
    assert SECRET not in output_of(done)


async def test_check_of_an_unreachable_server_exits_1_in_one_line_without_the_password() -> None:
    """No server at the URL: exit 1, one error line naming host and port, no traceback."""
    url = nowhere()
    done = await dbscope("check", environment={"DATABASE_URL": url})
    errors = done.stderr.decode().splitlines()
    assert done.returncode == 1
    assert len(errors) == 1
    assert errors[0].startswith(
        f"dbscope: error: Could not connect to postgresql at 127.0.0.1:{make_url(url).port}"
    )
    assert SECRET not in output_of(done)


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"DATABASE_URL": f"postgresql+psycopg2://app:{SECRET}@db/app"}, "DATABASE_URL"),
        ({"DATABASE_URL": "sqlite+aiosqlite:///app.db", "POOL_TIMEOUT": "-1"}, "POOL_TIMEOUT"),
        ({}, "DATABASE_URL"),
    ],
)
async def test_check_with_a_bad_setting_exits_2_in_one_line(
    variables: dict[str, str], named: str
) -> None:
    """A synchronous driver, a negative timeout, no database: exit 2, one line naming it."""
    done = await dbscope("check", environment=variables)
    errors = done.stderr.decode().splitlines()
    assert done.returncode == 2
    assert len(errors) == 1
    assert errors[0].startswith("dbscope: error: Invalid database settings:")
    assert named in errors[0]
    assert SECRET not in output_of(done)


async def test_check_with_a_prefix_reads_the_prefixed_variables(sqlite_url: str) -> None:
    """--prefix APP_ reads APP_DATABASE_URL, not DATABASE_URL."""
    environment = {"APP_DATABASE_URL": sqlite_url, "DATABASE_URL": nowhere()}
    done = await dbscope("check", "--prefix", "APP_", environment=environment)
    assert done.returncode == 0, output_of(done)
    assert lines(done.stdout.decode())["server"].startswith("SQLite ")


async def test_check_with_app_naming_something_else_exits_2() -> None:
    """--app naming a module attribute that is not a Database says what to name instead."""
    done = await dbscope("check", "--app", "examples.notes.app:app", environment={})
    assert done.returncode == 2
    assert "is a FastAPI, not a dbscope.Database" in done.stderr.decode()


async def test_check_with_app_whose_module_misses_a_package_shows_that_error(
    tmp_path: Path,
) -> None:
    """--app acme_hooks:db, whose module imports acme (not installed): Python's own error,
    not "there is no module 'acme_hooks' here", though acme begins its name."""
    (tmp_path / "acme_hooks.py").write_text("import acme\n")
    done = await dbscope("check", "--app", "acme_hooks:db", environment={}, cwd=tmp_path)
    assert "No module named 'acme'" in done.stderr.decode()
    assert "there is no module" not in done.stderr.decode()


async def test_check_fails_until_the_migrations_are_at_head(sqlite_url: str) -> None:
    """With -c alembic.ini: exit 1 before `dbscope migrate upgrade head`, exit 0 after."""
    environment = {"DATABASE_URL": sqlite_url}
    config = ("-c", str(EXAMPLE_INI))
    before = await dbscope("check", *config, environment=environment)
    migrated = await dbscope("migrate", *config, "upgrade", "head", environment=environment)
    after = await dbscope("check", *config, environment=environment)
    assert before.returncode == 1
    assert lines(before.stdout.decode())["migrations"].startswith("FAIL not at head")
    assert migrated.returncode == 0, output_of(migrated)
    assert after.returncode == 0, output_of(after)
    assert lines(after.stdout.decode())["migrations"].startswith("at head (0001;")


async def test_check_finds_the_alembic_ini_of_the_working_directory(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Without -c, ./alembic.ini is checked when there is one, and none is asked for if not."""
    (tmp_path / "alembic.ini").write_text(EXAMPLE_INI.read_text())
    (tmp_path / "migrations").symlink_to(EXAMPLE_INI.parent / "migrations")
    environment = {"DATABASE_URL": sqlite_url}
    with_ini = await dbscope("check", environment=environment, cwd=tmp_path)
    without = await dbscope("check", environment=environment, cwd=ROOT / "docs")
    assert with_ini.returncode == 1
    assert "FAIL not at head" in lines(with_ini.stdout.decode())["migrations"]
    assert without.returncode == 0, output_of(without)
    assert lines(without.stdout.decode())["migrations"].startswith("no alembic.ini here")


async def test_check_with_a_missing_alembic_ini_exits_2_before_connecting() -> None:
    """-c naming no file: exit 2 and nothing checked, even with the server unreachable."""
    done = await dbscope("check", "-c", "missing.ini", environment={"DATABASE_URL": nowhere()})
    assert done.returncode == 2
    assert done.stdout == b""
    assert "The Alembic configuration 'missing.ini' does not exist" in done.stderr.decode()


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_check_says_when_no_synchronous_standby_protects_commits(
    database_url: str,
) -> None:
    """The test server has no synchronous standby: said plainly; --require-standby fails."""
    environment = {"DATABASE_URL": database_url}
    done = await dbscope("check", environment=environment)
    required = await dbscope("check", "--require-standby", environment=environment)
    expected = "none: synchronous_standby_names is empty, so a commit waits for no standby"
    assert done.returncode == 0
    assert lines(done.stdout.decode())["standby"].startswith(expected)
    assert required.returncode == 1
    assert lines(required.stdout.decode())["standby"].startswith(f"FAIL {expected}")


async def test_check_of_a_database_without_standbys_says_they_do_not_apply(
    sqlite_url: str,
) -> None:
    """SQLite: the standby line says the question does not apply."""
    done = await dbscope("check", environment={"DATABASE_URL": sqlite_url})
    assert lines(done.stdout.decode())["standby"] == "not applicable to sqlite"


async def test_check_shows_an_in_memory_sqlite_url_as_it_is_written() -> None:
    """`sqlite+aiosqlite:///:memory:` on the database line, not SQLAlchemy's '%3Amemory%3A'."""
    url = "sqlite+aiosqlite:///:memory:"
    done = await dbscope("check", environment={"DATABASE_URL": url})
    assert done.returncode == 0, output_of(done)
    assert lines(done.stdout.decode())["database"] == url


@pytest.mark.parametrize(
    "command", [("check",), ("migrate", "-c", str(EXAMPLE_INI), "upgrade", "head", "--sql")]
)
async def test_a_reader_that_leaves_early_ends_the_command_quietly(
    command: tuple[str, ...], sqlite_url: str
) -> None:
    """stdout a pipe whose reader is gone (`| head -1` once head has left): exit 1, and not a
    word of BrokenPipeError. The reader is closed before the command starts, so no line can
    get through first, as it could to a real head."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = await anyio.run_process(
            [DBSCOPE, *command],
            stdout=writer,
            env=without_settings(DATABASE_URL=sqlite_url),
            check=False,
        )
    finally:
        os.close(writer)
    assert done.returncode == 1, done.stderr.decode()
    assert "BrokenPipeError" not in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()


def test_main_returns_the_exit_code_and_prints_the_error(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main(argv) in-process: 2 and one line on stderr when no database is configured."""
    code = main(["check"])
    errors = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(errors) == 1
    assert "No database is configured: set DATABASE_URL" in errors[0]


async def test_python_m_dbscope_cli_is_the_same_command(sqlite_url: str) -> None:
    """`python -m dbscope._cli check` works where the script is not installed."""
    done = await anyio.run_process(
        [sys.executable, "-m", "dbscope._cli", "check"],
        env=without_settings(DATABASE_URL=sqlite_url),
        check=False,
    )
    assert done.returncode == 0, output_of(done)


# -- dbscope migrate ---------------------------------------------------------------------------


async def test_migrate_upgrade_head_migrates_each_database_to_the_examples_models(
    example_clean: str,
) -> None:
    """`dbscope migrate upgrade head`: the example's migration, then `check` finds no change."""
    environment = {"DATABASE_URL": example_clean}
    config = ("-c", str(EXAMPLE_INI))
    upgraded = await dbscope("migrate", *config, "upgrade", "head", environment=environment)
    checked = await dbscope("migrate", *config, "check", environment=environment)
    downgraded = await dbscope("migrate", *config, "downgrade", "base", environment=environment)
    assert upgraded.returncode == 0, output_of(upgraded)
    assert "Running upgrade  -> 0001, Authors and their notes." in upgraded.stderr.decode()
    assert checked.returncode == 0, output_of(checked)
    assert "No new upgrade operations detected." in checked.stdout.decode()
    assert downgraded.returncode == 0, output_of(downgraded)


async def test_migrate_with_app_uses_the_documented_apps_database(tmp_path: Path) -> None:
    """--app myapp.main:db (docs/cli.md's module) migrates the app's default SQLite file."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "main.py").write_text(block_containing("docs/cli.md", "myapp/main.py"))
    upgrade = ("-c", str(EXAMPLE_INI), "upgrade", "head")
    without_app = await dbscope("migrate", *upgrade, environment={}, cwd=tmp_path)
    with_app = await dbscope(
        "migrate", "--app", "myapp.main:db", *upgrade, environment={}, cwd=tmp_path
    )
    checked = await dbscope("check", "--app", "myapp.main:db", environment={}, cwd=tmp_path)
    assert without_app.returncode == 2
    assert "No database is configured" in without_app.stderr.decode()
    assert with_app.returncode == 0, output_of(with_app)
    assert (tmp_path / "app.db").is_file()
    assert lines(checked.stdout.decode())["database"] == "sqlite+aiosqlite:///app.db"


async def test_migrate_with_a_prefix_hands_the_prefixed_settings_to_env_py(
    sqlite_url: str,
) -> None:
    """--prefix APP_: the migrations run on APP_DATABASE_URL's database."""
    environment = {"APP_DATABASE_URL": sqlite_url, "DATABASE_URL": nowhere()}
    arguments = ("--prefix", "APP_", "-c", str(EXAMPLE_INI))
    done = await dbscope("migrate", *arguments, "upgrade", "head", environment=environment)
    current = await dbscope("migrate", *arguments, "current", environment=environment)
    assert done.returncode == 0, output_of(done)
    assert "0001 (head)" in current.stdout.decode()


async def test_migrate_sql_writes_the_migrations_without_a_server() -> None:
    """`dbscope migrate upgrade head --sql` with an unreachable URL prints the DDL."""
    environment = {"DATABASE_URL": nowhere()}
    upgrade = ("-c", str(EXAMPLE_INI), "upgrade", "head", "--sql")
    done = await dbscope("migrate", *upgrade, environment=environment)
    assert done.returncode == 0, output_of(done)
    assert "CREATE TABLE example_authors" in done.stdout.decode()
    assert SECRET not in output_of(done)


async def test_migrate_with_a_bad_setting_exits_2_in_one_line() -> None:
    """env.py's ConfigurationError (POOL_SIZE=0) ends `dbscope migrate` with one line, 2."""
    environment = {"DATABASE_URL": "sqlite+aiosqlite:///app.db", "POOL_SIZE": "0"}
    done = await dbscope(
        "migrate", "-c", str(EXAMPLE_INI), "upgrade", "head", environment=environment
    )
    errors = done.stderr.decode().splitlines()
    assert done.returncode == 2
    assert errors[-1].startswith("dbscope: error: Invalid database settings:")
    assert "POOL_SIZE" in errors[-1]
    assert "Traceback" not in done.stderr.decode()


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
@pytest.mark.parametrize(("name", "quoted"), [("dbscope_missing", False), ("Dbscope_Gone", True)])
async def test_migrate_into_a_schema_that_does_not_exist_exits_2_in_one_line(
    database_url: str, name: str, quoted: bool
) -> None:
    """POSTGRES_SCHEMA naming no schema: one line naming it and the fix, not the server's
    error in three chained tracebacks; the CREATE SCHEMA it gives makes that very schema (a
    mixed-case name quoted, which unquoted would make another)."""
    schema = f"{name}_{os.getpid()}"
    environment = {"DATABASE_URL": database_url, "POSTGRES_SCHEMA": schema}
    upgrade = ("-c", str(EXAMPLE_INI), "upgrade", "head")
    done = await dbscope("migrate", *upgrade, environment=environment)
    errors = done.stderr.decode().splitlines()
    assert done.returncode == 2, output_of(done)
    assert errors[-1].startswith(
        f"dbscope: error: The schema {schema!r} that the settings name (POSTGRES_SCHEMA"
    )
    created = f'"{schema}"' if quoted else schema
    assert f"create it first (CREATE SCHEMA {created};" in errors[-1]
    assert "Traceback" not in done.stderr.decode()


async def test_migrate_to_an_unknown_revision_exits_1_with_alembics_message(
    sqlite_url: str,
) -> None:
    """Alembic's own failure (no such revision) is exit code 1 and Alembic's words."""
    environment = {"DATABASE_URL": sqlite_url}
    done = await dbscope(
        "migrate", "-c", str(EXAMPLE_INI), "upgrade", "nope", environment=environment
    )
    assert done.returncode == 1
    assert "Can't locate revision identified by 'nope'" in done.stderr.decode()


async def test_migrate_without_an_alembic_command_shows_alembics_usage() -> None:
    """`dbscope migrate` alone: Alembic's usage, exit code 2."""
    done = await dbscope("migrate", environment={})
    assert done.returncode == 2
    assert "usage: dbscope migrate" in done.stderr.decode()


# -- the guide ---------------------------------------------------------------------------------


async def test_the_guides_bad_setting_line_is_what_the_command_prints() -> None:
    """docs/cli.md's POOL_SIZE=0 example: the same command prints the same line."""
    shown = block_containing("docs/cli.md", "POOL_SIZE=0", language="text").splitlines()
    *assignments, program, subcommand = shlex.split(shown[0].removeprefix("$ "))
    environment = dict(assignment.split("=", 1) for assignment in assignments)
    done = await dbscope(subcommand, environment=environment)
    assert program == "dbscope"
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [shown[1]]


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_check_prints_the_lines_the_guide_shows(example_tables: str) -> None:
    """docs/cli.md's check output: the same lines, in the same order, on PostgreSQL."""
    shown = block_containing("docs/cli.md", "dbscope check --app", language="text")
    # Migrated here, not by a process of its own: `dbscope migrate` is the tests' above.
    async with Database(example_tables) as db:
        await migrations.upgrade(db, config=EXAMPLE_INI)
    environment = {"DATABASE_URL": example_tables}
    done = await dbscope("check", "-c", str(EXAMPLE_INI), environment=environment)
    assert done.returncode == 0, output_of(done)
    assert list(lines(done.stdout.decode())) == list(lines(shown))
    assert lines(done.stdout.decode())["pool"] == lines(shown)["pool"]
