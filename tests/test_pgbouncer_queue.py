"""A statement that waited out PgBouncer's query_wait_timeout is told as that, not as a lost
connection: still 503 with Retry-After, and the message names PgBouncer's queue.

PgBouncer's pool for the test database is filled (every one of its ``default_pool_size`` server
connections held in a transaction by another Database) and its ``query_wait_timeout`` made
short through its console for the test, then read again from its configuration file.
"""

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database
from tests.conftest import POSTGRES_DRIVERS, POSTGRES_URL
from tests.helpers import app_with, send
from tests.pgbouncer_service import Bouncers

SERVER_CONNECTIONS = 10  # tests/pgbouncer/bouncer's default_pool_size
QUERY_WAIT_TIMEOUT = 1  # seconds, for the test only: PgBouncer's default is 120


async def console(pgbouncer: Bouncers, command: str) -> None:
    """Run ``command`` on the console of the PgBouncer that keeps no prepared statements."""
    bouncer = make_url(pgbouncer.transaction)
    connection = await asyncpg.connect(
        host=bouncer.host, port=bouncer.port, user="postgres", database="pgbouncer"
    )
    try:
        await connection.execute(command)
    finally:
        await connection.close()


@pytest.fixture
async def short_queue(pgbouncer: Bouncers) -> AsyncIterator[None]:
    """PgBouncer's query_wait_timeout at one second during the test."""
    await console(pgbouncer, f"SET query_wait_timeout = {QUERY_WAIT_TIMEOUT}")
    try:
        yield
    finally:
        await console(pgbouncer, "RELOAD")  # its configuration file's value again


@contextlib.asynccontextmanager
async def every_server_connection_held(url: str) -> AsyncIterator[None]:
    """PgBouncer's pool for the database full: each server connection in a transaction."""
    holders = Database(url, pgbouncer="transaction", pool_size=SERVER_CONNECTIONS)
    async with holders, contextlib.AsyncExitStack() as units:
        for _ in range(SERVER_CONNECTIONS):
            session = await units.enter_async_context(holders.transaction())
            await session.execute(text("SELECT 1"))  # SQL text: the transaction begins
        yield


async def one(session: AsyncSession) -> int:
    return int((await session.execute(text("SELECT 1"))).scalar_one())


@pytest.mark.usefixtures("short_queue")
@pytest.mark.parametrize("driver", POSTGRES_DRIVERS)
async def test_a_request_that_waited_out_pgbouncers_queue_is_told_so(
    pgbouncer: Bouncers, driver: str
) -> None:
    """503 with Retry-After and the cause it had, worded as PgBouncer's queue waited out
    (query_wait_timeout), not as a connection lost."""
    url = pgbouncer.url("transaction", driver, POSTGRES_URL)
    db = Database(url, pgbouncer="transaction", pool_size=1, max_overflow=0)
    app = app_with(db.session, {"GET /one": one})
    async with db:
        assert (await send(app, "GET /one")).status_code == 200  # the pool's connection, open
        async with every_server_connection_held(url):
            response = await send(app, "GET /one")
        after = await send(app, "GET /one")
    detail = response.json()["detail"]
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert detail["cause"] == "connection_lost"
    assert "PgBouncer's queue" in detail["message"]
    assert "query_wait_timeout" in detail["message"]
    assert "lost" not in detail["message"]
    assert after.status_code == 200
