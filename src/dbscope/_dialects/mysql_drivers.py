"""MariaDB's and MySQL's drivers: asyncmy, and aiomysql with fewer checks (``mysql.py`` has
the server's rules)."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

from sqlalchemy.engine import URL

from dbscope._dialects.driver import Driver, LeaseStatus, abort_transport, rollback_connection

# The client's "server gone" (CR_SERVER_GONE_ERROR): it could not send the statement, where
# 2013 (CR_SERVER_LOST) sent it and had no answer.
SERVER_GONE: Final = 2006


def error_number(orig: BaseException | None) -> int | None:
    """The MySQL error number of a driver error (its first argument)."""
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _sent_nothing(error: BaseException | None) -> bool:
    return error_number(error) == SERVER_GONE


def _bounded_connect(driver: str, timeout: float) -> Callable[..., Awaitable[Any]]:
    """The driver's connect, given up after ``timeout`` seconds.

    asyncmy and aiomysql apply their ``connect_timeout`` to opening the socket only: a server
    that accepts and then never greets would hang the connect, and the request, forever.
    SQLAlchemy's async dialects call ``async_creator_fn`` in place of the driver's connect.
    """
    connect = importlib.import_module(driver).connect

    async def connect_within_timeout(*args: Any, **kwargs: Any) -> Any:
        # Not wait_for: on Python 3.11 it swallows a cancel that comes as the connect ends.
        task = asyncio.current_task()
        cancels = 0 if task is None else task.cancelling()
        try:
            async with asyncio.timeout(timeout):
                connection = await connect(*args, **kwargs)
        except RuntimeError as error:
            # asyncmy reads the socket off the transport after connecting; under uvloop a
            # connection reset in between leaves none, and asyncmy raises a RuntimeError.
            if "does not expose socket" not in str(error):
                raise
            errors = importlib.import_module(f"{driver}.errors")
            lost = errors.OperationalError(2013, "Lost connection to server during connect")
            raise lost from error
        if task is not None and task.cancelling() > cancels:
            # The drivers' own connect_timeout is that wait_for, around opening the socket: a
            # cancel that came as it opened was swallowed, and the unit went on (a task
            # cancelled in a loop of units never ended). Raised here, the socket closed.
            connection.close()
            raise asyncio.CancelledError
        return connection

    return connect_within_timeout


def _connect_args(driver: str) -> Callable[[float, str | None], dict[str, Any]]:
    def connect_args(timeout: float, name: str | None) -> dict[str, Any]:
        return {"connect_timeout": timeout, "async_creator_fn": _bounded_connect(driver, timeout)}

    return connect_args


def _asyncmy_closing(connection: Any) -> bool:
    # asyncmy reads in the event loop too, and its transport starts closing when the server
    # hangs up. It offers no public flag for that; without the attribute (another version),
    # the idle ping alone remains.
    transport = getattr(connection, "_transport", None)
    return transport is not None and bool(transport.is_closing())


def _asyncmy_errors() -> tuple[type[BaseException], ...]:
    from asyncmy.errors import MySQLError

    return (MySQLError,)


def _asyncmy_status(connection: Any) -> LeaseStatus:
    # asyncmy stays "connected" after the server hung up until it writes: a kill mid-result
    # came out of a lease as the InternalError ("Packet sequence number wrong") its cursor's
    # close raised reading the rest, not as the lost connection it was.
    if not connection.connected or _asyncmy_closing(connection):
        return "closed"
    return "in_transaction" if connection.get_transaction_status() else "idle"


async def _asyncmy_set_autocommit(connection: Any, value: bool) -> bool:
    previous = bool(connection.get_autocommit())
    if previous != value:
        await connection.autocommit(value)  # SET AUTOCOMMIT: a round trip
    return previous


def _sendable_password(url: URL) -> URL:
    # PyMySQL's rule, asyncmy's and aiomysql's: the password goes as Latin-1. Another
    # character failed at every connect, with the driver's error quoting it.
    password = url.password
    try:
        if isinstance(password, str):
            password.encode("latin-1")
    except UnicodeEncodeError:
        message = (
            f"The URL's password (not shown) has characters {url.get_driver_name()} cannot "
            "send: it sends passwords as Latin-1. Give this user a password of Latin-1 "
            "characters (ASCII letters, digits and punctuation are)."
        )
        raise ValueError(message) from None
    return url


ASYNCMY: Final = Driver(
    name="asyncmy",
    install="pip install 'dbscope[mysql]'",
    connect_args=_connect_args("asyncmy"),
    looks_dead=_asyncmy_closing,
    errors=_asyncmy_errors,
    status=_asyncmy_status,
    status_sees_reads=False,
    rollback=rollback_connection,
    close_without_loop=abort_transport,
    set_autocommit=_asyncmy_set_autocommit,
    batches_inserts=True,  # pymysql's rule, RE_INSERT_VALUES
    url_query=_sendable_password,
    checkin_waits=True,
    unsent=_sent_nothing,
)
AIOMYSQL: Final = Driver(
    name="aiomysql",
    install="pip install aiomysql",
    connect_args=_connect_args("aiomysql"),
    batches_inserts=True,
    url_query=_sendable_password,
    checkin_waits=True,
    unsent=_sent_nothing,
)
