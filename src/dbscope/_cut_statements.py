"""A statement a cancel cut off is stopped on the server too, where the server would run it to
its end.

A request cancelled mid-statement (a timeout middleware, a client gone) drops its connection,
and the pool opens another. MariaDB and MySQL go on running the statement on a thread nobody
listens to, its locks held, until it ends: measured, 20 cancelled 3 s queries ran their 3 s,
and a storm of cancels piles up threads past ``pool_size + max_overflow`` towards the
server's ``max_connections``. PostgreSQL ends such a statement itself
(``client_connection_check_interval``). So, where the backend has a statement for it
(``Backend.stop_cut_statement``: ``KILL QUERY <thread>``), it is sent from a connection of its
own, outside the pool's line, as soon as the cut connection is invalidated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from dbscope._dialects import Backend
from dbscope._durability import CONNECT_OPTIONS as CONNECT

logger = logging.getLogger("dbscope")

# How long a Database's dispose waits for stops still on their way.
CLOSE_WAIT: Final = 2.0


class CutStatements:
    """Stops on the server what was running on ``engine``'s connections when a cancel cut
    them off.

    Args:
        rules: the backend's rules; ``stop_cut_statement`` says what to send.
        timeout: seconds a stop may take to connect and run (``connect_timeout``).
    """

    def __init__(self, rules: Backend, timeout: float) -> None:
        self.rules = rules
        self.timeout = timeout
        self._engine: AsyncEngine | None = None
        self._options: Mapping[str, Any] = {}
        self._stopper: AsyncEngine | None = None
        self._stops: set[asyncio.Task[None]] = set()

    def watch(self, engine: AsyncEngine, options: Mapping[str, Any]) -> None:
        """Stop what a cancel cuts off on ``engine``'s connections, from now on."""
        self._engine, self._options = engine, options
        event.listen(engine.sync_engine, "invalidate", self._cut)

    async def close(self) -> None:
        """Stop watching, let the stops on their way finish (briefly), then close."""
        engine, self._engine = self._engine, None
        if engine is not None:
            event.remove(engine.sync_engine, "invalidate", self._cut)
        stops, self._stops = self._stops, set()
        here = [stop for stop in stops if stop.get_loop() is asyncio.get_running_loop()]
        if here:
            _, late = await asyncio.wait(here, timeout=CLOSE_WAIT)
            for stop in late:
                stop.cancel()
        stopper, self._stopper = self._stopper, None
        if stopper is not None:
            await stopper.dispose()

    def _cut(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, exception: BaseException | None
    ) -> None:
        # A cancel (not an Exception: a lost connection has nothing left running), or an
        # invalidate() of dbscope's own, of a connection another task was still inside.
        if isinstance(exception, Exception) or self._engine is None:
            return
        statement = self.rules.stop_cut_statement(record.driver_connection)
        if statement is None:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule on
            stop = asyncio.get_running_loop().create_task(self._stop(self._engine, statement))
            self._stops.add(stop)
            stop.add_done_callback(self._stops.discard)

    async def _stop(self, engine: AsyncEngine, statement: str) -> None:
        if self._stopper is None:
            # One connection kept for the stops, and one more at once: outside the pool's
            # line, so a storm of cancels never waits behind the requests.
            options = {name: value for name, value in self._options.items() if name in CONNECT}
            self._stopper = create_async_engine(
                engine.url, pool_size=1, max_overflow=1, isolation_level="AUTOCOMMIT", **options
            )
        try:
            async with asyncio.timeout(self.timeout), self._stopper.connect() as connection:
                await connection.exec_driver_sql(statement)
        except Exception as error:  # the statement had ended, or the server is gone
            logger.debug("Could not stop a statement a cancel cut off: %s", error)
