"""``dbscope shell``: the database's own client, on the application's database.

Runs psql, mariadb (or mysql) or sqlite3 in place of itself, with where the database is in
the client's arguments (psql's database in ``PGDATABASE``) and the password only in its
environment (``PGPASSWORD``, ``MYSQL_PWD``): a process list shows a command line to every
user of the machine. Arguments after ``--`` go to the client.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Final

from dbscope._cli._common import Command, load_database


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Replace this process with the client; returns only if it cannot be started.

    Raises:
        ConfigurationError: the database has no client dbscope knows (an in-memory SQLite
            database), or none of its clients is installed (``Database.shell_command()``).
    """
    argv, variables = load_database(args).shell_command(*extra)
    sys.stdout.flush()
    sys.stderr.flush()
    environment = {**os.environ, **variables}
    os.execve(argv[0], argv, environment)  # noqa: S606 - the client, with no shell between


COMMAND: Final = Command(
    name="shell",
    help="open the database's own client (psql, mariadb, sqlite3) with the app's settings",
    description=__doc__,
    run=run,
    passes_on="[-- CLIENT ARGUMENTS]",
)
