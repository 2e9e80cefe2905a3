"""Building, checking and verifying engines.

The engine options are checked at construction by letting SQLAlchemy build (and drop) an
engine, since SQLAlchemy knows best which options a dialect and pool accept; dbscope only
rewrites its answer into a message that says the fix. The real engine is built in
``Database.connect()``, inside the running event loop, because asyncio pools and driver
connections belong to the loop that made them.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import ArgumentError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, QueuePool

from dbscope._admission import QueuedPool
from dbscope._exceptions import ConfigurationError
from dbscope._liveness import LivenessCheck
from dbscope._outages import connect_error
from dbscope._settings import DatabaseSettings

# Options that only a queue pool takes: passed on for a user's own poolclass only when the
# user set them, so that NullPool works without dbscope's defaults getting in its way.
QUEUE_POOL_OPTIONS: Final = ("pool_size", "max_overflow", "pool_timeout")
# Options people mean when they misspell one; used only to suggest a fix.
KNOWN_ENGINE_OPTIONS: Final = (
    "poolclass",
    "connect_args",
    "execution_options",
    "isolation_level",
    "json_serializer",
    "json_deserializer",
    "pool_use_lifo",
    "pool_reset_on_return",
    "echo_pool",
    "hide_parameters",
    "logging_name",
    "pool_logging_name",
    "query_cache_size",
    "async_creator",
    "plugins",
)
# Set on a MariaDB connection's info while a unit's statement timeout is in force.
STATEMENT_TIMEOUT_FLAG: Final = "dbscope.statement_timeout"
# A MySQL wait_timeout of 8 hours is the server default; recycle well before it.
MYSQL_RECYCLE_SECONDS: Final = 3600


def engine_options(settings: DatabaseSettings, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Combine the settings, the per-database defaults and the user's engine options."""
    url = settings.url
    backend = url.get_backend_name()
    options: dict[str, Any] = {
        "echo": settings.echo,
        # dbscope checks connections itself (_liveness), without SQLAlchemy's ping per use.
        "pool_pre_ping": False,
        "pool_recycle": _recycle(settings, backend),
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout,
    }
    if settings.is_memory:
        # One connection holds the whole database: never recycle it, and pinging it buys
        # nothing, since a replacement would be an empty database.
        options.update(poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0)
        options.update(pool_recycle=-1)
    if "poolclass" in extra and settings.pool_max_waiters is not None:
        message = (
            f"pool_max_waiters={settings.pool_max_waiters} applies to dbscope's own pool, but "
            f"poolclass={getattr(extra['poolclass'], '__name__', extra['poolclass'])!r} replaces "
            "it; remove one of the two."
        )
        raise ConfigurationError(message)
    if "poolclass" in extra:
        for name in QUEUE_POOL_OPTIONS:
            if name not in settings.model_fields_set:
                del options[name]
    elif not settings.is_memory:
        options.update(poolclass=QueuedPool, max_waiters=settings.pool_max_waiters)
    user_connect_args = dict(extra.get("connect_args", {}))
    options.update(extra)
    options["connect_args"] = {**_default_connect_args(settings), **user_connect_args}
    return options


def _recycle(settings: DatabaseSettings, backend: str) -> int:
    if settings.pool_recycle is not None:
        return settings.pool_recycle
    return MYSQL_RECYCLE_SECONDS if backend in ("mysql", "mariadb") else -1


def _default_connect_args(settings: DatabaseSettings) -> dict[str, Any]:
    """The connect timeout and application name, in each driver's own words."""
    driver = settings.url.get_driver_name()
    timeout = settings.connect_timeout
    name = settings.application_name
    if driver == "asyncpg":
        args: dict[str, Any] = {"timeout": timeout}
        if name:
            args["server_settings"] = {"application_name": name}
        return args
    if driver == "psycopg":
        # libpq takes whole seconds and treats values below 2 as 2.
        args = {"connect_timeout": max(2, round(timeout))}
        if name:
            args["application_name"] = name
        return args
    if driver in ("asyncmy", "aiomysql"):
        return {"connect_timeout": timeout, "async_creator_fn": _bounded_connect(driver, timeout)}
    return {}


def _bounded_connect(driver: str, timeout: float) -> Callable[..., Awaitable[Any]]:
    """The driver's connect, given up after ``timeout`` seconds.

    asyncmy and aiomysql apply their ``connect_timeout`` to opening the socket only: a server
    that accepts and then never greets would hang the connect, and the request, forever.
    SQLAlchemy's async dialects call ``async_creator_fn`` in place of the driver's connect.
    """
    connect = importlib.import_module(driver).connect

    async def connect_within_timeout(*args: Any, **kwargs: Any) -> Any:
        return await asyncio.wait_for(connect(*args, **kwargs), timeout)

    return connect_within_timeout


def check_engine_options(url: URL, options: Mapping[str, Any]) -> None:
    """Let SQLAlchemy judge the options now, and explain its verdict; builds no connection."""
    try:
        create_async_engine(url, **options)
    except TypeError as error:
        raise ConfigurationError(_explain_invalid_arguments(str(error), options)) from None
    except ArgumentError as error:
        pool = options.get("poolclass")
        if (
            pool is not None
            and issubclass(pool, QueuePool)
            and not issubclass(pool, AsyncAdaptedQueuePool)
        ):
            message = (
                f"poolclass={pool.__name__} cannot be used with asyncio. Remove poolclass "
                "(dbscope uses AsyncAdaptedQueuePool), or pass AsyncAdaptedQueuePool or NullPool."
            )
            raise ConfigurationError(message) from None
        raise ConfigurationError(f"Invalid engine option: {error}") from None
    except InvalidRequestError as error:
        raise ConfigurationError(f"Invalid database URL {url!r}: {error}") from None
    except ModuleNotFoundError as error:
        message = (
            f"The URL {url!r} needs the module {error.name!r}, which is not installed; "
            "install the async driver for this database."
        )
        raise ConfigurationError(message) from None


def _explain_invalid_arguments(text: str, options: Mapping[str, Any]) -> str:
    # SQLAlchemy says: "Invalid argument(s) 'a','b' sent to create_engine(), using
    # configuration PGDialect_asyncpg/NullPool/Engine. ..."
    head, _, tail = text.partition(" sent to ")
    names = re.findall(r"'([^']+)'", head)
    configuration = re.search(r"configuration (\S+?)\.?\s", tail)
    pool = configuration.group(1).split("/")[1] if configuration else "this pool"
    known = [*DatabaseSettings.model_fields, *KNOWN_ENGINE_OPTIONS, "url", "schema"]
    problems = []
    for name in names:
        if name in QUEUE_POOL_OPTIONS:
            problems.append(
                f"{name}={options.get(name)!r} does not apply to {pool}, which keeps no queue "
                f"of connections; remove {name}, or remove poolclass to get a queue pool"
            )
            continue
        guesses = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {guesses[0]!r}?" if guesses else "see the list of settings"
        problems.append(f"unknown option {name!r}: {hint}")
    return "Invalid Database option: " + "; ".join(problems) + "."


def build_engine(settings: DatabaseSettings, options: Mapping[str, Any]) -> AsyncEngine:
    """Create the engine with its per-database event listeners; call inside the event loop."""
    engine = create_async_engine(settings.url, **options)
    backend = settings.url.get_backend_name()
    if backend == "sqlite":
        _configure_sqlite(engine, wal=not settings.is_memory)
    elif backend == "postgresql":
        event.listen(engine.sync_engine, "connect", _check_client_connection)
    elif backend in ("mysql", "mariadb"):
        event.listen(engine.sync_engine, "reset", _reset_statement_timeout)
    return engine


def ping_after(settings: DatabaseSettings) -> float | None:
    """Seconds idle after which a connection is pinged before use; None: never checked.

    Connections are checked by default, unless the database is a file, which cannot hang up.
    """
    checked = settings.pool_pre_ping
    if checked is None:
        checked = settings.url.get_backend_name() != "sqlite"
    return settings.pool_pre_ping_after if checked else None


def _check_client_connection(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    # A query whose request was cancelled has its connection closed by SQLAlchemy, but the
    # server runs the query to its end unless it checks on the client (PostgreSQL 14+):
    # cancelled requests would pile up running backends. The WHERE keeps older servers,
    # which lack the setting, out of it.
    cursor = dbapi_connection.cursor()
    cursor.execute(
        "SELECT set_config('client_connection_check_interval', '100', false) "
        "WHERE current_setting('server_version_num')::int >= 140000"
    )
    cursor.close()
    dbapi_connection.commit()  # the drivers opened a transaction; a rollback would undo it


def _reset_statement_timeout(
    dbapi_connection: Any, record: ConnectionPoolEntry, reset_state: Any
) -> None:
    # A unit's statement timeout on MariaDB is a session variable (there is no SET LOCAL):
    # put it back before the connection serves anyone else.
    if record.info.pop(STATEMENT_TIMEOUT_FLAG, False):
        cursor = dbapi_connection.cursor()
        cursor.execute("SET SESSION max_statement_time = DEFAULT")
        cursor.close()


def _configure_sqlite(engine: AsyncEngine, *, wal: bool) -> None:
    pragmas = ["PRAGMA foreign_keys=ON"]
    if wal:
        # WAL lets readers proceed while one connection writes.
        pragmas.append("PRAGMA journal_mode=WAL")

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # The sqlite3 module's own transaction handling issues BEGIN only before writes and
        # breaks SAVEPOINT; turn it off and let SQLAlchemy say BEGIN (below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")


@dataclass(frozen=True)
class ServerInfo:
    """What ``Database.connect()`` learned from the server."""

    backend: str
    version: tuple[int | str, ...]
    isolation_levels: tuple[str, ...] = ()


async def verify(
    engine: AsyncEngine, settings: DatabaseSettings, options: Mapping[str, Any]
) -> tuple[AsyncEngine, ServerInfo]:
    """Open one connection to prove the database is there; fix the MySQL recycle if needed.

    Returns the engine to use (rebuilt when the server's ``wait_timeout`` is shorter than the
    recycle) and what the server said about itself.

    Raises:
        DatabaseUnavailableError: the server could not be reached.
        ConfigurationError: the server refused the connection (user, password, database).
    """
    url = settings.url
    try:
        async with engine.connect() as connection:
            version = connection.dialect.server_version_info or ()
            raw = await connection.get_raw_connection()
            assert raw.dbapi_connection is not None
            levels = connection.dialect.get_isolation_level_values(raw.dbapi_connection)
            wait_timeout = None
            if url.get_backend_name() in ("mysql", "mariadb"):
                result = await connection.exec_driver_sql("SELECT @@wait_timeout")
                wait_timeout = int(result.scalar_one())
    except BaseException as error:
        await engine.dispose()
        if isinstance(error, Exception):
            raise connect_error(error, url) from error
        raise
    info = ServerInfo(
        backend=url.get_backend_name(),
        version=tuple(version),
        isolation_levels=tuple(level for level in levels if level != "AUTOCOMMIT"),
    )
    recycle = options.get("pool_recycle", -1)
    if wait_timeout is not None and (recycle < 0 or recycle >= wait_timeout):
        # The server closes idle connections after wait_timeout; recycle them before that.
        await engine.dispose()
        engine = build_engine(settings, {**options, "pool_recycle": max(1, wait_timeout // 2)})
    return engine, info


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of the connection pool.

    Attributes:
        size: connections the pool keeps (``pool_size``).
        checked_out: connections in use by a unit of work right now.
        checked_in: idle connections waiting in the pool.
        overflow: connections open beyond ``pool_size`` (negative while the pool is filling).
        invalidated: connections thrown away since connect() because they died, failed a
            pre-ping, or were interrupted mid-query (a cancelled request, say); each costs a
            reconnect.
        pinged: connections pinged before use since connect(), because they had been idle
            for ``pool_pre_ping_after`` seconds or their driver saw the server hang up.
        waiting: requests waiting in line for a connection right now.
    """

    size: int
    checked_out: int
    checked_in: int
    overflow: int
    invalidated: int
    pinged: int = 0
    waiting: int = 0


class PoolCounters:
    """What the pool's events count over the life of one engine."""

    def __init__(self, engine: AsyncEngine, ping_after: float | None = None) -> None:
        self.engine = engine
        self.invalidated = 0
        self.liveness = None if ping_after is None else LivenessCheck(engine, ping_after)
        event.listen(engine.sync_engine, "invalidate", self._count_invalidation)
        event.listen(engine.sync_engine, "soft_invalidate", self._count_invalidation)

    def close(self) -> None:
        """Stop counting (the engine outlives these counters)."""
        event.remove(self.engine.sync_engine, "invalidate", self._count_invalidation)
        event.remove(self.engine.sync_engine, "soft_invalidate", self._count_invalidation)
        if self.liveness is not None:
            self.liveness.close()

    def _count_invalidation(self, *args: Any) -> None:
        self.invalidated += 1

    def stats(self) -> PoolStats:
        """The pool's numbers now."""
        pool: Any = self.engine.pool
        return PoolStats(
            size=pool.size(),
            checked_out=pool.checkedout(),
            checked_in=pool.checkedin(),
            overflow=pool.overflow(),
            invalidated=self.invalidated,
            pinged=0 if self.liveness is None else self.liveness.pings,
            waiting=pool.waiting() if isinstance(pool, QueuedPool) else 0,
        )
