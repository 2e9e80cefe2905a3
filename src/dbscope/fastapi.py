"""FastAPI integration: a request is one unit of work, committed before the response is sent.

``Depends(db.session)`` resolves to :func:`session_dependency`'s plain dependency, whose own
parameter is a *function-scoped* yield dependency (``Depends(..., scope="function")``).
FastAPI ends a function-scoped dependency after the endpoint returns and before it sends the
response, so the commit happens while the client still waits: a failed commit becomes an
error response, never a 2xx. The user writes no ``scope=`` themselves.

How a request's transaction ends:

============================================  ==========================================
the endpoint ...                              the transaction
============================================  ==========================================
returns a value, or a Response                commits
raises anything (HTTPException, validation    rolls back; the exception propagates
error, a handled custom exception, ...)       unchanged, so the status code is the app's
sets ``response.status_code >= 400`` on the   rolls back
injected ``Response``
is cancelled (client gone, timeout)           rolls back; the connection returns
============================================  ==========================================

An endpoint that *returns* an error response (``return JSONResponse(status_code=400)``)
commits, as Django's ``ATOMIC_REQUESTS`` and Rails do: FastAPI never shows that response to a
dependency. Raise ``HTTPException`` instead, or call ``await session.rollback()`` before
returning.

An outage (no free connection within ``pool_timeout``, an unreachable server, a connection
lost mid-request) becomes ``503 Service Unavailable`` with a ``Retry-After`` header.

``Depends(db.leased)`` lends the request a pooled driver connection instead of a session
(see ``Database.lease()``): built the same way, it goes back to the pool before the response
is sent, and its outages answer 503 the same way. :func:`add_exception_handlers` gives the
same answers to dbscope's errors raised elsewhere in a request (``async with db.lease()``, a
``db.transaction()`` block in an endpoint).

This is the only module of dbscope that imports FastAPI or Starlette.
"""

# No `from __future__ import annotations` here: FastAPI reads the dependency signatures built
# in session_dependency(), whose annotations name local functions.
import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Final

from sqlalchemy.ext.asyncio import AsyncSession

from dbscope._exceptions import (
    ConstraintViolationError,
    DatabaseUnavailableError,
    RetriesExhaustedError,
    StatementTimeoutError,
)
from dbscope._unit_of_work import UnitOfWork, UnitOptions

try:
    from fastapi import Depends, FastAPI, HTTPException, Request, Response
    from fastapi.exception_handlers import http_exception_handler
except ModuleNotFoundError as error:  # pragma: no cover - exercised only without FastAPI
    message = "dbscope.fastapi needs FastAPI: pip install 'dbscope[fastapi]'"
    raise ModuleNotFoundError(message, name=error.name) from error

if TYPE_CHECKING:
    from dbscope._database import Database

logger = logging.getLogger("dbscope")

__all__ = ["add_exception_handlers", "http_error", "service_unavailable"]

# dbscope's errors that are the database's state rather than a bug, and so not a 500.
HANDLED: Final = (
    DatabaseUnavailableError,
    StatementTimeoutError,
    RetriesExhaustedError,
    ConstraintViolationError,
)
Handled = (
    DatabaseUnavailableError
    | StatementTimeoutError
    | RetriesExhaustedError
    | (ConstraintViolationError)
)
# Under overload every refused request would log a line: the first of each kind is logged at
# once, the rest are counted and summed up in one line per interval.
SUMMARY_INTERVAL: Final = 5.0


class _ErrorLog:
    """Logs the first answer of each kind, then one summary line per interval, with counts."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._since: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def warn(self, kind: str, text: str) -> None:
        now = time.monotonic()
        since = self._since.get(kind)
        if since is None or now - since >= self.interval:
            self._summarize(kind)
            self._since[kind] = now
            logger.warning("Answering %s: %s", kind, text)
            return
        count = self._counts.get(kind, 0)
        self._counts[kind] = count + 1
        if count == 0:  # the first one held back in this interval: summed up at its end
            with contextlib.suppress(RuntimeError):  # no loop: the next answer sums them up
                asyncio.get_running_loop().call_later(
                    self.interval - (now - since), self._summarize, kind
                )

    def _summarize(self, kind: str) -> None:
        count = self._counts.pop(kind, 0)
        if count:
            self._since[kind] = time.monotonic()
            logger.warning(
                "Answered %s %d more times in the last %.0f s", kind, count, self.interval
            )


_error_log = _ErrorLog(SUMMARY_INTERVAL)


def service_unavailable(error: DatabaseUnavailableError) -> HTTPException:
    """The 503 response for an outage: ``Retry-After`` and a JSON body naming the cause."""
    return HTTPException(
        status_code=503,
        detail={"cause": error.cause, "message": str(error)},
        headers={"Retry-After": str(error.retry_after)},
    )


def http_error(error: Handled) -> HTTPException:
    """The response for one of dbscope's errors, logged without a traceback.

    An outage answers 503 with ``Retry-After``, a statement timeout 504, a transaction whose
    retries ran out 409, a constraint that failed at COMMIT 409 naming the constraint (never
    the row's values); the JSON body names the cause. The first of each kind is logged at
    once, then one line per 5 s counts the rest.
    """
    if isinstance(error, DatabaseUnavailableError):
        _error_log.warn(f"503 ({error.cause})", str(error))
        return service_unavailable(error)
    if isinstance(error, StatementTimeoutError):
        _error_log.warn("504 (statement_timeout)", str(error))
        return HTTPException(504, {"cause": "statement_timeout", "message": str(error)})
    if isinstance(error, ConstraintViolationError):
        _error_log.warn("409 (constraint_violation)", str(error))
        detail = {
            "cause": "constraint_violation",
            "constraint": error.constraint,
            "message": str(error),
        }
        return HTTPException(409, detail)
    _error_log.warn("409 (conflict)", str(error))
    return HTTPException(409, {"cause": "conflict", "message": str(error)})


def add_exception_handlers(app: FastAPI) -> None:
    """Answer dbscope's errors raised anywhere in ``app`` as ``Depends(db.session)`` does.

    ``db.session`` and ``db.leased`` map their own errors; these handlers do the same for the
    rest: ``async with db.lease()`` or ``db.transaction()`` inside an endpoint, a service
    called by one. Call it once, after creating the app.
    """

    async def handle(request: Request, error: Exception) -> Response:
        assert isinstance(error, HANDLED)
        return await http_exception_handler(request, http_error(error))

    for kind in HANDLED:
        app.add_exception_handler(kind, handle)


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
        dependency = by_options[options] = _session_dependency(weakref.ref(db), options)
    return dependency


def _session_dependency(
    db: "weakref.ref[Database]", options: UnitOptions
) -> Callable[..., Awaitable[AsyncSession]]:
    async def request_unit_of_work(response: Response) -> AsyncIterator[UnitOfWork]:
        database = db()
        assert database is not None, "the Database of this app was garbage-collected"
        try:
            async with database.unit_of_work(options) as unit:
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
