"""dbscope.alembic: the one-line env.py under Alembic's own command line, and from code.

Alembic runs as a subprocess with nothing but the settings each test gives it, on SQLite,
PostgreSQL (both drivers) and MariaDB; from code, inside the test's running event loop. The
project of each test (tmp_path) has one migration, which makes ``ptp_migrated``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import anyio
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

import dbscope.alembic
from dbscope import ConfigurationError, Database
from tests.documented import block_containing, run_block
from tests.helpers import admin, imported_by, postgres_parts, without_settings, without_tables
from tests.plugin_projects import ALEMBIC_VERSION
from tests.server import free_port

ALEMBIC = str(Path(sys.executable).with_name("alembic"))
TABLE = "ptp_migrated"  # what plugin_projects' one migration makes
SECRET = "Pa55-w0rd-nobody-sees"
ALEMBIC_INI = """
[alembic]
script_location = %(here)s/migrations
prepend_sys_path = %(here)s
path_separator = os
"""
ENV = """
from dbscope.alembic import run_migrations

run_migrations({arguments})
"""


def write_project(directory: Path, *, env: str = ENV.format(arguments=""), ini: str = "") -> Path:
    """An Alembic project in ``directory``: its alembic.ini (the path returned) and one
    migration; ``env`` is its env.py, ``ini`` more lines of the [alembic] section."""
    (directory / "migrations" / "versions").mkdir(parents=True)
    (directory / "migrations" / "env.py").write_text(env)
    (directory / "migrations" / "versions" / "0001_migrated.py").write_text(ALEMBIC_VERSION)
    path = directory / "alembic.ini"
    path.write_text(ALEMBIC_INI + ini)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The alembic.ini of a project whose env.py is ``run_migrations()``."""
    return write_project(tmp_path)


@pytest.fixture
def clean(database_url: str) -> Iterator[str]:
    """The database URL, without this module's table and version table, before and after."""
    yield from without_tables(database_url, TABLE, "alembic_version")


@pytest.fixture
async def schema(postgres_url: str) -> AsyncIterator[str]:
    """A PostgreSQL schema of the test's own, dropped with what it holds at the end."""
    name = f"dbscope_alembic_{os.getpid()}"
    async with admin(postgres_url) as connection:
        await connection.execute(text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
        await connection.execute(text(f"CREATE SCHEMA {name}"))
    yield name
    async with admin(postgres_url) as connection:
        await connection.execute(text(f"DROP SCHEMA {name} CASCADE"))


async def alembic(
    project: Path, *arguments: str, environment: Mapping[str, str]
) -> subprocess.CompletedProcess[bytes]:
    """Run Alembic's own command line on ``project`` with only ``environment``'s settings."""
    return await anyio.run_process(
        [ALEMBIC, "-c", str(project), *arguments],
        env=without_settings(**environment),
        cwd=project.parent,
        check=False,
    )


async def upgrade_head(
    project: Path, environment: Mapping[str, str]
) -> subprocess.CompletedProcess[bytes]:
    """`alembic upgrade head` on ``project`` with only ``environment``'s settings, done; a
    failure fails the test with Alembic's output."""
    done = await alembic(project, "upgrade", "head", environment=environment)
    assert done.returncode == 0, done.stderr.decode()
    return done


async def tables_in(database_url: str, schema: str) -> set[str]:
    """The names of the tables in ``schema`` (PostgreSQL)."""
    query = text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s")
    async with admin(database_url) as connection:
        return set((await connection.execute(query, {"s": schema})).scalars())


async def version_of(database_url: str, table: str = "alembic_version") -> list[str]:
    """The revisions a version table holds."""
    async with admin(database_url) as connection:
        return list((await connection.execute(text(f"SELECT version_num FROM {table}"))).scalars())


# -- Alembic's command line, on the environment's settings -------------------------------------


async def test_alembic_upgrade_head_with_only_database_url_makes_the_tables(
    project: Path, clean: str
) -> None:
    """`alembic upgrade head` with DATABASE_URL alone migrates SQLite, PostgreSQL and MariaDB."""
    await upgrade_head(project, {"DATABASE_URL": clean})
    assert await version_of(clean) == ["0001"]
    async with admin(clean) as connection:
        assert (await connection.execute(text(f"SELECT count(*) FROM {TABLE}"))).scalar() == 0


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_alembic_reads_the_postgres_parts_when_there_is_no_database_url(
    project: Path, clean: str
) -> None:
    """POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_HOST, POSTGRES_PORT and POSTGRES_DB suffice."""
    parts = postgres_parts(clean, SECRET)
    done = await upgrade_head(project, parts)
    assert await version_of(clean) == ["0001"]
    assert SECRET not in (done.stdout + done.stderr).decode()


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"DATABASE_URL": "postgresql+psycopg2://app@localhost/app"}, "DATABASE_URL"),
        ({"DATABASE_URL": "sqlite:///app.db", "POOL_SIZE": "0"}, "POOL_SIZE"),
        ({}, "DATABASE_URL"),
    ],
)
async def test_a_bad_setting_fails_with_the_message_database_from_env_gives(
    project: Path, variables: dict[str, str], named: str, clean_env: pytest.MonkeyPatch
) -> None:
    """A synchronous driver, POOL_SIZE=0 or no database: from_env()'s own message, exit 1."""
    for name, value in variables.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigurationError) as expected:
        Database.from_env()
    done = await alembic(project, "upgrade", "head", environment=variables)
    assert done.returncode != 0
    assert named in str(expected.value)
    assert f"ConfigurationError: {expected.value}" in done.stderr.decode()


async def test_a_prefix_given_to_run_migrations_reads_the_prefixed_variables(
    tmp_path: Path, sqlite_url: str
) -> None:
    """run_migrations(prefix="APP_") reads APP_DATABASE_URL and leaves DATABASE_URL alone."""
    project = write_project(tmp_path, env=ENV.format(arguments="prefix='APP_'"))
    nowhere = f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/app"
    environment = {"APP_DATABASE_URL": sqlite_url, "DATABASE_URL": nowhere}
    await upgrade_head(project, environment)
    assert await version_of(sqlite_url) == ["0001"]


async def test_an_unreachable_server_fails_naming_host_and_port_without_the_password(
    project: Path,
) -> None:
    """No server at the URL: DatabaseUnavailableError with host:port, and no password."""
    port = free_port()
    url = f"postgresql://app:{SECRET}@127.0.0.1:{port}/app"
    done = await alembic(project, "upgrade", "head", environment={"DATABASE_URL": url})
    output = (done.stdout + done.stderr).decode()
    assert done.returncode != 0
    assert f"DatabaseUnavailableError: Could not connect to postgresql at 127.0.0.1:{port}" in (
        output
    )
    assert SECRET not in output


async def test_an_explicit_sqlalchemy_url_wins_over_the_environment(
    tmp_path: Path, sqlite_url: str
) -> None:
    """sqlalchemy.url in alembic.ini is used; the environment's unreachable URL is not."""
    project = write_project(tmp_path, ini=f"sqlalchemy.url = {sqlite_url}\n")
    nowhere = f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/app"
    await upgrade_head(project, {"DATABASE_URL": nowhere})
    assert await version_of(sqlite_url) == ["0001"]


async def test_alembic_inits_placeholder_url_is_refused_with_the_fix(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The `driver://user:pass@localhost/dbname` left by `alembic init` says to remove it."""
    project = write_project(tmp_path, ini="sqlalchemy.url = driver://user:pass@localhost/dbname\n")
    done = await alembic(project, "upgrade", "head", environment={"DATABASE_URL": sqlite_url})
    assert done.returncode != 0
    assert "Alembic's placeholder" in done.stderr.decode()
    assert "remove the line" in done.stderr.decode()


async def test_offline_sql_needs_no_server(project: Path) -> None:
    """`upgrade head --sql` writes the DDL for a server that is not there, without password."""
    url = f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/app"
    done = await alembic(project, "upgrade", "head", "--sql", environment={"DATABASE_URL": url})
    output = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert f"CREATE TABLE {TABLE}" in output
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in output
    assert SECRET not in output + done.stderr.decode()


async def test_offline_sql_with_a_schema_sets_the_search_path_and_the_version_table(
    project: Path,
) -> None:
    """With POSTGRES_SCHEMA the script sets search_path and names the schema's version table."""
    url = f"postgresql://app@127.0.0.1:{free_port()}/app"
    environment = {"DATABASE_URL": url, "POSTGRES_SCHEMA": "tenant_a"}
    done = await alembic(project, "upgrade", "head", "--sql", environment=environment)
    output = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "SET LOCAL search_path TO tenant_a;" in output
    assert "CREATE TABLE tenant_a.alembic_version" in output
    assert output.index("SET LOCAL search_path") < output.index(f"CREATE TABLE {TABLE}")


async def test_postgres_schema_holds_the_version_table_and_the_migrated_tables(
    project: Path, postgres_url: str, schema: str
) -> None:
    """POSTGRES_SCHEMA: alembic_version and the new table are in the schema, not in public."""
    environment = {"DATABASE_URL": postgres_url, "POSTGRES_SCHEMA": schema}
    await upgrade_head(project, environment)
    assert await tables_in(postgres_url, schema) == {"alembic_version", TABLE}
    assert not {"alembic_version", TABLE} & await tables_in(postgres_url, "public")
    assert await version_of(postgres_url, f"{schema}.alembic_version") == ["0001"]


async def test_alembic_current_reads_the_version_table_in_the_schema(
    project: Path, postgres_url: str, schema: str
) -> None:
    """`alembic current` under POSTGRES_SCHEMA finds the schema's version table at head."""
    environment = {"DATABASE_URL": postgres_url, "POSTGRES_SCHEMA": schema}
    await alembic(project, "upgrade", "head", environment=environment)
    done = await alembic(project, "current", environment=environment)
    assert done.returncode == 0, done.stderr.decode()
    assert "0001 (head)" in done.stdout.decode()


# -- from code, inside the running loop --------------------------------------------------------


async def test_upgrade_inside_a_running_loop_brings_the_database_to_head(
    project: Path, clean: str
) -> None:
    """await upgrade(db) migrates on db's connection; at_head() is False before, True after."""
    async with Database(clean) as db:
        before = await dbscope.alembic.at_head(db, config=project)
        await dbscope.alembic.upgrade(db, config=project)
        after = await dbscope.alembic.status(db, config=project)
    assert before is False
    assert after == dbscope.alembic.MigrationStatus(current=("0001",), heads=("0001",))
    assert after.at_head


async def test_upgrade_of_a_database_with_a_schema_migrates_in_that_schema(
    project: Path, postgres_url: str, schema: str
) -> None:
    """Database(url, schema=...) gets its version table and tables in that schema."""
    async with Database(postgres_url, schema=schema) as db:
        await dbscope.alembic.upgrade(db, config=project)
        at_head = await dbscope.alembic.at_head(db, config=project)
    assert at_head
    assert await tables_in(postgres_url, schema) == {"alembic_version", TABLE}


async def test_without_config_the_functions_use_the_working_directorys_alembic_ini(
    project: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without config= (and no $ALEMBIC_CONFIG), ./alembic.ini is the one migrated."""
    monkeypatch.chdir(project.parent)
    monkeypatch.delenv("ALEMBIC_CONFIG", raising=False)
    async with Database(sqlite_url) as db:
        await dbscope.alembic.upgrade(db)
        at_head = await dbscope.alembic.at_head(db)
        status = await dbscope.alembic.status(db)
    assert at_head
    assert status.current == ("0001",)


async def test_a_missing_alembic_ini_is_a_configuration_error_naming_it(
    tmp_path: Path, sqlite_url: str
) -> None:
    """upgrade() with an alembic.ini that is not there names the path given."""
    missing = tmp_path / "nowhere" / "alembic.ini"
    async with Database(sqlite_url) as db:
        with pytest.raises(ConfigurationError, match=r"nowhere/alembic\.ini' does not exist"):
            await dbscope.alembic.upgrade(db, config=missing)


async def test_a_synchronous_alembic_command_called_inside_the_loop_runs(
    project: Path, clean: str
) -> None:
    """command.upgrade() from async code (no shared connection) runs its migrations."""
    config = Config(str(project))
    config.set_main_option("sqlalchemy.url", clean)
    command.upgrade(config, "head")
    assert await version_of(clean) == ["0001"]


async def test_the_cookbooks_shared_connection_runs_in_the_callers_transaction(
    project: Path, postgres_url: str
) -> None:
    """On a shared connection in a transaction, the caller's rollback undoes the migration."""

    def upgrade_on(connection: Connection) -> None:
        config = Config(str(project))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with Database(postgres_url) as db, db.engine.connect() as connection:
        await connection.begin()
        await connection.run_sync(upgrade_on)
        inside = await connection.scalar(text("SELECT version_num FROM alembic_version"))
        await connection.rollback()
    assert inside == "0001"
    assert TABLE not in await tables_in(postgres_url, "public")


async def test_an_async_connection_shared_is_refused_with_the_way_to_share_it(
    project: Path, sqlite_url: str
) -> None:
    """An AsyncConnection in config.attributes gets a message naming run_sync."""
    async with Database(sqlite_url) as db, db.engine.connect() as connection:
        config = Config(str(project))
        config.attributes["connection"] = connection
        with pytest.raises(ConfigurationError, match="run_sync"):
            command.upgrade(config, "head")


async def test_upgrade_from_code_leaves_the_applications_logging_alone(
    tmp_path: Path, sqlite_url: str
) -> None:
    """An alembic.ini with logging sections does not replace the root logger's handlers."""
    logging_ini = (
        "[loggers]\nkeys = root\n[handlers]\nkeys = console\n[formatters]\nkeys = generic\n"
        "[logger_root]\nlevel = DEBUG\nhandlers = console\n"
        "[handler_console]\nclass = StreamHandler\nargs = (sys.stderr,)\nformatter = generic\n"
        "[formatter_generic]\nformat = %(message)s\n"
    )
    project = write_project(tmp_path, ini=logging_ini)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    async with Database(sqlite_url) as db:
        await dbscope.alembic.upgrade(db, config=project)
    assert (root.handlers, root.level) == (handlers, level)


async def test_without_alembic_the_functions_name_the_install_command(
    project: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Alembic not importable, upgrade() says: pip install 'dbscope[alembic]'."""
    monkeypatch.setitem(sys.modules, "alembic", None)
    async with Database(sqlite_url) as db:
        with pytest.raises(ModuleNotFoundError, match=r"pip install 'dbscope\[alembic\]'"):
            await dbscope.alembic.upgrade(db, config=project)


def test_dbscope_alembic_exports_exactly_its_documented_names() -> None:
    """dbscope.alembic's __all__ is pinned; each name is documented."""
    assert dbscope.alembic.__all__ == [
        "MigrationStatus",
        "at_head",
        "command_line",
        "config_path",
        "run_migrations",
        "status",
        "upgrade",
    ]
    assert all(getattr(dbscope.alembic, name).__doc__ for name in dbscope.alembic.__all__)


def test_importing_dbscope_and_its_alembic_module_does_not_import_alembic() -> None:
    """`import dbscope`, dbscope.alembic and the command leave Alembic unimported."""
    assert imported_by("import dbscope, dbscope.alembic, dbscope._cli", "alembic") == []


# -- the docs ----------------------------------------------------------------------------------


@pytest.fixture
def documented_project(tmp_path: Path) -> Iterator[Path]:
    """A project whose env.py is the guide's, with a ``myapp.models`` beside it."""
    env = block_containing("docs/alembic.md", "run_migrations(Base.metadata)")
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    models = (
        "from sqlalchemy.orm import DeclarativeBase\n\n\nclass Base(DeclarativeBase):\n    pass\n"
    )
    (tmp_path / "myapp" / "models.py").write_text(models)
    yield write_project(tmp_path, env=env)
    for name in [name for name in sys.modules if name.split(".")[0] == "myapp"]:
        del sys.modules[name]


async def test_the_guides_env_py_migrates_with_only_database_url(
    documented_project: Path, clean: str
) -> None:
    """docs/alembic.md's env.py, as written, under `alembic upgrade head`."""
    await upgrade_head(documented_project, {"DATABASE_URL": clean})
    assert await version_of(clean) == ["0001"]


async def test_the_guides_migrate_function_upgrades_and_says_at_head(
    documented_project: Path, clean: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/alembic.md's migrate() from code, in the project's directory."""
    monkeypatch.chdir(documented_project.parent)
    monkeypatch.setenv("DATABASE_URL", clean)
    namespace = run_block(block_containing("docs/alembic.md", "async def migrate"), clean)
    assert await namespace["migrate"]() is True
    assert await version_of(clean) == ["0001"]


@pytest.mark.parametrize("db_backend", ["asyncpg", "asyncmy"])
async def test_the_guides_shared_connection_upgrades_in_the_callers_transaction(
    documented_project: Path, clean: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/alembic.md's upgrade_in(connection) migrates; the caller commits."""
    monkeypatch.chdir(documented_project.parent)
    namespace = run_block(block_containing("docs/alembic.md", "def upgrade_in"), clean)
    async with Database(clean) as db, db.engine.begin() as connection:
        assert isinstance(connection, AsyncConnection)
        await namespace["upgrade_in"](connection)
    assert await version_of(clean) == ["0001"]
