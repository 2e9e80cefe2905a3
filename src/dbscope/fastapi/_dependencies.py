"""The request's unit of work and lease as FastAPI dependencies, cached per Database."""

# No `from __future__ import annotations` here: FastAPI reads the dependency signatures built
# in session_dependency(), whose annotations name local functions.
import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Annotated, Any, Final, cast

from fastapi import Depends, HTTPException, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from dbscope._async_session import SessionT
from dbscope._exceptions import DatabaseUnavailableError, LifecycleError, NoSessionError
from dbscope._pool import Client, waiting_client
from dbscope._retry_decorator import refuse_misordered
from dbscope._unavailable import LineFullError
from dbscope._unit import UnitOfWork
from dbscope._unit_options import UnitOptions
from dbscope.fastapi._early_retries import EarlyRetries
from dbscope.fastapi._errors import HANDLED, Handled, http_error
from dbscope.fastapi._tags import request_id, request_tags

if TYPE_CHECKING:
    from dbscope._database import Database

# The dependencies of each Database, by options: FastAPI shares a dependency's value within
# a request by the dependency's identity, so the same options must give the same function.
# Weak keys: the cache keeps no Database alive (the dependencies hold it weakly too).
_sessions: "weakref.WeakKeyDictionary[Database[Any], dict[UnitOptions, Callable[..., Any]]]" = (
    weakref.WeakKeyDictionary()
)
_leases: "weakref.WeakKeyDictionary[Database[Any], Callable[..., Any]]" = (
    weakref.WeakKeyDictionary()
)
# The request scope's key for the request units of every Database open in the request.
REQUEST_UNITS: Final = "dbscope.request_units"
# The clients each Database refused because its wait line was full, and when they may return.
_early_retries: "weakref.WeakKeyDictionary[Database[Any], EarlyRetries]" = (
    weakref.WeakKeyDictionary()
)


def early_retries(db: "Database[Any]") -> EarlyRetries:
    """The clients ``db``'s requests refused for a full wait line (``_early_retries.py``)."""
    found = _early_retries.get(db)
    if found is None:
        # Its holds are counted where db.stats() and the metrics read them.
        found = _early_retries[db] = EarlyRetries(db._lifecycle.count_held)
    return found


def _alive(db: "weakref.ref[Database[Any]]") -> "Database[Any]":
    """The Database a dependency belongs to, which holds it weakly (the dependencies are
    cached per Database, and must not keep it alive)."""
    database = db()
    if database is None:
        message = (
            "The Database this dependency was made from no longer exists: nothing kept a "
            "reference to it, and it was garbage-collected. Keep it for the app's life, in a "
            "module variable (db = Database(...)), and take db.session from it."
        )
        raise LifecycleError(message)
    return database


def early_retry() -> HTTPException:
    """The 503 of a request held because its client came back before its Retry-After."""
    message = (
        "The service is overloaded, and this client asked again before the Retry-After it was "
        "given had passed: the request was held until then and not run. Wait as Retry-After "
        "asks before retrying."
    )
    error = DatabaseUnavailableError(message, cause="pool_timeout", retry_after=1)
    return http_error(error)


def client_of(request: Request) -> tuple["asyncio.Task[Any] | None", Client] | None:
    """The request's task and its client's connection, where the server tells whether the
    client hung up (uvicorn's request cycle does: ``receive`` is its method); else None."""
    cycle = getattr(request.receive, "__self__", None)
    if cycle is None or not isinstance(getattr(cycle, "disconnected", None), bool):
        return None
    return asyncio.current_task(), cycle


def _refusal(
    error: Handled, scope: MutableMapping[str, Any], early: EarlyRetries, database: str
) -> HTTPException:
    """``error`` of the Database named ``database`` as the request's answer; a refusal for a
    full wait line is remembered, so that its client's next request waits out the
    Retry-After it was given."""
    if isinstance(error, DatabaseUnavailableError) and isinstance(error.__cause__, LineFullError):
        early.refused(scope, error.retry_after)
    return http_error(error, database=database)


def _http_request(connection: HTTPConnection, dependency: str, per_message: str) -> Request:
    """``connection``, an HTTP request; a WebSocket is refused, with what to use instead.

    FastAPI gives a WebSocket route no ``Request``: asked for one, it failed with a TypeError
    of its own. A unit of work (or a lease) for a WebSocket's whole life would hold a pooled
    connection, and a transaction, as long as the socket stays open.
    """
    if isinstance(connection, Request):
        return connection
    message = (
        f"{dependency} serves HTTP requests, not WebSockets: a WebSocket would hold its "
        "connection for as long as it stays open. Open one per message inside the WebSocket "
        f"endpoint: `async with {per_message}:`."
    )
    raise NoSessionError(message)


def session_dependency(
    db: "Database[SessionT]", options: UnitOptions
) -> Callable[..., Awaitable[SessionT]]:
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
    # The session is of the Database's session class (_session_classes.py).
    return cast("Callable[..., Awaitable[SessionT]]", dependency)


def _session_dependency(
    db: "weakref.ref[Database[Any]]", options: UnitOptions, tagged: bool, header: str | None
) -> Callable[..., Awaitable[AsyncSession]]:
    early = early_retries(_alive(db))  # the dependency holds the Database weakly

    async def request_unit_of_work(
        request: HTTPConnection, response: Response
    ) -> AsyncIterator[UnitOfWork]:
        request = _http_request(request, "db.session", "db.transaction() as session")
        database = _alive(db)
        if await early.hold(request.scope):
            raise early_retry()
        # Until the endpoint returns, its first statement is not run if the client hung up
        # while it waited in line for a connection (_pool.py).
        waiting_client.set(client_of(request))
        try:
            if tagged:  # the unit's statements name the route (docs/sql-tags.md)
                tags, named = request_tags(request.scope), request_id(request, header)
                units = database.unit_of_work(options, tags=tags, request_id=named)
            else:
                units = database.unit_of_work(options)
            async with units as unit:
                # `response` is the one FastAPI injects; an endpoint that set an error status
                # on it reports a failure without raising. Asked at the commit, whoever makes
                # it: the unit's end, or an attempt of @db.retry() inside the endpoint.
                unit.failed_quietly = lambda: (response.status_code or 0) >= 400
                unit.endpoint = request.scope.get("endpoint")
                refuse_misordered(unit.endpoint)
                # Every Database's request unit, for a @db.retry() attempt to roll back
                # together: another's work kept across attempts would be kept once per attempt.
                unit.request_units = request.scope.setdefault(REQUEST_UNITS, [])
                unit.request_units.append(unit)
                try:
                    yield unit
                finally:
                    unit.request_units.remove(unit)
                    # The commit, and what runs after it, is served whatever the client does.
                    waiting_client.set(None)
        except HANDLED as error:
            raise _refusal(error, request.scope, early, database.name) from error

    async def session(
        unit: Annotated[UnitOfWork, Depends(request_unit_of_work, scope="function")],
    ) -> AsyncSession:
        return unit.session

    return session


def lease_dependency(db: "Database[Any]") -> Callable[..., Awaitable[Any]]:
    """The dependency behind ``db.leased``.

    Like ``db.session``, a plain dependency over a function-scoped one, so the connection goes
    back to the pool before the response is sent, whichever scope the user's ``Depends`` has.
    Every use within one request gets the same connection.
    """
    dependency = _leases.get(db)
    if dependency is None:
        dependency = _leases[db] = _lease_dependency(weakref.ref(db))
    return dependency


def _lease_dependency(db: "weakref.ref[Database[Any]]") -> Callable[..., Awaitable[Any]]:
    early = early_retries(_alive(db))  # the dependency holds the Database weakly

    async def request_lease(request: HTTPConnection) -> AsyncIterator[Any]:
        request = _http_request(request, "db.leased", "db.lease() as connection")
        database = _alive(db)
        if await early.hold(request.scope):
            raise early_retry()
        waiting_client.set(client_of(request))
        try:
            async with database.lease() as connection:
                waiting_client.set(None)
                yield connection
        except HANDLED as error:
            raise _refusal(error, request.scope, early, database.name) from error

    async def leased(
        connection: Annotated[Any, Depends(request_lease, scope="function")],
    ) -> Any:
        return connection

    return leased
