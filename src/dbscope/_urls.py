"""Database URLs as users write them: checked, with the password where masking covers it,
and described for messages without it.

SQLAlchemy's ``URL`` masks its password in ``repr``, ``str`` and ``render_as_string``, but
only the password in ``user:password@``: one given as ``?password=`` is an ordinary query
value, printed in full. :func:`normalize_url` moves it where the masking applies (the drivers
receive the same keyword either way). A password with an unencoded ``@`` is split by the
parser, and its tail taken for the host: that URL is refused before anything shows its host.

Messages name where a database is with :func:`describe_location`, built from the URL's parts,
never from its text: replacing the password in a message would also replace its letters
wherever else they occur, and show a short password by the words it mangled.

This module imports nothing of dbscope's but ``_exceptions`` and ``_dialects``.
"""

from __future__ import annotations

import contextlib
import ipaddress
from itertools import zip_longest
from pathlib import Path
from typing import Final

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from dbscope._dialects import backend, libpq_hosts
from dbscope._exceptions import ConfigurationError

URL_FORM: Final = "dialect+driver://user:password@host:port/database"
# The names of this machine's own server, one host to a comparison of URLs.
LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})
UNENCODED_AT: Final = (
    "The database URL has an '@' in its user name or password that is not percent-encoded, "
    "so where the password ends cannot be told (the URL is not shown, it holds a password): "
    "write each '@' inside the user name or password, or anywhere after them, as %40, e.g. "
    "'postgresql+asyncpg://app:pa%40ss@db.internal/app' for the password 'pa@ss'."
)

UNENCODED_SLASH: Final = (
    "The database URL has no user but an '@' in its database name: most likely a '/' in the "
    "user name that is not percent-encoded, which ended the host there (the URL is not "
    "shown, it may hold a password). Write each '/' in the user name as %2F, e.g. "
    "'postgresql+asyncpg://team%2Fapp:secret@db.internal/app' for the user 'team/app'."
)


def parse_url(value: str | URL) -> URL:
    """Parse and check a URL; the error never repeats the string, which may hold a password."""
    if isinstance(value, URL):
        return normalize_url(value)
    if not isinstance(value, str):  # pydantic's words: "should be a tuple, list, dictionary..."
        raise ValueError(f"must be a URL string or a sqlalchemy URL, not {type(value).__name__}")
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):  # ValueError: a non-numeric port, e.g. a missing host
        message = (
            f"The database URL could not be parsed (its value is not shown, it may hold a "
            f"password); write it as {URL_FORM}, for example "
            "'postgresql+asyncpg://app@localhost/app' or 'sqlite+aiosqlite:///app.db'."
        )
        raise ValueError(message) from None
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"The database URL's port {url.port} is not a TCP port (1 to 65535).")
    if (url.username or url.password) and value.partition("://")[2].count("@") > 1:
        # user:pa@ss/x@host/db parses as password 'pa' at host 'ss', database 'x@host/db':
        # an '@' after the user part, wherever it landed, is a password's unencoded '@'.
        raise ConfigurationError(UNENCODED_AT)
    return normalize_url(url)


def host_alone(value: str) -> str:
    """``value``, a host given apart from the URL (``POSTGRES_HOST``), checked to hold no port.

    Raises:
        ValueError: a ``host:port``, which would be read as an IPv6 address, and the mistake
            reported at the first connect as an outage.
    """
    if "@" in value or "://" in value:
        message = (
            "must be the host alone, not a URL or user@host (the value is not shown: it may "
            "hold a password): give a whole URL as DATABASE_URL, or the host alone"
        )
        raise ValueError(message)
    if _blank_in_host(value):
        message = (
            "must be a host name, which holds no blank (the value is not shown: it may be a "
            "pasted password): give the host alone, e.g. 'db.internal'"
        )
        raise ValueError(message)
    if ":" not in value:
        return value
    with contextlib.suppress(ValueError):
        return str(ipaddress.IPv6Address(value.removeprefix("[").removesuffix("]")))
    host, _, port = value.rpartition(":")
    message = (
        f"must be the host alone: give the port as postgres_port (POSTGRES_PORT={port}), and "
        f"the host as {host!r}"
    )
    raise ValueError(message)


def is_memory(url: URL) -> bool:
    """Tell whether ``url`` names a database that lives in one connection (in-memory SQLite)."""
    return backend(url.get_backend_name()).is_memory(url)


def normalize_url(url: URL) -> URL:
    """Return ``url`` with its password where SQLAlchemy masks it, after checking its user part.

    Raises:
        ConfigurationError: an unencoded ``@`` in the user name or password, or a password
            given twice; the message shows no part of the URL's user or password. A
            ``?connect_timeout=``, which dbscope's own setting overrides.
    """
    check_user_part(url)
    check_hosts(url)
    if "connect_timeout" in url.query and backend(url.get_backend_name()).default_port:
        # dbscope passes its own to every driver, which won over the URL's without a word
        # (psycopg), or the driver refused the name at the first connect (asyncpg).
        message = (
            "The database URL gives ?connect_timeout=, which dbscope sets itself, to bound "
            "each connect and ping: remove it from the URL and set connect_timeout (a "
            "Database option, or CONNECT_TIMEOUT in the environment) instead."
        )
        raise ConfigurationError(message)
    return move_query_password(url)


def check_user_part(url: URL) -> None:
    """Refuse a URL whose user part was split by a character it should have encoded.

    ``user:pa@ss@host`` parses as password ``pa`` at host ``ss@host``, which the host would
    then show in every message: no host name holds an ``@``. ``team/app:pw@host/db`` parses
    as host ``team`` and database ``app:pw@host/db``, the password in every message and on
    the command line of ``dbscope shell``: a server's URL whose database holds an ``@`` and
    that has no user is such a one.
    """
    if url.host is not None and "@" in url.host:
        raise ConfigurationError(UNENCODED_AT)
    server = backend(url.get_backend_name()).default_port is not None
    if server and url.username is None and "@" in (url.database or ""):
        raise ConfigurationError(UNENCODED_SLASH)


def check_hosts(url: URL) -> None:
    """Refuse a host with a blank in it (``u@bad host/db``), in ``host:port`` or the query's
    ``?host=`` list: the driver's failed look-up was reported as an outage (a 503) at every
    connect."""
    hosts = [url.host or ""]
    listed = url.query.get("host")
    if listed is not None:
        hosts += listed if isinstance(listed, tuple) else listed.split(",")
    for host in hosts:
        if _blank_in_host(host):
            message = (
                f"The database URL's host {host!r} holds a blank, which no host name can: "
                "remove it (a host is a name such as 'db.internal', or an IP address)."
            )
            raise ConfigurationError(message)


def _blank_in_host(host: str) -> bool:
    # No host name holds a blank; a socket directory (``/run/my dir``) may.
    return not host.startswith("/") and any(character.isspace() for character in host)


# What a query key holding a password may be spelt, whatever the case.
QUERY_PASSWORDS: Final = ("password", "passwd", "pwd")


def move_query_password(url: URL) -> URL:
    """Move a ``?password=`` query value into the URL's password, where it is masked.

    Raises:
        ConfigurationError: ``?sslpassword=`` (libpq's client-key passphrase), which would
            show wherever the URL does; it belongs in ``connect_args``. A password under
            another key (``?passwd=``, ``?Password=``), which no driver here reads.
    """
    for key in url.query:
        if key.lower() == "sslpassword":
            message = (
                f"The database URL gives ?{key}= (not shown), which would show in every log "
                "line and message that names the URL: remove it from the URL and pass it as "
                "connect_args={'sslpassword': ...} (psycopg)."
            )
            raise ConfigurationError(message)
        if key != "password" and key.lower() in QUERY_PASSWORDS:
            # Another spelling (PyMySQL's passwd, a capital): no driver here reads it, and
            # dbscope would show it as any other option.
            message = (
                f"The database URL gives ?{key}= (not shown): write the password in "
                "user:password@, special characters percent-encoded, or as ?password=."
            )
            raise ConfigurationError(message)
    value = url.query.get("password")
    if value is None:
        return url
    if isinstance(value, str) and url.password is None:
        return url.difference_update_query(["password"]).set(password=value)
    where = "in user:password@ and as ?password=" if isinstance(value, str) else "twice"
    message = (
        f"The database URL gives a password {where} (neither is shown): keep one, "
        "preferably in user:password@ with special characters percent-encoded."
    )
    raise ConfigurationError(message)


def describe_location(url: URL) -> str:
    """Where ``url`` points, for messages: backend, every host:port tried, database.

    E.g. ``postgresql at 127.0.0.1:5499, 127.0.0.1:5498, database 'test'``. Built from the
    URL's parts: it never contains the user or the password.
    """
    name = url.get_backend_name()
    if backend(name).default_port is None and not url.host:  # a file, or memory
        return f"{name} database {url.database or ':memory:'!r}"
    where = f"{name} at {', '.join(host_ports(url))}"
    if url.database:
        where += f", database {url.database!r}"
    return where


def default_pool_name(url: URL) -> str:
    """A pool's name when none is set: ``host:port/database`` as OpenTelemetry's conventions
    suggest (every host of a multi-host URL, comma-separated), or a file database's path;
    never the user or the password."""
    if backend(url.get_backend_name()).default_port is None and not url.host:
        return url.database or ":memory:"
    return f"{','.join(host_ports(url))}/{url.database or ''}"


def host_ports(url: URL) -> list[str]:
    """Each ``host:port`` a driver tries for ``url``, in order, with default ports filled in.

    Besides ``host:port``, PostgreSQL URLs may list hosts in the query, as SQLAlchemy reads
    them (``_dialects.hosts``): ``?host=h1:p1&host=h2:p2``, ``?host=h1:p1,h2:p2``, or
    ``?host=h1,h2&port=p1,p2``.
    """
    default_port = url.port or backend(url.get_backend_name()).default_port
    if url.query.get("host") is None:
        return [_host_port(url.host, default_port)]
    hosts, ports = libpq_hosts(url)
    names = (hosts or "").split(",")
    port_list = ports.split(",") if ports else []
    return [
        _host_port(name or None, port or default_port)
        for name, port in zip_longest(names, port_list)
    ]


def same_database(one: URL, other: URL) -> bool:
    """Whether ``one`` and ``other`` name one database, however spelled: the same backend
    (``mariadb`` is ``mysql``), hosts with their default ports filled in (``localhost``,
    ``127.0.0.1`` and ``::1`` as one) and database name; a file by its absolute path."""
    return _database_of(one) == _database_of(other)


def _database_of(url: URL) -> tuple[str, tuple[str, ...], str | None]:
    rules = backend(url.get_backend_name())
    if rules.default_port is None and not url.host:  # a file, or memory
        return rules.name, (), url.database and str(Path(url.database).resolve())
    hosts = tuple(
        f"localhost:{port}" if host in LOOPBACK else f"{host}:{port}"
        for host, _, port in (where.rpartition(":") for where in host_ports(url))
    )
    return rules.name, hosts, url.database


def _host_port(host: str | None, port: str | int | None) -> str:
    host = host or "localhost"
    if ":" in host:  # an IPv6 address, bracketed as in a URL
        host = f"[{host}]"
    return f"{host}:{port or 'default port'}"
