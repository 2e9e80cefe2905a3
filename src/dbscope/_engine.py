"""Building, checking and verifying engines, and the engine views units with options run on.

The engine options are checked at construction by letting SQLAlchemy build (and drop) an
engine, since SQLAlchemy knows best which options a dialect and pool accept; dbscope only
rewrites its answer into a message that says the fix. The real engine is built in
``Database.connect()``, inside the running event loop, because asyncio pools and driver
connections belong to the loop that made them.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy.ext.asyncio
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, InvalidRequestError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool, QueuePool

from dbscope._connection_ends import bound_closes, gives_back_on_failure, puts_back_before_checkin
from dbscope._dialects import Backend, Standbys, backend, driver
from dbscope._errors import connect_error
from dbscope._exceptions import ConfigurationError
from dbscope._failed_transactions import refuses_failed_commits
from dbscope._pool import QueuedPool
from dbscope._settings import DatabaseSettings
from dbscope._unit_options import ISOLATION_LEVELS

# What a blog's session manager gives async_sessionmaker, which dbscope builds, and instead.
SESSIONMAKER_OPTIONS: Final = {
    "class_": "pass session_class= for a subclass of AsyncSession",
    "expire_on_commit": "its sessions never expire what they loaded at a commit; remove it",
    "autoflush": "its sessions do not flush before each query (autoflush=False); remove it",
}
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


def engine_options(settings: DatabaseSettings, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Combine the settings, the per-database defaults and the user's engine options."""
    _check_option_types(extra)
    _check_isolation_level(extra)
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


def _check_option_types(extra: Mapping[str, Any]) -> None:
    # Wrong types would fail deep inside SQLAlchemy ("'str' object has no attribute
    # '__dict__'"). Values are not shown: connect_args may hold a password.
    pool = extra.get("poolclass")
    if pool is not None and not (isinstance(pool, type) and issubclass(pool, Pool)):
        message = (
            f"poolclass must be a pool class, got a {type(pool).__name__}: pass the class "
            "itself (poolclass=NullPool, from sqlalchemy.pool), or leave it out for dbscope's."
        )
        raise ConfigurationError(message)
    for name in ("connect_args", "execution_options"):
        value = extra.get(name)
        if value is not None and not isinstance(value, Mapping):
            message = f"{name} must be a dict of names to values, got a {type(value).__name__}."
            raise ConfigurationError(message)


def _check_isolation_level(extra: Mapping[str, Any]) -> None:
    # In autocommit every statement commits at once: a request that fails half-way would keep
    # its first writes, which is what a unit of work exists to prevent.
    for given, level in (
        ("isolation_level", extra.get("isolation_level")),
        ("execution_options", dict(extra.get("execution_options") or {}).get("isolation_level")),
    ):
        if isinstance(level, str) and level.upper() == "AUTOCOMMIT":
            message = (
                f"{given} sets isolation_level={level!r} for every connection, which would "
                "make each statement commit on its own: a failed request would keep its "
                "writes. Remove it. For statements outside a transaction use `async with "
                "db.lease()` (the driver connection in autocommit); for a stricter level per "
                "unit, db.transaction(isolation_level=...) or db.session_with(...)."
            )
            raise ConfigurationError(message)
        # SQLAlchemy takes any case, and '_' for ' '; anything else fails only at connect.
        words = level.upper().replace("_", " ") if isinstance(level, str) else None
        if level is not None and words not in ISOLATION_LEVELS:
            where = "" if given == "isolation_level" else f" in {given}"
            message = (
                f"isolation_level={level!r}{where} is not an isolation level: use one of "
                f"{', '.join(map(repr, ISOLATION_LEVELS))}, or leave it unset for the "
                "database's own."
            )
            raise ConfigurationError(message)


def _recycle(settings: DatabaseSettings) -> int:
    if settings.pool_recycle is not None:
        return settings.pool_recycle
    return backend(settings.url.get_backend_name()).recycle


def _default_connect_args(settings: DatabaseSettings) -> dict[str, Any]:
    """The connect timeout and application name, in each driver's own words; behind
    PgBouncer, what the driver needs there too."""
    known = driver(settings.url.get_driver_name())
    if known is None:
        return {}
    args = known.connect_args(settings.connect_timeout, settings.application_name)
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


def check_engine_options(url: URL, options: Mapping[str, Any]) -> None:
    """Let SQLAlchemy judge the options now, and explain its verdict; builds no connection."""
    try:
        # The name imported at start-up: this engine is thrown away, no instrumentation's.
        create_async_engine(url, **options)
    except TypeError as error:
        raise ConfigurationError(_explain_invalid_arguments(str(error), options)) from None
    except KeyError as error:  # a value SQLAlchemy looks up in a table: echo_pool="bogus"
        given = ", ".join(f"{k}={v!r}" for k, v in options.items() if v == error.args[0])
        message = f"Invalid engine option {given}: a value SQLAlchemy's create_engine() lacks"
        raise ConfigurationError(message) from None
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
    except ValueError as error:
        raise ConfigurationError(_unreadable_query(url, error)) from None
    except ModuleNotFoundError as error:
        message = (
            f"The URL {url!r} needs the module {error.name!r}, which is not installed; "
            "install the async driver for this database."
        )
        raise ConfigurationError(message) from None


def _unreadable_query(url: URL, error: ValueError) -> str:
    """Why SQLAlchemy could not read ``url``'s query: a value it converts to a number
    (``?read_timeout=abc``), whose int() named neither the option nor the fix, or an IPv6
    host in a multi-host ``?host=``, which it splits at the first colon. The query holds no
    password by now (``_urls.normalize_url``)."""
    hosts = url.query.get("host")
    if isinstance(hosts, tuple) and any(host.startswith("[") for host in hosts):
        return (
            "The database URL lists an IPv6 address among several ?host= values, which "
            "SQLAlchemy cannot read: name those hosts by a host name, or give the address as "
            "the only host (postgresql+asyncpg://app@[::1]:5432/app)."
        )
    query = url.render_as_string(hide_password=True).partition("?")[2]
    return (
        f"The database URL's options could not be read ({error}): check their values "
        f"(?{query}); a number is written without quotes or unit, e.g. ?read_timeout=10."
    )


def _explain_invalid_arguments(text: str, options: Mapping[str, Any]) -> str:
    # SQLAlchemy says: "Invalid argument(s) 'a','b' sent to create_engine(), using
    # configuration PGDialect_asyncpg/NullPool/Engine. ..."
    head, _, tail = text.partition(" sent to ")
    names = re.findall(r"'([^']+)'", head)
    configuration = re.search(r"configuration (\S+?)\.?\s", tail)
    pool = configuration.group(1).split("/")[1] if configuration else "this pool"
    known = [*DatabaseSettings.model_fields, *KNOWN_ENGINE_OPTIONS, "url", "schema", "replicas"]
    problems = []
    for name in names:
        if name in QUEUE_POOL_OPTIONS:
            problems.append(
                f"{name}={options.get(name)!r} does not apply to {pool}, which keeps no queue "
                f"of connections; remove {name}, or remove poolclass to get a queue pool"
            )
            continue
        if name in SESSIONMAKER_OPTIONS:
            problems.append(
                f"{name!r} is an option of async_sessionmaker, which dbscope builds: "
                f"{SESSIONMAKER_OPTIONS[name]}"
            )
            continue
        guesses = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {guesses[0]!r}?" if guesses else "see the list of settings"
        problems.append(f"unknown option {name!r}: {hint}")
    joined = "; ".join(problems)
    return f"Invalid Database option: {joined}" + ("" if joined.endswith("?") else ".")


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
    refuses_failed_commits(engine, rules)
    # Now, before any checkin: a reset listener added while a checkin awaits in another one
    # breaks SQLAlchemy's loop over them ("deque mutated during iteration").
    puts_back_before_checkin(engine)
    if settings.pgbouncer is None:
        rules.set_up_sessions(engine)
    if settings.defer_begin:
        rules.defer_begins(engine)
    return engine


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
    # then SET TRANSACTION READ ONLY. A test's bound connection keeps the transaction the test
    # began (the backend's begin() then sets read-only itself).
    bind = factory.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        return {}
    view = rules.read_only_view if read_only else None
    if isolation_level is None and not view:
        return {}
    return {"bind": _engine_view(bind, isolation_level, view)}


@functools.lru_cache(maxsize=32)
def _engine_view(
    engine: AsyncEngine, isolation_level: str | None, read_only: tuple[str, ...] | None
) -> AsyncEngine:
    # Built once per engine and options rather than per unit: a view costs about 30 µs. The
    # cache keeps at most 32 views, and the engines behind them, alive.
    view: dict[str, Any] = dict.fromkeys(read_only or (), True)
    if isolation_level is not None:
        view["isolation_level"] = isolation_level
    puts_back_before_checkin(engine)
    return gives_back_on_failure(engine.execution_options(**view))
