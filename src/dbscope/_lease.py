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
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from dbscope._dialects import BACKENDS, CLOSE_TIMEOUT, Driver, driver, through_cancels
from dbscope._errors import connection_gone, translate
from dbscope._exceptions import ConfigurationError
from dbscope._lifecycle import Lifecycle
from dbscope._unavailable import Limits, unavailable

logger = logging.getLogger("dbscope")


@contextlib.asynccontextmanager
async def lease_connection(lifecycle: Lifecycle, limits: Limits) -> AsyncIterator[Any]:
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
    known = _driver(bind.dialect.driver)
    try:
        proxied = await bind.raw_connection()
    except Exception as error:
        translated = translate(error, limits)
        if translated is None:
            raise
        raise translated from error
    connection = proxied.driver_connection
    autocommit_was = True
    try:
        if known.set_autocommit is not None:
            autocommit_was = await known.set_autocommit(connection, True)
        yield connection
    except BaseException as error:
        lost = _lost(error, known, connection, limits)
        if lost or not isinstance(error, Exception):
            await _discard(proxied, bind.dialect, known)
            if lost:
                raise unavailable("connection_lost", limits) from error
            raise
        await _give_back(proxied, bind.dialect, known, autocommit_was, error)
        raise
    await _give_back(proxied, bind.dialect, known, autocommit_was)


def _lost(error: BaseException, known: Driver, connection: Any, limits: Limits) -> bool:
    # Only the driver's errors and the socket's can mean a dead connection; an OSError of the
    # application's own (a missing file) on a live connection is no outage, nor a timeout of
    # its own, after which asyncmy closes the connection it cut short.
    if isinstance(error, TimeoutError) or not isinstance(error, (*known.errors(), OSError)):
        return False
    return connection_gone(error, limits.url, connection)


async def _give_back(
    proxied: PoolProxiedConnection,
    dialect: Dialect,
    known: Driver,
    autocommit_was: bool,
    error: Exception | None = None,
) -> None:
    """Return the connection to the pool as it was lent, after the body's ``error`` if it
    raised one, or discard it if that fails.

    A failure here is logged, not raised: the body's outcome stands, and a discarded
    connection leaks nothing to its next user. A cancellation propagates.
    """
    assert known.status is not None
    assert known.rollback is not None
    try:
        if error is not None and known.forget_stale is not None:
            await known.forget_stale(proxied.driver_connection, error)
        status = known.status(proxied.driver_connection)
        if status in ("busy", "closed"):
            await _discard(proxied, dialect, known)
            return
        if status == "in_transaction":
            await known.rollback(proxied.driver_connection)
        if not autocommit_was and known.set_autocommit is not None:
            await known.set_autocommit(proxied.driver_connection, False)
    except BaseException as error:
        await _discard(proxied, dialect, known)
        if not isinstance(error, Exception):
            raise
        logger.warning("Discarded a leased connection that could not be reset: %r", error)
        return
    # The pool's reset-on-return may do I/O (a ROLLBACK on MySQL and SQLite), so it runs in a
    # greenlet; where it waits, to its end before a cancel goes on: one landing in it made
    # SQLAlchemy log an ERROR with a traceback for a plain timeout, and drop the connection.
    # (Elsewhere it awaits nothing, and a task for it cost every lease: docs/benchmarks.md.)
    if known.checkin_waits:
        await through_cancels(greenlet_spawn(proxied.close), CLOSE_TIMEOUT)
    else:
        await greenlet_spawn(proxied.close)


async def _discard(proxied: PoolProxiedConnection, dialect: Dialect, known: Driver) -> None:
    """Close the connection and give its place in the pool back; it is never reused."""
    if not proxied.is_valid:
        return  # already back in the pool (its reset was interrupted, and SQLAlchemy dropped it)
    connection = proxied.driver_connection  # None if SQLAlchemy dropped it in a failed reset
    try:
        if known.closes_on_thread and known.close is not None and connection is not None:
            # Its terminate only asks the driver's thread to close, and the place would be
            # free before the file's lock: the next unit that writes found the file locked.
            # Waited for through cancels, bounded; a cancel is raised once it is closed.
            await known.close(connection, CLOSE_TIMEOUT)
    finally:
        if dialect.has_terminate:
            # Terminates without awaiting (asyncpg, asyncmy, aiosqlite): even a cancelled
            # task, which any await would interrupt again, gets the connection back to the pool.
            proxied.invalidate()
        else:
            # psycopg has no terminate; its close awaits nothing, so this is not interrupted.
            # aiosqlite before 0.22.1 has none either; its connection was closed above.
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


def _driver(name: str) -> Driver:
    known = driver(name)
    if known is None or known.status is None:
        lent = ", ".join(d.name for b in BACKENDS for d in b.drivers.values() if d.status)
        message = (
            f"db.lease() does not know the driver {name!r}; it lends {lent} connections. Use "
            "db.transaction() (or Depends(db.session)) instead, or a URL naming one of those "
            "drivers."
        )
        raise ConfigurationError(message)
    return known
