"""Read-only units of work: per request (``db.read_session``) or per ``db.transaction()``.

A read-only unit never commits; PostgreSQL and MariaDB refuse its writes, and the read-only
state ends with the unit: with ``pool_size=1`` the next unit gets the very same connection (its
backend id proves it), and can write there.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database, DatabaseUnavailableError
from dbscope.testing import any_loop_engine, rolled_back
from tests import helpers

ONE_CONNECTION: dict[str, Any] = {"pool_size": 1, "max_overflow": 0}
INSERT = text("INSERT INTO uo_rows (value) VALUES (1)")


def backend_id_query(db: Database) -> str:
    """The query naming the server connection (backend) the session runs on."""
    return helpers.BACKEND_ID[db.url.get_backend_name()]


async def backend_of_a_unit(db: Database, **options: Any) -> Any:
    """The backend id a new unit of work with ``options`` finds."""
    async with db.transaction(**options) as session:
        return await session.scalar(text(backend_id_query(db)))


# A first statement that ends its own connection, wherever it runs.
ENDS_ITS_CONNECTION = {
    "postgresql": "SELECT pg_terminate_backend(pg_backend_pid())",
    "mysql": "KILL CONNECTION CONNECTION_ID()",
}


async def first_read_after_its_connection_ended(
    db: Database, database_url: str, **options: Any
) -> Any:
    """The backend id a unit with ``options`` reads on a pool of one, whose connection, used
    moments ago and checked out by the unit (its checkout check passed), is ended from
    outside before the unit's first statement."""
    backend = await backend_of_a_unit(db)
    async with db.transaction(**options) as session:
        await session.connection()
        async with helpers.admin(database_url) as admin:
            await helpers.kill(admin, backend)
        return await session.scalar(text(backend_id_query(db)))


def build_lost_first_read_app(db: Database) -> FastAPI:
    """``/read`` takes its connection on ``db.read_session``, waits for
    ``app.state.release``, then reads its backend id (see ``helpers.kill_mid_request``)."""

    async def read(session: AsyncSession) -> dict[str, int]:
        await session.connection()
        app.state.started.set()
        await app.state.release.wait()
        return {"backend": int(await session.scalar(text(backend_id_query(db))) or 0)}

    app = helpers.app_with(db.read_session, {"GET /read": read})
    app.state.started = asyncio.Event()
    app.state.release = asyncio.Event()
    return app


@pytest.fixture
async def uo_rows(tables: helpers.Tables) -> None:
    """An empty ``uo_rows`` table for the test."""
    await tables.create("uo_rows", "value INTEGER NOT NULL")


def build_read_only_app(db: Database) -> FastAPI:
    """``/write`` inserts a row and ``/count`` counts them, both on ``db.read_session``."""

    async def write(session: AsyncSession) -> dict[str, str]:
        await session.execute(INSERT)
        return {"status": "written"}

    async def count(session: AsyncSession) -> dict[str, int]:
        return {"rows": int(await session.scalar(text("SELECT count(*) FROM uo_rows")) or 0)}

    return helpers.app_with(db.read_session, {"POST /write": write, "GET /count": count})


# -- read only --------------------------------------------------------------------------------


@pytest.mark.usefixtures("uo_rows")
async def test_a_write_in_a_read_only_request_fails(database_url: str) -> None:
    """PostgreSQL and MariaDB refuse the write of a read_session request: 500, nothing
    stored. So does SQLite, whose connection is query-only for the unit (before, it answered
    200 and rolled the write back: a test on SQLite passed where production failed)."""
    async with Database(database_url) as db, helpers.client_for(build_read_only_app(db)) as client:
        response = await client.post("/write")
    assert response.status_code == 500
    assert await helpers.count_rows(database_url, "uo_rows") == 0


@pytest.mark.usefixtures("uo_rows")
async def test_a_read_only_request_reads(database_url: str) -> None:
    """A read_session request reads what is committed."""
    async with helpers.admin(database_url) as connection:
        await connection.execute(INSERT)
    async with Database(database_url) as db, helpers.client_for(build_read_only_app(db)) as client:
        response = await client.get("/count")
    assert response.status_code == 200
    assert response.json() == {"rows": 1}


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
@pytest.mark.usefixtures("uo_rows")
async def test_a_read_only_transaction_is_read_only_on_postgresql(database_url: str) -> None:
    """transaction(read_only=True): the server reports it, and refuses a write."""
    async with Database(database_url) as db:
        seen: list[Any] = []
        with pytest.raises(DBAPIError) as refused:
            await write_read_only(db, seen)
    assert seen == ["on"]
    assert "read-only" in str(refused.value)
    assert await helpers.count_rows(database_url, "uo_rows") == 0


async def write_read_only(db: Database, seen: list[Any]) -> None:
    """In a read-only unit: note ``transaction_read_only``, then insert a row."""
    async with db.transaction(read_only=True) as session:
        seen.append(await session.scalar(text("SHOW transaction_read_only")))
        await session.execute(INSERT)


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_read_only_unit_begins_read_only_without_a_statement_of_its_own(
    database_url: str,
) -> None:
    """On PostgreSQL the unit begins with BEGIN READ ONLY: no SET TRANSACTION is sent."""
    async with Database(database_url) as db:
        with sent_statements(db) as sent:
            async with db.transaction(read_only=True) as session:
                seen = await session.scalar(text("SHOW transaction_read_only"))
    assert seen == "on"
    assert sent == ["SHOW transaction_read_only"]


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
@pytest.mark.usefixtures("uo_rows")
async def test_the_next_unit_on_the_connection_of_a_read_only_one_can_write(
    database_url: str,
) -> None:
    """Read-only ends with its unit: the same pooled connection then takes a write."""
    async with Database(database_url, **ONE_CONNECTION) as db:
        read_only_backend = await backend_of_a_unit(db, read_only=True)
        async with db.transaction() as session:
            backend = await session.scalar(text(backend_id_query(db)))
            await session.execute(INSERT)
    assert backend == read_only_backend
    assert await helpers.count_rows(database_url, "uo_rows") == 1


@contextlib.contextmanager
def sent_statements(db: Database) -> Iterator[list[str]]:
    """The statements ``db``'s engine sends while the block runs (BEGIN and COMMIT excepted)."""
    sent: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", note)


@pytest.mark.parametrize("db_backend", ["asyncmy"])
@pytest.mark.usefixtures("uo_rows")
async def test_a_read_only_transaction_refuses_a_write_on_mariadb(database_url: str) -> None:
    """transaction(read_only=True) on MariaDB: the server refuses the write (1792)."""
    async with Database(database_url) as db:
        with pytest.raises(DBAPIError, match="READ ONLY"):
            async with db.transaction(read_only=True) as session:
                await session.execute(INSERT)
    assert await helpers.count_rows(database_url, "uo_rows") == 0


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
@pytest.mark.usefixtures("uo_rows")
async def test_a_read_only_unit_inside_a_test_transaction_leaves_it_writable(
    database_url: str,
) -> None:
    """Bound to a test's connection, a read-only unit reads, and the test's transaction can
    still write after it."""
    db = Database(database_url)
    with any_loop_engine(database_url) as engine:
        async with rolled_back(db, engine) as connection:
            async with db.transaction(read_only=True) as session:
                value = await session.scalar(text("SELECT 2"))
            await connection.execute(INSERT)
            rows = await connection.scalar(text("SELECT count(*) FROM uo_rows"))
    assert (value, rows) == (2, 1)


@pytest.mark.parametrize("db_backend", ["sqlite"])
@pytest.mark.usefixtures("uo_rows")
async def test_a_read_only_transaction_refuses_a_write_on_sqlite(database_url: str) -> None:
    """transaction(read_only=True) on SQLite, which has no read-only transaction: the unit's
    connection is query-only, and the write fails, as on the servers."""
    with pytest.raises(DBAPIError, match="readonly"):
        async with Database(database_url) as db, db.transaction(read_only=True) as session:
            await session.execute(INSERT)
    assert await helpers.count_rows(database_url, "uo_rows") == 0


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_read_whose_connection_dies_after_its_rows_keeps_them(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only unit whose backend is terminated after its statement returned rows ends
    without an error: nothing was to commit, its rows stand; the broken connection is
    dropped and logged, and the pool has nothing checked out."""
    async with Database(database_url, **ONE_CONNECTION) as db:
        async with db.transaction(read_only=True) as session:
            backend = await session.scalar(text(backend_id_query(db)))
            async with helpers.admin(database_url) as admin:
                await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
            read = backend
        stats = db.stats()
        after = await backend_of_a_unit(db)
    assert read == backend
    assert stats.checked_out == 0
    assert after != backend  # a new connection replaced the dropped one
    assert "Closing the session failed after its work" in caplog.text


@pytest.mark.usefixtures("uo_rows")
async def test_a_read_only_units_commit_keeps_no_write(database_url: str) -> None:
    """An explicit commit() in a read-only unit, by the session or by its connection:
    PostgreSQL and MariaDB refuse the write before it; SQLite, which has no read-only
    transaction, committed it (200, the row kept): its connection is query-only, and the
    write is refused there too. Through a request (500) and in db.transaction() alike."""

    async def add(session: AsyncSession) -> None:
        await session.execute(INSERT)
        await session.commit()

    async def add_by_connection(session: AsyncSession) -> None:
        connection = await session.connection()
        await connection.execute(INSERT)
        await connection.commit()

    routes = {"POST /rows": add, "POST /by-connection": add_by_connection}
    async with Database(database_url, **ONE_CONNECTION) as db:
        app = helpers.app_with(db.read_session, routes)
        answers = [(await helpers.send(app, route)).status_code for route in routes]
        with pytest.raises(DBAPIError, match=r"(?i)read[- ]?only"):
            async with db.transaction(read_only=True) as session:
                await add_by_connection(session)
        kept = await helpers.count_rows(database_url, "uo_rows")
        async with db.transaction() as session:  # the connection writes again after its checkin
            await session.execute(INSERT)
    assert (answers, kept) == ([500, 500], 0)
    assert await helpers.count_rows(database_url, "uo_rows") == 1


# -- a lost connection at the first statement ------------------------------------------------


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_read_whose_connection_was_lost_before_its_first_statement_reads_on_a_new_one(
    database_url: str,
) -> None:
    """The server ended the pooled connection after its checkout check: the read-only unit's
    first statement runs again on a fresh connection, once, counted, where it raised 503."""
    async with Database(database_url, **ONE_CONNECTION) as db:
        before = await backend_of_a_unit(db)
        read = await first_read_after_its_connection_ended(db, database_url, read_only=True)
        stats = db.stats()
    assert read not in (None, before)
    assert (stats.rereads, stats.checked_out) == (1, 0)


async def fails_as_lost_without_a_reread(db: Database, run: Awaitable[object]) -> None:
    """``run`` fails with the 503 of a lost connection: not run again (no reread counted), and
    no connection left checked out."""
    with pytest.raises(DatabaseUnavailableError) as info:
        await run
    stats = db.stats()
    assert info.value.cause == "connection_lost"
    assert (stats.rereads, stats.checked_out) == (0, 0)


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_writable_unit_whose_connection_was_lost_before_its_first_statement_fails(
    database_url: str,
) -> None:
    """A writable unit is never run again: its first statement may be a flush."""
    async with Database(database_url, **ONE_CONNECTION) as db:
        await fails_as_lost_without_a_reread(
            db, first_read_after_its_connection_ended(db, database_url)
        )


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_read_that_loses_its_connection_again_when_run_again_fails(
    database_url: str,
) -> None:
    """A first statement that ends its own connection runs twice, then its 503 propagates:
    one second try, no loop."""
    async with Database(database_url, **ONE_CONNECTION) as db:
        ends = ENDS_ITS_CONNECTION[db.url.get_backend_name()]
        with pytest.raises(DatabaseUnavailableError) as info:
            async with db.transaction(read_only=True) as session:
                await session.execute(text(ends))
        stats = db.stats()
    assert info.value.cause == "connection_lost"
    assert (stats.rereads, stats.invalidated, stats.checked_out) == (1, 2, 0)


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_read_only_request_whose_connection_was_lost_before_its_first_statement_reads(
    database_url: str,
) -> None:
    """Over ASGI, ``Depends(db.read_session)``: 200 from a new connection, where it was 503."""
    async with Database(database_url, **ONE_CONNECTION) as db:
        app = build_lost_first_read_app(db)
        app.state.backend_id = await backend_of_a_unit(db)
        async with helpers.client_for(app) as client:
            response = await helpers.kill_mid_request(database_url, app, client.get("/read"))
        stats = db.stats()
    assert response.status_code == 200, response.text
    assert response.json()["backend"] != app.state.backend_id
    assert (stats.rereads, stats.checked_out) == (1, 0)


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_read_that_read_through_its_connection_is_not_run_again_after_a_loss(
    database_url: str,
) -> None:
    """Rows read through ``session.connection()``'s Connection came first: the session's
    statement that then finds the connection lost is no first statement, and fails."""

    async def read_then_lose_it() -> None:
        async with db.transaction(read_only=True, isolation_level="REPEATABLE READ") as session:
            connection = await session.connection()
            backend = await connection.scalar(text(backend_id_query(db)))
            async with helpers.admin(database_url) as admin:
                await helpers.kill(admin, backend)
            await session.scalar(text("SELECT 1"))

    async with Database(database_url, **ONE_CONNECTION) as db:
        await fails_as_lost_without_a_reread(db, read_then_lose_it())


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_first_read_in_a_savepoint_whose_connection_was_lost_fails_as_lost(
    database_url: str,
) -> None:
    """In ``begin_nested()``, which cannot go on once the transaction is dropped: 503
    ``connection_lost``, not run again (SQLAlchemy's InvalidRequestError, a 500, after a
    reread counted)."""

    async def read_in_a_savepoint(backend: Any) -> None:
        async with db.transaction(read_only=True) as session:
            await session.connection()
            async with helpers.admin(database_url) as admin:
                await helpers.kill(admin, backend)
            async with session.begin_nested():
                await session.scalar(text("SELECT 1"))

    async with Database(database_url, **ONE_CONNECTION) as db:
        backend = await backend_of_a_unit(db)
        await fails_as_lost_without_a_reread(db, read_in_a_savepoint(backend))
