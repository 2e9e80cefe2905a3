"""Database: the one object an application holds, from start-up to shutdown.

It owns the settings, the engine's lifecycle (see ``_lifecycle.py``) and the units of work:
requests (through ``dbscope.fastapi``), ``transaction()`` blocks, retried units, streams and
parallel reads, all reaching their session through one context variable. ``lease()`` lends
a pooled driver connection without a session, for hot reads (see ``_lease.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dbscope._async_session import SessionT
from dbscope._dialects import client_command
from dbscope._engine import ServerInfo, engine_options
from dbscope._engine_checks import check_engine_options
from dbscope._exceptions import ConfigurationError
from dbscope._health import DEFAULT_MAX_AGE, DEFAULT_TIMEOUT, HealthProbe, ProbeOptions
from dbscope._health_report import Health
from dbscope._lease import lease_connection
from dbscope._lifecycle import Lifecycle, State
from dbscope._pool_stats import PoolStats
from dbscope._replicas import Replicas
from dbscope._request_entry_points import RequestEntryPoints
from dbscope._session_classes import unit_session_class
from dbscope._settings import DatabaseSettings
from dbscope._settings_loading import load_settings, setting_values
from dbscope._tags import sql_tagger
from dbscope._unavailable import Limits
from dbscope._unit_of_work import Units
from dbscope._urls import default_pool_name


class Database(RequestEntryPoints[SessionT]):
    """An async SQLAlchemy engine, its pool and its sessions, scoped per unit of work.

    Args:
        url: the database URL, e.g. ``postgresql+asyncpg://app@localhost/app``. A URL without
            a driver (``postgresql://``) gets an installed async driver.
        schema: a PostgreSQL schema every unit of work targets (``SET LOCAL search_path``).
        session_class: the AsyncSession subclass of every unit's session, e.g. SQLModel's
            ``sqlmodel.ext.asyncio.session.AsyncSession`` (for ``session.exec()``); dbscope's
            guarantees hold as with SQLAlchemy's own (docs/sqlmodel.md).
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

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        schema: str | None = None,
        replicas: Sequence[str | URL] | None = None,
        session_class: type[SessionT] | None = None,
        **options: Any,
    ):
        values = setting_values(options, url=url, schema=schema, replicas=replicas)
        self._setup(load_settings(from_env=False, **values), options, session_class)

    @classmethod
    def from_env(
        cls,
        prefix: str = "",
        *,
        env_file: str | None = None,
        default_url: str | URL | None = None,
        session_class: type[SessionT] | None = None,
        **engine_options: Any,
    ) -> Database[SessionT]:
        """Build a Database from environment variables (and an optional ``.env`` file).

        Reads ``DATABASE_URL``, or ``POSTGRES_USER``, ``POSTGRES_PASSWORD``, ``POSTGRES_HOST``,
        ``POSTGRES_PORT`` and ``POSTGRES_DB``, and every other setting by its upper-case name
        (``POOL_SIZE``; docs/configuration.md), each behind ``prefix`` if given.

        Args:
            prefix: prepended to every variable name, e.g. ``"APP_"`` for ``APP_DATABASE_URL``.
            env_file: a dotenv file to read as well; the environment wins over it.
            default_url: the URL to use when the environment names no database, e.g.
                ``"sqlite+aiosqlite:///app.db"`` for a zero-setup development default.
            session_class: the AsyncSession subclass of the sessions, as for ``Database()``.
            **engine_options: extra ``create_async_engine`` options, and settings by their
                lower-case names (``pool_size=20``), which win over the environment.
        """
        values = setting_values(engine_options)
        settings = load_settings(
            from_env=True, env_prefix=prefix, env_file=env_file, default_url=default_url, **values
        )
        return cls.from_settings(settings, session_class=session_class, **engine_options)

    @classmethod
    def from_settings(
        cls,
        settings: DatabaseSettings,
        *,
        session_class: type[SessionT] | None = None,
        **engine_options: Any,
    ) -> Database[SessionT]:
        """Build a Database from a :class:`DatabaseSettings` made elsewhere (``session_class``
        and ``engine_options`` as for ``Database()``); ConfigurationError for anything else."""
        if not isinstance(settings, DatabaseSettings):
            message = f"from_settings() takes a DatabaseSettings, not {type(settings).__name__}"
            raise ConfigurationError(message)
        given = sorted(set(engine_options) & set(DatabaseSettings.model_fields))
        if given:
            # Passed on, they went to SQLAlchemy unchecked, and the settings said otherwise.
            fix = "build the DatabaseSettings with it (DatabaseSettings(..., pool_size=...))."
            raise ConfigurationError(
                f"{', '.join(given)} is a setting, not an engine option: {fix}"
            )
        database = cls.__new__(cls)
        database._setup(settings, engine_options, session_class)
        return database

    def _setup(
        self,
        settings: DatabaseSettings,
        extra: dict[str, Any],
        session_class: type[SessionT] | None,
    ) -> None:
        sessions = unit_session_class(session_class)  # code, not a setting: never from env
        options = engine_options(settings, extra)
        check_engine_options(settings.url, options)
        self._settings = settings
        self._lifecycle = Lifecycle(settings, options, f"Database({settings.url!r})", sessions)
        self._limits = Limits(
            url=settings.url,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout,
            pool_max_waiters=settings.pool_max_waiters,
        )
        tagger = sql_tagger(
            settings.sql_comments,
            driver=settings.url.get_driver_name(),
            application=settings.application_name,
        )
        self._replicas = (
            Replicas(settings, options, self._lifecycle, self.name)
            if settings.database_replica_urls
            else None
        )
        self._units = Units(
            self._lifecycle.session_maker,
            self._limits,
            settings.postgres_schema,
            tagger,
            self._replicas,
            self._lifecycle.count_reread,
        )
        self._health = HealthProbe(
            self._lifecycle, None if self._replicas is None else self._replicas.stats
        )

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
        tagger = self._units.tagger
        if tagger is not None and self._lifecycle.state == "connected":  # not a test's binding
            tagger.install(self._lifecycle.engine, self._units.running_comment)
        if self._replicas is not None and self._lifecycle.state == "connected":
            await self._replicas.connect()

    async def dispose(self) -> None:
        """Close every pooled connection. Calling it again, or before connect(), does nothing."""
        if self._replicas is not None:
            await self._replicas.dispose()
        # The probe first: its connect, left running by a probe out of time, is then among
        # those the pool's dispose waits for.
        await self._health.close()
        await self._lifecycle.dispose()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
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
        Meanwhile the units follow the rules of ``connection``'s database, which may be
        another than the URL's (an app on SQLite in development, tested on PostgreSQL):
        its errors, read-only transactions and schemas.

        Args:
            connection: a connection with a transaction begun.
            raise_on_lazy_load: refuse every lazy load meanwhile (default: the setting).

        Raises:
            ConfigurationError: ``connection`` is no ``AsyncConnection``, or no event loop
                runs here; the Database is left as it was.
        """
        strict = (
            self._settings.raise_on_lazy_load if raise_on_lazy_load is None else raise_on_lazy_load
        )
        with (
            self._lifecycle.bind_to(connection, raise_on_lazy_load=strict),
            self._units.following(connection.engine.url),
        ):
            yield

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

    def shell_command(self, *arguments: str) -> tuple[list[str], dict[str, str]]:
        """The command that opens this database in its own client: what ``dbscope shell`` runs.

        The client is psql, mariadb (or mysql) or sqlite3, the first found on the PATH. Its
        command line says where the database is (host, port, user, database), then
        ``arguments``; the password is only in the variables to add to its environment
        (``PGPASSWORD``, ``MYSQL_PWD``), since every user of the machine can read a command
        line, and so are a PostgreSQL URL's database (``PGDATABASE``, which libpq never
        reads as a connection string), ``sslmode`` and ``target_session_attrs`` and the
        schema the units target (``PGOPTIONS``): run it with them.

        Args:
            *arguments: the client's own arguments, e.g. ``"-c", "SELECT 1"`` for psql.

        Returns:
            The argument list, the client's full path first, and the variables to add to the
            environment it runs in.

        Raises:
            ConfigurationError: the database has no client (an in-memory SQLite database), or
                none of its clients is on the PATH (the message says what to install); an
                argument that is no string.
        """
        for argument in arguments:
            if not isinstance(argument, str):  # else in the argv, failing in the subprocess
                message = f"shell_command() takes strings, not {argument!r}: pass *arguments."
                raise ConfigurationError(message)
        try:
            return client_command(self.url, arguments, self._settings.postgres_schema)
        except ValueError as error:
            raise ConfigurationError(str(error)) from None

    @property
    def name(self) -> str:
        """The name of this Database's pool in metrics: the ``pool_name`` setting, else
        ``host:port/database`` (a SQLite file's path); it never holds the user or password."""
        return self._settings.pool_name or default_pool_name(self._settings.url)

    @property
    def state(self) -> State:
        """``"new"``, ``"connected"``, ``"disposed"``, or ``"bound"`` (see bind_to())."""
        return self._lifecycle.state

    @property
    def server(self) -> ServerInfo | None:
        """The backend and version the server reported at connect(), or None before."""
        return self._lifecycle.server

    def stats(self) -> PoolStats:
        """Count the pool's connections: in use, idle, beyond pool_size, and replaced; with
        replicas, each replica's state, lag and reads, and the reads that fell back to the
        primary, by why."""
        stats = self._lifecycle.stats()
        if self._replicas is None:
            return stats
        fallbacks = tuple(sorted(self._replicas.fallbacks.items()))
        return dataclasses.replace(stats, replicas=self._replicas.stats(), fallbacks=fallbacks)

    def write_token(self) -> str | None:
        """The log position of the latest write committed in this context (a request, a
        script's task), as a token: pass it as ``transaction(read_only=True, after=token)``
        (with a job, say) to read that write on a replica. None before any write, or without
        replicas."""
        token = None if self._replicas is None else self._replicas.write_token()
        return None if token is None else str(token)

    async def health(
        self,
        *,
        migrations: str | Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - running out is a "fail", not an error
        max_age: float = DEFAULT_MAX_AGE,
    ) -> Health:
        """Whether this Database can serve: for readiness probes, never waiting in the pool.

        The server is asked on a connection of the probe's own, outside the pool, within
        ``timeout``; the pool's saturation is read from its numbers. ``fail`` (render it as
        503): not connected, the server unreachable, or the migrations not at head; ``warn``
        (200): every connection in use or requests waiting for one; else ``pass``.
        ``health.to_dict()`` is the ``application/health+json`` body. ``dbscope.fastapi.
        health_router(db)`` serves it as ``/readyz``.

        Args:
            migrations: an ``alembic.ini``: also fail while the database is not at its head
                revisions (the scripts are read once, at the first call).
            timeout: seconds after which an unanswered probe counts as ``fail``.
            max_age: seconds for which one server reading answers every call, so that many
                probes cost the server one connection per ``max_age``; the pool's numbers
                are always read anew.

        Raises:
            ConfigurationError: ``timeout`` or ``max_age`` is not a usable number of seconds,
                or ``migrations`` names no file.
            ModuleNotFoundError: ``migrations`` is given and Alembic is not installed.
        """
        options = ProbeOptions(timeout=timeout, max_age=max_age, migrations=migrations)
        return await self._health.health(options)

    def __repr__(self) -> str:
        return f"Database({self._settings.url!r}, state={self.state!r})"
