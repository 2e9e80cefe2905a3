"""aiosqlite's record: how dbscope opens, reads and closes its connections to a SQLite file.

The backend's rules (BEGIN, the write lock's line, errors, files) are in ``sqlite.py``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any, Final

from dbscope._dialects.driver import (
    CLOSE_TIMEOUT,
    ClosedIfCancelled,
    Driver,
    LeaseStatus,
    rollback_connection,
    through_cancels,
)


def _sqlite_errors() -> tuple[type[BaseException], ...]:
    return (sqlite3.Error,)


def aiosqlite_status(connection: Any) -> LeaseStatus:
    # dbscope opens SQLite connections with isolation_level=None: autocommit, BEGIN explicit.
    return "in_transaction" if connection.in_transaction else "idle"


class EndsItsTransactions(sqlite3.Connection):
    """A connection whose transaction ends with every COMMIT, failed or not, and before it
    closes, so that it never hands a transaction to its next user or keeps the file's lock.

    A COMMIT that fails (a deferred foreign key, SQLITE_BUSY) leaves SQLite's transaction
    open. SQLAlchemy counts it ended, and its pool skips the rollback on return: the next
    unit on the connection failed to BEGIN ("cannot start a transaction within a
    transaction"), and a lease's autocommitted write stayed uncommitted, then was lost.
    dbscope runs the whole unit again or not at all, never the COMMIT alone, so the failed
    transaction is rolled back at once.

    A cursor still alive when its connection closes (one whose unit was cancelled, kept by
    the cancel's traceback until the garbage collector runs) keeps its statement;
    sqlite3_close_v2 then leaves the connection open, as a "zombie", until that statement
    is finalized, and with it the transaction it had begun: the next unit that writes found
    the file locked. Rolled back first, the zombie holds nothing. This covers every way
    SQLAlchemy closes a connection (aiosqlite's close, its stop when a connection is
    invalidated, the pool's own close); Python's sqlite3 closes them all through here. A
    ``factory`` of the app's own in ``connect_args`` replaces it.
    """

    def commit(self) -> None:
        try:
            super().commit()
        except sqlite3.Error:
            if self.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.rollback()
            raise

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.rollback()  # a no-op outside a transaction
        super().close()


def _aiosqlite_connect_args(timeout: float, application_name: str | None) -> dict[str, Any]:
    # SQLAlchemy's async dialects call async_creator_fn in place of the driver's connect.
    closed_if_cancelled = ClosedIfCancelled(_aiosqlite_connect, _aiosqlite_quit)
    return {"factory": EndsItsTransactions, "async_creator_fn": closed_if_cancelled}


async def _aiosqlite_connect(*args: Any, **kwargs: Any) -> Any:
    """aiosqlite's connect, its thread a daemon (as SQLAlchemy makes it). Run through
    ClosedIfCancelled: cancelled while its thread opened the file, aiosqlite dropped the
    sqlite3 connection unclosed, to the garbage collector ("ResourceWarning: unclosed
    database" from Python 3.13, at each unit cancelled as it connected)."""
    import aiosqlite

    connection = aiosqlite.connect(*args, **kwargs)
    thread: Any = getattr(connection, "_thread", connection)  # a Thread itself before 0.22
    thread.daemon = True
    return await connection


async def _aiosqlite_quit(connection: Any) -> None:
    await _aiosqlite_close(connection, CLOSE_TIMEOUT)


async def _aiosqlite_close(connection: Any, seconds: float) -> None:
    """Close on aiosqlite's thread, and wait for it through cancels: until it is done, the
    file keeps the write lock of the transaction the connection had open.

    SQLAlchemy's own close of a cancelled connection waits for one cancel only. anyio's
    cancel scope cancels again at each await: SQLAlchemy then left the close queued behind
    the thread's work and its task pending for ever, and the next unit found the file
    locked. The cancel is raised again once the close is done.
    """
    await through_cancels(connection.close(), seconds)


AIOSQLITE: Final = Driver(
    name="aiosqlite",
    install="pip install aiosqlite",
    connect_args=_aiosqlite_connect_args,
    errors=_sqlite_errors,
    status=aiosqlite_status,
    rollback=rollback_connection,
    close=_aiosqlite_close,
    close_without_loop=lambda connection: connection.stop(),  # queued to its thread
    closes_on_thread=True,
    isolation_levels=("READ UNCOMMITTED", "SERIALIZABLE"),
    checkin_waits=True,
)
