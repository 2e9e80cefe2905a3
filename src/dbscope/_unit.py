"""UnitOfWork: a unit's session and how its transaction will end, what the code inside a unit
reaches (``on_commit``, ``use_schema``); and what opening a read-only unit on a replica takes
(``ReadRouter``, ``_replicas.py``'s). ``_unit_of_work.py`` opens, runs and ends them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dbscope._commit_hooks import add_commit_hook
from dbscope._dialects import OWN, Begin
from dbscope._exceptions import ConfigurationError
from dbscope._savepoints import innermost_savepoint, undo_on_rollback
from dbscope._session import CommitHook, UnitState
from dbscope._settings import validate_schema_name
from dbscope._unit_options import UnitOptions

# Builds a unit's UnitOfWork on a sessionmaker (a replica's), or on the Database's own (None).
MakeUnit = Callable[[async_sessionmaker[AsyncSession] | None], "UnitOfWork"]


class ReadRouter(Protocol):
    """Where read-only units run, when a Database has replicas (``_replicas.Replicas``)."""

    def routes(self) -> bool:
        """Whether units are routed now (connected, and not bound to a test's connection)."""

    async def open_read(self, make: MakeUnit, options: UnitOptions, after: object) -> UnitOfWork:
        """A read-only unit, on a replica that has the writes of ``after`` (a WriteToken,
        else those seen in this context) or on the primary; its connection checked out."""


class UnitOfWork:
    """A session and how its transaction will end.

    Attributes:
        session: the unit's AsyncSession.
        rollback_only: when set, the unit rolls back instead of committing at its end.
        failed_quietly: its owner's check, if any, of a failure its body reports without
            raising (an endpoint that set an error status on the response); when it answers
            True, the unit rolls back as if ``rollback_only`` were set.
        retried: a ``@db.retry()`` function runs it again on conflicts: one called inside
            that function runs once, and leaves its conflicts to the outer one's loop.
        endpoint: a request's unit: the endpoint its route runs (a ``@db.retry()`` function
            commits its attempts only as that endpoint).
        request_units: a request's unit: the request units of every Database open in the
            request, this one included, which a ``@db.retry()`` attempt rolls back together.
        tests_own: the session a test holds for its own queries (``dbscope.testing``): the
            app's units opened inside it are no units nested in units.
        opened_in: the unit of the same Database that was running where this one opened, if
            any (a request's ``Depends(db.session)`` for its ``Depends(db.read_session)``).
    """

    __slots__ = (
        "endpoint",
        "failed_quietly",
        "opened_in",
        "request_units",
        "retried",
        "rollback_only",
        "session",
        "state",
    )

    def __init__(self, session: AsyncSession, state: UnitState) -> None:
        self.session = session
        self.state = state
        self.rollback_only = False
        self.failed_quietly: Callable[[], bool] | None = None
        self.retried = False
        self.endpoint: Callable[..., Any] | None = None
        self.request_units: list[UnitOfWork] | None = None
        self.opened_in: UnitOfWork | None = None

    @property
    def tests_own(self) -> bool:
        """Whether this is the session a test holds for its own queries."""
        return self.state.tests_own

    @tests_own.setter
    def tests_own(self, value: bool) -> None:
        self.state.tests_own = value

    @property
    def will_commit(self) -> bool:
        """Whether the unit commits once its body has returned: neither ``rollback_only``
        nor a failure its owner reports without raising."""
        if self.rollback_only:
            return False
        return self.failed_quietly is None or not self.failed_quietly()

    def on_commit(self, callback: CommitHook) -> None:
        """Run ``callback`` (a function or coroutine function, no arguments) after the commit.

        It runs once the transaction it was registered in has committed, in registration
        order; never if that transaction, or a savepoint it was registered in, rolls back.
        A callback that raises is logged with its traceback and does not affect the unit.
        In a read-only unit, which never commits, it is refused (``ConfigurationError``).
        """
        add_commit_hook(self.session.sync_session, self.state, callback)

    def _keep_settings_before(self, connection: Connection, wanted: Begin) -> None:
        # What the unit's end puts back, read where it has not been yet: a unit that began
        # without a schema read no search_path.
        state = self.state
        kept = state.settings_before or {}
        read = state.rules.settings_before(connection, wanted, named=False)
        state.settings_before = {**read, **kept}

    def _undone_with_the_connections_savepoint(self) -> None:
        # The rollback of a savepoint of the connection's own, which no session event tells
        # of, undoes the SET LOCAL run in it: the unit targets what it targeted before, as
        # for the session's savepoints (_session.py's before_savepoints).
        state = self.state
        connection = state.connection
        savepoint = innermost_savepoint(connection)
        if connection is None or savepoint is None or savepoint is state.own_savepoint:
            return
        before = (state.begin, state.applied_schema)

        def undo() -> None:
            state.begin, state.applied_schema = before

        undo_on_rollback(connection, savepoint, undo, lambda: state.ended)

    async def use_schema(self, name: str | None) -> None:
        """Make the unit's statements target schema ``name`` (None: the server's default)."""
        state = self.state
        if name is not None:
            if not state.rules.has_schemas:
                message = (
                    f"use_schema({name!r}) is not available on {state.rules.name}, which has "
                    "no schemas to switch between (PostgreSQL has); remove it."
                )
                raise ConfigurationError(message)
            validate_schema_name(name)
        if not self.session.in_transaction():
            # The transaction's begin applies it, at the unit's first statement: no BEGIN of
            # its own here, which a retried endpoint took for statements run before it.
            state.begin = dataclasses.replace(state.begin, schema=name)
            return
        # Begun before the unit's target changes: a savepoint begins at its first use (right
        # after begin_nested()), and what it keeps for its rollback to put back, and the
        # SET LOCAL it applies, are the unit's before this call. It applied this schema, and
        # the unit's end in a test put back nothing: the next unit of the test ran on it.
        connection = await self.session.connection()
        self._undone_with_the_connections_savepoint()
        state.begin = dataclasses.replace(state.begin, schema=name)
        if state.applied_schema != name:
            if state.settings_before is not None:  # bound to a test's connection
                await connection.run_sync(self._keep_settings_before, Begin(schema=name))
            statement = state.rules.schema_statement(connection.dialect, name)
            await connection.exec_driver_sql(statement, execution_options=OWN)
            state.applied_schema = name
