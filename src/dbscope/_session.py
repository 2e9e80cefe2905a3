"""The session classes behind every dbscope unit of work, and what they do at each transaction.

A unit's wishes for its transactions (read-only, a statement timeout, a schema) live in one
typed :class:`UnitState` on the session, and ``after_begin`` hands them to the backend's rules
(``dbscope._dialects``) once per transaction, as statements that end with the transaction:
nothing is left on the pooled connection for the next user, and a mid-unit ``commit()`` gets
the same settings again.

The same state keeps the unit's on-commit callbacks (``_commit_hooks.py`` runs them).

:class:`UnitAsyncSession` lets one task at a time in: a second task that uses the session
while the first is inside one of its methods gets SessionSharedError at once, before it
touches the connection, and the unit's end waits for the first to finish. A Database given
another AsyncSession class (``session_class=``, SQLModel's) gets a class that is both, made
once per class by ``_session_classes.unit_session_class``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, cast
from weakref import WeakKeyDictionary

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio.result import AsyncCommon
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util.concurrency import in_greenlet

from dbscope._dialects import Backend, Begin
from dbscope._errors import shared_session
from dbscope._exceptions import UnitOfWorkEndedError
from dbscope._failed_transactions import forget, refuse_commit
from dbscope._lazy_loads import STRICT_KEY, lazy_loads_refused, refuse_every_lazy_load
from dbscope._tags import SqlComment

logger = logging.getLogger("dbscope")

CommitHook = Callable[[], Any]
# On a pooled connection's info, while a unit that tracks its writes uses it: the unit's state.
WRITER: Final = "dbscope.writer"
# How long a unit's end waits for another task still inside its session.
IDLE_WAIT_SECONDS: Final = 30.0
T = TypeVar("T")

# The AsyncSession methods that run on the connection: the ones a second task must not enter.
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


@dataclass(eq=False, slots=True)
class UnitState:
    """Everything a unit of work keeps on its session.

    Attributes:
        rules: the backend's rules, which apply ``begin`` to each transaction.
        begin: what each transaction of the unit begins with.
        applied_schema: the schema the current transaction targets.
        ended: the unit has ended; the session refuses to begin again.
        pending: callbacks with the transaction they were registered in.
        due: callbacks whose transaction committed, waiting to run.
        commits: how many times the unit's transaction has committed so far (an explicit
            ``commit()`` in its body included).
        comment: the SQL comment its statements carry (``sql_comments``), if any.
        request_id: shown in the server's session list during each transaction, if any.
        tracks_writes: the primary's log position is read after each of its commits, for
            read-your-writes on replicas (``_replicas.py``).
        reroute: on a replica, until its first statement returned: where the unit goes if
            that statement meets an outage of the replica (``_replicas.py``), else None.
        savepoint_of: bound to a test's connection (its transactions are savepoints), that
            connection, on which what ``begin`` set is put back when each one ends.
        connection: the connection of the unit's current transaction, once it began.
        before_savepoints: for each open savepoint, ``begin`` and ``applied_schema`` when it
            began, which its rollback puts back (it undoes a ``use_schema()`` run in it).
    """

    rules: Backend
    begin: Begin
    applied_schema: str | None = None
    ended: bool = False
    pending: list[tuple[SessionTransaction | None, CommitHook]] = field(default_factory=list)
    due: list[CommitHook] = field(default_factory=list)
    commits: int = 0
    comment: SqlComment | None = None
    request_id: str | None = None
    tracks_writes: bool = False
    reroute: Callable[[Exception], Engine | None] | None = None
    savepoint_of: Connection | None = None
    connection: Connection | None = None
    before_savepoints: WeakKeyDictionary[SessionTransaction, tuple[Begin, str | None]] | None = (
        None  # made at the first savepoint: most units take none
    )


class UnitSession(Session):
    """The synchronous session behind every dbscope AsyncSession."""

    unit: UnitState | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.info.get(STRICT_KEY):
            refuse_every_lazy_load(self)

    # Every statement of a unit enters by one of these three (get() and loads by execute()).
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Session.execute; see :meth:`_rerouted`, and ``_lazy_loads`` for a load from async
        code."""
        if not in_greenlet():
            with lazy_loads_refused(self):
                return super().execute(*args, **kwargs)
        unit = self.unit
        if unit is None or unit.reroute is None:
            return super().execute(*args, **kwargs)
        return self._rerouted(unit, super().execute, args, kwargs)

    def scalar(self, *args: Any, **kwargs: Any) -> Any:
        """Session.scalar; see :meth:`_rerouted`."""
        unit = self.unit
        if unit is None or unit.reroute is None:
            return super().scalar(*args, **kwargs)
        return self._rerouted(unit, super().scalar, args, kwargs)

    def scalars(self, *args: Any, **kwargs: Any) -> Any:
        """Session.scalars; see :meth:`_rerouted`."""
        unit = self.unit
        if unit is None or unit.reroute is None:
            return super().scalars(*args, **kwargs)
        return self._rerouted(unit, super().scalars, args, kwargs)

    def connection(self, *args: Any, **kwargs: Any) -> Any:
        """Session.connection; see :meth:`_rerouted`: the unit's first use of its replica
        may be to take its connection, and its first statement still follows."""
        unit = self.unit
        if unit is None or unit.reroute is None:
            return super().connection(*args, **kwargs)
        return self._rerouted(unit, super().connection, args, kwargs, statement=False)

    def _rerouted(
        self,
        unit: UnitState,
        run: Callable[..., Any],
        args: Any,
        kwargs: Any,
        *,
        statement: bool = True,
    ) -> Any:
        """A unit's first statement on a replica: run again on the primary if it meets an
        outage of the replica (no connection, or one lost): reads are idempotent, and none
        returned yet."""
        reroute = unit.reroute
        assert reroute is not None
        if statement:  # (one statement only: scalar() runs execute())
            unit.reroute = None
        try:
            return run(*args, **kwargs)
        except Exception as error:
            unit.reroute = None
            bind = reroute(error)
            if bind is None:
                raise
        # Counted (db.stats().fallbacks), and the replica's change of state logged once by
        # its health checks: a line per read would flood the log under an outage.
        logger.debug("A read's replica could not serve it; the read runs on the primary")
        # The replica's connection, if any, is in an unknown state (cut mid-statement): its
        # rollback failed and its close logged a traceback. Dropped instead.
        with contextlib.suppress(Exception):
            self.invalidate()
        self.bind = bind
        return run(*args, **kwargs)


class UnitAsyncSession(AsyncSession):
    """An AsyncSession that one task at a time may use; see the module's docstring."""

    sync_session_class = UnitSession
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
            # A cursor whose connection was dropped (a cancel mid-statement) went with it;
            # closing it would only fail, and SQLAlchemy log the failure.
            if not result.closed and connection is not None and not connection.invalidated:
                await result.close()

    def idle(self) -> bool:
        """Whether no other task is inside one of the session's methods now."""
        return self._user is None or self._user is asyncio.current_task()

    async def wait_idle(self) -> None:
        """Return once no other task is inside one of the session's methods."""
        while not self.idle():
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()


def one_task_at_a_time(
    method: Callable[..., Coroutine[Any, Any, T]],
) -> Callable[..., Coroutine[Any, Any, T]]:
    """``method`` behind the guard: a second task inside it gets SessionSharedError."""

    @functools.wraps(method)
    async def guarded(self: UnitAsyncSession, *args: Any, **kwargs: Any) -> T:
        task = asyncio.current_task()
        if self._user is not None and self._user is not task:
            raise shared_session()
        self._user = task
        self._depth += 1
        try:
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
    setattr(UnitAsyncSession, _name, one_task_at_a_time(getattr(AsyncSession, _name)))
for _name in ("stream", "stream_scalars"):
    setattr(UnitAsyncSession, _name, kept_for_closing(getattr(UnitAsyncSession, _name)))
del _name


def attach_state(session: Session, state: UnitState) -> UnitState:
    """Make ``state`` the unit state of ``session``, one of dbscope's sessions."""
    assert isinstance(session, UnitSession)
    session.unit = state
    return state


def unit_state(session: Session) -> UnitState | None:
    """The unit state of ``session``, if it belongs to a dbscope unit of work."""
    return session.unit if isinstance(session, UnitSession) else None


@event.listens_for(UnitSession, "after_begin")
def _configure_transaction(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    state = unit_state(session)
    if state is None:
        return
    if transaction.parent is None:  # the unit's transaction, not a savepoint of it
        state.connection = connection
        forget(connection)  # an error of an earlier transaction on it (_failed_transactions)
    elif transaction.nested:
        # Its rollback undoes the SET LOCALs run in it (a use_schema()): what the unit targets
        # then is what it targeted when the savepoint began. Weakly: a batch's savepoint per
        # row is forgotten once released.
        if state.before_savepoints is None:
            state.before_savepoints = WeakKeyDictionary()
        state.before_savepoints[transaction] = (state.begin, state.applied_schema)
    state.rules.begin(connection, state.begin)
    state.applied_schema = state.begin.schema
    if state.request_id is not None:
        state.rules.name_transaction(connection, state.request_id)
    if state.tracks_writes:  # read when the connection returns, after its commit
        connection.info[WRITER] = state
    if connection.in_nested_transaction():  # bound to a test's connection: a savepoint
        state.savepoint_of = connection


@event.listens_for(UnitSession, "after_transaction_end")
def _put_back_settings(session: Session, transaction: SessionTransaction) -> None:
    # In production the transaction's end undoes what begin() set; a savepoint's does not.
    state = unit_state(session)
    if state is None or state.savepoint_of is None or transaction.parent is not None:
        return
    connection, state.savepoint_of = state.savepoint_of, None
    if connection.in_transaction() and not connection.invalidated:
        state.rules.put_back(connection, state.begin, named=state.request_id is not None)


@event.listens_for(UnitSession, "before_commit")
def _refuse_a_failed_commit(session: Session) -> None:
    # SQLAlchemy calls it for a savepoint's release too: the unit's own COMMIT is asked.
    state = unit_state(session)
    if state is not None and state.connection is not None and not session.in_nested_transaction():
        refuse_commit(state.connection, state.rules)


@event.listens_for(UnitSession, "after_soft_rollback")
def _forget_a_rolled_back_failure(session: Session, previous: SessionTransaction) -> None:
    state = unit_state(session)
    if state is not None and state.connection is not None:
        # A flush's failure rolls back its own subtransaction, and with it the first of its
        # parents that is a savepoint or the unit's transaction: that one says what ended.
        boundary = previous
        while boundary.parent is not None and not boundary.nested:
            boundary = boundary.parent
        forget(state.connection, savepoint=boundary.nested)
        before = state.before_savepoints
        if before is not None and boundary in before:
            state.begin, state.applied_schema = before.pop(boundary)


@event.listens_for(UnitSession, "after_transaction_create")
def _refuse_use_after_end(session: Session, transaction: SessionTransaction) -> None:
    state = unit_state(session)
    if transaction.parent is None and state is not None and state.ended:
        message = (
            "This session belongs to a unit of work that has ended (its request already "
            "answered, or its transaction block exited); using it would open a transaction "
            "that nobody commits. Open a new one: `async with db.transaction() as session:`."
        )
        raise UnitOfWorkEndedError(message)


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
            await session.wait_idle()
    except TimeoutError:
        logger.error("A session stayed in use by another task; its connection is dropped.")
        session._user = None  # the unit's end goes on; invalidate() discards the connection
        await session.invalidate()
