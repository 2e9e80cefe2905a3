"""Errors met while a stream's rows are fetched (the batches after the first, which
SQLAlchemy's asyncpg adapter raised as asyncpg raised them): a connection lost is an outage,
and a server's error is SQLAlchemy's DBAPIError, as for any other statement, on every server
driver."""

import asyncio
import contextlib
import gc
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database, DatabaseUnavailableError
from tests.helpers import BACKEND_ID, SERVER_BACKENDS, admin, kill

# One hundred rows; with ``fail``, the server's error at the 50th (a division by zero on
# PostgreSQL; on MariaDB, where one gives NULL, an unsigned result below zero, error 1690).
SERIES = {
    "postgresql": "SELECT x, 1 / (x - {fail}) FROM generate_series(1, 100) AS x",
    "mysql": "SELECT x, CAST({limit} AS UNSIGNED) - x FROM JSON_TABLE('[{numbers}]', '$[*]' "
    "COLUMNS (x INT PATH '$')) AS t",
}
FAILING = 50
# A batch of rows per fetch: the kill and the failing row come after the first.
BATCH = 10


def series(session: AsyncSession, *, fail: bool = False) -> str:
    numbers = ",".join(str(n) for n in range(1, 101))
    fail_at, limit = (FAILING, FAILING - 1) if fail else (0, 100)
    return SERIES[session.get_bind().dialect.name].format(
        fail=fail_at, limit=limit, numbers=numbers
    )


async def read_all(db: Database, rows: Any) -> int:
    """Read the stream of ``rows`` to its end; how many rows came."""
    seen = 0
    async with contextlib.aclosing(db.stream(rows)) as stream:
        async for _ in stream:
            seen += 1
    return seen


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_a_connection_lost_while_a_stream_fetches_is_an_outage(database_url: str) -> None:
    """The backend killed after the first batch: DatabaseUnavailableError (asyncpg raised its
    own InterfaceError), the connection dropped, the next unit served, and no cursor left
    open for the garbage collector (psycopg's warned: ResourceWarning)."""
    killed: list[int] = []

    async def rows(session: AsyncSession) -> AsyncIterator[int]:
        backend_id = await session.scalar(text(BACKEND_ID[session.get_bind().dialect.name]))
        options = {"yield_per": BATCH}
        async for row in await session.stream(text(series(session)), execution_options=options):
            if row[0] == BATCH // 2:
                async with admin(database_url) as connection:
                    await kill(connection, backend_id)
                killed.append(row[0])
            yield row[0]

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", ResourceWarning)
        async with Database(database_url, pool_size=1) as db:
            with pytest.raises(DatabaseUnavailableError) as lost:
                await read_all(db, rows)
            cause = lost.value.cause
            del lost  # its traceback holds the stream's cursor, for the collector below
            async with db.transaction() as session:
                after = (await session.execute(text("SELECT 1"))).scalar()
            stats = db.stats()
        gc.collect()
    assert [str(w.message) for w in warned if w.category is ResourceWarning] == []
    assert killed == [BATCH // 2]
    assert cause == "connection_lost"
    assert (after, stats.invalidated, stats.checked_out) == (1, 1, 0)


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_a_server_error_while_a_stream_fetches_is_a_dbapi_error(database_url: str) -> None:
    """The server's error at the 50th row: SQLAlchemy's DBAPIError, as for any statement
    (asyncpg's own DivisionByZeroError came out of db.stream()); the connection is kept."""

    async def rows(session: AsyncSession) -> AsyncIterator[int]:
        options = {"yield_per": BATCH}
        async for row in await session.stream(
            text(series(session, fail=True)), execution_options=options
        ):
            yield row[0]

    async with Database(database_url, pool_size=1) as db:
        with pytest.raises(DBAPIError, match=r"(?i)division by zero|out of range"):
            await read_all(db, rows)
        invalidated = db.stats().invalidated
    assert invalidated == 0


async def test_a_server_error_met_by_a_stream_and_caught_is_raised_again_at_commit(
    postgres_url: str,
) -> None:
    """The body caught the stream's error and went on: PostgreSQL had rolled the transaction
    back, and the unit's COMMIT raises that error again as the body met it, SQLAlchemy's
    DBAPIError on both drivers (on asyncpg the COMMIT raised asyncpg's own
    DivisionByZeroError, kept as asyncpg raised it before it was adapted)."""
    met: list[BaseException] = []

    async def caught(db: Database) -> None:
        async with db.transaction() as session:
            options = {"yield_per": BATCH}
            query = text(series(session, fail=True))
            try:
                async for _ in await session.stream(query, execution_options=options):
                    pass
            except DBAPIError as error:
                met.append(error)

    async with Database(postgres_url, pool_size=1) as db:
        with pytest.raises(DBAPIError, match="division by zero") as at_commit:
            await caught(db)
    assert len(met) == 1
    assert type(at_commit.value) is type(met[0])


async def test_a_backend_ended_while_a_fetch_is_in_flight_drops_the_connection_at_once(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows that take 50 ms each, the backend terminated while the second batch is fetched:
    asyncpg raises "connection was closed in the middle of operation", which its message
    alone does not tell as a lost connection. It is one: DatabaseUnavailableError, and the
    unit's close does not try a ROLLBACK on the dead connection (it did, and logged
    "Closing the session failed" at ERROR with two tracebacks)."""
    slow = "SELECT x, pg_sleep(0.05) FROM generate_series(1, 60) AS x"
    killers: list[asyncio.Task[None]] = []

    async def kill_soon(backend_id: int) -> None:
        await asyncio.sleep(0.2)  # the next fetch is in flight by then
        async with admin(postgres_url) as connection:
            await kill(connection, backend_id)

    async def rows(session: AsyncSession) -> AsyncIterator[int]:
        backend_id = await session.scalar(text("SELECT pg_backend_pid()"))
        async for row in await session.stream(text(slow), execution_options={"yield_per": 10}):
            if not killers:
                killers.append(asyncio.create_task(kill_soon(backend_id)))
            yield row[0]

    async with Database(postgres_url, pool_size=1) as db:
        with pytest.raises(DatabaseUnavailableError) as lost:
            await read_all(db, rows)
        await asyncio.gather(*killers)
        cause = lost.value.cause
    failed_closes = [r for r in caplog.records if "Closing the session failed" in r.getMessage()]
    assert cause == "connection_lost"
    assert failed_closes == []
