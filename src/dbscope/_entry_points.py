"""The units of work of a Database, outside requests: transactions, retried units, streams,
parallel reads, and what code inside a unit can reach (its session, on-commit callbacks, its
schema).

Every entry point that opens units takes the same options (:class:`UnitOptions`):
``read_only``, ``isolation_level``, ``statement_timeout``, ``schema`` and
``synchronous_commit``. ``Database`` takes
these methods from :class:`UnitEntryPoints`; the FastAPI dependencies are on ``Database``.
Each also takes ``tags`` for the SQL comments of its units (``_tags.py``): a value of one run,
not an option, so kept out of UnitOptions, which are cached per value.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, Generic, Unpack, cast, overload

from sqlalchemy.ext.asyncio import AsyncConnection

from dbscope._async_session import SessionT
from dbscope._dialects import SynchronousCommit, driver
from dbscope._exceptions import ConfigurationError
from dbscope._lifecycle import Lifecycle
from dbscope._parallel import T1, T2, T3, Query, run_parallel
from dbscope._retry import (
    P,
    RetryFields,
    Retrying,
    RetryPolicy,
    T,
    retry_policy,
)
from dbscope._retry_decorator import retry_in_unit
from dbscope._streams import checked_body, streamed
from dbscope._unit import UnitOfWork
from dbscope._unit_of_work import UnitRun, Units
from dbscope._unit_options import DEFAULT_OPTIONS, IsolationLevel, UnitKeywords, UnitOptions
from dbscope._write_tokens import WriteToken


class UnitEntryPoints(Generic[SessionT]):
    """The unit-of-work methods of :class:`~dbscope.Database`, whose sessions are of the class
    ``SessionT`` (``session_class``)."""

    _units: Units
    _lifecycle: Lifecycle

    @contextlib.asynccontextmanager
    async def transaction(
        self,
        *,
        read_only: bool = False,
        isolation_level: IsolationLevel | None = None,
        statement_timeout: float | None = None,
        schema: str | None = None,
        tags: Mapping[str, str] | None = None,
        after: str | None = None,
        stale_ok: bool = False,
        synchronous_commit: SynchronousCommit | None = None,
    ) -> AsyncIterator[SessionT]:
        """A session in its own transaction: committed if the block ends normally.

        Any exception rolls the transaction back and propagates unchanged; an outage (pool
        exhausted, server unreachable, connection lost) propagates as
        DatabaseUnavailableError, and a constraint failing at the COMMIT as
        ConstraintViolationError. Inside the block, ``current_session()`` returns this session.

        Args:
            read_only: never commit (and a ``READ ONLY`` transaction on PostgreSQL, MariaDB).
            isolation_level: e.g. ``"SERIALIZABLE"``; default: the database's.
            statement_timeout: seconds a statement may run before it is cancelled
                (StatementTimeoutError); PostgreSQL and MariaDB/MySQL.
            schema: a PostgreSQL schema for this transaction only, instead of the default.
            tags: names and values (str) that its statements carry in their SQL comment, e.g.
                ``{"job": "purge"}``, while the ``sql_comments`` setting is on (see
                docs/sql-tags.md). Keep them few and fixed: no ids.
            after: a write token (``db.write_token()``, passed on with a job): a read-only
                unit reads a replica only once it has replayed that write (docs/replicas.md).
                By default, the writes seen in this context so far.
            stale_ok: a read-only unit may read any ready replica, caught up or not.
            synchronous_commit: what its commit waits for, on PostgreSQL: ``"remote_apply"``
                (visible on the synchronous standbys before the block ends), ``"on"``,
                ``"remote_write"``, ``"local"`` (this server only: a failover may lose it) or
                ``"off"``; default: the server's setting (docs/failover.md).
        """
        options = self._options(
            read_only, isolation_level, statement_timeout, schema, stale_ok, synchronous_commit
        )
        async with self._opener(options, tags, after)() as unit:
            yield cast("SessionT", unit.session)

    def unit_of_work(
        self,
        options: UnitOptions = DEFAULT_OPTIONS,
        *,
        tags: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> contextlib.AbstractAsyncContextManager[UnitOfWork]:
        """The building block of requests and transactions: ``async with`` it for the
        UnitOfWork itself.

        Args:
            options: how the unit runs.
            tags: what its statements carry in their SQL comment (see ``transaction()``).
            request_id: shown as the connection's ``application_name`` during each of its
                transactions, on PostgreSQL (never in the SQL text, where a value per
                request would defeat the driver's prepared statements).

        Raises:
            LifecycleError: the Database is not connected, or was connected in another loop.
            ConfigurationError: ``options`` this backend cannot honour, or ``tags`` that are
                not str to str.
        """
        if options is not DEFAULT_OPTIONS:  # the defaults need no check, on the hot path
            self._check(options)
        if tags is None and request_id is None:
            return self._units.open(options)
        return self._units.open(options, comment=self._units.comment(tags), request_id=request_id)

    def _options(
        self,
        read_only: bool,
        isolation_level: IsolationLevel | None,
        statement_timeout: float | None,
        schema: str | None,
        stale_ok: bool = False,
        synchronous_commit: SynchronousCommit | None = None,
    ) -> UnitOptions:
        options = UnitOptions(
            read_only=read_only,
            isolation_level=isolation_level,
            statement_timeout=statement_timeout,
            schema=schema,
            stale_ok=stale_ok,
            synchronous_commit=synchronous_commit,
        )
        if options == DEFAULT_OPTIONS:
            return DEFAULT_OPTIONS
        self._check(options)
        return options

    def _opener(
        self,
        options: UnitOptions,
        tags: Mapping[str, str] | None,
        after: str | None,
        request_id: str | None = None,
    ) -> Callable[..., UnitRun]:
        """How each unit of one call opens: with ``options``, the SQL comment of ``tags``,
        after the write token ``after`` (both checked here, once per call, not per unit), and
        a request's id as the connection's name."""
        comment, token = self._units.comment(tags), _token(after)
        return functools.partial(
            self._units.open, options, comment=comment, after=token, request_id=request_id
        )

    def _check(self, options: UnitOptions) -> None:
        # Before connect(), the levels the driver's adapter takes; after it, the server's own.
        server = self._lifecycle.server
        levels = None if server is None else server.isolation_levels
        if not levels:
            known = driver(self._lifecycle.settings.url.get_driver_name())
            levels = None if known is None else known.isolation_levels
        options.check(self._units.rules, levels)

    def on_commit(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` after the current unit of work commits; never if it rolls back.

        ``callback`` takes no arguments and may be a coroutine function. Callbacks run in
        registration order, after the commit and (in a request) before the response is sent.
        One registered inside a savepoint that rolls back is dropped with it. One that raises
        is logged with its traceback and changes nothing else. In a request that depends on
        both ``db.session`` and ``db.read_session``, it waits for the writable one's commit.

        Raises:
            NoSessionError: no unit of work is active here.
            TypeError: ``callback`` is not callable (``notify()`` given for ``notify``).
            ConfigurationError: the unit is read-only, and so never commits.
        """
        self._units.committing().on_commit(callback)

    @overload
    async def parallel(
        self, q1: Query[SessionT, T1], /, **options: Unpack[UnitKeywords]
    ) -> tuple[T1]: ...
    @overload
    async def parallel(
        self, q1: Query[SessionT, T1], q2: Query[SessionT, T2], /, **options: Unpack[UnitKeywords]
    ) -> tuple[T1, T2]: ...
    @overload
    async def parallel(
        self,
        q1: Query[SessionT, T1],
        q2: Query[SessionT, T2],
        q3: Query[SessionT, T3],
        /,
        **options: Unpack[UnitKeywords],
    ) -> tuple[T1, T2, T3]: ...
    @overload
    async def parallel(
        self, *queries: Query[SessionT, T], **options: Unpack[UnitKeywords]
    ) -> tuple[T, ...]: ...
    async def parallel(
        self,
        *queries: Query[SessionT, Any],
        read_only: bool = True,
        isolation_level: IsolationLevel | None = None,
        statement_timeout: float | None = None,
        schema: str | None = None,
        tags: Mapping[str, str] | None = None,
        after: str | None = None,
        stale_ok: bool = False,
        synchronous_commit: SynchronousCommit | None = None,
    ) -> tuple[Any, ...]:
        """Run independent queries concurrently, each in a unit of work of its own.

        ``users, orders = await db.parallel(load_users, load_orders)``, where each argument
        takes a session and returns an awaitable; their results come back in a tuple, in
        order. One AsyncSession must never be shared
        between tasks; this gives each query its own session and connection (so it needs
        ``len(queries)`` free connections). If one query fails, the others are cancelled and
        the error propagates. While bound to a test's connection (``bind_to``), the queries
        run one after another on it. Units are read-only unless ``read_only=False``; the other
        options (and ``tags``, ``after``, ``stale_ok``) apply to each unit as in
        ``transaction()``.
        """
        options = self._options(
            read_only, isolation_level, statement_timeout, schema, stale_ok, synchronous_commit
        )
        open_unit = self._opener(options, tags, after)

        bound = isinstance(self._lifecycle.bind(), AsyncConnection)
        return await run_parallel(queries, open_unit, writes=not read_only, bound=bound)

    def stream(
        self,
        body: Callable[[SessionT], AsyncIterator[T]],
        *,
        read_only: bool = False,
        isolation_level: IsolationLevel | None = None,
        statement_timeout: float | None = None,
        schema: str | None = None,
        tags: Mapping[str, str] | None = None,
        after: str | None = None,
        stale_ok: bool = False,
        synchronous_commit: SynchronousCommit | None = None,
    ) -> AsyncGenerator[T, None]:
        """Run a streamed body as a unit of work of its own; commits only if it completes.

        ``rows(session)`` is an async generator; the iterator this returns runs it in its own
        unit, opened at the first chunk asked for. Its transaction commits when the last chunk
        has been produced, and rolls back if the consumer stops early (or anything raises):
        a consumer that may stop early closes it (``contextlib.aclosing``), or its connection
        stays checked out until the generator is garbage collected.
        In an endpoint, return ``db.stream_response(rows)`` instead: its unit opens before
        the response starts, so an exhausted pool answers 503, not a 200 cut short. The
        request's own session cannot be used in a streaming body: its unit of work ended when
        the endpoint returned. The options (and ``tags``, ``after``, ``stale_ok``) are those
        of ``transaction()``.
        """
        # Checked here, at the call: in the generator, a wrong option would show only at the
        # first chunk, once a server had already answered 200.
        checked_body(body, "stream()")
        options = self._options(
            read_only, isolation_level, statement_timeout, schema, stale_ok, synchronous_commit
        )
        return streamed(body, self._opener(options, tags, after))

    def retrying(
        self,
        *,
        read_only: bool = False,
        isolation_level: IsolationLevel | None = None,
        statement_timeout: float | None = None,
        schema: str | None = None,
        tags: Mapping[str, str] | None = None,
        after: str | None = None,
        stale_ok: bool = False,
        synchronous_commit: SynchronousCommit | None = None,
        policy: RetryPolicy | None = None,
        **policy_fields: Unpack[RetryFields],
    ) -> Retrying[SessionT]:
        """Run a block as a unit of work again, from the start, after a conflict::

            async for attempt in db.retrying(attempts=5):
                async with attempt as session:
                    ...

        Each attempt is a fresh ``db.transaction()`` with the given options and ``tags``, on
        the primary, which has every write (``after`` and ``stale_ok`` change nothing), even
        when read-only: a conflict is the primary's to settle, and a retried unit must not
        meet a replica's own (a query cancelled by replay). It is re-run when the database
        reports a serialization failure (SQLSTATE 40001) or deadlock (40P01; MySQL 1213), a
        lock wait timeout with ``lock_timeouts=True`` (55P03; MySQL 1205), or SQLite's
        SQLITE_BUSY (a write conflict), after an
        exponential backoff with jitter; each retry is logged, and ``.retries`` counts them.
        Other errors propagate at once, unchanged. When attempts run out,
        RetriesExhaustedError is raised (409 in FastAPI).

        Args:
            policy: a :class:`RetryPolicy`; or its fields as keyword arguments:
                ``attempts`` (3), ``backoff`` (0.05 s), ``max_backoff`` (1 s),
                ``lock_timeouts`` (False).
        """
        options = self._options(
            read_only, isolation_level, statement_timeout, schema, stale_ok, synchronous_commit
        )
        return Retrying(
            functools.partial(self._opener(options, tags, after), primary=True),
            retry_policy(policy, **policy_fields),
            self._units.rules,
            on_retry=self._lifecycle.count_retry,
        )

    def retry(
        self, *, policy: RetryPolicy | None = None, **policy_fields: Unpack[RetryFields]
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
        """Decorate an endpoint so that its request's unit of work is retried on conflicts.

        The endpoint body is re-run, after a rollback, when it or its commit meets a
        serialization failure or deadlock (see ``retrying()``, which takes the same
        ``policy``). Only for endpoints without external side effects: an email sent or an
        API called in a failed attempt happens again. Put ``@db.retry()`` below the route
        decorator; the endpoint must depend on ``db.session``, or on ``db.session_with(...)``:
        the unit is the request's, so its options are the dependency's (e.g.
        ``db.session_with(isolation_level="SERIALIZABLE")``), not the decorator's.
        """
        return retry_in_unit(
            # The request's writable unit, whichever of db.session and db.read_session was
            # entered last: retrying the read-only one never commits an attempt.
            self._units.writable_here,
            retry_policy(policy, **policy_fields),
            self._lifecycle.count_retry,
        )

    def current_session(self) -> SessionT:
        """The session of the request or transaction running in this task.

        In a request that depends on both ``db.session`` and ``db.read_session``, it is
        ``db.session``'s, whichever was entered last: the one that commits the request's
        writes (as ``on_commit()`` and ``@db.retry()`` take it).

        Raises:
            NoSessionError: no unit of work is active here.
        """
        return cast("SessionT", self._units.committing().session)

    async def use_schema(self, name: str | None) -> None:
        """Target PostgreSQL schema ``name`` for the rest of the current unit of work.

        The name must be a plain identifier and is quoted; it lasts until the unit ends (or
        a savepoint it was set under rolls back, as PostgreSQL's ``SET LOCAL`` does) and never
        reaches the next user of the connection. ``None`` returns to the default. Called
        before the unit's first statement, it sends nothing: its transaction begins on it.

        Raises:
            NoSessionError: no unit of work is active here.
            ConfigurationError: the name is not a plain identifier (a ValueError too).
        """
        await self._units.running().use_schema(name)


def _token(after: str | None) -> WriteToken | None:
    """The write token ``after`` names; ConfigurationError if it names none."""
    if after is None:
        return None
    token = WriteToken.parse(after) if isinstance(after, str) else None
    if token is None:
        message = (
            f"after={after!r} is not a write token; pass what db.write_token() returned "
            "after the write (a str such as '7290871234567890123:16B374D848'), or None."
        )
        raise ConfigurationError(message)
    return token
