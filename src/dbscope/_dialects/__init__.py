"""Each database's rules in one place: one record per backend, one per driver.

``backend(name)`` gives the rules of a backend by SQLAlchemy's name or an alias
(``postgres``, ``mariadb``); ``driver(name)`` the record of a driver. A backend dbscope does
not know gets :data:`GENERIC`, which asks nothing special of its transactions and reads no
codes from its errors.
"""

from __future__ import annotations

import difflib
import importlib.util
import shutil
from collections.abc import Sequence
from typing import Final

from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchModuleError

from dbscope._dialects import mysql, postgresql, sqlite
from dbscope._dialects._base import (
    OWN,
    OWN_STATEMENT,
    Backend,
    Begin,
    Client,
    DatabaseRefused,
    ErrorKind,
)
from dbscope._dialects.deferred_begin import only_read
from dbscope._dialects.driver import (
    CLOSE_TIMEOUT,
    ClosedIfCancelled,
    Driver,
    LeaseStatus,
    PoolerMode,
    through_cancels,
)
from dbscope._dialects.hosts import libpq_hosts
from dbscope._dialects.marks import Found, Presence
from dbscope._dialects.postgresql import (
    APPLICATION_NAME_BYTES,
    SYNCHRONOUS_COMMIT,
    SynchronousCommit,
)
from dbscope._dialects.replication import Replication, Standbys
from dbscope._dialects.write_lock import AWAITED_BY, WaitsForItself

__all__ = [
    "APPLICATION_NAME_BYTES",
    "AWAITED_BY",
    "BACKENDS",
    "CLOSE_TIMEOUT",
    "GENERIC",
    "OWN",
    "OWN_STATEMENT",
    "SYNCHRONOUS_COMMIT",
    "Backend",
    "Begin",
    "Client",
    "ClosedIfCancelled",
    "DatabaseRefused",
    "Driver",
    "ErrorKind",
    "Found",
    "LeaseStatus",
    "PoolerMode",
    "Presence",
    "Replication",
    "Standbys",
    "SynchronousCommit",
    "WaitsForItself",
    "backend",
    "client_command",
    "driver",
    "libpq_hosts",
    "only_read",
    "resolve_async_url",
    "resolve_primary_url",
    "through_cancels",
]

BACKENDS: Final = (postgresql.BACKEND, mysql.BACKEND, sqlite.BACKEND)
GENERIC: Final = Backend(name="generic", aliases=())
_BY_NAME: Final = {name: b for b in BACKENDS for name in (b.name, *b.aliases)}
_DRIVERS: Final = {name: d for b in BACKENDS for name, d in b.drivers.items()}
_SQLALCHEMY_NAMES: Final = ("postgresql", "mysql", "mariadb", "sqlite")


def backend(name: str) -> Backend:
    """The rules of backend ``name`` (SQLAlchemy's name or an alias); GENERIC if unknown."""
    return _BY_NAME.get(name, GENERIC)


def driver(name: str) -> Driver | None:
    """The record of driver ``name``, or None for a driver dbscope does not know."""
    return _DRIVERS.get(name)


def resolve_async_url(url: URL) -> URL:
    """Return ``url`` with an installed async driver, or raise ValueError saying which to use.

    A URL without a driver (``postgresql://``) gets the first installed async driver for its
    backend; a synchronous driver is refused with the URLs that would work instead.
    Backends dbscope does not know are left for SQLAlchemy to judge, once it has a dialect.
    """
    rules = backend(url.get_backend_name())
    if rules is GENERIC:
        _check_dialect(url)
        return url
    # SQLAlchemy knows "mariadb" (a dialect of its own) but not "postgres".
    prefix = url.get_backend_name() if url.get_backend_name() in _SQLALCHEMY_NAMES else rules.name
    drivers = list(rules.drivers.values())
    if "+" not in url.drivername:
        installed = [d for d in drivers if importlib.util.find_spec(d.name) is not None]
        if not installed:
            message = (
                f"The URL names no driver for {prefix} and no async driver for it is "
                f"installed; install one with: {drivers[0].install}"
            )
            raise ValueError(message)
        return installed[0].url_query(url.set(drivername=f"{prefix}+{installed[0].name}"))
    name = url.get_driver_name()
    if name not in rules.drivers:
        alternatives = " or ".join(
            f"'{prefix}+{d.name}://' "
            + ("(installed)" if importlib.util.find_spec(d.name) else f"({d.install})")
            for d in drivers
        )
        message = f"The URL uses the driver '{name}', {_kind_of(url)}: use {alternatives}."
        raise ValueError(message)
    if importlib.util.find_spec(name) is None:
        message = (
            f"The URL uses the driver '{name}', which is not installed: "
            f"{rules.drivers[name].install}"
        )
        raise ValueError(message)
    return rules.drivers[name].url_query(url.set(drivername=f"{prefix}+{name}"))


def _kind_of(url: URL) -> str:
    """What the driver a URL names is, to dbscope, which knows it is none of its own."""
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        return f"which SQLAlchemy does not know for {url.get_backend_name()}"
    if getattr(dialect, "is_async", False):
        return "an async driver dbscope has no rules for"
    return "which is synchronous; dbscope needs an async driver"


def resolve_primary_url(url: URL) -> URL:
    """:func:`resolve_async_url` for a Database's own URL, not a replica's: ValueError too
    for one that may reach a server taking no writes (``Backend.primary_url_problem``)."""
    resolved = resolve_async_url(url)
    problem = backend(resolved.get_backend_name()).primary_url_problem(resolved)
    if problem is not None:
        raise ValueError(problem)
    return resolved


def _check_dialect(url: URL) -> None:
    """Refuse a URL whose database SQLAlchemy has no dialect for (a misspelt name, mostly)."""
    try:
        url.get_dialect()
    except NoSuchModuleError:
        name = url.get_backend_name()
        near = difflib.get_close_matches(name, _BY_NAME, n=1)
        known = ", ".join(f"'{b.name}'" for b in BACKENDS)
        hint = f"did you mean '{near[0]}'? " if near else ""
        message = (
            f"The URL begins {url.drivername + '://'!r}, and SQLAlchemy has no dialect for "
            f"{name!r}: {hint}dbscope knows {known}, e.g. "
            "'postgresql+asyncpg://app@localhost/app'."
        )
        raise ValueError(message) from None


def client_command(
    url: URL, arguments: Sequence[str] = (), schema: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line that opens ``url``'s database in its own client, the first of its
    programs on the PATH, followed by ``arguments``; and the variables to add to its
    environment (the password: a command line is shown to every user of the machine). Its
    statements target ``schema``, if given, as the application's units do.

    Raises:
        ValueError: dbscope knows no client for the database (an in-memory SQLite one lives
            inside the application's connection), or none of its clients is on the PATH.
    """
    client = backend(url.get_backend_name()).client(url, schema)
    if client is None:
        message = (
            f"No client can open {_as_written(url)!r}: an in-memory "
            "SQLite database lives inside the application's one connection, "
            "and other databases' clients are not known to dbscope."
        )
        raise ValueError(message)
    for program in client.programs:
        path = shutil.which(program)
        if path is not None:
            return [path, *client.arguments, *arguments], dict(client.environment)
    names = " or ".join(client.programs)
    message = f"A shell on this database runs {names}, and none is on the PATH: {client.install}."
    raise ValueError(message)


def _as_written(url: URL) -> str:
    """``url`` (password hidden) as users write it: SQLAlchemy percent-encodes the name of a
    database that is a file or memory (``:memory:`` as ``%3Amemory%3A``)."""
    rendered = url.render_as_string(hide_password=True)
    if url.host or url.username or not url.database:
        return rendered
    _, mark, query = rendered.partition("?")
    return f"{url.drivername}:///{url.database}{mark}{query}"
