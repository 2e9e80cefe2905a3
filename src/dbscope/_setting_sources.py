"""Naming each setting in an error the way its caller gave it.

A keyword argument (``pool_size=-1``) for settings given in code, the variable
(``environment variable APP_POOL_SIZE='-1'``) for those read from the environment; a value
only for settings that cannot hold a secret; and near misses of the known names
(``DATABSE_URL is set: did you mean DATABASE_URL?``); and a dotenv file named that cannot
be read, which pydantic-settings would skip without a word.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pydantic import ValidationError
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, DotEnvSettingsSource

from dbscope._exceptions import ConfigurationError

NO_DATABASE: Final = "no_database"  # the error type of "neither a URL nor its parts"
# The error type of a check across settings that blames one: its context names the setting.
SETTING_ERROR: Final = "setting"
# Settings whose values are never shown: they hold a password, or may (a URL pasted as a host).
SECRET_FIELDS: Final = frozenset(
    {
        "database_url",
        "database_replica_urls",
        "postgres_password",
        "postgres_host",
        "replica_patroni_urls",
    }
)


# Names that Database() takes as keywords, or people write, for settings that DatabaseSettings
# calls otherwise: a near miss by spelling ('replicas' -> 'replica_wait') would mislead.
OTHER_NAMES: Final = {
    "url": "database_url",
    "schema": "postgres_schema",
    "replicas": "database_replica_urls",
    "replica": "database_replica_urls",
    "replica_urls": "database_replica_urls",
}


def setting_error(setting: str, value: object, message: str) -> PydanticCustomError:
    """An error of a check across settings that blames ``setting``, which had ``value``."""
    context = {"setting": setting, "value": value, "message": message}
    return PydanticCustomError(SETTING_ERROR, "{message}", context)


@dataclass(frozen=True)
class Sources:
    """Where the settings came from, to name each in messages as the caller wrote it."""

    arguments: Mapping[str, str] = field(default_factory=dict)
    """The fields given as arguments, each with the argument's name."""
    env_prefix: str = ""
    env_file: object = None
    reads_env: bool = True
    fields: tuple[str, ...] = ()
    """Every setting's name."""

    def label(self, setting: str, value: object) -> str:
        """``keyword argument pool_size=-1``, or ``environment variable APP_POOL_SIZE='-1'``."""
        shown = "" if setting in SECRET_FIELDS else f"={value!r}"
        if setting in self.arguments:
            name = self.arguments[setting]
            return f"keyword argument {name}{shown}" if shown else f"argument {name}"
        variable = f"{self.env_prefix}{setting}".upper()
        if self.env_file is not None and variable not in environment_names():
            return f"variable {variable}{shown} in {self.env_file}"
        return f"environment variable {variable}{shown}"

    def no_database(self) -> str:
        """What to set when no database is named, with any misspelled variable that is set."""
        examples = "'postgresql+asyncpg://app@localhost/app' or 'sqlite+aiosqlite:///app.db'"
        if not self.reads_env:
            return (
                f"No database is configured: pass the URL to Database(...), e.g. {examples}, "
                "or build it with Database.from_env() to read DATABASE_URL."
            )
        p = self.env_prefix.upper()
        message = (
            f"No database is configured: set {p}DATABASE_URL (for example {examples}), or "
            f"{p}POSTGRES_HOST, {p}POSTGRES_USER, {p}POSTGRES_PASSWORD and {p}POSTGRES_DB, or "
            "pass the URL to Database(...)."
        )
        unread = []
        if self.env_file is None and Path(".env").is_file():
            unread.append(
                "A .env file is in the working directory but was not read: "
                "Database.from_env(env_file='.env') reads it."
            )
        return " ".join([message, *misspelled_variables(p, self.fields), *unread])


def check_env_options(
    env_prefix: object, env_file: object, names: tuple[str, str] = ("_env_prefix", "_env_file")
) -> None:
    """Refuse an ``env_prefix`` that is no string and an ``env_file`` that is no path (nor a
    list of paths), named as ``names`` say, before pydantic-settings fails on them inside
    (``object of type 'int' has no len()``); and a dotenv file named that cannot be read.

    pydantic-settings skips a missing file without a word, so a misspelled ``--env-file``
    would run on the environment alone. A pipe (``--env-file <(...)``) is read as a file.

    Raises:
        ConfigurationError: the message names the option or file as given (never a file's
            content) and the fix.
    """
    if env_prefix is not None and not isinstance(env_prefix, str):
        message = f"{names[0]}={env_prefix!r} is not a prefix; use a string, e.g. 'APP_'."
        raise ConfigurationError(message)
    if env_file is None:
        return
    paths = env_file if isinstance(env_file, list | tuple) else [env_file]
    if not all(isinstance(path, str | os.PathLike) for path in paths):
        message = (
            f"{names[1]}={env_file!r} is not the path of a dotenv file; use a string or a "
            "Path, e.g. '.env', or a list of them."
        )
        raise ConfigurationError(message)
    for given in paths:
        path = Path(given).expanduser()  # type: ignore[arg-type]  # checked above
        fix = "give the path of an existing dotenv file"
        if not str(given):
            problem = "names no file"
        elif not path.exists():
            relative = "" if path.is_absolute() else f" (looked for from {Path.cwd()})"
            problem = f"does not exist{relative}"
        elif not (path.is_file() or path.is_fifo()):
            problem = "is not a file"
        elif not os.access(path, os.R_OK):
            problem = "cannot be read (permission denied)"
        elif (offset := _undecodable_byte(path)) is not None:
            problem = f"is not UTF-8 text (byte {offset} cannot be decoded)"
            fix = "save it as UTF-8"
        else:
            continue
        message = (
            f"The env file {str(given)!r} {problem}: {fix}, or name none to read the "
            "environment alone."
        )
        raise ConfigurationError(message)


def _undecodable_byte(path: Path) -> int | None:
    """The offset of the first byte of ``path`` that is not UTF-8 (pydantic-settings reads
    a dotenv file as UTF-8), or None. A pipe is not read here: what is read is gone."""
    if path.is_fifo():
        return None
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start
    return None


def dotenv_names(env_file: str | None, env_prefix: str) -> set[str]:
    """The variable names of the dotenv file ``env_file`` (none if None), in capitals."""
    if env_file is None:
        return set()
    source = DotEnvSettingsSource(BaseSettings, env_file=env_file, env_prefix=env_prefix)
    return {name.upper() for name in source.env_vars}


def environment_names() -> set[str]:
    """The environment's variable names, in capitals (pydantic-settings ignores their case)."""
    return {name.upper() for name in os.environ}


def misspelled_variables(
    prefix: str,
    fields: tuple[str, ...],
    *,
    forgotten_prefix: bool = True,
    names: set[str] | None = None,
) -> list[str]:
    """``X is set: did you mean Y?`` for each variable close to a setting's name (and, if
    ``forgotten_prefix``, for each that is one but for the prefix), among ``names`` (in
    capitals; the environment's by default)."""
    known = [f"{prefix}{name}".upper() for name in fields]
    hints: list[str] = []
    given = environment_names() if names is None else names
    for name in sorted(given.difference(known)):
        if prefix and f"{prefix}{name}" in known:  # the prefix forgotten
            if not forgotten_prefix:
                continue
            close = [f"{prefix}{name}"]
        elif any(name.endswith(f"_{setting}") for setting in known):
            continue  # a setting under a prefix of its own (APP_): another Database's
        else:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        hints.extend(f"{name} is set: did you mean {match}?" for match in close)
    return hints


def describe_validation_error(error: ValidationError, sources: Sources) -> str:
    """Turn pydantic's error into one message per setting, named as the caller gave it.

    Values are shown only for settings that cannot hold a secret.
    """
    lines = []
    for item in error.errors(include_url=False, include_input=True):
        context = item.get("ctx") or {}
        setting = context.get("setting") or (str(item["loc"][0]) if item["loc"] else "")
        text = item["msg"].removeprefix("Value error, ")
        if item["type"] == NO_DATABASE:
            lines.append(sources.no_database())
        elif item["type"] == "extra_forbidden":
            other = OTHER_NAMES.get(setting)
            close = [other] if other else difflib.get_close_matches(setting, sources.fields, n=1)
            lines.append(
                f"unknown setting {setting!r}"
                + "".join(f": did you mean {match!r}?" for match in close)
            )
        elif not setting:
            lines.append(text)
        else:
            value = context.get("value", item["input"])
            lines.append(f"{sources.label(setting, value)}: {text}")
    return "Invalid database settings: " + "; ".join(lines)
