"""Re-running whole units of work after serialization failures and deadlocks.

Under SERIALIZABLE or REPEATABLE READ, or whenever two transactions lock rows in opposite
orders, the database aborts one of them and expects the application to run it again from the
start. Whether an error is such a conflict is the backend's verdict from its own codes
(``dbscope._dialects``: SQLSTATE 40001 and 40P01, and 55P03 on request; MySQL/MariaDB 1213,
and 1205 on request; SQLite's SQLITE_BUSY), never the exception class, which differs between
asyncpg and psycopg for the same failure.

There is one loop, :class:`Retrying`: ``db.retrying()`` hands its attempts to the caller, each
a fresh unit of work, and ``@db.retry()`` runs the decorated endpoint through the same loop
over the request's own unit (``_retry_decorator.py``). Each retry waits an exponential
backoff with full jitter, is logged, and is counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextvars import Token
from dataclasses import dataclass, fields
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, ParamSpec, TypedDict, TypeVar, cast

from dbscope._async_session import SessionT
from dbscope._commit_hooks import CommitCount, count_commits, stop_counting
from dbscope._dialects import Backend
from dbscope._errors import conflict_in
from dbscope._exceptions import ConfigurationError, RetriesExhaustedError
from dbscope._unit_options import is_finite_number

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from dbscope._session import UnitState
    from dbscope._unit import UnitOfWork

logger = logging.getLogger("dbscope")

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently to re-run a unit of work.

    Pass one as ``db.retrying(policy=...)`` or ``db.retry(policy=...)``, or its fields as
    keyword arguments.

    Attributes:
        attempts: runs in all, the first included (at least 1).
        backoff: the first wait in seconds; each next one doubles, up to ``max_backoff``;
            the actual wait is drawn at random between 0 and that (full jitter).
        max_backoff: the longest wait in seconds.
        lock_timeouts: also retry lock waits that timed out: MySQL/MariaDB's 1205,
            PostgreSQL's 55P03 (``lock_timeout``, or ``NOWAIT`` finding the row locked).

    Raises:
        ConfigurationError: a field that is no value for it (``attempts=2.5``,
            ``backoff=nan``, ``lock_timeouts="no"``, a ``max_backoff`` below ``backoff``),
            named as given.
    """

    attempts: int = 3
    backoff: float = 0.05
    max_backoff: float = 1.0
    lock_timeouts: bool = False

    def __post_init__(self) -> None:
        attempts = self.attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            message = (
                f"attempts={attempts!r} is not a number of runs; use an int of at least 1 "
                "(the first run included)."
            )
            raise ConfigurationError(message)
        for name in ("backoff", "max_backoff"):
            _check_seconds(name, getattr(self, name))
        if self.max_backoff < self.backoff:
            # min(max_backoff, backoff * 2**n) would never reach backoff: every wait capped.
            message = (
                f"max_backoff={self.max_backoff!r} is less than backoff={self.backoff!r}, the "
                "first wait, and caps every wait (backoff and its doubling would be ignored); "
                "use a max_backoff of at least backoff, or a smaller backoff."
            )
            raise ConfigurationError(message)
        if not isinstance(self.lock_timeouts, bool):
            message = f"lock_timeouts={self.lock_timeouts!r} is not a bool; use True or False."
            raise ConfigurationError(message)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography


def _check_seconds(name: str, value: object) -> None:
    """Refuse a wait (``backoff``, ``max_backoff``) that is not a finite number of seconds, 0
    or more."""
    if not is_finite_number(value) or value < 0:
        message = (
            f"{name}={value!r} is not a wait; use a finite number of seconds, 0 or more (an "
            "int or a float, e.g. 0.05)."
        )
        raise ConfigurationError(message)


class RetryFields(TypedDict, total=False):
    """RetryPolicy's fields as keyword arguments (``db.retry(attempts=5)``): typed, so that a
    checker refuses ``atempts=5`` where it is written, as the runtime check does."""

    attempts: int
    backoff: float
    max_backoff: float
    lock_timeouts: bool


RETRY_FIELDS: Final = tuple(field.name for field in fields(RetryPolicy))
# Why a conflict was not retried, after "<name> failed with a <conflict> ".
COMMITTED_BEFORE: Final = (
    "after it had committed part of its work (a commit() in its body, or another unit of work "
    "committed inside it: a transaction() of its own or of another Database, another "
    "Database's retried endpoint): running it again would repeat what that commit kept, so it "
    "was not retried. Commit only at the end of a retried unit, or retry what follows the "
    "commit as a unit of its own."
)
PRECEDED: Final = (
    "in a unit of work that had run statements before it began (a dependency that used the "
    "request's session, or another Database's request session, say): running it again alone "
    "would lose what they wrote, or act on what they read in the transaction that failed, so "
    "it was not retried. Run the unit's statements in the retried function: let the "
    "dependency hand it what it read from the request (a user's id), and the function load "
    "the rows; or read in the dependency through a read_session, which a retry leaves alone."
)


def retry_policy(policy: RetryPolicy | None = None, **options: Any) -> RetryPolicy:
    """``policy``, or a RetryPolicy from keyword arguments; ConfigurationError for a mix, a
    ``policy`` that is no RetryPolicy, or an unknown option."""
    if policy is not None:
        if not isinstance(policy, RetryPolicy):
            message = (
                f"policy={policy!r} is not a RetryPolicy; pass RetryPolicy(attempts=..., "
                "...), or its fields as keyword arguments (attempts=5)."
            )
            raise ConfigurationError(message)
        if options:
            message = (
                f"Pass either policy=RetryPolicy(...) or its fields, not both: got policy and "
                f"{', '.join(sorted(options))}."
            )
            raise ConfigurationError(message)
        return policy
    unknown = [f"{name}={value!r}" for name, value in options.items() if name not in RETRY_FIELDS]
    if unknown:
        verb = "is not a retry option" if len(unknown) == 1 else "are not retry options"
        message = (
            f"{', '.join(unknown)} {verb}; use {', '.join(RETRY_FIELDS)}, or "
            "policy=RetryPolicy(...)."
        )
        raise ConfigurationError(message)
    return RetryPolicy(**options)


class Attempt(Generic[SessionT]):
    """One run of a retried unit of work: ``async with attempt as session:``."""

    def __init__(self, retrying: Retrying[SessionT], number: int) -> None:
        self.number = number
        self._retrying = retrying
        self._unit: AbstractAsyncContextManager[UnitOfWork] | None = None
        self._state: UnitState | None = None
        self._commits = 0
        self._count = CommitCount()  # counted from __aenter__ on
        self._counting: Token[CommitCount | None] | None = None

    async def __aenter__(self) -> SessionT:
        self._unit = self._retrying.open_unit()
        unit = await self._unit.__aenter__()
        self._state = unit.state
        self._commits = unit.state.commits
        # Every unit's commits in this context, not only this unit's: a billing.transaction()
        # inside a db attempt, or billing's retried endpoint inside db's, kept its work already.
        self._count, self._counting = count_commits()
        return cast("SessionT", unit.session)

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
        finally:
            stop_counting(self._counting)
        if failure is None:
            self._retrying.succeeded()
            return False
        assert self._state is not None
        committed = self._state.commits > self._commits or self._count.value > 0
        if isinstance(failure, Exception) and self._retrying.failed(
            self.number, failure, committed
        ):
            return True  # swallowed: the loop runs the unit again
        if failure is exc:
            return False
        raise failure


class Retrying(Generic[SessionT]):
    """The attempts of one retried unit of work; see ``Database.retrying()``.

    Attributes:
        retries: how many times the unit has been re-run so far.
    """

    def __init__(
        self,
        open_unit: Callable[[], AbstractAsyncContextManager[UnitOfWork]],
        policy: RetryPolicy,
        rules: Backend,
        name: str = "The unit of work",
        on_retry: Callable[[], object] | None = None,
        preceded: bool = False,
    ) -> None:
        self.open_unit = open_unit
        self.policy = policy
        self.rules = rules
        self.name = name
        self.retries = 0
        # The unit ran statements before the first attempt began: none may run again.
        self.preceded = preceded
        # Counts every retry of the Database's units (its metrics), beside this loop's own.
        self._on_retry = on_retry
        self._number = 0
        self._done = False

    def __aiter__(self) -> AsyncIterator[Attempt[SessionT]]:
        return self._attempts()

    async def _attempts(self) -> AsyncIterator[Attempt[SessionT]]:
        while not self._done:
            if self._number > 0:
                await asyncio.sleep(self.policy.delay(self._number))
                self.retries += 1
                if self._on_retry is not None:
                    self._on_retry()
            self._number += 1
            yield Attempt(self, self._number)

    def succeeded(self) -> None:
        """Stop: the last attempt committed."""
        self._done = True

    def failed(self, number: int, error: Exception, committed: bool = False) -> bool:
        """Decide about a failed attempt, which ``committed`` before it failed (a
        ``commit()`` in its body) or not: True to run again, else raise.

        Any commit counts, even of a transaction that only read: which statements wrote is
        not known here, and an attempt repeated after a commit that kept writes would keep
        them twice.
        """
        conflict = conflict_in(error, self.rules, lock_timeouts=self.policy.lock_timeouts)
        if conflict is None:
            self._done = True
            return False  # the attempt's own error propagates unchanged
        reason = COMMITTED_BEFORE if committed else PRECEDED if self.preceded else None
        if reason is not None:
            self._done = True
            message = f"{self.name} failed with a {conflict} {reason}"
            raise RetriesExhaustedError(message, attempts=number) from error
        if number >= self.policy.attempts:
            self._done = True
            message = (
                f"{self.name} failed with a {conflict} on all {number} attempts; the "
                "conflicting work is too contended. Retry later, or raise attempts."
            )
            raise RetriesExhaustedError(message, attempts=number) from error
        logger.warning(
            "Retrying %s after a %s (attempt %d of %d)",
            self.name[0].lower() + self.name[1:],
            conflict,
            number,
            self.policy.attempts,
        )
        return True
