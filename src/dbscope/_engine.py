"""Building, checking and verifying engines, and the engine views units with options run on.

The engine options are checked at construction by letting SQLAlchemy build (and drop) an
engine, since SQLAlchemy knows best which options a dialect and pool accept; dbscope only
rewrites its answer into a message that says the fix. The real engine is built in
``Database.connect()``, inside the running event loop, because asyncio pools and driver
connections belong to the loop that made them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import sqlalchemy.ext.asyncio
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)

from dbscope._connection_ends import bound_closes, gives_back_on_failure, puts_back_before_checkin
from dbscope._dialects import APPLICATION_NAME_BYTES, Backend, Standbys, backend, driver
from dbscope._engine_checks import QUEUE_POOL_OPTIONS, check_option_types
from dbscope._errors import connect_error
from dbscope._exceptions import ConfigurationError
from dbscope._failed_transactions import remembers_failures
from dbscope._migrations import require_schema
from dbscope._pool import QueuedPool
from dbscope._settings import DatabaseSettings

logger = logging.getLogger("dbscope")


def engine_options(settings: DatabaseSettings, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Combine the settings, the per-database defaults and the user's engine options."""
    check_option_types(extra)
    options: dict[str, Any] = {
        "echo": settings.echo,
        # dbscope checks connections itself (_liveness), without SQLAlchemy's ping per use.
        "pool_pre_ping": False,
        "pool_recycle": _recycle(settings),
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout,
    }
    if settings.is_memory:
        # One connection holds the whole database: never recycle it, and pinging it buys
        # nothing, since a replacement would be an empty database.
        options.update(pool_size=1, max_overflow=0, pool_recycle=-1)
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
    else:
        options.update(poolclass=QueuedPool, max_waiters=settings.pool_max_waiters)
    user_connect_args = dict(extra.get("connect_args", {}))
    options.update(extra)
    options["connect_args"] = _merged(_default_connect_args(settings), user_connect_args)
    if settings.pgbouncer is not None:
        # What the user asked for, in the URL's query or connect_args, over dbscope's own.
        asked = {**options["connect_args"], **settings.url.query, **user_connect_args}
        _refuse_for_pooler(settings, asked)
    return options


def _recycle(settings: DatabaseSettings) -> int:
    if settings.pool_recycle is not None:
        return settings.pool_recycle
    return backend(settings.url.get_backend_name()).recycle


def _default_connect_args(settings: DatabaseSettings) -> dict[str, Any]:
    """The connect timeout and application name, in each driver's own words; behind
    PgBouncer, what the driver needs there too."""
    name = settings.application_name
    if name is not None and not name.isprintable():
        # The server refused it at every connect ("invalid startup packet"), told as an outage.
        message = (
            f"application_name={name!r} holds a character that is not printable (a NUL, a "
            "newline): the server refuses it at every connect. Use printable text."
        )
        raise ConfigurationError(message)
    size = 0 if name is None else len(name.encode())
    if size > APPLICATION_NAME_BYTES:
        # PostgreSQL keeps the first 63 bytes, the SQL comments' tag the whole name: two names
        # for one app, and names that differ only past the cut look alike in pg_stat_activity.
        message = (
            f"application_name={name!r} is {size} bytes long, and PostgreSQL keeps at most "
            f"{APPLICATION_NAME_BYTES} of it (the rest cut off without a word): use a name of at "
            f"most {APPLICATION_NAME_BYTES} bytes."
        )
        raise ConfigurationError(message)
    known = driver(settings.url.get_driver_name())
    if known is None:
        return {}
    args = known.connect_args(settings.connect_timeout, name)
    overridden = sorted(set(args) & set(settings.url.query))
    if overridden:  # SQLAlchemy gives connect_args the last word: the URL's went unread
        message = (
            f"The database URL gives ?{overridden[0]}=, which dbscope sets itself from its "
            "settings (connect_timeout, application_name): remove it from the URL and set the "
            "setting instead."
        )
        raise ConfigurationError(message)
    if settings.pgbouncer is not None and known.pooler_args is not None:
        args.update(known.pooler_args(settings.pgbouncer))
    return args


def _merged(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` over ``defaults``, a mapping given merged into dbscope's: asyncpg's
    ``server_settings`` of the user's (a TimeZone) kept the application name out."""
    merged = {**defaults, **given}
    for name, value in given.items():
        default = defaults.get(name)
        if isinstance(default, Mapping) and isinstance(value, Mapping):
            merged[name] = {**default, **value}
    return merged


def _refuse_for_pooler(settings: DatabaseSettings, connect_args: Mapping[str, Any]) -> None:
    known = driver(settings.url.get_driver_name())
    if known is None or settings.pgbouncer is None:
        return  # the settings refused a pgbouncer mode for a driver dbscope does not know
    conflict = known.pooler_conflict(settings.pgbouncer, connect_args)
    if conflict is not None:
        message = (
            f"pgbouncer={settings.pgbouncer!r} puts PgBouncer's transaction mode between "
            f"dbscope and PostgreSQL, and {conflict}"
        )
        raise ConfigurationError(message)


def build_engine(settings: DatabaseSettings, options: Mapping[str, Any]) -> AsyncEngine:
    """Create the engine with its per-database event listeners; call inside the event loop."""
    # Looked up on the module at each call, not imported: OpenTelemetry's SQLAlchemy
    # instrumentation replaces that attribute, and so traces the engines built after it runs.
    engine = gives_back_on_failure(
        sqlalchemy.ext.asyncio.create_async_engine(settings.url, **options)
    )
    rules = backend(settings.url.get_backend_name())
    rules.configure(engine, memory=settings.is_memory)
    bound_closes(engine)
    remembers_failures(engine, rules)
    # Now, before any checkin: a reset listener added while a checkin awaits in another one
    # breaks SQLAlchemy's loop over them ("deque mutated during iteration").
    puts_back_before_checkin(engine)
    if settings.pgbouncer is None:
        rules.set_up_sessions(engine)
    if settings.defer_begin:
        rules.defer_begins(engine)
    return engine


def let_go_of_closed_loop_pool(engine: AsyncEngine) -> None:
    """Replace the pool of an event loop that has closed with an empty one, without I/O
    (``engine.dispose(close=False)``), and close its idle connections without that loop.

    ``asyncio.run()`` returned without ``dispose()``: a graceful close would go through the
    closed loop, which refuses ("Event loop is closed", logged by the pool as an ERROR, or
    left to the garbage collector's ResourceWarning of the unclosed socket). Connections
    checked out then were lost with the tasks the loop ended.
    """
    pool = engine.sync_engine.pool
    idle = pool.take_idle() if isinstance(pool, QueuedPool) else []
    engine.sync_engine.dispose(close=False)
    known = driver(engine.url.get_driver_name())
    close = known.close_without_loop if known is not None else None
    if close is not None:
        for connection in idle:
            close(connection)
    logger.warning(
        "Let go of the connection pool of %r, whose event loop has closed (asyncio.run() "
        "returned without dispose()); its %d idle connection(s) closed without that loop. "
        "Dispose the Database before its event loop ends.",
        engine.url,
        len(idle),
    )


def ping_after(settings: DatabaseSettings) -> float | None:
    """Seconds idle after which a connection is pinged before use; None: never checked.

    Connections are checked by default, unless the database is a file, which cannot hang up.
    """
    checked = settings.pool_pre_ping
    if checked is None:
        checked = backend(settings.url.get_backend_name()).pinged
    return settings.pool_pre_ping_after if checked else None


@dataclass(frozen=True)
class ServerInfo:
    """What ``Database.connect()`` learned from the server."""

    backend: str
    version: tuple[int | str, ...]
    isolation_levels: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        """What people call the server: ``"PostgreSQL"``, ``"MariaDB/MySQL"``, ``"SQLite"``;
        SQLAlchemy's name of the backend (``backend``) for a server dbscope does not know."""
        return backend(self.backend).title or self.backend


async def verify(
    engine: AsyncEngine, settings: DatabaseSettings, options: Mapping[str, Any]
) -> tuple[AsyncEngine, ServerInfo, Standbys | None]:
    """Open one connection to prove the database is there; fix the MySQL recycle if needed.

    Returns the engine to use (rebuilt when the server's ``wait_timeout`` is shorter than the
    recycle), what the server said about itself, and what a primary said of its standbys
    (None where the question does not apply).

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
            rules = backend(url.get_backend_name())
            wait_timeout = await rules.idle_timeout(connection)
            # Whether commits wait for a standby (_durability.py): at start-up, not per request.
            standbys = await rules.standbys(connection)
            if settings.postgres_schema is not None:
                # The server takes any name in search_path: every unit's first statement
                # would fail instead ("relation ... does not exist"), never naming it.
                await connection.run_sync(require_schema, settings.postgres_schema)
    except BaseException as error:
        await engine.dispose()
        if isinstance(error, Exception) and not isinstance(error, ConfigurationError):
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
    return engine, info, standbys


def unit_bind(
    factory: async_sessionmaker[AsyncSession],
    rules: Backend,
    read_only: bool,
    isolation_level: str | None,
) -> dict[str, Any]:
    """The session arguments of a unit: an engine view when it needs one (below)."""
    # An isolation level must hold for every transaction of the unit (a retried attempt, a
    # mid-unit commit), and a pooled connection is reset when returned: bind the session to an
    # engine view with the level, which applies it at each checkout. On PostgreSQL the same
    # view makes a read-only unit begin with BEGIN READ ONLY, one statement instead of BEGIN
    # then SET TRANSACTION READ ONLY; on SQLite a unit that may write begins IMMEDIATE (its
    # writer view). A test's bound connection keeps the transaction the test began (the
    # backend's begin() then sets read-only itself).
    bind = factory.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        return {}
    view = rules.read_only_view if read_only else rules.writer_view
    if isolation_level is None and not view:
        return {}
    return {"bind": _engine_view(factory, bind, isolation_level, view)}


# The engine views of each sessionmaker, built once per options rather than per unit (a view
# costs about 30 µs), and gone with their sessionmaker, which a dispose drops. (Keyed by the
# engine, each view's reference to it kept it alive: disposed engines piled up.)
_VIEWS: WeakKeyDictionary[
    async_sessionmaker[AsyncSession],
    dict[tuple[str | None, tuple[str, ...] | None], AsyncEngine],
] = WeakKeyDictionary()


def _engine_view(
    factory: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    isolation_level: str | None,
    read_only: tuple[str, ...] | None,
) -> AsyncEngine:
    views = _VIEWS.setdefault(factory, {})
    key = (isolation_level, read_only)
    if key not in views:
        view: dict[str, Any] = dict.fromkeys(read_only or (), True)
        if isolation_level is not None:
            view["isolation_level"] = isolation_level
        puts_back_before_checkin(engine)
        views[key] = gives_back_on_failure(engine.execution_options(**view))
    return views[key]
