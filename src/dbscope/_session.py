"""The session classes behind every dbscope unit of work, and what they do at each transaction.

A unit's wishes for its transactions (read-only, a statement timeout, a schema) live in one
typed :class:`UnitState` on the session, and ``after_begin`` hands them to the backend's rules
(``dbscope._dialects``) once per transaction, as statements that end with the transaction:
nothing is left on the pooled connection for the next user, and a mid-unit ``commit()`` gets
the same settings again.

The same state keeps the unit's on-commit callbacks (``_commit_hooks.py`` runs them). The
AsyncSession over :class:`UnitSession` is ``_async_session.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from weakref import WeakKeyDictionary

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, NestedTransaction
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util.concurrency import in_greenlet

from dbscope._dialects import Backend, Begin
from dbscope._exceptions import UnitOfWorkEndedError
from dbscope._failed_transactions import forget, in_a_test, refuse_commit
from dbscope._lazy_loads import STRICT_KEY, lazy_loads_refused, refuse_every_lazy_load
from dbscope._savepoints import release_savepoints_inside
from dbscope._tags import SqlComment

logger = logging.getLogger("dbscope")

CommitHook = Callable[[], Any]
# On a pooled connection's info, while a unit that tracks its writes uses it: the unit's state.
WRITER: Final = "dbscope.writer"


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
        reroute: until its first statement returned, in a read-only unit: where that
            statement runs again if it meets an outage of its connection, else None. On a
            replica, the primary (``_replicas.py``); on the primary, a fresh connection of
            the same engine, for a lost one only (``_unit_of_work.py``).
        savepoint_of: bound to a test's connection (its transactions are savepoints), that
            connection, on which what ``begin`` set is put back when each one ends.
        outer: bound to a test's connection, the unit this one was opened inside, if any.
        tests_own: the session a test holds for its own queries (``dbscope.testing``).
        settings_before: bound to a test's connection, what the unit's settings were in the
            test's transaction before its current one began (the backend's
            ``settings_before``), which its end puts back; None otherwise.
        connection: the connection of the unit's current transaction, once it began.
        own_savepoint: bound to a test's connection, the savepoint that is the unit's current
            transaction (the session's events follow it), else None.
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
    outer: UnitState | None = None
    tests_own: bool = False
    settings_before: Mapping[str, str] | None = None
    connection: Connection | None = None
    own_savepoint: NestedTransaction | None = None
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
        """A read-only unit's first statement: run again where ``unit.reroute`` says if it
        meets an outage of its connection (on a replica: none to be had, or one lost; on the
        primary: one lost), once, unless it runs in a savepoint: reads are idempotent, and
        none returned yet."""
        reroute = unit.reroute
        assert reroute is not None
        if statement:  # (one statement only: scalar() runs execute())
            unit.reroute = None
        try:
            found = run(*args, **kwargs)
        except Exception as error:
            unit.reroute = None
            # Inside a savepoint (begin_nested()), whose context the statement cannot run
            # again in once the transaction is dropped: it fails as a later statement does.
            bind = None if self.in_nested_transaction() else reroute(error)
            if bind is None:
                raise
        else:
            if not statement:
                _until_used(found, unit)
            return found
        # Counted (db.stats().fallbacks, .rereads), and a replica's change of state logged
        # once by its health checks: a line per read would flood the log under an outage.
        logger.debug("A read-only unit's first statement met an outage; it runs again")
        # The connection, if any, is in an unknown state (cut mid-statement): its rollback
        # failed and its close logged a traceback. Dropped instead.
        with contextlib.suppress(Exception):
            self.invalidate()
        self.bind = bind
        return run(*args, **kwargs)


def _until_used(connection: Connection, unit: UnitState) -> None:
    """Keep ``unit.reroute`` only until a statement runs on ``connection``, which
    ``session.connection()`` handed out: the statements run on it bypass the session's, and
    rows it returned may have been read (a unit at REPEATABLE READ run again elsewhere would
    read two snapshots). Listened for on this Connection alone: other units pay nothing."""

    def used(*_: object) -> None:
        unit.reroute = None

    event.listen(connection, "before_cursor_execute", used, once=True)


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
        state.own_savepoint = connection.get_nested_transaction()
        forget(connection)  # an error of an earlier transaction on it (_failed_transactions)
        if connection.in_nested_transaction():  # bound to a test's connection: a savepoint
            in_a_test(connection)
            # What the test set in its own transaction, which the unit's end puts back.
            named = state.request_id is not None
            state.settings_before = state.rules.settings_before(
                connection, state.begin, named=named
            )
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
    before, state.settings_before = state.settings_before, None
    if connection.in_transaction() and not connection.invalidated:
        state.rules.put_back(connection, before or {})


@event.listens_for(UnitSession, "before_commit")
def _refuse_a_failed_commit(session: Session) -> None:
    # SQLAlchemy calls it for a savepoint's release too: the unit's own COMMIT is asked.
    state = unit_state(session)
    if state is None or session.in_nested_transaction():
        return
    if state.connection is not None:
        refuse_commit(state.connection, state.rules)
        if state.own_savepoint is not None:  # bound to a test's connection: a savepoint
            # Those the unit left open on the connection end with it, as in production.
            release_savepoints_inside(state.connection, state.own_savepoint)


@event.listens_for(UnitSession, "after_soft_rollback")
def _undo_what_the_rollback_undid(session: Session, previous: SessionTransaction) -> None:
    # The failure it undid (_failed_transactions), and a savepoint's use_schema().
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


class TestConnectionUnits:
    """Bound to a test's connection, the units whose transaction (a savepoint of the test's)
    is open on it, in the order they began, each with the task it began in; one that would
    begin beside them waits for them to end and is refused (``_async_session.wait_for_turn``):
    the savepoints of two units at once end each other's, and the driver only says that a
    savepoint does not exist."""

    __slots__ = ("_ended", "open")

    def __init__(self) -> None:
        self.open: list[tuple[UnitState, asyncio.Task[Any] | None]] = []
        self._ended: asyncio.Event | None = None

    def blocking(self, state: UnitState) -> list[asyncio.Task[Any] | None]:
        """The tasks of the units open before ``state``'s (all open ones, if it has not
        begun) that are neither one it was opened inside nor the test's own session."""
        before = next((i for i, (each, _) in enumerate(self.open) if each is state), None)
        return [
            task
            for other, task in self.open[:before]
            if not (other.tests_own or _inside(state, other))
        ]

    async def one_ended(self) -> None:
        """Return when one of the open units has ended."""
        if self._ended is None:
            self._ended = asyncio.Event()
        await self._ended.wait()

    def end(self, state: UnitState) -> None:
        """``state``'s transaction has ended."""
        self.open = [(each, task) for each, task in self.open if each is not state]
        ended, self._ended = self._ended, None
        if ended is not None:
            ended.set()


# Keyed by the test's sync Connection, new for each test's connection.
_test_connections: WeakKeyDictionary[Connection, TestConnectionUnits] = WeakKeyDictionary()


def test_connection_units(session: Session) -> TestConnectionUnits | None:
    """The units open on the test's connection ``session`` is bound to; None when unbound."""
    connection = session.bind
    if not isinstance(connection, Connection):
        return None
    found = _test_connections.get(connection)
    if found is None:
        found = _test_connections[connection] = TestConnectionUnits()
    return found


def watch_test_connection(session: Session) -> None:
    """Keep ``session``'s unit, bound to a test's connection, among those open on it while its
    transaction is (:class:`TestConnectionUnits`). Listened for on this session alone: a
    pooled unit pays nothing for it."""
    event.listen(session, "after_transaction_create", _open_on_a_test_connection)
    event.listen(session, "after_transaction_end", _leave_the_test_connection)


def _open_on_a_test_connection(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None and (units := test_connection_units(session)) is not None:
        state = unit_state(session)
        if state is not None:
            units.open.append((state, asyncio.current_task()))


def _leave_the_test_connection(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None and (units := test_connection_units(session)) is not None:
        state = unit_state(session)
        if state is not None:
            units.end(state)


def _inside(state: UnitState, other: UnitState) -> bool:
    """Whether ``state``'s unit was opened inside ``other``'s (a savepoint nested in it)."""
    outer = state.outer
    while outer is not None:
        if outer is other:
            return True
        outer = outer.outer
    return False
