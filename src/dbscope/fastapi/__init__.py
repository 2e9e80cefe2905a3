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

``app.include_router(health_router(db))`` serves Kubernetes' probes: ``/livez``, which never
asks the database, and ``/readyz``, which answers ``db.health()`` without waiting in the pool.

``app.add_middleware(ReadYourWrites)`` carries each client's write tokens from one request to
the next (a cookie for browsers, a header for API clients), so that with read replicas a
client's reads see its own earlier writes (docs/replicas.md).

This is the only package of dbscope that imports FastAPI or Starlette.
"""

try:
    import fastapi  # noqa: F401 - only to say what to install when it is missing
except ModuleNotFoundError as error:  # pragma: no cover - exercised only without FastAPI
    message = "dbscope.fastapi needs FastAPI: pip install 'dbscope[fastapi]'"
    raise ModuleNotFoundError(message, name=error.name) from error

from dbscope.fastapi._errors import add_exception_handlers, http_error, service_unavailable
from dbscope.fastapi._health import health_router
from dbscope.fastapi._read_your_writes import ReadYourWrites

__all__ = [
    "ReadYourWrites",
    "add_exception_handlers",
    "health_router",
    "http_error",
    "service_unavailable",
]
