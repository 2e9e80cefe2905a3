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
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Final

from sqlalchemy.ext.asyncio import AsyncSession

from dbscope._exceptions import (
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

__all__ = [
    "add_exception_handlers",
    "http_error",
    "lease_dependency",
    "service_unavailable",
    "session_dependency",
]


# dbscope's errors that are the database's state rather than a bug, and so not a 500.
HANDLED: Final = (DatabaseUnavailableError, StatementTimeoutError, RetriesExhaustedError)


def service_unavailable(error: DatabaseUnavailableError) -> HTTPException:
    """The 503 response for an outage: ``Retry-After`` and a JSON body naming the cause."""
    return HTTPException(
        status_code=503,
        detail={"cause": error.cause, "message": str(error)},
        headers={"Retry-After": str(error.retry_after)},
    )


def http_error(
    error: DatabaseUnavailableError | StatementTimeoutError | RetriesExhaustedError,
) -> HTTPException:
    """The response for one of dbscope's errors, logged as one line without a traceback.

    An outage answers 503 with ``Retry-After``, a statement timeout 504, a transaction whose
    retries ran out 409; the JSON body names the cause.
    """
    if isinstance(error, DatabaseUnavailableError):
        logger.warning("Answering 503: %s", error)
        return service_unavailable(error)
    if isinstance(error, StatementTimeoutError):
        logger.warning("Answering 504: %s", error)
        return HTTPException(504, {"cause": "statement_timeout", "message": str(error)})
    logger.warning("Answering 409: %s", error)
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


def session_dependency(
    db: "Database", options: UnitOptions | None = None
) -> Callable[..., Awaitable[AsyncSession]]:
    """Build the dependency behind ``db.session`` (use ``db.session``, not this).

    Every dependency and endpoint of one request that asks for it gets the same session.
    """

    async def request_unit_of_work(response: Response) -> AsyncIterator[UnitOfWork]:
        try:
            async with db.unit_of_work(options) as unit:
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
    """Build the dependency behind ``db.leased`` (use ``db.leased``, not this).

    Like ``db.session``, a plain dependency over a function-scoped one, so the connection goes
    back to the pool before the response is sent, whichever scope the user's ``Depends`` has.
    Every use within one request gets the same connection.
    """

    async def request_lease() -> AsyncIterator[Any]:
        try:
            async with db.lease() as connection:
                yield connection
        except DatabaseUnavailableError as error:
            raise http_error(error) from error

    async def leased(
        connection: Annotated[Any, Depends(request_lease, scope="function")],
    ) -> Any:
        return connection

    return leased
