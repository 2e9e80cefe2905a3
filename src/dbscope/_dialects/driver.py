"""The record of one client library (a :class:`Driver`): what dbscope does with its
connections. Its connect arguments, a round-trip-free liveness test, what a lease does with
its connection object, and what it needs behind PgBouncer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy.engine import URL, ExceptionContext

# What a driver connection is doing, as far as its driver knows without asking the server.
LeaseStatus = Literal["idle", "in_transaction", "busy", "closed"]

# PgBouncer in transaction mode between the application and the server (pgbouncer.py):
#   transaction           it keeps no prepared statement: a driver may prepare none by name
#   transaction-prepared  it keeps each client's (PgBouncer 1.21+, max_prepared_statements)
PoolerMode = Literal["transaction", "transaction-prepared"]


async def rollback_connection(connection: Any) -> None:
    """Roll back through the driver connection's own ``rollback()`` (psycopg, asyncmy,
    aiosqlite)."""
    await connection.rollback()


def abort_transport(connection: Any) -> None:
    """Close the asyncio transport of ``connection`` (asyncpg's, asyncmy's: a private
    attribute of both) whose event loop has closed, and its socket. The transport's own
    ``close()`` asks that loop to run the end (``_call_connection_lost``: the protocol told,
    the socket closed), which a closed loop refuses ("Event loop is closed"), leaving the
    socket to the garbage collector's ResourceWarning; this runs that end itself. Another
    version's connection, or a transport of another loop (uvloop's), is left as it is."""
    transport = getattr(connection, "_transport", None)
    if transport is None:
        return
    with contextlib.suppress(RuntimeError):  # marked closing; the loop refuses the rest
        transport.abort()
    finish = getattr(transport, "_call_connection_lost", None)
    if finish is not None and getattr(transport, "_sock", None) is not None:
        with contextlib.suppress(RuntimeError):  # the socket is closed whatever it raises
            finish(None)


async def through_cancels(work: Awaitable[object], seconds: float) -> None:
    """Wait up to ``seconds`` for ``work`` to finish, through cancels, then raise the cancel
    if one came: a connection's close or check-in cut short leaves it to the garbage
    collector, or checked out. anyio's cancel scope cancels again at each await, so one
    shield is not enough; past the bound, ``work`` goes on alone."""
    running = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    cancel: asyncio.CancelledError | None = None
    while not running.done() and loop.time() < deadline:
        try:  # wait() leaves ``running`` running when it is itself cancelled
            await asyncio.wait({running}, timeout=deadline - loop.time())
        except asyncio.CancelledError as error:
            cancel = error
    if running.done() and not running.cancelled():
        running.exception()  # read, so that asyncio does not report it: the work is over
    if cancel is not None:
        raise cancel


# Seconds a connection may take to close gracefully before it is aborted: SQLAlchemy's own
# bound when it ends a connection gracefully before terminating it.
CLOSE_TIMEOUT: Final = 2.0


class ClosedIfCancelled:
    """``connect``, a driver's, run in a task of its own that a cancel of its caller does not
    reach: the caller's cancel is raised at once, and what the connect then opens is closed
    by ``close``. One per engine (SQLAlchemy's async dialects call it as their
    ``async_creator_fn``), which :meth:`settle` waits for at ``dispose()``.

    The PostgreSQL drivers' connects went wrong when cancelled (every cancel point swept,
    tests/reliability/test_cancel_sweep_more.py): psycopg's left the connection open on the
    server in a reference cycle, until the garbage collector ran (18 server connections for a
    pool of 2, and "too many clients" past it); asyncpg's left a future failed with
    "unexpected connection_lost() call" that the event loop reported as never retrieved.
    The price: a cancelled request's connect goes on for up to ``connect_timeout`` after its
    place in the pool is free, so a storm of cancels against a server slow to answer has
    more connects in flight than the pool's size (each closed as soon as it opens).
    """

    def __init__(
        self, connect: Callable[..., Awaitable[Any]], close: Callable[[Any], Awaitable[object]]
    ) -> None:
        self.connect = connect
        self.close = close
        # The connects a cancel left to finish, and the closes of what they opened: kept
        # until done (the event loop holds its tasks weakly).
        self.unfinished: set[asyncio.Future[Any]] = set()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        opening = asyncio.ensure_future(self.connect(*args, **kwargs))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            self.unfinished.add(opening)
            opening.add_done_callback(self._close_opened)
            raise

    def _close_opened(self, opening: asyncio.Future[Any]) -> None:
        self.unfinished.discard(opening)
        if opening.cancelled() or opening.exception() is not None:
            return
        closing = asyncio.ensure_future(self.close(opening.result()))
        self.unfinished.add(closing)
        closing.add_done_callback(self._closed)

    def _closed(self, closing: asyncio.Future[Any]) -> None:
        self.unfinished.discard(closing)
        if not closing.cancelled():
            closing.exception()  # read: a close that failed has nothing left to release

    async def settle(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the connects of this event loop that a cancel left to
        finish, and for the closes of what they opened. An event loop that ended first left
        their connections to the garbage collector, which warned (ResourceWarning: 6 times in
        100 runs on asyncpg that cancelled a unit as it connected, then ended the loop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            # A connect that ends adds its close (its done callback runs first): look again.
            waiting = {task for task in self.unfinished if task.get_loop() is loop}
            if not waiting:
                return
            await asyncio.wait(waiting, timeout=deadline - loop.time())


@dataclass(frozen=True)
class Driver:
    """What dbscope does with one driver's connections.

    Attributes:
        name: the driver's name in a URL (``postgresql+<name>://``).
        install: the command that installs it.
        connect_args: its connect arguments for a timeout (seconds) and an application name.
        looks_dead: a test of an idle connection without a round trip: True if it may be dead.
        errors: its exception base classes (imported only once the driver is used).
        fatal: its errors after which it cannot go on with the connection, though it may not
            report it closed yet.
        status: the connection's state, read without a round trip (for leases).
        rollback: roll back a transaction a lease left open.
        close: its graceful close, bounded by a timeout (seconds), where its own close waits
            for the server without bound or is left unfinished by a second cancel; None where
            closing never waits.
        close_without_loop: close a connection, its socket or thread, at once and without its
            event loop, which has closed (``asyncio.run`` returned without ``dispose()``);
            None where its pool's own close of it needs no loop.
        closes_on_thread: its connection lives on a thread of its own, which terminating it
            only asks to close: what it holds (a file lock) lasts until ``close`` is done.
        set_autocommit: switch autocommit on or off, returning the previous state; None for a
            driver whose connections are in autocommit already.
        batches_inserts: its ``executemany()`` of an INSERT is one multi-row statement only
            while the statement ends with its VALUES list, so SQL comments leave those alone.
        pooler_args: its connect arguments behind PgBouncer in a mode, over ``connect_args``;
            None for a driver of a server PgBouncer does not pool.
        pooler_conflict: what of its connect arguments (the URL's query included) cannot
            pass PgBouncer in a mode, as a sentence with the fix; None if nothing.
        hot_standby: whether the server said, when the driver last heard from it, that it is
            a hot standby (read without a round trip); None when it did not say.
        refused_arguments: whether a failed connect is the driver refusing its arguments (a
            URL option's value) rather than the server out of reach, where its error does not
            show it by type (``_errors._refused_arguments`` reads the types).
        url_query: the URL with its query as the driver takes it (libpq's ``sslmode`` as
            asyncpg's ``ssl``); ValueError for one it could never connect with.
        isolation_levels: the levels SQLAlchemy's adapter of the driver takes, where not the
            standard four: a unit asking for another is refused where it is declared.
        status_sees_reads: whether ``status`` says ``in_transaction`` for a transaction that
            has only read (asyncmy's is the server's flag, which only a write sets).
        checkin_waits: the pool's reset at a checkin waits even when no transaction is open
            (asyncmy's ROLLBACK goes to the server, aiosqlite's to its thread), so a cancel
            can land in it.
        on_error: a ``handle_error`` listener of the engines of the driver, mending what
            SQLAlchemy leaves of its errors; None if none.
        forget_stale: after an error raised on a lease's connection, drop the prepared
            statements a schema change made stale, where the driver keeps them; None if it
            needs nothing.
        unsent: whether the driver's error says it sent nothing, the connection known gone
            before (at a COMMIT: nothing was committed).
    """

    name: str
    install: str
    connect_args: Callable[[float, str | None], dict[str, Any]] = lambda timeout, name: {}
    looks_dead: Callable[[Any], bool] = lambda connection: False
    errors: Callable[[], tuple[type[BaseException], ...]] = lambda: ()
    fatal: Callable[[], tuple[type[BaseException], ...]] = lambda: ()
    status: Callable[[Any], LeaseStatus] | None = None
    rollback: Callable[[Any], Awaitable[object]] | None = None
    close: Callable[[Any, float], Awaitable[object]] | None = None
    close_without_loop: Callable[[Any], None] | None = None
    closes_on_thread: bool = False
    set_autocommit: Callable[[Any, bool], Awaitable[bool]] | None = None
    batches_inserts: bool = False
    pooler_args: Callable[[PoolerMode], dict[str, Any]] | None = None
    pooler_conflict: Callable[[PoolerMode, Mapping[str, Any]], str | None] = lambda mode, args: None
    hot_standby: Callable[[Any], bool | None] = lambda connection: None
    refused_arguments: Callable[[BaseException], bool] = lambda error: False
    url_query: Callable[[URL], URL] = lambda url: url
    isolation_levels: tuple[str, ...] | None = None
    status_sees_reads: bool = True
    checkin_waits: bool = False
    on_error: Callable[[ExceptionContext], Exception | None] | None = None
    forget_stale: Callable[[Any, BaseException], Awaitable[None]] | None = None
    unsent: Callable[[BaseException | None], bool] = lambda error: False
