"""db.lease(): the driver connection, lent from dbscope's pool, and given back safely.

Every fault is real, as in test_outages.py: the pool is exhausted by a lease that holds the
only connection, backends are terminated from a connection of the test's own, queries are
cancelled while the server runs them. The bodies speak each driver's own API
(tests/driver_connections.py), since that is what a lease hands over. ``Depends(db.leased)``
is in test_lease_http.py.
"""

import asyncio
import os
import warnings

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from dbscope import Database, DatabaseUnavailableError, DbscopeError, LifecycleError
from dbscope.testing import open_session, rolled_back
from tests import helpers
from tests.driver_connections import (
    SMALL_POOL,
    backend_id_query,
    driver_of,
    execute,
    fetch_value,
    in_transaction,
)

TABLE = "lease_rows"


# -- leasing, raising and killing -------------------------------------------------------------


async def lease_and_run(db: Database, sql: str) -> None:
    """Run one statement on a leased connection."""
    async with db.lease() as connection:
        await execute(connection, sql)


async def lease_then_raise(db: Database, error: Exception) -> None:
    """Run a query on a leased connection, then raise ``error`` inside the block."""
    async with db.lease() as connection:
        await fetch_value(connection, "SELECT 1")
        raise error


async def insert_then_raise(db: Database, error: Exception) -> None:
    """Insert a row in a transaction, then raise ``error`` inside it."""
    async with db.transaction() as session:
        await session.execute(text(f"INSERT INTO {TABLE} (value) VALUES (2)"))
        raise error


async def insert_in_lease_then_raise(db: Database, error: Exception) -> None:
    """Insert a row through a leased connection, then raise ``error`` inside the block."""
    async with db.lease() as connection:
        await execute(connection, f"INSERT INTO {TABLE} (value) VALUES (2)")
        raise error


async def kill_mid_lease(db: Database, connection: AsyncConnection) -> None:
    """Lease a connection, end its server process from ``connection``, then query on it."""
    async with db.lease() as leased:
        await helpers.kill(connection, await fetch_value(leased, backend_id_query(leased)))
        await fetch_value(leased, "SELECT 1")


# -- the table --------------------------------------------------------------------------------


@pytest.fixture
async def lease_rows(tables: helpers.Tables) -> None:
    """An empty ``lease_rows`` table for the test."""
    await tables.create(TABLE, "value INTEGER NOT NULL")


# -- db.lease() -------------------------------------------------------------------------------


async def test_a_lease_reads_through_the_driver_connection(
    database_url: str, db_backend: str
) -> None:
    """The block gets the driver's own connection, checked out of the pool, then returned."""
    async with Database(database_url) as db:
        async with db.lease() as connection:
            value = await fetch_value(connection, "SELECT 1")
            during = db.stats().checked_out
        after = db.stats()
    expected_driver = "aiosqlite" if db_backend == "sqlite" else db_backend
    assert driver_of(connection) == expected_driver
    assert value == 1
    assert during == 1
    assert (after.checked_out, after.invalidated) == (0, 0)


@pytest.mark.usefixtures("lease_rows")
async def test_a_write_through_a_lease_commits_by_itself(database_url: str) -> None:
    """Without a transaction of its own, a statement is committed when it returns."""
    async with Database(database_url) as db, db.lease() as leased:
        await execute(leased, f"INSERT INTO {TABLE} (value) VALUES (1)")
        seen_meanwhile = await helpers.count_rows(database_url, TABLE)
    assert seen_meanwhile == 1


@pytest.mark.usefixtures("lease_rows")
async def test_a_lease_leaves_the_connection_to_sessions_as_it_found_it(
    database_url: str,
) -> None:
    """After a lease, a transaction on the same pooled connection still rolls back as a whole."""
    async with Database(database_url, **SMALL_POOL) as db:
        await lease_and_run(db, f"INSERT INTO {TABLE} (value) VALUES (1)")
        with pytest.raises(RuntimeError, match="undo"):
            await insert_then_raise(db, RuntimeError("undo"))
        async with db.transaction() as session:
            values = (await session.execute(text(f"SELECT value FROM {TABLE}"))).scalars().all()
    assert values == [1]


async def test_an_error_of_the_body_propagates_unchanged_and_the_connection_returns(
    database_url: str,
) -> None:
    """An application error leaves the block as raised; the connection goes back, kept."""
    error = ValueError("not a number")
    async with Database(database_url) as db:
        with pytest.raises(ValueError, match="not a number") as info:
            await lease_then_raise(db, error)
        stats = db.stats()
    assert info.value is error
    assert (stats.checked_out, stats.invalidated) == (0, 0)


async def test_a_database_error_propagates_unchanged_and_the_connection_stays_usable(
    database_url: str,
) -> None:
    """A syntax error is the driver's own exception, not an outage; the connection serves on."""
    async with Database(database_url, **SMALL_POOL) as db:
        with pytest.raises(Exception) as info:  # noqa: PT011 - each driver has its own class
            await lease_and_run(db, "SELEC 1")
        async with db.lease() as connection:
            value = await fetch_value(connection, "SELECT 1")
        stats = db.stats()
    assert not isinstance(info.value, DbscopeError)
    assert type(info.value).__module__.partition(".")[0] in (
        "asyncpg",
        "psycopg",
        "asyncmy",
        "sqlite3",
    )
    assert value == 1
    assert (stats.checked_out, stats.invalidated) == (0, 0)


async def test_an_os_error_of_the_application_is_not_an_outage(database_url: str) -> None:
    """An OSError raised by the body itself, on a live connection, propagates unchanged."""
    error = FileNotFoundError("settings.toml")
    async with Database(database_url) as db:
        with pytest.raises(FileNotFoundError) as info:
            await lease_then_raise(db, error)
        stats = db.stats()
    assert info.value is error
    assert (stats.checked_out, stats.invalidated) == (0, 0)


@pytest.mark.usefixtures("lease_rows")
async def test_a_transaction_left_open_is_rolled_back_before_the_next_lease(
    database_url: str,
) -> None:
    """A BEGIN without COMMIT is undone at the end of the block; the next user sees nothing."""
    async with Database(database_url, **SMALL_POOL) as db:
        async with db.lease() as connection:
            await execute(connection, "BEGIN")
            await execute(connection, f"INSERT INTO {TABLE} (value) VALUES (1)")
            opened = in_transaction(connection)
        async with db.lease() as connection:
            still_open = in_transaction(connection)
            visible = await fetch_value(connection, f"SELECT count(*) FROM {TABLE}")
        stats = db.stats()
    assert opened
    assert not still_open
    assert visible == 0
    assert (stats.checked_out, stats.invalidated) == (0, 0)  # rolled back, not thrown away


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
@pytest.mark.parametrize("cancelled_by", ["asyncio.wait_for", "anyio cancel scope"])
async def test_a_lease_cancelled_mid_query_is_discarded(
    database_url: str, cancelled_by: str
) -> None:
    """A block cancelled while the server sleeps throws its connection away, and the server
    stops the query; the pool serves the next lease. A cancel scope, which cancels every
    await of the clean-up again (Starlette's on a client disconnect), changes nothing."""
    name = f"dbscope-test-lease-{os.getpid()}"
    async with Database(database_url, application_name=name, **SMALL_POOL) as db:

        async def sleep_on_the_server() -> None:
            async with db.lease() as connection:
                await execute(connection, "SELECT pg_sleep(30)")

        if cancelled_by == "asyncio.wait_for":
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sleep_on_the_server(), timeout=0.3)
        else:
            with anyio.move_on_after(0.3) as scope:
                await sleep_on_the_server()
            assert scope.cancelled_caught
        stats = db.stats()
        async with db.lease() as connection:
            value = await fetch_value(connection, "SELECT 1")
        async with helpers.admin(database_url) as connection:
            sleeping = (
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = :name AND query LIKE 'SELECT pg_sleep%'"
            )
            await helpers.wait_until_none(connection, sleeping, name=name)
    assert (stats.checked_out, stats.invalidated) == (0, 1)
    assert value == 1


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_timeout_of_the_body_inside_a_lease_propagates_as_it_is(database_url: str) -> None:
    """The application's own timeout around a slow statement is no outage: asyncmy closes the
    connection it cut short, and the lease said "connection lost" (a 503) for it."""
    sleep = "SELECT SLEEP(2)" if database_url.startswith("mysql") else "SELECT pg_sleep(2)"
    async with Database(database_url, **SMALL_POOL) as db:

        async def sleep_too_long() -> None:
            async with db.lease() as connection, asyncio.timeout(0.3):
                await execute(connection, sleep)

        with pytest.raises(TimeoutError):
            await sleep_too_long()
        async with db.lease() as connection:
            value = await fetch_value(connection, "SELECT 1")
        stats = db.stats()
    assert value == 1
    assert stats.checked_out == 0


# A statement SQLite takes a moment over, on aiosqlite's thread: about 0.25 s here, so that it
# is still under way at the cancel (0.05 s) and over well within the bound of the discarded
# connection's close (CLOSE_TIMEOUT, 2 s) on a machine eight times as busy: past that bound
# the lease gives its place back with the file still locked, by design.
SLOW_ON_SQLITE = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) "
    "SELECT count(*) FROM n"
)


@pytest.mark.parametrize("db_backend", ["sqlite"])
@pytest.mark.usefixtures("lease_rows")
async def test_a_lease_cancelled_mid_write_on_sqlite_gives_its_place_back_with_the_file_unlocked(
    database_url: str,
) -> None:
    """aiosqlite closes a discarded connection on its thread, after the statement under way:
    the lease gives its place in the pool back only then, so that the next unit does not find
    the file locked by the write it had begun (reading first, SQLite's BUSY comes at once)."""
    async with Database(database_url, pool_size=1, max_overflow=0) as db:
        with anyio.move_on_after(0.05) as scope:
            async with db.lease() as connection:
                await execute(connection, "BEGIN")
                await execute(connection, f"INSERT INTO {TABLE} (value) VALUES (1)")
                await fetch_value(connection, SLOW_ON_SQLITE)
        assert scope.cancelled_caught
        async with db.transaction() as session:
            rows = await session.scalar(text(f"SELECT count(*) FROM {TABLE}"))
            await session.execute(text(f"INSERT INTO {TABLE} (value) VALUES (2)"))
        stats = db.stats()
    assert (rows, stats.checked_out, stats.invalidated) == (0, 0, 1)


async def test_an_exhausted_pool_raises_pool_timeout(database_url: str) -> None:
    """While a lease holds the only connection, another lease fails within pool_timeout."""
    async with Database(database_url, **SMALL_POOL) as db:
        async with db.lease():
            with anyio.fail_after(5), pytest.raises(DatabaseUnavailableError) as info:
                await lease_and_run(db, "SELECT 1")
            during = db.stats().checked_out
        after = db.stats().checked_out
    assert info.value.cause == "pool_timeout"
    assert info.value.retry_after > 0
    assert (during, after) == (1, 0)


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_backend_terminated_mid_lease_raises_connection_lost(database_url: str) -> None:
    """A lease whose server process is killed gets DatabaseUnavailableError("connection_lost")
    at its next statement, and the dead connection leaves the pool."""
    async with Database(database_url) as db, helpers.admin(database_url) as connection:
        with pytest.raises(DatabaseUnavailableError) as info:
            await kill_mid_lease(db, connection)
        stats = db.stats()
        async with db.lease() as leased:
            value = await fetch_value(leased, "SELECT 1")
    assert info.value.cause == "connection_lost"
    assert (stats.checked_out, stats.invalidated) == (0, 1)
    assert value == 1


async def kill_mid_unbuffered_result(db: Database, connection: AsyncConnection) -> int:
    """Read an unbuffered result through a lease (asyncmy's SSCursor, in its ``async with``)
    and kill its server connection after 100 rows, from ``connection``; the rows read."""
    from asyncmy.cursors import SSCursor

    rows = 0
    async with db.lease() as leased:
        backend = await fetch_value(leased, backend_id_query(leased))
        async with leased.cursor(SSCursor) as cursor:
            # Larger than the socket's buffers: the kill lands mid-result.
            await cursor.execute("SELECT seq, REPEAT('x', 500) FROM seq_1_to_200000")
            while await cursor.fetchone() is not None:
                rows += 1
                if rows == 100:
                    await helpers.kill(connection, backend)
    return rows


async def test_a_connection_killed_while_asyncmy_reads_an_unbuffered_result_is_lost(
    mysql_url: str,
) -> None:
    """KILL CONNECTION while a lease reads an unbuffered result: the cursor's close, reading
    the rest of a result whose connection is gone, raises asyncmy's InternalError ("Packet
    sequence number wrong") over the 2013 the fetch met. The socket has closed:
    DatabaseUnavailableError("connection_lost"), not asyncmy's error (a 500 for
    Depends(db.leased)), and the connection dropped without a reset tried on it (a warning,
    and asyncmy's "unbuffered result left incomplete")."""
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        async with Database(mysql_url) as db, helpers.admin(mysql_url) as connection:
            with pytest.raises(DatabaseUnavailableError) as info:
                await kill_mid_unbuffered_result(db, connection)
            stats = db.stats()
    assert info.value.cause == "connection_lost"
    assert (stats.checked_out, stats.invalidated) == (0, 1)
    assert [str(w.message) for w in warned] == []


async def test_a_lease_before_connect_raises_the_sessions_lifecycle_error(sqlite_url: str) -> None:
    """Before connect(), a lease is refused with the very message a transaction gets."""
    db = Database(sqlite_url)
    with pytest.raises(LifecycleError) as lease_error:
        async with db.lease():
            pass
    with pytest.raises(LifecycleError) as transaction_error:
        async with db.transaction():
            pass
    assert str(lease_error.value) == str(transaction_error.value)
    assert "is not connected yet" in str(lease_error.value)


def test_a_lease_in_another_event_loop_raises_the_sessions_lifecycle_error(
    sqlite_url: str,
) -> None:
    """A Database connected in one loop refuses a lease in another, as it refuses sessions."""
    db = Database(sqlite_url)

    async def lease() -> None:
        async with db.lease():
            pass

    async def transaction() -> None:
        async with db.transaction():
            pass

    home = asyncio.new_event_loop()
    try:
        home.run_until_complete(db.connect())
        with pytest.raises(LifecycleError) as lease_error:
            asyncio.run(lease())
        with pytest.raises(LifecycleError) as transaction_error:
            asyncio.run(transaction())
        home.run_until_complete(db.dispose())
    finally:
        home.close()
    assert str(lease_error.value) == str(transaction_error.value)
    assert "was connected in another event loop" in str(lease_error.value)


# -- in a test's rolled-back transaction ------------------------------------------------------


@pytest.mark.usefixtures("lease_rows")
async def test_a_lease_in_a_rolled_back_test_joins_the_test_transaction(
    database_url: str,
) -> None:
    """Bound to a test's connection, a lease writes inside the test's transaction: the test
    sees the row, and nothing is left once the test's transaction is rolled back."""
    db = Database(database_url)
    async with Database(database_url) as test_db, rolled_back(db, test_db.engine):
        async with db.lease() as connection:
            await execute(connection, f"INSERT INTO {TABLE} (value) VALUES (1)")
        async with open_session(db) as session:
            seen = (await session.execute(text(f"SELECT count(*) FROM {TABLE}"))).scalar_one()
    kept = await helpers.count_rows(database_url, TABLE)
    assert seen == 1
    assert kept == 0


@pytest.mark.usefixtures("lease_rows")
async def test_a_failed_lease_in_a_rolled_back_test_undoes_only_its_own_writes(
    database_url: str,
) -> None:
    """A lease that raises while bound rolls back to its savepoint; the test's rows stay."""
    db = Database(database_url)
    async with Database(database_url) as test_db, rolled_back(db, test_db.engine):
        async with open_session(db) as session:
            await session.execute(text(f"INSERT INTO {TABLE} (value) VALUES (1)"))
            await session.commit()  # a savepoint while bound
        with pytest.raises(ValueError, match="undo"):
            await insert_in_lease_then_raise(db, ValueError("undo"))
        async with open_session(db) as session:
            values = (await session.execute(text(f"SELECT value FROM {TABLE}"))).scalars().all()
    assert values == [1]
