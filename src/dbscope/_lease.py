"""The leased driver connection: hot reads at the driver's speed, in dbscope's pool.

``db.lease()`` (``Depends(db.leased)`` in FastAPI) checks a connection out of dbscope's pool
and hands over the driver's own connection object: an ``asyncpg.Connection``, a
``psycopg.AsyncConnection``, an asyncmy or an aiosqlite connection. There is no session, no
ORM and no transaction; the pool's limits, its liveness check and the outage errors stay
dbscope's.

The connection is in the driver's autocommit state: each statement is its own transaction.
A write that needs atomicity uses the driver's own transaction (``async with
conn.transaction():`` on asyncpg and psycopg) or a dbscope session. psycopg and asyncmy
connections are switched to autocommit for the lease and back afterwards (on MariaDB/MySQL
that costs a round trip each way); asyncpg and aiosqlite connections already are.

How a lease ends:

==========================================  ===============================================
the body ...                                the connection
==========================================  ===============================================
ends normally, or raises an error of its    goes back to the pool; a transaction the body
own or of the database (a syntax error, a   left open is rolled back first. The error
unique violation)                           propagates unchanged
loses the connection (server restart,       is discarded; DatabaseUnavailableError with
terminated backend, network cut)            cause ``"connection_lost"``
is cancelled (or raises another             is discarded, since the driver may be in the
BaseException)                              middle of a statement; the cancellation goes on
==========================================  ===============================================

Whether the body left a transaction open is read from the driver's own state, without a round
trip. While the Database is bound to a test's connection (``bind_to``), a lease yields that
connection's driver connection inside a savepoint instead, so that what it writes is rolled
back with the test.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from dbscope._exceptions import ConfigurationError
from dbscope._lifecycle import Lifecycle
from dbscope._outages import driver_connection_lost, outage_error, unavailable_error
from dbscope._settings import DatabaseSettings

logger = logging.getLogger("dbscope")

# What a driver connection is doing, as far as its driver knows without asking the server.
Status = Literal["idle", "in_transaction", "busy", "closed"]


@dataclass(frozen=True)
class Driver:
    """What a lease does with one driver's connection object.

    Attributes:
        errors: the driver's exception base classes (imported only once the driver is used).
        status: the connection's state, read without a round trip.
        rollback: roll back a transaction the body left open.
        set_autocommit: switch autocommit on or off; returns the previous state. None for a
            driver whose connections are in autocommit already.
        fatal: the driver's errors after which it cannot go on with the connection, though
            it may not report it closed yet.
    """

    errors: Callable[[], tuple[type[BaseException], ...]]
    status: Callable[[Any], Status]
    rollback: Callable[[Any], Awaitable[object]]
    set_autocommit: Callable[[Any, bool], Awaitable[bool]] | None = None
    fatal: Callable[[], tuple[type[BaseException], ...]] = tuple


@contextlib.asynccontextmanager
async def lease_connection(lifecycle: Lifecycle, settings: DatabaseSettings) -> AsyncIterator[Any]:
    """Lend the driver connection of one pooled connection; always give it back.

    Raises:
        LifecycleError: the Database is not connected, or was connected in another loop.
        ConfigurationError: the driver is not one a lease knows.
        DatabaseUnavailableError: no connection within pool_timeout, an unreachable server,
            or the connection lost while lent.
    """
    bind = lifecycle.bind()
    if isinstance(bind, AsyncConnection):
        async with _in_savepoint(bind) as connection:
            yield connection
        return
    driver = _driver(bind.dialect.driver)
    try:
        proxied = await bind.raw_connection()
    except Exception as error:
        outage = outage_error(error, settings)
        if outage is None:
            raise
        raise outage from error
    connection = proxied.driver_connection
    autocommit_was = True
    try:
        if driver.set_autocommit is not None:
            autocommit_was = await driver.set_autocommit(connection, True)
        yield connection
    except BaseException as error:
        lost = _lost(error, driver, connection)
        if lost or not isinstance(error, Exception):
            await _discard(proxied, bind.dialect)
            if lost:
                raise unavailable_error("connection_lost", settings) from error
            raise
        await _give_back(proxied, bind.dialect, driver, autocommit_was)
        raise
    await _give_back(proxied, bind.dialect, driver, autocommit_was)


def _lost(error: BaseException, driver: Driver, connection: Any) -> bool:
    # Only the driver's errors and the socket's can mean a dead connection; an OSError of the
    # application's own (a missing file) on a live connection is no outage.
    if not isinstance(error, (*driver.errors(), OSError)):
        return False
    unusable = isinstance(error, driver.fatal()) or driver.status(connection) == "closed"
    return driver_connection_lost(error, unusable=unusable)


async def _give_back(
    proxied: PoolProxiedConnection, dialect: Dialect, driver: Driver, autocommit_was: bool
) -> None:
    """Return the connection to the pool as it was lent, or discard it if that fails.

    A failure here is logged, not raised: the body's outcome stands, and a discarded
    connection leaks nothing to its next user. A cancellation propagates.
    """
    try:
        status = driver.status(proxied.driver_connection)
        if status in ("busy", "closed"):
            await _discard(proxied, dialect)
            return
        if status == "in_transaction":
            await driver.rollback(proxied.driver_connection)
        if not autocommit_was and driver.set_autocommit is not None:
            await driver.set_autocommit(proxied.driver_connection, False)
        # The pool's reset-on-return may do I/O (a ROLLBACK on MySQL), so it runs in a greenlet.
        await greenlet_spawn(proxied.close)
    except BaseException as error:
        await _discard(proxied, dialect)
        if not isinstance(error, Exception):
            raise
        logger.warning("Discarded a leased connection that could not be reset: %r", error)


async def _discard(proxied: PoolProxiedConnection, dialect: Dialect) -> None:
    """Close the connection and give its place in the pool back; it is never reused."""
    if not proxied.is_valid:
        return  # already back in the pool (its reset was interrupted, and SQLAlchemy dropped it)
    if dialect.has_terminate:
        # Terminates without awaiting (asyncpg, asyncmy, aiosqlite): even a cancelled task,
        # which any await would interrupt again, gets the connection back to the pool.
        proxied.invalidate()
    else:
        # psycopg has no terminate; its close awaits nothing, so this is not interrupted.
        await greenlet_spawn(proxied.invalidate)


@contextlib.asynccontextmanager
async def _in_savepoint(connection: AsyncConnection) -> AsyncIterator[Any]:
    # A test's connection, shared with the app's units of work: the lease joins the test's
    # transaction in a savepoint, which an error rolls back as a unit of work's would.
    savepoint = await connection.begin_nested()
    raw = await connection.get_raw_connection()
    try:
        yield raw.driver_connection
    except BaseException:
        await savepoint.rollback()
        raise
    await savepoint.commit()


# -- the drivers -------------------------------------------------------------------------------


def _asyncpg_errors() -> tuple[type[BaseException], ...]:
    import asyncpg

    return (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _asyncpg_fatal() -> tuple[type[BaseException], ...]:
    # The protocol is out of step: typically the server's FATAL "terminating connection"
    # arrived on an idle connection, before asyncpg saw the socket close.
    import asyncpg

    return (asyncpg.InternalClientError,)


def _asyncpg_status(connection: Any) -> Status:
    if connection.is_closed():
        return "closed"
    return "in_transaction" if connection.is_in_transaction() else "idle"


async def _asyncpg_rollback(connection: Any) -> None:
    await connection.execute("ROLLBACK")


def _psycopg_errors() -> tuple[type[BaseException], ...]:
    import psycopg

    return (psycopg.Error,)


def _psycopg_status(connection: Any) -> Status:
    from psycopg.pq import TransactionStatus

    if connection.closed or connection.broken:
        return "closed"
    status = connection.info.transaction_status
    if status == TransactionStatus.IDLE:
        return "idle"
    if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        return "in_transaction"
    return "closed" if status == TransactionStatus.UNKNOWN else "busy"  # ACTIVE: mid-statement


async def _psycopg_set_autocommit(connection: Any, value: bool) -> bool:
    previous = bool(connection.autocommit)
    if previous != value:
        await connection.set_autocommit(value)  # a client-side switch: no round trip
    return previous


def _asyncmy_errors() -> tuple[type[BaseException], ...]:
    from asyncmy.errors import MySQLError

    return (MySQLError,)


def _asyncmy_status(connection: Any) -> Status:
    if not connection.connected:
        return "closed"
    return "in_transaction" if connection.get_transaction_status() else "idle"


async def _asyncmy_set_autocommit(connection: Any, value: bool) -> bool:
    previous = bool(connection.get_autocommit())
    if previous != value:
        await connection.autocommit(value)  # SET AUTOCOMMIT: a round trip
    return previous


def _sqlite_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    return (sqlite3.Error,)


def _aiosqlite_status(connection: Any) -> Status:
    # dbscope opens SQLite connections with isolation_level=None: autocommit, BEGIN explicit.
    return "in_transaction" if connection.in_transaction else "idle"


async def _rollback(connection: Any) -> None:
    await connection.rollback()


DRIVERS: Final = {
    "asyncpg": Driver(_asyncpg_errors, _asyncpg_status, _asyncpg_rollback, fatal=_asyncpg_fatal),
    "psycopg": Driver(_psycopg_errors, _psycopg_status, _rollback, _psycopg_set_autocommit),
    "asyncmy": Driver(_asyncmy_errors, _asyncmy_status, _rollback, _asyncmy_set_autocommit),
    "aiosqlite": Driver(_sqlite_errors, _aiosqlite_status, _rollback),
}


def _driver(name: str) -> Driver:
    driver = DRIVERS.get(name)
    if driver is None:
        message = (
            f"db.lease() does not know the driver {name!r}; it lends asyncpg, psycopg, asyncmy "
            "and aiosqlite connections. Use db.transaction() (or Depends(db.session)) instead, "
            "or a URL naming one of those drivers."
        )
        raise ConfigurationError(message)
    return driver
