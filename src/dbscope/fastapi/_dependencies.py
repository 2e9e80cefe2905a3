"""The request's unit of work and lease as FastAPI dependencies, cached per Database."""

# No `from __future__ import annotations` here: FastAPI reads the dependency signatures built
# in session_dependency(), whose annotations name local functions.
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope._unit_of_work import UnitOfWork, UnitOptions
from dbscope.fastapi._errors import HANDLED, http_error
from dbscope.fastapi._tags import request_id, request_tags

if TYPE_CHECKING:
    from dbscope._database import Database

# The dependencies of each Database, by options: FastAPI shares a dependency's value within
# a request by the dependency's identity, so the same options must give the same function.
# Weak keys: the cache keeps no Database alive (the dependencies hold it weakly too).
_sessions: "weakref.WeakKeyDictionary[Database, dict[UnitOptions, Callable[..., Any]]]" = (
    weakref.WeakKeyDictionary()
)
_leases: "weakref.WeakKeyDictionary[Database, Callable[..., Any]]" = weakref.WeakKeyDictionary()


def session_dependency(
    db: "Database", options: UnitOptions
) -> Callable[..., Awaitable[AsyncSession]]:
    """The dependency behind ``db.session`` and ``db.session_with(...)``, one per options.

    Every dependency and endpoint of one request that asks for it gets the same session.
    """
    by_options = _sessions.setdefault(db, {})
    dependency = by_options.get(options)
    if dependency is None:
        settings = db.settings
        tagged = settings.sql_comments != "off"
        header = settings.request_id_header if tagged else None
        dependency = _session_dependency(weakref.ref(db), options, tagged, header)
        by_options[options] = dependency
    return dependency


def _session_dependency(
    db: "weakref.ref[Database]", options: UnitOptions, tagged: bool, header: str | None
) -> Callable[..., Awaitable[AsyncSession]]:
    async def request_unit_of_work(
        request: Request, response: Response
    ) -> AsyncIterator[UnitOfWork]:
        database = db()
        assert database is not None, "the Database of this app was garbage-collected"
        try:
            # With SQL comments on, the unit's statements name the route (docs/sql-tags.md).
            units = (
                database.unit_of_work(
                    options,
                    tags=request_tags(request.scope),
                    request_id=request_id(request, header),
                )
                if tagged
                else database.unit_of_work(options)
            )
            async with units as unit:
                yield unit
                # `response` is the one FastAPI injects; an endpoint that set an error status
                # on it reports a failure without raising.
                if response.status_code is not None and response.status_code >= 400:
                    unit.rollback_only = True
        except HANDLED as error:
            raise http_error(error) from error

    async def session(
        unit: Annotated[UnitOfWork, Depends(request_unit_of_work, scope="function")],
    ) -> AsyncSession:
        return unit.session

    return session


def lease_dependency(db: "Database") -> Callable[..., Awaitable[Any]]:
    """The dependency behind ``db.leased``.

    Like ``db.session``, a plain dependency over a function-scoped one, so the connection goes
    back to the pool before the response is sent, whichever scope the user's ``Depends`` has.
    Every use within one request gets the same connection.
    """
    dependency = _leases.get(db)
    if dependency is None:
        dependency = _leases[db] = _lease_dependency(weakref.ref(db))
    return dependency


def _lease_dependency(db: "weakref.ref[Database]") -> Callable[..., Awaitable[Any]]:
    async def request_lease() -> AsyncIterator[Any]:
        database = db()
        assert database is not None, "the Database of this app was garbage-collected"
        try:
            async with database.lease() as connection:
                yield connection
        except HANDLED as error:
            raise http_error(error) from error

    async def leased(
        connection: Annotated[Any, Depends(request_lease, scope="function")],
    ) -> Any:
        return connection

    return leased
