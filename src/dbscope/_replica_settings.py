"""The settings of read replicas, validated with the others (see ``_settings.py``).

``DATABASE_REPLICA_URLS`` (``Database(url, replicas=[...])``) names PostgreSQL streaming
replicas of the primary, comma-separated in the environment; each gets a pool of its own with
the primary's pool settings. The bounds say when a replica may serve reads: how far behind
the primary it may be (``replica_max_lag``, in bytes of WAL, ``16MB`` accepted), how long a
read that must see a write waits for a replica to catch up (``replica_wait``), and how often
each replica is checked (``replica_check_interval``). ``REPLICA_PATRONI_URLS`` gives, in the
same order, the REST API of the Patroni member that runs each replica, whose ``/replica``
check must also pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import (
    ByteSize,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_serializer,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode
from sqlalchemy.engine import URL

from dbscope._dialects import backend, resolve_async_url
from dbscope._setting_checks import Least, a_kind
from dbscope._setting_sources import setting_error
from dbscope._urls import describe_location, parse_url

# 16 MiB of WAL: one segment; a replica further behind serves no reads.
DEFAULT_MAX_LAG = 16 * 1024 * 1024


# Each numeric replica setting's bound (checked by DatabaseSettings, with the pool's).
# The least check interval: each check is a query per replica (and the primary's position),
# so a shorter one spends the app's CPU on checks (1e-6 s: 2.5 s of CPU in 3 s).
LEAST_CHECK_INTERVAL: Final = 0.05
# A replica replays a write in milliseconds; a read kept waiting longer than this had better
# read the primary, which has the write now.
MOST_REPLICA_WAIT: Final = 10.0
# A replica missed for an hour is no replica: a longer interval only hides an outage.
MOST_CHECK_INTERVAL: Final = 3600.0

REPLICA_BOUNDS: Final = {
    "replica_wait": Least(
        0,
        "must be 0 (read the primary at once) or a number of seconds, got {value}",
        most=MOST_REPLICA_WAIT,
        most_message=(
            "must be at most {most:g} seconds, got {value:g}: it is how long a read waits for "
            "a replica to replay its client's writes before it reads the primary instead, "
            "and replicas replay a write in milliseconds; e.g. 0.05"
        ),
    ),
    "replica_check_interval": Least(
        LEAST_CHECK_INTERVAL,
        "must be at least 0.05 seconds, got {value:g}: each check queries every replica, "
        "so a shorter interval spends the app's CPU on checks; e.g. 1",
        most=MOST_CHECK_INTERVAL,
        most_message=(
            "must be at most {most:g} seconds, got {value:g}: a replica that went down is "
            "found out only at its next check; e.g. 1"
        ),
    ),
}


class ReplicaSettings(BaseSettings):
    """The replica fields of :class:`dbscope.DatabaseSettings`."""

    database_replica_urls: Annotated[tuple[URL, ...], NoDecode] = ()
    """PostgreSQL streaming replicas of the primary; read-only units are routed to them.
    Comma-separated in ``DATABASE_REPLICA_URLS``; ``replicas=[...]`` for ``Database``."""
    replica_max_lag: ByteSize = ByteSize(DEFAULT_MAX_LAG)
    """How far (bytes of WAL, e.g. ``16MB``) a replica may be behind and still serve reads."""
    replica_wait: float = 0.05
    """Seconds a read that must see an earlier write waits for a replica to replay it before
    it reads the primary instead."""
    replica_check_interval: float = 1.0
    """Seconds between two checks of each replica (reachable, still a replica, its lag)."""
    replica_patroni_urls: Annotated[tuple[str, ...], NoDecode] = ()
    """The REST API of each replica's Patroni member (``http://host:8008``), in the order of
    the replicas: a replica serves reads only while its ``/replica?lag=`` check answers 200.
    Comma-separated in ``REPLICA_PATRONI_URLS``; needs ``pip install 'dbscope[patroni]'``."""

    @field_validator("database_replica_urls", mode="before")
    @classmethod
    def _parse_replica_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, URL) or not isinstance(value, list | tuple):
            message = (
                f"must be a list of replica URLs (comma-separated in the environment), got "
                f"{_shown(value)}"
            )
            raise ValueError(message)
        return tuple(_replica_url(given) for given in value)

    @field_validator("replica_patroni_urls", mode="before")
    @classmethod
    def _parse_patroni_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            message = "must be a list of Patroni REST API URLs (comma-separated in the environment)"
            raise ValueError(message)
        for number, given in enumerate(value, 1):
            problem = _patroni_url_problem(given, f"URL {number} of {len(value)}")
            if problem is not None:
                raise ValueError(problem)
        return tuple(given.rstrip("/") for given in value)

    @field_validator("replica_max_lag", mode="wrap")
    @classmethod
    def _parse_max_lag(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> ByteSize:
        # ByteSize's own words ("could not parse value and unit from byte string") say
        # neither what is wanted nor how to write it.
        try:
            size = None if isinstance(value, bool) else ByteSize(handler(value))
        except ValidationError:
            size = None
        if size is None or size < 0:
            message = (
                "must be an amount of WAL in bytes, 0 or more: a whole number, or one with a "
                "unit, e.g. '16MB' (16,000,000 bytes), '16MiB' (16,777,216) or '512kB'"
            )
            raise ValueError(message)
        return size

    @field_serializer("database_replica_urls")
    def _dump_replica_urls(self, urls: tuple[URL, ...]) -> tuple[str, ...]:
        # A URL is a NamedTuple: dumped as it is, its password would show in plain text.
        return tuple(url.render_as_string(hide_password=True) for url in urls)


def _patroni_url_problem(given: str, which: str) -> str | None:
    """What keeps ``given`` (``which`` URL of the list) from being only
    ``http(s)://host:port``, or None. A path would be asked instead of /replica, and /replica
    needs no credentials; the URL is shown only when it cannot hold a password."""
    only = "a Patroni URL must be only 'http://host:port': write it without credentials, path "
    if "@" in given:  # credentials, whichever way their other characters split the URL
        return only + f"or query ({which}, not shown: it holds credentials)"
    parts = urlsplit(given)
    try:
        port = parts.port  # raises for a port that is no number: a password's tail, say
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        # Not shown: a value pasted here by mistake may be a password, or hold one.
        return (
            f"{which} is not a Patroni REST API URL (not shown: it may be a pasted password): "
            "write it as 'http://host:8008' (https where the API has TLS)"
        )
    if parts.path.strip("/") or parts.query or parts.fragment:
        return only + f"or query (got one for {parts.hostname}:{port})"
    return None


def _replica_url(given: object) -> URL:
    """One replica's URL, checked: one URL, of a database that has replicas, with its driver."""
    if not isinstance(given, str | URL):
        message = f"each replica must be a URL string or a sqlalchemy URL, got {_shown(given)}"
        raise ValueError(message)
    if isinstance(given, str) and given.count("://") > 1:
        # Joined by a space or ';': parsed as one URL, its second '@' would be blamed on the
        # password. Not shown: it holds the URLs' passwords, if any.
        message = (
            f"one replica URL holds {given.count('://')} URLs (not shown: they may hold "
            "passwords): separate the replica URLs with commas, e.g. "
            "DATABASE_REPLICA_URLS=postgresql+asyncpg://app@replica-1/app,"
            "postgresql+asyncpg://app@replica-2/app, or give a list, replicas=[...]"
        )
        raise ValueError(message)
    url = parse_url(given)
    if not backend(url.get_backend_name()).has_replicas:
        # Said before the driver is looked for: installing another database's driver would
        # not help.
        message = (
            f"replicas are PostgreSQL streaming replicas only, and a replica URL names "
            f"{url.get_backend_name()!r}: remove it, or name a PostgreSQL replica of the primary"
        )
        raise ValueError(message)
    return resolve_async_url(url)


def _shown(given: object) -> str:
    """``given`` as the caller wrote it if it is a number or None; else its type alone: a
    string, bytes or a list may hold a password, a URL is a replica list of one."""
    if given is None or isinstance(given, int | float):
        return repr(given)
    if isinstance(given, URL):
        return "a single URL: give a list of one, replicas=[url]"
    return f"{a_kind(given)} (not shown: it may hold a password)"


def check_replicas(primary_url: URL, replicas: Sequence[URL], patroni_urls: Sequence[str]) -> None:
    """Refuse replicas that cannot serve the primary's reads: another backend or driver than
    the primary's, the primary itself, or Patroni URLs that do not pair with them.

    Raises:
        PydanticCustomError: the setting at fault, named as the caller gave it.
    """
    primary = backend(primary_url.get_backend_name())
    if patroni_urls and len(patroni_urls) != len(replicas):
        message = (
            f"{len(patroni_urls)} Patroni URLs for {len(replicas)} replicas: "
            "give one per replica, in the same order, or none."
        )
        raise setting_error("replica_patroni_urls", None, message)
    for replica in replicas:
        if not (primary.has_replicas and backend(replica.get_backend_name()) is primary):
            message = (
                f"read replicas are routed for PostgreSQL streaming replicas of a "
                f"PostgreSQL primary; here the primary is {primary_url.get_backend_name()} and "
                f"a replica {replica.get_backend_name()}. Remove the replicas, or name "
                "PostgreSQL URLs."
            )
            raise setting_error("database_replica_urls", None, message)
        if replica.get_driver_name() != primary_url.get_driver_name():
            # Each replica's engine takes the primary's options, whose connect_args are
            # the driver's own: another driver's refuses them, and the replica never serves.
            message = (
                f"a replica uses the driver {replica.get_driver_name()!r} and the primary "
                f"{primary_url.get_driver_name()!r}; they share the engine options, which are "
                f"the driver's own. Name the same driver in every URL "
                f"('{replica.get_backend_name()}+{primary_url.get_driver_name()}://...')."
            )
            raise setting_error("database_replica_urls", None, message)
        standby_only = replica.query.get("target_session_attrs") in ("standby", "read-only")
        if describe_location(replica) == describe_location(primary_url) and not standby_only:
            # Read-only units would run on the primary and be counted as a replica's. (Not a
            # URL of the cluster's hosts that asks for a standby: the driver finds it.)
            message = (
                f"a replica URL names the primary itself ({describe_location(replica)}): "
                "name a streaming replica's host and port, or remove it"
            )
            raise setting_error("database_replica_urls", None, message)
