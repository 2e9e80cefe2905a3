"""Database: the one object an application holds, from start-up to shutdown.

It owns the settings, the engine's lifecycle (see ``_lifecycle.py``) and the units of work:
requests (through ``dbscope.fastapi``), ``transaction()`` blocks, retried units, streams and
parallel reads, all reaching their session through one context variable. ``lease()`` lends
a pooled driver connection without a session, for hot reads (see ``_lease.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, Self

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from dbscope._engine import ServerInfo, check_engine_options, engine_options
from dbscope._errors import Limits
from dbscope._lease import lease_connection
from dbscope._lifecycle import Lifecycle, State
from dbscope._pool import PoolStats
from dbscope._retry import P, Retrying, RetryPolicy, T, retry_in_unit, retry_policy
from dbscope._settings import DatabaseSettings, load_settings
from dbscope._unit_of_work import DEFAULT_OPTIONS, UnitOfWork, UnitOptions, Units


class Database:
    """An async SQLAlchemy engine, its pool and its sessions, scoped per unit of work.

    Args:
        url: the database URL, e.g. ``postgresql+asyncpg://app@localhost/app``. A URL without
            a driver (``postgresql://``) gets an installed async driver.
        schema: a PostgreSQL schema every unit of work targets (``SET LOCAL search_path``).
        **options: any :class:`DatabaseSettings` field (``pool_size``, ``pool_timeout``, ...)
            and any other ``create_async_engine`` option (``connect_args``, ...).

    Raises:
        ConfigurationError: a setting or option is invalid; raised here, not on first use.

    Example::

        db = Database("postgresql+asyncpg://app@localhost/app", pool_size=20)
        async with db:
            async with db.transaction() as session:
                await session.execute(...)
    """

    def __init__(self, url: str | URL | None = None, *, schema: str | None = None, **options: Any):
        fields = DatabaseSettings.model_fields
        values = {name: options.pop(name) for name in list(options) if name in fields}
        if url is not None:
            values["database_url"] = url
        if schema is not None:
            values["postgres_schema"] = schema
        self._setup(load_settings(from_env=False, **values), options)

    @classmethod
    def from_env(
        cls,
        prefix: str = "",
        *,
        env_file: str | None = None,
        default_url: str | URL | None = None,
        **engine_options: Any,
    ) -> Database:
        """Build a Database from environment variables (and an optional ``.env`` file).

        Reads ``DATABASE_URL``, or ``POSTGRES_USER``, ``POSTGRES_PASSWORD``, ``POSTGRES_HOST``,
        ``POSTGRES_PORT`` and ``POSTGRES_DB``; and ``POSTGRES_SCHEMA``, ``POOL_SIZE``,
        ``MAX_OVERFLOW``, ``POOL_TIMEOUT``, ``POOL_RECYCLE``, ``POOL_PRE_PING``,
        ``CONNECT_TIMEOUT``, ``ECHO``, ``APPLICATION_NAME``, each behind ``prefix`` if given.

        Args:
            prefix: prepended to every variable name, e.g. ``"APP_"`` for ``APP_DATABASE_URL``.
            env_file: a dotenv file to read as well; the environment wins over it.
            default_url: the URL to use when the environment names no database, e.g.
                ``"sqlite+aiosqlite:///app.db"`` for a zero-setup development default.
            **engine_options: extra ``create_async_engine`` options.
        """
        settings = load_settings(
            from_env=True, env_prefix=prefix, env_file=env_file, default_url=default_url
        )
        return cls.from_settings(settings, **engine_options)

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, **engine_options: Any) -> Database:
        """Build a Database from a :class:`DatabaseSettings` made elsewhere."""
        database = cls.__new__(cls)
        database._setup(settings, engine_options)
        return database

    def _setup(self, settings: DatabaseSettings, extra: dict[str, Any]) -> None:
        options = engine_options(settings, extra)
        check_engine_options(settings.url, options)
        self._settings = settings
        self._lifecycle = Lifecycle(settings, options, f"Database({settings.url!r})")
        self._limits = Limits(
            url=settings.url,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout,
            pool_max_waiters=settings.pool_max_waiters,
        )
        self._units = Units(self._lifecycle.session_maker, self._limits, settings.postgres_schema)

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the engine in the running event loop and check that the server answers.

        Raises:
            LifecycleError: the Database is already connected.
            DatabaseUnavailableError: the server could not be reached (the message names
                host and port).
            ConfigurationError: the server refused the user, password or database.
        """
        await self._lifecycle.connect()

    async def dispose(self) -> None:
        """Close every pooled connection. Calling it again, or before connect(), does nothing."""
        await self._lifecycle.dispose()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.dispose()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Connect on start-up and dispose on shutdown: ``FastAPI(lifespan=db.lifespan)``.

        To compose with an application's own lifespan, enter it inside that one::

            @asynccontextmanager
            async def lifespan(app):
                async with db.lifespan(app):
                    yield
        """
        async with self:
            yield

    @contextlib.contextmanager
    def bind_to(
        self, connection: AsyncConnection, *, raise_on_lazy_load: bool | None = None
    ) -> Iterator[None]:
        """Run every unit of work inside ``connection``'s transaction: the testing hook.

        Within the block, requests and ``transaction()`` blocks use sessions bound to
        ``connection`` whose commits and rollbacks are savepoints
        (``join_transaction_mode="create_savepoint"``), so the test can roll everything back
        at the end by rolling back its own transaction. ``connect()`` and ``dispose()`` do
        nothing meanwhile, so the app's lifespan can run. All units share the one
        connection: run them one at a time. ``dbscope.testing`` and the pytest plugin use it.

        Args:
            connection: a connection with a transaction begun.
            raise_on_lazy_load: refuse every lazy load meanwhile (default: the setting).
        """
        strict = (
            self._settings.raise_on_lazy_load if raise_on_lazy_load is None else raise_on_lazy_load
        )
        with self._lifecycle.bind_to(connection, raise_on_lazy_load=strict):
            yield

    # -- units of work -----------------------------------------------------------------------
    #
    # Every entry point that opens units takes the same options (UnitOptions): read_only,
    # isolation_level, statement_timeout and schema.

    @property
    def session(self) -> Callable[..., Awaitable[AsyncSession]]:
        """The FastAPI dependency giving the request's session: ``Depends(db.session)``.

        One session per request; it commits after the endpoint returns and before the
        response is sent, and rolls back on any exception. See ``dbscope.fastapi``.
        """
        from dbscope import fastapi  # here, so that `import dbscope` never imports FastAPI

        return fastapi.session_dependency(self, DEFAULT_OPTIONS)

    @property
    def read_session(self) -> Callable[..., Awaitable[AsyncSession]]:
        """The FastAPI dependency for a read-only request: ``Depends(db.read_session)``.

        It never commits, and on PostgreSQL and MariaDB/MySQL its transaction is ``READ
        ONLY``, so a write fails loudly instead of being kept. It is a unit of work of its
        own: do not mix it with ``db.session`` in one request.
        """
        return self.session_with(read_only=True)

    def session_with(
        self,
        *,
        read_only: bool = False,
        isolation_level: str | None = None,
        statement_timeout: float | None = None,
        schema: str | None = None,
    ) -> Callable[..., Awaitable[AsyncSession]]:
        """A FastAPI session dependency with per-request options (see ``transaction()``).

        ``Depends(db.session_with(statement_timeout=2))`` cancels any statement of the request
        that runs longer than 2 s (504); ``isolation_level="SERIALIZABLE"`` runs the request's
        transaction at that level (with ``@db.retry()`` on the endpoint to re-run it after a
        conflict). The same options give the same dependency object, so all uses within one
        request share one session.
        """
        from dbscope import fastapi

        options = self._options(read_only, isolation_level, statement_timeout, schema)
        return fastapi.session_dependency(self, options)

    @contextlib.asynccontextmanager
    async def transaction(
        self,
        *,
        read_only: bool = False,
        isolation_level: str | None = None,
        statement_timeout: float | None = None,
        schema: str | None = None,
    ) -> AsyncIterator[AsyncSession]:
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
        """
        options = self._options(read_only, isolation_level, statement_timeout, schema)
        async with self._units.open(options) as unit:
            yield unit.session

    def unit_of_work(
        self, options: UnitOptions = DEFAULT_OPTIONS
    ) -> contextlib.AbstractAsyncContextManager[UnitOfWork]:
        """The building block of requests and transactions: ``async with`` it for the
        UnitOfWork itself.

        Raises:
            LifecycleError: the Database is not connected, or was connected in another loop.
            ConfigurationError: ``options`` this backend cannot honour.
        """
        if options is not DEFAULT_OPTIONS:  # the defaults need no check, on the hot path
            self._check(options)
        return self._units.open(options)

    def _options(
        self,
        read_only: bool,
        isolation_level: str | None,
        statement_timeout: float | None,
        schema: str | None,
    ) -> UnitOptions:
        options = UnitOptions(
            read_only=read_only,
            isolation_level=isolation_level,
            statement_timeout=statement_timeout,
            schema=schema,
        )
        if options == DEFAULT_OPTIONS:
            return DEFAULT_OPTIONS
        self._check(options)
        return options

    def _check(self, options: UnitOptions) -> None:
        # Before connect(), only the standard levels are known; after it, the server's own.
        server = self._lifecycle.server
        if server is not None and server.isolation_levels:
            options.check(self._units.rules, server.isolation_levels)
        else:
            options.check(self._units.rules)

    def on_commit(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` after the current unit of work commits; never if it rolls back.

        ``callback`` takes no arguments and may be a coroutine function. Callbacks run in
        registration order, after the commit and (in a request) before the response is sent.
        One registered inside a savepoint that rolls back is dropped with it. One that raises
        is logged with its traceback and changes nothing else.

        Raises:
            NoSessionError: no unit of work is active here.
        """
        self._units.running().on_commit(callback)

    async def parallel(
        self,
        *queries: Callable[[AsyncSession], Awaitable[T]],
        read_only: bool = True,
        isolation_level: str | None = None,
        statement_timeout: float | None = None,
        schema: str | None = None,
    ) -> list[T]:
        """Run independent queries concurrently, each in a unit of work of its own.

        ``users, orders = await db.parallel(load_users, load_orders)``, where each argument
        takes a session and returns an awaitable. One AsyncSession must never be shared
        between tasks; this gives each query its own session and connection (so it needs
        ``len(queries)`` free connections). If one query fails, the others are cancelled and
        the error propagates. Units are read-only unless ``read_only=False``; the other
        options apply to each unit as in ``transaction()``.
        """
        options = self._options(read_only, isolation_level, statement_timeout, schema)

        async def run(query: Callable[[AsyncSession], Awaitable[T]]) -> T:
            async with self._units.open(options) as unit:
                return await query(unit.session)

        tasks = [asyncio.ensure_future(run(query)) for query in queries]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def stream(
        self,
        body: Callable[[AsyncSession], AsyncIterator[T]],
        *,
        read_only: bool = False,
        isolation_level: str | None = None,
        statement_timeout: float | None = None,
        schema: str | None = None,
    ) -> AsyncIterator[T]:
        """Run a streamed body as a unit of work of its own; commits only if it completes.

        ``return StreamingResponse(db.stream(rows))`` where ``rows(session)`` is an async
        generator. The stream's transaction commits when the last chunk has been produced,
        and rolls back if the client goes away (or anything raises) before then. The
        request's own session cannot be used in a streaming body: its unit of work ended
        when the endpoint returned. The options are those of ``transaction()``.
        """
        options = self._options(read_only, isolation_level, statement_timeout, schema)
        async with self._units.open(options) as unit:
            async for item in body(unit.session):
                yield item

    def retrying(
        self,
        *,
        read_only: bool = False,
        isolation_level: str | None = None,
        statement_timeout: float | None = None,
        schema: str | None = None,
        policy: RetryPolicy | None = None,
        **policy_fields: Any,
    ) -> Retrying:
        """Run a block as a unit of work again, from the start, after a conflict::

            async for attempt in db.retrying(attempts=5):
                async with attempt as session:
                    ...

        Each attempt is a fresh ``db.transaction()`` with the given options. It is re-run
        when the database reports a serialization failure (SQLSTATE 40001) or deadlock
        (40P01; MySQL 1213, and 1205 with ``lock_timeouts=True``), after an exponential
        backoff with jitter; each retry is logged, and ``.retries`` counts them. Other errors
        propagate at once, unchanged. When attempts run out, RetriesExhaustedError is raised
        (409 in FastAPI).

        Args:
            read_only, isolation_level, statement_timeout, schema: as for ``transaction()``.
            policy: a :class:`RetryPolicy`; or its fields as keyword arguments:
                ``attempts`` (3), ``backoff`` (0.05 s), ``max_backoff`` (1 s),
                ``lock_timeouts`` (False).
        """
        options = self._options(read_only, isolation_level, statement_timeout, schema)
        return Retrying(
            lambda: self._units.open(options),
            retry_policy(policy, **policy_fields),
            self._units.rules,
        )

    def retry(
        self, *, policy: RetryPolicy | None = None, **policy_fields: Any
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
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
            self._units.current.get, retry_policy(policy, **policy_fields), self._units.rules
        )

    def current_session(self) -> AsyncSession:
        """The session of the request or transaction running in this task.

        Raises:
            NoSessionError: no unit of work is active here.
        """
        return self._units.running().session

    async def use_schema(self, name: str | None) -> None:
        """Target PostgreSQL schema ``name`` for the rest of the current unit of work.

        The name must be a plain identifier and is quoted; it lasts until the unit ends and
        never reaches the next user of the connection. ``None`` returns to the default.

        Raises:
            NoSessionError: no unit of work is active here.
            ValueError: the name is not a plain identifier.
        """
        await self._units.running().use_schema(name)

    # -- the driver connection, for hot reads -----------------------------------------------

    def lease(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """The driver's own connection, checked out of the pool: the fast path for hot reads.

        ``async with db.lease() as conn:`` gives the driver connection of one pooled
        connection (``asyncpg.Connection``, ``psycopg.AsyncConnection``, an asyncmy or
        aiosqlite connection), with no session and no transaction: each statement is its own
        transaction, in the driver's SQL dialect (``$1`` parameters on asyncpg). A write that
        needs atomicity uses the driver's transaction (``async with conn.transaction():``) or
        ``db.transaction()``.

        The pool's limits and liveness check apply as for sessions. The connection goes back
        to the pool when the block ends, whatever happens: a transaction left open is rolled
        back first, and a connection that was lost, or whose block was cancelled mid-statement,
        is discarded. Errors other than outages propagate unchanged. None of the unit-of-work
        features apply: no ``on_commit``, retries, schema or statement timeout.

        Raises:
            LifecycleError: the Database is not connected, or was connected in another event
                loop.
            ConfigurationError: the URL's driver is not one of those four.
            DatabaseUnavailableError: no connection was free within ``pool_timeout``
                (``"pool_timeout"``), the server could not be reached (``"unreachable"``), or
                the connection died during the block (``"connection_lost"``).
        """
        return lease_connection(self._lifecycle, self._limits)

    @property
    def leased(self) -> Callable[..., Awaitable[Any]]:
        """The FastAPI dependency giving a leased driver connection: ``Depends(db.leased)``.

        ``conn: Annotated[asyncpg.Connection, Depends(db.leased)]`` gets what ``db.lease()``
        gives, for the request; the connection goes back to the pool after the endpoint
        returns and before the response is sent. Outages answer 503 with ``Retry-After``, as
        for ``db.session``. Taking both in one request holds two connections.
        """
        from dbscope import fastapi  # here, so that `import dbscope` never imports FastAPI

        return fastapi.lease_dependency(self)

    # -- introspection -----------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        """The AsyncEngine; exists between connect() and dispose()."""
        return self._lifecycle.engine

    @property
    def settings(self) -> DatabaseSettings:
        """The validated settings this Database was built from."""
        return self._settings

    @property
    def url(self) -> URL:
        """The database URL; its str and repr mask the password."""
        return self._settings.url

    @property
    def state(self) -> State:
        """``"new"``, ``"connected"``, ``"disposed"``, or ``"bound"`` (see bind_to())."""
        return self._lifecycle.state

    @property
    def server(self) -> ServerInfo | None:
        """The backend and version the server reported at connect(), or None before."""
        return self._lifecycle.server

    def stats(self) -> PoolStats:
        """Count the pool's connections: in use, idle, beyond pool_size, and replaced."""
        return self._lifecycle.stats()

    def __repr__(self) -> str:
        return f"Database({self._settings.url!r}, state={self.state!r})"
