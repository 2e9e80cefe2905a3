"""An app's second Database in tests: one that connects to its own database while a test
binds another Database to its connection is warned of (its writes are real), and one that
connects to the test's own database is not (docs/testing.md's concurrent requests)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from dbscope import Database, testing


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[AsyncEngine]:
    with testing.any_loop_engine(sqlite_url) as engine:
        yield engine


async def test_a_database_connecting_elsewhere_during_a_bound_test_is_warned_of(
    sqlite_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    """The app's second Database, forgotten by the test, connects to its real database:
    a RuntimeWarning naming the fix, and none once the test's binding has ended."""
    db, billing = Database(sqlite_url), Database(f"sqlite+aiosqlite:///{tmp_path}/billing.db")
    async with testing.rolled_back(db, engine):
        with pytest.warns(RuntimeWarning, match="a test database of its own") as warned:
            await billing.connect()
        await billing.dispose()
    async with billing:  # no test binds any Database now: no warning (errors, by the config)
        pass
    assert "billing.db" in str(warned[0].message)


async def test_a_database_on_the_tests_own_database_is_not_warned_of(
    sqlite_url: str, engine: AsyncEngine
) -> None:
    """A Database of its own on the test's database (requests at once, docs/testing.md)
    is what the test means: no warning (the suite's config makes one an error)."""
    db, pooled = Database(sqlite_url), Database(sqlite_url)
    async with testing.rolled_back(db, engine), pooled:
        assert pooled.state == "connected"


async def test_a_database_on_the_tests_own_server_with_the_port_left_out_is_not_warned_of(
    postgres_url: str,
) -> None:
    """The same database, its URL naming the server's default port or leaving it out: the
    same target, no warning (it warned that the Database connected to its own database)."""
    url = make_url(postgres_url)
    assert url.port in (None, 5432)
    spelled = url.set(port=5432)
    left_out = URL.create(
        url.drivername, url.username, url.password, url.host, None, url.database, url.query
    )
    db, pooled = Database(spelled), Database(left_out)
    with testing.any_loop_engine(spelled.render_as_string(hide_password=False)) as engine:
        async with testing.rolled_back(db, engine), pooled:
            assert pooled.state == "connected"
