"""An error the application catches inside a unit never makes the unit look committed.

PostgreSQL aborts a transaction at its first error and answers a later COMMIT with ROLLBACK,
raising nothing; InnoDB rolls back the whole transaction at a deadlock and runs what follows
in a new one. The tests catch the server's errors inside units as an application would, and
read back what was stored, on every driver.
"""

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import Integer, cast, literal, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import ConstraintViolationError, Database, DatabaseUnavailableError
from tests.conftest import POSTGRES_DRIVERS, url_for
from tests.helpers import BACKEND_ID, Tables, admin, app_with, kill, send, stored

INSERT = text("INSERT INTO ce_rows (id) VALUES (:id)")
# Statement-level errors roll back the statement alone there: what follows commits.
STATEMENT_LEVEL = ("asyncmy", "sqlite")


@pytest.fixture
async def ce_rows(tables: Tables) -> None:
    """An empty ``ce_rows`` table on the test's database (``db``, ``database_url``)."""
    await tables.create("ce_rows", "id INTEGER PRIMARY KEY")


async def _with_rows(url: str) -> AsyncIterator[str]:
    tables = Tables(url)
    await tables.create("ce_rows", "id INTEGER PRIMARY KEY")
    yield url
    await tables.drop_all()


@pytest.fixture
async def postgres_rows(postgres_url: str) -> AsyncIterator[str]:
    """``postgres_url``, with an empty ``ce_rows`` table."""
    async for url in _with_rows(postgres_url):
        yield url


@pytest.fixture(params=[*POSTGRES_DRIVERS, "asyncmy"])
async def server_rows(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A server's URL (SQLite has one writer at a time: no deadlock), with ``ce_rows``."""
    async for url in _with_rows(url_for(request.param, tmp_path)):
        yield url


async def stored_ids(db: Database) -> list[int]:
    return await stored(db, "SELECT id FROM ce_rows ORDER BY id")


async def insert_caught(session: AsyncSession, row: int) -> None:
    """Insert ``row`` and swallow the server's refusal, as an "insert if new" written badly."""
    with contextlib.suppress(DBAPIError):
        await session.execute(INSERT, {"id": row})


@pytest.mark.usefixtures("ce_rows")
async def test_a_unit_that_caught_an_error_does_not_commit_on_postgresql(
    db: Database, db_backend: str
) -> None:
    """On PostgreSQL the unit raises the caught violation at its end (409's error), runs no
    callback and stores nothing; elsewhere the server rolled back the statement alone, and
    the rest commits as the server says."""
    ran: list[str] = []
    failed: BaseException | None = None
    try:
        async with db.transaction() as session:
            await session.execute(INSERT, {"id": 1})
            db.on_commit(lambda: ran.append("committed"))
            await insert_caught(session, 1)
            await session.execute(INSERT, {"id": 2})
    except DBAPIError as error:  # PostgreSQL refuses the statement after the violation
        failed = error
    except ConstraintViolationError as error:
        failed = error
    if db_backend in STATEMENT_LEVEL:
        assert (failed, ran, await stored_ids(db)) == (None, ["committed"], [1, 2])
        return
    # The statement after the violation is refused for it: the violation is raised again.
    assert "ce_rows_pkey" in str(failed), failed
    assert ran == []
    assert await stored_ids(db) == []


async def test_the_caught_error_is_raised_at_commit_naming_its_constraint(
    postgres_rows: str,
) -> None:
    """Nothing after the error: the COMMIT itself is refused, with the violation's name."""
    async with Database(postgres_rows, pool_size=1, max_overflow=0) as db:

        async def add_twice() -> None:
            async with db.transaction() as session:
                await session.execute(INSERT, {"id": 1})
                await insert_caught(session, 1)

        with pytest.raises(ConstraintViolationError) as raised:
            await add_twice()
        assert raised.value.constraint == "ce_rows_pkey"
        assert "the error was caught" in str(raised.value)
        # The pool's one connection came back usable: rolled back, not aborted.
        async with db.transaction() as session:
            await session.execute(INSERT, {"id": 3})
        assert await stored_ids(db) == [3]


@pytest.mark.usefixtures("ce_rows")
async def test_an_error_rolled_back_to_its_savepoint_lets_the_unit_commit(
    db: Database,
) -> None:
    """The right way to go on after an error: the savepoint's rollback undoes it, and the
    rest of the unit commits, its callbacks with it."""
    ran: list[str] = []
    async with db.transaction() as session:
        await session.execute(INSERT, {"id": 1})
        db.on_commit(lambda: ran.append("committed"))
        try:
            async with session.begin_nested():
                await session.execute(INSERT, {"id": 1})
        except DBAPIError:
            pass
        await session.execute(INSERT, {"id": 2})
    assert (ran, await stored_ids(db)) == (["committed"], [1, 2])


async def test_a_request_that_caught_an_error_is_no_2xx(postgres_rows: str) -> None:
    """Through FastAPI: the endpoint returns normally, and the client gets the 409 of the
    violation, not a 200 for a write that was never kept."""
    async with Database(postgres_rows) as db:

        async def add_twice(session: AsyncSession) -> dict[str, bool]:
            await session.execute(INSERT, {"id": 7})
            await insert_caught(session, 7)
            return {"stored": True}

        response = await send(app_with(db.session, {"POST /rows": add_twice}), "POST /rows")
        assert response.status_code == 409, response.text
        assert response.json()["detail"]["constraint"] == "ce_rows_pkey"
        assert await stored_ids(db) == []


async def _conflicting_units(
    db: Database, guarded: Callable[[AsyncSession, int, int], object]
) -> tuple[list[int], list[tuple[int, int]]]:
    """Two retried units that lock rows 1 and 2 in opposite orders, both at once on their
    first attempts: one is the deadlock's victim. Each inserts a row of its own (10 + me)
    before and (20 + me) after the ``guarded`` step. Returns the retries and the callbacks
    that ran (unit, attempt)."""
    async with db.transaction() as session:
        await session.execute(INSERT, {"id": 1})
        await session.execute(INSERT, {"id": 2})
    both_locked = asyncio.Barrier(2)
    ran: list[tuple[int, int]] = []

    async def unit(me: int, other: int) -> int:
        retrying = db.retrying(attempts=3, backoff=0)
        async for attempt in retrying:
            async with attempt as session:
                await session.execute(INSERT, {"id": 10 + me})
                db.on_commit(functools.partial(ran.append, (me, attempt.number)))
                lock = text("UPDATE ce_rows SET id = id WHERE id = :id")
                await session.execute(lock, {"id": me})
                if attempt.number == 1:
                    await asyncio.wait_for(both_locked.wait(), 10)
                await guarded(session, other, attempt.number)  # type: ignore[misc]
                await session.execute(INSERT, {"id": 20 + me})
        return retrying.retries

    retries = await asyncio.gather(unit(1, 2), unit(2, 1))
    return sorted(retries), sorted(ran)


@pytest.mark.parametrize("under", ["nothing", "session-savepoint", "connection-savepoint"])
async def test_a_caught_deadlock_is_retried_not_half_committed(
    server_rows: str, under: str
) -> None:
    """The deadlock's victim catches the error (under a savepoint, the session's or the
    connection's own, or not) and goes on: the server had rolled back its whole unit
    (InnoDB), aborted it (PostgreSQL), or rolled it back to the savepoint (PostgreSQL), which
    the rest of the unit cannot stand on, so its COMMIT raises the deadlock (on PostgreSQL
    without a savepoint, its next statement already), and the unit runs again whole; each
    unit's callback runs once."""

    async def lock_other(session: AsyncSession, other: int, attempt: int) -> None:
        lock = text("UPDATE ce_rows SET id = id WHERE id = :id")
        try:
            if under == "session-savepoint":
                async with session.begin_nested():
                    await session.execute(lock, {"id": other})
            elif under == "connection-savepoint":
                connection = await session.connection()
                async with connection.begin_nested():
                    await connection.execute(lock, {"id": other})
            else:
                await session.execute(lock, {"id": other})
        except DBAPIError:
            pass

    async with Database(server_rows) as db:
        retries, ran = await _conflicting_units(db, lock_other)
        ids = await stored_ids(db)
    assert retries == [0, 1]
    assert [unit for unit, _ in ran] == [1, 2]  # once each, the victim's for its second run
    assert ids == [1, 2, 11, 12, 21, 22]


async def test_an_error_at_commit_leaves_nothing_for_the_next_unit(postgres_url: str) -> None:
    """A COMMIT that fails (a deferred constraint) ends its transaction: the next unit on the
    same connection commits (the failure, kept on the connection, was raised again there)."""
    tables = Tables(postgres_url)
    deferred = "id INTEGER, UNIQUE (id) DEFERRABLE INITIALLY DEFERRED"
    await tables.create("ce_rows", deferred)
    try:
        async with Database(postgres_url, pool_size=1, max_overflow=0) as db:

            async def add_twice() -> None:
                async with db.transaction() as session:
                    await session.execute(INSERT, {"id": 1})
                    await session.execute(INSERT, {"id": 1})

            with pytest.raises(ConstraintViolationError):
                await add_twice()
            async with db.transaction() as session:
                await session.execute(INSERT, {"id": 2})
            assert await stored_ids(db) == [2]
    finally:
        await tables.drop_all()


async def test_a_read_that_failed_before_the_transaction_began_is_no_failure(
    postgres_rows: str,
) -> None:
    """Reads before a unit's first write run outside a transaction (deferred BEGIN): one that
    fails aborts nothing on the server, and the unit's write after it commits."""
    async with Database(postgres_rows) as db:
        async with db.transaction() as session:
            with contextlib.suppress(DBAPIError):
                await session.scalar(select(cast(literal("abc"), Integer)))
            await session.execute(INSERT, {"id": 5})
        assert await stored_ids(db) == [5]


SLOW_AT_COMMIT = """
CREATE FUNCTION ce_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER ce_slow AFTER INSERT ON ce_rows DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION ce_slow_commit();
"""


async def test_a_connection_lost_during_the_commit_says_the_outcome_is_unknown(
    postgres_rows: str,
) -> None:
    """A deferred trigger holds the COMMIT while the backend is terminated: the error says
    the outcome is not known (it said "try later", and a worker that did stored twice what
    had committed before the answer was lost)."""
    async with admin(postgres_rows) as connection:
        for statement in SLOW_AT_COMMIT.strip().split(";\n"):
            await connection.execute(text(statement))
    backend = BACKEND_ID["postgresql"]
    try:
        async with Database(postgres_rows) as db:

            async def write() -> None:
                async with db.transaction() as session:
                    held.append(int(await session.scalar(text(backend)) or 0))
                    await session.execute(INSERT, {"id": 1})

            held: list[int] = []
            writing = asyncio.ensure_future(write())
            async with admin(postgres_rows) as connection:
                waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                async with asyncio.timeout(10):
                    while not await connection.scalar(text(waiting)):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                await kill(connection, held[0])
            with pytest.raises(DatabaseUnavailableError) as raised:
                await writing
    finally:
        async with admin(postgres_rows) as connection:
            await connection.execute(text("DROP TRIGGER IF EXISTS ce_slow ON ce_rows"))
            await connection.execute(text("DROP FUNCTION IF EXISTS ce_slow_commit()"))
    assert raised.value.cause == "connection_lost"
    assert raised.value.outcome_unknown
    assert "whether the transaction committed is not known" in str(raised.value)


async def test_savepoints_left_open_over_a_caught_error_give_their_connection_back(
    postgres_rows: str,
) -> None:
    """Three savepoints left open, a caught error in the innermost: SQLAlchemy refuses to
    close such a session (nor invalidate it), and the connection stayed checked out, idle in
    an aborted transaction holding its locks, every later unit waiting pool_timeout."""
    async with Database(postgres_rows, pool_size=1, max_overflow=0, pool_timeout=2) as db:

        async def leave_savepoints_open() -> None:
            async with db.transaction() as session:
                for _ in range(3):
                    await session.begin_nested()
                await session.execute(INSERT, {"id": 1})
                await insert_caught(session, 1)

        with pytest.raises(ConstraintViolationError):
            await leave_savepoints_open()
        assert db.stats().checked_out == 0
        async with db.transaction() as session:
            await session.execute(INSERT, {"id": 9})
        assert await stored_ids(db) == [9]


async def test_a_transaction_sqlite_rolled_back_by_itself_does_not_commit_half(
    sqlite_url: str,
) -> None:
    """ON CONFLICT ROLLBACK ends SQLite's whole transaction (no rule of the backend's says
    so: the driver does); what follows ran in autocommit: half a unit kept, its callback
    run."""
    tables = Tables(sqlite_url)
    await tables.create("ce_rows", "id INTEGER PRIMARY KEY ON CONFLICT ROLLBACK")
    ran: list[str] = []
    try:
        async with Database(sqlite_url) as db:

            async def add() -> None:
                async with db.transaction() as session:
                    await session.execute(INSERT, {"id": 1})
                    db.on_commit(lambda: ran.append("committed"))
                    await insert_caught(session, 1)
                    await session.execute(INSERT, {"id": 2})

            with pytest.raises(ConstraintViolationError):
                await add()
            assert (ran, await stored_ids(db)) == ([], [])
    finally:
        await tables.drop_all()
