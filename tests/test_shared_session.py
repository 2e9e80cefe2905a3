"""One session used by two tasks at once is refused every time, with one clear error, and
leaves nothing behind: no connection dropped, none checked out, nothing left in the loop.
So are two units at once on a test's one connection (requests gathered in a test)."""

import asyncio
import logging
from collections.abc import Iterator
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from dbscope import Database, SessionSharedError, testing
from tests.helpers import Tables, client_for, stored

SLOW = {
    "sqlite": "SELECT 1",
    "postgresql": "SELECT pg_sleep(0.05)",
    "mysql": "SELECT SLEEP(0.05)",
}
ROUNDS = 20


@pytest.fixture
async def shared_rows(tables: Tables) -> None:
    """An empty ``shared_rows`` table on the test's database (``db``)."""
    await tables.create("shared_rows", "id INTEGER PRIMARY KEY")


def slow_query(session: AsyncSession) -> str:
    """A statement that takes a while on the session's backend (SQLite: one step)."""
    return SLOW[session.get_bind().dialect.name]


async def test_gather_over_one_session_is_refused_every_time(database_url: str) -> None:
    """Every round of asyncio.gather over one session raises SessionSharedError, warm or
    cold, and the unit waits for the first task before it ends: no connection is dropped."""
    refused = 0
    async with Database(database_url) as db:
        for _ in range(ROUNDS):
            with pytest.raises(SessionSharedError):  # noqa: PT012 - the unit's end is the point
                async with db.transaction() as session:
                    query = text(slow_query(session))
                    await asyncio.gather(session.execute(query), session.execute(query))
            refused += 1
        stats = db.stats()
        async with db.transaction() as session:
            after = (await session.execute(text("SELECT 1"))).scalar_one()
    assert refused == ROUNDS
    assert stats.checked_out == 0
    assert stats.invalidated == 0
    assert after == 1


async def test_the_refused_task_never_touched_the_connection(database_url: str) -> None:
    """The first task's statement completes; only the second is refused, before it runs."""
    async with Database(database_url) as db, db.transaction() as session:
        query = text(slow_query(session))
        outcomes = await asyncio.gather(
            session.execute(query), session.execute(query), return_exceptions=True
        )
        still_usable = (await session.execute(text("SELECT 2"))).scalar_one()
    assert not isinstance(outcomes[0], BaseException)
    assert isinstance(outcomes[1], SessionSharedError)
    assert still_usable == 2


async def test_a_request_sharing_its_session_answers_500_with_one_clear_error(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Over HTTP it is a bug of the app: 500, one SessionSharedError and no other error
    logged; the next requests are served normally on the same pool."""
    db = Database(database_url, pool_size=1, max_overflow=0)
    app = FastAPI()

    @app.get("/shared")
    async def shared(session: Annotated[AsyncSession, Depends(db.session)]) -> int:
        query = text(slow_query(session))
        await asyncio.gather(session.execute(query), session.execute(query))
        return 1

    @app.get("/alone")
    async def alone(session: Annotated[AsyncSession, Depends(db.session)]) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())

    caplog.set_level(logging.WARNING)
    async with db, client_for(app) as client:
        failed = await client.get("/shared")
        served = [(await client.get("/alone")).status_code for _ in range(5)]
        stats = db.stats()
    assert failed.status_code == 500
    assert served == [200] * 5
    assert stats.checked_out == 0
    assert stats.invalidated == 0
    assert not [r for r in caplog.records if "IllegalStateChange" in r.getMessage()]
    assert not [r for r in caplog.records if "Closing the session failed" in r.getMessage()]


@pytest.mark.usefixtures("shared_rows")
async def test_a_session_used_in_another_event_loop_is_refused_and_nothing_is_lost(
    db: Database,
) -> None:
    """A `def` endpoint runs the request's session in asyncio.run(): refused before it touches
    the connection (on asyncpg the connection went back to the pool inside a transaction, and
    every later request answered 200 with its writes never committed); the writes of the next
    requests are stored."""
    app = FastAPI()
    Session = Annotated[AsyncSession, Depends(db.session)]
    insert = text("INSERT INTO shared_rows (id) VALUES (:id)")

    @app.post("/in-another-loop")
    def in_another_loop(session: Session) -> None:  # run in a thread by FastAPI
        asyncio.run(session.execute(insert, {"id": 0}))

    @app.post("/rows/{row}")
    async def add(row: int, session: Session) -> None:
        await session.execute(insert, {"id": row})

    async with client_for(app, raise_app_exceptions=True) as client:
        with pytest.raises(SessionSharedError, match="another event loop"):
            await client.post("/in-another-loop")
    async with client_for(app) as client:
        served = [(await client.post(f"/rows/{row}")).status_code for row in (1, 2, 3)]
    assert served == [200] * 3
    assert await stored(db, "SELECT id FROM shared_rows ORDER BY id") == [1, 2, 3]
    assert db.stats().checked_out == 0


@pytest.fixture
def engine(database_url: str) -> Iterator[AsyncEngine]:
    with testing.any_loop_engine(database_url) as engine:
        yield engine


def rows_app(db: Database) -> FastAPI:
    """``POST /rows/{row}`` stores a row, between two slow statements."""
    app = FastAPI()

    @app.post("/rows/{row}")
    async def add(row: int, session: Annotated[AsyncSession, Depends(db.session)]) -> int:
        await session.execute(text(slow_query(session)))
        await session.execute(text("INSERT INTO shared_rows (id) VALUES (:id)"), {"id": row})
        await session.execute(text(slow_query(session)))
        return row

    return app


async def rows_seen(connection: AsyncConnection) -> list[int]:
    return list((await connection.scalars(text("SELECT id FROM shared_rows ORDER BY id"))).all())


@pytest.mark.usefixtures("shared_rows")
async def test_requests_gathered_in_a_test_are_refused_with_one_clear_error(
    database_url: str, engine: AsyncEngine
) -> None:
    """asyncio.gather over requests bound to a test's connection: the first is served, the
    others get SessionSharedError once it has ended (not the driver's "savepoint does not
    exist"), and the test's connection serves the requests after them."""
    db = Database(database_url)
    app = rows_app(db)
    async with testing.rolled_back(db, engine) as connection:
        async with client_for(app, raise_app_exceptions=True) as client:
            outcomes = await asyncio.gather(
                *(client.post(f"/rows/{row}") for row in (1, 2, 3)), return_exceptions=True
            )
            after = await client.post("/rows/4")
        rows = await rows_seen(connection)
    served = [o.json() for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, SessionSharedError)]
    assert len(served) == 1
    assert len(refused) == 2
    assert "one connection" in str(refused[0])
    assert after.status_code == 200
    assert rows == [*served, 4]


@pytest.mark.usefixtures("shared_rows")
async def test_a_task_group_over_requests_in_a_test_leaves_the_connection_whole(
    database_url: str, engine: AsyncEngine
) -> None:
    """A TaskGroup over requests in a test fails with SessionSharedError alone: the request
    served is not cancelled midway, and the test's transaction ends as usual."""
    db = Database(database_url)
    app = rows_app(db)
    refused: list[BaseException] = []
    async with testing.rolled_back(db, engine) as connection:
        async with client_for(app, raise_app_exceptions=True) as client:
            try:
                async with asyncio.TaskGroup() as group:
                    for row in (1, 2, 3):
                        group.create_task(client.post(f"/rows/{row}"))
            except* SessionSharedError as errors:
                refused.extend(errors.exceptions)
            after = await client.post("/rows/4")
        rows = await rows_seen(connection)
    assert refused
    assert after.status_code == 200
    assert len(rows) == 2
    assert rows[-1] == 4


@pytest.mark.usefixtures("shared_rows")
async def test_two_databases_bound_to_one_test_connection_in_one_request_are_refused_at_once(
    database_url: str, engine: AsyncEngine
) -> None:
    """A request that holds the sessions of two Databases bound to one test's connection is
    refused when the second begins, naming the fix, not after the 30 s wait for others:
    the first unit ends only after the request. The connection serves the next request."""
    db, billing = Database(database_url), Database(database_url)
    app = rows_app(db)

    @app.post("/both")
    async def both(
        session: Annotated[AsyncSession, Depends(db.session)],
        other: Annotated[AsyncSession, Depends(billing.session)],
    ) -> None:
        await session.execute(text("INSERT INTO shared_rows (id) VALUES (1)"))
        await other.execute(text("INSERT INTO shared_rows (id) VALUES (2)"))

    async with testing.rolled_back(db, engine) as connection:
        with billing.bind_to(connection):
            async with client_for(app, raise_app_exceptions=True) as client:
                with pytest.raises(SessionSharedError) as refused:
                    await client.post("/both")
                after = await client.post("/rows/3")
        rows = await rows_seen(connection)
    assert "a test database of its own" in str(refused.value)
    assert after.status_code == 200
    assert rows == [3]
