"""Telling an outage from a bug.

An outage is the database being unable to serve right now: no free pooled connection within
``pool_timeout``, a server that cannot be reached, or a connection that died mid-transaction.
Requests answer those with 503 and ``Retry-After``; everything else (an IntegrityError, a
syntax error, a wrong password) is a bug or a misconfiguration and is never disguised as one.

Drivers disagree on exception classes, so the verdict rests on SQLSTATEs, MySQL error codes,
SQLAlchemy's own ``connection_invalidated`` flag, and whether the error came out of the pool
opening a connection; for a driver connection used directly (``db.lease()``), on the
driver's own codes and on whether the driver reports its connection closed.
"""

from __future__ import annotations

import random
from types import TracebackType
from typing import Final, Protocol

from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IllegalStateChangeError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from dbscope._admission import LineFullError
from dbscope._exceptions import (
    ConfigurationError,
    DatabaseUnavailableError,
    SessionSharedError,
    StatementTimeoutError,
    UnavailableCause,
)
from dbscope._settings import DatabaseSettings


class UnitOptionsLike(Protocol):
    """What the statement-timeout check reads of a unit's options."""

    @property
    def statement_timeout(self) -> float | None: ...


# Connection-level failures: PostgreSQL SQLSTATE class 08, admin shutdown, crash shutdown,
# cannot-connect-now, too many connections; MySQL/MariaDB client and server codes for the same.
LOST_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03", "53300"})
LOST_MYSQL_CODES: Final = frozenset({1040, 1053, 2002, 2003, 2005, 2006, 2013})
# Refusals that no retry will cure: wrong user, password or database name.
REFUSED_SQLSTATE_PREFIXES: Final = ("28", "3D000")
REFUSED_MYSQL_CODES: Final = frozenset({1044, 1045, 1049})
PASSING_FATAL_STATES: Final = (
    "starting up",
    "shutting down",
    "recovery",
    "too many",
    "administrator command",
)
RETRY_AFTER: Final[dict[UnavailableCause, int]] = {
    "pool_timeout": 1,
    "connection_lost": 1,
    "unreachable": 5,
}
# Retry-After for a request refused at once because the wait line is full.
SHED_RETRY_AFTER: Final = (1, 2)


def connect_error(error: BaseException, url: URL) -> DatabaseUnavailableError | ConfigurationError:
    """Describe a failed first connection, naming host and port and never the password."""
    reason = (str(getattr(error, "orig", None) or error) or type(error).__name__).strip()
    if url.password:
        reason = reason.replace(str(url.password), "***")
    if url.get_backend_name() == "sqlite":
        message = (
            f"Could not open the SQLite database {url.database!r}: {reason}. Check that its "
            "directory exists and is writable."
        )
        return ConfigurationError(message)
    where = f"{url.get_backend_name()} at {url.host or 'localhost'}:{url.port or 'default port'}"
    if url.database:
        where += f", database {url.database!r}"
    if unavailable_cause(error) is not None:
        message = (
            f"Could not connect to {where}: {reason} (check that the server is running and "
            "that the host and port in the URL are right)"
        )
        return DatabaseUnavailableError(
            message, cause="unreachable", retry_after=RETRY_AFTER["unreachable"]
        )
    message = (
        f"Could not connect to {where} as user {url.username!r}: {reason} (check the user, "
        "password and database in the URL)"
    )
    return ConfigurationError(message)


def unavailable_cause(error: BaseException) -> UnavailableCause | None:
    """Tell whether ``error`` means the database cannot serve now (an outage, not a bug)."""
    if isinstance(error, PoolTimeoutError):
        return "pool_timeout"
    if _raised_while_connecting(error.__traceback__):
        if isinstance(error, DBAPIError) and _refused(error):
            return None
        if isinstance(error, DBAPIError | OSError):
            return "unreachable"
        return None
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return "connection_lost"
        if _lost_by_code(error.orig):
            return "connection_lost"
    return None


def _lost_by_code(orig: BaseException | None) -> bool:
    # The driver's own verdict: a connection-level SQLSTATE, or MySQL's code for the same.
    code = sqlstate(orig)
    if code is not None and (code in LOST_SQLSTATES or code.startswith("08")):
        return True
    return mysql_code(orig) in LOST_MYSQL_CODES


def _refused(error: DBAPIError) -> bool:
    code = sqlstate(error.orig)
    if code is not None:
        return code.startswith(REFUSED_SQLSTATE_PREFIXES)
    if mysql_code(error.orig) is not None:
        return mysql_code(error.orig) in REFUSED_MYSQL_CODES
    # libpq (psycopg) gives no SQLSTATE for a failed connect; a FATAL message means the
    # server answered, and refused us for good unless it is one of its passing states.
    text = str(error.orig)
    return "FATAL:" in text and not any(state in text for state in PASSING_FATAL_STATES)


def _raised_while_connecting(traceback: TracebackType | None) -> bool:
    # An OSError is a database outage only when it comes out of the pool opening a
    # connection; elsewhere it is the application's own (a missing file, say).
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == "__connect" and frame.f_globals.get("__name__") == (
            "sqlalchemy.pool.base"
        ):
            return True
        traceback = traceback.tb_next
    return False


def sqlstate(orig: BaseException | None) -> str | None:
    # psycopg: orig.sqlstate; asyncpg through SQLAlchemy: orig.sqlstate or orig.__cause__.
    for candidate in (orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def mysql_code(orig: BaseException | None) -> int | None:
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def outage_error(
    error: BaseException, settings: DatabaseSettings
) -> DatabaseUnavailableError | None:
    """The DatabaseUnavailableError that ``error`` amounts to, or None if it is no outage."""
    cause = unavailable_cause(error)
    if cause is None:
        return None
    return unavailable_error(cause, settings, line_full=isinstance(error, LineFullError))


def unavailable_error(
    cause: UnavailableCause, settings: DatabaseSettings, *, line_full: bool = False
) -> DatabaseUnavailableError:
    """The DatabaseUnavailableError for ``cause``, its message naming the numbers involved.

    ``line_full``: the pool's wait line was full (``pool_max_waiters``), not the wait too long.
    """
    url = settings.url
    if line_full:
        message = (
            f"All database connections are busy and pool_max_waiters="
            f"{settings.pool_max_waiters} requests already wait for one: the service is "
            "overloaded."
        )
    elif cause == "pool_timeout":
        message = (
            f"No database connection was free within pool_timeout={settings.pool_timeout}s "
            f"(pool_size={settings.pool_size}, max_overflow={settings.max_overflow}): the "
            "service is overloaded."
        )
    elif cause == "unreachable":
        message = (
            f"The database at {url.host or 'localhost'}:{url.port or 'default port'} could not "
            "be reached."
        )
    else:
        message = (
            "The connection to the database was lost while in use (server restart, terminated "
            "backend or network cut)."
        )
    retry_after = RETRY_AFTER[cause]
    if line_full:
        # Requests refused together come back together, and are refused together again: a
        # spread of 1 to 2 s splits the crowd in two, each half a shorter burst of refusals.
        retry_after = random.choice(SHED_RETRY_AFTER)  # noqa: S311 - a spread, not a secret
    return DatabaseUnavailableError(message, cause=cause, retry_after=retry_after)


def driver_connection_lost(error: BaseException, *, unusable: bool) -> bool:
    """Tell whether ``error``, raised by a driver connection used without SQLAlchemy, means
    that the connection died.

    No SQLAlchemy wrapper marks such an error: the verdict rests on the driver's own SQLSTATE
    or MySQL code, and, for an error that carries neither (asyncpg's "connection is closed",
    an OSError from the socket), on whether the driver can still use its connection.

    Args:
        error: an error of the driver, or an OSError, raised while the connection was in use.
        unusable: the driver reports the connection closed or broken, or the error is one
            after which the driver cannot go on with it.
    """
    return _lost_by_code(error) or unusable


# PostgreSQL query_canceled; MariaDB ER_STATEMENT_TIMEOUT, MySQL ER_QUERY_TIMEOUT.
TIMEOUT_SQLSTATE: Final = "57014"
TIMEOUT_MYSQL_CODES: Final = frozenset({1969, 3024})


def statement_timeout_error(
    error: BaseException, options: UnitOptionsLike
) -> StatementTimeoutError | None:
    """The StatementTimeoutError ``error`` amounts to, if the unit set a statement timeout."""
    if options.statement_timeout is None or not isinstance(error, DBAPIError):
        return None
    if sqlstate(error.orig) != TIMEOUT_SQLSTATE and mysql_code(error.orig) not in (
        TIMEOUT_MYSQL_CODES
    ):
        return None
    message = (
        f"A statement ran longer than statement_timeout={options.statement_timeout}s and was "
        "cancelled; the transaction was rolled back."
    )
    return StatementTimeoutError(message)


# What SQLAlchemy and the drivers say when two tasks use one session or connection at once.
SHARED_SESSION_WORDS: Final = (
    "concurrent operations are not permitted",
    "another operation is in progress",
)


def shared_session_error(error: BaseException) -> SessionSharedError | None:
    """A clear error for one session used by two tasks at once, which drivers and
    SQLAlchemy report in their own words (a state change in progress, another operation in
    progress)."""
    text = str(error)
    if not isinstance(error, IllegalStateChangeError) and not any(
        words in text for words in SHARED_SESSION_WORDS
    ):
        return None
    message = (
        "One session was used by two tasks at once (asyncio.gather over one session?). A "
        "session and its connection run one statement at a time: give each concurrent query "
        "its own session with `await db.parallel(...)`."
    )
    return SessionSharedError(message)
