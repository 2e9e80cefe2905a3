"""The AsyncSession of every dbscope unit of work: one task at a time, and the result streams
it handed out closed at the unit's end.

:class:`UnitAsyncSession` lets one task at a time in: a second task that uses the session
while the first is inside one of its methods gets SessionSharedError at once, before it
touches the connection, and the unit's end waits for the first to finish. A task of another
event loop (a ``def`` endpoint's ``asyncio.run``) is refused the same way: its statements
would run on a connection whose driver belongs to the request's loop. A Database given another
AsyncSession class (``session_class=``, SQLModel's) gets a class that is both, made once per
class by ``_session_classes.unit_session_class``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final, cast

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio.result import AsyncCommon
from sqlalchemy.util import greenlet_spawn
from typing_extensions import TypeVar

from dbscope._lazy_loads import STRICT_KEY
from dbscope._session import UnitSession, test_connection_units, unit_state
from dbscope._usage_errors import (
    other_loop,
    shared_session,
    units_at_once_in_a_test,
    units_in_one_task_in_a_test,
)

logger = logging.getLogger("dbscope")

# How long a unit's end waits for another task still inside its session.
IDLE_WAIT_SECONDS: Final = 30.0
T = TypeVar("T")
# The class of a Database's sessions as a type checker sees them: SQLAlchemy's AsyncSession,
# or the ``session_class`` it was given (SQLModel's, whose ``exec()`` a checker then knows).
# Covariant: a Database of SQLModel's sessions is a Database of AsyncSessions.
SessionT = TypeVar("SessionT", bound=AsyncSession, default=AsyncSession, covariant=True)

# The AsyncSession methods that run on the connection: the ones a second task must not enter.
# Those that start work and not only end it (all but close, invalidate, reset and rollback)
# wait for their turn on a test's connection (wait_for_turn).
GUARDED_METHODS: Final = (
    "close",
    "commit",
    "connection",
    "delete",
    "execute",
    "flush",
    "get",
    "get_one",
    "invalidate",
    "merge",
    "refresh",
    "reset",
    "rollback",
    "run_sync",
    "scalar",
    "scalars",
    "stream",
    "stream_scalars",
)


class UnitAsyncSession(AsyncSession):
    """An AsyncSession that one task at a time may use; see the module's docstring."""

    sync_session_class = UnitSession
    _loop: asyncio.AbstractEventLoop | None = None
    _user: asyncio.Task[Any] | None = None
    _depth = 0
    _idle: asyncio.Event | None = None
    # What stream() and stream_scalars() handed out, for the unit's end to close.
    streams: list[AsyncCommon[Any]] | None = None

    async def close_streams(self) -> None:
        """Close each result ``stream()`` and ``stream_scalars()`` handed out (a no-op for one
        read to its end). A stream cut short kept its server-side cursor open on the
        connection going back to the pool: asyncmy warned at the connection's next use,
        psycopg when the garbage collector found the cursor."""
        streams, self.streams = self.streams, None
        for result in streams or ():
            context = getattr(result._real_result, "context", None)
            connection = getattr(context, "root_connection", None)
            if result.closed or connection is None:
                continue
            cursor = getattr(result._real_result, "cursor", None)  # the close forgets it
            if connection.invalidated:
                # The connection was dropped (a cancel mid-statement, a lost server): closing
                # the result would fail, and SQLAlchemy log it.
                await _forget_cursor(cursor, lost=True)
                continue
            try:
                await result.close()
            except BaseException:
                # Cut short itself (anyio cancels every await of a cancelled scope): psycopg
                # then closed the connection, but not the cursor whose CLOSE it was sending.
                await _forget_cursor(cursor, lost=False)
                raise

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop = asyncio.get_running_loop()  # made by a unit, in its task
        # Bound to a test's connection (dbscope.testing): its units take turns on it.
        self._on_test_connection = isinstance(kwargs.get("bind"), AsyncConnection)

    def idle(self) -> bool:
        """Whether no other task is inside one of the session's methods now."""
        return self._user is None or self._user is asyncio.current_task()


async def _forget_cursor(cursor: Any, *, lost: bool) -> None:
    """Close a stream's ``cursor`` (SQLAlchemy's, around the driver's) if its connection is
    ``lost`` or closed: with no word to the server, as the drivers close a cursor there
    (psycopg's warned when the garbage collector found it open)."""
    driver_connection = getattr(getattr(cursor, "_cursor", None), "connection", None)
    if cursor is None or not (lost or getattr(driver_connection, "closed", False) is True):
        return
    with contextlib.suppress(Exception):
        await greenlet_spawn(cursor.close)


def one_task_at_a_time(
    method: Callable[..., Coroutine[Any, Any, T]], *, starts_work: bool = True
) -> Callable[..., Coroutine[Any, Any, T]]:
    """``method`` behind the guard: a second task inside it gets SessionSharedError; on a
    test's connection, one that ``starts_work`` waits for its turn first."""

    @functools.wraps(method)
    async def guarded(self: UnitAsyncSession, *args: Any, **kwargs: Any) -> T:
        task = asyncio.current_task()
        if self._user is not None and self._user is not task:
            raise shared_session()
        if task is None or task.get_loop() is not self._loop:
            raise other_loop()
        self._user = task
        self._depth += 1
        try:
            if starts_work and self._on_test_connection and self._depth == 1:
                await wait_for_turn(self)
            return await method(self, *args, **kwargs)
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._user = None
                if self._idle is not None:
                    self._idle.set()
                    self._idle = None

    return guarded


def kept_for_closing(
    method: Callable[..., Coroutine[Any, Any, T]],
) -> Callable[..., Coroutine[Any, Any, T]]:
    """``method``, whose result the session keeps until :meth:`close_streams`."""

    @functools.wraps(method)
    async def kept(self: UnitAsyncSession, *args: Any, **kwargs: Any) -> T:
        result = await method(self, *args, **kwargs)
        # Those read to their end are closed already: a long unit keeps only the open ones.
        still_open = [stream for stream in self.streams or () if not stream.closed]
        self.streams = [*still_open, cast("AsyncCommon[Any]", result)]
        return result

    return kept


for _name in GUARDED_METHODS:
    _ending = _name in ("close", "invalidate", "reset", "rollback")
    _guarded = one_task_at_a_time(getattr(AsyncSession, _name), starts_work=not _ending)
    setattr(UnitAsyncSession, _name, _guarded)
for _name in ("stream", "stream_scalars"):
    setattr(UnitAsyncSession, _name, kept_for_closing(getattr(UnitAsyncSession, _name)))
del _name, _ending, _guarded


def session_factory(
    *,
    raise_on_lazy_load: bool,
    session_class: type[UnitAsyncSession] = UnitAsyncSession,
    **options: Any,
) -> async_sessionmaker[AsyncSession]:
    """The sessionmaker dbscope uses: objects stay readable after commit, no hidden flushes.

    ``session_class`` is one ``_session_classes.unit_session_class`` gave.
    """
    return async_sessionmaker(
        class_=session_class,
        sync_session_class=session_class.sync_session_class,
        expire_on_commit=False,
        autoflush=False,
        info={STRICT_KEY: raise_on_lazy_load},
        **options,
    )


async def wait_idle(session: UnitAsyncSession) -> None:
    """Wait (a bounded time) until no other task is inside ``session``."""
    # Another task may still be inside the session (asyncio.gather over it): the one that
    # came second was refused, the first finishes its statement before the unit ends.
    if session.idle():
        return  # the usual case, and every request's: no timer to set up
    try:
        async with asyncio.timeout(IDLE_WAIT_SECONDS):
            while not session.idle():
                session._idle = session._idle or asyncio.Event()
                await session._idle.wait()
    except TimeoutError:
        logger.error("A session stayed in use by another task; its connection is dropped.")
        session._user = None  # the unit's end goes on; invalidate() discards the connection
        await session.invalidate()


async def wait_for_turn(session: UnitAsyncSession) -> None:
    """Bound to a test's connection: return if no other unit is open on it, else wait
    (a bounded time) until they have ended and raise SessionSharedError. Refused only once
    the others have ended, so that a TaskGroup cancels none of them in the middle of a
    statement, and a test that gathered requests ends with its connection whole."""
    sync_session = session.sync_session
    units = test_connection_units(sync_session)
    state = unit_state(sync_session)
    if units is None or state is None or not (blocking := units.blocking(state)):
        return
    if asyncio.current_task() in blocking:  # it ends after this one: waiting cannot help
        raise units_in_one_task_in_a_test()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(IDLE_WAIT_SECONDS):
            while units.blocking(state):
                await units.one_ended()
    raise units_at_once_in_a_test()


async def rolled_back_or_dropped(session: AsyncSession) -> None:
    """End ``session`` whose close failed: rolled back and closed, or invalidated."""
    try:
        await session.rollback()
        await session.close()
    except Exception:
        with contextlib.suppress(Exception):
            await session.invalidate()
