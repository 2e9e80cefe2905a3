"""Alembic projects for the tests of dbscope.alembic (tests/test_alembic*.py; their
fixtures are in tests/alembic_fixtures.py): a project written in a directory, Alembic's own
command line run on it with only the settings a test gives, and what a database holds after.

A project has one migration (tests/plugin_projects.py's), which makes ``ptp_migrated``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import anyio
from sqlalchemy import text

from tests.helpers import admin, without_settings
from tests.plugin_projects import ALEMBIC_VERSION

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
