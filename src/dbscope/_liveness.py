"""The checkout check. SQLAlchemy's ``pool_pre_ping`` sends a round trip at every checkout,
the largest single cost of a one-row request, for a connection used a millisecond ago. Most
connections die by the server closing them, which the driver can see without asking
(``Driver.looks_dead``): :class:`LivenessCheck` asks the driver first, and pings only a
connection that looks suspicious or has been idle for ``pool_pre_ping_after`` seconds, long
enough to have died silently (a dropped NAT entry, a host gone without closing).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util import await_only

from dbscope._dialects import driver

# When the connection was last returned to the pool (time.monotonic()); None from its opening
# to its first return.
CHECKED_IN_AT: Final = "dbscope.checked_in_at"


class LivenessCheck:
    """Checks each connection at checkout: for free always, with a ping once idle long enough.

    A ping unanswered within ``ping_timeout`` seconds fails as a lost connection's would:
    a silent death (a dropped NAT entry, a frozen host) sends nothing, and the driver would
    wait for the answer for as long as the kernel keeps the socket, many minutes.

    Attributes:
        pings: the pings sent so far.
    """

    def __init__(self, engine: AsyncEngine, ping_after: float, ping_timeout: float) -> None:
        self.engine = engine
        self.ping_after = ping_after
        self.ping_timeout = ping_timeout
        self.pings = 0
        self._began = time.monotonic()
        known = driver(engine.dialect.driver)
        self._looks_dead = known.looks_dead if known is not None else lambda connection: False
        event.listen(engine.sync_engine, "connect", self._remember_opening)
        event.listen(engine.sync_engine, "checkin", self._remember_checkin)
        event.listen(engine.sync_engine, "checkout", self._check)

    def close(self) -> None:
        """Stop checking (the engine outlives this check)."""
        event.remove(self.engine.sync_engine, "connect", self._remember_opening)
        event.remove(self.engine.sync_engine, "checkin", self._remember_checkin)
        event.remove(self.engine.sync_engine, "checkout", self._check)

    def _remember_opening(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[CHECKED_IN_AT] = None

    def _remember_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[CHECKED_IN_AT] = time.monotonic()

    def _check(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, _: PoolProxiedConnection
    ) -> None:
        # A connection from before this check began (connect() proved the server with it)
        # has no mark: idle since then at least. One just opened is not checked.
        checked_in_at = record.info.get(CHECKED_IN_AT, self._began)
        if checked_in_at is None:
            return
        idle = time.monotonic() - checked_in_at
        if idle >= self.ping_after or self._looks_dead(dbapi_connection.driver_connection):
            self.pings += 1
            self._ping(dbapi_connection)

    def _ping(self, dbapi_connection: Any) -> None:
        # As SQLAlchemy's own pre-ping: a disconnect makes the pool replace the connection and
        # check out again; any other error is the caller's.
        dialect = self.engine.dialect
        try:
            with _within(self.ping_timeout):
                dialect.do_ping(dbapi_connection)
        except TimeoutError:
            message = f"The connection did not answer its ping within {self.ping_timeout:g} s"
            raise DisconnectionError(message) from None
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                raise DisconnectionError(f"The connection failed its ping: {error}") from error
            raise


@contextlib.contextmanager
def _within(seconds: float) -> Iterator[None]:
    """Raise TimeoutError if the block, synchronous code in SQLAlchemy's greenlet that awaits
    the driver (``await_only``), takes longer than ``seconds``: asyncio's timeout, entered
    and left from the greenlet, cancels the task's await of the driver."""
    timeout = asyncio.timeout(seconds)
    await_only(timeout.__aenter__())
    try:
        yield
    except BaseException as error:
        await_only(timeout.__aexit__(type(error), error, error.__traceback__))  # TimeoutError
        raise
    await_only(timeout.__aexit__(None, None, None))
