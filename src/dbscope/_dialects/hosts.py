"""A PostgreSQL URL as libpq takes it: the hosts of one that lists several
(``?host=h1:p1&host=h2:p2``), and psql's command for it (``dbscope shell``)."""

from __future__ import annotations

from typing import Final

from sqlalchemy.engine import URL

from dbscope._dialects._base import Client

# libpq's modes, as a URL's sslmode (psycopg) or ssl (asyncpg) gives them.
SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def libpq_hosts(url: URL) -> tuple[str | None, str | None]:
    """The hosts and ports of ``url`` as libpq lists them: ``h1,h2`` and ``p1,p2``.

    Besides ``host:port``, a URL may list them in its query, as SQLAlchemy reads them:
    ``?host=h1:p1&host=h2:p2``, or ``?host=h1,h2&port=p1,p2``.
    """
    listed = url.query.get("host")
    if listed is None:
        return url.host, None if url.port is None else str(url.port)
    entries = listed if isinstance(listed, tuple) else tuple(listed.split(","))
    pairs = [split_host_port(entry) for entry in entries]
    hosts = ",".join(host for host, _ in pairs)
    ports = url.query.get("port")
    if not isinstance(ports, str):
        ports = ",".join(port or "" for _, port in pairs)
    return hosts, ports if ports.strip(",") else None


def split_host_port(token: str) -> tuple[str, str | None]:
    """``host:port`` of a multi-host URL's ``?host=``, as host and port (None if none given);
    an IPv6 host is bracketed, ``[::1]:5432``, and returned without its brackets."""
    if token.startswith("["):
        host, _, rest = token[1:].partition("]")
        return host, rest.removeprefix(":") or None
    host, _, port = token.partition(":")
    return host, port or None


def psql(url: URL, schema: str | None = None) -> Client:
    """psql's command line and environment for ``url`` (``dbscope shell``), with ``schema`` as
    its search_path; the password only in the environment."""
    hosts, ports = libpq_hosts(url)
    arguments: list[str] = []
    for option, value in (
        ("--host", hosts),
        ("--port", ports),
        ("--username", url.username),
    ):
        if value:
            arguments += [option, value]
    environment = {"PGAPPNAME": "dbscope shell"}
    if url.database:  # not --dbname, which libpq reads as a connection string if it can
        environment["PGDATABASE"] = url.database
    if url.password is not None:
        environment["PGPASSWORD"] = str(url.password)
    ssl = url.query.get("sslmode") or url.query.get("ssl")
    if isinstance(ssl, str) and ssl in SSL_MODES:
        environment["PGSSLMODE"] = ssl
    if schema is not None:  # a plain identifier (checked by the settings): no '"' in it
        # Quoted, as the units' SET LOCAL quotes it: unquoted, "Upper" was folded to upper.
        environment["PGOPTIONS"] = f'-c search_path="{schema}"'
    attributes = url.query.get("target_session_attrs")
    if isinstance(attributes, str):
        environment["PGTARGETSESSIONATTRS"] = attributes
    return Client(
        programs=("psql",),
        arguments=tuple(arguments),
        environment=environment,
        install="install PostgreSQL's client, e.g. apt install postgresql-client",
    )
