"""The answers to dbscope's errors in a FastAPI app, and the throttled log of them."""

import asyncio
import contextlib
import logging
import time
from typing import Final, get_args

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler

from dbscope._exceptions import (
    ClientDisconnectedError,
    ConstraintViolationError,
    DatabaseUnavailableError,
    RetriesExhaustedError,
    StatementTimeoutError,
)

logger = logging.getLogger("dbscope")

# dbscope's errors that are the database's state rather than a bug, and so not a 500.
Handled = (
    DatabaseUnavailableError
    | StatementTimeoutError
    | RetriesExhaustedError
    | ConstraintViolationError
    | ClientDisconnectedError
)
HANDLED: Final[tuple[type[Handled], ...]] = get_args(Handled)
# nginx's status for a request whose client closed the connection first: nobody receives it,
# but the server's log and metrics show it for what it is.
CLIENT_CLOSED_REQUEST: Final = 499
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
    """The 503 response for an outage: ``Retry-After`` and a JSON body naming the cause, not
    where the database is (the log says that)."""
    detail: dict[str, object] = {"cause": error.cause, "message": error.public_message}
    if error.outcome_unknown:  # lost during the COMMIT: the client must not repeat it blindly
        detail["committed"] = "unknown"
    return HTTPException(
        status_code=503, detail=detail, headers={"Retry-After": str(error.retry_after)}
    )


def http_error(error: Handled, *, database: str | None = None) -> HTTPException:
    """The response for one of dbscope's errors, logged without a traceback.

    An outage answers 503 with ``Retry-After``, a statement timeout 504, a transaction whose
    retries ran out 409, a constraint that failed at COMMIT 409 naming the constraint (never
    the row's values), a request whose client hung up while it waited in line 499; the JSON
    body names the cause. The first of each kind is logged at once, then one line per 5 s
    counts the rest.

    Args:
        error: the error.
        database: the name of the Database whose unit raised it (``db.name``), for the log
            line, where an app of several Databases tells them apart; never in the body.

    Raises:
        TypeError: ``error`` is none of those five: a bug's error is a 500, not a conflict.
    """
    logged = str(error) if database is None else f"{error} (Database {database!r})"
    if isinstance(error, DatabaseUnavailableError):
        _error_log.warn(f"503 ({error.cause})", logged)
        return service_unavailable(error)
    if isinstance(error, StatementTimeoutError):
        _error_log.warn("504 (statement_timeout)", logged)
        return HTTPException(504, {"cause": "statement_timeout", "message": str(error)})
    if isinstance(error, ConstraintViolationError):
        _error_log.warn("409 (constraint_violation)", logged)
        detail = {
            "cause": "constraint_violation",
            "constraint": error.constraint,
            "message": str(error),
        }
        return HTTPException(409, detail)
    if isinstance(error, ClientDisconnectedError):
        _error_log.warn("499 (client_disconnected)", logged)
        detail = {"cause": "client_disconnected", "message": str(error)}
        return HTTPException(CLIENT_CLOSED_REQUEST, detail)
    if isinstance(error, RetriesExhaustedError):
        _error_log.warn("409 (conflict)", logged)
        return HTTPException(409, {"cause": "conflict", "message": str(error)})
    # Another error is a bug to be seen as one (a 500 with its traceback), not a conflict.
    message = f"http_error() answers dbscope's errors of the database's state, not {error!r}"
    raise TypeError(message)


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
