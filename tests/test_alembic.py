"""dbscope.alembic under Alembic's own command line: the one-line env.py reading the
environment's settings (or a prefix's, or alembic.ini's URL), a bad setting or an unreachable
server failing with dbscope's message, offline SQL, and a PostgreSQL schema.

Alembic runs as a subprocess with nothing but the settings each test gives it, on SQLite,
PostgreSQL (both drivers) and MariaDB. The project of each test (tmp_path,
tests/alembic_projects.py) has one migration, which makes ``ptp_migrated``. From code:
tests/test_alembic_code.py.
"""

from __future__ import annotations

from pathlib import Path

import alembic as alembic_package
import pytest
from sqlalchemy import text

from dbscope import ConfigurationError, Database
from dbscope import alembic as migrations
from tests.alembic_projects import (
    ENV,
    SECRET,
    TABLE,
    alembic,
    tables_in,
    upgrade_head,
    version_of,
    write_project,
)
from tests.helpers import admin, postgres_parts
from tests.server import free_port

pytest_plugins = ["tests.alembic_fixtures"]

# An env.py whose models are the one migration's table: nothing for autogenerate to add.
MODELS_ENV = """
import sqlalchemy as sa

from dbscope.alembic import run_migrations

metadata = sa.MetaData()
sa.Table("ptp_migrated", metadata, sa.Column("id", sa.Integer, primary_key=True))
run_migrations(metadata)
"""


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
    # Upgraded from code, in this process: the command line's upgrade is the test's above.
    async with Database(postgres_url, postgres_schema=schema) as db:
        await migrations.upgrade(db, config=project)
    environment = {"DATABASE_URL": postgres_url, "POSTGRES_SCHEMA": schema}
    done = await alembic(project, "current", environment=environment)
    assert done.returncode == 0, done.stderr.decode()
    assert "0001 (head)" in done.stdout.decode()


async def test_autogenerate_under_a_schema_proposes_no_operation_on_an_unchanged_database(
    tmp_path: Path, postgres_url: str, schema: str
) -> None:
    """`revision --autogenerate` after `upgrade head`, models unchanged, under POSTGRES_SCHEMA:
    an empty revision. Before, it proposed dropping the schema's own alembic_version, which
    Alembic reflected as the search_path's (no schema), not as the version table's schema."""
    project = write_project(tmp_path, env=MODELS_ENV)
    template = Path(alembic_package.__file__).parent / "templates" / "async" / "script.py.mako"
    (tmp_path / "migrations" / "script.py.mako").write_text(template.read_text())
    environment = {"DATABASE_URL": postgres_url, "POSTGRES_SCHEMA": schema}
    await upgrade_head(project, environment)
    done = await alembic(
        project, "revision", "--autogenerate", "-m", "nochange", environment=environment
    )
    assert done.returncode == 0, done.stderr.decode()
    [revision] = (tmp_path / "migrations" / "versions").glob("*_nochange.py")
    upgrade = revision.read_text().partition("def upgrade()")[2].partition("def downgrade()")[0]
    assert "op." not in upgrade, upgrade
    assert "Detected removed table" not in done.stderr.decode()


# -- alembic.ini's URL and the files env.py is given --------------------------------------------


async def test_an_unescaped_percent_in_sqlalchemy_url_names_the_file_and_the_fix_not_the_value(
    tmp_path: Path,
) -> None:
    """A percent-encoded password in alembic.ini: ConfigurationError saying '%%', no value."""
    encoded = "Zq9%23pW%40rd%3A1%2Fx"
    url = f"postgresql+asyncpg://u:{encoded}@127.0.0.1:{free_port()}/db"
    project = write_project(tmp_path, ini=f"sqlalchemy.url = {url}\n")
    done = await alembic(project, "current", environment={})
    output = (done.stdout + done.stderr).decode()
    assert done.returncode != 0
    assert f"ConfigurationError: {str(project)!r}: sqlalchemy.url in [alembic]" in output
    assert "must be written '%%'" in output
    assert "InterpolationSyntaxError" not in output
    assert not [piece for piece in ("Zq9", "%23pW", "pW@rd", "pW%40rd") if piece in output]


async def test_a_missing_env_file_given_to_run_migrations_is_a_configuration_error(
    tmp_path: Path, sqlite_url: str
) -> None:
    """run_migrations(env_file="missing.env") fails naming it, even with DATABASE_URL set."""
    project = write_project(tmp_path, env=ENV.format(arguments="env_file='missing.env'"))
    done = await alembic(project, "upgrade", "head", environment={"DATABASE_URL": sqlite_url})
    assert done.returncode != 0
    assert "ConfigurationError: The env file 'missing.env' does not exist" in done.stderr.decode()
