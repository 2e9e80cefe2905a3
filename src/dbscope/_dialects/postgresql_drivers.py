"""PostgreSQL's drivers: asyncpg and psycopg 3, as dbscope uses their connections."""

from __future__ import annotations

import contextlib
import re
import select
from collections.abc import Awaitable
from typing import Any, Final, cast

from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_ss_cursor
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.util import await_only

from dbscope._dialects import pgbouncer
from dbscope._dialects.driver import (
    CLOSE_TIMEOUT,
    ClosedIfCancelled,
    Driver,
    LeaseStatus,
    abort_transport,
    rollback_connection,
)


def sqlstate(orig: BaseException | None) -> str | None:
    """The SQLSTATE of a driver error: psycopg's own, or asyncpg's (behind SQLAlchemy's
    adaptation, on the cause)."""
    for candidate in (orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def raised_by_server(orig: BaseException | None) -> bool:
    """Whether the server raised the driver error ``orig``: its message has a severity
    (asyncpg's, on the cause; psycopg's diagnostics). Errors the drivers raise themselves have
    none, though asyncpg gives an argument it cannot send SQLSTATE 22000."""
    for candidate in (orig, getattr(orig, "__cause__", None)):
        diagnostics = getattr(candidate, "diag", candidate)
        if getattr(diagnostics, "severity", None):
            return True
    return False


# -- asyncpg -----------------------------------------------------------------------------------


def _asyncpg_connect_args(timeout: float, name: str | None) -> dict[str, Any]:
    args: dict[str, Any] = {"timeout": timeout}
    if name:
        args["server_settings"] = {"application_name": name}
    # SQLAlchemy's async dialects call async_creator_fn in place of the driver's connect.
    args["async_creator_fn"] = ClosedIfCancelled(_asyncpg_connect, _asyncpg_quit)
    return args


async def _asyncpg_connect(*args: Any, **kwargs: Any) -> Any:
    import asyncpg

    return await asyncpg.connect(*args, **kwargs)


async def _asyncpg_quit(connection: Any) -> None:
    await _asyncpg_close(connection, CLOSE_TIMEOUT)


def _psycopg_close_without_loop(connection: Any) -> None:
    connection.pgconn.finish()  # libpq's close of the socket: no event loop involved


# What target_session_attrs takes, in libpq (PostgreSQL 14 on) and asyncpg alike.
SESSION_ATTRS: Final = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")


def _checked_session_attrs(url: URL) -> URL:
    # Another value failed at the first connect: asyncpg's message named a mappingproxy.
    given = url.query.get("target_session_attrs")
    if given is not None and given not in SESSION_ATTRS:
        message = (
            f"The URL's target_session_attrs={given!r} is none libpq or asyncpg takes: use "
            f"one of {', '.join(SESSION_ATTRS)} (read-write to reach the primary)."
        )
        raise ValueError(message)
    return url


def _asyncpg_url_query(url: URL) -> URL:
    # asyncpg refuses libpq's sslmode as a keyword, and takes the same modes as its ssl.
    url = _checked_session_attrs(url)
    mode = url.query.get("sslmode")
    if mode is None or "ssl" in url.query:
        return url
    return url.difference_update_query(["sslmode"]).update_query_dict({"ssl": mode})


def _asyncpg_closed(connection: Any) -> bool:
    # asyncpg reads the socket in the event loop and marks the connection closed as soon as
    # the server hangs up.
    return bool(connection.is_closed())


def _asyncpg_errors() -> tuple[type[BaseException], ...]:
    import asyncpg

    return (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _asyncpg_fatal() -> tuple[type[BaseException], ...]:
    # The protocol is out of step: typically the server's FATAL "terminating connection"
    # arrived on an idle connection, before asyncpg saw the socket close.
    import asyncpg

    return (asyncpg.InternalClientError,)


def adapted_fetch_error(context: ExceptionContext) -> Exception | None:
    """An asyncpg error that SQLAlchemy left as asyncpg raised it, adapted as its other
    statements' are: the fetches of a server-side cursor (``session.stream()``'s rows past
    the first) raise them raw. A connection lost there was no outage (a terminated backend
    raised asyncpg's InterfaceError out of ``db.stream()``, where psycopg's was a
    DatabaseUnavailableError), nor a server's error a DBAPIError."""
    error, dbapi = context.original_exception, context.dialect.loaded_dbapi
    if not isinstance(error, Exception) or isinstance(error, dbapi.Error):
        return None
    if not isinstance(error, _asyncpg_errors()):
        return None
    try:
        AsyncAdapt_asyncpg_connection._handle_exception_no_connection(dbapi, error)
    except dbapi.Error as translated:
        adapted: Any = translated
    else:  # it raises for every asyncpg error; this keeps the checker's flow whole
        return None
    # As SQLAlchemy asks for its own errors: with the connection, whose is_closed() knows a
    # backend lost mid-fetch ("connection was closed in the middle of operation"), which the
    # message alone does not say; else the unit's close tried a ROLLBACK on it, logged.
    connection = context.connection
    dbapi_connection = None
    if connection is not None and not connection.invalidated:
        dbapi_connection = connection.connection.dbapi_connection
    closed = context.dialect.is_disconnect(adapted, dbapi_connection, None)
    context.is_disconnect = closed or isinstance(error, _asyncpg_fatal())
    wrapped: Exception = DBAPIError.instance(
        context.statement,
        context.parameters,
        adapted,
        dbapi.Error,
        hide_parameters=context.engine is not None and context.engine.hide_parameters,
        connection_invalidated=context.is_disconnect,
        dialect=context.dialect,
    )
    return wrapped


def _asyncpg_status(connection: Any) -> LeaseStatus:
    if connection.is_closed():
        return "closed"
    return "in_transaction" if connection.is_in_transaction() else "idle"


def _asyncpg_close(connection: Any, timeout: float) -> Awaitable[None]:
    # asyncpg's close waits for the server to see it go, without bound unless given one; on
    # the timeout it aborts the connection (and raises).
    return cast("Awaitable[None]", connection.close(timeout=timeout))


async def _asyncpg_rollback(connection: Any) -> None:
    await connection.execute("ROLLBACK")


def _asyncpg_hot_standby(connection: Any) -> bool | None:
    # PostgreSQL 14 and later report in_hot_standby at connect and whenever it changes.
    return _on(getattr(connection.get_settings(), "in_hot_standby", None))


# -- psycopg -----------------------------------------------------------------------------------


def _psycopg_connect_args(timeout: float, name: str | None) -> dict[str, Any]:
    # libpq takes whole seconds and treats values below 2 as 2.
    args: dict[str, Any] = {"connect_timeout": max(2, round(timeout))}
    if name:
        args["application_name"] = name
    # SQLAlchemy's async dialects call async_creator_fn in place of the driver's connect.
    args["async_creator_fn"] = ClosedIfCancelled(_psycopg_connect, _psycopg_close)
    return args


async def _psycopg_connect(*args: Any, **kwargs: Any) -> Any:
    import psycopg

    return await psycopg.AsyncConnection.connect(*args, **kwargs)


async def _psycopg_close(connection: Any) -> None:
    await connection.close()


# libpq's words for a connection option it cannot take ('invalid sslmode value: "x"', 'invalid
# integer value "x" for connection option "port"'), said before it tries any server.
_LIBPQ_REFUSED: Final = re.compile(r"invalid (\w+ )?value|invalid connection option")


def _psycopg_refused_arguments(error: BaseException) -> bool:
    return bool(_LIBPQ_REFUSED.search(str(error)))


def _psycopg_unread_input(connection: Any) -> bool:
    # An idle psycopg connection is not read until its next query: data waiting on the socket
    # means the server spoke (a FATAL on termination, an end of file, a notification).
    if connection.closed:
        return True
    poller = select.poll()
    poller.register(connection.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _psycopg_errors() -> tuple[type[BaseException], ...]:
    import psycopg

    return (psycopg.Error,)


def _psycopg_status(connection: Any) -> LeaseStatus:
    from psycopg.pq import TransactionStatus

    if connection.closed or connection.broken:
        return "closed"
    status = connection.info.transaction_status
    if status == TransactionStatus.IDLE:
        return "idle"
    if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        return "in_transaction"
    return "closed" if status == TransactionStatus.UNKNOWN else "busy"  # ACTIVE: mid-statement


def closed_server_cursor(context: ExceptionContext) -> Exception | None:
    """Close the psycopg server-side cursor of a statement that lost its connection (a cancel
    in the middle of a stream's DECLARE, a terminated backend): SQLAlchemy closes a failed
    statement's cursor only while the connection lives, and psycopg warned when the garbage
    collector found this one open."""
    # From the statement's context: SQLAlchemy 2.1 leaves ExceptionContext.cursor unset.
    cursor = getattr(context.execution_context, "cursor", None)
    connection = context.connection
    if not context.is_disconnect or not isinstance(cursor, AsyncAdapt_dbapi_ss_cursor):
        return None
    driver_connection = None
    if connection is not None and not connection.invalidated:
        driver_connection = connection.connection.driver_connection
    if driver_connection is not None:
        # Closed first, as the invalidation that follows would (psycopg's close awaits
        # nothing): the cursor's close then sends nothing either. Closed on a live
        # connection, it sent CLOSE for a cursor the server never declared, and failed.
        await_only(driver_connection.close())
    with contextlib.suppress(Exception):
        cursor.close()
    return None


# What PostgreSQL says when a prepared statement's result columns changed under it (a column
# added to a `SELECT *`'s table, a column's type changed): SQLSTATE 0A000, which other
# unsupported features share, so the message tells it apart.
STALE_PLAN: Final = "cached plan must not change result type"


def stale_plan(orig: BaseException | None) -> bool:
    """Whether the driver error ``orig`` is a prepared statement made stale by a schema
    change: psycopg's 0A000 with PostgreSQL's words, or asyncpg's InvalidCachedStatementError
    (on the cause of SQLAlchemy's adaptation), which asyncpg raises for it."""
    for candidate in (orig, getattr(orig, "__cause__", None)):
        if type(candidate).__name__ == "InvalidCachedStatementError":
            return True
        if getattr(candidate, "sqlstate", None) == "0A000" and str(candidate).startswith(
            STALE_PLAN
        ):
            return True
    return False


def psycopg_error(context: ExceptionContext) -> Exception | None:
    """The psycopg engines' ``handle_error``: a lost stream's cursor closed, stale prepared
    statements dropped."""
    closed_server_cursor(context)
    dropped_stale_plans(context)
    return None


def dropped_stale_plans(context: ExceptionContext) -> None:
    """Drop psycopg's prepared statements after a unit's statement found one stale."""
    connection = context.connection
    if context.is_disconnect or connection is None or connection.invalidated:
        return
    driver_connection = connection.connection.driver_connection
    if driver_connection is not None:
        await_only(_psycopg_forget_stale(driver_connection, context.original_exception))


async def _psycopg_forget_stale(connection: Any, error: BaseException | None) -> None:
    """Drop psycopg's prepared statements after ``error`` found one stale outside a
    transaction; nothing for another error.

    psycopg prepares a statement run ``prepare_threshold`` (5) times on a connection and
    forgets its prepared statements only at a ROLLBACK or DDL of its own connection. A unit's
    reads before its first write run in autocommit (deferred_begin.py), and so does a lease:
    no ROLLBACK follows, and every later run of that statement on that pooled connection
    failed with the same error, for as long as the connection lived. DEALLOCATE ALL drops
    them on the server, and psycopg, which reads the command's status, forgets them too.
    """
    if not stale_plan(error) or _psycopg_status(connection) != "idle":
        return  # in a transaction: its ROLLBACK makes psycopg forget them
    with contextlib.suppress(Exception):  # a connection that fails here fails its next use
        await connection.execute("DEALLOCATE ALL")


def _psycopg_hot_standby(connection: Any) -> bool | None:
    return _on(connection.info.parameter_status("in_hot_standby"))


def _on(value: object) -> bool | None:
    return None if value is None else value in ("on", b"on")


async def _psycopg_set_autocommit(connection: Any, value: bool) -> bool:
    previous = bool(connection.autocommit)
    if previous != value:
        await connection.set_autocommit(value)  # a client-side switch: no round trip
    return previous


def _asyncpg_sent_nothing(error: BaseException | None) -> bool:
    # asyncpg checks its connection before it sends: "cannot call Transaction.commit(): the
    # underlying connection is closed". Lost while sending or waiting, it says otherwise.
    return "the underlying connection is closed" in str(error)


ASYNCPG: Final = Driver(
    name="asyncpg",
    install="pip install 'dbscope[asyncpg]'",
    connect_args=_asyncpg_connect_args,
    url_query=_asyncpg_url_query,
    looks_dead=_asyncpg_closed,
    errors=_asyncpg_errors,
    fatal=_asyncpg_fatal,
    status=_asyncpg_status,
    rollback=_asyncpg_rollback,
    close=_asyncpg_close,
    close_without_loop=abort_transport,
    pooler_args=pgbouncer.asyncpg_args,
    pooler_conflict=pgbouncer.asyncpg_conflict,
    hot_standby=_asyncpg_hot_standby,
    on_error=adapted_fetch_error,
    unsent=_asyncpg_sent_nothing,
    isolation_levels=("READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"),
)
PSYCOPG: Final = Driver(
    name="psycopg",
    install="pip install 'dbscope[psycopg]'",
    connect_args=_psycopg_connect_args,
    looks_dead=_psycopg_unread_input,
    refused_arguments=_psycopg_refused_arguments,
    errors=_psycopg_errors,
    status=_psycopg_status,
    rollback=rollback_connection,
    close_without_loop=_psycopg_close_without_loop,
    set_autocommit=_psycopg_set_autocommit,
    pooler_args=pgbouncer.psycopg_args,
    pooler_conflict=pgbouncer.psycopg_conflict,
    hot_standby=_psycopg_hot_standby,
    on_error=psycopg_error,
    forget_stale=_psycopg_forget_stale,
    url_query=_checked_session_attrs,
)
