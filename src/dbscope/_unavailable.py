"""The 503s: a :class:`~dbscope.DatabaseUnavailableError` for each cause, its message naming
what was exceeded (:class:`Limits`), its ``Retry-After``; and the pool's own timeouts, which
``_errors.translate`` turns into them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from sqlalchemy.engine import URL
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from dbscope._dialects import Backend, backend
from dbscope._exceptions import DatabaseUnavailableError, UnavailableCause
from dbscope._urls import describe_location

RETRY_AFTER: Final[dict[UnavailableCause, int]] = {
    "pool_timeout": 1,
    "connection_lost": 1,
    "unreachable": 5,
}
# Retry-After for a request refused at once because the wait line is full: requests refused
# together come back together, and a spread of 1 to 2 s splits the crowd in two.
SHED_RETRY_AFTER: Final = (1, 2)


class LineFullError(PoolTimeoutError):
    """The pool is exhausted and ``pool_max_waiters`` checkouts already wait: refused at once."""


class AtConnectionLimitError(PoolTimeoutError):
    """The server refused the pool a new connection for a connection limit, and none of the
    pool's own came back within ``pool_timeout``; its message says so, without where."""


@dataclass(frozen=True)
class Limits:
    """What the messages quote: where the database is and the numbers that were exceeded."""

    url: URL
    pool_size: int = 0
    max_overflow: int = 0
    pool_timeout: float = 0.0
    pool_max_waiters: int | None = None
    statement_timeout: float | None = None

    @property
    def backend(self) -> Backend:
        """The rules of the database these limits belong to."""
        return backend(self.url.get_backend_name())


# What a client is told of an unreachable database: not where it is, which the log says.
UNREACHABLE: Final = "The database could not be reached."
AT_CONNECTION_LIMIT: Final = "The database refused a new connection: a connection limit is reached."


def at_connection_limit(orig: BaseException | None, limits: Limits) -> DatabaseUnavailableError:
    """The server answered, and refused a new connection for a connection limit reached
    (``orig``, the driver's error): it takes one again once others close."""
    message = (
        f"The database ({describe_location(limits.url)}) refused a new connection: a "
        f"connection limit is reached ({str(orig).strip()}). The server takes new ones again "
        "as others close (or as the hour of a per-hour limit passes); keep pool_size + "
        "max_overflow, times the processes that share the limit, within it, or raise it."
    )
    return DatabaseUnavailableError(
        message,
        cause="unreachable",
        retry_after=RETRY_AFTER["unreachable"],
        public_message=AT_CONNECTION_LIMIT,
    )


def unavailable(
    cause: UnavailableCause,
    limits: Limits,
    *,
    line_full: bool = False,
    demoted: bool = False,
    at_commit: bool = False,
    because: str | None = None,
) -> DatabaseUnavailableError:
    """The DatabaseUnavailableError for ``cause``, its message naming the numbers involved.

    ``line_full``: the pool's wait line was full (``pool_max_waiters``), not the wait too long.
    ``demoted``: the connection was dropped because its server refused a write as read-only.
    ``at_commit``: the connection was lost during the unit's own COMMIT, whose outcome is
    then unknown (the server may have committed before the answer was lost).
    ``because``: what the backend knows of a lost connection (``Backend.lost_because``),
    said instead: PgBouncer's queue waited out, where nothing ran.
    """
    if because is not None:
        return DatabaseUnavailableError(because, cause=cause, retry_after=RETRY_AFTER[cause])
    if cause == "connection_lost" and at_commit and not demoted:
        message = (
            "The connection to the database was lost during the COMMIT: whether the "
            "transaction committed is not known. Check before doing the work again, or make "
            "it safe to repeat (an idempotency key, an upsert)."
        )
        return DatabaseUnavailableError(
            message, cause=cause, retry_after=RETRY_AFTER[cause], outcome_unknown=True
        )
    message = _unavailable_message(cause, limits, line_full=line_full, demoted=demoted)
    public = UNREACHABLE if cause == "unreachable" else None
    retry_after = RETRY_AFTER[cause]
    if line_full:
        retry_after = random.choice(SHED_RETRY_AFTER)  # noqa: S311 - a spread, not a secret
    return DatabaseUnavailableError(
        message, cause=cause, retry_after=retry_after, public_message=public
    )


def _unavailable_message(
    cause: UnavailableCause, limits: Limits, *, line_full: bool, demoted: bool
) -> str:
    if line_full:  # the wait line of a pool_timeout
        return (
            f"All database connections are busy and pool_max_waiters="
            f"{limits.pool_max_waiters} requests already wait for one: the service is "
            "overloaded."
        )
    if cause == "pool_timeout":
        return (
            f"No database connection was free within pool_timeout={limits.pool_timeout}s "
            f"(pool_size={limits.pool_size}, max_overflow={limits.max_overflow}): the "
            "service is overloaded."
        )
    if cause == "unreachable":
        return f"The database ({describe_location(limits.url)}) could not be reached."
    if demoted:
        return (
            "The server refused a write as read-only: it is a standby now (a failover demoted "
            "it, or the URL names a standby). The pool drops its connections to it and "
            "reconnects; a multi-host URL with target_session_attrs=read-write finds the "
            "new primary."
        )
    return (
        "The connection to the database was lost while in use (server restart, terminated "
        "backend or network cut)."
    )
