"""Who holds a database file's one write lock (SQLite's), so that a unit that would wait for
a unit of its own task, which cannot end first, is refused at once instead of waiting out
the busy timeout and failing with "database is locked"."""

from __future__ import annotations

import asyncio
import weakref
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Final

from sqlalchemy.engine import Connection


class WaitsForItself(Exception):
    """A transaction would wait for a lock held by another of its task, which waits for it."""


# The tasks that await the current one to its end (db.parallel()'s caller, for its queries'
# tasks): a lock one of them holds cannot be let go before this task ends either.
AWAITED_BY: Final[ContextVar[tuple[asyncio.Task[Any], ...]]] = ContextVar(
    "dbscope.awaited_by", default=()
)


class Writer:
    """The task whose transaction holds a file's write lock, and that transaction's
    connection, weakly: a unit of that task that may write, opened inside that one's, would
    wait for it until the busy timeout, as that one cannot end first. It is refused at once,
    as is one of a task that task awaits to its end (db.parallel()'s). Another task it
    started waits its turn: the first may end meanwhile."""

    __slots__ = ("__weakref__", "connection", "task")

    def __init__(self) -> None:
        self.task: weakref.ref[asyncio.Task[Any]] | None = None
        self.connection: weakref.ref[Connection] | None = None

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


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop: a connection closed without it
        return None
