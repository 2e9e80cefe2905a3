"""A transaction the server rolled back is never committed as if whole.

PostgreSQL aborts a transaction at its first error and answers a later COMMIT with ROLLBACK,
raising nothing: an application that caught a statement's error and went on had its unit
"committed" (a 2xx, its on-commit callbacks run) with nothing kept. InnoDB rolls back the
whole transaction at a deadlock, and the statements after it run in a new one, which COMMIT
keeps: half a unit. So the first error the server raises in a transaction is remembered on
its connection (the engine's ``handle_error``), until a rollback undoes it (one to a
savepoint the error happened under, where the server keeps the rest; never for a conflict,
after which the rest of the unit stands on reads that may be out of date), and the unit's COMMIT
after it raises that error instead (``_session.py`` asks, at each unit's transaction's start,
rollback and commit): a conflict is then retried as one, a constraint answered as one.

The backend's rules (``Backend.rolled_back_by``) say what an error rolled back. Session events,
not the Connection's: any Connection event makes SQLAlchemy dispatch at every statement (5%
more instructions a request, measured).
"""

from __future__ import annotations

from typing import Final, NamedTuple
from weakref import WeakSet

from sqlalchemy import event
from sqlalchemy.engine import Connection, ExceptionContext, RootTransaction
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from dbscope._dialects import Backend, only_read
from dbscope._errors import CAUGHT_NOTE
from dbscope._exceptions import LifecycleError

# On a pooled connection's info, within a transaction: the first error that rolled it back.
FAILED: Final = "dbscope.failed_transaction"


class _Failure(NamedTuple):
    error: BaseException
    # Whether a rollback to a savepoint undoes it: the server rolled back to the innermost
    # savepoint, and one was open. None could be made after the error: the server refuses
    # every statement but a rollback until then.
    to_savepoint: bool
    # A conflict (a serialization failure, a deadlock): no savepoint undoes it, even where
    # the server rolled back to one (PostgreSQL). It says that the unit's reads may be out of
    # date, not that one statement failed: the work after it would commit on them, without
    # the part the savepoint dropped. The unit is run again whole, or fails.
    conflict: bool
    # The server rolled back the whole transaction (InnoDB's deadlock, SQLite's ON CONFLICT
    # ROLLBACK): on a test's connection, the test's own transaction with it.
    whole: bool
    # The transaction it rolled back: a record left by a use outside units (nobody forgets
    # it there) is no later transaction's.
    transaction: RootTransaction | None


def remembers_failures(engine: AsyncEngine, rules: Backend) -> None:
    """Keep, on its connection, the first error that rolled back a transaction of ``engine``;
    a statement the server refuses for it raises it again."""

    def remember(context: ExceptionContext) -> None:
        connection = context.connection
        if connection is None or context.is_disconnect or connection.invalidated:
            return
        statement = context.statement
        if statement is None and context.execution_context is not None:
            statement = context.execution_context.statement  # raised at a fetch of its rows
        if statement is None or not connection.in_transaction():
            return  # no statement's: the COMMIT's or ROLLBACK's own, which end the transaction
        if only_read(connection):
            return  # a read before the deferred BEGIN: no transaction on the server to abort
        rolled_back = rules.rolled_back_by(context.original_exception)
        if rolled_back is None and rules.begin_again_if_ended(connection.connection):
            # No rule says so, but the transaction is gone (SQLite's ON CONFLICT ROLLBACK):
            # what follows runs in a new one, which the COMMIT's refusal rolls back.
            rolled_back = "transaction"
        failure = connection.info.get(FAILED)
        if failure is not None and failure.transaction is not connection.get_transaction():
            del connection.info[FAILED]
            failure = None
        if failure is not None and rolled_back == "earlier":
            # The statement was refused for the first error: that one explains, and a
            # conflict is retried as one.
            raise _noted(failure.error)
        if rolled_back is None or failure is not None:
            return
        # What the application was raised: an earlier listener's adaptation first (asyncpg's
        # errors at a stream's fetch, raw until adapted; SQLAlchemy sets the attribute only
        # then), else SQLAlchemy's wrapper.
        chained = getattr(context, "chained_exception", None)
        error = chained or context.sqlalchemy_exception or context.original_exception
        conflict = rules.error_kind(context.original_exception) == "conflict"
        to_savepoint = (
            rolled_back == "to_savepoint" and connection.in_nested_transaction() and not conflict
        )
        whole = rolled_back == "transaction"
        connection.info[FAILED] = _Failure(
            error, to_savepoint, conflict, whole, connection.get_transaction()
        )
        if whole and conflict and connection in _test_connections:
            # Else retried as a conflict, on a connection whose savepoints are gone: the run
            # again failed with a SessionSharedError that said nothing of the deadlock, and
            # could not give the test back what it wrote before.
            raise LifecycleError(TEST_TRANSACTION_LOST) from error

    event.listen(engine.sync_engine, "handle_error", remember)
    # Gone at the checkin: an idle pooled connection kept a failed request's error, its
    # traceback, and through its frames the request and everything it held.
    event.listen(engine.sync_engine, "checkin", _forget_at_checkin)


def _forget_at_checkin(dbapi_connection: object, record: ConnectionPoolEntry) -> None:
    record.info.pop(FAILED, None)


def refuse_commit(connection: Connection, rules: Backend) -> None:
    """Raise the error that rolled back ``connection``'s transaction, if one did: before its
    COMMIT, which the server would answer with a rollback (PostgreSQL), or keep half of."""
    if connection.closed or connection.invalidated:
        return  # gone, and its record with it (SQLAlchemy raises for its info now)
    failure = connection.info.get(FAILED)
    if failure is None:
        return
    # Asked before the record goes: on PostgreSQL its probe, refused for the failure, raises it.
    undone = not failure.conflict and rules.failure_undone(connection)
    connection.info.pop(FAILED, None)
    if not undone:
        if failure.whole and failure.conflict and connection in _test_connections:
            raise LifecycleError(TEST_TRANSACTION_LOST) from failure.error
        raise _noted(failure.error)


def forget(connection: Connection, *, savepoint: bool = False) -> None:
    """A transaction of ``connection`` begins or rolls back (a savepoint of it, if
    ``savepoint``): an error that rollback undoes is no longer the transaction's."""
    if connection.closed or connection.invalidated:
        return  # back in the pool, whose checkin dropped its record
    failure = connection.info.get(FAILED)
    if failure is not None and (failure.to_savepoint or not savepoint):
        del connection.info[FAILED]


# The connections of tests (the pytest plugin's, dbscope.testing.rolled_back()'s): a unit's
# transaction there is a savepoint of the test's, which lives the whole test.
_test_connections: WeakSet[Connection] = WeakSet()


def in_a_test(connection: Connection) -> None:
    """``connection`` is a test's: a conflict that rolls back the whole transaction on it
    rolls back the test's (:data:`TEST_TRANSACTION_LOST`)."""
    _test_connections.add(connection)


TEST_TRANSACTION_LOST: Final = (
    "The database rolled back the test's whole transaction at the conflict above (InnoDB "
    "does at a deadlock, savepoints included): what the test wrote before it is gone, and "
    "running the unit again (@db.retry(), db.retrying()) would not bring it back. Test "
    "deadlocks in a test that uses no dbscope_* fixture, on a database of its own "
    "(docs/testing.md, 'Caveats')."
)


def _noted(error: BaseException) -> BaseException:
    if CAUGHT_NOTE not in getattr(error, "__notes__", ()):
        error.add_note(CAUGHT_NOTE)
    return error
