"""A transaction the server rolled back is never committed as if whole.

PostgreSQL aborts a transaction at its first error and answers a later COMMIT with ROLLBACK,
raising nothing: an application that caught a statement's error and went on had its unit
"committed" (a 2xx, its on-commit callbacks run) with nothing kept. InnoDB rolls back the
whole transaction at a deadlock, and the statements after it run in a new one, which COMMIT
keeps: half a unit. So the first error the server raises in a transaction is remembered on
its connection, until a rollback undoes it (one to a savepoint the error happened under, where
the server keeps the rest), and a COMMIT after it raises that error instead: a conflict is then
retried as one, a constraint answered as one.

The listeners are the engine's, for every unit, lease and test on it; the backend's rules
(``Backend.rolled_back_by``) say what an error rolled back.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from sqlalchemy import event
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from dbscope._dialects import Backend, only_read
from dbscope._errors import CAUGHT_NOTE

# On a pooled connection's info, within a transaction: the first error that rolled it back;
# how many savepoints are open (SQLAlchemy names a savepoint only once it is sent).
FAILED: Final = "dbscope.failed_transaction"
SAVEPOINTS: Final = "dbscope.savepoints"


class _Failure(NamedTuple):
    error: BaseException
    # Whether a rollback to a savepoint undoes it: the server rolled back to the innermost
    # savepoint, and one was open. None could be made after the error: the server refuses
    # every statement but a rollback until then (SQLAlchemy's LIFO savepoints are the rest).
    to_savepoint: bool


def refuses_failed_commits(engine: AsyncEngine, rules: Backend) -> None:
    """Make a COMMIT of a transaction that the server rolled back raise the error that did."""

    def remember(context: ExceptionContext) -> None:
        connection = context.connection
        if connection is None or context.is_disconnect or connection.invalidated:
            return
        if context.statement is None or not connection.in_transaction():
            return  # no statement's: the COMMIT's or ROLLBACK's own, which end the transaction
        if only_read(connection):
            return  # a read before the deferred BEGIN: no transaction on the server to abort
        rolled_back = rules.rolled_back_by(context.original_exception)
        failure = connection.info.get(FAILED)
        if failure is not None and rolled_back == "earlier":
            # The statement was refused for the first error: that one explains, and a
            # conflict is retried as one.
            raise _noted(failure.error)
        if rolled_back is None or failure is not None:
            return
        under_savepoint = connection.info.get(SAVEPOINTS, 0) > 0
        error = context.sqlalchemy_exception or context.original_exception
        to_savepoint = rolled_back == "to_savepoint" and under_savepoint
        connection.info[FAILED] = _Failure(error, to_savepoint)

    sync_engine = engine.sync_engine
    event.listen(sync_engine, "handle_error", remember)
    event.listen(sync_engine, "commit", _refuse)
    event.listen(sync_engine, "rollback", _forget)
    event.listen(sync_engine, "savepoint", _open_savepoint)
    event.listen(sync_engine, "release_savepoint", _close_savepoint)
    event.listen(sync_engine, "rollback_savepoint", _roll_back_savepoint)
    # A transaction SQLAlchemy ended without a ROLLBACK of its own (after a failed COMMIT,
    # the pool's reset rolls back): no record outlives the connection's checkin.
    event.listen(sync_engine.pool, "reset", _forget_at_checkin)


def _refuse(connection: Connection) -> None:
    if connection.invalidated:
        return  # gone, and its record with it (SQLAlchemy raises for its info now)
    info = connection.info
    failure = info.pop(FAILED, None)
    info.pop(SAVEPOINTS, None)
    if failure is None:
        return
    # Rolled back here, as the server did already: SQLAlchemy takes the transaction for
    # ended once its commit was tried, and would give the connection back without a rollback.
    try:
        connection.dialect.do_rollback(connection.connection)
    except Exception:
        connection.invalidate()
    raise _noted(failure.error)


def _noted(error: BaseException) -> BaseException:
    if CAUGHT_NOTE not in getattr(error, "__notes__", ()):
        error.add_note(CAUGHT_NOTE)
    return error


def _forget(connection: Connection) -> None:
    if not connection.invalidated:
        connection.info.pop(FAILED, None)
        connection.info.pop(SAVEPOINTS, None)


def _forget_at_checkin(
    dbapi_connection: object, record: ConnectionPoolEntry, state: object
) -> None:
    record.info.pop(FAILED, None)
    record.info.pop(SAVEPOINTS, None)


def _open_savepoint(connection: Connection, name: str | None) -> None:
    connection.info[SAVEPOINTS] = connection.info.get(SAVEPOINTS, 0) + 1


def _close_savepoint(connection: Connection, name: str, context: object) -> None:
    if not connection.invalidated:
        connection.info[SAVEPOINTS] = max(0, connection.info.get(SAVEPOINTS, 0) - 1)


def _roll_back_savepoint(connection: Connection, name: str, context: object) -> None:
    if connection.invalidated:
        return
    failure = connection.info.get(FAILED)
    if failure is not None and failure.to_savepoint:
        del connection.info[FAILED]
    _close_savepoint(connection, name, context)
