"""Savepoints the application opens inside a unit: what their rollback undoes besides the rows.

The session's savepoints (``session.begin_nested()``) and the connection's own
(``(await session.connection()).begin_nested()``) alike: a rollback drops the on-commit
callbacks registered under it and undoes a ``use_schema()`` run in it, as the server undoes
the rows and the ``SET LOCAL``. Each case runs on a pooled unit (production) and on one bound
to a test's connection (the pytest plugin's, where the unit itself is a savepoint), and is
judged by what was committed, read back in a unit of its own; so is a savepoint the unit
left open, which its commit ends. A conflict caught under a savepoint runs the whole unit
again, but not in a test whose transaction it ended.
"""

import asyncio
import contextlib
import contextvars
import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database, LifecycleError, testing
from tests.helpers import Tables, admin, send, stored

INSERT = text("INSERT INTO sp_rows (id) VALUES (:id)")
# The app's Database when its units are bound to a test's connection: never connected.
NOWHERE = "postgresql+asyncpg://nobody@127.0.0.1:9/production"


class Boom(Exception):
    """The error that makes a savepoint's block fail."""


@pytest.fixture(params=["pooled", "bound"])
async def db(
    request: pytest.FixtureRequest, database_url: str, tables: Tables
) -> AsyncIterator[Database]:
    """A Database whose units run on pooled connections, or bound to a test's connection
    (each unit a savepoint of the test's transaction); with an empty ``sp_rows`` table."""
    await tables.create("sp_rows", "id INTEGER PRIMARY KEY")
    if request.param == "pooled":
        async with Database(database_url) as pooled:
            yield pooled
        return
    bound = Database(NOWHERE)
    with testing.any_loop_engine(database_url) as engine:
        async with testing.rolled_back(bound, engine):
            yield bound


CURRENT = text("SELECT current_schema()")


@pytest.fixture
async def other_schema(db: Database) -> AsyncIterator[str]:
    """The schema sp_other, made for the test and dropped after it."""
    async with db.transaction() as session:
        await session.execute(text("CREATE SCHEMA IF NOT EXISTS sp_other"))
    yield "sp_other"
    async with db.transaction() as session:
        await session.execute(text("DROP SCHEMA sp_other"))


async def stored_ids(db: Database) -> list[int]:
    return await stored(db, "SELECT id FROM sp_rows ORDER BY id")


async def add(db: Database, session: AsyncSession, row: int, calls: list[int]) -> None:
    """Insert ``row``, with a callback that appends it to ``calls``."""
    await session.execute(INSERT, {"id": row})
    db.on_commit(lambda: calls.append(row))


async def _in_a_block(db: Database, session: AsyncSession, calls: list[int]) -> None:
    connection = await session.connection()
    with contextlib.suppress(Boom):
        async with connection.begin_nested():
            await add(db, session, 2, calls)
            raise Boom


async def _rolled_back_by_hand(db: Database, session: AsyncSession, calls: list[int]) -> None:
    savepoint = await (await session.connection()).begin_nested()
    await add(db, session, 2, calls)
    await savepoint.rollback()


ROLLBACK_WAYS: dict[str, Callable[[Database, AsyncSession, list[int]], Awaitable[None]]] = {
    "block": _in_a_block,
    "by-hand": _rolled_back_by_hand,
}


@pytest.mark.parametrize("way", ROLLBACK_WAYS)
async def test_a_callback_under_a_connections_savepoint_is_dropped_at_its_rollback(
    db: Database, way: str
) -> None:
    """The connection's own savepoint, which no session event tells of: its rollback drops
    the callback registered under it, as the row, and keeps the unit's others."""
    calls: list[int] = []
    async with db.transaction() as session:
        await add(db, session, 1, calls)
        await ROLLBACK_WAYS[way](db, session, calls)
        await add(db, session, 3, calls)
    assert (calls, await stored_ids(db)) == ([1, 3], [1, 3])


@pytest.mark.parametrize("commit", ["at-the-end", "mid-unit"])
async def test_a_connections_savepoint_left_open_ends_with_the_units_commit(
    db: Database, commit: str
) -> None:
    """A savepoint of the connection's own that the unit never ends: its transaction's COMMIT
    keeps its rows and runs its callbacks. Bound to a test's connection, the release of the
    unit's savepoint found it still open: SQLAlchemy warned ("nested transaction already
    deassociated from connection"), an error where warnings are."""
    calls: list[int] = []
    async with db.transaction() as session:
        await add(db, session, 1, calls)
        await (await session.connection()).begin_nested()
        await add(db, session, 2, calls)
        if commit == "mid-unit":
            await session.commit()
            await add(db, session, 3, calls)
    kept = [1, 2] if commit == "at-the-end" else [1, 2, 3]
    assert (calls, await stored_ids(db)) == (kept, kept)


# Each level of three nested savepoints: the session's, the connection's, the session's.
LEVELS = ("session", "connection", "session")
ENDS = ["".join(ends) for ends in itertools.product("rc", repeat=3)]  # r: rollback, c: release


async def _savepoint(session: AsyncSession, kind: str) -> Any:
    if kind == "session":
        return await session.begin_nested()
    return await (await session.connection()).begin_nested()


@pytest.mark.parametrize("ends", ENDS)
async def test_callbacks_at_each_level_of_nested_savepoints_follow_how_each_ends(
    db: Database, ends: str
) -> None:
    """Three savepoints deep, a row and a callback before and after the next level at each,
    then each ended (``ends``, innermost last: r rolled back, c released): a level's rows and
    callbacks are kept when it and every level around it were released."""
    calls: list[int] = []

    async def level(session: AsyncSession, depth: int) -> None:
        if depth == len(LEVELS):
            return
        savepoint = await _savepoint(session, LEVELS[depth])
        await add(db, session, 10 * (depth + 1), calls)
        await level(session, depth + 1)
        await add(db, session, 10 * (depth + 1) + 1, calls)
        await (savepoint.rollback() if ends[depth] == "r" else savepoint.commit())

    async with db.transaction() as session:
        await add(db, session, 1, calls)
        await level(session, 0)
    kept = [1]
    for depth in range(len(LEVELS)):
        if ends[depth] == "r":
            break
        kept += [10 * (depth + 1), 10 * (depth + 1) + 1]
    assert (sorted(calls), await stored_ids(db)) == (sorted(kept), sorted(kept))


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_use_schema_under_a_connections_savepoint_is_undone_by_its_rollback(
    db: Database, other_schema: str
) -> None:
    """PostgreSQL undoes the SET LOCAL with the savepoint; the unit targets its schema before
    it again, and a use_schema() of the same one after it is run again, not taken as done."""
    async with db.transaction() as session:
        before = await session.scalar(CURRENT)
        savepoint = await (await session.connection()).begin_nested()
        await db.use_schema(other_schema)
        inside = await session.scalar(CURRENT)
        await savepoint.rollback()
        after = await session.scalar(CURRENT)
        await db.use_schema(other_schema)
        again = await session.scalar(CURRENT)
    assert (inside, after, again) == (other_schema, before, other_schema)


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
@pytest.mark.parametrize("end", ["rollback", "release"])
async def test_a_use_schema_right_after_begin_nested_is_the_savepoints_alone(
    db: Database, other_schema: str, end: str
) -> None:
    """``begin_nested()`` sends its SAVEPOINT at the savepoint's first use, which a
    ``use_schema()`` right after it was: the savepoint began with the new schema applied and
    kept it as what its rollback puts back, so a commit after the rollback applied it again;
    and bound to a test's connection, the unit's end put nothing back, and the test's next
    unit ran on that schema."""
    async with db.transaction() as session:
        before = await session.scalar(CURRENT)
        savepoint = await session.begin_nested()
        await db.use_schema(other_schema)
        await (savepoint.rollback() if end == "rollback" else savepoint.commit())
        await session.commit()
        after_the_commit = await session.scalar(CURRENT)
    async with db.transaction() as session:
        next_unit = await session.scalar(CURRENT)
    kept = before if end == "rollback" else other_schema
    assert (after_the_commit, next_unit) == (kept, before)


@pytest.fixture
async def pg_rows(database_url: str, tables: Tables) -> str:
    """``database_url``, with ``sp_rows`` holding rows 1 and 2 at 0."""
    await tables.create("sp_rows", "id INTEGER PRIMARY KEY, n INTEGER NOT NULL")
    async with admin(database_url) as connection:
        await connection.execute(text("INSERT INTO sp_rows VALUES (1, 0), (2, 0)"))
    return database_url


async def add_to_both(db: Database, session: AsyncSession, attempt: int, ran: list[int]) -> None:
    """Read both rows, add 10 to row 1 under a savepoint that catches its failure, and 100
    to row 2; on the first attempt, another unit adds 1 to row 1 after the read."""

    async def concurrent_update() -> None:
        async with db.transaction() as other:
            await other.execute(text("UPDATE sp_rows SET n = n + 1 WHERE id = 1"))

    await session.execute(text("SELECT n FROM sp_rows"))  # the snapshot
    if attempt == 1:  # in a context of its own: no part of the attempt
        loop = asyncio.get_running_loop()
        await loop.create_task(concurrent_update(), context=contextvars.Context())
    db.on_commit(functools.partial(ran.append, attempt))
    with contextlib.suppress(DBAPIError):
        async with session.begin_nested():
            await session.execute(text("UPDATE sp_rows SET n = n + 10 WHERE id = 1"))
    await session.execute(text("UPDATE sp_rows SET n = n + 100 WHERE id = 2"))


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
@pytest.mark.parametrize("isolation_level", ["REPEATABLE READ", "SERIALIZABLE"])
async def test_a_serialization_failure_caught_under_a_savepoint_runs_the_unit_again_whole(
    pg_rows: str, isolation_level: Literal["REPEATABLE READ", "SERIALIZABLE"]
) -> None:
    """PostgreSQL rolls back to the savepoint alone at a serialization failure; the unit that
    caught it there and went on would commit its other update on a stale read, without the
    one the savepoint dropped. Its COMMIT raises the failure, and it runs again whole."""
    ran: list[int] = []
    async with Database(pg_rows) as db:
        retrying = db.retrying(isolation_level=isolation_level, backoff=0)
        async for attempt in retrying:
            async with attempt as session:
                await add_to_both(db, session, attempt.number, ran)
        kept = await stored(db, "SELECT n FROM sp_rows ORDER BY id")
    assert (retrying.retries, ran, kept) == (1, [2], [11, 100])


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_request_that_caught_a_serialization_failure_under_a_savepoint_is_retried(
    pg_rows: str,
) -> None:
    """The same in an endpoint under ``@db.retry()``: run again whole, then 200."""
    ran: list[int] = []
    attempts: list[int] = []
    async with Database(pg_rows) as db:
        session_type = Annotated[
            AsyncSession, Depends(db.session_with(isolation_level="REPEATABLE READ"))
        ]
        app = FastAPI()

        @app.post("/both")
        @db.retry(backoff=0)
        async def both(session: session_type) -> None:
            attempts.append(len(attempts) + 1)
            await add_to_both(db, session, attempts[-1], ran)

        response = await send(app, "POST /both")
        kept = await stored(db, "SELECT n FROM sp_rows ORDER BY id")
    assert (response.status_code, attempts, ran, kept) == (200, [1, 2], [2], [11, 100])


@pytest.mark.parametrize("db_backend", ["asyncmy"])
@pytest.mark.parametrize("caught", [False, True], ids=["raised", "caught-under-a-savepoint"])
async def test_a_deadlock_that_rolled_back_a_tests_transaction_is_not_retried_inside_it(
    database_url: str, tables: Tables, caught: bool
) -> None:
    """InnoDB rolls back the whole transaction at a deadlock: bound to a test's connection,
    the test's, savepoints and all. Running the unit again there failed with a
    SessionSharedError that said nothing of the deadlock; LifecycleError says what happened."""
    await tables.create("sp_rows", "id INTEGER PRIMARY KEY, n INTEGER NOT NULL")
    async with admin(database_url) as connection:
        values = ", ".join(f"({row}, 0)" for row in range(1, 101))
        await connection.execute(text(f"INSERT INTO sp_rows VALUES {values}"))
    bound = Database(NOWHERE)
    lock_two = text("UPDATE sp_rows SET n = n + 10 WHERE id = 2")
    with testing.any_loop_engine(database_url) as engine:
        async with testing.rolled_back(bound, engine):
            others_locked, units_locked = asyncio.Event(), asyncio.Event()

            async def heavier() -> None:
                # Outside the test's transaction, and heavier: InnoDB's victim is the unit.
                async with engine.begin() as other:  # committed at the block's end
                    await other.execute(text("UPDATE sp_rows SET n = n + 1 WHERE id >= 2"))
                    others_locked.set()
                    await units_locked.wait()
                    await other.execute(text("UPDATE sp_rows SET n = n + 1 WHERE id = 1"))

            async def retried_unit() -> None:
                async for attempt in bound.retrying(backoff=0):
                    async with attempt as session:
                        await session.execute(text("UPDATE sp_rows SET n = n + 10 WHERE id = 1"))
                        units_locked.set()
                        if not caught:
                            await session.execute(lock_two)
                            continue
                        with contextlib.suppress(DBAPIError):
                            async with session.begin_nested():
                                await session.execute(lock_two)

            task = asyncio.create_task(heavier())
            await others_locked.wait()
            with pytest.raises(LifecycleError, match="rolled back the test's whole transaction"):
                await retried_unit()
            await task
