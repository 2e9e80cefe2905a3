"""The one door where driver and SQLAlchemy errors become dbscope's errors.

Every place that talks to the database (a unit of work, a lease, the first connect) hands
what it caught to :func:`translate`, which answers with the dbscope error it
amounts to, or None when it is the application's own or the database's verdict on the
application's SQL (an IntegrityError in the body, a syntax error), which then propagates
unchanged:

====================================================  =====================================
the error                                             becomes
====================================================  =====================================
no pooled connection within pool_timeout, or a full   DatabaseUnavailableError
wait line; a server that cannot be reached, or that   ("pool_timeout", "unreachable",
refuses a connection for a connection limit; a        "connection_lost"): 503
connection lost mid-unit; a write refused as
read-only in a unit that writes (a demoted primary)
wrong user, password or database, missing privilege   ConfigurationError: 500
a statement past the unit's statement_timeout, or     StatementTimeoutError: 504
the server's own (a role's, a user's)
one session used by two tasks at once                 SessionSharedError: 500
a unit that would wait for its own task's write lock  ConfigurationError: 500
a constraint violated at COMMIT                       ConstraintViolationError: 409
====================================================  =====================================

Whether an error is a conflict that running the unit again may cure is :func:`conflict_in`'s
verdict, which the retry loop asks.

Drivers disagree on exception classes, so the verdict rests on each backend's codes
(``dbscope._dialects``), on SQLAlchemy's ``connection_invalidated`` flag, and on whether the
error came out of the pool opening a connection.
"""

from __future__ import annotations

import traceback
from types import TracebackType
from typing import Any, Final

from sqlalchemy.engine import URL
from sqlalchemy.exc import (
    DBAPIError,
    EmulatedDBAPIException,
    IllegalStateChangeError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from dbscope._dialects import Backend, WaitsForItself, backend, driver
from dbscope._exceptions import (
    ConfigurationError,
    ConstraintViolationError,
    DatabaseUnavailableError,
    DbscopeError,
    StatementTimeoutError,
)
from dbscope._unavailable import (
    RETRY_AFTER,
    UNREACHABLE,
    AtConnectionLimitError,
    Limits,
    LineFullError,
    at_connection_limit,
    unavailable,
)
from dbscope._urls import describe_location
from dbscope._usage_errors import shared_session, waits_for_its_own_lock

# What SQLAlchemy and the drivers say when two tasks use one session or connection at once.
SHARED_SESSION_WORDS: Final = (
    "concurrent operations are not permitted",
    "another operation is in progress",
)


# A COMMIT the driver never sent, the connection known gone: its outcome is known.
LOST_BEFORE_COMMIT: Final = (
    "The connection to the database was lost before the COMMIT was sent (the server ended "
    "it: a restart, a terminated backend, a timeout for idling): nothing of the transaction "
    "was kept."
)
# What a driver raises, or raises from, on an argument it cannot take: never an outage.
ARGUMENT_ERRORS: Final = (TypeError, ValueError, LookupError, AttributeError)


def translate(
    error: BaseException, limits: Limits, *, at_commit: bool = False
) -> DbscopeError | None:
    """The dbscope error ``error`` amounts to, or None if it is the application's own.

    Args:
        error: what a unit of work, a lease or a connect caught.
        limits: the settings the message names (and the unit's statement timeout, if any).
        at_commit: ``error`` was raised by the unit's own COMMIT, after its body returned.
    """
    if isinstance(error, DbscopeError):
        return None
    if isinstance(error, PoolTimeoutError):
        because = str(error) if isinstance(error, AtConnectionLimitError) else None
        line_full = isinstance(error, LineFullError)
        return unavailable("pool_timeout", limits, line_full=line_full, because=because)
    rules = limits.backend
    if _raised_while_connecting(error.__traceback__):
        return _connect_failed(error, limits)
    if _shared_session(error):
        return shared_session()
    if isinstance(error, WaitsForItself):
        return waits_for_its_own_lock(str(error))
    if not isinstance(error, DBAPIError):
        return None
    kind = rules.error_kind(error.orig)
    if error.connection_invalidated or kind == "lost":
        # A read-only refusal invalidates only in a unit that writes (the backend's rules):
        # the server is a standby now. In a read-only unit it is the unit's own error.
        demoted = kind == "read_only"
        because = rules.lost_because(error.orig)
        known = driver(limits.url.get_driver_name())
        if at_commit and known is not None and known.unsent(error.orig):
            because, at_commit = because or LOST_BEFORE_COMMIT, False
        return unavailable(
            "connection_lost", limits, demoted=demoted, at_commit=at_commit, because=because
        )
    if kind == "refused":
        return refused(error.orig, limits)
    if kind == "timeout":
        return _statement_timeout(limits)
    return violated_at_commit(error, rules) if at_commit else None


def _statement_timeout(limits: Limits) -> StatementTimeoutError:
    # A limit the server holds for the role, user, database or connection (a DBA's, not the
    # unit's) cancels the statement as the unit's own does: the same 504, not a 500.
    if limits.statement_timeout is None:  # an administrator's cancel has the same code
        said = (
            "A statement ran longer than the server's statement time limit (set for the "
            "role, user or database), or an administrator cancelled it"
        )
    else:
        said = f"A statement ran longer than statement_timeout={limits.statement_timeout}s"
        said += " and was cancelled"
    return StatementTimeoutError(f"{said}; the transaction was rolled back.")


def conflict_in(error: BaseException, rules: Backend, *, lock_timeouts: bool) -> str | None:
    """The conflict ``error`` is, named for logs and messages (a serialization failure, a
    deadlock; a lock wait timeout if ``lock_timeouts``): running its unit again may succeed.
    None if it is no conflict."""
    if not isinstance(error, DBAPIError):
        return None
    kind = rules.error_kind(error.orig)
    if kind == "conflict":
        return rules.conflict_name(error.orig)
    if kind == "lock_wait" and lock_timeouts:
        return f"lock wait timeout ({rules.error_code(error.orig)})"
    return None


def violated_at_commit(error: BaseException, rules: Backend) -> ConstraintViolationError | None:
    """``error``, raised by a unit's own COMMIT, as the ConstraintViolationError it is (by
    its code, not its class: asyncmy raises a failed CHECK as an OperationalError); None if
    it is no constraint's."""
    if not isinstance(error, DBAPIError) or rules.error_kind(error.orig) != "constraint":
        return None
    caught = CAUGHT_NOTE in getattr(error, "__notes__", ())
    return ConstraintViolationError.at_commit(error, rules.constraint_name(error.orig), caught)


# Added to an error that a COMMIT raises again (_failed_transactions.py): the application
# caught it when a statement raised it, and went on in a transaction the server had ended.
CAUGHT_NOTE: Final = (
    "dbscope: raised again. A statement raised this error earlier in the transaction and the "
    "error was caught, but the database had rolled the transaction back then (up to the "
    "savepoint it was raised under, if any), so the work that followed could not commit. Let "
    "the error end the unit, or run a statement that may fail under a savepoint: "
    "`async with session.begin_nested():`."
)


def connect_error(error: BaseException, url: URL) -> DbscopeError:
    """Describe a failed first connection: where, and the fix; never the password."""
    said = getattr(error, "orig", None) or error
    reason = (str(said) or type(error).__name__).strip()
    if isinstance(said, UnicodeError):  # its text quotes what it could not encode
        reason = f"the driver could not encode a connection argument ({type(said).__name__})"
    rules = backend(url.get_backend_name())
    if rules.drivers and rules.default_port is None:  # a file: no server to wait for
        message = (
            f"Could not open the {describe_location(url)}: {reason}. Check that its "
            "directory exists and is writable."
        )
        return ConfigurationError(message)
    if rules.at_connection_limit(said):
        return at_connection_limit(said, Limits(url))
    translated = translate(error, Limits(url))
    if isinstance(translated, DatabaseUnavailableError):
        message = (
            f"Could not connect to {describe_location(url)}: {reason} (check that the server "
            "is running and that the host and port in the URL are right)"
        )
        return DatabaseUnavailableError(
            message,
            cause="unreachable",
            retry_after=RETRY_AFTER["unreachable"],
            public_message=UNREACHABLE,
        )
    advice = rules.setup_advice(getattr(error, "orig", None) or error)
    if translated is None and advice is not None:
        message = f"Could not connect to {describe_location(url)}: {reason}. {advice}."
        return ConfigurationError(message)
    if translated is None:  # no server's verdict: the driver refused what it was given
        message = (
            f"Could not connect to {describe_location(url)}: {reason} (the driver refused its "
            "arguments: check the options in the URL's query string and in connect_args)"
        )
        return ConfigurationError(message)
    message = (
        f"Could not connect to {describe_location(url)} as user {url.username!r}: {reason} "
        "(check the user, password and database in the URL, and the user's privileges)"
    )
    return ConfigurationError(message)


def _connect_failed(error: BaseException, limits: Limits) -> DbscopeError | None:
    """The verdict on ``error``, raised while the pool opened a connection: wrapped by
    SQLAlchemy (``engine.connect()``), or not (a lease's ``raw_connection()``): the driver's
    own error, or the one SQLAlchemy's adapter of the driver raised for it (asyncpg's)."""
    _forget_arguments(error)
    known = driver(limits.url.get_driver_name())
    if isinstance(error, DBAPIError):
        orig: BaseException | None = error.orig
    elif isinstance(error, EmulatedDBAPIException) or (
        known is not None and isinstance(error, known.errors())
    ):
        orig = error
    else:
        return unavailable("unreachable", limits) if isinstance(error, OSError) else None
    if limits.backend.at_connection_limit(orig):
        return at_connection_limit(orig, limits)
    kind = limits.backend.error_kind(orig)
    if kind == "refused":
        return refused(orig, limits)
    if kind is None and _refused_arguments(error, orig, limits):
        return None  # the driver refused its own arguments: a URL option's value
    return unavailable("unreachable", limits)


def _forget_arguments(error: BaseException) -> None:
    """Clear the variables of the finished frames in ``error``'s tracebacks, its causes'
    included: the connect's hold the password (SQLAlchemy's ``cparams``, the drivers' own),
    which a traceback that shows them prints (``pytest -l``, error trackers' frame capture).
    The chain itself, its types, messages and lines, stays."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


def refused(orig: BaseException | None, limits: Limits) -> ConfigurationError:
    """The server refused the user, password, database or a privilege (``orig``, the
    driver's error): no retry cures it."""
    code = limits.backend.error_code(orig)
    # libpq gives a failed connection no SQLSTATE: psycopg's refusal has no code to name.
    said = str(orig).strip() if code is None else f"error {code}: {str(orig).strip()}"
    message = (
        f"The database ({describe_location(limits.url)}) refused the request for good "
        f"({said}): check the user, password and database in the URL, and the user's "
        "privileges."
    )
    return ConfigurationError(message)


def connection_gone(error: BaseException, url: URL, driver_connection: Any = None) -> bool:
    """Whether ``error`` says its connection to ``url``'s database is gone (the server ended
    it, the network cut it), not that something failed on a live one: SQLAlchemy invalidated
    it, the backend's code says "lost", the error is one of the driver's ``fatal`` ones
    (asyncpg's "another operation (2) is in progress" once it read the server's FATAL on an
    idle connection, before the socket's end), or the driver says ``driver_connection`` (its
    own connection, used through SQLAlchemy or lent by a lease) is closed."""
    orig = error.orig if isinstance(error, DBAPIError) else error
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if backend(url.get_backend_name()).error_kind(orig) == "lost":
        return True
    known = driver(url.get_driver_name())
    if known is None:
        return False
    if any(isinstance(said, known.fatal()) for said in (orig, getattr(orig, "__cause__", None))):
        return True
    return (
        driver_connection is not None
        and known.status is not None
        and known.status(driver_connection) == "closed"
    )


def _shared_session(error: BaseException) -> bool:
    if isinstance(error, IllegalStateChangeError):
        return True
    text = str(error)
    return any(words in text for words in SHARED_SESSION_WORDS)


def _refused_arguments(error: BaseException, orig: BaseException | None, limits: Limits) -> bool:
    """Whether a connect failed on the driver's own arguments (``orig``, the driver's error
    in ``error``), before any server was tried: psycopg's ProgrammingError (an unknown
    option), a client-side type or value error in the chain (asyncpg's
    ClientConfigurationError, asyncmy's failed charset lookup), or the driver's own words."""
    # SQLAlchemy's wrapper, or the driver's own class, by the name PEP 249 gives it.
    if isinstance(error, ProgrammingError) or type(orig).__name__ == "ProgrammingError":
        return True
    cause = orig
    while cause is not None:
        if isinstance(cause, ARGUMENT_ERRORS):
            return True
        cause = cause.__cause__ or cause.__context__
    known = driver(limits.url.get_driver_name())
    return known is not None and orig is not None and known.refused_arguments(orig)


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
