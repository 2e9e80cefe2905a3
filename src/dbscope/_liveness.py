"""Checking a pooled connection before use, without a round trip when it was just used.

SQLAlchemy's ``pool_pre_ping`` sends a ``SELECT 1`` at every checkout: a whole round trip,
the largest single cost of a one-row request, for a connection used a millisecond ago. Most
connections die by the server closing them (a restart, ``pg_terminate_backend``, ``KILL``),
which the client side can see without asking: asyncpg and asyncmy read their sockets in the
event loop and notice the hang-up by themselves, and an idle psycopg connection whose socket
has something to read has heard from the server (a termination notice or a notification).
dbscope asks the driver first, and pings only a connection that looks suspicious or has been
idle for ``pool_pre_ping_after`` seconds, long enough to have died silently (a dropped NAT
entry, a host gone without closing).
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

# When the connection was last returned to the pool (time.monotonic()); absent while it has
# never been checked in, that is, just after it was opened.
CHECKED_IN_AT: Final = "dbscope.checked_in_at"


class LivenessCheck:
    """Checks each connection at checkout: for free always, with a ping once idle long enough.

    Attributes:
        pings: the pings sent so far.
    """

    def __init__(self, engine: AsyncEngine, ping_after: float) -> None:
        self.engine = engine
        self.ping_after = ping_after
        self.pings = 0
        self._looks_dead = _closed_check(engine.dialect.driver)
        event.listen(engine.sync_engine, "checkin", self._remember_checkin)
        event.listen(engine.sync_engine, "checkout", self._check)

    def close(self) -> None:
        """Stop checking (the engine outlives this check)."""
        event.remove(self.engine.sync_engine, "checkin", self._remember_checkin)
        event.remove(self.engine.sync_engine, "checkout", self._check)

    def _remember_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[CHECKED_IN_AT] = time.monotonic()

    def _check(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, _: PoolProxiedConnection
    ) -> None:
        checked_in_at = record.info.get(CHECKED_IN_AT)
        if checked_in_at is None:
            return  # just opened
        idle = time.monotonic() - checked_in_at
        if idle >= self.ping_after or self._looks_dead(dbapi_connection.driver_connection):
            self.pings += 1
            _ping(self.engine.dialect, dbapi_connection)


def _ping(dialect: Dialect, dbapi_connection: Any) -> None:
    # As SQLAlchemy's own pre-ping: a disconnect makes the pool replace the connection and
    # check out again; any other error is the caller's.
    try:
        dialect.do_ping(dbapi_connection)
    except dialect.loaded_dbapi.Error as error:
        if dialect.is_disconnect(error, dbapi_connection, None):
            raise DisconnectionError(f"The connection failed its ping: {error}") from error
        raise


def _closed_check(driver: str) -> Callable[[Any], bool]:
    """A round-trip-free test of a driver connection: True if it may be dead."""
    if driver == "asyncpg":
        return _asyncpg_closed
    if driver == "psycopg":
        return _has_unread_input
    if driver == "asyncmy":
        return _asyncmy_closing
    return _never  # aiomysql and others: the idle ping alone


def _asyncpg_closed(connection: Any) -> bool:
    # asyncpg's protocol reads the socket in the event loop, and marks the connection closed
    # as soon as the server hangs up.
    return bool(connection.is_closed())


def _has_unread_input(connection: Any) -> bool:
    # An idle psycopg connection is not read until its next query: data waiting on the socket
    # means the server spoke (a FATAL on termination, an end of file, a notification).
    if connection.closed:
        return True
    poller = select.poll()
    poller.register(connection.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _asyncmy_closing(connection: Any) -> bool:
    # asyncmy reads in the event loop too, and its transport starts closing when the server
    # hangs up. It offers no public flag for that; without the attribute (another version),
    # the idle ping alone remains.
    transport = getattr(connection, "_transport", None)
    return transport is not None and bool(transport.is_closing())


def _never(connection: Any) -> bool:
    return False
