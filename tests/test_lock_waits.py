"""A lock wait that timed out is retried when the retry asks for it (``lock_timeouts=True``):
MariaDB's 1205 (``innodb_lock_wait_timeout``), PostgreSQL's 55P03 (``lock_timeout``, or
``NOWAIT`` finding the row locked). Without it, the error is the unit's, raised at once.

The lock is held by a transaction of the test's own, outside dbscope, and let go once the
first attempt has failed.
"""

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from dbscope import Database, Retrying
from tests.helpers import Tables, admin

pytestmark = pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg", "asyncmy"])

metadata = MetaData()
counters = Table(
    "lock_wait_counters", metadata, Column("id", Integer, primary_key=True), Column("n", Integer)
)
# The shortest wait each server takes: MariaDB counts whole seconds.
SHORT_WAIT = {
    "postgresql": "SET LOCAL lock_timeout = '50ms'",
    "mysql": "SET SESSION innodb_lock_wait_timeout = 1",
}


@pytest.fixture
async def holder(database_url: str, tables: Tables) -> AsyncIterator[AsyncConnection]:
    """A transaction of the test's own holding the one row's lock."""
    await tables.create_all(metadata)
    async with admin(database_url) as connection:
        await connection.execute(counters.insert().values(id=1, n=0))
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            await connection.execute(select(counters).with_for_update())
            yield connection
    finally:
        await engine.dispose()


async def increment(
    db: Database, retrying: Retrying, before_retry: Callable[[], Awaitable[None]]
) -> None:
    """The row's counter, one more, in attempts of ``retrying``, each waiting for the row's
    lock at most the server's shortest wait; ``before_retry`` run before each next attempt."""
    async for attempt in retrying:
        if retrying.retries:
            await before_retry()
        async with attempt as session:
            await session.execute(text(SHORT_WAIT[db.engine.dialect.name]))
            await session.execute(update(counters).values(n=counters.c.n + 1))


async def test_a_lock_wait_timeout_is_retried_when_asked(
    database_url: str, holder: AsyncConnection
) -> None:
    async with Database(database_url) as db:
        retrying = db.retrying(attempts=3, backoff=0, lock_timeouts=True)
        await increment(db, retrying, before_retry=holder.rollback)  # the lock let go
        assert retrying.retries == 1
    async with admin(database_url) as connection:
        assert await connection.scalar(select(counters.c.n)) == 1


async def test_a_lock_wait_timeout_is_not_retried_unasked(
    database_url: str, holder: AsyncConnection
) -> None:
    async with Database(database_url) as db:
        retrying = db.retrying(attempts=3, backoff=0)
        with pytest.raises(DBAPIError) as raised:
            await increment(db, retrying, before_retry=holder.rollback)
        assert retrying.retries == 0
    # PostgreSQL: "canceling statement due to lock timeout"; MariaDB: "Lock wait timeout
    # exceeded".
    message = str(raised.value).lower()
    assert "lock timeout" in message or "lock wait timeout" in message
