"""Re-running whole units of work after serialization failures and deadlocks.

Under SERIALIZABLE or REPEATABLE READ, or whenever two transactions lock rows in opposite
orders, the database aborts one of them and expects the application to run it again from the
start. Retryability is read from the SQLSTATE (40001 serialization failure, 40P01 deadlock) or
the MySQL/MariaDB error code (1213 deadlock; 1205 lock wait timeout, on request), never from
the exception class, which differs between asyncpg and psycopg for the same failure.

Each retry waits an exponential backoff with full jitter, is logged, and is counted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope._exceptions import ConfigurationError, NoSessionError, RetriesExhaustedError
from dbscope._outages import mysql_code, sqlstate

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from dbscope._unit_of_work import UnitOfWork

logger = logging.getLogger("dbscope")

RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
MYSQL_DEADLOCK = 1213
MYSQL_LOCK_WAIT_TIMEOUT = 1205

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to re-run a unit of work.

    Attributes:
        attempts: runs in all, the first included (at least 1).
        backoff: the first wait in seconds; each next one doubles, up to ``max_backoff``;
            the actual wait is drawn at random between 0 and that (full jitter).
        max_backoff: the longest wait in seconds.
        lock_timeouts: also retry MySQL/MariaDB lock wait timeouts (1205).
    """

    attempts: int = 3
    backoff: float = 0.05
    max_backoff: float = 1.0
    lock_timeouts: bool = False

    def __post_init__(self) -> None:
        if self.attempts < 1:
            message = f"attempts must be at least 1, got {self.attempts}."
            raise ConfigurationError(message)
        if self.backoff < 0 or self.max_backoff < 0:
            message = "backoff and max_backoff must be 0 or more seconds."
            raise ConfigurationError(message)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography

    def is_retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is a conflict that running the unit again can resolve."""
        if not isinstance(error, DBAPIError):
            return False
        if sqlstate(error.orig) in RETRYABLE_SQLSTATES:
            return True
        code = mysql_code(error.orig)
        return code == MYSQL_DEADLOCK or (self.lock_timeouts and code == MYSQL_LOCK_WAIT_TIMEOUT)

    def describe(self, error: BaseException) -> str:
        """A short name for the conflict, for logs and messages."""
        assert isinstance(error, DBAPIError)
        code = mysql_code(error.orig)
        if code is not None:  # MySQL reports its deadlocks with SQLSTATE 40001 as well
            return "deadlock" if code == MYSQL_DEADLOCK else f"lock wait timeout ({code})"
        state = sqlstate(error.orig)
        return {"40001": "serialization failure", "40P01": "deadlock"}.get(str(state), f"{state}")


class Attempt:
    """One run of a retried unit of work: ``async with attempt as session:``."""

    def __init__(self, retrying: Retrying, number: int) -> None:
        self.number = number
        self._retrying = retrying
        self._unit: AbstractAsyncContextManager[UnitOfWork] | None = None

    async def __aenter__(self) -> AsyncSession:
        self._unit = self._retrying.open_unit()
        unit = await self._unit.__aenter__()
        return unit.session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        assert self._unit is not None
        failure: BaseException | None
        try:
            await self._unit.__aexit__(exc_type, exc, traceback)
            failure = exc  # the unit re-raised the body's own error, if any, by returning
        except Exception as error:
            failure = error  # an error at commit, or the body's error translated
        if failure is None:
            self._retrying.succeeded()
            return False
        if isinstance(failure, Exception) and self._retrying.failed(self.number, failure):
            return True  # swallowed: the loop runs the unit again
        if failure is exc:
            return False
        raise failure


class Retrying:
    """The attempts of one retried unit of work; see ``Database.retrying()``.

    Attributes:
        retries: how many times the unit has been re-run so far.
    """

    def __init__(
        self,
        open_unit: Callable[[], AbstractAsyncContextManager[UnitOfWork]],
        policy: RetryPolicy,
    ) -> None:
        self.open_unit = open_unit
        self.policy = policy
        self.retries = 0
        self._number = 0
        self._done = False

    def __aiter__(self) -> AsyncIterator[Attempt]:
        return self._attempts()

    async def _attempts(self) -> AsyncIterator[Attempt]:
        while not self._done:
            if self._number > 0:
                await asyncio.sleep(self.policy.delay(self._number))
                self.retries += 1
            self._number += 1
            yield Attempt(self, self._number)

    def succeeded(self) -> None:
        """Stop: the last attempt committed."""
        self._done = True

    def failed(self, number: int, error: Exception) -> bool:
        """Decide about a failed attempt: True to run again, else raise."""
        if not self.policy.is_retryable(error):
            self._done = True
            return False  # the attempt's own error propagates unchanged
        conflict = self.policy.describe(error)
        if number >= self.policy.attempts:
            self._done = True
            message = (
                f"The unit of work failed with a {conflict} on all {number} attempts; the "
                "conflicting work is too contended. Retry later, or raise attempts."
            )
            raise RetriesExhaustedError(message, attempts=number) from error
        logger.warning(
            "Retrying a unit of work after a %s (attempt %d of %d)",
            conflict,
            number,
            self.policy.attempts,
        )
        return True


def retry_in_unit(
    current: Callable[[], UnitOfWork | None], policy: RetryPolicy
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorate an async function (an endpoint) to re-run it in the current unit of work.

    The function runs inside the request's unit of work; each attempt is committed by the
    decorator, so that a conflict at COMMIT is retried too, and rolled back before a retry.
    """

    def decorate(function: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(function)
        async def retried(*args: P.args, **kwargs: P.kwargs) -> T:
            unit = current()
            if unit is None:
                message = (
                    f"{function.__qualname__} is decorated with db.retry() but runs outside a "
                    "unit of work: make the endpoint depend on db.session (a `Session` "
                    "parameter, or dependencies=[Depends(db.session)])."
                )
                raise NoSessionError(message)
            for number in range(1, policy.attempts + 1):
                try:
                    result = await function(*args, **kwargs)
                    await unit.session.commit()
                except Exception as error:
                    await unit.session.rollback()
                    if not policy.is_retryable(error):
                        raise
                    conflict = policy.describe(error)
                    if number == policy.attempts:
                        message = (
                            f"{function.__qualname__} failed with a {conflict} on all "
                            f"{number} attempts."
                        )
                        raise RetriesExhaustedError(message, attempts=number) from error
                    logger.warning(
                        "Retrying %s after a %s (attempt %d of %d)",
                        function.__qualname__,
                        conflict,
                        number,
                        policy.attempts,
                    )
                    await asyncio.sleep(policy.delay(number))
                else:
                    return result
            raise AssertionError("unreachable")  # pragma: no cover

        return retried

    return decorate


def retry_policy(**options: Any) -> RetryPolicy:
    """A RetryPolicy from keyword arguments, raising ConfigurationError for unknown ones."""
    try:
        return RetryPolicy(**options)
    except TypeError as error:
        raise ConfigurationError(f"Invalid retry option: {error}") from None
