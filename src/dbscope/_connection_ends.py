"""How pooled connections end: closed within a bound, given back when setting them up fails,
put back where a failure still returns them to the pool, and dropped in the pool's reset
without the rollback that would fail on them.

Each closes a gap of the drivers' or SQLAlchemy's, once for every engine dbscope builds and
every view of one (``engine.execution_options()``) a unit runs on. The gaps were found by
cancelling units after each of their steps (tests/reliability/test_cancel_sweep*.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, PoolResetState
from sqlalchemy.util import await_only
from sqlalchemy.util.concurrency import in_greenlet

from dbscope._dialects import CLOSE_TIMEOUT, driver


def bound_closes(engine: AsyncEngine) -> None:
    """Give each connection of ``engine`` at most :data:`CLOSE_TIMEOUT` seconds to close,
    where its driver's own close waits for the server: on a frozen server asyncpg's did
    not return, and with it ``dispose()``, the app's shutdown. aiosqlite's is waited for
    through cancels (``Driver.close``), before a terminate as well."""
    known = driver(engine.dialect.driver)
    if known is None or known.close is None:
        return
    close = known.close

    def close_within(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # The pool's own close follows, and finds the connection closed (or aborted).
        if in_greenlet():  # not in the garbage collector's finalizer: nothing may be awaited
            with contextlib.suppress(Exception):
                await_only(close(dbapi_connection.driver_connection, CLOSE_TIMEOUT))
            # asyncpg's adapter rolls back the transaction it began before it closes, and on
            # the connection closed here that rollback failed, logged as an error with its
            # traceback ("Exception closing connection") for every unit cancelled
            # mid-statement. Its transaction went with the connection.
            if getattr(dbapi_connection, "_transaction", None) is not None:
                dbapi_connection._transaction = None

    event.listen(engine.sync_engine, "close", close_within)
    if known.closes_on_thread:
        _closes_before_terminating(engine, close)


def _closes_before_terminating(
    engine: AsyncEngine, close: Callable[[Any, float], Awaitable[object]]
) -> None:
    """Close a connection that lives on a thread of its own before SQLAlchemy terminates it,
    where the pool sends no ``close`` event first: a connect event that failed (a cancel in
    a connect listener, the app's or dbscope's ``PRAGMA``).

    SQLAlchemy's terminate queues a graceful close on aiosqlite's thread, and when a second
    cancel (anyio's cancel scope, at each await) cuts it short, stops the thread: the stop
    overtakes the close's own, the thread ends before the close is done, and its task waits
    for ever ("Task was destroyed but it is pending!"). Closed first, through cancels, the
    connection leaves the terminate nothing to wait for.
    """
    dialect = engine.sync_engine.dialect
    terminate = dialect.do_terminate

    def close_then_terminate(dbapi_connection: Any) -> None:
        try:
            if in_greenlet():  # not in the garbage collector's finalizer: nothing may be awaited
                await_only(close(dbapi_connection.driver_connection, CLOSE_TIMEOUT))
        finally:
            terminate(dbapi_connection)

    dialect.do_terminate = close_then_terminate  # type: ignore[method-assign]


# On a pool entry's record_info (which, unlike info, every proxy of it reaches): the DBAPI
# connection a reset listener found lost and dropped.
DROPPED_IN_RESET: Final = "dbscope.dropped_in_reset"


def drop_in_reset(dbapi_connection: Any, record: ConnectionPoolEntry, error: Exception) -> None:
    """Drop ``dbapi_connection``, which a reset listener found lost (``error``): its pool entry
    closes it now and opens another at its next checkout, and the reset's own rollback
    (:func:`skips_rollback_of_dropped`) leaves it alone."""
    record.invalidate(error)
    if record.record_info is not None:
        record.record_info[DROPPED_IN_RESET] = dbapi_connection


def skips_rollback_of_dropped(engine: AsyncEngine) -> None:
    """Let the pool's reset skip the rollback of a connection :func:`drop_in_reset` dropped
    (on a primary with replicas, whose reset listener reads the log position: ``_replicas``).

    SQLAlchemy rolls a connection back after the reset listeners, on the connection its
    checkin began with, even once a listener invalidated the entry: psycopg's rollback of a
    connection the server ended raises ("the connection is lost"), which the pool logged as
    an ERROR with a traceback ("Exception during reset or similar"), after dbscope's one line
    for the same loss. A rollback of any other connection is SQLAlchemy's own.
    """
    dialect = engine.sync_engine.dialect
    rollback = dialect.do_rollback

    def do_rollback(dbapi_connection: Any) -> None:
        if isinstance(dbapi_connection, PoolProxiedConnection) and _dropped(dbapi_connection):
            return
        rollback(dbapi_connection)

    dialect.do_rollback = do_rollback  # type: ignore[method-assign]


def _dropped(proxied: PoolProxiedConnection) -> bool:
    """Whether ``proxied``'s connection is the one its entry dropped (forgotten then): by
    identity, so the entry's next connection is rolled back as any other."""
    info = proxied.record_info  # None once detached from its entry
    if info is None or info.get(DROPPED_IN_RESET) is not proxied.dbapi_connection:
        return False
    del info[DROPPED_IN_RESET]
    return True


class _GivesBackOnFailure(Connection):
    """A Connection that gives its pooled connection back if setting it up fails.

    SQLAlchemy sets a unit's isolation level and read-only mode in the Connection's
    constructor, after the checkout. asyncmy and aiosqlite wait for the server there, so a
    cancel can land in it; the constructor then raised with the pooled connection still
    checked out, until the garbage collector found it (with a warning). The connection is
    dropped, not reused: a statement may have been cut off mid-way.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except BaseException as error:
            pooled = getattr(self, "_dbapi_connection", None)
            if pooled is not None:
                pooled.invalidate(error)
            raise


def gives_back_on_failure(engine: AsyncEngine) -> AsyncEngine:
    """``engine``, its connections given back to the pool when setting them up fails; views
    (``engine.execution_options()``) need it of their own."""
    engine.sync_engine._connection_cls = _GivesBackOnFailure
    return engine


def puts_back_before_checkin(engine: AsyncEngine) -> None:
    """Put back what a unit set on its connection (its isolation level, its read-only mode)
    in the pool's reset, where a failure still returns the connection to the pool; called
    for each view that sets some, once per pool.

    SQLAlchemy puts these back at the very end of the checkin instead, after the step that
    gives a connection back when its checkin fails. asyncmy and aiosqlite wait for the server
    to take them back, so a cancel could land there: the checkin stopped, and the pool lost
    the connection for good (``checked_out`` never fell again). A checkin with nothing to
    put back costs the listener one attribute read.

    Called when the engine is built, before any checkin: adding a reset listener while a
    checkin awaits in another one breaks SQLAlchemy's loop over them. An engine built
    otherwise (a test's) gets it at its first view.
    """
    pool = engine.sync_engine.pool
    if not event.contains(pool, "reset", _put_back):
        event.listen(pool, "reset", _put_back)


def _put_back(dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState) -> None:
    # The record's queue of what to put back; SQLAlchemy empties it at the checkin.
    resets = getattr(record, "finalize_callback", None)
    if not resets or state.terminate_only or not state.asyncio_safe:
        return
    if not state.transaction_was_reset:
        # What the pool does next, done first: psycopg takes no isolation level in a transaction.
        dbapi_connection.rollback()
    while resets:
        resets.pop()(dbapi_connection)
