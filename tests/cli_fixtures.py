"""Fixtures of the CLI tests (tests/test_cli.py, tests/test_cli_shell.py), loaded by their
``pytest_plugins``: URLs with a password the server is reached with."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.cli_runs import SECRET
from tests.helpers import admin


@pytest.fixture
async def mysql_user_url(mysql_url: str) -> AsyncIterator[str]:
    """The MariaDB URL as a user of the test's own, whose password the server checks."""
    url = make_url(mysql_url)
    user = f"{url.database}_cli"
    async with admin(mysql_url) as connection:
        await connection.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
        await connection.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{SECRET}'"))
        await connection.execute(text(f"GRANT ALL ON `{url.database}`.* TO '{user}'@'%'"))
    yield url.set(username=user, password=SECRET).render_as_string(hide_password=False)
    async with admin(mysql_url) as connection:
        await connection.execute(text(f"DROP USER '{user}'@'%'"))


@pytest.fixture
def secret_url(request: pytest.FixtureRequest, database_url: str, db_backend: str) -> str:
    """The test database's URL with a password it is reached with (none for SQLite)."""
    if db_backend == "sqlite":
        return database_url
    if db_backend == "asyncmy":
        return str(request.getfixturevalue("mysql_user_url"))
    return make_url(database_url).set(password=SECRET).render_as_string(hide_password=False)
