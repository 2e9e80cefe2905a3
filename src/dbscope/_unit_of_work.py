"""The unit of work: one session, one transaction, committed or rolled back as a whole.

A request and a ``db.transaction()`` block are both units of work. The unit is published in a
context variable so that service code can reach its session, and it ends in exactly one way:
commit when the body finished normally, rollback when it raised (or asked for a rollback).
The session is closed even when the task is cancelled, so its connection always returns to
the pool.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

from dbscope._lazy_loads import STRICT_KEY, refuse_lazy_loads
from dbscope._outages import outage_error
from dbscope._settings import DatabaseSettings, validate_schema_name

logger = logging.getLogger("dbscope")

SCHEMA_KEY: Final = "dbscope.schema"
APPLIED_SCHEMA_KEY: Final = "dbscope.applied_schema"


class UnitSession(Session):
    """The synchronous session behind every dbscope AsyncSession; carries the schema hook."""


@event.listens_for(UnitSession, "after_begin")
def _apply_schema(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    # SET LOCAL lasts until the transaction ends, so the schema can never leak to the next
    # user of the pooled connection; running it at every begin keeps it after a commit().
    name = session.info.get(SCHEMA_KEY)
    if name is not None:
        connection.exec_driver_sql(f"SET LOCAL search_path TO {_quote(connection.dialect, name)}")
    session.info[APPLIED_SCHEMA_KEY] = name


def _quote(dialect: Dialect, name: str) -> str:
    return dialect.identifier_preparer.quote_identifier(validate_schema_name(name))


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

    async def use_schema(self, name: str | None) -> None:
        """Make the unit's statements target schema ``name`` (None: the server's default)."""
        if name is not None:
            validate_schema_name(name)
        info = self.session.info
        info[SCHEMA_KEY] = name
        connection = await self.session.connection()  # begins, and applies the schema, if new
        if info.get(APPLIED_SCHEMA_KEY) != name:
            target = "DEFAULT" if name is None else _quote(connection.dialect, name)
            await connection.exec_driver_sql(f"SET LOCAL search_path TO {target}")
            info[APPLIED_SCHEMA_KEY] = name


refuse_lazy_loads(UnitSession)


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


@contextlib.asynccontextmanager
async def run_unit(
    factory: async_sessionmaker[AsyncSession],
    current: ContextVar[UnitOfWork | None],
    settings: DatabaseSettings,
) -> AsyncIterator[UnitOfWork]:
    """Run one unit of work; commit if the body returns, roll back if it raises.

    An outage (pool timeout, unreachable server, lost connection) leaves as
    DatabaseUnavailableError; every other exception leaves unchanged.
    """
    session = factory()
    session.info[SCHEMA_KEY] = settings.postgres_schema
    unit = UnitOfWork(session)
    token = current.set(unit)
    try:
        async with _ending(unit):
            yield unit
    except Exception as error:
        outage = outage_error(error, settings)
        if outage is None:
            raise
        raise outage from error
    finally:
        # The unit may end in another context than it began (a generator closed by the
        # garbage collector); the variable then belongs to a context that is gone anyway.
        with contextlib.suppress(ValueError):
            current.reset(token)


@contextlib.asynccontextmanager
async def _ending(unit: UnitOfWork) -> AsyncIterator[None]:
    """Commit or roll back, then close; the body's own error always wins over a close error."""
    failure: BaseException | None = None
    try:
        async with unit.session:  # closes to completion, even when the task is cancelled
            try:
                yield
            except BaseException as error:
                failure = error
                raise
            if unit.rollback_only:
                await unit.session.rollback()
            else:
                await unit.session.commit()
    except BaseException as error:
        if failure is None or error is failure:
            raise
        # Closing a session whose connection broke can raise a second error; the first one
        # explains what happened, so it is the one that propagates.
        logger.warning("Closing the session failed after %r", failure, exc_info=error)
    if failure is not None:
        raise failure
