"""Loading DatabaseSettings: from arguments alone, or from the environment as well.

``Database(url, ...)`` reads arguments only, so a stray ``POOL_SIZE`` cannot change a pool
configured in code; ``Database.from_env()`` reads the environment (behind a prefix, with a
dotenv file), and its ``default_url`` applies only when the environment names no database.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL

from dbscope._exceptions import ConfigurationError
from dbscope._setting_sources import (
    check_env_options,
    dotenv_names,
    environment_names,
    misspelled_variables,
)
from dbscope._settings import DatabaseSettings

logger = logging.getLogger("dbscope")


class _ArgumentSettings(DatabaseSettings):
    """DatabaseSettings made from arguments alone: ``Database(url, ...)`` never reads the
    environment, so a stray ``POOL_SIZE`` cannot change a pool configured in code."""

    _argument_names: ClassVar[Mapping[str, str]] = {
        "database_url": "url",
        "postgres_schema": "schema",
        "database_replica_urls": "replicas",
    }
    _reads_env: ClassVar[bool] = False


class _DefaultUrlSettings(DatabaseSettings):
    """DatabaseSettings read from an environment that names no database, with from_env's
    ``default_url`` in its place."""

    _argument_names: ClassVar[Mapping[str, str]] = {"database_url": "default_url"}


class _DatabaseLocation(BaseSettings):
    """The settings that name the database, read alone: whether the environment names one."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)

    database_url: str | None = None
    postgres_user: str | None = None
    postgres_host: str | None = None
    postgres_db: str | None = None


def setting_values(options: dict[str, Any], **named: Any) -> dict[str, Any]:
    """The settings among ``options`` (taken out of it, leaving the engine options), with
    those ``named`` by their argument names (``url``, ``schema``, ``replicas``) when given.

    Raises:
        ConfigurationError: a setting given under both names (``url`` and ``database_url``),
            of which one would have been dropped without a word.
    """
    fields = DatabaseSettings.model_fields
    values = {name: options.pop(name) for name in list(options) if name in fields}
    arguments = {argument: field for field, argument in _ArgumentSettings._argument_names.items()}
    for argument, value in named.items():
        if value is None:
            continue
        field = arguments[argument]
        if field in values:
            message = f"{argument}= and {field}= are one setting: pass one of them."
            raise ConfigurationError(message)
        values[field] = value
    return values


def load_settings(
    *,
    from_env: bool,
    env_prefix: str = "",
    env_file: str | None = None,
    default_url: str | URL | None = None,
    **values: Any,
) -> DatabaseSettings:
    """Build DatabaseSettings from ``values`` (and the environment if ``from_env``).

    ``default_url`` is used only when neither a URL nor its PostgreSQL parts are given.

    Raises:
        ConfigurationError: a value is invalid, or ``env_file`` names no readable file; the
            message names it and the fix.
    """
    if not from_env:
        return _ArgumentSettings(**values)
    check_env_options(env_prefix, env_file, names=("prefix", "env_file"))
    settings_class = DatabaseSettings
    if default_url is not None:
        location = _DatabaseLocation(_env_prefix=env_prefix, _env_file=env_file)
        if not any(location.model_dump().values()):
            settings_class, values["database_url"] = _DefaultUrlSettings, default_url
    settings = settings_class(_env_prefix=env_prefix, _env_file=env_file, **values)
    # A misspelt variable, in the environment or the dotenv file, is never read, and the app
    # runs without it: PG_BOUNCER for PGBOUNCER ran through PgBouncer without the preset,
    # its statements failing. Not for a variable that lacks only the prefix: another
    # Database of the app may read it.
    names = environment_names() | dotenv_names(env_file, env_prefix)
    for hint in misspelled_variables(
        env_prefix.upper(),
        tuple(DatabaseSettings.model_fields),
        forgotten_prefix=False,
        names=names,
    ):
        logger.warning("%s It is not one of dbscope's settings, and was not read.", hint)
    return settings
