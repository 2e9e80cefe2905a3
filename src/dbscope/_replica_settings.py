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

import math
from dataclasses import dataclass
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import (
    ByteSize,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode
from sqlalchemy.engine import URL

from dbscope._dialects import resolve_async_url
from dbscope._urls import parse_url

# 16 MiB of WAL: one segment; a replica further behind serves no reads.
DEFAULT_MAX_LAG = 16 * 1024 * 1024
_SIZE: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)


@dataclass(frozen=True)
class Least:
    """The least value a numeric setting may take, and what a value below it is told.

    Attributes:
        value: the bound.
        message: the error, ``{value}`` standing for the value given.
        allowed: whether the bound itself is allowed (``False``: the value must be above it).
    """

    value: float
    message: str
    allowed: bool = True

    def check(self, given: float | None) -> float | None:
        """``given`` if it is unset or not below the bound, else ValueError with the message."""
        if given is None:
            return given
        if not math.isfinite(given):
            # nan compares false with every bound: a NaN pool_timeout would refuse every
            # waiter at once.
            raise ValueError(f"must be a finite number, got {given!r}")
        if not (given < self.value if self.allowed else given <= self.value):
            return given
        raise ValueError(self.message.format(value=given))


# Each numeric replica setting's bound.
REPLICA_BOUNDS: Final = {
    "replica_wait": Least(
        0, "must be 0 (read the primary at once) or a number of seconds, got {value}"
    ),
    "replica_check_interval": Least(
        0, "must be a positive number of seconds, got {value}", allowed=False
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
            message = "must be a list of replica URLs (comma-separated in the environment)"
            raise ValueError(message)
        urls = []
        for given in value:
            if not isinstance(given, str | URL):
                raise ValueError(f"each replica must be a URL, got a {type(given).__name__}")
            urls.append(resolve_async_url(parse_url(given)))
        return tuple(urls)

    @field_validator("replica_patroni_urls", mode="before")
    @classmethod
    def _parse_patroni_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            message = "must be a list of Patroni REST API URLs (comma-separated in the environment)"
            raise ValueError(message)
        for number, given in enumerate(value, 1):
            parts = urlsplit(given)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                # Not shown: a value pasted here by mistake may be a password, or hold one.
                message = (
                    f"URL {number} of {len(value)} is not a Patroni REST API URL (not shown: "
                    "it may be a pasted password): write it as "
                    "'http://host:8008' (https where the API has TLS)"
                )
                raise ValueError(message)
            if parts.username or parts.password or parts.path.strip("/") or parts.query:
                # /replica needs no credentials, and a path would be asked instead of it.
                message = (
                    f"a Patroni URL must be only 'http://host:port': write it without "
                    f"credentials, path or query (got one for {parts.hostname}:{parts.port})"
                )
                raise ValueError(message)
        return tuple(given.rstrip("/") for given in value)

    @field_validator("replica_max_lag", mode="before")
    @classmethod
    def _parse_max_lag(cls, value: Any) -> ByteSize:
        # ByteSize's own words ("could not parse value and unit from byte string") say
        # neither what is wanted nor how to write it.
        try:
            size = None if isinstance(value, bool) else _SIZE.validate_python(value)
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

    @field_validator(*REPLICA_BOUNDS)
    @classmethod
    def _check_replica_bounds(cls, value: float, info: ValidationInfo) -> Any:
        return REPLICA_BOUNDS[str(info.field_name)].check(value)
