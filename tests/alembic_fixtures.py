"""The fixtures of the dbscope.alembic tests (tests/test_alembic*.py), which register this
module as a plugin (``pytest_plugins``) and never import it:

- ``project``: the alembic.ini of a project (tests/alembic_projects.py) in the test's
  tmp_path, whose env.py is ``run_migrations()``;
- ``clean``: the test's database URL, without the migrated table and the version table;
- ``schema``: a PostgreSQL schema of the test's own, dropped with what it holds.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.alembic_projects import TABLE, write_project
from tests.helpers import admin, without_tables


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The alembic.ini of a project whose env.py is ``run_migrations()``."""
    return write_project(tmp_path)


@pytest.fixture
def clean(database_url: str) -> Iterator[str]:
    """The database URL, without the migrated table and the version table, before and after."""
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
