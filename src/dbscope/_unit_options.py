"""UnitOptions: how one unit of work runs, the one options currency of every entry point.

Validated when made (a wrong value fails where it was written), checked against the backend
and the connected server's isolation levels when the unit is prepared (``UnitOptions.check``),
and hashable, so that what a unit's options mean is worked out once per value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypedDict, TypeGuard, get_args

from dbscope._dialects import SYNCHRONOUS_COMMIT, Backend, SynchronousCommit
from dbscope._exceptions import ConfigurationError
from dbscope._settings import SCHEMA_NAME

IsolationLevel = Literal["SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED"]
ISOLATION_LEVELS: Final = get_args(IsolationLevel)


@dataclass(frozen=True, kw_only=True)
class UnitOptions:
    """How one unit of work runs; every entry point that opens units takes these.

    Attributes:
        read_only: never commit; on PostgreSQL and MariaDB/MySQL, a ``READ ONLY`` transaction.
        isolation_level: e.g. ``"SERIALIZABLE"``; None keeps the database's default.
        statement_timeout: seconds any one statement may run (PostgreSQL, MariaDB/MySQL).
        schema: PostgreSQL schema for this unit; None keeps the Database's.
        stale_ok: a read-only unit may read a replica that has not replayed the writes seen
            before it (reports); never waits for one.
        synchronous_commit: what the unit's commit waits for (PostgreSQL): ``"remote_apply"``
            (applied on the synchronous standbys), ``"on"``, ``"remote_write"``, ``"local"``
            (this server's disk only) or ``"off"``; None keeps the server's setting.
    """

    read_only: bool = False
    isolation_level: IsolationLevel | None = None
    statement_timeout: float | None = None
    schema: str | None = None
    stale_ok: bool = False
    synchronous_commit: SynchronousCommit | None = None

    def __post_init__(self) -> None:
        for name in ("read_only", "stale_ok"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                message = f"{name}={value!r} is not a bool; use True or False."
                raise ConfigurationError(message)
        if self.stale_ok and not self.read_only:
            message = (
                "stale_ok=True applies to read-only units, which may read a replica; a unit "
                "that writes always runs on the primary. Add read_only=True, or remove stale_ok."
            )
            raise ConfigurationError(message)
        if self.schema is not None:
            _check_schema(self.schema)
        if self.statement_timeout is not None:
            _check_timeout(self.statement_timeout)
        if self.synchronous_commit is not None and self.synchronous_commit not in (
            SYNCHRONOUS_COMMIT
        ):
            message = (
                f"synchronous_commit={self.synchronous_commit!r} is not a level; use one of "
                f"{', '.join(map(repr, SYNCHRONOUS_COMMIT))}, or None for the server's setting."
            )
            raise ConfigurationError(message)

    def check(self, rules: Backend, isolation_levels: tuple[str, ...] | None = None) -> None:
        """Raise ConfigurationError for an option this backend cannot honour.

        ``isolation_levels``: what the connected database and driver accept, once known.
        """
        isolation_levels = isolation_levels or ISOLATION_LEVELS
        if self.isolation_level is not None and self.isolation_level not in isolation_levels:
            message = (
                f"isolation_level={self.isolation_level!r} is not available here; use one of "
                f"{', '.join(isolation_levels)}."
            )
            raise ConfigurationError(message)
        if self.statement_timeout is not None and not rules.has_statement_timeout:
            message = (
                f"statement_timeout is not available on {rules.name}; it needs PostgreSQL "
                "or MariaDB/MySQL. Remove it, or bound the work with asyncio.timeout()."
            )
            raise ConfigurationError(message)
        longest = rules.max_statement_timeout
        timeout = self.statement_timeout
        if timeout is not None and longest is not None and timeout > longest:
            message = (
                f"statement_timeout={timeout!r} is more than {rules.title} accepts; use a "
                f"positive number of seconds up to {longest!r}, or None for no timeout."
            )
            raise ConfigurationError(message)
        if self.schema is not None and not rules.has_schemas:
            message = (
                f"schema={self.schema!r} is not available on {rules.name}, which has no "
                "schemas to switch between (PostgreSQL has); remove it."
            )
            raise ConfigurationError(message)
        if self.synchronous_commit is not None and not rules.has_synchronous_commit:
            message = (
                f"synchronous_commit={self.synchronous_commit!r} is not available on "
                f"{rules.name}: it is PostgreSQL's setting; remove it."
            )
            raise ConfigurationError(message)


class UnitKeywords(TypedDict, total=False):
    """The keyword arguments of every entry point that opens units: the options, and a
    call's ``tags`` and ``after`` (values of one call, not options). ``db.parallel``'s
    overloads take them as ``**options``."""

    read_only: bool
    isolation_level: IsolationLevel | None
    statement_timeout: float | None
    schema: str | None
    tags: Mapping[str, str] | None
    after: str | None
    stale_ok: bool
    synchronous_commit: SynchronousCommit | None


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is an int or a finite float: no bool (True passes for 1), no NaN
    (which every comparison with a bound lets through), no infinity."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _check_timeout(timeout: object) -> None:
    """Refuse a ``statement_timeout`` that is not a positive, finite number of seconds; the
    backend's upper bound is checked with the rest of its rules (``UnitOptions.check``)."""
    if not is_finite_number(timeout) or timeout <= 0:
        message = (
            f"statement_timeout={timeout!r} is not a timeout; use a positive, finite number of "
            "seconds (an int or a float, e.g. 2.5) up to what the server accepts, or None for "
            "no timeout."
        )
        raise ConfigurationError(message)


def _check_schema(schema: object) -> None:
    """Refuse a ``schema`` that is not a plain identifier (never SQL: it is quoted as one)."""
    if not isinstance(schema, str) or not SCHEMA_NAME.fullmatch(schema):
        message = (
            f"schema={schema!r} is not a plain identifier; use a str of letters, digits, '_' "
            "and '$', starting with a letter or '_', at most 63 characters, or None for the "
            "Database's schema."
        )
        raise ConfigurationError(message)


DEFAULT_OPTIONS: Final = UnitOptions()
