"""An app's second Database in tests: one that connects to its own database while a test
binds another Database to its connection is warned of (its writes are real), and one that
connects to the test's own database is not (docs/testing.md's concurrent requests)."""

import gc
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from dbscope import Database, DatabaseUnavailableError, testing


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


async def test_a_database_that_cannot_connect_during_a_bound_test_raises_its_own_error(
    sqlite_url: str, engine: AsyncEngine
) -> None:
    """A test that checks a Database on an unreachable server fails to connect, while the
    app's is bound: the connection's error, not the warning (an error by the suite's
    config), which spoke of a Database 'connected' that had written nothing."""
    db, down = Database(sqlite_url), Database("postgresql://nobody@127.0.0.1:1/nowhere")
    async with testing.rolled_back(db, engine):
        with pytest.raises(DatabaseUnavailableError):
            await down.connect()
        assert down.state == "new"


async def test_an_in_memory_database_during_a_bound_test_is_not_warned_of(
    sqlite_url: str, engine: AsyncEngine
) -> None:
    """An in-memory SQLite Database (an app's scratch store) keeps nothing past the
    process: no warning that its writes are real (an error by the suite's config)."""
    db, scratch = Database(sqlite_url), Database("sqlite+aiosqlite://")
    async with testing.rolled_back(db, engine), scratch:
        assert scratch.state == "connected"


async def test_the_warning_as_an_error_leaves_no_engine_behind(
    sqlite_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    """Under filterwarnings=error the warning is raised once connected: the Database is
    left unconnected (its engine disposed: nothing left for the collector, which warned of
    the connection), and connects normally after the test."""
    db, billing = Database(sqlite_url), Database(f"sqlite+aiosqlite:///{tmp_path}/billing.db")
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", ResourceWarning)
        async with testing.rolled_back(db, engine):
            with pytest.raises(RuntimeWarning, match="a test database of its own"):
                await billing.connect()
        gc.collect()
    assert [str(w.message) for w in warned if w.category is ResourceWarning] == []
    async with billing:  # left unconnected: connecting again is no 'already connected'
        assert billing.state == "connected"


async def test_a_database_on_the_tests_own_mariadb_spelled_mariadb_is_not_warned_of(
    mysql_url: str,
) -> None:
    """The test's MariaDB database named mysql+asyncmy:// (the plugin's spelling) and the
    app's mariadb+asyncmy://: one server, no warning (the backend names differed)."""
    url = make_url(mysql_url)
    as_mariadb = url.set(drivername=url.drivername.replace("mysql", "mariadb", 1))
    db, pooled = Database(url), Database(as_mariadb)
    with testing.any_loop_engine(url.render_as_string(hide_password=False)) as engine:
        async with testing.rolled_back(db, engine), pooled:
            assert pooled.state == "connected"
