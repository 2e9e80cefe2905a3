"""dbscope.testing, used without pytest's help: transactions, engines, lifespans, tables."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which
# name a Session alias local to a test.

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI, Request
from sqlalchemy import Column, Integer, MetaData, Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from dbscope import ConfigurationError, Database, testing

from .helpers import admin

TABLE = "tt_rows"
# The app's Database as it would be in production: never connected in these tests.
NOWHERE = "postgresql+asyncpg://nobody@127.0.0.1:9/production"

metadata = MetaData()
rows = Table(TABLE, metadata, Column("id", Integer, primary_key=True))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An any-loop engine on the test database, with an empty tt_rows table."""
    async with admin(database_url) as connection:
        await connection.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        await connection.execute(text(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY)"))
    with testing.any_loop_engine(database_url) as engine:
        yield engine
    async with admin(database_url) as connection:
        await connection.execute(text(f"DROP TABLE {TABLE}"))


async def count_rows(engine: AsyncEngine) -> int:
    """The rows of tt_rows, seen from a connection outside any test transaction."""
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(rows))).scalar_one())


async def test_rolled_back_removes_what_committed_units_wrote(engine: AsyncEngine) -> None:
    """Committed db.transaction() blocks are savepoints: nothing remains after the block."""
    db = Database(NOWHERE)

    async with testing.rolled_back(db, engine):
        for row_id in (1, 2):
            async with db.transaction() as session:
                await session.execute(insert(rows).values(id=row_id))
        async with db.transaction() as session:
            inside = await session.scalar(select(func.count()).select_from(rows))

    assert inside == 2
    assert await count_rows(engine) == 0
    assert db.state == "new"


async def insert_then_fail(db: Database) -> None:
    """Insert row 2 in a transaction that then raises LookupError."""
    async with db.transaction() as session:
        await session.execute(insert(rows).values(id=2))
        raise LookupError


async def test_a_unit_that_fails_rolls_back_only_its_savepoint(engine: AsyncEngine) -> None:
    """A unit of work that raises undoes its own writes and none of the test's."""
    db = Database(NOWHERE)

    async with testing.rolled_back(db, engine):
        async with db.transaction() as session:
            await session.execute(insert(rows).values(id=1))
        with pytest.raises(LookupError):
            await insert_then_fail(db)
        async with db.transaction() as session:
            ids = list(await session.scalars(select(rows.c.id)))

    assert ids == [1]


async def test_open_session_is_the_current_session_and_keeps_only_commits(
    engine: AsyncEngine,
) -> None:
    """open_session() is db.current_session() inside; what it did not commit is undone."""
    db = Database(NOWHERE)

    async with testing.rolled_back(db, engine):
        async with testing.open_session(db) as session:
            assert db.current_session() is session
            await session.execute(insert(rows).values(id=1))
            await session.commit()
            await session.execute(insert(rows).values(id=2))
        async with db.transaction() as session:
            ids = list(await session.scalars(select(rows.c.id)))

    assert ids == [1]


def test_an_any_loop_engine_serves_one_event_loop_after_another(database_url: str) -> None:
    """Each asyncio.run() gets a working connection from the same engine."""

    async def select_one(engine: AsyncEngine) -> int:
        async with engine.connect() as connection:
            return int((await connection.execute(text("SELECT 1"))).scalar_one())

    with testing.any_loop_engine(database_url) as engine:
        results = [asyncio.run(select_one(engine)) for _ in range(3)]

    assert results == [1, 1, 1]


def test_an_in_memory_sqlite_test_database_is_refused_with_the_fix() -> None:
    """Tests each open a connection, so an in-memory database would be empty for them."""
    engine = testing.any_loop_engine("sqlite+aiosqlite:///:memory:")
    with pytest.raises(ConfigurationError, match=r"in-memory.*Use a file"):
        engine.__enter__()


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
async def test_create_tables_and_drop_tables_follow_the_metadata(database_url: str) -> None:
    """create_tables() makes the metadata's tables and drop_tables() removes them."""
    own = MetaData()
    Table("tt_made", own, Column("id", Integer, primary_key=True))

    testing.create_tables(database_url, metadata=own)
    async with admin(database_url) as connection:
        made = await connection.run_sync(lambda c: c.dialect.has_table(c, "tt_made"))
    testing.drop_tables(database_url, metadata=own)
    async with admin(database_url) as connection:
        left = await connection.run_sync(lambda c: c.dialect.has_table(c, "tt_made"))

    assert (made, left) == (True, False)


def test_create_tables_without_metadata_or_migrations_says_what_to_pass() -> None:
    """Neither metadata nor an Alembic configuration: the error names both."""
    with pytest.raises(ConfigurationError, match=r"metadata=Base\.metadata.*alembic_config="):
        testing.create_tables("sqlite+aiosqlite:///unused.db")


def lifespan_app(events: list[str], *, fail: bool = False) -> FastAPI:
    """An app whose lifespan holds a task group open and yields a state."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        if fail:
            raise ValueError("the cache is unreachable")
        async with anyio.create_task_group():
            yield {"greeting": "hello"}
            events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/greeting")
    async def greeting(request: Request) -> str:
        return str(request.state.greeting)

    return app


async def test_the_lifespan_may_end_in_another_task_than_it_began() -> None:
    """Start-up and shutdown run in the lifespan's own task, as fixtures' halves may not."""
    events: list[str] = []
    running = testing.running_app(lifespan_app(events))

    await asyncio.create_task(running.__aenter__())
    await asyncio.create_task(running.__aexit__(None, None, None))

    assert events == ["startup", "shutdown"]


async def test_the_client_passes_the_lifespan_state_to_requests() -> None:
    """request.state holds what the lifespan yielded, as under a server."""
    events: list[str] = []

    async with testing.client(lifespan_app(events)) as http:
        response = await http.get("/greeting")

    assert response.json() == "hello"
    assert events == ["startup", "shutdown"]


async def test_a_failing_startup_raises_the_apps_own_error() -> None:
    """The lifespan's exception reaches the test unchanged."""
    with pytest.raises(ValueError, match="the cache is unreachable"):
        async with testing.running_app(lifespan_app([], fail=True)):
            pass


async def test_requests_through_the_client_join_the_test_transaction(
    engine: AsyncEngine,
) -> None:
    """An endpoint's commit is visible in the test's transaction and gone after it."""
    db = Database(NOWHERE)
    app = FastAPI(lifespan=db.lifespan)
    Session = Annotated[AsyncSession, Depends(db.session)]

    @app.post("/rows/{row_id}")
    async def add_row(row_id: int, session: Session) -> None:
        await session.execute(insert(rows).values(id=row_id))

    async with testing.rolled_back(db, engine):
        async with testing.client(app) as http:
            status = (await http.post("/rows/7")).status_code
        async with db.transaction() as session:
            ids = list(await session.scalars(select(rows.c.id)))

    assert (status, ids) == (200, [7])
    assert await count_rows(engine) == 0


def test_importing_dbscope_testing_imports_neither_pytest_nor_fastapi() -> None:
    """Any test runner can use dbscope.testing: it loads no pytest, FastAPI or httpx."""
    code = (
        "import sys, dbscope.testing\n"
        "heavy = ('pytest', '_pytest', 'fastapi', 'starlette', 'httpx')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert completed.stdout.strip() == "[]"


def test_dbscope_testing_exports_its_helpers_under_the_public_module() -> None:
    """The package lists its helpers once, sorted, and each names dbscope.testing as home."""
    homes = {name: getattr(testing, name).__module__ for name in testing.__all__}

    assert testing.__all__ == sorted(testing.__all__)
    assert set(homes.values()) == {"dbscope.testing"}
    assert "running_app" in homes
    assert "lifespan" not in homes
