"""A database file's one write lock (SQLite's): who holds it, and the line for it.

Who holds it: a unit that would wait for a unit of its own task, which cannot end first, is
refused at once instead of waiting out the busy timeout and failing with "database is locked".

The line: SQLite's own wait for the lock is no line. Each waiter sleeps and tries again
(after 1, 2, 5... up to 100 ms), and whoever tries just as the lock is let go takes it, so
under load some wait out the whole busy timeout while later ones write at once: 16 of 3,000
``POST /notes`` at 100 at once on three processes answered 500. The units of one process
that may write wait first for their turn here, first come first served (anyio's
``CapacityLimiter``, as the pool's line), then take the lock from SQLite, which only the
other processes' contend for.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Final, NamedTuple

import anyio
from sqlalchemy.engine import Connection
from sqlalchemy.util import await_only

# On a pooled connection's info from its unit's turn to write until it is given back.
TURN: Final = "dbscope.write_turn"


class WaitsForItself(Exception):
    """A transaction would wait for a lock held by another of its task, which waits for it."""


# The tasks that await the current one to its end (db.parallel()'s caller, for its queries'
# tasks): a lock one of them holds cannot be let go before this task ends either.
AWAITED_BY: Final[ContextVar[tuple[asyncio.Task[Any], ...]]] = ContextVar(
    "dbscope.awaited_by", default=()
)


class Writer:
    """A file's write lock as this process sees it: each event loop's line of the units
    waiting for it, and the task whose transaction holds it with that transaction's
    connection, weakly. A unit of that task that may write, opened inside that one's, would
    wait for it until the busy timeout, as that one cannot end first. It is refused at once,
    as is one of a task that task awaits to its end (db.parallel()'s). Another task it
    started waits its turn: the first may end meanwhile."""

    __slots__ = ("__weakref__", "connection", "lines", "task")

    def __init__(self) -> None:
        self.task: weakref.ref[asyncio.Task[Any]] | None = None
        self.connection: weakref.ref[Connection] | None = None
        # The line of each event loop: anyio's limiter belongs to the loop it was made in.
        self.lines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter]
        self.lines = weakref.WeakKeyDictionary()

    def wait_turn(self, info: dict[str, Any], seconds: Callable[[], float]) -> bool:
        """Wait up to ``seconds()`` (asked only if the unit must wait) for the units of this
        process ahead in line to end their transactions, from a BEGIN (SQLAlchemy's greenlet);
        the turn is kept in ``info``, the pooled connection's, until :func:`pass_turn`. False
        if the wait ran out."""
        if TURN in info:
            return True
        loop = asyncio.get_running_loop()
        line = self.lines.get(loop)
        if line is None:
            line = self.lines[loop] = anyio.CapacityLimiter(1)
        token = object()
        try:
            line.acquire_on_behalf_of_nowait(token)  # no await when no one writes
        except anyio.WouldBlock:
            if not await_only(_wait_in_line(line, token, seconds())):
                return False
        info[TURN] = _Turn(loop, line, token)
        return True

    def waiting(self) -> int:
        """How many units of the running loop wait for their turn now."""
        line = self.lines.get(asyncio.get_running_loop())
        return 0 if line is None else line.statistics().tasks_waiting

    def turn_taken(self) -> bool:
        """Whether a unit of the running loop has the turn now."""
        line = self.lines.get(asyncio.get_running_loop())
        return line is not None and line.borrowed_tokens > 0

    def took_the_lock(self, connection: Connection) -> None:
        task = _current_task()
        self.task = None if task is None else weakref.ref(task)
        # The unit's own Connection, not the pooled one under it: once the unit has ended
        # (or committed mid-unit) it is closed, while the pooled one may be in another
        # unit's transaction already, a read-only one that holds no lock.
        self.connection = weakref.ref(connection)

    def refuse_waiting_for_itself(self) -> None:
        task = _current_task()
        holder = None if self.connection is None else self.connection()
        if (
            task is not None
            and self.task is not None
            and (self.task() is task or self.task() in AWAITED_BY.get())
            and holder is not None
            and not holder.closed
            and holder.in_transaction()
        ):
            raise WaitsForItself("the file's write lock")


# The files' writers, by path: two Databases on one file (an app's and an audit log's) share
# its one write lock, and a unit of one opened inside the other's would wait for it as well.
_WRITERS: Final[weakref.WeakValueDictionary[Path, Writer]] = weakref.WeakValueDictionary()


def writer_of(path: Path) -> Writer:
    """The holder's record of the file at ``path``, shared by every engine on it."""
    writer = _WRITERS.get(path)
    if writer is None:
        writer = _WRITERS[path] = Writer()
    return writer


class _Turn(NamedTuple):
    loop: asyncio.AbstractEventLoop
    line: anyio.CapacityLimiter
    token: object


def pass_turn(info: dict[str, Any]) -> None:
    """The unit that had the turn on the connection of ``info`` is done with it (the
    connection given back or detached, or its BEGIN failed): the next in line may write."""
    turn = info.pop(TURN, None)
    if turn is None:
        return
    if _running_loop() is turn.loop:
        turn.line.release_on_behalf_of(turn.token)
    elif not turn.loop.is_closed():  # the garbage collector's close, outside the loop
        turn.loop.call_soon_threadsafe(turn.line.release_on_behalf_of, turn.token)


async def _wait_in_line(line: anyio.CapacityLimiter, token: object, seconds: float) -> bool:
    # asyncio's own timeout, as in the pool's line: SQLAlchemy's asyncio runs on asyncio only.
    try:
        async with asyncio.timeout(seconds):
            await line.acquire_on_behalf_of(token)
    except TimeoutError:
        return False
    return True


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _current_task() -> asyncio.Task[Any] | None:
    # None with no running loop: a connection closed without it.
    return None if _running_loop() is None else asyncio.current_task()
