"""The errors dbscope raises.

Every error derives from :class:`DbscopeError`::

    DbscopeError
    ├── ConfigurationError        a setting, URL or option is wrong (raised at construction)
    ├── LifecycleError            the Database is used in a state that does not allow it
    ├── NoSessionError            current_session() outside a request or transaction
    ├── LazyLoadError             an unloaded relationship was read where it cannot load
    ├── UnitOfWorkEndedError      a session was used after its unit of work ended
    ├── SessionSharedError        one session (a test's connection) used by two tasks at once
    ├── StatementTimeoutError     a statement ran longer than the unit's statement_timeout
    ├── RetriesExhaustedError     a retried unit of work kept conflicting
    ├── ConstraintViolationError  a constraint failed at COMMIT (also an IntegrityError)
    ├── ClientDisconnectedError   the client hung up while its request waited in line
    └── DatabaseUnavailableError  an outage: pool exhausted, server unreachable, connection lost

Errors of the application and of the database that are not outages (an IntegrityError, a
ValueError, an HTTPException) are never wrapped: they reach the caller as they were raised.

This module is a leaf: it imports nothing from the rest of dbscope.
"""

from __future__ import annotations

from typing import Literal, Self

from sqlalchemy.exc import DBAPIError, IntegrityError

UnavailableCause = Literal["pool_timeout", "unreachable", "connection_lost"]


class DbscopeError(Exception):
    """Base class of every error raised by dbscope."""


class ConfigurationError(DbscopeError, ValueError):
    """A setting, URL or option is invalid; the message names the value and the fix."""


class LifecycleError(DbscopeError, RuntimeError):
    """The Database was used before connect(), after dispose(), or connected twice."""


class NoSessionError(DbscopeError, LookupError):
    """``current_session()`` was called where no unit of work is active."""


class LazyLoadError(DbscopeError):
    """An unloaded relationship was read where loading it lazily cannot (or may not) work.

    Deliberately not an AttributeError: pydantic's ``from_attributes`` (FastAPI's
    ``response_model``) would take that for a missing attribute and answer ``null``.
    """


class UnitOfWorkEndedError(DbscopeError, RuntimeError):
    """A session was used after its unit of work ended (e.g. in a background task)."""


class SessionSharedError(DbscopeError):
    """One session was used by two tasks at once; each task needs its own session. In a test
    bound to its connection, also two units of work at once on that one connection."""


class StatementTimeoutError(DbscopeError):
    """A statement ran longer than the unit's ``statement_timeout``, or the server's own
    (a role's, a user's), and was cancelled.

    The transaction is rolled back; the connection itself is healthy and back in the pool.
    """


class RetriesExhaustedError(DbscopeError):
    """A unit of work failed with a serialization failure or deadlock on every attempt.

    Attributes:
        attempts: how many times the unit ran.
    """

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class ClientDisconnectedError(DbscopeError):
    """The request's client hung up while the request waited in line for a connection.

    Raised at the request's first statement, when its turn came, instead of running it: the
    unit of work did nothing. FastAPI answers 499, which no client receives.
    """


class DatabaseUnavailableError(DbscopeError):
    """The database cannot serve this unit of work right now; retrying later may succeed.

    Attributes:
        cause: ``"pool_timeout"`` (no pooled connection was free within ``pool_timeout``),
            ``"unreachable"`` (a new connection could not be opened) or
            ``"connection_lost"`` (the connection died during the unit of work).
        retry_after: seconds a client should wait before retrying.
        public_message: the message without where the database is (its host, port and
            name), for answers to clients, who need not know; the message for logs names it.
        outcome_unknown: the connection was lost during the unit's own COMMIT: whether the
            transaction committed is not known, and running the work again blindly may
            repeat it.
    """

    def __init__(
        self,
        message: str,
        *,
        cause: UnavailableCause,
        retry_after: int,
        public_message: str | None = None,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(message)
        self.cause: UnavailableCause = cause
        self.retry_after = retry_after
        self.public_message = message if public_message is None else public_message
        self.outcome_unknown = outcome_unknown


class ConstraintViolationError(DbscopeError, IntegrityError):
    """A unique, foreign key, check, exclusion or NOT NULL constraint failed at COMMIT.

    Raised when the unit's own commit fails this way (a deferred constraint, or a flush of
    pending objects at commit), after the body returned, where the application could not
    catch it: FastAPI answers 409. It is also the ``IntegrityError`` it replaces, so code that
    catches that still does. Its message names the constraint, never the row's values.

    Attributes:
        constraint: the constraint's name, when the driver reports it; for a NULL refused
            by a column, the column and ``NOT NULL`` (``"user.email NOT NULL"``; MariaDB and
            MySQL do not name the table).
    """

    def __init__(self, message: str, error: DBAPIError, constraint: str | None) -> None:
        # No parameters kept: they hold the row's values, which may be personal data.
        orig = error.orig if error.orig is not None else error
        IntegrityError.__init__(self, error.statement, None, orig, hide_parameters=True)
        self.constraint = constraint
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    @classmethod
    def at_commit(cls, error: DBAPIError, constraint: str | None, caught: bool = False) -> Self:
        """The error for ``error``, raised by a unit's COMMIT, or raised earlier by one of its
        statements and ``caught`` by the application, which went on."""
        named = f"the constraint {constraint!r}" if constraint else "a constraint"
        if caught:
            message = (
                f"The transaction could not commit: one of its statements violated {named}, "
                "and the error was caught and the work went on, but the database had rolled "
                "the transaction back; nothing was stored. Run a statement that may fail under "
                "a savepoint (`async with session.begin_nested():`) to go on after it."
            )
            return cls(message, error, constraint)
        message = (
            f"The transaction could not commit: it violates {named} (checked at COMMIT, once "
            "its work was done: in a request, after the endpoint returned); nothing was stored."
        )
        return cls(message, error, constraint)
