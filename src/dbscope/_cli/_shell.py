"""``dbscope shell``: the database's own client, on the application's database.

Runs psql, mariadb (or mysql) or sqlite3 in place of itself, with where the database is in
the client's arguments and the password only in its environment (``PGPASSWORD``,
``MYSQL_PWD``): a process list shows a command line to every user of the machine. Arguments
after ``--`` go to the client.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Final

from dbscope import ConfigurationError
from dbscope._cli._common import load_database
from dbscope._dialects import Client, backend

NAME: Final = "shell"
HELP: Final = "open the database's own client (psql, mariadb, sqlite3) with the app's settings"
DESCRIPTION: Final = __doc__
PASSES_THROUGH: Final = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``dbscope shell`` takes no options of its own; the client's follow ``--``."""
    parser.usage = "%(prog)s [--app MODULE:ATTRIBUTE | --prefix PREFIX] [-- CLIENT ARGUMENTS]"


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Replace this process with the client; returns only if it cannot be started."""
    path, argv, environment = command(args, extra)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(path, argv, environment)  # noqa: S606 - the client, with no shell between
    return 1  # not reached: execve returns only by raising


def command(args: argparse.Namespace, extra: list[str]) -> tuple[str, list[str], dict[str, str]]:
    """The client's path, its argument list and its environment.

    Raises:
        ConfigurationError: the database has no client dbscope knows (an in-memory SQLite
            database), or none of its clients is installed.
    """
    url = load_database(args).url
    client = backend(url.get_backend_name()).client(url)
    if client is None:
        message = (
            f"dbscope shell has no client for {url.render_as_string(hide_password=True)!r}: "
            "an in-memory SQLite database lives inside the application's one connection, "
            "and other databases' clients are not known to dbscope."
        )
        raise ConfigurationError(message)
    path = _find(client)
    argv = [path, *client.arguments, *extra]
    return path, argv, {**os.environ, **client.environment}


def _find(client: Client) -> str:
    for program in client.programs:
        path = shutil.which(program)
        if path is not None:
            return path
    names = " or ".join(client.programs)
    message = f"dbscope shell runs {names}, and none is on the PATH: {client.install}."
    raise ConfigurationError(message)
