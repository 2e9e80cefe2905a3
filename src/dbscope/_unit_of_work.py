"""The unit of work: one session, one transaction, committed or rolled back as a whole.

A request and a ``db.transaction()`` block are both units of work. :class:`Units` opens them
for one Database and publishes the running one in a context variable, so that service code
can reach its session; each ends in exactly one way: commit when the body finished normally,
rollback when it raised (or asked for a rollback). The session is closed even when the task
is cancelled, so its connection always returns to the pool; after that, the session refuses
to be used again. Callbacks registered with ``on_commit`` run after the commit, never after a
rollback. What the unit asks of its transactions is one :class:`UnitOptions`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Final

from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from dbscope._async_session import (
    UnitAsyncSession,
    rolled_back_or_dropped,
    wait_idle,
)
from dbscope._commit_hooks import run_commit_hooks
from dbscope._dialects import Begin
from dbscope._engine import unit_bind
from dbscope._errors import connection_gone, translate
from dbscope._exceptions import DatabaseUnavailableError, NoSessionError
from dbscope._session import UnitState, attach_state, watch_test_connection
from dbscope._tags import SqlComment, SqlTagger, check_tags
from dbscope._unavailable import Limits
from dbscope._unit import ReadRouter, UnitOfWork
from dbscope._unit_options import DEFAULT_OPTIONS, UnitOptions
from dbscope._usage_errors import NESTED_IN_A_TEST, waiting_for_itself

logger = logging.getLogger("dbscope")
# Logged, without a traceback, when a unit's close meets its connection ended by the server.
LOST_AT_CLOSE: Final = (
    "the connection was lost (server restart, terminated backend or network cut), which "
    "rolled its transaction back; the connection is dropped"
)
# The distinct unit options whose BEGIN is kept made. An app declares a few in its code; one
# that computes a statement_timeout per unit (a request's remaining deadline) makes a new
# one per unit, so the cache is emptied when full rather than kept growing.
PREPARED_KEPT: Final = 256


class Units:
    """Opens the units of work of one Database and knows which one runs in this context.

    Args:
        sessions: gives the sessionmaker (raising LifecycleError when there is none).
        limits: what error messages quote (pool numbers, where the database is).
        schema: the Database's default schema.
        tagger: the SQL comments of its units (``sql_comments``); None when off.
        router: routes read-only units to replicas; None without replicas.
        on_reread: counts a read-only unit's first statement run again on the primary after
            its connection was lost (``reread``).
    """

    def __init__(
        self,
        sessions: Callable[[], async_sessionmaker[AsyncSession]],
        limits: Limits,
        schema: str | None,
        tagger: SqlTagger | None = None,
        router: ReadRouter | None = None,
        on_reread: Callable[[], object] | None = None,
    ) -> None:
        self.sessions = sessions
        self.router = router
        self.on_reread = on_reread
        self.limits = limits
        self.rules = limits.backend
        self.schema = schema
        self.tagger = tagger
        self.current: ContextVar[UnitOfWork | None] = ContextVar("dbscope_unit", default=None)
        self._prepared: dict[UnitOptions, tuple[Begin, Limits]] = {}

    @contextlib.contextmanager
    def following(self, url: URL) -> Iterator[None]:
        """Apply the rules of the database at ``url`` meanwhile, and name it in messages: a
        test binds the units to its connection, which may be another database's (an app on
        SQLite in development, tested on PostgreSQL)."""
        saved = (self.limits, self.rules, self._prepared)
        self.limits = dataclasses.replace(self.limits, url=url)
        self.rules, self._prepared = self.limits.backend, {}
        try:
            yield
        finally:
            self.limits, self.rules, self._prepared = saved

    def prepared(self, options: UnitOptions) -> tuple[Begin, Limits]:
        """What each transaction of a unit with ``options`` begins with, and what its errors
        quote; made once per options, not per unit."""
        found = self._prepared.get(options)
        if found is None:
            schema = options.schema or self.schema
            begin = Begin(
                options.read_only, options.statement_timeout, schema, options.synchronous_commit
            )
            limits = self.limits
            if options.statement_timeout is not None:
                limits = dataclasses.replace(limits, statement_timeout=options.statement_timeout)
            if len(self._prepared) >= PREPARED_KEPT:
                self._prepared.clear()
            found = self._prepared[options] = (begin, limits)
        return found

    def open(
        self,
        options: UnitOptions = DEFAULT_OPTIONS,
        *,
        comment: SqlComment | None = None,
        request_id: str | None = None,
        after: object = None,
        primary: bool = False,
    ) -> UnitRun:
        """A unit of work to enter with ``async with``; ``comment`` tags its statements (by
        default, the tagger's shared tags), ``request_id`` names its transactions, ``after``
        (a WriteToken) is a write a read-only unit must see; ``primary`` keeps a read-only
        unit on the primary."""
        return UnitRun(self, options, comment, request_id, after, primary)

    def reread(self, bind: Engine, error: Exception) -> Engine | None:
        """Where a read-only unit's first statement on the primary runs again after ``error``
        (``UnitState.reroute``): on ``bind``, its own engine, whose pool gives a fresh
        connection, when the unit's connection was lost (the server ended it: a restart, a
        terminated backend, a failover), counted; else None, and ``error`` propagates: no
        connection to be had (``pool_timeout``, ``unreachable``: asking again would wait
        again), PgBouncer's queue waited out (likewise), or the read's own error."""
        outage = translate(error, self.limits)
        if not isinstance(outage, DatabaseUnavailableError) or outage.cause != "connection_lost":
            return None
        if isinstance(error, DBAPIError) and self.rules.lost_because(error.orig) is not None:
            return None
        if self.on_reread is not None:
            self.on_reread()
        return bind

    def comment(self, tags: Mapping[str, str] | None) -> SqlComment | None:
        """The comment of a unit with ``tags``; None while SQL comments are off (``tags`` are
        checked all the same, so that a mistake shows before they are turned on)."""
        if tags is not None:
            check_tags(tags)
        return None if self.tagger is None else self.tagger.comment(tags)

    def running_comment(self) -> SqlComment | None:
        """The comment of the unit running in this context, if any: what its statements carry."""
        unit = self.current.get()
        return None if unit is None else unit.state.comment

    def committing(self) -> UnitOfWork:
        """The unit whose commit an ``on_commit()`` callback of this context waits for
        (``writable_here``'s).

        Raises:
            NoSessionError: no unit of work is active here.
        """
        return self.writable_here() or self.running()

    def writable_here(self) -> UnitOfWork | None:
        """The unit that commits this context's writes, if any: the running one; but a
        request's read-only unit, running because its dependency was entered after the
        request's writable one (``Depends(db.read_session)`` listed after
        ``Depends(db.session)``), never commits, and the request's writes are the other's.
        ``@db.retry()`` retries that one, as ``on_commit()`` waits for its commit."""
        unit = self.current.get()
        if unit is None or not unit.state.begin.read_only or unit.request_units is None:
            return unit
        outer = unit.opened_in
        return outer if outer is not None and outer.request_units is unit.request_units else unit

    def running(self) -> UnitOfWork:
        """The unit of work of this context.

        Raises:
            NoSessionError: no unit of work is active here.
        """
        unit = self.current.get()
        if unit is None:
            message = (
                "There is no unit of work here (db.current_session(), db.on_commit() and "
                "db.use_schema() need one). A session exists inside a request whose endpoint "
                "or dependencies ask for db.session (Annotated[AsyncSession, "
                "Depends(db.session)]), and inside `async with db.transaction():` blocks."
            )
            raise NoSessionError(message)
        return unit


# A routed unit's options, the write it must see, its comment and request id.
_Route = tuple[UnitOptions, object, SqlComment | None, str | None]


class UnitRun:
    """Run one unit of work: ``async with UnitRun(...) as unit:`` commits if the body
    returns and rolls back if it raises.

    Errors leave through the one door (``dbscope._errors.translate``): an outage as
    DatabaseUnavailableError, a cancelled slow statement as StatementTimeoutError, a
    constraint failing at COMMIT as ConstraintViolationError; every other exception leaves
    unchanged. A class rather than nested generator context managers: every request enters
    one, and each generator layer costs a few microseconds.
    """

    __slots__ = ("_limits", "_route", "_token", "_units", "unit")

    def __init__(
        self,
        units: Units,
        options: UnitOptions,
        comment: SqlComment | None = None,
        request_id: str | None = None,
        after: object = None,
        primary: bool = False,
    ) -> None:
        self._units = units
        self._limits = units.prepared(options)[1]
        self._route: _Route | None = None
        router = units.router
        routed = router is not None and router.routes()
        if routed and options.read_only and not primary:
            # The unit is made in __aenter__, on the replica chosen then (or the primary).
            self._route = (options, after, comment, request_id)
            return
        self.unit = self._make(units.sessions(), options, comment, request_id, primary=True)
        self.unit.state.tracks_writes = routed

    def _make(
        self,
        factory: async_sessionmaker[AsyncSession],
        options: UnitOptions,
        comment: SqlComment | None,
        request_id: str | None,
        *,
        primary: bool,
    ) -> UnitOfWork:
        """The unit's session and state, on ``factory``'s engine (the primary's, if
        ``primary``: a read-only unit's first statement there may run again, ``reread``)."""
        units = self._units
        session = factory(
            **unit_bind(factory, units.rules, options.read_only, options.isolation_level)
        )
        state = attach_state(
            session.sync_session, UnitState(units.rules, units.prepared(options)[0])
        )
        if units.tagger is not None:
            state.comment = comment or units.tagger.default
        if request_id is not None:
            state.request_id = request_id
        unit = UnitOfWork(session, state)
        unit.rollback_only = options.read_only
        bind = session.sync_session.bind
        # Not bound to a test's connection (a Connection): the test holds its transaction.
        if primary and options.read_only and isinstance(bind, Engine):
            state.reroute = functools.partial(units.reread, bind)
        return unit

    async def __aenter__(self) -> UnitOfWork:
        if self._route is not None:
            options, after, comment, request_id = self._route
            router = self._units.router
            assert router is not None

            def make(factory: async_sessionmaker[AsyncSession] | None) -> UnitOfWork:
                on_primary = factory is None  # a replica's unit reroutes (_replicas.py)
                factory = factory or self._units.sessions()
                return self._make(factory, options, comment, request_id, primary=on_primary)

            self.unit = await router.open_read(make, options, after)
        self._token = self._units.current.set(self.unit)
        if isinstance(opened_in := self._token.old_value, UnitOfWork):
            self.unit.opened_in = opened_in
        if isinstance(self.unit.session.bind, AsyncConnection):  # bound to a test's connection
            watch_test_connection(self.unit.session.sync_session)
            if self.unit.opened_in is not None:  # its savepoints may nest in the outer one's
                self.unit.state.outer = self.unit.opened_in.state
            if self._inside_a_unit():
                warnings.warn(NESTED_IN_A_TEST, RuntimeWarning, stacklevel=2)
        return self.unit

    async def __aexit__(
        self, kind: type[BaseException] | None, failure: BaseException | None, traceback: Any
    ) -> None:
        error = failure
        try:
            await self._end(failure)
        except BaseException as end_error:
            error = end_error
        finally:
            self._leave()
        if error is None or isinstance(error, Exception):
            # Work committed earlier in the unit (an explicit commit()) stays committed, so
            # its callbacks are due even when the unit failed afterwards.
            await run_commit_hooks(self.unit.state)
        if error is None:
            return
        if isinstance(error, Exception):
            translated = translate(error, self._limits, at_commit=error is not failure)
            if (
                isinstance(translated, DatabaseUnavailableError)
                and translated.cause == "pool_timeout"
                and self._inside_a_unit()
            ):
                translated = waiting_for_itself(translated)
            if translated is not None:
                raise translated from error
        if error is failure:
            return  # the body's own exception goes on, with its traceback untouched
        raise error

    async def _end(self, failure: BaseException | None) -> None:
        """Commit or roll back, then close; the body's own error wins over a close error.

        Raises what ended the unit other than the body's error: a failed commit, a failed
        close when nothing failed before it, a cancellation.
        """
        session = self.unit.session
        assert isinstance(session, UnitAsyncSession)
        await wait_idle(session)
        outcome = failure
        if session.streams:
            try:
                await session.close_streams()
            except BaseException as error:
                # A cancel or a lost connection while closing them ends the unit all the same.
                outcome = failure or error
        # A unit that must not commit is rolled back by the close below, as a failed one is:
        # rollback() would also expire what it loaded, which its caller still reads (a
        # read-only unit's rows, returned from parallel() or serialized after the request).
        commits = self.unit.will_commit
        committed = False
        if failure is None and commits:
            try:
                await session.commit()
                committed = True
            except BaseException as error:
                outcome = error
        try:
            if committed:
                # The commit gave the connection back to the pool: closing is bookkeeping
                # that never waits, so nothing can interrupt it. (About 4% of a request's
                # instructions went to the task that closing to completion takes.)
                await session.close()
            else:
                # AsyncSession's own exit closes to completion, even when the task is
                # cancelled meanwhile, so that the connection always returns to the pool.
                await session.__aexit__(None, None, None)
        except Exception as error:
            # Closing failed: the connection broke, or SQLAlchemy refuses to close over
            # savepoints left open after an error (three deep: "Can't reconnect until invalid
            # savepoint transaction is rolled back", the connection held, its locks with it).
            # A rollback first, then the close; else drop it, so that none stays checked out.
            # The first error is the one that explains.
            await rolled_back_or_dropped(session)
            if outcome is None and commits:
                raise
            self._close_failed(error, outcome)
        if outcome is not None and outcome is not failure:
            raise outcome

    def _close_failed(self, error: Exception, outcome: BaseException | None) -> None:
        # A unit that was never to commit lost nothing but its rollback: what it read stands
        # (measured: a replica stopped under load answered reads 503 after their rows were
        # read, at the rollback of their close). A connection the server ended meanwhile is
        # no fault of the application's, and its traceback would only show the driver's
        # words for it (asyncpg's "another operation (2) is in progress").
        after = "its work" if outcome is None else repr(outcome)
        if connection_gone(error, self._limits.url):
            logger.warning("Closing the session failed after %s: %s", after, LOST_AT_CLOSE)
        else:
            logger.warning("Closing the session failed after %s", after, exc_info=error)

    def _inside_a_unit(self) -> bool:
        """Whether this unit was opened inside another of the same Database that holds a
        connection (its transaction began)."""
        outer = self._token.old_value
        return (
            isinstance(outer, UnitOfWork) and not outer.tests_own and outer.session.in_transaction()
        )

    def _leave(self) -> None:
        # The unit may end in another context than it began (a generator closed by the
        # garbage collector); the variable then belongs to a context that is gone anyway.
        with contextlib.suppress(ValueError):
            self._units.current.reset(self._token)
        self.unit.state.ended = True
