"""DatabaseSettings: where the database is and how its pool behaves, validated up front.

Settings come from keyword arguments (``Database(url, pool_size=20)``) or from the environment
(``Database.from_env()``), and every mistake is reported when they are made, not on the first
request. The URL is kept as a SQLAlchemy ``URL``, whose repr masks the password (a
``?password=`` is moved there first, see ``_urls.py``), and pydantic is told never to echo
input values in its errors, so no password reaches a message or log.

Every mistake is a ConfigurationError naming the setting as the caller wrote it: the keyword
argument (``pool_size=-1``) for settings given in code, the variable (``APP_POOL_SIZE``) for
those read from the environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, get_args

from pydantic import (
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import URL

from dbscope._dialects import PoolerMode, backend, driver, resolve_primary_url
from dbscope._exceptions import ConfigurationError
from dbscope._replica_settings import REPLICA_BOUNDS, ReplicaSettings, check_replicas
from dbscope._setting_checks import Choice, Least
from dbscope._setting_sources import (
    NO_DATABASE,
    Sources,
    check_env_options,
    describe_validation_error,
    setting_error,
)
from dbscope._tags import PLACEMENTS, SqlComments
from dbscope._urls import host_alone, is_memory, parse_url

# A schema name is an identifier, never SQL: letters, digits, '_', '$', at most 63 bytes.
SCHEMA_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
# An HTTP header or cookie name (a token, RFC 9110): the request id's header, ReadYourWrites'.
HEADER_NAME: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
PORT: Final = "must be a TCP port, 1 to 65535, got {value}"
# Each numeric setting's bound (those of the replicas: _replica_settings.py).
BOUNDS: Final = {
    "pool_size": Least(
        1,
        "must be at least 1, got {value}: it is the number of connections kept open "
        "(SQLAlchemy's 0, 'no limit', would let load open connections without bound)",
    ),
    "max_overflow": Least(
        0,
        "must be 0 or more, got {value}: it is the number of extra connections allowed under "
        "load (an unbounded overflow would let load exhaust the server's connection limit)",
    ),
    "pool_timeout": Least(0, "must be a positive number of seconds, got {value}", allowed=False),
    "connect_timeout": Least(
        0,
        "must be a positive number of seconds, got {value}",
        allowed=False,
        most=3600,
        most_message="must be at most {most:g} seconds: it bounds each connect and ping",
    ),
    "pool_max_waiters": Least(
        0,
        "must be 0 or more, got {value}: it is how many requests may wait for a connection "
        "(0: none wait, an exhausted pool answers at once); leave it unset for no bound",
    ),
    "pool_pre_ping_after": Least(
        0, "must be 0 (ping at every use) or a number of seconds, got {value}"
    ),
    "pool_recycle": Least(
        -1,
        "must be a number of seconds, or -1 to never recycle; got {value}",
        refused={
            0: "0 would replace every connection at each checkout (SQLAlchemy counts it as an "
            "age limit, not as 'no limit'), a new connection per unit of work: use -1 to never "
            "recycle, or the number of seconds after which to replace a connection"
        },
    ),
    "postgres_port": Least(1, PORT, most=65535, most_message=PORT),
    **REPLICA_BOUNDS,
}


# The settings written as a word.
CHOICES: Final = {
    "sql_comments": Choice(
        PLACEMENTS,
        "must be 'off', 'append' or 'prepend', got {value}: 'append' tags each statement at "
        "its end (as sqlcommenter says), 'prepend' at its start (still seen where the server "
        "cuts long query texts, as pg_stat_activity does at 1024 bytes)",
    ),
    "pgbouncer": Choice(
        (None, *get_args(PoolerMode)),
        "must be 'transaction' or 'transaction-prepared', got {value}: 'transaction' for "
        "PgBouncer's pool_mode = transaction, 'transaction-prepared' for the same with "
        "max_prepared_statements > 0 (PgBouncer 1.21+); unset without PgBouncer",
        hints={"session": " (in session mode PgBouncer needs nothing: leave it unset)"},
    ),
}


def validate_schema_name(name: str) -> str:
    """``name`` if it is a plain identifier usable as a schema, else ConfigurationError."""
    if isinstance(name, str) and SCHEMA_NAME.fullmatch(name):
        return name
    message = (
        f"The schema name {name!r} is not a plain identifier; use letters, digits, '_' and "
        "'$' only, starting with a letter or '_', at most 63 characters."
    )
    raise ConfigurationError(message)


class DatabaseSettings(ReplicaSettings):
    """Where the database is and how to pool its connections.

    Every field can be given as a keyword argument or read from the environment variable of
    the same name in capitals (``POOL_SIZE``), optionally behind a prefix
    (``DatabaseSettings(_env_prefix="APP_")`` reads ``APP_POOL_SIZE``); a keyword argument
    wins. ``Database.from_settings(settings)`` builds a Database from it.

    Raises:
        ConfigurationError: a value is invalid; the message names it as given, and the fix.
    """

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        env_ignore_empty=True,
        arbitrary_types_allowed=True,
        use_attribute_docstrings=True,
        # The dotenv file is the app's, shared with its other settings (SECRET_KEY, DEBUG):
        # dbscope reads its own variables and leaves the rest, as in the environment, where
        # extra="forbid" (kept for keyword arguments, where an unknown name is a typo) would
        # refuse them. from_env names a near miss of a setting's name in either.
        dotenv_filtering="only_existing",
    )

    database_url: URL | None = None
    """The database URL, e.g. ``postgresql+asyncpg://app@localhost/app``. Wins over the parts."""
    postgres_user: str | None = None
    """PostgreSQL user, used when ``database_url`` is not set."""
    postgres_password: SecretStr | None = None
    """PostgreSQL password, used when ``database_url`` is not set."""
    postgres_host: str | None = None
    """PostgreSQL host (default ``localhost``), used when ``database_url`` is not set."""
    postgres_port: int | None = None
    """PostgreSQL port (default 5432), used when ``database_url`` is not set."""
    postgres_db: str | None = None
    """PostgreSQL database name, used when ``database_url`` is not set."""
    postgres_schema: str | None = None
    """Schema that every unit of work targets (PostgreSQL ``SET LOCAL search_path``)."""
    pool_size: int = 5
    """Connections kept open in the pool."""
    max_overflow: int = 10
    """Connections opened beyond ``pool_size`` under load, closed when returned."""
    pool_timeout: float = 5.0
    """Seconds a unit of work waits for a free connection before it fails with 503."""
    pool_max_waiters: int | None = None
    """Requests that may wait for a connection at once; beyond it, 503 at once. None: any."""
    pool_recycle: int | None = None
    """Seconds after which a connection is replaced; -1 never (0 is refused). Default: per
    database."""
    pool_pre_ping: bool | None = None
    """Check a connection before use, replacing dead ones. Default: on (off for SQLite)."""
    pool_pre_ping_after: float = 1.0
    """Seconds idle after which the check pings the server (0: at every use)."""
    pool_name: str | None = None
    """The pool's name in metrics (``Database.name``). Default: ``host:port/database``."""
    connect_timeout: float = 5.0
    """Seconds to wait for a new connection to open; ``pool_timeout`` does not cover it."""
    echo: bool = False
    """Log every SQL statement (SQLAlchemy's ``echo``)."""
    application_name: str | None = None
    """Name shown for the connections in PostgreSQL's ``pg_stat_activity``; at most 63 bytes."""
    sql_comments: SqlComments = "off"
    """Tag each statement of a unit with its route (sqlcommenter): ``"append"``,
    ``"prepend"`` (kept when the server cuts long query texts), or ``"off"``."""
    request_id_header: str | None = "X-Request-ID"
    """With ``sql_comments`` on, the request header PostgreSQL shows as the connection's
    ``application_name`` during a request (one statement more per transaction); ``"none"``:
    no header is read."""
    defer_begin: bool = True
    """Run a unit's reads before its first write outside a transaction, where they see the
    same (PostgreSQL at READ COMMITTED, PgBouncer or not): a unit that only reads sends no
    BEGIN and no COMMIT. False: each transaction begins with its first statement."""
    raise_on_lazy_load: bool = False
    """Refuse every lazy load that would run SQL (to find N+1 queries, in tests at least)."""
    pgbouncer: PoolerMode | None = None
    """PgBouncer in transaction mode between dbscope and PostgreSQL: ``"transaction"`` (it
    keeps no prepared statements, so the drivers prepare none by name) or
    ``"transaction-prepared"`` (PgBouncer 1.21+ with ``max_prepared_statements``: the drivers'
    statement caches stay). Either way no session-level setting is sent (docs/pgbouncer.md)."""

    _url: URL = PrivateAttr()
    # The name a caller gave a field under, when not the field's own (Database's url=).
    _argument_names: ClassVar[Mapping[str, str]] = {}
    _reads_env: ClassVar[bool] = True

    if not TYPE_CHECKING:  # mypy keeps checking keyword arguments against the fields

        def __init__(self, **values: Any) -> None:
            # Before pydantic-settings, which skips a missing file, and fails on a prefix
            # of another type than str in its words (no len()).
            check_env_options(values.get("_env_prefix"), values.get("_env_file"))
            try:
                super().__init__(**values)
            except ValidationError as error:
                sources = type(self)._sources(values)
                message = describe_validation_error(error, sources)
                # `from None`: pydantic's error would print the input values in a traceback.
                raise ConfigurationError(message) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Where the settings come from, first wins (pydantic-settings' hook): the keyword
        arguments, the environment, dbscope's own variables of the dotenv file (the app's
        others are left alone), secret files; for ``Database(url, ...)``, the arguments only.
        """
        if not cls._reads_env:  # Database(url, ...): what the code says, nothing else
            return (init_settings,)
        return (init_settings, env_settings, dotenv_settings, file_secret_settings)

    @classmethod
    def _sources(cls, values: Mapping[str, Any]) -> Sources:
        config = cls.model_config
        return Sources(
            arguments={
                name: cls._argument_names.get(name, name)
                for name in values
                if name in cls.model_fields
            },
            env_prefix=values.get("_env_prefix") or config.get("env_prefix") or "",
            env_file=values.get("_env_file") or config.get("env_file"),
            reads_env=cls._reads_env,
            fields=tuple(cls.model_fields),
        )

    @field_validator("database_url", mode="before")
    @classmethod
    def _parse_database_url(cls, value: Any) -> Any:
        return None if value is None else parse_url(value)

    @field_serializer("database_url")
    def _dump_database_url(self, url: URL | None) -> str | None:
        # A URL is a NamedTuple: dumped as it is, its password would show in plain text.
        return None if url is None else url.render_as_string(hide_password=True)

    @field_validator("postgres_schema")
    @classmethod
    def _check_schema(cls, value: str | None) -> str | None:
        return None if value is None else validate_schema_name(value)

    @field_validator("postgres_host")
    @classmethod
    def _check_postgres_host(cls, value: str | None) -> str | None:
        return None if value is None else host_alone(value)

    @field_validator(*BOUNDS, mode="before")
    @classmethod
    def _refuse_bools(cls, value: Any) -> Any:
        # pydantic would take True for 1 before the bounds (Least) see it.
        if isinstance(value, bool):
            raise ValueError(f"must be a number, got {value!r}")
        return value

    @field_validator(*BOUNDS)
    @classmethod
    def _check_bounds(cls, value: float | None, info: ValidationInfo) -> Any:
        return BOUNDS[str(info.field_name)].check(value)

    @field_validator(*CHOICES, mode="before")
    @classmethod
    def _check_choices(cls, value: Any, info: ValidationInfo) -> Any:
        return CHOICES[str(info.field_name)].check(value)

    @field_validator("pool_name")
    @classmethod
    def _check_pool_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank; leave it unset for host:port/database")
        return value

    @field_validator("request_id_header", mode="before")
    @classmethod
    def _check_request_id_header(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        name = value.strip()
        if name.lower() in ("", "none", "off"):
            return None
        if not HEADER_NAME.fullmatch(name):
            raise ValueError(
                f"{value!r} is not a header name: use letters, digits and '-' (e.g. "
                "'X-Request-ID'), or 'none' to read no request id"
            )
        return name

    @model_validator(mode="after")
    def _resolve_url(self) -> DatabaseSettings:
        url = self.database_url or self._url_from_parts()
        try:
            self._url = resolve_primary_url(url)
        except ValueError as error:
            if self.database_url is None:
                raise
            raise setting_error("database_url", None, str(error)) from None
        rules = backend(self._url.get_backend_name())
        if self.postgres_schema is not None and not rules.has_schemas:
            message = (
                f"only PostgreSQL has schemas to switch between, and the URL names a "
                f"{self._url.get_backend_name()} database. Remove the schema{rules.schema_advice}"
            )
            raise setting_error("postgres_schema", self.postgres_schema, message)
        # An in-memory SQLite database lives and dies with its one connection: a pool of
        # exactly one connection, never recycled, is what shares it across the app.
        if self.is_memory and "pool_size" in self.model_fields_set and self.pool_size != 1:
            message = (
                "an in-memory SQLite database lives in a single connection that dbscope "
                "shares across the app, so its pool holds one. Remove the pool size, or use a "
                "file ('sqlite+aiosqlite:///app.db') for a real pool."
            )
            raise setting_error("pool_size", self.pool_size, message)
        known = driver(self._url.get_driver_name())
        if self.pgbouncer is not None and (known is None or known.pooler_args is None):
            message = (
                f"PgBouncer pools PostgreSQL connections, and the URL names a "
                f"{self._url.get_backend_name()} database. Remove pgbouncer, or name the "
                "PgBouncer in front of PostgreSQL ('postgresql+asyncpg://user@host:6432/db')."
            )
            raise setting_error("pgbouncer", self.pgbouncer, message)
        if self.database_replica_urls or self.replica_patroni_urls:
            check_replicas(self._url, self.database_replica_urls, self.replica_patroni_urls)
        return self

    def for_replica(self, url: URL) -> DatabaseSettings:
        """These settings for the replica at ``url``: its own URL, the same pool settings."""
        update = {"database_url": url, "database_replica_urls": (), "replica_patroni_urls": ()}
        copy = self.model_copy(update=update)
        copy._url = url
        return copy

    def _url_from_parts(self) -> URL:
        parts = (self.postgres_user, self.postgres_host, self.postgres_db)
        if all(part is None for part in parts):
            # Worded by Sources.no_database(), which knows where the URL could have come from.
            raise PydanticCustomError(NO_DATABASE, "No database is configured.")
        password = self.postgres_password
        return URL.create(
            "postgresql",
            username=self.postgres_user,
            password=None if password is None else password.get_secret_value(),
            host=self.postgres_host or "localhost",
            port=self.postgres_port,
            database=self.postgres_db,
        )

    @property
    def url(self) -> URL:
        """The resolved URL, with an async driver. Its repr and str mask the password."""
        return self._url

    @property
    def is_memory(self) -> bool:
        """Whether the database is an in-memory SQLite database."""
        return is_memory(self._url)
