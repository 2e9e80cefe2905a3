"""What every subcommand shares: how it is described, and finding the application's
Database."""

from __future__ import annotations

import argparse
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dbscope import ConfigurationError, Database

# The settings options as a usage line shows them (--env-file goes with --prefix).
SETTINGS_USAGE: Final = "[--app MODULE:ATTRIBUTE | --prefix PREFIX]"


class CommandFailed(Exception):
    """A subcommand's check failed; the message says which and why (exit code 1)."""


@dataclass(frozen=True)
class Command:
    """A subcommand of ``dbscope``.

    Attributes:
        name: its name on the command line.
        help: its line in ``dbscope --help``.
        description: its ``--help`` text (the module's docstring).
        run: runs it with the parsed arguments and those it passes through; the exit code.
        add_arguments: adds its own options, if it has any.
        passes_on: what it hands on unread (to Alembic, to the client) after dbscope's
            options, as its usage line shows it; None: it refuses arguments it does not know.
    """

    name: str
    help: str
    description: str | None
    run: Callable[[argparse.Namespace, list[str]], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    passes_on: str | None = None

    @property
    def usage(self) -> str | None:
        """Its usage line, where argparse's would not show what it hands on."""
        return None if self.passes_on is None else f"%(prog)s {SETTINGS_USAGE} {self.passes_on}"


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
        missing = error.name or ""
        if not (module_name == missing or module_name.startswith(f"{missing}.")):
            # The module exists, and fails to import something of its own: `import notes` in
            # notes_api is not notes_api missing, though its name begins with it.
            raise
        message = (
            f"--app {spec!r}: there is no module {module_name!r} here ({Path.cwd()}); run "
            "dbscope from the directory your application's package is in."
        )
        raise ConfigurationError(message) from None
    except AttributeError:
        message = f"--app {spec!r}: the module {module_name} has no attribute {attribute!r}."
        raise ConfigurationError(message) from None
