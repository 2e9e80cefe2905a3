"""The other ways a caught error reaches a unit, and the ways an application undoes one.

A server error can come at a fetch of a result's rows, not at its statement; a flush can fail
under a savepoint after the whole transaction had already been rolled back; an application
can roll back to a savepoint of its own, in SQL or through SQLAlchemy's Connection, where no
session event says so; and an engine used outside units leaves its failures on the pooled
connection. Each is judged by what the server itself keeps, read back after the unit.
"""

import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import Integer, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbscope import ConstraintViolationError, Database
from tests.helpers import Tables, app_with, send, stored

INSERT = text("INSERT INTO cp_rows (id) VALUES (:id)")
# Division by zero at the 2000th row: the rows before it are fetched first, the error later.
FAILS_AT_A_FETCH = text("SELECT 1 / (2000 - g) FROM generate_series(1, 3000) AS g")


class Base(DeclarativeBase):
    pass


class Other(Base):
    __tablename__ = "cp_other"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)


@pytest.fixture
async def cp_rows(postgres_url: str) -> AsyncIterator[str]:
    """``postgres_url``, with an empty ``cp_rows`` table."""
    tables = Tables(postgres_url)
    await tables.create("cp_rows", "id INTEGER PRIMARY KEY")
    yield postgres_url
    await tables.drop_all()


async def stored_ids(db: Database) -> list[int]:
    return await stored(db, "SELECT id FROM cp_rows ORDER BY id")


async def test_an_error_raised_at_a_fetch_refuses_the_commit(cp_rows: str) -> None:
    """A streamed read whose error comes at a later fetch of its rows (a batch job's
    ``stream()``) aborts the transaction as a statement's does: the unit is not committed as
    if whole, no callback runs, and nothing is stored (the server's COMMIT keeps nothing)."""
    ran: list[str] = []
    fetched = 0
    async with Database(cp_rows) as db:

        async def export() -> None:
            nonlocal fetched
            async with db.transaction() as session:
                await session.execute(INSERT, {"id": 1})
                db.on_commit(lambda: ran.append("committed"))
                # Broadly: asyncpg's error at a fetch of a stream is its own, not wrapped.
                with contextlib.suppress(Exception):
                    async for _ in await session.stream_scalars(FAILS_AT_A_FETCH):
                        fetched += 1

        with pytest.raises(Exception, match="division by zero") as raised:
            await export()
        assert "the error was caught" in "".join(getattr(raised.value, "__notes__", []))
        assert fetched > 0  # the error came after rows had been fetched
        assert (ran, await stored_ids(db)) == ([], [])


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_a_flush_failed_under_a_savepoint_keeps_an_earlier_whole_failure(
    database_url: str, tables: Tables
) -> None:
    """SQLite's ON CONFLICT ROLLBACK ends the whole transaction; a get-or-create after it,
    under a savepoint, fails at its flush and is caught: that savepoint's rollback does not
    undo the first failure, and the unit is refused (it was committed, half of it kept)."""
    await tables.create("cp_rows", "id INTEGER PRIMARY KEY ON CONFLICT ROLLBACK")
    await tables.create("cp_other", "id INTEGER PRIMARY KEY")
    ran: list[str] = []
    async with Database(database_url) as db:
        async with db.transaction() as session:
            session.add(Other(id=7))

        async def add() -> None:
            async with db.transaction() as session:
                await session.execute(INSERT, {"id": 1})
                db.on_commit(lambda: ran.append("committed"))
                with contextlib.suppress(DBAPIError):
                    await session.execute(INSERT, {"id": 1})  # the whole unit rolled back
                await session.execute(INSERT, {"id": 2})
                with contextlib.suppress(IntegrityError):
                    async with session.begin_nested():
                        session.add(Other(id=7))  # flushed at the savepoint's end: exists
                await session.execute(INSERT, {"id": 3})

        with pytest.raises(ConstraintViolationError):
            await add()
        assert (ran, await stored_ids(db)) == ([], [])


async def _sql_savepoint(session: AsyncSession, statement: str) -> None:
    await session.execute(text(statement))


async def _driver_savepoint(session: AsyncSession, statement: str) -> None:
    connection = await session.connection()
    await connection.exec_driver_sql(statement)


SAVEPOINT_WAYS: dict[str, Callable[[AsyncSession, str], Awaitable[None]]] = {
    "sql": _sql_savepoint,
    "exec_driver_sql": _driver_savepoint,
}


@pytest.mark.parametrize("way", SAVEPOINT_WAYS)
async def test_a_rollback_to_the_applications_own_savepoint_lets_the_unit_commit(
    cp_rows: str, way: str
) -> None:
    """SAVEPOINT, a failing INSERT, ROLLBACK TO SAVEPOINT, all in SQL: the server keeps the
    rest, and so does the unit (it answered 409, advising the savepoint the app had used)."""
    send = SAVEPOINT_WAYS[way]
    ran: list[str] = []
    async with Database(cp_rows) as db:
        async with db.transaction() as session:
            await session.execute(INSERT, {"id": 1})
            db.on_commit(lambda: ran.append("committed"))
            await send(session, "SAVEPOINT mine")
            with contextlib.suppress(DBAPIError):
                await session.execute(INSERT, {"id": 1})
            await send(session, "ROLLBACK TO SAVEPOINT mine")
            await session.execute(INSERT, {"id": 2})
        assert (ran, await stored_ids(db)) == (["committed"], [1, 2])


async def test_a_rollback_of_a_connections_own_savepoint_lets_the_unit_commit(
    cp_rows: str,
) -> None:
    """SQLAlchemy's Core savepoint (the session's connection's ``begin_nested()``) emits no
    session event: its rollback undoes the error all the same."""
    async with Database(cp_rows) as db:
        async with db.transaction() as session:
            await session.execute(INSERT, {"id": 1})
            connection = await session.connection()
            with contextlib.suppress(DBAPIError):
                async with connection.begin_nested():
                    await connection.execute(INSERT, {"id": 1})
            await session.execute(INSERT, {"id": 2})
        assert await stored_ids(db) == [1, 2]


async def test_a_failure_left_by_a_use_outside_units_is_no_later_transactions(
    cp_rows: str,
) -> None:
    """The engine used directly (a migration, a script) catches a violation and rolls back;
    a later transaction on the same pooled connection that fails otherwise is refused for its
    own error, not for the earlier one (a 409 naming the wrong constraint)."""
    async with Database(cp_rows, pool_size=1, max_overflow=0) as db:
        async with db.engine.connect() as connection:
            await connection.execute(INSERT, {"id": 1})
            await connection.commit()
            with contextlib.suppress(IntegrityError):
                await connection.execute(INSERT, {"id": 1})
            await connection.rollback()
        async with db.engine.connect() as connection:
            with contextlib.suppress(DBAPIError):
                await connection.execute(text("SELECT 1 / 0"))
            with pytest.raises(DBAPIError) as refused:
                await connection.execute(INSERT, {"id": 2})
            await connection.rollback()
        assert "division by zero" in str(refused.value)


class Upload:
    """What an endpoint holds while it works (a file it read, say)."""


async def test_a_failed_request_leaves_nothing_of_itself_on_its_pooled_connection(
    cp_rows: str,
) -> None:
    """The failure kept on the connection (its traceback, the request's frames) is dropped
    when the connection goes back to the pool: an idle pool held each failed request's
    locals until that connection's next unit (20 MB per request, measured)."""
    held: list[weakref.ref[Upload]] = []
    async with Database(cp_rows, pool_size=1, max_overflow=0) as db:

        async def add_twice(session: AsyncSession) -> None:
            upload = Upload()
            held.append(weakref.ref(upload))
            await session.execute(INSERT, {"id": 1})
            await session.execute(INSERT, {"id": 1})

        answer = await send(app_with(db.session, {"POST /rows": add_twice}), "POST /rows")
        gc.collect()
        assert answer.status_code == 500
        assert held[0]() is None
