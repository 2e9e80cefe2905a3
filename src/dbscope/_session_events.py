"""The session class behind every dbscope unit of work, and what it does at each transaction.

Everything a unit asks of its transaction (a schema, read-only, a statement timeout) is kept
in ``session.info`` and applied by ``after_begin``, once per transaction, with statements that
end with the transaction (``SET LOCAL``): nothing is left on the pooled connection for the
next user, and a mid-unit ``commit()`` gets the same settings again.

The same events keep the unit's on-commit callbacks: a callback belongs to the (possibly
nested) transaction it was registered in, is dropped when that transaction or one around it
rolls back, and becomes due when the outermost transaction commits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session, SessionTransaction

from dbscope._engine import STATEMENT_TIMEOUT_FLAG
from dbscope._exceptions import UnitOfWorkEndedError
from dbscope._lazy_loads import refuse_lazy_loads
from dbscope._settings import validate_schema_name

SCHEMA_KEY: Final = "dbscope.schema"
APPLIED_SCHEMA_KEY: Final = "dbscope.applied_schema"
READ_ONLY_KEY: Final = "dbscope.read_only"
TIMEOUT_KEY: Final = "dbscope.statement_timeout"
PENDING_HOOKS_KEY: Final = "dbscope.pending_hooks"
DUE_HOOKS_KEY: Final = "dbscope.due_hooks"
ENDED_KEY: Final = "dbscope.ended"

CommitHook = Callable[[], Any]


class UnitSession(Session):
    """The synchronous session behind every dbscope AsyncSession."""


refuse_lazy_loads(UnitSession)


def quote_schema(dialect: Dialect, name: str) -> str:
    """``name`` checked to be a plain identifier, then quoted by the dialect."""
    return dialect.identifier_preparer.quote_identifier(validate_schema_name(name))


@event.listens_for(UnitSession, "after_begin")
def _configure_transaction(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    info = session.info
    backend = connection.dialect.name
    if info.get(READ_ONLY_KEY):
        _make_read_only(connection, backend)
    timeout = info.get(TIMEOUT_KEY)
    if timeout is not None:
        milliseconds = max(1, round(timeout * 1000))
        if backend == "postgresql":
            connection.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")
        elif backend in ("mysql", "mariadb"):
            # MariaDB has no SET LOCAL: the session value is put back when the connection
            # returns to the pool (see _engine.py).
            connection.exec_driver_sql(f"SET SESSION max_statement_time = {milliseconds / 1000}")
            connection.info[STATEMENT_TIMEOUT_FLAG] = True
    name = info.get(SCHEMA_KEY)
    if name is not None:
        connection.exec_driver_sql(
            f"SET LOCAL search_path TO {quote_schema(connection.dialect, name)}"
        )
    info[APPLIED_SCHEMA_KEY] = name


def _make_read_only(connection: Connection, backend: str) -> None:
    if backend == "postgresql":
        # Begun with BEGIN READ ONLY already, unless bound to a test's connection, where the
        # setting ends with the unit's savepoint.
        if not connection.get_execution_options().get("postgresql_readonly"):
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
    elif backend in ("mysql", "mariadb") and not connection.in_nested_transaction():
        # MariaDB/MySQL begin a transaction implicitly, at the first statement: this one,
        # sent before any, makes that transaction read-only. In a test's transaction (the
        # unit is a savepoint) it would outlive the unit, so there the unit only rolls back.
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")


@event.listens_for(UnitSession, "after_transaction_create")
def _refuse_use_after_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None and session.info.get(ENDED_KEY):
        message = (
            "This session belongs to a unit of work that has ended (its request already "
            "answered, or its transaction block exited); using it would open a transaction "
            "that nobody commits. Open a new one: `async with db.transaction() as session:`."
        )
        raise UnitOfWorkEndedError(message)


def add_commit_hook(session: Session, callback: CommitHook) -> None:
    """Register ``callback`` on the innermost transaction of ``session`` now."""
    transaction = session.get_nested_transaction() or session.get_transaction()
    session.info.setdefault(PENDING_HOOKS_KEY, []).append((transaction, callback))


def take_due_hooks(session: Session) -> list[CommitHook]:
    """The callbacks whose transaction has committed, in registration order; forgets them."""
    due: list[CommitHook] = session.info.pop(DUE_HOOKS_KEY, [])
    return due


@event.listens_for(UnitSession, "after_commit")
def _hooks_become_due(session: Session) -> None:
    # after_commit follows the outermost transaction only; savepoints keep their hooks pending
    # until the transaction around them commits.
    pending = session.info.pop(PENDING_HOOKS_KEY, [])
    session.info.setdefault(DUE_HOOKS_KEY, []).extend(callback for _, callback in pending)


@event.listens_for(UnitSession, "after_soft_rollback")
def _drop_rolled_back_hooks(session: Session, previous_transaction: SessionTransaction) -> None:
    pending = session.info.get(PENDING_HOOKS_KEY)
    if pending:
        session.info[PENDING_HOOKS_KEY] = [
            (transaction, callback)
            for transaction, callback in pending
            if not _inside(transaction, previous_transaction)
        ]


def _inside(transaction: SessionTransaction | None, outer: SessionTransaction) -> bool:
    if outer.parent is None:
        return True  # the whole transaction rolled back
    while transaction is not None:
        if transaction is outer:
            return True
        transaction = transaction.parent
    return False
