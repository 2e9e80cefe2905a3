"""Checking the engine options a Database is given, before any engine is built for real.

Some are checked here, where SQLAlchemy would take them and fail later (at the first connect,
or never: a negative cache size loops for ever); the rest by letting SQLAlchemy build (and
drop) an engine, since it knows best which options a dialect and pool accept; dbscope only
rewrites its answer into a message that says the fix.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, InvalidRequestError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool, QueuePool

from dbscope._exceptions import ConfigurationError
from dbscope._setting_checks import a_kind
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


def check_option_types(extra: Mapping[str, Any]) -> None:
    """Refuse what SQLAlchemy would take now and fail on later: wrong types, AUTOCOMMIT, an
    isolation level that is none, a cache size below 0."""
    # Wrong types would fail deep inside SQLAlchemy ("'str' object has no attribute
    # '__dict__'"). Values are not shown: connect_args may hold a password.
    pool = extra.get("poolclass")
    if pool is not None and not (isinstance(pool, type) and issubclass(pool, Pool)):
        message = (
            f"poolclass must be a pool class, got {a_kind(pool)}: pass the class "
            "itself (poolclass=NullPool, from sqlalchemy.pool), or leave it out for dbscope's."
        )
        raise ConfigurationError(message)
    for name in ("connect_args", "execution_options"):
        value = extra.get(name)
        if value is not None and not isinstance(value, Mapping):
            message = f"{name} must be a dict of names to values, got {a_kind(value)}."
            raise ConfigurationError(message)
    _check_isolation_level(extra)
    _check_cache_sizes({**dict(extra.get("connect_args") or {}), **extra})


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


# The caches whose size SQLAlchemy and asyncpg take as given: below 0, SQLAlchemy's LRU cache
# trims itself for ever (the first connect never returned, a CPU spinning).
CACHE_SIZES: Final = ("query_cache_size", "prepared_statement_cache_size", "statement_cache_size")


def _check_cache_sizes(given: Mapping[str, Any], *, text: bool = False) -> None:
    """Refuse a cache size below 0 among ``given`` (the options and connect_args, or, if
    ``text``, a URL's query, whose values SQLAlchemy reads as numbers and refuses itself)."""
    for name in CACHE_SIZES:
        value = given.get(name)
        if value is None or (text and not str(value).lstrip("-").isdigit()):
            continue
        size = value if isinstance(value, int) and not isinstance(value, bool) else None
        if text:
            size = int(value)
        if size is None or size < 0:
            message = (
                f"{name}={value!r} is no cache size: use 0 (no cache) or more, or leave it out."
            )
            raise ConfigurationError(message)


def check_engine_options(url: URL, options: Mapping[str, Any]) -> None:
    """Let SQLAlchemy judge the options now, and explain its verdict; builds no connection."""
    _check_cache_sizes(url.query, text=True)
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
