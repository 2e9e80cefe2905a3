"""The async fixtures, built at start-up for the plugin and the loop that run the tests.

- loop scope ``function`` (each test its own loop, the default of both plugins): one engine
  that pools nothing serves every loop, and each test opens one connection;
- a wider loop scope: a pooled engine is built in that loop and lives as long as it, and a
  test costs a BEGIN and a ROLLBACK on a connection it borrows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from dbscope import Database, testing
from dbscope._pytest_plugin._fixtures import DEFAULT_DATABASE
from dbscope._pytest_plugin._loops import LoopScope, Setup
from dbscope._pytest_plugin._reporting import explained, fail, phased, require_asyncio

if TYPE_CHECKING:
    import httpx

_Function = TypeVar("_Function", bound=Callable[..., Any])

_MEMORY_DATABASE = (
    "The test database is an in-memory SQLite database, which exists only inside one "
    "connection, while the tables are made on a connection of their own: use a file, "
    "e.g. sqlite+aiosqlite:///test.db"
)


def build(setup: Setup) -> ModuleType:
    """A plugin module with the async fixtures, decorated for ``setup``'s plugin and loop."""

    def fixture(
        scope: LoopScope = "function", name: str | None = None
    ) -> Callable[[_Function], _Function]:
        if setup.async_plugin == "pytest-asyncio":
            import pytest_asyncio

            decorator = pytest_asyncio.fixture(scope=scope, loop_scope=setup.loop_scope, name=name)
        else:
            decorator = pytest.fixture(scope=scope, name=name)
        return cast("Callable[[_Function], _Function]", decorator)

    engine: Any
    if setup.loop_scope == "function":
        engine = pytest.fixture(scope="session", name="dbscope_engine")(_any_loop_engine)
    else:
        engine = fixture(scope=setup.loop_scope, name="dbscope_engine")(_pooled_engine)
    module = ModuleType("dbscope._pytest_async_fixtures")
    module.__dict__.update(
        dbscope_engine=engine,
        dbscope_connection=fixture(name="dbscope_connection")(_connection),
        dbscope_session=fixture(name="dbscope_session")(_session),
        dbscope_client=fixture(name="dbscope_client")(_client),
    )
    return module


def _any_loop_engine(
    dbscope_run_url: str, dbscope_database: Database, dbscope_tables: None
) -> Iterator[AsyncEngine]:
    """An engine on the test database that any loop may use; each test opens a connection.
    The app's tables are there (``dbscope_tables``), for a test that asks for it alone."""
    pgbouncer = dbscope_database.settings.pgbouncer  # through PgBouncer as the app goes
    engine = testing.any_loop_engine(dbscope_run_url, pgbouncer=pgbouncer)
    yield from phased(engine, "connecting to the test database", "closing the engine")


async def _pooled_engine(
    dbscope_run_url: str, dbscope_database: Database, dbscope_tables: None
) -> AsyncIterator[AsyncEngine]:
    """A pooled engine on the test database, built in the loop that the tests share, with
    the app's tables there (``dbscope_tables``)."""
    require_asyncio()
    with explained("connecting to the test database"):
        # No pre-ping: a test database does not restart under a run, and the ping would be
        # one more round trip for every test.
        pgbouncer = dbscope_database.settings.pgbouncer
        test_database = Database(dbscope_run_url, pool_pre_ping=False, pgbouncer=pgbouncer)
        if test_database.settings.is_memory:
            fail(_MEMORY_DATABASE)
        await test_database.connect()
    try:
        yield test_database.engine
    finally:
        await test_database.dispose()


async def _connection(
    dbscope_engine: AsyncEngine,
    dbscope_database: Database,
    dbscope_tables: None,
    dbscope_raise_on_lazy_load: bool | None,
) -> AsyncIterator[AsyncConnection]:
    """The test's connection, in a transaction rolled back after the test.

    The app's Database is bound to it meanwhile: its requests and transactions run on this
    connection, and their commits and rollbacks are savepoints.
    """
    require_asyncio()
    async with testing.rolled_back(
        dbscope_database, dbscope_engine, raise_on_lazy_load=dbscope_raise_on_lazy_load
    ) as connection:
        yield connection


async def _session(
    dbscope_connection: AsyncConnection, dbscope_database: Database
) -> AsyncIterator[AsyncSession]:
    """A session in the test's transaction; its commit() and rollback() are savepoints."""
    async with testing.open_session(dbscope_database) as session:
        yield session


async def _client(
    request: pytest.FixtureRequest,
    dbscope_connection: AsyncConnection,
    dbscope_database: Database,
    dbscope_app: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx.AsyncClient for the app, inside its lifespan, in the test's transaction."""
    if dbscope_database is request.config.stash.get(DEFAULT_DATABASE, None):
        fail(
            "dbscope_client needs the Database your app uses, so that the app's sessions "
            "join the test's transaction: set dbscope_database = 'myapp.db:db' in "
            "[tool.pytest.ini_options], or override the fixture dbscope_database in "
            "conftest.py."
        )
    async with testing.client(dbscope_app) as client:
        yield client
