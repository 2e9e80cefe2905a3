"""A connection the server ended after a unit's work is logged in one line, without a traceback;
the readiness probe meeting one says the connection was lost.

The backend is terminated for real (``pg_terminate_backend``, MariaDB's ``KILL``), from a
connection of the test's own, at the two places where nothing of the unit's is lost and the
user can do nothing: after a read-only unit's reads, before the close's ROLLBACK; and after a
commit on a primary with replicas, before the read of its log position for the write token.
asyncpg raises several shapes for it, by when it read the server's FATAL and the end of the
socket: "connection is closed", "connection was closed in the middle of operation", or
"cannot switch to state N; another operation (2) is in progress" (its protocol out of step
after a FATAL on an idle connection); each is a lost connection, not a second operation.
"""

import asyncio
import logging
import os
import socket
from typing import Any

import anyio
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import (
    ConnectionPoolEntry,
    NullPool,
    PoolProxiedConnection,
    PoolResetState,
)
from sqlalchemy.util import await_only

from dbscope import Database
from tests import helpers
from tests.replica_reads import TABLE, add_item, replicated

pytest_plugins = ["tests.replica_fixtures"]


def dbscope_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records of the dbscope logger at WARNING or above (not its pool's: SQLAlchemy's)."""
    return [
        record
        for record in caplog.records
        if record.name == "dbscope" and record.levelno >= logging.WARNING
    ]


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What any logger said at ERROR or above (SQLAlchemy's pool: "Exception during reset")."""
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


async def read_to_the_held_end(driver_connection: Any, proxy: helpers.TcpProxy) -> None:
    """Wait until the proxy held the server's end of the connection, having passed on all the
    server said before it, and asyncpg read all of that: nothing is left in its socket."""
    await proxy.end_held.wait()
    fd = driver_connection._transport.get_extra_info("socket").fileno()
    with socket.socket(fileno=os.dup(fd)) as peek:
        while True:
            try:
                peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            await asyncio.sleep(0.01)


def server_pid(driver_connection: Any) -> int:
    """The server process of an asyncpg or psycopg connection, asked of the driver."""
    info = getattr(driver_connection, "info", None)  # psycopg's
    return int(info.backend_pid if info is not None else driver_connection.get_server_pid())


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_connection_lost_after_a_read_only_units_reads_is_one_line(
    database_url: str, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only unit whose backend is ended after its reads keeps what it read; its close
    logs the lost connection in one WARNING line, without a traceback."""
    caplog.set_level(logging.WARNING, logger="dbscope")
    query = helpers.BACKEND_ID[db.url.get_backend_name()]
    async with helpers.admin(database_url) as admin, db.transaction(read_only=True) as session:
        backend_id = (await session.execute(text(query))).scalar_one()
        await helpers.kill(admin, backend_id)
    records = dbscope_warnings(caplog)
    assert [bool(record.exc_info) for record in records] == [False]  # no traceback
    assert "the connection was lost" in records[0].getMessage()
    assert db.stats().checked_out == 0


async def test_a_connection_lost_before_the_log_position_is_read_is_one_line(
    urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A commit whose backend is ended before the primary's log position is read is kept;
    the unread position is one WARNING line, without a traceback, and the pool drops the
    connection without logging its reset (psycopg's rollback of it failed, an ERROR)."""
    caplog.set_level(logging.WARNING, logger="dbscope")
    async with replicated(urls) as db, helpers.admin(urls[0]) as admin:
        caplog.clear()  # connect()'s own warning: commits wait for no standby
        engine = db.engine.sync_engine
        killed: list[int] = []

        def kill_at_checkin(
            dbapi_connection: Any, record: ConnectionPoolEntry, reset: PoolResetState
        ) -> None:
            if not killed:  # before dbscope's own listener, which reads the position
                killed.append(server_pid(dbapi_connection.driver_connection))
                await_only(helpers.kill(admin, killed[0]))

        event.listen(engine, "reset", kill_at_checkin, insert=True)
        try:
            await add_item(db, 1)
        finally:
            event.remove(engine, "reset", kill_at_checkin)
        rows = await helpers.stored(db, f"SELECT id FROM {TABLE}")
    records = dbscope_warnings(caplog)
    assert len(killed) == 1
    assert rows == [1]
    assert [bool(record.exc_info) for record in records] == [False]  # no traceback
    assert "the connection was lost" in records[0].getMessage()
    assert errors_logged(caplog) == []


@pytest.mark.parametrize("postgres_url", ["asyncpg"], indirect=True)
async def test_asyncpgs_another_operation_in_progress_at_a_close_is_a_lost_connection(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncpg, once it read the server's FATAL on a unit's idle connection but not the
    socket's end, refuses the close's ROLLBACK with "another operation (2) is in progress":
    the lost connection it is, in one WARNING line, not a second operation of dbscope's."""
    caplog.set_level(logging.WARNING, logger="dbscope")
    async with (
        helpers.proxied(postgres_url) as (proxy, through),
        Database(through) as db,
        helpers.admin(postgres_url) as admin,
    ):
        proxy.holds_ends = True
        with anyio.fail_after(10):
            async with db.transaction(read_only=True) as session:
                backend_id = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                raw = await (await session.connection()).get_raw_connection()
                asyncpg_connection = raw.driver_connection
                assert asyncpg_connection is not None
                await helpers.kill(admin, backend_id)
                await read_to_the_held_end(asyncpg_connection, proxy)
                assert not asyncpg_connection.is_closed()  # the end not read: not closed
        checked_out = db.stats().checked_out
    records = dbscope_warnings(caplog)
    assert proxy.ends_held == 1
    assert [bool(record.exc_info) for record in records] == [False]  # no traceback
    assert "the connection was lost" in records[0].getMessage()
    assert checked_out == 0


async def test_a_probe_whose_connection_the_server_ended_says_the_connection_was_lost(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The readiness probe's ping on a connection whose backend was ended (asyncpg having read
    the server's FATAL but not the socket's end: InternalClientError; psycopg: AdminShutdown)
    fails saying the connection was lost, not that the probe failed; the pool drops the
    connection without logging its reset."""
    asyncpg = make_url(postgres_url).get_driver_name() == "asyncpg"
    async with (
        helpers.proxied(postgres_url) as (proxy, through),
        Database(through) as db,
        helpers.admin(postgres_url) as admin,
    ):
        proxy.holds_ends = asyncpg
        ended: list[int] = []

        def end_at_checkout(
            dbapi_connection: Any, record: ConnectionPoolEntry, proxied: PoolProxiedConnection
        ) -> None:
            if not ended:  # the probe's own connection: its engine's pool is a NullPool
                driver_connection = dbapi_connection.driver_connection
                ended.append(server_pid(driver_connection))
                await_only(helpers.kill(admin, ended[0]))
                if asyncpg:
                    await_only(read_to_the_held_end(driver_connection, proxy))

        event.listen(NullPool, "checkout", end_at_checkout)
        try:
            with anyio.fail_after(10):
                health = await db.health()
        finally:
            event.remove(NullPool, "checkout", end_at_checkout)
    assert len(ended) == 1
    assert (health.status, health.checks[0].output) == (
        "fail",
        "the connection to the database was lost",
    )
    assert errors_logged(caplog) == []
