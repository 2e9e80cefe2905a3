"""What every subcommand shares: finding the application's Database."""

from __future__ import annotations

import argparse
import pkgutil
import sys
from pathlib import Path

from dbscope import ConfigurationError, Database


class CommandFailed(Exception):
    """A subcommand's check failed; the message says which and why (exit code 1)."""


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """``--app``, or ``--prefix`` and ``--env-file``: where the settings come from."""
    group = parser.add_argument_group("settings (default: DATABASE_URL or POSTGRES_*)")
    group.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        help="the application's Database object, e.g. myapp.main:db",
    )
    group.add_argument(
        "--prefix", default="", help="the prefix of the variables, e.g. APP_ for APP_DATABASE_URL"
    )
    group.add_argument("--env-file", metavar="PATH", help="a dotenv file to read as well")


def load_database(args: argparse.Namespace) -> Database:
    """The Database the options name: ``--app``'s, else one read from the environment.

    Raises:
        ConfigurationError: a setting is invalid, or ``--app`` names no Database.
    """
    if args.app is None:
        return Database.from_env(args.prefix, env_file=args.env_file)
    if args.prefix or args.env_file:
        message = (
            "--app names a Database, which has its settings already; remove --prefix and "
            "--env-file, or --app."
        )
        raise ConfigurationError(message)
    found = _import(args.app)
    if not isinstance(found, Database):
        message = (
            f"--app {args.app!r} is a {type(found).__name__}, not a dbscope.Database: name "
            "the Database object, e.g. --app myapp.main:db."
        )
        raise ConfigurationError(message)
    return found


def _import(spec: str) -> object:
    module_name, colon, attribute = spec.partition(":")
    if not module_name or not colon or not attribute:
        message = f"--app {spec!r} is not of the form MODULE:ATTRIBUTE, e.g. myapp.main:db."
        raise ConfigurationError(message)
    # As uvicorn does: the application's modules are found from the working directory.
    sys.path.insert(0, str(Path.cwd()))
    try:
        return pkgutil.resolve_name(spec)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise  # the module exists, and fails to import something of its own
        message = (
            f"--app {spec!r}: there is no module {module_name!r} here ({Path.cwd()}); run "
            "dbscope from the directory your application's package is in."
        )
        raise ConfigurationError(message) from None
    except AttributeError:
        message = f"--app {spec!r}: the module {module_name} has no attribute {attribute!r}."
        raise ConfigurationError(message) from None
