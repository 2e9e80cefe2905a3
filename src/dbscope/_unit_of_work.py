"""The unit of work: one session, one transaction, committed or rolled back as a whole.

A request and a ``db.transaction()`` block are both units of work. The unit is published in a
context variable so that service code can reach its session, and it ends in exactly one way:
commit when the body finished normally, rollback when it raised (or asked for a rollback).
The session is closed even when the task is cancelled, so its connection always returns to
the pool; after that, the session refuses to be used again. Callbacks registered with
``on_commit`` run after the commit, never after a rollback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dbscope._exceptions import ConfigurationError
from dbscope._lazy_loads import STRICT_KEY
from dbscope._outages import outage_error, shared_session_error, statement_timeout_error
from dbscope._session_events import (
    APPLIED_SCHEMA_KEY,
    ENDED_KEY,
    READ_ONLY_KEY,
    SCHEMA_KEY,
    TIMEOUT_KEY,
    CommitHook,
    UnitSession,
    add_commit_hook,
    quote_schema,
    take_due_hooks,
)
from dbscope._settings import DatabaseSettings, validate_schema_name

logger = logging.getLogger("dbscope")

# A session used by another task is closed again every 10 ms, for at most 30 s.
CLOSE_INTERVAL = 0.01
CLOSE_ATTEMPTS = 3000
ISOLATION_LEVELS = ("SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED")


@dataclass(frozen=True)
class UnitOptions:
    """How one unit of work runs.

    Attributes:
        read_only: never commit; on PostgreSQL and MariaDB/MySQL, a ``READ ONLY`` transaction.
        isolation_level: e.g. ``"SERIALIZABLE"``; None keeps the database's default.
        statement_timeout: seconds any one statement may run (PostgreSQL, MariaDB/MySQL).
        schema: PostgreSQL schema for this unit; None keeps the Database's.
    """

    read_only: bool = False
    isolation_level: str | None = None
    statement_timeout: float | None = None
    schema: str | None = None

    def check(self, backend: str, isolation_levels: tuple[str, ...] = ISOLATION_LEVELS) -> None:
        """Raise ConfigurationError for an option this backend cannot honour.

        ``isolation_levels``: what the connected database and driver accept, once known.
        """
        if self.isolation_level is not None and self.isolation_level not in isolation_levels:
            message = (
                f"isolation_level={self.isolation_level!r} is not available here; use one of "
                f"{', '.join(isolation_levels)}."
            )
            raise ConfigurationError(message)
        if self.statement_timeout is not None:
            if self.statement_timeout <= 0:
                timeout = self.statement_timeout
                message = f"statement_timeout must be a positive number of seconds, got {timeout}."
                raise ConfigurationError(message)
            if backend not in ("postgresql", "mysql", "mariadb"):
                message = (
                    f"statement_timeout is not available on {backend}; it needs PostgreSQL "
                    "or MariaDB/MySQL. Remove it, or bound the work with asyncio.timeout()."
                )
                raise ConfigurationError(message)
        if self.schema is not None:
            validate_schema_name(self.schema)


class UnitOfWork:
    """A session and how its transaction will end.

    Attributes:
        session: the unit's AsyncSession.
        rollback_only: when set, the unit rolls back instead of committing at its end.
    """

    __slots__ = ("rollback_only", "session")

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.rollback_only = False

    def on_commit(self, callback: CommitHook) -> None:
        """Run ``callback`` (a function or coroutine function, no arguments) after the commit.

        It runs once the transaction it was registered in has committed, in registration
        order; never if that transaction, or a savepoint it was registered in, rolls back.
        A callback that raises is logged with its traceback and does not affect the unit.
        """
        add_commit_hook(self.session.sync_session, callback)

    async def use_schema(self, name: str | None) -> None:
        """Make the unit's statements target schema ``name`` (None: the server's default)."""
        if name is not None:
            validate_schema_name(name)
        info = self.session.info
        info[SCHEMA_KEY] = name
        connection = await self.session.connection()  # begins, and applies the schema, if new
        if info.get(APPLIED_SCHEMA_KEY) != name:
            target = "DEFAULT" if name is None else quote_schema(connection.dialect, name)
            await connection.exec_driver_sql(f"SET LOCAL search_path TO {target}")
            info[APPLIED_SCHEMA_KEY] = name


def session_factory(
    *, raise_on_lazy_load: bool, **options: Any
) -> async_sessionmaker[AsyncSession]:
    """The sessionmaker dbscope uses: objects stay readable after commit, no hidden flushes."""
    return async_sessionmaker(
        sync_session_class=UnitSession,
        expire_on_commit=False,
        autoflush=False,
        info={STRICT_KEY: raise_on_lazy_load},
        **options,
    )


class UnitRun:
    """Run one unit of work: ``async with UnitRun(...) as unit:`` commits if the body
    returns and rolls back if it raises.

    An outage (pool timeout, unreachable server, lost connection) leaves as
    DatabaseUnavailableError, a cancelled slow statement as StatementTimeoutError; every
    other exception leaves unchanged. A class rather than nested generator context managers:
    every request enters one, and each generator layer costs a few microseconds.
    """

    __slots__ = ("_current", "_options", "_settings", "_token", "unit")

    def __init__(
        self,
        factory: async_sessionmaker[AsyncSession],
        current: ContextVar[UnitOfWork | None],
        settings: DatabaseSettings,
        options: UnitOptions,
    ) -> None:
        session = factory(**_unit_bind(factory, options))
        info = session.info
        info[SCHEMA_KEY] = options.schema or settings.postgres_schema
        info[READ_ONLY_KEY] = options.read_only
        info[TIMEOUT_KEY] = options.statement_timeout
        self.unit = UnitOfWork(session)
        self.unit.rollback_only = options.read_only
        self._current = current
        self._settings = settings
        self._options = options

    async def __aenter__(self) -> UnitOfWork:
        self._token = self._current.set(self.unit)
        return self.unit

    async def __aexit__(
        self, kind: type[BaseException] | None, failure: BaseException | None, traceback: Any
    ) -> bool:
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
            await run_commit_hooks(self.unit.session)
        if error is None:
            return False
        if isinstance(error, Exception):
            translated = (
                outage_error(error, self._settings)
                or statement_timeout_error(error, self._options)
                or shared_session_error(error)
            )
            if translated is not None:
                raise translated from error
        if error is failure:
            return False  # the body's own exception goes on, with its traceback untouched
        raise error

    async def _end(self, failure: BaseException | None) -> None:
        """Commit or roll back, then close; the body's own error wins over a close error.

        Raises what ended the unit other than the body's error: a failed commit, a failed
        close when nothing failed before it, a cancellation.
        """
        session = self.unit.session
        outcome = failure
        if failure is None:
            try:
                if self.unit.rollback_only:
                    await session.rollback()
                else:
                    await session.commit()
            except BaseException as error:
                outcome = error
        try:
            # AsyncSession's own exit closes to completion, even when the task is cancelled
            # meanwhile, so that the connection always returns to the pool.
            await session.__aexit__(None, None, None)
        except Exception as error:
            # Closing failed: the connection broke, or another task is still inside this
            # session (asyncio.gather over one session). Close again once it is idle, so
            # that no connection stays checked out; the first error is the one that explains.
            await _close_when_idle(session)
            if outcome is None:
                raise
            logger.warning("Closing the session failed after %r", outcome, exc_info=error)
        if outcome is not None and outcome is not failure:
            raise outcome

    def _leave(self) -> None:
        # The unit may end in another context than it began (a generator closed by the
        # garbage collector); the variable then belongs to a context that is gone anyway.
        with contextlib.suppress(ValueError):
            self._current.reset(self._token)
        self.unit.session.info[ENDED_KEY] = True


def _unit_bind(factory: async_sessionmaker[AsyncSession], options: UnitOptions) -> dict[str, Any]:
    # An isolation level must hold for every transaction of the unit (a retried attempt, a
    # mid-unit commit), and a pooled connection is reset when returned: bind the session to an
    # engine view with the level, which applies it at each checkout. On PostgreSQL the same
    # view makes a read-only unit begin with BEGIN READ ONLY, one statement instead of BEGIN
    # then SET TRANSACTION READ ONLY. A test's bound connection keeps the transaction the test
    # began (after_begin then sets read-only itself).
    bind = factory.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        return {}
    read_only = options.read_only and bind.dialect.name == "postgresql"
    if options.isolation_level is None and not read_only:
        return {}
    return {"bind": _engine_view(bind, options.isolation_level, read_only)}


@functools.lru_cache(maxsize=32)
def _engine_view(engine: AsyncEngine, isolation_level: str | None, read_only: bool) -> AsyncEngine:
    # Built once per engine and options rather than per unit: a view costs about 30 µs. The
    # cache keeps at most 32 views, and the engines behind them, alive.
    view: dict[str, Any] = {"postgresql_readonly": True} if read_only else {}
    if isolation_level is not None:
        view["isolation_level"] = isolation_level
    return engine.execution_options(**view)


async def _close_when_idle(session: AsyncSession) -> None:
    # Invalidate rather than close: another task may still be mid-statement on the
    # connection, which a rollback cannot interrupt; a dropped connection costs a reconnect.
    for _ in range(CLOSE_ATTEMPTS):
        await asyncio.sleep(CLOSE_INTERVAL)
        try:
            await session.invalidate()
        except Exception:  # noqa: S112 - still busy provisioning; the loop is bounded
            continue
        return
    logger.error("Could not close a session still in use by another task; it leaks.")


async def run_commit_hooks(session: AsyncSession) -> None:
    """Run the callbacks whose transaction committed; log, never raise, their errors."""
    for callback in take_due_hooks(session.sync_session):
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("An on_commit callback failed: %r", callback)
