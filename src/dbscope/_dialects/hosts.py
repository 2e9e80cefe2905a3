"""The hosts of a PostgreSQL URL that lists several (``?host=h1:p1&host=h2:p2``), as libpq
takes them."""

from __future__ import annotations

from sqlalchemy.engine import URL


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
